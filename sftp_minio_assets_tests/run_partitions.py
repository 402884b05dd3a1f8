"""A run of the asset in a process of its own, as a second worker machine would run it.

    python -m sftp_minio_assets_tests.run_partitions '{"resources": {...}, "keys": [...]}'

Prints one JSON line: success, and the partitions this run materialized.
"""

import json
import sys

import dagster as dg

from sftp_minio_assets.defs.assets import build_files_asset
from sftp_minio_assets.defs.resources import (
    ObjectStoreResource,
    SourceResource,
    TransferLogResource,
    TransferSettings,
)

CLASSES = {
    "source_default": SourceResource,
    "minio": ObjectStoreResource,
    "transfer_log": TransferLogResource,
    "transfer_settings": TransferSettings,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    resources = {name: CLASSES[name](**config) for name, config in spec["resources"].items()}
    keys = spec["keys"]
    files = build_files_asset(retry_policy=None)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("files_default", keys)
        tags = {
            "dagster/asset_partition_range_start": keys[0],
            "dagster/asset_partition_range_end": keys[-1],
        }
        result = dg.materialize(
            [files], instance=instance, resources=resources, tags=tags, raise_on_error=False
        )
        materialized = [e.partition for e in result.get_asset_materialization_events()]
    print(json.dumps({"success": result.success, "materialized": materialized}), flush=True)


if __name__ == "__main__":
    main()
