"""A local stack of real servers on 127.0.0.1: OpenSSH sshd, SeaweedFS S3, PostgreSQL.

Used by the tests, the demo and `make dev`. Each server is a child process in its own process
group, on free ports, inside one base directory; each can be stopped and started again on the
same ports and data (fault injection). Stdlib only, plus psycopg and botocore to wait for
readiness.

    python -m sftp_minio_assets.local_stack    # start, print `export` lines, wait for Ctrl-C
"""

from __future__ import annotations

import atexit
import getpass
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

HOST = "127.0.0.1"
_given_ports: set[int] = set()
_running: set[_Server] = set()


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _given_ports and port < 50000:
            _given_ports.add(port)
            return port


def _default_signals() -> None:
    # A process started from a background job can inherit SIGINT/SIGTERM as ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    return done


class _Server:
    """A child process with a log file, a readiness probe, and stop/start by PID."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, base: Path):
        self.base = base
        self.log_path = base / f"{self.name}.log"
        self._process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        return None

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 60) -> None:
        if self.is_running():
            return
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_default_signals,
                env=self.environment(),
            )
        _running.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                if self.ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        self.stop()
        tail = "".join(self.log_path.read_text(errors="replace").splitlines(True)[-40:])
        raise RuntimeError(f"{self.name} did not start: {shlex.join(cmd)}\n{tail}")

    def stop(self, timeout: float = 10) -> None:
        process, self._process = self._process, None
        _running.discard(self)
        if process is None:
            return
        if process.poll() is None:
            try:
                os.killpg(process.pid, self.stop_signal)
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()  # process 1 here does not reap orphans
        # Children that outlived their leader (none expected) go with the group.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None


class SshServer(_Server):
    """OpenSSH sshd with its own host key, key authentication for the invoking user."""

    name = "sshd"

    def __init__(self, base: Path):
        super().__init__(base)
        self.dir = base / "ssh"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = free_port()
        self.username = getpass.getuser()
        self.root = base / "sftp-root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        host_key = self.dir / "host_ed25519"
        self.private_key_path = self.dir / "client_ed25519"
        for key in (host_key, self.private_key_path):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)])
        authorized = self.dir / "authorized_keys"
        authorized.write_text(Path(f"{self.private_key_path}.pub").read_text())
        public = Path(f"{host_key}.pub").read_text().split()
        self.known_hosts_path = self.dir / "known_hosts"
        self.known_hosts_path.write_text(f"[{HOST}]:{self.port} {public[0]} {public[1]}\n")
        self.host_key_sha256 = _run(["ssh-keygen", "-lf", f"{host_key}.pub"]).stdout.split()[1]
        self.config_path = self.dir / "sshd_config"
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress {HOST}",
                    f"Port {self.port}",
                    f"HostKey {host_key}",
                    f"AuthorizedKeysFile {authorized}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    "Subsystem sftp internal-sftp",
                    "UsePAM no",
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.username}",
                    "MaxStartups 200:30:400",
                    "MaxSessions 200",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )

    def command(self) -> list[str]:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config_path)]

    def ready(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            return s.recv(16).startswith(b"SSH-2.0")


class PostgresServer(_Server):
    """PostgreSQL from the Debian binaries, as the `postgres` user when we are root."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: do not wait for clients

    def __init__(self, base: Path):
        super().__init__(base)
        self.bin = _postgres_bin()
        self.host = HOST
        self.port = free_port()
        self.user = "transfer"
        self.password = secrets.token_urlsafe(16)
        self.dbname = "transfer_log"
        self.data = base / "pgdata"
        self.sockets = base / "pgsock"
        self.sockets.mkdir(exist_ok=True)
        self.data.mkdir(mode=0o700)
        pwfile = base / "pgpass.tmp"
        pwfile.write_text(self.password)
        for path in (self.sockets, self.data, pwfile):
            self._own(path)
        _run(
            [
                *self._as_owner(),
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        pwfile.unlink()

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{dbname}"

    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def command(self) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "port": self.port,
            "unix_socket_directories": self.sockets,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 300,
        }
        flags = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        return [*self._as_owner(), str(self.bin / "postgres"), "-D", str(self.data), *flags]

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2):
            return True

    def start(self, timeout: float = 60) -> None:
        super().start(timeout)
        for name in (self.dbname, "dagster"):
            self.create_database(name, exist_ok=True)

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if not (exist_ok and exists.fetchone()):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)


class S3Server(_Server):
    """SeaweedFS `weed mini`: master, volume, filer and S3 in one process, on loopback only."""

    name = "seaweedfs"

    def __init__(self, base: Path):
        super().__init__(base)
        self.weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        self.access_key = "ak" + secrets.token_hex(8)
        self.secret_key = secrets.token_urlsafe(24)
        self.port = free_port()
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self.dir = base / "weed"
        for sub in ("data", "tmp", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config_path.write_text(json.dumps({"identities": [identity]}))
        self.config_path.chmod(0o600)
        # weed derives unset ports (grpc = port + 10000): give every one of them explicitly.
        self.ports = {
            flag: free_port()
            for flag in (
                "master.port",
                "master.port.grpc",
                "volume.port",
                "volume.port.grpc",
                "filer.port",
                "filer.port.grpc",
                "s3.port.grpc",
                "s3.port.iceberg",
                "s3.port.lance",
                "admin.port",
                "admin.port.grpc",
                "webdav.port",
            )
        }

    def command(self) -> list[str]:
        flags = [f"-{flag}={port}" for flag, port in self.ports.items()]
        return [
            self.weed,
            f"-logdir={self.dir / 'logs'}",
            "mini",
            f"-dir={self.dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={self.port}",
            f"-s3.config={self.config_path}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *flags,
        ]

    def environment(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.dir / "tmp")}

    def client(self):
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            ),
        )

    def ready(self) -> bool:
        # The first write can fail until the volume server has registered: write one for real.
        client = self.client()
        already = (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists)
        with suppress(*already):  # a restart on the same data
            client.create_bucket(Bucket="readiness-probe")
        client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
        client.delete_object(Bucket="readiness-probe", Key="probe")
        return True


def _postgres_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")


class LocalStack:
    """The three servers, started together and always stopped together."""

    def __init__(self, base_dir: Path | None = None):
        self._owns_base = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="sftp-minio-stack-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the postgres user must reach its data directory
        self.ssh: SshServer
        self.s3: S3Server
        self.postgres: PostgresServer

    def __enter__(self) -> LocalStack:
        try:
            self.ssh = SshServer(self.base)
            self.s3 = S3Server(self.base)
            self.postgres = PostgresServer(self.base)
            with ThreadPoolExecutor(3) as pool:
                for future in [pool.submit(s.start) for s in (self.ssh, self.s3, self.postgres)]:
                    future.result()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for name in ("ssh", "s3", "postgres"):
            server = getattr(self, name, None)
            if server is not None:
                server.stop()
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def env(self, bucket: str = "sftp-minio-assets") -> dict[str, str]:
        return {
            "SFTP_HOST": self.ssh.host,
            "SFTP_PORT": str(self.ssh.port),
            "SFTP_USERNAME": self.ssh.username,
            "SFTP_PRIVATE_KEY_PATH": str(self.ssh.private_key_path),
            "SFTP_KNOWN_HOSTS_PATH": str(self.ssh.known_hosts_path),
            "SFTP_ROOT": str(self.ssh.root),
            "MINIO_ENDPOINT_URL": self.s3.endpoint_url,
            "MINIO_ACCESS_KEY": self.s3.access_key,
            "MINIO_SECRET_KEY": self.s3.secret_key,
            "MINIO_BUCKET": bucket,
            "TRANSFER_DB_URL": self.postgres.dsn,
            "DAGSTER_PG_HOST": self.postgres.host,
            "DAGSTER_PG_PORT": str(self.postgres.port),
            "DAGSTER_PG_USER": self.postgres.user,
            "DAGSTER_PG_PASSWORD": self.postgres.password,
            "DAGSTER_PG_DB": "dagster",
        }


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        server.stop()


def main() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LocalStack() as stack:
        for name, value in stack.env().items():
            print(f"export {name}={shlex.quote(value)}")
        print("# stack running; Ctrl-C or SIGTERM stops it", flush=True)
        while not stop.wait(1):
            pass


if __name__ == "__main__":
    main()
