"""The worker's pure parts: its retry backoff, where a file's object goes, how it names itself."""

import os
import random
import socket
import threading

import pytest

from sftp_minio_assets.core.identity import worker_id
from sftp_minio_assets.worker.source_policy import SourcePolicy
from sftp_minio_assets.worker.worker import Retry


@pytest.mark.parametrize("jitter", [0.5, 1.0, 1.5])
def test_the_backoff_doubles_from_its_base_up_to_its_cap_times_the_jitter(monkeypatch, jitter):
    monkeypatch.setattr(random, "uniform", lambda low, high: jitter)
    retry = Retry(base_seconds=1.0, max_seconds=30.0)
    delays = [retry.delay(failures) for failures in range(1, 8)]
    assert delays == [jitter * d for d in (1, 2, 4, 8, 16, 30, 30)]


def test_the_jitter_is_within_half_either_way_and_differs_between_workers():
    retry = Retry(base_seconds=2.0, max_seconds=30.0)
    delays = [retry.delay(3) for _ in range(200)]  # 8 s before the jitter
    assert all(4.0 <= delay <= 12.0 for delay in delays)
    assert len(set(delays)) > 100  # workers do not retry in lockstep


def test_a_zero_base_retries_at_once():
    assert Retry(base_seconds=0).delay(5) == 0


@pytest.mark.parametrize(
    "policy, path, expected",
    [
        (SourcePolicy("partner-a"), "in/a.csv", "landing/partner-a/in/a.csv"),
        (SourcePolicy("partner-a", compression="gzip"), "a.csv", "landing/partner-a/a.csv.gz"),
        (SourcePolicy("p", compression="zstd"), "a.csv", "landing/p/a.csv.zst"),
        (SourcePolicy("nested/dest/"), "../../x.csv", "landing/nested/dest/x.csv"),
        (SourcePolicy("p"), "Q3 50%.csv", "landing/p/Q3 50%.csv"),
    ],
)
def test_a_file_goes_under_the_prefix_and_its_sources_destination(policy, path, expected):
    assert policy.object_name("landing/", path) == expected


def test_the_worker_id_names_host_process_and_thread_within_the_log_column():
    assert worker_id() == f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"
    names = []
    thread = threading.Thread(target=lambda: names.append(worker_id()), name="t" * 200)
    thread.start()
    thread.join()
    assert len(names[0]) == 100 and names[0].startswith(f"{socket.gethostname()}:")
