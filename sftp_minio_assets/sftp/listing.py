"""Listing a source's tree: every regular file below its root, with size and mtime.

Directories are read several at once on one session (wire.DirectoryReads: their requests in
flight together, entries parsed from the raw answers), and handed out one by one as they are
read (scan_tree), so that a caller may stream a tree of millions of files without holding it;
collect() gathers them.
"""

from __future__ import annotations

import posixpath
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import paramiko

from .client import ENVIRONMENT, RemoteFile, RootUnavailable, SettingNames, display, remote_bytes
from .wire import DirectoryReads, stat_many

# Directories read at once on the listing's session.
DIRECTORIES_IN_FLIGHT = 8


@dataclass
class Listing:
    files: list[RemoteFile]
    skipped: list[tuple[str, str]]  # (relative path, why)


@dataclass
class ListedDirectory:
    """One directory of a tree, read whole; or, in a fast listing, found unchanged and not
    read (read False: no files, no skipped entries)."""

    path: str  # relative to the root, "" for the root itself
    files: list[RemoteFile] = field(default_factory=list)  # its regular files, in no order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)
    mtime: int = 0  # as seen before it was read (so a change while it is read shows next time)
    read: bool = True


@dataclass
class Resume:
    """A listing that may stop before the end of the tree and go on at the next tick. start:
    the directories (path, mtime) to read, instead of the root (empty: from the root);
    deadline: time.monotonic() after which no more directory reads are started (once one
    was). scan_tree fills `left`: the directories (path, mtime) it did not read."""

    start: list[tuple[str, int]] = field(default_factory=list)
    deadline: float | None = None
    left: list[tuple[str, int]] = field(default_factory=list)

    def over(self, started: int) -> bool:
        """Whether no more reads may start, `started` reads having started already."""
        return started > 0 and self.deadline is not None and time.monotonic() >= self.deadline


# A directory recorded by an earlier listing: path relative to the root -> (its mtime then,
# whether it may be left unread while its mtime stays so).
Recorded = Mapping[str, tuple[int, bool]]


def list_dir(sftp: paramiko.SFTPClient, path: str) -> list[tuple[str, int]]:
    """(name, mode) of each entry of one directory, names that are not UTF-8 as surrogates (as
    scan_tree reads them). Errors: PermissionError, FileNotFoundError, other OSError."""
    reads = DirectoryReads(sftp, 1)
    reads.add(remote_bytes(path), path)
    [(_, entries)] = list(reads)
    if isinstance(entries, OSError):
        raise entries
    return [(name.decode("utf-8", "surrogateescape"), mode) for name, mode, _, _ in entries]


def collect(directories: Iterable[ListedDirectory]) -> Listing:
    """Every regular file of the directories (scan_tree's), sorted by path."""
    files: list[RemoteFile] = []
    skipped: list[tuple[str, str]] = []
    for directory in directories:
        files += directory.files
        skipped += directory.skipped
    files.sort(key=lambda f: f.path)
    return Listing(files, skipped)


def scan_tree(
    sftp: paramiko.SFTPClient,
    root: str,
    follow_symlinks: bool = False,
    server: str = "",
    names: SettingNames = ENVIRONMENT,
    recorded: Recorded | None = None,
    resume: Resume | None = None,
) -> Iterator[ListedDirectory]:
    """The directories below root (itself included), each as soon as it is read whole.

    Symbolic links are skipped, or with follow_symlinks followed when their target lies inside
    root (a link can never bring in a file from outside it); each directory is walked once.
    A root that cannot be listed raises RootUnavailable (naming server and root): it must not
    look like a source with nothing new.

    recorded (a fast listing): the directories an earlier listing saw. One that may be left
    unread and whose mtime has not changed is handed out unread (an entry added, removed or
    renamed in it would have changed its mtime), and its recorded subdirectories are visited
    as if it had been read; their mtimes are asked for at once (wire.stat_many).

    resume: where to start, and when to stop (Resume). A directory that is gone when its read
    comes (deleted since its parent was read, or since the last tick) is left out.
    """
    real_root, root_mtime = _root(sftp, root, server, names)
    seen_dirs = {real_root}
    reads = DirectoryReads(sftp, DIRECTORIES_IN_FLIGHT)
    resume = resume or Resume()
    started = 0  # directory reads started
    now = _current_mtimes(sftp, root, recorded) if recorded else {}
    children: dict[str, list[str]] = {}
    for path in now:
        if path:
            children.setdefault(posixpath.dirname(path), []).append(path)

    def visit(rel: str, mtime: int) -> Iterator[ListedDirectory]:
        """A directory of the tree, and its mtime as seen just now: read (or left for the next
        tick), or handed out unread with those of its subdirectories that are unchanged too."""
        nonlocal started
        pending = [(rel, mtime)]
        while pending:
            rel, mtime = pending.pop()
            was, settled = (recorded or {}).get(rel, (None, False))
            if settled and mtime == was:
                yield ListedDirectory(rel, mtime=mtime, read=False)
                pending += [(child, now[child]) for child in children.get(rel, ())]
            elif resume.over(started):
                resume.left.append((rel, mtime))
            else:
                reads.add(remote_bytes(posixpath.join(root, rel) if rel else root), (rel, mtime))
                started += 1

    for rel, mtime in resume.start or [("", root_mtime)]:
        yield from visit(rel, mtime)
    for (rel_dir, dir_mtime), entries in reads:
        if resume.over(started):
            resume.left += reads.cancel_queued()
        listed = ListedDirectory(rel_dir, mtime=dir_mtime)
        if isinstance(entries, OSError):
            if not rel_dir:
                why = "the SFTP user may not list it"
                if not isinstance(entries, PermissionError):
                    why = f"the server refused: {entries}"
                raise _root_unavailable(server, root, names, why) from None
            if isinstance(entries, FileNotFoundError):
                continue  # gone since it was found: so are its files
            if not isinstance(entries, PermissionError):
                raise entries
            listed.skipped.append((rel_dir, "directory not readable by the SFTP user"))
            yield listed
            continue
        prefix = rel_dir + "/" if rel_dir else ""
        for raw_name, mode, size, mtime in entries:
            rel = prefix + raw_name.decode("utf-8", "surrogateescape")
            if stat.S_ISREG(mode):
                listed.files.append(RemoteFile(rel, size, mtime))
                continue
            if stat.S_ISLNK(mode):
                if not follow_symlinks:
                    why = f"symbolic link ({names('follow_symlinks')} is off)"
                    listed.skipped.append((rel, why))
                    continue
                try:
                    target = sftp.normalize(remote_bytes(posixpath.join(root, rel)))
                    attrs = sftp.stat(remote_bytes(target))
                except (OSError, UnicodeDecodeError):
                    listed.skipped.append((rel, "broken symbolic link"))
                    continue
                if target != real_root and not target.startswith(real_root.rstrip("/") + "/"):
                    listed.skipped.append((rel, f"symbolic link to {target}, outside the root"))
                    continue
                mode, mtime = attrs.st_mode or 0, int(attrs.st_mtime or 0)
                if stat.S_ISDIR(mode):
                    if target in seen_dirs:
                        listed.skipped.append((rel, "symbolic link to a directory already listed"))
                        continue
                    seen_dirs.add(target)
                elif stat.S_ISREG(mode):
                    size, mtime = attrs.st_size or 0, int(attrs.st_mtime or 0)
                    listed.files.append(RemoteFile(rel, size, mtime))
                    continue
            if stat.S_ISDIR(mode):
                yield from visit(rel, mtime)
            else:
                listed.skipped.append((rel, "not a regular file"))
        yield listed


def _current_mtimes(sftp: paramiko.SFTPClient, root: str, recorded: Recorded) -> dict[str, int]:
    """The mtime of each recorded directory that is still a directory, asked all at once."""
    paths = sorted(path for path in recorded if path)
    answers = stat_many(sftp, (remote_bytes(posixpath.join(root, path)) for path in paths))
    return {
        path: answer[1]
        for path, answer in zip(paths, answers, strict=True)
        if not isinstance(answer, OSError) and stat.S_ISDIR(answer[0])
    }


def _root(
    sftp: paramiko.SFTPClient, root: str, server: str, names: SettingNames
) -> tuple[str, int]:
    """root's real path and mtime, once it is known to be a directory."""
    try:
        real_root = sftp.normalize(remote_bytes(root))
        attrs = sftp.stat(remote_bytes(real_root))
        mode = attrs.st_mode or 0
    except FileNotFoundError:
        raise _root_unavailable(server, root, names, "it does not exist") from None
    except PermissionError:
        raise _root_unavailable(server, root, names, "the SFTP user may not reach it") from None
    if not stat.S_ISDIR(mode):
        raise _root_unavailable(server, root, names, "it is not a directory")
    return real_root, int(attrs.st_mtime or 0)


def _root_unavailable(server: str, root: str, names: SettingNames, why: str) -> RootUnavailable:
    return RootUnavailable(
        f"{server}: cannot list the root {display(root)}: {why}. Set {names('root')} to a "
        "directory the SFTP user may read, or grant it read and execute rights."
    )
