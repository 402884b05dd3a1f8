"""Who does the work, as the transfer log and the session leases name it."""

import os
import socket
import threading


def process_id() -> str:
    """host:pid, what every worker id of this process begins with."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_id() -> str:
    """host:pid:thread, the name a worker goes by in the log's worker_id column."""
    name = threading.current_thread().name
    return f"{process_id()}:{name}"[:100]
