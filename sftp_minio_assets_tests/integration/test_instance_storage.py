"""The event log on a pool of connections: what it takes from dagster-postgres, and a real
instance from the project's dagster.yaml storing events on the stack's PostgreSQL."""

import ast
import importlib.metadata
import inspect
import re
import shutil
import textwrap
import time
import uuid

import dagster as dg
import dagster._daemon.sensor
import psycopg
import pytest
import sqlalchemy.pool as db_pool
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.events import (
    AssetMaterializationPlannedData,
    AssetObservationData,
    DagsterEvent,
    DagsterEventType,
    StepMaterializationData,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.methods.event_methods import EventMethods
from dagster._core.instance.runs.run_domain import RunDomain
from dagster._core.storage.config import pg_config
from dagster._core.storage.event_log.schema import (
    AssetEventTagsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._serdes import serialize_value
from dagster_postgres import PostgresEventLogStorage
from sqlalchemy import event

from sftp_minio_assets.defs.instance_storage import (
    BURST_QUESTIONS,
    IDLE_CHECK_SECONDS,
    ONE_STATEMENT_EVENTS,
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
    methods = {
        name
        for name, value in vars(PooledPostgresEventLogStorage).items()
        if callable(value) or isinstance(value, classmethod)
    }
    overridden = {name for name in methods if hasattr(PostgresEventLogStorage, name)}
    assert overridden == {
        "__init__",
        "config_type",
        "from_config_value",
        "dispose",
        "store_event",
        "store_event_batch",
        "has_dynamic_partition",
        "add_dynamic_partitions",
        "delete_dynamic_partition",
    }
    # Its own helpers override nothing of dagster-postgres' (an upgrade adding one would).
    assert methods - overridden == {
        "_asset_row_sql",
        "_asset_rows_sql",
        "_has_tags_table",
        "_keys_in_burst",
        "_end_burst",
    }


def test_what_one_statement_events_rely_on_in_dagster_is_unchanged():
    """Fails first on an upgrade of Dagster: store_event and store_event_batch write the rows
    that dagster-postgres writes, with Dagster's own helpers, in SQL of their own. Read again
    dagster_postgres/event_log/event_log.py (store_event, store_event_batch,
    _store_asset_event), dagster/_core/storage/event_log/sql_event_log.py (_event_to_row,
    _get_asset_entry_values, _store_asset_event_tags) and the schema, then adapt
    instance_storage.py and this test's versions."""
    versions = {name: importlib.metadata.version(name) for name in ("dagster", "dagster-postgres")}
    assert versions == {"dagster": "1.13.27", "dagster-postgres": "0.29.27"}

    # The helpers called, as they are called.
    for method, parameters in {
        SqlEventLogStorage._event_to_row: ["self", "event"],
        SqlEventLogStorage._tags_for_asset_event: ["self", "event"],
        SqlEventLogStorage._get_asset_entry_values: [
            "self",
            "event",
            "event_id",
            "has_asset_key_index_cols",
        ],
        PostgresEventLogStorage.store_event: ["self", "event"],
        PostgresEventLogStorage.store_event_batch: ["self", "events"],
        PostgresEventLogStorage.has_secondary_index: ["self", "name"],
        PostgresEventLogStorage.has_table: ["self", "table_name"],
    }.items():
        assert list(inspect.signature(method).parameters) == parameters, method
    # The columns the statements name are still all the tables have.
    columns = {
        table.name: [column.name for column in table.columns]
        for table in (SqlEventLogStorageTable, AssetKeyTable, AssetEventTagsTable)
    }
    assert columns == {
        "event_logs": [
            "id",
            "run_id",
            "event",
            "dagster_event_type",
            "timestamp",
            "step_key",
            "asset_key",
            "partition",
        ],
        "asset_keys": [
            "id",
            "asset_key",
            "last_materialization",
            "last_run_id",
            "asset_details",
            "wipe_timestamp",
            "last_materialization_timestamp",
            "tags",
            "create_timestamp",
            "cached_status_data",
        ],
        "asset_event_tags": ["id", "event_id", "asset_key", "key", "value", "event_timestamp"],
    }
    # dagster-postgres writes an asset event's row, then its index (tags, the asset's row):
    # what the one statement does together; anything more would be missing from it.
    store_event = inspect.getsource(PostgresEventLogStorage.store_event)
    assert re.findall(r"self\.(_store_\w+|store_\w+)\(", store_event) == [
        "_store_asset_event_tags",
        "_store_asset_event",
        "store_asset_check_event",
    ]
    assert "NOTIFY {CHANNEL_NAME}" in store_event
    # A run's planned events are sent as one batch (run_domain.py), which reaches
    # store_event_batch when DAGSTER_EVENT_BATCH_SIZE > 0 (event_methods.py).
    planned = inspect.getsource(RunDomain)
    assert 'os.getenv("DAGSTER_EMIT_PLANNED_EVENTS_INDIVIDUALLY")' in planned
    assert "DagsterEventBatchMetadata(batch_id, i == last_index)" in planned
    handling = inspect.getsource(EventMethods.handle_new_event)
    assert "self._event_storage_impl.store_event_batch(events)" in handling
    assert 'os.getenv("DAGSTER_EVENT_BATCH_SIZE", "0")' in inspect.getsource(
        EventMethods._get_event_batch_size
    )
    assert set(ONE_STATEMENT_EVENTS) == {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_OBSERVATION,
        DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    }


def _entry(dagster_event: DagsterEvent, timestamp: float, run_id: str = "run-1") -> EventLogEntry:
    return EventLogEntry(
        user_message="",
        level=10,
        job_name="files_job",
        run_id=run_id,
        error_info=None,
        timestamp=timestamp,
        step_key="files",
        dagster_event=dagster_event,
    )


def _asset_events(start: float) -> list[list[EventLogEntry]]:
    """Events as a run stores them, one at a time or in batches (a list of several)."""
    files, checks = dg.AssetKey(["default", "files"]), dg.AssetKey(["other", "files"])

    def planned(key: dg.AssetKey, partition: str) -> DagsterEvent:
        data = AssetMaterializationPlannedData(key, partition=partition)
        return DagsterEvent.build_asset_materialization_planned_event("files_job", "files", data)

    def materialized(key: dg.AssetKey, partition: str, tags=None) -> DagsterEvent:
        materialization = dg.AssetMaterialization(
            key, partition=partition, metadata={"bytes": 4096, "sha256": "ab" * 32}, tags=tags
        )
        return DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name="files_job",
            event_specific_data=StepMaterializationData(materialization),
            step_key="files",
        )

    def observed(key: dg.AssetKey, partition: str, tags=None) -> DagsterEvent:
        observation = dg.AssetObservation(
            key, partition=partition, description="Copy failed", tags=tags
        )
        return DagsterEvent(
            event_type_value=DagsterEventType.ASSET_OBSERVATION.value,
            job_name="files_job",
            event_specific_data=AssetObservationData(observation),
            step_key="files",
        )

    step_start = DagsterEvent(
        event_type_value=DagsterEventType.STEP_START.value, job_name="files_job", step_key="files"
    )
    times = iter(start + index for index in range(100))
    return [
        [_entry(planned(files, f"p{i}"), next(times)) for i in range(5)],  # a run's, batched
        [_entry(planned(checks, "c"), next(times), run_id="run-2")],
        [_entry(step_start, next(times))],
        [_entry(materialized(files, "p0"), next(times))],
        [_entry(materialized(files, "p1", {DATA_VERSION_TAG: "v1", "x": "y"}), next(times))],
        [_entry(observed(files, "p2"), next(times))],
        [_entry(observed(files, "p3", {DATA_VERSION_TAG: "v2"}), next(times))],
        [_entry(observed(checks, f"o{i}"), next(times)) for i in range(3)],
        [_entry(materialized(files, f"p{i}"), next(times)) for i in (3, 4)],
        [_entry(materialized(checks, "m"), next(times))],
    ]


def _rows(dsn: str) -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        return {
            "event_logs": conn.execute("SELECT * FROM event_logs ORDER BY id").fetchall(),
            "asset_keys": conn.execute(
                "SELECT asset_key, last_materialization, last_run_id, asset_details, "
                "wipe_timestamp, last_materialization_timestamp, tags, cached_status_data "
                "FROM asset_keys ORDER BY asset_key"
            ).fetchall(),
            "asset_event_tags": conn.execute(
                "SELECT event_id, asset_key, key, value, event_timestamp FROM asset_event_tags "
                "ORDER BY event_id, key"
            ).fetchall(),
        }


def test_asset_events_are_stored_row_for_row_as_dagster_postgres_stores_them(stack):
    """The same events through dagster-postgres as shipped and through the one statement, each
    on a fresh database: the same rows (ids included), in every table they touch."""
    stored = {}
    start = time.time()
    for storage_class in (PostgresEventLogStorage, PooledPostgresEventLogStorage):
        database = f"dagster_{uuid.uuid4().hex[:12]}"
        dsn = stack.postgres.create_database(database)
        storage = storage_class(dsn.replace("://", "+psycopg2://", 1))
        try:
            for batch in _asset_events(start):
                if len(batch) == 1:
                    storage.store_event(batch[0])
                else:
                    storage.store_event_batch(batch)
        finally:
            storage.dispose()
        stored[storage_class.__name__] = _rows(dsn)
    shipped, ours = stored["PostgresEventLogStorage"], stored["PooledPostgresEventLogStorage"]
    assert len(ours["event_logs"]) == 17 and len(ours["asset_event_tags"]) == 2
    for table in shipped:
        assert ours[table] == shipped[table], table

    # The last materialization's record, written from the event's row in SQL, is the string
    # serialize_value writes.
    (record,) = [row[1] for row in ours["asset_keys"] if row[0] == '["other", "files"]']
    materialization = _asset_events(start)[-1][0]
    event_id = max(row[0] for row in ours["event_logs"])
    expected = serialize_value(
        dg.EventLogRecord(storage_id=event_id, event_log_entry=materialization)
    )
    assert record == expected


class _StatementLog:
    """What PostgreSQL received from some backends, from its statement log (log_statement)."""

    def __init__(self, stack, database: str) -> None:
        with psycopg.connect(stack.postgres.dsn_for(database), autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE {database} SET log_statement = 'all'")
        self.path = stack.postgres.log_path
        self.offset = self.path.stat().st_size

    def statements(self, pids: set[int]) -> list[str]:
        """The statements of these backends since the last call, once the log stops growing."""
        size, deadline = -1, time.monotonic() + 10
        while time.monotonic() < deadline and size != (size := self.path.stat().st_size):
            time.sleep(0.3)
        text = self.path.read_bytes()[self.offset : size].decode(errors="replace")
        self.offset = size
        return [
            statement
            # a statement's further lines start with a tab
            for pid, statement in re.findall(r"\[(\d+)\] LOG:  statement: (.*(?:\n\t.*)*)", text)
            if int(pid) in pids
        ]


def test_an_asset_event_takes_one_round_trip_and_a_run_s_planned_events_one(
    stack, tmp_path, monkeypatch
):
    """dagster-postgres: six statements and four transactions per materialization on this pool
    (INSERT, NOTIFY, the isolation level's reset, BEGIN, the asset's row, COMMIT); one here.
    A run's planned events, batched by Dagster when DAGSTER_EVENT_BATCH_SIZE > 0: one."""
    database = f"dagster_{uuid.uuid4().hex[:12]}"
    stack.postgres.create_database(database)
    log = _StatementLog(stack, database)
    for name, value in {**stack.env(), "DAGSTER_PG_DB": database}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "1000")
    shutil.copy(PROJECT / "dagster.yaml", tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        storage = instance.event_log_storage
        backends: set[int] = set()
        event.listen(
            storage._engine, "checkout", lambda dbapi, *_: backends.add(dbapi.get_backend_pid())
        )
        asset_key = dg.AssetKey(["default", "files"])
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key, partition="warm"))
        log.statements(backends)
        for index in range(3):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key, partition=f"file-{index}")
            )
        statements = log.statements(backends)
        assert len(statements) == 3, statements
        assert all(s.startswith("WITH ev AS (") for s in statements)

        files = dg.DynamicPartitionsDefinition(name="files_one_statement")

        @dg.asset(partitions_def=files, output_required=False)
        def counted(context: dg.AssetExecutionContext):
            for key in context.partition_keys:
                yield dg.AssetMaterialization(asset_key=context.asset_key, partition=key)

        keys = [f"file-{index:03d}" for index in range(50)]
        instance.add_dynamic_partitions(files.name, keys)
        job = dg.Definitions(assets=[counted]).resolve_implicit_global_asset_job_def()
        tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        run_id = job.execute_in_process(instance=instance, tags=tags).run_id
        statements = log.statements(backends)
        planned = [s for s in statements if "ASSET_MATERIALIZATION_PLANNED" in s]
        assert len(planned) == 1, f"{len(planned)} statements for a run's 50 planned events"
        materialized = [s for s in statements if "'ASSET_MATERIALIZATION'" in s]
        assert len(materialized) == 50
        for kind in (
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
            DagsterEventType.ASSET_MATERIALIZATION,
        ):
            records = instance.get_records_for_run(run_id, of_type=kind, limit=100).records
            assert sorted(r.event_log_entry.dagster_event.partition for r in records) == keys


def test_the_daemon_s_burst_of_partition_questions_is_answered_from_one_read(
    instance_from_dagster_yaml,
):
    """The daemon asks, key by key, whether each partition of a sensor's add request exists:
    a burst is answered from one read of the definition's keys, the same answers as one query
    per key, and this process's own adds and deletes are seen at once."""
    handler = inspect.getsource(dagster._daemon.sensor._handle_dynamic_partitions_requests)
    assert "instance.has_dynamic_partition(" in handler  # still key by key: else drop the burst
    instance, dsn = instance_from_dagster_yaml
    storage = instance.event_log_storage
    queries: list[str] = []
    event.listen(
        storage._engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: (
            queries.append(statement) if "FROM dynamic_partitions" in statement else None
        ),
    )
    name = "files_burst"
    instance.add_dynamic_partitions(name, [f"k{i}" for i in range(100)])
    asked = [f"k{i}" for i in range(0, 300, 3)]
    answers = [instance.has_dynamic_partition(name, key) for key in asked]
    assert answers == [int(key[1:]) < 100 for key in asked]
    assert len(queries) == BURST_QUESTIONS + 1, queries  # the burst's first ones, then one read
    shipped = PostgresEventLogStorage(dsn.replace("://", "+psycopg2://", 1))
    try:
        assert [shipped.has_dynamic_partition(name, key) for key in asked] == answers
        instance.add_dynamic_partitions(name, ["k150"])
        assert instance.has_dynamic_partition(name, "k150")
        instance.delete_dynamic_partition(name, "k0")
        assert not instance.has_dynamic_partition(name, "k0")
        # Another process's add, after the burst's read: the next burst sees it.
        for key in asked:
            instance.has_dynamic_partition(name, key)
        shipped.add_dynamic_partitions(name, ["k151"])
        time.sleep(1.1)
        assert instance.has_dynamic_partition(name, "k151")
    finally:
        shipped._engine.dispose()


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
