"""One dynamic partition per remote file of a source, keyed by core.keys, and the runs over
ranges of them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cached_property

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


class KnownPartitions:
    """A source's partition keys in their order, read from the instance at the first need: a
    tick that requests nothing and sees no run over a range never reads them (a million keys
    take seconds and some 200 MiB). keys: given instead (tests)."""

    def __init__(
        self, instance: dg.DagsterInstance | None, source: str, keys: list[str] | None = None
    ):
        self._instance, self._name = instance, partitions_name(source)
        if keys is not None:
            self.keys = keys

    @cached_property
    def keys(self) -> list[str]:
        assert self._instance is not None
        return list(self._instance.get_dynamic_partitions(self._name))

    @cached_property
    def order(self) -> dict[str, int]:
        """Each key's index in keys."""
        return {key: index for index, key in enumerate(self.keys)}


def keys_of_run(tags: Mapping[str, str], known: KnownPartitions) -> list[str]:
    """The partitions a run covers, from its tags: one key, or a range of the known keys (read
    only for a range)."""
    if key := tags.get("dagster/partition"):
        return [key]
    first, last = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not first or not last:
        return []
    start, end = known.order.get(first), known.order.get(last)
    return [] if start is None or end is None else known.keys[start : end + 1]
