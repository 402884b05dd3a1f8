"""The lean client's requests (s3/lean.py) against botocore's: the same signature, the same errors
as s3fs raises; no server (the requests themselves: integration/test_lean_client.py)."""

import errno
import http.client
from urllib.parse import quote

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest

from sftp_minio_assets.s3.lean import LeanClient, _error, _Signer, direct, tagging
from sftp_minio_assets.s3.store import _DIGEST_REFUSED, _error_code

ACCESS_KEY = "AKEXAMPLE0123456789"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

KEYS = [
    "default/report.csv",
    "default/a b/Q3 50%.csv",  # spaces and a literal %
    "src/naïve café/日本語.txt",  # UTF-8
    "src/caf%E9.txt",  # object_key's escape of a byte that is not UTF-8
    "src/~tilde/+plus=equals&amp;semi;colon,comma@at$dollar!bang'quote(paren)*star.txt",
    'src/[brackets]{braces}^caret`tick|pipe"dq<lt>gt#hash?q.txt',
]


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize(
    "endpoint, host",
    [
        ("http://127.0.0.1:9000", "127.0.0.1:9000"),
        ("https://minio.example.org", "minio.example.org"),  # the default port: not in host
        ("http://minio:80/", "minio"),
        ("http://[::1]:9000", "[::1]:9000"),
    ],
)
@pytest.mark.parametrize("region", ["us-east-1", "eu-west-3"])
@pytest.mark.parametrize("checksum", [None, "ouZZ2stGkeiHrAE5+Ik9BHZO4ZfXD7c9MZDVYRPRjj4="])
def test_the_signature_is_botocores(key, endpoint, host, region, checksum):
    """Every header LeanClient sends, signed as botocore's S3 SigV4 signer signs the same request
    (path-style, the payload's SHA-256 signed): the same Authorization, byte for byte."""
    path = f"/bucket/{quote(key, safe='/~')}"
    headers = {
        "x-amz-meta-source": "default",
        "x-amz-meta-source-path": "a%20b/Q3%2050%25.csv",
        "x-amz-meta-transfer-token": "0123456789abcdef0123456789abcdef",
        "x-amz-meta-padded": "  two  spaces  inside  ",
        "x-amz-tagging": tagging({"sha256": "ab" * 32, "a b": "c&d=e"}),
        "x-amz-content-sha256": EMPTY_SHA256,
    }
    if checksum:
        headers["x-amz-checksum-sha256"] = checksum
    theirs = botocore.awsrequest.AWSRequest("PUT", f"{endpoint.rstrip('/')}{path}", dict(headers))
    signer = botocore.auth.S3SigV4Auth(
        botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY), "s3", region
    )
    signer.add_auth(theirs)

    ours = {**headers, "host": host}
    _Signer(ACCESS_KEY, SECRET_KEY, region).sign("PUT", path, ours, theirs.headers["X-Amz-Date"])

    assert ours["Authorization"] == theirs.headers["Authorization"]
    assert ours["x-amz-date"] == theirs.headers["X-Amz-Date"]


# Upload ids as SeaweedFS and MinIO make them: the second needs encoding.
@pytest.mark.parametrize("upload_id", ["2~abc_DEF-123.x", "VXBsb2FkIElk/+=="])
def test_a_parts_signature_with_its_query_is_botocores(upload_id):
    """UploadPart signs its query (partNumber, uploadId) as botocore does."""
    path = f"/bucket/{quote('src/a b/part.bin', safe='/~')}"
    query = f"partNumber=7&uploadId={quote(upload_id, safe='-_.~')}"
    headers = {"x-amz-content-sha256": EMPTY_SHA256}  # botocore signs its own body's: none
    url = f"http://127.0.0.1:9000{path}?partNumber=7&uploadId={quote(upload_id, safe='')}"
    theirs = botocore.awsrequest.AWSRequest("PUT", url, dict(headers))
    signer = botocore.auth.S3SigV4Auth(
        botocore.credentials.Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1"
    )
    signer.add_auth(theirs)
    ours = {**headers, "host": "127.0.0.1:9000"}
    _Signer(ACCESS_KEY, SECRET_KEY, "us-east-1").sign(
        "PUT", path, ours, theirs.headers["X-Amz-Date"], query=query
    )
    assert ours["Authorization"] == theirs.headers["Authorization"]


def test_the_host_signed_is_the_one_sent():
    assert LeanClient("http://127.0.0.1:9000", "a", "b", "us-east-1")._host == "127.0.0.1:9000"
    assert (
        LeanClient("https://s3.example.org:443/", "a", "b", "us-east-1")._host == "s3.example.org"
    )
    lean = LeanClient("https://user:pw@s3.example.org:8443/base/", "a", "b", "us-east-1")
    assert (lean._host, lean._base) == ("s3.example.org:8443", "/base")
    assert "pw" not in lean.endpoint


def test_no_credential_shows_in_the_client_or_its_signer():
    lean = LeanClient("http://127.0.0.1:9000", ACCESS_KEY, SECRET_KEY, "us-east-1")
    for shown in (repr(lean), repr(lean._signer), str(vars(lean))):
        assert SECRET_KEY not in shown


def s3_error(code: str) -> bytes:
    return f"<Error><Code>{code}</Code><Message>what</Message></Error>".encode()


@pytest.mark.parametrize(
    "status, body, kind, code",
    [
        (400, s3_error("BadDigest"), OSError, "BadDigest"),
        (400, s3_error("XAmzContentSHA256Mismatch"), OSError, "XAmzContentSHA256Mismatch"),
        (403, s3_error("SignatureDoesNotMatch"), PermissionError, "SignatureDoesNotMatch"),
        (403, s3_error("AccessDenied"), PermissionError, "AccessDenied"),
        (404, s3_error("NoSuchBucket"), FileNotFoundError, "NoSuchBucket"),
        (503, s3_error("SlowDown"), OSError, "SlowDown"),
        (
            400,
            b'<?xml version="1.0"?><Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Code>InvalidDigest</Code><Message>m</Message></Error>",
            OSError,
            "InvalidDigest",
        ),
        (502, b"<html>bad gateway</html>", OSError, "502"),  # not S3's: its status
        (403, b"", PermissionError, "403"),
    ],
)
def test_errors_are_the_ones_s3fs_raises(status, body, kind, code):
    """The exception type s3fs gives the code, botocore's ClientError as its cause, so that
    store.py finds the code (a refused checksum becomes ChecksumRefused) and the worker judges
    it (worker/errors.py) as before."""
    exc = _error(status, "Reason", http.client.HTTPMessage(), body, "PutObject")
    assert type(exc) is kind
    assert _error_code(exc) == code
    if code in _DIGEST_REFUSED:
        assert exc.errno == errno.EINVAL


def test_an_endpoint_behind_a_proxy_is_left_to_s3fs(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert direct("http://minio:9000")
    monkeypatch.setenv("http_proxy", "http://proxy:3128")
    assert not direct("http://minio:9000") and direct("https://minio:9000")
    monkeypatch.setenv("no_proxy", "minio")
    assert direct("http://minio:9000")


def test_metadata_must_be_ascii_as_botocore_requires():
    lean = LeanClient("http://127.0.0.1:9", ACCESS_KEY, SECRET_KEY, "us-east-1")
    with pytest.raises(ValueError, match="ASCII"):
        lean.put("bucket", "key", b"", {"source": "café"}, {})
