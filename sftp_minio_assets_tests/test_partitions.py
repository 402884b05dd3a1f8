import pytest

from sftp_minio_assets.partitions import KeyTooLong, decode_key, encode_key
from sftp_minio_assets.s3 import object_key

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
