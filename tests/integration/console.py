"""Helpers for the console's tests: a logged-in HTTP client, the operators' tokens, and
the orders that need a person, made the way `ordersync dev --demo` makes them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from devrig.demo import refused_increase

from tests.integration.stack import KETTLE, Stack, new_order_id, order_event, wait_for

TOASTER = {"id": "75002", "name": "Toaster", "quantity": 1, "unit_price": 2500, "tax_rate": 2500}
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def operator_token(stack: Stack, name: str) -> str:
    for entry in stack.env["OPERATOR_TOKENS"].split():
        who, _, token = entry.partition("=")
        if who == name:
            return token
    raise KeyError(name)


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match.group(1)


@contextmanager
def login(stack: Stack, name: str = "alice") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.web_url, timeout=15) as client:
        page = client.get("/console/login")
        answer = client.post(
            "/console/login",
            data={
                "csrf": csrf_of(page.text),
                "token": operator_token(stack, name),
                "next": "/console",
            },
        )
        assert answer.status_code == 303, answer.text[:300]
        yield client


def flags(stack: Stack, order_id: str) -> list[str]:
    return list((stack.order_row(order_id) or {}).get("flags") or [])


def refused_order(stack: Stack) -> str:
    """The demo's order: the toaster shipped and captured, a hat added, Klarna refused."""
    order_id = refused_increase(stack.web_url, stack.sandbox_url, stack.secret)
    assert order_id is not None, "the refused increase was not flagged"
    wait_for(lambda: "needs_new_order" in flags(stack, order_id), what="needs_new_order")
    return order_id


def halted_order(stack: Stack) -> tuple[str, str]:
    """An order whose authorization update failed on every retry (Klarna answered 500):
    needs_attention. The fault stays until the test clears it."""
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=1))
    stack.fault(kind="error", status=500, count=None, path_contains=f"{klarna_id}/authorization")
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=2))
    wait_for(
        lambda: "needs_attention" in flags(stack, order_id),
        timeout=30,
        what="needs_attention after retries",
    )
    return order_id, klarna_id


def failed_notification(stack: Stack) -> tuple[str, int]:
    """An Adyen order with a notification that failed: a refused CAPTURE that matches none
    of its operations (nothing moved, so orphaned after NOTIFICATION_ORPHAN_SECONDS), then
    marked `failed` the way workers/poison.py leaves one it could not process."""
    from tests.integration.test_adyen import SEED, event, item, payment, post, signed

    psp = payment(stack, 1470, notify=False)
    order_id = new_order_id()
    assert stack.send(event(order_id, psp, SEED, 1)).status_code == 202
    reference = uuid.uuid4().hex[:16].upper()
    capture = item(
        reference, "CAPTURE", 100, originalReference=psp, merchantReference="x", success="false"
    )
    assert post(stack, signed(stack, capture)).status_code == 200

    def orphaned() -> dict[str, Any] | None:
        with stack.db() as conn:
            return conn.execute(
                "SELECT id FROM inbox JOIN inbox_bodies b ON b.inbox_id = inbox.id"
                " WHERE source = 'adyen' AND b.payload->>'pspReference' = %s"
                " AND outcome = 'orphaned' AND order_id = %s",
                (reference, order_id),
            ).fetchone()

    row = wait_for(orphaned, timeout=30, what="orphaned notification")
    with stack.db() as conn:
        conn.execute("UPDATE inbox SET outcome = 'failed' WHERE id = %s", (row["id"],))
    return order_id, int(row["id"])
