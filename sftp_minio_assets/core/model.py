"""The values that cross layers: what a copy did, and how far a resumable upload got."""

from __future__ import annotations

from dataclasses import dataclass

from .units import MIB

# How the object was proven to hold the bytes sent (TransferResult.verification, in the log):
# the server checked each request's SHA-256 (s3.ObjectStore.verifies_checksums); or a small
# PUT's ETag is their MD5; or the object read back has this attempt's token and the right size.
BY_SERVER = "sha256-by-server"
BY_ETAG = "md5-etag"
BY_SIZE = "size+token"


@dataclass(frozen=True)
class TransferResult:
    size_bytes: int  # of the remote file
    sha256: str  # of the remote file's bytes
    download_seconds: float
    upload_seconds: float
    total_seconds: float
    stored_bytes: int | None = None  # of the object, when compressed or decrypted
    stored_sha256: str | None = None  # of the object, when compressed or decrypted
    resumed_from: int = 0  # bytes an earlier attempt had uploaded, not read again
    verification: str = BY_SIZE  # BY_SERVER, BY_ETAG or BY_SIZE

    @property
    def mb_per_second(self) -> float:
        """Of this attempt's bytes (a resumed copy's only)."""
        copied = self.size_bytes - self.resumed_from
        return copied / MIB / self.total_seconds if self.total_seconds > 0 else 0.0


@dataclass(frozen=True)
class Progress:
    """A resumable upload as recorded: its parts 1..len(etags) hold the file's first done_bytes
    bytes, and sha256_state is the hash after them."""

    upload_id: str
    token: str  # the object's transfer-token (transfer.TOKEN), set when the upload began
    part_size: int
    etags: tuple[str, ...] = ()
    done_bytes: int = 0
    sha256_state: bytes | None = None
    # The SHA-256 checksum of each of those parts, when the upload was begun with checksums
    # (the server verifies each part, and needs them all again to complete); else None.
    checksums: tuple[str, ...] | None = None
