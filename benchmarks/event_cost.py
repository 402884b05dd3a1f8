"""Dagster's own cost per file on PostgreSQL: dagster-postgres as shipped against dagster.yaml.

    python -m benchmarks.event_cost [--partitions 300]

On one PostgreSQL of the local stack (password authentication, as in production), for each
instance configuration: the time to store one materialization event, and the time per partition
of one run over N dynamic partitions that yields an AssetMaterialization per partition (the
planned events at run creation included), as the project's asset does, without any copying.

With each, what PostgreSQL saw, from its own statement log (`log_statement = all` on the
measured database): round trips (statements the server received; psycopg2 sends each
`execute`, and its implicit BEGIN and COMMIT, as one simple query) and transactions (a
BEGIN ... COMMIT block, or one statement outside such a block), per stored materialization
and per partition of the run. DAGSTER_EVENT_BATCH_SIZE is measured unset and set: it decides
whether a run's planned events reach the storage as one batch.
"""

import argparse
import json
import os
import re
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import psycopg
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


class StatementLog:
    """What PostgreSQL's log says its clients sent, from a mark on: statements (round trips)
    and transactions, counted per backend process."""

    LINE = re.compile(r"\[(\d+)\] LOG:  statement: (.*)")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def count(self) -> tuple[int, int]:
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        statements = transactions = 0
        open_block: set[str] = set()
        for pid, statement in self.LINE.findall(text):
            statements += 1
            first = statement.strip().split(None, 1)[0].upper().rstrip(";") if statement else ""
            if first in ("BEGIN", "START"):
                open_block.add(pid)
                transactions += 1
            elif first in ("COMMIT", "ROLLBACK", "END"):
                open_block.discard(pid)
            elif pid not in open_block:
                transactions += 1
        return statements, transactions


def measure(instance: dg.DagsterInstance, partitions: int, log: StatementLog) -> dict:
    connections = []
    event.listen(instance.event_log_storage._engine, "connect", lambda *_: connections.append(1))
    asset_key = dg.AssetKey("runless")
    timings = []
    log.mark()
    for index in range(partitions):
        started = time.perf_counter()
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key, partition=str(index))
        )
        timings.append(time.perf_counter() - started)
    time.sleep(0.5)  # the server writes its log as it goes
    store_statements, store_transactions = log.count()
    store_connections = len(connections)

    keys = [f"file-{index:05d}" for index in range(partitions)]
    instance.add_dynamic_partitions(files.name, keys)
    tags = {ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]}
    log.mark()
    started = time.perf_counter()
    cpu_started = time.process_time()
    result = job.execute_in_process(instance=instance, tags=tags)
    run_cpu = time.process_time() - cpu_started
    run_seconds = time.perf_counter() - started
    assert result.success
    time.sleep(0.5)
    run_statements, run_transactions = log.count()
    return {
        "store_event_ms": 1000 * statistics.median(timings),
        "connections_per_event": store_connections / partitions,
        "round_trips_per_event": store_statements / partitions,
        "transactions_per_event": store_transactions / partitions,
        "run_ms_per_partition": 1000 * run_seconds / partitions,
        "run_cpu_ms_per_partition": 1000 * run_cpu / partitions,
        "run_round_trips_per_partition": run_statements / partitions,
        "run_transactions_per_partition": run_transactions / partitions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=300)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    shipped, ours = AS_SHIPPED, (PROJECT / "dagster.yaml").read_text()
    variants = {  # name: (dagster.yaml, DAGSTER_EVENT_BATCH_SIZE)
        "dagster-postgres as shipped": (shipped, "0"),
        "as shipped, batch size 1000": (shipped, "1000"),
        "dagster.yaml": (ours, "0"),
        "dagster.yaml, batch size 1000": (ours, "1000"),
    }
    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="event-cost-", dir="/var/tmp") as base:
        os.chmod(base, 0o755)  # PostgreSQL runs as the postgres user when we are root
        postgres = PostgresServer(Path(base))
        postgres.start()
        try:
            for name, (config, batch_size) in variants.items():
                database = f"dagster_{uuid.uuid4().hex[:8]}"
                postgres.create_database(database)
                with psycopg.connect(postgres.dsn_for(database), autocommit=True) as conn:
                    conn.execute(f"ALTER DATABASE {database} SET log_statement = 'all'")
                home = Path(base) / database
                home.mkdir()
                (home / "dagster.yaml").write_text(config)
                os.environ.update(
                    DAGSTER_PG_HOST=postgres.host,
                    DAGSTER_PG_PORT=str(postgres.port),
                    DAGSTER_PG_USER=postgres.user,
                    DAGSTER_PG_PASSWORD=postgres.password,
                    DAGSTER_PG_DB=database,
                    DAGSTER_EVENT_BATCH_SIZE=batch_size,
                )
                with dg.DagsterInstance.from_config(str(home)) as instance:
                    outcome = measure(instance, args.partitions, StatementLog(postgres.log_path))
                outcomes[name] = outcome
                print(
                    f"{name:<30} store_event {outcome['store_event_ms']:6.2f} ms, "
                    f"{outcome['connections_per_event']:.2f} new connections, "
                    f"{outcome['round_trips_per_event']:.2f} round trips, "
                    f"{outcome['transactions_per_event']:.2f} transactions per event; "
                    f"run over {args.partitions} partitions, per partition: "
                    f"{outcome['run_ms_per_partition']:6.2f} ms, "
                    f"{outcome['run_cpu_ms_per_partition']:6.2f} ms CPU here, "
                    f"{outcome['run_round_trips_per_partition']:.2f} round trips, "
                    f"{outcome['run_transactions_per_partition']:.2f} transactions",
                    flush=True,
                )
        finally:
            postgres.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(outcomes, indent=2))


if __name__ == "__main__":
    main()
