"""What a source does with its files besides copying them: where they go, when, through which
stages, and what happens to them after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from ..policy.destinations import DestinationTemplate
from ..policy.readiness import ReadyMarker
from ..policy.transfer_window import TransferWindow
from ..s3.store import key_segments, object_key
from ..sftp.client import FileFilter
from ..transfer.pgp import PgpSettings
from ..transfer.stages import BytePath, byte_path


@dataclass(frozen=True)
class SourcePolicy:
    """What a source does with its files, besides copying them."""

    destination: str  # key prefix under the bucket's prefix, when there is no template
    template: DestinationTemplate | None = None  # the whole key under the bucket's prefix
    source: str = ""  # the template's {source}
    window: TransferWindow | None = None  # when files may be fetched; None: any time
    compression: str = "none"
    after_copy: Literal["keep", "delete", "move"] = "keep"
    archive_dir: str | None = None
    root: str = "/"  # on the SFTP server; a file's path is relative to it
    max_bytes_per_second: int | None = None  # the source's bandwidth cap, all runs together
    ready_marker: ReadyMarker | None = None  # the marker that says a file is complete
    file_filter: FileFilter = FileFilter()  # the files the source takes
    server_checksums: bool = False  # uploads carry their SHA-256, where the server verifies it
    pgp: PgpSettings | None = None  # set: encrypted files are decrypted (pgp.py)
    # The sensor's stability gate besides the marker (policy/readiness.py): a file that changed
    # while it was copied is copied again only once it passes the gate again
    min_file_age_seconds: float = 0
    require_stable_listing: bool = False

    def object_name(
        self, bucket_prefix: str, path: str, mtime: int = 0, date: datetime | None = None
    ) -> str:
        """The object a remote path (relative to the root), modified at mtime, is copied to on
        date (default: today), as its byte path names it (without its encryption suffix when it
        is decrypted, with the compression's suffix); without a template, the path alone
        decides."""
        chain = self.byte_path(path)
        path = chain.object_path(path)
        if self.template is None:
            key = object_key(bucket_prefix, self.destination, path)
        else:
            filled = self.template.render(self.source, path, mtime, date)
            key = object_key(bucket_prefix, "", filled)
        return key + chain.suffix

    def key_prefix(self, bucket_prefix: str) -> str:
        """What every key of the source begins with: a folder, or with a template whose first
        folder has a field, a part of one ("" when a field comes first)."""
        if self.template is None:
            return object_key(bucket_prefix, self.destination, "") + "/"
        constant = self.template.constant_prefix(self.source)
        if not constant and not key_segments(bucket_prefix):
            return ""
        key = object_key(bucket_prefix, "", constant)
        return key if constant and not constant.endswith("/") else key + "/"

    def decrypts(self, path: str) -> bool:
        """Whether the file at path is decrypted on its way (its name says it is encrypted)."""
        return self.pgp is not None and self.pgp.encrypted(path)

    def byte_path(self, path: str) -> BytePath:
        """The stages the file at path goes through (transfer/stages.py)."""
        return byte_path(self.pgp if self.decrypts(path) else None, self.compression)

    @property
    def gated(self) -> bool:
        """Whether the source holds new files back until they look complete: then a file that
        changed under its copy is left to the sensor, which copies it once it passes that gate
        again; an immediate retry would copy a pausing writer's half-written file."""
        return bool(self.min_file_age_seconds or self.ready_marker or self.require_stable_listing)
