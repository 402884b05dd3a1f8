"""The sensor: list the source, add a partition per new file, request runs to copy them.

New files go in batches of consecutive partitions (one run copies many files on its thread
pool); a trickle gets one run per file.
"""

import json
import time

import dagster as dg

from .discovery import batches, plan_transfers
from .partitions import partitions_for, run_request_for
from .resources import MinIOResource, SFTPResource, TransferLogResource, TransferSettings
from .s3 import object_key
from .sftp import display
from .sources import sftp_key

# Files requested by one tick, at most: the rest waits for the next tick. New files travel in
# batches (one run request each), so even the cap costs the daemon only ~20 requests.
MAX_REQUESTS_PER_TICK = 10_000


def build_new_files_sensor(source: str, files_asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    partitions = partitions_for(source)

    @dg.sensor(
        name=f"new_files_{source}",
        # Without the asset checks: they look at many files, and run on their own schedule.
        target=dg.AssetSelection.assets(files_asset).without_checks(),
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a copy of each new or changed file of SFTP source `{source}`.",
        required_resource_keys={sftp_key(source), "minio", "transfer_log", "transfer_settings"},
    )
    def new_files(context: dg.SensorEvaluationContext, **_invoked) -> dg.SensorResult:
        # (_invoked: a direct call, as in tests, also passes the resources by name)
        sftp: SFTPResource = getattr(context.resources, sftp_key(source))
        minio: MinIOResource = context.resources.minio
        transfer_log: TransferLogResource = context.resources.transfer_log
        transfer_settings: TransferSettings = context.resources.transfer_settings
        listing = sftp.list_files()
        # The seed's "nettoyage automatique des verrous obsolètes", and of their uploads.
        swept = transfer_log.log.sweep_stale(source)
        try:
            aborted = minio.store.abort_stale_uploads(
                object_key(minio.prefix, sftp.policy(source).destination, "") + "/",
                transfer_log.max_stale_lock_minutes * 60,
            )
        except FileNotFoundError:
            aborted = 0  # no bucket yet, so no uploads either
        except Exception as exc:  # S3 down: new files are still requested; their runs retry
            context.log.warning(f"could not sweep stale multipart uploads: {exc}")
            aborted = 0
        if swept or aborted:
            context.log.warning(
                f"released {swept} stale claims and aborted {aborted} stale multipart uploads "
                "of dead workers"
            )
        plan = plan_transfers(
            listing.files,
            transfer_log.log.states(source),
            json.loads(context.cursor) if context.cursor else {},
            now=time.time(),
            min_age_seconds=sftp.min_file_age_seconds,
            file_filter=sftp.file_filter,
            max_requests=MAX_REQUESTS_PER_TICK,
        )
        for path, why in listing.skipped + plan.ignored:
            context.log.warning(f"{sftp.settings().server}: skipped {display(path)!r}: {why}")
        known = set(context.instance.get_dynamic_partitions(partitions.name))
        new_keys = [key for key, _ in plan.requests if key not in known]
        expired = _expired(transfer_log, source, transfer_settings, known, plan.cursor)
        signatures = {key: file.signature for key, file in plan.requests}
        runs = batches(
            new_keys,
            [key for key, _ in plan.requests if key in known],
            transfer_settings.max_partitions_per_run,
            transfer_settings.parallel_runs,
        )
        return dg.SensorResult(
            run_requests=[
                run_request_for(keys, [signatures[k] for k in keys], source) for keys in runs
            ],
            dynamic_partitions_requests=[
                *([partitions.build_add_request(new_keys)] if new_keys else []),
                *([partitions.build_delete_request(expired)] if expired else []),
            ],
            cursor=json.dumps(plan.cursor, sort_keys=True),
            skip_reason=None
            if plan.requests
            else f"nothing new among {len(listing.files)} files ({plan.waiting} too recent)",
        )

    return new_files


def _expired(
    transfer_log: TransferLogResource,
    source: str,
    settings: TransferSettings,
    known: set[str],
    requested: dict[str, str],
) -> list[str]:
    """Partitions of files COMPLETED more than PARTITION_RETENTION_DAYS ago, to delete.

    Their rows stay in the log (history, statistics, and the reason the file is not copied
    again); the UI loses their partition history. Keeps each asset far below the ~100k
    partitions Dagster advises.
    """
    if settings.partition_retention_days <= 0:
        return []
    return [
        key
        for key in transfer_log.log.expired(source, settings.partition_retention_days)
        if key in known and key not in requested
    ]
