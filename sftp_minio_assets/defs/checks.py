"""Asset checks on a source's files: the bucket matches the log, and nothing is stuck.

Dagster checks are per asset, not per partition: each evaluation looks at the files themselves
and names every one that is wrong in its metadata.
"""

import dagster as dg

from ..s3.store import ObjectStore
from .resources import AlertSettings, ObjectStoreResource, TransferLogResource

CHECKED_FILES = 500  # the most recent COMPLETED files, at each evaluation (a HEAD each)


def build_file_checks(
    files_asset: dg.AssetsDefinition, source: str
) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(
        asset=files_asset,
        name="objects_match_log",
        description=f"The last {CHECKED_FILES} COMPLETED files are in the bucket with the "
        "size and sha256 the log records.",
    )
    def objects_match_log(
        minio: ObjectStoreResource, transfer_log: TransferLogResource
    ) -> dg.AssetCheckResult:
        rows = transfer_log.log.reports.recent_completed(source, CHECKED_FILES)
        wrong = [problem for row in rows if (problem := _mismatch(minio.store, row))]
        return dg.AssetCheckResult(
            passed=not wrong,
            metadata={
                "files_checked": len(rows),
                "mismatches": len(wrong),
                "details": dg.MetadataValue.md("\n".join(f"- {w}" for w in wrong[:50]) or "none"),
            },
        )

    @dg.asset_check(
        asset=files_asset,
        name="no_stuck_or_failing_files",
        description="No claim outlived the stale window, no row has a status this project "
        "does not write, and no file failed more than ALERT_AFTER_FAILURES times in a row or "
        "for good.",
    )
    def no_stuck_or_failing_files(
        transfer_log: TransferLogResource, alerts: AlertSettings
    ) -> dg.AssetCheckResult:
        stuck = transfer_log.log.reports.stuck(source)
        # "more than" ALERT_AFTER_FAILURES: the alert itself fires at that many.
        failing = transfer_log.log.reports.failing_files(alerts.after_failures + 1, source)
        lines = [
            f"- `{r['filename']}`: IN_PROGRESS by {r['worker_id']}, no heartbeat since "
            + (f"{r['heartbeat_at']:%Y-%m-%d %H:%M:%S}" if r["heartbeat_at"] else "ever")
            if r["status"] == "IN_PROGRESS"
            else f"- `{r['filename']}`: status {r['status']!r} is not one this project writes "
            "(edited by hand, or by another tool): it is taken for a failure and copied again"
            for r in stuck
        ] + [
            f"- `{r['filename']}`: failed {r['consecutive_failures']} times in a row: "
            f"{r['error_message']}"
            for r in failing
        ]
        return dg.AssetCheckResult(
            passed=not lines,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "stuck": len(stuck),
                "repeatedly_failing": len(failing),
                "details": dg.MetadataValue.md("\n".join(lines[:50]) or "none"),
            },
        )

    return [objects_match_log, no_stuck_or_failing_files]


def _mismatch(store: ObjectStore, row: dict) -> str | None:
    key = row["object_key"]
    head = store.head(key)
    if head is None:
        return f"`{key}`: missing from the bucket"
    expected = row["stored_bytes"] if row["stored_bytes"] is not None else row["size_bytes"]
    if head["ContentLength"] != expected:
        return f"`{key}`: {head['ContentLength']} bytes, the log says {expected}"
    tagged = store.tags(key).get("sha256")
    if tagged != (row["sha256"] or "").strip():
        return f"`{key}`: sha256 tag {tagged}, the log says {row['sha256']}"
    return None
