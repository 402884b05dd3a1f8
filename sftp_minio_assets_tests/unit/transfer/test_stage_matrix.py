"""The byte-path matrix of integration/test_checksums.py: its all-pairs table holds every pair
of values of any two axes (no server needed)."""

from sftp_minio_assets_tests.support import AXES, PAIRWISE, uncovered_pairs


def test_the_pairwise_table_covers_every_pair_of_values():
    for case in PAIRWISE:  # each names one value of each axis
        assert all(v in axis for v, axis in zip(case, AXES.values(), strict=True)), case
    assert len(set(PAIRWISE)) == len(PAIRWISE)
    assert uncovered_pairs(PAIRWISE) == []
    # and the check can fail: any row taken out leaves a pair uncovered (none is spare)
    for row in PAIRWISE:
        assert uncovered_pairs([case for case in PAIRWISE if case != row]) != [], row
