"""The sensor: list the source, add a partition per new file, request runs to copy them.

New files go in batches of consecutive partitions (one run copies many files on its thread
pool); a trickle gets one run per file. The sensor also heals what crashed: claims held by runs
that Dagster reports finished, or by workers silent for the stale window, are released, and
requested files that no run is left to copy are failed; all of them are then requested again
with the per-file backoff (discovery.AutoRetry). Its memory is the transfer log: it stores no
cursor.
"""

import os
import time

import dagster as dg

from .discovery import Plan, batches, plan_transfers
from .partitions import keys_of_run, partitions_for, run_request_for
from .resources import MinIOResource, SFTPResource, TransferLogResource, TransferSettings
from .s3 import object_key
from .sftp import Listing, display
from .sources import sftp_key
from .transfer_log import TransferLog

# Files requested by one tick, at most: the rest waits for the next tick. New files travel in
# batches (one run request each), so even the cap costs the daemon only ~20 requests.
MAX_REQUESTS_PER_TICK = 10_000

# A requested file is left to its run for this long even when no unfinished run covers it
# yet: the daemon creates the runs of a tick right after it.
ORPHAN_GRACE_SECONDS = 60

UNFINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
]


def interval_seconds() -> int:
    """SENSOR_INTERVAL_SECONDS: how often each source is listed (default 30)."""
    value = os.environ.get("SENSOR_INTERVAL_SECONDS", "").strip() or "30"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(
            f"SENSOR_INTERVAL_SECONDS={value!r}: expected a whole number of seconds, at least 1"
        )
    return int(value)


def build_new_files_sensor(source: str, files_asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    partitions = partitions_for(source)

    @dg.sensor(
        name=f"new_files_{source}",
        # Without the asset checks: they look at many files, and run on their own schedule.
        target=dg.AssetSelection.assets(files_asset).without_checks(),
        minimum_interval_seconds=interval_seconds(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a copy of each new or changed file of SFTP source `{source}`, "
        "and again of each file whose copy failed or crashed, with a growing backoff.",
        required_resource_keys={sftp_key(source), "minio", "transfer_log", "transfer_settings"},
    )
    def new_files(context: dg.SensorEvaluationContext, **_invoked) -> dg.SensorResult:
        # (_invoked: a direct call, as in tests, also passes the resources by name)
        sftp: SFTPResource = getattr(context.resources, sftp_key(source))
        minio: MinIOResource = context.resources.minio
        transfer_log: TransferLogResource = context.resources.transfer_log
        transfer_settings: TransferSettings = context.resources.transfer_settings
        log = transfer_log.log
        # List: the source's files, the partitions known, the files that runs are copying.
        listing = sftp.list_files()
        keys = list(context.instance.get_dynamic_partitions(partitions.name))
        order = {key: i for i, key in enumerate(keys)}
        unfinished = _unfinished_runs(context.instance, files_asset.key)
        in_flight = {key for run in unfinished for key in keys_of_run(run.tags, order, keys)}
        _clean_up_after_crashes(context, source, unfinished, in_flight, sftp, minio, transfer_log)
        # Plan: which files to copy, from the log as the clean-up left it.
        plan = plan_transfers(
            listing.files,
            log.states(source),
            in_flight,
            now=time.time(),
            min_age_seconds=sftp.min_file_age_seconds,
            file_filter=sftp.file_filter,
            max_requests=MAX_REQUESTS_PER_TICK,
            auto_retry=transfer_settings.auto_retry,
        )
        _warn_about_skipped(context, source, sftp, listing, plan)
        # Request: the files become QUEUED in the log, then partitions and runs.
        log.request(source, [(r.key, r.file.size, r.file.mtime, r.retry) for r in plan.requests])
        new_keys = [r.key for r in plan.requests if r.key not in order]
        again = [r.key for r in plan.requests if r.key in order]
        versions = {r.key: f"{r.file.signature}#{r.generation}" for r in plan.requests}
        runs = batches(
            new_keys,
            again,
            order,
            transfer_settings.max_partitions_per_run,
            transfer_settings.parallel_runs,
        )
        # After the request: a file requested again is QUEUED now, so its partition stays.
        expired = _expired(transfer_log, source, transfer_settings, order, in_flight)
        return dg.SensorResult(
            run_requests=[
                run_request_for(batch, [versions[k] for k in batch], source) for batch in runs
            ],
            dynamic_partitions_requests=[
                *([partitions.build_add_request(new_keys)] if new_keys else []),
                *([partitions.build_delete_request(expired)] if expired else []),
            ],
            skip_reason=None if plan.requests else _nothing_new(len(listing.files), plan),
        )

    return new_files


def _unfinished_runs(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[dg.DagsterRun]:
    """The runs of this source's files that are not over yet."""
    return [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
        if asset_key in (run.asset_selection or ())
    ]


def _clean_up_after_crashes(
    context: dg.SensorEvaluationContext,
    source: str,
    unfinished: list[dg.DagsterRun],
    in_flight: set[str],
    sftp: SFTPResource,
    minio: MinIOResource,
    transfer_log: TransferLogResource,
) -> None:
    """Release what crashed workers and runs left, so that the plan requests those files again.

    Like the stale-lock cleanup of the Airflow DAG this project replaces, and more: a claim
    whose run Dagster reports finished is released at once, one silent for the stale window
    (MAX_STALE_LOCK_MINUTES) too; a requested file that no unfinished run covers is failed; a
    multipart upload older than the stale window is aborted.
    """
    log = transfer_log.log
    released = _release_claims_of_finished_runs(context.instance, log, source, unfinished)
    swept = log.sweep_stale(source)
    orphans = log.release_orphans(source, in_flight, ORPHAN_GRACE_SECONDS)
    aborted = _abort_stale_uploads(context, minio, sftp, source, transfer_log)
    if released or swept or orphans or aborted:
        context.log.warning(
            f"released {released} claims of finished runs and {swept} stale claims of dead "
            f"workers, failed {orphans} requested files whose run ended without them, "
            f"aborted {aborted} stale multipart uploads; they are requested again"
        )


def _warn_about_skipped(
    context: dg.SensorEvaluationContext,
    source: str,
    sftp: SFTPResource,
    listing: Listing,
    plan: Plan,
) -> None:
    """Files that are never requested as they are, and log rows this project did not write."""
    for path, why in listing.skipped + plan.ignored:
        context.log.warning(f"{sftp.settings().server}: skipped {display(path)!r}: {why}")
    if plan.unknown_status:
        context.log.warning(
            f"{len(plan.unknown_status)} rows of source {source} have a status this project "
            f"does not write (first: {plan.unknown_status[:5]}); treated as failed"
        )


def _nothing_new(files_listed: int, plan: Plan) -> str:
    return (
        f"nothing new among {files_listed} files ({plan.waiting} too recent, "
        f"{plan.backing_off} failed and waiting for their next retry, "
        f"{len(plan.given_up)} failed and waiting for a rerun)"
    )


def _release_claims_of_finished_runs(
    instance: dg.DagsterInstance, log: TransferLog, source: str, unfinished: list[dg.DagsterRun]
) -> int:
    """Release the claims of runs that Dagster reports finished (failed, canceled, or even
    succeeded): their workers are gone. A run this instance does not know (another deployment
    sharing the log, or deleted) is left to the stale window."""
    live = {run.run_id for run in unfinished}
    released = 0
    for run_id in log.claiming_runs(source):
        if run_id in live:
            continue
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            released += log.release_run(source, run_id, run.status.value)
    return released


def _abort_stale_uploads(context, minio, sftp, source, transfer_log) -> int:
    """Multipart uploads of dead workers, older than the stale window; not those of files
    being copied (claims of dead workers were released just before)."""
    try:
        return minio.store.abort_stale_uploads(
            object_key(minio.prefix, sftp.policy(source).destination, "") + "/",
            transfer_log.max_stale_lock_minutes * 60,
            live=transfer_log.log.being_copied(source),
        )
    except FileNotFoundError:
        return 0  # no bucket yet, so no uploads either
    except Exception as exc:  # S3 down: new files are still requested; their runs retry
        context.log.warning(f"could not sweep stale multipart uploads: {exc}")
        return 0


def _expired(
    transfer_log: TransferLogResource,
    source: str,
    settings: TransferSettings,
    known: dict[str, int],
    in_flight: set[str],
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
        if key in known and key not in in_flight
    ]
