"""One sensor tick against the instance in DAGSTER_HOME; prints the run requests as JSON."""

import json

import dagster as dg

from sftp_minio_assets.demo import tick_once


def main() -> None:
    with dg.DagsterInstance.get() as instance:
        result = tick_once(instance)
    requests = [
        {"partition_key": r.partition_key, "tags": dict(r.tags)} for r in result.run_requests
    ]
    print(json.dumps(requests))


if __name__ == "__main__":
    main()
