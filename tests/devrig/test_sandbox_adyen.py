"""The simulated Adyen: rules, idempotency, spec checks and signed notifications."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from devrig.sandbox.specs import ADYEN_CHECKOUT_V71

from integrations.adyen.hmac import is_valid
from tests.devrig.test_sandbox_support import SPECS_DIR, SandboxClient, sandbox_client

KEY = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF"
API = {"X-API-Key": "sandbox"}
SHOES = {
    "id": "sku-1",
    "description": "Shoes",
    "quantity": 1,
    "amountIncludingTax": 1200,
    "amountExcludingTax": 1000,
    "taxAmount": 200,
    "taxPercentage": 2000,
}
SOCK = {
    "id": "sku-2",
    "description": "Socks",
    "quantity": 1,
    "amountIncludingTax": 450,
    "amountExcludingTax": 375,
    "taxAmount": 75,
    "taxPercentage": 2000,
}
DISCOUNT_SHARE = {
    "id": "discount",
    "description": "Discount",
    "quantity": 1,
    "amountIncludingTax": -135,
    "amountExcludingTax": -113,
    "taxAmount": -22,
    "taxPercentage": 2000,
}


class Receiver:
    """A webhook endpoint on a real socket that records what it got."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((self.headers.get("Authorization", ""), json.loads(body)))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"[accepted]")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/adyen"
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()

    def items(self, count: int, timeout: float = 5) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [
            body["notificationItems"][0]["NotificationRequestItem"] for _, body in self.received
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def adyen(receiver: Receiver) -> Iterator[SandboxClient]:
    with sandbox_client(
        adyen_webhook_url=receiver.url,
        adyen_hmac_key=KEY,
        adyen_webhook_username="adyen",
        adyen_webhook_password="pw",
    ) as client:
        yield client


def payment(client: SandboxClient, value: int = 1470, **extra: Any) -> str:
    response = client.post(
        "/_sandbox/adyen/payments",
        json={"value": value, "currency": "EUR", "merchantAccount": "Shop", **extra},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["pspReference"])


def capture(
    client: SandboxClient, psp: str, items: list[dict[str, Any]], value: int, key: str = "k-1"
) -> Any:
    return client.post(
        f"/v71/payments/{psp}/captures",
        headers={**API, "Idempotency-Key": key},
        json={
            "merchantAccount": "Shop",
            "reference": "op-1",
            "amount": {"currency": "EUR", "value": value},
            "lineItems": items,
        },
    )


def test_capture_is_received_then_notified_signed_with_basic_auth(
    adyen: SandboxClient, receiver: Receiver
) -> None:
    psp = payment(adyen)
    answer = capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315)
    assert answer.status_code == 201
    body = answer.json()
    assert body["status"] == "received" and body["paymentPspReference"] == psp
    authorisation, captured = receiver.items(2)
    assert authorisation["eventCode"] == "AUTHORISATION"
    assert (captured["eventCode"], captured["success"]) == ("CAPTURE", "true")
    assert captured["pspReference"] == body["pspReference"]
    assert captured["originalReference"] == psp and captured["merchantReference"] == "op-1"
    assert captured["amount"] == {"currency": "EUR", "value": 315}
    assert is_valid(captured, [KEY])
    assert receiver.received[1][0] == "Basic " + base64.b64encode(b"adyen:pw").decode()
    entries = adyen.get("/_sandbox/ledger", params={"order_id": psp}).json()["entries"]
    assert [(e["operation"], e["amount"]) for e in entries] == [("capture", 315)]


def test_same_key_replays_and_applies_once(adyen: SandboxClient, receiver: Receiver) -> None:
    psp = payment(adyen, notify=False)
    first = capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315)
    again = capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315)
    assert first.json() == again.json()
    assert len(receiver.items(1)) == 1
    state = adyen.get(f"/_sandbox/adyen/payments/{psp}").json()
    assert state["captured"] == 315


@pytest.mark.parametrize(
    ("items", "value", "code"),
    [([SOCK], 315, "LINE_ITEMS"), ([SHOES, SOCK, SOCK], 2100, "137")],
)
def test_rules_refuse_with_422(
    adyen: SandboxClient, items: list[Any], value: int, code: str
) -> None:
    psp = payment(adyen, notify=False)
    answer = capture(adyen, psp, items, value)
    assert answer.status_code == 422
    assert answer.json()["errorCode"] == code


def test_wrong_api_key_is_401(adyen: SandboxClient) -> None:
    psp = payment(adyen, notify=False)
    answer = adyen.post(
        f"/v71/payments/{psp}/cancels",
        headers={"X-API-Key": "nope"},
        json={"merchantAccount": "Shop"},
    )
    assert answer.status_code == 401


def test_refused_increase_and_failed_capture_are_notified(
    adyen: SandboxClient, receiver: Receiver
) -> None:
    psp = payment(adyen, notify=False)
    adyen.post("/_sandbox/faults", json={"kind": "reject_next_increase"})
    answer = adyen.post(
        f"/v71/payments/{psp}/amountUpdates",
        headers={**API, "Idempotency-Key": "u-1"},
        json={
            "merchantAccount": "Shop",
            "amount": {"currency": "EUR", "value": 1920},
            "lineItems": [
                SHOES,
                {**SOCK, "quantity": 2},
                {**SOCK, "id": "hat"},
                {**DISCOUNT_SHARE, "amountIncludingTax": -630},
            ],
        },
    )
    assert answer.json()["status"] == "received"
    adyen.post("/_sandbox/faults", json={"kind": "fail_next_capture"})
    capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315)
    adjustment, failed = receiver.items(2)
    assert (adjustment["eventCode"], adjustment["success"]) == ("AUTHORISATION_ADJUSTMENT", "false")
    assert failed["eventCode"] == "CAPTURE_FAILED"
    state = adyen.get(f"/_sandbox/adyen/payments/{psp}").json()
    assert (state["authorised"], state["captured"]) == (1470, 0)


def test_duplicate_and_held_notifications(adyen: SandboxClient, receiver: Receiver) -> None:
    adyen.post("/_sandbox/adyen/notifications", json={"duplicate": True})
    psp = payment(adyen)
    assert len(receiver.items(2)) == 2
    adyen.post("/_sandbox/adyen/notifications", json={"duplicate": False, "hold": True})
    capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315, key="a")
    capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315, key="b")
    time.sleep(0.2)
    assert len(receiver.received) == 2
    assert adyen.post("/_sandbox/adyen/notifications/release", json={"reverse": True}).json() == {
        "released": 2
    }
    items = receiver.items(4)
    assert [i["eventCode"] for i in items[2:]] == ["CAPTURE", "CAPTURE"]


def test_classic_capture_checks_openinvoice_lines(adyen: SandboxClient) -> None:
    psp = payment(adyen, notify=False)
    data = {
        "openinvoicedata.numberOfLines": "1",
        "openinvoicedata.line1.numberOfItems": "1",
        "openinvoicedata.line1.itemAmount": "375",
        "openinvoicedata.line1.itemVatAmount": "75",
        "openinvoicedata.line1.currencyCode": "EUR",
    }
    body = {
        "merchantAccount": "Shop",
        "originalReference": psp,
        "reference": "op-2",
        "modificationAmount": {"currency": "EUR", "value": 450},
        "additionalData": data,
    }
    answer = adyen.post(
        "/pal/servlet/Payment/v68/capture", headers={**API, "Idempotency-Key": "c-1"}, json=body
    )
    assert answer.status_code == 200
    assert answer.json()["response"] == "[capture-received]"
    wrong = adyen.post(
        "/pal/servlet/Payment/v68/capture",
        headers={**API, "Idempotency-Key": "c-2"},
        json={**body, "modificationAmount": {"currency": "EUR", "value": 451}},
    )
    assert wrong.status_code == 422


@pytest.mark.skipif(
    not (SPECS_DIR / ADYEN_CHECKOUT_V71).is_file(),
    reason=f"vendor OpenAPI files not found at {SPECS_DIR}",
)
def test_spec_violations_are_refused_strictly(receiver: Receiver) -> None:
    with sandbox_client(specs_dir=SPECS_DIR, adyen_webhook_url=receiver.url) as client:
        psp = payment(client, notify=False)
        bad = capture(client, psp, [{**SOCK, "quantity": "1"}], 450)
        assert bad.status_code == 400
        log = client.get("/_sandbox/requests", params={"order_id": psp}).json()["requests"]
        assert log[-1]["spec_errors"]


def test_a_refused_payment_is_notified_unsuccessful_and_refuses_every_modification(
    adyen: SandboxClient, receiver: Receiver
) -> None:
    # The issuer declines: AUTHORISATION success=false with the amount asked for and a
    # reason; nothing is authorised, so a capture is refused and nothing is booked.
    psp = payment(adyen, refused=True)
    (authorisation,) = receiver.items(1)
    assert (authorisation["eventCode"], authorisation["success"]) == ("AUTHORISATION", "false")
    assert authorisation["amount"] == {"currency": "EUR", "value": 1470}
    assert authorisation["reason"] == "Refused"
    assert is_valid(authorisation, [KEY])
    assert capture(adyen, psp, [SOCK, DISCOUNT_SHARE], 315).status_code == 422
    state = adyen.get(f"/_sandbox/adyen/payments/{psp}").json()
    assert (state["status"], state["authorised"], state["captured"]) == ("refused", 0, 0)
    entries = adyen.get("/_sandbox/ledger", params={"order_id": psp}).json()["entries"]
    assert entries == []
