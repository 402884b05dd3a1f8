"""dagster.yaml's run launcher (defs/run_launcher.py) through a real daemon: each run goes to
a worker process started before it, the next is made ready once the run is over, and a run is
terminated from another process (as the webserver's Terminate button does)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sftp_minio_assets.defs.partitions import WORKER_TAG
from sftp_minio_assets.defs.run_launcher import WORKER_MODULE
from sftp_minio_assets.defs.run_worker import CODE_OPTION
from sftp_minio_assets_tests.support import DAEMON_SETTINGS, wait_for

pytestmark = pytest.mark.integration  # the real servers (conftest's stack) and a daemon


def test_each_run_goes_to_a_worker_started_before_it(env, start_daemon):
    daemon = start_daemon(**DAEMON_SETTINGS)
    # Ready as the daemon starts, before any run: the daemon cannot know the code's module yet.
    [first] = wait_for(lambda: ready_workers(daemon), 60, "a worker ready")
    assert CODE_OPTION not in command_line(first)
    env.write("a.csv", b"a")
    [run_a] = wait_for(lambda: completed_runs(daemon), 120, "a.csv's run")
    assert worker_of(daemon, run_a) == first

    # Made ready once that run is over, with the code location's module loaded this time.
    [second] = wait_for(lambda: ready_workers(daemon), 60, "the next worker ready")
    assert second != first
    command = command_line(second)
    assert command[command.index(CODE_OPTION) + 1] == "sftp_minio_assets.definitions"
    born = started_at(second)
    env.write("b.csv", b"b")
    [run_b] = wait_for(lambda: completed_runs(daemon) - {run_a}, 120, "b.csv's run")
    assert worker_of(daemon, run_b) == second
    assert born < worker_event_time(daemon, run_b)  # it was there before its run was
    assert env.rows()["a.csv"]["status"] == env.rows()["b.csv"]["status"] == "COMPLETED"


def test_a_run_terminated_from_another_process_stops_its_copy_and_ends_canceled(env, start_daemon):
    env.write("big.bin", os.urandom(48 * 1024 * 1024))
    daemon = start_daemon(**DAEMON_SETTINGS, SFTP_MAX_BYTES_PER_SECOND="2000000")  # 25 s
    wait_for(env.store.list_multipart_uploads, 120, "big.bin's upload to start")
    [run_id] = [run for run, status in daemon.run_statuses(True).items() if status == "STARTED"]
    worker = worker_of(daemon, run_id)

    # What the webserver does when Terminate is pressed: its own instance, the run launcher's.
    terminate = (
        "import dagster as dg, sys; instance = dg.DagsterInstance.get(); "
        "sys.exit(0 if instance.run_launcher.terminate(sys.argv[1]) else 3)"
    )
    subprocess.run(
        [sys.executable, "-c", terminate, run_id], env=daemon.environment, check=True, timeout=60
    )
    # The copy stops, not only the run's status: its row says so (a copy that went on to its
    # end would be COMPLETED). Read as the run ends: the sensor's next tick requests it again.
    failed = []

    def canceled() -> bool:
        row = env.rows()["big.bin"]
        if row["status"] == "FAILED":
            failed.append(row)
        return daemon.run_statuses()[run_id] == "CANCELED"

    wait_for(canceled, 30, "the run canceled")
    wait_for(lambda: not alive(worker), 30, "its worker to exit")
    assert failed, env.rows()["big.bin"]
    row = failed[0]
    assert "the run stopped (terminated) at" in row["error_message"], row
    assert env.store.head("default/big.bin") is None  # nothing partial is ever visible


def test_the_workers_waiting_for_a_run_exit_when_the_daemon_is_killed(env, start_daemon):
    daemon = start_daemon(**DAEMON_SETTINGS)
    [ready] = wait_for(lambda: ready_workers(daemon), 60, "a worker ready")
    os.kill(daemon.process.pid, signal.SIGKILL)
    daemon.process.wait()
    wait_for(lambda: not alive(ready), 60, "the waiting worker to exit")


def ready_workers(daemon) -> list[int]:
    """The daemon's run workers that wait for a run (no run names them)."""
    try:
        taken = {worker_of(daemon, run) for run in daemon.run_statuses()}
    except psycopg.errors.UndefinedTable:  # the daemon has not made its tables yet
        return []
    return [pid for pid in daemon.pids(WORKER_MODULE) if pid not in taken]


def completed_runs(daemon) -> set[str]:
    return {run for run, status in daemon.run_statuses(True).items() if status == "SUCCESS"}


def worker_of(daemon, run_id: str) -> int | None:
    with psycopg.connect(daemon.dagster_db) as conn:
        row = conn.execute(
            "SELECT value FROM run_tags WHERE run_id = %s AND key = %s", (run_id, WORKER_TAG)
        ).fetchone()
    return int(row[0].rpartition(":")[2]) if row else None


def worker_event_time(daemon, run_id: str) -> float:
    """When the launcher handed the run to its worker (its engine event), epoch seconds."""
    with psycopg.connect(daemon.dagster_db) as conn:
        [when] = conn.execute(
            "SELECT extract(epoch FROM timestamp) FROM event_logs WHERE run_id = %s "
            "AND event LIKE %s",
            (run_id, "%Run worker started (pid%"),
        ).fetchone()
    return float(when)


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def started_at(pid: int) -> float:
    """The process's start, epoch seconds."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime")
    )
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
