"""S3 object keys and bucket names: what the store gets from a remote path; the checksum it
sends; no server."""

import base64
import hashlib

import pytest

from sftp_minio_assets.s3.store import (
    bucket_problem,
    key_segments,
    needs_escaping,
    object_key,
    sha256_checksum,
)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a/b.txt", "in/src/a/b.txt"),
        ("../../etc/passwd", "in/src/etc/passwd"),
        ("/abs/path", "in/src/abs/path"),
        ("back\\..\\slash", "in/src/back%5C..%5Cslash"),  # one name on the server, one here
        ("100%\n.txt", "in/src/100%%0A.txt"),  # % kept; a control character escaped
        ("Q3 50%.csv", "in/src/Q3 50%.csv"),
        ("caf\udce9.txt", "in/src/caf%E9.txt"),  # not UTF-8: the byte, percent-encoded
        ("./x/./y", "in/src/x/y"),
    ],
)
def test_object_keys_never_leave_the_prefix(path, expected):
    assert object_key("in/", "src", path) == expected


def test_only_what_s3_cannot_hold_is_escaped_so_a_raw_name_can_meet_a_literal_one():
    """The price of keys that read as names: the escaped form of a name S3 cannot hold may be
    another file's literal name. Such pairs are refused by the plan and the claim (tested in
    test_destinations); needs_escaping tells which names can take part in one."""
    pairs = [("a\\b", "a%5Cb"), ("caf\udce9", "caf%E9"), ("t\tb", "t%09b")]
    for raw, literal in pairs:
        assert object_key("", "src", raw) == object_key("", "src", literal)
        assert needs_escaping(raw) and not needs_escaping(literal)
    distinct = ["a%b", "a%25b", "caf\u00e9", "50 %.csv", "100%"]
    keys = [object_key("", "src", name) for name in distinct]
    assert keys == [f"src/{name}" for name in distinct]
    assert all(key.encode() for key in keys)  # valid UTF-8: S3 takes nothing else


def test_spaces_and_non_ascii_are_kept_as_they_are():
    assert object_key("", "src", "dir/naïve café 1.csv") == "src/dir/naïve café 1.csv"


def test_key_segments_drop_empty_and_relative_segments():
    assert key_segments("/a//./b/../c/") == ("a", "b", "c")
    assert key_segments("") == key_segments("/") == key_segments("./..") == ()


@pytest.mark.parametrize(
    "name", ["abc", "sftp-minio-assets", "logs.2024.example", "a1-b2", "0" * 3, "a" * 63]
)
def test_valid_bucket_names_pass(name):
    assert bucket_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "ab",  # too short
        "a" * 64,  # too long
        "My_Bucket",  # upper case, underscore
        "-abc",
        "abc-",
        ".abc",
        "a..b",
        "192.168.1.10",  # an IP address
        "xn--abc",  # reserved prefix
        "abc-s3alias",  # reserved suffix
        "with space",
    ],
)
def test_invalid_bucket_names_are_refused_saying_what_is_allowed(name):
    problem = bucket_problem(name)
    assert problem is not None and "3 to 63 lowercase letters" in problem


def test_a_checksum_is_the_base64_of_the_sha256():
    assert sha256_checksum(b"abc") == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()
