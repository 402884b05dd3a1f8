"""What becomes of a remote file once its copy is verified and recorded: kept, deleted, or
moved to the archive directory (after_copy: keep | delete | move), and its ready marker with
it once no file it covers is left. Never loses a file: one that changed since it was copied
stays, and so does one whose deletion or move fails."""

from __future__ import annotations

import logging
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass

import paramiko

from ..policy.readiness import ReadyMarker
from ..sftp.client import display, remote_bytes
from ..sftp.listing import list_dir
from .errors import redact
from .source_policy import SourcePolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AfterCopy:
    """A source's after-copy action, on sessions of its SFTP pool."""

    policy: SourcePolicy
    session: Callable[[], paramiko.SFTPClient]  # the thread's session of the source's pool
    server: str  # how messages name the server
    secrets: tuple[str | None, ...] = ()

    def apply(self, remote_path: str, copied) -> str:
        """Keep, delete or archive the remote file once its copy is verified and recorded.

        Never loses it: a file that changed since it was copied stays, and so does one whose
        deletion or move fails. Returns what happened, for the log.
        """
        action = self.policy.after_copy
        if action == "keep":
            return "kept"
        sftp = self.session()
        try:
            now = sftp.stat(remote_bytes(remote_path))
            if (now.st_size, now.st_mtime) != (copied.st_size, copied.st_mtime):
                done = "kept: it changed after it was copied; the next tick copies it again"
            elif action == "delete":
                sftp.remove(remote_bytes(remote_path))
                done = "deleted" + self._marker(remote_path)
            else:
                target = self._archived(remote_path)
                _makedirs(sftp, posixpath.dirname(target))
                sftp.posix_rename(remote_bytes(remote_path), remote_bytes(target))
                done = f"moved to {display(target)}" + self._marker(remote_path)
        except Exception as exc:
            done = redact(
                f"kept: could not {action} it ({exc}); check the account's rights on the "
                "server; the copy is complete and will not be redone",
                self.secrets,
            )
            logger.warning("%s%s: %s", self.server, display(remote_path), done)
        return done

    def _archived(self, remote_path: str) -> str:
        """Where after_copy: move puts a remote file: its path below root, under archive_dir."""
        if self.policy.archive_dir is None:  # the settings' check refuses it at load
            raise ValueError("after_copy: move needs archive_dir (ARCHIVE_DIR)")
        return posixpath.join(
            self.policy.archive_dir, posixpath.relpath(remote_path, self.policy.root)
        )

    def _marker(self, remote_path: str) -> str:
        """The ready marker goes the way of the files it covers (deleted or moved) once none of
        them is left: at once for a {name} marker, else when its directory holds no other file
        the marker covers and the source takes. Each worker looks after removing its own file,
        so the last one to go sees the directory empty of them; a marker already gone (another
        worker's doing) is fine. Returns what became of it, for the log."""
        marker = self.policy.ready_marker
        if marker is None:
            return ""
        path = posixpath.relpath(remote_path, self.policy.root)
        marker_path = marker.marker_of(path)
        remote_marker = posixpath.join(self.policy.root, marker_path)
        sftp = self.session()
        try:
            if not marker.per_file and self._still_covered(sftp, marker, marker_path):
                return f"; its marker {display(marker_path)} stays for the other files it covers"
            if self.policy.after_copy == "delete":
                sftp.remove(remote_bytes(remote_marker))
                return f"; its marker {display(marker_path)} deleted"
            target = self._archived(remote_marker)
            sftp.posix_rename(remote_bytes(remote_marker), remote_bytes(target))
            return f"; its marker {display(marker_path)} moved to {display(target)}"
        except FileNotFoundError:
            return f"; its marker {display(marker_path)} already gone"
        except Exception as exc:
            why = redact(f"could not {self.policy.after_copy} it ({exc})", self.secrets)
            logger.warning("%s%s: %s", self.server, display(remote_marker), why)
            return f"; its marker {display(marker_path)} kept: {why}"

    def _still_covered(self, sftp, marker: ReadyMarker, marker_path: str) -> bool:
        """Whether the marker's directory still holds a file that the marker covers and the
        source takes (not yet copied, or kept because it changed)."""
        directory = posixpath.dirname(marker_path)
        for name, mode in list_dir(sftp, posixpath.join(self.policy.root, directory)):
            path = posixpath.join(directory, name)
            if (
                not stat.S_ISDIR(mode)
                and not marker.is_marker(path)
                and marker.marker_of(path) == marker_path
                and self.policy.file_filter.accepts(path)
            ):
                return True
        return False


def _makedirs(sftp, path: str) -> None:
    """mkdir -p over SFTP."""
    missing = []
    while path not in ("", "/"):
        try:
            sftp.stat(remote_bytes(path))
            break
        except FileNotFoundError:
            missing.append(path)
            path = posixpath.dirname(path)
    for directory in reversed(missing):
        try:
            sftp.mkdir(remote_bytes(directory))
        except OSError as exc:
            try:
                sftp.stat(remote_bytes(directory))  # made meanwhile by another worker
            except OSError:
                raise OSError(f"cannot create {display(directory)}: {exc}") from exc
