"""Checksums the S3 server verifies (server_checksums): each upload carries its SHA-256, and
the server refuses bytes that do not match it; the log says how each copy was verified.

SeaweedFS (the test server) verifies ChecksumSHA256 on PutObject and UploadPart: it refuses a
mismatch with BadDigest.
"""

import base64
import hashlib
import os

import psycopg
import pytest

from sftp_minio_assets.s3 import CHECKSUM_PROBE, sha256_checksum

from .support import sha256_file
from .test_resume import SMALL, killed_half_way, resuming_worker

MIB = 1024 * 1024


def test_a_checksum_is_the_base64_of_the_sha256():
    assert sha256_checksum(b"abc") == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()


@pytest.mark.integration
def test_the_test_server_verifies_checksums_and_the_probe_leaves_nothing(env):
    store = env.store
    assert store.verifies_checksums()
    assert CHECKSUM_PROBE not in store.list_keys()


@pytest.mark.integration
def test_the_server_refuses_a_corrupted_part_or_object(env):
    """Bytes that differ from the checksum sent with them, one flipped byte: refused."""
    store = env.store
    data = os.urandom(5 * MIB)
    corrupted = bytearray(data)
    corrupted[12345] ^= 1
    upload_id = store.create_multipart("big.bin", {}, checksums=True)
    with pytest.raises(OSError, match="did not match"):
        store.upload_part("big.bin", upload_id, 1, bytes(corrupted), sha256_checksum(data))
    etag = store.upload_part("big.bin", upload_id, 1, data, sha256_checksum(data))
    store.complete_multipart("big.bin", upload_id, [etag], [sha256_checksum(data)])
    assert env.object_sha256("big.bin") == hashlib.sha256(data).hexdigest()

    with pytest.raises(OSError, match="did not match"):
        store.put("small.txt", b"hellp", {}, {}, sha256_checksum(b"hello"))
    assert store.head("small.txt") is None


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
