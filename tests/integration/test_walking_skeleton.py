"""Issue 2: a shop change reaches Klarna, end to end, through the real stack."""

from __future__ import annotations

import json

import pytest

from tests.integration.stack import Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration

KETTLE = {
    "id": "75001",
    "name": "Kettle",
    "quantity": 1,
    "quantity_unit": "pcs",
    "unit_price": 6000,
    "tax_rate": 2500,
}
TOASTER = {"id": "75002", "name": "Toaster", "quantity": 1, "unit_price": 2500, "tax_rate": 2500}
HAT = {"id": "75003", "name": "Hat", "quantity": 1, "unit_price": 1500, "tax_rate": 2500}


def _update_requests(stack: Stack, klarna_id: str) -> list[dict]:
    return [
        r
        for r in stack.psp_requests(klarna_id)
        if r["method"] == "PATCH" and r["path"].endswith("/authorization")
    ]


def test_decrease_sends_one_patch_with_the_seed_lines_and_a_key(stack: Stack) -> None:
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    assert (
        stack.send(
            order_event(
                order_id, klarna_id, [KETTLE, TOASTER], version=1, event_type="order.created"
            )
        ).status_code
        == 202
    )
    answer = stack.send(order_event(order_id, klarna_id, [KETTLE], version=2))
    assert answer.status_code == 202
    assert answer.json() == {"status": "applied"}

    entries = wait_for(lambda: stack.ledger(klarna_id), what="the PATCH to reach Klarna")
    assert len(entries) == 1
    (entry,) = entries
    assert entry["operation"] == "update_authorization"
    assert entry["amount"] == 6000
    # Seed 000: order_amount 6000 with the kettle line, tax 1200 at 25 %.
    (line,) = entry["lines"]
    assert line["reference"] == "75001"
    assert (line["total_amount"], line["total_tax_amount"], line["tax_rate"]) == (6000, 1200, 2500)

    op = wait_for(
        lambda: [o for o in stack.operations(order_id) if o["status"] == "succeeded"],
        what="the operation's outcome",
    )[0]
    assert op["kind"] == "update_authorization"
    assert op["idempotency_key"] == entry["idempotency_key"]
    (request,) = _update_requests(stack, klarna_id)
    assert request["headers"]["klarna-idempotency-key"] == op["idempotency_key"]
    assert request["response_status"] == 204
    assert not request.get("spec_errors")
    row = stack.order_row(order_id)
    assert row is not None
    assert (row["authorized_amount"], row["flags"]) == (6000, [])
    wait_for(
        lambda: stack.order_row(order_id)["reconcile_requested_at"] is None,  # type: ignore[index]
        what="the order to be marked in sync",
    )


def test_increase_refused_by_klarna_flags_needs_new_order_without_retry(stack: Stack) -> None:
    klarna_id = stack.klarna_order([KETTLE])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=1))
    stack.fault(kind="reject_next_increase", count=1)
    stack.send(order_event(order_id, klarna_id, [KETTLE, HAT], version=2))

    row = wait_for(
        lambda: (r := stack.order_row(order_id)) and "needs_new_order" in r["flags"] and r,
        what="needs_new_order",
    )
    assert row["refused_amount"] == 7500
    reason = row["flag_reason"]["needs_new_order"]
    assert reason["code"] == "NOT_ALLOWED"
    assert [line["reference"] for line in reason["lines"]] == ["75003"]
    (op,) = stack.operations(order_id)
    assert (op["status"], op["attempts"]) == ("rejected", 1)
    assert op["error"]["code"] == "NOT_ALLOWED" and op["error"]["correlation_id"]
    # Let two sweeps pass: a refused increase is never asked for again.
    import time

    time.sleep(2.5)
    assert len(_update_requests(stack, klarna_id)) == 1
    assert stack.ledger(klarna_id) == []


def test_increase_the_table_forbids_is_flagged_without_calling_klarna(stack: Stack) -> None:
    # The seed's table: no increases in Switzerland, whatever the method.
    klarna_id = stack.klarna_order([KETTLE], country="CH", currency="CHF")
    order_id = new_order_id()
    event = order_event(order_id, klarna_id, [KETTLE], version=1, country="CH")
    event["order"]["currency"] = "CHF"
    stack.send(event)
    event = order_event(order_id, klarna_id, [KETTLE, HAT], version=2, country="CH")
    event["order"]["currency"] = "CHF"
    stack.send(event)
    row = wait_for(
        lambda: (r := stack.order_row(order_id)) and "needs_new_order" in r["flags"] and r,
        what="needs_new_order",
    )
    assert row["flag_reason"]["needs_new_order"]["code"] == "increase_not_allowed"
    assert _update_requests(stack, klarna_id) == []
    assert stack.operations(order_id) == []


def test_same_webhook_id_twice_has_no_second_effect(stack: Stack) -> None:
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=1))
    event = order_event(order_id, klarna_id, [KETTLE], version=2)
    first = stack.send(event, webhook_id="msg_dup_" + order_id)
    second = stack.send(event, webhook_id="msg_dup_" + order_id)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == {"status": "duplicate"}
    wait_for(lambda: stack.ledger(klarna_id), what="the PATCH")
    assert stack.inbox_count(order_id) == 2  # v1 and v2, not the repeat
    assert len(stack.ledger(klarna_id)) == 1


def test_stale_version_is_acknowledged_and_ignored(stack: Stack) -> None:
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=5))
    wait_for(lambda: stack.ledger(klarna_id), what="the PATCH")
    stale = stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=4))
    assert stale.status_code == 202
    assert stale.json() == {"status": "stale"}
    row = stack.order_row(order_id)
    assert row is not None and row["version"] == 5 and row["desired_amount"] == 6000
    assert len(stack.ledger(klarna_id)) == 1


@pytest.mark.parametrize(
    ("mutate", "status", "path"),
    [
        (lambda o: o["lines"][0].update(quantity=-1), 422, "order.lines.0.quantity"),
        (lambda o: o["lines"][0].update(shipped_quantity=2), 422, "order.lines.0.shipped_quantity"),
        (lambda o: o.update(amount=999_999), 422, "order.amount"),
        (lambda o: o["lines"][0].update(total_amount=1), 422, "order.lines.0.total_amount"),
        (lambda o: o.update(currency="euro"), 422, "order.currency"),
        (
            lambda o: o["payment"].pop("klarna_order_id"),
            422,
            "order.payment.klarna.klarna_order_id",
        ),
        (lambda o: o["lines"][0].update(unit_price=12.5), 422, "order.lines.0.unit_price"),
    ],
)
def test_invalid_body_is_422_naming_the_field_and_stores_nothing(
    stack: Stack, mutate: object, status: int, path: str
) -> None:
    order_id = new_order_id()
    event = order_event(order_id, "k-invalid", [dict(KETTLE)])
    mutate(event["order"])  # type: ignore[operator]
    answer = stack.send(event)
    assert answer.status_code == status
    body = answer.json()
    assert body["error"] == "validation_failed"
    assert path in [f["path"] for f in body["fields"]]
    assert stack.order_row(order_id) is None and stack.inbox_count(order_id) == 0


def test_bad_or_missing_signature_is_401_and_stores_nothing(stack: Stack) -> None:
    import httpx

    order_id = new_order_id()
    event = order_event(order_id, "k-unsigned", [KETTLE])
    forged = stack.send(event, secret="whsec_" + "A" * 43 + "=")
    assert forged.status_code == 401
    assert forged.json()["error"] == "unauthorized"
    unsigned = httpx.post(f"{stack.web_url}/webhooks/shop", json=event, timeout=10)
    assert unsigned.status_code == 401
    # Signed, then changed: the signature covers the raw bytes.
    body = json.dumps(event).encode()
    from devrig.demo import signed_headers

    headers = signed_headers(stack.secret, body)
    tampered = httpx.post(
        f"{stack.web_url}/webhooks/shop",
        content=body.replace(b"6000", b"6001"),
        headers=headers,
        timeout=10,
    )
    assert tampered.status_code == 401
    assert stack.order_row(order_id) is None and stack.inbox_count(order_id) == 0


def test_rotated_secrets_both_verify(stack: Stack) -> None:
    old, new = stack.env["SHOP_WEBHOOK_SECRETS"].split()
    for secret in (old, new):
        order_id = new_order_id()
        klarna_id = stack.klarna_order([KETTLE])
        answer = stack.send(order_event(order_id, klarna_id, [KETTLE]), secret=secret)
        assert answer.status_code == 202


def test_body_over_one_mebibyte_is_413(stack: Stack) -> None:
    order_id = new_order_id()
    event = order_event(order_id, "k-big", [KETTLE], padding="x" * (1024 * 1024))
    answer = stack.send(event)
    assert answer.status_code == 413
    assert stack.order_row(order_id) is None


def test_health_and_readiness(stack: Stack) -> None:
    import httpx

    assert httpx.get(f"{stack.web_url}/healthz", timeout=5).status_code == 200
    ready = httpx.get(f"{stack.web_url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "postgres": "ok", "redis": "ok"}
