"""Connecting to the real sshd, through either transport (paramiko's, or OpenSSH's ssh client:
sftp/openssh.py): host keys are verified, never silently accepted; logins refused say so;
pipelined reads return the exact bytes. (Remote paths filtered and shown, with no server:
unit/sftp/test_client.py.)"""

import os
import re
import subprocess

import paramiko
import pytest

from sftp_minio_assets.sftp.client import (
    CredentialsError,
    HostKeyError,
    ServerUnreachable,
    SFTPConnector,
)
from sftp_minio_assets.sftp.openssh import OpenSSHConnector
from sftp_minio_assets.sftp.reads import read_chunks
from sftp_minio_assets_tests.support import running


@pytest.fixture(params=["paramiko", "openssh"])
def transport(request) -> str:
    return request.param


@pytest.mark.integration
def test_a_pinned_fingerprint_is_enough_to_connect(env, transport):
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    sftp = env.source(transport=transport, **pinned)
    env.write("hello.txt", b"hi")
    assert [f.path for f in sftp.list_files().files] == ["hello.txt"]


@pytest.mark.integration
def test_a_wrong_host_key_refuses_to_connect(env, tmp_path, transport):
    other = paramiko.Ed25519Key.from_private_key_file(str(env.stack.ssh.private_key_path))
    known_hosts = tmp_path / "known_hosts"
    ssh = env.stack.ssh
    known_hosts.write_text(f"[{ssh.host}]:{ssh.port} {other.get_name()} {other.get_base64()}\n")
    seen = re.escape(f"host key {env.stack.ssh.host_key_sha256} does not match")
    with pytest.raises(HostKeyError, match=seen):
        env.source(known_hosts_path=str(known_hosts), transport=transport).list_files()
    pinned = dict(known_hosts_path=None, host_key_sha256="SHA256:" + "A" * 43)
    with pytest.raises(HostKeyError, match="does not match SFTP_HOST_KEY_SHA256"):
        env.source(transport=transport, **pinned).list_files()


@pytest.mark.integration
def test_no_host_key_setting_is_a_clear_error_unless_explicitly_allowed(env, transport):
    connector = OpenSSHConnector if transport == "openssh" else SFTPConnector
    with pytest.raises(HostKeyError, match="SFTP_KNOWN_HOSTS_PATH"):
        connector(env.connection(known_hosts_path=None).settings)
    env.write("x.txt", b"x")
    allowed = env.source(known_hosts_path=None, allow_unknown_host=True, transport=transport)
    assert [f.path for f in allowed.list_files().files] == ["x.txt"]


@pytest.mark.integration
def test_a_wrong_key_is_an_authentication_error(env, tmp_path, transport):
    stranger = tmp_path / "stranger"
    key = paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(stranger))
    with pytest.raises(CredentialsError, match="refused the key login of 'sftpminio'"):
        env.source(private_key=str(stranger), transport=transport).list_files()


@pytest.mark.integration
def test_a_server_that_is_not_there_is_unreachable(env, transport):
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    with pytest.raises(ServerUnreachable, match="cannot open an SSH session"):
        env.source(port=1, transport=transport, **pinned).list_files()


@pytest.mark.integration
def test_a_password_login(env, transport):
    """Through OpenSSH, the password goes through SSH_ASKPASS as the passphrase does."""
    if env.stack.ssh.password is None:
        pytest.skip("the test sshd offers password logins only when the tests run as root")
    env.write("p.txt", b"p")
    login = dict(private_key=None, transport=transport)
    source = env.source(password=env.stack.ssh.password, **login)
    assert [f.path for f in source.list_files().files] == ["p.txt"]
    with pytest.raises(CredentialsError, match="refused the password login") as refused:
        env.source(password="wrong-password", **login).list_files()
    assert "wrong-password" not in str(refused.value)


@pytest.mark.integration
def test_an_encrypted_key_is_opened_with_its_passphrase_through_openssh(env, tmp_path):
    """OpenSSH reads the passphrase from SSH_ASKPASS, which prints it from the ssh client's
    environment: never on a command line, and only for that process."""
    key = tmp_path / "encrypted"
    key.write_bytes(env.stack.ssh.private_key_path.read_bytes())
    key.chmod(0o600)
    subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "s3cret-phrase", "-f", str(key)])
    env.write("x.txt", b"x")
    source = env.source(private_key=str(key), password="s3cret-phrase", transport="openssh")
    assert [f.path for f in source.list_files().files] == ["x.txt"]
    with pytest.raises(CredentialsError, match="SFTP_PASSWORD"):
        env.source(private_key=str(key), password="wrong", transport="openssh").list_files()


@pytest.mark.integration
@pytest.mark.parametrize(
    "window, request_size",
    [(16, 255 * 1024), (1, 4096), (4, 1024 * 1024)],  # 1 MiB: more than sshd serves at once
)
def test_pipelined_reads_return_the_exact_bytes(env, window, request_size, transport):
    data = os.urandom(5 * 1024 * 1024 + 123)
    env.write("read.bin", data)
    sftp = env.source(transport=transport).pool.get()
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


@pytest.mark.integration
def test_files_copied_on_threads_through_openssh_leave_no_ssh_client_behind(env):
    for n in range(40):
        env.write(f"f{n}.bin", os.urandom(20_000 + n))
    earlier = ssh_clients(env)  # other tests' sources, still open
    source = env.source(transport="openssh", max_workers=4)
    outcomes = list(source.worker().transfer_many([f"f{n}.bin" for n in range(40)], 4))
    assert {o.status for o in outcomes} == {"transferred"}, [o.message for o in outcomes]
    # Each thread closed its session once no file was left to start: ssh ended, and reaped.
    assert set(ssh_clients(env)) - set(earlier) == set()  # others' may have ended meanwhile
    source.pool.close()


def ssh_clients(env) -> list[int]:
    """The ssh clients of this process connected to the test's sshd."""
    port = str(env.stack.ssh.port)
    return [p.pid for p in running("ssh") if p.ppid == os.getpid() and port in p.command]
