"""Knowing when a file is complete (issue 14, part 1), on the real servers: ready markers,
and stable listings. (A file that changes or vanishes while it is copied: test_faults.py.)"""

import os
import shutil

import pytest

from sftp_minio_assets.defs.dry_run import build_dry_run_job
from sftp_minio_assets_tests.support import PARTITIONS, materialize, requested, tick

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def objects(env) -> list[str]:
    return sorted(path.split("/", 1)[1] for path in env.store.fs.find(env.bucket))


def test_a_file_is_copied_only_once_its_marker_appears_and_the_marker_never(env, instance):
    env.write("in/data.csv", b"a,b\n1,2\n")
    env.write("in/other.csv", b"no marker yet")
    marker = dict(ready_marker="{name}.done")

    for _ in range(3):
        waiting = tick(env, instance, **marker)
        assert requested(waiting, instance) == []
        assert "2 waiting for their ready marker" in waiting.skip_reason.skip_message

    env.write("in/data.csv.done", b"")
    ready = tick(env, instance, **marker)
    assert requested(ready, instance) == ["in/data.csv"]
    assert list(instance.get_dynamic_partitions(PARTITIONS)) == ["in/data.csv"]

    assert materialize(env, instance, ["in/data.csv"]).success
    assert requested(tick(env, instance, **marker), instance) == []
    assert objects(env) == ["default/in/data.csv"]
    assert set(env.rows()) == {"in/data.csv"}


def test_a_stem_marker_and_a_success_marker_per_directory(env, instance):
    for path in ("a.csv", "a.json", "a.ok", "b.csv"):
        env.write(path, path.encode())
    stem = tick(env, instance, ready_marker="{stem}.ok")
    assert requested(stem, instance) == ["a.csv", "a.json"]

    for path in ("day=1/part-0", "day=1/part-1", "day=1/_SUCCESS", "day=2/part-0"):
        env.write(path, path.encode())
    success = tick(env, instance, ready_marker="_SUCCESS", include=["day=*"])
    assert requested(success, instance) == ["day=1/part-0", "day=1/part-1"]
    assert "_SUCCESS" not in " ".join(instance.get_dynamic_partitions(PARTITIONS))


def writable(env, *folders: str):
    """Folders of the test's root where the SFTP account may delete and create."""
    for folder in folders:
        (env.root / folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(env.root / folder, user=env.stack.ssh.username)
    return env.root / folders[0]


def test_after_copy_delete_takes_a_files_marker_with_it(env, instance):
    root = writable(env, "drop")
    env.write("drop/data.csv", b"payload")
    env.write("drop/data.csv.done", b"")
    settings = dict(root=str(root), ready_marker="{name}.done", after_copy="delete")
    assert requested(tick(env, instance, **settings), instance) == ["data.csv"]

    assert materialize(env, instance, ["data.csv"], sftp=settings).success
    assert os.listdir(root) == []
    assert env.rows()["data.csv"]["source_action"] == "deleted; its marker data.csv.done deleted"
    assert objects(env) == ["default/data.csv"]


def test_after_copy_move_takes_a_success_marker_once_its_directory_is_copied(env, instance):
    root = writable(env, "drop", "drop/day=1", "archive")
    for path in ("part-0", "part-1", "_SUCCESS"):
        env.write(f"drop/day=1/{path}", path.encode())
    archive = env.root / "archive"
    settings = dict(
        root=str(root), ready_marker="_SUCCESS", after_copy="move", archive_dir=str(archive)
    )
    assert requested(tick(env, instance, **settings), instance) == ["day=1/part-0", "day=1/part-1"]

    assert materialize(env, instance, ["day=1/part-0"], sftp=settings).success
    assert sorted(os.listdir(root / "day=1")) == ["_SUCCESS", "part-1"]  # part-1 needs it
    assert "stays for the other files" in env.rows()["day=1/part-0"]["source_action"]

    assert materialize(env, instance, ["day=1/part-1"], sftp=settings).success
    assert os.listdir(root / "day=1") == []
    assert sorted(os.listdir(archive / "day=1")) == ["_SUCCESS", "part-0", "part-1"]
    assert "its marker day=1/_SUCCESS moved to" in env.rows()["day=1/part-1"]["source_action"]
    assert objects(env) == ["default/day=1/part-0", "default/day=1/part-1"]


def test_a_growing_file_is_requested_only_once_two_ticks_see_it_unchanged(env, instance):
    stable = dict(require_stable_listing=True, min_file_age_seconds=0)
    growing = env.write("growing.log", b"line 1\n", age_seconds=0)
    env.write("still.csv", b"complete")

    first = tick(env, instance, **stable)
    assert requested(first, instance) == []
    assert "2 waiting for a second listing" in first.skip_reason.skip_message
    for line in range(2, 5):  # the partner is still writing between ticks
        with open(growing, "ab") as f:
            f.write(f"line {line}\n".encode())
        assert requested(tick(env, instance, **stable), instance) == (
            ["still.csv"] if line == 2 else []
        )
    assert requested(tick(env, instance, **stable), instance) == ["growing.log"]

    assert materialize(env, instance, ["growing.log"]).success
    env.write("growing.log", b"a second version, complete at once")
    assert requested(tick(env, instance, **stable), instance) == []  # changed: seen once
    assert requested(tick(env, instance, **stable), instance) == ["growing.log"]


def test_the_dry_run_says_which_files_wait_for_a_marker_or_a_second_listing(env, instance):
    env.write("a.csv", b"a")
    env.write("a.csv.done", b"")
    env.write("b.csv", b"no marker")
    settings = dict(ready_marker="{name}.done", require_stable_listing=True)

    def dry_run() -> tuple[int, int, int]:
        result = build_dry_run_job("default").execute_in_process(
            resources=env.resources(settings), instance=instance
        )
        [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = output.event_specific_data.metadata
        names = ("would_copy", "waiting_for_marker", "waiting_for_second_listing")
        return tuple(metadata[name].value for name in names)

    assert dry_run() == (0, 1, 1)
    assert dry_run() == (0, 1, 1)  # a dry run records no sighting
    tick(env, instance, **settings)  # the sensor does
    assert dry_run() == (1, 1, 0)


def test_each_tick_replaces_the_sources_sightings_in_the_directories_it_read(env):
    log = env.log
    root = [""]
    log.sensor_memory.record_sightings("default", [("a.csv", 1, 100), ("b.csv", 2, 200)], root)
    log.sensor_memory.record_sightings("other", [("a.csv", 9, 900)], root)
    log.sensor_memory.record_sightings("default", [("b.csv", 3, 300), ("c.csv", 4, 400)], root)
    assert {k: v for k, (v, _) in log.sensor_memory.sightings("default").items()} == {
        "b.csv": "3:300",
        "c.csv": "4:400",
    }
    log.sensor_memory.record_sightings("default", [("d/e.csv", 5, 500)], ["d"])
    # A tick that did not read the root (a listing going on from the last tick) keeps them.
    assert set(log.sensor_memory.sightings("default")) == {"b.csv", "c.csv", "d/e.csv"}
    log.sensor_memory.record_sightings("default", [("d/e.csv", 5, 500)], ["", "d"])
    assert set(log.sensor_memory.sightings("default")) == {"d/e.csv"}
    log.sensor_memory.record_sightings("default", [], None)  # the whole tree read
    assert log.sensor_memory.sightings("default") == {}
    assert {k: v for k, (v, _) in log.sensor_memory.sightings("other").items()} == {
        "a.csv": "9:900"
    }
