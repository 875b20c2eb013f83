"""Fault injection: make the simulated PSP fail the way real networks and PSPs do.

Faults are armed over HTTP (`POST /_sandbox/faults`) and hit PSP API requests only,
optionally filtered by method and a path substring. Each fault hits `count` requests
(null: until cleared), or a random share of them when `probability` is below 1 (the
"error rate" of a benchmark; seeded, so a run can be repeated).

The "after apply" kinds exist because they are the dangerous ones for a client: the
PSP did the work but the client cannot know it, so only a retry with the same
idempotency key is safe.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

FaultKind = Literal[
    "error",
    "error_after_apply",
    "drop_after_apply",
    "delay",
    "rate_limit",
    "reject_next_increase",
    "fail_next_capture",
]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "error",
    "error_after_apply",
    "drop_after_apply",
    "delay",
    "rate_limit",
    "reject_next_increase",
    # Adyen: the next capture is answered `received`, then fails in a CAPTURE_FAILED.
    "fail_next_capture",
)
_MAX_DELAY_MS = 600_000


class FaultSpecError(ValueError):
    """The JSON describing a fault is not usable."""


class ConnectionDroppedError(httpx.RemoteProtocolError):
    """Raised after the response headers went out, so the server aborts the connection.

    Under uvicorn the client sees a truncated response (a transport error). Deriving
    from httpx's own transport error means an in-process `httpx.ASGITransport` client
    sees the same kind of failure as a client talking over a real socket.
    """


@dataclass
class Fault:
    kind: FaultKind
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    count: int | None = 1
    status: int = 500
    ms: int = 0
    after_apply: bool = False
    retry_after: int = 1
    path_contains: str | None = None
    method: str | None = None
    probability: float = 1.0
    error_code: str | None = None
    message: str | None = None
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        return self.path_contains is None or self.path_contains in path

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "count": self.count,
            "hits": self.hits,
            "path_contains": self.path_contains,
            "method": self.method,
            "probability": self.probability,
        }
        if self.kind in ("error", "error_after_apply"):
            out.update(status=self.status, error_code=self.error_code, message=self.message)
        if self.kind == "delay":
            out.update(ms=self.ms, after_apply=self.after_apply)
        if self.kind == "rate_limit":
            out["retry_after"] = self.retry_after
        return out


def parse_fault(data: Any) -> Fault:
    """Build a Fault from the JSON a test posted, refusing anything ambiguous."""
    if not isinstance(data, Mapping):
        raise FaultSpecError("a fault is a JSON object")
    kind = data.get("kind")
    if kind not in FAULT_KINDS:
        raise FaultSpecError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    known = {
        "kind", "count", "status", "ms", "after_apply", "retry_after", "path_contains",
        "method", "probability", "error_code", "message",
    }  # fmt: skip
    unknown = sorted(set(data) - known)
    if unknown:
        raise FaultSpecError(f"unknown fault fields: {', '.join(unknown)}")
    fault = Fault(kind=kind)
    if "count" in data:
        fault.count = _optional_int(data, "count", minimum=1)
    if kind in ("error", "error_after_apply"):
        status = _int(data, "status", 500, minimum=400)
        if status > 599:
            raise FaultSpecError("status must be an HTTP error status (400-599)")
        fault.status = status
    fault.ms = _int(data, "ms", 0, minimum=0)
    if fault.ms > _MAX_DELAY_MS:
        raise FaultSpecError(f"ms must be at most {_MAX_DELAY_MS}")
    fault.retry_after = _int(data, "retry_after", 1, minimum=0)
    after_apply = data.get("after_apply", False)
    if not isinstance(after_apply, bool):
        raise FaultSpecError("after_apply must be a boolean")
    fault.after_apply = after_apply
    fault.path_contains = _optional_str(data, "path_contains")
    method = _optional_str(data, "method")
    fault.method = method.upper() if method else None
    fault.error_code = _optional_str(data, "error_code")
    fault.message = _optional_str(data, "message")
    probability = data.get("probability", 1)
    if isinstance(probability, bool) or not isinstance(probability, int | float):
        raise FaultSpecError("probability must be a number")
    if not 0 < probability <= 1:
        raise FaultSpecError("probability must be in (0, 1]")
    fault.probability = float(probability)
    return fault


@dataclass(frozen=True)
class FaultHits:
    """What the armed faults do to one request at one stage of its handling."""

    delay_ms: int = 0
    answer: Fault | None = None


class FaultRegistry:
    def __init__(self, seed: int | None = None) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._seed = seed
        self._random = random.Random(seed)

    def arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._random = random.Random(self._seed)

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_json() for f in self._faults]

    def before_apply(self, method: str, path: str) -> FaultHits:
        """Faults that act before the request touches any state."""
        return self._take(method, path, delay_after_apply=False, answers=("error", "rate_limit"))

    def after_apply(self, method: str, path: str) -> FaultHits:
        """Faults that act once the operation took effect."""
        answers = ("error_after_apply", "drop_after_apply")
        return self._take(method, path, delay_after_apply=True, answers=answers)

    def reject_increase(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind == "reject_next_increase" and self._fires(fault, method, path):
                    self._consume(fault)
                    return fault
        return None

    def take(self, kind: FaultKind, method: str, path: str) -> Fault | None:
        """Consumes one hit of a fault of `kind` that matches, if any is armed."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and self._fires(fault, method, path):
                    self._consume(fault)
                    return fault
        return None

    def _take(
        self, method: str, path: str, *, delay_after_apply: bool, answers: tuple[str, ...]
    ) -> FaultHits:
        delay_ms = 0
        answer: Fault | None = None
        with self._lock:
            for fault in list(self._faults):
                is_delay = fault.kind == "delay" and fault.after_apply == delay_after_apply
                wanted = is_delay or (answer is None and fault.kind in answers)
                if not wanted or not self._fires(fault, method, path):
                    continue
                self._consume(fault)
                if is_delay:
                    delay_ms += fault.ms
                else:
                    answer = fault
        return FaultHits(delay_ms=delay_ms, answer=answer)

    def _fires(self, fault: Fault, method: str, path: str) -> bool:
        if not fault.matches(method, path):
            return False
        return fault.probability >= 1 or self._random.random() < fault.probability

    def _consume(self, fault: Fault) -> None:
        fault.hits += 1
        if fault.count is not None:
            fault.count -= 1
            if fault.count <= 0:
                self._faults.remove(fault)


class DroppedResponse(Response):
    """A response that starts, then aborts the connection before its body.

    The headers announce a body that never comes, so the client cannot take the
    truncated answer for a complete one. A 204 cannot announce a body, hence 200.
    """

    def __init__(self, status_code: int, headers: Mapping[str, str], body: bytes) -> None:
        status = 200 if status_code in (204, 304) else status_code
        super().__init__(content=body or b"-", status_code=status, headers=dict(headers))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        raise ConnectionDroppedError(
            "sandbox fault drop_after_apply: connection dropped on purpose"
        )


def _int(data: Mapping[str, Any], key: str, default: int, *, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FaultSpecError(f"{key} must be an integer >= {minimum}")
    return value


def _optional_int(data: Mapping[str, Any], key: str, *, minimum: int) -> int | None:
    if data.get(key) is None:
        return None
    return _int(data, key, 0, minimum=minimum)


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise FaultSpecError(f"{key} must be a string")
    return value or None
