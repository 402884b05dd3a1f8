"""The fast listing (SFTP_LISTING=fast, issue 24): a directory whose files were all copied is
not read again while its mtime stays the same; a change in it, a file of it that is no longer
COMPLETED, and the full listing every SFTP_FULL_LISTING_EVERY_HOURS bring it back."""

import os
import time

import pytest

from sftp_minio_assets.db.sensor_memory import SETTLE_SECONDS
from sftp_minio_assets_tests.support import requested, tick

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

FAST = {"listing": "fast"}


def settle(env, instance) -> None:
    """Every file requested so far copied, and the directories read again SETTLE_SECONDS
    later: from then on they are settled."""
    env.log.db.execute("UPDATE file_transfer_log SET status = 'COMPLETED'")
    time.sleep(SETTLE_SECONDS + 0.2)
    assert requested(tick(env, instance, **FAST), instance) == []


def unread(result) -> int:
    """How many directories the tick left unread, as its skip reason says (0 if it says none)."""
    reason = result.skip_reason.skip_message if result.skip_reason else ""
    if "unchanged directories not read" not in reason:
        return 0
    return int(reason.rsplit("; ", 1)[1].split()[0])


def rewrite_in_place(path, data: bytes) -> None:
    """A partner rewriting a file: its size and mtime change, its directory's mtime does not."""
    folder, before = path.parent.stat(), path.stat().st_mtime
    path.write_bytes(data)
    os.utime(path, (before + 10, before + 10))
    os.utime(path.parent, ns=(folder.st_atime_ns, folder.st_mtime_ns))


def test_settled_directories_are_left_unread_until_their_mtime_changes(env, instance):
    for folder in ("a", "b", "c/d"):
        env.write(f"{folder}/1.csv", b"first")
    first = tick(env, instance, **FAST)
    assert requested(first, instance) == ["a/1.csv", "b/1.csv", "c/d/1.csv"]
    settle(env, instance)
    steady = tick(env, instance, **FAST)
    assert unread(steady) == 5  # the root, a, b, c and c/d

    env.write("b/2.csv", b"new")  # b's mtime changes: b is read, the others are not
    rewrite_in_place(env.root / "a" / "1.csv", b"rewritten, longer")
    env.write("c/d/3.csv", b"new, two levels down")
    result = tick(env, instance, **FAST)
    assert requested(result, instance) == ["b/2.csv", "c/d/3.csv"]
    assert env.rows()["a/1.csv"]["status"] == "COMPLETED"  # not seen: a was not read

    # The full listing reads every directory, and finds the file rewritten in place.
    env.log.db.execute("UPDATE source_listings SET full_listing_at = now() - interval '25 hours'")
    assert requested(tick(env, instance, **FAST), instance) == ["a/1.csv"]


def test_the_default_full_listing_sees_a_file_rewritten_in_place(env, instance):
    env.write("a/1.csv", b"first")
    assert requested(tick(env, instance), instance) == ["a/1.csv"]
    env.log.db.execute("UPDATE file_transfer_log SET status = 'COMPLETED'")
    time.sleep(SETTLE_SECONDS + 0.2)
    assert requested(tick(env, instance), instance) == []
    rewrite_in_place(env.root / "a" / "1.csv", b"rewritten, longer")
    assert requested(tick(env, instance), instance) == ["a/1.csv"]


def test_a_directory_with_a_file_not_completed_is_read_at_every_tick(env, instance):
    """A file that failed (or is requested again, or was never copied) keeps its directory
    read, however still the directory is, so that its retries and reruns are not missed."""
    env.write("a/1.csv", b"one")
    env.write("a/2.csv", b"two")
    tick(env, instance, **FAST)
    settle(env, instance)
    assert unread(tick(env, instance, **FAST)) == 2
    env.log.db.execute(
        "UPDATE file_transfer_log SET status = 'FAILED', permanent = false, "
        "updated_at = now() - interval '1 day' WHERE filename = 'a/2.csv'"
    )
    assert requested(tick(env, instance, **FAST), instance) == ["a/2.csv"]  # a read again


def test_a_directory_whose_file_was_too_recent_is_read_until_it_is_copied(env, instance):
    env.write("a/young.csv", b"still being written", age_seconds=0)
    held = tick(env, instance, listing="fast", min_file_age_seconds=3600)
    assert requested(held, instance) == []
    time.sleep(SETTLE_SECONDS + 0.2)
    # Nothing in `a` is COMPLETED yet: it is read again, and the file requested once old enough.
    assert unread(tick(env, instance, listing="fast", min_file_age_seconds=3600)) == 0
    assert requested(tick(env, instance, **FAST), instance) == ["a/young.csv"]


def test_a_directory_removed_or_added_is_forgotten_or_read(env, instance):
    env.write("old/1.csv", b"one")
    tick(env, instance, **FAST)
    settle(env, instance)
    (env.root / "old" / "1.csv").unlink()
    (env.root / "old").rmdir()
    env.write("new/1.csv", b"one")
    assert requested(tick(env, instance, **FAST), instance) == ["new/1.csv"]
    paths = {r["path"] for r in env.log.db.execute("SELECT path FROM source_directories")}
    assert paths == {"", "new"}


def test_a_fast_listing_longer_than_a_tick_settles_its_directories_too(env, instance):
    """One directory read per tick (SFTP_LISTING_SECONDS_PER_TICK=0): the directories a tick
    left for the next are not forgotten, and once settled a tick reads none of them."""
    settings = {**FAST, "listing_seconds_per_tick": 0}
    env.write("a/1.csv", b"a")
    env.write("b/1.csv", b"b")
    for _ in range(3):  # the root, then a, then b
        tick(env, instance, **settings)
    env.log.db.execute("UPDATE file_transfer_log SET status = 'COMPLETED'")
    time.sleep(SETTLE_SECONDS + 0.2)
    for _ in range(3):  # each read again, 2 s after its mtime was recorded: settled
        assert requested(tick(env, instance, **settings), instance) == []
    assert unread(tick(env, instance, **settings)) == 3
    env.write("b/2.csv", b"new")
    assert requested(tick(env, instance, **settings), instance) == ["b/2.csv"]
