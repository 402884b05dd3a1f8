"""The deployment files: what can be checked without a Docker engine or a server."""

import os
import re
import shutil
import subprocess
import sys

import yaml
from dagster._core.instance.config import dagster_instance_config

from devstack.local_stack import EVENT_BATCH_SIZE
from sftp_minio_assets.defs.resources import TransferSettings
from sftp_minio_assets_tests.support import PROJECT


def test_the_compose_file_parses_and_wires_every_service():
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "sftp", "codeserver", "webserver", "daemon"}
    for name in ("codeserver", "webserver", "daemon"):
        assert services[name]["image"] == "sftp-minio-assets:latest"
        assert services[name]["environment"]["TRANSFER_DB_URL"].startswith("postgresql://")
    for mount in services["webserver"]["volumes"] + services["postgres"]["volumes"]:
        assert (PROJECT / mount.split(":")[0]).exists(), mount
    dockerfile = (PROJECT / "Dockerfile").read_text()
    for copied in ("pyproject.toml", "sftp_minio_assets", "deploy/dagster.queued.yaml"):
        assert copied in dockerfile and (PROJECT / copied).exists()


def test_the_launcher_variants_are_valid_instances_naming_the_project_image():
    for name in ("dagster.docker.yaml", "dagster.k8s.yaml"):
        # Dagster's instance schema, keys included (the launchers are not installed here).
        config, _ = dagster_instance_config(str(PROJECT / "deploy"), name)
        launcher = config["run_launcher"]
        assert launcher["class"] in ("DockerRunLauncher", "K8sRunLauncher")
        image = launcher["config"].get("image") or launcher["config"]["job_image"]
        assert "sftp-minio-assets" in image
        assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
        # These launchers check run workers' health: a dead worker's run is resumed or failed.
        monitoring = config["run_monitoring"]
        assert monitoring["enabled"] is True
        assert monitoring["max_resume_run_attempts"] > 0
        assert monitoring["start_timeout_seconds"] > 0 and monitoring["cancel_timeout_seconds"] > 0
        assert 0 < monitoring["poll_interval_seconds"] <= 120
        assert config["run_retries"]["enabled"] is True


INSTANCE_FILES = (
    "dagster.yaml",
    "deploy/dagster.queued.yaml",
    "deploy/dagster.docker.yaml",
    "deploy/dagster.k8s.yaml",
)
STORAGES = ("run_storage", "event_log_storage", "schedule_storage")


def test_every_instance_keeps_its_event_log_on_the_pooled_storage():
    """All Dagster processes of every variant store events through one kept connection
    (instance_storage.py), with the same database settings for the three storages."""
    for name in INSTANCE_FILES:
        config = yaml.safe_load((PROJECT / name).read_text())
        assert "storage" not in config, name  # cannot be mixed with the three entries below
        event_log = config["event_log_storage"]
        assert (event_log["module"], event_log["class"]) == (
            "sftp_minio_assets.defs.instance_storage",
            "PooledPostgresEventLogStorage",
        ), name
        assert config["run_storage"]["class"] == "PostgresRunStorage", name
        assert config["schedule_storage"]["class"] == "PostgresScheduleStorage", name
        databases = [config[key]["config"]["postgres_db"] for key in STORAGES]
        assert databases[0]["scheme"] == "postgresql+psycopg2", name
        assert databases[0]["password"] == {"env": "DAGSTER_PG_PASSWORD"}, name
        assert all(db == databases[0] for db in databases), name


def test_every_process_batches_a_run_s_planned_events():
    """DAGSTER_EVENT_BATCH_SIZE is an environment variable of each Dagster process (no
    dagster.yaml setting): the image sets it for all of them (code server, daemon, webserver,
    run workers), and the local stack as the image does, above a run's partitions."""
    dockerfile = (PROJECT / "Dockerfile").read_text()
    (size,) = re.findall(r"^ENV DAGSTER_EVENT_BATCH_SIZE=(\d+)$", dockerfile, re.MULTILINE)
    assert size == EVENT_BATCH_SIZE
    assert int(size) >= TransferSettings().max_partitions_per_run


def test_the_package_installs_as_the_image_installs_it_and_loads_its_definitions(tmp_path):
    """`pip install .` as in the Dockerfile (dependencies taken from this environment), then the
    definitions load from the installed copy, away from the source tree."""
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Built from a copy: setuptools' build/ in the checkout may hold modules since removed.
    leave_out = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "node_modules")
    shutil.copytree(PROJECT, source, ignore=leave_out)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True)
    [wheel] = wheels.glob("sftp_minio_assets-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    # Only the product: the local stack and the demo (devstack/) stay in the checkout.
    assert {p.name for p in site.iterdir() if p.suffix != ".dist-info"} == {"sftp_minio_assets"}
    code = (
        "import sftp_minio_assets.definitions as d\n"
        "print(d.__file__)\n"
        "print(sorted(s.name for s in d.defs.sensors))\n"
        "print(d.defs.resolve_implicit_global_asset_job_def().executor_def.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(site),
            "SFTP_HOST": "sftp",
            "SFTP_USERNAME": "ingest",
            "MINIO_ENDPOINT_URL": "http://minio:9000",
            "MINIO_ACCESS_KEY": "minioadmin",
            "MINIO_SECRET_KEY": "secret",
            "TRANSFER_DB_URL": "postgresql://dagster@postgres/transfers",
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    installed, sensors, executor = result.stdout.strip().splitlines()[-3:]
    assert installed.startswith(str(site))
    assert "new_files_default" in sensors and "alert_on_repeated_failures" in sensors
    # A run's step runs in the run worker's process: no second process loading the code.
    assert executor == "in_process"
