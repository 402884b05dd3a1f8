"""Connecting to the real sshd: host keys are verified, never silently accepted; remote paths
filtered and shown as they are (no server needed for those)."""

import os

import paramiko
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
    _root_unavailable,
    display,
    read_chunks,
    remote_bytes,
)

IN_FILE = SettingNames("source partner_a in /etc/sources.yaml")


@pytest.mark.integration
def test_a_pinned_fingerprint_is_enough_to_connect(env):
    sftp = env.source(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    env.write("hello.txt", b"hi")
    assert [f.path for f in sftp.list_files().files] == ["hello.txt"]


@pytest.mark.integration
def test_a_wrong_host_key_refuses_to_connect(env, tmp_path):
    other = paramiko.Ed25519Key.from_private_key_file(str(env.stack.ssh.private_key_path))
    known_hosts = tmp_path / "known_hosts"
    ssh = env.stack.ssh
    known_hosts.write_text(f"[{ssh.host}]:{ssh.port} {other.get_name()} {other.get_base64()}\n")
    with pytest.raises(HostKeyError, match="does not match"):
        env.source(known_hosts_path=str(known_hosts)).list_files()
    with pytest.raises(HostKeyError, match="does not match SFTP_HOST_KEY_SHA256"):
        env.source(known_hosts_path=None, host_key_sha256="SHA256:" + "A" * 43).list_files()


@pytest.mark.integration
def test_no_host_key_setting_is_a_clear_error_unless_explicitly_allowed(env):
    with pytest.raises(HostKeyError, match="SFTP_KNOWN_HOSTS_PATH"):
        SFTPConnector(env.connection(known_hosts_path=None).settings)
    env.write("x.txt", b"x")
    allowed = env.source(known_hosts_path=None, allow_unknown_host=True)
    assert [f.path for f in allowed.list_files().files] == ["x.txt"]


@pytest.mark.integration
def test_a_wrong_key_is_an_authentication_error(env, tmp_path):
    stranger = tmp_path / "stranger"
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(stranger))
    with pytest.raises(paramiko.AuthenticationException):
        env.source(private_key=str(stranger)).list_files()


@pytest.mark.integration
@pytest.mark.parametrize(
    "window, request_size",
    [(16, 255 * 1024), (1, 4096), (4, 1024 * 1024)],  # 1 MiB: more than sshd serves at once
)
def test_pipelined_reads_return_the_exact_bytes(env, window, request_size):
    data = os.urandom(5 * 1024 * 1024 + 123)
    env.write("read.bin", data)
    sftp = env.source().pool.get()
    with sftp.open(str(env.root / "read.bin"), "rb") as f:
        assert b"".join(read_chunks(f, len(data), window, request_size)) == data
    # Replies to the reads are all consumed: the session is still in step.
    assert sftp.stat(str(env.root / "read.bin")).st_size == len(data)


@pytest.mark.integration
def test_reads_stop_at_the_end_of_a_file_that_shrank(env):
    path = env.write("shrunk.bin", os.urandom(3 * 1024 * 1024))
    sftp = env.source().pool.get()
    with sftp.open(str(path), "rb") as f:
        os.truncate(path, 1024 * 1024)
        assert len(b"".join(read_chunks(f, 3 * 1024 * 1024))) == 1024 * 1024
    assert sftp.stat(str(path)).st_size == 1024 * 1024


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
