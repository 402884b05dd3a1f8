"""The transfer log on a real PostgreSQL: schema, migration, and the claim protocol under races."""

import os
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sftp_minio_assets.db.schema import MIGRATION_LOCK, MIGRATIONS, SchemaTooNew
from sftp_minio_assets.db.transfer_log import TransferLog
from sftp_minio_assets.defs.resources import TransferLogResource
from sftp_minio_assets_tests.support import AIRFLOW_TABLE

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def claim(log: TransferLog, filename: str, worker: str, size: int = 10, mtime: int = 1000):
    return log.claims.claim(
        "default",
        filename,
        size_bytes=size,
        remote_mtime=mtime,
        object_key=f"default/{filename}",
        worker_id=worker,
        run_id=None,
    )


def test_a_seed_table_is_migrated_without_losing_rows_and_migration_is_idempotent(env):
    with psycopg.connect(env.db_url, autocommit=True) as conn:
        conn.execute(AIRFLOW_TABLE)
        conn.execute(
            "INSERT INTO file_transfer_log (filename, status, file_size_mb) "
            "VALUES ('old.csv', 'COMPLETED', 1.5)"
        )
    log = TransferLog(env.db_url)
    log.schema.migrate()
    log.schema.migrate()
    row = log.claims.get("default", "old.csv")
    assert row["status"] == "COMPLETED" and float(row["file_size_mb"]) == 1.5
    # Paths longer than the seed's 255 characters, and the same name in two sources, now fit.
    long_name = "d/" * 200 + "f.csv"
    assert claim(log, long_name, "w1") is not None
    other = log.claims.claim(
        "other", "old.csv", size_bytes=1, remote_mtime=1, object_key="k", worker_id="w", run_id=None
    )
    assert other is not None


def versions(db_url: str) -> list[int]:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT version FROM file_transfer_log_schema ORDER BY version")
        return [version for (version,) in rows]


def test_a_new_database_is_migrated_once_and_its_version_recorded(env):
    log = TransferLog(env.db_url)
    assert log.schema.version() == 0
    assert log.schema.ensure() == len(MIGRATIONS)
    assert log.schema.version() == len(MIGRATIONS)
    assert TransferLog(env.db_url).schema.ensure() == 0
    assert log.schema.migrate() == 0
    assert versions(env.db_url) == [len(MIGRATIONS)]


def test_a_current_schema_costs_one_query_and_waits_for_no_lock(env):
    TransferLog(env.db_url).schema.ensure()
    starting = TransferLog(env.db_url)
    starting.db.connection().execute("SET lock_timeout = '1s'")
    # A claim in flight holds ROW EXCLUSIVE on the table, which every ALTER TABLE and CREATE
    # INDEX waits for; a migration elsewhere holds the migration lock.
    with psycopg.connect(env.db_url) as busy:
        busy.execute("LOCK TABLE file_transfer_log IN ROW EXCLUSIVE MODE")
        busy.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        assert starting.schema.ensure() == 0
        with pytest.raises(psycopg.errors.LockNotAvailable):
            starting.schema.migrate()  # the probe: migrating would have waited
    # And a database behind the code does run statements that wait for the claim.
    with psycopg.connect(env.db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM file_transfer_log_schema")
    with psycopg.connect(env.db_url) as busy:
        busy.execute("LOCK TABLE file_transfer_log IN ROW EXCLUSIVE MODE")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            starting.schema.ensure()


def test_processes_starting_together_on_a_new_database_migrate_it_once(env):
    logs = [TransferLog(env.db_url) for _ in range(8)]
    for log in logs:
        log.db.connection()  # connect before the race, so that the race is the migration itself
    barrier = threading.Barrier(len(logs))
    applied: list[int] = []
    errors: list[Exception] = []

    def start(log: TransferLog) -> None:
        barrier.wait()
        try:
            applied.append(log.schema.ensure())
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(applied) == [0] * (len(logs) - 1) + [len(MIGRATIONS)]
    assert versions(env.db_url) == [len(MIGRATIONS)]


def test_a_log_migrated_before_versions_were_recorded_gets_its_version(env):
    with psycopg.connect(env.db_url, autocommit=True) as conn:
        for statement in MIGRATIONS:  # what every process did before
            conn.execute(statement)
        conn.execute(
            "INSERT INTO file_transfer_log (filename, status) VALUES ('kept.csv', 'COMPLETED')"
        )
    log = TransferLog(env.db_url)
    assert log.schema.version() == 0
    assert log.schema.ensure() == len(MIGRATIONS)
    assert versions(env.db_url) == [len(MIGRATIONS)]
    assert log.claims.get("default", "kept.csv")["status"] == "COMPLETED"


def test_a_schema_newer_than_the_code_is_refused_naming_the_fix(env):
    TransferLog(env.db_url).schema.ensure()
    with psycopg.connect(env.db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO file_transfer_log_schema (version) VALUES (%s)", (len(MIGRATIONS) + 1,)
        )
    with pytest.raises(SchemaTooNew, match="Upgrade this code location") as refused:
        TransferLogResource(url=env.db_url).log.claims.claiming_runs("default")  # its first use
    assert refused.value.version == len(MIGRATIONS) + 1
    assert versions(env.db_url) == [len(MIGRATIONS), len(MIGRATIONS) + 1]


def test_the_migrate_command_migrates_and_refuses_a_newer_schema_without_the_password(env):
    def migrate() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "sftp_minio_assets.cli", "migrate"],
            env={**os.environ, "TRANSFER_DB_URL": env.db_url},
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = migrate()
    assert done.returncode == 0, done.stderr
    assert f"version {len(MIGRATIONS)}" in done.stdout
    assert versions(env.db_url) == [len(MIGRATIONS)]
    with psycopg.connect(env.db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO file_transfer_log_schema (version) VALUES (999)")
    refused = migrate()
    assert refused.returncode == 1
    assert "version 999" in refused.stderr and "Upgrade this code location" in refused.stderr
    assert conninfo_to_dict(env.db_url)["password"] not in refused.stderr + refused.stdout


def test_of_many_concurrent_claims_exactly_one_wins(env):
    workers = 16
    logs = [TransferLog(env.db_url) for _ in range(workers)]
    logs[0].schema.migrate()
    for log in logs:
        log.db.connection()  # connect before the race, so that the race is the INSERT itself

    def race(barrier, filename: str, index: int, winners: list) -> None:
        barrier.wait()
        if claim(logs[index], filename, f"worker-{index}") is not None:
            winners.append(index)

    for round_ in range(10):
        barrier = threading.Barrier(workers)
        winners: list[int] = []
        threads = [
            threading.Thread(target=race, args=(barrier, f"contended-{round_}.bin", i, winners))
            for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1, winners


def test_claims_follow_the_protocol(env):
    log = env.log
    first = claim(log, "f.bin", "w1")
    assert first is not None
    assert claim(log, "f.bin", "w2") is None  # held
    log.claims.fail(first, "boom")
    retry = claim(log, "f.bin", "w2")
    assert retry is not None and retry.attempts == 2  # FAILED is claimable
    row = log.claims.get("default", "f.bin")
    assert row["worker_id"] == "w2" and row["error_message"] is None


def test_a_stale_claim_is_reclaimable_and_swept_but_a_live_one_is_not(env):
    log = TransferLog(env.db_url, stale_minutes=1 / 60)  # one second
    log.schema.migrate()
    dead = claim(log, "dead.bin", "crashed-worker")
    live = claim(log, "live.bin", "busy-worker")
    time.sleep(1.5)
    log.claims.heartbeat(live)
    assert log.claims.sweep_stale("default") == 1
    assert log.claims.get("default", "dead.bin")["status"] == "FAILED"
    assert "crashed-worker" in log.claims.get("default", "dead.bin")["error_message"]
    assert log.claims.get("default", "live.bin")["status"] == "IN_PROGRESS"
    assert claim(log, "live.bin", "thief") is None
    assert dead is not None and claim(log, "dead.bin", "rescuer") is not None
