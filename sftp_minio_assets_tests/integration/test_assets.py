"""Materializing partitions through a real Dagster instance against real SFTP, S3 and Postgres."""

import os
import subprocess
import sys
import textwrap

import dagster as dg
import pytest

from sftp_minio_assets.core.keys import encode_key
from sftp_minio_assets.defs.assets import files
from sftp_minio_assets_tests.support import materializations, materialize, sha256_file, statuses

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def test_files_land_byte_for_byte_with_a_log_row_each(env, instance):
    paths = {
        "empty.bin": b"",
        "dir with space/naïve café, ünïcode….txt": "ça marche\n".encode() * 100,
        "nested/a/b/c.csv": os.urandom(100_000),
        "big/forty.bin": os.urandom(40 * 1024 * 1024),  # several multipart parts
    }
    for path, data in paths.items():
        env.write(path, data)

    result = materialize(env, instance, list(paths))

    assert result.success
    assert set(statuses(instance, list(paths)).values()) == {"MATERIALIZED"}
    metadata = materializations(result)
    rows = env.rows()
    for path in paths:
        source_sha = sha256_file(env.root / path)
        key = f"default/{path}"
        assert env.object_sha256(key) == source_sha, path
        meta = metadata[encode_key(path)]
        assert meta["sha256"] == source_sha
        assert meta["bytes"] == len(paths[path])
        assert meta["object_uri"] == f"s3://{env.bucket}/{key}"
        row = rows[encode_key(path)]
        assert row["status"] == "COMPLETED"
        assert row["source_action"] == meta["source_file"] == "kept"  # with the completion
        assert row["sha256"] == source_sha
        assert row["size_bytes"] == len(paths[path])
        assert float(row["file_size_mb"]) == round(len(paths[path]) / 2**20, 2)
        assert row["transfer_start_time"] <= row["transfer_end_time"]
        assert 0 <= row["download_duration"] <= row["total_duration"]
        assert 0 <= row["upload_duration"] <= row["total_duration"]
        assert row["worker_id"] and row["run_id"] == result.run_id
        assert row["attempts"] == 1
        assert row["error_message"] is None
        assert row["object_key"] == key
    # The streamed multipart file carries its sha256 as a tag, like the small ones.
    assert env.store.tags("default/big/forty.bin")["sha256"] == sha256_file(
        env.root / "big/forty.bin"
    )


def test_an_unchanged_file_is_skipped_and_a_changed_one_copied_again(env, instance):
    env.write("report.csv", b"v1")
    assert materialize(env, instance, ["report.csv"]).success

    again = materialize(env, instance, ["report.csv"])
    assert again.success
    assert materializations(again)["report.csv"]["outcome"].startswith("skipped")
    assert env.rows()["report.csv"]["attempts"] == 1

    env.write("report.csv", b"version two", age_seconds=60)
    changed = materialize(env, instance, ["report.csv"])
    assert changed.success
    assert materializations(changed)["report.csv"]["outcome"] == "transferred"
    assert env.store.fs.cat_file(f"{env.bucket}/default/report.csv") == b"version two"
    assert env.rows()["report.csv"]["attempts"] == 2


def test_a_vanished_file_fails_its_partition_only_and_a_rerun_fixes_it(env, instance):
    env.write("present.txt", b"here")
    paths = ["missing.txt", "present.txt"]  # listed, then deleted before the run

    result = materialize(env, instance, paths)

    assert not result.success
    assert statuses(instance, paths) == {"missing.txt": "FAILED", "present.txt": "MATERIALIZED"}
    row = env.rows()["missing.txt"]
    assert row["status"] == "FAILED"
    server = f"sftp://{env.stack.ssh.username}@{env.stack.ssh.host}:{env.stack.ssh.port}"
    assert f"{server}{env.root}/missing.txt" in row["error_message"]
    assert "deleted or renamed" in row["error_message"]
    assert env.store.head("default/missing.txt") is None

    env.write("missing.txt", b"restored")
    rerun = materialize(env, instance, ["missing.txt"])
    assert rerun.success
    assert statuses(instance, paths) == {
        "missing.txt": "MATERIALIZED",
        "present.txt": "MATERIALIZED",
    }
    assert env.rows()["missing.txt"]["status"] == "COMPLETED"
    assert env.store.fs.cat_file(f"{env.bucket}/default/missing.txt") == b"restored"


def test_s3_down_leaves_failed_rows_and_no_object_then_a_rerun_succeeds(env, instance):
    paths = ["one.bin", "two.bin"]
    for path in paths:
        env.write(path, os.urandom(20 * 1024 * 1024))
    env.store.ensure_bucket()  # the bucket exists before the outage
    env.stack.s3.stop()
    try:
        result = materialize(env, instance, paths, retries=0)
    finally:
        env.stack.s3.start()

    assert not result.success
    assert set(statuses(instance, paths).values()) == {"FAILED"}
    for path in paths:
        row = env.rows()[path]
        assert row["status"] == "FAILED"
        assert f"s3://{env.bucket}/default/{path}" in row["error_message"]
        assert "S3 endpoint" in row["error_message"]
    assert env.store.list_keys() == []

    rerun = materialize(env, instance, paths)
    assert rerun.success
    assert sorted(env.store.list_keys()) == [f"default/{p}" for p in paths]
    assert env.store.list_multipart_uploads() == []
    for path in paths:
        assert env.object_sha256(f"default/{path}") == sha256_file(env.root / path)


def test_local_dir_mode_copies_through_a_temporary_file(env, instance, tmp_path):
    env.write("via-disk.bin", os.urandom(3 * 1024 * 1024))
    result = materialize(env, instance, ["via-disk.bin"], local_dir=str(tmp_path / "spool"))
    assert result.success
    assert env.object_sha256("default/via-disk.bin") == sha256_file(env.root / "via-disk.bin")
    assert list((tmp_path / "spool").iterdir()) == []  # nothing left behind


MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys
    from sftp_minio_assets.defs.resources import ObjectStoreResource
    from sftp_minio_assets.defs.source_config import SFTPConnection
    from sftp_minio_assets.sftp.client import SFTPConnector
    from sftp_minio_assets.transfer.copy import Tuning, Copy, copy_file
    connection_args, s3_args, root, path = json.loads(sys.argv[1])
    connection, store = SFTPConnection(**connection_args), ObjectStoreResource(**s3_args).store
    client = SFTPConnector(connection.settings).connect()
    copy_file(Copy(client, root + "/warmup.bin", store, "warmup.bin", {}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = copy_file(Copy(client, root + "/" + path, store, path, {}))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after, "sha256": result.sha256}))
    """
)


@pytest.mark.parametrize("size_mib", [200])
def test_a_large_file_streams_in_bounded_memory(env, size_mib):
    env.write("warmup.bin", os.urandom(40 * 1024 * 1024))
    path = env.write("large.bin", b"")
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1024 * 1024))
    connection, minio = env.connection(), env.minio()
    args = [
        {
            k: v
            for k, v in connection.__dict__.items()
            if k in ("host", "port", "username", "private_key", "known_hosts_path")
        },
        {
            k: v
            for k, v in minio.__dict__.items()
            if k in ("endpoint_url", "access_key", "secret_key", "bucket")
        },
        str(env.root),
        "large.bin",
    ]
    import json

    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    probe = json.loads(out.strip().splitlines()[-1])
    assert probe["sha256"] == sha256_file(path)
    assert env.object_sha256("large.bin") == probe["sha256"]
    grown_mib = (probe["after_kib"] - probe["before_kib"]) / 1024
    # The warm-up already reached the steady state of buffers: a 200 MiB file adds next to nothing.
    assert grown_mib < size_mib / 4, f"peak RSS grew by {grown_mib:.0f} MiB"


def test_a_failed_partition_carries_the_error_of_its_last_attempt(env, instance):
    """An observation on the failed partition holds its error (where the UI shows it, on the
    partition's page); a copied partition gets none."""
    env.write("good.csv", b"fine\n")
    env.write("unreadable.csv", b"secret\n").chmod(0o000)  # a permanent failure
    paths = ["good.csv", "unreadable.csv"]

    result = materialize(env, instance, paths)

    assert not result.success
    assert statuses(instance, paths) == {"good.csv": "MATERIALIZED", "unreadable.csv": "FAILED"}

    def observations(path: str) -> list:
        records_filter = dg.AssetRecordsFilter(asset_key=files.key, asset_partitions=[path])
        return instance.fetch_observations(records_filter, limit=10).records

    [record] = observations("unreadable.csv")
    observation = record.asset_observation
    error = observation.metadata["error"].value
    assert error == env.rows()["unreadable.csv"]["error_message"]
    assert f"{env.root}/unreadable.csv" in error and "ermission" in error
    assert observation.metadata["permanent"].value is True
    assert error in observation.description
    assert observations("good.csv") == []
