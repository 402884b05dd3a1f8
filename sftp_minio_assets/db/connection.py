"""Connections to the transfer log's database: one per thread, autocommit, rows as dicts."""

from __future__ import annotations

import threading

import psycopg
from psycopg.rows import dict_row


def libpq_url(url: str) -> str:
    """A database URL as libpq reads it: SQLAlchemy-style ones (postgresql+psycopg2://, as
    dagster.yaml names its own database) are accepted for convenience."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


def connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row)


class Connections:
    """One connection per thread, opened at its first use and again after it broke; all closed
    together."""

    def __init__(self, url: str):
        self.dsn = libpq_url(url)
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def connection(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = connect(self.dsn)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def execute(self, sql: str, params: dict | None = None) -> psycopg.Cursor:
        return self.connection().execute(sql, params)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()
