"""Which listed files need a transfer: the sensor's logic, as a plain function.

The transfer log is the sensor's memory, so a tick stores nothing that grows with the backlog.
A file is requested when it passed the filters and the stability gate (its age, and where the
source asks for them its ready marker and a second listing: readiness.py) and:
- it has no row yet (new), or its content (size and mtime) differs from the row's (changed);
- or it FAILED with a fault that retrying can help, no unfinished run covers it, and its
  backoff has passed: the n-th automatic retry waits AutoRetry.backoff_minutes[n] (the last
  value repeats), up to AutoRetry.limit retries, after which it waits for a human (and an
  alert says so). A permanent failure waits for a change of the file or a rerun.
QUEUED (requested) and IN_PROGRESS (claimed) files are left to their runs; the sensor turns
those whose run is gone into FAILED rows before planning.
A COMPLETED row that does not say which content it copied (the Airflow DAG's rows record
neither size nor mtime) is never taken for unchanged: the file's object decides
(object_differs), and the row is adopted or the file copied again.
A file stamped in the future is held back until listings saw it unchanged for the minimum age.
Two listed files whose objects would have one key (a destination template without {path}, or
a name S3 cannot hold escaped into another's) are refused, both, rather than one copied over
the other: but one whose row is COMPLETED, whose copy holds the key. Once they no longer
collide, they are requested again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from ..core.keys import KeyTooLong, encode_key
from ..db.schema import STATUSES
from ..db.sensor_memory import FileState
from ..sftp.client import FileFilter, RemoteFile, display
from .readiness import Readiness


@dataclass(frozen=True)
class AutoRetry:
    backoff_minutes: tuple[float, ...] = (0, 1, 5, 30, 60)
    limit: int = 24

    def due(self, state: FileState, now: float) -> bool:
        if state.permanent or state.auto_retries >= self.limit:
            return False
        delays = self.backoff_minutes or (0,)
        wait = delays[min(state.auto_retries, len(delays) - 1)] * 60
        return now >= state.updated + wait


EVERY_FILE_READY = Readiness()  # no marker, no stable listing required


@dataclass(frozen=True)
class Request:
    key: str
    file: RemoteFile
    retry: bool  # an automatic retry of a failure (else a new or changed file)
    generation: int  # automatic retries of this content so far, this one included


@dataclass(frozen=True)
class Plan:
    requests: list[Request]  # in listing order
    ignored: list[tuple[str, str]]  # (path, why) for files that can never be requested as is
    waiting: int  # files held back by the stability gate (MIN_FILE_AGE_SECONDS)
    backing_off: int  # failed files waiting for their next automatic retry
    given_up: list[str]  # failed files that wait for a human: permanent, or out of retries
    unknown_status: list[str]  # rows with a status this project does not write
    waiting_for_marker: int = 0  # files whose ready marker is missing (or older than them)
    unstable: int = 0  # new or changed files not seen with this size and mtime at the last tick
    # (key, size, mtime) of the new or changed files found otherwise ready, for the next tick's
    # stability check; collected only when a stable listing is required
    sighted: list[tuple[str, int, int]] = field(default_factory=list)
    refused: list[Request] = field(default_factory=list)  # keys taken by another listed file
    why_refused: dict[str, str] = field(default_factory=dict)  # path -> why, for each refused
    # (path, seconds ahead) of new or changed files stamped in the future, held back until
    # listings saw them unchanged for the minimum age (Readiness.settled)
    ahead: list[tuple[str, float]] = field(default_factory=list)
    # COMPLETED files whose row does not say which content was copied (the Airflow DAG's rows):
    # their objects decide whether they are copied again (object_differs); not in requests
    unverified: list[Request] = field(default_factory=list)


def clashes(
    files: Iterable[RemoteFile],
    states: Mapping[str, FileState],
    object_name: Callable[[RemoteFile], str],
    setting: str,
) -> dict[str, str]:
    """Files whose object key another of `files` has too, and why each is refused: all of
    them, but one whose row is COMPLETED (its copy holds the key). setting: how messages name
    the destination template."""
    by_key: dict[str, list[str]] = {}
    for file in files:
        by_key.setdefault(object_name(file), []).append(file.path)
    refused = {}
    for key, paths in by_key.items():
        if len(paths) < 2:
            continue
        for path in paths:
            if _completed(states, path):
                continue
            others = " and ".join(repr(display(p)) for p in paths if p != path)
            refused[path] = (
                f"{display(path)!r} and {others} would be copied to the same object {key}; none "
                f"is copied over another: make {setting} keep them apart (with {{path}}, or "
                "{dir} and {name}), or rename one of them on the server; it is copied at the "
                "first tick after that"
            )
    return refused


def _completed(states: Mapping[str, FileState], path: str) -> bool:
    try:
        state = states.get(encode_key(path))
    except KeyTooLong:
        return False
    return state is not None and state.status == "COMPLETED"


def plan_transfers(
    files: Iterable[RemoteFile],
    states: Mapping[str, FileState],
    in_flight: Collection[str],
    *,
    now: float,
    min_age_seconds: float,
    file_filter: FileFilter,
    max_requests: int,
    auto_retry: AutoRetry,
    readiness: Readiness = EVERY_FILE_READY,
    refused: Mapping[str, str] | None = None,
) -> Plan:
    """refused: path -> why, files that clash with another (see clashes)."""
    refused = refused or {}
    refusals: list[Request] = []
    requests: list[Request] = []
    ignored: list[tuple[str, str]] = []
    given_up: list[str] = []
    unknown: list[str] = []
    waiting = backing_off = waiting_for_marker = unstable = 0
    sighted: list[tuple[str, int, int]] = []
    ahead: list[tuple[str, float]] = []
    unverified: list[Request] = []
    for file in files:
        if readiness.is_marker(file.path) or not file_filter.accepts(file.path):
            continue
        future = file.mtime > now  # its age is unknown: see Readiness.settled
        if not future and now - file.mtime < min_age_seconds:
            waiting += 1
            continue
        if readiness.waits_for_marker(file):
            waiting_for_marker += 1
            continue
        try:
            key = encode_key(file.path)
        except KeyTooLong as exc:
            ignored.append((file.path, str(exc)))
            continue
        state = states.get(key)
        if state is not None and state.status not in STATUSES:
            unknown.append(key)
        if state is not None and state.status in ("IN_PROGRESS", "QUEUED"):
            continue  # its run reports it; the sensor released claims of runs that are gone
        same = None if state is None else state.same_content(file.size, file.mtime)
        if file.path in refused:
            if state is not None and state.refused and same:
                given_up.append(key)  # recorded already
            else:
                refusals.append(Request(key, file, retry=False, generation=0))
            continue
        if state is None or state.refused or same is False:
            if readiness.stable_listing or future:
                sighted.append((key, file.size, file.mtime))
            if future and not readiness.settled(key, file, min_age_seconds):
                ahead.append((file.path, file.mtime - now))
                continue
            if readiness.stable_listing and not readiness.stable(key, file):
                unstable += 1
                continue
            request = Request(key, file, retry=False, generation=0)
        elif state.status == "COMPLETED" and same is None:
            unverified.append(Request(key, file, retry=False, generation=0))
            continue
        elif state.status == "COMPLETED" or key in in_flight:
            continue
        else:  # FAILED, or a status that is not ours: a failure for all we know
            if not auto_retry.due(state, now):
                if state.permanent or state.auto_retries >= auto_retry.limit:
                    given_up.append(key)
                else:
                    backing_off += 1
                continue
            request = Request(key, file, retry=True, generation=state.auto_retries + 1)
        if len(requests) < max_requests:  # the rest: next tick
            requests.append(request)
    return Plan(
        requests,
        ignored,
        waiting,
        backing_off,
        given_up,
        unknown,
        waiting_for_marker=waiting_for_marker,
        unstable=unstable,
        sighted=sighted,
        refused=refusals,
        why_refused=dict(refused),
        ahead=ahead,
        unverified=unverified,
    )


def object_differs(head: dict | None, file: RemoteFile) -> str | None:
    """Why a file whose COMPLETED row does not say which content was copied must be copied
    again, judged by its object (head: the S3 HEAD of the key it is copied to, None if there
    is none); None if the object is that file's. The size is the file's, or the original size
    this project records beside a compressed or decrypted object; the mtime is the one it
    records (source-mtime), else the object must be newer than the file (an object written by
    another tool, such as the Airflow DAG, records none)."""
    if head is None:
        return "there is no object where it would be copied"
    metadata = head.get("Metadata", {})
    size = int(metadata.get("original-size") or head["ContentLength"])
    if size != file.size:
        return f"its object holds {size} bytes, the file {file.size}"
    if "source-mtime" in metadata:
        if metadata["source-mtime"] != str(file.mtime):
            return "its object was copied from another version of the file (another mtime)"
    elif file.mtime > head["LastModified"].timestamp():
        return "the file was modified after its object was written"
    return None


# What a run is worth starting for. A run's start costs its worker about 2.5 s of CPU (a
# process, Dagster, the code, its connections), as much as copying some 700 small files, and on
# two cores runs starting together slow each other. So a batch is spread over parallel runs only
# as far as each run gets RUN_WORTH_SECONDS of copying, as estimated: SECONDS_PER_FILE (a run
# worker's CPU per small file) plus its bytes at BYTES_PER_SECOND (one run worker reading over
# SFTP), or at the source's bandwidth cap. Through the daemon (benchmarks.compare): 1,000 files
# of 64 KiB took 10.1 s in 3 runs, 8.3 s in 1; 10,000 of 4 KiB 38.9 s in 3, 38.5 s in 2, 47.2 s
# in 1 (one process's Python).
SECONDS_PER_FILE = 0.004
BYTES_PER_SECOND = 150e6
RUN_WORTH_SECONDS = 5.0


def runs_worth(sizes: Iterable[int], parallel_runs: int, cap: int | None = None) -> int:
    """How many runs files of these sizes are worth, at most parallel_runs. cap: the source's
    bandwidth cap (bytes per second), if any."""
    rate = min(BYTES_PER_SECOND, cap or BYTES_PER_SECOND)
    seconds = sum(SECONDS_PER_FILE + size / rate for size in sizes)
    return max(1, min(parallel_runs, int(seconds // RUN_WORTH_SECONDS)))


def batches(
    new: list[str],
    again: list[str],
    order: Mapping[str, int],
    max_per_run: int,
    parallel_runs: int,
    sizes: Mapping[str, int],
    cap: int | None = None,
) -> list[list[str]]:
    """How requested keys are grouped into runs; a run covers consecutive partitions.

    New keys (added together, so consecutive partitions) go in batches: a run costs seconds
    of start-up, a file in a run milliseconds. Batches are spread over as many runs as the
    files' sizes are worth (runs_worth), at most parallel_runs, and hold at most max_per_run.
    Keys that already had a partition (changed files, retries) are grouped where they are
    consecutive in `order` (the partitions' order): a batch that failed together is retried
    together. sizes: the files' bytes, by key; cap: the source's bandwidth cap, if any.
    """

    def split(keys: list[str], together) -> list[list[str]]:
        runs_wanted = runs_worth((sizes.get(key, 0) for key in keys), parallel_runs, cap)
        size = max(1, min(max_per_run, -(-len(keys) // runs_wanted)))
        runs: list[list[str]] = []
        for key in keys:
            if runs and len(runs[-1]) < size and together(runs[-1][-1], key):
                runs[-1].append(key)
            else:
                runs.append([key])
        return runs

    return split(new, lambda _, __: True) + split(
        sorted(again, key=order.__getitem__), lambda a, b: order[b] == order[a] + 1
    )
