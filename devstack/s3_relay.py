"""An HTTP relay in front of the S3 server that misbehaves as stores do under load: it answers a
chosen share of requests with `503 SlowDown` (with Retry-After) or `500 InternalError`, resets
the connection before or in the middle of a request's body, or stalls the response past the
client's timeout. Stdlib only; the faults are rules set while it runs (issue 25).

Requests are framed (HTTP/1.1, Content-Length or chunked bodies; clients do not pipeline), the
replies passed on as they come. A stalled request is sent on to the server, which acts on it;
only its answer is held back, as when a store's reply is lost on the way: the client times out
on a request that took effect.

    relay = S3Relay(stack.s3.endpoint_url)
    relay.inject("slowdown", 0.3, seconds=60)          # 30% of requests for a minute
    relay.inject("reset_mid_body", count=1, match="partNumber=")   # the next part
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from devstack.tcp_relay import reset as abort

CHUNK = 256 * 1024
FAULTS = ("slowdown", "internal", "reset", "reset_mid_body", "stall")
_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal "
                 "error. Please try again."),
}  # fmt: skip


@dataclass
class Rule:
    fault: str
    fraction: float
    count: int | None  # faults left to inject; None: no limit
    until: float | None  # time.monotonic() after which the rule is over
    match: re.Pattern | None  # on "METHOD /path?query"

    def applies(self, request_line: str, now: float) -> bool:
        if self.until is not None and now > self.until:
            return False
        if self.count is not None and self.count <= 0:
            return False
        return self.match is None or bool(self.match.search(request_line))


class S3Relay:
    """Listens on a free loopback port (`endpoint_url`) and relays to the S3 server at target.

    Counters: requests (by method), injected (by fault), connections; history: each request's
    (time.monotonic(), request line, fault or None)."""

    def __init__(self, target: str, retry_after: float | None = 1, seed: int | None = None):
        url = urlsplit(target)
        self._target = (url.hostname, url.port or 80)
        self.retry_after = retry_after  # the SlowDown answers' Retry-After, seconds
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._random = random.Random(seed)
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.connections = 0
        self.history: list[tuple[float, str, str | None]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def inject(
        self,
        fault: str,
        fraction: float = 1.0,
        *,
        count: int | None = None,
        seconds: float | None = None,
        match: str | None = None,
    ) -> None:
        """From now on, answer `fraction` of the requests whose request line ("PUT
        /bucket/key?partNumber=2&uploadId=...") matches `match` with the fault: at most `count`
        times, for `seconds`. Rules set earlier are tried first."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}: one of {', '.join(FAULTS)}")
        until = time.monotonic() + seconds if seconds is not None else None
        rule = Rule(fault, fraction, count, until, re.compile(match) if match else None)
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()

    def resent_sooner_than(self, seconds: float) -> list[tuple[str, float]]:
        """Requests sent again less than `seconds` after a SlowDown answer to them: (request
        line, seconds after)."""
        with self._lock:
            history = list(self.history)
        sooner = []
        for i, (at, line, fault) in enumerate(history):
            if fault != "slowdown":
                continue
            again = next((t for t, other, _ in history[i + 1 :] if other == line), None)
            if again is not None and again - at < seconds:
                sooner.append((line, again - at))
        return sooner

    def _choose(self, request_line: str) -> str | None:
        now = time.monotonic()
        chosen = None
        with self._lock:
            self.requests[request_line.split(" ", 1)[0]] += 1
            for rule in self._rules:
                if rule.applies(request_line, now) and self._random.random() < rule.fraction:
                    if rule.count is not None:
                        rule.count -= 1
                    self.injected[rule.fault] += 1
                    chosen = rule.fault
                    break
            self.history.append((now, request_line, chosen))
        return chosen

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=_Connection(self, client).serve, daemon=True).start()


class _Connection:
    """One client connection and its own connection to the server."""

    def __init__(self, relay: S3Relay, client: socket.socket) -> None:
        self.relay, self.client = relay, client
        self.server: socket.socket | None = None
        self._buffer = b""
        self._write_lock = threading.Lock()
        self._held = threading.Event()  # the server's answers are not passed on

    def serve(self) -> None:
        try:
            while self._request():
                pass
        except OSError:
            pass
        finally:
            self._close()

    def _close(self, reset: bool = False) -> None:
        for sock in (self.client, self.server):
            if sock is None:
                continue
            if reset:  # RST to the peer (tcp_relay's)
                abort(sock)
                continue
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # wakes the thread in recv() on it
            with contextlib.suppress(OSError):
                sock.close()

    def _request(self) -> bool:
        """Relays (or answers) one request; False once the connection is over."""
        head = self._read_head()
        if head is None:
            return False
        request_line, headers = _parse(head)
        fault = self.relay._choose(request_line)
        expect = headers.get("expect", "").lower() == "100-continue"
        if fault in _ERRORS:
            if not expect:  # the body comes anyway: read it, the connection stays usable
                for _ in self._body(headers):
                    pass
            self._answer(fault, request_line.startswith("HEAD "), close=expect)
            return not expect
        if fault == "reset":
            self._close(reset=True)
            return False
        server = self._server()
        server.sendall(head)
        if fault == "stall":
            self._held.set()
        sent, half = 0, _length(headers) // 2
        for piece in self._body(headers):
            if fault == "reset_mid_body" and sent + len(piece) >= half:
                server.sendall(piece[: max(0, half - sent)])
                self._close(reset=True)
                return False
            server.sendall(piece)
            sent += len(piece)
        if fault == "reset_mid_body":  # no body to cut: reset once the request is sent
            self._close(reset=True)
            return False
        if fault == "stall":  # until the client gives up on it
            while self.client.recv(CHUNK):
                pass
            return False
        return True

    def _server(self) -> socket.socket:
        if self.server is None:
            self.server = socket.create_connection(self.relay._target)
            threading.Thread(target=self._pump, args=(self.server,), daemon=True).start()
        return self.server

    def _pump(self, server: socket.socket) -> None:
        """The server's answers, passed on as they come (held ones dropped)."""
        try:
            while data := server.recv(CHUNK):
                if not self._held.is_set():
                    with self._write_lock:
                        self.client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)

    def _answer(self, fault: str, head_only: bool, close: bool) -> None:
        status, reason, code, message = _ERRORS[fault]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            "<RequestId>s3-relay</RequestId></Error>"
        ).encode()
        lines = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Type: application/xml",
            f"Content-Length: {len(body)}",
            f"Connection: {'close' if close else 'keep-alive'}",
        ]
        if fault == "slowdown" and self.relay.retry_after is not None:
            lines.append(f"Retry-After: {self.relay.retry_after:g}")
        reply = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
        with self._write_lock:
            self.client.sendall(reply)

    def _recv(self) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        return self.client.recv(CHUNK)

    def _read_head(self) -> bytes | None:
        data = self._buffer
        self._buffer = b""
        while b"\r\n\r\n" not in data:
            more = self.client.recv(CHUNK)
            if not more:
                return None
            data += more
        end = data.index(b"\r\n\r\n") + 4
        self._buffer = data[end:]
        return data[:end]

    def _body(self, headers: dict[str, str]):
        """The request's body, in pieces as they arrive (chunked bodies with their framing)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            yield from self._chunked()
            return
        left = _length(headers)
        while left > 0:
            data = self._recv()
            if not data:
                raise ConnectionError("the client closed in the middle of a body")
            piece, rest = data[:left], data[left:]
            if rest:
                self._buffer = rest
            left -= len(piece)
            yield piece

    def _chunked(self):
        data = b""
        while True:
            while b"\r\n" not in data:
                more = self._recv()
                if not more:
                    raise ConnectionError("the client closed in the middle of a body")
                data += more
            line, _, data = data.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            if size == 0:  # the trailers, up to an empty line
                while b"\r\n\r\n" not in b"\r\n" + data:
                    more = self._recv()
                    if not more:
                        raise ConnectionError("the client closed in the middle of a body")
                    data += more
                end = (b"\r\n" + data).index(b"\r\n\r\n") + 2
                yield line + b"\r\n" + data[:end]
                self._buffer = data[end:]
                return
            need = size + 2  # the chunk and its CRLF
            while len(data) < need:
                more = self._recv()
                if not more:
                    raise ConnectionError("the client closed in the middle of a body")
                data += more
            yield line + b"\r\n" + data[:need]
            data = data[need:]


def _parse(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _length(headers: dict[str, str]) -> int:
    return int(headers.get("content-length", "0") or 0)
