"""The byte path between the SFTP read and the upload, as a chain of stages.

Read (SFTP) → decrypt (PGP files) → compress (gzip, zstd) → hash and count → upload. Each stage
says what it does, and everything that depends on it follows from the chain, never from a flag
tested somewhere else:
- whether the object holds other bytes than the remote file (`changes_bytes`): then its size
  and SHA-256 are its own (the log's stored_bytes and stored_sha256), and a checksum the server
  verifies is of those bytes;
- what the object's metadata records of it (`metadata`);
- how the object is named (`renames`, on the file's path before any destination template;
  `suffix`, after it on the key);
- whether a copy through it can resume at a part boundary (`resumable`: its state would have to
  be saved between parts, which no stage that changes the bytes can do today).
A new stage (say, decompressing `.gz` files on arrival) is one class here and one line in
`byte_path`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import zstandard

from .pgp import PgpSettings, decrypt

DECRYPTED = "decrypted"  # object metadata: the remote file was PGP-encrypted, the object is not
COMPRESSION = "compression"  # object metadata: gzip or zstd
ORIGINAL_SIZE = "original-size"  # object metadata: the remote file's size, where it differs
SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}


class Stage(Protocol):
    changes_bytes: bool
    resumable: bool

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]: ...

    def metadata(self) -> dict[str, str]: ...

    def renames(self, path: str) -> str: ...

    @property
    def suffix(self) -> str: ...


@dataclass(frozen=True)
class Decrypt:
    """A PGP-encrypted file, stored decrypted and without its encryption suffix (pgp.py)."""

    pgp: PgpSettings
    changes_bytes = True
    resumable = False  # gpg's state cannot be saved
    suffix = ""

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        return decrypt(self.pgp, chunks)

    def metadata(self) -> dict[str, str]:
        return {DECRYPTED: "pgp"}

    def renames(self, path: str) -> str:
        return self.pgp.plain_name(path)


class _Compressor(Protocol):
    """What zlib's and zstandard's compression objects have in common."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self) -> bytes: ...


@dataclass(frozen=True)
class Compress:
    """Compressed on the way, a standard .gz or .zst file."""

    compression: str  # gzip or zstd
    changes_bytes = True
    resumable = False  # the compressor's state cannot be saved

    def __post_init__(self) -> None:
        if self.compression not in SUFFIXES or self.compression == "none":
            raise ValueError(f"unknown compression {self.compression!r}: none, gzip or zstd")

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.compression]

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        compressor: _Compressor
        if self.compression == "gzip":
            compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip header and trailer
        else:
            compressor = zstandard.ZstdCompressor(level=3).compressobj()
        for chunk in chunks:
            if out := compressor.compress(chunk):
                yield out
        yield compressor.flush()

    def metadata(self) -> dict[str, str]:
        return {COMPRESSION: self.compression}

    def renames(self, path: str) -> str:
        return path


@dataclass(frozen=True)
class BytePath:
    """The stages a file's bytes go through, in order, between the read and the upload."""

    stages: tuple[Stage, ...] = ()

    @property
    def changes_bytes(self) -> bool:
        return any(stage.changes_bytes for stage in self.stages)

    @property
    def resumable(self) -> bool:
        return all(stage.resumable for stage in self.stages)

    def apply(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for stage in self.stages:
            chunks = stage.apply(chunks)
        return chunks

    def metadata(self, original_size: int) -> dict[str, str]:
        """What the object records of the path: each stage's, and the remote file's size where
        the object's is another."""
        recorded = {
            name: value for stage in self.stages for name, value in stage.metadata().items()
        }
        if self.changes_bytes:
            recorded[ORIGINAL_SIZE] = str(original_size)
        return recorded

    def object_path(self, path: str) -> str:
        """The file's path as its object is named, before any destination template."""
        for stage in self.stages:
            path = stage.renames(path)
        return path

    @property
    def suffix(self) -> str:
        """What the object's key ends with, after the template."""
        return "".join(stage.suffix for stage in self.stages)


AS_READ = BytePath()  # no stage: the object holds the remote file's bytes


def byte_path(pgp: PgpSettings | None, compression: str) -> BytePath:
    """The chain for a file: decrypted when pgp is given (its name says it is encrypted), then
    compressed unless compression is "none"."""
    stages: list[Stage] = []
    if pgp is not None:
        stages.append(Decrypt(pgp))
    if compression != "none":
        stages.append(Compress(compression))
    return BytePath(tuple(stages))


def changed_bytes(metadata: dict[str, str]) -> bool:
    """Whether an object found in the bucket holds other bytes than its remote file, by what
    the chain recorded in its metadata (no chain tells it of an earlier attempt's object)."""
    return ORIGINAL_SIZE in metadata or COMPRESSION in metadata or DECRYPTED in metadata


class StoredBytes:
    """Counts the bytes that go into the object (after decryption and compression), and hashes
    them when given a digest (a decrypted or compressed object's hash is not the remote file's)."""

    def __init__(self, digest=None) -> None:
        self.size = 0
        self.digest = digest

    def wrap(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.size += len(chunk)
            if self.digest is not None:
                self.digest.update(chunk)
            yield chunk
