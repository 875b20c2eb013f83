"""A visible order flowing through: the seed's Klarna example, end to end.

A customer bought a kettle (60.00) and a toaster (25.00), paid with Klarna invoice.
They ask to remove the toaster: the shop sends the new snapshot, and ordersync updates
Klarna's authorization to 6000 with the kettle line alone (seed: "Update order amount").
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from devrig.devstack import klarna_line

KETTLE = {
    "id": "75001",
    "name": "Kettle",
    "type": "physical",
    "quantity": 1,
    "quantity_unit": "pcs",
    "unit_price": 6000,
    "tax_rate": 2500,
}
TOASTER = {
    "id": "75002",
    "name": "Toaster",
    "type": "physical",
    "quantity": 1,
    "quantity_unit": "pcs",
    "unit_price": 2500,
    "tax_rate": 2500,
}


def signed_headers(secret: str, body: bytes, webhook_id: str | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, now, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def new_secret() -> str:
    return "whsec_" + base64.b64encode(uuid.uuid4().bytes + uuid.uuid4().bytes).decode()


def send_event(web_url: str, secret: str, event: dict[str, Any]) -> httpx.Response:
    body = json.dumps(event).encode()
    return httpx.post(
        f"{web_url}/webhooks/shop", content=body, headers=signed_headers(secret, body), timeout=10
    )


def run_demo(web_url: str, sandbox_url: str, secret: str) -> int:
    outcome = _demo_order(web_url, sandbox_url, secret, "DE", "EUR", market=None)
    if outcome != 0:
        return outcome
    # With markets (`ordersync dev`): the same for a US order, which goes to the US
    # Klarna account, its own URL and credentials.
    markets = httpx.get(f"{sandbox_url}/_sandbox/klarna/markets", timeout=10).json()
    if "na" not in markets.get("markets", []):
        return 0
    print()
    return _demo_order(web_url, sandbox_url, secret, "US", "USD", market="na")


def _demo_order(
    web_url: str, sandbox_url: str, secret: str, country: str, currency: str, market: str | None
) -> int:
    shop_order = f"demo-{uuid.uuid4().hex[:8]}"
    klarna_lines = [klarna_line(KETTLE), klarna_line(TOASTER)]
    created = httpx.post(
        f"{sandbox_url}/_sandbox/klarna/orders",
        json={
            "purchase_currency": currency,
            "purchase_country": country,
            "payment_method": "INVOICE",
            "order_amount": 8500,
            "order_lines": klarna_lines,
            **({"market": market} if market else {}),
        },
        timeout=10,
    )
    created.raise_for_status()
    klarna_id = created.json()["order_id"]
    print(
        f"1. Klarna authorized 85.00 {currency} for {country} order {shop_order}"
        f" (klarna_order_id {klarna_id})"
    )

    order = {
        "id": shop_order,
        "version": 1,
        "currency": currency,
        "country": country,
        "status": "open",
        "payment": {
            "provider": "klarna",
            "klarna_order_id": klarna_id,
            "payment_method": "INVOICE",
        },
        "lines": [KETTLE, TOASTER],
    }
    answer = send_event(web_url, secret, {"type": "order.created", "order": order})
    print(f"2. shop sent order.created (v1, 85.00)            → HTTP {answer.status_code}")
    order = {**order, "version": 2, "lines": [KETTLE]}
    answer = send_event(web_url, secret, {"type": "order.updated", "order": order})
    print(f"3. shop sent order.updated (v2, toaster removed)  → HTTP {answer.status_code}")

    for _ in range(100):
        klarna = httpx.get(
            f"{sandbox_url}/_sandbox/ledger", params={"order_id": klarna_id}, timeout=10
        ).json()
        if klarna["entries"]:
            break
        time.sleep(0.2)
    else:
        print("   no operation reached Klarna within 20 s: see the worker's log")
        return 1
    entry = klarna["entries"][0]
    print(
        f"4. Klarna applied {entry['operation']}: order_amount {entry['amount']}, "
        f"Klarna-Idempotency-Key {entry['idempotency_key']}"
    )
    print("   order_lines sent:")
    for line in entry["lines"]:
        print(f"     {json.dumps(line)}")
    sent = httpx.get(
        f"{sandbox_url}/_sandbox/requests", params={"order_id": klarna_id}, timeout=10
    ).json()["requests"]
    where = sorted({sandbox_url + r["path"].split("/ordermanagement")[0] for r in sent})
    accounts = sorted({str(r.get("account")) for r in sent})
    print(
        f"   every request went to {', '.join(where)}"
        f" with market {', '.join(accounts)}'s credentials"
    )
    return 0
