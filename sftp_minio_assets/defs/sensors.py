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

from ..core.identity import gone_from_here
from ..core.keys import decode_key
from ..core.units import duration
from ..db.transfer_log import TransferLog
from ..policy.discovery import Plan, Request, batches
from ..policy.survey import Survey
from ..sftp.client import display
from ..sftp.sessions import SessionsBusy
from ..transfer.pgp import sweep_stale_homes
from .partitions import (
    SOURCE_TAG,
    WORKER_TAG,
    KnownPartitions,
    keys_of_runs,
    partitions_for,
    run_request_for,
)
from .resources import SourceResource
from .sources import source_key, source_of

# Files requested by one tick, at most: the rest waits for the next tick. New files travel in
# batches (one run request each), so even the cap costs the daemon only ~20 requests.
MAX_REQUESTS_PER_TICK = 10_000

# Rows that do not say which content they copied (the Airflow DAG's) whose files one tick
# judges by their objects, at most: a long history is adopted over several ticks.
MAX_ADOPTIONS_PER_TICK = 1_000

# Partitions of files copied long ago that one tick deletes, at most: the rest next tick.
MAX_EXPIRED_PER_TICK = 10_000

# Files named in a tick's log line, at most, where a line lists files.
NAMED = 10

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
        known = KnownPartitions(context.instance, source)
        unfinished = _unfinished_runs(context.instance, files_asset.key, source)
        _fail_runs_of_dead_workers(context, unfinished)
        in_flight = keys_of_runs((run.tags for run in unfinished), known)
        _clean_up_after_crashes(context, resource, unfinished, in_flight)
        # Plan: which files to copy, the listing compared with the log as the clean-up left it.
        try:
            surveyed = resource.survey(in_flight, MAX_REQUESTS_PER_TICK, remember=True)
        except SessionsBusy as busy:
            return dg.SensorResult(
                skip_reason=f"source {source} held back: {busy}; listed again at the next tick"
            )
        plan = surveyed.plan
        if surveyed.reconnected:
            context.log.warning(
                f"source {source}: {surveyed.reconnected}; listed again on a new connection"
            )
        if surveyed.left:
            context.log.info(f"source {source}: {surveyed.listed} files listed{_how_far(surveyed)}")
        _warn_about_skipped(context, resource, surveyed.skipped, plan)
        read = None if surveyed.complete else [d.key for d in surveyed.directories if d.read]
        log.sensor_memory.record_sightings(source, plan.sighted, read)
        _record_refusals(resource, plan)
        requests = [*plan.requests, *_adopt(context, resource, plan)][:MAX_REQUESTS_PER_TICK]
        # Request: the files become QUEUED in the log, then partitions and runs.
        log.sensor_memory.request(
            source, [(r.key, r.file.size, r.file.mtime, r.retry) for r in requests]
        )
        order = known.positions(r.key for r in requests)  # where those that have one are
        new_keys = [r.key for r in requests if r.key not in order]
        again = [r.key for r in requests if r.key in order]
        versions = {r.key: f"{r.file.signature}#{r.generation}" for r in requests}
        runs = batches(
            new_keys,
            again,
            order,
            settings.max_partitions_per_run,
            settings.parallel_runs,
            {r.key: r.file.size for r in requests},
            resource.policy.max_bytes_per_second,
        )
        # After the request: a file requested again is QUEUED now, so its partition stays.
        expired = _expired(resource, in_flight)
        return dg.SensorResult(
            run_requests=[
                run_request_for(batch, [versions[k] for k in batch], source) for batch in runs
            ],
            dynamic_partitions_requests=[
                *([partitions.build_add_request(new_keys)] if new_keys else []),
                *([partitions.build_delete_request(expired)] if expired else []),
            ],
            skip_reason=None if requests else _nothing_new(surveyed, plan),
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


def _unfinished_runs(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, source: str
) -> list[dg.DagsterRun]:
    """The runs of this source's files that are not over yet: the sensor's, which carry the
    source's tag (the daemon creates them with no asset selection: the sensor targets an
    anonymous job of the asset), their retries (which keep it), and runs that select the asset
    (launched from the UI, backfills). Missing the sensor's runs made every file queued behind
    other runs for ORPHAN_GRACE_SECONDS look orphaned, and requested again in more runs."""
    return [
        run
        for run in instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
        if run.tags.get(SOURCE_TAG) == source or asset_key in (run.asset_selection or ())
    ]


def _fail_runs_of_dead_workers(
    context: dg.SensorEvaluationContext, unfinished: list[dg.DagsterRun]
) -> None:
    """Runs STARTED whose worker process is gone from this host (killed with its code server,
    as when the daemon's machine or container restarts): Dagster's default launcher cannot see
    it, and they would stay STARTED for good, their files never requested again. They are
    failed here; run retries (dagster.yaml) then launch them again, else the next tick
    requests their files. Left to the copy's own claims meanwhile: kept in flight this tick.

    The process is found gone first, then the run read again: a run that ended well between
    the tick's listing of runs and now has stored its success before its process exited."""
    for run in unfinished:
        worker = run.tags.get(WORKER_TAG, "")
        if run.status != dg.DagsterRunStatus.STARTED or not worker or not gone_from_here(worker):
            continue
        now = context.instance.get_run_by_id(run.run_id)
        if now is not None and now.status == dg.DagsterRunStatus.STARTED:
            message = (
                f"its run worker (process {worker}) is no longer running: killed (kill -9, out "
                "of memory) or lost with its code server. Its files are copied again by a "
                "retry of the run, else requested again by the sensor; nothing to do."
            )
            context.instance.report_run_failed(now, message)
            context.log.warning(f"run {run.run_id} failed: {message}")


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
    sweep_stale_homes()  # the gpg homes of killed runs (pgp.py), with their private keys
    released = _release_claims_of_finished_runs(context.instance, log, source, unfinished)
    swept = log.claims.sweep_stale(source)
    orphans = log.sensor_memory.release_orphans(source, in_flight, ORPHAN_GRACE_SECONDS)
    aborted = _abort_stale_uploads(context, resource)
    if released or swept or orphans or aborted:
        context.log.warning(
            f"released {released} claims of finished runs and {swept} stale claims of dead "
            f"workers, failed {orphans} requested files whose run ended without them, "
            f"aborted {aborted} stale multipart uploads; they are requested again"
        )


def _warn_about_skipped(
    context: dg.SensorEvaluationContext,
    resource: SourceResource,
    skipped: list[tuple[str, str]],
    plan: Plan,
) -> None:
    """Files that are never requested as they are, and log rows this project did not write."""
    for path, why in skipped + plan.ignored:
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
    if plan.ahead:
        setting = resource.connection.settings.names("min_file_age_seconds")
        ahead = _first([f"{display(p)!r} ({duration(s)} ahead)" for p, s in plan.ahead])
        context.log.warning(
            f"{resource.connection.server}: {len(plan.ahead)} files are stamped in the future "
            f"(the server's clock, or the writer's, is ahead of this one): {ahead}; each "
            f"is copied once listings have seen its size and mtime unchanged for {setting} "
            "(two listings at least); check the server's clock"
        )


def _adopt(
    context: dg.SensorEvaluationContext, resource: SourceResource, plan: Plan
) -> list[Request]:
    """Files whose COMPLETED row does not say which content was copied (rows the Airflow DAG
    left): adopted where their object in the bucket is the file's, else requested again. Never
    taken for unchanged: S3 unreachable, they are judged at the next tick."""
    if not plan.unverified:
        return []
    judged = plan.unverified[:MAX_ADOPTIONS_PER_TICK]
    later = len(plan.unverified) - len(judged)
    try:
        adopted, again = resource.adopt(judged)
    except Exception as exc:
        context.log.warning(
            f"source {resource.name}: could not look up the objects of {len(plan.unverified)} "
            f"files recorded COMPLETED without their size and mtime: {exc}; they are not copied "
            "again, nor taken for copied, until the next tick finds the bucket"
        )
        return []
    source = resource.name
    if adopted:
        context.log.info(
            f"source {source}: adopted {len(adopted)} files recorded COMPLETED without their size "
            "and mtime (rows left by the Airflow DAG, or by hand), as their objects in the bucket "
            f"are these files: {_first([repr(display(decode_key(k))) for k in adopted])}; their "
            "rows record them now, and a later change of a file is copied"
        )
    for request, why in again[:NAMED]:
        context.log.warning(
            f"source {source}: copying {display(request.file.path)!r} again: its row says "
            f"COMPLETED but not which content was copied (a row left by the Airflow DAG, or by "
            f"hand), and {why}"
        )
    if len(again) > NAMED:
        context.log.warning(f"source {source}: and {len(again) - NAMED} more such files")
    if later:
        context.log.info(f"source {source}: {later} more such files are judged next tick")
    return [request for request, _ in again]


def _first(items: list[str]) -> str:
    """The first NAMED items, and how many more."""
    more = f" and {len(items) - NAMED} more" if len(items) > NAMED else ""
    return ", ".join(items[:NAMED]) + more


def _record_refusals(resource: SourceResource, plan: Plan) -> None:
    """Files that would share an object with another become permanent failures in the log:
    one statement, only when there are such files not recorded yet."""
    refusals = [
        (r.key, r.file.size, r.file.mtime, _refused(resource, plan, r.file.path))
        for r in plan.refused
    ]
    resource.transfer_log.log.sensor_memory.refuse(resource.name, refusals)


def _refused(resource: SourceResource, plan: Plan, path: str) -> str:
    """Why a file is refused (its key is another's), as the log row and the tick's log say."""
    return f"{posixpath.join(resource.location, display(path))}: {plan.why_refused[path]}"


def _nothing_new(surveyed: Survey, plan: Plan) -> str:
    held = [
        f"{plan.waiting} too recent",
        *([f"{len(plan.ahead)} stamped in the future"] if plan.ahead else []),
        *_not_ready(plan),
        f"{plan.backing_off} failed and waiting for their next retry",
        f"{len(plan.given_up)} failed and waiting for a rerun",
    ]
    return f"nothing new among {surveyed.listed} files ({', '.join(held)}){_how_far(surveyed)}"


def _how_far(surveyed: Survey) -> str:
    """What the tick's listing left out: unchanged directories (listing fast), directories
    left for the next tick (a listing longer than a tick)."""
    unread = sum(not directory.read for directory in surveyed.directories)
    fast = f"; {unread} unchanged directories not read (fast listing)" if unread else ""
    if surveyed.left:
        fast += f"; the listing goes on at the next tick: {surveyed.left} directories left"
    return fast


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
    for run_id in log.claims.claiming_runs(source):
        if run_id in live:
            continue
        run = instance.get_run_by_id(run_id)
        if run is not None and run.is_finished:
            released += log.claims.release_run(source, run_id, run.status.value)
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


def _expired(resource: SourceResource, in_flight: set[str]) -> list[str]:
    """Partitions of files COMPLETED more than PARTITION_RETENTION_DAYS ago, to delete: up to
    MAX_EXPIRED_PER_TICK, the oldest first, recorded in the log as deleted so that later ticks
    do not ask again (nor read every partition key to know which are left).

    Their rows stay in the log (history, statistics, and the reason the file is not copied
    again); the UI loses their partition history. Keeps each asset far below the ~100k
    partitions Dagster advises.
    """
    days = resource.transfer_settings.partition_retention_days
    if days <= 0:
        return []
    memory = resource.transfer_log.log.sensor_memory
    expired = [
        key
        for key in memory.expired(resource.name, days, MAX_EXPIRED_PER_TICK)
        if key not in in_flight
    ]
    memory.partitions_deleted(resource.name, expired)
    return expired
