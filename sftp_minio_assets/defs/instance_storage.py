"""Dagster's event log on PostgreSQL through a pool of connections, for every Dagster process.

dagster-postgres builds its event-log engine with `NullPool`: every write opens a new PostgreSQL
connection, and storing one event takes two (the `event_logs` row, then its asset index). A file
costs two events, so on a server with password authentication the connections alone were most
of Dagster's cost per file (54 ms per partition, 8 ms with this pool; see the README's
Benchmark). dagster.yaml names this class as `event_log_storage`, with the same `postgres_db`
settings as dagster-postgres' own storage.

It also stores an asset event (a materialization, an observation, a planned materialization)
in one statement, where dagster-postgres takes six round trips and four transactions on this
pool (the `event_logs` INSERT, a NOTIFY, then an index transaction for the asset's row and the
isolation level's reset): the event's row, its indexed tags and its asset's row are written
together by one INSERT with data-modifying CTEs, atomically. A batch of planned events (a run's,
sent together when DAGSTER_EVENT_BATCH_SIZE > 0) is one statement too, where dagster-postgres
stores each on its own. What is written is what dagster-postgres writes, row for row:
integration/test_instance_storage.py compares the two on the same events, and checks the
internals this leans on, so an upgrade of Dagster that changes them fails there first.

And it answers a burst of questions about one dynamic partitions definition from one read of
its keys: the daemon asks for each key of a sensor's add request whether it exists, one query
at a time (10,000 new files: 7 s of the daemon between the tick and the first run).
"""

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

import sqlalchemy.pool as db_pool
from dagster import DagsterEventType, Field, IntSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.config import pg_config
from dagster._core.storage.event_log.migration import ASSET_KEY_INDEX_COLS
from dagster._core.storage.event_log.schema import AssetEventTagsTable
from dagster._serdes import ConfigurableClassData
from dagster._time import datetime_from_timestamp
from dagster_postgres import PostgresEventLogStorage
from dagster_postgres.utils import (
    create_pg_engine,
    get_token_provider_from_config,
    pg_url_from_config,
)
from sqlalchemy import event, exc

# One connection kept open per process. Storing an event may check a table on a second
# connection while the first is still held: with fewer than two, that waits for the pool
# time-out. The overflow also serves threads that log at once (a run's MAX_WORKERS, the daemon's
# threads); overflow connections are closed when returned, as all connections are without a pool.
POOL_SIZE = 1
MAX_OVERFLOW = 10
POOL_RECYCLE_SECONDS = 3600
# A connection back in the pool for longer than this is checked (`SELECT 1`) before it is used
# again; one used moments ago is not. A run stores events back to back, and a check before each
# doubled its round trips to PostgreSQL (SQLAlchemy's pool_pre_ping checks every checkout). A
# server that went away between two close events fails that one statement, and SQLAlchemy then
# discards every pooled connection, so the next event reconnects.
IDLE_CHECK_SECONDS = 1.0

# has_dynamic_partition: after this many questions about one definition within BURST_SECONDS,
# the rest of that time is answered from its keys, read once. A key that another process adds
# or deletes meanwhile may be answered as before: for the daemon, which asks in order to skip
# adding keys that exist, an absent key added elsewhere is added again (an upsert, no harm); a
# key deleted elsewhere (by hand, in the UI) during a burst would be missed until the next tick
# requests it again. This process's own adds and deletes end the burst.
BURST_QUESTIONS = 20
BURST_SECONDS = 1.0


class PooledPostgresEventLogStorage(PostgresEventLogStorage):
    """`PostgresEventLogStorage` whose engine keeps a connection open (`QueuePool`)."""

    def __init__(
        self,
        postgres_url: str,
        should_autocreate_tables: bool = True,
        inst_data: ConfigurableClassData | None = None,
        token_provider: Any = None,
        max_overflow: int = MAX_OVERFLOW,
    ) -> None:
        # The parent creates the tables on its own NullPool engine; the pool replaces it after.
        super().__init__(postgres_url, should_autocreate_tables, inst_data, token_provider)
        self._engine.dispose()
        self._engine = create_pg_engine(
            self.postgres_url,
            self._token_provider,
            isolation_level="AUTOCOMMIT",
            poolclass=db_pool.QueuePool,
            pool_size=POOL_SIZE,
            max_overflow=max(max_overflow, 2),
            pool_recycle=POOL_RECYCLE_SECONDS,
        )
        event.listen(self._engine, "checkin", _returned)
        event.listen(self._engine, "checkout", _check_if_idle)
        self._bursts: dict[str, _Burst] = {}
        self._bursts_lock = threading.Lock()

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {
            # pg_config() is said to return any config schema; it returns a dict of fields.
            **cast(Mapping[str, Any], pg_config()),
            "max_overflow": Field(IntSource, is_required=False, default_value=MAX_OVERFLOW),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> "PooledPostgresEventLogStorage":
        return cls(
            inst_data=inst_data,
            postgres_url=pg_url_from_config(config_value),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
            max_overflow=config_value.get("max_overflow", MAX_OVERFLOW),
        )

    def dispose(self) -> None:
        super().dispose()
        self._engine.dispose()  # the connection the pool keeps, closed with the instance

    def store_event(self, event: EventLogEntry) -> None:
        """An asset event in one statement; any other event as dagster-postgres stores it."""
        kind = _one_statement_kind(event)
        if kind is None:
            super().store_event(event)
            return
        row = self._event_to_row(event)
        tags = self._tags_for_asset_event(event)
        if tags and not self._has_tags_table():
            tags = {}
        statement = _EVENT + (_TAGS if tags else "") + self._asset_row_sql(kind) + _NOTIFY
        params = {
            **row,
            "tag_keys": list(tags),
            "tag_values": list(tags.values()),
            "asset_timestamp": datetime_from_timestamp(event.timestamp),
        }
        with self._connect() as conn:
            conn.exec_driver_sql(statement, params).fetchall()

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """A batch of planned materializations (or of observations without indexed tags) in
        one statement: dagster-postgres stores each planned event on its own."""
        kinds = {_one_statement_kind(event) for event in events}
        if (
            len(kinds) != 1
            or kinds & {None, DagsterEventType.ASSET_MATERIALIZATION}
            or any(self._tags_for_asset_event(event) for event in events)
        ):
            super().store_event_batch(events)
            return
        kind = cast(DagsterEventType, kinds.pop())
        rows = [self._event_to_row(event) for event in events]
        last = {row["asset_key"]: event for row, event in zip(rows, events, strict=True)}
        columns = ("run_id", "event", "dagster_event_type", "timestamp", "step_key")
        params: dict[str, Any] = {
            f"{column}s": [row[column] for row in rows] for column in (*columns, "partition")
        }
        params.update(
            asset_keys=[row["asset_key"] for row in rows],
            last_asset_keys=list(last),
            last_run_ids=[event.run_id for event in last.values()],
            last_timestamps=[datetime_from_timestamp(e.timestamp) for e in last.values()],
        )
        statement = _EVENT_BATCH + self._asset_rows_sql(kind) + "SELECT count(*) FROM ev"
        with self._connect() as conn:
            conn.exec_driver_sql(statement, params).fetchall()

    def has_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> bool:
        """Whether the key is a partition: one query, or in a burst the keys read at its start."""
        keys = self._keys_in_burst(partitions_def_name)
        if keys is None:
            return super().has_dynamic_partition(partitions_def_name, partition_key)
        return partition_key in keys

    def add_dynamic_partitions(
        self, partitions_def_name: str, partition_keys: Sequence[str]
    ) -> None:
        super().add_dynamic_partitions(partitions_def_name, partition_keys)
        self._end_burst(partitions_def_name)  # keys read before the add are stale now

    def delete_dynamic_partition(self, partitions_def_name: str, partition_key: str) -> None:
        super().delete_dynamic_partition(partitions_def_name, partition_key)
        self._end_burst(partitions_def_name)

    def _keys_in_burst(self, name: str) -> frozenset[str] | None:
        """The definition's keys while questions about it come in a burst, else None."""
        now = time.monotonic()
        with self._bursts_lock:
            burst = self._bursts.get(name)
            if burst is None or now - burst.started > BURST_SECONDS:
                burst = self._bursts[name] = _Burst(now)
            burst.questions += 1
            if burst.keys is None and burst.questions > BURST_QUESTIONS:
                burst.keys = frozenset(self.get_dynamic_partitions(name))
            return burst.keys

    def _end_burst(self, name: str) -> None:
        with self._bursts_lock:
            self._bursts.pop(name, None)

    def _asset_row_sql(self, kind: DagsterEventType) -> str:
        """The CTE that writes the asset's row as dagster-postgres' _store_asset_event does
        (its values: _get_asset_entry_values)."""
        values = {
            DagsterEventType.ASSET_MATERIALIZATION: {
                "last_materialization": _LAST_MATERIALIZATION,
                "last_run_id": "%(run_id)s",
            },
            DagsterEventType.ASSET_MATERIALIZATION_PLANNED: {"last_run_id": "%(run_id)s"},
            DagsterEventType.ASSET_OBSERVATION: {},
        }[kind]
        if self.has_secondary_index(ASSET_KEY_INDEX_COLS):
            values["last_materialization_timestamp"] = "%(asset_timestamp)s"
        return _upsert_asset("SELECT %(asset_key)s{} FROM ev", values)

    def _asset_rows_sql(self, kind: DagsterEventType) -> str:
        """The asset rows of a batch: each asset's last event, as store_event would leave it."""
        planned = kind == DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        values = {"last_run_id": "r"} if planned else {}
        if self.has_secondary_index(ASSET_KEY_INDEX_COLS):
            values["last_materialization_timestamp"] = "t"
        source = (
            "SELECT k{} FROM unnest(%(last_asset_keys)s::text[], %(last_run_ids)s::text[], "
            "%(last_timestamps)s::timestamptz[]) AS a(k, r, t)"
        )
        return _upsert_asset(source, values)

    def _has_tags_table(self) -> bool:
        """Whether `asset_event_tags` exists (dagster-postgres asks before each event)."""
        if self._tags_table is None:
            self._tags_table = self.has_table(AssetEventTagsTable.name)
        return self._tags_table

    _tags_table: bool | None = None


# The events written in one statement: each writes its row and its asset's row, where
# dagster-postgres opens an index transaction (ASSET_EVENTS). Others (failures to materialize,
# freshness changes, asset checks, run and step events) go through dagster-postgres.
ONE_STATEMENT_EVENTS = (
    DagsterEventType.ASSET_MATERIALIZATION,
    DagsterEventType.ASSET_OBSERVATION,
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
)


def _one_statement_kind(event: EventLogEntry) -> DagsterEventType | None:
    dagster_event = event.dagster_event
    if dagster_event is None or dagster_event.asset_key is None:
        return None
    kind = dagster_event.event_type
    return kind if kind in ONE_STATEMENT_EVENTS else None


_EVENT = """WITH ev AS (
    INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key, asset_key,
                            partition)
    VALUES (%(run_id)s, %(event)s, %(dagster_event_type)s, %(timestamp)s, %(step_key)s,
            %(asset_key)s, %(partition)s)
    RETURNING id, run_id, event
)"""

# The tags dagster indexes (_tags_for_asset_event), as _store_asset_event_tags writes them.
_TAGS = """, tags AS (
    INSERT INTO asset_event_tags (event_id, asset_key, key, value, event_timestamp)
    SELECT ev.id, %(asset_key)s, t.key, t.value, %(timestamp)s
    FROM ev, unnest(%(tag_keys)s::text[], %(tag_values)s::text[]) AS t(key, value)
)"""

# serialize_value(EventLogRecord(storage_id=id, event_log_entry=event)), from the event's row:
# the event is serialized once, and its id is known only here. test_instance_storage compares
# the two strings.
_LAST_MATERIALIZATION = (
    """'{"__class__": "EventLogRecord", "event_log_entry": ' || ev.event"""
    """ || ', "storage_id": ' || ev.id || '}'"""
)

# dagster-postgres still sends this NOTIFY with each event, "to support version skew".
_NOTIFY = "\nSELECT ev.id, pg_notify('run_events', ev.run_id || '_' || ev.id) FROM ev"

_EVENT_BATCH = """WITH ev AS (
    INSERT INTO event_logs (run_id, event, dagster_event_type, timestamp, step_key, asset_key,
                            partition)
    SELECT run_id, event, dagster_event_type, timestamp, step_key, asset_key, partition
    FROM unnest(%(run_ids)s::text[], %(events)s::text[], %(dagster_event_types)s::text[],
                %(timestamps)s::timestamp[], %(step_keys)s::text[], %(asset_keys)s::text[],
                %(partitions)s::text[])
         WITH ORDINALITY AS e(run_id, event, dagster_event_type, timestamp, step_key, asset_key,
                              partition, position)
    ORDER BY position
    RETURNING id
)"""


def _upsert_asset(source: str, values: Mapping[str, str]) -> str:
    """The CTE that inserts asset_keys' row, or sets its columns (none: leaves it as it is).
    source: a SELECT of the asset key, whose `{}` takes the values' expressions."""
    columns = ", ".join(["asset_key", *values])
    select = source.format("".join(f", {expression}" for expression in values.values()))
    conflict = (
        "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in values)
        if values
        else "DO NOTHING"
    )
    return f""", asset AS (
    INSERT INTO asset_keys ({columns})
    {select}
    ON CONFLICT (asset_key) {conflict}
)"""


class _Burst:
    """Questions about one definition's partitions since `started`, and its keys once read."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.questions = 0
        self.keys: frozenset[str] | None = None


def _returned(dbapi_connection, record) -> None:
    record.info["returned_at"] = time.monotonic()


def _check_if_idle(dbapi_connection, record, proxy) -> None:
    """A connection the server closed while it was idle is replaced, not failed: raising
    DisconnectionError makes the pool discard it and hand out a fresh one."""
    returned = record.info.get("returned_at")
    if returned is None or time.monotonic() - returned < IDLE_CHECK_SECONDS:
        return  # new, or used moments ago
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        raise exc.DisconnectionError(f"pooled connection lost: {error}") from error
