"""Scale-out on one machine: two deployments with their own Dagster instances share one
source, one bucket and one transfer log, and race over the same files."""

import json
import os
import subprocess
import sys

import pytest

from sftp_minio_assets_tests.support import PROJECT, enable_versioning, sha256_file, writes_per_key

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def test_two_instances_sharing_the_transfer_log_copy_each_file_exactly_once(env, tmp_path):
    enable_versioning(env)
    paths = [f"shared/{i:03d}.dat" for i in range(240)]
    for path in paths:
        env.write(path, os.urandom(16 * 1024))
    hosts = []
    for name in ("host-a", "host-b"):
        home = tmp_path / name
        home.mkdir()  # no dagster.yaml: each instance keeps its own runs and events locally
        hosts.append(
            subprocess.Popen(
                [sys.executable, "-m", "sftp_minio_assets_tests.run_host"],
                cwd=PROJECT,
                env={
                    **os.environ,
                    **env.stack.env(bucket=env.bucket),
                    "SFTP_ROOT": str(env.root),
                    "TRANSFER_DB_URL": env.db_url,
                    "MIN_FILE_AGE_SECONDS": "0",
                    "MAX_PARTITIONS_PER_RUN": "40",
                    "DAGSTER_HOME": str(home),
                },
                stdout=subprocess.PIPE,
                stderr=open(tmp_path / f"{name}.log", "w"),  # noqa: SIM115
                text=True,
            )
        )
    outputs = [host.communicate(timeout=600)[0] for host in hosts]
    for name, output in zip(("host-a", "host-b"), outputs, strict=True):
        assert output.strip(), (tmp_path / f"{name}.log").read_text()[-3000:]
    reports = [json.loads(output.strip().splitlines()[-1]) for output in outputs]

    assert [report["failed_runs"] for report in reports] == [0, 0]
    transferred = [
        key
        for report in reports
        for key, outcome in report["outcomes"].items()
        if outcome == "transferred"
    ]
    assert sorted(transferred) == paths  # each file copied by exactly one of the two
    rows = env.rows()
    assert {(rows[p]["status"], rows[p]["attempts"]) for p in paths} == {("COMPLETED", 1)}
    assert writes_per_key(env) == {f"default/{p}": 1 for p in paths}
    assert all(env.object_sha256(f"default/{p}") == sha256_file(env.root / p) for p in paths[::40])
