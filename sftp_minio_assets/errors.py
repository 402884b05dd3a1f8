"""What a failure means for the user: one message naming the file, the server, and what to do."""

from __future__ import annotations

import socket
from collections.abc import Iterable

import paramiko
import psycopg

from .sftp import HostKeyError
from .transfer import SourceChanged, TransferFailed


def advice(exc: BaseException) -> str:
    """What to do about exc, judged by its type (never by its text)."""
    cause = exc.__cause__ if isinstance(exc, TransferFailed) and exc.__cause__ else exc
    if isinstance(exc, SourceChanged):
        return "Wait until the writer has finished (see MIN_FILE_AGE_SECONDS), then rerun."
    if isinstance(cause, HostKeyError):
        return "Fix the host key setting (SFTP_KNOWN_HOSTS_PATH / SFTP_HOST_KEY_SHA256)."
    if isinstance(cause, paramiko.AuthenticationException):
        return "Check SFTP_USERNAME and SFTP_PRIVATE_KEY_PATH / SFTP_PASSWORD, then rerun."
    if isinstance(exc, TransferFailed) and exc.stage in ("upload", "verify"):
        return (
            "Check that the S3 endpoint is up, the credentials are valid and the bucket is "
            "writable, then rerun the failed partitions."
        )
    if isinstance(cause, FileNotFoundError):
        return (
            "The file was deleted or renamed after it was listed: restore it and rerun the "
            "partition, or ignore this if it was removed on purpose."
        )
    if isinstance(cause, PermissionError):
        return "Grant the SFTP user read access to the file, then rerun the failed partition."
    if isinstance(cause, psycopg.Error):
        return "Check that the transfer-log database (TRANSFER_DB_URL) is reachable, then rerun."
    if isinstance(cause, (socket.error, EOFError, paramiko.SSHException, TimeoutError)):
        return "Check that the SFTP server is up and reachable, then rerun the failed partitions."
    return "Rerun the failed partition; if it fails again, report this message."


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Belt and braces: no secret value ever leaves in a message, log row or metadata."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
