"""Dry run: what the sensor would copy now, and where, without moving a byte.

One job per source, `dry_run_<source>`, launched from the UI (Jobs) or the CLI. It lists the
server, applies the same filters, stability gate and log lookup as the sensor, and reports
each file's destination object in its metadata. It adds no partition and requests no run.
"""

import time

import dagster as dg

from .discovery import plan_transfers
from .partitions import decode_key
from .resources import MinIOResource, SFTPResource, TransferLogResource
from .sftp import display
from .sources import sftp_key

SHOWN = 200  # files listed in the report; the counts cover all of them


def build_dry_run_job(source: str) -> dg.JobDefinition:
    @dg.op(
        name=f"plan_{source}",
        required_resource_keys={sftp_key(source), "minio", "transfer_log", "transfer_settings"},
        description=f"Lists what source `{source}` would copy now, and where; copies nothing.",
    )
    def plan(context: dg.OpExecutionContext) -> dg.Output[None]:
        import pandas as pd  # here: run workers load this module and never need it (0.5 s)

        sftp: SFTPResource = getattr(context.resources, sftp_key(source))
        minio: MinIOResource = context.resources.minio
        transfer_log: TransferLogResource = context.resources.transfer_log
        listing = sftp.list_files()
        result = plan_transfers(
            listing.files,
            transfer_log.log.states(source),
            set(),
            now=time.time(),
            min_age_seconds=sftp.min_file_age_seconds,
            file_filter=sftp.file_filter,
            max_requests=len(listing.files),
            auto_retry=context.resources.transfer_settings.auto_retry,
        )
        policy = sftp.policy(source)
        table = pd.DataFrame(
            [
                {
                    "remote file": display(request.file.path),
                    "bytes": request.file.size,
                    "object": minio.store.uri(
                        display(policy.object_name(minio.prefix, decode_key(request.key)))
                    ),
                }
                for request in result.requests
            ],
            columns=["remote file", "bytes", "object"],
        )
        skipped = listing.skipped + result.ignored
        context.log.info(
            f"dry run of {sftp.settings().server}{sftp.root}: {len(table)} files would be "
            f"copied ({int(table['bytes'].sum())} bytes), {result.waiting} too recent, "
            f"{len(skipped)} skipped; after copy: {policy.after_copy}"
        )
        return dg.Output(
            None,
            metadata={
                "would_copy": len(table),
                "bytes": int(table["bytes"].sum()),
                "too_recent": result.waiting,
                "skipped": len(skipped),
                "after_copy": policy.after_copy,
                "files": dg.MetadataValue.md(
                    table.head(SHOWN).to_markdown(index=False) if len(table) else "(nothing)"
                ),
            },
        )

    @dg.job(name=f"dry_run_{source}", description=plan.description)
    def dry_run():
        plan()

    return dry_run
