"""The transfer log: the tables in PostgreSQL that workers, the sensor and the reports share,
one part per concern, each with its statements (parameterized SQL) in its own module.
"""

from __future__ import annotations

from .claims import Claims
from .connection import Connections
from .leases import Sessions
from .reports import Reports
from .schema import Schema
from .sensor_memory import SensorMemory
from .uploads import Uploads


class TransferLog:
    """The log over one connection per thread (autocommit): `schema` (migrations), `claims`
    (the workers' lock and results), `uploads` (resumable uploads), `sensor_memory` (the
    sensor's requests and sightings), `reports` (alerts, checks, statistics) and `sessions`
    (the SFTP session leases). stale_minutes: how long a claim lives without a heartbeat."""

    def __init__(self, dsn: str, stale_minutes: float = 30):
        self.db = Connections(dsn)
        self.schema = Schema(self.db)
        self.claims = Claims(self.db, stale_minutes)
        self.uploads = Uploads(self.db)
        self.sensor_memory = SensorMemory(self.db)
        self.reports = Reports(self.db, stale_minutes)
        self.sessions = Sessions(self.db)

    def close(self) -> None:
        self.db.close()
