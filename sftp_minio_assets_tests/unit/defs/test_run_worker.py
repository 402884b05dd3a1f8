"""The run worker started before its run (defs/run_worker.py): it never runs code older than
the files on disk. The launcher's side, through a real daemon: integration/test_run_launcher.py."""

import os
import subprocess
import sys
import time
from pathlib import Path

from sftp_minio_assets.defs import run_worker
from sftp_minio_assets.defs.run_worker import CODE_OPTION, MODULE, VERB
from sftp_minio_assets_tests.support import PROJECT


def test_the_files_the_code_read_are_known_and_a_change_to_one_is_seen(tmp_path, monkeypatch):
    (tmp_path / "code_here.py").write_text("import helper_here\n")
    (tmp_path / "helper_here.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    read = run_worker._preload("code_here")
    assert set(read) == {str(tmp_path / "code_here.py"), str(tmp_path / "helper_here.py")}
    assert not run_worker._changed(read)
    helper = tmp_path / "helper_here.py"
    os.utime(helper, ns=(time.time_ns(), os.stat(helper).st_mtime_ns + 1_000_000))
    assert run_worker._changed(read)
    helper.unlink()
    assert run_worker._changed(read)


def test_code_that_fails_to_import_is_left_to_the_run(tmp_path, monkeypatch):
    (tmp_path / "broken_here.py").write_text("raise RuntimeError('no settings')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_worker._preload("broken_here") == {}
    assert run_worker._parse([CODE_OPTION, "a.b", "x.storage"]) == ("a.b", ["x.storage"])
    assert run_worker._parse(["x.storage"]) == (None, ["x.storage"])
    assert run_worker._parse([VERB, CODE_OPTION, "a.b"]) == ("a.b", [])


def test_a_worker_whose_code_changed_while_it_waited_starts_over_before_its_run(tmp_path):
    """The worker loads the code, the file changes, a run comes: the worker becomes a new
    interpreter (the same process) that has not loaded it, which then takes the run (here an
    unreadable one, refused by `dagster api execute_run`'s parsing)."""
    loaded = tmp_path / "loaded"
    code = tmp_path / "changing_code.py"
    code.write_text(f"open({str(loaded)!r}, 'a').write('import\\n')\n")
    worker = subprocess.Popen(
        [sys.executable, "-m", MODULE, VERB, CODE_OPTION, "changing_code"],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(PROJECT)])},
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not loaded.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded.read_text() == "import\n"
    os.utime(code, ns=(time.time_ns(), os.stat(code).st_mtime_ns + 1_000_000))
    _, stderr = worker.communicate(b"not a run\n", timeout=60)
    assert f"run worker {worker.pid}: changing_code's files changed" in stderr.decode()
    assert worker.returncode != 0  # the run's arguments were refused, after the start-over
    assert loaded.read_text() == "import\n"  # the new interpreter did not load the code


def test_a_worker_whose_input_closes_before_a_run_exits_having_run_nothing():
    worker = subprocess.run(
        [sys.executable, "-m", MODULE], cwd=PROJECT, input=b"", capture_output=True, timeout=60
    )
    assert worker.returncode == 0, worker.stderr
    assert worker.stderr == b""


def test_the_worker_module_is_where_the_launcher_says():
    assert Path(run_worker.__file__).resolve() == PROJECT.joinpath(*MODULE.split(".")).with_suffix(
        ".py"
    )
