"""When an S3 request is sent again (s3/retries.py), on the errors as s3fs and the lean client raise
them; no server (the relay's faults: integration/test_hostile_networks.py)."""

import http.client

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from sftp_minio_assets.s3 import retries
from sftp_minio_assets.s3.lean import _error
from sftp_minio_assets.s3.store import multipart_etag


def answer(status: int, code: str, **headers: str) -> OSError:
    message = http.client.HTTPMessage()
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    body = f"<Error><Code>{code}</Code><Message>m</Message></Error>".encode()
    return _error(status, "reason", message, body, "PutObject")


def test_a_busy_store_is_asked_again_after_the_wait_it_names():
    said = retries.verdict(answer(503, "SlowDown", Retry_After="3"))
    assert said.again and not said.refused and said.wait == 3.0
    assert retries.verdict(answer(500, "InternalError")) == retries.Verdict(
        True, why="InternalError"
    )
    capped = retries.verdict(answer(503, "SlowDown", Retry_After="3600"))
    assert capped.wait == retries.MAX_WAIT_SECONDS


@pytest.mark.parametrize("status,code", [(403, "AccessDenied"), (404, "NoSuchBucket"),
                                         (400, "BadDigest"), (400, "InvalidArgument")])  # fmt: skip
def test_an_answer_that_another_attempt_would_repeat_is_not_asked_again(status, code):
    assert not retries.verdict(answer(status, code)).again


def test_a_lost_answer_is_asked_again_and_a_refused_connection_a_few_times_only():
    timeout = ReadTimeoutError(endpoint_url="http://127.0.0.1:9")
    assert retries.verdict(timeout).again and not retries.verdict(timeout).refused
    assert retries.verdict(ConnectionResetError()).again
    wrapped = ConnectionError("the S3 endpoint did not answer")
    wrapped.__cause__ = TimeoutError("timed out")
    assert retries.verdict(wrapped).again
    refused = retries.verdict(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"))
    assert refused.again and refused.refused
    # lean.py's "no answer" around a refusal: refused (a few quick attempts, none asking
    # whether a request that never left took effect), not lost.
    wrapped.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert retries.verdict(wrapped).refused and not retries.verdict(wrapped).lost
    assert not retries.verdict(ValueError("a defect")).again


def test_attempts_stop_at_the_limit_with_the_last_error_and_the_waits_asked():
    calls, waits = [], []

    def busy():
        calls.append(1)
        raise answer(503, "SlowDown", Retry_After="2")

    with pytest.raises(OSError) as raised:
        retries.retrying(busy, "PUT s3://b/k", sleep=waits.append)
    assert "reduce" not in str(raised.value) and len(calls) == retries.ATTEMPTS
    assert waits == [2.0] * (retries.ATTEMPTS - 1)

    calls.clear()

    def down():
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        retries.retrying(down, "PUT s3://b/k", sleep=lambda _: None)
    assert len(calls) == retries.CONNECT_ATTEMPTS


def test_a_request_that_succeeds_after_failures_returns_its_answer():
    answers = iter([answer(503, "SlowDown"), ConnectionResetError(), "etag"])

    def flaky():
        result = next(answers)
        if isinstance(result, BaseException):
            raise result
        return result

    waits: list[float] = []
    assert retries.retrying(flaky, "PUT", sleep=waits.append) == "etag"
    assert len(waits) == 2 and all(0 < wait <= retries.MAX_BACKOFF_SECONDS for wait in waits)


def test_backoff_doubles_with_jitter_up_to_its_ceiling():
    for attempt in range(1, 12):
        ceiling = min(retries.MAX_BACKOFF_SECONDS, retries.BASE_SECONDS * 2 ** (attempt - 1))
        assert ceiling / 2 <= retries.backoff(attempt) <= ceiling


def test_the_multipart_etag_is_the_md5_of_the_parts_md5s():
    # Two parts of b"a" * 5 MiB and b"b": the ETag S3 (and SeaweedFS) gives such an object.
    import hashlib

    first, second = hashlib.md5(b"a" * 5242880).hexdigest(), hashlib.md5(b"b").hexdigest()
    expected = hashlib.md5(bytes.fromhex(first) + bytes.fromhex(second)).hexdigest() + "-2"
    assert multipart_etag([f'"{first}"', second]) == expected
