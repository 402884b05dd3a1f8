"""Claims on `file_transfer_log` rows: the lock between workers, and how each copy ended.

Claiming is one INSERT ... ON CONFLICT, so that of N concurrent workers exactly one wins a file;
finishing is fenced by the claim's attempt number, so a worker whose claim was taken over can no
longer overwrite the new owner's row. Claims of dead workers and of finished runs are released
here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ..core.model import TransferResult
from .connection import Connections, DictCursor, one_row

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
    resumed_from = %(resumed_from)s, verification = %(verification)s,
    source_action = %(source_action)s
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

# Who else is copied to a key: another source's file, or another file of this source (as CLAIM).
OWNER = """
SELECT source, filename, status FROM file_transfer_log
WHERE object_key = %(object_key)s
  AND (source <> %(source)s
       OR (filename <> %(filename)s AND status IN ('COMPLETED', 'IN_PROGRESS')))
LIMIT 1
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

SOURCE_ACTION = """
UPDATE file_transfer_log SET source_action = %(action)s, updated_at = now()
WHERE id = %(id)s AND attempts = %(attempts)s
"""


@dataclass(frozen=True)
class Claim:
    id: int
    attempts: int
    object_key: str = ""  # recorded with the claim: a retry may keep an earlier claim's


class ClaimLost(Exception):
    """Our claim was taken over (we were presumed dead); the new owner's row stands."""


def fenced(claim: Claim, cursor: DictCursor) -> None:
    """ClaimLost unless the statement, fenced by the claim's attempt, changed its one row."""
    if cursor.rowcount != 1:
        raise ClaimLost(f"claim {claim.id} (attempt {claim.attempts}) was taken over")


class Claims:
    """The workers' side of `file_transfer_log`. stale_minutes: how long a claim lives without
    a heartbeat (MAX_STALE_LOCK_MINUTES)."""

    def __init__(self, db: Connections, stale_minutes: float = 30):
        self._db = db
        self.stale_minutes = stale_minutes

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
        row = self._db.execute(
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
        fenced(claim, self._db.execute(HEARTBEAT, params))

    def complete(
        self, claim: Claim, result: TransferResult, source_action: str | None = None
    ) -> None:
        """The copy recorded, fenced by the claim. source_action: what becomes of the remote
        file, when known already (kept): one statement, not two."""
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
            "source_action": source_action,
        }
        fenced(claim, self._db.execute(COMPLETE, params))

    def fail(self, claim: Claim, error: str, permanent: bool = False) -> None:
        params = {"id": claim.id, "attempts": claim.attempts, "error": error}
        self._db.execute(FAIL, {**params, "permanent": permanent})

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
        self._db.execute(
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
        return self._db.execute(
            SWEEP_STALE, {"source": source, "stale_seconds": self.stale_minutes * 60}
        ).rowcount

    def claiming_runs(self, source: str) -> list[str]:
        """The runs that hold claims on files of the source."""
        rows = self._db.execute(CLAIMING_RUNS, {"source": source}).fetchall()
        return [r["run_id"] for r in rows]

    def release_run(self, source: str, run_id: str, why: str) -> int:
        """Turn the claims of a finished run into FAILED rows; returns how many."""
        params = {"source": source, "run_id": run_id, "why": why}
        return self._db.execute(RELEASE_RUNS, params).rowcount

    def owner_of(self, object_key: str, source: str, filename: str) -> dict | None:
        """The row of another file copied to object_key, if any (source, filename, status):
        another source's, or another of this source's that is copied or being copied there."""
        params = {"object_key": object_key, "source": source, "filename": filename}
        return self._db.execute(OWNER, params).fetchone()

    def share_of_copies(self, source: str, process: str) -> float:
        """The part of the source's copies in flight that workers of `process` (host:pid, as
        worker ids begin) are doing: 1.0 when it is alone."""
        pattern = process.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ":%"
        params = {"source": source, "process": pattern, "stale_seconds": self.stale_minutes * 60}
        row = one_row(self._db.execute(COPIES_IN_FLIGHT, params))
        return row["mine"] / row["total"] if row["total"] and row["mine"] else 1.0

    def get(self, source: str, filename: str) -> dict | None:
        return self._db.execute(GET, {"source": source, "filename": filename}).fetchone()

    def record_source_action(self, claim: Claim, action: str) -> None:
        self._db.execute(
            SOURCE_ACTION, {"id": claim.id, "attempts": claim.attempts, "action": action}
        )
