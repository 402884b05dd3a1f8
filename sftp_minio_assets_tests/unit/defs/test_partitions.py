"""Partition keys (reversible, safe for Dagster's UI and index) and the run requests over them."""

import pytest

from sftp_minio_assets.core.keys import KeyTooLong, decode_key, encode_key
from sftp_minio_assets.defs.partitions import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SOURCE_TAG,
    KnownPartitions,
    keys_of_runs,
    run_request_for,
)

AWKWARD = [
    "plain.csv",
    "dir/sub dir/naïve café.txt",
    "a,b,c.csv",
    "wait...txt",
    "....",
    "100%.txt",
    "%2C.txt",
    "tab\there",
    "line\nbreak",
    "caf\udce9 latin-1.txt",  # a byte that is not UTF-8, as os.fsdecode keeps it
]


@pytest.mark.parametrize("path", AWKWARD)
def test_keys_round_trip_and_never_carry_what_the_ui_splits_on(path):
    key = encode_key(path)
    assert decode_key(key) == path
    assert "," not in key and "..." not in key
    assert all(ord(c) >= 0x20 for c in key)


def test_readable_paths_are_their_own_keys():
    assert encode_key("dir/sub dir/naïve café.txt") == "dir/sub dir/naïve café.txt"


def test_overlong_keys_are_refused():
    with pytest.raises(KeyTooLong):
        encode_key("x" * 2000)


def test_every_byte_that_is_not_utf8_round_trips_and_stays_distinct():
    paths = [f"x{chr(0xDC00 + byte)}.bin" for byte in range(0x80, 0x100)]
    keys = [encode_key(path) for path in paths]
    assert [decode_key(key) for key in keys] == paths
    assert len(set(keys)) == len(paths)
    assert all(key.encode() for key in keys)  # valid UTF-8, as Postgres and the UI need


def test_text_that_looks_encoded_is_not_decoded_by_mistake():
    for path in ("%41.txt", "%E9", "%%", "a%2Cb", "%"):
        assert decode_key(encode_key(path)) == path
    assert encode_key("%41.txt") != encode_key("A.txt")


def test_one_file_is_one_partition_and_its_run_key_names_its_content():
    request = run_request_for(["a b.csv"], ["10:1000#0"], "partner")
    assert request.partition_key == "a b.csv"
    assert request.tags[SOURCE_TAG] == "partner"
    assert RANGE_START_TAG not in request.tags
    assert request.run_key == "a b.csv@10:1000#0"
    retried = run_request_for(["a b.csv"], ["10:1000#1"], "partner")
    assert retried.run_key != request.run_key  # a retry is a new request


def test_several_files_are_one_range_whose_run_key_changes_with_any_of_them():
    keys, versions = ["d/01.csv", "d/02.csv", "d/03.csv"], ["1:1#0", "2:2#0", "3:3#0"]
    request = run_request_for(keys, versions, "default")
    assert request.partition_key is None
    assert request.tags == {
        RANGE_START_TAG: "d/01.csv",
        RANGE_END_TAG: "d/03.csv",
        SOURCE_TAG: "default",
    }
    assert request.run_key == run_request_for(keys, versions, "default").run_key
    changed = run_request_for(keys, ["1:1#0", "2:9#0", "3:3#0"], "default")
    assert changed.run_key != request.run_key
    assert len(request.run_key) < 100 + len(keys[0])  # bounded, whatever the batch size


def test_a_run_request_needs_one_version_per_key():
    with pytest.raises(ValueError):
        run_request_for(["a", "b"], ["1:1#0"], "default")


def test_the_keys_of_runs_come_from_their_partition_or_range_tags():
    known = KnownPartitions(None, "default", keys=["a", "b", "c", "d", "e"])
    assert keys_of_runs([{"dagster/partition": "c"}], known) == {"c"}
    assert keys_of_runs([{RANGE_START_TAG: "b", RANGE_END_TAG: "d"}], known) == {"b", "c", "d"}
    request = run_request_for(["a", "b"], ["1:1#0", "2:2#0"], "default")
    assert keys_of_runs([request.tags], known) == {"a", "b"}
    # Several ranges, overlapping or the same twice, read in one pass.
    spans = [("a", "b"), ("b", "c"), ("d", "e"), ("d", "e")]
    tags = [{RANGE_START_TAG: first, RANGE_END_TAG: last} for first, last in spans]
    assert keys_of_runs(tags, known) == {"a", "b", "c", "d", "e"}
    # A range whose partitions were deleted since (retention), or no partition at all.
    assert keys_of_runs([{RANGE_START_TAG: "gone", RANGE_END_TAG: "d"}], known) == set()
    assert keys_of_runs([{RANGE_START_TAG: "b", RANGE_END_TAG: "gone"}], known) == set()
    assert keys_of_runs([{}], known) == set()


def test_the_keys_are_read_only_for_a_run_over_a_range_or_for_requests():
    unread = KnownPartitions(None, "default")  # no instance: reading the keys would fail
    assert keys_of_runs([{"dagster/partition": "c"}, {"other": "tag"}], unread) == {"c"}
    assert unread.positions([]) == {}
    with pytest.raises(AssertionError):
        keys_of_runs([{RANGE_START_TAG: "a", RANGE_END_TAG: "b"}], unread)
    with pytest.raises(AssertionError):
        unread.positions(["a"])


def test_the_positions_of_requested_keys_are_those_that_have_a_partition():
    known = KnownPartitions(None, "default", keys=["a", "b", "c"])
    assert known.positions(["c", "new", "a"]) == {"c": 2, "a": 0}
