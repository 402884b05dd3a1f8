"""What resumable transfers stand on, without a server: a saved hash state goes on where it
stopped, parts end at part boundaries, the bandwidth cap is shared between processes.
(Copies killed part way and resumed, on the real servers: integration/test_resume.py.)"""

import hashlib
import os

import pytest

from sftp_minio_assets.transfer.bandwidth import BandwidthCap
from sftp_minio_assets.transfer.copy import _parts
from sftp_minio_assets.transfer.resume import Sha256, resumable_hashing

MIB = 1024 * 1024


def test_a_saved_hash_state_goes_on_where_it_stopped():
    """What a resumed copy relies on: the state saved after some bytes, restored in another
    object, gives hashlib's digest of all the bytes."""
    assert resumable_hashing()
    data = os.urandom(3 * MIB + 17)
    first = Sha256()
    first.update(data[: MIB + 5])
    state = first.state()
    second = Sha256(state=state)
    second.update(data[MIB + 5 :])
    assert second.hexdigest() == hashlib.sha256(data).hexdigest()
    assert first.hexdigest() == hashlib.sha256(data[: MIB + 5]).hexdigest()  # not consumed
    with pytest.raises(ValueError, match="112 bytes"):
        Sha256(state=state[:-1])


def test_parts_of_a_resumable_upload_end_exactly_at_part_boundaries():
    chunks = [b"a" * 3, b"b" * 2, b"c" * 5, b"d" * 4, b"e"]  # reads never cross a boundary at 5
    assert list(_parts(iter(chunks), 5)) == [b"aaabb", b"ccccc", b"dddde"]
    # The simple path's first part, read already to choose between a PUT and parts.
    assert list(_parts(iter([b"cc"]), 5, [b"aaaa", b"bb"])) == [b"aaaabb", b"cc"]


def test_the_bandwidth_cap_is_shared_by_the_processes_copying_the_source():
    """Each process takes its share of the cap, as the transfer log gives it, looked at again
    every few seconds; while the log is away, the last share holds."""
    shares = iter([0.5, RuntimeError("the log is away"), 0.25])

    def share() -> float:
        value = next(shares)
        if isinstance(value, Exception):
            raise value
        return value

    cap = BandwidthCap(1_000_000, share, share_every_seconds=0)
    cap(1)
    assert cap.rate == 500_000
    cap(1)
    assert cap.rate == 500_000
    cap(1)
    assert cap.rate == 250_000
