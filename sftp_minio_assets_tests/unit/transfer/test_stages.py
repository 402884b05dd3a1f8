"""The byte path as a chain of stages (transfer/stages.py): what each says of the bytes, and
what follows for the object; no server."""

import gzip

import pytest
import zstandard

from sftp_minio_assets.transfer.pgp import PgpSettings
from sftp_minio_assets.transfer.stages import (
    AS_READ,
    BytePath,
    Compress,
    Decrypt,
    byte_path,
    changed_bytes,
)

PGP = PgpSettings("-----BEGIN PGP PRIVATE KEY BLOCK-----", "passphrase")


def test_a_file_stored_as_read_goes_through_no_stage():
    assert byte_path(None, "none") == AS_READ
    assert not AS_READ.changes_bytes and AS_READ.resumable
    assert AS_READ.metadata(10) == {} and AS_READ.suffix == ""
    assert AS_READ.object_path("in/a.csv.pgp") == "in/a.csv.pgp"
    assert b"".join(AS_READ.apply(iter([b"a", b"b"]))) == b"ab"


@pytest.mark.parametrize(
    "pgp, compression, metadata, named",
    [
        (PGP, "none", {"decrypted": "pgp", "original-size": "10"}, "in/a.csv"),
        (None, "gzip", {"compression": "gzip", "original-size": "10"}, "in/a.csv.pgp.gz"),
        (
            PGP,
            "zstd",
            {"decrypted": "pgp", "compression": "zstd", "original-size": "10"},
            "in/a.csv.zst",
        ),
    ],
)
def test_a_stage_that_changes_the_bytes_says_so_in_the_objects_name_and_metadata(
    pgp, compression, metadata, named
):
    chain = byte_path(pgp, compression)
    assert chain.changes_bytes and not chain.resumable
    assert chain.metadata(10) == metadata and changed_bytes(chain.metadata(10))
    assert chain.object_path("in/a.csv.pgp") + chain.suffix == named
    # Decrypted first, then compressed: the order of the chain.
    assert [type(stage) for stage in chain.stages] == [
        stage for stage, on in ((Decrypt, pgp), (Compress, compression != "none")) if on
    ]


@pytest.mark.parametrize("compression, opened", [("gzip", gzip.decompress), ("zstd", None)])
def test_compression_stages_write_standard_files(compression, opened):
    data = [b"id,amount\n", b"1,2\n" * 1000]
    body = b"".join(BytePath((Compress(compression),)).apply(iter(data)))
    if opened is None:
        opened = zstandard.ZstdDecompressor().decompressobj().decompress
    assert opened(body) == b"".join(data) and len(body) < len(b"".join(data))


def test_an_unknown_compression_is_refused():
    with pytest.raises(ValueError, match="none, gzip or zstd"):
        byte_path(None, "brotli")
