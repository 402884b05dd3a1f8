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
    env.write("default.txt", b"with Dagster's events on the console")
    # The first run as the sensor requests it (QUIET_CONSOLE), the second with Dagster's default.
    code = (
        "from sftp_minio_assets.definitions import defs\n"
        "from sftp_minio_assets.defs.partitions import QUIET_CONSOLE\n"
        "import dagster as dg, sys\n"
        "with dg.instance_for_test() as instance:\n"
        "    instance.add_dynamic_partitions('files_default', ['from-env.txt', 'default.txt'])\n"
        "    job = defs.resolve_implicit_global_asset_job_def()\n"
        "    result = job.execute_in_process(\n"
        "        instance=instance, partition_key='from-env.txt', run_config=QUIET_CONSOLE)\n"
        "    print('--- second run ---', file=sys.stderr, flush=True)\n"
        "    again = job.execute_in_process(instance=instance, partition_key='default.txt')\n"
        "    stored = instance.fetch_materializations(dg.AssetKey(['default', 'files']), limit=5)\n"
        "    print('stored', len(stored.records), file=sys.stderr)\n"
        "    sys.exit(0 if result.success and again.success else 1)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # The sensor's runs: Dagster's events stored (both runs' materializations), none printed; the
    # project's line per file printed.
    first, second = run.stderr.split("--- second run ---")
    assert "from-env.txt" in first and "ASSET_MATERIALIZATION" not in first
    assert "ASSET_MATERIALIZATION" in second and "stored 2" in second
    assert (
        env.store.fs.cat_file(f"{env.bucket}/default/from-env.txt") == b"configured by environment"
    )
