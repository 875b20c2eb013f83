"""Klarna Order Management v1."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from domain.lines import PspLine, klarna_order_lines, same_lines
from domain.planner import Kind, PspStatus
from domain.snapshot import OrderSnapshot, Shipping
from workers.psp import (
    Outcome,
    PspError,
    PspResult,
    is_transient_status,
    retry_after_seconds,
    transport_failure,
)

ORDERS = "/ordermanagement/v1/orders"


class KlarnaClient:
    """One instance per process, over the process's pooled httpx client."""

    name = "klarna"
    can_read = True

    def __init__(self, http: httpx.Client, base_url: str, username: str, password: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._auth = httpx.BasicAuth(username, password)

    def get_order(self, order_id: str) -> PspResult:
        return self._call("GET", f"{ORDERS}/{order_id}", None, None)

    # -- the Provider protocol ------------------------------------------------------

    def read(self, order: dict[str, Any]) -> PspResult:
        return self.get_order(order["psp_order_id"])

    def execute(
        self, order: dict[str, Any], snapshot: OrderSnapshot, op: dict[str, Any]
    ) -> PspResult:
        kind = Kind(op["kind"])
        psp_id, key = order["psp_order_id"], op["idempotency_key"]
        lines = [PspLine.from_json(item) for item in op["lines"]]
        amount = int(op["amount"])
        if kind is Kind.UPDATE_AUTHORIZATION:
            return self.update_authorization(psp_id, amount, lines, key)
        if kind is Kind.CAPTURE:
            return self.capture(psp_id, amount, lines, key, str(op["id"]), snapshot.shipping)
        if kind is Kind.REFUND:
            return self.refund(psp_id, amount, lines, key, str(op["id"]))
        if kind is Kind.CANCEL:
            return self.cancel(psp_id, key)
        if kind is Kind.RELEASE_AUTHORIZATION:
            return self.release_remaining_authorization(psp_id, key)
        return self.extend_authorization_time(psp_id, key)

    def figures(self, body: dict[str, Any]) -> dict[str, Any]:
        return klarna_figures(body)

    def applied(self, op: dict[str, Any], body: dict[str, Any]) -> bool:
        return klarna_applied(op, body)

    def update_authorization(
        self, order_id: str, amount: int, lines: Sequence[PspLine], key: str
    ) -> PspResult:
        body = {"order_amount": amount, "order_lines": klarna_order_lines(lines)}
        return self._call("PATCH", f"{ORDERS}/{order_id}/authorization", body, key)

    def capture(
        self,
        order_id: str,
        amount: int,
        lines: Sequence[PspLine],
        key: str,
        reference: str,
        shipping: Shipping | None,
    ) -> PspResult:
        body: dict[str, Any] = {
            "captured_amount": amount,
            "order_lines": klarna_order_lines(lines),
            # Our operation id: after an unknown outcome, the order's captures show
            # whether this one was made.
            "reference": reference,
        }
        info = _shipping_info(shipping)
        if info:
            body["shipping_info"] = [info]
        return self._call("POST", f"{ORDERS}/{order_id}/captures", body, key, "Capture-Id")

    def refund(
        self, order_id: str, amount: int, lines: Sequence[PspLine], key: str, reference: str
    ) -> PspResult:
        body = {
            "refunded_amount": amount,
            "order_lines": klarna_order_lines(lines),
            "reference": reference,
        }
        return self._call("POST", f"{ORDERS}/{order_id}/refunds", body, key, "Refund-Id")

    def cancel(self, order_id: str, key: str) -> PspResult:
        return self._call("POST", f"{ORDERS}/{order_id}/cancel", None, key)

    def release_remaining_authorization(self, order_id: str, key: str) -> PspResult:
        return self._call("POST", f"{ORDERS}/{order_id}/release-remaining-authorization", None, key)

    def extend_authorization_time(self, order_id: str, key: str) -> PspResult:
        return self._call("POST", f"{ORDERS}/{order_id}/extend-authorization-time", None, key)

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        key: str | None,
        reference_header: str | None = None,
    ) -> PspResult:
        headers = {"Klarna-Idempotency-Key": key} if key else {}
        started = time.perf_counter()
        try:
            response = self._http.request(
                method, self._base + path, json=body, headers=headers, auth=self._auth
            )
        except httpx.HTTPError as exc:
            return transport_failure(exc)
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
        if is_transient_status(status):
            return PspResult(
                Outcome.TRANSIENT,
                error=error,
                retry_after=retry_after_seconds(response),
                # 429 means Klarna turned the request away; a 5xx may come after the effect.
                maybe_applied=status != 429,
                http_status=status,
                elapsed_seconds=elapsed,
            )
        return PspResult(Outcome.REJECTED, error=error, http_status=status, elapsed_seconds=elapsed)


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
    }


def klarna_applied(op: dict[str, Any], body: dict[str, Any]) -> bool:
    """Whether Klarna's order shows the effect of `op` (after an unknown outcome)."""
    kind = Kind(op["kind"])
    reference = str(op["id"])
    if kind is Kind.CAPTURE:
        return any(c.get("reference") == reference for c in body.get("captures") or [])
    if kind is Kind.REFUND:
        return any(r.get("reference") == reference for r in body.get("refunds") or [])
    if kind is Kind.UPDATE_AUTHORIZATION:
        # The lines too: an update may keep the amount and change only the lines.
        held = _lines(klarna_figures(body)["lines"])
        return int(body.get("order_amount", -1)) == int(op["amount"]) and same_lines(
            held, _lines(op["lines"])
        )
    if kind is Kind.CANCEL:
        return body.get("status") == "CANCELLED"
    if kind is Kind.RELEASE_AUTHORIZATION:
        return body.get("order_amount") == body.get("captured_amount")
    # Extending twice only moves the expiry once more; Klarna's key replay covers it.
    return False


def _lines(data: Sequence[dict[str, Any]]) -> list[PspLine]:
    return [PspLine.from_json(item) for item in data]
