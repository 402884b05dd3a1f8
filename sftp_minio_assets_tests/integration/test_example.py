"""The example project examples/partner_csv through a real daemon: Acme's CSV files land in the
bucket and their orders in PostgreSQL with nobody launching anything; a malformed file fails
its partition only, and its fixed version, once landed, is loaded by itself."""

import time
from datetime import date
from decimal import Decimal

import dagster as dg
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from sftp_minio_assets import files_asset_key, files_partitions, open_landed

from ..support import PROJECT, wait_for

pytestmark = pytest.mark.integration  # the real servers (conftest's stack) and a daemon

EXAMPLE = PROJECT / "examples" / "partner_csv"
WORKSPACE = f"""
load_from:
  - python_module:
      module_name: partner_csv.definitions
      working_directory: {EXAMPLE}
      location_name: partner_csv
"""
ORDERS = dg.AssetKey(["acme", "orders"])
HEADER = b"order_id,customer,amount,ordered_on\n"
SENSORS = {"new_files_acme", "automation_condition_sensor"}


def test_files_land_and_load_by_themselves_and_a_bad_csv_fails_its_partition_until_fixed(
    env, start_daemon, tmp_path, monkeypatch
):
    """Nobody launches a run here: the source's sensor copies each new or changed file, and the
    automation sensor the example declares loads a file's orders once its partition of
    acme/files has a new materialization (AutomationCondition.eager()).

    A file with an amount that is not a number fails its partition of acme/orders, and only
    that: the other file's rows stay. The fix is a new version of the file on the SFTP server:
    the sensor copies it (a new materialization of its partition of acme/files), and eager
    requests the failed partition again, its dependency updated. That rerun, launched by the
    daemon, loads the right rows. The first file changes meanwhile: its new rows replace its
    old ones."""
    orders_db = env.stack.postgres.create_database(f"orders_{env.bucket.removeprefix('test-')}")
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(WORKSPACE)
    ssh = env.stack.ssh
    started = time.monotonic()
    env.write(
        "2026-12-01.csv", HEADER + b"A-1,Globex,120.50,2026-12-01\nA-2,Initech,7,2026-12-01\n"
    )
    daemon = start_daemon(
        workspace,
        ACME_SFTP_HOST=ssh.host,
        ACME_SFTP_PORT=str(ssh.port),
        ACME_SFTP_USERNAME=ssh.username,
        ACME_SFTP_KEY=str(ssh.private_key_path),
        ACME_KNOWN_HOSTS=str(ssh.known_hosts_path),
        ACME_SFTP_ROOT=str(env.root),
        ORDERS_DB_URL=orders_db,
        SENSOR_INTERVAL_SECONDS="2",
        AUTOMATION_INTERVAL_SECONDS="2",
    )
    first = {
        ("2026-12-01.csv", "A-1", "Globex", Decimal("120.50"), date(2026, 12, 1)),
        ("2026-12-01.csv", "A-2", "Initech", Decimal("7"), date(2026, 12, 1)),
    }
    wait(daemon, lambda: loaded(orders_db) == first, "the first file's orders to be loaded")
    assert env.store.head("acme/2026-12-01.csv") is not None

    env.write(
        "2026-12-02.csv", HEADER + b"B-1,Hooli,9.99,2026-12-02\nB-2,Hooli,twelve,2026-12-02\n"
    )
    with instance_of(daemon, env, monkeypatch) as instance:
        wait(
            daemon,
            lambda: status(instance, ORDERS, "2026-12-02.csv") == "FAILED",
            "the malformed file's partition of acme/orders to fail",
        )
        # It landed: only loading it failed, saying what is wrong and what to do.
        assert status(instance, files_asset_key("acme"), "2026-12-02.csv") == "MATERIALIZED"
        assert status(instance, ORDERS, "2026-12-01.csv") == "MATERIALIZED"
        [error] = step_errors(instance, "2026-12-02.csv")
        assert error.startswith(
            f"file '2026-12-02.csv' of source acme (s3://{env.bucket}/acme/2026-12-02.csv): "
            "a bad value: line 3, amount 'twelve' is not a number. Fix the file on the SFTP server"
        ), error
        assert loaded(orders_db) == first  # the other file's rows stay

        # The fix, and a new version of the first file (written later: a new mtime).
        fix = env.write(
            "2026-12-02.csv", HEADER + b"B-1,Hooli,9.99,2026-12-02\nB-2,Hooli,12,2026-12-02\n"
        )
        env.write("2026-12-01.csv", HEADER + b"A-1,Globex,99,2026-12-01\n", age_seconds=1800)
        fixed = {
            ("2026-12-01.csv", "A-1", "Globex", Decimal("99"), date(2026, 12, 1)),
            ("2026-12-02.csv", "B-1", "Hooli", Decimal("9.99"), date(2026, 12, 2)),
            ("2026-12-02.csv", "B-2", "Hooli", Decimal("12"), date(2026, 12, 2)),
        }
        wait(daemon, lambda: loaded(orders_db) == fixed, "the fixed and the changed file loaded")
        wait(daemon, lambda: all_finished(instance), "the runs to finish")
        assert status(instance, ORDERS, "2026-12-02.csv") == "MATERIALIZED"

        # Every run came from one of the two sensors (or the monitor's health schedule).
        runs = [r for r in instance.get_runs() if "dagster/schedule_name" not in r.tags]
        assert {run.tags.get("dagster/sensor_name") for run in runs} == SENSORS
        loads = sorted(
            (run.tags["dagster/partition"], run.status.value)
            for run in runs
            if run.asset_selection == {ORDERS}
        )
        assert loads == [
            ("2026-12-01.csv", "SUCCESS"),
            ("2026-12-01.csv", "SUCCESS"),
            ("2026-12-02.csv", "FAILURE"),
            ("2026-12-02.csv", "SUCCESS"),
        ]

        # What the asset read: the object the partition's latest copy recorded, the fix.
        context = dg.build_asset_context(instance=instance, partition_key="2026-12-02.csv")
        with open_landed(context, env.minio(), "acme") as landed:
            assert landed.read() == fix.read_bytes()
        env.store.fs.rm(f"{env.bucket}/acme/2026-12-02.csv")
        with pytest.raises(FileNotFoundError, match="is not in the bucket"):
            open_landed(context, env.minio(), "acme")
    print(f"{time.monotonic() - started:.0f} s from the first file, {len(runs)} runs")


def wait(daemon, condition, what: str, timeout: float = 60) -> None:
    try:
        wait_for(condition, timeout, what)
    except AssertionError:
        raise AssertionError(f"timed out waiting for {what}\n{daemon.log()[-20000:]}") from None


def loaded(orders_db: str) -> set[tuple]:
    """The rows of the example's table `orders`, but their line and load time."""
    query = "SELECT partition_key, order_id, customer, amount, ordered_on FROM orders"
    with psycopg.connect(orders_db) as conn:
        try:
            return set(conn.execute(query).fetchall())
        except psycopg.errors.UndefinedTable:  # nothing loaded yet
            return set()


def instance_of(daemon, env, monkeypatch) -> dg.DagsterInstance:
    """The daemon's instance (its dagster.yaml, on its database), seen from this process."""
    variables = {**env.stack.env(), "DAGSTER_PG_DB": conninfo_to_dict(daemon.dagster_db)["dbname"]}
    for name, value in variables.items():
        monkeypatch.setenv(name, str(value))
    return dg.DagsterInstance.from_config(str(daemon.home))


def all_finished(instance: dg.DagsterInstance) -> bool:
    return all(run.is_finished for run in instance.get_runs())


def status(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str) -> str | None:
    statuses = instance.get_status_by_partition(asset_key, [partition], files_partitions("acme"))
    found = (statuses or {}).get(partition)
    return found.value if found else None


def step_errors(instance: dg.DagsterInstance, partition: str) -> list[str]:
    """The errors of the failed steps of the partition's failed runs."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            tags={"dagster/partition": partition}, statuses=[dg.DagsterRunStatus.FAILURE]
        )
    )
    return [
        str(failure.user_failure_data.description if failure.user_failure_data else failure.error)
        for run in runs
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        if entry.dagster_event and (failure := entry.dagster_event.step_failure_data)
    ]
