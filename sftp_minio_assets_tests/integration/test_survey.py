"""A tick's listing compared where the rows are (policy/survey.py, SensorMemory.compare, issue
24): the files copied already stay in the database; only those whose row differs come back to
the tick, whatever the number of files."""

import pytest

from sftp_minio_assets_tests.support import requested, tick

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def test_only_files_whose_row_differs_come_back_from_the_database(env):
    memory = env.log.sensor_memory
    listed = [(f"f{n:03d}.csv", 10, 1_700_000_000, None) for n in range(200)]
    memory.request("default", [(key, size, mtime, False) for key, size, mtime, _ in listed])
    env.log.db.execute(
        "UPDATE file_transfer_log SET status = 'COMPLETED' WHERE filename <> 'f001.csv'"
    )
    env.log.db.execute(  # copied before the file changed
        "UPDATE file_transfer_log SET size_bytes = 9 WHERE filename = 'f002.csv'"
    )
    with memory.compare("default", iter([*listed, ("new.csv", 5, 1_700_000_001, None)])) as found:
        assert found.listed == 201
        differing = [(key, state and state.status) for key, _, _, state in found.differing]
        assert found.sharing == {}
    assert differing == [("f001.csv", "QUEUED"), ("f002.csv", "COMPLETED"), ("new.csv", None)]


def test_files_that_would_share_an_object_are_found_in_the_database(env):
    memory = env.log.sensor_memory
    listed = [("a", 1, 1, "k/x"), ("b", 2, 2, "k/x"), ("c", 3, 3, "k/y"), ("d", 4, 4, None)]
    with memory.compare("default", iter(listed)) as found:
        sharing = {k: sorted(f[0] for f in files) for k, files in found.sharing.items()}
    assert sharing == {"k/x": ["a", "b"]}


def test_a_raw_name_and_the_literal_name_it_is_escaped_to_are_both_refused(env, instance):
    """`caf\\xe9` (not UTF-8) is stored as `caf%E9`, another file's literal name: the tick
    finds the pair among files it never holds in memory, and refuses both."""
    (env.root / "caf%E9").write_bytes(b"literal")
    (env.root / b"caf\xe9".decode("utf-8", "surrogateescape")).write_bytes(b"raw")
    (env.root / "plain.csv").write_bytes(b"plain")
    result = tick(env, instance)
    assert requested(result, instance) == ["plain.csv"]
    rows = env.rows()
    assert {rows[k]["status"] for k in ("caf%25E9", "caf%E9")} == {"FAILED"}
    assert "same object" in rows["caf%E9"]["error_message"]


def test_a_tick_over_more_new_files_than_it_requests_plans_the_first_in_key_order(env):
    for n in range(12):
        env.write(f"in/{n:02d}.csv", b"x")
    env.write("in/notes.txt", b"left out by the filter, still listed")
    surveyed = env.source(exclude=["*.txt"]).survey(max_requests=5)
    assert surveyed.listed == 13  # every regular file listed, as the tick's skip reason says
    assert [r.key for r in surveyed.plan.requests] == [f"in/{n:02d}.csv" for n in range(5)]
