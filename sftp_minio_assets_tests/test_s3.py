"""S3 object keys and bucket names: what the store gets from a remote path, no server."""

import pytest

from sftp_minio_assets.s3 import bucket_problem, key_segments, object_key


@pytest.mark.parametrize(
    "path, expected",
    [
        ("a/b.txt", "in/src/a/b.txt"),
        ("../../etc/passwd", "in/src/etc/passwd"),
        ("/abs/path", "in/src/abs/path"),
        ("back\\..\\slash", "in/src/back%5C..%5Cslash"),  # one name on the server, one here
        ("100%\n.txt", "in/src/100%25%0A.txt"),
        ("caf\udce9.txt", "in/src/caf%E9.txt"),  # not UTF-8: the byte, percent-encoded
        ("./x/./y", "in/src/x/y"),
    ],
)
def test_object_keys_never_leave_the_prefix(path, expected):
    assert object_key("in/", "src", path) == expected


def test_names_that_differ_on_the_server_never_share_an_object():
    names = ["a%b", "a%25b", "a\\b", "a%5Cb", "caf\udce9", "caf%E9", "caf\u00e9", "t\tb", "t%09b"]
    keys = [object_key("", "src", name) for name in names]
    assert len(set(keys)) == len(names)
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
