"""Rows the Airflow DAG left in `file_transfer_log` (issue 19, 1): they record neither size nor
mtime, and claims without a heartbeat. Never taken for unchanged, nor for alive: a COMPLETED
row is adopted where its object in the bucket is the file's, else the file is copied again; a
claim is as old as its last update."""

import os

import psycopg
import pytest

from sftp_minio_assets_tests.support import (
    AIRFLOW_TABLE,
    enable_versioning,
    requested,
    sha256_file,
    tick,
    wait_for,
    writes_per_key,
)

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def airflow_rows(env, *rows: tuple[str, str, str]) -> None:
    """The DAG's table with rows (filename, status, age of the row as an SQL interval), as its
    workers wrote them: size in MB, no heartbeat."""
    with psycopg.connect(env.db_url, autocommit=True) as conn:
        conn.execute(AIRFLOW_TABLE)
        for filename, status, age in rows:
            conn.execute(
                "INSERT INTO file_transfer_log (filename, worker_id, status, file_size_mb, "
                "transfer_start_time, created_at, updated_at) VALUES "
                "(%s, 'airflow-worker-1', %s, 0.01, now() - %s::interval, "
                "now() - %s::interval, now() - %s::interval)",
                (filename, status, age, age, age),
            )


def copied_by_airflow(env, name: str, data: bytes):
    """A file, and its object as the DAG wrote it: no metadata of this project's."""
    path = env.write(name, data)
    env.store.put(f"default/{name}", data, {}, {})
    return path


def test_the_sensor_adopts_the_dags_rows_whose_objects_match_and_copies_the_others(
    env, instance, capsys
):
    enable_versioning(env)
    kept = copied_by_airflow(env, "kept.csv", b"as the DAG copied it")
    changed = copied_by_airflow(env, "changed.csv", b"ab")
    changed.write_bytes(b"23 bytes, written later")  # a new mtime too
    env.write("lost.csv", b"its object was deleted")
    airflow_rows(
        env, *((f"{name}.csv", "COMPLETED", "3 days") for name in ("kept", "changed", "lost"))
    )
    # A row that records its mtime but not its size (written by hand, or a tool in between).
    env.log.schema.migrate()
    dated = env.write("dated.csv", b"ab")
    env.log.db.execute(
        "INSERT INTO file_transfer_log (filename, status, remote_mtime) "
        "VALUES ('dated.csv', 'COMPLETED', to_timestamp(%(mtime)s))",
        {"mtime": int(dated.stat().st_mtime)},
    )
    dated.write_bytes(b"23 bytes, written later")

    capsys.readouterr()
    result = tick(env, instance)
    said = capsys.readouterr().err  # the tick's log, as Dagster's handler writes it

    assert requested(result, instance) == ["changed.csv", "dated.csv", "lost.csv"]
    rows = env.rows()
    assert rows["kept.csv"]["status"] == "COMPLETED"
    assert rows["kept.csv"]["size_bytes"] == kept.stat().st_size
    assert int(rows["kept.csv"]["remote_mtime"].timestamp()) == int(kept.stat().st_mtime)
    assert rows["kept.csv"]["verification"] == "adopted"
    assert {rows[name]["status"] for name in ("changed.csv", "dated.csv", "lost.csv")} == {"QUEUED"}
    assert "adopted 1 files" in said and "'kept.csv'" in said
    assert "copying 'changed.csv' again" in said and "holds 2 bytes, the file 23" in said
    assert "copying 'lost.csv' again" in said and "no object" in said
    # The adopted row is the file's now: a later change of it is copied, nothing else is.
    assert tick(env, instance).run_requests == []
    kept.write_bytes(b"a later version of the file")
    assert requested(tick(env, instance), instance) == ["kept.csv"]
    assert writes_per_key(env)["default/kept.csv"] == 1


def test_the_dags_rows_through_the_daemon_every_file_lands_and_a_dead_claim_is_released(
    env, start_daemon
):
    enable_versioning(env)
    kept = copied_by_airflow(env, "kept.csv", b"as the DAG copied it")
    changed = copied_by_airflow(env, "changed.csv", b"ab")
    changed.write_bytes(b"23 bytes, written later")
    stuck = env.write("stuck.csv", os.urandom(999))  # its Airflow worker died mid-copy
    airflow_rows(
        env,
        ("kept.csv", "COMPLETED", "3 days"),
        ("changed.csv", "COMPLETED", "3 days"),
        ("stuck.csv", "IN_PROGRESS", "2 hours"),  # past the 30 minutes, by updated_at
    )
    start_daemon(SENSOR_INTERVAL_SECONDS="5")

    def landed() -> bool:
        rows = env.rows()
        return all(rows[name]["status"] == "COMPLETED" for name in ("changed.csv", "stuck.csv"))

    wait_for(landed, 240, "the changed file and the dead claim's file to be copied")
    for path in (changed, stuck):
        assert env.object_sha256(f"default/{path.name}") == sha256_file(path), path.name
    rows = env.rows()
    assert rows["stuck.csv"]["worker_id"] != "airflow-worker-1"
    assert (rows["kept.csv"]["status"], rows["kept.csv"]["size_bytes"]) == (
        "COMPLETED",
        kept.stat().st_size,
    )
    assert writes_per_key(env) == {
        "default/kept.csv": 1,  # the DAG's copy, adopted
        "default/changed.csv": 2,
        "default/stuck.csv": 1,
    }
