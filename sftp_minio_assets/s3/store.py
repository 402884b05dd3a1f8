"""The S3 side (MinIO or any S3-compatible store): objects, multipart uploads, keys.

No Dagster. Only standard S3 calls: the same code runs on MinIO and SeaweedFS. The byte path's
requests (a small object in one PUT, up to lean.MAX_BYTES; a multipart upload's creation, parts
and completion; tags; heads; the bucket's check) and the listing of open uploads are sent by
lean.py's LeanClient, which signs them itself and keeps its connections: a fraction of the
CPU s3fs and aiobotocore spend on them, and no s3fs to load. Everything else goes through s3fs,
loaded at its first use: the bucket's creation, larger PUTs, the checksum probe, listings of
objects and parts, aborts and reads; behind a proxy, every request.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import posixpath
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .lean import MAX_BYTES as MAX_PUT_BYTES
from .lean import LeanClient, direct, tagging
from .retries import retrying

if TYPE_CHECKING:
    import s3fs

T = TypeVar("T")

# What an S3 key cannot hold, or not safely: see object_key.
_UNSAFE_IN_KEYS = re.compile("[\\\\\x00-\x1f\x7f\udc80-\udcff]")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_ADDRESS = re.compile(r"^\d+\.\d+\.\d+\.\d+$")

logger = logging.getLogger(__name__)

# The probe of checksum support: a tiny object under the bucket's prefix, sent with a checksum
# that is not its own. Error codes by which S3 servers refuse a body that does not match it.
CHECKSUM_PROBE = ".sftp-minio-assets-checksum-probe"
_DIGEST_REFUSED = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"}
# endpoint -> whether it verifies ChecksumSHA256: probed once per process.
_verifies: dict[str, bool] = {}
_verifies_lock = threading.Lock()


class ChecksumRefused(OSError):
    """The server refused bytes as not matching the SHA-256 checksum sent with them. This
    project computes both from the same bytes, so another attempt would send the same pair:
    a defect to report (server_checksums off copies meanwhile), not an S3 outage."""


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    bucket: str
    prefix: str = ""
    region: str = "us-east-1"
    max_connections: int = 32
    timeout_seconds: float = 60  # to connect, and for each answer: botocore's defaults


def object_key(prefix: str, source: str, path: str) -> str:
    """prefix/source/path, normalised so that no remote path can leave the prefix.

    `..`, `.` and empty segments are dropped, so the result never starts with `/` nor climbs
    out of the prefix. Names are kept as they are (`Q3 50%.csv` stays so) wherever S3 can hold
    them: keys are any UTF-8. Only what it cannot hold, or not safely, becomes %XX: bytes that
    are not UTF-8 (surrogates in path), control characters (XML listings cannot carry them)
    and backslashes (which some S3 servers turn into `/`). So the encoding is not reversible:
    a raw name may become another file's literal name (`caf\\xe9` and `caf%E9`); the sensor's
    plan and the claim refuse such a pair rather than copy one over the other (see
    policy/discovery.py); the object's metadata keeps the exact remote path.
    """
    segments = (*key_segments(prefix), *key_segments(source), *key_segments(path))
    return posixpath.join(*(_UNSAFE_IN_KEYS.sub(_percent, segment) for segment in segments))


def needs_escaping(path: str) -> bool:
    """Whether object_key escapes something of path: then it may collide with another's."""
    return _UNSAFE_IN_KEYS.search(path) is not None


def key_segments(path: str) -> tuple[str, ...]:
    """The segments of path that object_key keeps: no empty, `.` or `..` one."""
    return tuple(segment for segment in path.split("/") if segment not in ("", ".", ".."))


def bucket_problem(name: str) -> str | None:
    """Why name cannot be an S3 bucket's, if it cannot (the rules AWS and MinIO share)."""
    if (
        _BUCKET_NAME.match(name)
        and ".." not in name
        and not _IP_ADDRESS.match(name)
        and not name.startswith("xn--")
        and not name.endswith("-s3alias")
    ):
        return None
    return (
        "not a valid bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, "
        "starting and ending with a letter or digit, not an IP address"
    )


def sha256_checksum(data: bytes | memoryview) -> str:
    """S3's ChecksumSHA256 of data: the base64 of its SHA-256 digest."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _percent(match: re.Match) -> str:
    code = ord(match.group())
    return f"%{code - 0xDC00 if code >= 0xDC80 else code:02X}"


READ_BACK_CHUNK = 8 * 1024 * 1024


def _filesystem(settings: S3Settings) -> s3fs.S3FileSystem:
    """s3fs's filesystem, its client made, without botocore's `Expect: 100-continue`: aiohttp
    waits for the `100 Continue` with no time-out, so that a store that stalls there held a
    part for minutes (until the server gave up on the body), past every time-out set here."""
    import s3fs
    from botocore.handlers import add_expect_header

    fs = s3fs.S3FileSystem(
        key=settings.access_key,
        secret=settings.secret_key,
        endpoint_url=settings.endpoint_url,
        client_kwargs={"region_name": settings.region},
        config_kwargs={
            # Real MinIO rejects botocore >= 1.36's default checksums (MissingContentMD5).
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
            "s3": {"addressing_style": "path"},
            "max_pool_connections": settings.max_connections,
            "connect_timeout": settings.timeout_seconds,
            "read_timeout": settings.timeout_seconds,
            # One policy sends requests again (retries.py): none of botocore's.
            "retries": {"total_max_attempts": 1},
        },
        skip_instance_cache=True,
    )
    fs.retries = 1  # nor s3fs's
    fs.connect().meta.events.unregister("before-call.s3", add_expect_header)
    return fs


class ObjectStore:
    """One bucket; thread-safe (s3fs runs every call on its own event loop)."""

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self.bucket = settings.bucket
        self._fs: s3fs.S3FileSystem | None = None
        self._client_lock = threading.Lock()
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()
        # Behind a proxy, every request goes through s3fs, which honours it.
        self._lean = (
            LeanClient(
                settings.endpoint_url,
                settings.access_key,
                settings.secret_key,
                settings.region,
                settings.max_connections,
                settings.timeout_seconds,
            )
            if direct(settings.endpoint_url)
            else None
        )

    @property
    def fs(self) -> s3fs.S3FileSystem:
        """s3fs's filesystem on the endpoint, made at its first use: importing s3fs and
        aiobotocore and making the client cost a process about half a CPU-second, which a run
        of small files (its PUTs and the bucket's check sent by lean.py) never needs."""
        if self._fs is None:
            with self._client_lock:
                if self._fs is None:
                    self._fs = _filesystem(self.settings)
        return self._fs

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _call(
        self, method: str, *, landed: Callable[[], dict | None] | None = None, **kwargs: Any
    ) -> dict:
        """One S3 request, sent again while the store is busy or its answer lost (landed:
        as retries.retrying's)."""
        fs = self.fs
        return retrying(
            lambda: fs.call_s3(method, Bucket=self.bucket, **kwargs),
            f"{method} {self.uri(kwargs.get('Key', ''))} on {self.settings.endpoint_url}",
            landed=landed,
        )

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing; checked once, at the first write."""
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                if self._lean is not None:
                    self._send_lean(
                        "HeadBucket", "", False, lambda lean: lean.head_bucket(self.bucket)
                    )
                else:
                    self._call("head_bucket")
            except FileNotFoundError:
                with suppress(FileExistsError):  # created by a concurrent worker
                    self._call("create_bucket")
            self._bucket_ready = True

    def put(
        self,
        key: str,
        data: bytes,
        metadata: dict[str, str],
        tags: dict[str, str],
        checksum: str | None = None,
    ) -> str:
        """One request: the object appears whole or not at all. Returns its ETag. With a
        checksum (sha256_checksum of data), a server that verifies it refuses other bytes.
        Sent by LeanClient (lean.py) up to lean.MAX_BYTES, else (or behind a proxy) by s3fs."""
        self.ensure_bucket()
        if self._lean is not None and len(data) <= MAX_PUT_BYTES:
            return self._send_lean(
                "PUT",
                key,
                checksum is not None,
                lambda lean: lean.put(self.bucket, key, data, metadata, tags, checksum),
                landed=lambda: self._put_landed(key, len(data), metadata),
            )

        def landed() -> dict | None:
            etag = self._put_landed(key, len(data), metadata)
            return None if etag is None else {"ETag": etag}

        reply = self._send(
            "put_object",
            key,
            checksum is not None,
            landed=landed,
            Body=data,
            Metadata=metadata,
            Tagging=tagging(tags),
            **_checksum(checksum),
        )
        return reply.get("ETag", "")

    def _put_landed(self, key: str, size: int, metadata: dict[str, str]) -> str | None:
        """The ETag of the object a PUT of these size and metadata (its transfer token among
        them) wrote, if it is in place: the PUT took effect though its answer was lost."""
        head = self.head(key)
        if head is None or head.get("ContentLength") != size:
            return None
        stored = {name.lower(): value for name, value in head.get("Metadata", {}).items()}
        if stored != {name.lower(): value for name, value in metadata.items()}:
            return None
        return head.get("ETag", "")

    def create_multipart(self, key: str, metadata: dict[str, str], checksums: bool = False) -> str:
        """A multipart upload; with checksums, each part must then carry its own."""
        self.ensure_bucket()
        if self._lean is not None:
            return self._send_lean(
                "CreateMultipartUpload",
                key,
                False,
                lambda lean: lean.create_multipart(self.bucket, key, metadata, checksums),
            )
        algorithm: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
        return self._call("create_multipart_upload", Key=key, Metadata=metadata, **algorithm)[
            "UploadId"
        ]

    def upload_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        data: bytes | memoryview,
        checksum: str | None = None,
    ) -> str:
        if self._lean is not None:
            return self._send_lean(
                f"UploadPart {number} of",
                key,
                checksum is not None,
                lambda lean: lean.upload_part(self.bucket, key, upload_id, number, data, checksum),
            )
        reply = self._send(
            "upload_part",
            key,
            checksum is not None,
            UploadId=upload_id,
            PartNumber=number,
            Body=bytes(data),
            **_checksum(checksum),
        )
        return reply["ETag"]

    def complete_multipart(
        self, key: str, upload_id: str, etags: list[str], checksums: list[str] | None = None
    ) -> None:
        """checksums: each part's, in order, when the upload was created with checksums."""
        sums: list[str | None] = [*checksums] if checksums else [None] * len(etags)
        try:
            if self._lean is not None:
                self._send_lean(
                    "CompleteMultipartUpload",
                    key,
                    checksums is not None,
                    lambda lean: lean.complete_multipart(
                        self.bucket, key, upload_id, list(zip(etags, sums, strict=True))
                    ),
                )
            else:
                parts = [
                    {"PartNumber": n, "ETag": etag, **_checksum(sums[n - 1])}
                    for n, etag in enumerate(etags, start=1)
                ]
                self._send(
                    "complete_multipart_upload",
                    key,
                    checksums is not None,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except FileNotFoundError as exc:
            # Sent again after an answer that never came, the request finds its upload gone:
            # the first one completed it, if the object is made of these very parts.
            head = self.head(key) if _error_code(exc) == "NoSuchUpload" else None
            if head is None or head.get("ETag", "").strip('"') != multipart_etag(etags):
                raise

    def _send(
        self,
        method: str,
        key: str,
        checksummed: bool,
        *,
        landed: Callable[[], dict | None] | None = None,
        **params: Any,
    ) -> dict:
        """A request writing key; when it carries checksums and is refused for them,
        ChecksumRefused."""
        with self._refused_checksum(key, checksummed):
            return self._call(method, landed=landed, Key=key, **params)

    def _send_lean(
        self,
        what: str,
        key: str,
        checksummed: bool,
        call: Callable[[LeanClient], T],
        *,
        landed: Callable[[], T | None] | None = None,
    ) -> T:
        """As _send, through lean.py's client: call(client), sent again as retries.py says."""
        lean = self._lean
        assert lean is not None  # behind a proxy, requests go through s3fs
        with self._refused_checksum(key, checksummed):
            return retrying(
                lambda: call(lean),
                f"{what} {self.uri(key)} on {self.settings.endpoint_url}",
                landed=landed,
            )

    @contextmanager
    def _refused_checksum(self, key: str, checksummed: bool) -> Iterator[None]:
        """A request writing key that carries checksums and is refused for them raises
        ChecksumRefused."""
        try:
            yield
        except OSError as exc:
            code = _error_code(exc)
            if not checksummed or code not in _DIGEST_REFUSED:
                raise
            raise ChecksumRefused(
                f"the S3 server {self.settings.endpoint_url} refused {self.uri(key)}: its bytes "
                f"do not match the SHA-256 checksum sent with them ({code}: {exc})"
            ) from exc

    def verifies_checksums(self) -> bool:
        """Whether the server refuses an upload whose bytes do not match its ChecksumSHA256.

        Probed once per process and endpoint, by one PUT of a tiny object with a wrong
        checksum: a server that verifies refuses it (nothing is written); one that ignores
        checksums stores it (it is deleted at once); one that refuses the header, or answers
        with another error, is taken as not verifying. Either of the last two says so in one
        logged line: uploads then carry no checksum and are verified as before.
        """
        endpoint = self.settings.endpoint_url
        with _verifies_lock:
            if endpoint not in _verifies:
                _verifies[endpoint] = self._probe_checksums()
            return _verifies[endpoint]

    def _probe_checksums(self) -> bool:
        self.ensure_bucket()
        key = posixpath.join(*key_segments(self.settings.prefix), CHECKSUM_PROBE)
        body = b"checksum probe"
        try:
            self._call("put_object", Key=key, Body=body, **_checksum(sha256_checksum(body[::-1])))
        except OSError as exc:
            code = _error_code(exc)
            if code in _DIGEST_REFUSED:
                return True
            if code is None:  # no answer from the server: not a reply about checksums
                raise
            why = f"refused an upload with a checksum ({code}: {exc})"
        else:
            with suppress(Exception):
                self._call("delete_object", Key=key)
            why = "stored an upload whose checksum did not match"
        logger.warning(
            "S3 server %s %s: it does not verify SHA-256 checksums; uploads are verified by "
            "their size and transfer token (and small ones by their MD5 ETag) instead",
            self.settings.endpoint_url,
            why,
        )
        return False

    def list_parts(self, key: str, upload_id: str) -> dict[int, str]:
        """The parts a multipart upload holds so far: number -> ETag. FileNotFoundError when
        the upload is gone (completed, aborted or expired)."""
        parts: dict[int, str] = {}
        marker: dict[str, Any] = {}
        while True:
            reply = self._call("list_parts", Key=key, UploadId=upload_id, **marker)
            parts.update((p["PartNumber"], p["ETag"]) for p in reply.get("Parts", []))
            if not reply.get("IsTruncated"):
                return parts
            marker = {"PartNumberMarker": reply["NextPartNumberMarker"]}

    def abort_multipart(self, key: str, upload_id: str) -> None:
        self._call("abort_multipart_upload", Key=key, UploadId=upload_id)

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        if self._lean is not None:
            self._send_lean(
                "PutObjectTagging",
                key,
                False,
                lambda lean: lean.put_tagging(self.bucket, key, tags),
            )
            return
        tag_set = [{"Key": k, "Value": v} for k, v in tags.items()]
        self._call("put_object_tagging", Key=key, Tagging={"TagSet": tag_set})

    def head(self, key: str) -> dict | None:
        try:
            if self._lean is not None:
                return self._send_lean(
                    "HeadObject", key, False, lambda lean: lean.head_object(self.bucket, key)
                )
            return self._call("head_object", Key=key)
        except FileNotFoundError:
            return None

    def tags(self, key: str) -> dict[str, str]:
        reply = self._call("get_object_tagging", Key=key)
        return {t["Key"]: t["Value"] for t in reply.get("TagSet", [])}

    def sha256(self, key: str) -> str:
        """The sha256 of the object's bytes, read back in bounded chunks (all again if a read
        fails for the store's sake)."""

        def read() -> str:
            digest = hashlib.sha256()
            with self.fs.open(f"{self.bucket}/{key}", "rb", block_size=READ_BACK_CHUNK) as f:
                while chunk := f.read(READ_BACK_CHUNK):
                    digest.update(chunk)
            return digest.hexdigest()

        return retrying(read, f"reading {self.uri(key)} back on {self.settings.endpoint_url}")

    def list_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        token: dict[str, Any] = {}
        while True:
            reply = self._call("list_objects_v2", Prefix=prefix, **token)
            keys += [o["Key"] for o in reply.get("Contents", [])]
            if not reply.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": reply["NextContinuationToken"]}

    def list_multipart_uploads(self, prefix: str = "", page_size: int = 1000) -> list[dict]:
        """Every open upload under prefix, page after page (S3 answers 1,000 at most a page),
        each starting at the markers the server names (SeaweedFS names only the upload id's)."""
        uploads: dict[str, dict] = {}
        key_marker = upload_id_marker = ""
        while True:
            reply = self._uploads_page(prefix, page_size, key_marker, upload_id_marker)
            page = reply.get("Uploads", [])
            new = [upload for upload in page if upload["UploadId"] not in uploads]
            uploads.update((upload["UploadId"], upload) for upload in new)
            if not reply.get("IsTruncated") or not new:
                return list(uploads.values())
            key_marker = reply.get("NextKeyMarker") or ""
            upload_id_marker = reply.get("NextUploadIdMarker") or ""

    def _uploads_page(
        self, prefix: str, page_size: int, key_marker: str, upload_id_marker: str
    ) -> dict:
        """One page of ListMultipartUploads: through lean.py's client (the sensor asks at every
        tick, and need not load s3fs for it), else s3fs."""
        if self._lean is not None:
            return self._send_lean(
                "ListMultipartUploads",
                prefix,
                False,
                lambda lean: lean.list_multipart_uploads(
                    self.bucket, prefix, page_size, key_marker, upload_id_marker
                ),
            )
        marker: dict[str, Any] = {"KeyMarker": key_marker, "UploadIdMarker": upload_id_marker}
        return self._call(
            "list_multipart_uploads",
            Prefix=prefix,
            MaxUploads=page_size,
            **{name: value for name, value in marker.items() if value},
        )

    def abort_stale_uploads(
        self, prefix: str, older_than_seconds: float, live: Collection[str] = ()
    ) -> int:
        """Abort multipart uploads under prefix started long ago, but those to a `live` key (a
        big file may take longer than that to copy, and a resumable upload waits for the next
        claim): leftovers of dead workers. Returns how many."""
        deadline = time.time() - older_than_seconds
        stale = [
            upload
            for upload in self.list_multipart_uploads(prefix)
            if upload["Initiated"].timestamp() < deadline and upload["Key"] not in live
        ]
        for upload in stale:
            self.abort_multipart(upload["Key"], upload["UploadId"])
        return len(stale)


def multipart_etag(etags: list[str]) -> str:
    """The ETag S3 gives the object a multipart upload of these parts completes: the MD5 of
    the parts' MD5s, and their number."""
    digests = b"".join(bytes.fromhex(etag.strip('"')) for etag in etags)
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(etags)}"


def _checksum(checksum: str | None) -> dict[str, Any]:
    """The parameter that carries a checksum; botocore then computes none of its own."""
    return {"ChecksumSHA256": checksum} if checksum else {}


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs error (s3fs keeps botocore's as the cause)."""
    response = getattr(exc.__cause__, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None
