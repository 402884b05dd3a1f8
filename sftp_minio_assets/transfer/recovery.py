"""An attempt's object, found again: verified after its upload, finished when the attempt that
committed it died before saying so, or taken as the copy of an attempt that died before the log
could record it. Objects are recognised by the token each attempt writes in their metadata."""

from __future__ import annotations

import time

from ..core.model import TransferResult
from ..s3.store import ObjectStore
from .failures import Committed, ObjectOfAnotherSource, TransferFailed, describe, upload_stage
from .stages import changed_bytes

TOKEN = "transfer-token"  # object metadata: which attempt wrote the object


def finish_commit(store: ObjectStore, committed: Committed) -> TransferResult | None:
    """The result of an earlier attempt whose commit did land after all, else None.

    Tags and verifies the object that attempt wrote, without copying the file again.
    """
    started = time.monotonic()
    head = store.head(committed.key)
    if head is None or head.get("Metadata", {}).get(TOKEN) != committed.token:
        return None
    # The token proves the object is the one that attempt committed, whole (commits are atomic).
    store.set_tags(committed.key, {"sha256": committed.sha256})
    stored = head["ContentLength"]
    if not committed.compressed:
        verify(store, committed.key, committed.size, committed.token)
    elapsed = time.monotonic() - started
    return TransferResult(
        committed.size,
        committed.sha256,
        0.0,
        elapsed,
        elapsed,
        stored_bytes=stored if committed.compressed else None,
    )


def earlier_copy(
    store: ObjectStore, key: str, metadata: dict[str, str], size: int
) -> TransferResult | None:
    """The object an earlier attempt committed whole for this very file and content (its
    metadata names the same source, path and mtime, and its size matches), when that attempt
    died before the log could say so; else None.

    Objects are committed only whole, and only if the file did not change while it was read,
    so such an object is the copy a new attempt would write again. One that died before its
    sha256 tag was set (some servers tag a PUT after its commit) is read back to hash it.
    """
    started = time.monotonic()
    with upload_stage(None, "looking for an earlier attempt's object"):
        head = store.head(key)
        if head is None:
            return None
        found = head.get("Metadata", {})
        if any(found.get(name) != value for name, value in metadata.items()):
            return None
        stored = head["ContentLength"]
        compressed = changed_bytes(found)
        if (found.get("original-size") if compressed else str(stored)) != str(size):
            return None
        sha256 = store.tags(key).get("sha256")
        if not sha256 and compressed:  # its tag is the original's hash: copy again
            return None
        if not sha256:  # died between the commit and its tagging: hash what landed
            sha256 = store.sha256(key)
            store.set_tags(key, {"sha256": sha256})
    elapsed = time.monotonic() - started
    return TransferResult(
        size, sha256, 0.0, elapsed, elapsed, stored_bytes=stored if compressed else None
    )


def verify(store: ObjectStore, key: str, size: int, token: str) -> None:
    try:
        head = store.head(key)
    except Exception as exc:
        raise TransferFailed("verify", f"reading back the object failed: {describe(exc)}") from exc
    found = (head or {}).get("Metadata", {})
    if head is not None and found.get(TOKEN) != token:
        writer = f"source {found['source']!r}" if "source" in found else "another writer"
        raise ObjectOfAnotherSource(
            f"the object was overwritten by {writer} right after this copy was written"
        )
    if head is None or head["ContentLength"] != size:
        found_size = "no object" if head is None else f"{head['ContentLength']} bytes"
        raise TransferFailed("verify", f"the object has {found_size} after upload, expected {size}")
