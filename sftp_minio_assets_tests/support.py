"""Helpers the test modules share; fixtures stay in conftest.py, and no test module imports
from another. Most take the `env` fixture's Env: they need the real servers."""

import hashlib
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import psycopg

from devstack.demo import apply_partition_requests
from sftp_minio_assets.core.keys import encode_key
from sftp_minio_assets.defs.assets import build_files_asset
from sftp_minio_assets.defs.resources import (
    AlertSettings,
    ObjectStoreResource,
    TransferLogResource,
    TransferSettings,
)
from sftp_minio_assets.defs.sensors import build_new_files_sensor
from sftp_minio_assets.policy.destinations import DestinationTemplate
from sftp_minio_assets.worker.worker import SourcePolicy

PROJECT = Path(__file__).resolve().parents[1]

# The table of the Airflow DAG this project replaces, as it made it (its own columns only).
AIRFLOW_TABLE = """
CREATE TABLE file_transfer_log (
    id SERIAL PRIMARY KEY,
    filename VARCHAR(255) UNIQUE NOT NULL,
    worker_id VARCHAR(100),
    transfer_start_time TIMESTAMP,
    transfer_end_time TIMESTAMP,
    file_size_mb DECIMAL(10,2),
    download_duration DECIMAL(10,2),
    upload_duration DECIMAL(10,2),
    total_duration DECIMAL(10,2),
    status VARCHAR(20),
    error_message TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)
"""

PARTITIONS = "files_default"
# The worker's own retries are tested; the step's (30 s apart) would only slow the tests down.
files = build_files_asset(retry_policy=None)
sensor = build_new_files_sensor("default", files)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def wait_for(condition, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def offline_shared() -> dict:
    """The resources all sources share, on servers that are not there: enough to load sources,
    as nothing connects before its first use."""
    return {
        "minio": ObjectStoreResource(
            endpoint_url="http://127.0.0.1:1", access_key="a", secret_key="b"
        ),
        "transfer_log": TransferLogResource(url="postgresql://ingest@127.0.0.1:1/transfers"),
        "transfer_settings": TransferSettings(),
    }


# --- runs of the default source's asset ------------------------------------------------------


def materialize(env, instance, paths, **shared) -> dg.ExecuteInProcessResult:
    """One run over the given files, as the sensor or the UI would launch it; shared: settings
    of env.shared (transfer settings, stale_minutes)."""
    if instance is None:
        with dg.instance_for_test() as temporary:
            return materialize(env, temporary, paths, **shared)
    keys = [encode_key(path) for path in paths]
    known = set(instance.get_dynamic_partitions(PARTITIONS))
    instance.add_dynamic_partitions(PARTITIONS, [key for key in keys if key not in known])
    if len(keys) == 1:
        options = {"partition_key": keys[0]}
    else:
        options = {
            "tags": {
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
            }
        }
    return dg.materialize(
        [files],
        instance=instance,
        resources=env.resources(**shared),
        raise_on_error=False,
        **options,
    )


def statuses(instance, paths):
    keys = [encode_key(path) for path in paths]
    by_key = instance.get_status_by_partition(
        files.key, keys, dg.DynamicPartitionsDefinition(name=PARTITIONS)
    )
    return {
        path: (by_key[key].value if by_key[key] else None)
        for path, key in zip(paths, keys, strict=True)
    }


def materializations(result) -> dict[str, dict]:
    return {
        event.partition: {
            k: v.value for k, v in event.event_specific_data.materialization.metadata.items()
        }
        for event in result.get_asset_materialization_events()
    }


# --- ticks of the default source's sensor ----------------------------------------------------


def tick(env, instance, shared=None, **sftp) -> dg.SensorResult:
    """One evaluation; its partition requests are applied to the instance, as the daemon does.
    shared: settings of env.shared (transfer settings, stale_minutes); sftp: the source's."""
    resources = env.resources(sftp, **(shared or {}))
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    apply_partition_requests(instance, result)
    return result


def keys_of(request: dg.RunRequest, instance) -> list[str]:
    """The partitions a run request covers: one key, or a range in the partitions' order."""
    if request.partition_key:
        return [request.partition_key]
    span = request.partition_key_range
    order = list(instance.get_dynamic_partitions(PARTITIONS))
    return order[order.index(span.start) : order.index(span.end) + 1]


def requested(result, instance) -> list[str]:
    return sorted(key for request in result.run_requests for key in keys_of(request, instance))


# --- the bucket's writes ---------------------------------------------------------------------


def enable_versioning(env) -> None:
    """Every write of an object becomes a version: counting them counts the writes."""
    store = env.store
    store._call("put_bucket_versioning", VersioningConfiguration={"Status": "Enabled"})


def writes_per_key(env) -> dict[str, int]:
    versions = env.store._call("list_object_versions", Prefix="").get("Versions", [])
    counts: dict[str, int] = {}
    for version in versions:
        counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


# --- alerts ----------------------------------------------------------------------------------


class Receiver:
    """A local HTTP server that records the JSON posted to it, as a Slack webhook would."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def run_status_sensor(sensor, env, instance, result, receiver, transfer_settings=None):
    """Evaluate a run status sensor on a finished run, as the daemon would."""
    event = result.get_run_success_event() if result.success else result.get_run_failure_event()
    with dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={
            "transfer_log": env.resources()["transfer_log"],
            "alerts": AlertSettings(webhook_url=receiver.url, after_failures=2),
            "transfer_settings": TransferSettings(**(transfer_settings or {})),
        },
    ) as context:
        sensor(context if result.success else context.for_run_failure())


# --- PGP -------------------------------------------------------------------------------------

PASSPHRASE = "correct horse battery 42"


@dataclass
class Keys:
    """Our key pair (its private key protected by PASSPHRASE), the partner's who signs, and a
    stranger's; all in one GnuPG home, where test files are made."""

    home: str
    fingerprints: dict[str, str]  # "us", "partner", "stranger" -> primary key fingerprint

    @classmethod
    def generate(cls, home: str) -> "Keys":
        made = cls(home, {})
        for who in ("us", "partner", "stranger"):
            passphrase = PASSPHRASE if who == "us" else ""
            uid = f"{who} <{who}@example.org>"
            made.gpg(
                *("--pinentry-mode", "loopback", "--passphrase", passphrase),
                *("--quick-gen-key", uid, "future-default", "default", "0"),
            )
            colons = made.gpg("--with-colons", "--list-keys", f"<{who}@example.org>").decode()
            made.fingerprints[who] = next(
                line.split(":")[9] for line in colons.splitlines() if line.startswith("fpr:")
            )
        return made

    def gpg(self, *args: str, data: bytes = b"") -> bytes:
        command = ["gpg", "--homedir", self.home, "--batch", "--no-tty", "--trust-model", "always"]
        done = subprocess.run([*command, *args], input=data, capture_output=True, check=True)
        return done.stdout

    def secret(self, who: str) -> str:
        return self.gpg(
            *("--pinentry-mode", "loopback", "--passphrase", PASSPHRASE if who == "us" else ""),
            *("--armor", "--export-secret-keys", self.fingerprints[who]),
        ).decode()

    def public(self, who: str) -> str:
        return self.gpg("--armor", "--export", self.fingerprints[who]).decode()

    def encrypt(self, data: bytes, to: str = "us", signer: str | None = "partner") -> bytes:
        signing = ["--sign", "--local-user", self.fingerprints[signer]] if signer else []
        return self.gpg(
            *("--pinentry-mode", "loopback", "--passphrase", ""),
            *("--recipient", self.fingerprints[to], *signing, "--encrypt"),
            data=data,
        )


def decrypting(keys: Keys, **overrides) -> dict:
    """A source's PGP settings: our key, and files required to be signed by the partner."""
    settings = {
        "pgp_private_key": keys.secret("us"),
        "pgp_passphrase": PASSPHRASE,
        "pgp_verify_key": keys.public("partner"),
    }
    return {**settings, **overrides}


# --- resumable copies killed part way, and the daemon's settings ----------------------------

# Quick to give up a stale claim and to tick: the daemon's tests see recovery in seconds.
DAEMON_SETTINGS = {"MAX_STALE_LOCK_MINUTES": "0.5", "SENSOR_INTERVAL_SECONDS": "5"}
# Slow enough to catch each copy past half way, fast enough for CI.
CAP = 60_000_000


def uploaded(env) -> int:
    """The bytes of resumable uploads recorded as done, in the transfer log."""
    with psycopg.connect(env.db_url) as conn:
        try:
            return conn.execute("SELECT max(done_bytes) FROM transfer_uploads").fetchone()[0] or 0
        except psycopg.errors.UndefinedTable:  # not migrated yet
            return 0


def run_partitions(env, keys: list[str], shared: dict | None = None, **sftp) -> subprocess.Popen:
    """A run of the asset in a process of its own (run_partitions.py)."""
    spec = {"resources": env.resource_config(sftp=sftp, **(shared or {})), "keys": keys}
    return subprocess.Popen(
        [sys.executable, "-m", "sftp_minio_assets_tests.run_partitions", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )


def read_so_far(env) -> int:
    """The bytes copies in progress have read, as their heartbeats record them: every quarter
    of the stale window (0.75 s in a run with stale_minutes=0.05), whatever the byte path."""
    query = "SELECT max(progress_bytes) FROM file_transfer_log WHERE status = 'IN_PROGRESS'"
    with psycopg.connect(env.db_url) as conn:
        try:
            return conn.execute(query).fetchone()[0] or 0
        except psycopg.errors.UndefinedTable:  # not migrated yet
            return 0


def killed_mid_copy(
    env,
    name: str,
    until: Callable[[], bool],
    what: str,
    cap: int = CAP,
    sftp: dict | None = None,
    **shared,
) -> None:
    """A run copying the file in a process of its own, killed with -9 once until() holds; its
    claim then goes stale (here after 3 s, as after 30 min by default). A run that ends before
    (the copy was quicker than the cap lets it be) fails the test: nothing was killed. sftp:
    more settings of the source; shared: settings of env.shared."""
    first = run_partitions(env, [name], shared=shared, max_bytes_per_second=cap, **(sftp or {}))

    def reached() -> str | None:
        if until():
            return "reached"
        return "ended" if first.poll() is not None else None

    try:
        if wait_for(reached, 120, what) == "ended":
            raise AssertionError(f"the run ended (exit code {first.returncode}) before {what}")
    finally:
        first.kill()  # SIGKILL: no handler runs, nothing is aborted or recorded
        first.wait()
    time.sleep(3)


def killed_half_way(
    env, name: str, size: int, cap: int = CAP, sftp: dict | None = None, **shared
) -> None:
    """killed_mid_copy, once half of the file is uploaded (by a resumable copy, whose journal
    records its parts)."""
    half = f"half of {name} to be uploaded"
    killed_mid_copy(env, name, lambda: uploaded(env) >= size // 2, half, cap, sftp, **shared)


SMALL = {"part_size_mb": 5, "resume_min_mb": 10}  # resumable from 10 MiB, in parts of 5


def resuming_worker(env, lines: list[str], shared: dict | None = None, **sftp):
    """A worker of another run, taking over stale claims, its run log in lines; shared: more
    settings of env.shared (local_dir), sftp: more settings of the source."""
    settings = {"stale_minutes": 0.05, "retries": 0, **SMALL, **(shared or {})}
    source = env.source(env.shared(**settings), **sftp)
    return source.worker(report=lines.append)


# --- object keys: a source's policy at a fixed mtime and day --------------------------------

MTIME = int(datetime(2026, 3, 7, 23, 30, tzinfo=UTC).timestamp())
DAY = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def object_key(template: str, path: str, prefix: str = "", compression: str = "none") -> str:
    """The object a source of partner_a with that template names path, modified at MTIME and
    copied on DAY."""
    policy = SourcePolicy(
        "unused",
        template=DestinationTemplate.parse(template),
        source="partner_a",
        compression=compression,
    )
    return policy.object_name(prefix, path, MTIME, DAY)


# --- sources files ---------------------------------------------------------------------------


def write_sources(tmp_path, text: str) -> Path:
    """A sources file (SOURCES_FILE) holding text, dedented."""
    path = tmp_path / "sources.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# --- processes by name, from /proc (gpg and its agent) ----------------------------------------


@dataclass
class Process:
    pid: int
    ppid: int
    command: list[str]
    environment: bytes

    def homedir(self) -> str:
        return self.command[self.command.index("--homedir") + 1]


def running(name: str) -> list[Process]:
    """The processes called name (gpg, gpg-agent) now, read at once: they may end any moment."""
    found = []
    for entry in os.listdir("/proc"):
        with suppress(OSError, ValueError):
            if not entry.isdigit() or Path(f"/proc/{entry}/comm").read_text().strip() != name:
                continue
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
            command = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")
            environment = Path(f"/proc/{entry}/environ").read_bytes()
            found.append(Process(int(entry), ppid, command, environment))
    return found


def agents_of(home: str) -> list[Process]:
    return [agent for agent in running("gpg-agent") if home in agent.command]


# --- the byte-path matrix (integration/test_checksums.py; its coverage: unit/transfer/
# test_stage_matrix.py) ----------------------------------------------------------------------

AXES = {
    "pgp": ("plain", "pgp"),  # the remote file PGP-encrypted (and signed), stored decrypted
    "compression": ("none", "gzip", "zstd"),
    "checksums": ("checksums", "no-checksums"),  # server_checksums
    "shape": ("one-put", "multipart", "resumed"),  # resumed: copied again after a kill -9
    "via": ("streamed", "local-dir"),  # LOCAL_DIR unset or set
}
# All-pairs over the five axes: any value of any axis meets every value of every other axis in
# at least one row (test_the_pairwise_table_covers_every_pair_of_values proves it). Nine rows, the
# fewest possible (compression x shape alone has nine pairs), chosen so that the one resumable
# path (plain, none, streamed) is the resumed row of compression none, without checksums (the
# test after this matrix resumes one with them), and a decrypted, compressed copy is killed
# streamed (its open multipart upload left behind) and another through LOCAL_DIR.
PAIRWISE = [
    ("plain", "none", "checksums", "one-put", "streamed"),
    ("pgp", "none", "checksums", "multipart", "local-dir"),
    ("plain", "none", "no-checksums", "resumed", "streamed"),
    ("plain", "gzip", "checksums", "one-put", "local-dir"),
    ("plain", "gzip", "checksums", "multipart", "streamed"),
    ("pgp", "gzip", "no-checksums", "resumed", "local-dir"),
    ("pgp", "zstd", "no-checksums", "one-put", "local-dir"),
    ("plain", "zstd", "no-checksums", "multipart", "local-dir"),
    ("pgp", "zstd", "checksums", "resumed", "streamed"),
]
# The whole product where it is cheap (one copy each, a few seconds): streamed, one PUT or
# multipart, every pgp x compression x checksums; the pairwise rows it holds run once.
STREAMED = [
    (pgp, compression, checksums, shape, "streamed")
    for pgp, compression, checksums, shape in itertools.product(
        AXES["pgp"], AXES["compression"], AXES["checksums"], ("one-put", "multipart")
    )
]
# Beyond the pairs, by hand: the plain copy big enough to resume that LOCAL_DIR alone keeps
# from resuming (Worker._resumable): it starts over.
BY_HAND = [("plain", "none", "checksums", "resumed", "local-dir")]
CASES = STREAMED + [case for case in PAIRWISE + BY_HAND if case not in STREAMED]


def uncovered_pairs(cases: list[tuple[str, ...]]) -> list[tuple[str, str]]:
    """The pairs of values (of two axes) that no case holds."""
    missing = []
    for (i, first), (j, second) in itertools.combinations(enumerate(AXES.values()), 2):
        for pair in itertools.product(first, second):
            if not any((case[i], case[j]) == pair for case in cases):
                missing.append(pair)
    return missing
