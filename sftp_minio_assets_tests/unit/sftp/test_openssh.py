"""The openssh transport's reading of what `ssh` says when it fails, without a server: the same
errors and messages as the paramiko transport's (integration/test_sftp.py runs both against a
real sshd). And which transport runs when."""

import shutil

import pytest

from sftp_minio_assets.sftp.client import CredentialsError, SFTPConnector, SFTPSettings
from sftp_minio_assets.sftp.openssh import AutoConnector, OpenSSHConnector, connector_for

PIN = "SHA256:" + "A" * 43


def connector(**settings) -> OpenSSHConnector:
    return OpenSSHConnector(SFTPSettings(host="h", username="u", host_key_sha256=PIN, **settings))


@pytest.mark.parametrize(
    "settings, method, offered",
    [({"password": "pw"}, "password", "publickey"), ({"private_key": "k"}, "key", "password")],
)
def test_a_login_method_the_server_does_not_offer_is_named_with_those_it_does(
    settings, method, offered
):
    found = connector(**settings)
    found._key = "k" if method == "key" else None  # as _prepare sets it
    error = found._failure(f"u@h: Permission denied ({offered}).\r\n", EOFError())
    assert isinstance(error, CredentialsError)
    assert f"does not accept {method} logins (it accepts: {offered})" in str(error)
    assert "pw" not in str(error)


def test_a_refused_password_says_so_without_the_password():
    found = connector(password="s3cret")
    error = found._failure("u@h: Permission denied (publickey,password).\r\n", EOFError())
    assert isinstance(error, CredentialsError)
    assert "refused the password login of 'u'" in str(error) and "s3cret" not in str(error)


def test_auto_chooses_by_distance_where_ssh_is_installed(monkeypatch):
    settings = SFTPSettings(host="h", username="u", host_key_sha256=PIN)
    assert type(connector_for(settings)) is (
        AutoConnector if shutil.which("ssh") else SFTPConnector
    )
    monkeypatch.setenv("PATH", "/nonexistent")
    assert type(connector_for(settings)) is SFTPConnector
    forced = SFTPSettings(host="h", username="u", host_key_sha256=PIN, transport="openssh")
    assert type(connector_for(forced)) is OpenSSHConnector
    paramiko_only = SFTPSettings(host="h", username="u", host_key_sha256=PIN, transport="paramiko")
    assert type(connector_for(paramiko_only)) is SFTPConnector
