"""Reading one remote file: a fixed window of pipelined reads, and the check after the read
sent with its last reads (the SFTP exchanges themselves are wire.py's)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress

import paramiko

from .client import remote_bytes
from .wire import PipelinedReads

# Pipelined reads: requests in flight, and their size. OpenSSH serves up to 255 KiB per read;
# measured here (256 MiB, loopback): 16 x 255 KiB ~170 MB/s, 128 x 32 KiB ~100, paramiko's own
# prefetch ~95. A server that answers less is asked for smaller reads from then on.
READ_WINDOW = 16
READ_REQUEST = 255 * 1024
# Far away, a window carries at most its bytes per round trip (16 x 255 KiB at 40 ms: 100 MB/s,
# measured 91): it grows, once the first answer has shown how long one takes, to carry READ_RATE
# over that wait, up to MAX_READ_WINDOW (client.CHANNEL_WINDOW has room for it). Near, it stays:
# more requests in flight there cost CPU and gain nothing. Under a bandwidth cap, the answer is
# in by the time the paced requests are all sent: it stays too.
READ_RATE = 256 * 1024 * 1024  # bytes per second
MAX_READ_WINDOW = 64


def window_for(first_answer_seconds: float, request_size: int) -> int:
    """Requests in flight that carry READ_RATE when an answer takes this long."""
    wanted = math.ceil(first_answer_seconds * READ_RATE / request_size)
    return max(READ_WINDOW, min(MAX_READ_WINDOW, wanted))


class FinalStat:
    """The file's attributes by its path once it is read: the last check before its copy is
    committed. read_chunks sends the request with the file's last reads, so a far server
    answers both in one round trip (and after the reads: a server answers a session's requests
    in order); asked before that, or after more reads, it is a request of its own."""

    def __init__(self, sftp: paramiko.SFTPClient, path: str | bytes) -> None:
        self._sftp, self._path = sftp, path
        self._sent: tuple[PipelinedReads, int] | None = None

    def send_with(self, reads: PipelinedReads) -> None:
        path = self._path if isinstance(self._path, bytes) else remote_bytes(self._path)
        self._sent = (reads, reads.send_stat(path))

    def forget(self) -> None:
        """More was read after it was sent: its answer is not the last word."""
        self._sent = None

    def attrs(self) -> paramiko.SFTPAttributes:
        if self._sent is None:
            return self._sftp.stat(self._path)
        (reads, number), self._sent = self._sent, None
        return reads.receive_attrs(number)


def read_chunks(
    f: paramiko.SFTPFile,
    size: int,
    window: int | None = None,
    request_size: int = READ_REQUEST,
    *,
    start: int = 0,
    align: int | None = None,
    pace: Callable[[int], None] | None = None,
    final: FinalStat | None = None,
) -> Iterator[bytes]:
    """The file's bytes from `start` up to `size`, in order, `window` read requests in flight
    (None: READ_WINDOW, grown by window_for once the first answer is in).

    paramiko's own prefetch books every request of the file up front and buffers whatever
    arrives, however slowly it is consumed (memory grows with the file), and its cap on
    concurrent requests polls with sleeps (6 MB/s at 64). This keeps a fixed window instead:
    memory is window x request_size whatever the file size. Stops early at end of file (the
    caller compares sizes). align: no read crosses a multiple of it (resumable parts end
    there). pace(length) is called before each request (the bandwidth cap waits there).
    final: sent with the last read.
    """
    reads = PipelinedReads(f)
    in_flight: deque[tuple[int, int, int]] = deque()  # (request number, offset, length)
    offset = start
    adapt = window is None
    window = READ_WINDOW if window is None else window
    try:
        while offset < size or in_flight:
            while offset < size and len(in_flight) < window:
                length = min(request_size, size - offset)
                if align:
                    length = min(length, align - offset % align)
                if pace is not None:
                    pace(length)
                in_flight.append((reads.send(offset, length), offset, length))
                offset += length
                if offset >= size and final is not None:
                    final.send_with(reads)
            number, at, length = in_flight.popleft()
            waited = time.monotonic()
            data = reads.receive(number)
            if data is None:  # the file ended early: the caller sees the size
                return
            if adapt:  # the first answer's wait, once all were asked for: about a round trip
                window, adapt = window_for(time.monotonic() - waited, request_size), False
            yield data
            if 0 < len(data) < length:  # the server caps its reads: ask for the rest, and less
                request_size = len(data)
                if final is not None:
                    final.forget()
                yield from _read_rest(f, at + len(data), length - len(data))
    finally:
        with suppress(Exception):  # must not hide the error that ended the read
            reads.discard(number for number, _, _ in in_flight)


def _read_rest(f: paramiko.SFTPFile, offset: int, length: int) -> Iterator[bytes]:
    f.seek(offset)
    while length > 0:
        data = f.read(length)
        if not data:
            return
        length -= len(data)
        yield data
