"""A chaos run (issue 25): files keep arriving while, at random every 30 to 90 s, one thing
fails, and in the end every file must be in the bucket once, byte for byte, with nobody's help.

    python -m devstack.soak               # make soak: 30 minutes, 10,000 small files, 3 x 512 MiB
    python -m devstack.soak --short       # the CI's: 2 minutes, fewer files, faults more often

The pipeline runs as deployed: `dagster-daemon` on the project's dagster.yaml and workspace,
on a local stack (devstack/local_stack.py), its SFTP server behind a TCP relay that cuts
(tcp_relay.py) and its S3 server behind one that throttles (s3_relay.py), with max_sessions
set. The faults, one at a time: kill -9 of a run worker while it copies, of the daemon (with
its code server; restarted at once, as a service manager would), of sshd, the S3 server or
PostgreSQL (restarted after a few seconds); every connection through the SFTP relay cut; a
minute of S3 answering `503 SlowDown` to 30% of requests.

The verdict is taken from outside the product: the bucket's objects and their versions (each
write is a version), the files' bytes, the SFTP relay (the bytes the server sent, all
connections and kills together, and the SSH connections open at once), the processes and
folders left. It prints its figures and exits 1
if any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from devstack.local_stack import LocalStack, stop_group
from devstack.s3_relay import S3Relay
from devstack.tcp_relay import TcpRelay
from sftp_minio_assets.defs.run_launcher import WORKER_MODULE as RUN_WORKER
from sftp_minio_assets.transfer.pgp import HOME_PREFIX

PROJECT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    minutes: float  # of faults, files arriving meanwhile
    small_files: int
    big_files: int
    big_mib: int
    gap_seconds: tuple[float, float]  # between two faults
    max_sessions: int = 4
    drain_minutes: float = 10  # to land the rest once the faults stop


FULL = Plan(30, 10_000, 3, 512, (30, 90))
SHORT = Plan(1, 300, 1, 256, (10, 20), drain_minutes=4)
PGP_SHARE = 0.1  # of the small files: PGP-encrypted, decrypted in flight
FAULTS = ("run worker", "daemon", "sshd", "S3", "PostgreSQL", "SFTP cut", "S3 SlowDown")


class Soak:
    def __init__(self, stack: LocalStack, plan: Plan, seed: int) -> None:
        self.stack, self.plan = stack, plan
        self.random = random.Random(seed)
        self.root = stack.ssh.root / "soak"
        self.staging = stack.base / "soak-staging"  # same file system: files appear whole
        for folder in (self.root, self.staging):
            folder.mkdir(parents=True, exist_ok=True)
        self.sftp = TcpRelay(stack.ssh.host, stack.ssh.port)
        self.s3 = S3Relay(stack.s3.endpoint_url, seed=seed)
        self.home = stack.base / "soak-home"
        self.home.mkdir(exist_ok=True)
        shutil.copy(PROJECT / "dagster.yaml", self.home / "dagster.yaml")
        self.bucket = "soak"
        self.gpg_home = stack.base / "soak-gpg"  # the partner's: encrypts PGP_SHARE of files
        self.env = {**self._environment(), "SFTP_PGP_PRIVATE_KEY": self._pgp_key()}
        self.daemon: subprocess.Popen | None = None
        self.faults: Counter[str] = Counter()
        self.written: dict[str, str] = {}  # path under root -> sha256
        self.writing = threading.Thread(target=self._write_files, daemon=True)

    def _environment(self) -> dict[str, str]:
        ssh = self.stack.ssh
        kind, blob = ssh.known_hosts_path.read_text().split()[1:3]
        known_hosts = self.stack.base / "known_hosts-soak"
        known_hosts.write_text(f"[{ssh.host}]:{self.sftp.port} {kind} {blob}\n")
        database = "dagster_soak"
        self.stack.postgres.create_database(database, exist_ok=True)
        return {
            **os.environ,
            **self.stack.env(bucket=self.bucket),
            "SFTP_PORT": str(self.sftp.port),
            "SFTP_KNOWN_HOSTS_PATH": str(known_hosts),
            "SFTP_ROOT": str(self.root),
            "SFTP_MAX_SESSIONS": str(self.plan.max_sessions),
            "SFTP_TRANSPORT": "paramiko",  # every SSH connection through the relay, counted
            "MINIO_ENDPOINT_URL": self.s3.endpoint_url,
            "MINIO_TIMEOUT_SECONDS": "10",
            "MIN_FILE_AGE_SECONDS": "0",
            "SENSOR_INTERVAL_SECONDS": "5",
            "MAX_STALE_LOCK_MINUTES": "0.5",
            "AUTO_RETRY_BACKOFF_MINUTES": "0,0.25,0.5",
            "DAGSTER_HOME": str(self.home),
            "DAGSTER_PG_DB": database,
        }

    def _gpg(self, *args: str, data: bytes = b"") -> bytes:
        command = ["gpg", "--homedir", str(self.gpg_home), "--batch", "--no-tty"]
        return subprocess.run(
            [*command, "--trust-model", "always", *args], input=data, capture_output=True,
            check=True,
        ).stdout  # fmt: skip

    def _pgp_key(self) -> str:
        """Our key pair, made here; its private key is the pipeline's."""
        self.gpg_home.mkdir(mode=0o700, exist_ok=True)
        self._gpg("--passphrase", "", "--quick-gen-key", "soak <soak@example.org>",
                  "future-default", "default", "0")  # fmt: skip
        return self._gpg("--armor", "--export-secret-keys", "soak@example.org").decode()

    # --- the pipeline, as a service manager keeps it running --------------------------------

    def start_daemon(self) -> None:
        log = open(self.home / "daemon.log", "ab")  # noqa: SIM115  (the daemon's, until it ends)
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
            cwd=PROJECT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def daemon_pids(self, marker: str = "") -> list[int]:
        """The daemon's processes (its session) whose command line holds marker."""
        found = []
        session = self.daemon.pid if self.daemon else None
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getsid(int(entry)) != session:
                    continue
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state != "Z" and marker.encode() in cmdline:
                found.append(int(entry))
        return found

    # --- files arriving ---------------------------------------------------------------------

    def _write_files(self) -> None:
        plan = self.plan
        for i in range(plan.big_files):
            self._write(f"big/{i}.bin", plan.big_mib * MIB)
        spread = plan.minutes * 60 * 0.8  # the last fifth of the faults with no new file
        started = time.monotonic()
        for i in range(plan.small_files):
            due = started + spread * i / plan.small_files
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            path = f"small/{i // 500:03d}/{i:05d}.csv"
            size = self.random.randint(200, 64 * 1024)
            if self.random.random() < PGP_SHARE:
                self._write_encrypted(path, size)
            else:
                self._write(path, size)

    def _write(self, path: str, size: int) -> None:
        """Written beside the root, then renamed into it: the sensor never sees it partial.
        path: its object's (under default/) and the file's."""
        staged = self.staging / path.replace("/", "_")
        digest = hashlib.sha256()
        with open(staged, "wb") as f:
            left = size
            while left:
                chunk = os.urandom(min(left, 8 * MIB))
                digest.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        self._place(staged, path)
        self.written[path] = digest.hexdigest()

    def _write_encrypted(self, path: str, size: int) -> None:
        """path + ".pgp", encrypted to our key: its object is path, decrypted."""
        data = os.urandom(size)
        staged = self.staging / (path.replace("/", "_") + ".pgp")
        staged.write_bytes(self._gpg("--encrypt", "--recipient", "soak@example.org", data=data))
        self._place(staged, path + ".pgp")
        self.written[path] = hashlib.sha256(data).hexdigest()

    def _place(self, staged: Path, path: str) -> None:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, target)

    # --- faults -----------------------------------------------------------------------------

    def fault(self) -> str:
        kind = self.random.choice(FAULTS)
        if kind == "run worker":
            victims = self._run_worker_copying(timeout=30)
            if not victims:
                return "run worker (none copying within 30 s: skipped)"
            for pid in victims:
                _kill(pid)
        elif kind == "daemon":
            for pid in self.daemon_pids():
                _kill(pid)
            if self.daemon:
                self.daemon.wait()
            self.start_daemon()
        elif kind in ("sshd", "S3", "PostgreSQL"):
            server = {
                "sshd": self.stack.ssh,
                "S3": self.stack.s3,
                "PostgreSQL": self.stack.postgres,
            }
            target = server[kind]
            for pid in target.pids():
                _kill(pid)
            target.stop()
            time.sleep(self.random.uniform(2, 8))
            target.start()
        elif kind == "SFTP cut":
            kind = f"SFTP cut ({self.sftp.cut_all()} connections)"
        else:
            self.s3.inject("slowdown", 0.3, seconds=60)
        self.faults[kind.split(" (")[0]] += 1
        return kind

    def _run_worker_copying(self, timeout: float) -> list[int]:
        """The processes of run workers, once one holds a claim (copies); [] if none does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            workers = self.daemon_pids(RUN_WORKER)
            if workers and self._copying():
                return workers
            time.sleep(0.5)
        return []

    def _copying(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.stack.postgres.dsn, connect_timeout=3) as conn:
                query = "SELECT count(*) FROM file_transfer_log WHERE status = 'IN_PROGRESS'"
                return conn.execute(query).fetchone()[0] > 0
        except psycopg.Error:
            return False

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> bool:
        try:
            return self._run()
        finally:
            if self.daemon is not None:
                stop_group(self.daemon)

    def _run(self) -> bool:
        plan = self.plan
        print(f"soak: {plan.minutes:g} min of faults, {plan.small_files} small files and "
              f"{plan.big_files} x {plan.big_mib} MiB, max_sessions {plan.max_sessions}",
              flush=True)  # fmt: skip
        self._versioned_bucket()
        self.start_daemon()
        self.writing.start()
        started = time.monotonic()
        end = started + plan.minutes * 60
        while (now := time.monotonic()) < end:
            time.sleep(min(self.random.uniform(*plan.gap_seconds), max(0.0, end - now)))
            if time.monotonic() >= end:
                break
            what = self.fault()
            print(f"  {time.monotonic() - started:6.0f} s  {what}", flush=True)
        self.writing.join()
        print(
            f"faults over after {time.monotonic() - started:.0f} s; waiting for the rest",
            flush=True,
        )
        landed = self._wait_landed(plan.drain_minutes * 60)
        drained = time.monotonic() - end
        ok = self.verdict(landed, drained)
        subprocess.run(["gpgconf", "--homedir", str(self.gpg_home), "--kill", "gpg-agent"])
        return ok

    def _versioned_bucket(self) -> None:
        client = self.stack.s3.client()
        client.create_bucket(Bucket=self.bucket)
        client.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )

    def _objects(self) -> dict[str, list[dict]]:
        """The bucket's versions of each key (every write of an object is one)."""
        client = self.stack.s3.client()
        versions: dict[str, list[dict]] = {}
        for page in client.get_paginator("list_object_versions").paginate(Bucket=self.bucket):
            for version in page.get("Versions", []):
                versions.setdefault(version["Key"], []).append(version)
        return versions

    def _wait_landed(self, timeout: float) -> dict[str, list[dict]]:
        deadline = time.monotonic() + timeout
        said = time.monotonic()
        while True:
            try:
                objects = self._objects()
            except Exception:  # the S3 server may still be restarting
                objects = {}
            missing = [path for path in self.written if f"default/{path}" not in objects]
            if not missing or time.monotonic() >= deadline:
                return objects
            if time.monotonic() - said >= 30:
                print(f"  {len(missing)} files not landed yet, e.g. {missing[:3]}", flush=True)
                said = time.monotonic()
            time.sleep(5)

    # --- the verdict, from outside ----------------------------------------------------------

    def verdict(self, objects: dict[str, list[dict]], drained: float) -> bool:
        client = self.stack.s3.client()
        expected = {f"default/{path}": digest for path, digest in self.written.items()}
        missing = sorted(set(expected) - set(objects))
        stray = sorted(set(objects) - set(expected))
        written_twice = {key: len(v) for key, v in objects.items() if len(v) > 1}
        differ = []
        for key, digest in expected.items():
            if key in objects and _sha256(client, self.bucket, key) != digest:
                differ.append(key)
        uploads = client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        total = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        sent = self.sftp.bytes_down  # all the SFTP server sent, counted on the way
        gpg = _stray_gpg()
        # A copy cut part way redoes its parts in flight and what it read since it last saved
        # its progress: some tens of MiB; started over, it would read the file's size again.
        breaks = sum(n for kind, n in self.faults.items() if kind != "S3 SlowDown")
        allowed = total * 1.05 + breaks * 64 * MIB
        checks = {
            "every file in the bucket": not missing,
            "nothing else in it": not stray,
            "each object written once": not written_twice,
            "byte-identical": not differ,
            "no multipart upload left open": not uploads,
            f"SSH sessions at once <= max_sessions {self.plan.max_sessions}":
                self.sftp.most_live <= self.plan.max_sessions,
            f"copies resumed, not restarted (sent <= 1.05 x the bytes + 64 MiB x {breaks} "
            "faults)": sent <= allowed,
            "no gpg home or agent left": not gpg,
        }  # fmt: skip
        print("\nfaults:", dict(self.faults))
        landed = len(expected) - len(missing)
        print(f"files: {len(expected)} ({total / MIB:.0f} MiB); landed {landed}, the last "
              f"{drained:.0f} s after the faults stopped")  # fmt: skip
        print(f"the SFTP server sent {sent / MIB:.0f} MiB for {total / MIB:.0f} MiB of files "
              f"({sent / total:.2f}x)")  # fmt: skip
        print(f"SSH connections through the relay: {self.sftp.connections}, at most "
              f"{self.sftp.most_live} at once (max_sessions {self.plan.max_sessions}); "
              f"{self.sftp.cuts} cut")  # fmt: skip
        print(f"S3 requests: {sum(self.s3.requests.values())}, answered SlowDown: "
              f"{self.s3.injected['slowdown']}")  # fmt: skip
        print(f"versions per object: at most {max(map(len, objects.values()), default=0)}")
        for name, passed in checks.items():
            print(f"  {'ok  ' if passed else 'FAIL'} {name}")
        for label, items in (("missing", missing), ("stray", stray), ("written twice",
                             list(written_twice)), ("differ", differ), ("gpg", gpg)):  # fmt: skip
            if items:
                print(f"  {label}: {items[:10]}")
        return all(checks.values())


def _sha256(client, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(8 * MIB):
        digest.update(chunk)
    return digest.hexdigest()


def _stray_gpg() -> list[str]:
    """The pipeline's temporary gpg homes that no live process owns (its owner lock is free),
    and gpg-agents still running for a home that is stray or gone."""
    stray = []
    for home in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*"):
        try:
            with open(home / "owner.lock", "rb") as owner:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its owner runs
        except OSError:
            pass  # no owner lock: left half made
        stray.append(str(home))
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if cmdline[0].endswith(b"gpg-agent") and HOME_PREFIX.encode() in b" ".join(cmdline):
                home = cmdline[cmdline.index(b"--homedir") + 1].decode()
                if home in stray or not os.path.isdir(home):
                    stray.append(f"gpg-agent {entry} ({home})")
    return stray


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the CI's variant: 2 minutes")
    parser.add_argument("--minutes", type=float, help="of faults (default: 30, or 1 short)")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    plan = SHORT if args.short else FULL
    if args.minutes:
        plan = Plan(**{**plan.__dict__, "minutes": args.minutes})
    print(f"seed {args.seed}")
    # Stopped (SIGTERM, Ctrl-C), it stops its daemon and its stack as it would at the end.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # PostgreSQL durable, as any deployment's: it is killed with kill -9 here, and the stack's
    # default (commits acknowledged before their WAL is written) would lose the last ones.
    with LocalStack(durable_postgres=True) as stack:
        ok = Soak(stack, plan, args.seed).run()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
