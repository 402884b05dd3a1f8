"""The CPU of one small PUT, through each client that keeps the project's guarantees.

    python -m benchmarks.put_cost [--puts 2000] [--repeats 3] [--extra DIR]

On a real SeaweedFS (devstack's S3Server, on a free loopback port), single-threaded: for each
client, body size (4 KiB, 64 KiB) and checksum setting (ChecksumSHA256 on/off), `--puts` PUTs
of the object a small file becomes (the project's metadata with its attempt token, the sha256
tag in the same request, and the checksum when on), timed `--repeats` times; the table gives
the medians of the CPU time of this process per PUT (time.process_time, every thread of the
client included: s3fs's event loop, obstore's Rust runtime), the wall time per PUT, and the S3
server's CPU per PUT (from /proc). Before timing, each client is checked once: its object holds
the metadata, the tag and (when on) the checksum, and the server refuses a body that does not
match the checksum; and ten PUTs go through a counting proxy, which gives the HTTP requests,
the `100 Continue` round trips and the connections each PUT costs.

Clients that are not project dependencies (obstore, minio, awscrt) are measured when importable;
--extra adds a directory of such packages (`pip install --target DIR obstore minio awscrt`) to
the path, after botocore is loaded: awscrt installed beside botocore changes botocore's own
signer, which the project's s3fs client would then use too.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.session
from botocore.config import Config

from devstack.counting_proxy import CountingProxy
from devstack.local_stack import S3Server
from sftp_minio_assets.s3 import lean
from sftp_minio_assets.s3.store import ObjectStore, S3Settings, sha256_checksum

CLIENT_CONFIG = {
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
    "s3": {"addressing_style": "path"},
}
REGION = "us-east-1"


def metadata() -> dict[str, str]:
    """What the worker writes on every object (worker.py's _copy and copy_file)."""
    return {
        "source": "default",
        "source-path": "incoming/2026/12/report%20final.csv",
        "source-mtime": str(int(time.time())),
        "transfer-token": uuid.uuid4().hex,
    }


class Client:
    """One way to PUT an object: put() returns its ETag; put(...) refused for its checksum
    raises."""

    name = ""

    def __init__(self, server: S3Server, bucket: str):
        self.endpoint, self.bucket = server.endpoint_url, bucket
        self.access_key, self.secret_key = server.access_key, server.secret_key

    def put(
        self, key: str, data: bytes, meta: dict[str, str], tags: dict[str, str], checksum: str
    ) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class S3fsStore(Client):
    """ObjectStore.put before LeanClient: s3fs over aiobotocore, on s3fs's event-loop thread."""

    name = "s3fs/aiobotocore (ObjectStore.put before)"
    lean = False

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        self.store = ObjectStore(
            S3Settings(self.endpoint, self.access_key, self.secret_key, bucket)
        )
        if not self.lean:
            self.store._lean = None  # as a store behind a proxy: every request through s3fs
        self.store.ensure_bucket()

    def put(self, key, data, meta, tags, checksum):
        return self.store.put(key, data, meta, tags, checksum or None)


class BotocoreClient(Client):
    """A synchronous botocore client's put_object (as boto3 would), urllib3 under it."""

    name = "botocore client (sync, urllib3)"

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        self.client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(**CLIENT_CONFIG),
        )

    def put(self, key, data, meta, tags, checksum):
        extra = {"ChecksumSHA256": checksum} if checksum else {}
        reply = self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            Metadata=meta,
            Tagging=lean.tagging(tags),
            **extra,
        )
        return reply["ETag"]

    def close(self):
        self.client.close()


class _KeptConnection(Client):
    """A PUT built by hand and sent over one kept http.client connection."""

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        url = urlsplit(self.endpoint)
        self.host = url.netloc
        self.connection = http.client.HTTPConnection(url.hostname, url.port)

    def headers(self, path: str, data: bytes, meta, tags, checksum) -> dict[str, str]:
        raise NotImplementedError

    def put(self, key, data, meta, tags, checksum):
        path = f"/{self.bucket}/{quote(key, safe='/~')}"
        self.connection.request("PUT", path, data, self.headers(path, data, meta, tags, checksum))
        reply = self.connection.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise OSError(f"{reply.status}: {body[:200]!r}")
        return reply.headers["ETag"]

    def close(self):
        self.connection.close()


def _amz_headers(data: bytes, meta, tags, checksum) -> dict[str, str]:
    headers = {f"x-amz-meta-{name}": value for name, value in meta.items()}
    headers["x-amz-tagging"] = lean.tagging(tags)
    if checksum:
        headers["x-amz-checksum-sha256"] = checksum
    return headers


class BotocoreSigner(_KeptConnection):
    """botocore's S3 SigV4 signer (S3SigV4Auth, pure Python) on an AWSRequest, one kept
    http.client connection."""

    name = "botocore signer + http.client"
    signer_class: Any = botocore.auth.S3SigV4Auth

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        credentials = botocore.credentials.Credentials(self.access_key, self.secret_key)
        self.signer = self.signer_class(credentials, "s3", REGION)

    def headers(self, path, data, meta, tags, checksum):
        request = botocore.awsrequest.AWSRequest(
            "PUT", f"{self.endpoint}{path}", _amz_headers(data, meta, tags, checksum), data
        )
        self.signer.add_auth(request)
        return dict(request.headers.items())


class LeanClient(Client):
    """s3/lean.py's LeanClient alone: SigV4 written out (hashlib, hmac), the day's signing key
    kept, a pool of kept http.client connections."""

    name = "own SigV4 + kept http.client (s3/lean.py)"

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        self.client = lean.LeanClient(self.endpoint, self.access_key, self.secret_key, REGION)

    def put(self, key, data, meta, tags, checksum):
        return self.client.put(self.bucket, key, data, meta, tags, checksum or None)

    def close(self):
        self.client.close()


class LeanStore(S3fsStore):
    """ObjectStore.put now: LeanClient, with the store's bucket check and error translation."""

    name = "ObjectStore.put now (LeanClient)"
    lean = True


class Obstore(Client):
    """obstore (Rust's object_store): signed and sent on its own runtime; the checksum is the
    store's setting (it computes the SHA-256 itself), so one store per setting."""

    name = "obstore"

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        import obstore
        from obstore.store import S3Store

        self.obstore = obstore
        config = {
            "endpoint": self.endpoint,
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
            "region": REGION,
            "virtual_hosted_style_request": False,
        }
        options = {"allow_http": True}
        self.plain = S3Store(bucket, config=config, client_options=options)
        self.checked = S3Store(
            bucket, config={**config, "checksum_algorithm": "SHA256"}, client_options=options
        )

    def put(self, key, data, meta, tags, checksum):
        # It computes the checksum of the body it sends: the one given cannot be sent.
        store = self.checked if checksum else self.plain
        reply = self.obstore.put(store, key, data, attributes=meta, tags=tags, use_multipart=False)
        return reply["e_tag"] or ""


class MinioPy(Client):
    """The MinIO Python SDK (its own SigV4 in Python, urllib3)."""

    name = "minio-py"

    def __init__(self, server, bucket):
        super().__init__(server, bucket)
        from minio import Minio
        from minio.commonconfig import Tags

        url = urlsplit(self.endpoint)
        self.client = Minio(
            url.netloc, self.access_key, self.secret_key, secure=False, region=REGION
        )
        self.tags_class = Tags

    def put(self, key, data, meta, tags, checksum):
        import io

        object_tags = self.tags_class(for_object=True)
        object_tags.update(tags)
        # A key starting x-amz- is sent as the header it is, not as metadata.
        headers = {"x-amz-checksum-sha256": checksum} if checksum else {}
        reply = self.client.put_object(
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            metadata={**meta, **headers},
            tags=object_tags,
        )
        return reply.etag


def _crt_signer() -> Any:
    import awscrt.auth
    import botocore.compat

    botocore.compat.awscrt = awscrt  # type: ignore[attr-defined] # found after botocore loaded
    from botocore.crt.auth import CrtS3SigV4Auth

    return CrtS3SigV4Auth


class CrtSigner(BotocoreSigner):
    """botocore's signer as it is when awscrt is installed (CrtS3SigV4Auth: signing in C)."""

    name = "botocore+awscrt signer + http.client"

    def __init__(self, server, bucket):
        self.signer_class = _crt_signer()
        super().__init__(server, bucket)


CLIENTS: list[type[Client]] = [
    S3fsStore,
    BotocoreClient,
    BotocoreSigner,
    LeanClient,
    LeanStore,
    Obstore,
    MinioPy,
    CrtSigner,
]


# --- counting requests -----------------------------------------------------------------------


class _Relayed:
    """The server as a client sees it through a proxy."""

    def __init__(self, server: S3Server, endpoint_url: str):
        self.endpoint_url = endpoint_url
        self.access_key, self.secret_key = server.access_key, server.secret_key


# --- measuring -------------------------------------------------------------------------------


def _server_cpu(server: S3Server) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in server.pids():
        with contextlib.suppress(OSError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def check(client: Client, server: S3Server, data: bytes, checksum: bool) -> str:
    """What the object holds after one PUT, and whether a mismatching body is refused."""
    probe = server.client()
    key = f"check/{uuid.uuid4().hex}"
    meta = metadata()
    tags = {"sha256": hashlib.sha256(data).hexdigest()}
    sent = sha256_checksum(data) if checksum else ""
    etag = client.put(key, data, meta, tags, sent)
    head = probe.head_object(Bucket=client.bucket, Key=key, ChecksumMode="ENABLED")
    problems = []
    if head["Metadata"] != meta:
        problems.append(f"metadata {head['Metadata']}")
    got = probe.get_object_tagging(Bucket=client.bucket, Key=key)["TagSet"]
    if {t["Key"]: t["Value"] for t in got} != tags:
        problems.append(f"tags {got}")
    if etag.strip('"') != hashlib.md5(data).hexdigest():
        problems.append(f"etag {etag}")
    if checksum:
        if head.get("ChecksumSHA256") != sent:
            problems.append("checksum not kept")
        wrong = bytearray(data)
        wrong[0] ^= 1
        try:
            client.put(f"{key}-wrong", bytes(wrong), meta, tags, sent)
            problems.append("a wrong body was stored")
        except Exception:  # noqa: BLE001 - each client says it its own way
            pass
    return "; ".join(problems) or "ok"


def count_requests(
    kind: type[Client], server: S3Server, bucket: str, data: bytes, checksum: bool
) -> tuple[float, float, int]:
    """(requests, 100-continue round trips) per PUT over 10 PUTs, and the connections opened."""
    with CountingProxy(server.endpoint_url) as proxy:
        client = kind(_Relayed(server, proxy.endpoint_url), bucket)  # type: ignore[arg-type]
        try:
            client.put("count/warm", data, metadata(), {"sha256": "0" * 64}, "")  # set-up
            proxy.reset()
            sent = sha256_checksum(data) if checksum else ""
            for n in range(10):
                client.put(f"count/{n}", data, metadata(), {"sha256": "0" * 64}, sent)
            return sum(proxy.requests.values()) / 10, proxy.continues / 10, proxy.connections
        finally:
            client.close()


def timed(client: Client, server: S3Server, data: bytes, checksum: bool, puts: int) -> tuple:
    """(CPU ms, wall ms, server CPU ms) per PUT over puts PUTs."""
    sent = sha256_checksum(data) if checksum else ""
    tags = {"sha256": hashlib.sha256(data).hexdigest()}
    keys = [f"bench/{uuid.uuid4().hex[:8]}/{n:05d}.bin" for n in range(puts)]
    metas = [metadata() for _ in range(puts)]
    server_before = _server_cpu(server)
    wall, cpu = time.perf_counter(), time.process_time()
    for key, meta in zip(keys, metas, strict=True):
        client.put(key, data, meta, tags, sent)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server_cpu = _server_cpu(server) - server_before
    return 1000 * cpu / puts, 1000 * wall / puts, 1000 * server_cpu / puts


def measure(
    kinds: list[type[Client]], sizes: list[int], puts: int, repeats: int
) -> Iterator[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="put-cost-") as base:
        server = S3Server(Path(base))
        server.start()
        try:
            for size in sizes:
                data = os.urandom(size)
                for checksum in (False, True):
                    for kind in kinds:
                        yield measure_one(kind, server, data, checksum, puts, repeats)
        finally:
            server.stop()


def measure_one(
    kind: type[Client], server: S3Server, data: bytes, checksum: bool, puts: int, repeats: int
) -> dict[str, Any]:
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    server.client().create_bucket(Bucket=bucket)
    row: dict[str, Any] = {"client": kind.name, "size": len(data), "checksum": checksum}
    try:
        client = kind(server, bucket)
    except ImportError as exc:
        return {**row, "skipped": f"not installed ({exc.name})"}
    try:
        row["check"] = check(client, server, data, checksum)
        for n in range(50):  # warm: connections open, caches filled
            client.put(f"warm/{n}", data, metadata(), {"sha256": "0" * 64}, "")
        runs = [timed(client, server, data, checksum, puts) for _ in range(repeats)]
    finally:
        client.close()
    row["cpu_ms"], row["wall_ms"], row["server_cpu_ms"] = (
        statistics.median(run[i] for run in runs) for i in range(3)
    )
    row["requests"], row["continues"], row["connections"] = count_requests(
        kind, server, bucket, data, checksum
    )
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| client | body | ChecksumSHA256 | CPU ms/PUT | wall ms/PUT | server CPU ms/PUT "
        "| requests/PUT | 100-continue/PUT | connections | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        size = f"{row['size'] // 1024} KiB"
        checksum = "on" if row["checksum"] else "off"
        if "skipped" in row:
            lines.append(f"| {row['client']} | {size} | {checksum} | {row['skipped']} |||||||")
            continue
        lines.append(
            f"| {row['client']} | {size} | {checksum} | {row['cpu_ms']:.3f} | "
            f"{row['wall_ms']:.3f} | {row['server_cpu_ms']:.3f} | {row['requests']:g} | "
            f"{row['continues']:g} | {row['connections']} | {row['check']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, clients: list[type[Client]] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=2000, help="PUTs per timed repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="4096,65536", help="body sizes in bytes")
    parser.add_argument("--only", default="", help="clients whose name contains this")
    parser.add_argument("--extra", help="a directory of optional clients (pip --target)")
    args = parser.parse_args(argv)
    # Stopped by a signal, the server stops too (measure's finally).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.extra:
        sys.path.append(args.extra)  # after botocore: its signer stays the pure-Python one
    kinds = [k for k in clients or CLIENTS if args.only.lower() in k.name.lower()]
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = []
    for row in measure(kinds, sizes, args.puts, args.repeats):
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
