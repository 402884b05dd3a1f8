"""The read window (sftp/reads.py): near, READ_WINDOW requests in flight; far, enough to carry
READ_RATE over a round trip, up to MAX_READ_WINDOW. (Through a relay: test_round_trips.py.)"""

from sftp_minio_assets.sftp.client import CHANNEL_WINDOW
from sftp_minio_assets.sftp.reads import (
    MAX_READ_WINDOW,
    READ_RATE,
    READ_REQUEST,
    READ_WINDOW,
    window_for,
)


def test_near_the_window_stays_far_it_grows_with_the_wait_up_to_its_cap():
    assert window_for(0.0, READ_REQUEST) == window_for(0.002, READ_REQUEST) == READ_WINDOW
    at_40_ms = window_for(0.040, READ_REQUEST)
    assert READ_WINDOW < at_40_ms < MAX_READ_WINDOW
    assert at_40_ms * READ_REQUEST >= 0.040 * READ_RATE  # carries the rate over that wait
    assert window_for(0.080, READ_REQUEST) > at_40_ms
    assert window_for(1.0, READ_REQUEST) == MAX_READ_WINDOW
    # A server that serves less per read is asked for smaller ones: more of them far away.
    assert window_for(0.040, 32 * 1024) == MAX_READ_WINDOW


def test_the_channel_has_room_for_the_largest_window_and_its_headers():
    assert MAX_READ_WINDOW * (READ_REQUEST + 64) <= CHANNEL_WINDOW
