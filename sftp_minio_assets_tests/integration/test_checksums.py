"""Checksums the S3 server verifies (server_checksums): each upload carries its SHA-256, and
the server refuses bytes that do not match it; the log says how each copy was verified.

SeaweedFS (the test server) verifies ChecksumSHA256 on PutObject and UploadPart: it refuses a
mismatch with BadDigest. s3rver (devstack's PlainS3Server) stores whatever it is sent: the
fallback is tested on it.

The byte paths' matrix (issue 20) has five axes: {plain, PGP} x {none, gzip, zstd} x {server
checksums on, off} x {one PUT, multipart, resumed after a kill -9} x {streamed, LOCAL_DIR}, 72
combinations. One test runs, with the same assertions:
- the whole product of the streamed one-PUT and multipart copies (24): a copy each, seconds,
  and the whole product catches what three choices do together (a small decrypted file sent
  with the checksum of the encrypted bytes was pgp x checksums x one PUT, issue 19 item 6);
- an all-pairs table over the five axes (support.PAIRWISE, nine rows, two of them already in the
  product): every value of an axis meets every value of every other. The whole product would
  hold 24 resumed copies, each a process started, killed and outlived by its claim's stale
  window (10 to 20 s): minutes of CI, where the pairs take about one;
- one case by hand (BY_HAND), which no pair demands: the plain copy that only LOCAL_DIR keeps
  from resuming.
"""

import gzip
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import psycopg
import pytest
import zstandard

from devstack.local_stack import PlainS3Server
from sftp_minio_assets.s3.store import CHECKSUM_PROBE, ChecksumRefused, ObjectStore, sha256_checksum
from sftp_minio_assets.transfer.copy import Copy, Tuning, copy_file
from sftp_minio_assets.transfer.failures import TransferFailed
from sftp_minio_assets.transfer.stages import SUFFIXES
from sftp_minio_assets.worker.errors import advice, is_permanent
from sftp_minio_assets_tests.support import (
    CASES,
    SMALL,
    decrypting,
    killed_half_way,
    killed_mid_copy,
    read_so_far,
    resuming_worker,
    sha256_file,
    uploaded,
)

MIB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.integration
def test_the_test_server_verifies_checksums_and_the_probe_leaves_nothing(env):
    store = env.store
    assert store.verifies_checksums()
    assert CHECKSUM_PROBE not in store.list_keys()


@pytest.mark.integration
def test_the_server_refuses_a_corrupted_part_or_object(env):
    """Bytes that differ from the checksum sent with them, one flipped byte: refused, as a
    ChecksumRefused that names the server and the object."""
    store = env.store
    data = os.urandom(5 * MIB)
    upload_id = store.create_multipart("big.bin", {}, checksums=True)
    with pytest.raises(ChecksumRefused, match="did not match") as refused:
        store.upload_part("big.bin", upload_id, 1, flipped(data), sha256_checksum(data))
    assert env.stack.s3.endpoint_url in str(refused.value) and "big.bin" in str(refused.value)
    etag = store.upload_part("big.bin", upload_id, 1, data, sha256_checksum(data))
    store.complete_multipart("big.bin", upload_id, [etag], [sha256_checksum(data)])
    assert env.object_sha256("big.bin") == hashlib.sha256(data).hexdigest()

    with pytest.raises(ChecksumRefused, match="did not match"):
        store.put("small.txt", b"hellp", {}, {}, sha256_checksum(b"hello"))
    assert store.head("small.txt") is None


def flipped(data: bytes) -> bytes:
    """data with one bit changed, in its middle."""
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 1
    return bytes(corrupted)


class CorruptingStore(ObjectStore):
    """The real store, sending every body with one bit flipped but the checksum it was given:
    what a defect of this project (a checksum of other bytes than the body's) looks like."""

    def put(self, key, data, metadata, tags, checksum=None):
        return super().put(key, flipped(data), metadata, tags, checksum)

    def upload_part(self, key, upload_id, number, data, checksum=None):
        return super().upload_part(key, upload_id, number, flipped(bytes(data)), checksum)


@pytest.mark.integration
@pytest.mark.parametrize("size", [64 * 1024, 6 * MIB], ids=["one-put", "multipart"])
def test_a_refused_checksum_is_a_permanent_failure_naming_the_setting(env, size):
    """A checksum the server refuses is one this project computed, which another attempt
    would compute again: the failure is permanent and says to report it or to turn the setting
    off, never to check that the S3 endpoint is up (issue 19, item 6); nothing is left."""
    env.write("data.bin", os.urandom(size))
    store = CorruptingStore(env.store.settings)
    pool = env.source().pool
    tuning = Tuning(part_size=5 * MIB)

    with pytest.raises(TransferFailed) as failed:
        copy_file(
            Copy(
                pool.get(),
                str(env.root / "data.bin"),
                store,
                "data.bin",
                {},
                tuning=tuning,
                checksums=True,
            )
        )

    assert isinstance(failed.value.__cause__, ChecksumRefused)
    assert env.stack.s3.endpoint_url in str(failed.value)
    assert is_permanent(failed.value)
    says = advice(failed.value)
    assert "SERVER_CHECKSUMS" in says and "report" in says and "S3 endpoint" not in says
    assert env.store.list_keys() == [] and env.store.list_multipart_uploads() == []


@pytest.mark.integration
@pytest.mark.parametrize("checksums", [True, False])
def test_the_log_and_the_materialization_say_how_each_copy_was_verified(env, checksums):
    """With server_checksums, small and multipart copies are verified by the server; without,
    as before: a small PUT by its MD5 ETag, a multipart one by its size and token."""
    small = env.write("small.txt", b"a few bytes\n")
    big = env.write("big.bin", os.urandom(12 * MIB))  # three parts of 5 MiB
    worker = env.source(env.shared(part_size_mb=5), server_checksums=checksums).worker()

    outcomes = {name: worker.transfer(name) for name in ("small.txt", "big.bin")}

    expected = {
        "small.txt": "sha256-by-server" if checksums else "md5-etag",
        "big.bin": "sha256-by-server" if checksums else "size+token",
    }
    rows = env.rows()
    for name, path in (("small.txt", small), ("big.bin", big)):
        assert outcomes[name].status == "transferred", outcomes[name].message
        assert rows[name]["verification"] == expected[name]
        assert outcomes[name].metadata["verification"] == expected[name]
        assert env.object_sha256(f"default/{name}") == sha256_file(path)


def decompressed(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(body)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


# --- the byte paths: every value of each choice, with every value of any other --------------

# One PUT (under ETAG_CHECKED_BYTES: its MD5 ETag proves it), two parts of 5 MiB, three (a
# resumed copy is resumable from 10 MiB, SMALL, and its journal records its first part only
# after the second is read: the third leaves the kill a second).
SIZES = {"one-put": 64 * 1024, "multipart": 6 * MIB, "resumed": 15 * MIB}
PART = 5 * MIB
KILL_CAP = 5_000_000  # bytes/s read by the run that is killed: 15 MiB in about 3 s


@pytest.mark.integration
@pytest.mark.parametrize(
    ("pgp", "compression", "checksums", "shape", "via"), CASES, ids=map("-".join, CASES)
)
def test_every_byte_path_lands_whole_verified_as_the_log_says(
    env, keys, tmp_path, pgp, compression, checksums, shape, via
):
    """Decrypted or not, compressed or not, with checksums or without, in one PUT, in parts (of
    5 MiB) or resumed after a kill -9 part way, streamed or through LOCAL_DIR: one object, which
    holds the file's content, and no multipart upload left; the log keeps the remote file's size
    and hash, the object's size (and the materialization its hash) when a stage changed the
    bytes, and how the object was verified. Each checksum is the one of the bytes sent: a small
    decrypted file was sent with the encrypted bytes' and refused by the server (issue 19, item
    6). Only a copy of the bytes as read, streamed, resumes (stages.py, Worker._resumable); any
    other killed copy starts over, and lands once all the same."""
    content = os.urandom(SIZES[shape])  # random: compressed, the file still fills its parts
    remote = keys.encrypt(content) if pgp == "pgp" else content
    name = "data.csv.pgp" if pgp == "pgp" else "data.csv"
    env.write(name, remote)
    sftp = {
        "compression": compression,
        "server_checksums": checksums == "checksums",
        **(decrypting(keys) if pgp == "pgp" else {}),
    }
    local_dir = tmp_path / "local"
    shared = {"local_dir": str(local_dir)} if via == "local-dir" else {}
    changed = pgp == "pgp" or compression != "none"
    resumable = shape == "resumed" and not changed and via == "streamed"

    if shape == "resumed":
        store = env.store
        if via == "local-dir":  # nothing is uploaded before the file is on disk: its heartbeat
            until, what = (lambda: read_so_far(env) >= PART), f"a part of {name} to be read"
        elif resumable:  # its journal records a part: the next copy goes on from there
            until, what = (lambda: uploaded(env) >= PART), f"a part of {name} to be recorded"
        else:  # its multipart upload is open: the next copy aborts it and starts over
            until, what = (lambda: store.list_multipart_uploads()), f"{name}'s upload to begin"
        killed_mid_copy(
            env, name, until, what, KILL_CAP, sftp, stale_minutes=0.05, **SMALL, **shared
        )
        assert env.rows()[name]["status"] == "IN_PROGRESS"  # killed mid-copy, not after it
        assert store.list_keys() == []  # and nothing of it is visible
        assert len(store.list_multipart_uploads()) == (0 if via == "local-dir" else 1)
        outcome = resuming_worker(env, [], shared=shared, **sftp).transfer(name)
    else:
        outcome = env.source(env.shared(**SMALL, **shared), **sftp).worker().transfer(name)

    assert outcome.status == "transferred", outcome.message
    key = "default/data.csv" + SUFFIXES[compression]
    assert env.store.list_keys() == [key]
    assert env.store.list_multipart_uploads() == []  # a killed attempt's was aborted
    body = env.store.fs.cat_file(f"{env.bucket}/{key}")
    assert decompressed(body, compression) == content
    row = env.rows()[name]
    if checksums == "checksums":
        verification = "sha256-by-server"
    else:
        verification = "md5-etag" if shape == "one-put" else "size+token"
    assert row["verification"] == outcome.metadata["verification"] == verification
    # The server keeps the checksum it verified: a PUT's is its body's (the bytes stored, not
    # the bytes read), a multipart upload's is made of its parts'.
    held = env.store._call("head_object", Key=key, ChecksumMode="ENABLED").get("ChecksumSHA256")
    if checksums == "no-checksums":
        assert held is None
    elif shape == "one-put":
        assert held == sha256_checksum(body)
    else:
        parts = int(held.rpartition("-")[2])  # each of PART bytes or a chunk more, the last less
        assert parts >= 2 and len(body) // PART <= parts <= -(-len(body) // PART), held
    assert (row["size_bytes"], row["sha256"].strip()) == (len(remote), sha256(remote))
    assert row["stored_bytes"] == outcome.metadata.get("stored_bytes")
    assert row["stored_bytes"] == (len(body) if changed else None)
    assert outcome.metadata.get("stored_sha256") == (sha256(body) if changed else None)
    assert row["attempts"] == outcome.metadata["attempt"] == (2 if shape == "resumed" else 1)
    if resumable:
        resumed_from = outcome.metadata["resumed_from_bytes"]
        assert row["resumed_from"] == resumed_from and 0 < resumed_from < len(remote)
        assert resumed_from % PART == 0  # where a part ends
    else:  # started over, or the first attempt
        assert row["resumed_from"] is None and "resumed_from_bytes" not in outcome.metadata
    if via == "local-dir":  # the file went through it, and nothing of it is left there
        assert local_dir.is_dir() and list(local_dir.iterdir()) == []


@pytest.mark.integration
def test_a_resumed_upload_completes_with_the_checksums_of_the_earlier_parts(env):
    """The parts an earlier attempt uploaded are not read again; their checksums, kept in the
    journal, complete the upload, and the server verified every part."""
    path = env.write("data.bin", os.urandom(40 * MIB))
    settings = {"server_checksums": True}
    killed_half_way(env, "data.bin", 40 * MIB, cap=10_000_000, sftp=settings, **SMALL)
    with psycopg.connect(env.db_url) as conn:
        [(etags, checksums)] = conn.execute("SELECT etags, checksums FROM transfer_uploads")
    assert checksums is not None and len(checksums) == len(etags) > 0

    outcome = resuming_worker(env, [], **settings).transfer("data.bin")

    assert outcome.status == "transferred", outcome.message
    assert outcome.metadata["resumed_from_bytes"] > 0
    assert outcome.metadata["verification"] == "sha256-by-server"
    assert env.rows()["data.bin"]["verification"] == "sha256-by-server"
    assert env.object_sha256("default/data.bin") == sha256_file(path)


@pytest.fixture(scope="module")
def plain_s3():
    """s3rver, started for this module's test only."""
    with tempfile.TemporaryDirectory() as base:
        server = PlainS3Server(Path(base))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.mark.integration
def test_on_a_server_that_does_not_verify_copies_fall_back_with_one_logged_line(
    env, plain_s3, caplog
):
    """The probe finds that the server stores bytes whatever their checksum: one warning, and
    copies verified as without the setting (the MD5 ETag of a small PUT, the size and token of
    a multipart upload), which the log records."""
    minio = env.minio(
        endpoint_url=plain_s3.endpoint_url,
        access_key=plain_s3.access_key,
        secret_key=plain_s3.secret_key,
    )
    small = env.write("small.txt", b"a few bytes\n")
    big = env.write("big.bin", os.urandom(12 * MIB))
    source = env.source(env.shared(minio=minio, part_size_mb=5), server_checksums=True)
    worker = source.worker()

    with caplog.at_level(logging.WARNING, logger="sftp_minio_assets.s3.store"):
        outcomes = {name: worker.transfer(name) for name in ("small.txt", "big.bin")}

    [line] = [r.getMessage() for r in caplog.records if r.name == "sftp_minio_assets.s3.store"]
    assert plain_s3.endpoint_url in line and "does not verify SHA-256 checksums" in line
    rows = env.rows()
    store = minio.store
    for name, path, verification in (
        ("small.txt", small, "md5-etag"),
        ("big.bin", big, "size+token"),
    ):
        assert outcomes[name].status == "transferred", outcomes[name].message
        assert rows[name]["verification"] == verification
        assert outcomes[name].metadata["verification"] == verification
        assert store.sha256(f"default/{name}") == sha256_file(path)
    assert sorted(store.list_keys()) == ["default/big.bin", "default/small.txt"]  # no probe
