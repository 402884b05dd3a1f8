"""The name that instance files (dagster.yaml) written before the layers give the event-log
storage: `module: sftp_minio_assets.instance_storage`. It lives in defs/instance_storage.py;
this keeps those files loading after an upgrade."""

from .defs.instance_storage import PooledPostgresEventLogStorage

__all__ = ["PooledPostgresEventLogStorage"]
