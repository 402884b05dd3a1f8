"""Awkward names, links and special files: each is copied faithfully or skipped with a reason."""

import os
import time

import pytest

from sftp_minio_assets.core.keys import decode_key
from sftp_minio_assets.policy.discovery import AutoRetry, plan_transfers
from sftp_minio_assets.s3.store import object_key
from sftp_minio_assets.sftp.client import FileFilter
from sftp_minio_assets_tests.support import materialize, requested, sha256_file, tick

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

TRANSFERABLE = [
    "with space.txt",
    "quote'single.txt",
    'quote"double.txt',
    "new\nline.txt",
    "tab\there.txt",
    "100%.txt",
    "hash#tag.txt",
    "what?.txt",
    "a,b.txt",
    "dots....txt",
    "back\\slash.txt",
    "-leading-dash.txt",
    "日本語/ファイル.txt",
    "latin1-caf\udce9.txt",  # the byte 0xE9 alone: not UTF-8
    "zero.bin",
    "looks-like-a.csv/inner.txt",  # a directory named like a file
    "deep/" + "/".join(["d" * 150] * 5) + "/f.txt",  # 770 bytes
]
TOO_LONG = "/".join(["x" * 250] * 5) + "/f.txt"


def seed(env) -> None:
    for index, path in enumerate(TRANSFERABLE):
        env.write(path, b"" if path == "zero.bin" else f"{index}:{path!r}\n".encode() * 100)
    env.write(TOO_LONG, b"too long for a partition key and an S3 key")
    os.symlink("with space.txt", env.root / "link-inside.txt")
    os.symlink("/etc/hostname", env.root / "link-outside.txt")
    os.symlink(".", env.root / "loop")


def test_every_transferable_name_round_trips_byte_for_byte(env, instance):
    seed(env)
    first = tick(env, instance)
    keys = requested(first, instance)
    assert sorted(decode_key(key) for key in keys) == sorted(TRANSFERABLE)

    result = materialize(env, instance, [decode_key(key) for key in keys])

    assert result.success
    for path in TRANSFERABLE:
        key = object_key("", "default", path)
        assert env.object_sha256(key) == sha256_file(env.root / path), repr(path)
    assert len(env.store.list_keys()) == len(TRANSFERABLE)  # no two names share an object


def test_links_are_skipped_by_default_and_followed_only_inside_the_root(env):
    seed(env)
    skipped = env.source().list_files().skipped
    reasons = dict(skipped)
    assert "SFTP_FOLLOW_SYMLINKS is off" in reasons["link-inside.txt"]
    assert "SFTP_FOLLOW_SYMLINKS is off" in reasons["link-outside.txt"]
    assert "SFTP_FOLLOW_SYMLINKS is off" in reasons["loop"]

    following = env.source(follow_symlinks=True).list_files()
    paths = [f.path for f in following.files]
    assert "link-inside.txt" in paths
    assert "link-outside.txt" not in paths
    assert "outside the root" in dict(following.skipped)["link-outside.txt"]
    assert not any(path.startswith("loop/") for path in paths)  # walked once, no cycle


def test_an_overlong_path_is_skipped_with_its_reason_and_the_sensor_goes_on(env, instance):
    seed(env)
    result = tick(env, instance)
    assert TOO_LONG not in [decode_key(key) for key in requested(result, instance)]
    assert len(requested(result, instance)) == len(TRANSFERABLE)
    plan = plan_transfers(
        env.source().list_files().files,
        {},
        set(),
        now=time.time(),
        min_age_seconds=0,
        file_filter=FileFilter(),
        max_requests=1000,
        auto_retry=AutoRetry(),
    )
    assert [(path, "more than 1024" in why) for path, why in plan.ignored] == [(TOO_LONG, True)]


def test_a_multi_gib_file_crosses_the_2_gib_offsets_intact(env, instance):
    """Sparse on the server (cheap to make), but every byte crosses SFTP and S3 for real."""
    path = env.write("huge.bin", b"")
    size = 2 * 1024**3 + 300 * 1024**2
    markers = [0, 2**31 - 7, 2**31, size - 4096]  # bytes around the 32-bit boundary
    with open(path, "r+b") as f:
        f.truncate(size)
        for offset in markers:
            f.seek(offset)
            f.write(os.urandom(4096)[: size - offset])
    past = time.time() - 3600
    os.utime(path, (past, past))

    result = materialize(env, instance, ["huge.bin"])

    assert result.success
    row = env.rows()["huge.bin"]
    assert row["status"] == "COMPLETED" and row["size_bytes"] == size
    assert row["sha256"] == sha256_file(path)
    assert env.store.head("default/huge.bin")["ContentLength"] == size
    assert env.store.tags("default/huge.bin")["sha256"] == row["sha256"]
