"""When an S3 request is sent again: the store said it is busy, or the request was lost.

One policy for every request this project sends (its own PUTs and s3fs's calls; botocore's and
s3fs's own retries are turned off so that attempts do not multiply, 5 × 5 before). A request is
sent again when:
- the store answered that it is busy or failed inside (429, 500, 502, 503, 504, `SlowDown`,
  `RequestTimeout`...): after the wait its `Retry-After` asks for (at most MAX_WAIT_SECONDS),
  else a backoff doubling from BASE_SECONDS, with jitter;
- no answer came: the connection was reset or closed, or the answer stalled past the client's
  timeout. Every request this project sends may be sent twice (parts and tags write the same
  bytes; a multipart upload completed twice is checked by the caller, s3/store.py); a PUT
  whose answer was lost is looked for first (`landed`), so that it is not written twice.
A store that refuses connections is down, not busy: its requests get CONNECT_ATTEMPTS quick
tries, then the file fails and the sensor's automatic retries take over.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
)
from botocore.parsers import ResponseParserError

logger = logging.getLogger(__name__)

T = TypeVar("T")

ATTEMPTS = 8  # a request, at most, under a busy store: 30% SlowDown fails one in 15,000
CONNECT_ATTEMPTS = 3  # under a store that refuses connections
BASE_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 5.0
MAX_WAIT_SECONDS = 20.0  # the longest Retry-After honoured
BUSY_STATUSES = {429, 500, 502, 503, 504}
BUSY_CODES = {
    "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "BandwidthLimitExceeded",
    "RequestThrottled", "InternalServerError",
}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """Whether a failed request is sent again, and how long to wait first (None: backoff)."""

    again: bool
    refused: bool = False  # nothing listens: the store is down
    lost: bool = False  # no answer came: the request may have taken effect
    wait: float | None = None
    why: str = ""


def verdict(exc: BaseException) -> Verdict:
    """What a request's exception (s3fs's, or this project's put's: a ClientError as cause, or
    a transport error) says about sending it again."""
    for cause in _chain(exc):
        if isinstance(cause, ClientError):
            return _answered(cause)
    # Refused anywhere in the chain first: lean.py's "no answer" (a ConnectionError) wraps the
    # refusal, which would otherwise read as a lost answer (8 attempts, each asking `landed`).
    for cause in _chain(exc):
        if isinstance(cause, ConnectionRefusedError) or (
            isinstance(cause, EndpointConnectionError)
            and not isinstance(cause, ConnectionClosedError)
        ):
            return Verdict(True, refused=True, why="the connection was refused")
    for cause in _chain(exc):
        if isinstance(
            cause,
            (ConnectionError, TimeoutError, socket.timeout, HTTPClientError, ResponseParserError),
        ):
            return Verdict(True, lost=True, why=f"no answer ({type(cause).__name__})")
        if type(cause).__module__.startswith("aiohttp") or "Timeout" in type(cause).__name__:
            return Verdict(True, lost=True, why=f"no answer ({type(cause).__name__})")
    return Verdict(False)


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _answered(error: ClientError) -> Verdict:
    response = error.response or {}
    code = str(response.get("Error", {}).get("Code", ""))
    meta = response.get("ResponseMetadata", {})
    status = int(meta.get("HTTPStatusCode") or 0)
    if code not in BUSY_CODES and status not in BUSY_STATUSES:
        return Verdict(False)
    headers = {name.lower(): value for name, value in (meta.get("HTTPHeaders") or {}).items()}
    return Verdict(True, wait=_retry_after(headers.get("retry-after")), why=f"{code or status}")


def _retry_after(value: str | None) -> float | None:
    """Retry-After's seconds (a number, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_WAIT_SECONDS)


def backoff(attempt: int) -> float:
    """The wait after the attempt-th failure (1, 2, ...): doubling, half of it jitter."""
    ceiling = min(MAX_BACKOFF_SECONDS, BASE_SECONDS * 2 ** (attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def retrying(
    call: Callable[[], T],
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    landed: Callable[[], T | None] | None = None,
) -> T:
    """call(), sent again as the policy says; the last failure raised as it came. landed():
    after an attempt that got no answer, what call() would have returned if that attempt took
    effect (None: it did not), asked before sending it again."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:
            said = verdict(exc)
            limit = CONNECT_ATTEMPTS if said.refused else ATTEMPTS
            if not said.again or attempt >= limit:
                raise
            wait = said.wait if said.wait is not None else backoff(attempt)
            logger.info("%s: %s; sent again in %.1f s (attempt %d)", what, said.why, wait, attempt)
            sleep(wait)
            if said.lost and landed is not None and (result := _landed(landed)) is not None:
                logger.info("%s: it had taken effect; not sent again", what)
                return result


def _landed(landed: Callable[[], T | None]) -> T | None:
    try:
        return landed()
    except Exception:  # not known: sent again, as without landed
        return None
