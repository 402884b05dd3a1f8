"""A listing longer than a tick (SFTP_LISTING_SECONDS_PER_TICK, issue 24): a tick starts no
directory read past its listing time, and the next tick goes on with the directories it left,
then starts over from the root. Here the time is 0: each tick reads one directory."""

import shutil

import pytest

from sftp_minio_assets_tests.support import requested, tick

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

ONE_DIRECTORY = {"listing_seconds_per_tick": 0}


def pending(env) -> list[str]:
    rows = env.log.db.execute("SELECT path FROM source_pending_directories ORDER BY path")
    return [row["path"] for row in rows]


def test_a_listing_goes_on_where_the_last_tick_stopped_then_starts_over(env, instance):
    env.write("r.csv", b"root")
    env.write("a/1.csv", b"a")
    env.write("b/1.csv", b"b")
    env.write("b/c/2.csv", b"c")
    assert requested(tick(env, instance, **ONE_DIRECTORY), instance) == ["r.csv"]
    assert pending(env) == ["a", "b"]
    assert requested(tick(env, instance, **ONE_DIRECTORY), instance) == ["a/1.csv"]
    assert requested(tick(env, instance, **ONE_DIRECTORY), instance) == ["b/1.csv"]
    assert pending(env) == ["b/c"]
    assert requested(tick(env, instance, **ONE_DIRECTORY), instance) == ["b/c/2.csv"]
    assert pending(env) == []
    env.log.db.execute("UPDATE file_transfer_log SET status = 'COMPLETED'")
    again = tick(env, instance, **ONE_DIRECTORY)  # from the root again, and says so
    reason = again.skip_reason.skip_message
    assert reason.startswith("nothing new among 1 files")
    assert reason.endswith("the listing goes on at the next tick: 2 directories left")


def test_the_default_listing_time_reads_a_small_tree_in_one_tick(env, instance):
    env.write("a/1.csv", b"a")
    env.write("b/c/2.csv", b"c")
    assert requested(tick(env, instance), instance) == ["a/1.csv", "b/c/2.csv"]
    assert pending(env) == []


def test_a_directory_gone_before_its_turn_is_left_out(env, instance):
    env.write("a/1.csv", b"a")
    env.write("b/1.csv", b"b")
    tick(env, instance, **ONE_DIRECTORY)
    assert pending(env) == ["a", "b"]
    shutil.rmtree(env.root / "a")
    assert requested(tick(env, instance, **ONE_DIRECTORY), instance) == []  # a: gone
    assert requested(tick(env, instance, **ONE_DIRECTORY), instance) == ["b/1.csv"]


def test_files_held_back_stay_sighted_while_the_listing_is_elsewhere(env, instance):
    """A stable listing needs a file seen twice the same: a tick that reads other directories
    keeps the sightings of those it did not read."""
    settings = {**ONE_DIRECTORY, "require_stable_listing": True}
    env.write("r.csv", b"root")
    env.write("a/1.csv", b"a")
    assert requested(tick(env, instance, **settings), instance) == []  # r.csv sighted
    assert requested(tick(env, instance, **settings), instance) == []  # a/1.csv sighted
    assert requested(tick(env, instance, **settings), instance) == ["r.csv"]  # seen the same
    assert requested(tick(env, instance, **settings), instance) == ["a/1.csv"]
