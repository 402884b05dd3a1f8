"""Secrets never leave; bad credentials and host keys fail at once, with what to fix."""

import os
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from sftp_minio_assets_tests.support import files, materialize, statuses

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

WRONG_PASSWORD = "hunter2-not-the-password"
WRONG_S3_SECRET = "wrong-secret-Zq8vJ1x2"


def run_with(env, instance, paths, **overrides) -> dg.ExecuteInProcessResult:
    """One run over paths, the resources' settings overridden as env.resources takes them."""
    known = set(instance.get_dynamic_partitions("files_default"))
    instance.add_dynamic_partitions("files_default", [p for p in paths if p not in known])
    return dg.materialize(
        [files],
        instance=instance,
        resources=env.resources(**{"retries": 0, **overrides}),
        tags={
            "dagster/asset_partition_range_start": paths[0],
            "dagster/asset_partition_range_end": paths[-1],
        },
        raise_on_error=False,
    )


def everything_written(env, instance) -> str:
    """Every run's event log (messages, metadata, errors) and the whole transfer log."""
    texts = []
    for run in instance.get_runs():
        texts += [str(record) for record in instance.all_logs(run.run_id)]
    with psycopg.connect(env.db_url) as conn:
        texts += [str(row) for row in conn.execute("SELECT * FROM file_transfer_log")]
    return "\n".join(texts)


def test_wrong_host_key_and_wrong_password_fail_at_once_saying_what_to_fix(env, instance, tmp_path):
    env.write("a.txt", b"a")
    env.write("b.txt", b"b")
    ssh = env.stack.ssh
    impostor = tmp_path / "known_hosts"
    impostor.write_text(
        f"[{ssh.host}]:{ssh.port} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIGg0bmJ2b1Z0c2xNc1ZQb0tYbUZ5cVBqR0ZzVnJ0a2Jq\n"
    )
    result = run_with(env, instance, ["a.txt", "b.txt"], sftp={"known_hosts_path": str(impostor)})
    assert not result.success
    rows = env.rows()
    for path in ("a.txt", "b.txt"):
        assert rows[path]["status"] == "FAILED" and rows[path]["attempts"] == 1
        assert "does not match" in rows[path]["error_message"]
        assert "SFTP_KNOWN_HOSTS_PATH" in rows[path]["error_message"]

    wrong_password = {"private_key": None, "password": WRONG_PASSWORD}
    result = run_with(env, instance, ["a.txt", "b.txt"], sftp=wrong_password)
    assert not result.success
    rows = env.rows()
    for path in ("a.txt", "b.txt"):
        assert rows[path]["attempts"] == 2  # one attempt each: permanent, not retried
        assert "Check SFTP_USERNAME" in rows[path]["error_message"]
    assert set(statuses(instance, ["a.txt", "b.txt"]).values()) == {"FAILED"}
    assert WRONG_PASSWORD not in everything_written(env, instance)


def test_no_secret_appears_in_logs_metadata_errors_or_the_transfer_log(env, instance, capfd):
    env.write("ok.txt", b"fine")
    env.write("ok2.txt", b"fine too")
    assert materialize(env, instance, ["ok.txt", "ok2.txt", "missing.txt"]).success is False
    wrong_secret = env.minio(secret_key=WRONG_S3_SECRET)
    env.write("refused.txt", b"refused by S3")
    assert not run_with(env, instance, ["refused.txt"], minio=wrong_secret).success
    assert env.rows()["refused.txt"]["status"] == "FAILED"

    written = everything_written(env, instance)
    out, err = capfd.readouterr()
    private_key_lines = [
        line
        for line in Path(env.stack.ssh.private_key_path).read_text().splitlines()
        if len(line) > 20 and "PRIVATE KEY" not in line
    ]
    secrets = [
        env.stack.s3.secret_key,
        WRONG_S3_SECRET,
        env.stack.postgres.password,
        *private_key_lines,
    ]
    for secret in secrets:
        for where, text in (
            ("event logs and transfer log", written),
            ("stdout", out),
            ("stderr", err),
        ):
            assert secret not in text, f"a secret leaked into the {where}"
    assert "ok.txt" in written and "missing.txt" in written  # the texts searched are the real ones


@pytest.mark.skipif(os.geteuid() != 0, reason="revoking needs a file the SFTP user does not own")
def test_a_file_the_sftp_user_cannot_read_fails_with_what_to_do(env, instance):
    if env.stack.ssh.username == "root":
        pytest.skip("the SFTP user is root, who reads everything")
    secret = env.write("secret.csv", b"no access")
    secret.chmod(0)
    result = materialize(env, instance, ["secret.csv"], retries=0)
    assert not result.success
    row = env.rows()["secret.csv"]
    assert row["status"] == "FAILED"
    assert "Grant the SFTP user read access" in row["error_message"]
    assert env.store.head("default/secret.csv") is None
