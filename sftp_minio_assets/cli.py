"""`python -m sftp_minio_assets.cli migrate`: the transfer log's schema brought to this release,
for deployments that migrate before starting the code location rather than in its first
process."""

import argparse
import sys

from .db.schema import SchemaTooNew
from .defs.environment import from_environment
from .defs.resources import TransferLogResource
from .worker.errors import SettingsError, TransferLogUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sftp_minio_assets.cli",
        description="Bring the schema of the transfer log at TRANSFER_DB_URL to this release's "
        "version; safe while other processes use it or start.",
    )
    parser.add_argument("command", choices=["migrate"])
    parser.parse_args(argv)
    # Through the resource, TRANSFER_DB_URL is read and checked as the code location reads it,
    # and errors never show its password.
    try:
        settings = from_environment(TransferLogResource, {"url": "TRANSFER_DB_URL"})
        with settings.process_config_and_initialize_cm() as resource:
            version = resource.log.schema.version()
    except (SettingsError, TransferLogUnavailable, SchemaTooNew) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"the transfer log's schema is at version {version}, this release's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
