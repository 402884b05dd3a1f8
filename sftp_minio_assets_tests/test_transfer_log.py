"""The transfer log on a real PostgreSQL: schema, migration, and the claim protocol under races."""

import threading
import time

import psycopg

from sftp_minio_assets.transfer_log import TransferLog

SEED_TABLE = """
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


def claim(log: TransferLog, filename: str, worker: str, size: int = 10, mtime: int = 1000):
    return log.claim(
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
        conn.execute(SEED_TABLE)
        conn.execute(
            "INSERT INTO file_transfer_log (filename, status, file_size_mb) "
            "VALUES ('old.csv', 'COMPLETED', 1.5)"
        )
    log = TransferLog(env.db_url)
    log.migrate()
    log.migrate()
    row = log.get("default", "old.csv")
    assert row["status"] == "COMPLETED" and float(row["file_size_mb"]) == 1.5
    # Paths longer than the seed's 255 characters, and the same name in two sources, now fit.
    long_name = "d/" * 200 + "f.csv"
    assert claim(log, long_name, "w1") is not None
    other = log.claim(
        "other", "old.csv", size_bytes=1, remote_mtime=1, object_key="k", worker_id="w", run_id=None
    )
    assert other is not None


def test_of_many_concurrent_claims_exactly_one_wins(env):
    workers = 16
    logs = [TransferLog(env.db_url) for _ in range(workers)]
    logs[0].migrate()
    for log in logs:
        log._connection()  # connect before the race, so that the race is the INSERT itself

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
    log.fail(first, "boom")
    retry = claim(log, "f.bin", "w2")
    assert retry is not None and retry.attempts == 2  # FAILED is claimable
    row = log.get("default", "f.bin")
    assert row["worker_id"] == "w2" and row["error_message"] is None


def test_a_stale_claim_is_reclaimable_and_swept_but_a_live_one_is_not(env):
    log = TransferLog(env.db_url, stale_minutes=1 / 60)  # one second
    log.migrate()
    dead = claim(log, "dead.bin", "crashed-worker")
    live = claim(log, "live.bin", "busy-worker")
    time.sleep(1.5)
    log.heartbeat(live)
    assert log.sweep_stale("default") == 1
    assert log.get("default", "dead.bin")["status"] == "FAILED"
    assert "crashed-worker" in log.get("default", "dead.bin")["error_message"]
    assert log.get("default", "live.bin")["status"] == "IN_PROGRESS"
    assert claim(log, "live.bin", "thief") is None
    assert dead is not None and claim(log, "dead.bin", "rescuer") is not None
