"""The local stack runs real servers: usable, loopback-only, restartable, and gone afterwards."""

import base64
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import suppress
from pathlib import Path

import botocore.session
import paramiko
import psycopg
import pytest
from botocore.config import Config

from devstack.local_stack import LocalStack
from sftp_minio_assets_tests.support import PROJECT

pytestmark = pytest.mark.integration  # starts the servers themselves

STARTUP: dict[str, float] = {}


@pytest.fixture(scope="module")
def stack():
    started = time.monotonic()
    with LocalStack() as running:
        STARTUP["seconds"] = time.monotonic() - started
        yield running


# --- helpers ---------------------------------------------------------------------------------


def ssh_connect(stack: LocalStack, trust_host: bool = True) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    if trust_host:
        client.load_host_keys(str(stack.ssh.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        stack.ssh.host,
        stack.ssh.port,
        username=stack.ssh.username,
        key_filename=str(stack.ssh.private_key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def s3_client(stack: LocalStack, secret_key: str | None = None):
    # boto3 is not a project dependency; botocore is (through s3fs).
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=stack.s3.endpoint_url,
        aws_access_key_id=stack.s3.access_key,
        aws_secret_access_key=secret_key or stack.s3.secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Running, or a zombie that a living parent of ours still has to reap.

    A zombie handed to process 1 is not: process 1 here never reaps, so an sshd session
    process (running as the unprivileged SFTP user) whose monitor was killed stays listed,
    holding nothing but its PID.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    state, parent = fields[0], int(fields[1])
    return not (state == "Z" and parent == 1)


def stack_pids(stack: LocalStack) -> list[int]:
    return [pid for server in stack.servers for pid in server.pids()]


def _address(hex_address: str) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    # /proc/net prints each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw), int(port, 16)


def listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(protocol, address, port) of every listening TCP / unconnected UDP socket of `pids`."""
    inodes = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except FileNotFoundError:
            continue  # a short-lived process (a PostgreSQL backend) ended meanwhile
        for fd in fds:
            with suppress(FileNotFoundError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = []
    for proto, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == state:
                found.append((proto, *_address(fields[1])))
    return found


# --- the running stack -----------------------------------------------------------------------


def test_starts_quickly_with_a_complete_env(stack):
    print(f"stack started in {STARTUP['seconds']:.1f}s")
    assert STARTUP["seconds"] < 30
    env = stack.env("my-bucket")
    assert env == {
        "SFTP_HOST": "127.0.0.1",
        "SFTP_PORT": str(stack.ssh.port),
        "SFTP_USERNAME": stack.ssh.username,
        "SFTP_PRIVATE_KEY_PATH": str(stack.ssh.private_key_path),
        "SFTP_KNOWN_HOSTS_PATH": str(stack.ssh.known_hosts_path),
        "SFTP_ROOT": str(stack.ssh.root),
        "MINIO_ENDPOINT_URL": f"http://127.0.0.1:{stack.s3.endpoint_url.rsplit(':', 1)[1]}",
        "MINIO_ACCESS_KEY": stack.s3.access_key,
        "MINIO_SECRET_KEY": stack.s3.secret_key,
        "MINIO_BUCKET": "my-bucket",
        "TRANSFER_DB_URL": stack.postgres.dsn,
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": str(stack.postgres.port),
        "DAGSTER_PG_USER": stack.postgres.user,
        "DAGSTER_PG_PASSWORD": stack.postgres.password,
        "DAGSTER_PG_DB": "dagster",
        # a run's planned events reach the event log as one batch (instance_storage.py)
        "DAGSTER_EVENT_BATCH_SIZE": "5000",
    }
    assert stack.env()["MINIO_BUCKET"] == "sftp-minio-assets"
    assert stack.postgres.dsn == (
        f"postgresql://{stack.postgres.user}:{stack.postgres.password}"
        f"@127.0.0.1:{stack.postgres.port}/transfer_log"
    )
    assert stack.ssh.host_key_sha256.startswith("SHA256:")
    assert stack.ssh.known_hosts_path.read_text().startswith(f"[127.0.0.1]:{stack.ssh.port} ")


def test_sftp_with_key_auth_and_a_verified_host_key(stack):
    root = stack.ssh.root
    assert root.stat().st_mode & 0o755 == 0o755
    (root / "seen.txt").write_bytes(b"from the server side")
    client = ssh_connect(stack)
    try:
        key = client.get_transport().get_remote_server_key()
        digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
        assert f"SHA256:{digest}" == stack.ssh.host_key_sha256
        sftp = client.open_sftp()
        assert "seen.txt" in sftp.listdir(str(root))
        with sftp.open(f"{root}/put.bin", "wb") as f:
            f.write(b"x" * 100_000)
        assert (root / "put.bin").read_bytes() == b"x" * 100_000
    finally:
        client.close()


def test_sftp_rejects_an_unknown_host_key(stack):
    with pytest.raises(paramiko.SSHException):
        ssh_connect(stack, trust_host=False)


def test_many_concurrent_sftp_sessions(stack):
    clients = [ssh_connect(stack) for _ in range(20)]
    try:
        assert all(c.open_sftp().listdir(str(stack.ssh.root)) is not None for c in clients)
    finally:
        for c in clients:
            c.close()


def test_s3_bucket_and_object_roundtrip(stack):
    s3 = s3_client(stack)
    s3.create_bucket(Bucket="roundtrip")
    s3.put_object(Bucket="roundtrip", Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket="roundtrip", Key="a/b.txt")["Body"].read() == b"hello"
    assert "roundtrip" in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_s3_refuses_wrong_credentials(stack):
    s3 = s3_client(stack, secret_key="wrong")
    with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied"):
        s3.list_buckets()


def test_postgres_databases(stack):
    with psycopg.connect(stack.postgres.dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("transfer_log",)
    env = stack.env()
    with psycopg.connect(
        host=env["DAGSTER_PG_HOST"],
        port=int(env["DAGSTER_PG_PORT"]),
        user=env["DAGSTER_PG_USER"],
        password=env["DAGSTER_PG_PASSWORD"],
        dbname=env["DAGSTER_PG_DB"],
    ) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    name = f"t_{uuid.uuid4().hex[:8]}"
    dsn = stack.postgres.create_database(name)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
    with pytest.raises(psycopg.errors.DuplicateDatabase):
        stack.postgres.create_database(name)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn.replace(stack.postgres.password, "wrong"), connect_timeout=5)


def test_listens_on_loopback_only(stack):
    client = ssh_connect(stack)  # session processes count too
    try:
        found = listening(stack_pids(stack))
    finally:
        client.close()
    ports = {port for _, _, port in found}
    assert {stack.ssh.port, stack.postgres.port, *stack.s3.ports} - {
        stack.s3.port_flags["webdav.port"]
    } <= ports
    assert {(proto, address) for proto, address, _ in found} == {("tcp", "127.0.0.1")}


# --- stop and start again (fault injection) --------------------------------------------------


def test_sshd_restart_cuts_sessions_and_keeps_port(stack):
    port = stack.ssh.port
    client = ssh_connect(stack)
    sftp = client.open_sftp()
    sftp.listdir(str(stack.ssh.root))
    before = stack.ssh.pids()
    assert len(before) > 1  # the listener and the session

    stack.ssh.stop()
    assert not stack.ssh.is_running()
    assert not accepts(port)
    assert not any(alive(pid) for pid in before)
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        sftp.listdir(str(stack.ssh.root))
    client.close()

    stack.ssh.start()
    assert stack.ssh.is_running() and stack.ssh.port == port
    client = ssh_connect(stack)
    try:
        assert "seen.txt" in client.open_sftp().listdir(str(stack.ssh.root))
    finally:
        client.close()


def test_s3_restart_keeps_objects_and_port(stack):
    port = stack.s3.port
    s3 = s3_client(stack)
    s3.create_bucket(Bucket="survives")
    s3.put_object(Bucket="survives", Key="before", Body=b"written before the restart")
    pid = stack.s3.pid

    stack.s3.stop()
    assert not stack.s3.is_running() and not alive(pid)
    assert not any(accepts(p) for p in stack.s3.ports)

    stack.s3.start()
    assert stack.s3.endpoint_url.endswith(f":{port}")
    body = s3.get_object(Bucket="survives", Key="before")["Body"].read()
    assert body == b"written before the restart"
    s3.put_object(Bucket="survives", Key="after", Body=b"and after")
    assert s3.get_object(Bucket="survives", Key="after")["Body"].read() == b"and after"


def test_postgres_restart_keeps_data_and_port(stack):
    port = stack.postgres.port
    dsn = stack.postgres.create_database(f"r_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (v text)")
        conn.execute("INSERT INTO t VALUES ('kept')")
    idle = psycopg.connect(dsn)
    before = stack.postgres.pids()

    stack.postgres.stop()
    assert not stack.postgres.is_running()
    assert not accepts(port)
    assert not any(alive(pid) for pid in before)
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    idle.close()

    stack.postgres.start()
    assert stack.postgres.port == port
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("kept",)]


# --- whole stack lifecycle -------------------------------------------------------------------


def test_exit_leaves_no_process_port_or_file():
    with LocalStack() as stack:
        client = ssh_connect(stack)
        conn = psycopg.connect(stack.postgres.dsn)
        pids = stack_pids(stack)
        ports = [stack.ssh.port, stack.postgres.port, *stack.s3.ports]
        base = stack.base
        sockets = stack.s3._grpc_sockets()
        assert all(alive(pid) for pid in pids)
    client.close()
    conn.close()
    assert not [pid for pid in pids if alive(pid)]
    assert not [port for port in ports if accepts(port)]
    assert not base.exists()
    assert not [path for path in sockets if path.exists()]


def test_failed_start_stops_what_did_start_and_shows_the_log():
    stack = LocalStack()
    started = []
    for server in (stack.ssh, stack.s3):
        original = server.start

        def start(original=original, server=server):
            original()
            started.extend(server.pids())

        server.start = start
    stack.postgres._command = lambda: ["sh", "-c", "echo boom-from-the-server >&2; exit 3"]
    with pytest.raises(RuntimeError) as failure, stack:
        pass
    message = str(failure.value)
    assert "postgres exited with 3" in message
    assert "boom-from-the-server" in message
    assert len(started) >= 2
    assert not [pid for pid in started if alive(pid)]
    assert not stack.base.exists()


def test_main_prints_exports_and_stops_on_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "devstack.local_stack"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=PROJECT,
    )
    try:
        env, comment = {}, ""
        for line in process.stdout:
            if line.startswith("export "):
                name, value = line.removeprefix("export ").rstrip("\n").split("=", 1)
                env[name] = shlex.split(value)[0]
            elif line.startswith("#"):
                comment = line
                break
        assert "local stack up" in comment, comment
        assert set(env) >= {"SFTP_PORT", "MINIO_ENDPOINT_URL", "TRANSFER_DB_URL", "DAGSTER_PG_DB"}
        base = Path(env["SFTP_ROOT"]).parent
        ports = [int(env["SFTP_PORT"]), int(env["DAGSTER_PG_PORT"])]
        ports.append(int(env["MINIO_ENDPOINT_URL"].rsplit(":", 1)[1]))
        assert all(accepts(port) for port in ports)
        with psycopg.connect(env["TRANSFER_DB_URL"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert not [port for port in ports if accepts(port)]
        assert not base.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
