"""Which listed files need a transfer: the sensor's logic, as a plain function.

A file is requested when it passed the filters and the stability gate and its content
(size and mtime) is neither COMPLETED in the transfer log nor already requested. The
cursor remembers what was requested and not yet seen COMPLETED, so a quiet tick requests
nothing, and a failed file waits for a rerun instead of being requested at every tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .partitions import KeyTooLong, encode_key
from .sftp import FileFilter, RemoteFile


@dataclass(frozen=True)
class Plan:
    requests: list[tuple[str, RemoteFile]]  # (partition key, file), in listing order
    cursor: dict[str, str]  # partition key -> signature requested and not yet COMPLETED
    ignored: list[tuple[str, str]]  # (path, why) for files that can never be requested as is
    waiting: int  # files held back by the stability gate (MIN_FILE_AGE_SECONDS)


def plan_transfers(
    files: Iterable[RemoteFile],
    states: Mapping[str, tuple[str, str | None]],
    requested: Mapping[str, str],
    *,
    now: float,
    min_age_seconds: float,
    file_filter: FileFilter,
    max_requests: int,
) -> Plan:
    requests: list[tuple[str, RemoteFile]] = []
    cursor: dict[str, str] = {}
    ignored: list[tuple[str, str]] = []
    waiting = 0
    for file in files:
        if not file_filter.accepts(file.path):
            continue
        if now - file.mtime < min_age_seconds:
            waiting += 1
            continue
        try:
            key = encode_key(file.path)
        except KeyTooLong as exc:
            ignored.append((file.path, str(exc)))
            continue
        status, done_signature = states.get(key, (None, None))
        if status == "COMPLETED" and done_signature == file.signature:
            continue
        if requested.get(key) == file.signature:
            cursor[key] = file.signature
            continue
        if len(requests) >= max_requests:
            continue  # next tick
        requests.append((key, file))
        cursor[key] = file.signature
    return Plan(requests, cursor, ignored, waiting)


def batches(
    new: list[str], known: list[str], max_per_run: int, parallel_runs: int
) -> list[list[str]]:
    """How requested keys are grouped into runs.

    New keys (added together, so consecutive partitions) go in batches: a run costs seconds
    of start-up, a file in a run milliseconds. Batches are small enough for parallel_runs runs
    to share the work, and at most max_per_run. Keys that already had a partition (a changed
    file) are not consecutive: one run each.
    """
    size = max(1, min(max_per_run, -(-len(new) // parallel_runs)))
    return [new[i : i + size] for i in range(0, len(new), size)] + [[key] for key in known]
