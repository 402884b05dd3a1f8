"""One machine of a scale-out deployment, in a process of its own: its own Dagster instance
(DAGSTER_HOME), sharing the source, the bucket and the transfer log with the others.

    DAGSTER_HOME=... SFTP_...=... python -m sftp_minio_assets_tests.run_host

Ticks its sensor, runs every run it requests, and prints one JSON line: for each file it
materialized, what it did ("transferred" or "skipped ...").
"""

import json

import dagster as dg

from devstack.demo import execute_request, tick_once


def main() -> None:
    outcomes: dict[str, str] = {}
    failed_runs = 0
    with dg.DagsterInstance.get() as instance:
        tick, job = tick_once(instance)
        for request in tick.run_requests:
            result = execute_request(job, instance, request)
            failed_runs += not result.success
            for event in result.get_asset_materialization_events():
                materialization = event.event_specific_data.materialization
                outcomes[materialization.partition] = materialization.metadata["outcome"].value
    print(json.dumps({"outcomes": outcomes, "failed_runs": failed_runs}))


if __name__ == "__main__":
    main()
