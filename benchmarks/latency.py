"""The fixed latency of a small drop: from one file's arrival to its object, and where it goes.

    python -m benchmarks.latency [--drops 5] [--interval 5]

A real daemon on the project's dagster.yaml, as in benchmarks.run (the sensor ticking every
--interval seconds, MIN_FILE_AGE_SECONDS=0 so that no stability wait is counted). One 4 KiB file
is dropped at a time, the next once the previous one is COMPLETED, and each drop's timeline is
read from what the servers recorded:

- wait for the tick: from the arrival to the start of the tick that requested it (on average
  half the interval; SENSOR_INTERVAL_SECONDS, 30 by default);
- tick: the sensor's evaluation in the code server and the daemon's handling, to the run's
  creation;
- queue and launch: from the run's creation to its RUN_START (the queued run coordinator's
  dequeue, the handing of the run to a run worker process started before it, which loads the
  rest; Dagster's default launcher started one in the code server, which loaded all);
- run start: from RUN_START to the file's claim (the step's start, the resources: SSH
  handshake, S3, the transfer log);
- copy: from the claim to the COMPLETED row;
- and the whole: from the arrival to the COMPLETED row (the object is committed before).

Prints each phase's median (and min, max) in seconds, and writes them as JSON.
"""

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import psycopg
from dagster import DagsterEventType, RunsFilter

from devstack.local_stack import LocalStack

from . import run as bench

PHASES = ("wait for the tick", "tick", "queue and launch", "run start", "copy", "arrival to object")


def one_drop(instance, log: psycopg.Connection, root: Path, index: int, daemon) -> dict:
    name = f"drop-{index:03d}.bin"
    before = {run.run_id for run in instance.get_runs()}
    arrival = time.time()
    (root / name).write_bytes(os.urandom(4096))
    daemon.wait(lambda: _completed_row(log, name) is not None, f"{name} COMPLETED", timeout=300)
    claimed, completed = _completed_row(log, name)
    (run,) = [r for r in instance.get_runs(filters=RunsFilter()) if r.run_id not in before]
    record = instance.get_run_record_by_id(run.run_id)
    started = _run_start(instance, run.run_id)
    tick = _tick_of(instance, run)
    return {
        "wait for the tick": tick - arrival,
        "tick": record.create_timestamp.timestamp() - tick,
        "queue and launch": started - record.create_timestamp.timestamp(),
        "run start": claimed - started,
        "copy": completed - claimed,
        "arrival to object": completed - arrival,
    }


def _completed_row(log: psycopg.Connection, name: str) -> tuple[float, float] | None:
    try:
        row = log.execute(
            "SELECT extract(epoch FROM transfer_start_time), extract(epoch FROM transfer_end_time) "
            "FROM file_transfer_log WHERE filename LIKE %s AND status = 'COMPLETED'",
            (f"%{name}",),
        ).fetchone()
    except psycopg.errors.UndefinedTable:  # the first run has not created the log yet
        return None
    return (float(row[0]), float(row[1])) if row else None


def _run_start(instance, run_id: str) -> float:
    records = instance.fetch_run_status_changes(DagsterEventType.RUN_START, limit=50).records
    (start,) = [r.event_log_entry.timestamp for r in records if r.run_id == run_id]
    return start


def _tick_of(instance, run) -> float:
    """The start of the tick that requested the run (its tag names the tick's id)."""
    tick_id = int(run.tags["dagster/tick"])
    (tick,) = [t for t in bench.describe_ticks(instance) if t["tick_id"] == tick_id]
    return tick["started"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drops", type=int, default=5)
    parser.add_argument("--interval", type=int, default=5, help="SENSOR_INTERVAL_SECONDS")
    parser.add_argument("--json", default="/tmp/benchmark-latency.json")
    args = parser.parse_args()
    drops = []
    with LocalStack() as stack:
        round_id = uuid.uuid4().hex[:8]
        env = bench.pipeline_env(stack, round_id, {"SENSOR_INTERVAL_SECONDS": str(args.interval)})
        root = Path(env["SFTP_ROOT"])
        with (
            bench.Daemon(env) as daemon,
            bench.instance_of(env) as instance,
            psycopg.connect(env["TRANSFER_DB_URL"], autocommit=True) as log,
        ):
            daemon.wait(lambda: bench._sensor_ticked(instance), "the sensor's first tick")
            for index in range(args.drops):
                drops.append(one_drop(instance, log, root, index, daemon))
                print(", ".join(f"{k} {v:.2f}" for k, v in drops[-1].items()), flush=True)
    summary = {
        phase: {
            "median": statistics.median(d[phase] for d in drops),
            "min": min(d[phase] for d in drops),
            "max": max(d[phase] for d in drops),
        }
        for phase in PHASES
    }
    print(f"\n{args.drops} drops of one 4 KiB file, sensor every {args.interval} s: seconds")
    print("| phase | median | min | max |\n|---|---|---|---|")
    for phase, values in summary.items():
        print(f"| {phase} | {values['median']:.2f} | {values['min']:.2f} | {values['max']:.2f} |")
    Path(args.json).write_text(json.dumps({"summary": summary, "drops": drops}, indent=2))


if __name__ == "__main__":
    main()
