"""What a failure means for the user: permanent or worth retrying, and what to do about it."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import paramiko
import psycopg

from ..s3.store import ChecksumRefused
from ..sftp.client import ENVIRONMENT, HostKeyError, SettingNames, credentials
from ..transfer.failures import ObjectOfAnotherSource, SourceChanged, TransferFailed
from ..transfer.pgp import DecryptionFailed


class NotAFile(Exception):
    """The path is a directory or a special file now."""


class KeyTaken(Exception):
    """Another file of the same source is copied to this file's object key: the destination
    template (or the escaping of a name S3 cannot hold) maps both to one key."""


class RunStopped(Exception):
    """The run stopped while the copy went on (terminated: Dagster's interrupt, as the UI's
    Terminate sends it): the copy stopped where it was, nothing of it committed."""


class SettingsError(ValueError):
    """A setting that can never work, refused when the code location loads; the message names
    the environment variable (or the source and key) and what a valid value looks like."""


class TransferLogUnavailable(psycopg.OperationalError):
    """The transfer-log database cannot be reached or refuses the login; the message names
    TRANSFER_DB_URL's server (never its password) and what to check."""


# Faults another attempt meets again: a setting, the file or this project's code must change.
_PERMANENT = (
    HostKeyError,
    paramiko.AuthenticationException,
    NotAFile,
    DecryptionFailed,
    ChecksumRefused,
)


def root_cause(exc: BaseException) -> BaseException:
    return exc.__cause__ if isinstance(exc, TransferFailed) and exc.__cause__ else exc


def is_permanent(exc: BaseException) -> bool:
    """True when retrying cannot help until someone changes something (judged by type)."""
    cause = root_cause(exc)
    if isinstance(exc, SourceChanged):
        return False  # the writer will finish; the next attempt sees a stable file
    if isinstance(exc, (ObjectOfAnotherSource, KeyTaken)) or isinstance(cause, _PERMANENT):
        return True
    # On either side, a missing file or bucket, a refused read or write; anything else
    # (connection resets, time-outs, S3 5xx, a restarting database) is worth another try.
    return isinstance(cause, (FileNotFoundError, PermissionError))


def advice(exc: BaseException, names: SettingNames = ENVIRONMENT) -> str:
    """What to do about exc; names: how the source's user set its settings."""
    cause = root_cause(exc)
    upload = isinstance(exc, TransferFailed) and exc.stage in ("upload", "verify")
    if isinstance(exc, SourceChanged):
        return (
            "Nothing to do if its writer was still at work: the file is copied again once it "
            f"looks complete (see {names('min_file_age_seconds')})."
        )
    if isinstance(exc, ObjectOfAnotherSource):
        return (
            "Two sources, or another tool, write the same object: give each source its own "
            "destination_prefix (prefix under MINIO_PREFIX), then rerun the partition. The "
            "remote file was left in place."
        )
    if isinstance(exc, KeyTaken):
        return (
            f"Make the keys of distinct files distinct: give {names('destination_template')} "
            "the {path} (or {dir}/{name}) of each file, or rename one of the files on the "
            "server; then rerun the partition. The remote file was left in place."
        )
    if isinstance(cause, HostKeyError):
        return f"Fix the host key setting ({names('known_hosts_path', 'host_key_sha256')})."
    if isinstance(cause, paramiko.AuthenticationException):
        return f"Check {credentials(names)}, then rerun."
    if isinstance(cause, DecryptionFailed):
        fix = cause.fix.format(settings=names(*cause.settings)) if cause.settings else cause.fix
        return f"{fix} The remote file was left in place; nothing was stored."
    if isinstance(cause, NotAFile):
        return "Only regular files are copied; nothing to do if this is expected."
    if isinstance(cause, ChecksumRefused):
        return (
            "The checksum this copy computed does not match the bytes it sent: a defect of "
            "sftp-minio-assets, not of the S3 server; please report this message. To copy "
            f"meanwhile, turn {names('server_checksums')} off (false), then rerun the partition."
        )
    if upload and isinstance(cause, PermissionError):
        return "The S3 store refused the write: check MINIO_ACCESS_KEY/SECRET_KEY and the policy."
    if upload and isinstance(cause, FileNotFoundError):
        return "The bucket does not exist and could not be created: check MINIO_BUCKET."
    if upload:
        return (
            "Check that the S3 endpoint is up and reachable; the partition is retried, "
            "and can be rerun from the UI."
        )
    if isinstance(cause, FileNotFoundError):
        return (
            "The file was deleted or renamed after it was listed: restore it and rerun the "
            "partition, or ignore this if it was removed on purpose."
        )
    if isinstance(cause, PermissionError):
        return "Grant the SFTP user read access to the file, then rerun the failed partition."
    if isinstance(cause, psycopg.Error):
        return "Check that the transfer-log database (TRANSFER_DB_URL) is reachable; retried."
    if isinstance(cause, (socket.error, EOFError, paramiko.SSHException, TimeoutError)):
        return "Check that the SFTP server is up and reachable; the partition is retried."
    return "Rerun the failed partition; if it fails again, report this message."


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Belt and braces: no secret value ever leaves in a message, log row or metadata."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
