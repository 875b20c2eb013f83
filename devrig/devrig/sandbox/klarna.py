"""A simulated Klarna Order Management API v1, written from Klarna's documentation.

Deliberately independent of the service's own domain code: if both shared a rule,
a bug in that rule could never be caught by testing one against the other.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from devrig.sandbox.runtime import ApiCall, Outcome, SandboxRuntime, iso

PROVIDER = "klarna"
IDEMPOTENCY_HEADER = "Klarna-Idempotency-Key"
API_PREFIX = "/ordermanagement/v1/orders"
# Markets other than the default one are served under /klarna/<market>.
MARKET_PREFIX = "/klarna"
DEFAULT_MARKET = "eu"
AUTHORIZATION_EXTENSION = timedelta(days=28)

AUTHORIZED = "AUTHORIZED"
PART_CAPTURED = "PART_CAPTURED"
CAPTURED = "CAPTURED"
CANCELLED = "CANCELLED"
EXPIRED = "EXPIRED"
CLOSED = "CLOSED"
_OPEN = frozenset({AUTHORIZED, PART_CAPTURED})

# From Klarna's "Update order amount" page: who may be granted more than was authorized.
_INCREASE_ANYWHERE_BUT_CH = frozenset({"INVOICE", "INVOICE_BUSINESS", "ACCOUNT", "DIRECT_DEBIT"})
_INCREASE_MARKETS = {
    "FIXED_AMOUNT": frozenset({"SE", "NO", "FI", "DK", "AT", "DE"}),
    "DEFERRED_INTEREST": frozenset({"US"}),
}
PAYMENT_METHODS = frozenset(
    {
        "ACCOUNT", "ALTERNATIVE_PAYMENT_METHOD", "BANK_TRANSFER", "CARD", "DEFERRED_INTEREST",
        "DIRECT_DEBIT", "FIXED_AMOUNT_BY_CARD", "FIXED_AMOUNT", "FIXED_SUM_CREDIT",
        "INVOICE_BUSINESS", "INVOICE", "MOBILEPAY", "PAY_BY_CARD", "PAY_IN_X",
        "PAY_LATER_BY_CARD", "PAY_LATER_IN_PARTS", "SWISH", "OTHER",
    }
)  # fmt: skip
_NEGATIVE_LINE_TYPES = frozenset({"discount", "gift_card", "store_credit"})
_TAX_TOLERANCE = 1


def market_of(base_url: str) -> str | None:
    """The market a base URL names on the sandbox (`…/klarna/<market>`), or None."""
    path = urlsplit(base_url).path.rstrip("/")
    head, _, market = path.rpartition("/")
    return market if head.endswith(MARKET_PREFIX) and market else None


def increase_allowed(payment_method: str, country: str) -> bool:
    country = country.upper()
    if payment_method in _INCREASE_ANYWHERE_BUT_CH:
        return country != "CH"
    return country in _INCREASE_MARKETS.get(payment_method, frozenset())


def klarna_error(status: int, code: str, messages: list[str]) -> Outcome:
    body = {"error_code": code, "error_messages": messages, "correlation_id": str(uuid.uuid4())}
    return Outcome(status, body)


class KlarnaRejectionError(Exception):
    """A request Klarna refuses; carries the answer Klarna would give."""

    def __init__(self, status: int, code: str, *messages: str) -> None:
        super().__init__(f"{status} {code}: {'; '.join(messages)}")
        self.outcome = klarna_error(status, code, list(messages))


def _bad(*messages: str) -> KlarnaRejectionError:
    return KlarnaRejectionError(400, "BAD_VALUE", *messages)


# --- line arithmetic -------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def line_errors(lines: Any, amount: int, amount_field: str) -> list[str]:
    """Klarna's order-line rules; [] when the lines are consistent and sum to `amount`."""
    if not isinstance(lines, list):
        return ["order_lines must be an array"]
    errors: list[str] = []
    total = 0
    for index, line in enumerate(lines):
        where = f"order_lines[{index}]"
        if not isinstance(line, dict):
            errors.append(f"{where} must be an object")
            continue
        line_problems = _single_line_errors(line, where)
        errors.extend(line_problems)
        if not line_problems:
            total += line["total_amount"]
    if not errors and lines and total != amount:
        errors.append(
            f"Sum of order_lines total_amount ({total}) does not match {amount_field} ({amount})"
        )
    return errors


def _single_line_errors(line: Mapping[str, Any], where: str) -> list[str]:
    errors = [
        f"{where}.{key} is required and must be an integer"
        for key in ("quantity", "unit_price", "total_amount")
        if not _is_int(line.get(key))
    ]
    errors += [
        f"{where}.{key} must be an integer"
        for key in ("total_discount_amount", "tax_rate", "total_tax_amount")
        if key in line and not _is_int(line[key])
    ]
    if not isinstance(line.get("name"), str):
        errors.append(f"{where}.name is required and must be a string")
    if errors:
        return errors
    quantity, unit_price, total = line["quantity"], line["unit_price"], line["total_amount"]
    discount = line.get("total_discount_amount", 0)
    tax_rate = line.get("tax_rate", 0)
    kind = line.get("type", "physical")
    if quantity < 0:
        errors.append(f"{where}.quantity must not be negative")
    if discount < 0:
        errors.append(f"{where}.total_discount_amount must not be negative")
    if tax_rate < 0:
        errors.append(f"{where}.tax_rate must not be negative")
    if (unit_price < 0 or total < 0) and kind not in _NEGATIVE_LINE_TYPES:
        errors.append(f"{where}: negative amounts are only allowed on discount-type lines")
    expected_total = quantity * unit_price - discount
    if total != expected_total:
        errors.append(
            f"{where}.total_amount is {total}, expected quantity * unit_price - "
            f"total_discount_amount = {expected_total}"
        )
    if "total_tax_amount" in line and tax_rate >= 0:
        expected_tax = total - Fraction(total * 10000, 10000 + tax_rate)
        if abs(line["total_tax_amount"] - expected_tax) > _TAX_TOLERANCE:
            errors.append(
                f"{where}.total_tax_amount is {line['total_tax_amount']}, expected "
                f"total_amount - total_amount * 10000 / (10000 + tax_rate) = "
                f"{round(expected_tax)} (+/- {_TAX_TOLERANCE})"
            )
    return errors


def _require_lines(body: Mapping[str, Any], amount: int, amount_field: str) -> list[Any]:
    lines = body.get("order_lines")
    if lines is None:
        return []
    errors = line_errors(lines, amount, amount_field)
    if errors:
        raise _bad(*errors)
    return list(lines)


def _require_amount(body: Any, key: str, *, positive: bool) -> int:
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    value: Any = body.get(key)
    if not _is_int(value):
        raise _bad(f"{key} is required and must be an integer")
    if value < 0 or (positive and value == 0):
        raise _bad(f"{key} must be {'greater than zero' if positive else 'non-negative'}")
    return int(value)


def _optional_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{key} must be a string")
    return value


# --- state -------------------------------------------------------------------------


@dataclass
class KlarnaOrder:
    order_id: str
    purchase_currency: str
    purchase_country: str
    payment_method: str
    order_amount: int
    original_order_amount: int
    order_lines: list[Any]
    created_at: datetime
    expires_at: datetime
    status: str = AUTHORIZED
    merchant_reference1: str | None = None
    merchant_reference2: str | None = None
    captures: list[dict[str, Any]] = field(default_factory=list)
    refunds: list[dict[str, Any]] = field(default_factory=list)
    # The Klarna market (region and merchant credentials) the order was placed in; the
    # other markets do not know it.
    market: str = DEFAULT_MARKET

    @property
    def captured_amount(self) -> int:
        return sum(int(c["captured_amount"]) for c in self.captures)

    @property
    def refunded_amount(self) -> int:
        return sum(int(r["refunded_amount"]) for r in self.refunds)

    @property
    def remaining_authorized_amount(self) -> int:
        if self.status not in _OPEN:
            return 0
        return self.order_amount - self.captured_amount

    @property
    def klarna_reference(self) -> str:
        return self.order_id.replace("-", "")[:7].upper()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "order_id": self.order_id,
            "status": self.status,
            "fraud_status": "ACCEPTED",
            "order_amount": self.order_amount,
            "original_order_amount": self.original_order_amount,
            "captured_amount": self.captured_amount,
            "refunded_amount": self.refunded_amount,
            "remaining_authorized_amount": self.remaining_authorized_amount,
            "purchase_currency": self.purchase_currency,
            "purchase_country": self.purchase_country,
            "order_lines": self.order_lines,
            "captures": self.captures,
            "refunds": self.refunds,
            "expires_at": iso(self.expires_at),
            "created_at": iso(self.created_at),
            "initial_payment_method": {"type": self.payment_method},
            "klarna_reference": self.klarna_reference,
        }
        for key in ("merchant_reference1", "merchant_reference2"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


class KlarnaState:
    """Klarna's orders, in memory, with the rules Klarna enforces on each operation.

    Operations run under the runtime's lock and never await, so each one checks and
    applies atomically.
    """

    def __init__(
        self,
        runtime: SandboxRuntime,
        *,
        username: str,
        password: str,
        markets: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.runtime = runtime
        # Each market its own API (`/klarna/<market>/…`; the unprefixed API is "eu") and
        # its own credentials, like Klarna's regions: credentials of another → 401.
        self.markets: dict[str, tuple[str, str]] = {DEFAULT_MARKET: (username, password)}
        self.markets.update(markets or {})
        self.orders: dict[str, KlarnaOrder] = {}
        runtime.on_reset(self.orders.clear)

    # -- auth and lookup --

    def authorized(self, request: Request, market: str = DEFAULT_MARKET) -> bool:
        expected = self.markets.get(market)
        if expected is None:
            return False
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, sep, password = decoded.partition(":")
        # Both comparisons always run, so timing does not tell which part was wrong.
        user_ok = secrets.compare_digest(username.encode(), expected[0].encode())
        password_ok = secrets.compare_digest(password.encode(), expected[1].encode())
        return bool(sep) and user_ok and password_ok

    def order(self, order_id: str | None) -> KlarnaOrder:
        order = self.orders.get(order_id or "")
        if order is None:
            raise KlarnaRejectionError(404, "NO_SUCH_ORDER", f"No order with id {order_id}")
        if order.status in _OPEN and self.runtime.clock() >= order.expires_at:
            order.status = EXPIRED
        return order

    def _record(self, call: ApiCall, operation: str, amount: int | None, **extra: Any) -> None:
        self.runtime.ledger.record(
            provider=PROVIDER,
            order_id=call.order_id or "",
            operation=operation,
            amount=amount,
            idempotency_key=call.idempotency_key,
            **extra,
        )

    # -- setup (the /_sandbox side) --

    def create_order(self, data: Any) -> KlarnaOrder:
        amount = _require_amount(data, "order_amount", positive=False)
        lines = _require_lines(data, amount, "order_amount")
        order_id = data.get("order_id") or str(uuid.uuid4())
        if not isinstance(order_id, str):
            raise _bad("order_id must be a string")
        method = data.get("payment_method", "INVOICE")
        if method not in PAYMENT_METHODS:
            raise _bad(f"payment_method must be one of {', '.join(sorted(PAYMENT_METHODS))}")
        currency = data.get("purchase_currency", "EUR")
        country = data.get("purchase_country", "DE")
        if not (isinstance(currency, str) and len(currency) == 3):
            raise _bad("purchase_currency must be an ISO 4217 code")
        if not (isinstance(country, str) and len(country) == 2):
            raise _bad("purchase_country must be an ISO 3166-1 alpha-2 code")
        market = data.get("market", DEFAULT_MARKET)
        if market not in self.markets:
            raise _bad(f"market must be one of {', '.join(sorted(self.markets))}")
        days = data.get("expires_in_days", 28)
        if not _is_int(days) or days < 1:
            raise _bad("expires_in_days must be a positive integer")
        now = self.runtime.clock()
        order = KlarnaOrder(
            order_id=order_id,
            purchase_currency=currency.upper(),
            purchase_country=country.upper(),
            payment_method=method,
            order_amount=amount,
            original_order_amount=amount,
            order_lines=lines,
            created_at=now,
            expires_at=now + timedelta(days=days),
            merchant_reference1=_optional_str(data, "merchant_reference1"),
            merchant_reference2=_optional_str(data, "merchant_reference2"),
            market=market,
        )
        with self.runtime.lock:
            if order_id in self.orders:
                raise KlarnaRejectionError(409, "CONFLICT", f"Order {order_id} already exists")
            self.orders[order_id] = order
        return order

    def force_status(self, order_id: str, status: str) -> KlarnaOrder:
        with self.runtime.lock:
            order = self.order(order_id)
            order.status = status
            return order

    # -- Klarna OM operations --

    def get_order(self, call: ApiCall) -> Outcome:
        return Outcome(200, self.order(call.order_id).to_json())

    def list_captures(self, call: ApiCall) -> Outcome:
        return Outcome(200, self.order(call.order_id).captures)

    def get_capture(self, call: ApiCall, capture_id: str) -> Outcome:
        for capture in self.order(call.order_id).captures:
            if capture["capture_id"] == capture_id:
                return Outcome(200, capture)
        raise KlarnaRejectionError(404, "NO_SUCH_CAPTURE", f"No capture with id {capture_id}")

    def get_refund(self, call: ApiCall, refund_id: str) -> Outcome:
        for refund in self.order(call.order_id).refunds:
            if refund["refund_id"] == refund_id:
                return Outcome(200, refund)
        raise KlarnaRejectionError(404, "NOT_FOUND", f"No refund with id {refund_id}")

    def update_authorization(self, call: ApiCall) -> Outcome:
        order = self.order(call.order_id)
        new_amount = _require_amount(call.body, "order_amount", positive=False)
        description = _optional_str(call.body, "description")
        if order.status not in _OPEN:
            raise KlarnaRejectionError(
                403, "NOT_ALLOWED", f"Order amount cannot be updated in status {order.status}"
            )
        if new_amount < order.captured_amount:
            raise KlarnaRejectionError(
                403,
                "NOT_ALLOWED",
                f"order_amount {new_amount} is less than captured_amount {order.captured_amount}",
            )
        lines = _require_lines(call.body, new_amount, "order_amount")
        if new_amount > order.order_amount:
            if not increase_allowed(order.payment_method, order.purchase_country):
                raise KlarnaRejectionError(
                    403,
                    "NOT_ALLOWED",
                    f"Increasing the order amount is not allowed for {order.payment_method} "
                    f"in {order.purchase_country}",
                )
            if self.runtime.faults.reject_increase(call.method, call.path) is not None:
                raise KlarnaRejectionError(
                    403, "NOT_ALLOWED", "The order amount increase was not approved"
                )
        previous = order.order_amount
        # Klarna replaces the lines wholesale: no lines in the call deletes them.
        order.order_amount = new_amount
        order.order_lines = lines
        if order.captured_amount and order.captured_amount == new_amount:
            order.status = CAPTURED
        self._record(
            call,
            "update_authorization",
            new_amount,
            lines=lines,
            previous_amount=previous,
            description=description,
        )
        return Outcome(204)

    def capture(self, call: ApiCall) -> Outcome:
        order = self.order(call.order_id)
        amount = _require_amount(call.body, "captured_amount", positive=True)
        reference = _optional_str(call.body, "reference")
        description = _optional_str(call.body, "description")
        shipping_info = call.body.get("shipping_info") or []
        if not isinstance(shipping_info, list):
            raise _bad("shipping_info must be an array")
        if order.status not in _OPEN:
            raise KlarnaRejectionError(
                403, "CAPTURE_NOT_ALLOWED", f"Order cannot be captured in status {order.status}"
            )
        if amount > order.remaining_authorized_amount:
            raise KlarnaRejectionError(
                403,
                "CAPTURE_NOT_ALLOWED",
                f"captured_amount {amount} exceeds remaining_authorized_amount "
                f"{order.remaining_authorized_amount}",
            )
        lines = _require_lines(call.body, amount, "captured_amount")
        capture_id = str(uuid.uuid4())
        order.captures.append(
            {
                "capture_id": capture_id,
                "klarna_reference": f"{order.klarna_reference}-{len(order.captures) + 1}",
                "description": description,
                "reference": reference,
                "captured_amount": amount,
                "refunded_amount": 0,
                "order_lines": lines,
                "shipping_info": shipping_info,
                "captured_at": iso(self.runtime.clock()),
            }
        )
        order.status = CAPTURED if order.captured_amount == order.order_amount else PART_CAPTURED
        self._record(
            call, "capture", amount, lines=lines, reference=reference, capture_id=capture_id
        )
        location = f"{call.base_url}{API_PREFIX}/{order.order_id}/captures/{capture_id}"
        return Outcome(201, None, {"Capture-Id": capture_id, "Location": location})

    def refund(self, call: ApiCall) -> Outcome:
        order = self.order(call.order_id)
        amount = _require_amount(call.body, "refunded_amount", positive=True)
        reference = _optional_str(call.body, "reference")
        description = _optional_str(call.body, "description")
        refundable = order.captured_amount - order.refunded_amount
        if amount > refundable:
            raise KlarnaRejectionError(
                403,
                "REFUND_NOT_ALLOWED",
                f"refunded_amount {amount} exceeds the refundable amount {refundable}",
            )
        lines = _require_lines(call.body, amount, "refunded_amount")
        refund_id = str(uuid.uuid4())
        order.refunds.append(
            {
                "refund_id": refund_id,
                "refunded_amount": amount,
                "description": description,
                "reference": reference,
                "order_lines": lines,
                "refunded_at": iso(self.runtime.clock()),
            }
        )
        _spread_refund_over_captures(order.captures, amount)
        self._record(call, "refund", amount, lines=lines, reference=reference, refund_id=refund_id)
        location = f"{call.base_url}{API_PREFIX}/{order.order_id}/refunds/{refund_id}"
        return Outcome(201, None, {"Refund-Id": refund_id, "Location": location})

    def cancel(self, call: ApiCall) -> Outcome:
        order = self.order(call.order_id)
        if order.status != AUTHORIZED or order.captured_amount:
            raise KlarnaRejectionError(
                403,
                "CANCEL_NOT_ALLOWED",
                f"Order cannot be cancelled in status {order.status} "
                f"with captured_amount {order.captured_amount}",
            )
        cancelled = order.order_amount
        order.status = CANCELLED
        self._record(call, "cancel", cancelled)
        return Outcome(204)

    def release_remaining_authorization(self, call: ApiCall) -> Outcome:
        order = self.order(call.order_id)
        if order.status != PART_CAPTURED:
            raise KlarnaRejectionError(
                403,
                "NOT_ALLOWED",
                f"Remaining authorization can only be released on a part-captured order, "
                f"not in status {order.status}",
            )
        released = order.remaining_authorized_amount
        order.order_amount = order.captured_amount
        order.status = CAPTURED
        self._record(call, "release_authorization", released)
        return Outcome(204)

    def extend_authorization_time(self, call: ApiCall) -> Outcome:
        order = self.order(call.order_id)
        if order.status not in _OPEN:
            raise KlarnaRejectionError(
                403,
                "NOT_ALLOWED",
                f"Authorization time cannot be extended in status {order.status}",
            )
        order.expires_at += AUTHORIZATION_EXTENSION
        self._record(call, "extend_authorization", None, expires_at=iso(order.expires_at))
        return Outcome(204)


def _spread_refund_over_captures(captures: list[dict[str, Any]], amount: int) -> None:
    """Show the refund against the oldest captures first, as Klarna's order view does."""
    for capture in captures:
        room = int(capture["captured_amount"]) - int(capture["refunded_amount"])
        share = min(room, amount)
        capture["refunded_amount"] = int(capture["refunded_amount"]) + share
        amount -= share
        if amount == 0:
            return


# --- HTTP ----------------------------------------------------------------------------

_Endpoint = Callable[[Request], Awaitable[Response]]


def _api_endpoint(
    state: KlarnaState, operation: Callable[[ApiCall, dict[str, str]], Outcome]
) -> _Endpoint:
    async def endpoint(request: Request) -> Response:
        params = dict(request.path_params)
        market = params.pop("market", DEFAULT_MARKET)
        prefix = f"{MARKET_PREFIX}/{market}"
        path = request.url.path
        path = path[len(prefix) :] if path.startswith(prefix + "/") else path

        def run(call: ApiCall) -> Outcome:
            order = state.orders.get(call.order_id or "")
            if order is not None and order.market != market:
                # Placed in another market: this one has never heard of it.
                return klarna_error(404, "NO_SUCH_ORDER", [f"No order with id {call.order_id}"])
            try:
                return operation(call, params)
            except KlarnaRejectionError as rejection:
                return rejection.outcome

        authorized = state.authorized(request, market)
        return await state.runtime.handle(
            request,
            provider=PROVIDER,
            order_id=params.get("order_id"),
            operation=run,
            errors=klarna_error,
            authorized=authorized,
            idempotency_header=IDEMPOTENCY_HEADER,
            path=path,
            account=market if authorized else None,
        )

    return endpoint


def routes(state: KlarnaState) -> list[BaseRoute]:
    """The Klarna OM v1 API, as our service calls it: unprefixed (market "eu"), and per
    market under `/klarna/<market>` (as Klarna's regions are separate hosts)."""
    api_routes = _api_routes(state)
    return [*api_routes, Mount(f"{MARKET_PREFIX}/{{market}}", routes=api_routes)]


def _api_routes(state: KlarnaState) -> list[BaseRoute]:
    order = f"{API_PREFIX}/{{order_id}}"

    def api(path: str, method: str, op: Callable[[ApiCall, dict[str, str]], Outcome]) -> Route:
        return Route(f"{order}{path}", _api_endpoint(state, op), methods=[method])

    return [
        api("", "GET", lambda call, _: state.get_order(call)),
        api("/authorization", "PATCH", lambda call, _: state.update_authorization(call)),
        api("/captures", "GET", lambda call, _: state.list_captures(call)),
        api("/captures", "POST", lambda call, _: state.capture(call)),
        api("/captures/{capture_id}", "GET", lambda c, p: state.get_capture(c, p["capture_id"])),
        api("/refunds", "POST", lambda call, _: state.refund(call)),
        api("/refunds/{refund_id}", "GET", lambda c, p: state.get_refund(c, p["refund_id"])),
        api("/cancel", "POST", lambda call, _: state.cancel(call)),
        api(
            "/release-remaining-authorization",
            "POST",
            lambda call, _: state.release_remaining_authorization(call),
        ),
        api(
            "/extend-authorization-time",
            "POST",
            lambda call, _: state.extend_authorization_time(call),
        ),
    ]


def setup_routes(state: KlarnaState) -> list[BaseRoute]:
    """Test setup under /_sandbox/klarna: what a shopper's checkout would have done."""

    async def create(request: Request) -> Response:
        try:
            data = await request.json()
        except ValueError:
            return _json(klarna_error(400, "BAD_VALUE", ["Request body is not valid JSON"]))
        try:
            order = state.create_order(data)
        except KlarnaRejectionError as rejection:
            return _json(rejection.outcome)
        return JSONResponse(order.to_json(), status_code=201)

    def set_status(status: str) -> _Endpoint:
        async def endpoint(request: Request) -> Response:
            try:
                order = state.force_status(request.path_params["order_id"], status)
            except KlarnaRejectionError as rejection:
                return _json(rejection.outcome)
            return JSONResponse(order.to_json())

        return endpoint

    async def show(request: Request) -> Response:
        try:
            with state.runtime.lock:
                order = state.order(request.path_params["order_id"])
                return JSONResponse(order.to_json())
        except KlarnaRejectionError as rejection:
            return _json(rejection.outcome)

    async def markets(request: Request) -> Response:
        return JSONResponse({"markets": sorted(state.markets)})

    base = "/_sandbox/klarna/orders"
    return [
        Route("/_sandbox/klarna/markets", markets, methods=["GET"]),
        Route(base, create, methods=["POST"]),
        Route(f"{base}/{{order_id}}", show, methods=["GET"]),
        Route(f"{base}/{{order_id}}/expire", set_status(EXPIRED), methods=["POST"]),
        Route(f"{base}/{{order_id}}/close", set_status(CLOSED), methods=["POST"]),
    ]


def _json(outcome: Outcome) -> Response:
    return JSONResponse(outcome.body, status_code=outcome.status)
