"""A TCP relay that puts a partner far away: each direction delayed by a fixed time, as a link
with that round trip would (no netem in this kernel). Stdlib only.

It also counts the client's turns: a turn is the client sending again after it received
something since it last sent, i.e. a request that had to wait for an answer. Requests sent
together without waiting count once, so the turns of one file are its sequential round trips,
whatever the bytes are (SSH is encrypted; nothing is parsed).

python -m devstack.delay_relay HOST:PORT --delay-ms 20   # prints its own port, relays until killed
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import socket
import threading
import time

CHUNK = 256 * 1024


class DelayRelay:
    """Listens on a free loopback port (`port`) and relays each connection to (host, port),
    each direction `delay` seconds late."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self._target = (host, port)
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.turns = 0
        self.connections = 0
        self._answered: set[int] = set()  # connections whose client received since it sent
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.turns = 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                number = self.connections
            _Direction(self, number, client, server, upstream=True).start()
            _Direction(self, number, server, client, upstream=False).start()

    def _sent_by_client(self, number: int) -> None:
        with self._lock:
            if number in self._answered:
                self.turns += 1
            self._answered.discard(number)

    def _delivered_to_client(self, number: int) -> None:
        with self._lock:
            self._answered.add(number)


class _Direction:
    """One direction of one connection: what is read is written `delay` later, in order."""

    def __init__(
        self, relay: DelayRelay, number: int, source: socket.socket, sink: socket.socket, upstream
    ) -> None:
        self.relay, self.number = relay, number
        self.source, self.sink, self.upstream = source, sink, upstream
        self._due: list[tuple[float, int, bytes]] = []
        self._count = 0
        self._ready = threading.Condition()
        self._ended = False

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        try:
            while data := self.source.recv(CHUNK):
                if self.upstream:
                    self.relay._sent_by_client(self.number)
                with self._ready:
                    self._count += 1
                    heapq.heappush(
                        self._due, (time.monotonic() + self.relay.delay, self._count, data)
                    )
                    self._ready.notify()
        except OSError:
            pass
        with self._ready:
            self._ended = True
            self._ready.notify()

    def _write(self) -> None:
        try:
            while True:
                with self._ready:
                    while not self._due and not self._ended:
                        self._ready.wait()
                    if not self._due:
                        break
                    due, _, data = heapq.heappop(self._due)
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                self.sink.sendall(data)
                if not self.upstream:
                    self.relay._delivered_to_client(self.number)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.sink.shutdown(socket.SHUT_WR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, default=20, help="each direction's delay")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    relay = DelayRelay(host, int(port), args.delay_ms / 1000)
    print(relay.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
