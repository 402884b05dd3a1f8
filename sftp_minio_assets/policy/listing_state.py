"""What a sensor's listing remembers from one tick to the next (in the transfer log):

- where a listing longer than a tick goes on: a tick stops starting directory reads once it
  has listed for `seconds`, and the next tick reads the directories it left, then starts over
  from the root (so no tick nears Dagster's sensor time-out, whatever the tree's size);
- with listing fast, which directories may be left unread (sftp.listing.scan_tree's
  recorded): those settled, whose mtime has not changed; every `full_every_hours` a listing
  reads them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..core.keys import KeyTooLong, decode_key, encode_key
from ..db.sensor_memory import DirectoryMemory, SensorMemory
from ..sftp.listing import Recorded, Resume
from .survey import Directory


@dataclass
class ListingState:
    """One tick's listing of a source: start with `resume` and `recorded` (scan_tree's), then
    `record` what it saw."""

    source: str
    resume: Resume
    recorded: Recorded | None  # None: every directory is read
    full: bool  # a full listing: every directory read (in this tick or the round it goes on)
    memory: DirectoryMemory | None  # the fast listing's, None for a full-listing source
    began_round: bool  # this tick starts from the root

    @classmethod
    def load(
        cls,
        memory: SensorMemory,
        source: str,
        *,
        fast: bool,
        full_every_hours: float,
        seconds: float,
    ) -> ListingState:
        pending, round_full = memory.pending(source)
        directories = memory.directories(source) if fast else None
        if pending:
            full = round_full or directories is None
        else:
            age = directories.full_age if directories is not None else None
            full = age is None or age >= full_every_hours * 3600
        recorded = None
        if directories is not None and not full:
            recorded = {decode_key(key): row for key, row in directories.recorded.items()}
        start = [(decode_key(key), mtime) for key, mtime in pending]
        resume = Resume(start, time.monotonic() + seconds)
        return cls(source, resume, recorded, full, directories, not pending)

    def record(self, memory: SensorMemory, seen: list[Directory]) -> None:
        """What the next tick needs: the directories left to read; with listing fast, the
        directories seen, and those found gone forgotten."""
        left = _keyed(self.resume.left)
        if left or not self.began_round:  # else nothing was pending, nor is
            memory.record_pending(self.source, left, self.full)
        if self.memory is None:
            return
        memory.record_directories(
            self.source,
            self.memory.started,
            [(d.key, d.mtime, d.settled) for d in seen if d.read],
            _gone(self.memory.recorded, seen, {key for key, _ in left}),
            full_listing=self.full and self.began_round,
        )

    @property
    def left(self) -> int:
        """Directories left for the next tick."""
        return len(self.resume.left)


def _keyed(directories: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """(path key, mtime) of each; a path too long to be a key is dropped (its files could
    not be partitions either)."""
    keyed = []
    for path, mtime in directories:
        try:
            keyed.append((encode_key(path), mtime))
        except KeyTooLong:
            continue
    return keyed


def _gone(recorded: Recorded, seen: list[Directory], left: set[str]) -> list[str]:
    """The recorded directories this tick found gone: not seen, though a directory above them
    was read (and listed what it holds now), and none left for the next tick on the way."""
    seen_keys = {d.key for d in seen}
    read = {d.key for d in seen if d.read}
    gone = []
    for key in recorded:
        if key in seen_keys or key in left:
            continue
        parts = key.split("/")
        above = ["", *("/".join(parts[:n]) for n in range(1, len(parts)))]
        if any(a in read for a in above) and not any(a in left for a in above):
            gone.append(key)
    return gone
