"""The pipeline end to end on a local stack (real sshd, SeaweedFS S3, PostgreSQL).

python -m devstack.demo run   # seed files, one sensor tick, its runs, a summary
python -m devstack.demo dev   # the same stack under `dg dev`, for the UI
"""

import argparse
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import yaml

PROJECT = Path(__file__).resolve().parents[1]

# A notice about Dagster's own API, not about the files, printed by every process that loads the
# code: the beta parameter the asset uses.
DAGSTER_NOTICES = ("Parameter `backfill_policy` of function `asset` is currently in beta",)
# Run events stay in the instance's event log (the UI); the demo's console shows its own story.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def seed_files(root: Path) -> None:
    """A few files such as data teams drop on their servers, for two sources."""
    samples = {
        # Source `partner`: CSV exports and reports, compressed with gzip on the way.
        "partner/incoming/2026-11-29/sales.csv": pd.DataFrame(
            {"store": range(1, 2001), "amount": [i * 1.5 for i in range(2000)]}
        )
        .to_csv(index=False)
        .encode(),
        "partner/incoming/2026-11-29/empty.marker": b"",
        "partner/rapports/relevé de caisse été.txt": "Total: 42 €\n".encode(),
        # Source `scanner`: large binary files, archived on the server once copied.
        "scanner/images/blob.bin": os.urandom(48 * 1024 * 1024),
    }
    past = time.time() - 3600
    for path, data in samples.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, (past, past))


def write_sources_file(stack, path: Path) -> None:
    """The two sources of the demo, on the stack's sshd (see sources.py for the format)."""
    ssh = stack.ssh
    sources = {
        "partner": ssh.source_settings(
            ssh.root / "partner", min_file_age_seconds=0, compression="gzip"
        ),
        "scanner": ssh.source_settings(
            ssh.root / "scanner",
            min_file_age_seconds=0,
            after_copy="move",
            archive_dir=str(ssh.root / "scanner-archive"),
            max_workers=2,
        ),
    }
    path.write_text(yaml.safe_dump({"sources": sources}, sort_keys=False, allow_unicode=True))
    for folder in (ssh.root / "partner", ssh.root / "scanner"):
        for directory in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
            shutil.chown(directory, user=ssh.username)  # the SFTP account moves files out


def configure(stack, home: Path, sources_file: Path | None = None) -> dict[str, str]:
    """Environment for the code location and a Postgres-backed Dagster instance in home."""
    env = stack.env()
    env.update(MIN_FILE_AGE_SECONDS="0", DAGSTER_HOME=str(home))
    if sources_file is not None:
        env["SOURCES_FILE"] = str(sources_file)
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT / "dagster.yaml", home / "dagster.yaml")
    os.environ.update(env)
    return env


def tick_once(instance, source: str = "default"):
    """One evaluation of a source's sensor, its new partitions added, as the daemon does.

    Returns the tick and the job its run requests are for.
    """
    import dagster as dg

    from sftp_minio_assets.definitions import defs

    # get_sensor_def warns that it no longer resolves resources: they are passed below.
    warnings.filterwarnings("ignore", message=".*get_sensor_def.*")
    sensor = defs.get_sensor_def(f"new_files_{source}")
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources=defs.resources
    ) as context:
        tick = sensor(context)
    apply_partition_requests(instance, tick)
    return tick, defs.resolve_job_def(sensor.job_name)


def apply_partition_requests(instance, tick) -> None:
    """Add and delete the partitions a tick asks for, as the daemon does."""
    import dagster as dg

    for request in tick.dynamic_partitions_requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def execute_request(job, instance, request, run_config: dict | None = None):
    """One run a sensor requested, in this process, as a run worker would execute it."""
    return job.execute_in_process(
        run_config=run_config,
        instance=instance,
        partition_key=request.partition_key,
        tags=request.tags,
        raise_on_error=False,
    )


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def run_once() -> None:
    import dagster as dg

    for message in DAGSTER_NOTICES:
        warnings.filterwarnings("ignore", message=re.escape(message))
    from sftp_minio_assets.definitions import defs, sources

    # The per-file line the asset writes on the run's stderr (set up when the asset's module
    # loads, above): the table at the end says it all.
    logging.getLogger("sftp_minio_assets.transfers").setLevel(logging.WARNING)

    with dg.DagsterInstance.get() as instance:
        started = time.monotonic()
        for source in sources:
            tick, job = tick_once(instance, source)
            runs = plural(len(tick.run_requests), "run")
            print(f"source {source}: sensor tick, {runs} requested")
            for request in tick.run_requests:
                result = execute_request(job, instance, request, QUIET_RUN)
                what = request.partition_key or request.partition_key_range
                print(f"  run {result.run_id[:8]} {what}: {'ok' if result.success else 'FAILED'}")
        print(f"all runs done in {time.monotonic() - started:.1f} s\n")
        stats = defs.resolve_job_def("transfer_health").execute_in_process(
            run_config=QUIET_RUN, instance=instance
        )
        checks = stats.get_asset_check_evaluations()
        print(
            "asset checks: "
            + ", ".join(
                f"{c.asset_key.to_user_string()} {c.check_name} "
                f"{'passed' if c.passed else 'FAILED'}"
                for c in checks
            )
            + "\n"
        )
    print_summary(os.environ["TRANSFER_DB_URL"])


def print_summary(db_url: str) -> None:
    import psycopg

    query = """
        SELECT source, filename, status, size_bytes, stored_bytes, total_duration,
               round(size_bytes / 1048576.0 / nullif(total_duration, 0), 1) AS mb_per_s,
               left(sha256, 12) AS sha256, attempts, source_action, worker_id
        FROM file_transfer_log ORDER BY source, filename
    """
    with psycopg.connect(db_url) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        names = [column.name for column in cursor.description]
        # As the database has them: a NULL is an empty cell, an integer column stays integer
        # (inferred types would print NaN and turn its other values into floats).
        table = pd.DataFrame(cursor.fetchall(), columns=names, dtype=object)
    print("file_transfer_log:")
    print(table.where(table.notna(), "").to_string(index=False))


def _exit_on_sigterm(*_) -> None:
    raise SystemExit(143)  # unwinds the with-blocks below, so every server is stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["run", "dev"])
    parser.add_argument("--port", type=int, default=3000, help="webserver port (dev)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Started in the background by a script, a process inherits SIGINT ignored: Ctrl-C (SIGINT)
    # stops the demo all the same, and what it starts gets the default handling back.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from devstack.local_stack import LocalStack

    base = Path(tempfile.mkdtemp(prefix="sftp-minio-assets-"))
    interrupted = False
    try:
        with LocalStack(base) as stack:
            seed_files(stack.ssh.root)
            write_sources_file(stack, base / "sources.yaml")
            env = configure(stack, base / "dagster_home", base / "sources.yaml")
            sftp = f"{env['SFTP_USERNAME']}@{env['SFTP_HOST']}:{env['SFTP_PORT']}"
            print(f"local stack up in {base}:")
            print(f"  SFTP  {sftp} {env['SFTP_ROOT']} (sources: {env['SOURCES_FILE']})")
            print(f"  S3    {env['MINIO_ENDPOINT_URL']} bucket {env['MINIO_BUCKET']}")
            print(f"  PG    {stack.postgres.host}:{stack.postgres.port}\n")
            if args.mode == "run":
                run_once()
            else:
                run_dagster_dev(args.port, Path(env["DAGSTER_HOME"]))
    except KeyboardInterrupt:
        interrupted = True  # leaving the with-block has stopped every server
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if interrupted:
        print("Ctrl-C: Dagster and the local stack (sshd, SeaweedFS, PostgreSQL) stopped cleanly.")
        # How `make dev` ends, a success; the demo's run was cut short.
        sys.exit(0 if args.mode == "dev" else 130)


def run_dagster_dev(port: int, home: Path) -> None:
    from devstack.local_stack import stop_group

    print(f"Dagster UI on http://127.0.0.1:{port} (Ctrl-C stops everything)", flush=True)
    # dg dev loads the project as pyproject.toml's [tool.dg] says: the standalone code location.
    dg = Path(sys.executable).parent / "dg"
    dev = subprocess.Popen(
        [str(dg), "dev", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT,
        # Its webserver, daemon, code servers and run workers inherit the filter.
        # dg compares the active virtualenv with the project's: this one is active. (dg dev also
        # notes that the project's dagster.yaml is not the one used: meant, DAGSTER_HOME has its
        # copy.)
        env={
            **os.environ,
            "VIRTUAL_ENV": sys.prefix,
            "PYTHONWARNINGS": ",".join(f"ignore:{m}" for m in DAGSTER_NOTICES),
        },
        start_new_session=True,
    )
    try:
        dev.wait()
    finally:
        # SIGINT to the whole group: dagster dev, its webserver, daemon and code servers.
        stop_group(dev, signal.SIGINT)


if __name__ == "__main__":
    main()
