"""The SFTP exchanges paramiko's public API cannot do for us, and the only code that reaches
into paramiko's private request layer.

- `DirectoryReads`: directories read at once on one session, their entries parsed from the
  raw answers (name as raw bytes, type, size, mtime: no per-entry object, no longname).
  paramiko's listdir_attr decodes names strictly, so one file whose name is not UTF-8 would
  stop a whole listing.
- `PipelinedReads`: a fixed window of reads in flight on one file. paramiko's prefetch books
  every read of the file up front and buffers whatever arrives, however slowly it is consumed.
- `stat_and_open`: a file's attributes and its handle asked together; `stat_many`: the
  attributes of many paths asked at once (the fast listing's directories).
- `PipelinedReads.send_stat`: the check after a file is read sent with its last reads, and
  `close_without_waiting`: its CLOSE not waited for; neither costs a round trip of its own
  (`finish_answers` reads what is still due before a session closes).

They go through `SFTPClient._async_request`, `_read_response`,
`_convert_status` and `_expecting`, `SFTPAttributes._from_msg`, `SFTPFile._close(async_=True)`,
and the `_async_response` callback paramiko makes on whoever sent a request. pyproject.toml pins
paramiko to the versions tested with them, and sftp_minio_assets_tests/unit/sftp/test_wire.py
fails first, naming the name that moved, when an upgrade changes one of them.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import suppress
from typing import Any

from paramiko import Message, SFTPAttributes, SFTPClient, SFTPFile
from paramiko.sftp import (
    CMD_ATTRS,
    CMD_CLOSE,
    CMD_DATA,
    CMD_HANDLE,
    CMD_NAME,
    CMD_OPEN,
    CMD_OPENDIR,
    CMD_READ,
    CMD_READDIR,
    CMD_STAT,
    CMD_STATUS,
    SFTP_FLAG_READ,
    SFTPError,
    int64,
)

# One entry of a NAME answer: its name, type bits, size and mtime; no object per entry.
Entry = tuple[bytes, int, int, int]

_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
_PAIR = struct.Struct(">II")
_SIZE, _UIDGID, _PERMISSIONS, _TIMES, _EXTENDED = 0x1, 0x2, 0x4, 0x8, 0x80000000


def parse_names(msg: Message) -> list[Entry]:
    """The entries of a NAME answer whose count is still to be read: (name, mode, size, mtime),
    mode 0, size 0 or mtime 0 where the server did not send it (as paramiko's attributes say
    None). SFTP v3 attributes: flags, then size, uid and gid, permissions, atime and mtime, and
    extended pairs, each only if its flag is set."""
    data = msg.packet.getvalue()
    at = msg.packet.tell()
    (count,) = _UINT32.unpack_from(data, at)
    at += 4
    entries: list[Entry] = []
    unpack32, unpack64, pair = _UINT32.unpack_from, _UINT64.unpack_from, _PAIR.unpack_from
    for _ in range(count):
        (length,) = unpack32(data, at)
        name = data[at + 4 : at + 4 + length]
        at += 4 + length
        (length,) = unpack32(data, at)  # longname, the `ls -l` line: skipped
        at += 4 + length
        (flags,) = unpack32(data, at)
        at += 4
        size = mode = mtime = 0
        if flags & _SIZE:
            (size,) = unpack64(data, at)
            at += 8
        if flags & _UIDGID:
            at += 8
        if flags & _PERMISSIONS:
            (mode,) = unpack32(data, at)
            at += 4
        if flags & _TIMES:
            _, mtime = pair(data, at)
            at += 8
        if flags & _EXTENDED:
            (pairs,) = unpack32(data, at)
            at += 4
            for _ in range(2 * pairs):
                (length,) = unpack32(data, at)
                at += 4 + length
        entries.append((name, mode, size, mtime))
    return entries


class _Answers:
    """Answers to requests sent without waiting, kept by request number until asked for:
    paramiko's _read_response hands each to whoever sent the request (_async_response)."""

    def __init__(self, sftp: SFTPClient) -> None:
        self._received: dict[int, tuple[int, Message]] = {}
        self._read_one_reply = sftp._read_response

    def _async_response(self, kind: int, msg: Message, number: int) -> None:
        self._received[number] = (kind, msg)

    def answer(self, number: int) -> tuple[int, Message]:
        while number not in self._received:
            self._read_one_reply()
        return self._received.pop(number)


def stat_and_open(sftp: SFTPClient, path: bytes) -> tuple[SFTPAttributes, SFTPFile | OSError]:
    """The file's attributes by its path, and the file opened for reading, asked together: one
    round trip where paramiko's stat then open wait for two. The stat's error is raised
    (FileNotFoundError, PermissionError, other OSError); the open's is returned."""
    answers = _Answers(sftp)
    stat = sftp._async_request(answers, CMD_STAT, path)
    opening = sftp._async_request(answers, CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes())
    (stat_kind, stat_msg), (open_kind, open_msg) = answers.answer(stat), answers.answer(opening)
    opened: SFTPFile | OSError
    if open_kind == CMD_HANDLE:
        opened = SFTPFile(sftp, open_msg.get_binary(), "rb")
    else:
        opened = OSError(f"unexpected reply {open_kind} to an open")
        try:
            sftp._convert_status(open_msg)
        except OSError as exc:
            opened = exc
    if stat_kind != CMD_ATTRS and isinstance(opened, SFTPFile):
        close_without_waiting(opened)
    return _attributes(stat_kind, stat_msg, sftp._convert_status), opened


def _attributes(kind: int, msg: Message, raise_status: Any) -> SFTPAttributes:
    """The attributes a STAT was answered with; raises the error the server reported instead
    (FileNotFoundError, PermissionError, other OSError) through raise_status (the session's
    _convert_status)."""
    if kind == CMD_ATTRS:
        return SFTPAttributes._from_msg(msg)
    if kind == CMD_STATUS:
        raise_status(msg)
    raise SFTPError(f"unexpected reply {kind} to a stat")


def stat_many(
    sftp: SFTPClient, paths: Iterable[bytes], depth: int = 64
) -> Iterator[tuple[int, int] | OSError]:
    """(mode, mtime) of each path (following links), or the error the server answered, in
    order; up to `depth` STATs in flight, so that a far server costs a round trip per `depth`
    paths, not per path."""
    answers = _Answers(sftp)
    sent: deque[int] = deque()

    def received() -> tuple[int, int] | OSError:
        try:
            attrs = _attributes(*answers.answer(sent.popleft()), sftp._convert_status)
        except OSError as exc:
            return exc
        except SFTPError as exc:  # no STAT's answer (SFTPError is no OSError): an error too
            return OSError(str(exc))
        return attrs.st_mode or 0, int(attrs.st_mtime or 0)

    for path in paths:
        sent.append(sftp._async_request(answers, CMD_STAT, path))
        if len(sent) >= depth:
            yield received()
    while sent:
        yield received()


class PipelinedReads(_Answers):
    """Reads of one open file sent without waiting; each reply is kept by its request number
    until asked for, in whatever order the replies arrive.

    `send` a read, `receive` its data (None once the file has ended), and before giving the
    session back, `discard` the replies still due. One reader per session at a time.
    """

    def __init__(self, f: SFTPFile) -> None:
        super().__init__(f.sftp)
        self._handle = f.handle
        # Bound once: send and receive run once per read request on every file copied.
        self._send = f.sftp._async_request
        self._raise_status = f.sftp._convert_status

    def send(self, offset: int, length: int) -> int:
        """Asks for length bytes at offset; returns the request's number."""
        return self._send(self, CMD_READ, self._handle, int64(offset), length)

    def receive(self, number: int) -> bytes | None:
        """The data that request number read, None at end of file; raises the error the server
        reported (PermissionError, other OSError)."""
        kind, msg = self.answer(number)
        if kind == CMD_DATA:
            return msg.get_string()
        if kind == CMD_STATUS:
            with suppress(EOFError):
                self._raise_status(msg)
            return None
        raise SFTPError(f"unexpected reply {kind} to a read")

    def send_stat(self, path: bytes) -> int:
        """Asks for the attributes of the file at path (by its path, not the open handle);
        returns the request's number. Sent after the reads, it is answered after them."""
        return self._send(self, CMD_STAT, path)

    def receive_attrs(self, number: int) -> SFTPAttributes:
        """The attributes request number asked for; raises the error the server reported
        (FileNotFoundError, PermissionError, other OSError)."""
        return _attributes(*self.answer(number), self._raise_status)

    def discard(self, numbers: Iterable[int]) -> None:
        """Reads and drops the replies to these requests, so the session stays usable."""
        for number in numbers:
            self.answer(number)


def close_without_waiting(f: SFTPFile) -> None:
    """Closes the file, its CLOSE sent without waiting for the answer: the session reads it
    before the answer to its next request (paramiko drops an answer nobody waits for). A read
    handle's close has nothing to report, and a far server costs a round trip per wait."""
    f._close(async_=True)


def finish_answers(sftp: SFTPClient, timeout: float) -> None:
    """Reads the answers still due on a session about to close (a CLOSE not waited for), so
    that it ends in order: sshd does not log the session's byte count otherwise. A session
    that does not answer within timeout (seconds) is closed all the same."""
    with suppress(Exception):
        sftp.get_channel().settimeout(timeout)
        while sftp._expecting:
            sftp._read_response()


class DirectoryReads(_Answers):
    """Directories read with up to `depth` of them in flight on one session: the OPENDIR,
    READDIRs and CLOSE of each sent without waiting, so that the client's work and the server's
    overlap and a far server costs round trips per `depth` directories, not per directory.

    `add` a directory (any time, also while iterating); iterating yields (tag, entries) for
    each directory read whole, or (tag, error) where the server refused it (PermissionError,
    FileNotFoundError, other OSError), in the order they finish. `.` and `..` are left out.
    """

    def __init__(self, sftp: SFTPClient, depth: int = 8) -> None:
        super().__init__(sftp)
        self._sftp = sftp
        self._depth = depth
        self._queue: deque[tuple[bytes, Any]] = deque()
        self._sent: deque[tuple[int, str, list]] = deque()  # (number, what, directory)

    def add(self, path: bytes, tag: Any) -> None:
        self._queue.append((path, tag))

    def cancel_queued(self) -> list[Any]:
        """The tags of the directories added but not asked for yet, which now will not be."""
        tags = [tag for _, tag in self._queue]
        self._queue.clear()
        return tags

    def _request(self, what: str, directory: list, *args: Any) -> None:
        kind = {"open": CMD_OPENDIR, "read": CMD_READDIR, "close": CMD_CLOSE}[what]
        self._sent.append((self._sftp._async_request(self, kind, *args), what, directory))

    def __iter__(self) -> Iterator[tuple[Any, list[Entry] | OSError]]:
        reading = 0
        while self._queue or self._sent:
            while self._queue and reading < self._depth:
                path, tag = self._queue.popleft()
                self._request("open", [tag, None, []], path)  # [tag, handle, entries]
                reading += 1
            number, what, directory = self._sent.popleft()
            kind, msg = self.answer(number)
            if what == "close":
                continue
            if kind == CMD_HANDLE and what == "open":
                directory[1] = msg.get_binary()
                self._request("read", directory, directory[1])
                continue
            if kind == CMD_NAME and what == "read":
                directory[2].extend(e for e in parse_names(msg) if e[0] not in (b".", b".."))
                self._request("read", directory, directory[1])
                continue
            reading -= 1
            if directory[1] is not None:
                self._request("close", directory, directory[1])
            error = self._error(kind, msg)
            yield directory[0], directory[2] if error is None else error

    def _error(self, kind: int, msg: Message) -> OSError | None:
        """None for the end of a directory's entries, else the error of the answer."""
        if kind != CMD_STATUS:
            return SFTPError(f"unexpected reply {kind} to a directory read")
        try:
            self._sftp._convert_status(msg)
        except EOFError:
            return None
        except OSError as exc:
            return exc
        return SFTPError("a directory read answered OK without entries")
