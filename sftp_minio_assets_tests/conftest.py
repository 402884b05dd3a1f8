"""Real servers for the whole session (sshd, SeaweedFS S3, PostgreSQL), fresh state per test."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from devstack.local_stack import LocalStack, stop_group
from sftp_minio_assets.db.transfer_log import TransferLog
from sftp_minio_assets.defs.environment import source_resource
from sftp_minio_assets.defs.resources import (
    ObjectStoreResource,
    SourceResource,
    TransferLogResource,
    TransferSettings,
)
from sftp_minio_assets.defs.source_config import SFTPConnection, SourcePolicyConfig
from sftp_minio_assets.s3.store import ObjectStore, S3Settings

from .support import PROJECT, Keys


def pytest_collection_modifyitems(items):
    """The folders are the tiers: unit/ never starts a server (`pytest -m "not integration"`),
    integration/ is marked `integration`, and a test that reaches the stack unmarked is refused;
    all checked before any test runs."""
    problems = []
    for item in items:
        marked = item.get_closest_marker("integration") is not None
        folder = Path(str(item.path)).relative_to(PROJECT / "sftp_minio_assets_tests").parts[0]
        if "stack" in getattr(item, "fixturenames", ()) and not marked:
            problems.append(f"{item.nodeid} uses the real servers (the stack fixture) unmarked")
        elif folder == "unit" and marked:
            problems.append(f"{item.nodeid} is marked integration in unit/: move it")
        elif folder == "integration" and not marked:
            problems.append(f"{item.nodeid} lacks @pytest.mark.integration, or belongs in unit/")
    if problems:
        raise pytest.UsageError("; ".join(problems))


@pytest.fixture(scope="session")
def stack():
    # Its own temporary directory: pytest's is private to root, and PostgreSQL runs as postgres.
    with LocalStack() as running:
        yield running


@dataclass
class Env:
    """One test's world: its own SFTP root, bucket and transfer-log database."""

    stack: LocalStack
    root: Path
    bucket: str
    db_url: str

    def write(self, path: str, data: bytes, age_seconds: float = 3600) -> Path:
        """A remote file, with an mtime far enough in the past to pass the stability gate."""
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        mtime = target.stat().st_mtime - age_seconds
        os.utime(target, (mtime, mtime))
        return target

    def connection(self, **overrides) -> SFTPConnection:
        """The test's sshd, logged in with the stack's key, its host key known."""
        ssh = self.stack.ssh
        settings = dict(
            host=ssh.host,
            port=ssh.port,
            username=ssh.username,
            private_key=str(ssh.private_key_path),
            known_hosts_path=str(ssh.known_hosts_path),
        )
        return SFTPConnection(**{**settings, **overrides})

    def minio(self, **overrides) -> ObjectStoreResource:
        s3 = self.stack.s3
        settings = dict(
            endpoint_url=s3.endpoint_url,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
            bucket=self.bucket,
        )
        return ObjectStoreResource(**{**settings, **overrides})

    def shared(
        self, stale_minutes: float = 30, minio=None, transfer_log=None, **transfer_settings
    ) -> dict:
        """The resources all sources share: the test's bucket and transfer log."""
        return {
            "minio": minio or self.minio(),
            "transfer_log": transfer_log
            or TransferLogResource(url=self.db_url, max_stale_lock_minutes=stale_minutes),
            "transfer_settings": TransferSettings(**transfer_settings),
        }

    def source(self, shared: dict | None = None, **settings) -> SourceResource:
        """The source `default` on the test's root, files taken at any age; settings: fields
        of its connection or its policy."""
        policy = {"root": str(self.root), "min_file_age_seconds": 0}
        for field in list(settings):
            if field in SourcePolicyConfig.model_fields:
                policy[field] = settings.pop(field)
        return source_resource(
            "default",
            self.connection(**settings),
            SourcePolicyConfig(**policy),
            shared or self.shared(),
        )

    def resources(self, sftp: dict | None = None, **shared) -> dict:
        """The default source and the shared resources, by their keys in the definitions;
        sftp: the source's settings, shared: those of env.shared."""
        shared_resources = self.shared(**shared)
        source = self.source(shared_resources, **(sftp or {}))
        return {**shared_resources, "source_default": source}

    def resource_config(self, **shared) -> dict:
        """The same, as plain values for a run in another process (run_partitions.py)."""
        return {name: resource.model_dump() for name, resource in self.resources(**shared).items()}

    @property
    def store(self) -> ObjectStore:
        s3 = self.stack.s3
        store = ObjectStore(S3Settings(s3.endpoint_url, s3.access_key, s3.secret_key, self.bucket))
        store.ensure_bucket()
        return store

    @property
    def log(self) -> TransferLog:
        transfer_log = TransferLog(self.db_url)
        transfer_log.schema.migrate()
        return transfer_log

    def rows(self) -> dict[str, dict]:
        with self.log.db.connection().execute("SELECT * FROM file_transfer_log") as cursor:
            return {row["filename"]: row for row in cursor.fetchall()}

    def object_sha256(self, key: str) -> str:
        body = self.store.fs.cat_file(f"{self.bucket}/{key}")
        return hashlib.sha256(body).hexdigest()


@pytest.fixture
def env(stack) -> Env:
    name = uuid.uuid4().hex[:12]
    root = stack.ssh.root / name
    root.mkdir()
    return Env(stack, root, f"test-{name}", stack.postgres.create_database(f"log_{name}"))


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    """PGP key pairs made by GnuPG (support.Keys), for one test module; no server needed."""
    home = tempfile.mkdtemp(prefix="pgp-test-")  # short: gpg-agent's socket lives in it
    yield Keys.generate(home)
    subprocess.run(["gpgconf", "--homedir", home, "--kill", "gpg-agent"], check=False)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@dataclass
class Daemon:
    """A real `dagster-daemon run` on the project's dagster.yaml and workspace.yaml (or another
    workspace), its instance on the stack's PostgreSQL, as deployments run it (with the code
    server it starts, which launches each run as a process of its own)."""

    process: subprocess.Popen
    dagster_db: str  # the instance's own database
    home: Path
    environment: dict[str, str]  # the daemon's: another Dagster process of the deployment's

    def run_statuses(self, of_files: bool = False) -> dict[str, str]:
        """Each run's status; of_files: the runs that copy files only, not those of the
        transfer_health schedule (which fires on the hour, whatever the test)."""
        query = "SELECT run_id, status FROM runs"
        if of_files:
            query += " WHERE pipeline_name <> 'transfer_health'"
        with psycopg.connect(self.dagster_db) as conn:
            return dict(conn.execute(query).fetchall())

    def pids(self, marker: str = "") -> list[int]:
        """Processes started by the daemon whose command line contains marker, but zombies;
        the daemon's own while it runs. Its session is its PID (start_new_session), so that
        they are found after it exited too."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
                if (
                    os.getsid(int(entry)) == self.process.pid
                    and state != "Z"
                    and marker.encode() in cmdline
                ):
                    found.append(int(entry))
        return found

    def log(self) -> str:
        return (self.home / "daemon.log").read_text(errors="replace")


@pytest.fixture
def start_daemon(env, tmp_path):
    """Starts the daemon with the stack's settings plus the given variables, on the project's
    workspace.yaml or the given one (another project's code location); stops it after."""
    started: list[Daemon] = []

    def start(
        workspace: Path | None = None, start_timeout_seconds: int | None = None, **variables: str
    ) -> Daemon:
        workspace = workspace or PROJECT / "workspace.yaml"
        home = tmp_path / "dagster_home"
        home.mkdir(exist_ok=True)
        instance = (PROJECT / "dagster.yaml").read_text()
        if start_timeout_seconds is not None:  # runs that die starting are failed sooner
            shorter = f"start_timeout_seconds: {start_timeout_seconds}"
            instance, changed = re.subn(r"start_timeout_seconds: \d+", shorter, instance)
            assert changed == 1, "dagster.yaml sets no start_timeout_seconds"
        (home / "dagster.yaml").write_text(instance)
        name = f"dagster_{env.bucket.removeprefix('test-')}"
        dagster_db = env.stack.postgres.create_database(name, exist_ok=True)
        environment = {
            **os.environ,
            **env.stack.env(bucket=env.bucket),
            "SFTP_ROOT": str(env.root),
            "TRANSFER_DB_URL": env.db_url,
            "MIN_FILE_AGE_SECONDS": "0",
            "DAGSTER_HOME": str(home),
            "DAGSTER_PG_DB": name,
            **variables,
        }
        with open(home / "daemon.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(workspace)],
                cwd=PROJECT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(Daemon(process, dagster_db, home, environment))
        return started[-1]

    yield start
    for daemon in started:
        stop_group(daemon.process)
        # The code server it started got the same SIGTERM, and cleans up on PostgreSQL: it
        # would hang for good once the stack is stopped, were it not waited for here.
        deadline = time.monotonic() + 30
        while daemon.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in daemon.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
