"""The S3 requests of the byte path, signed here and sent over kept HTTP connections: one PUT
of a whole object; a multipart upload's creation, parts and completion; an object's tags; the
bucket's HEAD before a process's first write; and the listing of open uploads the sensor asks
for at every tick. A run (or a tick) that needs nothing else never loads s3fs.

The object a small file becomes is one PutObject request (atomic: the object appears whole or
not at all) carrying its metadata, its tags and, when on, its ChecksumSHA256. Through s3fs and
aiobotocore that request costs about 2 ms of CPU in the worker and waits for a `100 Continue`
before its body; here, about 0.3 ms and one round trip (benchmarks/put_cost.py measures both).
The request is the one botocore would send, signed with AWS Signature Version 4 (path-style,
the payload's SHA-256 signed), and its errors become the exceptions s3fs raises for them, with
botocore's ClientError as their cause: callers (store.py) cannot tell the two apart.

Stdlib only, but for botocore's ClientError and s3fs's table of error codes. No credential is
ever logged or put in an exception: the secret key only derives the day's signing key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import os
import select
import ssl
import threading
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass

from botocore.exceptions import ClientError

TIMEOUT_SECONDS = 60  # connect, send and each read, by default: botocore's
# The bodies sent so: a server may refuse a request (credentials, permissions) before reading
# its body, then close the connection; this client does not wait for `100 Continue` (nor does
# s3fs here: store.py turns botocore's off, as aiohttp waits for it with no time-out). Go's
# servers (MinIO, SeaweedFS) read and discard up to 256 KiB of a body left unread (net/http's
# maxPostHandlerReadBytes) and close cleanly: the refusal is read whole. Larger bodies go
# through s3fs, whose CPU per request matters less beside theirs; a refusal of one of those
# may be lost with its connection, but a process's first request (the bucket's HEAD, with no
# body) has met any refusal of its credentials already. The parts of a multipart upload are
# sent here whatever their size: the upload's creation (no body) met any refusal first.
MAX_BYTES = 256 * 1024
# A kept connection the server closed fails the next request with one of these, before any
# reply: that request is sent once more, on a new connection (a PUT of the same key and bytes
# is idempotent); never a request whose reply had begun, nor one on a new connection.
_DROPPED = (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the payload hash of a request with no body
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


def tagging(tags: dict[str, str]) -> str:
    """The x-amz-tagging header (or Tagging parameter) that sets tags."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())


def direct(endpoint_url: str) -> bool:
    """Whether requests to the endpoint go straight to it: no proxy is configured for it
    (botocore and aiobotocore honour HTTP(S)_PROXY and NO_PROXY; this client does not)."""
    url = urlsplit(endpoint_url)
    return url.scheme not in getproxies() or bool(proxy_bypass(url.netloc))


class LeanClient:
    """The byte path's S3 requests to one endpoint; thread-safe (a pool of kept connections)."""

    def __init__(
        self,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        region: str,
        max_idle: int = 32,
        timeout: float = TIMEOUT_SECONDS,
    ) -> None:
        url = urlsplit(endpoint_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
        self._base = url.path.rstrip("/")
        default_port = 443 if url.scheme == "https" else 80
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        self._host = host if url.port in (None, default_port) else f"{host}:{url.port}"
        self.endpoint = f"{url.scheme}://{self._host}{self._base}"  # without any user info
        self._signer = _Signer(access_key, secret_key, region)
        self._pool = _Pool(url.scheme, url.hostname, url.port or default_port, max_idle, timeout)

    def put(
        self,
        bucket: str,
        key: str,
        body: bytes,
        metadata: dict[str, str],
        tags: dict[str, str],
        checksum: str | None = None,
    ) -> str:
        """The object's ETag. An error reply as s3fs raises it (OSError and its subclasses, the
        ClientError as cause); no reply, a ConnectionError naming the endpoint."""
        headers = _metadata(metadata)
        if tags:
            headers["x-amz-tagging"] = _ascii("x-amz-tagging", tagging(tags))
        return self._put("PutObject", bucket, key, "", body, headers, checksum)

    def create_multipart(
        self, bucket: str, key: str, metadata: dict[str, str], checksums: bool
    ) -> str:
        """CreateMultipartUpload: the upload's id; with checksums, each part must carry its
        own SHA-256. Errors as put's."""
        headers = _metadata(metadata)
        if checksums:
            headers["x-amz-checksum-algorithm"] = "SHA256"
        path = _object_path(self._base, bucket, key)
        _, reply = self._request("POST", path, "uploads=", b"", headers, "CreateMultipartUpload")
        return _text(ElementTree.fromstring(reply), "UploadId")

    def complete_multipart(
        self, bucket: str, key: str, upload_id: str, parts: list[tuple[str, str | None]]
    ) -> None:
        """CompleteMultipartUpload of parts (ETag, checksum or None), numbered from 1. S3 may
        answer an error with status 200 once the request is under way: raised as put's."""
        root = ElementTree.Element("CompleteMultipartUpload", xmlns=_XMLNS)
        for number, (etag, checksum) in enumerate(parts, start=1):
            part = ElementTree.SubElement(root, "Part")
            ElementTree.SubElement(part, "PartNumber").text = str(number)
            ElementTree.SubElement(part, "ETag").text = etag
            if checksum:
                ElementTree.SubElement(part, "ChecksumSHA256").text = checksum
        body = ElementTree.tostring(root)
        path = _object_path(self._base, bucket, key)
        query = f"uploadId={_encoded(upload_id)}"
        operation = "CompleteMultipartUpload"
        headers, reply = self._request("POST", path, query, body, {}, operation)
        if reply and ElementTree.fromstring(reply).tag.rsplit("}", 1)[-1] == "Error":
            raise _error(200, "OK", headers, reply, operation)

    def put_tagging(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """PutObjectTagging: the object's tags become these. Errors as put's."""
        root = ElementTree.Element("Tagging", xmlns=_XMLNS)
        tag_set = ElementTree.SubElement(root, "TagSet")
        for name, value in tags.items():
            tag = ElementTree.SubElement(tag_set, "Tag")
            ElementTree.SubElement(tag, "Key").text = name
            ElementTree.SubElement(tag, "Value").text = value
        body = ElementTree.tostring(root)
        # S3 requires the body's MD5 for this request.
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        path = _object_path(self._base, bucket, key)
        self._request("PUT", path, "tagging=", body, {"content-md5": md5}, "PutObjectTagging")

    def upload_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        body: bytes | memoryview,
        checksum: str | None = None,
    ) -> str:
        """UploadPart: the part's ETag; errors as put's. Its SHA-256 is computed once, in the
        calling thread (hashlib lets other threads run meanwhile), where botocore computes it
        in s3fs's one event-loop thread, which all parts then wait on."""
        query = f"partNumber={number}&uploadId={_encoded(upload_id)}"
        return self._put("UploadPart", bucket, key, query, body, {}, checksum)

    def head_object(self, bucket: str, key: str) -> dict:
        """HeadObject, as botocore answers it: ContentLength, ETag, LastModified (an aware
        datetime) and Metadata (names lower-cased, as this project writes them). Errors as
        put's; no such object, a plain FileNotFoundError (a common answer: s3fs's error table
        is not loaded for it). A big file's copy is checked so once completed."""
        path = _object_path(self._base, bucket, key)
        headers, _ = self._request("HEAD", path, "", b"", {}, "HeadObject", absent_ok=True)
        prefix = "x-amz-meta-"
        return {
            "ContentLength": int(headers.get("Content-Length", "0")),
            "ETag": headers.get("ETag", ""),
            "LastModified": parsedate_to_datetime(headers["Last-Modified"]),
            "Metadata": {
                name.lower()[len(prefix) :]: value
                for name, value in headers.items()
                if name.lower().startswith(prefix)
            },
        }

    def head_bucket(self, bucket: str) -> None:
        """Whether the bucket is there to write to: None, or its error as put's
        (FileNotFoundError when it is missing, PermissionError when refused)."""
        self._request("HEAD", f"{self._base}/{bucket}", "", b"", {}, "HeadBucket")

    def list_multipart_uploads(
        self, bucket: str, prefix: str, max_uploads: int, key_marker: str, upload_id_marker: str
    ) -> dict:
        """ListMultipartUploads, one page, as botocore answers it: Uploads (Key, UploadId,
        Initiated as an aware datetime), IsTruncated, NextKeyMarker, NextUploadIdMarker.
        Errors as put's. The sensor asks this at every tick; through s3fs, each tick made and
        closed a client (about half a CPU-second in the code server)."""
        params = {"uploads": "", "prefix": prefix, "max-uploads": str(max_uploads)}
        if key_marker:
            params["key-marker"] = key_marker
        if upload_id_marker:
            params["upload-id-marker"] = upload_id_marker
        query = "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in sorted(params.items()))
        path = f"{self._base}/{bucket}"
        _, reply = self._request("GET", path, query, b"", {}, "ListMultipartUploads")
        root = ElementTree.fromstring(reply)
        uploads = [
            {
                "Key": _text(upload, "Key"),
                "UploadId": _text(upload, "UploadId"),
                "Initiated": _timestamp(_text(upload, "Initiated")),
            }
            for upload in _children(root, "Upload")
        ]
        return {
            "Uploads": uploads,
            "IsTruncated": _text(root, "IsTruncated").lower() == "true",
            "NextKeyMarker": _text(root, "NextKeyMarker"),
            "NextUploadIdMarker": _text(root, "NextUploadIdMarker"),
        }

    def _put(
        self,
        operation: str,
        bucket: str,
        key: str,
        query: str,
        body: bytes | memoryview,
        headers: dict[str, str],
        checksum: str | None,
    ) -> str:
        """A signed PUT of body; its reply's ETag. query: canonical (encoded, sorted)."""
        if checksum:
            headers["x-amz-checksum-sha256"] = checksum
        path = _object_path(self._base, bucket, key)
        reply_headers, _ = self._request("PUT", path, query, body, headers, operation, checksum)
        return reply_headers.get("ETag", "")

    def _request(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes | memoryview,
        headers: dict[str, str],
        operation: str,
        checksum: str | None = None,
        absent_ok: bool = False,
    ) -> tuple[http.client.HTTPMessage, bytes]:
        """A signed request (path: encoded; query: canonical, its parameters encoded and
        sorted); its reply's headers and body. checksum: body's, as sha256_checksum gives it,
        taken as its payload hash. An error reply raised as s3fs raises it; with absent_ok, a
        404 as a plain FileNotFoundError."""
        if checksum:
            payload = _hex(checksum)  # the same SHA-256, not computed twice
        else:
            payload = hashlib.sha256(body).hexdigest() if len(body) else _EMPTY_SHA256
        headers["host"] = self._host
        headers["x-amz-content-sha256"] = payload
        self._signer.sign(method, path, headers, query=query)
        target = f"{path}?{query}" if query else path
        status, reason, reply_headers, reply = self._send(method, target, body, headers)
        if status == 404 and absent_ok:
            raise FileNotFoundError(f"{operation}: nothing at {self.endpoint}{target}")
        if status != 200:
            raise _error(status, reason, reply_headers, reply, operation)
        return reply_headers, reply

    def _send(
        self, method: str, target: str, body: bytes | memoryview, headers: dict[str, str]
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        try:
            return self._pool.send(method, target, body, headers)
        except OSError as exc:  # no answer: the connection's fault, not S3's
            raise ConnectionError(
                f"the S3 endpoint {self.endpoint} did not answer a {method} "
                f"({type(exc).__name__}: {exc})"
            ) from exc

    def close(self) -> None:
        self._pool.close()


class _Signer:
    """AWS Signature Version 4 for S3, in headers; the day's signing key kept."""

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self._access_key = access_key
        self._secret = ("AWS4" + secret_key).encode()
        self._region = region
        self._day = ""
        self._key = b""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"_Signer(region={self._region!r})"

    def _signing_key(self, day: str) -> bytes:
        with self._lock:
            if day != self._day:
                key = self._secret
                for part in (day, self._region, "s3", "aws4_request"):
                    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
                self._day, self._key = day, key
            return self._key

    def sign(
        self, method: str, path: str, headers: dict[str, str], now: str = "", query: str = ""
    ) -> None:
        """Adds x-amz-date and Authorization to headers (lower-case names, host and
        x-amz-content-sha256 among them), every header signed. path: already URI-encoded;
        query: the canonical query string (encoded, its parameters sorted)."""
        now = now or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        headers["x-amz-date"] = now
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                path,
                query,
                *(f"{name}:{' '.join(headers[name].split())}" for name in names),
                "",
                ";".join(names),
                headers["x-amz-content-sha256"],
            ]
        )
        scope = f"{now[:8]}/{self._region}/s3/aws4_request"
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = f"AWS4-HMAC-SHA256\n{now}\n{scope}\n{digest}"
        signature = hmac.new(self._signing_key(now[:8]), to_sign.encode(), hashlib.sha256)
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature.hexdigest()}"
        )


class _Pool:
    """Kept connections to one server, each used by one request at a time; those left idle
    (at most max_idle) are taken again by any thread. A connection the server closed while
    idle is dropped before it is used when that shows, and otherwise its request is sent once
    more on a new one; a new connection's failure is the caller's."""

    def __init__(self, scheme: str, host: str, port: int, max_idle: int, timeout: float) -> None:
        self._scheme, self._host, self._port = scheme, host, port
        self._timeout = timeout
        self._max_idle = max_idle
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._tls: ssl.SSLContext | None = None

    def send(
        self, method: str, path: str, body: bytes | memoryview, headers: dict[str, str]
    ) -> tuple[int, str, http.client.HTTPMessage, bytes]:
        for last in (False, True):
            connection, kept = self._take() if not last else (self._new(), False)
            try:
                connection.request(method, path, body, headers)
                reply = connection.getresponse()
            except _DROPPED:
                connection.close()
                if kept and not last:
                    continue  # closed by the server, no reply begun: sent once more
                raise
            except BaseException:
                connection.close()
                raise
            try:
                data = reply.read()
            except BaseException:  # a reply begun: never sent again
                connection.close()
                raise
            if reply.will_close:
                connection.close()
            else:
                self._give(connection)
            return reply.status, reply.reason, reply.headers, data
        raise AssertionError("unreachable")

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's connections are not ours
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                connection = self._idle.pop()
                if not _dropped(connection):
                    return connection, True
                connection.close()
        return self._new(), False

    def _give(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle and self._pid == os.getpid():
                self._idle.append(connection)
                return
        connection.close()

    def _new(self) -> http.client.HTTPConnection:
        if self._scheme == "http":
            return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        if self._tls is None:
            self._tls = _tls_context()
        return http.client.HTTPSConnection(
            self._host, self._port, timeout=self._timeout, context=self._tls
        )

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _tls_context() -> ssl.SSLContext:
    """Certificates verified against the CA bundle botocore would use (AWS_CA_BUNDLE, else
    its default bundle)."""
    from botocore.httpsession import get_cert_path

    return ssl.create_default_context(cafile=get_cert_path(os.environ.get("AWS_CA_BUNDLE") or True))


def _dropped(connection: http.client.HTTPConnection) -> bool:
    """An idle connection with something to read was closed by the server (or is out of
    step): not to be used again."""
    sock = connection.sock
    if sock is None:
        return True
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


def _object_path(base: str, bucket: str, key: str) -> str:
    return f"{base}/{bucket}/{quote(key, safe='/~')}"


def _metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The headers that carry an object's metadata."""
    headers = {f"x-amz-meta-{name.lower()}": value for name, value in metadata.items()}
    return {name: _ascii(name, value) for name, value in headers.items()}


def _ascii(name: str, value: str) -> str:
    if not value.isascii():
        raise ValueError(f"{name}: S3 headers (metadata, tags) carry ASCII only")
    return value


def _encoded(value: str) -> str:
    """A query string's name or value as SigV4 encodes it (and as it is sent)."""
    return quote(value, safe="-_.~")


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    """element's children called name, whatever their XML namespace."""
    return [child for child in element if child.tag.rsplit("}", 1)[-1] == name]


def _text(element: ElementTree.Element, name: str) -> str:
    """The text of element's first child called name ("" if none)."""
    found = _children(element, name)
    return (found[0].text or "") if found else ""


def _timestamp(text: str) -> datetime:
    """S3's ISO 8601 time (2026-12-07T04:50:07.000Z) as an aware datetime, as botocore's."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _hex(checksum: str) -> str:
    return base64.b64decode(checksum, validate=True).hex()


def _error(
    status: int, reason: str, headers: http.client.HTTPMessage, body: bytes, operation: str
) -> OSError:
    """The exception s3fs raises for this error reply, botocore's ClientError its cause."""
    from s3fs.errors import translate_boto_error  # s3fs's import is heavy: only on an error

    error = {"Code": str(status), "Message": reason}
    try:
        root = ElementTree.fromstring(body) if body else None
    except ElementTree.ParseError:
        root = None
    if root is not None:
        for element in root.iter():
            name = element.tag.rsplit("}", 1)[-1]
            if name in ("Code", "Message") and element.text:
                error[name] = element.text
    response = {
        "Error": error,
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers.items())},
    }
    return translate_boto_error(ClientError(response, operation))
