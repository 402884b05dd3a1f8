"""Destination templates and object keys that read as the remote path (issue 14, part 3):
how a template is parsed, checked and filled in, and what the sources file allows; no server.
(On the real servers: integration/test_destinations.py.)"""

import time

import dagster as dg
import pytest

from sftp_minio_assets.db.sensor_memory import FileState
from sftp_minio_assets.defs.environment import checked, source_from_env
from sftp_minio_assets.defs.source_config import SourcePolicyConfig
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.policy.destinations import DestinationTemplate
from sftp_minio_assets.policy.discovery import AutoRetry, clashes, plan_transfers
from sftp_minio_assets.sftp.client import FileFilter, RemoteFile
from sftp_minio_assets.worker.errors import SettingsError
from sftp_minio_assets_tests.support import object_key, offline_shared


@pytest.mark.parametrize(
    "template, expected",
    [
        ("{path}", "in/2026/report.csv.gz"),
        ("{name}", "report.csv.gz"),
        ("{dir}/{stem}{suffix}", "in/2026/report.csv.gz"),
        ("x/{stem}.{mtime:%H%M}{suffix}", "x/report.csv.2330.gz"),
        ("{source}/{dir}/{name}", "partner_a/in/2026/report.csv.gz"),
        ("p/{mtime:%Y/%m/%d}/{path}", "p/2026/03/07/in/2026/report.csv.gz"),
        ("{source}/{date:%Y-%m-%d}/{name}", "partner_a/2026-12-01/report.csv.gz"),
        ("{mtime}/{date}/{name}", "2026-03-07/2026-12-01/report.csv.gz"),  # default format
        ("{{literal}}/{name}", "{literal}/report.csv.gz"),
        ("../../{path}", "in/2026/report.csv.gz"),  # never out of the prefix
    ],
)
def test_each_field_fills_in_as_documented(template, expected):
    assert object_key(template, "in/2026/report.csv.gz") == expected


def test_a_file_at_the_root_has_an_empty_dir_and_dotfiles_no_suffix():
    assert object_key("a/{dir}/{name}", "top.csv") == "a/top.csv"
    assert object_key("{stem}|{suffix}|{name}", ".env") == ".env||.env"
    assert object_key("{stem}|{suffix}", "README") == "README|"


def test_the_key_goes_under_minio_prefix_and_gets_the_compression_suffix():
    assert (
        object_key("{source}/{name}", "a/b.csv", "landing/", "gzip") == "landing/partner_a/b.csv.gz"
    )


@pytest.mark.parametrize(
    "template, message",
    [
        ("{file}", "unknown field {file}; the fields are {path}, {name}"),
        ("{mtime.year}/{path}", "unknown field {mtime.year}"),
        ("{}/{path}", "unknown field {}"),
        ("{name:>20}", "{name:>20}: only {mtime} and {date} take a format"),
        ("{mtime:%Q}/{path}", "%Q is not a strftime directive"),
        ("{mtime:%Y%}/{path}", "a lone % ends the format"),
        ("{path!r}", "fields take no conversion"),
        ("{path", "write {{ and }} for literal braces"),
        ("archive/{mtime:%Y}", "must contain {path} or {name}"),
        ("{source}/{dir}/{stem}", "must contain {path} or {name}"),
    ],
)
def test_a_wrong_template_is_refused_saying_what_is_wrong(template, message):
    with pytest.raises(ValueError) as error:
        DestinationTemplate.parse(template)
    assert message in str(error.value)


def test_percent_and_escaped_percent_in_formats_are_fine():
    assert object_key("{mtime:%Y%%}/{name}", "a.csv") == "2026%/a.csv"


@pytest.mark.parametrize(
    "template, constant",
    [
        ("partner-a/{mtime:%Y}/{path}", "partner-a/"),
        ("{source}/{date}/{name}", "partner_a/"),
        ("{source}-x/{path}", "partner_a-x/"),
        ("./a//b/{path}", "a/b/"),
        ("a/raw-{date}/{name}", "a/raw-"),
        ("a/..{name}", "a/"),  # a partial segment of dots may vanish from keys
        ("{mtime:%Y}/{path}", ""),
    ],
)
def test_the_constant_beginning_of_a_templates_keys(template, constant):
    parsed = DestinationTemplate.parse(template)
    assert parsed.constant_prefix("partner_a") == constant
    assert object_key(template, "in/x.csv").startswith(constant)


def test_a_template_is_checked_at_load_naming_the_variable(monkeypatch):
    monkeypatch.setenv("SFTP_HOST", "h")
    monkeypatch.setenv("SFTP_USERNAME", "u")
    monkeypatch.setenv("SFTP_DESTINATION_TEMPLATE", "p/{mtime:%Y}")
    with pytest.raises(SettingsError) as error:
        source_from_env(offline_shared())
    assert "SFTP_DESTINATION_TEMPLATE='p/{mtime:%Y}'" in str(error.value)
    assert "must contain {path} or {name}" in str(error.value)

    monkeypatch.setenv("SFTP_DESTINATION_TEMPLATE", "p/{mtime:%Y}/{path}")
    source = source_from_env(offline_shared())  # Dagster reads the variable when it runs
    assert source.policy.destination_template == dg.EnvVar("SFTP_DESTINATION_TEMPLATE")


def sources_file(tmp_path, text: str):
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_a_wrong_template_in_a_sources_file_names_the_source_and_its_key(tmp_path):
    path = sources_file(
        tmp_path,
        "sources:\n  a:\n    host: h\n    username: u\n    destination_template: '{nme}'\n",
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path, offline_shared())
    message = str(error.value)
    assert str(path) in message and "'a'" in message
    assert "`destination_template`" in message and "unknown field {nme}" in message


def test_a_template_and_a_destination_prefix_together_are_refused():
    with pytest.raises(SettingsError, match="both set: a template gives the whole key"):
        checked(
            SourcePolicyConfig,
            {"destination_prefix": "p", "destination_template": "{path}"},
            lambda field: field,
        )


@pytest.mark.parametrize(
    "a, b, refused",
    [
        ("destination_template: 'x/{path}'", "destination_template: 'y/{path}'", False),
        ("destination_template: 'b/{path}'", "{}", True),  # b's keys: b/...
        ("destination_template: '{source}/{path}'", "destination_prefix: other", False),
        ("destination_template: 'b/{date}/{name}'", "{}", True),
        ("destination_template: 'raw-{date}/{name}'", "destination_prefix: raw-2026", True),
        ("destination_template: 'raw-{date}/{name}'", "destination_prefix: raw", False),
        ("destination_template: '{mtime:%Y}/{path}'", "destination_prefix: other", True),
    ],
)
def test_sources_whose_keys_may_meet_are_refused_at_load(tmp_path, a, b, refused):
    path = sources_file(
        tmp_path,
        "sources:\n"
        f"  a: {{host: h, username: u, {a.strip('{}')}}}\n"
        f"  b: {{host: h, username: u, {b.strip('{}')}}}\n".replace(", }", "}"),
    )
    if refused:
        with pytest.raises(SourcesError, match="may write to the same objects"):
            load_sources(path, offline_shared())
    else:
        assert set(load_sources(path, offline_shared())) == {"a", "b"}


def plan(files, states=None, refused=None):
    return plan_transfers(
        files,
        states or {},
        set(),
        now=time.time(),
        min_age_seconds=0,
        file_filter=FileFilter(),
        max_requests=100,
        auto_retry=AutoRetry(),
        refused=refused,
    )


def test_the_plan_refuses_every_file_of_a_shared_key_but_one_that_holds_it():
    files = [RemoteFile("a/x.csv", 1, 1), RemoteFile("b/x.csv", 2, 2), RemoteFile("c/y.csv", 3, 3)]
    name_only = lambda f: f.path.rsplit("/", 1)[-1]  # noqa: E731 (the template {name})
    why = clashes(files, {}, name_only, "SFTP_DESTINATION_TEMPLATE")
    assert set(why) == {"a/x.csv", "b/x.csv"}
    assert "'a/x.csv' and 'b/x.csv' would be copied to the same object x.csv" in why["a/x.csv"]
    assert "SFTP_DESTINATION_TEMPLATE" in why["a/x.csv"]
    result = plan(files, refused=why)
    assert [r.key for r in result.requests] == ["c/y.csv"]
    assert [r.key for r in result.refused] == ["a/x.csv", "b/x.csv"]

    # a/x.csv was copied there before b/x.csv appeared: its copy holds the key.
    copied = {"a/x.csv": FileState("COMPLETED", 1, 1, False, 0, 0)}
    assert set(clashes(files, copied, name_only, "t")) == {"b/x.csv"}

    # Refused already: not recorded again; once the clash is gone, requested again.
    refused = {"b/x.csv": FileState("FAILED", 2, 2, True, 0, 0, refused=True)}
    again = plan(files, refused, why)
    assert [r.key for r in again.refused] == ["a/x.csv"] and "b/x.csv" in again.given_up
    assert "b/x.csv" in [r.key for r in plan(files, refused).requests]
