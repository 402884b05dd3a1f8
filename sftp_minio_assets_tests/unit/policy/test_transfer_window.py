"""Transfer windows (transfer_window.py): what a window string means and when it opens next;
wrong ones refused at load naming the setting. (The sensor and a worker outside the window:
integration/test_transfer_window.py.)"""

from datetime import datetime

import pytest

from sftp_minio_assets.defs.environment import source_from_env
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.policy.transfer_window import TransferWindow
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets_tests.support import offline_shared

PARIS = "20:00-06:00 Europe/Paris"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    "moment, is_open",
    [
        ("2026-12-01T18:59:59+00:00", False),  # 19:59:59 in Paris (CET, UTC+1)
        ("2026-12-01T19:00:00+00:00", True),  # 20:00: the start is in the window
        ("2026-12-01T23:30:00+00:00", True),  # past midnight in Paris
        ("2026-12-02T04:59:59+00:00", True),
        ("2026-12-02T05:00:00+00:00", False),  # 06:00: the end is not
        ("2026-07-01T18:00:00+00:00", True),  # 20:00 in summer (CEST, UTC+2)
    ],
)
def test_a_window_spanning_midnight_is_open_on_its_zones_wall_clock(moment, is_open):
    assert TransferWindow.parse(PARIS).is_open(at(moment)) is is_open


def test_the_next_opening_is_today_or_tomorrow_and_now_while_open():
    window = TransferWindow.parse(PARIS)
    assert window.next_opening(at("2026-12-01T08:00:00+00:00")) == at("2026-12-01T20:00+01:00")
    office = TransferWindow.parse("08:00-17:00")  # UTC when no zone is given
    assert office.next_opening(at("2026-12-01T18:00:00+00:00")) == at("2026-12-02T08:00+00:00")
    assert office.next_opening(at("2026-12-01T07:00:00+00:00")) == at("2026-12-01T08:00+00:00")
    assert office.next_opening(at("2026-12-01T09:00:00+00:00")) == at("2026-12-01T09:00+00:00")


def test_a_start_the_clocks_skip_opens_at_the_real_instant():
    # Europe/Paris goes from 02:00 to 03:00 on 2026-03-29: 02:30 does not exist that night.
    window = TransferWindow.parse("02:30-04:00 Europe/Paris")
    opening = window.next_opening(at("2026-03-28T12:00:00+00:00"))
    assert opening == at("2026-03-29T03:30+02:00")
    assert window.is_open(opening)


def test_closed_says_the_window_and_its_next_opening():
    window = TransferWindow.parse(PARIS)
    assert window.closed(at("2026-12-01T20:00:00+00:00")) is None
    assert window.closed(at("2026-12-01T16:30:00+00:00")) == (
        "outside its transfer window 20:00-06:00 Europe/Paris; next opening at "
        "2026-12-01 20:00 CET (in 2 h 30 min)"
    )
    seconds = TransferWindow.parse("08:00:05-17:00")
    assert seconds.closed(at("2026-12-01T08:00:01+00:00")) == (
        "outside its transfer window 08:00:05-17:00; next opening at 2026-12-01 08:00:05 UTC "
        "(in 4 s)"
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ("8pm-6am", "'8pm' is not a time of day (00:00 to 23:59); expected HH:MM-HH:MM"),
        ("20:00-24:00", "'24:00' is not a time of day"),
        ("20:00", "expected HH:MM-HH:MM and an optional time zone"),
        ("20:00-06:00 Paris", "unknown time zone 'Paris': give an IANA name such as"),
        ("20:00-06:00 Europe/Paris CET", "expected HH:MM-HH:MM"),
        ("06:00-06:00", "its start and end are the same time; leave it unset"),
    ],
)
def test_a_window_that_means_nothing_is_refused_saying_why(text, says):
    with pytest.raises(ValueError) as error:
        TransferWindow.parse(text)
    assert says in str(error.value)


def test_sftp_transfer_window_is_checked_at_load_naming_the_variable(monkeypatch):
    for name, value in {"SFTP_HOST": "sftp.example.com", "SFTP_USERNAME": "ingest"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SFTP_TRANSFER_WINDOW", "20:00-30:00 UTC")
    with pytest.raises(SettingsError) as error:
        source_from_env(offline_shared())
    assert "SFTP_TRANSFER_WINDOW='20:00-30:00 UTC': '30:00' is not a time of day" in str(
        error.value
    )

    monkeypatch.setenv("SFTP_TRANSFER_WINDOW", PARIS)
    policy = source_from_env(offline_shared()).policy
    assert policy.transfer_window.get_value() == PARIS  # an EnvVar, resolved by Dagster


def test_a_sources_files_window_is_checked_naming_the_source_and_reaches_the_worker(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n  partner_a: {host: a.example, username: u, transfer_window: '22:00-05:00 "
        "Mars/Olympus'}\n"
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    assert f"{path}: source 'partner_a': `transfer_window`: unknown time zone" in str(error.value)

    path.write_text(
        f"sources:\n  partner_a: {{host: a.example, username: u, transfer_window: '{PARIS}'}}\n"
    )
    source = load_sources(path, offline_shared())["partner_a"]
    assert source.policy.for_worker("partner_a").window == TransferWindow.parse(PARIS)
