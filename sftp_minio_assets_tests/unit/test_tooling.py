"""The benchmark and the development stack's tools still import and parse their arguments (CI
runs the chaos run, `make soak-short`, but not the benchmark, which takes long to measure)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
MODULES = sorted(
    f"{folder}.{path.stem}"
    for folder in ("benchmarks", "devstack")
    for path in (PROJECT / folder).glob("*.py")
    if path.stem != "__init__"
)


@pytest.mark.parametrize("module", MODULES)
def test_each_tool_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("module", ["benchmarks.run", "benchmarks.compare", "devstack.soak"])
def test_each_entry_point_answers_help(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=PROJECT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr
