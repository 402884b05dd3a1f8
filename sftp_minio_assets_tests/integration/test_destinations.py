"""Destination templates on the real servers (issue 14, part 3): the keys as documented, today's
layout without a template, files that would share an object refused naming both, `%` kept, and
a retry keeping its first key. (The templates themselves: unit/policy/test_destinations.py.)"""

import os
from datetime import UTC, datetime

import pytest

from sftp_minio_assets.core.keys import decode_key, encode_key
from sftp_minio_assets_tests.support import materialize, requested, tick

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
    with env.log.db.connection() as conn:
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
