"""Moving bytes (transfer/copy.py) on the real servers: memory bounded across files, not per
file."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sftp_minio_assets.s3.store import ObjectStore
from sftp_minio_assets.transfer.copy import Copy, Tuning, copy_file
from sftp_minio_assets_tests.support import sha256_file

pytestmark = pytest.mark.integration  # the real servers (conftest's stack)

MIB = 1024 * 1024


class CountingStore(ObjectStore):
    """The real store, counting the parts it is uploading at once; each part takes a little
    longer, as on a slow link, so that parts of different files overlap."""

    def __init__(self, settings):
        super().__init__(settings)
        self.lock = threading.Lock()
        self.uploading = 0
        self.most = 0

    def upload_part(self, *args):
        with self.lock:
            self.uploading += 1
            self.most = max(self.most, self.uploading)
        try:
            time.sleep(0.05)
            return super().upload_part(*args)
        finally:
            with self.lock:
                self.uploading -= 1


def test_parts_in_flight_are_shared_by_every_file_of_the_process(env):
    """Three big files at once with parts_in_flight=2: never more than 2 parts in memory being
    uploaded, all files together (each file had its own 2 before), and every object whole."""
    names = [f"big-{n}.bin" for n in range(3)]
    for name in names:
        env.write(name, os.urandom(21 * MIB))
    store = CountingStore(env.store.settings)
    pool = env.source().pool
    tuning = Tuning(part_size=5 * MIB, parts_in_flight=2)

    def copy(name: str):
        return copy_file(
            Copy(pool.get(), str(env.root / name), store, f"default/{name}", {}, tuning=tuning)
        )

    with ThreadPoolExecutor(len(names)) as files:
        sent = list(files.map(copy, names))

    assert store.most == 2, f"{store.most} parts uploading at once"
    for name, result in zip(names, sent, strict=True):
        assert result.sha256 == sha256_file(env.root / name) == env.object_sha256(f"default/{name}")
