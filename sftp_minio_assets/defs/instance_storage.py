"""Dagster's event log on PostgreSQL through a pool of connections, for every Dagster process.

dagster-postgres builds its event-log engine with `NullPool`: every write opens a new PostgreSQL
connection, and storing one event takes two (the `event_logs` row, then its asset index). A file
costs two events, so on a server with password authentication the connections alone were most
of Dagster's cost per file (54 ms per partition, 8 ms with this pool; see the README's
Benchmark). dagster.yaml names this class as `event_log_storage`, with the same `postgres_db`
settings as dagster-postgres' own storage.
"""

import time
from collections.abc import Mapping
from typing import Any, cast

import sqlalchemy.pool as db_pool
from dagster import Field, IntSource
from dagster._config.config_schema import UserConfigSchema
from dagster._core.storage.config import pg_config
from dagster._serdes import ConfigurableClassData
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
