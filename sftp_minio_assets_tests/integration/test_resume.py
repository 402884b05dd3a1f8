"""Resumable transfers (resume.py) on the real servers: a big file whose copy dies part way goes
on from where it stopped, whoever picks it up, instead of starting over.

What was read again is measured by sshd itself: its SFTP server logs, for each file handle it
closes, how many bytes it read ("close ... bytes read N").
"""

import json
import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from sftp_minio_assets.defs.run_launcher import WORKER_MODULE as RUN_WORKER
from sftp_minio_assets_tests.support import (
    CAP,
    DAEMON_SETTINGS,
    SMALL,
    killed_half_way,
    resuming_worker,
    run_partitions,
    sha256_file,
    uploaded,
    wait_for,
)

MIB = 1024 * 1024
SIZE = 300 * MIB


class SshdLog:
    """What sshd sent, per connection, from its log (LogLevel VERBOSE logs "Transferred: sent N,
    received M bytes" as each connection closes): counted by the SFTP server, not by us."""

    def __init__(self, env):
        self.path = env.stack.ssh.log_path
        self.offset = self.path.stat().st_size

    def sent(self) -> list[int]:
        """Bytes sent by each connection closed since this object was made."""
        with open(self.path, "rb") as log:
            log.seek(self.offset)
            text = log.read().decode(errors="replace")
        return [int(n) for n in re.findall(r"Transferred: sent (\d+), received", text)]


def assert_resumed(env, path, sent: Callable[[], list[int]]) -> dict:
    """The object and the log's sha256 are the whole file's, the last attempt began past half
    way, and sshd sent after the restart (sent(): per connection) the rest of the file only:
    its bytes plus the SSH and SFTP framing (measured here at 0.1%), not the whole file."""
    row = env.rows()[path.name]
    assert row["status"] == "COMPLETED", row["error_message"]
    assert row["sha256"].strip() == sha256_file(path) == env.object_sha256(f"default/{path.name}")
    assert row["resumed_from"] >= SIZE // 2, row["resumed_from"]
    rest = SIZE - row["resumed_from"]
    wait_for(lambda: sum(sent()) >= rest, 30, "sshd to log what it sent after the restart")
    assert sum(sent()) <= rest * 1.02 + MIB, (sent(), rest)
    assert env.store.list_multipart_uploads() == []
    return row


@pytest.mark.integration
def test_a_run_killed_past_half_way_is_resumed_by_another_process(env):
    path = env.write("big.bin", os.urandom(SIZE))
    killed_half_way(env, "big.bin", SIZE)
    after_the_kill = SshdLog(env)
    second = run_partitions(env, ["big.bin"], shared={"stale_minutes": 0.05})
    out, _ = second.communicate(timeout=300)
    assert json.loads(out.splitlines()[-1]) == {"success": True, "materialized": ["big.bin"]}
    assert_resumed(env, path, after_the_kill.sent)


@pytest.mark.integration
def test_a_copy_cut_by_an_s3_restart_resumes_on_retry(env):
    """Its run log says how far the copy got at each heartbeat, and where it resumed."""
    path = env.write("big.bin", os.urandom(SIZE))
    since_the_start = SshdLog(env)
    source = env.source(env.shared(retries=4, retry_base_seconds=2), max_bytes_per_second=CAP)
    lines: list[str] = []
    worker = source.worker(report=lines.append)
    worker.heartbeat_seconds = 1
    with ThreadPoolExecutor(1) as pool:
        copy = pool.submit(worker.transfer, "big.bin")
        wait_for(lambda: uploaded(env) >= SIZE // 2, 120, "half of big.bin to be uploaded")
        env.stack.s3.stop()
        # Down until the attempt gives up (botocore rides out a short restart by itself).
        wait_for(lambda: env.rows()["big.bin"]["status"] == "FAILED", 120, "the copy to fail")
        env.stack.s3.start()
        outcome = copy.result(timeout=300)
    assert outcome.status == "transferred", outcome.message
    assert outcome.metadata["attempt"] > 1
    source.pool.close()
    # The first connection is the one the restart cut; the rest is the retries'.
    row = assert_resumed(env, path, lambda: since_the_start.sent()[1:])
    assert outcome.metadata["resumed_from_bytes"] == row["resumed_from"]
    progress = r"big\.bin: [\d,.]+ MiB of 300\.0 MiB \(\d+%\), [\d.]+ MB/s, about \d+ s left"
    assert any(re.search(progress, line) for line in lines), lines
    resumed = f"resuming at {row['resumed_from'] / MIB:,.1f} MiB of 300.0 MiB"
    assert any(resumed in line for line in lines), lines


@pytest.mark.integration
def test_a_run_killed_through_the_daemon_resumes_by_itself(env, start_daemon):
    path = env.write("big.bin", os.urandom(SIZE))
    daemon = start_daemon(**DAEMON_SETTINGS, SFTP_MAX_BYTES_PER_SECOND=str(CAP))
    wait_for(lambda: uploaded(env) >= SIZE // 2, 240, "half of big.bin to be uploaded")
    victims = daemon.pids(RUN_WORKER)
    assert victims, daemon.log()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    time.sleep(2)
    after_the_kill = SshdLog(env)

    wait_for(lambda: env.rows()["big.bin"]["status"] == "COMPLETED", 240, "big.bin to be copied")
    row = assert_resumed(env, path, after_the_kill.sent)
    # The run log and the partition's materialization say it resumed, and from where.
    with psycopg.connect(daemon.dagster_db) as conn:
        events = [e for (e,) in conn.execute("SELECT event FROM event_logs").fetchall()]
    assert any(f"resuming at {row['resumed_from'] / MIB:,.1f} MiB" in e for e in events)
    assert any(
        "ASSET_MATERIALIZATION" in e and "resumed_from_bytes" in e and str(row["resumed_from"]) in e
        for e in events
    )


@pytest.mark.integration
@pytest.mark.parametrize("change", ["file", "upload"])
def test_a_changed_file_or_a_lost_upload_starts_over_and_says_so(env, change):
    """The file rewritten since the upload began, or the upload aborted meanwhile (by the
    sensor's sweep, a lifecycle rule, a person): the next claim starts over, saying why, and
    the object is the file as it is now."""
    path = env.write("data.bin", os.urandom(40 * MIB))
    killed_half_way(env, "data.bin", 40 * MIB, cap=10_000_000, **SMALL)
    if change == "file":
        env.write("data.bin", os.urandom(40 * MIB), age_seconds=600)
    else:
        [upload] = env.store.list_multipart_uploads()
        env.store.abort_multipart(upload["Key"], upload["UploadId"])
    lines: list[str] = []

    outcome = resuming_worker(env, lines).transfer("data.bin")

    assert outcome.status == "transferred", outcome.message
    assert "resumed_from_bytes" not in outcome.metadata
    why = {"file": "the file changed", "upload": "upload is gone from the bucket"}[change]
    assert any("starting over" in line and why in line for line in lines), lines
    assert env.object_sha256("default/data.bin") == sha256_file(path) == outcome.metadata["sha256"]
    assert env.rows()["data.bin"]["resumed_from"] is None
    assert env.store.list_multipart_uploads() == []


@pytest.mark.integration
def test_a_bandwidth_cap_holds_within_ten_percent(env):
    """40 MB at a cap of 8 MB/s: never more than a tenth faster than the cap. Not far slower
    either; how much slower a loaded machine can make a copy has nothing to do with the cap, so
    that bound is loose (a CI machine under load measured 7.1 MB/s)."""
    cap = 8_000_000
    env.write("capped.bin", os.urandom(40_000_000))
    source = env.source(max_bytes_per_second=cap)

    outcome = source.worker().transfer("capped.bin")

    rate = outcome.metadata["bytes"] / outcome.metadata["total_seconds"]
    assert 0.5 * cap <= rate <= 1.1 * cap, f"{rate / 1e6:.2f} MB/s"


@pytest.mark.integration
def test_runs_in_two_processes_share_the_cap_of_their_source(env):
    """Two runs of one source, each in its own process, 40 MB each at a cap of 10 MB/s: about
    eight seconds from the first read to the last, not the four that a cap per run would give
    (the processes adjust their shares every two seconds: allow for that)."""
    cap = 10_000_000
    for name in ("a.bin", "b.bin"):
        env.write(name, os.urandom(40_000_000))
    runs = [run_partitions(env, [name], max_bytes_per_second=cap) for name in ("a.bin", "b.bin")]
    for run in runs:
        out, _ = run.communicate(timeout=120)
        assert json.loads(out.splitlines()[-1])["success"], out

    rows = env.rows().values()
    span = max(r["transfer_end_time"] for r in rows) - min(r["transfer_start_time"] for r in rows)
    rate = 80_000_000 / span.total_seconds()
    assert rate <= 1.4 * cap, f"{rate / 1e6:.2f} MB/s"
