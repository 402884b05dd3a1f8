"""When a listed file is complete (issue 14, part 1): ready markers and stable listings, as
readiness.py and the sensor's plan see them, and their settings; no server."""

import os

import dagster as dg
import pytest
import yaml

from sftp_minio_assets.db.sensor_memory import FileState
from sftp_minio_assets.defs.environment import shared_resources_from_env, source_from_env
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.policy.discovery import AutoRetry, plan_transfers
from sftp_minio_assets.policy.readiness import Readiness, ReadyMarker, marker_problem
from sftp_minio_assets.sftp.client import FileFilter, RemoteFile
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets_tests.support import offline_shared

NOW = 1_000_000.0
OLD = int(NOW) - 3600


def remote(path: str, size: int = 10, mtime: int = OLD) -> RemoteFile:
    return RemoteFile(path, size, mtime)


def plan(files, states=None, marker=None, sightings=None, **settings):
    options = dict(
        now=NOW,
        min_age_seconds=60,
        file_filter=FileFilter(),
        max_requests=100,
        auto_retry=AutoRetry(backoff_minutes=(0,), limit=3),
    )
    # sightings: "size:mtime" by key, as the last tick saw them; given, a stable listing is required
    seen = {key: (signature, 30.0) for key, signature in (sightings or {}).items()}
    readiness = Readiness.of(
        files, ReadyMarker(marker) if marker else None, seen, stable_listing=sightings is not None
    )
    options.update(settings)
    return plan_transfers(files, states or {}, set(), readiness=readiness, **options)


def requested(result) -> list[str]:
    return [request.key for request in result.requests]


# --- the marker pattern --------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["{name}.done", "{stem}.ok", "_SUCCESS", "ready-{stem}"])
def test_valid_marker_patterns(pattern):
    assert marker_problem(pattern) is None


@pytest.mark.parametrize(
    "pattern, says",
    [
        ("{name}", "every file is a marker"),
        ("{stem}", "every file is a marker"),
        ("{path}.done", "the only placeholders are {name} and {stem}"),
        ("{}.done", "the only placeholders"),
        ("{name!r}.done", "the only placeholders"),
        ("{name:>10}.done", "the only placeholders"),
        ("done/{name}", "a file name next to the file"),
        ("{name.done", "a file name next to the file"),
        ("", "a file name next to the file"),
        ("..", "a file name next to the file"),
    ],
)
def test_wrong_marker_patterns_say_what_is_expected(pattern, says):
    assert says in marker_problem(pattern)


def test_a_marker_names_the_file_next_to_it():
    assert ReadyMarker("{name}.done").marker_of("in/data.csv") == "in/data.csv.done"
    assert ReadyMarker("{stem}.ok").marker_of("in/data.csv") == "in/data.ok"
    assert ReadyMarker("{stem}.ok").marker_of("archive.tar.gz") == "archive.tar.ok"
    assert ReadyMarker("{stem}.ok").marker_of("README") == "README.ok"
    assert ReadyMarker("_SUCCESS").marker_of("day=1/part-0.parquet") == "day=1/_SUCCESS"


def test_files_named_like_the_pattern_are_markers():
    done, success = ReadyMarker("{name}.done"), ReadyMarker("_SUCCESS")
    assert done.is_marker("in/data.csv.done") and not done.is_marker("in/data.csv")
    assert not done.is_marker("in/.done")  # {name} is never empty
    assert success.is_marker("d/_SUCCESS") and not success.is_marker("d/_SUCCESS.csv")
    assert done.per_file and not ReadyMarker("{stem}.ok").per_file and not success.per_file


# --- the plan with a marker ----------------------------------------------------------------


def test_a_file_waits_for_its_marker_and_markers_are_never_requested():
    files = [remote("a.csv"), remote("a.csv.done"), remote("b.csv")]
    result = plan(files, marker="{name}.done")
    assert requested(result) == ["a.csv"]
    assert result.waiting_for_marker == 1


def test_a_marker_is_never_requested_even_when_the_filters_take_it():
    files = [remote("x.done"), remote("a.csv"), remote("a.csv.done")]
    result = plan(files, marker="{name}.done", file_filter=FileFilter(include=("*",)))
    assert requested(result) == ["a.csv"]
    assert result.waiting_for_marker == 0  # x.done is a marker, not a file waiting for one


def test_a_file_rewritten_after_its_marker_waits_for_the_marker_again():
    files = [remote("a.csv", mtime=OLD), remote("a.csv.done", mtime=OLD - 10)]
    result = plan(files, marker="{name}.done")
    assert requested(result) == []
    assert result.waiting_for_marker == 1


def test_one_success_marker_makes_its_whole_directory_ready():
    files = [
        remote("day=1/part-0"),
        remote("day=1/part-1"),
        remote("day=1/_SUCCESS"),
        remote("day=2/part-0"),
    ]
    result = plan(files, marker="_SUCCESS")
    assert requested(result) == ["day=1/part-0", "day=1/part-1"]
    assert result.waiting_for_marker == 1


def test_a_stem_marker_covers_the_files_of_that_stem():
    files = [remote("a.csv"), remote("a.json"), remote("a.ok"), remote("b.csv")]
    assert requested(plan(files, marker="{stem}.ok")) == ["a.csv", "a.json"]


def test_a_too_recent_file_is_counted_as_such_before_its_marker():
    files = [remote("a.csv", mtime=int(NOW) - 5)]
    result = plan(files, marker="{name}.done")
    assert (result.waiting, result.waiting_for_marker) == (1, 0)


# --- the plan with a stable listing --------------------------------------------------------


def test_a_new_file_is_requested_at_its_second_listing_with_the_same_size_and_mtime():
    first = plan([remote("a.csv", size=10)], sightings={})
    assert requested(first) == [] and first.unstable == 1
    assert first.sighted == [("a.csv", 10, OLD)]

    grown = plan([remote("a.csv", size=20)], sightings={"a.csv": f"10:{OLD}"})
    assert requested(grown) == [] and grown.unstable == 1
    assert grown.sighted == [("a.csv", 20, OLD)]

    still = plan([remote("a.csv", size=20)], sightings={"a.csv": f"20:{OLD}"})
    assert requested(still) == ["a.csv"] and still.unstable == 0
    assert still.sighted == [("a.csv", 20, OLD)]


def test_a_changed_file_needs_two_listings_but_a_failed_one_retried_does_not():
    copied, failed = remote("copied.csv"), remote("failed.csv")
    states = {
        "copied.csv": FileState("COMPLETED", 5, OLD, False, 0, NOW - 3600),
        "failed.csv": FileState("FAILED", failed.size, failed.mtime, False, 0, NOW - 3600),
    }
    result = plan([copied, failed], states, sightings={})
    assert requested(result) == ["failed.csv"]  # its content was seen when it was requested
    assert result.unstable == 1 and result.sighted == [("copied.csv", 10, OLD)]


def test_without_a_stable_listing_nothing_is_sighted():
    result = plan([remote("a.csv")])
    assert requested(result) == ["a.csv"] and result.sighted == [] and result.unstable == 0


def test_marker_and_stable_listing_together():
    files = [remote("a.csv"), remote("a.csv.done"), remote("b.csv")]
    first = plan(files, marker="{name}.done", sightings={})
    assert requested(first) == [] and first.sighted == [("a.csv", 10, OLD)]
    second = plan(files, marker="{name}.done", sightings={"a.csv": f"10:{OLD}"})
    assert requested(second) == ["a.csv"] and second.waiting_for_marker == 1


# --- settings ------------------------------------------------------------------------------

VALID = {
    "SFTP_HOST": "sftp.example.com",
    "SFTP_USERNAME": "ingest",
    "MINIO_ENDPOINT_URL": "http://127.0.0.1:1",
    "MINIO_ACCESS_KEY": "minioadmin",
    "MINIO_SECRET_KEY": "s3-secret",
    "TRANSFER_DB_URL": "postgresql://ingest:pw@127.0.0.1:1/transfers",
}


def test_the_default_source_takes_its_marker_and_stability_from_variables(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SFTP_", "MINIO_", "BUCKET_NAME", "TRANSFER_", "MAX_", "AFTER_")):
            monkeypatch.delenv(name)
    for name, value in VALID.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SFTP_READY_MARKER", "{stem}.ok")
    monkeypatch.setenv("SFTP_REQUIRE_STABLE_LISTING", "true")
    with dg.build_resources({"source": source_from_env(shared_resources_from_env())}) as built:
        policy = built.source.policy  # as Dagster gives it: its variables read
    assert policy.marker == ReadyMarker("{stem}.ok") and policy.require_stable_listing
    assert policy.for_worker("default").ready_marker == ReadyMarker("{stem}.ok")

    monkeypatch.setenv("SFTP_READY_MARKER", "{path}.done")
    with pytest.raises(SettingsError, match=r"SFTP_READY_MARKER='\{path\}.done': must be a file"):
        source_from_env(shared_resources_from_env())


def test_a_wrong_marker_in_the_sources_file_is_refused_naming_the_source(tmp_path):
    path = tmp_path / "sources.yaml"
    entry = {"host": "a.example", "username": "u", "ready_marker": "done/{name}"}
    path.write_text(yaml.safe_dump({"sources": {"partner_a": entry}}))
    with pytest.raises(SourcesError, match="source 'partner_a': `ready_marker`: must be a file"):
        load_sources(path, offline_shared())
    entry.update(ready_marker="_SUCCESS", require_stable_listing=True)
    path.write_text(yaml.safe_dump({"sources": {"partner_a": entry}}))
    policy = load_sources(path, offline_shared())["partner_a"].policy
    assert policy.marker == ReadyMarker("_SUCCESS") and policy.require_stable_listing
