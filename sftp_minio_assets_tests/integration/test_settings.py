"""Faults of servers that are down or refuse us are reported by the sensor and the runs naming
the server, the path or the setting, and what to do. Issue #10, one test per item. (Settings
refused at load: unit/defs/test_settings.py.)"""

import os
import shutil
import socket
import subprocess
import time

import dagster as dg
import pytest

from devstack.demo import apply_partition_requests
from sftp_minio_assets.defs.assets import build_files_asset
from sftp_minio_assets.defs.resources import TransferLogResource
from sftp_minio_assets.defs.sensors import build_new_files_sensor
from sftp_minio_assets.sftp.client import CredentialsError, RootUnavailable, ServerUnreachable
from sftp_minio_assets.worker.errors import TransferLogUnavailable


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tick(env, instance, **overrides) -> dg.SensorResult:
    """One evaluation of the default source's sensor with the test's resources, their settings
    overridden as env.resources takes them."""
    sensor = build_new_files_sensor("default", build_files_asset("default"))
    resources = env.resources(**overrides)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    apply_partition_requests(instance, result)
    return result


def requested(result: dg.SensorResult) -> int:
    return len(result.run_requests or [])


@pytest.mark.integration
def test_max_workers_wrong_only_at_run_time_fails_the_run_at_once(env, instance, monkeypatch):
    env.write("kept.txt", b"still here")
    instance.add_dynamic_partitions("files_default", ["kept.txt"])
    monkeypatch.setenv("MAX_WORKERS", "0")  # say the run's environment differs from the load's
    started = time.monotonic()
    result = dg.materialize(
        [build_files_asset()],  # with the asset's step retry policy, as deployed
        instance=instance,
        partition_key="kept.txt",
        resources=env.resources(max_workers=dg.EnvVar.int("MAX_WORKERS")),
        raise_on_error=False,
    )
    assert not result.success
    assert time.monotonic() - started < 20  # no retries, no backoff
    failure = "\n".join(str(event) for event in result.all_events if event.is_failure)
    assert "max_workers" in failure and "must be at least 1" in failure
    assert not any(event.event_type_value == "STEP_RESTARTED" for event in result.all_events)
    assert env.rows() == {}  # nothing claimed, nothing lost
    assert (env.root / "kept.txt").read_bytes() == b"still here"


# 4. An invalid endpoint or bucket that reaches a run fails it at once, naming the variable.


@pytest.mark.integration
@pytest.mark.parametrize(
    "variable, value, field",
    [
        ("MINIO_ENDPOINT_URL", "localhost:9000", "endpoint_url"),
        ("MINIO_BUCKET", "Not_A_Bucket", "bucket"),
    ],
)
def test_an_invalid_endpoint_or_bucket_fails_the_run_at_once(
    env, instance, monkeypatch, variable, value, field
):
    env.write("waiting.txt", b"not lost")
    instance.add_dynamic_partitions("files_default", ["waiting.txt"])
    monkeypatch.setenv(variable, value)
    started = time.monotonic()
    result = dg.materialize(
        [build_files_asset()],
        instance=instance,
        partition_key="waiting.txt",
        resources=env.resources(minio=env.minio(**{field: dg.EnvVar(variable)})),
        raise_on_error=False,
    )
    assert not result.success
    assert time.monotonic() - started < 20  # not retried as if the endpoint were down
    failure = "\n".join(str(event) for event in result.all_events if event.is_failure)
    assert variable in failure and "e.g." in failure
    assert "reachable" not in failure
    assert not any(event.event_type_value == "STEP_RESTARTED" for event in result.all_events)
    assert env.rows() == {}
    assert (env.root / "waiting.txt").read_bytes() == b"not lost"


# 5. The sensor's own errors name the server, the path or the setting, and what to do.


@pytest.mark.integration
def test_a_missing_root_fails_the_tick_naming_the_root_and_nothing_is_lost(env, instance):
    env.write("report.csv", b"a,b")
    with pytest.raises(RootUnavailable) as error:
        tick(env, instance, sftp={"root": str(env.root / "missing")})
    message = str(error.value)
    assert str(env.root / "missing") in message and "does not exist" in message
    assert "SFTP_ROOT" in message and env.stack.ssh.host in message
    assert instance.get_dynamic_partitions("files_default") == []
    assert requested(tick(env, instance)) == 1  # fixed: the file is found


@pytest.mark.integration
def test_a_refused_login_fails_the_tick_naming_the_server_and_the_settings(env, instance):
    password_login = {"private_key": None, "password": "not-the-password"}
    with pytest.raises(CredentialsError) as error:
        tick(env, instance, sftp=password_login)
    message = str(error.value)
    ssh = env.stack.ssh
    assert f"sftp://{ssh.username}@{ssh.host}:{ssh.port}" in message
    # The test sshd offers password logins as root, and the wrong one is refused; without
    # them it says so (unit/sftp/test_openssh.py).
    assert "refused the password login" in message or (
        os.geteuid() != 0 and "does not accept password logins" in message
    )
    assert "SFTP_PASSWORD" in message and "not-the-password" not in message


@pytest.mark.integration
def test_an_encrypted_key_without_or_with_a_wrong_passphrase_says_so(env, instance, tmp_path):
    key = tmp_path / "id_ed25519"
    shutil.copy(env.stack.ssh.private_key_path, key)
    key.chmod(0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-P", "", "-N", "right-passphrase", "-f", str(key)], check=True
    )
    env.write("report.csv", b"a,b")
    with pytest.raises(CredentialsError, match="is encrypted and no passphrase is set"):
        tick(env, instance, sftp={"private_key": str(key)})
    wrong = {"private_key": str(key), "password": "wrong-passphrase"}
    with pytest.raises(CredentialsError) as error:
        tick(env, instance, sftp=wrong)
    assert "cannot be decrypted with the passphrase in SFTP_PASSWORD" in str(error.value)
    assert str(key) in str(error.value) and "wrong-passphrase" not in str(error.value)
    right = {"private_key": str(key), "password": "right-passphrase"}
    assert requested(tick(env, instance, sftp=right)) == 1


@pytest.mark.integration
def test_an_unreachable_sftp_server_fails_the_tick_naming_it(env, instance):
    port = closed_port()
    pinned = dict(known_hosts_path=None, host_key_sha256=env.stack.ssh.host_key_sha256)
    with pytest.raises(ServerUnreachable) as error:
        tick(env, instance, sftp={"port": port, **pinned})
    assert f":{port}" in str(error.value) and "SFTP_PORT" in str(error.value)


@pytest.mark.integration
def test_an_unreachable_transfer_log_fails_the_tick_naming_the_database(env, instance):
    env.write("report.csv", b"a,b")
    password = env.stack.postgres.password
    url = f"postgresql://{env.stack.postgres.user}:{password}@127.0.0.1:{closed_port()}/x"
    with pytest.raises(TransferLogUnavailable) as error:
        tick(env, instance, transfer_log=TransferLogResource(url=url))
    message = str(error.value)
    assert "TRANSFER_DB_URL" in message and "127.0.0.1" in message and "up and reachable" in message
    assert password not in message
    assert instance.get_dynamic_partitions("files_default") == []


# 6. A root the account cannot read is an error, not an idle source.


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root directory the SFTP user cannot read")
def test_a_root_the_account_cannot_read_is_an_error_naming_it(env, instance):
    if env.stack.ssh.username == "root":
        pytest.skip("the SFTP user is root, who reads everything")
    env.write("report.csv", b"a,b")
    env.root.chmod(0o311)  # the SFTP user may pass through, not list
    try:
        with pytest.raises(RootUnavailable) as error:
            tick(env, instance)
    finally:
        env.root.chmod(0o755)
    assert str(env.root) in str(error.value) and "may not list it" in str(error.value)
    assert requested(tick(env, instance)) == 1  # readable again: the file was not forgotten
