"""Adyen modifications: Checkout API v71, or classic Pal v68 for captures and refunds.

Adyen answers a modification with `received` and settles it later in a notification
(workers/adyen_inbox.py), so a successful call here is `Outcome.RECEIVED` carrying the
modification's own pspReference, by which the notification is matched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import httpx

from domain.lines import PspLine, adyen_line_items, lines_total, openinvoice_data
from domain.planner import Kind
from domain.snapshot import AdyenPayment, OrderSnapshot
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

CapturedLines = Callable[[str], Sequence[PspLine]]
"""The lines captured so far for an order (by our order id), captures merged per line."""


def psp_idempotency_key(op: OperationFields) -> str:
    """The Idempotency-Key sent for `op`: its stored key, plus the generation once a
    notification failed it (Adyen would replay the failed request's answer otherwise)."""
    generation = int(op.key_generation or 0)
    key = str(op.idempotency_key)
    return key if generation == 0 else f"{key}.{generation}"


class AdyenClient:
    """One instance per process, over the process's pooled httpx client."""

    name = "adyen"
    # Adyen has no order to read; the idempotency key makes a resend safe instead.
    can_read = False

    def __init__(
        self,
        http: httpx.Client,
        *,
        checkout_url: str | None,
        api_key: str,
        merchant_account: str | None,
        modifications_api: Literal["checkout", "classic"] = "checkout",
        pal_url: str | None = None,
        captured_lines: CapturedLines | None = None,
        account: str | None = None,
    ) -> None:
        self._http = http
        self._checkout = checkout_url.rstrip("/") if checkout_url else None
        self._pal = pal_url.rstrip("/") if pal_url else None
        self._api_key = api_key
        self._merchant_account = merchant_account
        self._classic = modifications_api == "classic"
        self._captured_lines = captured_lines
        # The merchant's Adyen account this client speaks for (contract §6): stamped on
        # every request it freezes.
        self.account = account

    def increase_allowed(self, payment_method: str | None, country: str | None) -> bool:
        # The increase table is Klarna's own; behind Adyen the payment method is not
        # known here, so Adyen is asked and its AUTHORISATION_ADJUSTMENT decides.
        return True

    def check(self) -> PspResult:
        """A harmless read proving the API key: the payment methods of the merchant
        account (Checkout `POST /paymentMethods`), which moves no money."""
        if self._checkout is None:
            return _refused("not_configured", "no Checkout URL")
        body = PspRequest.of("POST", "/paymentMethods", {"merchantAccount": self._merchant_account})
        return self._post(self._checkout + body.path, body.body or "{}", None, read=True)

    # -- the Provider protocol ------------------------------------------------------

    def read(self, order: OrderFields) -> PspResult:
        return _refused("unsupported", "Adyen payments cannot be read; notifications report")

    def figures(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    def applied(self, op: OperationFields, body: dict[str, Any]) -> bool:
        return False

    def execute(
        self, order: OrderFields, snapshot: OrderSnapshot, op: OperationFields
    ) -> PspResult:
        request = self.build(order, snapshot, op)
        if isinstance(request, PspResult):
            return request
        return self.send(op, request)

    def send(self, op: OperationFields, request: PspRequest) -> PspResult:
        """Sends the stored request; only the key moves on with the key generation."""
        base = self._pal if request.api == "classic" else self._checkout
        if base is None:
            name = "ADYEN_PAL_URL" if request.api == "classic" else "ADYEN_CHECKOUT_URL"
            return _refused("not_configured", f"{name} is not set")
        return self._post(base + request.path, request.body or "{}", psp_idempotency_key(op))

    # -- building requests ----------------------------------------------------------

    def build(
        self, order: OrderFields, snapshot: OrderSnapshot, op: OperationFields
    ) -> PspRequest | PspResult:
        """The request for `op` (computed once, when it is planned), or a rejection
        when it cannot be sent at all."""
        kind = Kind(op.kind)
        payment = str(order.psp_order_id)
        currency = snapshot.currency
        amount = int(op.amount)
        lines = [PspLine.from_json(item) for item in op.lines]
        merchant = self._merchant(snapshot)
        if merchant is None:
            return _refused(
                "merchant_account_missing",
                "no merchant_account in the payment and no ADYEN_MERCHANT_ACCOUNT",
            )
        reference = str(op.id)
        if kind is Kind.RELEASE_AUTHORIZATION:
            # v71 offers no "release the rest": the authorization is updated down to
            # what was captured, with every captured line, as for any amount update.
            if self._captured_lines is None:
                return _refused("unsupported", "releasing needs the captured lines")
            lines = list(self._captured_lines(str(order.id)))
            if lines_total(lines) != amount_after_release(order):
                return _refused(
                    "line_sum_mismatch", "the captured lines do not sum to the captured amount"
                )
            amount = lines_total(lines)
            kind = Kind.UPDATE_AUTHORIZATION
        if kind in (Kind.UPDATE_AUTHORIZATION, Kind.CAPTURE, Kind.REFUND):
            mismatch = _line_sum_error(lines, amount)
            if mismatch is not None:
                return mismatch
        if kind is Kind.EXTEND_AUTHORIZATION:
            return _refused("unsupported", "Adyen authorizations cannot be extended")
        if self._classic and kind in (Kind.CAPTURE, Kind.REFUND, Kind.CANCEL):
            return self._classic_request(
                kind, payment, merchant, reference, amount, currency, lines
            )
        if self._checkout is None:
            return _refused("not_configured", "ADYEN_CHECKOUT_URL is not set")
        body: dict[str, Any] = {"merchantAccount": merchant, "reference": reference}
        if kind is Kind.CANCEL:
            return PspRequest.of(
                "POST", checkout_path(payment, "cancels"), body, "checkout", account=self.account
            )
        body["amount"] = {"currency": currency, "value": amount}
        body["lineItems"] = adyen_line_items(lines)
        action = {
            Kind.UPDATE_AUTHORIZATION: "amountUpdates",
            Kind.CAPTURE: "captures",
            Kind.REFUND: "refunds",
        }[kind]
        return PspRequest.of(
            "POST", checkout_path(payment, action), body, "checkout", account=self.account
        )

    def _classic_request(
        self,
        kind: Kind,
        payment: str,
        merchant: str,
        reference: str,
        amount: int,
        currency: str,
        lines: Sequence[PspLine],
    ) -> PspRequest | PspResult:
        if self._pal is None:
            return _refused("not_configured", "ADYEN_PAL_URL is not set")
        body: dict[str, Any] = {
            "merchantAccount": merchant,
            "originalReference": payment,
            "reference": reference,
        }
        if kind is Kind.CANCEL:
            return PspRequest.of("POST", "/cancel", body, "classic", account=self.account)
        body["modificationAmount"] = {"currency": currency, "value": amount}
        body["additionalData"] = openinvoice_data(lines, currency)
        action = "capture" if kind is Kind.CAPTURE else "refund"
        return PspRequest.of("POST", f"/{action}", body, "classic", account=self.account)

    def _merchant(self, snapshot: OrderSnapshot) -> str | None:
        payment = snapshot.payment
        if isinstance(payment, AdyenPayment) and payment.merchant_account:
            return payment.merchant_account
        return self._merchant_account

    # -- the call -------------------------------------------------------------------

    def _post(self, url: str, body: str, key: str | None, *, read: bool = False) -> PspResult:
        headers = {"X-API-Key": self._api_key, "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        started = time.perf_counter()
        try:
            response = self._http.post(url, content=body.encode(), headers=headers)
        except CLIENT_ERRORS as exc:
            return client_failure(exc)
        elapsed = time.perf_counter() - started
        status = response.status_code
        data = _json(response)
        if status < 300 and read:
            return PspResult(
                Outcome.SUCCEEDED, body=data, http_status=status, elapsed_seconds=elapsed
            )
        if status < 300:
            reference = data.get("pspReference")
            # Checkout says "status": "received"; classic says "[capture-received]" etc.
            received = data.get("status") == "received" or str(data.get("response", "")).endswith(
                "-received]"
            )
            if received and isinstance(reference, str) and reference:
                return PspResult(
                    Outcome.RECEIVED,
                    reference=reference,
                    body=data,
                    http_status=status,
                    elapsed_seconds=elapsed,
                )
            error = PspError(
                "unexpected_response",
                "Adyen answered without a received status and pspReference",
                None,
                status,
            )
            return PspResult(
                Outcome.REJECTED, error=error, http_status=status, elapsed_seconds=elapsed
            )
        error = PspError(
            code=str(data.get("errorCode") or f"HTTP_{status}"),
            message=str(data.get("message") or response.reason_phrase),
            correlation_id=data.get("pspReference"),
            http_status=status,
        )
        return error_result(response, error, elapsed)


def checkout_path(payment: str, action: str) -> str:
    """The one place a Checkout modification path is built from a payment's reference."""
    return f"/payments/{path_segment(payment)}/{action}"


def amount_after_release(order: OrderFields) -> int:
    return int(order.captured_amount)


def _line_sum_error(lines: Sequence[PspLine], amount: int) -> PspResult | None:
    # domain/lines.py guarantees this; checked again because Klarna (behind Adyen)
    # refuses the whole request when the items miss the amount by a cent.
    items = adyen_line_items(lines)
    total = sum(int(item["quantity"]) * int(item["amountIncludingTax"]) for item in items)
    if total == amount:
        return None
    return _refused("line_sum_mismatch", f"line items sum to {total}, not {amount}")


def _refused(code: str, message: str) -> PspResult:
    return PspResult(Outcome.REJECTED, error=PspError(code, message))


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
