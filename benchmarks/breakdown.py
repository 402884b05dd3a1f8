"""Where a small file's time goes: the transfer log, SFTP, S3, and Dagster.

    python -m benchmarks.breakdown [--files 300] [--size 4096]

On one local stack, in this process, one file at a time so that the parts add up:
1. the worker alone (`Worker.transfer`, no Dagster) over N files, its calls to the transfer log
   and to S3 timed; SFTP is the rest (stat, open, read, re-check, close, and the worker's own
   Python, which is small);
2. the same number of other files as one Dagster run (the asset, MAX_WORKERS=1) on an instance
   made from the project's dagster.yaml on the stack's PostgreSQL, the run's planned events
   included. Dagster's share per file is the run's time per file less the worker's; the part
   of it spent storing events is timed too.
The sensor, the daemon and run start-up are not in these numbers (benchmarks/run.py has them).
"""

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import dagster as dg

from devstack.local_stack import LocalStack

PROJECT = Path(__file__).resolve().parents[1]
LOG_CALLS = ("claim", "complete", "get", "owner_of", "fail", "fail_unclaimed", "heartbeat")
S3_CALLS = ("put", "head", "tags", "set_tags", "create_multipart", "upload_part",
            "complete_multipart", "list_multipart_uploads")  # fmt: skip


def timed(owner, names, spent: dict, part: str) -> None:
    """Accumulate the wall time of owner's methods `names` in spent[part]."""
    for name in names:
        method = getattr(owner, name)

        def wrapper(*args, _method=method, **kwargs):
            started = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[part] += time.perf_counter() - started

        setattr(owner, name, wrapper)


def seed(root: Path, prefix: str, count: int, size: int) -> list[str]:
    names = [f"{prefix}/{i:05d}.bin" for i in range(count)]
    (root / prefix).mkdir(parents=True)
    for name in names:
        path = root / name
        path.write_bytes(os.urandom(size))
        os.utime(path, (time.time() - 3600,) * 2)
    return names


def time_worker(worker, keys: list[str]) -> tuple[float, dict[str, float]]:
    spent: dict[str, float] = defaultdict(float)
    worker.transfer(keys[0])  # connections and the bucket, made once
    timed(worker.transfer_log.claims, LOG_CALLS, spent, "transfer log")
    timed(worker.store, S3_CALLS, spent, "S3")
    started = time.perf_counter()
    for key in keys[1:]:
        assert worker.transfer(key).status == "transferred", key
    return time.perf_counter() - started, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--json", default=str(PROJECT / "benchmarks/results/breakdown.json"))
    args = parser.parse_args()
    with LocalStack() as stack:
        run_id = uuid.uuid4().hex[:8]
        root = stack.ssh.root / f"breakdown-{run_id}"
        home = stack.base / f"home-{run_id}"
        home.mkdir()
        shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
        stack.postgres.create_database(f"dagster_{run_id}")
        os.environ.update(
            {
                **stack.env(bucket=f"breakdown-{run_id}"),
                "SFTP_ROOT": str(root),
                "MIN_FILE_AGE_SECONDS": "0",
                "MAX_WORKERS": "1",
                "TRANSFER_DB_URL": stack.postgres.create_database(f"log_{run_id}"),
                "DAGSTER_PG_DB": f"dagster_{run_id}",
                "DAGSTER_HOME": str(home),
            }
        )
        alone = seed(root, "alone", args.files + 1, args.size)
        in_run = seed(root, "in_run", args.files + 1, args.size)
        from sftp_minio_assets.definitions import defs

        with dg.build_resources(defs.resources) as resources:
            worker_total, spent = time_worker(resources.source_default.worker(), alone)

        job = defs.resolve_job_def("__ASSET_JOB")
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions("files_default", in_run)
            selection = [dg.AssetKey(["default", "files"])]
            job.execute_in_process(  # code paths and connections warm
                instance=instance, partition_key=in_run[0], asset_selection=selection
            )
            timed(instance.event_log_storage, ("store_event",), spent, "storing Dagster events")
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=selection,
                tags={
                    "dagster/asset_partition_range_start": in_run[1],
                    "dagster/asset_partition_range_end": in_run[-1],
                },
            )
            run_total = time.perf_counter() - started
        assert result.success
    per_file = {
        part: 1000 * seconds / args.files for part, seconds in spent.items()
    }  # fmt: skip
    rows = {
        "transfer log": per_file["transfer log"],
        "S3": per_file["S3"],
        "SFTP and the worker's Python": 1000 * worker_total / args.files
        - per_file["transfer log"]
        - per_file["S3"],
        "worker, in all": 1000 * worker_total / args.files,
        "Dagster (the run's time less the worker's)": 1000
        * (run_total - worker_total)
        / args.files,
        "  of which storing events": per_file["storing Dagster events"],
        "one file in a run, in all": 1000 * run_total / args.files,
    }
    print(f"\n{args.files} files of {args.size} bytes, one at a time: ms per file")
    print("| part | ms per file |\n|---|---|")
    for part, ms in rows.items():
        print(f"| {part} | {ms:.2f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"files": args.files, "ms_per_file": rows}, indent=2))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
