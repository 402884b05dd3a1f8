"""Where a file goes in the bucket when its source sets a destination template.

`destination_template: partner-a/{mtime:%Y/%m/%d}/{path}` puts each file at
MINIO_PREFIX/<the template, filled in>. The fields are the file's `path` (relative to the
source's root), `name`, `stem` and `suffix` (`report.csv.gz`: stem `report.csv`, suffix `.gz`),
`dir` (its relative directory, empty at the root), `mtime` (the remote file's, UTC), `date`
(the day it is copied, UTC) and `source`. `mtime` and `date` take a strftime format after a
colon, `%Y-%m-%d` when none is given; the other fields take no format.

A template is checked when the settings load: a field it does not know, a format strftime
does not know, or a template that does not name the file (`{path}`, `{name}`, or `{stem}` and
`{suffix}`), which would copy many files onto one object, is refused. Plain Python, no Dagster.
"""

from __future__ import annotations

import posixpath
import string
from dataclasses import dataclass
from datetime import UTC, datetime

from ..s3.store import key_segments

FIELDS = ("path", "name", "stem", "suffix", "dir", "mtime", "date", "source")
DATES = ("mtime", "date")
DEFAULT_DATE_FORMAT = "%Y-%m-%d"
# C89's directives, C99's ISO 8601 ones (%G %u %V) and Python's %f: every platform has them,
# where an unknown one would be copied as it is on one and refused on another.
STRFTIME = set("aAbBcdHIjmMpSUwWxXyYzZGuVf%")


@dataclass(frozen=True)
class _Piece:
    literal: str
    field: str | None  # None: the literal ends the template
    spec: str


@dataclass(frozen=True)
class DestinationTemplate:
    """A template parsed once, when the settings load, into its literal text and fields, so
    that filling it in for each file is a few joins."""

    text: str
    pieces: tuple[_Piece, ...]

    @classmethod
    def parse(cls, text: str) -> DestinationTemplate:
        """The template, or ValueError saying what is wrong and what is allowed."""
        pieces = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:  # a lone { or }
            raise ValueError(f"{exc}; write {{{{ and }}}} for literal braces") from None
        for literal, field, spec, conversion in parsed:
            if field is not None:
                _check_field(field, spec or "", conversion)
            pieces.append(_Piece(literal, field, spec or ""))
        used = {piece.field for piece in pieces}
        if not ({"path", "name"} & used or {"stem", "suffix"} <= used):
            raise ValueError(
                "must contain {path} or {name} (or {stem} and {suffix}): without them, many "
                "files would be copied onto one object, e.g. partner-a/{mtime:%Y/%m/%d}/{path}"
            )
        return cls(text, tuple(pieces))

    @property
    def dated(self) -> bool:
        """Whether keys depend on the day of the copy: a retry keeps the key of its first claim."""
        return any(piece.field == "date" for piece in self.pieces)

    def render(self, source: str, path: str, mtime: int, date: datetime | None = None) -> str:
        """The template filled in for the file at path (relative to the root), not yet made a
        key (s3.object_key normalises and escapes it); date: the day of the copy (today)."""
        name = posixpath.basename(path)
        stem, dot, suffix = name[1:].rpartition(".")  # a leading dot starts no suffix
        stem, suffix = (name[0] + stem, dot + suffix) if dot else (name, "")
        texts = {
            "path": path,
            "name": name,
            "stem": stem,
            "suffix": suffix,
            "dir": posixpath.dirname(path),
            "source": source,
        }
        dates = {  # the DATES
            "mtime": datetime.fromtimestamp(mtime, UTC),
            "date": date or datetime.now(UTC),
        }
        out = []
        for piece in self.pieces:
            out.append(piece.literal)
            if piece.field in DATES:
                out.append(dates[piece.field].strftime(piece.spec or DEFAULT_DATE_FORMAT))
            elif piece.field is not None:
                out.append(texts[piece.field])
        return "".join(out)

    def constant_prefix(self, source: str) -> str:
        """What every key of the source begins with (before MINIO_PREFIX): the template up to
        its first field but {source}, normalised as keys are; "" when a field comes first."""
        constant = []
        for piece in self.pieces:
            constant.append(piece.literal)
            if piece.field != "source":
                break
            constant.append(source)
        *folders, partial = "".join(constant).split("/")
        head = "/".join(key_segments("/".join(folders)))
        # A partial segment that may end up as "." or ".." (dropped from keys) is no prefix.
        if not partial.strip("."):
            partial = ""
        return f"{head}/{partial}" if head else partial


def _check_field(field: str, spec: str, conversion: str | None) -> None:
    if field not in FIELDS:
        raise ValueError(f"unknown field {{{field}}}; the fields are {{{'}, {'.join(FIELDS)}}}")
    if conversion:
        raise ValueError(f"{{{field}!{conversion}}}: fields take no conversion")
    if field not in DATES:
        if spec:
            raise ValueError(
                f"{{{field}:{spec}}}: only {{mtime}} and {{date}} take a format (strftime)"
            )
        return
    if "{" in spec or "}" in spec:
        raise ValueError(f"{{{field}:{spec}}}: a format cannot contain fields")
    at = spec.find("%")
    while at != -1:
        directive = spec[at + 1 : at + 2]
        if not directive:
            raise ValueError(f"{{{field}:{spec}}}: a lone % ends the format; write %% for a %")
        if directive not in STRFTIME:
            raise ValueError(
                f"{{{field}:{spec}}}: %{directive} is not a strftime directive; use e.g. "
                "%Y, %m, %d, %H, %M, %j, %V"
            )
        at = spec.find("%", at + 2)
