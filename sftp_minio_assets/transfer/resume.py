"""Resumable transfers: how far a big file's multipart upload got, kept where the next claim
finds it.

A file of at least RESUME_MIN_MB is uploaded in parts of a size fixed for the whole upload, and
read so that no SFTP read crosses a part's end. Each time the run of parts uploaded from the
start grows, the transfer log (table `transfer_uploads`) records their ETags, the bytes they
hold and the SHA-256 state after those bytes. When the transfer dies, whoever claims the file
next (a retry, a rerun, a worker of another run on another machine) checks that the file and
the upload are still what was recorded, and reads the file from that offset on: the hash goes on
from the saved state, so the sha256 recorded is still that of the whole file, and the object
appears only when the upload completes, as for any other file.

hashlib cannot export a hash's state, so the hash of a resumable file is computed by OpenSSL's
SHA256_* functions through ctypes (the same library hashlib uses, as fast), whose context is a
plain 112-byte struct. Where that library cannot be found, files keep the simple path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import time
from dataclasses import dataclass, field

from ..core.model import Progress
from ..db.claims import Claim
from ..db.uploads import Uploads
from ..s3.store import ObjectStore

# OpenSSL's SHA256_CTX: h[8], Nl, Nh, data[16], num, md_len, all 32-bit: the same everywhere.
SHA256_CTX_SIZE = 112
# Progress is recorded at most this often (and when the upload completes its parts, or fails):
# a crash redoes the parts in flight and at most this much reading (at 70 MB/s, 17 MiB; it was
# a second, 70 MiB, before issue 25's chaos run measured it), at the price of four UPDATEs a
# second in the reading thread.
SAVE_EVERY_SECONDS = 0.25

# A resumable upload untouched this long is given up: the sensor's sweep aborts it, and the next
# claim of its file starts over.
RESUMABLE_HOURS = 24


@functools.cache
def _libcrypto() -> ctypes.CDLL | None:
    """OpenSSL's libcrypto, if its SHA256_* functions work as this module expects."""
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for function in (lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final):
            function.restype = ctypes.c_int
        lib.SHA256_Update.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    # A state saved half way and restored must give hashlib's digest of the whole.
    first = Sha256(lib)
    first.update(b"resumable" * 1000)
    second = Sha256(lib, first.state())
    second.update(b"!")
    if second.hexdigest() != hashlib.sha256(b"resumable" * 1000 + b"!").hexdigest():
        return None
    return lib


def resumable_hashing() -> bool:
    """Whether this process can save a hash's state (else big files keep the simple path)."""
    return _libcrypto() is not None


class Sha256:
    """SHA-256 whose state can be saved and restored: hashlib's interface, plus state()."""

    def __init__(self, lib: ctypes.CDLL | None = None, state: bytes | None = None):
        lib = lib or _libcrypto()
        if state is not None and len(state) != SHA256_CTX_SIZE:
            raise ValueError(f"a saved SHA-256 state has {SHA256_CTX_SIZE} bytes, not {len(state)}")
        if lib is None:
            raise RuntimeError(
                "a resumable SHA-256 needs OpenSSL's libcrypto, which this process cannot use "
                "(resumable_hashing() is False)"
            )
        self._lib = lib
        self._ctx = ctypes.create_string_buffer(SHA256_CTX_SIZE)
        if state is None:
            self._lib.SHA256_Init(self._ctx)
        else:
            self._ctx.raw = state

    def update(self, data: bytes) -> None:
        self._lib.SHA256_Update(self._ctx, data, len(data))

    def state(self) -> bytes:
        return self._ctx.raw

    def hexdigest(self) -> str:
        out = ctypes.create_string_buffer(32)
        copy = ctypes.create_string_buffer(self._ctx.raw, SHA256_CTX_SIZE)  # Final ends a context
        self._lib.SHA256_Final(out, copy)
        return out.raw.hex()


@dataclass
class Journal:
    """One claim's resumable upload: what an earlier claim left (`previous`, checked still
    usable), and how this one records its own progress. transfer/copy.py calls started() once the
    upload exists and advanced() as its parts complete; forget() drops it."""

    uploads: Uploads
    claim: Claim
    object_key: str
    size: int  # the file's, and its mtime, when the upload began
    mtime: int
    previous: Progress | None = None
    _saved_at: float = field(default=0.0, init=False, repr=False)

    def started(self, progress: Progress) -> None:
        self.uploads.record_upload(self.claim, self.object_key, self.size, self.mtime, progress)

    def advanced(self, progress: Progress, last: bool = False) -> None:
        """Record progress, at most once every SAVE_EVERY_SECONDS unless `last`; ClaimLost when
        another worker took the claim over (this one must stop)."""
        now = time.monotonic()
        if last or now - self._saved_at >= SAVE_EVERY_SECONDS:
            self._saved_at = now
            self.uploads.record_parts(self.claim, progress)

    def forget(self) -> None:
        self.uploads.drop_upload(self.claim)


def still_usable(store: ObjectStore, key: str, progress: Progress) -> str | None:
    """Why a recorded upload cannot be continued, if it cannot: the server no longer has it
    (aborted, expired) or lacks a part recorded as done. None when it can."""
    try:
        parts = store.list_parts(key, progress.upload_id)
    except FileNotFoundError:
        return "its multipart upload is gone from the bucket (aborted or expired)"
    for number, etag in enumerate(progress.etags, start=1):
        if parts.get(number) != etag:
            return f"part {number} of its multipart upload is missing or differs in the bucket"
    return None
