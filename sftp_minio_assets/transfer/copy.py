"""Moving bytes: one remote file into one S3 object, hashed in flight, never half visible.

Plain Python over `sftp/client.py` and `s3/store.py`, no Dagster. Memory stays bounded whatever
the size and number of files: each file copied at once fills one part, and at most
parts_in_flight parts of all of them are being uploaded (per process); nothing is read ahead of
the uploads.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Literal

import paramiko

from ..core.model import BY_ETAG, BY_SERVER, BY_SIZE, Progress, TransferResult
from ..core.units import MIB
from ..s3.store import ObjectStore, sha256_checksum
from ..sftp.client import READ_CHUNK
from ..sftp.reads import FinalStat, read_chunks
from ..sftp.wire import close_without_waiting
from .failures import (
    Committed,
    SourceChanged,
    TransferFailed,
    describe,
    upload_stage,
)
from .pgp import DecryptionFailed
from .recovery import TOKEN, verify
from .resume import Journal, Sha256
from .stages import AS_READ, BytePath, StoredBytes

MAX_PARTS = 9_000  # S3 allows 10,000; keep room for a file that grows a little


@dataclass(frozen=True)
class Tuning:
    """How bytes are moved, the same for every source (a source's compression is its own)."""

    part_size: int = 8 * MIB  # S3 needs >= 5 MiB for all parts but the last
    parts_in_flight: int = 4  # per process, all files together
    local_dir: str | None = None  # set (LOCAL_DIR): SFTP -> a file there -> S3; else streamed
    resume_min: int = 64 * MIB  # files this big (and uncompressed) are resumable; 0: none


# A small PUT is verified by its reply's ETag (the MD5 of the bytes sent); a larger one is read
# back, which costs less than hashing it again.
ETAG_CHECKED_BYTES = 1024 * 1024


class _Meter:
    """Counts bytes, hashes them and times the source, as they stream past; a resumed file's
    count and hash start where the earlier attempt's stopped."""

    def __init__(self, heartbeat: Callable[[int], None] | None, digest=None, size: int = 0):
        self.digest = digest or hashlib.sha256()
        self.size = size
        self.read_seconds = 0.0
        self.upload_seconds = 0.0
        self._heartbeat = heartbeat

    def wrap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        while True:
            started = time.monotonic()
            chunk = next(chunks, None)
            self.read_seconds += time.monotonic() - started
            if chunk is None:
                return
            self.digest.update(chunk)
            self.size += len(chunk)
            if self._heartbeat is not None:
                self._heartbeat(self.size)
            yield chunk

    def state(self) -> bytes:
        """The hash's state, to save: a resumable copy hashes with resume.Sha256."""
        if not isinstance(self.digest, Sha256):
            raise TypeError("only a resumable copy's hash has a state to save")
        return self.digest.state()


@dataclass(frozen=True)
class _Upload:
    """One object being written: where it goes, what it carries, and how it is sent."""

    store: ObjectStore
    key: str
    metadata: dict[str, str]  # this attempt's TOKEN included
    tuning: Tuning
    meter: _Meter  # the source's bytes so far: their size and hash
    before_commit: Callable[[], None]  # the last check before the object becomes visible
    checksums: bool = False  # each request carries its SHA-256, which the server verifies
    # A stage (decryption, compression) changes the bytes: the body sent is not the bytes read,
    # so neither its size nor its hash is the meter's.
    transforms: bool = False

    def committed(self) -> Committed:
        """What this upload commits, for the next attempt to look for."""
        return Committed(
            self.key,
            self.metadata[TOKEN],
            self.meter.size,
            self.meter.digest.hexdigest(),
            self.metadata.get("source-mtime", ""),
            compressed=self.transforms,
        )


@dataclass(frozen=True)
class Copy:
    """One copy: the remote file, the object it becomes, the stages between (stages.py:
    decrypted, compressed), and how it is sent.

    journal: a big file on a resumable path: the upload goes on from journal.previous if set,
    and records its progress there (resume.py). heartbeat(bytes read so far) is called as they
    stream; pace(length) before each read: the source's bandwidth cap (bandwidth.py).
    checksums: send each request's SHA-256 (of the bytes sent) for the server to verify, if it
    does (probed once per process)."""

    sftp: paramiko.SFTPClient
    remote_path: str | bytes  # bytes: a name that is not UTF-8 (sftp/client.py: remote_bytes)
    store: ObjectStore
    key: str
    metadata: dict[str, str]
    path: BytePath = AS_READ
    tuning: Tuning = Tuning()
    checksums: bool = False
    journal: Journal | None = None
    heartbeat: Callable[[int], None] | None = None
    pace: Callable[[int], None] | None = None
    # Asked already (the worker's sftp.wire.stat_and_open, before its claim), else asked here:
    # the file's attributes by its path, which the check before the commit compares with, and
    # the file opened on sftp.
    attrs: paramiko.SFTPAttributes | None = None
    opened: paramiko.SFTPFile | None = None


def copy_file(job: Copy) -> TransferResult:
    """The copy job describes, or TransferFailed (and no object). sha256 and size_bytes are the
    remote file's (what the partner sent); when a stage changed the bytes, stored_bytes and
    stored_sha256 the object's."""
    started = time.monotonic()
    if job.journal is not None and not job.path.resumable:
        # A compressor's or gpg's state cannot be saved: the worker never asks for this.
        raise ValueError("a resumable copy goes through resumable stages only")
    checksums = job.checksums
    if checksums:
        with upload_stage(_Meter(None), "probing the server's checksum support"):
            checksums = job.store.verifies_checksums()
    try:
        f = job.opened or job.sftp.open(job.remote_path, "rb")
        before = job.attrs if job.attrs is not None else f.stat()
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise TransferFailed("read", f"cannot open: {describe(exc)}") from exc
    previous = job.journal.previous if job.journal is not None else None
    if previous is None:
        meter = _Meter(job.heartbeat, Sha256() if job.journal is not None else None)
        metadata = {**job.metadata, TOKEN: uuid.uuid4().hex}
    else:
        meter = _Meter(job.heartbeat, Sha256(state=previous.sha256_state), previous.done_bytes)
        metadata = {**job.metadata, TOKEN: previous.token}
    stored = StoredBytes(hashlib.sha256() if job.path.changes_bytes else None)
    metadata.update(job.path.metadata(before.st_size))
    final = FinalStat(job.sftp, job.remote_path)
    upload = _Upload(
        job.store,
        job.key,
        metadata,
        job.tuning,
        meter,
        before_commit=functools.partial(_check_unchanged, final, before, meter),
        checksums=checksums,
        transforms=job.path.changes_bytes,
    )
    try:
        verification, proven = _send(job, upload, f, before, stored, final)
    finally:
        close_without_waiting(f)
    if not proven:
        try:
            verify(job.store, job.key, stored.size, metadata[TOKEN])
        except TransferFailed as exc:
            exc.committed = upload.committed()
            raise
    return TransferResult(
        size_bytes=meter.size,
        sha256=meter.digest.hexdigest(),
        download_seconds=meter.read_seconds,
        upload_seconds=meter.upload_seconds,
        total_seconds=time.monotonic() - started,
        stored_bytes=stored.size if upload.transforms else None,
        stored_sha256=stored.digest.hexdigest() if upload.transforms else None,
        resumed_from=previous.done_bytes if previous is not None else 0,
        verification=verification,
    )


def _send(
    job: Copy, upload: _Upload, f: paramiko.SFTPFile, before, stored: StoredBytes, final: FinalStat
) -> tuple[str, bool]:
    """The bytes read, through the stages, into the object: resumably, through a local file,
    or streamed. How the object was verified, and whether that proves it whole."""
    if job.journal is not None:
        result = _resumable_upload(upload, f, before, job.journal, job.pace)
        stored.size = upload.meter.size
        return result
    reads = read_chunks(f, before.st_size, pace=job.pace, final=final)
    chunks = upload.meter.wrap(_reading(reads))
    chunks = stored.wrap(job.path.apply(chunks))
    try:
        if job.tuning.local_dir:
            return _copy_via_local_file(upload, chunks, job.tuning.local_dir)
        return _upload(upload, chunks, before.st_size)
    except DecryptionFailed as exc:
        raise _decryption_failed(exc, f, before) from exc


def _check_unchanged(final: FinalStat, before, meter: _Meter) -> None:
    """The last check before the object becomes visible: the file read whole, and still the
    same. By its path, not the open handle: a file deleted, moved or replaced meanwhile still
    reads to its end through the handle, but is no longer the source's file."""
    try:
        after = final.attrs()
    except FileNotFoundError:
        raise SourceChanged(
            "the file was deleted or moved while it was read; it is not recorded as copied"
        ) from None
    if meter.size != before.st_size or (after.st_size, after.st_mtime) != (
        before.st_size,
        before.st_mtime,
    ):
        raise SourceChanged(
            f"the file changed while it was read ({before.st_size} bytes at open, "
            f"{meter.size} read, {after.st_size} now); it will be copied again once stable"
        )


def _decryption_failed(exc: DecryptionFailed, f: paramiko.SFTPFile, before) -> TransferFailed:
    """A file that does not decrypt is permanently wrong, unless it changed while it was read
    (a torn copy of a file still being written): then it is retried once stable."""
    try:
        after = f.stat()
    except (OSError, EOFError, paramiko.SSHException):
        after = before
    if (after.st_size, after.st_mtime) != (before.st_size, before.st_mtime):
        return SourceChanged(
            f"the file changed while it was decrypted ({before.st_size} bytes at open, "
            f"{after.st_size} now); it will be copied again once stable"
        )
    return TransferFailed("decrypt", f"PGP decryption failed: {exc}")


def _copy_via_local_file(
    upload: _Upload, chunks: Iterator[bytes], local_dir: str
) -> tuple[str, bool]:
    """The whole file to local_dir first, checked there, then uploaded from the disk."""
    os.makedirs(local_dir, exist_ok=True)
    with tempfile.TemporaryFile(dir=local_dir) as local:
        for chunk in chunks:
            local.write(chunk)
        upload.before_commit()
        size = local.tell()
        local.seek(0)
        from_disk = iter(lambda: local.read(READ_CHUNK), b"")
        return _upload(replace(upload, before_commit=lambda: None), from_disk, size)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _reading(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """SFTP errors surface as TransferFailed("read")."""
    try:
        yield from chunks
    except (OSError, EOFError, paramiko.SSHException) as exc:
        raise TransferFailed("read", f"reading failed: {describe(exc)}") from exc


def _upload(upload: _Upload, chunks: Iterator[bytes], size_hint: int) -> tuple[str, bool]:
    """A single PUT for small files, else a multipart upload with bounded parts in flight.

    Either way the object becomes visible only at the last call, after before_commit. Returns
    how the object holds the bytes sent (BY_SERVER, BY_ETAG or BY_SIZE), and whether the
    server's reply proves it already: a single PUT (atomic) whose bytes the server verified or
    whose ETag is their MD5 needs no request to read it back; any other is read back (its
    token and size) by copy_file.
    """
    store, key, meter = upload.store, upload.key, upload.meter
    part_size = _part_size(upload.tuning, size_hint)
    pending: list[bytes] = []
    pending_size = 0
    for chunk in chunks:
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= part_size:
            break
    else:
        data = b"".join(pending)
        upload.before_commit()
        sha256 = meter.digest.hexdigest()
        checksum = None
        if upload.checksums:
            # The meter hashed the bytes read; a body a stage changed is hashed here (the
            # server refuses a checksum of other bytes than the body's).
            checksum = sha256_checksum(data) if upload.transforms else _base64(sha256)
        with _committing(upload), upload_stage(meter, "PUT"):
            etag = store.put(key, data, upload.metadata, {"sha256": sha256}, checksum)
        if checksum:
            return BY_SERVER, True
        # Servers that encrypt with their own keys answer another ETag: then read it back.
        md5_matches = len(data) <= ETAG_CHECKED_BYTES and etag.strip('"') == _md5(data)
        return (BY_ETAG, True) if md5_matches else (BY_SIZE, False)

    with upload_stage(meter, "starting the multipart upload"):
        upload_id = store.create_multipart(key, upload.metadata, upload.checksums)
    try:
        parts = _upload_parts(upload, upload_id, _parts(chunks, part_size, pending))
        _complete(upload, upload_id, parts)
    except BaseException:
        with suppress(Exception):
            store.abort_multipart(key, upload_id)
        raise
    _tag(upload)
    return (BY_SERVER if upload.checksums else BY_SIZE), False


def _base64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


def _complete(upload: _Upload, upload_id: str, parts: list[tuple[str, str | None]]) -> None:
    """The last check, then the object becomes visible, whole. parts: (ETag, checksum) each."""
    etags = [etag for etag, _ in parts]
    checksums = [checksum or "" for _, checksum in parts] if upload.checksums else None
    upload.before_commit()
    with _committing(upload), upload_stage(upload.meter, "completing the upload"):
        upload.store.complete_multipart(upload.key, upload_id, etags, checksums)


def _tag(upload: _Upload) -> None:
    with _committing(upload), upload_stage(upload.meter, "tagging"):
        try:
            upload.store.set_tags(upload.key, {"sha256": upload.meter.digest.hexdigest()})
        except FileNotFoundError as exc:
            # The object completed a moment ago: an S3 server that restarted meanwhile may not
            # show it yet (SeaweedFS). Not the missing bucket this error means elsewhere, so not
            # permanent: the next attempt finds the object and finishes it, or copies again.
            raise TransferFailed(
                "upload",
                f"tagging failed: the object just completed is not found yet ({describe(exc)}); "
                "the S3 server may be restarting",
            ) from None


def _parts(
    chunks: Iterator[bytes], part_size: int, pending: list[bytes] | None = None
) -> Iterator[bytes]:
    """The parts of a multipart upload (the first perhaps read into pending already), each
    yielded as soon as it holds part_size bytes: one copy per byte, and nothing read ahead of
    the part. A part ends on a chunk's end, so a little over part_size; from chunks that never
    cross a multiple of part_size (resumable uploads) exactly part_size, and the meter's hash
    is then at its end."""
    pending = pending or []
    buffered = sum(map(len, pending))
    if buffered >= part_size:
        yield b"".join(pending)
        pending, buffered = [], 0
    for chunk in chunks:
        pending.append(chunk)
        buffered += len(chunk)
        if buffered >= part_size:
            yield b"".join(pending)
            pending, buffered = [], 0
    if pending:
        yield b"".join(pending)


def _part_size(tuning: Tuning, size: int) -> int:
    """S3 allows 10,000 parts: very large files get larger parts."""
    return max(tuning.part_size, -(-size // MAX_PARTS))


def _resumable_upload(
    upload: _Upload,
    f: paramiko.SFTPFile,
    before,
    journal: Journal,
    pace: Callable[[int], None] | None = None,
) -> tuple[str, bool]:
    """A multipart upload whose progress the journal records, continued from journal.previous
    when set. Not aborted when it fails (the next claim continues it), but when the file
    changed: then it can never be completed. An upload begun with checksums goes on with them
    (the journal keeps each part's, which S3 needs to complete it; ListParts does not give them
    on every server); one begun without goes on without."""
    store, key, meter, size = upload.store, upload.key, upload.meter, before.st_size
    progress = journal.previous
    if progress is not None and (size, int(before.st_mtime or 0)) != (journal.size, journal.mtime):
        raise SourceChanged(
            f"the file changed since its upload began ({journal.size} bytes then, {size} now); "
            "its next attempt starts over"
        )
    if progress is None:
        part_size = _part_size(upload.tuning, size)
        with upload_stage(meter, "starting the multipart upload"):
            upload_id = store.create_multipart(key, upload.metadata, upload.checksums)
        progress = Progress(
            upload_id,
            upload.metadata[TOKEN],
            part_size,
            (),
            0,
            meter.state(),
            () if upload.checksums else None,
        )
        journal.started(progress)
    upload = replace(upload, checksums=progress.checksums is not None)
    ledger = _Ledger(journal, progress, meter)
    # No read crosses a part's end: the hash state at each part's end is known.
    chunks = read_chunks(f, size, start=progress.done_bytes, align=progress.part_size, pace=pace)
    parts = _parts(meter.wrap(_reading(chunks)), progress.part_size)
    try:
        _upload_parts(upload, progress.upload_id, parts, ledger)
        ledger.record(last=True)
        _complete(upload, progress.upload_id, ledger.parts())
    except SourceChanged:
        with suppress(Exception):
            store.abort_multipart(key, progress.upload_id)
        with suppress(Exception):
            journal.forget()
        raise
    _tag(upload)
    return (BY_SERVER if upload.checksums else BY_SIZE), False


class _Ledger:
    """A resumable upload's parts as they go: the hash state at each part's end when it is
    read, the ETag (and checksum) of each when it lands; records the parts done from the first
    on, in order."""

    def __init__(self, journal: Journal, progress: Progress, meter: _Meter):
        self.journal, self.progress, self.meter = journal, progress, meter
        self.etags = list(progress.etags)
        self.checksums = list(progress.checksums or ())
        self.first = len(self.etags) + 1  # the number of this attempt's first part
        self._ends: dict[int, tuple[int, bytes]] = {}  # part -> (bytes, hash state) at its end
        self._landed: dict[int, tuple[str, str | None]] = {}
        self._lock = threading.Lock()

    def read(self, number: int) -> None:
        self._ends[number] = (self.meter.size, self.meter.state())

    def landed(self, number: int, part: tuple[str, str | None]) -> None:  # in its upload thread
        with self._lock:
            self._landed[number] = part

    def parts(self) -> list[tuple[str, str | None]]:
        """Every part's (ETag, checksum), the earlier attempts' included."""
        if self.progress.checksums is None:
            return [(etag, None) for etag in self.etags]
        return list(zip(self.etags, self.checksums, strict=True))

    def record(self, last: bool = False) -> None:
        """In the reading thread, between parts (the journal's connection is that thread's)."""
        with self._lock:
            while (number := len(self.etags) + 1) in self._landed:
                etag, checksum = self._landed.pop(number)
                self.etags.append(etag)
                if checksum is not None:
                    self.checksums.append(checksum)
        done = len(self.etags)
        if done < self.first or done == len(self.progress.etags):
            return
        size, state = self._ends[done]
        for number in [n for n in self._ends if n < done]:
            del self._ends[number]
        checksums = None if self.progress.checksums is None else tuple(self.checksums)
        self.progress = replace(
            self.progress,
            etags=tuple(self.etags),
            done_bytes=size,
            sha256_state=state,
            checksums=checksums,
        )
        self.journal.advanced(self.progress, last)


@functools.cache
def _part_slots(parts_in_flight: int) -> threading.BoundedSemaphore:
    """Parts held in memory in this process, all files together: a part takes a slot before it
    is read, and gives it back once uploaded. A run copying four big files holds no more parts
    than one copying a single file."""
    return threading.BoundedSemaphore(parts_in_flight)


def _upload_parts(
    upload: _Upload, upload_id: str, parts: Iterator[bytes], ledger: _Ledger | None = None
) -> list[tuple[str, str | None]]:
    """Uploads the parts, numbered on from the ledger's (else from 1); their ETags and, with
    checksums, the SHA-256 each carried. When it fails (a read, a part), the parts that landed
    are recorded before it raises, once every send has ended: the next attempt goes on after
    them."""
    store, key, meter = upload.store, upload.key, upload.meter
    parts_in_flight = upload.tuning.parts_in_flight
    slots = _part_slots(parts_in_flight)
    first = ledger.first if ledger is not None else 1
    futures: list[Future[tuple[str, str | None]]] = []
    errors: list[Future[tuple[str, str | None]]] = []
    holding = False  # a slot for the part being read

    def send(number: int, data: bytes) -> tuple[str, str | None]:
        # Hashed here, in the part's upload thread: hashlib releases the GIL on big buffers,
        # so parts are hashed in parallel while the reading thread goes on.
        checksum = sha256_checksum(data) if upload.checksums else None
        return store.upload_part(key, upload_id, number, data, checksum), checksum

    def on_done(number: int, future: Future[tuple[str, str | None]]) -> None:
        if future.exception() is not None:
            errors.append(future)
        elif ledger is not None:
            ledger.landed(number, future.result())
        slots.release()

    def take_slot() -> None:
        nonlocal holding
        waited = time.monotonic()
        slots.acquire()
        holding = True
        meter.upload_seconds += time.monotonic() - waited
        if errors:  # stop reading as soon as a part fails
            _raise_upload_error(errors[0])

    try:
        with ThreadPoolExecutor(parts_in_flight, thread_name_prefix="s3-part") as pool:
            try:
                while True:
                    take_slot()
                    if ledger is not None:
                        ledger.record()
                    data = next(parts, None)  # read once the slot is ours: memory stays bounded
                    if data is None:
                        break
                    number = first + len(futures)
                    if ledger is not None:
                        ledger.read(number)
                    future = pool.submit(send, number, data)
                    holding = False  # the upload gives the slot back when it is done
                    future.add_done_callback(functools.partial(on_done, number))
                    futures.append(future)
            finally:
                if holding:
                    slots.release()
            waited = time.monotonic()
            for future in futures:
                if future.exception() is not None:
                    _raise_upload_error(future)
            meter.upload_seconds += time.monotonic() - waited
    except BaseException:
        if ledger is not None:
            with suppress(Exception):  # the database away: the last progress saved stands
                ledger.record(last=True)
        raise
    return [future.result() for future in futures]


def _raise_upload_error(future: Future) -> None:
    exc = future.exception()
    raise TransferFailed("upload", f"uploading a part failed: {describe(exc)}") from exc


class _committing:
    """A failure here leaves the object perhaps in place: say what it would be."""

    def __init__(self, upload: _Upload):
        self.upload = upload

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind, exc, tb) -> Literal[False]:
        if isinstance(exc, TransferFailed):
            exc.committed = self.upload.committed()
        return False
