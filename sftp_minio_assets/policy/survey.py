"""A tick's look at a source: its listing streamed into the transfer log's database and compared
there, and only the files that differ planned (discovery.plan_transfers).

A source keeps years of files, nearly all copied already. So the directories are taken as they
are read (listing.scan_tree), each file filtered and turned into its partition key on the way,
and sent to the database (SensorMemory.compare); what comes back is what is not COMPLETED with
the same size and mtime: new, changed, failed, requested or claimed files, read as the plan goes
(a server-side cursor, in key order). The tick holds the ready markers, what it skipped, and what
the plan keeps (at most max_requests requests, counts); neither the files copied already nor the
new ones beyond its requests, however many.

Files that may share an object key (discovery.clashes) are found there too: each file's key is
sent where another's can equal it (clash_key: with a destination template or decryption, every
file's; otherwise only names that S3 cannot hold as they are, and names with a %, which such a
name's escaped key can equal), and the database groups the keys that repeat.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass

from ..core.keys import KeyTooLong, decode_key, encode_key
from ..db.sensor_memory import FileState, Row, SensorMemory
from ..sftp.client import FileFilter, RemoteFile
from ..sftp.listing import ListedDirectory
from .discovery import AutoRetry, Plan, clashes, plan_transfers
from .readiness import Readiness, ReadyMarker


@dataclass(frozen=True)
class Directory:
    """A directory as a tick saw it, for the next fast listing (listing.scan_tree's recorded):
    settled when it may be left unread while its mtime stays the same."""

    key: str  # its path relative to the root, as a partition key encodes it
    mtime: int
    read: bool  # False: a fast listing found it unchanged and did not read it
    settled: bool  # read, and every file in it COMPLETED as listed; nothing skipped


@dataclass(frozen=True)
class Survey:
    plan: Plan
    listed: int  # regular files listed, markers and files the filters leave out included
    skipped: list[tuple[str, str]]  # (path, why) of what the listing itself left out
    directories: list[Directory]  # the directories of the tree this tick saw, read or not
    left: int = 0  # directories left for the next tick (a listing longer than a tick)
    complete: bool = True  # every directory of the tree read, from the root
    reconnected: str = ""  # why the listing was read again on a new connection, if it was


def survey(
    directories: Iterable[ListedDirectory],
    memory: SensorMemory,
    source: str,
    *,
    in_flight: Collection[str],
    now: float,
    min_age_seconds: float,
    file_filter: FileFilter,
    max_requests: int | None,
    auto_retry: AutoRetry,
    marker: ReadyMarker | None,
    sightings: Mapping[str, tuple[str, float]],
    stable_listing: bool,
    clash_key: Callable[[RemoteFile], str | None],
    setting: str,
) -> Survey:
    """The plan of a tick over the listed directories. clash_key: the object key of a file
    that may share it with another, else None; setting: how messages name the destination
    template."""
    skipped: list[tuple[str, str]] = []
    ignored: list[tuple[str, str]] = []
    markers: dict[str, int] = {}
    listed = 0
    seen: list[ListedDirectory] = []  # without their files
    # Directories that must be read again: something in them differs, or was left out.
    unsettled: set[str] = set()
    compared_all = False

    def rows() -> Iterator[tuple[str, int, int, str | None]]:
        nonlocal listed
        for directory in directories:
            seen.append(ListedDirectory(directory.path, mtime=directory.mtime, read=directory.read))
            skipped.extend(directory.skipped)
            if directory.skipped:
                unsettled.add(directory.path)
            listed += len(directory.files)
            for file in directory.files:
                if marker is not None and marker.is_marker(file.path):
                    markers[file.path] = file.mtime
                elif file_filter.accepts(file.path):
                    try:
                        key = encode_key(file.path)
                    except KeyTooLong as exc:
                        ignored.append((file.path, str(exc)))
                        unsettled.add(directory.path)
                        continue
                    yield key, file.size, file.mtime, clash_key(file)

    states: dict[str, FileState] = {}

    def differing(rows: Iterable[Row]) -> Iterator[RemoteFile]:
        """The files, in key order, as the database sends them; each one's state is in states
        before the plan, which looks it up, has the file."""
        nonlocal compared_all
        for key, size, mtime, state in rows:
            if state is not None:
                states[key] = state
            path = decode_key(key)
            unsettled.add(posixpath.dirname(path))
            yield RemoteFile(path, size, mtime)
        compared_all = True

    with memory.compare(source, rows()) as comparison:
        plan = plan_transfers(
            differing(comparison.differing),
            states,
            in_flight,
            now=now,
            min_age_seconds=min_age_seconds,
            file_filter=file_filter,
            max_requests=sys.maxsize if max_requests is None else max_requests,
            auto_retry=auto_retry,
            readiness=Readiness(marker, markers, sightings, stable_listing),
            refused=_refused(comparison.sharing, setting),
        )
    plan.ignored[:0] = ignored
    return Survey(plan, listed, skipped, _directories(seen, unsettled, compared_all))


def _directories(
    seen: list[ListedDirectory], unsettled: set[str], compared_all: bool
) -> list[Directory]:
    """The tree's directories for the next fast listing; none settled if the plan stopped
    before it had every differing file (then which directories hold one is not known)."""
    found = []
    for directory in seen:
        try:
            key = encode_key(directory.path) if directory.path else ""
        except KeyTooLong:
            continue  # not recorded: read at every tick
        settled = compared_all and directory.read and directory.path not in unsettled
        found.append(Directory(key, directory.mtime, directory.read, settled))
    return found


def _refused(sharing: Mapping[str, list[Row]], setting: str) -> dict[str, str]:
    """The files of each group that shares an object key, refused as discovery.clashes says."""
    files: list[RemoteFile] = []
    states: dict[str, FileState] = {}
    object_of: dict[str, str] = {}
    for object_key, group in sharing.items():
        for key, size, mtime, state in group:
            file = RemoteFile(decode_key(key), size, mtime)
            files.append(file)
            object_of[file.path] = object_key
            if state is not None:
                states[key] = state
    return clashes(files, states, lambda f: object_of[f.path], setting)
