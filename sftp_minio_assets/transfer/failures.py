"""How a copy fails: the failure types, with the stage that failed, and what an attempt
committed when it failed around the commit."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal


class TransferFailed(Exception):
    """One stage of a transfer failed; `stage` says which side, `__cause__` what happened."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage  # "read" (SFTP), "upload" (S3), "verify" or "decrypt" (PGP)
        # Set when the failure came at or after the commit: the object may be in place.
        self.committed: Committed | None = None


class ObjectOfAnotherSource(TransferFailed):
    """The object key is another source's (or another writer replaced the object right after
    this attempt wrote it): two sources, or another tool, write the same key. The file is not
    recorded as copied, and the other's object is not overwritten."""

    def __init__(self, message: str):
        super().__init__("verify", message)


class SourceChanged(TransferFailed):
    """The remote file changed while it was copied: the copy would be torn, so it is dropped."""

    def __init__(self, message: str):
        super().__init__("verify", message)


@dataclass(frozen=True)
class Committed:
    """What an attempt committed, or tried to. When the server goes away around the commit,
    the client cannot tell whether the object landed; the next attempt looks for this one
    (its token is in the object's metadata) before copying the file again."""

    key: str
    token: str
    size: int
    sha256: str
    source_mtime: str
    compressed: bool = False


class upload_stage:
    """Times an S3 call (on meter's upload_seconds, where given) and turns its errors into
    TransferFailed("upload")."""

    def __init__(self, meter, what: str):
        self.meter, self.what = meter, what

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, kind, exc, tb) -> Literal[False]:
        if self.meter is not None:
            self.meter.upload_seconds += time.monotonic() - self.started
        if exc is not None and not isinstance(exc, TransferFailed) and isinstance(exc, Exception):
            raise TransferFailed("upload", f"{self.what} failed: {describe(exc)}") from exc
        return False


def describe(exc: BaseException | None) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
