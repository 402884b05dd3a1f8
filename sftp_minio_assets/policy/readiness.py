"""When a listed file is complete, besides its age: its ready marker, and a stable listing.

Partners say "this file is complete" in two common ways, and a third needs no help from them:
- a per-file marker written after the file: `data.csv.done` ({name}.done) or `data.ok`
  ({stem}.ok), next to it;
- one marker per directory, written after all its files (`_SUCCESS`, as Spark and Hadoop do);
- no marker at all: the file is taken once two listings, a sensor tick apart, saw the same size
  and mtime (require_stable_listing).
A file stamped in the future (the server's clock, or the writer's, ahead of this one) has no
age to tell: it is taken once listings saw it unchanged for the minimum age (Readiness.settled).
Plain functions of paths and listings, no I/O: the sensor's plan (discovery.py) and the
worker's after-copy action (worker.py) share them.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from string import Formatter

from ..sftp.client import RemoteFile

PLACEHOLDERS = ("name", "stem")


def marker_problem(pattern: str) -> str | None:
    """What is wrong with a ready_marker pattern, if anything."""
    expected = (
        'must be a file name next to the file, with {name} (its name, e.g. "{name}.done") or '
        '{stem} (its name without the last suffix, e.g. "{stem}.ok"), or one plain name per '
        'directory, e.g. "_SUCCESS"'
    )
    try:
        parts = list(Formatter().parse(pattern))
    except ValueError:
        return expected
    literal = "".join(text for text, _, _, _ in parts)
    if not pattern.strip() or "/" in pattern or pattern in (".", ".."):
        return expected
    named = [(name, spec, conv) for _, name, spec, conv in parts if name is not None]
    if any(name not in PLACEHOLDERS or spec or conv for name, spec, conv in named):
        return f"{expected}; the only placeholders are {{name}} and {{stem}}"
    if named and not literal:
        return f"{expected}; with text besides the placeholder, or every file is a marker"
    return None


@dataclass(frozen=True)
class ReadyMarker:
    """A ready_marker pattern: which file says that another is complete.

    Any file whose name matches the pattern is a marker, never copied. With {name} a marker
    covers one file; with {stem}, the files of its directory that share that stem; a plain
    name (_SUCCESS) covers every file of its directory.
    """

    pattern: str
    _regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if problem := marker_problem(self.pattern):
            raise ValueError(f"ready_marker {self.pattern!r}: {problem}")
        regex = "".join(
            re.escape(text) + ("(.+)" if name else "")
            for text, name, _, _ in Formatter().parse(self.pattern)
        )
        object.__setattr__(self, "_regex", re.compile(regex, re.DOTALL))

    @property
    def per_file(self) -> bool:
        """Whether each marker covers exactly one file (so it may go once that one is copied)."""
        return "{name}" in self.pattern

    def is_marker(self, path: str) -> bool:
        return self._regex.fullmatch(posixpath.basename(path)) is not None

    def marker_of(self, path: str) -> str:
        """The marker that says the file at path (relative to the root) is complete."""
        directory, name = posixpath.split(path)
        stem = PurePosixPath(name).stem  # data.csv: data; archive.tar.gz: archive.tar
        return posixpath.join(directory, self.pattern.format(name=name, stem=stem))


@dataclass(frozen=True)
class Readiness:
    """What one tick knows of whether its listed files are complete, besides their age.

    markers: each marker listed, by path, and its mtime (None: no marker is required);
    sightings: what the previous ticks saw of the new or changed files they held back, by
    partition key: their size and mtime ("size:mtime"), and for how many seconds listings have
    seen them so; stable_listing: whether every new or changed file needs a second
    listing that sees it the same (require_stable_listing). A file stamped in the future always
    does (settled).
    """

    marker: ReadyMarker | None = None
    markers: Mapping[str, int] = field(default_factory=dict)
    sightings: Mapping[str, tuple[str, float]] = field(default_factory=dict)
    stable_listing: bool = False

    @classmethod
    def of(
        cls,
        files: Iterable[RemoteFile],
        marker: ReadyMarker | None,
        sightings: Mapping[str, tuple[str, float]] | None = None,
        stable_listing: bool = False,
    ) -> Readiness:
        markers = {f.path: f.mtime for f in files if marker.is_marker(f.path)} if marker else {}
        return cls(marker, markers, sightings or {}, stable_listing)

    def is_marker(self, path: str) -> bool:
        return self.marker is not None and self.marker.is_marker(path)

    def waits_for_marker(self, file: RemoteFile) -> bool:
        """Whether the file's marker is missing, or older than the file: a file rewritten after
        its marker was written is not known to be complete until the marker is written again."""
        if self.marker is None:
            return False
        written = self.markers.get(self.marker.marker_of(file.path))
        return written is None or written < file.mtime

    def stable(self, key: str, file: RemoteFile) -> bool:
        """Whether the previous tick saw this new or changed file with the same size and mtime."""
        return self.settled(key, file, 0)

    def settled(self, key: str, file: RemoteFile, min_age_seconds: float) -> bool:
        """For a file stamped in the future, whose age its mtime cannot tell: whether listings
        saw it with this size and mtime for min_age_seconds at least, and at least twice: the
        age gate, measured from its first sighting instead."""
        seen = self.sightings.get(key)
        return seen is not None and seen[0] == file.signature and seen[1] >= min_age_seconds
