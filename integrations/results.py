"""What a PSP call came to, in the terms the reconciler acts on."""

from __future__ import annotations

import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import httpx


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    # The PSP said no for a business reason: retrying the same request cannot help.
    REJECTED = "rejected"
    # Network, timeout, 5xx or 429: the same request, with the same key, may succeed later.
    TRANSIENT = "transient"
    # Adyen accepted the request; the result comes later as a notification.
    RECEIVED = "received"


@dataclass(frozen=True)
class PspError:
    code: str
    message: str
    correlation_id: str | None = None
    http_status: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "correlation_id": self.correlation_id,
            "http_status": self.http_status,
        }


@dataclass(frozen=True)
class PspResult:
    outcome: Outcome
    reference: str | None = None
    error: PspError | None = None
    retry_after: float | None = None
    # True when the request may have reached the PSP and been applied (timeout after
    # sending, connection dropped, 5xx): the next attempt first checks what happened.
    maybe_applied: bool = False
    body: dict[str, Any] = field(default_factory=dict)
    http_status: int | None = None
    elapsed_seconds: float = 0.0


def transport_failure(exc: httpx.HTTPError) -> PspResult:
    """A request that got no complete answer."""
    # Connecting failed: nothing was sent. Anything later: the PSP may have acted.
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return PspResult(
        Outcome.TRANSIENT,
        error=PspError(type(exc).__name__, str(exc) or type(exc).__name__),
        maybe_applied=not never_sent,
    )


# Every error an httpx call can raise: its transport errors, and those raised before
# anything is sent (a URL or header it cannot build), which are not `HTTPError`s.
CLIENT_ERRORS = (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpx.CookieConflict)


def client_failure(exc: Exception) -> PspResult:
    """A call that raised one of CLIENT_ERRORS."""
    if isinstance(exc, httpx.HTTPError):
        return transport_failure(exc)
    # Nothing was sent, and the same request would fail the same way: not transient.
    return PspResult(
        Outcome.REJECTED,
        error=PspError(type(exc).__name__, "the request could not be built"),
        maybe_applied=False,
    )


def path_segment(value: str) -> str:
    """`value` as one URL path segment: every reserved character quoted, and dots too,
    so that no id can climb out of its segment (`..`), end the path (`#`, `?`) or add
    one. The snapshot's id patterns refuse such ids already; this holds whatever the
    database contains."""
    return quote(value, safe="").replace(".", "%2E")


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))  # seconds
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, float(parsed.timestamp()) - time.time())
    except (TypeError, ValueError, OverflowError):
        # Neither seconds nor an HTTP-date: the back-off decides instead.
        return None


def is_transient_status(status: int) -> bool:
    return status == 429 or status >= 500


# "A request with this idempotency key is still being processed": Klarna answers 409,
# Adyen 422 with errorCode 704 (or 409). The first request may yet apply: the outcome is
# unknown, never a rejection.
IN_PROGRESS_ADYEN_CODES = frozenset({"704"})


def in_progress(status: int, error_code: str | None) -> bool:
    if status == 409:
        return True
    return status == 422 and (error_code or "") in IN_PROGRESS_ADYEN_CODES


def in_progress_result(error: PspError, status: int, elapsed: float) -> PspResult:
    return PspResult(
        Outcome.TRANSIENT,
        error=error,
        maybe_applied=True,
        http_status=status,
        elapsed_seconds=elapsed,
    )


def exception_result(exc: BaseException, *, maybe_applied: bool) -> PspResult:
    """An exception inside an attempt, recorded as that attempt's outcome."""
    name = type(exc).__name__
    return PspResult(
        Outcome.TRANSIENT,
        error=PspError(name, (str(exc) or name)[:200]),
        maybe_applied=maybe_applied,
    )


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Exponential back-off with full jitter; `jitter` is a number in [0, 1)."""
    exponential: float = base * 2.0 ** max(0, attempt - 1)
    return jitter * min(cap, exponential)


def retry_delay(
    attempts: int,
    base: float,
    cap: float,
    retry_after: float | None = None,
    *,
    floor: float = 0.0,
) -> float:
    """The one back-off rule for every retry (PSP operations, notifications, callbacks):
    exponential with jitter between `floor` and 1, never sooner than the PSP asked."""
    jitter = floor + (1.0 - floor) * random.random()
    delay = backoff_seconds(attempts, base, cap, jitter)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


@dataclass(frozen=True)
class PspRequest:
    """One operation's request, frozen when it is planned and resent as stored.

    `body` is the JSON text itself, so every attempt sends the very same bytes; `api`
    names the base URL it goes to for a PSP with more than one (Adyen); `account` the
    merchant's account whose base URL and credentials send it (contract §6)."""

    method: str
    path: str
    body: str | None = None
    api: str | None = None
    account: str | None = None

    @classmethod
    def of(
        cls,
        method: str,
        path: str,
        body: Any = None,
        api: str | None = None,
        *,
        account: str | None = None,
    ) -> PspRequest:
        text = None if body is None else json.dumps(body, separators=(",", ":"), sort_keys=True)
        return cls(method, path, text, api, account)

    def json_body(self) -> dict[str, Any]:
        data = json.loads(self.body) if self.body else {}
        return data if isinstance(data, dict) else {}

    def to_json(self) -> dict[str, Any]:
        data = {"method": self.method, "path": self.path, "body": self.body, "api": self.api}
        if self.account is not None:
            data["account"] = self.account
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PspRequest:
        return cls(
            str(data["method"]),
            str(data["path"]),
            data.get("body"),
            data.get("api"),
            data.get("account"),
        )


def error_result(response: httpx.Response, error: PspError, elapsed: float) -> PspResult:
    """A PSP's error answer: "in progress" is an unknown outcome; a 5xx or 429 is
    transient (a 429 turned the request away, a 5xx may come after the effect); any
    other is the PSP's refusal."""
    status = response.status_code
    if in_progress(status, error.code):
        return in_progress_result(error, status, elapsed)
    if is_transient_status(status):
        return PspResult(
            Outcome.TRANSIENT,
            error=error,
            retry_after=retry_after_seconds(response),
            maybe_applied=status != 429,
            http_status=status,
            elapsed_seconds=elapsed,
        )
    return PspResult(Outcome.REJECTED, error=error, http_status=status, elapsed_seconds=elapsed)
