"""What the sensor remembers of each file in `file_transfer_log` and `file_sightings`: the
rows' states, its requests and refusals, the files it held back, the rows it adopted, and the
requests that no run claimed; and of each source's tree (`source_directories`,
`source_listings`, `source_pending_directories`): where a listing longer than a tick goes on,
and which directories a fast listing may leave unread (policy/listing_state.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from .connection import Connections, arrays, one_row

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
    status = 'QUEUED', requested_at = now(), updated_at = now(), partition_deleted = false,
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


def directory_of(column: str) -> str:
    """SQL: the directory (a path key, "" for the root) of the file whose key is in column."""
    return (
        f"CASE WHEN strpos({column}, '/') = 0 THEN '' "
        f"ELSE regexp_replace({column}, '/[^/]*$', '') END"
    )


# One statement per tick: the tick's sightings replace the previous ones in the directories it
# read; a row whose file was seen the same again is left as it is (no write), one no longer
# sighted is deleted.
RECORD_SIGHTINGS = f"""
WITH seen AS (
    SELECT * FROM unnest(%(filenames)s::text[], %(sizes)s::bigint[], %(mtimes)s::bigint[])
        AS s(filename, size_bytes, remote_mtime)
), gone AS (
    DELETE FROM file_sightings f
    WHERE f.source = %(source)s
      AND (%(read)s::text[] IS NULL OR {directory_of("f.filename")} = ANY(%(read)s))
      AND NOT EXISTS (SELECT 1 FROM seen WHERE seen.filename = f.filename)
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

# A tick's listing, streamed in (COPY) and compared where the rows are: the files whose row is
# not COMPLETED with their size and mtime (FileState.same_content) come back with their state,
# the others stay in the database. clash_key: the object key of a file that may share it with
# another (discovery.clashes), else NULL.
LISTED = """
CREATE TEMPORARY TABLE listed (
    filename text NOT NULL, size_bytes bigint NOT NULL, mtime bigint NOT NULL, clash_key text
) ON COMMIT DROP
"""
COPY_LISTED = "COPY listed (filename, size_bytes, mtime, clash_key) FROM STDIN"

STATE_COLUMNS = """
       t.status, t.size_bytes AS row_size, extract(epoch FROM t.remote_mtime)::bigint AS row_mtime,
       t.permanent, t.auto_retries, extract(epoch FROM t.updated_at) AS updated,
       (t.status = 'FAILED' AND t.worker_id = 'sensor') AS refused
"""

# Each listed file with its row, if it has one.
WITH_ROWS = """
FROM listed l LEFT JOIN file_transfer_log t ON t.source = %(source)s AND t.filename = l.filename
"""

DIFFERING = f"""
SELECT l.filename, l.size_bytes, l.mtime, {STATE_COLUMNS} {WITH_ROWS}
WHERE t.id IS NULL OR t.status <> 'COMPLETED' OR t.size_bytes IS DISTINCT FROM l.size_bytes
   OR extract(epoch FROM t.remote_mtime)::bigint IS DISTINCT FROM l.mtime
ORDER BY l.filename COLLATE "C"
"""
DIFFERING_BATCH = 2000  # rows fetched at a time

SHARING_A_KEY = f"""
SELECT l.clash_key, l.filename, l.size_bytes, l.mtime, {STATE_COLUMNS} {WITH_ROWS}
WHERE l.clash_key IN (SELECT clash_key FROM listed WHERE clash_key IS NOT NULL
                      GROUP BY clash_key HAVING count(*) > 1)
"""

# The fast listing's memory of a source: the database's clock now, how long ago its last full
# listing began, and each directory with its mtime and whether it is settled.
LISTING_CLOCK = """
SELECT now() AS started,
       extract(epoch FROM now() - (SELECT full_listing_at FROM source_listings
                                   WHERE source = %(source)s)) AS full_age
"""
# A directory stays settled only while every row of a file in it is COMPLETED: one that failed
# or was requested since (a rerun, a reset) has its directory read again.
DIRECTORIES = f"""
WITH open AS (
    SELECT DISTINCT {directory_of("filename")} AS path
    FROM file_transfer_log WHERE source = %(source)s AND status <> 'COMPLETED'
)
SELECT d.path, d.mtime, d.settled AND NOT EXISTS (SELECT 1 FROM open WHERE open.path = d.path)
       AS settled
FROM source_directories d WHERE d.source = %(source)s
"""

# A directory's mtime has one-second steps: a file added in the second a listing read its
# directory may leave the mtime as that listing saw it. So a directory settles only when read
# by a tick that began SETTLE_SECONDS after its mtime was first recorded (after the read that
# saw it): that read came after the mtime's second on the server's own clock, so it saw every
# entry that mtime stands for, and any later change moves the mtime (whatever the clocks' skew).
SETTLE_SECONDS = 2

# The directories a tick read recorded, those found gone forgotten (those it left unread, found
# unchanged, stay as they were).
RECORD_DIRECTORIES = """
WITH seen AS (
    SELECT * FROM unnest(%(paths)s::text[], %(mtimes)s::bigint[], %(settled)s::boolean[])
        AS s(path, mtime, settled)
), gone AS (
    DELETE FROM source_directories d
    WHERE d.source = %(source)s AND d.path = ANY(%(gone)s)
), updated AS (
    UPDATE source_directories d SET
        settled = s.settled AND d.mtime = s.mtime
                  AND d.mtime_seen_at <= %(started)s - make_interval(secs => %(settle)s),
        mtime_seen_at = CASE WHEN d.mtime = s.mtime THEN d.mtime_seen_at ELSE now() END,
        mtime = s.mtime
    FROM seen s
    WHERE d.source = %(source)s AND d.path = s.path
    RETURNING d.path
)
INSERT INTO source_directories (source, path, mtime)
SELECT %(source)s, s.path, s.mtime FROM seen s WHERE s.path NOT IN (SELECT path FROM updated)
"""

FULL_LISTING = """
INSERT INTO source_listings (source, full_listing_at) VALUES (%(source)s, %(started)s)
ON CONFLICT (source) DO UPDATE SET full_listing_at = EXCLUDED.full_listing_at
"""

PENDING = """
SELECT p.path, p.mtime, coalesce(l.round_full, false) AS round_full
FROM source_pending_directories p LEFT JOIN source_listings l USING (source)
WHERE p.source = %(source)s ORDER BY p.path
"""
CLEAR_PENDING = "DELETE FROM source_pending_directories WHERE source = %(source)s"
RECORD_PENDING = """
WITH round AS (
    INSERT INTO source_listings (source, round_full) VALUES (%(source)s, %(full)s)
    ON CONFLICT (source) DO UPDATE SET round_full = EXCLUDED.round_full
)
INSERT INTO source_pending_directories (source, path, mtime)
SELECT %(source)s, path, mtime FROM unnest(%(paths)s::text[], %(mtimes)s::bigint[])
    AS p(path, mtime)
"""

# Files COMPLETED before the retention horizon whose partitions are still there: they can go
# (the rows stay), the oldest first.
EXPIRED = """
SELECT filename FROM file_transfer_log
WHERE source = %(source)s AND status = 'COMPLETED' AND NOT partition_deleted
  AND transfer_end_time < now() - make_interval(secs => %(seconds)s)
ORDER BY transfer_end_time LIMIT %(limit)s
"""

PARTITIONS_DELETED = """
UPDATE file_transfer_log SET partition_deleted = true
WHERE source = %(source)s AND filename = ANY(%(filenames)s) AND status = 'COMPLETED'
"""


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


def _row(row: dict) -> Row:
    return row["filename"], row["size_bytes"], row["mtime"], _state(row)


def _state(row: dict) -> FileState | None:
    if row["status"] is None:
        return None
    return FileState(
        row["status"],
        row["row_size"],
        row["row_mtime"],
        row["permanent"],
        row["auto_retries"],
        float(row["updated"]),
        row["refused"],
    )


Row = tuple[str, int, int, FileState | None]  # (key, size, mtime, its row's state or None)


@dataclass
class Comparison:
    """A listing compared with the source's rows (SensorMemory.compare)."""

    listed: int  # files compared
    # The files whose row is not COMPLETED with their size and mtime (new, changed, failed,
    # requested, claimed, or not saying what it copied), by key, read from the database as the
    # caller goes (a server-side cursor): a first tick over a million new files holds none.
    differing: Iterator[Row]
    # clash_key -> the files that share it
    sharing: dict[str, list[Row]] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectoryMemory:
    """What the fast listing remembers of a source (SensorMemory.directories)."""

    started: datetime  # the database's clock as the tick began
    full_age: float | None  # seconds since the last full listing began; None: never
    recorded: dict[str, tuple[int, bool]]  # path key -> (mtime, settled)


class SensorMemory:
    """The sensor's side of the transfer log."""

    def __init__(self, db: Connections):
        self._db = db

    def release_orphans(self, source: str, in_flight: set[str], grace_seconds: float) -> int:
        """Turn QUEUED rows that no unfinished run covers into FAILED rows; returns how many."""
        params = {"source": source, "in_flight": list(in_flight), "grace_seconds": grace_seconds}
        return self._db.execute(RELEASE_ORPHANS, params).rowcount

    def request(self, source: str, files: list[tuple[str, int, int, bool]]) -> None:
        """Record the sensor's requests: (filename, size, mtime, is an automatic retry)."""
        if not files:
            return
        params = arrays(files, "filenames", "sizes", "mtimes", "retries")
        self._db.execute(REQUEST, {"source": source, **params})

    def sightings(self, source: str) -> dict[str, tuple[str, float]]:
        """filename -> ("size:mtime", for how many seconds listings have seen it so) as the
        source's last tick saw its held-back files (the database's clock: one clock for all)."""
        rows = self._db.execute(SIGHTINGS, {"source": source}).fetchall()
        return {r["filename"]: (f"{r['size_bytes']}:{r['remote_mtime']}", r["age"]) for r in rows}

    def record_sightings(
        self, source: str, files: list[tuple[str, int, int]], read: list[str] | None
    ) -> None:
        """Replace the source's sightings in the directories a tick read (path keys; None:
        it read the whole tree) by its own: (filename, size, mtime)."""
        params = arrays(files, "filenames", "sizes", "mtimes")
        self._db.execute(RECORD_SIGHTINGS, {"source": source, "read": read, **params})

    def adopt(self, source: str, files: list[tuple[str, int, int, str]]) -> int:
        """Record the content of COMPLETED rows that did not say it, as their objects showed:
        (filename, size, mtime, object key); returns how many rows now say it."""
        if not files:
            return 0
        params = arrays(files, "filenames", "sizes", "mtimes", "object_keys")
        return self._db.execute(ADOPT, {"source": source, **params}).rowcount

    def being_copied(self, source: str, resumable_seconds: float) -> set[str]:
        """The object keys the source's claimed files are being copied to, and those of
        resumable uploads touched within resumable_seconds: their multipart uploads are live
        (or wait for the next claim), however long ago they started."""
        params = {"source": source, "resumable_seconds": resumable_seconds}
        return {row["object_key"] for row in self._db.execute(BEING_COPIED, params)}

    def refuse(self, source: str, files: list[tuple[str, int, int, str]]) -> None:
        """Record the plan's refusals: (filename, size, mtime, why), permanent failures."""
        if not files:
            return
        params = arrays(files, "filenames", "sizes", "mtimes", "errors")
        self._db.execute(REFUSE, {"source": source, **params})

    @contextmanager
    def compare(
        self, source: str, files: Iterable[tuple[str, int, int, str | None]]
    ) -> Iterator[Comparison]:
        """Compare listed files, (partition key, size, mtime, clash key or None) as they are
        read, with the source's rows in the database: they are streamed into a temporary table
        (COPY), and only those that differ come back, so that a tick's memory does not grow
        with the files that are copied already, nor with new files. Within the block only: the
        table lives for its transaction."""
        with self._db.connection().transaction() as tx:
            conn = tx.connection
            conn.execute(LISTED)
            listed = 0
            with conn.cursor().copy(COPY_LISTED) as copy:
                for row in files:
                    copy.write_row(row)
                    listed += 1
            conn.execute("ANALYZE listed")  # the planner: a hash join, not a nested loop
            sharing: dict[str, list[Row]] = {}
            for row in conn.execute(SHARING_A_KEY, {"source": source}):
                sharing.setdefault(row["clash_key"], []).append(_row(row))
            with conn.cursor(name="differing") as cursor:
                cursor.itersize = DIFFERING_BATCH
                cursor.execute(DIFFERING, {"source": source})
                yield Comparison(listed, (_row(row) for row in cursor), sharing)

    def directories(self, source: str) -> DirectoryMemory:
        """The source's directories as the last tick saw them, and the clock to record with."""
        clock = one_row(self._db.execute(LISTING_CLOCK, {"source": source}))
        rows = self._db.execute(DIRECTORIES, {"source": source})
        age = clock["full_age"]
        return DirectoryMemory(
            clock["started"],
            None if age is None else float(age),
            {row["path"]: (row["mtime"], row["settled"]) for row in rows},
        )

    def record_directories(
        self,
        source: str,
        started: datetime,
        read: list[tuple[str, int, bool]],
        gone: list[str],
        full_listing: bool,
    ) -> None:
        """Record the directories a tick read, (path key, mtime, every file COMPLETED as
        listed), and forget those found gone. started: as the tick began
        (DirectoryMemory.started); full_listing: a full listing began then."""
        params = arrays(read, "paths", "mtimes", "settled")
        with self._db.connection().transaction() as tx:
            conn, when = tx.connection, {"source": source, "started": started}
            statement = {**params, **when, "gone": gone, "settle": SETTLE_SECONDS}
            conn.execute(RECORD_DIRECTORIES, statement)
            if full_listing:
                conn.execute(FULL_LISTING, when)

    def pending(self, source: str) -> tuple[list[tuple[str, int]], bool]:
        """The directories (path key, mtime) a listing longer than a tick has still to read,
        and whether it is a full listing (of a source with listing fast)."""
        rows = self._db.execute(PENDING, {"source": source}).fetchall()
        return [(r["path"], r["mtime"]) for r in rows], bool(rows and rows[0]["round_full"])

    def record_pending(self, source: str, left: list[tuple[str, int]], full: bool) -> None:
        """What the next tick has to read (nothing: it starts from the root again)."""
        with self._db.connection().transaction() as tx:
            tx.connection.execute(CLEAR_PENDING, {"source": source})
            if left:
                params = {"source": source, "full": full, **arrays(left, "paths", "mtimes")}
                tx.connection.execute(RECORD_PENDING, params)

    def expired(self, source: str, days: float, limit: int) -> list[str]:
        """Up to limit files COMPLETED more than `days` ago whose partitions were not deleted."""
        params = {"source": source, "seconds": days * 86400, "limit": limit}
        return [r["filename"] for r in self._db.execute(EXPIRED, params).fetchall()]

    def partitions_deleted(self, source: str, filenames: list[str]) -> None:
        """Record that the partitions of these COMPLETED files are being deleted."""
        if filenames:
            self._db.execute(PARTITIONS_DELETED, {"source": source, "filenames": filenames})
