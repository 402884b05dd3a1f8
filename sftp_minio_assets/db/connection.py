"""Connections to the transfer log's database: one per thread, autocommit, rows as dicts."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeAlias

import psycopg
from psycopg.rows import DictRow, dict_row

# What connect() opens, and the cursors its queries return: rows as dicts, column -> value.
DictConnection: TypeAlias = psycopg.Connection[DictRow]
DictCursor: TypeAlias = psycopg.Cursor[DictRow]


def libpq_url(url: str) -> str:
    """A database URL as libpq reads it: SQLAlchemy-style ones (postgresql+psycopg2://, as
    dagster.yaml names its own database) are accepted for convenience."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def connect(dsn: str) -> DictConnection:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


def one_row(cursor: DictCursor) -> DictRow:
    """The row of a query that always returns one (an aggregate with no GROUP BY)."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("the query returned no row where one is always expected")
    return row


def arrays(rows: Sequence[tuple], *names: str) -> dict[str, list]:
    """Rows as one array per column, by name: the parameters of a statement that takes many
    rows at once (`unnest(%(filenames)s::text[], ...)`)."""
    columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in names]
    if len(columns) != len(names):
        raise ValueError(f"rows of {len(columns)} values, for {len(names)} names")
    return dict(zip(names, columns, strict=True))


class Connections:
    """One connection per thread, opened at its first use and again after it broke; all closed
    together."""

    def __init__(self, url: str):
        self.dsn = libpq_url(url)
        self._local = threading.local()
        self._all: list[DictConnection] = []
        self._lock = threading.Lock()

    def connection(self) -> DictConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.dsn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> DictCursor:
        return self.connection().execute(sql, params)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
