"""Sizes and durations as every message writes them; no server."""

import pytest

from sftp_minio_assets.core.units import duration, mib


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (-3, "0 s"),
        (4.4, "4 s"),
        (89, "89 s"),
        (90, "2 min"),
        (75 * 60, "75 min"),
        (150 * 60, "2 h 30 min"),
        (86400 - 0.5, "24 h 0 min"),
        (3 * 86400 + 4 * 3600, "3 d 4 h"),
        (130 * 365 * 86400, "47450 d 0 h"),
    ],
)
def test_a_duration_reads_in_whole_units(seconds, shown):
    assert duration(seconds) == shown


def test_sizes_read_in_mib():
    assert mib(300 * 1024 * 1024) == "300.0 MiB" and mib(5 * 1024**3) == "5,120.0 MiB"
