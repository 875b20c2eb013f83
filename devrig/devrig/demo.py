"""A visible order flowing through: the seed's Klarna example, end to end.

A customer bought a kettle (60.00) and a toaster (25.00), paid with Klarna invoice.
They ask to remove the toaster: the shop sends the new snapshot, and ordersync updates
Klarna's authorization to 6000 with the kettle line alone (seed: "Update order amount").

Then an order that needs a person, for the console: of a kettle and a toaster, the
toaster ships (captured), the customer adds a hat, and Klarna refuses the higher amount
(`needs_new_order`).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
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
    if "na" in markets.get("markets", []):
        print()
        outcome = _demo_order(web_url, sandbox_url, secret, "US", "USD", market="na")
        if outcome != 0:
            return outcome
    print()
    return _refused_order(web_url, sandbox_url, secret)


def _refused_order(web_url: str, sandbox_url: str, secret: str) -> int:
    refused = refused_increase(web_url, sandbox_url, secret)
    if refused is None:
        print("   the refused increase was not flagged within 20 s: see the worker's log")
        return 1
    print(
        f"5. order {refused}: the toaster shipped and was captured; the customer added a hat,"
        " and Klarna refused the higher amount → flagged needs_new_order"
    )
    print(f"   see it in the console: {web_url}/console (log in with OPERATOR_TOKEN)")
    return 0


def _kettle_and_toaster(
    sandbox_url: str, country: str = "DE", currency: str = "EUR", market: str | None = None
) -> tuple[str, str, dict[str, Any]]:
    """Klarna authorizes 85.00 for a kettle and a toaster: the shop order id, Klarna's
    order id, and the shop's first snapshot."""
    shop_order = f"demo-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        f"{sandbox_url}/_sandbox/klarna/orders",
        json={
            "purchase_currency": currency,
            "purchase_country": country,
            "payment_method": "INVOICE",
            "order_amount": 8500,
            "order_lines": [klarna_line(KETTLE), klarna_line(TOASTER)],
            **({"market": market} if market else {}),
        },
        timeout=10,
    )
    created.raise_for_status()
    klarna_id = str(created.json()["order_id"])
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
    return shop_order, klarna_id, order


def _demo_order(
    web_url: str, sandbox_url: str, secret: str, country: str, currency: str, market: str | None
) -> int:
    shop_order, klarna_id, order = _kettle_and_toaster(sandbox_url, country, currency, market)
    print(
        f"1. Klarna authorized 85.00 {currency} for {country} order {shop_order}"
        f" (klarna_order_id {klarna_id})"
    )

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


HAT = {
    "id": "75003",
    "name": "Hat",
    "type": "physical",
    "quantity": 1,
    "quantity_unit": "pcs",
    "unit_price": 1500,
    "tax_rate": 2500,
}


def refused_increase(web_url: str, sandbox_url: str, secret: str) -> str | None:
    """Plays an order whose increase Klarna refuses; its shop order id once it is flagged
    (None if that did not happen within 20 s)."""
    shop_order, klarna_id, order = _kettle_and_toaster(sandbox_url)
    send_event(web_url, secret, {"type": "order.created", "order": order})
    shipped = {**TOASTER, "shipped_quantity": 1}
    order = {**order, "version": 2, "lines": [KETTLE, shipped]}
    send_event(web_url, secret, {"type": "order.shipped", "order": order})
    if not _wait(lambda: _ledger(sandbox_url, klarna_id) >= 1):
        return None
    httpx.post(
        f"{sandbox_url}/_sandbox/faults",
        json={"kind": "reject_next_increase", "count": 1, "path_contains": klarna_id},
        timeout=10,
    ).raise_for_status()
    order = {**order, "version": 3, "lines": [KETTLE, shipped, HAT]}
    send_event(web_url, secret, {"type": "order.updated", "order": order})
    flagged = _wait(
        lambda: any(
            c["event"]["type"] == "order.new_order_required"
            for c in httpx.get(
                f"{sandbox_url}/_sandbox/shop/callbacks",
                params={"order_id": shop_order},
                timeout=10,
            ).json()["callbacks"]
        )
    )
    return shop_order if flagged else None


def _ledger(sandbox_url: str, klarna_id: str) -> int:
    klarna = httpx.get(f"{sandbox_url}/_sandbox/ledger", params={"order_id": klarna_id}, timeout=10)
    return len(klarna.json()["entries"])


def _wait(condition: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False
