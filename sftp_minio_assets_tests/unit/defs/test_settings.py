"""Settings that can never work are refused when the code location loads, naming the variable
(or the source and key). Issue #10, one test per item. (Faults of servers that are down:
integration/test_settings.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sftp_minio_assets.defs.environment import shared_resources_from_env, source_from_env
from sftp_minio_assets.defs.resources import ObjectStoreResource, SourceResource, TransferSettings
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.policy.discovery import AutoRetry
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets_tests.support import PROJECT, offline_shared

# What definitions.py needs to load: none of these servers has to exist.
VALID = {
    "SFTP_HOST": "sftp.example.com",
    "SFTP_USERNAME": "ingest",
    "MINIO_ENDPOINT_URL": "http://127.0.0.1:1",
    "MINIO_ACCESS_KEY": "minioadmin",
    "MINIO_SECRET_KEY": "s3-secret-never-shown",
    "TRANSFER_DB_URL": "postgresql://ingest:db-secret-never-shown@127.0.0.1:1/transfers",
}
SETTINGS = (
    "SFTP_",
    "MINIO_",
    "BUCKET_NAME",
    "TRANSFER_",
    "MAX_",
    "SOURCES_FILE",
    "ALERT_",
    "SERVER_CHECKSUMS",
)


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without any of the project's settings, then VALID, then
    the given ones."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS)}
    return {**kept, **VALID, **variables}


def validate(where: Path, **variables: str) -> subprocess.CompletedProcess:
    """`dagster definitions validate`, as a user runs it, with the given environment (run in
    `where`, on a temporary instance: the project's dagster.yaml wants its database)."""
    return subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate"]
        + ["-m", "sftp_minio_assets.definitions"],
        cwd=where,
        env={**environment(**variables), "DAGSTER_HOME": "", "PYTHONPATH": str(PROJECT)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def load_from(monkeypatch, **variables: str) -> SourceResource:
    """What definitions.py calls at load, in this process; the source it makes."""
    for name in list(os.environ):
        if name.startswith(SETTINGS):
            monkeypatch.delenv(name)
    for name, value in {**VALID, **variables}.items():
        monkeypatch.setenv(name, value)
    return source_from_env(shared_resources_from_env())


def write_sources(tmp_path: Path, sources: dict) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}))
    return path


# 1. Two sources that could write the same object are refused at load.


@pytest.mark.parametrize(
    "first, second",
    [
        ({"destination_prefix": "same"}, {"destination_prefix": "same"}),
        ({"destination_prefix": "same"}, {"destination_prefix": "./same/"}),  # the same key
        ({"destination_prefix": "partners"}, {"destination_prefix": "partners/b"}),  # inside
        ({}, {"destination_prefix": "dupa"}),  # dupa's default is its name
    ],
)
def test_two_sources_writing_the_same_objects_are_refused_naming_both(tmp_path, first, second):
    path = write_sources(
        tmp_path,
        {
            "dupa": {"host": "a.example", "username": "u", **first},
            "dupb": {"host": "b.example", "username": "u", **second},
        },
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    message = str(error.value)
    assert "'dupa'" in message and "'dupb'" in message and "destination_prefix" in message


def test_sources_with_distinct_destinations_load(tmp_path):
    path = write_sources(
        tmp_path,
        {
            "a": {"host": "a.example", "username": "u", "destination_prefix": "in/a"},
            "ab": {"host": "b.example", "username": "u", "destination_prefix": "in/ab"},
            "c": {"host": "c.example", "username": "u"},
        },
    )
    assert set(load_sources(path, offline_shared())) == {"a", "ab", "c"}


def test_the_code_location_with_two_sources_on_one_prefix_fails_validation(tmp_path):
    path = write_sources(
        tmp_path,
        {
            "dupa": {"host": "a.example", "username": "u", "destination_prefix": "same"},
            "dupb": {"host": "b.example", "username": "u", "destination_prefix": "same"},
        },
    )
    result = validate(tmp_path, SOURCES_FILE=str(path))
    output = result.stdout + result.stderr
    assert "Validation failed" in output, output[-3000:]
    assert "'dupa' and 'dupb'" in output and "destination_prefix" in output


# 2. MAX_WORKERS and a source's max_workers below 1 are refused at load, and at run time.


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_workers_below_one_is_refused_at_load(monkeypatch, value):
    with pytest.raises(SettingsError, match=f"MAX_WORKERS='{value}': must be at least 1"):
        load_from(monkeypatch, MAX_WORKERS=value)


def test_a_sources_max_workers_below_one_is_refused_naming_the_source(tmp_path, monkeypatch):
    path = write_sources(
        tmp_path, {"partner_a": {"host": "a.example", "username": "u", "max_workers": 0}}
    )
    with pytest.raises(SourcesError, match="source 'partner_a': `max_workers`: must be at least 1"):
        load_sources(path, offline_shared())
    monkeypatch.setenv("PARTNER_A_WORKERS", "-3")
    path = write_sources(
        tmp_path,
        {
            "partner_a": {
                "host": "a.example",
                "username": "u",
                "max_workers": {"env": "PARTNER_A_WORKERS"},
            }
        },
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    assert "`max_workers` (environment variable PARTNER_A_WORKERS): must be at least 1" in str(
        error.value
    )


# 3. Every setting is checked at load, and the load needs no server.


@pytest.mark.parametrize(
    "variable, value, says",
    [
        ("MAX_WORKERS", "abc", "MAX_WORKERS='abc': Input should be a valid integer"),
        ("MINIO_ENDPOINT_URL", "localhost:9000", "MINIO_ENDPOINT_URL: must be an http://"),
        ("MINIO_ENDPOINT_URL", "http://", "MINIO_ENDPOINT_URL: must be an http://"),
        ("MINIO_BUCKET", "My_Bucket", "MINIO_BUCKET='My_Bucket': not a valid bucket name"),
        ("BUCKET_NAME", "ab", "BUCKET_NAME='ab': not a valid bucket name"),
        ("TRANSFER_DB_URL", "mysql://u:pw@db/x", "TRANSFER_DB_URL: must be postgresql://"),
        ("TRANSFER_DB_URL", "postgresql://u:pw@db:x/t", "TRANSFER_DB_URL: must be postgresql://"),
        ("SFTP_PORT", "70000", "SFTP_PORT='70000': must be a TCP port"),
        ("SFTP_HOST", "sftp://sftp.example.com", "SFTP_HOST='sftp://sftp.example.com': must be"),
        ("SFTP_HOST", "", "SFTP_HOST: required, and not set"),
        ("SFTP_ALLOW_UNKNOWN_HOST", "ture", "SFTP_ALLOW_UNKNOWN_HOST='ture'"),
        ("COMPRESSION", "lzma", "COMPRESSION='lzma'"),
        ("SERVER_CHECKSUMS", "maybe", "SERVER_CHECKSUMS='maybe'"),
        ("AFTER_COPY", "move", "after_copy: move needs archive_dir (ARCHIVE_DIR)"),
        ("MIN_FILE_AGE_SECONDS", "-1", "MIN_FILE_AGE_SECONDS='-1': must be at least 0"),
        ("MAX_STALE_LOCK_MINUTES", "0", "MAX_STALE_LOCK_MINUTES='0': must be more than 0"),
        ("TRANSFER_RETRIES", "-1", "TRANSFER_RETRIES='-1': must be at least 0"),
        ("PARALLEL_RUNS", "0", "PARALLEL_RUNS='0': must be at least 1"),
        ("MAX_PARTITIONS_PER_RUN", "0", "MAX_PARTITIONS_PER_RUN='0': must be at least 1"),
        ("PARTITION_RETENTION_DAYS", "-1", "PARTITION_RETENTION_DAYS='-1': must be at least 0"),
        ("ALERT_AFTER_FAILURES", "0", "ALERT_AFTER_FAILURES='0': must be at least 1"),
        ("ALERT_WEBHOOK_URL", "hooks.slack.com/x", "ALERT_WEBHOOK_URL: must be an http://"),
        ("AUTO_RETRY_LIMIT", "-1", "AUTO_RETRY_LIMIT='-1': must be at least 0"),
        ("AUTO_RETRY_BACKOFF_MINUTES", "1,soon", "AUTO_RETRY_BACKOFF_MINUTES='1,soon': expected"),
        ("MINIO_ACCESS_KEY", "", "MINIO_ACCESS_KEY: required, and not set"),
    ],
)
def test_a_value_that_can_never_work_is_refused_at_load_naming_its_variable(
    monkeypatch, variable, value, says
):
    with pytest.raises(SettingsError) as error:
        load_from(monkeypatch, **{variable: value})
    assert says in str(error.value)
    assert "never-shown" not in str(error.value) and "pw@" not in str(error.value)


def test_server_checksums_are_off_by_default_and_set_by_their_variable(monkeypatch):
    assert not load_from(monkeypatch).policy.for_worker("default").server_checksums
    source = load_from(monkeypatch, SERVER_CHECKSUMS="true")
    assert source.policy.for_worker("default").server_checksums


def test_the_single_source_names_its_settings_by_their_variables(monkeypatch):
    names = load_from(monkeypatch).connection.settings.names
    assert [names(s) for s in ("password", "private_key", "root")] == [
        "SFTP_PASSWORD",
        "SFTP_PRIVATE_KEY_PATH",
        "SFTP_ROOT",
    ]


def test_every_wrong_variable_is_named_in_one_error_without_the_secrets(monkeypatch):
    with pytest.raises(SettingsError) as error:
        load_from(
            monkeypatch,
            MAX_WORKERS="0",
            MINIO_BUCKET="Bad_Bucket",
            ALERT_AFTER_FAILURES="0",
            TRANSFER_DB_URL="mysql://u:db-secret-never-shown@db/x",
        )
    message = str(error.value)
    for variable in ("MAX_WORKERS", "MINIO_BUCKET", "ALERT_AFTER_FAILURES", "TRANSFER_DB_URL"):
        assert variable in message
    assert "never-shown" not in message


def test_the_transfer_settings_become_the_workers_and_the_sensors_retries():
    settings = TransferSettings(
        retries=2, retry_base_seconds=0.5, auto_retry_backoff_minutes=[0, 2], auto_retry_limit=7
    )
    assert (settings.retry.attempts, settings.retry.base_seconds) == (3, 0.5)
    assert settings.auto_retry == AutoRetry(backoff_minutes=(0, 2), limit=7)
    assert settings.tuning.part_size == settings.part_size_mb * 1024 * 1024


def test_dagster_definitions_validate_refuses_a_wrong_value_and_needs_no_server(tmp_path):
    # Every server named in VALID is down (port 1) or does not exist: still a valid location.
    fine = validate(tmp_path)
    assert "Validation successful" in fine.stdout + fine.stderr, fine.stderr[-3000:]
    wrong = validate(tmp_path, MAX_WORKERS="abc", MINIO_ENDPOINT_URL="localhost:9000")
    output = wrong.stdout + wrong.stderr
    assert "Validation failed" in output and "MAX_WORKERS='abc'" in output
    assert "MINIO_ENDPOINT_URL: must be an http:// or https:// URL" in output
    assert "never-shown" not in output


def test_invalid_endpoint_and_bucket_given_directly_are_refused():
    with pytest.raises(Exception, match="MINIO_ENDPOINT_URL=http://minio:9000"):
        ObjectStoreResource(endpoint_url="minio:9000", access_key="a", secret_key="b")
    with pytest.raises(Exception, match="MINIO_BUCKET=sftp-minio-assets"):
        ObjectStoreResource(
            endpoint_url="http://minio:9000", access_key="a", secret_key="b", bucket="x"
        )
