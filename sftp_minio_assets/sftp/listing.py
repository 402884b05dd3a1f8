"""Listing a source's tree: every regular file below its root, with size and mtime.

Directories are read several at once on one session (wire.DirectoryReads: their requests in
flight together, entries parsed from the raw answers), and handed out one by one as they are
read (scan_tree), so that a caller may stream a tree of millions of files without holding it;
collect() gathers them.
"""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import paramiko

from .client import ENVIRONMENT, RemoteFile, RootUnavailable, SettingNames, display, remote_bytes
from .wire import DirectoryReads

# Directories read at once on the listing's session.
DIRECTORIES_IN_FLIGHT = 8


@dataclass
class Listing:
    files: list[RemoteFile]
    skipped: list[tuple[str, str]]  # (relative path, why)


@dataclass
class ListedDirectory:
    """One directory of a tree, read whole."""

    path: str  # relative to the root, "" for the root itself
    files: list[RemoteFile] = field(default_factory=list)  # its regular files, in no order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)


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
) -> Iterator[ListedDirectory]:
    """The directories below root (itself included), each as soon as it is read whole.

    Symbolic links are skipped, or with follow_symlinks followed when their target lies inside
    root (a link can never bring in a file from outside it); each directory is walked once.
    A root that cannot be listed raises RootUnavailable (naming server and root): it must not
    look like a source with nothing new.
    """
    real_root = _root(sftp, root, server, names)
    seen_dirs = {real_root}
    reads = DirectoryReads(sftp, DIRECTORIES_IN_FLIGHT)
    reads.add(remote_bytes(root), "")
    for rel_dir, entries in reads:
        listed = ListedDirectory(rel_dir)
        if isinstance(entries, OSError):
            if not rel_dir:
                why = "the SFTP user may not list it"
                if not isinstance(entries, PermissionError):
                    why = f"the server refused: {entries}"
                raise _root_unavailable(server, root, names, why) from None
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
                mode = attrs.st_mode or 0
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
                reads.add(remote_bytes(posixpath.join(root, rel)), rel)
            else:
                listed.skipped.append((rel, "not a regular file"))
        yield listed


def _root(sftp: paramiko.SFTPClient, root: str, server: str, names: SettingNames) -> str:
    """root's real path, once it is known to be a directory."""
    try:
        real_root = sftp.normalize(remote_bytes(root))
        mode = sftp.stat(remote_bytes(real_root)).st_mode or 0
    except FileNotFoundError:
        raise _root_unavailable(server, root, names, "it does not exist") from None
    except PermissionError:
        raise _root_unavailable(server, root, names, "the SFTP user may not reach it") from None
    if not stat.S_ISDIR(mode):
        raise _root_unavailable(server, root, names, "it is not a directory")
    return real_root


def _root_unavailable(server: str, root: str, names: SettingNames, why: str) -> RootUnavailable:
    return RootUnavailable(
        f"{server}: cannot list the root {display(root)}: {why}. Set {names('root')} to a "
        "directory the SFTP user may read, or grant it read and execute rights."
    )
