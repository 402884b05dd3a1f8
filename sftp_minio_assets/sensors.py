"""The sensor: list the source, add a partition per new file, request a run per file to copy."""

import json
import time

import dagster as dg

from .discovery import plan_transfers
from .partitions import partitions_for
from .resources import SFTPResource, TransferLogResource
from .sftp import display

# The daemon checks every requested key (~15 ms each on Postgres): cap the work of one tick.
MAX_REQUESTS_PER_TICK = 1000


def build_new_files_sensor(source: str, files_asset: dg.AssetsDefinition) -> dg.SensorDefinition:
    partitions = partitions_for(source)

    @dg.sensor(
        name=f"new_files_{source}",
        target=files_asset,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a copy of each new or changed file of SFTP source `{source}`.",
    )
    def new_files(
        context: dg.SensorEvaluationContext,
        sftp: SFTPResource,
        transfer_log: TransferLogResource,
    ) -> dg.SensorResult:
        listing = sftp.list_files()
        swept = transfer_log.log.sweep_stale(source)
        if swept:
            context.log.warning(f"{swept} stale claims of dead workers were released")
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
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=f"{key}@{file.signature}", partition_key=key)
                for key, file in plan.requests
            ],
            dynamic_partitions_requests=[partitions.build_add_request(new_keys)]
            if new_keys
            else [],
            cursor=json.dumps(plan.cursor, sort_keys=True),
            skip_reason=None
            if plan.requests
            else f"nothing new among {len(listing.files)} files ({plan.waiting} too recent)",
        )

    return new_files
