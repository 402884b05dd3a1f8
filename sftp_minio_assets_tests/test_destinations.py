"""Destination templates and object keys that read as the remote path (issue 14, part 3).

Unit tests: how a template is parsed, checked and filled in, and what the sources file allows.
On the real servers: the keys as documented, today's layout without a template, files that
would share an object refused naming both, `%` kept, and a retry keeping its first key.
"""

import os
import time
from datetime import UTC, datetime

import dagster as dg
import pytest

from sftp_minio_assets.core.keys import decode_key, encode_key
from sftp_minio_assets.db.transfer_log import FileState
from sftp_minio_assets.defs.resources import SourcePolicyConfig, checked, source_from_env
from sftp_minio_assets.defs.sources import SourcesError, load_sources
from sftp_minio_assets.policy.destinations import DestinationTemplate
from sftp_minio_assets.policy.discovery import AutoRetry, clashes, plan_transfers
from sftp_minio_assets.sftp.client import FileFilter, RemoteFile
from sftp_minio_assets.worker.errors import SettingsError

from .support import materialize, object_key, offline_shared, requested, tick


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


# --- on the real servers ---------------------------------------------------------------------


def objects(env) -> list[str]:
    return sorted(env.store.list_keys())


@pytest.mark.integration
def test_keys_follow_the_template_for_each_field(env, instance):
    march = int(datetime(2026, 3, 7, 12, tzinfo=UTC).timestamp())
    for path in ("in/2026/report.csv", "top.txt"):
        os.utime(env.write(path, path.encode()), (march, march))
    template = "{source}/{mtime:%Y/%m/%d}/{dir}/{stem}-{date:%Y}{suffix}"
    result = tick(env, instance, destination_template=template)
    keys = requested(result, instance)
    assert keys == ["in/2026/report.csv", "top.txt"]

    assert materialize(env, instance, keys, sftp={"destination_template": template}).success
    year = datetime.now(UTC).year
    assert objects(env) == [
        f"default/2026/03/07/in/2026/report-{year}.csv",
        f"default/2026/03/07/top-{year}.txt",
    ]
    rows = env.rows()
    assert rows["top.txt"]["object_key"] == f"default/2026/03/07/top-{year}.txt"
    assert env.store.fs.cat_file(f"{env.bucket}/default/2026/03/07/top-{year}.txt") == b"top.txt"


@pytest.mark.integration
def test_without_a_template_the_layout_is_todays_and_percent_stays_a_percent(env, instance):
    env.write("Q3 50%.csv", b"q3")
    env.write("sub/a%25b.txt", b"literal percent-two-five")
    result = materialize(env, instance, ["Q3 50%.csv", "sub/a%25b.txt"])
    assert result.success
    assert objects(env) == ["default/Q3 50%.csv", "default/sub/a%25b.txt"]
    assert env.store.fs.cat_file(f"{env.bucket}/default/Q3 50%.csv") == b"q3"
    # The partition key, and so the log row, keep their own (reversible) encoding.
    assert env.rows()[encode_key("Q3 50%.csv")]["object_key"] == "default/Q3 50%.csv"


@pytest.mark.integration
def test_files_that_would_share_an_object_are_refused_naming_both_until_apart(env, instance):
    env.write("a/x.csv", b"from a")
    env.write("b/x.csv", b"from b")
    env.write("c/y.csv", b"from c")
    flat = {"destination_template": "flat/{name}"}

    assert requested(tick(env, instance, **flat), instance) == ["c/y.csv"]
    rows = env.rows()
    for path, other in [("a/x.csv", "b/x.csv"), ("b/x.csv", "a/x.csv")]:
        row = rows[path]
        assert (row["status"], row["permanent"]) == ("FAILED", True)
        message = row["error_message"]
        assert f"'{path}' and '{other}' would be copied to the same object flat/x.csv" in message
        assert "make SFTP_DESTINATION_TEMPLATE keep them apart" in message
        assert str(env.root) in message  # the server and the file
    # Refused once: neither requested nor written again at the next tick.
    assert requested(tick(env, instance, **flat), instance) == []
    assert env.rows()["a/x.csv"]["updated_at"] == rows["a/x.csv"]["updated_at"]
    assert materialize(env, instance, ["c/y.csv"], sftp=flat).success
    assert objects(env) == ["flat/y.csv"]

    # The template keeps them apart now: both are requested at the next tick, and copied.
    apart = {"destination_template": "flat/{path}"}
    keys = requested(tick(env, instance, **apart), instance)
    assert keys == ["a/x.csv", "b/x.csv"]
    assert materialize(env, instance, keys, sftp=apart).success
    assert objects(env) == ["flat/a/x.csv", "flat/b/x.csv", "flat/y.csv"]


@pytest.mark.integration
def test_a_key_that_another_file_holds_is_refused_by_the_claim_and_left_as_it_is(env, instance):
    flat = {"destination_template": "flat/{name}"}
    env.write("a/x.csv", b"from a")
    assert materialize(env, instance, ["a/x.csv"], sftp=flat).success
    env.write("b/x.csv", b"from b")

    # The plan refuses it: a/x.csv's copy holds the key ...
    assert requested(tick(env, instance, **flat), instance) == []
    assert "'b/x.csv' and 'a/x.csv' would be copied" in env.rows()["b/x.csv"]["error_message"]
    # ... and so does the claim of a run launched by hand.
    run = materialize(env, instance, ["b/x.csv"], sftp=flat)
    assert not run.success
    row = env.rows()["b/x.csv"]
    assert (row["status"], row["permanent"]) == ("FAILED", True)
    message = row["error_message"]
    assert "-> s3://" in message and "/b/x.csv" in message
    assert "a/x.csv of this source is copied to the same object (COMPLETED)" in message
    assert "give SFTP_DESTINATION_TEMPLATE the {path}" in message
    assert objects(env) == ["flat/x.csv"]
    assert env.store.fs.cat_file(f"{env.bucket}/flat/x.csv") == b"from a"
    assert env.rows()["a/x.csv"]["status"] == "COMPLETED"


@pytest.mark.integration
def test_a_raw_name_escaped_into_another_files_literal_name_is_refused(env, instance):
    env.write("caf\udce9.txt", b"a Latin-1 name: the byte 0xE9, not UTF-8")
    env.write("caf%E9.txt", b"a literal percent sign")
    env.write("caf\u00e9.txt", b"UTF-8: no clash")

    keys = requested(tick(env, instance), instance)
    assert [decode_key(key) for key in keys] == ["caf\u00e9.txt"]
    rows = env.rows()
    for path in ("caf\udce9.txt", "caf%E9.txt"):
        row = rows[encode_key(path)]
        assert (row["status"], row["permanent"]) == ("FAILED", True)
        message = row["error_message"]
        assert "would be copied to the same object default/caf%E9.txt" in message
        assert "'caf\\\\xe9.txt'" in message and "'caf%E9.txt'" in message  # both named
    assert materialize(env, instance, [decode_key(key) for key in keys]).success
    assert objects(env) == ["default/caf\u00e9.txt"]


@pytest.mark.integration
def test_a_retry_keeps_the_key_of_its_first_claim_though_the_day_changed(env, instance):
    dated = {"destination_template": "in/{date:%Y-%m-%d}/{name}"}
    locked = env.write("d.csv", b"version 1")
    locked.chmod(0)  # the first attempt fails: the SFTP user may not read it
    assert not materialize(env, instance, ["d.csv"], sftp=dated).success
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    row = env.rows()["d.csv"]
    assert (row["status"], row["object_key"]) == ("FAILED", f"in/{today}/d.csv")

    # As if that attempt had been made the day before: its claim recorded that day's key.
    with env.log._connection() as conn:
        conn.execute("UPDATE file_transfer_log SET object_key = 'in/2020-02-29/d.csv'")
    locked.chmod(0o644)
    assert requested(tick(env, instance, **dated), instance) == []  # permanent: rerun by hand
    assert materialize(env, instance, ["d.csv"], sftp=dated).success
    assert objects(env) == ["in/2020-02-29/d.csv"]
    assert env.rows()["d.csv"]["object_key"] == "in/2020-02-29/d.csv"

    # A new version of the file is a new copy: it goes to the day it is copied.
    env.write("d.csv", b"version 2", age_seconds=600)
    assert requested(tick(env, instance, **dated), instance) == ["d.csv"]
    assert materialize(env, instance, ["d.csv"], sftp=dated).success
    assert objects(env) == ["in/2020-02-29/d.csv", f"in/{today}/d.csv"]
    assert env.rows()["d.csv"]["object_key"] == f"in/{today}/d.csv"
    assert env.store.fs.cat_file(f"{env.bucket}/in/{today}/d.csv") == b"version 2"
