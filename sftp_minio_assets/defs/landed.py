"""What an asset downstream of a source needs, partition by partition: the files asset's key
and partitions to depend on, and the object its latest materialization of a partition landed.

    @dg.asset(
        partitions_def=files_partitions("acme"),
        deps=[files_asset_key("acme")],
        automation_condition=dg.AutomationCondition.eager(),
    )
    def orders(context: dg.AssetExecutionContext, minio: ObjectStoreResource):
        with open_landed(context, minio, "acme") as landed:
            ...

Where a file landed is what its copy recorded (the `object_uri` of the materialization), read
from the instance's event log: never worked out again from the path, which a source's
destination_prefix, destination_template, compression or decryption may change.
"""

from typing import IO, cast

import dagster as dg

from .partitions import partitions_for
from .resources import ObjectStoreResource

URI = "object_uri"

Context = dg.AssetExecutionContext | dg.OpExecutionContext


class NotLanded(LookupError):
    """A partition of a source's files asset has no landed object (yet)."""


def files_asset_key(source: str) -> dg.AssetKey:
    """The key of the source's files asset, `<source>/files`."""
    return dg.AssetKey([source, "files"])


def files_partitions(source: str) -> dg.DynamicPartitionsDefinition:
    """The source's partitions, one per remote file: the files asset's own (the same name, so
    Dagster maps each partition downstream to the file's partition one to one)."""
    return partitions_for(source)


def landed_uri(context: Context, source: str, partition_key: str | None = None) -> str:
    """The URI (s3://bucket/key) of the object the latest materialization of the partition of
    the source's files asset recorded; NotLanded if there is none, or if it recorded no object.
    partition_key: by default the context's (a run of one partition; a run of several passes
    each of context.partition_keys)."""
    key = context.partition_key if partition_key is None else partition_key
    asset_key = files_asset_key(source)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[key]), limit=1
    ).records
    materialization = records[0].asset_materialization if records else None
    uri = materialization.metadata.get(URI) if materialization else None
    if uri is None or not isinstance(uri.value, str):
        found = "no materialization" if materialization is None else f"no {URI} in its latest one"
        raise NotLanded(
            f"source {source!r}, partition {key!r}: the files asset {asset_key.to_user_string()} "
            f"has {found} in this Dagster instance, so no object to read. The file lands when "
            f"the sensor new_files_{source} finds it on the server and its copy succeeds: "
            f"depend on the files asset (deps=[files_asset_key({source!r})]) so that this runs "
            "after it, or materialize that partition of it first"
        )
    return uri.value


def open_landed(
    context: Context,
    minio: ObjectStoreResource,
    source: str,
    partition_key: str | None = None,
) -> IO[bytes]:
    """The landed object of the partition (by default the context's, as landed_uri), open for
    reading in binary through the bucket's s3fs filesystem: its bytes as stored (compressed
    where the source sets compression). NotLanded if the partition has no landed object,
    FileNotFoundError if the object recorded is gone from the bucket."""
    uri = landed_uri(context, source, partition_key)
    try:
        return cast(IO[bytes], minio.store.fs.open(uri, "rb"))
    except FileNotFoundError as exc:
        key = context.partition_key if partition_key is None else partition_key
        raise FileNotFoundError(
            f"{uri}: source {source!r}, partition {key!r}: the object its latest copy recorded "
            "is not in the bucket (deleted since it landed). The transfer log still has the "
            "file as copied, so it is copied again only once it changes on the server (a new "
            "size or mtime): restore the object, or touch the file on the server"
        ) from exc
