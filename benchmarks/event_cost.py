"""Dagster's own cost per file on PostgreSQL: dagster-postgres as shipped against dagster.yaml.

    python -m benchmarks.event_cost [--partitions 300]

On one PostgreSQL of the local stack (password authentication, as in production), for each
instance configuration: the time to store one materialization event, and the time per partition
of one run over N dynamic partitions that yields an AssetMaterialization per partition (the
planned events at run creation included), as the project's asset does, without any copying.
"""

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
)
from sqlalchemy import event

from devstack.local_stack import PostgresServer

PROJECT = Path(__file__).resolve().parents[1]

AS_SHIPPED = """
storage:
  postgres:
    postgres_db:
      username: {env: DAGSTER_PG_USER}
      password: {env: DAGSTER_PG_PASSWORD}
      hostname: {env: DAGSTER_PG_HOST}
      port: {env: DAGSTER_PG_PORT}
      db_name: {env: DAGSTER_PG_DB}
      scheme: postgresql+psycopg2
telemetry:
  enabled: false
"""

files = dg.DynamicPartitionsDefinition(name="bench_files")


@dg.asset(partitions_def=files, output_required=False)
def bench_files(context: dg.AssetExecutionContext):
    for key in context.partition_keys:
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key)


job = dg.Definitions(assets=[bench_files]).resolve_implicit_global_asset_job_def()


def measure(instance: dg.DagsterInstance, partitions: int) -> dict:
    connections = []
    event.listen(instance.event_log_storage._engine, "connect", lambda *_: connections.append(1))
    asset_key = dg.AssetKey("runless")
    timings = []
    for index in range(partitions):
        started = time.perf_counter()
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key, partition=str(index))
        )
        timings.append(time.perf_counter() - started)
    store_connections = len(connections)

    keys = [f"file-{index:05d}" for index in range(partitions)]
    instance.add_dynamic_partitions(files.name, keys)
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    started = time.perf_counter()
    result = job.execute_in_process(instance=instance, tags=tags)
    run_seconds = time.perf_counter() - started
    assert result.success
    return {
        "store_event_ms": 1000 * statistics.median(timings),
        "connections_per_event": store_connections / partitions,
        "run_ms_per_partition": 1000 * run_seconds / partitions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=300)
    args = parser.parse_args()
    variants = {
        "dagster-postgres as shipped": AS_SHIPPED,
        "dagster.yaml": (PROJECT / "dagster.yaml").read_text(),
    }
    with tempfile.TemporaryDirectory(prefix="event-cost-", dir="/var/tmp") as base:
        os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user when we are root
        postgres = PostgresServer(Path(base))
        postgres.start()
        try:
            for name, config in variants.items():
                database = f"dagster_{uuid.uuid4().hex[:8]}"
                postgres.create_database(database)
                home = Path(base) / database
                home.mkdir()
                (home / "dagster.yaml").write_text(config)
                os.environ.update(
                    DAGSTER_PG_HOST=postgres.host,
                    DAGSTER_PG_PORT=str(postgres.port),
                    DAGSTER_PG_USER=postgres.user,
                    DAGSTER_PG_PASSWORD=postgres.password,
                    DAGSTER_PG_DB=database,
                )
                with dg.DagsterInstance.from_config(str(home)) as instance:
                    outcome = measure(instance, args.partitions)
                print(
                    f"{name:<28} store_event {outcome['store_event_ms']:6.2f} ms, "
                    f"{outcome['connections_per_event']:.2f} new connections per event; "
                    f"run over {args.partitions} partitions: "
                    f"{outcome['run_ms_per_partition']:6.2f} ms per partition",
                    flush=True,
                )
        finally:
            postgres.stop()


if __name__ == "__main__":
    main()
