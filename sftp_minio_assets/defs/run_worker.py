"""A run worker started before its run: `python -m sftp_minio_assets.defs.run_worker execute_run
[--code MODULE] [STORAGE_MODULE...]`.

ReadyRunLauncher (run_launcher.py) starts one ahead of each run. It loads what every run worker
loads before its run's first event, two seconds of CPU in Dagster's own: Dagster with its
command line's run entry, the instance's storage modules (from dagster.yaml), SQLAlchemy's
PostgreSQL dialect and, with --code, the code location's module (the previous run's). It then
waits for its run: one line on its standard input, the ExecuteRunArgs that `dagster api
execute_run` takes, and does what that command does, in this process.

A run never runs code older than the files on disk, as with Dagster's workers, which import it
at the run's start: if a file the code's import read has changed since (a deployment, an edit),
the worker starts over as a new interpreter (exec, same process) that loads the code afresh.
Its input closed before a line came (the launcher's process ended, or it stops the workers it
keeps ready): it exits, having run nothing.
"""

import contextlib
import importlib
import os
import sys
import tempfile

MODULE = "sftp_minio_assets.defs.run_worker"
# Its first argument, the Dagster command whose work it does: what finds Dagster's run workers by
# their command line (`dagster api execute_run`; an operator's `pgrep -f execute_run`) finds it.
VERB = "execute_run"
CODE_OPTION = "--code"


def main(argv: list[str]) -> None:
    code, storages = _parse(argv)
    from dagster._cli.api import execute_run_command

    for module in storages:
        importlib.import_module(module)
    with contextlib.suppress(ImportError):  # what a storage's first engine loads
        import sqlalchemy.dialects.postgresql.psycopg2  # noqa: F401
    read = _preload(code) if code else {}
    try:
        line = sys.stdin.readline().strip()
    except KeyboardInterrupt:  # stopped with its process group while it waited
        return
    if not line:
        return
    if _changed(read):
        print(
            f"run worker {os.getpid()}: {code}'s files changed since it loaded them; "
            "loading them afresh",
            file=sys.stderr,
        )
        _start_over(line, storages)
    # What `dagster api execute_run` does: the command Dagster's container launchers start.
    execute_run = execute_run_command.callback
    assert execute_run is not None
    execute_run(input_json=line, compressed_input_json=None)


def _parse(argv: list[str]) -> tuple[str | None, list[str]]:
    if argv[:1] == [VERB]:
        argv = argv[1:]
    if argv[:1] == [CODE_OPTION]:
        return argv[1], argv[2:]
    return None, argv


def _preload(module: str) -> dict[str, float]:
    """Import the code location's module; the files its import read, with their mtimes.
    A failure is left to the run, which imports it again and reports it as Dagster does."""
    before = set(sys.modules)
    try:
        importlib.import_module(module)
    except Exception:
        return {}
    read = {}
    for name in set(sys.modules) - before:
        path = getattr(sys.modules[name], "__file__", None)
        if path:
            with contextlib.suppress(OSError):
                read[path] = os.stat(path).st_mtime
    return read


def _changed(read: dict[str, float]) -> bool:
    for path, mtime in read.items():
        try:
            if os.stat(path).st_mtime != mtime:
                return True
        except OSError:
            return True
    return False


def _start_over(line: str, storages: list[str]) -> None:
    """Become a new worker, without the code preloaded, its input that line."""
    with tempfile.TemporaryFile() as run:
        run.write(line.encode() + b"\n")
        run.seek(0)
        os.dup2(run.fileno(), sys.stdin.fileno())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", MODULE, VERB, *storages])


if __name__ == "__main__":
    main(sys.argv[1:])
