"""Exactly once through crashes and outages, faults injected through the real processes."""

import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sftp_minio_assets.transfer.copy import Copy, Tuning, copy_file
from sftp_minio_assets.transfer.failures import Committed
from sftp_minio_assets.transfer.recovery import TOKEN
from sftp_minio_assets_tests.support import (
    enable_versioning,
    materializations,
    materialize,
    requested,
    run_partitions,
    sha256_file,
    statuses,
    tick,
    wait_for,
    writes_per_key,
)

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

STALE_MINUTES = 3 / 60  # three seconds: heartbeats every 0.75 s


class BucketWatcher:
    """Lists the bucket over and over during a test: no object may ever show a partial size."""

    def __init__(self, env):
        self.env, self.seen, self.stop = env, set(), threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        store = self.env.store
        while not self.stop.is_set():
            try:
                reply = store._call("list_objects_v2", Prefix="")
                self.seen |= {(o["Key"], o["Size"]) for o in reply.get("Contents", [])}
            except Exception:
                pass  # the S3 server may be the one that is down
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_a_run_killed_mid_transfer_is_completed_by_the_next_one_after_the_stale_window(env):
    enable_versioning(env)
    big = env.write("big.bin", os.urandom(256 * 1024 * 1024))
    settings = {"stale_minutes": STALE_MINUTES, "parts_in_flight": 1}
    victim = run_partitions(env, ["big.bin"], settings)
    wait_for(lambda: env.store.list_multipart_uploads(), what="the multipart upload to start")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert env.rows()["big.bin"]["status"] == "IN_PROGRESS"

    time.sleep(STALE_MINUTES * 60 + 1)
    result = materialize(env, None, ["big.bin"], stale_minutes=STALE_MINUTES)

    assert result.success
    row = env.rows()["big.bin"]
    assert row["status"] == "COMPLETED" and row["attempts"] == 2
    assert env.object_sha256("default/big.bin") == sha256_file(big) == row["sha256"]
    assert writes_per_key(env) == {"default/big.bin": 1}
    assert env.store.list_multipart_uploads() == []  # the dead attempt's upload was aborted


@pytest.mark.parametrize("server", ["s3", "ssh", "postgres"])
def test_a_server_restarting_mid_batch_loses_nothing_and_duplicates_nothing(env, server):
    enable_versioning(env)
    paths = [f"batch/{i:02d}.bin" for i in range(12)]
    for path in paths:
        env.write(path, os.urandom(6 * 1024 * 1024))
    settings = dict(max_workers=4, retries=8, retry_base_seconds=0.5, part_size_mb=5)
    restarted = getattr(env.stack, server)
    with BucketWatcher(env) as watcher, ThreadPoolExecutor(1) as pool:
        running = pool.submit(materialize, env, None, paths, **settings)
        wait_for(lambda: env.store.list_keys(), what="the first object")
        restarted.stop()
        time.sleep(1.5)
        restarted.start()
        result = running.result(timeout=300)

    assert result.success
    rows = env.rows()
    assert {rows[p]["status"] for p in paths} == {"COMPLETED"}
    for path in paths:
        assert env.object_sha256(f"default/{path}") == sha256_file(env.root / path)
    assert writes_per_key(env) == {f"default/{p}": 1 for p in paths}
    assert env.store.list_multipart_uploads() == []
    size = 6 * 1024 * 1024
    assert {listed_size for _, listed_size in watcher.seen} <= {size}, "a partial object showed"


def test_four_processes_racing_over_the_same_files_copy_each_exactly_once(env):
    enable_versioning(env)
    paths = [f"soak/{i:03d}.txt" for i in range(320)]
    for path in paths:
        env.write(path, os.urandom(4096))
    racers = [run_partitions(env, paths, {"max_workers": 4}) for _ in range(4)]
    reports = [
        json.loads(racer.communicate(timeout=300)[0].strip().splitlines()[-1]) for racer in racers
    ]

    assert all(report["success"] for report in reports)
    materialized = [key for report in reports for key in report["materialized"]]
    assert set(materialized) == set(paths)
    rows = env.rows()
    assert {(rows[p]["status"], rows[p]["attempts"]) for p in paths} == {("COMPLETED", 1)}
    assert writes_per_key(env) == {f"default/{p}": 1 for p in paths}


def copied_while(env, name: str, change) -> dict:
    """A big file copied (not retried), change(its path) done once its upload has started; the
    run must fail, leaving a FAILED row (returned), no object and no open upload."""
    path = env.write(name, os.urandom(128 * 1024 * 1024))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(materialize, env, None, [name], retries=0, parts_in_flight=1)
        wait_for(lambda: env.store.list_multipart_uploads(), what="the upload to start")
        change(path)
        result = running.result(timeout=120)

    assert not result.success
    row = env.rows()[name]
    assert row["status"] == "FAILED"
    assert env.store.head(f"default/{name}") is None
    assert env.store.list_multipart_uploads() == []
    return row


def test_a_file_modified_mid_transfer_is_never_completed_torn(env):
    def append(path):
        with open(path, "ab") as f:
            f.write(b"one more line\n")

    row = copied_while(env, "growing.log", append)
    assert "changed while it was read" in row["error_message"]

    path = env.root / "growing.log"
    rerun = materialize(env, None, ["growing.log"])
    assert rerun.success
    assert env.object_sha256("default/growing.log") == sha256_file(path)


def test_a_file_truncated_mid_copy_waits_for_the_stability_gate_not_an_immediate_retry(
    env, instance
):
    """A writer that pauses (issue 19, 2): the in-run retry used to copy the truncated state
    a second later and record it COMPLETED, though the file was modified a second before.
    The gate is half an hour: a slow machine may take a minute from the truncation to the tick."""
    gate = {"sftp": {"min_file_age_seconds": 1800}, "retry_base_seconds": 0.1}
    path = env.write("paused.bin", os.urandom(128 * 1024 * 1024))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(materialize, env, None, ["paused.bin"], parts_in_flight=1, **gate)
        wait_for(lambda: env.store.list_multipart_uploads(), what="the upload to start")
        os.truncate(path, 32 * 1024 * 1024)
        result = running.result(timeout=120)

    assert not result.success
    row = env.rows()["paused.bin"]
    assert (row["status"], row["attempts"]) == ("FAILED", 1), row
    assert "copied again once it looks complete" in row["error_message"]
    assert env.store.head("default/paused.bin") is None
    # The sensor holds it back while it is younger than the gate, then requests it.
    assert tick(env, instance, min_file_age_seconds=1800).run_requests == []
    stamp = time.time() - 7200
    os.utime(path, (stamp, stamp))
    assert requested(tick(env, instance, min_file_age_seconds=1800), instance) == ["paused.bin"]


def test_a_file_deleted_mid_transfer_is_never_recorded_as_copied(env):
    """Its open handle still reads to the end: only its path says it is gone (issue 14)."""
    row = copied_while(env, "vanishing.bin", lambda path: path.unlink())
    assert "deleted or moved while it was read" in row["error_message"]


def test_only_the_failed_partitions_are_rerun(env, instance):
    paths = [f"f{i}.csv" for i in range(6)]
    for path in paths[:4]:
        env.write(path, path.encode())
    first = materialize(env, instance, paths)
    assert not first.success

    failed = [key for key, status in statuses(instance, paths).items() if status == "FAILED"]
    assert failed == ["f4.csv", "f5.csv"]
    for path in failed:
        env.write(path, path.encode())
    reruns = [materialize(env, instance, [key]) for key in failed]  # as "materialize failed"

    assert all(run.success for run in reruns)
    assert set(statuses(instance, paths).values()) == {"MATERIALIZED"}
    rows = env.rows()
    assert [rows[p]["attempts"] for p in paths] == [1, 1, 1, 1, 2, 2]
    assert {k for run in reruns for k in materializations(run)} == set(failed)


def test_an_attempt_whose_commit_landed_unseen_is_finished_not_copied_again(env):
    """The S3 server went away just after it committed the object (the client saw an error):
    the retry finds the object by the attempt's token and only records it."""
    enable_versioning(env)
    worker = env.source().worker()
    for name in ("landed.bin", "lost.bin"):
        env.write(name, os.urandom(6 * 1024 * 1024))
    mtime = str(int((env.root / "landed.bin").stat().st_mtime))
    sent = copy_file(
        Copy(
            worker.pool.get(),
            str(env.root / "landed.bin"),
            worker.store,
            "default/landed.bin",
            {"source-mtime": mtime},
            tuning=Tuning(part_size=5 * 1024 * 1024),
        )
    )
    token = env.store.head("default/landed.bin")["Metadata"][TOKEN]
    landed = Committed("default/landed.bin", token, sent.size_bytes, sent.sha256, mtime)
    lost_mtime = str(int((env.root / "lost.bin").stat().st_mtime))
    lost = Committed("default/lost.bin", "another-attempt", 6 * 1024 * 1024, "0" * 64, lost_mtime)

    outcomes = {
        key: worker._attempt(key, c) for key, c in [("landed.bin", landed), ("lost.bin", lost)]
    }

    assert {o.status for o in outcomes.values()} == {"transferred"}
    assert writes_per_key(env) == {"default/landed.bin": 1, "default/lost.bin": 1}
    rows = env.rows()
    assert (
        rows["landed.bin"]["sha256"].strip() == sent.sha256 == sha256_file(env.root / "landed.bin")
    )
    assert env.store.tags("default/landed.bin") == {"sha256": sent.sha256}
    assert rows["lost.bin"]["sha256"].strip() == sha256_file(env.root / "lost.bin")
