"""Who does the work, as the transfer log and the session leases name it."""

import os
import socket
import threading


def process_id(pid: int | None = None) -> str:
    """host:pid, what every worker id of this process (or of process pid of this host) begins
    with."""
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def pid_here(worker: str) -> int | None:
    """The process a worker id (or process id) names, if it is of this host; else None."""
    host, _, rest = worker.partition(":")
    pid = rest.partition(":")[0]
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def gone_from_here(worker: str) -> bool:
    """Whether a worker id (or process id) names a process of this host that no longer runs:
    its leases and claims are a dead process's. False when not known (another host, a
    process of another user, an id of another form)."""
    pid = pid_here(worker)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's: running
        return False
    return False


def worker_id() -> str:
    """host:pid:thread, the name a worker goes by in the log's worker_id column."""
    name = threading.current_thread().name
    return f"{process_id()}:{name}"[:100]
