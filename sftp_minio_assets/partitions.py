"""One dynamic partition per remote file, keyed by its path relative to the source root.

Keys read as on the server (`/`, spaces, non-ASCII stay as they are). What Dagster's UI or its
Postgres index cannot carry is percent-encoded, reversibly, here and only here: `%` itself,
`,` (a list separator in partition selections), a third consecutive `.` (`...` is the range
syntax) and control characters.
"""

from __future__ import annotations

from urllib.parse import unquote

import dagster as dg

# Dagster's Postgres unique index breaks near 2.7 kB; stay well below it.
MAX_KEY_BYTES = 1024


class KeyTooLong(ValueError):
    pass


def partitions_for(source: str) -> dg.DynamicPartitionsDefinition:
    return dg.DynamicPartitionsDefinition(name=f"files_{source}")


def encode_key(path: str) -> str:
    out: list[str] = []
    for char in path:
        if char in "%," or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"%{ord(char):02X}")
        elif char == "." and len(out) >= 2 and out[-1] == out[-2] == ".":
            out.append("%2E")
        else:
            out.append(char)
    key = "".join(out)
    if len(key.encode()) > MAX_KEY_BYTES:
        raise KeyTooLong(
            f"{path[:80]}...: path is {len(key.encode())} bytes as a partition key, "
            f"more than {MAX_KEY_BYTES}"
        )
    return key


def decode_key(key: str) -> str:
    return unquote(key)
