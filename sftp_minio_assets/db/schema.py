"""The transfer log's schema: its migrations, the version a database is at, and the statuses
its rows may have.

Migrations run at deploy time (`sftp-minio-assets migrate`) or at a process's first use; a
migration never drops data, and a database migrated by a newer release is never touched.
"""

from __future__ import annotations

import psycopg

from .connection import Connections, one_row

# Only ever appended to, each statement idempotent: a database's schema version is how many of
# these it has run, and a database migrated before versions were recorded runs them all again.
MIGRATIONS = [
    # The table of the Airflow DAG this project replaces, with filename widened to TEXT (paths
    # exceed 255 characters).
    """
    CREATE TABLE IF NOT EXISTS file_transfer_log (
        id BIGSERIAL PRIMARY KEY,
        filename TEXT NOT NULL,
        worker_id VARCHAR(100),
        transfer_start_time TIMESTAMPTZ,
        transfer_end_time TIMESTAMPTZ,
        file_size_mb DECIMAL(12, 2),
        download_duration DECIMAL(10, 2),
        upload_duration DECIMAL(10, 2),
        total_duration DECIMAL(10, 2),
        status VARCHAR(20) NOT NULL,
        error_message TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # A table made by that Airflow DAG: keep its rows, lift its limits.
    "ALTER TABLE file_transfer_log ALTER COLUMN filename TYPE TEXT",
    "ALTER TABLE file_transfer_log DROP CONSTRAINT IF EXISTS file_transfer_log_filename_key",
    """
    ALTER TABLE file_transfer_log
        ADD COLUMN IF NOT EXISTS source TEXT NOT NULL DEFAULT 'default',
        ADD COLUMN IF NOT EXISTS size_bytes BIGINT,
        ADD COLUMN IF NOT EXISTS remote_mtime TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS object_key TEXT,
        ADD COLUMN IF NOT EXISTS sha256 CHAR(64),
        ADD COLUMN IF NOT EXISTS attempts INTEGER NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS run_id TEXT
    """,
    """
    ALTER TABLE file_transfer_log
        ADD COLUMN IF NOT EXISTS stored_bytes BIGINT,
        ADD COLUMN IF NOT EXISTS source_action TEXT,
        ADD COLUMN IF NOT EXISTS consecutive_failures INTEGER NOT NULL DEFAULT 0
    """,
    # Open alerts on repeated errors (alerts.py): one row per file or source until it recovers.
    """
    CREATE TABLE IF NOT EXISTS transfer_alerts (
        subject TEXT PRIMARY KEY,
        opened_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE UNIQUE INDEX IF NOT EXISTS file_transfer_log_source_filename
        ON file_transfer_log (source, filename)
    """,
    """
    CREATE INDEX IF NOT EXISTS file_transfer_log_status_heartbeat
        ON file_transfer_log (status, heartbeat_at)
    """,
    "CREATE INDEX IF NOT EXISTS file_transfer_log_object_key ON file_transfer_log (object_key)",
    # Self-healing (sensors.py): a file the sensor requested and no worker claimed yet is
    # QUEUED; a failure says whether retrying can help, and automatic re-requests are counted.
    """
    ALTER TABLE file_transfer_log
        ADD COLUMN IF NOT EXISTS requested_at TIMESTAMPTZ,
        ADD COLUMN IF NOT EXISTS permanent BOOLEAN NOT NULL DEFAULT false,
        ADD COLUMN IF NOT EXISTS auto_retries INTEGER NOT NULL DEFAULT 0
    """,
    # Resumable transfers (transfer/copy.py): a big file's multipart upload and how far it got, so
    # that the next claim of the unchanged file continues it; one row per file, kept until the
    # file is copied or its upload is given up.
    """
    CREATE TABLE IF NOT EXISTS transfer_uploads (
        log_id BIGINT PRIMARY KEY REFERENCES file_transfer_log (id) ON DELETE CASCADE,
        object_key TEXT NOT NULL,
        upload_id TEXT NOT NULL,
        token TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        remote_mtime BIGINT NOT NULL,
        part_size BIGINT NOT NULL,
        etags TEXT[] NOT NULL DEFAULT '{}',
        done_bytes BIGINT NOT NULL DEFAULT 0,
        sha256_state BYTEA,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    ALTER TABLE file_transfer_log
        ADD COLUMN IF NOT EXISTS progress_bytes BIGINT,
        ADD COLUMN IF NOT EXISTS resumed_from BIGINT
    """,
    # The session budget per SFTP server (sftp/sessions.py): one lease per open SSH connection,
    # renewed while it lives; an expired lease is a dead process's, and its slot is free.
    """
    CREATE TABLE IF NOT EXISTS sftp_sessions (
        id BIGSERIAL PRIMARY KEY,
        server TEXT NOT NULL,
        source TEXT NOT NULL,
        holder TEXT NOT NULL,
        purpose TEXT NOT NULL,
        granted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        expires_at TIMESTAMPTZ NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS sftp_sessions_server ON sftp_sessions (server, expires_at)",
    # Stable across two listings (policy/readiness.py): the size and mtime at which the last
    # tick saw each new or changed file it held back, until a tick finds it ready and unchanged.
    # Only files the log does not know in this version: rows stay few whatever the backlog's age.
    """
    CREATE TABLE IF NOT EXISTS file_sightings (
        source TEXT NOT NULL,
        filename TEXT NOT NULL,
        size_bytes BIGINT NOT NULL,
        remote_mtime BIGINT NOT NULL,
        seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (source, filename)
    )
    """,
    # How each copy was verified (transfer.BY_SERVER, BY_ETAG, BY_SIZE); the SHA-256 checksum
    # of each part of a resumable upload begun with checksums (NULL: begun without), which S3
    # needs again to complete it.
    """
    ALTER TABLE file_transfer_log ADD COLUMN IF NOT EXISTS verification TEXT
    """,
    "ALTER TABLE transfer_uploads ADD COLUMN IF NOT EXISTS checksums TEXT[]",
    # Whether the sensor deleted the file's partition (PARTITION_RETENTION_DAYS), so that later
    # ticks find the partitions to delete without reading every partition key; a new request
    # of the file adds its partition back. Their index: the rows a tick looks at for that.
    """
    ALTER TABLE file_transfer_log
        ADD COLUMN IF NOT EXISTS partition_deleted BOOLEAN NOT NULL DEFAULT false
    """,
    """
    CREATE INDEX IF NOT EXISTS file_transfer_log_partition_to_delete
        ON file_transfer_log (source, transfer_end_time)
        WHERE status = 'COMPLETED' AND NOT partition_deleted
    """,
    # The fast listing (SFTP_LISTING=fast): each directory of a source as the last tick saw it,
    # and when a full listing last began (and whether the one going on is). A directory is
    # settled (left unread while its mtime stays so) once read with every file COMPLETED as
    # listed, at least SETTLE_SECONDS after its mtime was first seen (db/sensor_memory.py).
    """
    CREATE TABLE IF NOT EXISTS source_directories (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        mtime BIGINT NOT NULL,
        mtime_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        settled BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (source, path)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS source_listings (
        source TEXT PRIMARY KEY,
        full_listing_at TIMESTAMPTZ,
        round_full BOOLEAN NOT NULL DEFAULT false
    )
    """,
    # A listing longer than a tick (SFTP_LISTING_SECONDS_PER_TICK): the directories it has
    # still to read, with their mtimes as their parents' listing showed them.
    """
    CREATE TABLE IF NOT EXISTS source_pending_directories (
        source TEXT NOT NULL,
        path TEXT NOT NULL,
        mtime BIGINT NOT NULL,
        PRIMARY KEY (source, path)
    )
    """,
]

# Serialises concurrent migrations (several workers starting at once).
MIGRATION_LOCK = 0x5F7A_11F0

# One row per upgrade. A table rather than a COMMENT ON TABLE: read with one plain SELECT that
# needs no catalog function, written in the migrating transaction, kept by any dump of the data,
# and not overwritten by whoever documents the table.
SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS file_transfer_log_schema (
    version INTEGER PRIMARY KEY,
    migrated_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""

SCHEMA_VERSION = "SELECT max(version) AS version FROM file_transfer_log_schema"

RECORD_SCHEMA_VERSION = "INSERT INTO file_transfer_log_schema (version) VALUES (%(version)s)"

# The statuses this project writes. QUEUED: requested by the sensor, not claimed yet. A row with
# any other status (edited by hand, or by another tool) is never taken for a live claim: it is
# claimable, and reported (FileState.unknown_status).
STATUSES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED")


class SchemaTooNew(Exception):
    """A newer release migrated the database: this code might misread or damage its rows."""

    def __init__(self, version: int, known: int):
        super().__init__(
            f"the transfer log's schema is at version {version}, but this release of "
            f"sftp_minio_assets knows versions up to {known} only: a newer release migrated it. "
            "Upgrade this code location, and every process sharing the transfer log, to that "
            "release or a later one (schemas are never downgraded)."
        )
        self.version = version
        self.known = known


class Schema:
    """The migrations of one database."""

    def __init__(self, db: Connections):
        self._db = db

    def version(self) -> int:
        """How many of MIGRATIONS the database has run, in one query; 0 for a new database or
        one migrated before versions were recorded."""
        try:
            row = one_row(self._db.execute(SCHEMA_VERSION))
        except psycopg.errors.UndefinedTable:
            return 0
        return row["version"] or 0

    def ensure(self) -> int:
        """What a process does before its first use: one query when the schema is current (the
        hot table is not touched), else migrate(). Returns how many migrations this call ran."""
        if self.version() == len(MIGRATIONS):
            return 0
        return self.migrate()

    def migrate(self) -> int:
        """Run the migrations the database lacks, once however many processes call this at the
        same time; returns how many this call ran. SchemaTooNew if a newer release migrated it."""
        with self._db.connection().transaction() as tx:
            conn = tx.connection
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # Read again under the lock: a process that waited finds the work done.
            conn.execute(SCHEMA_TABLE)
            version = one_row(conn.execute(SCHEMA_VERSION))["version"] or 0
            if version > len(MIGRATIONS):
                raise SchemaTooNew(version, len(MIGRATIONS))
            for statement in MIGRATIONS[version:]:
                conn.execute(statement)
            if version < len(MIGRATIONS):
                conn.execute(RECORD_SCHEMA_VERSION, {"version": len(MIGRATIONS)})
        return len(MIGRATIONS) - version
