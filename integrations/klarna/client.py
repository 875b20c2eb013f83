"""Klarna Order Management v1."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from domain.lines import PspLine, klarna_order_lines
from domain.planner import Kind, PspStatus
from domain.snapshot import OrderSnapshot, Shipping
from integrations.provider import OperationFields, OrderFields
from integrations.results import (
    CLIENT_ERRORS,
    Outcome,
    PspError,
    PspRequest,
    PspResult,
    client_failure,
    error_result,
    path_segment,
)
from ordersync.http import url_at
from ordersync.settings import SEED_INCREASE_ALLOWED, increase_rule

ORDERS = "/ordermanagement/v1/orders"
# Never a Klarna order id (theirs are UUIDs): reading it touches no order.
CHECK_ORDER_ID = "ordersync-credentials-check"

IncreaseRule = Callable[[str | None, str | None], bool]


class KlarnaClient:
    """One instance per process, over the process's pooled httpx client."""

    name = "klarna"
    can_read = True

    def __init__(
        self,
        http: httpx.Client,
        base_url: str,
        username: str,
        password: str,
        *,
        account: str | None = None,
        increase_allowed: IncreaseRule | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = httpx.BasicAuth(username, password)
        # The merchant's Klarna account this client speaks for (contract §6): stamped on
        # every request it freezes.
        self.account = account
        self._increase_allowed = increase_allowed

    def increase_allowed(self, payment_method: str | None, country: str | None) -> bool:
        """Where this account asks Klarna for more than was authorized at all."""
        rule = self._increase_allowed
        if rule is None:
            return increase_rule(SEED_INCREASE_ALLOWED, payment_method, country)
        return rule(payment_method, country)

    def check(self) -> PspResult:
        """A harmless read proving the credentials: an order id that cannot exist. Klarna
        checks credentials first (401), then answers 404 for the unknown order."""
        return self._call(PspRequest("GET", order_path(CHECK_ORDER_ID)), None)

    def get_order(self, order_id: str) -> PspResult:
        return self._call(PspRequest("GET", order_path(order_id)), None)

    # -- the Provider protocol ------------------------------------------------------

    def read(self, order: OrderFields) -> PspResult:
        return self.get_order(order.psp_order_id)

    def execute(
        self, order: OrderFields, snapshot: OrderSnapshot, op: OperationFields
    ) -> PspResult:
        request = self.build(order, snapshot, op)
        if isinstance(request, PspResult):
            return request
        return self.send(op, request)

    def build(
        self, order: OrderFields, snapshot: OrderSnapshot, op: OperationFields
    ) -> PspRequest | PspResult:
        """The request for `op`, computed once when it is planned."""
        kind = Kind(op.kind)
        psp_id = str(order.psp_order_id)
        lines = [PspLine.from_json(item) for item in op.lines]
        amount = int(op.amount)
        path = order_path(psp_id, _ACTION[kind])
        if kind is Kind.UPDATE_AUTHORIZATION:
            body: dict[str, Any] = {
                "order_amount": amount,
                "order_lines": klarna_order_lines(lines),
            }
            return PspRequest.of("PATCH", path, body, account=self.account)
        if kind is Kind.CAPTURE:
            body = {
                "captured_amount": amount,
                "order_lines": klarna_order_lines(lines),
                # Our operation id: after an unknown outcome, the order's captures show
                # whether this one was made.
                "reference": str(op.id),
            }
            info = _shipping_info(snapshot.shipping)
            if info:
                body["shipping_info"] = [info]
            return PspRequest.of("POST", path, body, account=self.account)
        if kind is Kind.REFUND:
            body = {
                "refunded_amount": amount,
                "order_lines": klarna_order_lines(lines),
                "reference": str(op.id),
            }
            return PspRequest.of("POST", path, body, account=self.account)
        return PspRequest.of("POST", path, account=self.account)

    def send(self, op: OperationFields, request: PspRequest) -> PspResult:
        """Sends the stored request under the operation's key, as it was stored."""
        header = _REFERENCE_HEADER.get(Kind(op.kind))
        return self._call(request, str(op.idempotency_key), header)

    def figures(self, body: dict[str, Any]) -> dict[str, Any]:
        return klarna_figures(body)

    def applied(self, op: OperationFields, body: dict[str, Any]) -> bool:
        return klarna_applied(op, body)

    def _call(
        self, request: PspRequest, key: str | None, reference_header: str | None = None
    ) -> PspResult:
        headers = {"Klarna-Idempotency-Key": key} if key else {}
        if request.body is not None:
            headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            response = self._http.request(
                request.method,
                url_at(self._base, request.path),
                content=request.body.encode() if request.body is not None else None,
                headers=headers,
                auth=self._auth,
            )
        except CLIENT_ERRORS as exc:
            return client_failure(exc)
        elapsed = time.perf_counter() - started
        status = response.status_code
        if status < 300:
            return PspResult(
                Outcome.SUCCEEDED,
                reference=response.headers.get(reference_header) if reference_header else None,
                body=_json(response),
                http_status=status,
                elapsed_seconds=elapsed,
            )
        error = _error(response)
        return error_result(response, error, elapsed)


_ACTION: dict[Kind, str] = {
    Kind.UPDATE_AUTHORIZATION: "authorization",
    Kind.CAPTURE: "captures",
    Kind.REFUND: "refunds",
    Kind.CANCEL: "cancel",
    Kind.RELEASE_AUTHORIZATION: "release-remaining-authorization",
    Kind.EXTEND_AUTHORIZATION: "extend-authorization-time",
}
_REFERENCE_HEADER = {Kind.CAPTURE: "Capture-Id", Kind.REFUND: "Refund-Id"}


def order_path(order_id: str, action: str | None = None) -> str:
    """The one place a Klarna path is built from an order id."""
    path = f"{ORDERS}/{path_segment(order_id)}"
    return f"{path}/{action}" if action else path


def _json(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error(response: httpx.Response) -> PspError:
    data = _json(response)
    messages = data.get("error_messages") or []
    return PspError(
        code=str(data.get("error_code") or f"HTTP_{response.status_code}"),
        message="; ".join(str(m) for m in messages) or response.reason_phrase,
        correlation_id=data.get("correlation_id"),
        http_status=response.status_code,
    )


def _shipping_info(shipping: Shipping | None) -> dict[str, str]:
    if shipping is None:
        return {}
    info = {
        "shipping_company": shipping.carrier,
        "tracking_number": shipping.tracking_number,
        "tracking_uri": shipping.tracking_uri,
        "shipping_method": shipping.shipping_method,
    }
    return {k: v for k, v in info.items() if v}


_KLARNA_STATUS = {
    "AUTHORIZED": PspStatus.AUTHORIZED,
    "PART_CAPTURED": PspStatus.PART_CAPTURED,
    "CAPTURED": PspStatus.CAPTURED,
    "CANCELLED": PspStatus.CANCELLED,
    "EXPIRED": PspStatus.EXPIRED,
    "CLOSED": PspStatus.CLOSED,
}


def klarna_figures(body: dict[str, Any]) -> dict[str, Any]:
    """Klarna's order, in the columns we keep."""
    method = (body.get("initial_payment_method") or {}).get("type")
    lines = []
    for line in body.get("order_lines") or []:
        try:
            lines.append(PspLine.from_json(line).to_json())
        except (KeyError, TypeError, ValueError):
            continue  # a line type we don't model; it only informs the "unauthorized" diff
    return {
        "authorized": int(body.get("order_amount", 0)),
        "captured": int(body.get("captured_amount", 0)),
        "refunded": int(body.get("refunded_amount", 0)),
        "status": _KLARNA_STATUS.get(str(body.get("status")), PspStatus.CLOSED).value,
        "payment_method": method,
        "country": body.get("purchase_country"),
        "expires_at": body.get("expires_at"),
        "lines": lines,
        "currency": body.get("purchase_currency"),
        "movements": _movements(body),
    }


def _movements(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Klarna's captures and refunds: (kind, Klarna's id, the `reference` sent, amount,
    lines), so those no operation of ours made can be told apart."""
    found = []
    for kind, key, id_key, amount_key in (
        (Kind.CAPTURE, "captures", "capture_id", "captured_amount"),
        (Kind.REFUND, "refunds", "refund_id", "refunded_amount"),
    ):
        for item in body.get(key) or []:
            if not isinstance(item, dict):
                continue
            lines = []
            try:
                lines = [PspLine.from_json(line) for line in item.get("order_lines") or []]
                amount = int(item.get(amount_key) or 0)
            except (KeyError, TypeError, ValueError):
                lines, amount = [], 0
            found.append(
                {
                    "kind": kind,
                    "id": str(item.get(id_key) or ""),
                    "reference": str(item.get("reference") or ""),
                    "amount": amount,
                    "lines": lines,
                }
            )
    return found


def klarna_applied(op: OperationFields, body: dict[str, Any]) -> bool:
    """Whether Klarna's order shows the effect of `op` (after an unknown outcome)."""
    kind = Kind(op.kind)
    # What was sent is what to look for: the stored request, when there is one.
    stored = PspRequest.from_json(op.request).json_body() if op.request else {}
    reference = str(stored.get("reference") or op.id)
    if kind is Kind.CAPTURE:
        return any(c.get("reference") == reference for c in body.get("captures") or [])
    if kind is Kind.REFUND:
        return any(r.get("reference") == reference for r in body.get("refunds") or [])
    if kind is Kind.UPDATE_AUTHORIZATION:
        # Never proven by a read: a basket the order held before (2100 → 1650 → 2100)
        # is what a read lagging the last confirmed update shows, total and lines
        # alike, and taken as made it leaves the service trusting an authorization
        # Klarna does not hold (§4: Klarna's figures are the authorization). The update
        # sets the whole basket, so sending it again under its key is safe: Klarna
        # replays the answer of one it made.
        return False
    if kind is Kind.CANCEL:
        return body.get("status") == "CANCELLED"
    if kind is Kind.RELEASE_AUTHORIZATION:
        return body.get("order_amount") == body.get("captured_amount")
    # Extending twice only moves the expiry once more; Klarna's key replay covers it.
    return False
