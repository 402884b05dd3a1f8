"""A TCP relay to an HTTP server that counts what passes: the requests (by method), the
`100 Continue` answers and the connections. Stdlib only.

Used to count the requests a small file costs (integration/test_lean_client.py) and each S3
client's (benchmarks/put_cost.py). Request lines are found in the byte stream itself: send
bodies of random bytes, where a false match is out of reach.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections import Counter
from urllib.parse import urlsplit

_REQUEST_LINE = re.compile(rb"(GET|HEAD|PUT|POST|DELETE) /[^ \r\n]* HTTP/1\.1\r\n")
_CONTINUE = re.compile(rb"HTTP/1\.1 100 ")


class CountingProxy:
    """Listens on a free loopback port (endpoint_url) and relays each connection to target."""

    def __init__(self, target: str) -> None:
        url = urlsplit(target)
        self._target = (url.hostname, url.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: Counter[str] = Counter()  # method -> requests
        self.continues = 0
        self.connections = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.continues = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            for source, sink, outgoing in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._relay, args=(source, sink, outgoing), daemon=True
                ).start()

    def _relay(self, source: socket.socket, sink: socket.socket, outgoing: bool) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                seen = tail + data
                # Only matches that end in the new bytes: one may span two reads.
                pattern = _REQUEST_LINE if outgoing else _CONTINUE
                found = [m for m in pattern.finditer(seen) if m.end() > len(tail)]
                with self._lock:  # counted before passed on: before its answer can come back
                    if outgoing:
                        self.requests.update(m.group(1).decode() for m in found)
                    else:
                        self.continues += len(found)
                tail = seen[-64:]
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
