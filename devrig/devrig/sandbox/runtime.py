"""What every simulated PSP shares: the request pipeline, the ledger, the request log.

Each PSP module (Klarna now, Adyen later) supplies only its rules as a synchronous
`operation` and its error-body format; `SandboxRuntime.handle` wraps them in what
all PSPs have in common: request recording, fault injection, idempotency-key replay
and spec validation, in the order a real PSP would see them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from devrig.sandbox.faults import DroppedResponse, FaultRegistry
from devrig.sandbox.specs import SpecSet

Clock = Callable[[], datetime]
_REQUEST_LOG_LIMIT = 50_000
# Real PSPs forget idempotency keys after a while too; this only bounds memory in long
# benchmark runs, far beyond any retry window a test exercises.
_REPLAY_LIMIT = 200_000
_IDEMPOTENT_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Outcome:
    """A PSP's answer, kept whole so an idempotent replay can repeat it exactly."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def encoded_body(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()

    def to_response(self) -> Response:
        if self.body is None:
            return Response(status_code=self.status, headers=dict(self.headers))
        return Response(
            content=self.encoded_body(),
            status_code=self.status,
            headers=dict(self.headers),
            media_type="application/json",
        )


ErrorFactory = Callable[[int, str, list[str]], Outcome]
"""(HTTP status, error code, messages) -> the PSP's own error body."""


@dataclass(frozen=True)
class ApiCall:
    """One PSP API request, as a provider's operation sees it."""

    method: str
    path: str
    order_id: str | None
    body: Any
    idempotency_key: str | None
    base_url: str


class Ledger:
    """Every effect the simulated PSPs applied, once each: the ground truth for tests."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(
        self,
        *,
        provider: str,
        order_id: str,
        operation: str,
        amount: int | None,
        idempotency_key: str | None,
        lines: list[Any] | None = None,
        reference: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        with self._lock:
            entry = {
                "seq": len(self._entries) + 1,
                "provider": provider,
                "order_id": order_id,
                "operation": operation,
                "amount": amount,
                "idempotency_key": idempotency_key,
                "lines": lines if lines is not None else [],
                "reference": reference,
                "at": iso(self._clock()),
                **extra,
            }
            self._entries.append(entry)
            return entry

    def entries(
        self,
        *,
        provider: str | None = None,
        order_id: str | None = None,
        operation: str | None = None,
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self._entries
                if (provider is None or e["provider"] == provider)
                and (order_id is None or e["order_id"] == order_id)
                and (operation is None or e["operation"] == operation)
            ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RequestLog:
    """Every PSP request received, so tests can assert what was sent and how often.

    Bounded, because a benchmark may send millions of requests to one sandbox.
    """

    def __init__(self, clock: Clock, limit: int = _REQUEST_LOG_LIMIT) -> None:
        self._clock = clock
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._seq = 0
        self._lock = threading.Lock()

    def start(self, request: Request, *, provider: str, order_id: str | None) -> dict[str, Any]:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        with self._lock:
            self._seq += 1
            entry: dict[str, Any] = {
                "seq": self._seq,
                "provider": provider,
                "order_id": order_id,
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": headers,
                "body": None,
                "response_status": None,
                "replayed": False,
                "fault": None,
                "dropped": False,
                "spec_errors": [],
                "at": iso(self._clock()),
            }
            self._entries.append(entry)
            return entry

    def entries(
        self, *, provider: str | None = None, order_id: str | None = None
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self._entries
                if (provider is None or e["provider"] == provider)
                and (order_id is None or e["order_id"] == order_id)
            ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._seq = 0


class SandboxRuntime:
    def __init__(
        self,
        *,
        specs: SpecSet,
        strict_specs: bool = True,
        fault_seed: int | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self.clock = clock
        self.specs = specs
        self.strict_specs = strict_specs
        self.faults = FaultRegistry(seed=fault_seed)
        self.ledger = Ledger(clock)
        self.requests = RequestLog(clock)
        # One lock around "replay or apply, then remember": two concurrent requests
        # with the same key must not both apply. Operations never await inside it.
        self.lock = threading.RLock()
        self._replays: OrderedDict[tuple[str, str, str, str], Outcome] = OrderedDict()
        self._reset_hooks: list[Callable[[], None]] = []

    def on_reset(self, hook: Callable[[], None]) -> None:
        self._reset_hooks.append(hook)

    def reset(self) -> None:
        with self.lock:
            self.faults.clear()
            self.ledger.clear()
            self.requests.clear()
            self._replays.clear()
            for hook in self._reset_hooks:
                hook()

    async def handle(
        self,
        request: Request,
        *,
        provider: str,
        order_id: str | None,
        operation: Callable[[ApiCall], Outcome],
        errors: ErrorFactory,
        authorized: bool,
        idempotency_header: str,
        path: str | None = None,
        account: str | None = None,
    ) -> Response:
        """`path` is the API's own path when the request came under a market's prefix
        (`/klarna/<market>/…`); `account` the market or merchant account the request's
        credentials belong to (None: they belong to none), kept in the request log."""
        log = self.requests.start(request, provider=provider, order_id=order_id)
        log["account"] = account
        raw = await request.body()
        body, body_ok = _parse_json(raw)
        log["body"] = body if body_ok else raw.decode("utf-8", "replace")
        method, path = request.method, path or request.url.path

        if not authorized:
            return _finish(log, errors(401, "UNAUTHORIZED", ["Bad or missing credentials"]))

        before = self.faults.before_apply(method, path)
        if before.delay_ms:
            await anyio.sleep(before.delay_ms / 1000)
        if before.answer is not None:
            fault = before.answer
            log["fault"] = fault.kind
            if fault.kind == "rate_limit":
                limited = errors(429, "RATE_LIMITED", ["Too many requests (sandbox fault)"])
                headers = {**limited.headers, "Retry-After": str(fault.retry_after)}
                return _finish(log, Outcome(429, limited.body, headers))
            return _finish(log, _fault_error(fault.status, fault.error_code, fault.message, errors))

        key = request.headers.get(idempotency_header) if method in _IDEMPOTENT_METHODS else None
        call = ApiCall(method, path, order_id, body, key, str(request.base_url).rstrip("/"))
        with self.lock:
            replay_key = (provider, method, path, key) if key else None
            outcome = self._replays.get(replay_key) if replay_key else None
            if outcome is not None:
                log["replayed"] = True
            else:
                outcome = self._apply(call, log, provider, operation, errors, body_ok)
                # Only the PSP's own verdict is remembered: an injected fault before this
                # point must not stick to the key, or a retry could never succeed.
                if replay_key is not None:
                    self._replays[replay_key] = outcome
                    if len(self._replays) > _REPLAY_LIMIT:
                        self._replays.popitem(last=False)

        if outcome.status >= 400:
            return _finish(log, outcome)
        after = self.faults.after_apply(method, path)
        if after.delay_ms:
            await anyio.sleep(after.delay_ms / 1000)
        if after.answer is None:
            return _finish(log, outcome)
        log["fault"] = after.answer.kind
        if after.answer.kind == "drop_after_apply":
            log["dropped"] = True
            return DroppedResponse(outcome.status, outcome.headers, outcome.encoded_body())
        fault = after.answer
        return _finish(log, _fault_error(fault.status, fault.error_code, fault.message, errors))

    def _apply(
        self,
        call: ApiCall,
        log: dict[str, Any],
        provider: str,
        operation: Callable[[ApiCall], Outcome],
        errors: ErrorFactory,
        body_ok: bool,
    ) -> Outcome:
        if not body_ok:
            return errors(400, "BAD_VALUE", ["Request body is not valid JSON"])
        if call.body is not None:
            spec_errors = self.specs.check(provider, call.method, call.path, call.body)
            if spec_errors:
                log["spec_errors"] = spec_errors
                if self.strict_specs:
                    return errors(400, "BAD_VALUE", spec_errors)
        return operation(call)


def _fault_error(
    status: int, error_code: str | None, message: str | None, errors: ErrorFactory
) -> Outcome:
    code = error_code or _DEFAULT_ERROR_CODES.get(status, f"HTTP_{status}")
    return errors(status, code, [message or f"Injected sandbox fault ({status})"])


_DEFAULT_ERROR_CODES = {
    400: "BAD_VALUE",
    403: "NOT_ALLOWED",
    404: "NOT_FOUND",
    409: "CONFLICT",
    429: "RATE_LIMITED",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def _finish(log: dict[str, Any], outcome: Outcome) -> Response:
    log["response_status"] = outcome.status
    return outcome.to_response()


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    if not raw.strip():
        return None, True
    try:
        return json.loads(raw), True
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, False
