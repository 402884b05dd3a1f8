"""Transfer windows on the real servers: outside the window the sensor requests nothing and says
why, and a worker given a file anyway waits for the opening, then copies it."""

import time
from datetime import UTC, datetime, timedelta

import pytest

from sftp_minio_assets_tests.support import materialize, requested, tick

# --- on the real servers ---------------------------------------------------------------------


def window_from(start: timedelta, end: timedelta) -> str:
    now = datetime.now(UTC)
    return f"{now + start:%H:%M:%S}-{now + end:%H:%M:%S} UTC"


@pytest.mark.integration
def test_outside_its_window_the_tick_requests_nothing_and_says_until_when(env, instance):
    env.write("a.csv", b"a")
    closed = window_from(timedelta(hours=2), timedelta(hours=3))
    result = tick(env, instance, transfer_window=closed)
    assert result.run_requests == [] and not result.dynamic_partitions_requests
    message = result.skip_reason.skip_message
    assert message.startswith(f"source default held back: outside its transfer window {closed}")
    assert "next opening at" in message and "(in 2 h 0 min)" in message
    assert "SFTP_TRANSFER_WINDOW" in message  # the setting to change
    assert "a.csv" not in env.rows()  # not requested: nothing QUEUED either

    open_now = window_from(timedelta(hours=-1), timedelta(hours=1))
    assert requested(tick(env, instance, transfer_window=open_now), instance) == ["a.csv"]


@pytest.mark.integration
def test_a_run_outside_the_window_waits_for_it_to_open_then_copies(env, instance):
    """The wait is in the run's log, as the UI shows it, and is no failure."""
    env.write("a.csv", b"copied once the window opens")
    opens_soon = window_from(timedelta(seconds=4), timedelta(hours=1))
    started = time.monotonic()
    result = materialize(env, instance, ["a.csv"], sftp={"transfer_window": opens_soon})
    assert result.success
    assert time.monotonic() - started >= 3
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    [waiting] = [message for message in messages if "held back" in message]
    assert f"a.csv -> s3://{env.bucket}/default/a.csv: held back: outside its transfer " in waiting
    assert opens_soon in waiting and "waiting until then" in waiting
    row = env.rows()["a.csv"]
    assert (row["status"], row["attempts"]) == ("COMPLETED", 1)  # waiting was no failure
