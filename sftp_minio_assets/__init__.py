"""sftp-minio-assets: SFTP servers into MinIO, each file exactly once, one partition per file.

Its Dagster components, `sftp_minio_assets.SftpSource` and `sftp_minio_assets.TransferMonitor`
(defs/component.py), and what an asset downstream of a source needs (defs/landed.py: the files
asset's key and partitions, the object a partition landed, and the bucket's resource to open it
with) are imported on first use: the Dagster-free layers below import this package without
loading Dagster."""

COMPONENTS = ("SftpSource", "TransferMonitor")
LANDED = (
    "files_asset_key",
    "files_partitions",
    "landed_uri",
    "open_landed",
    "NotLanded",
    "ObjectStoreResource",
)


def __getattr__(name: str):
    if name in COMPONENTS:
        from .defs import component

        return getattr(component, name)
    if name in LANDED:
        from .defs import landed

        return getattr(landed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *COMPONENTS, *LANDED])
