"""A simulated Adyen: Checkout v71 modifications, classic Pal v68, and notifications.

Written from Adyen's documentation and independent of the service's domain code, like
the Klarna sandbox. Every modification is answered `received`; its outcome follows as an
HMAC-signed notification POSTed (with Basic auth) to the configured webhook URL shortly
after, from a background thread that retries until it gets a 2xx.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from devrig.sandbox.runtime import ApiCall, Outcome, SandboxRuntime, iso
from integrations.adyen.hmac import sign

log = logging.getLogger(__name__)

PROVIDER = "adyen"  # Checkout v71 requests (spec-checked against the v71 file)
CLASSIC = "adyen_classic"  # Pal v68 requests (spec-checked against the v68 file)
IDEMPOTENCY_HEADER = "Idempotency-Key"
CHECKOUT = "/v71"
CHECKOUT_PREFIX = f"{CHECKOUT}/payments"
# What the single X-API-Key (no merchant accounts configured) may act for.
ANY_MERCHANT = "*"
PAL_PREFIX = "/pal/servlet/Payment/v68"


def new_reference() -> str:
    """Adyen's 16-character pspReference."""
    return uuid.uuid4().hex[:16].upper()


def adyen_error(status: int, code: str, messages: list[str]) -> Outcome:
    body = {
        "status": status,
        "errorCode": code,
        "message": "; ".join(messages),
        "errorType": "validation" if status < 500 else "internal",
        "pspReference": new_reference(),
    }
    return Outcome(status, body)


class AdyenRejectionError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.outcome = adyen_error(status, code, [message])


def _invalid(message: str, code: str = "137") -> AdyenRejectionError:
    return AdyenRejectionError(422, code, message)


# --- notifications ------------------------------------------------------------------


@dataclass
class NotifierConfig:
    url: str | None = None
    hmac_key: str | None = None
    # Per merchant account (merchantAccountCode → key); others are signed with hmac_key.
    hmac_keys: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = None
    delay_seconds: float = 0.05
    attempts: int = 6


class Notifier:
    """Delivers notifications from a background thread, in order, retrying until 2xx.

    Test switches: `duplicate` sends every notification twice (as two requests);
    `hold` keeps them back until `release`, which may deliver them in reverse.
    """

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config
        self.duplicate = False
        self.hold = False
        self._held: list[dict[str, Any]] = []
        self._queue: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        self._log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def notify(self, item: dict[str, Any]) -> None:
        with self._lock:
            if self.hold:
                self._held.append(item)
                return
            self._enqueue(item)

    def release(self, *, reverse: bool = False) -> int:
        with self._lock:
            held, self._held = self._held, []
            self.hold = False
            for item in reversed(held) if reverse else held:
                self._enqueue(item)
            return len(held)

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._log]

    def reset(self) -> None:
        with self._lock:
            self.duplicate = self.hold = False
            self._held.clear()
            self._log.clear()

    def _enqueue(self, item: dict[str, Any]) -> None:
        due = time.monotonic() + self.config.delay_seconds
        for _ in range(2 if self.duplicate else 1):
            self._queue.put((due, item))
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="adyen-notifier", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while True:
                due, item = self._queue.get()
                time.sleep(max(0.0, due - time.monotonic()))
                self._deliver(http, item)

    def _deliver(self, http: httpx.Client, item: dict[str, Any]) -> None:
        entry = {
            "eventCode": item["eventCode"],
            "pspReference": item["pspReference"],
            "originalReference": item.get("originalReference"),
            "success": item["success"],
            "amount": item["amount"],
            "statuses": [],
        }
        with self._lock:
            self._log.append(entry)
        config = self.config
        if not config.url:
            entry["statuses"].append("no_webhook_url")
            return
        signed = dict(item)
        key = config.hmac_keys.get(str(item.get("merchantAccountCode")), config.hmac_key)
        if key:
            signed["additionalData"] = {
                **item.get("additionalData", {}),
                "hmacSignature": sign(item, key),
            }
        body = {"live": "false", "notificationItems": [{"NotificationRequestItem": signed}]}
        auth = (config.username or "", config.password or "")
        for attempt in range(config.attempts):
            try:
                status: int | str = http.post(config.url, json=body, auth=auth).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            entry["statuses"].append(status)
            if isinstance(status, int) and 200 <= status < 300:
                return
            time.sleep(min(2.0, 0.1 * 2**attempt))
        log.warning("notification %s %s not delivered", item["eventCode"], item["pspReference"])


# --- payments ----------------------------------------------------------------------------


@dataclass
class AdyenPayment:
    psp_reference: str
    merchant_account: str
    currency: str
    authorised: int
    merchant_reference: str
    line_items: list[Any] = field(default_factory=list)
    captured: int = 0
    refunded: int = 0
    status: str = "authorised"  # or "cancelled", "refused"
    modifications: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "pspReference": self.psp_reference,
            "merchantAccount": self.merchant_account,
            "merchantReference": self.merchant_reference,
            "currency": self.currency,
            "authorised": self.authorised,
            "captured": self.captured,
            "refunded": self.refunded,
            "status": self.status,
            "lineItems": self.line_items,
            "modifications": self.modifications,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _amount(body: Any, key: str, currency: str) -> int:
    amount = body.get(key) if isinstance(body, dict) else None
    if not isinstance(amount, dict) or not _is_int(amount.get("value")):
        raise _invalid(f"{key}.value is required", "100")
    if amount.get("currency") != currency:
        raise _invalid(f"{key}.currency must be {currency}, the authorisation's", "104")
    value = int(amount["value"])
    if value < 0:
        raise _invalid(f"{key}.value must not be negative")
    return value


def line_items_total(items: Any) -> int:
    if not isinstance(items, list) or not items:
        raise _invalid("lineItems are required for Klarna", "LINE_ITEMS")
    total = 0
    for index, item in enumerate(items):
        if not (
            isinstance(item, dict)
            and _is_int(item.get("quantity"))
            and _is_int(item.get("amountIncludingTax"))
        ):
            raise _invalid(
                f"lineItems[{index}] needs quantity and amountIncludingTax", "LINE_ITEMS"
            )
        total += item["quantity"] * item["amountIncludingTax"]
    return total


def openinvoice_total(data: Any) -> tuple[int, list[dict[str, str]]]:
    if not isinstance(data, dict) or "openinvoicedata.numberOfLines" not in data:
        raise _invalid("additionalData.openinvoicedata lines are required for Klarna", "LINE_ITEMS")
    total = 0
    lines = []
    for number in range(1, int(data["openinvoicedata.numberOfLines"]) + 1):
        prefix = f"openinvoicedata.line{number}."
        try:
            count = int(data[prefix + "numberOfItems"])
            unit = int(data[prefix + "itemAmount"]) + int(data[prefix + "itemVatAmount"])
        except (KeyError, ValueError):
            raise _invalid(f"openinvoicedata.line{number} is incomplete", "LINE_ITEMS") from None
        total += count * unit
        lines.append({k.removeprefix(prefix): v for k, v in data.items() if k.startswith(prefix)})
    return total, lines


class AdyenState:
    """Adyen's payments in memory, with the rules each modification must meet.

    Operations run under the runtime's lock and never await.
    """

    def __init__(
        self,
        runtime: SandboxRuntime,
        *,
        api_key: str,
        notifier: Notifier,
        merchants: Mapping[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self._api_key = api_key
        # Merchant account code → its own API key. With none, `api_key` serves every
        # merchant account; with some, a key serves only its own account (else 401).
        self.merchants = dict(merchants or {})
        self.notifier = notifier
        self.payments: dict[str, AdyenPayment] = {}
        runtime.on_reset(self._reset)

    def _reset(self) -> None:
        self.payments.clear()
        self.notifier.reset()

    def key_owner(self, request: Request) -> str | None:
        """The merchant account the request's X-API-Key belongs to (ANY_MERCHANT for the
        single key), or None."""
        given = request.headers.get("x-api-key", "").encode()
        owner = None
        for code, key in self.merchants.items():
            if secrets.compare_digest(given, key.encode()):
                owner = code
        if not self.merchants and secrets.compare_digest(given, self._api_key.encode()):
            owner = ANY_MERCHANT
        return owner

    def payment_methods(self, call: ApiCall, owner: str | None) -> Outcome:
        """Checkout /paymentMethods: a read that moves nothing (`accounts check`)."""
        body = call.body if isinstance(call.body, dict) else {}
        if owner not in (ANY_MERCHANT, body.get("merchantAccount")):
            raise AdyenRejectionError(401, "000", "Not allowed for this merchant account")
        return Outcome(200, {"paymentMethods": [{"name": "Klarna", "type": "klarna"}]})

    def payment(self, psp_reference: str | None) -> AdyenPayment:
        payment = self.payments.get(psp_reference or "")
        if payment is None:
            raise _invalid("Original pspReference required: no such payment", "167")
        return payment

    def create_payment(self, data: Any) -> AdyenPayment:
        if not isinstance(data, dict):
            raise _invalid("a JSON object is required", "100")
        currency = data.get("currency", "EUR")
        value: Any = data.get("value")
        if not _is_int(value) or value < 0:
            raise _invalid("value is required and must be a non-negative integer", "100")
        items = data.get("lineItems") or []
        if items and line_items_total(items) != value:
            raise _invalid("lineItems do not sum to value", "LINE_ITEMS")
        # `"refused": true`: the issuer declines; AUTHORISATION is notified with
        # success false, nothing is authorised and every modification is refused.
        refused = bool(data.get("refused", False))
        payment = AdyenPayment(
            psp_reference=str(data.get("pspReference") or new_reference()),
            merchant_account=str(data.get("merchantAccount") or "OrdersyncDev"),
            currency=str(currency),
            authorised=0 if refused else int(value),
            merchant_reference=str(data.get("merchantReference") or "shop-order"),
            line_items=list(items),
            status="refused" if refused else "authorised",
        )
        with self.runtime.lock:
            if payment.psp_reference in self.payments:
                raise AdyenRejectionError(409, "CONFLICT", "payment exists")
            self.payments[payment.psp_reference] = payment
        if data.get("notify", True):
            self._notify(
                payment,
                "AUTHORISATION",
                payment.psp_reference,
                int(value),
                success=not refused,
                original=False,
                reference=payment.merchant_reference,
            )
        return payment

    # -- modifications --

    def modify(
        self, call: ApiCall, kind: str, classic: bool, owner: str | None = ANY_MERCHANT
    ) -> Outcome:
        body = call.body if isinstance(call.body, dict) else {}
        payment = self.payment(call.order_id)
        if owner not in (ANY_MERCHANT, payment.merchant_account):
            # Another merchant account's API key: as Adyen, not allowed.
            raise AdyenRejectionError(401, "000", "Not allowed for this merchant account")
        if body.get("merchantAccount") != payment.merchant_account:
            raise _invalid("Invalid Merchant Account", "901")
        if payment.status != "authorised":
            raise _invalid(f"the payment is {payment.status}", "167")
        reference = body.get("reference") or ""
        modification = new_reference()
        if kind == "cancel":
            value = 0
            if payment.captured > 0:
                raise _invalid("a captured payment cannot be cancelled; refund instead")
        else:
            value = _amount(body, "modificationAmount" if classic else "amount", payment.currency)
            if classic:
                total, lines = openinvoice_total(body.get("additionalData"))
            else:
                total, lines = line_items_total(body.get("lineItems")), body["lineItems"]
            if total != value:
                raise _invalid(f"the line items sum to {total}, not {value}", "LINE_ITEMS")
        event, success, effect = self._apply(call, payment, kind, value)
        if effect:
            self.runtime.ledger.record(
                provider=PROVIDER,
                order_id=payment.psp_reference,
                operation=effect,
                amount=value,
                idempotency_key=call.idempotency_key,
                lines=[] if kind == "cancel" else lines,
                reference=reference,
                psp_reference=modification,
                api="classic" if classic else "checkout",
            )
        payment.modifications.append(
            {
                "pspReference": modification,
                "kind": kind,
                "amount": value,
                "event": event,
                "success": success,
                "reference": reference,
                "at": iso(self.runtime.clock()),
            }
        )
        self._notify(
            payment, event, modification, value, success=success, original=True, reference=reference
        )
        if classic:
            return Outcome(200, {"pspReference": modification, "response": f"[{kind}-received]"})
        answer: dict[str, Any] = {
            "merchantAccount": payment.merchant_account,
            "paymentPspReference": payment.psp_reference,
            "pspReference": modification,
            "reference": reference,
            "status": "received",
        }
        if kind != "cancel":
            answer["amount"] = {"currency": payment.currency, "value": value}
        return Outcome(201, answer)

    def _apply(
        self, call: ApiCall, payment: AdyenPayment, kind: str, value: int
    ) -> tuple[str, bool, str | None]:
        """(event code, success, ledger operation or None) after applying the rules."""
        faults = self.runtime.faults
        if kind == "amountUpdate":
            if value < payment.captured:
                raise _invalid(f"the amount {value} is below the captured {payment.captured}")
            increase = value > payment.authorised
            if increase and faults.reject_increase(call.method, call.path):
                return "AUTHORISATION_ADJUSTMENT", False, None
            payment.authorised = value
            return "AUTHORISATION_ADJUSTMENT", True, "update_authorization"
        if kind == "capture":
            if value > payment.authorised - payment.captured:
                raise _invalid(
                    f"the capture {value} exceeds the remaining authorisation "
                    f"{payment.authorised - payment.captured}"
                )
            if faults.take("fail_next_capture", call.method, call.path):
                return "CAPTURE_FAILED", True, None
            payment.captured += value
            return "CAPTURE", True, "capture"
        if kind == "refund":
            if value > payment.captured - payment.refunded:
                raise _invalid(
                    f"the refund {value} exceeds the captured and not refunded "
                    f"{payment.captured - payment.refunded}"
                )
            payment.refunded += value
            return "REFUND", True, "refund"
        payment.status = "cancelled"
        return "CANCELLATION", True, "cancel"

    def _notify(
        self,
        payment: AdyenPayment,
        event: str,
        psp_reference: str,
        value: int,
        *,
        success: bool,
        original: bool,
        reference: str,
    ) -> None:
        item: dict[str, Any] = {
            "amount": {"currency": payment.currency, "value": value},
            "eventCode": event,
            "eventDate": iso(self.runtime.clock()),
            "merchantAccountCode": payment.merchant_account,
            "merchantReference": reference,
            "paymentMethod": "klarna",
            "pspReference": psp_reference,
            "reason": ""
            if success
            else "Refused by Klarna"
            if event == "AUTHORISATION_ADJUSTMENT"
            else "Refused",
            "success": "true" if success else "false",
        }
        if original:
            item["originalReference"] = payment.psp_reference
        self.notifier.notify(item)


# --- HTTP ---------------------------------------------------------------------------------

_Endpoint = Callable[[Request], Awaitable[Response]]


def _endpoint(state: AdyenState, kind: str, classic: bool) -> _Endpoint:
    async def endpoint(request: Request) -> Response:
        if classic:
            raw = await request.body()  # Starlette keeps it for the runtime to read again
            try:
                payment = json.loads(raw).get("originalReference")
            except (ValueError, AttributeError):
                payment = None
        else:
            payment = request.path_params["payment"]

        owner = state.key_owner(request)

        def run(call: ApiCall) -> Outcome:
            try:
                return state.modify(call, kind, classic, owner)
            except AdyenRejectionError as rejection:
                return rejection.outcome

        return await state.runtime.handle(
            request,
            provider=CLASSIC if classic else PROVIDER,
            order_id=payment if isinstance(payment, str) else None,
            operation=run,
            errors=adyen_error,
            authorized=owner is not None,
            idempotency_header=IDEMPOTENCY_HEADER,
            account=owner,
        )

    return endpoint


def _payment_methods_endpoint(state: AdyenState) -> _Endpoint:
    async def endpoint(request: Request) -> Response:
        owner = state.key_owner(request)

        def run(call: ApiCall) -> Outcome:
            try:
                return state.payment_methods(call, owner)
            except AdyenRejectionError as rejection:
                return rejection.outcome

        return await state.runtime.handle(
            request,
            provider=PROVIDER,
            order_id=None,
            operation=run,
            errors=adyen_error,
            authorized=owner is not None,
            idempotency_header=IDEMPOTENCY_HEADER,
            account=owner,
        )

    return endpoint


def routes(state: AdyenState) -> list[BaseRoute]:
    base = f"{CHECKOUT_PREFIX}/{{payment}}"
    return [
        Route(f"{CHECKOUT}/paymentMethods", _payment_methods_endpoint(state), methods=["POST"]),
        Route(f"{base}/amountUpdates", _endpoint(state, "amountUpdate", False), methods=["POST"]),
        Route(f"{base}/captures", _endpoint(state, "capture", False), methods=["POST"]),
        Route(f"{base}/refunds", _endpoint(state, "refund", False), methods=["POST"]),
        Route(f"{base}/cancels", _endpoint(state, "cancel", False), methods=["POST"]),
        Route(f"{PAL_PREFIX}/capture", _endpoint(state, "capture", True), methods=["POST"]),
        Route(f"{PAL_PREFIX}/refund", _endpoint(state, "refund", True), methods=["POST"]),
        Route(f"{PAL_PREFIX}/cancel", _endpoint(state, "cancel", True), methods=["POST"]),
    ]


def setup_routes(state: AdyenState) -> list[BaseRoute]:
    """Test setup under /_sandbox/adyen."""

    async def create(request: Request) -> Response:
        try:
            data = await request.json()
        except ValueError:
            data = None
        try:
            payment = state.create_payment(data)
        except AdyenRejectionError as rejection:
            return JSONResponse(rejection.outcome.body, status_code=rejection.outcome.status)
        return JSONResponse(payment.to_json(), status_code=201)

    async def show(request: Request) -> Response:
        with state.runtime.lock:
            payment = state.payments.get(request.path_params["payment"])
            if payment is None:
                return JSONResponse({"error": "not_found"}, status_code=404)
            return JSONResponse(payment.to_json())

    async def modes(request: Request) -> Response:
        data = await request.json() if request.method == "POST" else {}
        notifier = state.notifier
        if isinstance(data, Mapping):
            notifier.duplicate = bool(data.get("duplicate", notifier.duplicate))
            notifier.hold = bool(data.get("hold", notifier.hold))
        return JSONResponse(
            {
                "duplicate": notifier.duplicate,
                "hold": notifier.hold,
                "deliveries": notifier.deliveries(),
            }
        )

    async def release(request: Request) -> Response:
        data = await request.json() if await request.body() else {}
        reverse = bool(data.get("reverse")) if isinstance(data, Mapping) else False
        return JSONResponse({"released": state.notifier.release(reverse=reverse)})

    base = "/_sandbox/adyen"
    return [
        Route(f"{base}/payments", create, methods=["POST"]),
        Route(f"{base}/payments/{{payment}}", show, methods=["GET"]),
        Route(f"{base}/notifications", modes, methods=["GET", "POST"]),
        Route(f"{base}/notifications/release", release, methods=["POST"]),
    ]
