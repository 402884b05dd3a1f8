"""Benchmark: this pipeline against `rclone copy` (and OpenSSH `sftp` as the read ceiling).

    python -m benchmarks.run            # full: 1 GiB, 1,000 x 64 KiB, 10,000 x 4 KiB, and the
                                        # far workloads below; 3 rounds
    python -m benchmarks.run --quick    # small sizes, 1 round: about three minutes (run by CI)
    python -m benchmarks.run --far-only # only 500 x 64 KiB and 1 x 256 MiB at 40 ms round trip

Everything runs on one local stack (sshd, SeaweedFS, PostgreSQL), the tools alternating within
each round. The pipeline runs as deployed: a real `dagster-daemon` (sensor, queued run
coordinator, the project's run launcher with the code server it starts) on the project's
dagster.yaml, on the stack's PostgreSQL, the sensor ticking every SENSOR_INTERVAL seconds. Once
the daemon's sensor has ticked on an empty root, the workload's tree is moved into the root
("files appear"); the pipeline is timed from then to the last COMPLETED row of the log, so it
includes the wait for the next tick (up to SENSOR_INTERVAL seconds).
The CPU time each kind of process spends (run workers, daemon, code server, PostgreSQL, sshd,
the S3 server, rclone) is sampled from /proc over each tool's window: on a 2-core machine that,
not the wire, is what bounds many small files.
The far workloads put the partner 40 ms away: a relay process (devstack.tcp_relay, 20 ms each
way; this kernel has no netem) sits between sshd and the pipeline and tuned rclone, both checking
the host key against a known_hosts file that lists the relay's port. OpenSSH `sftp` reads the
big file direct, through the relay with no delay (the relay's own pass-through) and at 40 ms.
Prints a table of medians and ratios to rclone, a table of CPU per file, and writes both as JSON.
"""

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
from dagster import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorType
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from devstack.local_stack import LocalStack, stop_group

PROJECT = Path(__file__).resolve().parents[1]
# The tree of this benchmark's own code, which the relay runs from: benchmarks.compare points
# PROJECT at the tree under test, which may predate the relay.
HERE = Path(__file__).resolve().parents[1]
SENSOR_INTERVAL = 5  # seconds between the sensor's ticks (30 by default)
TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Workload:
    name: str
    files: int
    size: int
    delay_ms: float = 0  # each way, through a relay; 0: straight to sshd


FULL = [
    Workload("1 x 1 GiB", 1, 1024**3),
    Workload("1,000 x 64 KiB", 1000, 64 * 1024),
    Workload("10,000 x 4 KiB", 10_000, 4 * 1024),
]
QUICK = [
    Workload("1 x 64 MiB", 1, 64 * 1024**2),
    Workload("200 x 64 KiB", 200, 64 * 1024),
    Workload("500 x 4 KiB", 500, 4 * 1024),
]
# Partners far away (issue 23): 40 ms round trip.
FAR = [
    Workload("500 x 64 KiB, 40 ms RTT", 500, 64 * 1024, delay_ms=20),
    Workload("1 x 256 MiB, 40 ms RTT", 1, 256 * 1024**2, delay_ms=20),
]


def seed(root: Path, workload: Workload) -> Path:
    folder = root / workload.name.replace(" ", "").replace(",", "")
    chunk = os.urandom(min(workload.size, 16 * 1024**2))
    for index in range(workload.files):
        target = folder / f"{index // 1000:03d}" / f"file-{index:05d}.bin"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            left = workload.size
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    past = time.time() - 3600
    for path in folder.rglob("*"):
        os.utime(path, (past, past))
    return folder


# Processes this benchmark started, by what their command line says they are.
PROCESS_KINDS = [
    ("run worker", b"spawn_main"),  # Dagster's default launcher's
    ("run worker", b"defs.run_worker"),
    ("code server", b"api\0grpc"),
    ("daemon", b"dagster._daemon"),
    ("PostgreSQL", b"postgres"),
    ("sshd", b"sshd"),
    ("sshd", b"sftp-server"),
    ("S3 server", b"weed"),
    ("rclone", b"rclone"),
    ("relay", b"tcp_relay"),
]
# The network's, not a tool's: left out of the totals of CPU per file.
NOT_A_TOOL = {"relay"}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TOOLS = ("pipeline", "rclone", "rclone tuned")
# Far away, rclone's defaults (4 transfers, an `md5sum` over SSH per file) are not what a user
# would run.
FAR_TOOLS = ("pipeline", "rclone tuned")
# rclone as a user tunes it for many files: more transfers and checkers, no hash check by an
# `md5sum` over SSH (issue 21's reference).
RCLONE_TUNED = ["--transfers", "16", "--checkers", "16", "--sftp-disable-hashcheck"]


class ProcessMeter:
    """CPU seconds of this process's descendants, by kind, and the peak RSS (VmHWM) of the run
    workers among them, over a `with` block: sampled every 0.1 s from /proc (a process that ends
    between two samples loses at most 0.1 s)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, str], float] = {}
        self.peak_rss_kib = 0
        self._stop = threading.Event()

    def __enter__(self) -> "ProcessMeter":
        self._sample()
        self.before = dict(self.seen)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_kind(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for (pid, kind), seconds in self.seen.items():
            spent[kind] = spent.get(kind, 0.0) + seconds - self.before.get((pid, kind), 0.0)
        return spent

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def _sample(self) -> None:
        parents: dict[int, int] = {}
        stats: dict[int, list[str]] = {}
        for process in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                fields = (process / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(process.name)] = fields
                parents[int(process.name)] = int(fields[1])
        me = os.getpid()
        for pid, fields in stats.items():
            ancestor, hops = parents.get(pid), 0
            while ancestor not in (None, 0, 1, me) and hops < 16:
                ancestor, hops = parents.get(ancestor), hops + 1
            if ancestor != me:
                continue
            with contextlib.suppress(OSError, StopIteration):
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
                kind = next((k for k, mark in PROCESS_KINDS if mark in command), None)
                if kind:
                    self.seen[(pid, kind)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
                if kind == "run worker":
                    status = Path(f"/proc/{pid}/status").read_text().splitlines()
                    hwm = next(line for line in status if line.startswith("VmHWM"))
                    self.peak_rss_kib = max(self.peak_rss_kib, int(hwm.split()[1]))


@dataclass(frozen=True)
class Route:
    """Where the tools reach the SFTP server, and the known_hosts file that lists it there."""

    port: int
    known_hosts_path: Path

    @classmethod
    def direct(cls, stack: LocalStack) -> "Route":
        return cls(stack.ssh.port, stack.ssh.known_hosts_path)

    def pipeline_env(self) -> dict[str, str]:
        return {"SFTP_PORT": str(self.port), "SFTP_KNOWN_HOSTS_PATH": str(self.known_hosts_path)}


class Relay:
    """`python -m devstack.tcp_relay` before the stack's sshd, in a process of its own (its
    threads would otherwise share this process's interpreter with the CPU meter), stopped by
    its PID on exit. `route`: its port, with a known_hosts file that lists the server's key for
    that port, so that every tool still checks the host key."""

    def __init__(self, stack: LocalStack, delay_ms: float) -> None:
        self.stack, self.delay_ms = stack, delay_ms

    def __enter__(self) -> "Relay":
        ssh = self.stack.ssh
        self.process = subprocess.Popen(
            [sys.executable, "-m", "devstack.tcp_relay", f"{ssh.host}:{ssh.port}",
             "--delay-ms", str(self.delay_ms)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            port = int(self.process.stdout.readline())
            kind, blob = ssh.known_hosts_path.read_text().split()[1:3]
            known_hosts = self.stack.base / f"known_hosts-relay-{port}"
            known_hosts.write_text(f"[{ssh.host}]:{port} {kind} {blob}\n")
        except BaseException:
            stop_group(self.process)
            raise
        self.route = Route(port, known_hosts)
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.process)


def run_pipeline(
    stack: LocalStack, folder: Path, round_id: str, extra_env: dict[str, str] | None = None
) -> dict:
    """Files appear under a running daemon's sensor -> all COMPLETED, on a fresh log and
    Dagster database. extra_env: variables of the daemon over the stack's."""
    env = pipeline_env(stack, round_id, extra_env)
    # The bucket is there before the files, as rclone's is (and as a deployment's is after its
    # first run): creating it is not what either tool is timed on.
    make_bucket(stack, env["MINIO_BUCKET"])
    root = Path(env["SFTP_ROOT"])
    files = sum(1 for path in folder.rglob("*") if path.is_file())
    keep = os.environ.get("BENCH_KEEP_LOGS")  # a folder: the daemon's log is copied there
    with Daemon(env, keep) as daemon, instance_of(env) as instance:
        daemon.wait(lambda: _sensor_ticked(instance), "the sensor's first tick")
        started = time.monotonic()
        folder.rename(root / folder.name)
        try:
            with (
                psycopg.connect(env["TRANSFER_DB_URL"], autocommit=True) as log,
                ProcessMeter() as meter,
            ):
                daemon.wait(lambda: _completed(log) == files, f"{files} COMPLETED")
            elapsed = time.monotonic() - started
            daemon.wait(lambda: _all_runs_done(instance), "the last run to end")
            runs = instance.get_runs_count()
            run_records = describe_runs(instance)
            ticks = describe_ticks(instance)
        finally:
            (root / folder.name).rename(folder)
    with psycopg.connect(env["TRANSFER_DB_URL"]) as conn:
        first, last, retried = conn.execute(
            "SELECT extract(epoch FROM min(transfer_start_time)), "
            "extract(epoch FROM max(transfer_end_time)), sum(attempts - 1) FROM file_transfer_log"
        ).fetchone()
    # The measure: from the sensor's first tick that requested runs to the last row.
    first_tick = min((tick["started"] for tick in ticks if tick["runs"]), default=None)
    return {
        "seconds": elapsed,
        "seconds_from_first_tick": float(last) - first_tick if first_tick and last else None,
        "completed": files,
        "runs": runs,  # the sensor's, plus any retried by run_retries
        "runs_by_origin": runs_by_origin(run_records),
        "run_records": run_records,
        "ticks": ticks,
        "file_attempts_retried": int(retried),
        "transfer_window_seconds": float(last - first) if first else 0.0,
        "peak_rss_mib": meter.peak_rss_kib / 1024,
        "cpu_seconds": meter.by_kind(),
    }


def pipeline_env(
    stack: LocalStack, round_id: str, extra_env: dict[str, str] | None = None
) -> dict[str, str]:
    """The daemon's environment on a new SFTP root, log and Dagster database (DAGSTER_HOME with
    the project's dagster.yaml). extra_env: variables of the daemon over the stack's."""
    root = stack.ssh.root / f"pipeline-{round_id}"
    root.mkdir()
    env = {
        **os.environ,
        **stack.env(bucket=f"bench-{round_id}"),
        "SFTP_ROOT": str(root),
        "MIN_FILE_AGE_SECONDS": "0",
        "SENSOR_INTERVAL_SECONDS": str(SENSOR_INTERVAL),
        "TRANSFER_DB_URL": stack.postgres.create_database(f"log_{round_id}"),
        "DAGSTER_PG_DB": f"dagster_{round_id}",
        "DAGSTER_HOME": str(stack.base / f"home-{round_id}"),
        **(extra_env or {}),
    }
    stack.postgres.create_database(f"dagster_{round_id}")
    home = Path(env["DAGSTER_HOME"])
    home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    return env


class Daemon:
    """`dagster-daemon run` on the project's workspace, as integration/test_ui.py starts it."""

    def __init__(self, env: dict[str, str], keep: str | None = None) -> None:
        self.env = env
        self.log_path = Path(env["DAGSTER_HOME"]) / "daemon.log"
        self.keep = keep

    def __enter__(self) -> "Daemon":
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dagster._daemon", "run", "-w", "workspace.yaml"],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __exit__(self, *exc) -> None:
        stop_group(self.process)
        if self.keep:
            Path(self.keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, Path(self.keep) / f"daemon-{self.log_path.parent.name}.log")

    def wait(self, condition, what: str, timeout: float = TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if condition():
                return
            time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError(f"waiting for {what}: gave up\n" + "\n".join(tail))


@contextlib.contextmanager
def instance_of(env: dict[str, str]):
    instance = with_environment(env, lambda: dg.DagsterInstance.from_config(env["DAGSTER_HOME"]))
    try:
        yield instance
    finally:
        instance.dispose()


def describe_runs(instance: dg.DagsterInstance) -> list[dict]:
    """Each run: its status, how many files, and the tags that say who made it and why."""
    described = []
    for run in reversed(instance.get_runs()):
        tags = run.tags
        described.append(
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "files": _files_of(run),
                "created": instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp(),
                "events": _run_timeline(instance, run.run_id),
                **{k: v for k, v in tags.items() if k.startswith("dagster/") and k in RUN_TAGS},
            }
        )
    return described


TIMELINE = (
    DagsterEventType.RUN_ENQUEUED,
    DagsterEventType.RUN_DEQUEUED,
    DagsterEventType.RUN_STARTING,
    DagsterEventType.RUN_START,
    DagsterEventType.STEP_START,
    DagsterEventType.STEP_SUCCESS,
    DagsterEventType.RUN_SUCCESS,
)


def _run_timeline(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """When the run reached each stage of its life (the first event of each type), epoch s."""
    reached: dict[str, float] = {}
    for record in instance.all_logs(run_id, of_type=set(TIMELINE)):
        reached.setdefault(record.dagster_event_type.value, record.timestamp)
    return reached


RUN_TAGS = {
    "dagster/sensor_name",
    "dagster/tick",
    "dagster/run_key",
    "dagster/retry_number",
    "dagster/parent_run_id",
    "dagster/failure_reason",
    "dagster/backfill",
    "dagster/partition",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
}


def describe_ticks(instance: dg.DagsterInstance) -> list[dict]:
    """The sensor's ticks that did something (requested runs, or failed), in order."""
    described = []
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1000):
            if tick.status.value == "SKIPPED":
                continue
            described.append(
                {
                    "sensor": state.instigator_name,
                    "tick_id": tick.tick_id,
                    "status": tick.status.value,
                    "started": tick.timestamp,
                    "ended": tick.end_timestamp,
                    "runs": len(tick.run_ids),
                    "error": tick.error.message[:500] if tick.error else None,
                }
            )
    return sorted(described, key=lambda t: t["started"])


def _files_of(run: dg.DagsterRun) -> int | None:
    if run.tags.get("dagster/partition"):
        return 1
    start, end = (run.tags.get(f"dagster/asset_partition_range_{e}") for e in ("start", "end"))
    if not (start and end):
        return None
    # the benchmark's keys are ".../file-NNNNN.bin", in order
    return int(end.rsplit("-", 1)[1][:5]) - int(start.rsplit("-", 1)[1][:5]) + 1


def runs_by_origin(records: list[dict]) -> dict[str, int]:
    """Runs counted by what made them: the sensor's requests (by tick), run_retries."""
    origins: dict[str, int] = {}
    ticks = {r.get("dagster/tick") for r in records if "dagster/retry_number" not in r}
    for record in records:
        if "dagster/retry_number" in record:
            origin = f"retry of a {record.get('dagster/failure_reason', 'failed')} run"
        elif record.get("dagster/sensor_name"):
            origin = "sensor request"
        else:
            origin = "other"
        origins[origin] = origins.get(origin, 0) + 1
    origins["sensor ticks that requested runs"] = len(ticks - {None})
    return origins


def _sensor_ticked(instance: dg.DagsterInstance) -> bool:
    for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if state.instigator_name == "new_files_default" and instance.get_ticks(
            state.instigator_origin_id, state.selector_id, limit=1
        ):
            return True
    return False


def _completed(log: psycopg.Connection) -> int:
    try:
        query = "SELECT count(*) FROM file_transfer_log WHERE status = 'COMPLETED'"
        return log.execute(query).fetchone()[0]
    except psycopg.errors.UndefinedTable:  # no run has started yet
        return 0


def _all_runs_done(instance: dg.DagsterInstance) -> bool:
    unfinished = [s for s in dg.DagsterRunStatus if s not in FINISHED_STATUSES]
    return instance.get_runs_count(dg.RunsFilter(statuses=unfinished)) == 0


def with_environment(env: dict[str, str], action):
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return action()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_rclone(
    stack: LocalStack, folder: Path, round_id: str, flags: list[str], route: Route | None = None
) -> dict:
    ssh, s3 = stack.ssh, stack.s3
    route = route or Route.direct(stack)
    # A CA bundle in the environment makes rclone's S3 client refuse its own transport.
    inherited = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env = {
        **inherited,
        "RCLONE_CONFIG_SRC_TYPE": "sftp",
        "RCLONE_CONFIG_SRC_HOST": ssh.host,
        "RCLONE_CONFIG_SRC_PORT": str(route.port),
        "RCLONE_CONFIG_SRC_USER": ssh.username,
        "RCLONE_CONFIG_SRC_KEY_FILE": str(ssh.private_key_path),
        "RCLONE_CONFIG_SRC_KNOWN_HOSTS_FILE": str(route.known_hosts_path),
        "RCLONE_CONFIG_DST_TYPE": "s3",
        "RCLONE_CONFIG_DST_PROVIDER": "Other",
        "RCLONE_CONFIG_DST_ENDPOINT": s3.endpoint_url,
        "RCLONE_CONFIG_DST_ACCESS_KEY_ID": s3.access_key,
        "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": s3.secret_key,
        "RCLONE_CONFIG_DST_FORCE_PATH_STYLE": "true",
    }
    bucket = f"rclone-{round_id}"
    started = time.monotonic()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ProcessMeter() as meter:
        copy = subprocess.run(
            [
                "rclone",
                "copy",
                f"src:{folder}",
                f"dst:{bucket}/default",
                "--s3-no-check-bucket",
                *flags,
            ],  # fmt: skip
            env=env,
            capture_output=True,
            text=True,
        )
    if copy.returncode != 0:
        raise RuntimeError(f"rclone failed:\n{copy.stderr[-3000:]}")
    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = meter.by_kind()
    # rclone is this process's child: its exact CPU, not the last sample before it ended.
    spent["rclone"] = done.ru_utime + done.ru_stime - reaped.ru_utime - reaped.ru_stime
    return {"seconds": time.monotonic() - started, "cpu_seconds": spent}


def run_sftp_read(stack: LocalStack, folder: Path, route: Route | None = None) -> dict:
    ssh = stack.ssh
    route = route or Route.direct(stack)
    target = next(p for p in folder.rglob("*.bin"))
    started = time.monotonic()
    subprocess.run(
        [
            "sftp",
            "-q",
            "-i",
            str(ssh.private_key_path),
            "-P",
            str(route.port),
            "-o",
            f"UserKnownHostsFile={route.known_hosts_path}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-c",
            "aes128-gcm@openssh.com",
            "-b",
            "-",
            f"{ssh.username}@{ssh.host}",
        ],
        input=f'get "{target}" /dev/null\n'.encode(),
        check=True,
        capture_output=True,
    )
    return {"seconds": time.monotonic() - started}


def make_bucket(stack: LocalStack, name: str) -> None:
    stack.s3.client().create_bucket(Bucket=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--far-only", action="store_true", help="only the workloads at 40 ms round trip"
    )
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json", default=str(PROJECT / "benchmarks" / "results" / "latest.json"))
    parser.add_argument(
        "--workload",
        action="append",
        help="only this workload (by name, e.g. '10,000 x 4 KiB'); may be repeated",
    )
    parser.add_argument("--tools", default=",".join(TOOLS), help="e.g. 'pipeline' alone")
    args = parser.parse_args()
    if args.quick:
        workloads, rounds = QUICK, 1
    else:
        workloads, rounds = (FAR if args.far_only else FULL + FAR), 3
    if args.workload:
        known = {w.name: w for w in FULL + QUICK + FAR}
        workloads = [known[name] for name in args.workload]
    rounds = args.rounds or rounds
    tools_run = args.tools.split(",")
    results: dict[str, dict[str, list[dict]]] = {}
    with LocalStack() as stack:
        for workload in workloads:
            with contextlib.ExitStack() as network:
                route = Route.direct(stack)
                if workload.delay_ms:
                    route = network.enter_context(Relay(stack, workload.delay_ms)).route
                results[workload.name] = run_workload(stack, workload, route, rounds, tools_run)
    report(results, workloads, args.json)


def run_workload(
    stack: LocalStack, workload: Workload, route: Route, rounds: int, tools_run: list[str]
) -> dict[str, list[dict]]:
    """Each tool's rounds on one workload, reached through `route`, by tool."""
    folder = seed(stack.ssh.root, workload)
    offered = FAR_TOOLS if workload.delay_ms else TOOLS
    copiers = [tool for tool in offered if tool in tools_run]
    tools: dict[str, list[dict]] = {tool: [] for tool in copiers}
    for round_number in range(rounds):
        round_id = uuid.uuid4().hex[:8]
        for tool in copiers if round_number % 2 == 0 else copiers[::-1]:
            if tool == "pipeline":
                outcome = run_pipeline(stack, folder, round_id, route.pipeline_env())
                assert outcome["completed"] == workload.files, outcome
            else:
                bucket_round = f"{round_id}{'t' if tool == 'rclone tuned' else ''}"
                make_bucket(stack, f"rclone-{bucket_round}")
                flags = RCLONE_TUNED if tool == "rclone tuned" else []
                outcome = run_rclone(stack, folder, bucket_round, flags, route)
            tools[tool].append(outcome)
            print(
                f"{workload.name:>16}  round {round_number + 1}  {tool:<8} "
                f"{outcome['seconds']:7.2f} s"
                + (f"  runs {outcome['runs_by_origin']}" if tool == "pipeline" else ""),
                flush=True,
            )
        if workload.files == 1:
            for name, outcome in sftp_reads(stack, folder, workload, route).items():
                tools.setdefault(name, []).append(outcome)
                print(f"{workload.name:>16}  round {round_number + 1}  {name:<8} "
                      f"{outcome['seconds']:7.2f} s", flush=True)  # fmt: skip
    shutil.rmtree(folder)
    return tools


def sftp_reads(stack: LocalStack, folder: Path, workload: Workload, route: Route) -> dict:
    """OpenSSH `sftp` reading the file: the read ceiling; far away, also direct and through a
    relay that delays nothing, whose ratio is the relay's own pass-through."""
    if not workload.delay_ms:
        return {"sftp get": run_sftp_read(stack, folder)}
    with Relay(stack, 0) as undelayed:
        return {
            "sftp get": run_sftp_read(stack, folder, route),
            "sftp get direct": run_sftp_read(stack, folder),
            "sftp get relay 0 ms": run_sftp_read(stack, folder, undelayed.route),
        }


LOOPBACK_COLUMNS = [
    "workload", "pipeline_s", "rclone_s", "rclone_tuned_s", "ratio_to_rclone",
    "ratio_to_tuned_rclone", "pipeline_from_tick_s", "ratio_from_tick", "tuned_ratio_from_tick",
    "pipeline_MBps", "sftp_get_s", "share_of_sftp_read_ceiling", "runs", "runs_requested",
    "peak_rss_mib", "outside_copies_s", "cpu_ms_per_file", "rclone_cpu_ms_per_file",
    "rclone_tuned_cpu_ms_per_file",
]  # fmt: skip
FAR_COLUMNS = [
    "workload", "pipeline_s", "rclone_tuned_s", "ratio_to_tuned_rclone", "pipeline_from_tick_s",
    "tuned_ratio_from_tick", "pipeline_MBps", "sftp_get_s", "sftp_get_MBps", "sftp_direct_s",
    "sftp_relay_0ms_s", "relay_pass_through", "runs", "runs_requested", "peak_rss_mib",
    "outside_copies_s", "cpu_ms_per_file", "rclone_tuned_cpu_ms_per_file",
]  # fmt: skip


def report(results: dict, workloads: list[Workload], json_path: str) -> None:
    rows, cpu_rows = [], []
    for workload in workloads:
        tools = results[workload.name]
        rows.append(summarize(workload, tools))
        cpu_rows += [
            {
                "workload": workload.name,
                "tool": tool,
                **cpu_ms_per_file(tools[tool], workload.files),
            }
            for tool in TOOLS
            if tools.get(tool)
        ]
    near = [row for row in rows if not row["round_trip_ms"]]
    far = [row for row in rows if row["round_trip_ms"]]
    if near:
        print_table(near, LOOPBACK_COLUMNS)
    if far:
        print("\nAt 40 ms round trip, through a relay (20 ms each way):")
        print_table(far, FAR_COLUMNS)
    print("\nCPU per file, ms (medians), by process:")
    print_table(cpu_rows, ["workload", "tool", *dict.fromkeys(k for k, _ in PROCESS_KINDS)])
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(
        json.dumps({"rows": rows, "cpu_ms_per_file": cpu_rows, "raw": results}, indent=2)
    )
    print(f"\nJSON: {json_path}")


def summarize(workload: Workload, tools: dict[str, list[dict]]) -> dict:
    """One workload's medians, with ratios to the rclone runs it has."""
    median = {tool: statistics.median(r["seconds"] for r in runs) for tool, runs in tools.items()}
    pipeline = tools["pipeline"]
    # Timed from the sensor's first tick that requested runs, not from the files' arrival: the
    # wait for the tick (up to SENSOR_INTERVAL) left out.
    from_tick = statistics.median(r["seconds_from_first_tick"] for r in pipeline)
    row = {
        "workload": workload.name,
        "round_trip_ms": 2 * workload.delay_ms,
        "pipeline_s": median["pipeline"],
        "pipeline_from_tick_s": from_tick,
        "pipeline_MBps": workload.files * workload.size / 2**20 / median["pipeline"],
        "runs": statistics.median(r["runs"] for r in pipeline),
        # the batches the sensor requested; more runs are run_retries' (runs_by_origin)
        "runs_requested": statistics.median(
            r["runs_by_origin"].get("sensor request", 0) for r in pipeline
        ),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in pipeline),
        # Before the first claim and after the last copy: the tick, run starts, the last event.
        "outside_copies_s": statistics.median(
            r["seconds"] - r["transfer_window_seconds"] for r in pipeline
        ),
        "cpu_ms_per_file": tool_cpu_ms_per_file(pipeline, workload.files),
    }
    if "rclone" in median:
        row["rclone_s"] = median["rclone"]
        row["ratio_to_rclone"] = median["pipeline"] / median["rclone"]
        row["ratio_from_tick"] = from_tick / median["rclone"]
        row["rclone_cpu_ms_per_file"] = tool_cpu_ms_per_file(tools["rclone"], workload.files)
    if "rclone tuned" in median:
        row["rclone_tuned_s"] = median["rclone tuned"]
        row["ratio_to_tuned_rclone"] = median["pipeline"] / median["rclone tuned"]
        row["tuned_ratio_from_tick"] = from_tick / median["rclone tuned"]
        row["rclone_tuned_cpu_ms_per_file"] = tool_cpu_ms_per_file(
            tools["rclone tuned"], workload.files
        )
    if "sftp get" in median:
        row["sftp_get_s"] = median["sftp get"]
        row["sftp_get_MBps"] = workload.size / 2**20 / median["sftp get"]
        row["share_of_sftp_read_ceiling"] = median["sftp get"] / median["pipeline"]
    if "sftp get direct" in median:
        row["sftp_direct_s"] = median["sftp get direct"]
        row["sftp_relay_0ms_s"] = median["sftp get relay 0 ms"]
        # The relay's speed with no delay as a share of sshd's reached direct.
        row["relay_pass_through"] = median["sftp get direct"] / median["sftp get relay 0 ms"]
    return row


def tool_cpu_ms_per_file(rounds: list[dict], files: int) -> float:
    """The CPU a tool's copy costs, all its processes; the relay (the network's) left out."""
    spent = cpu_ms_per_file(rounds, files)
    return sum(ms for kind, ms in spent.items() if kind not in NOT_A_TOOL)


def cpu_ms_per_file(rounds: list[dict], files: int) -> dict[str, float]:
    if not rounds:
        return {}
    kinds = {kind for r in rounds for kind in r["cpu_seconds"]}
    return {
        kind: 1000 * statistics.median(r["cpu_seconds"].get(kind, 0.0) for r in rounds) / files
        for kind in sorted(kinds)
    }


def print_table(rows: list[dict], columns: list[str]) -> None:
    print("\n| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        print(
            "| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells) + " |"
        )


if __name__ == "__main__":
    main()
