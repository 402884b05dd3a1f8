import dagster as dg

from sftp_minio_assets import (
    ObjectStoreResource,
    files_asset_key,
    files_partitions,
    landed_uri,
    open_landed,
)

from ..orders import MalformedOrders, read_orders
from .resources import OrdersDatabase

SOURCE = "acme"  # the SftpSource of defs/acme/defs.yaml


@dg.asset(
    key_prefix=[SOURCE],
    group_name=SOURCE,
    # One partition per file, the files asset's own: a file's orders are loaded once it lands,
    # and again each time a new version of it lands.
    partitions_def=files_partitions(SOURCE),
    deps=[files_asset_key(SOURCE)],
    automation_condition=dg.AutomationCondition.eager(),
    kinds={"pandas", "postgres"},
    description=f"The orders of each CSV file of source `{SOURCE}`, in the PostgreSQL table "
    "`orders` (ORDERS_DB_URL), one row per order; a file's rows replace those of its earlier "
    "version.",
)
def orders(
    context: dg.AssetExecutionContext, minio: ObjectStoreResource, orders_db: OrdersDatabase
) -> dg.MaterializeResult:
    key = context.partition_key
    uri = landed_uri(context, SOURCE)
    try:
        with open_landed(context, minio, SOURCE) as landed:
            frame = read_orders(landed, f"file {key!r} of source {SOURCE} ({uri})")
    except MalformedOrders as exc:
        raise dg.Failure(
            description=f"{exc}. Fix the file on the SFTP server: its new version is copied "
            "and loaded by itself. Until then this partition keeps the rows it had (if any).",
            metadata={"object_uri": uri, "error": str(exc)},
            # The same bytes would fail the same way: only a new version of the file can help.
            allow_retries=False,
        ) from exc
    rows = orders_db.replace_file_rows(key, frame)
    context.log.info(f"{rows} orders of {key!r} loaded")
    return dg.MaterializeResult(metadata={"rows": rows, "object_uri": uri})
