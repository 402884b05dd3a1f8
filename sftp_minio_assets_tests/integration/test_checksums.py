"""Checksums the S3 server verifies (server_checksums): each upload carries its SHA-256, and
the server refuses bytes that do not match it; the log says how each copy was verified.

SeaweedFS (the test server) verifies ChecksumSHA256 on PutObject and UploadPart: it refuses a
mismatch with BadDigest. s3rver (devstack's PlainS3Server) stores whatever it is sent: the
fallback is tested on it.
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
    SMALL,
    decrypting,
    killed_half_way,
    resuming_worker,
    sha256_file,
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


@pytest.mark.integration
@pytest.mark.parametrize("size", [64 * 1024, 6 * MIB], ids=["one-put", "multipart"])
@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no-checksums"])
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("pgp", [True, False], ids=["pgp", "plain"])
def test_every_byte_path_lands_whole_verified_as_the_log_says(
    env, keys, pgp, compression, checksums, size
):
    """Decrypted or not, compressed or not, in one PUT or in parts (of 5 MiB), with checksums or
    without: the object holds the file's content; the log keeps the remote file's size and hash,
    the object's size (and the materialization its hash) when a stage changed the bytes, and how
    the object was verified. Each checksum is the one of the bytes sent: a small decrypted file
    was sent with the encrypted bytes' and refused by the server (issue 19, item 6)."""
    content = os.urandom(size)  # random: compressed, a multipart-size file still fills two parts
    remote = keys.encrypt(content) if pgp else content
    name = "data.csv.pgp" if pgp else "data.csv"
    env.write(name, remote)
    source = env.source(
        env.shared(part_size_mb=5),
        compression=compression,
        server_checksums=checksums,
        **(decrypting(keys) if pgp else {}),
    )

    outcome = source.worker().transfer(name)

    assert outcome.status == "transferred", outcome.message
    key = "default/data.csv" + SUFFIXES[compression]
    assert env.store.list_keys() == [key]
    body = env.store.fs.cat_file(f"{env.bucket}/{key}")
    assert decompressed(body, compression) == content
    row = env.rows()[name]
    if checksums:
        verification = "sha256-by-server"
    else:
        verification = "md5-etag" if size < 5 * MIB else "size+token"
    assert row["verification"] == outcome.metadata["verification"] == verification
    # The server keeps the checksum it verified: a PUT's is its body's (the bytes stored, not
    # the bytes read), a multipart upload's is made of its parts'.
    held = env.store._call("head_object", Key=key, ChecksumMode="ENABLED").get("ChecksumSHA256")
    if not checksums:
        assert held is None
    elif size < 5 * MIB:
        assert held == sha256_checksum(body)
    else:
        assert held.endswith("-2")
    assert (row["size_bytes"], row["sha256"].strip()) == (len(remote), sha256(remote))
    changed = pgp or compression != "none"
    assert row["stored_bytes"] == (len(body) if changed else None)
    assert outcome.metadata.get("stored_sha256") == (sha256(body) if changed else None)


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
