"""A source's bandwidth cap: its reads paced to max_bytes_per_second, all its copies together.

Reads are paced where they are asked for (sftp.read_chunks calls the cap before each read
request), so the partner's server never sends faster than the cap, whatever S3 does. There is no
credit for idle time: after a pause the next read waits its turn like any other, so the cap
holds over any stretch of a transfer, not only on average.

The cap is the source's, not the process's: several runs copying the same source share it.
Each process takes the part of it that its share of the source's copies in flight gives (from
the transfer log, looked at every few seconds): two runs with two files each get half each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How often a process looks at its share of the source's copies in flight.
SHARE_EVERY_SECONDS = 2.0


class BandwidthCap:
    """Call it with a read's length before asking for the read: it waits as long as the cap
    requires. Thread-safe; one per source and process."""

    def __init__(
        self,
        bytes_per_second: int,
        share: Callable[[], float] = lambda: 1.0,
        share_every_seconds: float = SHARE_EVERY_SECONDS,
    ):
        self.bytes_per_second = bytes_per_second
        self._share = share
        self._share_every = share_every_seconds
        self._rate = float(bytes_per_second)
        self._share_at = float("-inf")
        self._next = time.monotonic()  # when the next byte may be asked for
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        """This process's part of the cap, in bytes per second, as last looked at."""
        return self._rate

    def __call__(self, length: int) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._share_at >= self._share_every:
                self._share_at = now
                try:
                    share = self._share()
                except Exception:  # the log is away: keep the last share
                    share = self._rate / self.bytes_per_second
                self._rate = self.bytes_per_second * min(1.0, max(share, 0.01))
            due = max(self._next, now)
            self._next = due + length / self._rate
        if due > now:
            time.sleep(due - now)
