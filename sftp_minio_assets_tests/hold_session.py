"""A process that opens one SFTP session under a session budget and holds it until killed, as a
worker copying a long file would.

    python -m sftp_minio_assets_tests.hold_session '{"connection": {...}, "db_url": ...,
        "max_sessions": 1, "lease_seconds": 2}'

Prints one line, "holding", once the session is open; then sleeps.
"""

import json
import sys
import time

from sftp_minio_assets.db.transfer_log import TransferLog
from sftp_minio_assets.defs.source_config import SFTPConnection
from sftp_minio_assets.sftp.client import SFTPConnector, SFTPPool
from sftp_minio_assets.sftp.sessions import SessionBudget, server_of


def main() -> None:
    spec = json.loads(sys.argv[1])
    settings = SFTPConnection(**spec["connection"]).settings
    transfer_log = TransferLog(spec["db_url"])
    transfer_log.schema.ensure()
    budget = SessionBudget(
        transfer_log.sessions.leases(),
        server_of(settings.host, settings.port),
        "default",
        spec["max_sessions"],
        lease_seconds=spec["lease_seconds"],
    )
    pool = SFTPPool(SFTPConnector(settings), budget)
    pool.get()
    print("holding", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
