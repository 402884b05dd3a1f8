"""sftp-minio-assets: SFTP servers into MinIO, each file exactly once, one partition per file.

Its Dagster components, `sftp_minio_assets.SftpSource` and `sftp_minio_assets.TransferMonitor`
(defs/component.py), are imported on first use: the Dagster-free layers below import this
package without loading Dagster."""

COMPONENTS = ("SftpSource", "TransferMonitor")


def __getattr__(name: str):
    if name in COMPONENTS:
        from .defs import component

        return getattr(component, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *COMPONENTS])
