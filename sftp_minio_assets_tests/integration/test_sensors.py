"""The sensor against the real SFTP server and transfer log, evaluated as the daemon would."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import dagster as dg
import pytest

from sftp_minio_assets.core.keys import encode_key
from sftp_minio_assets.defs.assets import files
from sftp_minio_assets.defs.partitions import KnownPartitions
from sftp_minio_assets.transfer.pgp import HOME_PREFIX, _claim
from sftp_minio_assets_tests.support import (
    PARTITIONS,
    PROJECT,
    keys_of,
    materialize,
    requested,
    tick,
)

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def test_discovery_new_unchanged_changed_filtered_young_and_nested(env, instance):
    env.write("a.csv", b"a")
    env.write("deep/er/b.csv", b"b")
    env.write("skip.tmp", b"filtered out")
    env.write("young.csv", b"still being written", age_seconds=0)
    rules = dict(exclude=["*.tmp"], min_file_age_seconds=600)

    first = tick(env, instance, **rules)
    assert requested(first, instance) == ["a.csv", "deep/er/b.csv"]
    assert sorted(instance.get_dynamic_partitions(PARTITIONS)) == ["a.csv", "deep/er/b.csv"]
    assert first.cursor is None  # the transfer log is the sensor's memory, whatever the backlog

    quiet = tick(env, instance, **rules)
    assert requested(quiet, instance) == []
    assert "nothing new" in quiet.skip_reason.skip_message

    assert materialize(env, instance, ["a.csv", "deep/er/b.csv"]).success
    after_copy = tick(env, instance, **rules)
    assert requested(after_copy, instance) == []

    env.write("a.csv", b"a, second version", age_seconds=900)
    env.write("young.csv", b"now complete", age_seconds=900)
    changed = tick(env, instance, **rules)
    assert requested(changed, instance) == ["a.csv", "young.csv"]
    # a.csv keeps its partition: only young.csv is new.
    assert sorted(instance.get_dynamic_partitions(PARTITIONS)) == [
        "a.csv",
        "deep/er/b.csv",
        "young.csv",
    ]


def test_files_stamped_in_the_future_are_named_and_copied_once_seen_unchanged(
    env, instance, capsys
):
    """Issue 19, 5: such a file was counted "too recent" without a name, and one stamped years
    ahead was never copied. Its age is measured from its first sighting instead."""
    tomorrow = env.write("tomorrow.csv", b"a day ahead", age_seconds=-86400)
    env.write("y2100.csv", b"far ahead", age_seconds=time.time() - 4102444800)
    gate = {"min_file_age_seconds": 60}
    capsys.readouterr()

    first = tick(env, instance, **gate)
    said = capsys.readouterr().err
    assert requested(first, instance) == []
    assert "2 stamped in the future" in first.skip_reason.skip_message
    assert "2 files are stamped in the future" in said
    assert "'tomorrow.csv' (24 h 0 min ahead)" in said and "'y2100.csv'" in said
    assert "MIN_FILE_AGE_SECONDS" in said

    # Seen unchanged, but for less than the minimum age: still held back.
    assert requested(tick(env, instance, **gate), instance) == []
    env.log.db.execute("UPDATE file_sightings SET seen_at = seen_at - interval '61 seconds'")
    tomorrow.write_bytes(b"rewritten: its first sighting starts again")
    os.utime(tomorrow, (time.time() + 86400, time.time() + 86400))
    assert requested(tick(env, instance, **gate), instance) == ["y2100.csv"]

    env.log.db.execute("UPDATE file_sightings SET seen_at = seen_at - interval '61 seconds'")
    assert requested(tick(env, instance, **gate), instance) == ["tomorrow.csv"]
    assert materialize(env, instance, ["tomorrow.csv", "y2100.csv"]).success
    assert tick(env, instance, **gate).run_requests == []


def test_a_completed_file_is_not_requested_again(env, instance):
    env.write("done.txt", b"done")
    tick(env, instance)
    assert materialize(env, instance, ["done.txt"]).success
    assert requested(tick(env, instance), instance) == []


def test_awkward_names_become_reversible_partition_keys(env, instance):
    env.write("a,b.txt", b"comma")
    env.write("wait....txt", b"dots")
    result = tick(env, instance)
    keys = requested(result, instance)
    assert keys == sorted([encode_key("a,b.txt"), encode_key("wait....txt")])
    assert all("," not in key and "..." not in key for key in keys)
    assert materialize(env, instance, ["a,b.txt", "wait....txt"]).success
    assert env.store.fs.cat_file(f"{env.bucket}/default/a,b.txt") == b"comma"


def test_new_files_go_in_batches_of_consecutive_partitions_and_a_trickle_alone(env, instance):
    paths = [f"drop/{i:02d}.csv" for i in range(10)]
    for path in paths:
        env.write(path, path.encode())
    result = tick(env, instance)
    batches = [keys_of(request, instance) for request in result.run_requests]
    # Ten small files are not worth a second run's start (test_discovery: when they are).
    assert [len(batch) for batch in batches] == [10]
    assert sorted(key for batch in batches for key in batch) == paths

    for request, batch in zip(result.run_requests, batches, strict=True):
        run = dg.materialize(
            [files],
            instance=instance,
            resources=env.resources(),
            tags=request.tags,
            partition_key=request.partition_key,
        )
        # The tags carry the batch to context.partition_keys: this breaks loudly if an
        # upgrade of Dagster changes how range tags are read.
        assert sorted(e.partition for e in run.get_asset_materialization_events()) == batch

    env.write("drop/late.csv", b"one more")
    trickle = tick(env, instance)
    assert [r.partition_key for r in trickle.run_requests] == ["drop/late.csv"]


def test_a_big_file_copied_for_longer_than_the_stale_window_keeps_its_upload(env, instance):
    """The sensor aborts multipart uploads older than the stale window, left by dead workers,
    but not the upload of a file whose claim is alive (heartbeats): a 50 GiB file may take
    longer than MAX_STALE_LOCK_MINUTES to copy, and aborting it would restart it forever."""
    stale_minutes = 2 / 60
    env.write("big.bin", b"big")
    env.write("dead.bin", b"dead")
    log, store = env.log, env.store
    log.claims.stale_minutes = stale_minutes
    claims = {
        name: log.claims.claim(
            "default",
            name,
            size_bytes=3,
            remote_mtime=0,
            object_key=f"default/{name}",
            worker_id="w",
            run_id=None,
        )
        for name in ("big.bin", "dead.bin")
    }
    for name in claims:
        store.create_multipart(f"default/{name}", {})
    deadline = time.monotonic() + stale_minutes * 60 + 1.5
    while time.monotonic() < deadline:  # only big.bin's worker is alive
        log.claims.heartbeat(claims["big.bin"])
        time.sleep(0.5)

    tick(env, instance, {"stale_minutes": stale_minutes})

    assert [u["Key"] for u in store.list_multipart_uploads()] == ["default/big.bin"]
    assert env.rows()["big.bin"]["status"] == "IN_PROGRESS"
    assert env.rows()["dead.bin"]["status"] != "IN_PROGRESS"


def test_partition_keys_are_read_a_page_at_a_time_across_page_ends(instance):
    """KnownPartitions on the instance's own storage: positions and ranges found across the
    pages get_paginated_dynamic_partitions returns, as with a million keys (pages of 10,000)."""
    keys = [f"d/{n:02d}.csv" for n in range(25)]
    instance.add_dynamic_partitions(PARTITIONS, keys)
    known = KnownPartitions(instance, "default", page=4)
    assert known.positions(["d/03.csv", "d/04.csv", "d/24.csv", "new.csv"]) == {
        "d/03.csv": 3,
        "d/04.csv": 4,
        "d/24.csv": 24,
    }
    spans = [("d/02.csv", "d/05.csv"), ("d/19.csv", "d/20.csv")]
    assert known.ranges(spans) == {*keys[2:6], *keys[19:21]}


# A process that makes a gpg home as a run's keyring does (pgp.py: owner lock held for its
# life), prints it and dies by SIGKILL: the home stays, with no owner.
KILLED_KEYRING = """
import os, signal, tempfile
from sftp_minio_assets.transfer import pgp
home = tempfile.mkdtemp(prefix=f"{pgp.HOME_PREFIX}{os.getpid()}-")
pgp._claim(home)
print(home, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_tick_removes_the_gpg_home_a_killed_run_left(env, instance):
    """A run killed after the last encrypted file was opened left its keyring's home (its
    private key files) until another run made a keyring: with no encrypted file to come, for
    good. The sensor's clean-up removes it at the next tick; a live owner's home stays."""
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_KEYRING], cwd=PROJECT, capture_output=True, text=True
    )
    home = killed.stdout.strip()
    assert killed.returncode == -signal.SIGKILL and os.path.isdir(home), killed.stderr
    live = tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-")
    owner = _claim(live)
    try:
        tick(env, instance)
        assert not os.path.exists(home)
        assert os.path.isdir(live)
    finally:
        os.close(owner)
        shutil.rmtree(live, ignore_errors=True)
