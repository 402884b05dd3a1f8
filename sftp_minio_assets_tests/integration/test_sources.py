"""Several sources from a YAML file, run against the real servers: each with its own asset,
partitions, sensor and policy (compression, what becomes of the source file). (The file read
without a server: unit/defs/test_sources.py.)"""

import gzip
import hashlib
import os
import shutil

import dagster as dg
import pytest
import yaml
import zstandard

from devstack.demo import apply_partition_requests
from sftp_minio_assets.defs.assets import build_files_asset
from sftp_minio_assets.defs.environment import source_resource
from sftp_minio_assets.defs.partitions import SOURCE_TAG
from sftp_minio_assets.defs.sensors import build_new_files_sensor
from sftp_minio_assets.defs.source_config import SourcePolicyConfig
from sftp_minio_assets.defs.sources import load_sources, source_key
from sftp_minio_assets.sftp.client import CredentialsError
from sftp_minio_assets_tests.support import write_sources


def two_sources(env, tmp_path):
    """Two sources on the test's sshd: `plain` archives its files, `packed` compresses."""
    ssh = env.stack.ssh
    for folder in ("a", "b", "archive"):  # where the SFTP account may delete and create
        (env.root / folder).mkdir()
        shutil.chown(env.root / folder, user=ssh.username)
    sources = {
        "plain": ssh.source_settings(
            env.root / "a",
            min_file_age_seconds=0,
            after_copy="move",
            archive_dir=str(env.root / "archive"),
        ),
        "packed": ssh.source_settings(
            env.root / "b",
            min_file_age_seconds=0,
            destination_prefix="packed-here",
            compression="gzip",
            after_copy="delete",
        ),
    }
    path = write_sources(tmp_path, yaml.safe_dump({"sources": sources}))
    return load_sources(path, env.shared())


def with_policy(source, name: str, **changes):
    """The source under another name, some of its policy's settings changed."""
    policy = SourcePolicyConfig(**{**source.policy.model_dump(), **changes})
    shared = {key: getattr(source, key) for key in ("minio", "transfer_log", "transfer_settings")}
    return source_resource(name, source.connection, policy, shared)


def run_source(env, instance, name, source) -> bool:
    """One tick of the source's sensor, then the runs it requests; True if all succeed."""
    asset = build_files_asset(name, retry_policy=None)
    sensor = build_new_files_sensor(name, asset)
    resources = {source_key(name): source}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        tick = sensor(context)
    apply_partition_requests(instance, tick)
    assert tick.run_requests
    results = []
    for request in tick.run_requests:
        assert request.tags[SOURCE_TAG] == name
        options = (
            {"partition_key": request.partition_key}
            if request.partition_key
            else {"tags": dict(request.tags)}
        )
        results.append(
            dg.materialize(
                [asset], instance=instance, resources=resources, raise_on_error=False, **options
            )
        )
    return all(result.success for result in results)


@pytest.mark.integration
def test_two_sources_each_with_its_partitions_policy_and_destination(env, instance, tmp_path):
    sources = two_sources(env, tmp_path)
    text = b"id,amount\n" + b"".join(b"%d,%d.50\n" % (i, i) for i in range(50_000))
    env.write("a/report.csv", text)
    env.write("b/report.csv", text)
    env.write("b/big.bin", os.urandom(7 * 1024 * 1024))  # multipart, through gzip

    assert run_source(env, instance, "plain", sources["plain"])
    assert run_source(env, instance, "packed", sources["packed"])

    assert instance.get_dynamic_partitions("files_plain") == ["report.csv"]
    assert sorted(instance.get_dynamic_partitions("files_packed")) == ["big.bin", "report.csv"]
    store = env.store
    assert store.fs.cat_file(f"{env.bucket}/plain/report.csv") == text
    packed = store.fs.cat_file(f"{env.bucket}/packed-here/report.csv.gz")
    assert gzip.decompress(packed) == text and len(packed) < len(text) / 2
    head = store.head("packed-here/report.csv.gz")
    assert head["Metadata"]["original-size"] == str(len(text))
    assert head["Metadata"]["compression"] == "gzip"
    assert store.tags("packed-here/report.csv.gz")["sha256"] == hashlib.sha256(text).hexdigest()

    # The log keeps both sizes, and what became of each source file.
    with env.log.db.connection().execute(
        "SELECT source, filename, size_bytes, stored_bytes, source_action, sha256 "
        "FROM file_transfer_log"
    ) as cursor:
        rows = {(r["source"], r["filename"]): r for r in cursor.fetchall()}
    assert rows[("packed", "report.csv")]["stored_bytes"] == len(packed)
    assert rows[("packed", "report.csv")]["size_bytes"] == len(text)
    assert rows[("plain", "report.csv")]["stored_bytes"] is None
    assert rows[("plain", "report.csv")]["source_action"].startswith("moved to ")
    assert rows[("packed", "big.bin")]["source_action"] == "deleted"
    assert (env.root / "archive" / "report.csv").read_bytes() == text
    assert not (env.root / "a" / "report.csv").exists()
    assert list((env.root / "b").iterdir()) == []


@pytest.mark.integration
def test_zstd_objects_decompress_to_the_original(env, instance, tmp_path):
    packed = two_sources(env, tmp_path)["packed"]
    source = with_policy(packed, "packed", compression="zstd", after_copy="keep")
    data = os.urandom(1024) * 3000
    env.write("b/data.bin", data)
    assert run_source(env, instance, "packed", source)
    stored = env.store.fs.cat_file(f"{env.bucket}/packed-here/data.bin.zst")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == data
    assert (env.root / "b" / "data.bin").exists()  # kept


@pytest.mark.integration
def test_a_source_file_that_cannot_be_moved_stays_and_the_copy_stands(env, instance, tmp_path):
    sources = two_sources(env, tmp_path)
    env.write("a/stuck.csv", b"x,y\n1,2\n")
    archive = env.root / "archive"
    archive.chmod(0o555)  # the SFTP account may not write there
    try:
        succeeded = run_source(env, instance, "plain", sources["plain"])
    finally:
        archive.chmod(0o755)
    assert succeeded
    row = env.rows()["stuck.csv"]
    assert row["status"] == "COMPLETED"
    assert row["source_action"].startswith("kept: could not move it")
    assert (env.root / "a" / "stuck.csv").exists()
    assert env.store.fs.cat_file(f"{env.bucket}/plain/stuck.csv") == b"x,y\n1,2\n"


@pytest.mark.integration
def test_a_second_source_never_overwrites_nor_deletes_another_sources_copy(env, instance, tmp_path):
    """Second line of defence behind the load-time check (two deployments, or a sources file
    changed under a running one): source B finds source A's object at its key and stops."""
    sources = two_sources(env, tmp_path)
    env.write("a/same.txt", b"source A's bytes")
    env.write("b/same.txt", b"source B's!")
    assert run_source(env, instance, "plain", sources["plain"])
    clash = with_policy(sources["packed"], "dupb", destination_prefix="plain", compression="none")

    assert not run_source(env, instance, "dupb", clash)

    assert env.store.fs.cat_file(f"{env.bucket}/plain/same.txt") == b"source A's bytes"
    with env.log.db.connection().execute(
        "SELECT status, permanent, error_message FROM file_transfer_log WHERE source = 'dupb'"
    ) as cursor:
        [row] = cursor.fetchall()
    assert (row["status"], row["permanent"]) == ("FAILED", True)
    assert "source 'plain'" in row["error_message"]
    assert "destination_prefix" in row["error_message"]
    assert (env.root / "b" / "same.txt").read_bytes() == b"source B's!"  # not deleted


@pytest.mark.integration
def test_a_wrong_password_in_a_sources_file_is_named_as_the_file_sets_it(
    env, instance, tmp_path, monkeypatch
):
    """The tick's error and the run's advice name `password` of that source in that file, not
    the single source's SFTP_PASSWORD."""
    monkeypatch.setenv("PARTNER_PASSWORD", "not-the-password")
    settings = env.stack.ssh.source_settings(env.root, min_file_age_seconds=0)
    del settings["private_key_path"]
    settings["password"] = {"env": "PARTNER_PASSWORD"}
    path = write_sources(tmp_path, yaml.safe_dump({"sources": {"partner": settings}}))
    resources = {source_key("partner"): load_sources(path, env.shared())["partner"]}
    asset = build_files_asset("partner", retry_policy=None)
    env.write("report.csv", b"a,b")
    named = f"`password` of source partner in {path}"

    sensor = build_new_files_sensor("partner", asset)
    with (
        dg.build_sensor_context(instance=instance, resources=resources) as context,
        pytest.raises(CredentialsError) as error,
    ):
        sensor(context)
    instance.add_dynamic_partitions("files_partner", ["report.csv"])
    run = dg.materialize(
        [asset],
        instance=instance,
        partition_key="report.csv",
        resources=resources,
        raise_on_error=False,
    )

    assert not run.success
    for message in (str(error.value), env.rows()["report.csv"]["error_message"]):
        assert named in message
        assert "SFTP_" not in message and "not-the-password" not in message
