"""The run launcher of dagster.yaml: each run in a run worker process started before it.

Dagster's default launcher asks the code server to start a run worker once the run is dequeued:
a new interpreter (multiprocessing's spawn) that imports Dagster, makes the instance's storages
and loads the code before the run's first event, 2 to 3 seconds on two cores, which every drop
of files waited on. This launcher keeps a worker started ahead (run_worker.py: Dagster and the
storages loaded, waiting on its standard input) for the interpreter and working directory of
the code location, hands it the run as `dagster api execute_run` takes it (the command Dagster's
Docker and Kubernetes launchers start), and has the next one made ready once that run has ended:
not while it copies, which the loading would take CPU from. A run that finds no worker ready
(the first of a daemon that could not guess where its code is, the second of a burst) gets a new
one, which loads all before its first event as Dagster's does.

The workers are children of the process that launches the runs (the daemon), in its session.
One waiting for a run exits when that process ends (its input closes); one running a run goes
on to the run's end, as Dagster's do when their code server stops. A worker killed mid-run is
found by the sensor, as any (WORKER_TAG, sensors.py). Terminating a run (from the UI, in the
webserver's process) sends its worker SIGINT, as Dagster's code server does to its own: the run
ends CANCELED. The worker is found by the run's WORKER_TAG, which names its host and pid.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Self

import dagster as dg
from dagster._core.launcher import LaunchRunContext, RunLauncher
from dagster._core.origin import JobPythonOrigin
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from ..core.identity import pid_here, process_id
from .partitions import WORKER_TAG
from .run_worker import CODE_OPTION, VERB
from .run_worker import MODULE as WORKER_MODULE

# Where a run's code is loaded from: its interpreter and working directory.
Place = tuple[str, str]


class ReadyRunLauncher(RunLauncher, ConfigurableClass):
    """Runs each run in a worker process of this host that was started before the run was."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        self._lock = threading.Lock()
        self._ready: dict[Place, subprocess.Popen[bytes]] = {}
        self._disposed = False
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Any) -> Self:
        return cls(inst_data=inst_data)

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        super().register_instance(instance)
        if _launches_runs():  # one worker ready for the first run, where a code server is
            self._make_ready((sys.executable, os.getcwd()), code=None)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise dg.DagsterInvariantViolationError(
                f"run {run.run_id} names no code to load: it cannot be launched"
            )
        place = _place(origin)
        code = getattr(origin.repository_origin.code_pointer, "module", None)
        args = dg.serialize_value(
            ExecuteRunArgs(
                job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref()
            )
        )
        with self._lock:
            worker = self._ready.pop(place, None)
        if worker is None or not _hand(worker, args):  # none ready, or it died waiting
            worker = self._start(place, code=None)
            if not _hand(worker, args):
                raise dg.DagsterInvariantViolationError(
                    f"run {run.run_id}: its worker (pid {worker.pid}) exited before it took "
                    "the run; the daemon's log says why"
                )
        # Named at once (the run names it again as it starts): terminate finds it by this.
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: process_id(worker.pid)})
        self._instance.report_engine_event(
            f"Run worker started (pid {worker.pid}).", run, cls=self.__class__
        )
        threading.Thread(
            target=self._after,
            args=(worker, place, code),
            name=f"run worker {worker.pid}",
            daemon=True,
        ).start()

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        worker = run.tags.get(WORKER_TAG, "")
        pid = pid_here(worker)
        if pid is None or not _runs_worker(pid):
            self._instance.report_engine_event(
                f"No run worker of this host to stop (its tag {WORKER_TAG}: {worker!r}): it "
                "is gone, or runs on another host.",
                run,
                cls=self.__class__,
            )
            return False
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return False
        return True

    def dispose(self) -> None:
        with self._lock:
            self._disposed = True
            ready, self._ready = list(self._ready.values()), {}
        for worker in ready:
            _close(worker)  # it exits, having run nothing, once loaded
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()

    def _after(self, worker: subprocess.Popen[bytes], place: Place, code: str | None) -> None:
        """Once the worker's run has ended (and the worker is reaped), one ready for the next,
        with the run's code loaded."""
        worker.wait()
        self._make_ready(place, code)

    def _make_ready(self, place: Place, code: str | None) -> None:
        with self._lock:
            waiting = self._ready.get(place)
            if self._disposed or (waiting is not None and waiting.poll() is None):
                return
            self._ready[place] = self._start(place, code)

    def _start(self, place: Place, code: str | None) -> subprocess.Popen[bytes]:
        executable, directory = place
        ref = self._instance.get_ref()
        storages = (ref.run_storage_data, ref.event_storage_data, ref.schedule_storage_data)
        modules = [data.module_name for data in storages if data is not None]
        preload = [CODE_OPTION, code] if code else []
        return subprocess.Popen(
            [executable, "-m", WORKER_MODULE, VERB, *preload, *modules],
            stdin=subprocess.PIPE,
            cwd=directory,
        )


class QueuedRunCoordinator(dg.QueuedRunCoordinator):
    """Dagster's queued run coordinator, which in the daemon also loads the run launcher as the
    daemon starts (Dagster loads it at the first launch): ReadyRunLauncher then has a worker
    ready for the first run too."""

    def register_instance(self, instance: dg.DagsterInstance) -> None:
        super().register_instance(instance)
        if _launches_runs():
            instance.run_launcher  # noqa: B018 (loading it is the point)


def _hand(worker: subprocess.Popen[bytes], args: str) -> bool:
    """Give the worker its run; False if it is no longer there to take it."""
    try:
        assert worker.stdin is not None
        worker.stdin.write(args.encode() + b"\n")
        worker.stdin.close()
    except (BrokenPipeError, ValueError):
        return False
    return worker.poll() is None


def _close(worker: subprocess.Popen[bytes]) -> None:
    if worker.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            worker.stdin.close()


def _runs_worker(pid: int) -> bool:
    """Whether process pid is a run worker (not another that took a dead worker's pid)."""
    try:
        return WORKER_MODULE.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _place(origin: JobPythonOrigin) -> Place:
    repository = origin.repository_origin
    directory = getattr(repository.code_pointer, "working_directory", None) or os.getcwd()
    return repository.executable_path or sys.executable, directory


def _launches_runs() -> bool:
    """Whether this process is the Dagster daemon (`dagster-daemon`, `python -m dagster._daemon`),
    which launches the queued runs; the webserver and the command line load the launcher too,
    and never launch with dagster.yaml's queued run coordinator."""
    main = sys.argv[0] if sys.argv else ""
    return os.path.basename(main) == "dagster-daemon" or main.endswith(
        os.path.join("dagster", "_daemon", "__main__.py")
    )
