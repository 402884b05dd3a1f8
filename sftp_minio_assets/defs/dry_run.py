"""Dry run: what the sensor would copy now, and where, without moving a byte.

One job per source, `dry_run_<source>`, launched from the UI (Jobs) or the CLI. It lists the
server, applies the same filters, stability gate (age, ready marker, and the sightings the sensor
recorded at its last tick) and log lookup as the sensor, and reports
each file's destination object in its metadata. It adds no partition and requests no run.
"""

import dagster as dg

from ..sftp.client import display
from .sources import source_key, source_of

SHOWN = 200  # files listed in the report; the counts cover all of them


def build_dry_run_job(source: str) -> dg.JobDefinition:
    @dg.op(
        name=f"plan_{source}",
        required_resource_keys={source_key(source)},
        description=f"Lists what source `{source}` would copy now, and where; copies nothing.",
    )
    def plan(context: dg.OpExecutionContext) -> dg.Output[None]:
        import pandas as pd  # here: run workers load this module and never need it (0.5 s)

        resource = source_of(context, source)
        surveyed = resource.survey()
        result = surveyed.plan
        table = pd.DataFrame(
            [
                {
                    "remote file": display(request.file.path),
                    "bytes": request.file.size,
                    "object": resource.object_uri(request.file.path, request.file.mtime),
                }
                for request in result.requests
            ],
            columns=["remote file", "bytes", "object"],
        )
        skipped = surveyed.skipped + result.ignored + list(result.why_refused.items())
        context.log.info(
            f"dry run of {resource.location}: {len(table)} files would be copied "
            f"({int(table['bytes'].sum())} bytes), {result.waiting} too recent, "
            f"{len(result.ahead)} stamped in the future, {len(result.unverified)} recorded "
            "COMPLETED without their size and mtime (judged by their objects at the next tick), "
            f"{result.waiting_for_marker} waiting for their ready marker, {result.unstable} "
            "waiting for a second listing with the same size and mtime, "
            f"{len(skipped)} skipped; after copy: {resource.policy.after_copy}"
        )
        return dg.Output(
            None,
            metadata={
                "would_copy": len(table),
                "bytes": int(table["bytes"].sum()),
                "too_recent": result.waiting,
                "stamped_in_the_future": len(result.ahead),
                "completed_without_content": len(result.unverified),
                "waiting_for_marker": result.waiting_for_marker,
                "waiting_for_second_listing": result.unstable,
                "skipped": len(skipped),
                "after_copy": resource.policy.after_copy,
                "files": dg.MetadataValue.md(
                    table.head(SHOWN).to_markdown(index=False) if len(table) else "(nothing)"
                ),
            },
        )

    @dg.job(name=f"dry_run_{source}", description=plan.description)
    def dry_run():
        plan()

    return dry_run
