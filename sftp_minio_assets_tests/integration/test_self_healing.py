"""Nothing waits for a human that retrying can fix: claims of finished runs are taken over at
once, requested files whose run is gone are requested again, failures are retried with a
growing backoff, permanent ones wait for a fix and raise one alert."""

import os
import signal
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from sftp_minio_assets.defs.alerts import alert_on_repeated_failures
from sftp_minio_assets.defs.checks import build_file_checks
from sftp_minio_assets.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from sftp_minio_assets.defs.resources import AlertSettings
from sftp_minio_assets.defs.run_launcher import WORKER_MODULE as RUN_WORKER
from sftp_minio_assets.transfer.copy import Copy, Tuning, copy_file
from sftp_minio_assets_tests.support import (
    CAP,
    DAEMON_SETTINGS,
    Receiver,
    enable_versioning,
    files,
    materialize,
    requested,
    run_status_sensor,
    sha256_file,
    statuses,
    tick,
    wait_for,
    writes_per_key,
)

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

NO_BACKOFF = {"auto_retry_backoff_minutes": [0]}


def finished_run_id(env, instance) -> str:
    """The id of a run that is over, as a crashed run is once Dagster has seen it die."""
    env.write("other.txt", b"other")
    result = materialize(env, instance, ["other.txt"])
    assert result.success
    return result.run_id


def ghost_claim(env, key: str, run_id: str):
    """A claim with a fresh heartbeat (well inside the stale window) whose worker is gone."""
    size = (env.root / key).stat().st_size
    mtime = int((env.root / key).stat().st_mtime)
    claim = env.log.claims.claim(
        "default",
        key,
        size_bytes=size,
        remote_mtime=mtime,
        object_key=f"default/{key}",
        worker_id="ghost:1:transfer_0",
        run_id=run_id,
    )
    assert claim is not None
    return claim


def age_row(env, key: str, column: str, seconds: float) -> None:
    """Move a row's timestamp into the past: what waiting that long would do."""
    with env.log.db.connection() as conn:
        conn.execute(
            f"UPDATE file_transfer_log SET {column} = {column} - make_interval(secs => %s) "
            "WHERE filename = %s",
            (seconds, key),
        )


def test_a_claim_of_a_finished_run_is_taken_over_at_once_by_a_run(env, instance):
    enable = env.write("big.bin", os.urandom(3 * 1024 * 1024))
    ghost_claim(env, "big.bin", finished_run_id(env, instance))

    result = materialize(env, instance, ["big.bin"])

    assert result.success
    row = env.rows()["big.bin"]
    assert (row["status"], row["attempts"]) == ("COMPLETED", 2)
    assert env.object_sha256("default/big.bin") == sha256_file(enable)
    assert statuses(instance, ["big.bin"]) == {"big.bin": "MATERIALIZED"}


def test_a_claim_of_a_live_or_unknown_run_is_left_alone(env, instance):
    env.write("held.bin", b"held")
    ghost_claim(env, "held.bin", "not-a-run-of-this-instance")

    result = materialize(env, instance, ["held.bin"])

    assert result.success  # reported busy, not failed, and not shown as copied
    assert env.rows()["held.bin"]["status"] == "IN_PROGRESS"
    assert statuses(instance, ["held.bin"]) == {"held.bin": None}
    assert requested(tick(env, instance), instance) == []  # the stale window decides


def test_the_sensor_releases_claims_of_finished_runs_and_requests_the_files_again(env, instance):
    env.write("a.bin", b"a" * 1000)
    env.write("b.bin", b"b" * 1000)
    dead = finished_run_id(env, instance)
    tick(env, instance)
    for key in ("a.bin", "b.bin"):
        ghost_claim(env, key, dead)

    result = tick(env, instance, {"parallel_runs": 1})

    assert requested(result, instance) == ["a.bin", "b.bin"]
    [run] = result.run_requests  # consecutive partitions that failed together: one run
    assert (run.tags[RANGE_START_TAG], run.tags[RANGE_END_TAG]) == ("a.bin", "b.bin")
    rows = env.rows()
    assert {rows[k]["status"] for k in ("a.bin", "b.bin")} == {"QUEUED"}
    assert rows["a.bin"]["consecutive_failures"] == 1 and rows["a.bin"]["auto_retries"] == 1
    assert materialize(env, instance, ["a.bin", "b.bin"]).success
    assert {r["status"] for r in env.rows().values()} == {"COMPLETED"}
    assert env.rows()["a.bin"]["auto_retries"] == 0


def test_a_requested_file_whose_run_never_copied_it_is_requested_again(env, instance):
    env.write("lost.csv", b"lost")
    first = tick(env, instance)
    assert requested(first, instance) == ["lost.csv"]
    assert requested(tick(env, instance), instance) == []  # its run may still be starting

    age_row(env, "lost.csv", "requested_at", 120)  # and no run covering it ever came
    again = tick(env, instance)

    assert requested(again, instance) == ["lost.csv"]
    assert again.run_requests[0].run_key != first.run_requests[0].run_key
    assert "run ended before it copied" in env.rows()["lost.csv"]["error_message"]
    assert materialize(env, instance, ["lost.csv"]).success


def test_a_transient_failure_is_retried_with_a_growing_backoff_until_it_lands(env, instance):
    env.write("flaky.csv", b"flaky")
    env.stack.s3.stop()
    try:
        failed = materialize(env, instance, ["flaky.csv"], retries=0)
    finally:
        env.stack.s3.start()
    assert not failed.success
    row = env.rows()["flaky.csv"]
    assert (row["status"], row["permanent"]) == ("FAILED", False)
    backoff = {"auto_retry_backoff_minutes": [1, 5]}

    assert requested(tick(env, instance, backoff), instance) == []  # 1 minute has not passed
    age_row(env, "flaky.csv", "updated_at", 61)
    assert requested(tick(env, instance, backoff), instance) == ["flaky.csv"]
    assert env.rows()["flaky.csv"]["auto_retries"] == 1

    assert materialize(env, instance, ["flaky.csv"]).success  # the server is back
    assert env.store.fs.cat_file(f"{env.bucket}/default/flaky.csv") == b"flaky"
    assert statuses(instance, ["flaky.csv"]) == {"flaky.csv": "MATERIALIZED"}


def test_retries_stop_at_the_limit_and_an_alert_says_the_file_waits(env, instance):
    env.write("gone-bucket.csv", b"x")
    settings = {**NO_BACKOFF, "auto_retry_limit": 2}
    env.stack.s3.stop()
    try:
        runs = [materialize(env, instance, ["gone-bucket.csv"], retries=0)]
        for _ in range(4):
            if requested(tick(env, instance, settings), instance):
                runs.append(materialize(env, instance, ["gone-bucket.csv"], retries=0))
    finally:
        env.stack.s3.start()
    assert len(runs) == 3 and not any(run.success for run in runs)  # first run + 2 retries
    row = env.rows()["gone-bucket.csv"]
    assert (row["status"], row["auto_retries"], row["attempts"]) == ("FAILED", 2, 3)
    assert "waiting for a rerun" in tick(env, instance, settings).skip_reason.skip_message

    with Receiver() as receiver:
        run_status_sensor(alert_on_repeated_failures, env, instance, runs[-1], receiver, settings)
    texts = [message["text"] for message in receiver.received]
    [gave_up] = [text for text in texts if "automatic retries" in text]
    assert "file default/gone-bucket.csv still fails after 2 automatic retries" in gave_up
    assert any("file default/gone-bucket.csv failed 3 times in a row" in t for t in texts)


def test_a_permanent_failure_is_not_requested_in_a_loop_and_raises_one_alert(env, instance):
    locked = env.write("locked.csv", b"secret")
    locked.chmod(0)
    run = materialize(env, instance, ["locked.csv"])
    assert not run.success
    assert env.rows()["locked.csv"]["permanent"] is True

    with Receiver() as receiver:
        for _ in range(10):
            assert requested(tick(env, instance, NO_BACKOFF), instance) == []
            run_status_sensor(alert_on_repeated_failures, env, instance, run, receiver)
    assert env.rows()["locked.csv"]["attempts"] == 1
    [alert] = [m["text"] for m in receiver.received if "locked.csv" in m["text"]]
    assert "waits for a fix" in alert


def test_a_row_with_a_status_this_project_does_not_write_is_not_taken_for_a_live_claim(
    env, instance
):
    env.write("odd.csv", b"odd")
    ghost_claim(env, "odd.csv", "not-a-run-of-this-instance")
    with env.log.db.connection() as conn:
        conn.execute("UPDATE file_transfer_log SET status = 'RUNNING' WHERE filename = 'odd.csv'")

    [check] = [c for c in build_file_checks(files, "default") if "stuck" in c.check_key.name]
    result = dg.materialize(
        [files, check],
        selection=dg.AssetSelection.checks(check),
        resources={**env.resources(), "alerts": AlertSettings()},
        instance=instance,
    )
    [reported] = result.get_asset_check_evaluations()
    assert not reported.passed
    details = reported.metadata["details"].value
    assert "status 'RUNNING' is not one this project writes" in details

    assert requested(tick(env, instance, NO_BACKOFF), instance) == ["odd.csv"]
    assert materialize(env, instance, ["odd.csv"]).success
    assert env.rows()["odd.csv"]["status"] == "COMPLETED"


# --- through the real daemon, on the project's dagster.yaml ---------------------------------

UNFINISHED = {"QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"}


def all_landed(env, files: dict[str, Path]) -> bool:
    rows = env.rows()
    return all(rows.get(key, {}).get("status") == "COMPLETED" for key in files)


def no_run_left(daemon, timeout: float) -> None:
    try:
        wait_for(lambda: not UNFINISHED & set(daemon.run_statuses().values()), timeout, "runs")
    except AssertionError:
        raise AssertionError(
            f"runs left: {daemon.run_statuses()}\n{daemon.log()[-20000:]}"
        ) from None


def assert_landed_once(env, files: dict[str, Path]) -> None:
    for key, path in files.items():
        assert env.object_sha256(f"default/{key}") == sha256_file(path), key
    writes = writes_per_key(env)
    twice = [key for key, count in writes.items() if count > 1]
    assert writes == {f"default/{key}": 1 for key in files}, "\n".join(
        f"{version['LastModified']} {head['Metadata']} "
        for key in twice
        for version in env.store._call("list_object_versions", Prefix=key)["Versions"]
        for head in [env.store._call("head_object", Key=key, VersionId=version["VersionId"])]
    ) + "\n".join(str(env.rows()[key.removeprefix("default/")]) for key in twice)
    assert env.store.list_multipart_uploads() == []


def test_a_run_killed_mid_transfer_heals_by_itself_through_the_daemon(env, start_daemon):
    enable_versioning(env)
    files = {"big.bin": env.write("big.bin", os.urandom(256 * 1024 * 1024))}
    files |= {
        f"small/{i:02d}.csv": env.write(f"small/{i:02d}.csv", os.urandom(999)) for i in range(20)
    }
    daemon = start_daemon(**DAEMON_SETTINGS)
    wait_for(env.store.list_multipart_uploads, 240, "big.bin's upload to start")

    # What an OOM kill or a lost pod does: the run worker, and a step process if there is one.
    victims = daemon.pids(RUN_WORKER)
    assert victims, daemon.log()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    wait_for(lambda: all_landed(env, files), 180, "every file to land without any action")
    healed = time.monotonic() - killed
    assert_landed_once(env, files)
    no_run_left(daemon, 60)
    print(f"healed {healed:.0f} s after the kill")


def test_a_code_server_restarted_mid_run_heals_by_itself_through_the_daemon(env, start_daemon):
    enable_versioning(env)
    files = {"big.bin": env.write("big.bin", os.urandom(128 * 1024 * 1024))}
    files |= {f"s/{i:02d}.csv": env.write(f"s/{i:02d}.csv", os.urandom(999)) for i in range(10)}
    daemon = start_daemon(**DAEMON_SETTINGS)
    wait_for(env.store.list_multipart_uploads, 240, "big.bin's upload to start")

    [code_server] = daemon.pids("api grpc")  # the daemon starts a new one
    os.kill(code_server, signal.SIGKILL)

    wait_for(lambda: all_landed(env, files), 240, "every file to land without any action")
    assert_landed_once(env, files)
    no_run_left(daemon, 180)


def test_the_daemon_killed_with_its_code_server_and_run_worker_heals_once_restarted(
    env, start_daemon
):
    """What a restart of the daemon's machine or container does: every process dies at once.
    Dagster's launcher cannot see that the run's worker is gone, and the run would stay STARTED
    for good, its file never requested again: the sensor fails it (its worker's process, named
    by the run's tags, is gone from this host), and the file lands once."""
    enable_versioning(env)
    files = {"big.bin": env.write("big.bin", os.urandom(128 * 1024 * 1024))}
    settings = {**DAEMON_SETTINGS, "SFTP_MAX_BYTES_PER_SECOND": str(CAP)}
    daemon = start_daemon(**settings)
    wait_for(env.store.list_multipart_uploads, 240, "big.bin's upload to start")
    assert daemon.pids(RUN_WORKER), daemon.log()
    for pid in daemon.pids():
        os.kill(pid, signal.SIGKILL)
    daemon.process.wait()
    started = daemon.run_statuses(of_files=True).items()
    [killed] = [run for run, status in started if status == "STARTED"]

    again = start_daemon(**settings)
    wait_for(lambda: all_landed(env, files), 240, "every file to land without any action")
    assert_landed_once(env, files)
    no_run_left(again, 120)
    assert again.run_statuses()[killed] == "FAILURE"


def test_postgres_stopped_mid_batch_heals_by_itself_through_the_daemon(env, start_daemon):
    """Dagster's own storage is on it too, as dagster.yaml sets it: runs die at start, and are
    failed after run monitoring's start_timeout_seconds (20 s here, 90 in dagster.yaml)."""
    files = {
        f"p/{i:03d}.bin": env.write(f"p/{i:03d}.bin", os.urandom(64 * 1024)) for i in range(120)
    }
    daemon = start_daemon(start_timeout_seconds=20, **DAEMON_SETTINGS, MAX_WORKERS="2")
    wait_for(lambda: any(r["status"] == "COMPLETED" for r in env.rows().values()), 240, "a copy")

    env.stack.postgres.stop()
    time.sleep(10)  # long enough for runs to die at start and ticks to fail
    env.stack.postgres.start()

    wait_for(lambda: all_landed(env, files), 300, "every file to land without any action")
    for key, path in files.items():
        assert env.object_sha256(f"default/{key}") == sha256_file(path), key
    no_run_left(daemon, 180)


def test_a_copy_a_dead_attempt_committed_is_recorded_not_written_again(env, instance):
    """kill -9 between the object's commit and the log's COMPLETED: the next claim finds the
    whole copy (same source, path, size and mtime) and records it, hashing it when it has no
    sha256 tag yet."""
    enable_versioning(env)
    small = env.write("small.csv", os.urandom(999))
    big = env.write("big.bin", os.urandom(6 * 1024 * 1024))
    dead = finished_run_id(env, instance)
    for key in ("small.csv", "big.bin"):
        ghost_claim(env, key, dead)
        mtime = str(int((env.root / key).stat().st_mtime))
        copy_file(
            Copy(
                env.source().pool.get(),
                str(env.root / key),
                env.store,
                f"default/{key}",
                {"source": "default", "source-path": key, "source-mtime": mtime},
                tuning=Tuning(part_size=5 * 1024 * 1024),
            )
        )
    env.store.set_tags("default/small.csv", {})  # died before its tag was set (as SeaweedFS can)
    assert env.store.tags("default/small.csv") == {}

    result = materialize(env, instance, ["small.csv", "big.bin"])

    assert result.success
    assert writes_per_key(env) == {
        "default/other.txt": 1,
        "default/small.csv": 1,
        "default/big.bin": 1,
    }
    rows = env.rows()
    assert rows["small.csv"]["sha256"].strip() == sha256_file(small)
    assert env.store.tags("default/small.csv") == {"sha256": sha256_file(small)}
    assert rows["big.bin"]["sha256"].strip() == sha256_file(big)


def runs_made(daemon) -> int:
    try:
        return len(daemon.run_statuses(of_files=True))
    except psycopg.errors.UndefinedTable:  # the daemon has not created its tables yet
        return 0


def test_files_queued_behind_other_runs_are_not_requested_again_in_more_runs(env, start_daemon):
    """The daemon creates the sensor's runs with no asset selection (the sensor targets an
    anonymous job of the asset): the sensor must still see them as covering their files. It
    did not, so a file whose run waited in the queue longer than ORPHAN_GRACE_SECONDS was failed
    as orphaned and requested again in a new run: 10,000 files in 20 batches made 24-28 runs.
    Here 6 runs of one slow file each, 3 at a time: while the last ones wait, their files'
    requests are aged past the grace, as a long queue does; every file stays with its run."""
    files = {f"q/{i}.bin": env.write(f"q/{i}.bin", os.urandom(2 * 1024 * 1024)) for i in range(6)}
    daemon = start_daemon(**DAEMON_SETTINGS, PARALLEL_RUNS="6", SFTP_MAX_BYTES_PER_SECOND="400000")
    wait_for(lambda: runs_made(daemon) == 6, 240, "the sensor's 6 runs")
    with env.log.db.connection() as conn:
        aged = conn.execute(
            "UPDATE file_transfer_log SET requested_at = requested_at - interval '120 seconds' "
            "WHERE status = 'QUEUED'"
        ).rowcount
    assert aged, "every file was claimed already: the runs were too fast for this test"

    wait_for(lambda: all_landed(env, files), 240, "every file to land")
    no_run_left(daemon, 120)
    assert len(daemon.run_statuses(of_files=True)) == 6, daemon.run_statuses()
    rows = env.rows()
    assert {key: (rows[key]["attempts"], rows[key]["error_message"]) for key in files} == {
        key: (1, None) for key in files
    }
