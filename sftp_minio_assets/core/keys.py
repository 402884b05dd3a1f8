"""Partition keys: one per remote file, its path relative to the source root.

Keys read as on the server (`/`, spaces, non-ASCII stay as they are). What Dagster's UI or its
Postgres index cannot carry is percent-encoded, reversibly, here and only here: `%` itself,
`,` (a list separator in partition selections), a third consecutive `.` (`...` is the range
syntax), control characters, and bytes that are not UTF-8 (kept in paths as surrogates, the
way os.fsdecode does). The key is also the transfer log's `filename`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

# Dagster's Postgres unique index breaks near 2.7 kB; stay well below it.
MAX_KEY_BYTES = 1024


class KeyTooLong(ValueError):
    pass


# What encode_key changes: a path without any of it is its own key (most are: one search, no
# per-character loop).
_TO_ENCODE = re.compile(r"[%,\x00-\x1f\x7f\udc80-\udcff]|\.\.\.")


def encode_key(path: str) -> str:
    if _TO_ENCODE.search(path) is None:
        if len(path) * 4 > MAX_KEY_BYTES and len(path.encode()) > MAX_KEY_BYTES:
            raise _too_long(path, path)
        return path
    out: list[str] = []
    for char in path:
        code = ord(char)
        if char in "%," or code < 0x20 or code == 0x7F:
            out.append(f"%{code:02X}")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte
            out.append(f"%{code - 0xDC00:02X}")
        elif char == "." and len(out) >= 2 and out[-1] == out[-2] == ".":
            out.append("%2E")
        else:
            out.append(char)
    key = "".join(out)
    if len(key.encode()) > MAX_KEY_BYTES:
        raise _too_long(path, key)
    return key


def _too_long(path: str, key: str) -> KeyTooLong:
    return KeyTooLong(
        f"{path[:80]}...: path is {len(key.encode())} bytes as a partition key, "
        f"more than {MAX_KEY_BYTES}"
    )


def decode_key(key: str) -> str:
    return unquote(key, errors="surrogateescape")
