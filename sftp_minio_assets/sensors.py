"""The sensor: list the source, add a partition per new file, request runs to copy them.

New files go in batches of consecutive partitions (one run copies many files on its thread
pool); a trickle gets one run per file. The sensor also heals what crashed: claims held by runs
that Dagster reports finished, or by workers silent for the stale window, are released, and
requested files that no run is left to copy are failed; all of them are then requested again
with the per-file backoff (discovery.AutoRetry). Its memory is the transfer log: it stores no
cursor. Where a source requires a stable listing, the files a tick held back are remembered
there too (file_sightings), one statement per tick, for the next tick to compare.
"""

import os
import posixpath
from datetime import UTC, datetime

import dagster as dg

from .discovery import Plan, batches
from .partitions import keys_of_run, partitions_for, run_request_for
from .resources import SourceResource
from .sessions import SessionsBusy
from .sftp import Listing, display
from .sources import source_key, source_of
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
        required_resource_keys={source_key(source)},
    )
    def new_files(context: dg.SensorEvaluationContext, **_invoked) -> dg.SensorResult:
        # (_invoked: a direct call, as in tests, also passes the resources by name)
        resource = source_of(context, source)
        log = resource.transfer_log.log
        settings = resource.transfer_settings
        # List: the source's files, the partitions known, the files that runs are copying.
        # Not outside the source's transfer window, nor past its server's session budget: the
        # partner's limits hold the source back, which is no error.
        if held_back := _outside_window(resource):
            return dg.SensorResult(skip_reason=held_back)
        try:
            listing = resource.list_files()
        except SessionsBusy as busy:
            return dg.SensorResult(
                skip_reason=f"source {source} held back: {busy}; listed again at the next tick"
            )
        keys = list(context.instance.get_dynamic_partitions(partitions.name))
        order = {key: i for i, key in enumerate(keys)}
        unfinished = _unfinished_runs(context.instance, files_asset.key)
        in_flight = {key for run in unfinished for key in keys_of_run(run.tags, order, keys)}
        _clean_up_after_crashes(context, resource, unfinished, in_flight)
        # Plan: which files to copy, from the log as the clean-up left it.
        plan = resource.plan(listing, in_flight, MAX_REQUESTS_PER_TICK)
        _warn_about_skipped(context, resource, listing, plan)
        if resource.policy.require_stable_listing:
            log.record_sightings(source, plan.sighted)
        _record_refusals(resource, plan)
        # Request: the files become QUEUED in the log, then partitions and runs.
        log.request(source, [(r.key, r.file.size, r.file.mtime, r.retry) for r in plan.requests])
        new_keys = [r.key for r in plan.requests if r.key not in order]
        again = [r.key for r in plan.requests if r.key in order]
        versions = {r.key: f"{r.file.signature}#{r.generation}" for r in plan.requests}
        runs = batches(
            new_keys, again, order, settings.max_partitions_per_run, settings.parallel_runs
        )
        # After the request: a file requested again is QUEUED now, so its partition stays.
        expired = _expired(resource, order, in_flight)
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


def _outside_window(resource: SourceResource) -> str | None:
    """Why the source may not be listed now, if it is outside its transfer window."""
    window = resource.policy.window
    closed = window and window.closed(datetime.now(UTC))
    if not closed:
        return None
    setting = resource.connection.settings.names("transfer_window")
    return f"source {resource.name} held back: {closed} ({setting}); nothing requested until then"


def _unfinished_runs(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> list[dg.DagsterRun]:
    """The runs of this source's files that are not over yet."""
    return [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
        if asset_key in (run.asset_selection or ())
    ]


def _clean_up_after_crashes(
    context: dg.SensorEvaluationContext,
    resource: SourceResource,
    unfinished: list[dg.DagsterRun],
    in_flight: set[str],
) -> None:
    """Release what crashed workers and runs left, so that the plan requests those files again.

    Like the stale-lock cleanup of the Airflow DAG this project replaces, and more: a claim
    whose run Dagster reports finished is released at once, one silent for the stale window
    (MAX_STALE_LOCK_MINUTES) too; a requested file that no unfinished run covers is failed; a
    multipart upload older than the stale window is aborted.
    """
    log, source = resource.transfer_log.log, resource.name
    released = _release_claims_of_finished_runs(context.instance, log, source, unfinished)
    swept = log.sweep_stale(source)
    orphans = log.release_orphans(source, in_flight, ORPHAN_GRACE_SECONDS)
    aborted = _abort_stale_uploads(context, resource)
    if released or swept or orphans or aborted:
        context.log.warning(
            f"released {released} claims of finished runs and {swept} stale claims of dead "
            f"workers, failed {orphans} requested files whose run ended without them, "
            f"aborted {aborted} stale multipart uploads; they are requested again"
        )


def _warn_about_skipped(
    context: dg.SensorEvaluationContext, resource: SourceResource, listing: Listing, plan: Plan
) -> None:
    """Files that are never requested as they are, and log rows this project did not write."""
    for path, why in listing.skipped + plan.ignored:
        context.log.warning(f"{resource.connection.server}: skipped {display(path)!r}: {why}")
    for path in plan.why_refused:
        context.log.warning(_refused(resource, plan, path))
    if plan.unknown_status:
        context.log.warning(
            f"{len(plan.unknown_status)} rows of source {resource.name} have a status this project "
            f"does not write (first: {plan.unknown_status[:5]}); treated as failed"
        )
    if held := _not_ready(plan):
        context.log.info(f"source {resource.name}: {', '.join(held)}")


def _record_refusals(resource: SourceResource, plan: Plan) -> None:
    """Files that would share an object with another become permanent failures in the log:
    one statement, only when there are such files not recorded yet."""
    refusals = [
        (r.key, r.file.size, r.file.mtime, _refused(resource, plan, r.file.path))
        for r in plan.refused
    ]
    resource.transfer_log.log.refuse(resource.name, refusals)


def _refused(resource: SourceResource, plan: Plan, path: str) -> str:
    """Why a file is refused (its key is another's), as the log row and the tick's log say."""
    return f"{posixpath.join(resource.location, display(path))}: {plan.why_refused[path]}"


def _nothing_new(files_listed: int, plan: Plan) -> str:
    held = [
        f"{plan.waiting} too recent",
        *_not_ready(plan),
        f"{plan.backing_off} failed and waiting for their next retry",
        f"{len(plan.given_up)} failed and waiting for a rerun",
    ]
    return f"nothing new among {files_listed} files ({', '.join(held)})"


def _not_ready(plan: Plan) -> list[str]:
    """The files held back by a ready marker or a stable listing, where there are any."""
    return [
        f"{count} {why}"
        for count, why in (
            (plan.waiting_for_marker, "waiting for their ready marker"),
            (plan.unstable, "waiting for a second listing with the same size and mtime"),
        )
        if count
    ]


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


def _abort_stale_uploads(context: dg.SensorEvaluationContext, resource: SourceResource) -> int:
    """Multipart uploads of dead workers, older than the stale window; not those of files
    being copied (claims of dead workers were released just before)."""
    try:
        return resource.abort_stale_uploads()
    except FileNotFoundError:
        return 0  # no bucket yet, so no uploads either
    except Exception as exc:  # S3 down: new files are still requested; their runs retry
        context.log.warning(f"could not sweep stale multipart uploads: {exc}")
        return 0


def _expired(resource: SourceResource, known: dict[str, int], in_flight: set[str]) -> list[str]:
    """Partitions of files COMPLETED more than PARTITION_RETENTION_DAYS ago, to delete.

    Their rows stay in the log (history, statistics, and the reason the file is not copied
    again); the UI loses their partition history. Keeps each asset far below the ~100k
    partitions Dagster advises.
    """
    days = resource.transfer_settings.partition_retention_days
    if days <= 0:
        return []
    return [
        key
        for key in resource.transfer_log.log.expired(resource.name, days)
        if key in known and key not in in_flight
    ]
