"""Issue 16's findings that need the real stack (Postgres, Redis, the worker): through
the real app in process, with the stack's worker processing what it stores."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from service.adyen_webhook import event_key
from tests.integration.edge import (
    adyen_auth,
    envelope,
    inbox_rows,
    shop_headers,
    signed_item,
)
from tests.integration.stack import CUSTOMER, KETTLE, Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration


def _post_shop(
    client: TestClient, stack: Stack, event: dict[str, Any], webhook_id: str | None = None
) -> Any:
    body = json.dumps(event).encode()
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    return client.post(
        "/webhooks/shop", content=body, headers=shop_headers(stack, body, webhook_id)
    )


def _item(**fields: Any) -> dict[str, Any]:
    item = {
        "pspReference": "P" + uuid.uuid4().hex[:15].upper(),
        "merchantAccountCode": "OrdersyncTest",
        "merchantReference": "ref",
        "eventCode": "CAPTURE",
        "success": "true",
        "amount": {"value": 1000, "currency": "EUR"},
        "eventDate": "2026-01-01T00:00:00+01:00",
    }
    item.update(fields)
    return item


def _post_adyen(client: TestClient, stack: Stack, *items: dict[str, Any]) -> Any:
    body = envelope(*(signed_item(stack, i) for i in items))
    return client.post("/webhooks/adyen", content=body, headers=adyen_auth(stack))


# -- 1. one request cannot freeze the web process ---------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["/webhooks/adyen", "/webhooks/shop"])
def test_600_kb_of_escaped_quotes_is_refused_at_once(
    client: TestClient, stack: Stack, path: str
) -> None:
    """On 489c33b this body held the CPU for over four minutes."""
    body = b'{"notificationItems":"' + b'\\"' * 300_000
    headers = adyen_auth(stack) if path.endswith("adyen") else shop_headers(stack, body)
    answer = client.post(path, content=body, headers=headers)
    assert answer.status_code == 400
    assert client.get("/healthz").status_code == 200


# -- 4. payments that are not ours neither spin nor alert ---------------------------------


def test_an_orphan_notification_backs_off_and_leaves_the_backlog(
    client: TestClient, stack: Stack
) -> None:
    """A CAPTURE for a payment nobody here knows (another system's, on a shared merchant
    account). Stored out of the sweeper's way and processed here, with the production
    orphan cut-off (the stack's is 3 s), so the first miss is what is looked at."""
    from psycopg.types.json import Jsonb

    from ordersync.settings import Settings
    from workers.adyen_inbox import _process

    item = _item()
    with stack.db() as conn:
        row = conn.execute(
            "WITH stored AS (INSERT INTO inbox (source, event_key, event_type)"
            " VALUES ('adyen', %s, 'CAPTURE') RETURNING id, received_at),"
            " body AS (INSERT INTO inbox_bodies (inbox_id, payload) SELECT id, %s FROM stored),"
            " due AS (INSERT INTO adyen_due (inbox_id, received_at, next_attempt_at)"
            " SELECT id, received_at, now() + interval '1 hour' FROM stored)"
            " SELECT id FROM stored",
            (event_key(item), Jsonb(item)),
        ).fetchone()
        assert row is not None
        with conn.transaction():
            outcome = _process(conn, Settings(notification_orphan_seconds=86400), row["id"])
        assert outcome.outcome == "unmatched"
        after = conn.execute(
            "SELECT outcome, processed_at, extract(epoch FROM next_attempt_at - now()) AS wait"
            " FROM inbox JOIN adyen_due ON inbox_id = id WHERE id = %s",
            (row["id"],),
        ).fetchone()
    assert after is not None
    assert after["outcome"] == "unmatched" and after["processed_at"] is None
    # Backed off by its own clock (a minute at least, growing with its age): not offered
    # again at every sweep.
    assert 50 < after["wait"] <= 3600
    from data.inbox import BACKLOG

    with stack.db() as conn:
        sources = conn.execute(BACKLOG).fetchall()
        unmatched = conn.execute(
            "SELECT count(*) AS n FROM inbox WHERE processed_at IS NULL AND outcome = 'unmatched'"
        ).fetchone()
        all_open = conn.execute(
            "SELECT count(*) AS n FROM inbox WHERE source = 'adyen' AND processed_at IS NULL"
        ).fetchone()
    assert unmatched is not None and all_open is not None
    in_backlog = sum(r["backlog"] for r in sources if r["source"] == "adyen")
    assert in_backlog == all_open["n"] - unmatched["n"]
    metrics = client.get("/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith("ordersync_inbox_unmatched "))
    assert float(line.split()[-1]) >= 1
    with stack.db() as conn:  # out of the other tests' way
        conn.execute("DELETE FROM inbox_bodies WHERE inbox_id = %s", (row["id"],))
        conn.execute("DELETE FROM adyen_due WHERE inbox_id = %s", (row["id"],))
        conn.execute("DELETE FROM inbox WHERE id = %s", (row["id"],))


# -- 5. nothing private is kept -----------------------------------------------------------

_WITHOUT_IDS = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")


def test_shopper_data_in_adyen_items_reaches_neither_database_nor_logs(
    client: TestClient, stack: Stack
) -> None:
    """Adyen sends the shopper with its items; we keep only what we act on. The stack's
    logs are grepped for the same values at the session's end (conftest)."""
    planted = {
        "shopperEmail": CUSTOMER["email"],
        "shopperName": f"{CUSTOMER['given_name']} {CUSTOMER['family_name']}",
        "shopperIP": "203.0.113.77",
        "shopperReference": "cust-88412-planted",
    }
    additional = {
        "billingAddress.street": CUSTOMER["street_address"],
        "billingAddress.postalCode": CUSTOMER["postal_code"],
        "billingAddress.city": CUSTOMER["city"],
        "shopperTelephone": CUSTOMER["phone"],
        "cardHolderName": CUSTOMER["family_name"],
    }
    items = [
        _item(eventCode=code, success=success, additionalData=additional, **planted)
        for code, success in (
            ("AUTHORISATION", "true"),
            ("CAPTURE", "false"),
            ("REPORT_AVAILABLE", "true"),
        )
    ]
    with capture_logs() as logs:
        assert _post_adyen(client, stack, *items).status_code == 200
    keys = [event_key(signed_item(stack, item)) for item in items]
    wait_for(
        lambda: all(
            (rows := inbox_rows(stack, "adyen", key)) and rows[0]["outcome"] is not None
            for key in keys
        ),
        timeout=30,
        what="the worker to process the items",
    )
    needles = [*planted.values(), *additional.values(), CUSTOMER["given_name"]]
    with stack.db() as conn:
        tables = [
            row["table_name"]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
        ]
        for table in tables:
            # Ids are random hex: a number among the needles (a postal code) may appear
            # inside one by chance, which would be no shopper data at all.
            text = _WITHOUT_IDS.sub(
                "<id>",
                "\n".join(
                    str(row["t"])
                    for row in conn.execute(f'SELECT t::text AS t FROM "{table}" t').fetchall()
                ),
            )
            for needle in needles:
                assert needle not in text, f"{needle!r} stored in {table}"
    logged = _WITHOUT_IDS.sub("<id>", json.dumps(logs, default=str))
    for needle in needles:
        assert needle not in logged


# -- 9. one order per payment, whatever the case of its id ----------------------------------


def test_a_payment_id_in_other_letter_case_is_the_same_payment(
    client: TestClient, stack: Stack
) -> None:
    psp = f"Kc-{uuid.uuid4().hex[:12]}"
    first = order_event(new_order_id(), psp.upper(), [KETTLE], event_type="order.created")
    second = order_event(new_order_id(), psp.lower(), [KETTLE], event_type="order.created")
    assert _post_shop(client, stack, first).status_code == 202
    answer = _post_shop(client, stack, second)
    assert answer.status_code == 409
    assert answer.json()["fields"][0]["path"] == "order.payment"
    assert stack.order_row(second["order"]["id"]) is None
    with stack.db() as conn:
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'one_order_per_payment_ci'"
        ).fetchone()
    assert index is not None and "lower(psp_order_id)" in index["indexdef"]


# -- 10. a webhook-id names one message -------------------------------------------------------


def test_a_reused_webhook_id_with_another_body_is_409_and_stores_nothing(
    client: TestClient, stack: Stack
) -> None:
    webhook_id = f"msg_{uuid.uuid4().hex}"
    first = order_event(new_order_id(), f"k-{uuid.uuid4().hex[:8]}", [KETTLE])
    other = order_event(new_order_id(), f"k-{uuid.uuid4().hex[:8]}", [KETTLE])
    assert _post_shop(client, stack, first, webhook_id).status_code == 202
    again = _post_shop(client, stack, first, webhook_id)
    assert (again.status_code, again.json()) == (202, {"status": "duplicate"})
    with capture_logs() as logs:
        reused = _post_shop(client, stack, other, webhook_id)
    assert reused.status_code == 409
    assert reused.json()["fields"] == [
        {"path": "webhook-id", "message": "already used for another body"}
    ]
    assert stack.order_row(other["order"]["id"]) is None
    assert any(entry["event"] == "webhook_id_reused" for entry in logs)
    assert len(inbox_rows(stack, "shop", webhook_id)) == 1


# -- 8. order ids an operator can reach -----------------------------------------------------


@pytest.mark.parametrize("order_id", ["D/1", "..", "1\x1b[2J", "1\u202e2", "1\u200b2"])
def test_an_order_id_outside_the_pattern_is_422(
    client: TestClient, stack: Stack, order_id: str
) -> None:
    event = order_event(order_id, f"k-{uuid.uuid4().hex[:8]}", [KETTLE])
    answer = _post_shop(client, stack, event)
    assert answer.status_code == 422
    assert answer.json()["fields"][0]["path"] == "order.id"
    time.sleep(0)  # nothing to wait for: nothing was stored
    assert stack.order_row(order_id) is None
