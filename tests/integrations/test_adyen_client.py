"""The Adyen client's requests: bodies, keys, and how answers become outcomes."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from devrig.sandbox.specs import ADYEN_CHECKOUT_V71, ADYEN_PAYMENT_V68, validate_request

from data.orders import Draft
from domain.lines import (
    PspLine,
    basket_lines,
    capture_lines,
    ledger_from,
    refund_lines,
    surplus_refund_lines,
)
from domain.snapshot import OrderSnapshot
from integrations.adyen.client import AdyenClient, psp_idempotency_key
from integrations.results import Outcome
from tests.devrig.test_sandbox_support import SPECS_DIR

needs_specs = pytest.mark.skipif(
    not (SPECS_DIR / ADYEN_CHECKOUT_V71).is_file(),
    reason=f"vendor OpenAPI files not found at {SPECS_DIR} (they are never copied into the repo)",
)
CHECKOUT = "https://checkout-test.adyen.com/v71"
PAL = "https://pal-test.adyen.com/pal/servlet/Payment/v68"
PAYMENT = "9913140798220028"

# The contract's basket: shoes 1 x 1200, socks 2 x 450, discount -630 (total 1470).
SEED_LINES = [
    {"id": "sku-1", "name": "Shoes", "quantity": 1, "unit_price": 1200, "tax_rate": 2000},
    {"id": "sku-2", "name": "Socks", "quantity": 2, "unit_price": 450, "tax_rate": 2000},
    {
        "id": "discount",
        "name": "Discount",
        "type": "discount",
        "quantity": 1,
        "unit_price": -630,
        "tax_rate": 2000,
    },
]


def snapshot(lines: list[dict[str, Any]] | None = None, **payment: Any) -> OrderSnapshot:
    return OrderSnapshot.model_validate(
        {
            "id": "1001",
            "version": 1,
            "currency": "EUR",
            "country": "DE",
            "payment": {"provider": "adyen", "psp_reference": PAYMENT, **payment},
            "lines": lines or SEED_LINES,
        }
    )


def shipped_socks() -> OrderSnapshot:
    lines = [dict(line) for line in SEED_LINES]
    lines[1]["shipped_quantity"] = 1
    return snapshot(lines)


def op(kind: str, amount: int, lines: list[PspLine], **extra: Any) -> Draft:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "order_id": "1001",
        "seq": 1,
        "kind": kind,
        "amount": amount,
        "lines": [line.to_json() for line in lines],
        "idempotency_key": str(uuid.uuid4()),
        "key_generation": 0,
        **extra,
    }
    return Draft(**fields)


ORDER = SimpleNamespace(id="1001", psp_order_id=PAYMENT, captured_amount=0)


class Recorder:
    def __init__(self, status: int = 201, body: Any = None, headers: Any = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.body, self.headers = status, body, headers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = (
            self.body
            if self.body is not None
            else {"pspReference": "MOD0000000000001", "status": "received"}
        )
        return httpx.Response(self.status, json=body, headers=self.headers)

    @property
    def last(self) -> tuple[str, dict[str, Any]]:
        request = self.requests[-1]
        return str(request.url), json.loads(request.content)


def client(recorder: Recorder, **kwargs: Any) -> AdyenClient:
    http = httpx.Client(transport=httpx.MockTransport(recorder))
    defaults: dict[str, Any] = {
        "checkout_url": CHECKOUT,
        "api_key": "test-key",
        "merchant_account": "DefaultMerchant",
        "pal_url": PAL,
    }
    return AdyenClient(http, **{**defaults, **kwargs})


def test_partial_capture_with_discount_is_the_contracts_315() -> None:
    order = shipped_socks()
    lines = capture_lines(order, {})
    recorder = Recorder()
    operation = op("capture", 315, lines)
    result = client(recorder).execute(ORDER, order, operation)
    assert result.outcome is Outcome.RECEIVED
    assert result.reference == "MOD0000000000001"
    url, body = recorder.last
    assert url == f"{CHECKOUT}/payments/{PAYMENT}/captures"
    assert body["amount"] == {"currency": "EUR", "value": 315}
    assert body["merchantAccount"] == "DefaultMerchant"
    assert body["reference"] == str(operation.id)
    assert [(i["id"], i["quantity"], i["amountIncludingTax"]) for i in body["lineItems"]] == [
        ("sku-2", 1, 450),
        ("discount", 1, -135),
    ]
    assert sum(i["quantity"] * i["amountIncludingTax"] for i in body["lineItems"]) == 315
    headers = recorder.requests[-1].headers
    assert headers["Idempotency-Key"] == operation.idempotency_key
    assert headers["X-API-Key"] == "test-key"


def test_amount_update_sends_the_complete_basket_and_the_payments_merchant() -> None:
    order = snapshot(merchant_account="ShopMerchant")
    lines = basket_lines(order)
    recorder = Recorder()
    client(recorder).execute(ORDER, order, op("update_authorization", 1470, lines))
    url, body = recorder.last
    assert url.endswith(f"/payments/{PAYMENT}/amountUpdates")
    assert body["merchantAccount"] == "ShopMerchant"
    assert body["amount"]["value"] == 1470
    assert [i["id"] for i in body["lineItems"]] == ["sku-1", "sku-2", "discount"]


def test_release_updates_the_amount_down_to_the_captured_lines() -> None:
    order = shipped_socks()
    captured = capture_lines(order, {})
    recorder = Recorder()
    adyen = client(recorder, captured_lines=lambda order_id: captured)
    row = SimpleNamespace(**{**vars(ORDER), "captured_amount": 315})
    result = adyen.execute(row, order, op("release_authorization", 1155, []))
    assert result.outcome is Outcome.RECEIVED
    url, body = recorder.last
    assert url.endswith("/amountUpdates")
    assert body["amount"]["value"] == 315
    assert sum(i["quantity"] * i["amountIncludingTax"] for i in body["lineItems"]) == 315


def test_cancel_and_refund_paths() -> None:
    recorder = Recorder()
    adyen = client(recorder)
    adyen.execute(ORDER, snapshot(), op("cancel", 0, []))
    url, body = recorder.last
    assert url.endswith("/cancels") and set(body) == {"merchantAccount", "reference"}
    order = shipped_socks()
    captured = capture_lines(order, {})
    returned = [dict(line) for line in order.model_dump(mode="json")["lines"]]
    returned[1]["returned_quantity"] = 1
    back = refund_lines(snapshot(returned), ledger_from([("capture", captured)]))
    adyen.execute(ORDER, order, op("refund", 315, back))
    url, body = recorder.last
    assert url.endswith("/refunds") and body["amount"]["value"] == 315


def test_classic_capture_uses_openinvoicedata_and_original_reference() -> None:
    order = shipped_socks()
    recorder = Recorder(200, {"pspReference": "MOD2", "response": "[capture-received]"})
    adyen = client(recorder, modifications_api="classic")
    result = adyen.execute(ORDER, order, op("capture", 315, capture_lines(order, {})))
    assert (result.outcome, result.reference) == (Outcome.RECEIVED, "MOD2")
    url, body = recorder.last
    assert url == f"{PAL}/capture"
    assert body["originalReference"] == PAYMENT
    assert body["modificationAmount"] == {"currency": "EUR", "value": 315}
    data = body["additionalData"]
    assert data["openinvoicedata.numberOfLines"] == "2"
    assert data["openinvoicedata.line1.description"] == "Socks"
    # Amount updates stay on Checkout: classic has no line-item amount update.
    adyen.execute(ORDER, snapshot(), op("update_authorization", 1470, basket_lines(snapshot())))
    assert recorder.last[0].startswith(CHECKOUT)


def test_a_classic_refund_of_a_price_cut_describes_no_goods() -> None:
    """Seed 65616's class: openinvoicedata lines carry a description and no id of ours,
    so the refund of a cut on captured socks (2 x 450, now 2 x 400) must not read as a
    pair of socks coming back at 100: the Customer Area shows the line by its
    description alone (contract §4 step 3: a refund "with exactly those lines")."""
    socks = {"id": "sku-2", "name": "Socks", "quantity": 2, "tax_rate": 2000}
    before = snapshot([{**socks, "unit_price": 450, "shipped_quantity": 2}])
    ledger = ledger_from([("capture", capture_lines(before, {}))])
    now = snapshot([{**socks, "unit_price": 400, "shipped_quantity": 2}])
    cut = surplus_refund_lines(now, ledger)
    recorder = Recorder(200, {"pspReference": "MOD3", "response": "[refund-received]"})
    client(recorder, modifications_api="classic").execute(ORDER, now, op("refund", 100, cut))
    url, body = recorder.last
    assert url == f"{PAL}/refund" and body["modificationAmount"]["value"] == 100
    data = body["additionalData"]
    assert data["openinvoicedata.numberOfLines"] == "1"
    assert data["openinvoicedata.line1.description"] == "Price adjustment: Socks"
    assert data["openinvoicedata.line1.numberOfItems"] == "1"


def test_a_retried_generation_sends_a_derived_key() -> None:
    operation = op("capture", 315, [], key_generation=2)
    assert psp_idempotency_key(operation) == f"{operation.idempotency_key}.2"
    assert len(psp_idempotency_key(operation)) <= 64  # Adyen's limit


def test_lines_that_miss_the_amount_are_never_sent() -> None:
    recorder = Recorder()
    lines = capture_lines(shipped_socks(), {})
    result = client(recorder).execute(ORDER, shipped_socks(), op("capture", 316, lines))
    assert result.outcome is Outcome.REJECTED
    assert result.error is not None and result.error.code == "line_sum_mismatch"
    assert recorder.requests == []


def test_no_merchant_account_anywhere_is_refused_before_sending() -> None:
    recorder = Recorder()
    result = client(recorder, merchant_account=None).execute(ORDER, snapshot(), op("cancel", 0, []))
    assert result.outcome is Outcome.REJECTED and recorder.requests == []


@pytest.mark.parametrize(
    ("status", "headers", "outcome"),
    [
        (422, {}, Outcome.REJECTED),
        (403, {}, Outcome.REJECTED),
        (500, {}, Outcome.TRANSIENT),
        (429, {"Retry-After": "3"}, Outcome.TRANSIENT),
    ],
)
def test_error_answers(status: int, headers: dict[str, str], outcome: Outcome) -> None:
    body = {
        "status": status,
        "errorCode": "167",
        "message": "Original pspReference required",
        "errorType": "validation",
        "pspReference": "ERR0000000000001",
    }
    recorder = Recorder(status, body, headers)
    result = client(recorder).execute(ORDER, snapshot(), op("cancel", 0, []))
    assert result.outcome is outcome
    assert result.error is not None
    assert (result.error.code, result.error.correlation_id) == ("167", "ERR0000000000001")
    if status == 429:
        assert result.retry_after == 3 and not result.maybe_applied


def test_network_error_is_transient() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    adyen = AdyenClient(
        httpx.Client(transport=httpx.MockTransport(fail)),
        checkout_url=CHECKOUT,
        api_key="k",
        merchant_account="M",
    )
    result = adyen.execute(ORDER, snapshot(), op("cancel", 0, []))
    assert result.outcome is Outcome.TRANSIENT and not result.maybe_applied


def test_provider_protocol_trivia() -> None:
    adyen = client(Recorder())
    assert adyen.can_read is False
    assert adyen.read(ORDER).outcome is Outcome.REJECTED
    assert adyen.figures({}) == {} and adyen.applied({}, {}) is False


@needs_specs
@pytest.mark.parametrize("api", ["checkout", "classic"])
def test_every_body_validates_against_adyens_spec(api: str) -> None:
    order = shipped_socks()
    captured = capture_lines(order, {})
    recorder = Recorder()
    adyen = client(recorder, modifications_api=api, captured_lines=lambda _: captured)
    returned = [dict(line) for line in order.model_dump(mode="json")["lines"]]
    returned[1]["returned_quantity"] = 1
    refund = refund_lines(snapshot(returned), ledger_from([("capture", captured)]))
    operations = [
        op("update_authorization", 1470, basket_lines(order)),
        op("capture", 315, captured),
        op("refund", 315, refund),
        op("cancel", 0, []),
        op("release_authorization", 1155, []),
    ]
    for operation in operations:
        adyen.execute(SimpleNamespace(**{**vars(ORDER), "captured_amount": 315}), order, operation)
    assert len(recorder.requests) == len(operations)
    for request in recorder.requests:
        url = str(request.url)
        spec, path = (
            (ADYEN_PAYMENT_V68, url.removeprefix(PAL))
            if url.startswith(PAL)
            else (ADYEN_CHECKOUT_V71, url.removeprefix(CHECKOUT))
        )
        errors = validate_request(SPECS_DIR / spec, "POST", path, json.loads(request.content))
        assert errors == [], (url, errors)
    if api == "classic":
        assert sum(str(r.url).startswith(PAL) for r in recorder.requests) == 3
