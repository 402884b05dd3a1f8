"""The `file_transfer_log` table: the lock between workers and the history of transfers, in SQL;
and the leases of `sftp_sessions`, the session budget per SFTP server (sessions.py).

Every statement is here, parameterized. Claiming is one INSERT ... ON CONFLICT, so that of
N concurrent workers exactly one wins a file; finishing is fenced by the claim's attempt number,
so a worker whose claim was taken over can no longer overwrite the new owner's row.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg.rows import dict_row

from ..core.model import Progress, TransferResult

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
    # The session budget per SFTP server (sessions.py): one lease per open SSH connection,
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
    # Stable across two listings (readiness.py): the size and mtime at which the last tick saw
    # each new or changed file it held back, until a tick finds it ready and unchanged. Only
    # files the log does not know in this version: rows stay few whatever the backlog's age.
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

CLAIM = """
INSERT INTO file_transfer_log AS t (
    source, filename, worker_id, run_id, status, attempts, transfer_start_time, heartbeat_at,
    size_bytes, file_size_mb, remote_mtime, object_key)
SELECT
    %(source)s, %(filename)s, %(worker_id)s, %(run_id)s, 'IN_PROGRESS', 1, now(), now(),
    %(size_bytes)s, round(%(size_bytes)s / 1048576.0, 2), %(remote_mtime)s, %(object_key)s
-- never a key that another source's file is copied to, nor one that another file of this
-- source is copied or being copied to: its object would be overwritten
WHERE NOT EXISTS (SELECT 1 FROM file_transfer_log o
                  WHERE o.object_key = %(object_key)s
                    AND (o.source <> %(source)s
                         OR (o.filename <> %(filename)s
                             AND o.status IN ('COMPLETED', 'IN_PROGRESS'))))
ON CONFLICT (source, filename) DO UPDATE SET
    worker_id = EXCLUDED.worker_id, run_id = EXCLUDED.run_id, status = 'IN_PROGRESS',
    attempts = t.attempts + 1, transfer_start_time = now(), transfer_end_time = NULL,
    heartbeat_at = now(), updated_at = now(), error_message = NULL,
    size_bytes = EXCLUDED.size_bytes, file_size_mb = EXCLUDED.file_size_mb,
    remote_mtime = EXCLUDED.remote_mtime, sha256 = NULL,
    -- a key with the day of the copy in it ({date}) is the first claim's for this content
    object_key = CASE WHEN %(keep_recorded_key)s AND t.object_key IS NOT NULL
                           AND t.status <> 'COMPLETED'
                           AND t.size_bytes = EXCLUDED.size_bytes
                           AND t.remote_mtime = EXCLUDED.remote_mtime
                      THEN t.object_key ELSE EXCLUDED.object_key END,
    download_duration = NULL, upload_duration = NULL, total_duration = NULL,
    stored_bytes = NULL, source_action = NULL, permanent = false, progress_bytes = NULL,
    resumed_from = NULL, verification = NULL
WHERE t.status NOT IN ('IN_PROGRESS', 'COMPLETED')  -- FAILED, QUEUED, or not ours: see STATUSES
   -- a claim with no heartbeat (the Airflow DAG's rows have none) is as old as its last update,
   -- and one that says nothing of its age is dead: never taken for alive
   OR (t.status = 'IN_PROGRESS'
       AND coalesce(t.heartbeat_at, t.updated_at, '-infinity')
           < now() - make_interval(secs => %(stale_seconds)s))
   -- our own claim, left IN_PROGRESS when the database went away under us, or our run's,
   -- left by an earlier attempt of the step that died: take it again
   OR (t.status = 'IN_PROGRESS' AND (t.worker_id = EXCLUDED.worker_id
                                      OR t.run_id = EXCLUDED.run_id))
   -- held by a run that Dagster knows is finished: nobody is copying it any more
   OR (t.status = 'IN_PROGRESS' AND t.run_id = %(dead_run)s)
   OR (t.status = 'COMPLETED' AND (t.size_bytes IS DISTINCT FROM EXCLUDED.size_bytes
                                   OR t.remote_mtime IS DISTINCT FROM EXCLUDED.remote_mtime))
RETURNING id, attempts, object_key
"""

HEARTBEAT = """
UPDATE file_transfer_log SET heartbeat_at = now(), progress_bytes = %(progress_bytes)s
WHERE id = %(id)s AND attempts = %(attempts)s AND status = 'IN_PROGRESS'
"""

COMPLETE = """
UPDATE file_transfer_log SET
    status = 'COMPLETED', transfer_end_time = now(), updated_at = now(), heartbeat_at = now(),
    size_bytes = %(size_bytes)s, file_size_mb = round(%(size_bytes)s / 1048576.0, 2),
    sha256 = %(sha256)s, download_duration = %(download)s, upload_duration = %(upload)s,
    total_duration = %(total)s, error_message = NULL, stored_bytes = %(stored_bytes)s,
    consecutive_failures = 0, auto_retries = 0, progress_bytes = %(size_bytes)s,
    resumed_from = %(resumed_from)s, verification = %(verification)s
WHERE id = %(id)s AND attempts = %(attempts)s AND status = 'IN_PROGRESS'
"""

FAIL = """
UPDATE file_transfer_log SET
    status = 'FAILED', transfer_end_time = now(), updated_at = now(), error_message = %(error)s,
    total_duration = extract(epoch FROM now() - transfer_start_time),
    consecutive_failures = consecutive_failures + 1, permanent = %(permanent)s
WHERE id = %(id)s AND attempts = %(attempts)s AND status = 'IN_PROGRESS'
"""

# A failure before any claim (the file vanished before it could be read): record it, but never
# over a live claim or a finished transfer.
FAIL_UNCLAIMED = """
INSERT INTO file_transfer_log AS t (
    source, filename, worker_id, run_id, status, attempts, transfer_start_time,
    transfer_end_time, error_message, consecutive_failures, permanent)
VALUES (
    %(source)s, %(filename)s, %(worker_id)s, %(run_id)s, 'FAILED', 1, now(), now(), %(error)s, 1,
    %(permanent)s)
ON CONFLICT (source, filename) DO UPDATE SET
    worker_id = EXCLUDED.worker_id, run_id = EXCLUDED.run_id, status = 'FAILED',
    attempts = t.attempts + 1, transfer_start_time = now(), transfer_end_time = now(),
    updated_at = now(), error_message = EXCLUDED.error_message,
    consecutive_failures = t.consecutive_failures + 1, permanent = EXCLUDED.permanent
WHERE t.status NOT IN ('IN_PROGRESS', 'COMPLETED')
   OR (t.status = 'IN_PROGRESS'
       AND coalesce(t.heartbeat_at, t.updated_at, '-infinity')
           < now() - make_interval(secs => %(stale_seconds)s))
"""

SWEEP_STALE = """
UPDATE file_transfer_log SET
    status = 'FAILED', updated_at = now(), consecutive_failures = consecutive_failures + 1,
    permanent = false,
    error_message = format('claim by worker %%s expired: no heartbeat since %%s '
                           '(the worker stopped or crashed); the file will be transferred again',
                           worker_id, coalesce(heartbeat_at, updated_at))
WHERE status = 'IN_PROGRESS' AND source = %(source)s
  AND coalesce(heartbeat_at, updated_at, '-infinity')
      < now() - make_interval(secs => %(stale_seconds)s)
"""

# Claims held by runs that Dagster reports finished (their workers are gone): released at once.
RELEASE_RUNS = """
UPDATE file_transfer_log SET
    status = 'FAILED', updated_at = now(), consecutive_failures = consecutive_failures + 1,
    permanent = false,
    error_message = format('claim by worker %%s released: its run %%s ended (%%s) before the '
                           'copy finished; the file will be transferred again',
                           worker_id, run_id, %(why)s::text)
WHERE status = 'IN_PROGRESS' AND source = %(source)s AND run_id = %(run_id)s
"""

CLAIMING_RUNS = """
SELECT DISTINCT run_id FROM file_transfer_log
WHERE status = 'IN_PROGRESS' AND source = %(source)s AND run_id IS NOT NULL
"""

# Requested files that no run claimed, though no run that could is left: the run died before
# it reached them (or was never created). They fail, and are retried like any transient fault.
RELEASE_ORPHANS = """
UPDATE file_transfer_log SET
    status = 'FAILED', updated_at = now(), consecutive_failures = consecutive_failures + 1,
    permanent = false,
    error_message = format('requested at %%s, but its run ended before it copied the file '
                           '(the run failed to start, crashed or was canceled); the file will '
                           'be transferred again', requested_at)
WHERE status = 'QUEUED' AND source = %(source)s
  AND requested_at < now() - make_interval(secs => %(grace_seconds)s)
  AND NOT filename = ANY(%(in_flight)s)
"""

# The sensor's requests, one statement per tick: new and changed files start their count of
# automatic retries afresh; a retry adds one. Never over a live claim.
REQUEST = """
INSERT INTO file_transfer_log AS t (
    source, filename, status, attempts, size_bytes, file_size_mb, remote_mtime, requested_at,
    auto_retries)
SELECT %(source)s, f.filename, 'QUEUED', 0, f.size_bytes, round(f.size_bytes / 1048576.0, 2),
       to_timestamp(f.mtime), now(), f.retry::int
FROM unnest(%(filenames)s::text[], %(sizes)s::bigint[], %(mtimes)s::bigint[],
            %(retries)s::boolean[]) AS f(filename, size_bytes, mtime, retry)
ON CONFLICT (source, filename) DO UPDATE SET
    status = 'QUEUED', requested_at = now(), updated_at = now(),
    auto_retries = CASE WHEN EXCLUDED.auto_retries = 1 THEN t.auto_retries + 1 ELSE 0 END,
    size_bytes = EXCLUDED.size_bytes, file_size_mb = EXCLUDED.file_size_mb,
    remote_mtime = EXCLUDED.remote_mtime,
    -- the key recorded for other content is not for this one (see CLAIM)
    object_key = CASE WHEN t.size_bytes = EXCLUDED.size_bytes
                           AND t.remote_mtime = EXCLUDED.remote_mtime
                      THEN t.object_key END
WHERE t.status <> 'IN_PROGRESS'
  -- copied meanwhile (the tick planned from an earlier read): done, not requested again; a
  -- row that does not say what it copied is requested (see FileState.same_content)
  AND NOT (t.status = 'COMPLETED' AND t.size_bytes IS NOT DISTINCT FROM EXCLUDED.size_bytes
           AND t.remote_mtime IS NOT DISTINCT FROM EXCLUDED.remote_mtime)
"""

# COMPLETED rows that did not say which content they copied (left by the Airflow DAG, which
# records neither size nor mtime), whose object in the bucket is that of the listed file: they
# say so from now on.
ADOPT = """
UPDATE file_transfer_log t SET
    size_bytes = f.size_bytes, file_size_mb = round(f.size_bytes / 1048576.0, 2),
    remote_mtime = to_timestamp(f.mtime), object_key = coalesce(t.object_key, f.object_key),
    verification = coalesce(t.verification, 'adopted'), updated_at = now()
FROM unnest(%(filenames)s::text[], %(sizes)s::bigint[], %(mtimes)s::bigint[],
            %(object_keys)s::text[]) AS f(filename, size_bytes, mtime, object_key)
WHERE t.source = %(source)s AND t.filename = f.filename AND t.status = 'COMPLETED'
  AND (t.size_bytes IS NULL OR t.remote_mtime IS NULL)
"""

SIGHTINGS = """
SELECT filename, size_bytes, remote_mtime, extract(epoch FROM now() - seen_at)::float8 AS age
FROM file_sightings WHERE source = %(source)s
"""

# One statement per tick: the tick's sightings replace the previous ones; a row whose file was
# seen the same again is left as it is (no write), one no longer sighted is deleted.
RECORD_SIGHTINGS = """
WITH seen AS (
    SELECT * FROM unnest(%(filenames)s::text[], %(sizes)s::bigint[], %(mtimes)s::bigint[])
        AS s(filename, size_bytes, remote_mtime)
), gone AS (
    DELETE FROM file_sightings f
    WHERE f.source = %(source)s AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.filename = f.filename)
)
INSERT INTO file_sightings AS f (source, filename, size_bytes, remote_mtime)
SELECT %(source)s, filename, size_bytes, remote_mtime FROM seen
ON CONFLICT (source, filename) DO UPDATE SET
    size_bytes = EXCLUDED.size_bytes, remote_mtime = EXCLUDED.remote_mtime, seen_at = now()
WHERE (f.size_bytes, f.remote_mtime) IS DISTINCT FROM (EXCLUDED.size_bytes, EXCLUDED.remote_mtime)
"""

# Keys of claimed files, and of resumable uploads that a later claim may continue.
BEING_COPIED = """
SELECT object_key FROM file_transfer_log
WHERE source = %(source)s AND status = 'IN_PROGRESS' AND object_key IS NOT NULL
UNION
SELECT u.object_key FROM transfer_uploads u JOIN file_transfer_log t ON t.id = u.log_id
WHERE t.source = %(source)s
  AND u.updated_at > now() - make_interval(secs => %(resumable_seconds)s)
"""

# A claim's resumable upload (resume.py), recorded only while the claim is still ours.
UPLOAD_OF = "SELECT * FROM transfer_uploads WHERE log_id = %(id)s"

RECORD_UPLOAD = """
INSERT INTO transfer_uploads AS u (
    log_id, object_key, upload_id, token, size_bytes, remote_mtime, part_size, etags,
    done_bytes, sha256_state, checksums)
SELECT t.id, %(object_key)s, %(upload_id)s, %(token)s, %(size_bytes)s, %(remote_mtime)s,
       %(part_size)s, %(etags)s, %(done_bytes)s, %(sha256_state)s, %(checksums)s
FROM file_transfer_log t
WHERE t.id = %(id)s AND t.attempts = %(attempts)s AND t.status = 'IN_PROGRESS'
ON CONFLICT (log_id) DO UPDATE SET
    object_key = EXCLUDED.object_key, upload_id = EXCLUDED.upload_id, token = EXCLUDED.token,
    size_bytes = EXCLUDED.size_bytes, remote_mtime = EXCLUDED.remote_mtime,
    part_size = EXCLUDED.part_size, etags = EXCLUDED.etags, done_bytes = EXCLUDED.done_bytes,
    sha256_state = EXCLUDED.sha256_state, checksums = EXCLUDED.checksums, created_at = now(),
    updated_at = now()
"""

RECORD_PARTS = """
UPDATE transfer_uploads u SET
    etags = %(etags)s, done_bytes = %(done_bytes)s, sha256_state = %(sha256_state)s,
    checksums = %(checksums)s, updated_at = now()
FROM file_transfer_log t
WHERE u.log_id = %(id)s AND u.upload_id = %(upload_id)s
  AND t.id = u.log_id AND t.attempts = %(attempts)s AND t.status = 'IN_PROGRESS'
"""

DROP_UPLOAD = "DELETE FROM transfer_uploads WHERE log_id = %(id)s"

# Who else is copied to a key: another source's file, or another file of this source (as CLAIM).
OWNER = """
SELECT source, filename, status FROM file_transfer_log
WHERE object_key = %(object_key)s
  AND (source <> %(source)s
       OR (filename <> %(filename)s AND status IN ('COMPLETED', 'IN_PROGRESS')))
LIMIT 1
"""

# Files the sensor's plan refuses because another listed file maps to the same key: a
# permanent failure, its row marked as the sensor's (worker_id), so that the plan requests the
# file again once the collision is gone. A row already so is left as it is.
REFUSE = """
INSERT INTO file_transfer_log AS t (
    source, filename, worker_id, status, attempts, transfer_start_time, transfer_end_time,
    size_bytes, file_size_mb, remote_mtime, error_message, consecutive_failures, permanent)
SELECT %(source)s, f.filename, 'sensor', 'FAILED', 0, now(), now(), f.size_bytes,
       round(f.size_bytes / 1048576.0, 2), to_timestamp(f.mtime), f.error, 1, true
FROM unnest(%(filenames)s::text[], %(sizes)s::bigint[], %(mtimes)s::bigint[],
            %(errors)s::text[]) AS f(filename, size_bytes, mtime, error)
ON CONFLICT (source, filename) DO UPDATE SET
    worker_id = 'sensor', run_id = NULL, status = 'FAILED', permanent = true,
    transfer_end_time = now(), updated_at = now(), error_message = EXCLUDED.error_message,
    consecutive_failures = t.consecutive_failures + 1, size_bytes = EXCLUDED.size_bytes,
    file_size_mb = EXCLUDED.file_size_mb, remote_mtime = EXCLUDED.remote_mtime
WHERE t.status NOT IN ('IN_PROGRESS', 'COMPLETED')
  AND NOT (t.status = 'FAILED' AND t.worker_id = 'sensor'
           AND t.error_message IS NOT DISTINCT FROM EXCLUDED.error_message
           AND t.size_bytes = EXCLUDED.size_bytes AND t.remote_mtime = EXCLUDED.remote_mtime)
"""

# The source's copies in flight, and how many of them are one process's (the bandwidth cap's
# share of it, bandwidth.py).
COPIES_IN_FLIGHT = """
SELECT count(*) AS total, count(*) FILTER (WHERE worker_id LIKE %(process)s) AS mine
FROM file_transfer_log
WHERE status = 'IN_PROGRESS' AND source = %(source)s
  AND coalesce(heartbeat_at, updated_at) > now() - make_interval(secs => %(stale_seconds)s)
"""

GET = "SELECT * FROM file_transfer_log WHERE source = %(source)s AND filename = %(filename)s"

STATES = """
SELECT filename, status, size_bytes, extract(epoch FROM remote_mtime)::bigint AS mtime,
       permanent, auto_retries, extract(epoch FROM updated_at) AS updated,
       (status = 'FAILED' AND worker_id = 'sensor') AS refused
FROM file_transfer_log WHERE source = %(source)s
"""


SOURCE_ACTION = """
UPDATE file_transfer_log SET source_action = %(action)s, updated_at = now()
WHERE id = %(id)s AND attempts = %(attempts)s
"""

# Files COMPLETED before the retention horizon: their partitions can go (the rows stay).
EXPIRED = """
SELECT filename FROM file_transfer_log
WHERE source = %(source)s AND status = 'COMPLETED'
  AND transfer_end_time < now() - make_interval(secs => %(seconds)s)
"""

# Files that failed at least `threshold` times in a row, or for good (they wait for a fix),
# of one source or of all.
FAILING_FILES = """
SELECT source, filename, consecutive_failures, error_message, permanent FROM file_transfer_log
WHERE status = 'FAILED' AND (consecutive_failures >= %(threshold)s OR permanent)
  AND (%(source)s::text IS NULL OR source = %(source)s)
ORDER BY consecutive_failures DESC
"""

# Files still failing after the last automatic retry: they wait for a rerun.
OUT_OF_RETRIES = """
SELECT source, filename, consecutive_failures, auto_retries, error_message
FROM file_transfer_log
WHERE status = 'FAILED' AND NOT permanent AND auto_retries >= %(limit)s
"""

# Sources whose last `threshold` finished transfers all failed.
FAILING_SOURCES = """
SELECT source, (array_agg(error_message ORDER BY transfer_end_time DESC))[1] AS error_message
FROM (
    SELECT source, status, error_message, transfer_end_time,
           row_number() OVER (PARTITION BY source ORDER BY transfer_end_time DESC) AS recent
    FROM file_transfer_log WHERE status IN ('COMPLETED', 'FAILED')
) last
WHERE recent <= %(threshold)s
GROUP BY source
HAVING count(*) = %(threshold)s AND bool_and(status = 'FAILED')
"""

# Open alerts whose subject is fine again: the file COMPLETED, or the source's last transfer.
RECOVERED = """
SELECT a.subject FROM transfer_alerts a
WHERE EXISTS (
    SELECT 1 FROM file_transfer_log t
    WHERE a.subject IN ('file ' || t.source || '/' || t.filename,
                        'retries of ' || t.source || '/' || t.filename)
      AND t.status = 'COMPLETED')
OR EXISTS (
    SELECT 1 FROM (
        SELECT DISTINCT ON (source) source, status FROM file_transfer_log
        WHERE status IN ('COMPLETED', 'FAILED')
        ORDER BY source, transfer_end_time DESC
    ) latest
    WHERE a.subject = 'source ' || latest.source AND latest.status = 'COMPLETED')
"""

OPEN_ALERT = """
INSERT INTO transfer_alerts (subject) VALUES (%(subject)s)
ON CONFLICT (subject) DO NOTHING RETURNING subject
"""

CLOSE_ALERT = "DELETE FROM transfer_alerts WHERE subject = %(subject)s RETURNING subject"

# Claims that outlived the stale window, and rows whose status this project does not write
# (asset checks).
STUCK = """
SELECT source, filename, worker_id, coalesce(heartbeat_at, updated_at) AS heartbeat_at, status
FROM file_transfer_log
WHERE source = %(source)s
  AND ((status = 'IN_PROGRESS'
        AND coalesce(heartbeat_at, updated_at, '-infinity')
            < now() - make_interval(secs => %(stale_seconds)s))
       OR NOT status = ANY(%(statuses)s))
ORDER BY 4
"""

# The most recent COMPLETED files of a source, for the bucket check.
RECENT_COMPLETED = """
SELECT filename, object_key, size_bytes, stored_bytes, sha256 FROM file_transfer_log
WHERE source = %(source)s AND status = 'COMPLETED'
ORDER BY transfer_end_time DESC LIMIT %(limit)s
"""

# Everything the statistics need (stats.py), newest first.
HISTORY = """
SELECT source, filename, worker_id, status, size_bytes, stored_bytes, download_duration,
       upload_duration, total_duration, transfer_start_time, transfer_end_time, heartbeat_at,
       attempts, consecutive_failures, progress_bytes, now() AS now
FROM file_transfer_log
WHERE updated_at >= now() - make_interval(days => %(days)s)
"""


# The session budget per SFTP server (sessions.py): a lease per open SSH connection. Grants to
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
SELECT source, holder, purpose, granted_at FROM sftp_sessions
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

# The statuses this project writes. QUEUED: requested by the sensor, not claimed yet. A row with
# any other status (edited by hand, or by another tool) is never taken for a live claim: it is
# claimable, and reported (FileState.unknown_status).
STATUSES = ("QUEUED", "IN_PROGRESS", "COMPLETED", "FAILED")


@dataclass(frozen=True)
class FileState:
    """What the sensor needs to know of a file's row to decide whether to request it."""

    status: str
    # The content last requested or claimed; None where the row does not say (the Airflow DAG's
    # rows have neither)
    size: int | None
    mtime: int | None
    permanent: bool  # the last failure cannot be helped by retrying
    auto_retries: int  # automatic re-requests since the file last changed or was copied
    updated: float  # epoch seconds of the last change of the row (for a failure: its time)
    refused: bool = False  # failed in the sensor's plan: its key is another listed file's

    def same_content(self, size: int, mtime: int) -> bool | None:
        """Whether the row is of the file with this size and mtime: False when what it records
        differs, True when it records both and both match, None when it cannot say (unknown is
        never taken for unchanged: the file's object decides, discovery.object_differs)."""
        if (self.size is not None and self.size != size) or (
            self.mtime is not None and self.mtime != mtime
        ):
            return False
        return None if self.size is None or self.mtime is None else True


@dataclass(frozen=True)
class Claim:
    id: int
    attempts: int
    object_key: str = ""  # recorded with the claim: a retry may keep an earlier claim's


@dataclass(frozen=True)
class RecordedUpload:
    """A resumable upload as an earlier claim recorded it, and the file it was for."""

    progress: Progress
    object_key: str
    size_bytes: int
    remote_mtime: int


def _progress_params(progress: Progress) -> dict:
    return {
        "upload_id": progress.upload_id,
        "token": progress.token,
        "part_size": progress.part_size,
        "etags": list(progress.etags),
        "done_bytes": progress.done_bytes,
        "sha256_state": progress.sha256_state,
        "checksums": None if progress.checksums is None else list(progress.checksums),
    }


class ClaimLost(Exception):
    """Our claim was taken over (we were presumed dead); the new owner's row stands."""


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


def libpq_url(url: str) -> str:
    """A database URL as libpq reads it: SQLAlchemy-style ones (postgresql+psycopg2://, as
    dagster.yaml names its own database) are accepted for convenience."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+')[0]}{sep}{rest}" if sep else url


class TransferLog:
    """The table, over one psycopg connection per thread (autocommit)."""

    def __init__(self, dsn: str, stale_minutes: float = 30):
        self._dsn = libpq_url(dsn)
        self.stale_minutes = stale_minutes
        self._local = threading.local()
        self._all: list[psycopg.Connection] = []
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _execute(self, sql: str, params: dict | None = None) -> psycopg.Cursor:
        return self._connection().execute(sql, params)

    def schema_version(self) -> int:
        """How many of MIGRATIONS the database has run, in one query; 0 for a new database or
        one migrated before versions were recorded."""
        try:
            row = self._execute(SCHEMA_VERSION).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return row["version"] or 0

    def ensure_schema(self) -> int:
        """What a process does before its first use: one query when the schema is current (the
        hot table is not touched), else migrate(). Returns how many migrations this call ran."""
        if self.schema_version() == len(MIGRATIONS):
            return 0
        return self.migrate()

    def migrate(self) -> int:
        """Run the migrations the database lacks, once however many processes call this at the
        same time; returns how many this call ran. SchemaTooNew if a newer release migrated it."""
        with self._connection().transaction() as tx:
            conn = tx.connection
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # Read again under the lock: a process that waited finds the work done.
            conn.execute(SCHEMA_TABLE)
            version = conn.execute(SCHEMA_VERSION).fetchone()["version"] or 0
            if version > len(MIGRATIONS):
                raise SchemaTooNew(version, len(MIGRATIONS))
            for statement in MIGRATIONS[version:]:
                conn.execute(statement)
            if version < len(MIGRATIONS):
                conn.execute(RECORD_SCHEMA_VERSION, {"version": len(MIGRATIONS)})
        return len(MIGRATIONS) - version

    def claim(
        self,
        source: str,
        filename: str,
        *,
        size_bytes: int,
        remote_mtime: int,
        object_key: str,
        worker_id: str,
        run_id: str | None,
        dead_run: str | None = None,
        keep_recorded_key: bool = False,
    ) -> Claim | None:
        """The claim if this worker may transfer the file now; None if another holds it, the
        same content is already COMPLETED, or object_key is another file's. dead_run: a run
        known to be finished, whose claim may be taken over. keep_recorded_key: an earlier
        claim of the same content keeps its key (the claim says which key to copy to)."""
        row = self._execute(
            CLAIM,
            {
                "source": source,
                "filename": filename,
                "worker_id": worker_id,
                "run_id": run_id,
                "size_bytes": size_bytes,
                "remote_mtime": datetime.fromtimestamp(remote_mtime, UTC),
                "object_key": object_key,
                "stale_seconds": self.stale_minutes * 60,
                "dead_run": dead_run,
                "keep_recorded_key": keep_recorded_key,
            },
        ).fetchone()
        return Claim(row["id"], row["attempts"], row["object_key"]) if row else None

    def heartbeat(self, claim: Claim, progress_bytes: int | None = None) -> None:
        params = {"id": claim.id, "attempts": claim.attempts, "progress_bytes": progress_bytes}
        if self._execute(HEARTBEAT, params).rowcount != 1:
            raise ClaimLost(f"claim {claim.id} (attempt {claim.attempts}) was taken over")

    def complete(self, claim: Claim, result: TransferResult) -> None:
        params = {
            "id": claim.id,
            "attempts": claim.attempts,
            "size_bytes": result.size_bytes,
            "sha256": result.sha256,
            "download": round(result.download_seconds, 2),
            "upload": round(result.upload_seconds, 2),
            "total": round(result.total_seconds, 2),
            "stored_bytes": result.stored_bytes,
            "resumed_from": result.resumed_from or None,
            "verification": result.verification,
        }
        if self._execute(COMPLETE, params).rowcount != 1:
            raise ClaimLost(f"claim {claim.id} (attempt {claim.attempts}) was taken over")

    def fail(self, claim: Claim, error: str, permanent: bool = False) -> None:
        params = {"id": claim.id, "attempts": claim.attempts, "error": error}
        self._execute(FAIL, {**params, "permanent": permanent})

    def fail_unclaimed(
        self,
        source: str,
        filename: str,
        error: str,
        *,
        worker_id: str,
        run_id: str | None,
        permanent: bool = False,
    ) -> None:
        self._execute(
            FAIL_UNCLAIMED,
            {
                "source": source,
                "filename": filename,
                "worker_id": worker_id,
                "run_id": run_id,
                "error": error,
                "stale_seconds": self.stale_minutes * 60,
                "permanent": permanent,
            },
        )

    def sweep_stale(self, source: str) -> int:
        """Turn claims of dead workers into FAILED rows; returns how many."""
        return self._execute(
            SWEEP_STALE, {"source": source, "stale_seconds": self.stale_minutes * 60}
        ).rowcount

    def claiming_runs(self, source: str) -> list[str]:
        """The runs that hold claims on files of the source."""
        rows = self._execute(CLAIMING_RUNS, {"source": source}).fetchall()
        return [r["run_id"] for r in rows]

    def release_run(self, source: str, run_id: str, why: str) -> int:
        """Turn the claims of a finished run into FAILED rows; returns how many."""
        params = {"source": source, "run_id": run_id, "why": why}
        return self._execute(RELEASE_RUNS, params).rowcount

    def release_orphans(self, source: str, in_flight: set[str], grace_seconds: float) -> int:
        """Turn QUEUED rows that no unfinished run covers into FAILED rows; returns how many."""
        params = {"source": source, "in_flight": list(in_flight), "grace_seconds": grace_seconds}
        return self._execute(RELEASE_ORPHANS, params).rowcount

    def request(self, source: str, files: list[tuple[str, int, int, bool]]) -> None:
        """Record the sensor's requests: (filename, size, mtime, is an automatic retry)."""
        if not files:
            return
        filenames, sizes, mtimes, retries = (list(column) for column in zip(*files, strict=True))
        self._execute(
            REQUEST,
            {
                "source": source,
                "filenames": filenames,
                "sizes": sizes,
                "mtimes": mtimes,
                "retries": retries,
            },
        )

    def sightings(self, source: str) -> dict[str, tuple[str, float]]:
        """filename -> ("size:mtime", for how many seconds listings have seen it so) as the
        source's last tick saw its held-back files (the database's clock: one clock for all)."""
        rows = self._execute(SIGHTINGS, {"source": source}).fetchall()
        return {r["filename"]: (f"{r['size_bytes']}:{r['remote_mtime']}", r["age"]) for r in rows}

    def record_sightings(self, source: str, files: list[tuple[str, int, int]]) -> None:
        """Replace the source's sightings by this tick's: (filename, size, mtime)."""
        filenames, sizes, mtimes = [list(c) for c in zip(*files, strict=True)] or [[], [], []]
        params = {"source": source, "filenames": filenames, "sizes": sizes, "mtimes": mtimes}
        self._execute(RECORD_SIGHTINGS, params)

    def adopt(self, source: str, files: list[tuple[str, int, int, str]]) -> int:
        """Record the content of COMPLETED rows that did not say it, as their objects showed:
        (filename, size, mtime, object key); returns how many rows now say it."""
        if not files:
            return 0
        filenames, sizes, mtimes, keys = (list(column) for column in zip(*files, strict=True))
        params = {"filenames": filenames, "sizes": sizes, "mtimes": mtimes, "object_keys": keys}
        return self._execute(ADOPT, {"source": source, **params}).rowcount

    def being_copied(self, source: str, resumable_seconds: float) -> set[str]:
        """The object keys the source's claimed files are being copied to, and those of
        resumable uploads touched within resumable_seconds: their multipart uploads are live
        (or wait for the next claim), however long ago they started."""
        params = {"source": source, "resumable_seconds": resumable_seconds}
        return {row["object_key"] for row in self._execute(BEING_COPIED, params)}

    def upload_of(self, claim: Claim) -> RecordedUpload | None:
        """The resumable upload an earlier claim of the file recorded, if any."""
        row = self._execute(UPLOAD_OF, {"id": claim.id}).fetchone()
        if row is None:
            return None
        return RecordedUpload(
            Progress(
                row["upload_id"],
                row["token"],
                row["part_size"],
                tuple(row["etags"]),
                row["done_bytes"],
                row["sha256_state"],
                None if row["checksums"] is None else tuple(row["checksums"]),
            ),
            row["object_key"],
            row["size_bytes"],
            row["remote_mtime"],
        )

    def record_upload(
        self, claim: Claim, object_key: str, size: int, mtime: int, progress: Progress
    ) -> None:
        params = {
            "id": claim.id,
            "attempts": claim.attempts,
            "object_key": object_key,
            "size_bytes": size,
            "remote_mtime": mtime,
            **_progress_params(progress),
        }
        if self._execute(RECORD_UPLOAD, params).rowcount != 1:
            raise ClaimLost(f"claim {claim.id} (attempt {claim.attempts}) was taken over")

    def record_parts(self, claim: Claim, progress: Progress) -> None:
        params = {"id": claim.id, "attempts": claim.attempts, **_progress_params(progress)}
        if self._execute(RECORD_PARTS, params).rowcount != 1:
            raise ClaimLost(f"claim {claim.id} (attempt {claim.attempts}) was taken over")

    def drop_upload(self, claim: Claim) -> None:
        self._execute(DROP_UPLOAD, {"id": claim.id})

    def owner_of(self, object_key: str, source: str, filename: str) -> dict | None:
        """The row of another file copied to object_key, if any (source, filename, status):
        another source's, or another of this source's that is copied or being copied there."""
        params = {"object_key": object_key, "source": source, "filename": filename}
        return self._execute(OWNER, params).fetchone()

    def refuse(self, source: str, files: list[tuple[str, int, int, str]]) -> None:
        """Record the plan's refusals: (filename, size, mtime, why), permanent failures."""
        if not files:
            return
        filenames, sizes, mtimes, errors = (list(column) for column in zip(*files, strict=True))
        params = {"filenames": filenames, "sizes": sizes, "mtimes": mtimes, "errors": errors}
        self._execute(REFUSE, {"source": source, **params})

    def share_of_copies(self, source: str, process: str) -> float:
        """The part of the source's copies in flight that workers of `process` (host:pid, as
        worker ids begin) are doing: 1.0 when it is alone."""
        pattern = process.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        params = {"source": source, "process": pattern, "stale_seconds": self.stale_minutes * 60}
        row = self._execute(COPIES_IN_FLIGHT, params).fetchone()
        return row["mine"] / row["total"] if row["total"] and row["mine"] else 1.0

    def get(self, source: str, filename: str) -> dict | None:
        return self._execute(GET, {"source": source, "filename": filename}).fetchone()

    def states(self, source: str) -> dict[str, FileState]:
        """filename (the partition key) -> its state."""
        rows = self._execute(STATES, {"source": source}).fetchall()
        return {
            r["filename"]: FileState(
                r["status"],
                r["size_bytes"],
                r["mtime"],
                r["permanent"],
                r["auto_retries"],
                float(r["updated"]),
                r["refused"],
            )
            for r in rows
        }

    def record_source_action(self, claim: Claim, action: str) -> None:
        self._execute(SOURCE_ACTION, {"id": claim.id, "attempts": claim.attempts, "action": action})

    def expired(self, source: str, days: float) -> list[str]:
        rows = self._execute(EXPIRED, {"source": source, "seconds": days * 86400}).fetchall()
        return [r["filename"] for r in rows]

    def failing_files(self, threshold: int, source: str | None = None) -> list[dict]:
        """Files that failed at least `threshold` times in a row (of `source`, or all)."""
        params = {"threshold": threshold, "source": source}
        return self._execute(FAILING_FILES, params).fetchall()

    def out_of_retries(self, limit: int) -> list[dict]:
        return self._execute(OUT_OF_RETRIES, {"limit": limit}).fetchall()

    def failing_sources(self, threshold: int) -> list[dict]:
        return self._execute(FAILING_SOURCES, {"threshold": threshold}).fetchall()

    def recovered_alerts(self) -> list[str]:
        return [r["subject"] for r in self._execute(RECOVERED).fetchall()]

    def open_alert(self, subject: str) -> bool:
        """True if this call opened it (False: it was open already)."""
        return self._execute(OPEN_ALERT, {"subject": subject}).fetchone() is not None

    def close_alert(self, subject: str) -> bool:
        return self._execute(CLOSE_ALERT, {"subject": subject}).fetchone() is not None

    def stuck(self, source: str) -> list[dict]:
        params = {
            "source": source,
            "stale_seconds": self.stale_minutes * 60,
            "statuses": list(STATUSES),
        }
        return self._execute(STUCK, params).fetchall()

    def recent_completed(self, source: str, limit: int) -> list[dict]:
        return self._execute(RECENT_COMPLETED, {"source": source, "limit": limit}).fetchall()

    def history(self, days: int) -> list[dict]:
        return self._execute(HISTORY, {"days": days}).fetchall()

    def sessions_in_use(self) -> list[dict]:
        """Per SFTP server: the sessions open now (unexpired leases), of which listing."""
        return self._execute(SESSIONS_IN_USE).fetchall()

    def session_leases(self) -> SessionLeases:
        """The sftp_sessions table over a connection of its own (see SessionLeases)."""
        return SessionLeases(self._dsn)

    def close(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for conn in connections:
            conn.close()


class SessionLeases:
    """The `sftp_sessions` table, for one process's session budgets (sessions.py).

    One connection (autocommit) shared by the process's threads under a lock, rather than the
    log's connection per thread: leases are taken once per SSH connection, renewed by one
    thread and released from whichever thread closes the session, so a connection per thread
    would only multiply idle database connections.
    """

    def __init__(self, dsn: str):
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._dsn, autocommit=True, row_factory=dict_row)
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
