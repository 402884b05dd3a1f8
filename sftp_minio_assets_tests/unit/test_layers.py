"""The Dagster-free core holds: every module below defs/ imports without dagster (the layers
themselves are checked by `lint-imports` in CI, with the contracts in pyproject.toml)."""

import subprocess
import sys

from sftp_minio_assets_tests.support import PROJECT

BELOW_DEFS = ["core", "sftp", "s3", "db", "transfer", "policy", "worker"]


def test_every_module_below_the_dagster_adapters_imports_without_dagster():
    program = f"""
import importlib, pkgutil, sys
import sftp_minio_assets
loaded = []
for layer in {BELOW_DEFS!r}:
    package = importlib.import_module("sftp_minio_assets." + layer)
    for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
        loaded.append(module.name)
print(len(loaded), sorted(m for m in sys.modules if m.split(".")[0].startswith("dagster")))
"""
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    count, dagster_modules = done.stdout.split(" ", 1)
    files = [
        path
        for layer in BELOW_DEFS
        for path in (PROJECT / "sftp_minio_assets" / layer).glob("*.py")
        if path.name != "__init__.py"
    ]
    assert int(count) == len(files) > 0  # every module of those layers was imported
    assert dagster_modules.strip() == "[]"


def test_instance_files_written_before_the_layers_still_name_the_event_log_storage():
    from sftp_minio_assets.defs.instance_storage import PooledPostgresEventLogStorage
    from sftp_minio_assets.instance_storage import PooledPostgresEventLogStorage as by_old_name

    assert by_old_name is PooledPostgresEventLogStorage
