"""Transfer windows: the hours a partner lets us fetch its files, e.g. `20:00-06:00 Europe/Paris`.

Plain Python, no Dagster. One string holds the whole window, its time zone included, so that
the sources file, SFTP_TRANSFER_WINDOW and every message show the same thing. Outside the
window the sensor requests nothing and its tick says when the window opens; a worker handed a
file outside it anyway (a run launched by hand) waits for the opening before claiming the file,
without failing. A copy under way when the window closes finishes: cutting it would throw away
the bytes already read and leave the same file to read again.
"""

from __future__ import annotations

import logging
import re
import time as clock
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.units import duration

logger = logging.getLogger(__name__)

WINDOW = re.compile(r"(?P<start>\S+)\s*-\s*(?P<end>\S+)(?:\s+(?P<zone>\S+))?")
TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
EXPECTED = (
    "expected HH:MM-HH:MM and an optional time zone (UTC when left out), "
    "e.g. 20:00-06:00 Europe/Paris"
)
# A waiting worker looks at the clock at least this often (the clock may be set meanwhile).
LONGEST_NAP_SECONDS = 60.0


@dataclass(frozen=True)
class TransferWindow:
    """Open from `start` to `end` every day, on the wall clock of `zone`; a window whose end
    comes before its start spans midnight (20:00-06:00)."""

    text: str  # as the user wrote it, for messages
    start: time
    end: time
    zone: ZoneInfo

    @classmethod
    def parse(cls, text: str) -> TransferWindow:
        """The window `text` describes; ValueError says what is wrong and what is expected."""
        match = WINDOW.fullmatch(text.strip())
        if not match:
            raise ValueError(EXPECTED)
        start, end = _time_of_day(match["start"]), _time_of_day(match["end"])
        if start == end:
            raise ValueError(
                "its start and end are the same time; leave it unset to transfer at any hour"
            )
        name = match["zone"] or "UTC"
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {name!r}: give an IANA name such as Europe/Paris or UTC"
            ) from None
        return cls(" ".join(text.split()), start, end, zone)

    def is_open(self, now: datetime) -> bool:
        wall = now.astimezone(self.zone).time()
        if self.start < self.end:
            return self.start <= wall < self.end
        return wall >= self.start or wall < self.end

    def next_opening(self, now: datetime) -> datetime:
        """When the window opens next, in its time zone; `now` if it is open."""
        if self.is_open(now):
            return now.astimezone(self.zone)
        today = now.astimezone(self.zone).date()
        opening = datetime.combine(today, self.start, tzinfo=self.zone)
        if opening <= now:
            opening = datetime.combine(today + timedelta(days=1), self.start, tzinfo=self.zone)
        # Through UTC: a start that the wall clock skips (02:30 the night clocks go forward)
        # becomes the real instant, an hour later on the wall clock.
        return opening.astimezone(UTC).astimezone(self.zone)

    def closed(self, now: datetime) -> str | None:
        """Why nothing may be copied now, and until when; None while the window is open."""
        if self.is_open(now):
            return None
        opening = self.next_opening(now)
        shown = "%Y-%m-%d %H:%M:%S %Z" if self.start.second else "%Y-%m-%d %H:%M %Z"
        return (
            f"outside its transfer window {self.text}; next opening at "
            f"{opening.strftime(shown)} (in {duration((opening - now).total_seconds())})"
        )


def wait_until_open(
    window: TransferWindow | None,
    before_waiting: Callable[[], None],
    what: str,
    say: Callable[[str], None] | None = None,
) -> None:
    """Return once the window is open: at once when it is (or there is none); else after
    calling before_waiting() (what the caller holds that it must not hold for hours) and
    saying once (say(line), Python's logger by default), naming `what`, why and until when it
    waits."""
    if window is None:
        return
    told = False
    while (reason := window.closed(now := datetime.now(UTC))) is not None:
        if not told:
            before_waiting()
            (say or logger.warning)(f"{what}: held back: {reason}; waiting until then")
            told = True
        left = (window.next_opening(now) - now).total_seconds()
        clock.sleep(min(LONGEST_NAP_SECONDS, max(0.05, left)))


def _time_of_day(text: str) -> time:
    match = TIME_OF_DAY.fullmatch(text)
    hour, minute, second = (int(part or 0) for part in match.groups()) if match else (99, 0, 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59); {EXPECTED}")
    return time(hour, minute, second)
