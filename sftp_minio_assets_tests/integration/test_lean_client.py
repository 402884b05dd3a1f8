"""A small file's object in one request, signed by s3/lean.py and sent over a kept connection:
the requests it costs, counted on the wire; a refused checksum; a restarted S3 server; a kept
connection the server closed. (Its signature against botocore's: unit/s3/test_lean.py.)"""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest

from devstack.counting_proxy import CountingProxy
from sftp_minio_assets.core.model import BY_ETAG, BY_SERVER
from sftp_minio_assets.s3.lean import MAX_BYTES, LeanClient
from sftp_minio_assets.s3.store import (
    ChecksumRefused,
    ObjectStore,
    S3Settings,
    multipart_etag,
    sha256_checksum,
)
from sftp_minio_assets.transfer.copy import Copy, copy_file
from sftp_minio_assets.transfer.recovery import TOKEN
from sftp_minio_assets.worker.errors import is_permanent
from sftp_minio_assets_tests.support import PROJECT, enable_versioning, writes_per_key

pytestmark = pytest.mark.integration


def relayed(env, proxy: CountingProxy) -> ObjectStore:
    s3 = env.stack.s3
    return ObjectStore(S3Settings(proxy.endpoint_url, s3.access_key, s3.secret_key, env.bucket))


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no-checksums"])
def test_a_small_file_costs_one_put_without_waiting_for_100_continue(env, checksums):
    """One PUT carries the object, its metadata (the attempt's token), its sha256 tag and, when
    on, its checksum; the reply proves it (no HEAD); no `100 Continue` round trip before the
    body, which s3fs and aiobotocore waited for on every PUT."""
    data = os.urandom(64 * 1024)
    env.write("small.bin", data)
    with CountingProxy(env.stack.s3.endpoint_url) as proxy:
        store = relayed(env, proxy)
        store.ensure_bucket()
        if checksums:
            assert store.verifies_checksums()  # probed once per process, before the count
        proxy.reset()

        sent = copy_file(
            Copy(
                env.source().pool.get(),
                str(env.root / "small.bin"),
                store,
                "default/small.bin",
                {"source": "default"},
                checksums=checksums,
            )
        )

        assert dict(proxy.requests) == {"PUT": 1}
        assert proxy.continues == 0
    assert sent.verification == (BY_SERVER if checksums else BY_ETAG)
    digest = hashlib.sha256(data).hexdigest()
    assert env.object_sha256("default/small.bin") == sent.sha256 == digest
    head = env.store.head("default/small.bin")
    assert head["Metadata"]["source"] == "default" and len(head["Metadata"][TOKEN]) == 32
    assert env.store.tags("default/small.bin") == {"sha256": digest}


def test_a_larger_put_goes_through_s3fs_which_does_not_wait_for_100_continue(env):
    """Past lean.MAX_BYTES, s3fs sends the PUT, without botocore's `Expect: 100-continue`:
    aiohttp waits for the `100 Continue` with no time-out, so a store that stalls there would
    hold the request for minutes (integration/test_hostile_networks.py)."""
    with CountingProxy(env.stack.s3.endpoint_url) as proxy:
        store = relayed(env, proxy)
        store.ensure_bucket()
        for size in (MAX_BYTES, MAX_BYTES + 1, 6 * 1024 * 1024):
            proxy.reset()
            store.put(f"{size}.bin", os.urandom(size), {}, {})
            assert (dict(proxy.requests), proxy.continues) == ({"PUT": 1}, 0)


@pytest.mark.parametrize("checksums", [True, False], ids=["checksums", "no-checksums"])
def test_each_part_is_one_put_signed_with_its_query_and_the_object_is_whole(env, checksums):
    """The parts of a multipart upload are sent as the small PUTs are (their SHA-256 computed
    once, in the part's thread): one request each, no `100 Continue`, under a key that needs
    encoding; the completed object is the parts' bytes and carries the multipart ETag."""
    key = "default/a b/naïve%20café [1].bin"
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    with CountingProxy(env.stack.s3.endpoint_url) as proxy:
        store = relayed(env, proxy)
        store.ensure_bucket()
        upload_id = store.create_multipart(key, {"source": "default"}, checksums)
        proxy.reset()
        sums = [sha256_checksum(part) if checksums else None for part in parts]
        etags = [
            store.upload_part(key, upload_id, n, memoryview(part), sums[n - 1])
            for n, part in enumerate(parts, start=1)
        ]
        assert (dict(proxy.requests), proxy.continues) == ({"PUT": 3}, 0)
        store.complete_multipart(key, upload_id, etags, sums if checksums else None)
    assert env.object_sha256(key) == hashlib.sha256(b"".join(parts)).hexdigest()
    assert env.store.head(key)["ETag"].strip('"') == multipart_etag(etags)


# A process that makes a bucket, checks it, PUTs a small object into it, uploads a big one in
# parts, tags it and checks it, and looks for stale uploads (as the sensor does at every tick),
# then says whether it loaded s3fs (or aiobotocore, aiohttp): about half a CPU-second at every
# run's start, and at every tick.
SMALL_RUN = """
import sys
from sftp_minio_assets.s3.store import ObjectStore, S3Settings
settings = S3Settings(*sys.argv[1:5])
store = ObjectStore(settings)
try:
    store.ensure_bucket()
except PermissionError as refused:
    print("refused:", refused)
    sys.exit(0)
store.put("small.bin", b"x" * 1000, {"source": "default"}, {"sha256": "ab"})
upload = store.create_multipart("big.bin", {"source": "default"})
etag = store.upload_part("big.bin", upload, 1, memoryview(b"y" * 1000))
store.complete_multipart("big.bin", upload, [etag])
store.set_tags("big.bin", {"sha256": "cd"})
head = store.head("big.bin")  # as a big file's copy is checked
assert (head["ContentLength"], head["Metadata"]) == (1000, {"source": "default"}), head
assert head["LastModified"].tzinfo is not None and store.head("missing.bin") is None
assert store.abort_stale_uploads("", 3600) == 0
print(sorted(m for m in ("s3fs", "aiobotocore", "aiohttp") if m in sys.modules))
"""


def small_run(env, bucket: str, secret_key: str | None = None) -> str:
    s3 = env.stack.s3
    argv = [s3.endpoint_url, s3.access_key, secret_key or s3.secret_key, bucket]
    done = subprocess.run(
        [sys.executable, "-c", SMALL_RUN, *argv], capture_output=True, text=True, cwd=PROJECT
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_run_never_loads_s3fs_and_the_bucket_check_still_refuses(env):
    """The bucket's check (a HEAD), the PUT, a multipart upload, its tags and its HEAD go through
    lean.py: s3fs is loaded when a request needs it, here only to create a missing bucket.
    Wrong credentials are refused at the check, as s3fs refused them, before any body is sent."""
    env.store.ensure_bucket()
    assert small_run(env, env.bucket) == "[]"  # the bucket exists: nothing but lean.py
    assert env.store.head("small.bin")["ContentLength"] == 1000
    assert env.store.head("big.bin")["Metadata"] == {"source": "default"}
    assert env.object_sha256("big.bin") == hashlib.sha256(b"y" * 1000).hexdigest()
    assert env.store.tags("big.bin") == {"sha256": "cd"}
    fresh = f"fresh-{uuid.uuid4().hex[:8]}"
    assert small_run(env, fresh) == "['aiobotocore', 'aiohttp', 's3fs']"  # made by s3fs
    refused = small_run(env, env.bucket, secret_key="wrong-secret-Zq8vJ1x2")
    assert refused.startswith("refused:") and "wrong-secret" not in refused, refused


def test_a_put_refused_for_its_checksum_is_checksum_refused_sent_once(env):
    """Bytes that do not match the checksum sent with them: the server refuses them (BadDigest),
    which the lean PUT raises as ChecksumRefused, a permanent failure; the request is not sent
    again, and nothing is stored."""
    with CountingProxy(env.stack.s3.endpoint_url) as proxy:
        store = relayed(env, proxy)
        store.ensure_bucket()
        proxy.reset()
        with pytest.raises(ChecksumRefused, match="did not match") as refused:
            store.put("small.txt", b"hellp", {}, {}, sha256_checksum(b"hello"))
        assert dict(proxy.requests) == {"PUT": 1}
    assert proxy.endpoint_url in str(refused.value) and "small.txt" in str(refused.value)
    assert is_permanent(refused.value)
    assert env.store.head("small.txt") is None


def test_the_kept_connection_survives_a_restart_of_the_s3_server(env):
    """The connection kept from the last PUT is dead once the server restarts: the next PUT
    goes through a new one, without an error; while the server is down, a PUT fails as a
    connection error (retried by the worker), and writes nothing twice."""
    enable_versioning(env)
    store = env.store
    store.put("before.bin", b"before", {}, {})
    s3 = env.stack.s3
    s3.stop()
    try:
        with pytest.raises(ConnectionError) as down:
            store.put("down.bin", b"down", {}, {})
        assert not is_permanent(down.value)
        assert s3.endpoint_url in str(down.value)
    finally:
        s3.start()

    etag = store.put("after.bin", b"after", {TOKEN: "t"}, {"sha256": "s"})

    assert etag.strip('"') == hashlib.md5(b"after").hexdigest()
    assert env.store.head("after.bin")["Metadata"] == {TOKEN: "t"}
    assert writes_per_key(env) == {"before.bin": 1, "after.bin": 1}


class OneShotServer:
    """A peer on loopback that answers each request of a connection with 200, except those
    numbered in `drop` (counted over all connections, from 1), which it reads whole and then
    closes the connection without a reply: a server that went away with the request."""

    def __init__(self, drop: set[int]):
        self.drop, self.received = drop, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as reader:
            while reader.readline():  # a request line
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                reader.read(length)
                self.received += 1
                if self.received in self.drop:
                    return
                connection.sendall(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Length: 0\r\n\r\n')


def test_a_kept_connection_dropped_with_its_request_is_sent_once_more_a_new_one_never():
    """A kept connection the server closed with the request (after the check for a closed
    connection): the PUT goes once more, on a new connection (a PUT of the same key and bytes
    is idempotent). On a new connection the same loss is the caller's: not sent again, so an
    attempt that may have landed is found by its token (transfer/recovery.py)."""
    server = OneShotServer(drop={2, 4})
    lean = LeanClient(server.url, "key", "secret", "us-east-1")
    assert lean.put("bucket", "a", b"1", {}, {}) == '"e"'  # request 1, its connection kept
    assert lean.put("bucket", "b", b"2", {}, {}) == '"e"'  # 2 dropped, 3 on a new connection
    assert server.received == 3
    lean.close()  # nothing kept: the next request opens a new connection
    with pytest.raises(ConnectionError):
        lean.put("bucket", "c", b"3", {}, {})  # 4 dropped, on a new connection
    assert server.received == 4
    server.listener.close()


def test_threads_share_the_store_and_each_object_lands_once(env):
    """The worker's threads share one store: each PUT takes a kept connection of its own."""
    from concurrent.futures import ThreadPoolExecutor

    enable_versioning(env)
    store = env.store
    bodies = {f"many/{n:03d}.bin": os.urandom(4096) for n in range(64)}
    token = uuid.uuid4().hex
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda key: store.put(key, bodies[key], {TOKEN: token}, {}), bodies))
    assert writes_per_key(env) == dict.fromkeys(bodies, 1)
    for key in list(bodies)[:8]:
        assert env.store.fs.cat_file(f"{env.bucket}/{key}") == bodies[key]
