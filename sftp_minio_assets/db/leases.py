"""The `sftp_sessions` table: the session budget per SFTP server (sftp/sessions.py), a lease
per open SSH connection, renewed while it lives.
"""

from __future__ import annotations

import threading

from .connection import Connections, DictConnection, connect

# The session budget per SFTP server (sftp/sessions.py): a lease per open SSH connection. Grants to
# one server are serialised by an advisory lock on its name (this class of lock, its hash), so
# that two processes never both take the last slot; leases past their expiry are of dead
# processes: purged, and never counted.
SESSIONS_LOCK = 0x5E55_1075
LOCK_SERVER = "SELECT pg_advisory_xact_lock(%(lock)s, hashtext(%(server)s))"

GRANT_SESSION = """
WITH purged AS (
    DELETE FROM sftp_sessions WHERE server = %(server)s AND expires_at <= now()
)
INSERT INTO sftp_sessions (server, source, holder, purpose, expires_at)
SELECT %(server)s, %(source)s, %(holder)s, %(purpose)s,
       now() + make_interval(secs => %(lease_seconds)s)
WHERE (SELECT count(*) FROM sftp_sessions
       WHERE server = %(server)s AND expires_at > now()) < %(max_sessions)s
RETURNING id
"""

SESSION_HOLDERS = """
SELECT id, source, holder, purpose, granted_at FROM sftp_sessions
WHERE server = %(server)s AND expires_at > now()
ORDER BY granted_at
"""

# An expired lease is not renewed: its slot may have been granted to another meanwhile.
RENEW_SESSIONS = """
UPDATE sftp_sessions SET expires_at = now() + make_interval(secs => %(lease_seconds)s)
WHERE id = ANY(%(ids)s) AND expires_at > now()
RETURNING id
"""

RELEASE_SESSION = "DELETE FROM sftp_sessions WHERE id = %(id)s"

# Sessions open now per server (stats.py).
SESSIONS_IN_USE = """
SELECT server, count(*) AS sessions, count(*) FILTER (WHERE purpose = 'listing') AS listing,
       string_agg(DISTINCT source, ', ' ORDER BY source) AS sources
FROM sftp_sessions WHERE expires_at > now()
GROUP BY server ORDER BY server
"""


class Sessions:
    """The leases as the log's connections see them."""

    def __init__(self, db: Connections):
        self._db = db

    def in_use(self) -> list[dict]:
        """Per SFTP server: the sessions open now (unexpired leases), of which listing."""
        return self._db.execute(SESSIONS_IN_USE).fetchall()

    def leases(self) -> SessionLeases:
        """The sftp_sessions table over a connection of its own (see SessionLeases)."""
        return SessionLeases(self._db.dsn)


class SessionLeases:
    """The `sftp_sessions` table, for one process's session budgets (sftp/sessions.py).

    One connection (autocommit) shared by the process's threads under a lock, rather than the
    log's connection per thread: leases are taken once per SSH connection, renewed by one
    thread and released from whichever thread closes the session, so a connection per thread
    would only multiply idle database connections.
    """

    def __init__(self, dsn: str):
        self._dsn = dsn
        self._conn: DictConnection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> DictConnection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = connect(self._dsn)
        return self._conn

    def grant(
        self,
        server: str,
        *,
        source: str,
        holder: str,
        purpose: str,
        max_sessions: int,
        lease_seconds: float,
    ) -> tuple[int | None, list[dict]]:
        """A new lease's id if fewer than max_sessions are held on server, else None and the
        leases that are (source, holder, purpose, granted_at)."""
        params = {
            "lock": SESSIONS_LOCK,
            "server": server,
            "source": source,
            "holder": holder,
            "purpose": purpose,
            "max_sessions": max_sessions,
            "lease_seconds": lease_seconds,
        }
        with self._lock, self._connection().transaction() as tx:
            tx.connection.execute(LOCK_SERVER, params)
            row = tx.connection.execute(GRANT_SESSION, params).fetchone()
            if row is not None:
                return row["id"], []
            return None, tx.connection.execute(SESSION_HOLDERS, params).fetchall()

    def renew(self, ids: list[int], lease_seconds: float) -> set[int]:
        """Push back the expiry of these leases; returns those that were still live."""
        params = {"ids": ids, "lease_seconds": lease_seconds}
        with self._lock:
            rows = self._connection().execute(RENEW_SESSIONS, params).fetchall()
        return {row["id"] for row in rows}

    def release(self, lease: int) -> None:
        with self._lock:
            self._connection().execute(RELEASE_SESSION, {"id": lease})

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
