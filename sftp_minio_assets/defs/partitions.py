"""One dynamic partition per remote file of a source, keyed by core.keys, and the runs over
ranges of them."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping

import dagster as dg


def partitions_name(source: str) -> str:
    return f"files_{source}"


def partitions_for(source: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=partitions_name(source))


# Dagster reads a run's partitions from these tags, as its UI's backfills set them
# (RunRequest.partition_key_range). A range is taken in the partitions' insertion order.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


# Every run carries its source's name: dagster.yaml can limit concurrent runs per source.
SOURCE_TAG = "sftp_minio_assets/source"
# The process that runs the copy (host:pid), set as it starts: a run whose worker process is
# gone from this host (kill -9, out of memory) is failed by the sensor, not left STARTED.
WORKER_TAG = "sftp_minio_assets/worker"


# Dagster's console logger at INFO for the sensor's runs, rather than its default DEBUG: at DEBUG
# every event (a planned and a stored materialization per file) is a line formatted and written
# to the run worker's stderr (a run worker's CPU per small file went 4.2 -> 3.4 ms without them
# in one comparison, 4.0 -> 3.8 in another), though the UI shows them from the event log, which
# keeps them all. The run's INFO messages, its warnings and the
# project's own line per file stay. Runs launched from the UI keep Dagster's default.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_request_for(keys: list[str], versions: list[str], source: str) -> dg.RunRequest:
    """One run over keys, which must be consecutive partitions.

    The run key names the content requested and how often it was requested automatically
    (versions: "size:mtime#retries"), so a changed file or a retry gets a new run and the same
    request never a second. test_sensors fails if an upgrade changes the tags' meaning.
    """
    if len(keys) == 1:
        return dg.RunRequest(
            run_key=f"{keys[0]}@{versions[0]}",
            partition_key=keys[0],
            tags={SOURCE_TAG: source},
            run_config=QUIET_CONSOLE,
        )
    content = hashlib.sha256(
        "\n".join(f"{k}@{v}" for k, v in zip(keys, versions, strict=True)).encode()
    )
    return dg.RunRequest(
        run_key=f"{keys[0]}...{len(keys)} files@{content.hexdigest()[:16]}",
        tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1], SOURCE_TAG: source},
        run_config=QUIET_CONSOLE,
    )


# Partition keys read from the instance at a time (get_paginated_dynamic_partitions).
PAGE = 10_000


class KnownPartitions:
    """A source's partition keys in their order, read from the instance a page at a time and
    only when a tick needs them: the positions of the keys it requests, the keys of runs over
    ranges. A tick holds those, never every key (a million would take some 200 MiB); a tick
    that requests nothing and sees no run over a range reads none. keys: given instead (tests).
    """

    def __init__(
        self,
        instance: dg.DagsterInstance | None,
        source: str,
        keys: list[str] | None = None,
        page: int = PAGE,
    ):
        self._instance, self._name, self._keys = instance, partitions_name(source), keys
        self._page = page

    def _in_order(self) -> Iterator[str]:
        if self._keys is not None:
            yield from self._keys
            return
        assert self._instance is not None
        cursor = None
        while True:
            page = self._instance.get_paginated_dynamic_partitions(
                self._name, self._page, ascending=True, cursor=cursor
            )
            yield from page.results
            if not page.has_more:
                return
            cursor = page.cursor

    def positions(self, keys: Iterable[str]) -> dict[str, int]:
        """The index of each of keys that is a partition (those that are not are left out)."""
        wanted, found = set(keys), {}
        if wanted:
            for index, key in enumerate(self._in_order()):
                if key in wanted:
                    found[key] = index
                    if len(found) == len(wanted):
                        break
        return found

    def ranges(self, spans: Collection[tuple[str, str]]) -> set[str]:
        """The keys of the ranges (first, last), in one pass; a range whose first or last key
        is not a partition (deleted since, by retention) covers none."""
        starting: dict[str, list[str]] = {}
        for first, last in spans:
            starting.setdefault(first, []).append(last)
        covered: set[str] = set()
        reading: list[tuple[str, list[str]]] = []  # (last key, keys so far) of open ranges
        left = len(spans)
        for key in self._in_order() if spans else ():
            reading += [(last, []) for last in starting.get(key, ())]
            still = []
            for last, keys in reading:
                keys.append(key)
                if last == key:
                    covered.update(keys)
                    left -= 1
                else:
                    still.append((last, keys))
            reading = still
            if not left:
                break
        return covered


def keys_of_runs(tags: Iterable[Mapping[str, str]], known: KnownPartitions) -> set[str]:
    """The partitions the runs cover, from their tags: one key, or a range of the known keys
    (read, in one pass for all of them, only for ranges)."""
    keys: set[str] = set()
    spans: list[tuple[str, str]] = []
    for run_tags in tags:
        if key := run_tags.get("dagster/partition"):
            keys.add(key)
        elif (first := run_tags.get(RANGE_START_TAG)) and (last := run_tags.get(RANGE_END_TAG)):
            spans.append((first, last))
    return keys | known.ranges(spans)
