"""A TCP relay that makes a link misbehave, as a real network would (no netem in this kernel):
each direction delayed, bandwidth capped, connections cut at a chosen byte or at random. Stdlib
only; in front of sshd (issues 23 and 25) or PostgreSQL, whose bytes it never parses.

It also counts the client's turns: a turn is the client sending again after it received
something since it last sent, i.e. a request that had to wait for an answer. Requests sent
together without waiting count once, so the turns of one file are its sequential round trips,
whatever the bytes are (SSH is encrypted).

A cut resets both sides (RST, as a dropped NAT entry or a killed middlebox does), so neither
end sees a clean close.

python -m devstack.tcp_relay HOST:PORT --delay-ms 20   # prints its port, relays until killed
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import random
import socket
import struct
import threading
import time

CHUNK = 256 * 1024
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class TcpRelay:
    """Listens on a free loopback port (`port`) and relays each connection to (host, port).

    delay: seconds each direction is late (up_delay/down_delay: one direction each); rate:
    bytes per second each direction carries, all connections together (None: uncapped).
    Counters: connections, most_live (connections open at once, at most), turns, cuts, and
    bytes_down (server to client) and bytes_up.
    """

    def __init__(
        self,
        host: str,
        port: int,
        delay: float = 0.0,
        *,
        up_delay: float | None = None,
        down_delay: float | None = None,
        rate: float | None = None,
    ) -> None:
        self._target = (host, port)
        self.up_delay = delay if up_delay is None else up_delay
        self.down_delay = delay if down_delay is None else down_delay
        self.rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self.turns = 0
        self.connections = 0
        self.cuts = 0
        self.most_live = 0
        self.bytes_down = 0
        self.bytes_up = 0
        self._answered: set[int] = set()  # connections whose client received since it sent
        self._live: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._cut_in: int | None = None  # bytes to pass downstream before the next cut
        self._random_cuts: float | None = None  # mean bytes between cuts
        self._random = random.Random()
        self._buckets = {True: _Bucket(), False: _Bucket()}  # upstream?
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def delay(self) -> float:
        return self.down_delay

    def reset(self) -> None:
        """Counts turns and connections open at once afresh."""
        with self._lock:
            self.turns = 0
            self.most_live = len(self._live)

    def close(self) -> None:
        """Stops listening; the connections open go on."""
        with contextlib.suppress(OSError):
            self._listener.close()

    # The faults, each callable while connections are live.

    def cut_all(self) -> int:
        """Resets every live connection now; how many."""
        with self._lock:
            live = list(self._live)
        for number in live:
            self._cut(number)
        return len(live)

    def cut_after(self, bytes_down: int) -> None:
        """Cuts the connection that carries the bytes_down-th byte downstream from now (the
        bytes before it are delivered)."""
        with self._lock:
            self._cut_in = bytes_down

    def cut_at_random(self, mean_bytes: float | None, seed: int | None = None) -> None:
        """Cuts connections at random, once every mean_bytes downstream on average
        (exponentially distributed); None stops."""
        with self._lock:
            self._random_cuts = mean_bytes
            if seed is not None:
                self._random.seed(seed)
            self._cut_in = self._next_random() if mean_bytes else None

    def _next_random(self) -> int | None:
        if not self._random_cuts:
            return None
        return max(1, int(self._random.expovariate(1 / self._random_cuts)))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                number = self.connections
                self._live[number] = (client, server)
                self.most_live = max(self.most_live, len(self._live))
            _Direction(self, number, client, server, upstream=True).start()
            _Direction(self, number, server, client, upstream=False).start()

    def _cut(self, number: int) -> None:
        with self._lock:
            pair = self._live.pop(number, None)
            if pair is None:
                return
            self.cuts += 1
        for sock in pair:
            reset(sock)

    def _ended(self, number: int) -> None:
        with self._lock:
            self._live.pop(number, None)
            self._answered.discard(number)

    def _passing(self, number: int, size: int, upstream: bool) -> int:
        """How many of size bytes may pass before a cut falls (size: none is due)."""
        with self._lock:
            if upstream:
                self.bytes_up += size
                return size
            if self._cut_in is None or self._cut_in > size:
                if self._cut_in is not None:
                    self._cut_in -= size
                self.bytes_down += size
                return size
            allowed, self._cut_in = self._cut_in, self._next_random()
            self.bytes_down += allowed
            return allowed

    def _sent_by_client(self, number: int) -> None:
        with self._lock:
            if number in self._answered:
                self.turns += 1
            self._answered.discard(number)

    def _delivered_to_client(self, number: int) -> None:
        with self._lock:
            self._answered.add(number)


class _Bucket:
    """One direction's bandwidth, shared by its connections: a token bucket of 50 ms."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free_at = 0.0

    def wait(self, size: int, rate: float | None) -> None:
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now - 0.05, self._free_at)
            self._free_at = start + size / rate
            wait = self._free_at - now
        if wait > 0:
            time.sleep(wait)


def reset(sock: socket.socket) -> None:
    """Abort the connection: RST to the peer. The thread blocked in recv() on it is woken
    first (shutdown of reading, which sends nothing): until its recv() returns, the kernel
    keeps the socket, and the peer would see nothing."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class _Direction:
    """One direction of one connection: what is read is written `delay` later, in order, at
    most at the relay's rate."""

    def __init__(
        self, relay: TcpRelay, number: int, source: socket.socket, sink: socket.socket, upstream
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

    def _delay(self) -> float:
        return self.relay.up_delay if self.upstream else self.relay.down_delay

    def _read(self) -> None:
        try:
            while data := self.source.recv(CHUNK):
                if self.upstream:
                    self.relay._sent_by_client(self.number)
                with self._ready:
                    self._count += 1
                    heapq.heappush(self._due, (time.monotonic() + self._delay(), self._count, data))
                    self._ready.notify()
        except OSError:
            pass
        with self._ready:
            self._ended = True
            self._ready.notify()

    def _write(self) -> None:
        relay = self.relay
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
                relay._buckets[self.upstream].wait(len(data), relay.rate)
                allowed = relay._passing(self.number, len(data), self.upstream)
                self.sink.sendall(data[:allowed])
                if allowed < len(data):
                    relay._cut(self.number)
                    return
                if not self.upstream:
                    relay._delivered_to_client(self.number)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.sink.shutdown(socket.SHUT_WR)
        relay._ended(self.number)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="HOST:PORT to relay to")
    parser.add_argument("--delay-ms", type=float, default=20, help="each direction's delay")
    parser.add_argument("--rate-mbps", type=float, help="each direction's cap, megabytes/s")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    rate = args.rate_mbps * 1e6 if args.rate_mbps else None
    relay = TcpRelay(host, int(port), args.delay_ms / 1000, rate=rate)
    print(relay.port, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
