"""One run of the requested partitions in this process, as a run worker would execute it.

python -m benchmarks.launch '{"job": ..., "partition_key": ..., "tags": {...}}'
"""

import json
import sys

import dagster as dg

from sftp_minio_assets.definitions import defs


def main() -> None:
    request = json.loads(sys.argv[1])
    with dg.DagsterInstance.get() as instance:
        result = defs.resolve_job_def(request["job"]).execute_in_process(
            instance=instance,
            partition_key=request["partition_key"],
            tags=request["tags"],
            raise_on_error=False,
        )
    sys.exit(0 if result.success else 1)


if __name__ == "__main__":
    main()
