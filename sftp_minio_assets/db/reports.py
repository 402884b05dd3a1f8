"""What the alerts, the asset checks and the statistics read of the transfer log, and the
`transfer_alerts` table of the alerts open until their subject recovers.
"""

from __future__ import annotations

from .connection import Connections
from .schema import STATUSES

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


class Reports:
    """Queries over the whole log. stale_minutes: as Claims'."""

    def __init__(self, db: Connections, stale_minutes: float = 30):
        self._db = db
        self.stale_minutes = stale_minutes

    def failing_files(self, threshold: int, source: str | None = None) -> list[dict]:
        """Files that failed at least `threshold` times in a row (of `source`, or all)."""
        params = {"threshold": threshold, "source": source}
        return self._db.execute(FAILING_FILES, params).fetchall()

    def out_of_retries(self, limit: int) -> list[dict]:
        return self._db.execute(OUT_OF_RETRIES, {"limit": limit}).fetchall()

    def failing_sources(self, threshold: int) -> list[dict]:
        return self._db.execute(FAILING_SOURCES, {"threshold": threshold}).fetchall()

    def recovered_alerts(self) -> list[str]:
        return [r["subject"] for r in self._db.execute(RECOVERED).fetchall()]

    def open_alert(self, subject: str) -> bool:
        """True if this call opened it (False: it was open already)."""
        return self._db.execute(OPEN_ALERT, {"subject": subject}).fetchone() is not None

    def close_alert(self, subject: str) -> bool:
        return self._db.execute(CLOSE_ALERT, {"subject": subject}).fetchone() is not None

    def stuck(self, source: str) -> list[dict]:
        params = {
            "source": source,
            "stale_seconds": self.stale_minutes * 60,
            "statuses": list(STATUSES),
        }
        return self._db.execute(STUCK, params).fetchall()

    def recent_completed(self, source: str, limit: int) -> list[dict]:
        return self._db.execute(RECENT_COMPLETED, {"source": source, "limit": limit}).fetchall()

    def history(self, days: int) -> list[dict]:
        return self._db.execute(HISTORY, {"days": days}).fetchall()
