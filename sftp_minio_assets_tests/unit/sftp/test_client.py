"""The SFTP client without a server: remote paths filtered and shown as they are, a file's
signature, and connection errors naming the settings as set. (Connecting to the real sshd,
host keys verified, pipelined reads: integration/test_sftp.py.)"""

import os

import pytest

from sftp_minio_assets.sftp.client import (
    ENVIRONMENT,
    CredentialsError,
    FileFilter,
    HostKeyError,
    RemoteFile,
    SettingNames,
    SFTPConnector,
    SFTPSettings,
    _load_private_key,
    display,
    remote_bytes,
)
from sftp_minio_assets.sftp.listing import _root_unavailable

IN_FILE = SettingNames("source partner_a in /etc/sources.yaml")


@pytest.mark.parametrize(
    "include, exclude, accepted",
    [
        ((), (), ["a.csv", "in/b.CSV", "c.tmp"]),  # no filter: everything
        (("*.csv",), (), ["a.csv"]),  # case-sensitive, like the server's names
        (("*.csv", "*.CSV"), ("in/*",), ["a.csv"]),  # exclude wins
        ((), ("*.tmp",), ["a.csv", "in/b.CSV"]),
        (("in/*",), (), ["in/b.CSV"]),  # globs match the path relative to the root
    ],
)
def test_filters_include_then_exclude_on_the_relative_path(include, exclude, accepted):
    file_filter = FileFilter(include, exclude)
    assert [p for p in ["a.csv", "in/b.CSV", "c.tmp"] if file_filter.accepts(p)] == accepted


def test_a_name_that_is_not_utf8_keeps_its_bytes_and_is_shown_readably():
    raw = b"caf\xe9 report.csv"
    path = os.fsdecode(raw)
    assert remote_bytes(path) == raw
    assert display(path) == "caf\\xe9 report.csv"
    assert display("naïve.csv") == "naïve.csv"


def test_a_files_signature_changes_with_its_size_or_mtime():
    file = RemoteFile("a.csv", 10, 1000)
    assert file.signature == "10:1000"
    for changed in (RemoteFile("a.csv", 11, 1000), RemoteFile("a.csv", 10, 1001)):
        assert changed.signature != file.signature


# How messages name a setting: as the source's user set it (no server needed).


@pytest.mark.parametrize(
    "names, setting, spelled",
    [
        (ENVIRONMENT, "password", "SFTP_PASSWORD"),
        (ENVIRONMENT, "private_key", "SFTP_PRIVATE_KEY_PATH"),
        (ENVIRONMENT, "root", "SFTP_ROOT"),
        (ENVIRONMENT, "min_file_age_seconds", "MIN_FILE_AGE_SECONDS"),
        (IN_FILE, "password", "`password` of source partner_a in /etc/sources.yaml"),
        (IN_FILE, "root", "`root` of source partner_a in /etc/sources.yaml"),
        # The key file's path unless the user gave the key itself (PEM text) under private_key.
        (IN_FILE, "private_key", "`private_key_path` of source partner_a in /etc/sources.yaml"),
        (
            SettingNames(IN_FILE.where, {"private_key": "private_key"}),
            "private_key",
            "`private_key` of source partner_a in /etc/sources.yaml",
        ),
    ],
)
def test_a_setting_is_named_as_its_user_set_it(names, setting, spelled):
    assert names(setting) == spelled


def test_settings_named_together_name_their_source_once():
    assert ENVIRONMENT("host", "port") == "SFTP_HOST / SFTP_PORT"
    assert IN_FILE("known_hosts_path", "host_key_sha256", joined=" or ") == (
        "`known_hosts_path` or `host_key_sha256` of source partner_a in /etc/sources.yaml"
    )


@pytest.mark.parametrize("names", [ENVIRONMENT, IN_FILE])
def test_the_connection_errors_name_the_settings_as_set(tmp_path, names):
    settings = SFTPSettings(host="h", username="u", private_key=str(tmp_path / "no"), names=names)
    with pytest.raises(HostKeyError) as no_host_key:
        SFTPConnector(settings)
    with pytest.raises(CredentialsError) as no_key_file:
        _load_private_key(settings)
    no_root = _root_unavailable(settings.server, "/in", names, "it does not exist")
    for error, named in [
        (no_host_key.value, names("known_hosts_path", "host_key_sha256", joined=" or ")),
        (no_key_file.value, names("private_key")),
        (no_root, names("root")),
    ]:
        assert named in str(error)
        assert ("SFTP_" in str(error)) == (names is ENVIRONMENT)
