"""The code location loads as `dagster dev` loads it, configured by environment variables only."""

import os
import subprocess
import sys

import pytest

from sftp_minio_assets_tests.support import PROJECT

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def test_workspace_validates_against_the_postgres_instance_of_dagster_yaml(stack):
    # Run from the project directory, `dagster` reads ./dagster.yaml: its DAGSTER_PG_* must resolve.
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=PROJECT,
        env={**os.environ, **stack.env()},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_definitions_run_from_environment_variables_alone(env, monkeypatch):
    for name, value in env.stack.env(bucket=env.bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SFTP_ROOT", str(env.root))
    monkeypatch.setenv("TRANSFER_DB_URL", env.db_url)
    # Numeric settings from the environment (EnvVar.int) must load too.
    for name, value in [
        ("MIN_FILE_AGE_SECONDS", "0"),
        ("MAX_WORKERS", "2"),
        ("PARALLEL_RUNS", "2"),
        ("TRANSFER_RETRIES", "1"),
        ("MAX_PARTITIONS_PER_RUN", "10"),
        ("MAX_STALE_LOCK_MINUTES", "5"),
    ]:
        monkeypatch.setenv(name, value)
    env.write("from-env.txt", b"configured by environment")
    code = (
        "from sftp_minio_assets.definitions import defs\n"
        "import dagster as dg, sys\n"
        "with dg.instance_for_test() as instance:\n"
        "    instance.add_dynamic_partitions('files_default', ['from-env.txt'])\n"
        "    job = defs.resolve_implicit_global_asset_job_def()\n"
        "    result = job.execute_in_process(instance=instance, partition_key='from-env.txt')\n"
        "    sys.exit(0 if result.success else 1)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (
        env.store.fs.cat_file(f"{env.bucket}/default/from-env.txt") == b"configured by environment"
    )
