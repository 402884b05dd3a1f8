"""A local stack of real servers on 127.0.0.1: OpenSSH sshd, SeaweedFS S3, PostgreSQL.

Used by the tests, the demo and `make dev`. Each server is a child process in its own process
group, on free ports, inside one base directory; each can be stopped and started again on the
same ports and data (fault injection). Stdlib only at import time; psycopg and botocore (both
project dependencies) are imported lazily to probe readiness and create databases.

    python -m devstack.local_stack    # start, print `export` lines, wait for Ctrl-C
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import getpass
import json
import os
import pwd
import random
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "LocalStack",
    "PlainS3Server",
    "PostgresServer",
    "S3Server",
    "SshServer",
    "free_port",
    "main",
]

HOST = "127.0.0.1"
# weed derives some gRPC addresses as HTTP port + 10000 whatever its flags say.
GRPC_OFFSET = 10000
LOG_TAIL_LINES = 40

_lock = threading.Lock()
_given_ports: set[int] = set()
_port_locks: dict[int, int] = {}  # port -> fd holding the cross-process reservation
_running: set[_Server] = set()


# --- ports -----------------------------------------------------------------------------------


def _port_range() -> range:
    # Stay below the kernel's ephemeral range: there an outgoing connection can take a stopped
    # server's port before it comes back, and fault-injection restarts need the same port.
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low - 12000 < 2 * GRPC_OFFSET:
        return range(10000, 50000)
    return range(12000, min(low, 50000))


def _bindable(port: int) -> bool:
    # weed also test-binds the wildcard address before using a port.
    for address in (HOST, "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def _reservation(port: int) -> Path:
    return Path(tempfile.gettempdir()) / "sftp-minio-assets-ports" / str(port)


def _reserve(port: int) -> bool:
    """Lock the port until released, so that a concurrent stack in another process skips it.

    A stopped server's port is free for anyone to bind until it restarts; the lock is what
    keeps it ours. flock dies with the process: a crashed run never leaks a reservation.
    """
    path = _reservation(port)
    try:
        path.parent.mkdir(exist_ok=True)
        if path.parent.stat().st_uid == os.geteuid():
            path.parent.chmod(0o1777)  # shared by every user, like /tmp (mkdir obeys the umask)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        # Unreadable: someone else's reservation. Uncreatable: no sharing, but in-process
        # uniqueness still holds.
        return not path.exists()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The releasing holder unlinks the file: a lock on a stale inode reserves nothing.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise BlockingIOError(errno.EAGAIN, "stale")
    except OSError:
        os.close(fd)
        return False
    _port_locks[port] = fd
    return True


def _unreserve(port: int) -> None:
    fd = _port_locks.pop(port, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(_reservation(port))
        os.close(fd)


def _release(ports: list[int]) -> None:
    with _lock:
        for port in ports:
            _unreserve(port)


def free_port(offset: int = 0) -> int:
    """A free loopback port, never handed out twice; with `offset`, port + offset is free too."""
    ports = _port_range()
    with _lock:
        for _ in range(2000):
            port = random.randrange(ports.start, ports.stop - offset)
            wanted = [port, port + offset] if offset else [port]
            if any(p in _given_ports for p in wanted) or not all(map(_bindable, wanted)):
                continue
            reserved = [p for p in wanted if _reserve(p)]
            if len(reserved) == len(wanted):
                _given_ports.update(wanted)
                return port
            for p in reserved:
                _unreserve(p)
    raise RuntimeError(f"no free port in {ports}")


# --- processes -------------------------------------------------------------------------------


def _signal_reset() -> list[str]:
    """A prefix that execs the server with SIGINT/SIGTERM at their defaults.

    A process started from a background job can inherit them as ignored. A preexec_fn would
    do the same but is unsafe while other threads run (we start servers from threads).
    """
    env = shutil.which("env")
    if env and subprocess.run([env, "--default-signal=INT,TERM", "true"]).returncode == 0:
        return [env, "--default-signal=INT,TERM"]
    return []


_SIGNAL_RESET: list[str] | None = None


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdin", None if "input" in kwargs else subprocess.DEVNULL)
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces
    return fields[0], int(fields[1]), int(fields[2])


def _descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`, with its depth (1 = child)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _proc_stat(int(entry))) is not None:
            children.setdefault(info[1], []).append(int(entry))
    found: dict[int, int] = {}
    level, depth = [pid], 0
    while level:
        depth += 1
        level = [child for parent in level for child in children.get(parent, [])]
        found.update((child, depth) for child in level)
    return found


def _children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError):
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def _end_tree(pid: int, deadline: float) -> None:
    """SIGKILL `pid` and all below it, leaves first, so that every parent reaps its children.

    A process is stopped while we list its children, so it cannot fork one we would miss.
    """
    while time.monotonic() < deadline:
        _kill(pid, signal.SIGSTOP)
        kids = _children(pid)
        if not kids:
            break
        _kill(pid, signal.SIGCONT)  # it has to run to reap them
        for kid in kids:
            if not _zombie(kid):
                _end_tree(kid, deadline)
        _wait_gone(kids, 1)
    _kill(pid, signal.SIGKILL)


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started with start_new_session=True and everything in its group: `sig`,
    then SIGKILL after `timeout`; it is reaped either way."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _zombie(pid: int) -> bool:
    info = _proc_stat(pid)
    return info is not None and info[0] == "Z"


def _gone(pid: int) -> bool:
    info = _proc_stat(pid)
    # A zombie adopted by process 1 is never reaped here: it is as gone as it will get.
    return info is None or (info[0] == "Z" and info[1] == 1)


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if not _gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


class _Server:
    """A child process with a log file, a readiness probe, and stop/start by PID."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, base: Path) -> None:
        self.base = base
        self.log_path = base / f"{self.name}.log"
        self.ports: list[int] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # Subclass hooks.
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str] | None:
        return None

    def _prepare(self) -> None:
        """One-time set-up before the first start (runs in the starting thread)."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def _signal_stop(self, pid: int) -> None:
        """Ask the running server to stop."""
        _kill(pid, self.stop_signal)

    def _after_stop(self) -> None:
        """Called once the process is reaped."""

    def start(self, timeout: float = 60) -> None:
        """Start the server and return once it really serves; RuntimeError with its log if not."""
        global _SIGNAL_RESET
        with self._lock:
            if self.is_running():
                return
            self._prepare()
            if _SIGNAL_RESET is None:
                _SIGNAL_RESET = _signal_reset()
            cmd = self._command()
            with open(self.log_path, "ab") as log:
                offset = log.tell()
                log.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(cmd)}\n".encode())
                log.flush()
                self._process = subprocess.Popen(
                    [*_SIGNAL_RESET, *cmd],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.base,
                    env=self._environment(),
                    start_new_session=True,
                    preexec_fn=None if _SIGNAL_RESET else _default_signals,
                )
            _running.add(self)
            problem: BaseException | None = None
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    if self._ready():
                        return
                except Exception as exc:  # not up yet: keep the reason for the error message
                    problem = exc
                time.sleep(0.05)
            code = self._process.poll()
            self.stop()
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            status = f"exited with {code}" if code is not None else f"not ready after {timeout}s"
            raise RuntimeError(
                f"{self.name} {status}: {shlex.join(cmd)}\n"
                f"last readiness error: {problem!r}\n"
                f"--- last lines of {self.log_path}:\n" + "\n".join(lines)
            )

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (SIGKILL after `timeout`) and reap it; a no-op when not running."""
        with self._lock:
            process, self._process = self._process, None
            _running.discard(self)
            if process is None:
                return
            if process.poll() is None:
                self._signal_stop(process.pid)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout)
            # Whatever is left of the group goes too; and always reap, as process 1 here does not.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self._after_stop()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the server process while it runs."""
        return self._process.pid if self.is_running() and self._process else None

    def pids(self) -> list[int]:
        """The server process and all its descendants."""
        pid = self.pid
        return [] if pid is None else [pid, *_descendants(pid)]

    def _tcp_open(self, port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return True
        return False


# --- sshd ------------------------------------------------------------------------------------


# As root, SFTP sessions run as this unprivileged user, so that file permissions mean what they
# mean for a real SFTP account (root reads everything, and a revoked permission would not show).
SFTP_USER = "sftpminio"


def _sftp_user() -> str:
    if os.geteuid() != 0:
        return getpass.getuser()
    try:
        pwd.getpwnam(SFTP_USER)
    except KeyError:
        _run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/bin/sh",
                SFTP_USER,
            ]
        )
    return SFTP_USER


def _sftp_password() -> str | None:
    """The SFTP user's password, for password logins (as root only: a password is set once per
    machine, at random, and kept in a file only root reads; every stack shares it, as they
    share the user). An account without one is locked, and sshd refuses locked accounts even
    key logins."""
    if os.geteuid() != 0:
        return None
    kept = Path("/etc") / f"{SFTP_USER}.password"
    with contextlib.suppress(FileExistsError):
        descriptor = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(12))
    password = kept.read_text().strip()
    # Set at every start, the same for every stack: a checkout from before passwords reset it.
    _run(["chpasswd"], input=f"{SFTP_USER}:{password}\n")
    return password


class SshServer(_Server):
    """OpenSSH sshd with its own host key; key authentication for one user; no chroot."""

    name = "sshd"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.host = HOST
        self.port = free_port()
        self.ports = [self.port]
        self.username = _sftp_user()
        self.password = _sftp_password()
        self._marker = secrets.token_hex(8)
        self.dir = base / "ssh"
        # Traversable, not listable: sshd reads authorized_keys as the SFTP user.
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)
        self.root = base / "sftp-root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, SFTP_USER)  # the SFTP user may write (archive, delete) too
        host_key = self.dir / "host_ed25519"
        self.private_key_path = self.dir / "client_ed25519"
        for key in (host_key, self.private_key_path):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(key)])
            key.chmod(0o600)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(Path(f"{self.private_key_path}.pub").read_text())
        authorized.chmod(0o644)
        kind, blob = Path(f"{host_key}.pub").read_text().split()[:2]
        self.known_hosts_path = self.dir / "known_hosts"
        self.known_hosts_path.write_text(f"[{HOST}]:{self.port} {kind} {blob}\n")
        self.host_key_sha256 = _run(["ssh-keygen", "-lf", f"{host_key}.pub"]).stdout.split()[1]
        self.config_path = self.dir / "sshd_config"
        settings = [
            f"ListenAddress {HOST}",
            f"Port {self.port}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "Subsystem sftp internal-sftp",
            "UsePAM no",
            "StrictModes no",
            "PubkeyAuthentication yes",
            f"PasswordAuthentication {'yes' if self.password else 'no'}",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.username}",
            # Tests open many connections at once.
            "MaxStartups 200:30:400",
            "MaxSessions 200",
            "UseDNS no",
            # VERBOSE: "Transferred: sent N, received M bytes" as each connection closes.
            "LogLevel VERBOSE",
        ]
        self.config_path.write_text("\n".join(settings) + "\n")

    def source_settings(self, root: Path, **more) -> dict:
        """A source of a sources file (sources.py) on this server, rooted at `root`."""
        return {
            "host": self.host,
            "port": self.port,
            "username": self.username,
            "private_key_path": str(self.private_key_path),
            "known_hosts_path": str(self.known_hosts_path),
            "root": str(root),
            **more,
        }

    def _command(self) -> list[str]:
        return ["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config_path)]

    def _prepare(self) -> None:
        if os.geteuid() == 0:  # privilege separation directory, required when run as root
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)

    def _ready(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            return s.recv(16).startswith(b"SSH-2.0")

    def _environment(self) -> dict[str, str]:
        # Every process sshd forks keeps this environment: how _after_stop finds strays.
        return {**os.environ, "LOCAL_STACK_SSHD": self._marker}

    def _signal_stop(self, pid: int) -> None:
        # Each connection runs in its own session, out of reach of killpg, and once the listener
        # is gone nobody here would reap them. End them first, so a stop really cuts transfers.
        deadline = time.monotonic() + 5
        _kill(pid, signal.SIGSTOP)  # accept no new connection meanwhile
        try:
            while (kids := _children(pid)) and time.monotonic() < deadline:
                live = [kid for kid in kids if not _zombie(kid)]
                if not live:
                    break  # zombies: the listener reaps them once continued
                for kid in live:
                    _end_tree(kid, deadline)
        finally:
            # SIGTERM while still stopped: on SIGCONT sshd reaps its children (SIGCHLD) and
            # exits before it accepts the connections queued meanwhile.
            _kill(pid, signal.SIGTERM)
            _kill(pid, signal.SIGCONT)

    def _after_stop(self) -> None:
        # A connection accepted just before SIGSTOP can still fork after SIGCONT.
        token = f"LOCAL_STACK_SSHD={self._marker}".encode()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if token in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                        _kill(int(entry), signal.SIGKILL)


# --- PostgreSQL ------------------------------------------------------------------------------


def _postgres_bin() -> Path:
    def version(path: Path) -> list[int]:
        return [int(part) for part in path.parent.name.split(".") if part.isdigit()]

    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True):
        if (candidate / "postgres").exists():
            return candidate
    found = shutil.which("postgres")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")


# Dagster's DAGSTER_EVENT_BATCH_SIZE, read by every process that stores events: above the
# partitions of a run (MAX_PARTITIONS_PER_RUN, 5000 by default), so that its planned events are
# one batch.
EVENT_BATCH_SIZE = "5000"


class PostgresServer(_Server):
    """PostgreSQL from the Debian binaries, as the `postgres` user when we are root."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown: do not wait for clients

    def __init__(self, base: Path, dbname: str = "transfer_log", durable: bool = False) -> None:
        super().__init__(base)
        # Not durable (the default, for speed): a commit is acknowledged before its WAL is
        # written, and a kill -9 of the server loses the last few hundred ms of commits. Durable:
        # every commit survives a kill -9 (fsync stays off: the OS, which keeps the page cache
        # across a process's death, is not what is killed).
        self.durable = durable
        self.bin = _postgres_bin()
        self.host = HOST
        self.port = free_port()
        self.ports = [self.port]
        self.user = "transfer"
        self.password = secrets.token_urlsafe(18)
        self.dbname = dbname
        self.data = base / "pgdata"
        self.sockets = base / "pgsock"

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        """DSN of another database on this server."""
        return f"postgresql://{self.user}:{self.password}@{HOST}:{self.port}/{dbname}"

    def _as_owner(self) -> list[str]:
        # initdb and postgres refuse to run as root.
        if os.geteuid() != 0:
            return []
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]

    def _prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        root = os.geteuid() == 0
        if root:
            blocked = [p for p in self.data.parents if not os.stat(p).st_mode & stat.S_IXOTH]
            if blocked:
                raise RuntimeError(
                    f"PostgreSQL runs as the postgres user, which cannot traverse {blocked[0]}: "
                    "choose a base directory whose parents are world-traversable"
                )
        self.sockets.mkdir(exist_ok=True)
        self.data.mkdir(mode=0o700)
        pwfile = self.base / "pgpass.tmp"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password)
        if root:
            for path in (self.sockets, self.data, pwfile):
                shutil.chown(path, "postgres", "postgres")
        try:
            initdb = [
                *self._as_owner(),
                str(self.bin / "initdb"),
                f"--pgdata={self.data}",
                f"--username={self.user}",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",  # throwaway data: skip the fsync pass
            ]
            _run(initdb, cwd=self.base)
        finally:
            pwfile.unlink()

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "port": self.port,
            "unix_socket_directories": self.sockets,
            "fsync": "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "off",
            "max_connections": 300,
        }
        flags = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        return [*self._as_owner(), str(self.bin / "postgres"), "-D", str(self.data), *flags]

    def _ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2):
            return True

    def start(self, timeout: float = 60) -> None:
        with self._lock:
            super().start(timeout)
            for name in (self.dbname, "dagster"):
                self.create_database(name, exist_ok=True)

    def create_database(self, name: str, exist_ok: bool = False) -> str:
        """Create database `name` (owned by `user`) and return its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not (exist_ok and found):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)


# --- SeaweedFS -------------------------------------------------------------------------------


class S3Server(_Server):
    """SeaweedFS `weed mini`: master, volume, filer and S3 in one process, on loopback only."""

    name = "seaweedfs"
    # Ports weed opens; the rest (iceberg, lance, webdav, metrics, debug) stay off.
    PORT_FLAGS = (
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "webdav.port",  # disabled, but weed still insists on checking it
    )

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.port = free_port()
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self.port_flags = {flag: free_port() for flag in self.PORT_FLAGS}
        self.port_flags["s3.port"] = self.port
        # The admin's own worker dials admin.port + 10000 regardless of admin.port.grpc.
        admin = free_port(offset=GRPC_OFFSET)
        self.port_flags["admin.port"] = admin
        self.port_flags["admin.port.grpc"] = admin + GRPC_OFFSET
        self.ports = sorted(self.port_flags.values())
        self.dir = base / "weed"
        for sub in ("data", "tmp", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "s3.json"
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.config_path.touch(mode=0o600)
        self.config_path.write_text(json.dumps({"identities": [identity]}, indent=2))
        self._client: Any = None

    def _command(self) -> list[str]:
        ports = [f"-{flag}={port}" for flag, port in self.port_flags.items()]
        return [
            self.weed,
            f"-logdir={self.dir / 'logs'}",
            "mini",
            f"-dir={self.dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={self.config_path}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            *ports,
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            # Small volumes: every bucket is a collection with its own volumes, and the volume
            # count is capped by free space / volume size.
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",  # single node: nobody to hand over to, stop faster
        ]

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        # AWS_* would add an identity; HOME and the cwd are where weed looks for config files.
        env.update(TMPDIR=str(self.dir / "tmp"), HOME=str(self.dir))
        return env

    def _grpc_sockets(self) -> list[Path]:
        # weed hard-codes these under /tmp, whatever TMPDIR says.
        return [
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.port_flags[f'{name}.port.grpc']}.sock")
            for name in ("master", "volume", "filer", "s3", "admin")
        ]

    def _after_stop(self) -> None:
        for path in self._grpc_sockets():
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode) and path.lstat().st_uid == os.geteuid():
                    path.unlink()

    def client(self, **config: Any) -> Any:
        """A botocore S3 client for this server (path-style, no flexible checksums)."""
        import botocore.session
        from botocore.config import Config

        settings = {
            "s3": {"addressing_style": "path"},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            **config,
        }
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(**settings),
        )

    def _ready(self) -> bool:
        if not self._tcp_open(self.port):
            return False
        if self._client is None:
            self._client = self.client(
                retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
            )
        client = self._client
        # Until the volume server has registered with the master, reads work but writes fail.
        bucket = f"readiness-probe-{secrets.token_hex(4)}"
        client.create_bucket(Bucket=bucket)
        try:
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            if client.get_object(Bucket=bucket, Key="probe")["Body"].read() != b"ok":
                return False
            client.delete_object(Bucket=bucket, Key="probe")
        finally:
            with contextlib.suppress(Exception):
                client.delete_bucket(Bucket=bucket)
        return True


# --- an S3 server that does not verify checksums ----------------------------------------------

# Where `make s3rver-deps` installs s3rver (npm), beside the project's other build products.
S3RVER = Path(__file__).resolve().parent.parent / "build" / "s3rver" / "node_modules" / ".bin"


class PlainS3Server(_Server):
    """s3rver (npm): a small S3 server in Node.js that stores what it is sent without verifying
    checksums, as many S3-compatible stores do. Only for the test of the fallback when a server
    does not verify them (integration/test_checksums.py); not part of the stack. Its one account is
    S3RVER / S3RVER."""

    name = "s3rver"
    access_key = secret_key = "S3RVER"

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.binary = shutil.which("s3rver") or str(S3RVER / "s3rver")
        self.port = free_port()
        self.ports = [self.port]
        self.endpoint_url = f"http://{HOST}:{self.port}"
        self.dir = base / "s3rver"

    def _prepare(self) -> None:
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"s3rver is not installed ({self.binary}): run make s3rver-deps")
        self.dir.mkdir(parents=True, exist_ok=True)

    def _command(self) -> list[str]:
        return [self.binary, "-d", str(self.dir), "-a", HOST, "-p", str(self.port), "--silent"]

    def _ready(self) -> bool:
        return self._tcp_open(self.port)


# --- the stack -------------------------------------------------------------------------------


class LocalStack:
    """The three servers, started together and always stopped together."""

    def __init__(self, base_dir: Path | None = None, durable_postgres: bool = False) -> None:
        self._owns_base = base_dir is None
        self.base = Path(
            tempfile.mkdtemp(prefix="sftp-minio-stack-") if base_dir is None else base_dir
        )
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)  # the postgres user must reach its data directory
        self._servers: list[_Server] = []
        try:
            self.ssh = SshServer(self.base)
            self._servers.append(self.ssh)
            self.s3 = S3Server(self.base)
            self._servers.append(self.s3)
            self.postgres = PostgresServer(self.base, durable=durable_postgres)
            self._servers.append(self.postgres)
        except BaseException:
            self.close()
            raise

    @property
    def servers(self) -> list[_Server]:
        return list(self._servers)

    def __enter__(self) -> LocalStack:
        try:
            with ThreadPoolExecutor(len(self._servers), thread_name_prefix="local-stack") as pool:
                futures = [pool.submit(server.start) for server in self._servers]
            errors = [e for f in futures if (e := f.exception()) is not None]
            if errors:
                for other in errors[1:]:
                    errors[0].add_note(f"also: {other}")
                raise errors[0]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop every server (in parallel), release their ports, remove a base we created."""
        with ThreadPoolExecutor(max(1, len(self._servers))) as pool:
            for future in [pool.submit(server.stop) for server in self._servers]:
                with contextlib.suppress(Exception):
                    future.result()
        for server in self._servers:
            _release(server.ports)
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def env(self, bucket: str = "sftp-minio-assets") -> dict[str, str]:
        """Environment variables that point the project at this stack."""
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
            # As the image sets it (Dockerfile): a run's planned events reach the event log
            # as one batch, one statement (sftp_minio_assets/defs/instance_storage.py).
            "DAGSTER_EVENT_BATCH_SIZE": EVENT_BATCH_SIZE,
        }


@atexit.register
def _stop_all() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


def main() -> None:
    """Start the stack, print `export` lines for it, run until SIGINT/SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    died: list[_Server] = []
    with LocalStack() as stack:
        for name, value in stack.env().items():
            print(f"export {name}={shlex.quote(value)}")
        elapsed = time.monotonic() - started
        print(f"# local stack up in {elapsed:.1f}s in {stack.base}; Ctrl-C stops it", flush=True)
        while not died and not stop.wait(0.5):
            died = [server for server in stack.servers if not server.is_running()]
        for server in died:
            tail = server.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            print(f"{server.name} died:", *tail, sep="\n", file=sys.stderr)
    if died:
        sys.exit(1)


if __name__ == "__main__":
    main()
