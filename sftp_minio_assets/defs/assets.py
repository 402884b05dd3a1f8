"""The asset: one dynamic partition per remote file, materialized by copying it to the bucket.

A run may carry one partition or a batch. Files go through a thread pool; each success is its
own materialization of its own partition as soon as it lands, and the run fails at the end,
naming every file that failed, so those partitions (and only those) show as failed and
"materialize failed" in the UI reruns exactly them.
"""

import logging
from collections.abc import Mapping, Sequence
from typing import cast

import dagster as dg

from ..core.identity import process_id
from ..worker.worker import Outcome
from .partitions import WORKER_TAG, partitions_for
from .sources import source_key, source_of

DEFAULT_SOURCE = "default"

# One line per file on the run's stderr, which Dagster captures and shows with the run.
log = logging.getLogger("sftp_minio_assets.transfers")
if not log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)
    log.propagate = False


# Metadata values that Dagster takes as they are (the plain part of its RawMetadataValue, which
# dagster does not export).
Metadata = Mapping[str, str | int | float | None]


def _metadata(outcome: Outcome) -> Metadata:
    """The outcome's metadata, as Dagster takes it: worker/ imports no dagster, so it can only
    say dict[str, object], but it fills it with numbers and text alone."""
    return cast(Metadata, outcome.metadata)


# After the worker's own retries: the step again, for faults that outlast them.
STEP_RETRY = dg.RetryPolicy(
    max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


def build_files_asset(
    source: str = DEFAULT_SOURCE,
    retry_policy: dg.RetryPolicy | None = STEP_RETRY,
    *,
    group: str | None = None,
    owners: Sequence[str] = (),
    description: str | None = None,
) -> dg.AssetsDefinition:
    """The files asset of a source, `<source>/files`, in the group named after the source unless
    `group` is given."""

    @dg.asset(
        name="files",
        key_prefix=[source],
        partitions_def=partitions_for(source),
        # Each partition is reported by hand, per file; there is no single output to store.
        output_required=False,
        # Backfills from the UI (e.g. "materialize failed") batch files too.
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=100),
        retry_policy=retry_policy,
        group_name=group or source,
        kinds={"sftp", "s3"},
        owners=list(owners),
        description=description
        or f"Files of SFTP source `{source}`, one partition each, copied to MinIO; each "
        "materialization's metadata has the object's URI (`object_uri`).",
        # Each source has its own SourceResource, under its own key.
        required_resource_keys={source_key(source)},
    )
    def files(context: dg.AssetExecutionContext):
        resource = source_of(context, source)
        keys = list(context.partition_keys)
        context.instance.add_run_tags(context.run.run_id, {WORKER_TAG: process_id()})
        worker = resource.worker(
            run_id=context.run.run_id,
            run_finished=lambda run_id: _finished(context.instance, run_id),
            report=context.log.info,
        )
        failed = []
        try:
            for outcome in worker.transfer_many(keys, resource.concurrency):
                if outcome.status == "failed":
                    context.log.error(outcome.message)
                    context.log_event(_failure_observation(context.asset_key, outcome))
                    failed.append(outcome)
                    continue
                # Per-file detail goes to the run's captured output, a line per file:
                # an event per file would double Dagster's cost of a small file.
                log.info(outcome.message)
                if outcome.status != "busy":
                    yield dg.AssetMaterialization(
                        asset_key=context.asset_key,
                        partition=outcome.key,
                        metadata=_metadata(outcome),
                    )
        except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt) as interrupt:
            # Terminated (the copies have stopped, their files FAILED): Dagster retries an
            # interrupted step that has a retry policy, which would copy them again after all.
            raise dg.Failure(
                description="The run was terminated: its copies stopped, nothing of them "
                "committed; their files are FAILED, and requested again by the sensor.",
                allow_retries=False,
            ) from interrupt
        context.log.info(
            f"{len(keys) - len(failed)} of {len(keys)} files copied or already in the bucket"
        )
        if failed:
            listed = "\n".join(f"- {outcome.message}" for outcome in failed[:20])
            more = f"\n... and {len(failed) - 20} more" if len(failed) > 20 else ""
            raise dg.Failure(
                description=f"{len(failed)} of {len(keys)} files failed:\n{listed}{more}",
                metadata={"failed_partitions": [outcome.key for outcome in failed]},
                # Dagster's RetryPolicy retries the step only when a retry can help; the files
                # done meanwhile are skipped then, as already transferred.
                allow_retries=not all(outcome.permanent for outcome in failed),
            )

    return files


def _failure_observation(asset_key: dg.AssetKey, outcome: Outcome) -> dg.AssetObservation:
    """The error of a file's last attempt, on its own partition, where the UI shows it.

    Dagster 1.13 marks the partition failed from the run, but attaches no error to it: an
    observation records metadata on a partition without marking it materialized, and the
    partition's page lists it (with its metadata) among the partition's events. One per failed
    file; a copied file gets none.
    """
    return dg.AssetObservation(
        asset_key=asset_key,
        partition=outcome.key,
        description=f"Copy failed: {outcome.message}",
        # error (what failed, on which server, and what to do), worker, and whether retrying
        # can help
        metadata={**_metadata(outcome), "permanent": outcome.permanent},
    )


def _finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and run.is_finished


files = build_files_asset()
