"""The session budget per SFTP server (sessions.py) without a server: max_sessions checked at
load naming the variable or the source, no budget without it, workers never more than it, a
server counted by host and port. (Sessions counted by the kernel: integration/test_sessions.py.)"""

from contextlib import contextmanager

import dagster as dg
import pytest

from sftp_minio_assets.defs.environment import source_from_env
from sftp_minio_assets.defs.source_config import SFTPConnection
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.sftp.sessions import server_of
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets_tests.support import (
    offline_shared,
)

# --- settings (no server) --------------------------------------------------------------------


@contextmanager
def single_source(monkeypatch, **variables: str):
    """The default source from SFTP_* variables, as definitions.py loads it and a run gets it."""
    for name in ("SFTP_MAX_SESSIONS", "SFTP_TRANSFER_WINDOW", "MAX_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    given = {
        "SFTP_HOST": "sftp.example.com",
        "SFTP_USERNAME": "ingest",
        "SFTP_HOST_KEY_SHA256": "SHA256:AAAA",
    }
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with dg.build_resources({"source": source_from_env(offline_shared())}) as resources:
        yield resources.source


@pytest.mark.parametrize(
    "value, says",
    [
        ("0", "SFTP_MAX_SESSIONS='0': must be at least 1"),
        ("two", "SFTP_MAX_SESSIONS='two': Input should be a valid integer"),
    ],
)
def test_sftp_max_sessions_that_can_never_work_is_refused_naming_the_variable(
    monkeypatch, value, says
):
    with pytest.raises(SettingsError) as error, single_source(monkeypatch, SFTP_MAX_SESSIONS=value):
        pass
    assert says in str(error.value)


def test_max_sessions_of_a_sources_file_is_checked_naming_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTNER_SESSIONS", "-1")
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n"
        "  partner_a: {host: a.example, username: u, max_sessions: 0}\n"
        "  partner_b: {host: b.example, username: u, max_sessions: {env: PARTNER_SESSIONS}}\n"
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    assert f"{path}: source 'partner_a': `max_sessions`: must be at least 1" in str(error.value)

    path.write_text("sources:\n  partner_a: {host: a.example, username: u, max_sessions: 2}\n")
    assert load_sources(path, offline_shared())["partner_a"].connection.max_sessions == 2


def test_without_max_sessions_there_is_no_budget_and_with_it_workers_never_outnumber_it(
    monkeypatch,
):
    with single_source(monkeypatch) as unlimited:
        assert unlimited.connection.max_sessions is None
        assert unlimited.pool.budget is None  # so no lease, no database traffic
        assert unlimited.concurrency == 16  # MAX_WORKERS' default

    with single_source(monkeypatch, SFTP_MAX_SESSIONS="2") as limited:
        assert limited.connection.max_sessions == 2
        assert limited.concurrency == 2  # a third thread could only wait for a session


def test_a_server_is_counted_by_host_and_port_whatever_the_account():
    names = [
        SFTPConnection(host=host, port=port, username=user).settings
        for host, port, user in [("SFTP.example.com", 22, "a"), ("sftp.example.com", 22, "b")]
    ]
    assert {server_of(s.host, s.port) for s in names} == {"sftp.example.com:22"}
    assert server_of("sftp.example.com", 2222) != server_of("sftp.example.com", 22)
