"""Statistics from `file_transfer_log` with pandas: throughput per source, worker and hour, the
workers copying a file right now with the age of their heartbeat, and the SFTP sessions open
per server (the leases of the session budget, sftp/sessions.py).

`summarize` is plain pandas; the `transfer_stats` asset publishes its tables as Markdown and its
totals as numeric metadata, which the UI plots over materializations; a schedule refreshes it.
pandas is imported when the statistics are built, not with the module: every run worker loads
this code, and pandas alone added half a second to each run's start.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import dagster as dg

from .resources import TransferLogResource

if TYPE_CHECKING:
    import pandas as pd

MIB = 1024 * 1024
WINDOW_DAYS = 7


def summarize(rows: list[dict]) -> dict[str, pd.DataFrame | dict[str, float]]:
    """Totals, and tables per source, per worker and per hour, plus the active workers."""
    import pandas as pd

    frame = pd.DataFrame(
        rows,
        columns=[
            "source", "filename", "worker_id", "status", "size_bytes", "stored_bytes",
            "download_duration", "upload_duration", "total_duration", "transfer_start_time",
            "transfer_end_time", "heartbeat_at", "attempts", "consecutive_failures",
            "progress_bytes", "now",
        ],
    )  # fmt: skip
    numbers = (
        "size_bytes",
        "stored_bytes",
        "progress_bytes",
        "download_duration",
        "upload_duration",
        "total_duration",
    )
    for column in numbers:  # decimals and NULLs from PostgreSQL
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    done = frame[frame["status"] == "COMPLETED"].copy()
    done["mb_per_s"] = (
        done["size_bytes"] / MIB / done["total_duration"].where(done["total_duration"] > 0)
    )
    failed = frame[frame["status"] == "FAILED"]

    def per(column: str, table: pd.DataFrame) -> pd.DataFrame:
        grouped = table.groupby(column, dropna=False)
        return pd.DataFrame(
            {
                "files": grouped.size(),
                "MiB": grouped["size_bytes"].sum() / MIB,
                "mean MB/s": grouped["mb_per_s"].mean(),
                "p95 MB/s": grouped["mb_per_s"].quantile(0.95),
                "download s": grouped["download_duration"].sum(),
                "upload s": grouped["upload_duration"].sum(),
            }
        ).round(2)

    by_source = per("source", done).join(
        failed.groupby("source").size().rename("failed"), how="outer"
    )
    done["hour"] = pd.to_datetime(done["transfer_end_time"], utc=True).dt.floor("h")
    active = frame[frame["status"] == "IN_PROGRESS"].copy()
    active["heartbeat age s"] = (
        (pd.to_datetime(active["now"], utc=True) - pd.to_datetime(active["heartbeat_at"], utc=True))
        .dt.total_seconds()
        .round(1)
    )
    # How far long copies got at their last heartbeat (every 30 s; small files have none).
    active["progress %"] = (100 * active["progress_bytes"] / active["size_bytes"]).round(1)
    totals = {
        "files_transferred": float(len(done)),
        "bytes_transferred": float(done["size_bytes"].sum()),
        "bytes_stored": float(done["stored_bytes"].fillna(done["size_bytes"]).sum()),
        "mean_mb_per_s": _number(done["mb_per_s"].mean()),
        "p95_mb_per_s": _number(done["mb_per_s"].quantile(0.95)),
        "download_seconds": _number(done["download_duration"].sum()),
        "upload_seconds": _number(done["upload_duration"].sum()),
        "files_failed": float(len(failed)),
        "active_transfers": float(len(active)),
    }
    return {
        "totals": totals,
        "per_source": by_source.fillna(0),
        "per_worker": per("worker_id", done),
        "per_hour": per("hour", done).sort_index(ascending=False).head(48),
        "active_workers": active[
            ["worker_id", "source", "filename", "heartbeat age s", "progress %"]
        ],
    }


def sessions_per_server(rows: list[dict]) -> pd.DataFrame:
    """SFTP sessions open now per server (host:port), of which listing, and by which sources;
    only servers of sources with max_sessions set have leases to count."""
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["server", "sessions", "listing", "sources"])
    return frame.set_index("server")


def _number(value) -> float:
    return 0.0 if math.isnan(value) else round(float(value), 3)


@dg.asset(
    group_name="monitoring",
    kinds={"pandas", "postgres"},
    description=f"Transfer statistics of the last {WINDOW_DAYS} days, the workers at work and "
    "the SFTP sessions open per server.",
)
def transfer_stats(transfer_log: TransferLogResource) -> dg.MaterializeResult:
    summary = summarize(transfer_log.log.reports.history(WINDOW_DAYS))
    sessions = sessions_per_server(transfer_log.log.sessions.in_use())
    tables = {
        name: dg.MetadataValue.md(table.to_markdown() if len(table) else "(none)")
        for name, table in [*summary.items(), ("sessions_per_server", sessions)]
        if name != "totals"
    }
    totals = {**summary["totals"], "sftp_sessions": float(sessions["sessions"].sum())}
    return dg.MaterializeResult(metadata={**totals, **tables})


def build_health_job():
    """The statistics, and the asset checks of every source's files (the assets of kind sftp),
    without copying any file."""
    sources = dg.AssetSelection.kind("sftp")
    return dg.define_asset_job(
        "transfer_health",
        selection=dg.AssetSelection.assets(transfer_stats) | (sources - sources.without_checks()),
    )


def build_health_schedule(job) -> dg.ScheduleDefinition:
    """Every 15 minutes."""
    return dg.ScheduleDefinition(
        job=job,
        cron_schedule="*/15 * * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Refreshes transfer_stats and runs the file checks every 15 minutes.",
    )
