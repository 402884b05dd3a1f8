"""The `transfer_uploads` table: a big file's multipart upload and how far it got, so that the
next claim of the unchanged file continues it (transfer/resume.py). Written only while the
claim that began it is still ours.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.model import Progress
from .claims import Claim, fenced
from .connection import Connections

# A claim's resumable upload (transfer/resume.py), recorded only while the claim is still ours.
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


class Uploads:
    """The resumable uploads of claims."""

    def __init__(self, db: Connections):
        self._db = db

    def upload_of(self, claim: Claim) -> RecordedUpload | None:
        """The resumable upload an earlier claim of the file recorded, if any."""
        row = self._db.execute(UPLOAD_OF, {"id": claim.id}).fetchone()
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
        fenced(claim, self._db.execute(RECORD_UPLOAD, params))

    def record_parts(self, claim: Claim, progress: Progress) -> None:
        params = {"id": claim.id, "attempts": claim.attempts, **_progress_params(progress)}
        fenced(claim, self._db.execute(RECORD_PARTS, params))

    def drop_upload(self, claim: Claim) -> None:
        self._db.execute(DROP_UPLOAD, {"id": claim.id})
