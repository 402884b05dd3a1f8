"""What a downstream asset gets of a source (defs/landed.py), on a Dagster instance of its own
(SQLite, in a temporary folder). That the files asset's runs record what landed_uri reads, and
that open_landed reads the object, integration/test_example.py shows through the daemon."""

import subprocess
import sys

import dagster as dg
import pytest

import sftp_minio_assets
from sftp_minio_assets.defs import landed
from sftp_minio_assets.defs.assets import build_files_asset
from sftp_minio_assets.defs.landed import NotLanded, files_asset_key, files_partitions, landed_uri
from sftp_minio_assets_tests.support import PROJECT


def test_the_key_and_partitions_are_the_files_assets_own():
    files = build_files_asset("acme")
    assert files_asset_key("acme") == files.key == dg.AssetKey(["acme", "files"])
    assert files_partitions("acme") == files.partitions_def
    assert files_partitions("acme").name == "files_acme"


def test_the_package_root_exports_them_without_loading_dagster_before_use():
    program = (
        "import sys, sftp_minio_assets as s\n"
        "print(sorted(m for m in sys.modules if m.startswith('dagster')))\n"
        "print(s.open_landed.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[:2] == ["[]", "sftp_minio_assets.defs.landed"]
    for name in sftp_minio_assets.LANDED:
        assert getattr(sftp_minio_assets, name) is getattr(landed, name)
        assert name in dir(sftp_minio_assets)


def landed_file(instance: dg.DagsterInstance, partition: str, **metadata) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=files_asset_key("acme"), partition=partition, metadata=metadata
        )
    )


def test_the_uri_is_the_latest_materializations_of_that_partition(instance):
    instance.add_dynamic_partitions("files_acme", ["a.csv", "b.csv"])
    landed_file(instance, "a.csv", object_uri="s3://bucket/acme/a.csv", bytes=3)
    landed_file(instance, "b.csv", object_uri="s3://bucket/acme/b.csv")
    landed_file(instance, "a.csv", object_uri="s3://bucket/acme/2026/a.csv")

    context = dg.build_asset_context(instance=instance, partition_key="a.csv")
    assert landed_uri(context, "acme") == "s3://bucket/acme/2026/a.csv"
    assert landed_uri(context, "acme", "b.csv") == "s3://bucket/acme/b.csv"


def test_a_partition_that_never_landed_is_named_with_what_to_do(instance):
    context = dg.build_asset_context(instance=instance, partition_key="missing.csv")
    with pytest.raises(NotLanded) as raised:
        landed_uri(context, "acme")
    message = str(raised.value)
    assert message.startswith("source 'acme', partition 'missing.csv': the files asset acme/files")
    assert "has no materialization" in message
    assert "deps=[files_asset_key('acme')]" in message


def test_a_materialization_without_an_object_is_no_landed_file(instance):
    landed_file(instance, "a.csv", note="reported by hand")
    context = dg.build_asset_context(instance=instance, partition_key="a.csv")
    with pytest.raises(NotLanded, match="has no object_uri in its latest one"):
        landed_uri(context, "acme")
