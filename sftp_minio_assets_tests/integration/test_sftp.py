"""Connecting to the real sshd: host keys are verified, never silently accepted; pipelined
reads return the exact bytes. (Remote paths filtered and shown, with no server:
unit/sftp/test_client.py.)"""

import os

import paramiko
import pytest

from sftp_minio_assets.sftp.client import (
    HostKeyError,
    SFTPConnector,
    read_chunks,
)


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
