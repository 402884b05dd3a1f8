"""Operations: alerts on repeated errors, statistics, asset checks, retention, dry run."""

import os

import dagster as dg
import pytest

from sftp_minio_assets.defs.alerts import alert_on_recovery, alert_on_repeated_failures
from sftp_minio_assets.defs.assets import files
from sftp_minio_assets.defs.checks import build_file_checks
from sftp_minio_assets.defs.dry_run import build_dry_run_job
from sftp_minio_assets.defs.resources import AlertSettings
from sftp_minio_assets.defs.stats import summarize, transfer_stats
from sftp_minio_assets_tests.support import (
    PARTITIONS,
    Receiver,
    materialize,
    requested,
    run_status_sensor,
    tick,
)

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)


def test_repeated_failures_alert_once_per_file_and_source_then_once_on_recovery(env, instance):
    missing = ["missing-1.csv", "missing-2.csv"]
    with Receiver() as receiver:
        sent = []
        for _ in range(3):  # the files are missing: three failed runs in a row
            result = materialize(env, instance, missing, retries=0)
            assert not result.success
            run_status_sensor(alert_on_repeated_failures, env, instance, result, receiver)
            sent.append([message["text"] for message in receiver.received])
        # Run 1: a missing file cannot be helped by retrying: each waits for a fix, at once;
        # and the source's last 2 transfers failed. Runs 2 and 3: nothing new, alerts are open.
        assert [len(texts) for texts in sent] == [3, 3, 3], sent
        assert any("the last 2 transfers of source default all failed" in t for t in sent[0])
        for name in missing:
            [text] = [t for t in sent[0] if f"file default/{name} failed, and waits for a fix" in t]
            assert name in text.split("Last error:")[1]  # says which file, and why

        for name in missing:
            env.write(name, b"here now")
        result = materialize(env, instance, missing)
        assert result.success
        run_status_sensor(alert_on_recovery, env, instance, result, receiver)
        recovered = sorted(m["text"] for m in receiver.received[3:])
        assert recovered == [
            f":white_check_mark: sftp-minio-assets: {subject} recovered."
            for subject in ("file default/missing-1.csv", "file default/missing-2.csv",
                            "source default")
        ]  # fmt: skip
        run_status_sensor(alert_on_recovery, env, instance, result, receiver)
        assert len(receiver.received) == 6  # recovered once


def test_statistics_per_source_worker_and_hour_and_active_workers(env, instance):
    for i in range(3):
        env.write(f"s{i}.bin", os.urandom(2 * 1024 * 1024))
    assert materialize(env, instance, [f"s{i}.bin" for i in range(3)]).success
    assert not materialize(env, instance, ["absent.bin"], retries=0).success
    claim = env.log.claims.claim(
        "default", "in-flight.bin", size_bytes=400, remote_mtime=0, object_key="k",
        worker_id="host:1:transfer_0", run_id=None,
    )  # fmt: skip
    assert claim is not None
    env.log.claims.heartbeat(claim, progress_bytes=100)  # a long copy, a quarter done

    summary = summarize(env.log.reports.history(7))
    totals = summary["totals"]
    assert totals["files_transferred"] == 3
    assert totals["bytes_transferred"] == 3 * 2 * 1024 * 1024
    assert totals["files_failed"] == 1 and totals["active_transfers"] == 1
    assert totals["mean_mb_per_s"] > 0 and totals["p95_mb_per_s"] >= totals["mean_mb_per_s"] * 0.5
    assert summary["per_source"].loc["default", "files"] == 3
    assert summary["per_source"].loc["default", "failed"] == 1
    assert list(summary["active_workers"]["filename"]) == ["in-flight.bin"]
    assert list(summary["active_workers"]["progress %"]) == [25.0]

    result = dg.materialize([transfer_stats], resources=env.resources(), instance=instance)
    metadata = result.asset_materializations_for_node("transfer_stats")[0].metadata
    assert metadata["files_transferred"].value == 3
    assert "in-flight.bin" in metadata["active_workers"].value
    assert "| default  |       3 |" in metadata["per_source"].value


def test_checks_find_a_changed_object_and_a_stuck_claim(env, instance):
    objects_match_log, no_stuck = build_file_checks(files, "default")
    for name in ("good.csv", "tampered.csv"):
        env.write(name, name.encode() * 100)
    assert materialize(env, instance, ["good.csv", "tampered.csv"]).success
    resources = {**env.resources(stale_minutes=1 / 60), "alerts": AlertSettings()}

    def evaluate(check):
        result = dg.materialize(
            [files, check],
            selection=dg.AssetSelection.checks(check),
            resources=resources,
            instance=instance,
        )
        [evaluation] = result.get_asset_check_evaluations()
        return evaluation

    assert evaluate(objects_match_log).passed
    env.store.put("default/tampered.csv", b"not what was copied", {}, {})
    evaluation = evaluate(objects_match_log)
    assert not evaluation.passed
    assert "tampered.csv" in evaluation.metadata["details"].value
    assert "good.csv" not in evaluation.metadata["details"].value

    assert evaluate(no_stuck).passed
    env.log.claims.claim(
        "default", "abandoned.bin", size_bytes=1, remote_mtime=0, object_key="k",
        worker_id="dead:1:transfer_0", run_id=None,
    )  # fmt: skip
    with env.log.db.connection() as conn:
        conn.execute("UPDATE file_transfer_log SET heartbeat_at = now() - interval '1 hour'")
    evaluation = evaluate(no_stuck)
    assert not evaluation.passed and "abandoned.bin" in evaluation.metadata["details"].value


@pytest.mark.parametrize("retention_days, deleted", [(30, False), (0.0001, True)])
def test_retention_deletes_partitions_of_long_completed_files_not_their_history(
    env, instance, retention_days, deleted
):
    env.write("old.csv", b"old")
    env.write("new.csv", b"new")
    assert materialize(env, instance, ["old.csv"]).success
    with env.log.db.connection() as conn:
        conn.execute(
            "UPDATE file_transfer_log SET transfer_end_time = now() - interval '1 day' "
            "WHERE filename = 'old.csv'"
        )
    retention = {"partition_retention_days": retention_days}
    tick(env, instance, retention)
    partitions = instance.get_dynamic_partitions(PARTITIONS)
    assert ("old.csv" not in partitions) == deleted
    assert "new.csv" in partitions
    assert env.rows()["old.csv"]["status"] == "COMPLETED"  # the history stays
    # A deleted partition is not added back: the file is done and unchanged; nor asked for
    # again: the log records it deleted.
    assert env.rows()["old.csv"]["partition_deleted"] == deleted
    again = tick(env, instance, retention)
    assert ("old.csv" not in instance.get_dynamic_partitions(PARTITIONS)) == deleted
    assert again.run_requests == [] and again.dynamic_partitions_requests == []
    # Changed, the file is requested again: its partition is back.
    env.write("old.csv", b"old, changed")
    changed = tick(env, instance, retention)
    assert requested(changed, instance) == ["old.csv"]
    assert env.rows()["old.csv"]["partition_deleted"] is False


def test_dry_run_lists_what_would_be_copied_and_where_without_moving_a_byte(env, instance):
    env.write("done.csv", b"done")
    assert materialize(env, instance, ["done.csv"]).success
    env.write("reports/new.csv", b"new")
    env.write("young.csv", b"still being written", age_seconds=0)
    before = env.store.list_keys()

    result = build_dry_run_job("default").execute_in_process(
        resources=env.resources({"min_file_age_seconds": 60}),
        instance=instance,
    )
    assert result.success
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata
    assert metadata["would_copy"].value == 1 and metadata["too_recent"].value == 1
    assert f"s3://{env.bucket}/default/reports/new.csv" in metadata["files"].value
    assert "done.csv" not in metadata["files"].value
    assert env.store.list_keys() == before
    assert "reports/new.csv" not in env.rows()
    assert instance.get_dynamic_partitions(PARTITIONS) == ["done.csv"]
