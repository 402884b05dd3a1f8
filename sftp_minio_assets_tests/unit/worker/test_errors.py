"""Failures classified by type, permanent or worth retrying, with advice; secrets redacted."""

import paramiko
import psycopg
import pytest

from sftp_minio_assets.s3.store import ChecksumRefused
from sftp_minio_assets.sftp.client import CredentialsError, HostKeyError, SettingNames
from sftp_minio_assets.transfer.failures import ObjectOfAnotherSource, SourceChanged, TransferFailed
from sftp_minio_assets.worker.errors import NotAFile, advice, is_permanent, redact


def failed(stage: str, cause: BaseException) -> TransferFailed:
    """A transfer failure as transfer/copy.py raises it: the stage, and the fault as its cause."""
    exc = TransferFailed(stage, f"{stage} failed: {cause}")
    exc.__cause__ = cause
    return exc


# (failure, permanent, what its advice must say)
CASES = {
    "file changed while copied": (SourceChanged("size changed"), False, "writer"),
    "object of another source": (ObjectOfAnotherSource("k"), True, "destination_prefix"),
    "wrong host key": (failed("read", HostKeyError("mismatch")), True, "host key"),
    "login refused": (failed("read", CredentialsError("no")), True, "username"),
    "paramiko auth": (failed("read", paramiko.AuthenticationException()), True, "username"),
    "not a file": (failed("read", NotAFile("dir")), True, "regular files"),
    "file gone": (failed("read", FileNotFoundError("x")), True, "deleted or renamed"),
    "file unreadable": (failed("read", PermissionError("x")), True, "read access"),
    "bucket missing": (failed("upload", FileNotFoundError("b")), True, "bucket"),
    "write refused": (failed("upload", PermissionError("denied")), True, "refused the write"),
    "s3 down": (failed("upload", ConnectionRefusedError()), False, "S3 endpoint"),
    # The project computes both the bytes and their checksum: another try sends the same.
    "checksum refused": (failed("upload", ChecksumRefused("BadDigest")), True, "report"),
    "copy unverifiable": (failed("verify", TimeoutError()), False, "S3 endpoint"),
    "sftp reset": (failed("read", ConnectionResetError()), False, "SFTP server"),
    "sftp timeout": (failed("read", TimeoutError()), False, "SFTP server"),
    "sftp eof": (failed("read", EOFError()), False, "SFTP server"),
    "ssh error": (failed("read", paramiko.SSHException("x")), False, "SFTP server"),
    "database down": (psycopg.OperationalError("gone"), False, "TRANSFER_DB_URL"),
    "anything else": (RuntimeError("?"), False, "report this message"),
}


@pytest.mark.parametrize("name", CASES)
def test_each_failure_is_classified_and_advised_by_its_type(name):
    exc, permanent, says = CASES[name]
    assert is_permanent(exc) is permanent
    assert says.lower() in advice(exc).lower()


def test_the_advice_differs_by_the_side_that_failed():
    assert advice(failed("read", PermissionError())) != advice(failed("upload", PermissionError()))
    assert advice(failed("read", FileNotFoundError())) != advice(
        failed("upload", FileNotFoundError())
    )


def test_only_the_unknown_failure_gets_the_fallback_advice():
    fallback = advice(RuntimeError("?"))
    assert [n for n, (exc, _, _) in CASES.items() if advice(exc) == fallback] == ["anything else"]


def test_a_transfer_failure_without_a_cause_is_judged_by_itself():
    bare = TransferFailed("read", "stopped")
    assert not is_permanent(bare)
    assert advice(bare) == advice(RuntimeError("?"))


def test_a_file_that_changed_mid_copy_is_retried_whatever_fault_the_change_caused():
    changed = SourceChanged("replaced while read")
    changed.__cause__ = FileNotFoundError("replaced")  # the writer renames its new version in
    assert not is_permanent(changed)
    assert "writer" in advice(changed)


def test_redact_hides_every_occurrence_of_every_secret():
    text = "login ingest:hunter22 failed; retry with hunter22 and key s3-Secret/x"
    redacted = redact(text, ["hunter22", "s3-Secret/x"])
    assert redacted == "login ingest:*** failed; retry with *** and key ***"


@pytest.mark.parametrize("secret", [None, "", "abc"])
def test_redact_leaves_the_text_alone_for_unset_or_too_short_secrets(secret):
    text = "abc abcd, all of it"
    assert redact(text, [secret]) == text


def test_redact_takes_any_iterable_of_secrets_once():
    secrets = (s for s in ["password1", None, "token-xyz"])
    assert redact("password1 token-xyz", secrets) == "*** ***"


@pytest.mark.parametrize(
    "exc, setting",
    [
        (SourceChanged("size changed"), "min_file_age_seconds"),
        (failed("read", HostKeyError("mismatch")), "known_hosts_path"),
        (failed("read", CredentialsError("no")), "password"),
        (failed("upload", ChecksumRefused("BadDigest")), "server_checksums"),
    ],
)
def test_the_advice_names_a_setting_as_its_user_set_it(exc, setting):
    variables = {
        "min_file_age_seconds": "MIN_FILE_AGE_SECONDS",
        "server_checksums": "SERVER_CHECKSUMS",
    }
    variable = variables.get(setting, f"SFTP_{setting}")
    assert variable.upper() in advice(exc)  # the single source: its environment variables
    in_file = advice(exc, SettingNames("source partner_a in /etc/sources.yaml"))
    assert f"`{setting}`" in in_file and "of source partner_a in /etc/sources.yaml" in in_file
    assert "SFTP_" not in in_file and "MIN_FILE_AGE" not in in_file
