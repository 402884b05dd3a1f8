"""The event log on a pool of connections: what it takes from dagster-postgres, and a real
instance from the project's dagster.yaml storing events on the stack's PostgreSQL."""

import ast
import inspect
import shutil
import textwrap
import time
import uuid

import dagster as dg
import psycopg
import pytest
import sqlalchemy.pool as db_pool
from dagster._core.storage.config import pg_config
from dagster_postgres import PostgresEventLogStorage
from sqlalchemy import event

from sftp_minio_assets.defs.instance_storage import (
    IDLE_CHECK_SECONDS,
    PooledPostgresEventLogStorage,
)
from sftp_minio_assets_tests.support import PROJECT

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


@pytest.fixture
def instance_from_dagster_yaml(stack, tmp_path, monkeypatch):
    """A Dagster instance from the project's dagster.yaml, on its own database of the stack."""
    database = f"dagster_{uuid.uuid4().hex[:12]}"
    stack.postgres.create_database(database)
    for name, value in {**stack.env(), "DAGSTER_PG_DB": database}.items():
        monkeypatch.setenv(name, value)
    shutil.copy(PROJECT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        yield instance, stack.postgres.dsn_for(database)


def test_what_the_pool_relies_on_in_dagster_postgres_is_unchanged(stack):
    """Fails on a dagster-postgres upgrade that changes what the subclass builds on: then read
    dagster_postgres/event_log/event_log.py again and adapt (or drop) instance_storage.py."""
    # The constructor the subclass calls, and the attributes it reads and replaces.
    parameters = list(inspect.signature(PostgresEventLogStorage.__init__).parameters)
    assert parameters == [
        "self",
        "postgres_url",
        "should_autocreate_tables",
        "inst_data",
        "token_provider",
    ]
    shipped = PostgresEventLogStorage(stack.postgres.dsn.replace("://", "+psycopg2://", 1))
    try:
        # Still no pool as shipped: if this fails, dagster-postgres pools by itself now.
        assert isinstance(shipped._engine.pool, db_pool.NullPool)
        assert shipped.postgres_url and shipped._token_provider is None
    finally:
        shipped._engine.dispose()

    # Every connection goes through `self._engine`: the only engines it creates are the one the
    # subclass replaces (__init__), the webserver's (optimize_for_webserver, pooled too) and a
    # throw-away one in a static helper the instance never calls.
    source = textwrap.dedent(inspect.getsource(PostgresEventLogStorage))
    creating = {
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef)
        and any(
            isinstance(call, ast.Call)
            and getattr(call.func, "id", getattr(call.func, "attr", None))
            in ("create_engine", "create_pg_engine")
            for call in ast.walk(node)
        )
    }
    assert creating == {"__init__", "optimize_for_webserver", "create_clean_storage"}
    assert "self._engine" in inspect.getsource(PostgresEventLogStorage._connect)

    # The same settings as dagster-postgres' storage, plus the pool's.
    assert pg_config().keys() <= PooledPostgresEventLogStorage.config_type().keys()
    overridden = {
        name
        for name, value in vars(PooledPostgresEventLogStorage).items()
        if callable(value) or isinstance(value, classmethod)
    }
    assert overridden == {"__init__", "config_type", "from_config_value", "dispose"}
    assert all(hasattr(PostgresEventLogStorage, name) for name in overridden)


def test_dagster_yaml_stores_events_through_one_kept_connection(instance_from_dagster_yaml):
    instance, dsn = instance_from_dagster_yaml
    storage = instance.event_log_storage
    assert isinstance(storage, PooledPostgresEventLogStorage)
    pool = storage._engine.pool
    assert isinstance(pool, db_pool.QueuePool)
    assert pool.size() == 1 and pool._max_overflow >= 2
    assert pool._recycle == 3600

    connects, backends = [], set()
    event.listen(storage._engine, "connect", lambda *_: connects.append(1))
    event.listen(
        storage._engine, "checkout", lambda dbapi, *_: backends.add(dbapi.get_backend_pid())
    )
    events = 50
    asset_key = dg.AssetKey(["pooled", "files"])
    started = time.monotonic()
    for index in range(events):
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key, partition=f"file-{index}")
        )
    elapsed = time.monotonic() - started

    stored = instance.fetch_materializations(asset_key, limit=events + 1).records
    assert len(stored) == events
    # dagster-postgres as shipped: two new connections per event, 100 here.
    assert len(connects) <= 2, f"{len(connects)} new connections for {events} events"
    assert len(backends) <= 2
    print(f"{events} events in {elapsed:.2f} s, {len(connects)} new connection(s)")

    # The kept connection is a real, open session of this database until the instance ends.
    with psycopg.connect(dsn) as conn:
        open_backends = {
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            )
        }
    assert backends & open_backends
    instance.dispose()
    with psycopg.connect(dsn) as conn:
        for _ in range(50):
            still_open = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(backends),)
            ).fetchone()[0]
            if not still_open:
                break
            time.sleep(0.1)
    assert still_open == 0, "the pooled connection outlived the instance"


def test_a_nested_connection_does_not_wait_for_the_pool(instance_from_dagster_yaml):
    """Storing an event may check a table on a second connection while holding the first: with
    a single connection per process it would wait for the pool's time-out (30 s)."""
    storage = instance_from_dagster_yaml[0].event_log_storage
    started = time.monotonic()
    with storage.index_connection(), storage.index_connection():
        assert storage.has_table("event_logs")
    assert time.monotonic() - started < 5


def test_a_connection_the_server_dropped_while_idle_is_replaced_not_failed(
    instance_from_dagster_yaml,
):
    """The kept connection is checked when it comes back from idleness (events back to back are
    not checked: a `SELECT 1` before each doubled the round trips): one PostgreSQL dropped
    meanwhile, as a restart or an idle time-out does, is replaced before it is used."""
    instance, dsn = instance_from_dagster_yaml
    asset_key = dg.AssetKey(["pooled", "idle"])

    def store(index: int) -> None:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset_key, partition=f"file-{index}")
        )

    others = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    for index in range(5):
        store(index)
    with psycopg.connect(dsn, autocommit=True) as admin:
        kept = [pid for (pid,) in admin.execute(others)]
        assert kept, "the pool keeps a connection open"
        time.sleep(IDLE_CHECK_SECONDS + 0.2)
        for pid in kept:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        store(5)  # raises if the dropped connection is used unchecked
        now = {pid for (pid,) in admin.execute(others)}
    assert now and not now & set(kept), "a new connection replaced the dropped one"
    assert len(instance.fetch_materializations(asset_key, limit=10).records) == 6
