"""What the sensor requests, and in which runs: discovery's plain functions, no server."""

from datetime import UTC, datetime

import pytest

from sftp_minio_assets.core.keys import encode_key
from sftp_minio_assets.db.sensor_memory import FileState
from sftp_minio_assets.policy.discovery import AutoRetry, batches, object_differs, plan_transfers
from sftp_minio_assets.policy.readiness import Readiness
from sftp_minio_assets.sftp.client import FileFilter, RemoteFile

NOW = 1_000_000.0
OLD = int(NOW) - 3600  # an mtime well past any stability gate


def remote(path: str, size: int = 10, mtime: int = OLD) -> RemoteFile:
    return RemoteFile(path, size, mtime)


def state(status: str, file: RemoteFile | None = None, **fields) -> FileState:
    defaults = dict(permanent=False, auto_retries=0, updated=NOW - 3600)
    size, mtime = (file.size, file.mtime) if file else (None, None)
    return FileState(status, size, mtime, **{**defaults, **fields})


def plan(files, states=None, in_flight=(), **settings):
    options = dict(
        now=NOW,
        min_age_seconds=60,
        file_filter=FileFilter(),
        max_requests=100,
        auto_retry=AutoRetry(backoff_minutes=(0, 1, 5), limit=3),
    )
    return plan_transfers(files, states or {}, set(in_flight), **{**options, **settings})


def requested(result) -> list[str]:
    return [request.key for request in result.requests]


# --- plan_transfers ------------------------------------------------------------------------


def test_new_files_are_requested_in_listing_order_as_first_copies():
    result = plan([remote("b.csv"), remote("a.csv"), remote("dir/c.csv")])
    assert requested(result) == ["b.csv", "a.csv", "dir/c.csv"]
    assert {(r.retry, r.generation) for r in result.requests} == {(False, 0)}


def test_a_file_younger_than_the_stability_gate_waits():
    young = remote("young.csv", mtime=int(NOW) - 30)
    result = plan([young, remote("old.csv")], min_age_seconds=60)
    assert requested(result) == ["old.csv"]
    assert result.waiting == 1


def test_filters_drop_files_before_anything_else():
    files = [remote("a.csv"), remote("a.tmp"), remote("sub/b.csv"), remote("notes.txt")]
    result = plan(files, file_filter=FileFilter(include=("*.csv",), exclude=("*/b.csv",)))
    assert requested(result) == ["a.csv"]
    assert result.waiting == 0 and result.ignored == []


def test_a_path_too_long_for_a_partition_key_is_ignored_with_its_reason():
    long_path = "/".join(["x" * 250] * 5)
    result = plan([remote(long_path), remote("fine.csv")])
    assert requested(result) == ["fine.csv"]
    [(path, why)] = result.ignored
    assert path == long_path and "more than" in why


def test_keys_are_the_encoded_paths_and_keep_the_file():
    odd = remote("a,b....csv")
    [request] = plan([odd]).requests
    assert request.key == encode_key("a,b....csv") != "a,b....csv"
    assert request.file == odd


def test_a_completed_file_is_left_alone_until_its_content_changes():
    done = remote("done.csv")
    assert requested(plan([done], {"done.csv": state("COMPLETED", done)})) == []
    changed = remote("done.csv", size=11)
    [request] = plan([changed], {"done.csv": state("COMPLETED", done)}).requests
    assert (request.key, request.retry, request.generation) == ("done.csv", False, 0)


def test_a_completed_row_is_compared_by_what_it_records_and_never_unknown_for_unchanged():
    # The Airflow DAG's rows record neither size nor mtime; a row may record one of them.
    file = remote("f.csv", size=23, mtime=OLD + 60)
    rows = {
        "mtime differs": FileState("COMPLETED", None, OLD, False, 0, NOW),
        "size differs": FileState("COMPLETED", 2, None, False, 0, NOW),
        "mtime the same, size unknown": FileState("COMPLETED", None, OLD + 60, False, 0, NOW),
        "nothing recorded": FileState("COMPLETED", None, None, False, 0, NOW),
    }
    outcomes = {}
    for case, row in rows.items():
        result = plan([file], {"f.csv": row})
        outcomes[case] = (requested(result), [r.key for r in result.unverified])
    assert outcomes == {
        "mtime differs": (["f.csv"], []),
        "size differs": (["f.csv"], []),
        "mtime the same, size unknown": ([], ["f.csv"]),
        "nothing recorded": ([], ["f.csv"]),
    }


def head(size: int, metadata: dict | None = None, written: float = NOW) -> dict:
    return {
        "ContentLength": size,
        "Metadata": metadata or {},
        "LastModified": datetime.fromtimestamp(written, UTC),
    }


@pytest.mark.parametrize(
    "found, differs",
    [
        (None, "there is no object"),
        (head(10), None),  # another tool's object, written after the file
        (head(10, written=OLD - 1), "modified after its object was written"),
        (head(2), "holds 2 bytes, the file 10"),
        (head(10, {"source-mtime": str(OLD)}), None),
        (head(10, {"source-mtime": str(OLD - 5)}, written=OLD - 1), "another mtime"),
        (head(4, {"original-size": "10", "source-mtime": str(OLD)}), None),  # compressed
        (head(4, {"compression": "gzip"}), "holds 4 bytes"),
    ],
)
def test_a_row_without_its_content_is_judged_by_the_files_object(found, differs):
    why = object_differs(found, remote("f.csv", size=10, mtime=OLD))
    assert why is None if differs is None else differs in why


def test_a_file_stamped_in_the_future_waits_for_listings_that_saw_it_unchanged_long_enough():
    future = remote("future.csv", mtime=int(NOW) + 86400)
    first = plan([future], min_age_seconds=60)
    assert requested(first) == [] and first.waiting == 0
    assert first.ahead == [("future.csv", 86400.0)]
    assert first.sighted == [("future.csv", 10, int(NOW) + 86400)]

    def seen(signature: str, seconds: float) -> Readiness:
        return Readiness(sightings={"future.csv": (signature, seconds)})

    too_soon = plan([future], min_age_seconds=60, readiness=seen(future.signature, 30))
    assert requested(too_soon) == [] and len(too_soon.ahead) == 1
    grown = plan([future], min_age_seconds=60, readiness=seen("9:1", 3600))
    assert requested(grown) == [] and len(grown.ahead) == 1
    settled = plan([future], min_age_seconds=60, readiness=seen(future.signature, 60))
    assert requested(settled) == ["future.csv"] and settled.ahead == []
    # With no minimum age, the second listing is enough.
    assert requested(plan([future], min_age_seconds=0, readiness=seen(future.signature, 0))) == [
        "future.csv"
    ]
    # Copied already: nothing to say about it.
    done = {"future.csv": state("COMPLETED", future)}
    assert plan([future], done).ahead == []


@pytest.mark.parametrize("status", ["QUEUED", "IN_PROGRESS"])
def test_a_requested_or_claimed_file_is_left_to_its_run_even_when_changed(status):
    file = remote("busy.csv")
    for listed in (file, remote("busy.csv", size=99)):
        assert requested(plan([listed], {"busy.csv": state(status, file)})) == []


def test_a_transient_failure_is_retried_after_its_backoff_and_counted():
    file = remote("flaky.csv")
    failed_now = state("FAILED", file, auto_retries=1, updated=NOW - 30)  # backoff[1]: 1 min
    result = plan([file], {"flaky.csv": failed_now})
    assert requested(result) == [] and result.backing_off == 1
    failed_earlier = state("FAILED", file, auto_retries=1, updated=NOW - 61)
    [request] = plan([file], {"flaky.csv": failed_earlier}).requests
    assert (request.retry, request.generation) == (True, 2)


def test_a_failed_file_whose_run_is_still_going_is_not_requested_twice():
    file = remote("flaky.csv")
    states = {"flaky.csv": state("FAILED", file)}
    assert requested(plan([file], states)) == ["flaky.csv"]
    assert requested(plan([file], states, in_flight={"flaky.csv"})) == []


def test_permanent_failures_and_exhausted_retries_wait_for_a_human():
    gone, tired = remote("gone.csv"), remote("tired.csv")
    states = {
        "gone.csv": state("FAILED", gone, permanent=True),
        "tired.csv": state("FAILED", tired, auto_retries=3),  # the limit
    }
    result = plan([gone, tired], states)
    assert requested(result) == []
    assert result.given_up == ["gone.csv", "tired.csv"] and result.backing_off == 0
    # A new version of the file starts over.
    assert requested(plan([remote("gone.csv", mtime=OLD + 1)], states)) == ["gone.csv"]


def test_a_status_this_project_does_not_write_is_reported_and_treated_as_a_failure():
    file = remote("odd.csv")
    result = plan([file], {"odd.csv": state("PAUSED_BY_HAND", file)})
    assert result.unknown_status == ["odd.csv"]
    assert [(r.key, r.retry) for r in result.requests] == [("odd.csv", True)]


def test_requests_beyond_the_cap_are_left_for_the_next_tick():
    files = [remote(f"{i}.csv") for i in range(5)]
    assert requested(plan(files, max_requests=2)) == ["0.csv", "1.csv"]


# --- AutoRetry -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retries, waited_minutes, due",
    [
        (0, 0, True),  # backoff[0] = 0
        (1, 0.9, False),
        (1, 1, True),
        (2, 4.9, False),
        (2, 5, True),
        (5, 4.9, False),  # past the list: the last value repeats
        (5, 5, True),
        (6, 60, False),  # the limit
    ],
)
def test_auto_retry_waits_the_nth_backoff_and_stops_at_the_limit(retries, waited_minutes, due):
    auto_retry = AutoRetry(backoff_minutes=(0, 1, 5), limit=6)
    failed = FileState("FAILED", 1, 1, False, retries, updated=NOW - waited_minutes * 60)
    assert auto_retry.due(failed, NOW) is due


def test_auto_retry_never_retries_a_permanent_failure_and_an_empty_backoff_means_at_once():
    assert not AutoRetry().due(FileState("FAILED", 1, 1, True, 0, updated=0), NOW)
    assert AutoRetry(backoff_minutes=()).due(FileState("FAILED", 1, 1, False, 3, NOW), NOW)


# --- batches -------------------------------------------------------------------------------


GB = 10**9


@pytest.mark.parametrize(
    "count, size, max_per_run, parallel_runs, runs",
    [
        (10, GB, 500, 3, [4, 4, 2]),  # spread over the parallel runs
        (10, GB, 3, 3, [3, 3, 3, 1]),  # but never more than max_per_run in one
        (2, GB, 500, 3, [1, 1]),  # each is worth a run of its own
        (1, GB, 500, 3, [1]),
        (0, GB, 500, 3, []),
        (1000, 64 * 1024, 5000, 3, [1000]),  # not worth a second run's start
        (3000, 4096, 5000, 3, [1500, 1500]),  # worth two
        (10_000, 4096, 5000, 3, [3334, 3334, 3332]),
        (10_000, 4096, 2000, 3, [2000] * 5),
    ],
)
def test_new_keys_go_in_runs_of_consecutive_keys(count, size, max_per_run, parallel_runs, runs):
    new = [f"k{i:05d}" for i in range(count)]
    batched = batches(new, [], {}, max_per_run, parallel_runs, dict.fromkeys(new, size))
    assert [len(run) for run in batched] == runs
    assert [key for run in batched for key in run] == new


def test_a_bandwidth_cap_makes_files_worth_more_runs():
    keys = [f"k{i}" for i in range(6)]
    sizes = dict.fromkeys(keys, 2 * 1024 * 1024)
    assert len(batches(keys, [], {}, 500, 6, sizes)) == 1  # 0.1 s of copying at full speed
    assert len(batches(keys, [], {}, 500, 6, sizes, cap=400_000)) == 6  # 5 s each


def test_known_keys_are_grouped_only_where_their_partitions_are_consecutive():
    order = {key: index for index, key in enumerate("abcdefgh")}
    runs = batches([], ["g", "b", "a", "c", "e"], order, 500, parallel_runs=1, sizes={})
    assert runs == [["a", "b", "c"], ["e"], ["g"]]


def test_new_keys_come_first_then_the_known_ones():
    order = {"x": 0, "y": 1}
    runs = batches(["new1", "new2"], ["y", "x"], order, 500, parallel_runs=1, sizes={})
    assert runs == [["new1", "new2"], ["x", "y"]]
