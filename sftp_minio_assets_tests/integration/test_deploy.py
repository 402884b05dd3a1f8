"""The deployment's instances, as the default launcher loads them, on the stack's PostgreSQL.
(The deployment files checked without a Docker engine or a server: unit/test_deploy.py.)"""

import os
import subprocess
import sys

import pytest

from sftp_minio_assets_tests.support import PROJECT


@pytest.mark.integration
@pytest.mark.parametrize("name", ["deploy/dagster.queued.yaml", "dagster.yaml"])
def test_the_instances_of_the_default_launcher_load_with_limits_and_monitoring(
    stack, tmp_path, name
):
    """The instance as a real one against the stack's PostgreSQL: per-source limits, and the
    daemon's run monitoring on, with no resume (the default launcher cannot resume a run)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((PROJECT / name).read_text())
    code = (
        "import dagster as dg\n"
        "with dg.DagsterInstance.get() as instance:\n"
        "    limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits\n"
        "    print(limits[0]['key'], limits[0]['limit'])\n"
        "    print(instance.run_monitoring_enabled,\n"
        "          'MONITORING' in instance.get_required_daemon_types(),\n"
        "          instance.run_monitoring_start_timeout_seconds,\n"
        "          instance.run_monitoring_cancel_timeout_seconds,\n"
        "          instance.run_monitoring_max_resume_run_attempts)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **stack.env(), "DAGSTER_HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    limits, monitoring = result.stdout.strip().splitlines()[-2:]
    assert limits.split() == ["sftp_minio_assets/source", "3"]
    assert monitoring.split() == ["True", "True", "90", "180", "0"]
