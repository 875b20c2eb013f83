"""Logs carry no secret and no personal datum. This module sends what could leak them:
an order with a customer's name, e-mail, phone and address in fields the service does not
use, a forged signature, an invalid body, a wrong operator token. The check itself runs
over every process's log when the stack stops (tests/integration/conftest.py), so it
covers what every other test made the processes log too."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.stack import CUSTOMER, KETTLE, Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration


def _private_event(order_id: str, klarna_id: str, version: int) -> dict:
    event = order_event(
        order_id,
        klarna_id,
        [dict(KETTLE, customer_note=CUSTOMER["email"])],
        version=version,
        customer=CUSTOMER,
        billing_address=CUSTOMER,
    )
    event["customer"] = CUSTOMER
    return event


def test_personal_data_and_forged_signatures_leave_no_trace(stack: Stack) -> None:
    klarna_id = stack.klarna_order([KETTLE])
    order_id = new_order_id()
    accepted = stack.send(_private_event(order_id, klarna_id, 1))
    assert accepted.status_code == 202

    # Signed with a secret the service does not know.
    from devrig.demo import new_secret

    forged = stack.send(_private_event(order_id, klarna_id, 2), secret=new_secret())
    assert forged.status_code == 401
    # A body that fails validation, quoting the customer in the failing field.
    invalid = _private_event(order_id, klarna_id, 3)
    invalid["order"]["lines"][0]["quantity"] = CUSTOMER["email"]
    assert stack.send(invalid).status_code == 422
    # A wrong operator token that carries the customer's e-mail.
    refused = httpx.get(
        f"{stack.web_url}/orders/{order_id}",
        headers={"Authorization": f"Bearer {CUSTOMER['email']}"},
        timeout=10,
    )
    assert refused.status_code == 401
    # Not stored either: the snapshot keeps only what the service needs.
    row = wait_for(lambda: stack.order_row(order_id), what="the order")
    assert CUSTOMER["email"] not in json.dumps(row["snapshot"])
    assert CUSTOMER["family_name"] not in json.dumps(row["snapshot"])


def test_redaction_of_structured_and_free_text_values() -> None:
    from ordersync.logging import REDACTED, redact

    event = redact(
        None,
        "info",
        {
            "event": "x",
            "customer": CUSTOMER,
            "headers": {"Authorization": "Bearer abc"},
            "detail": f"mail {CUSTOMER['email']} at postgresql://u:pw@db/x",
            "nested": [{"phone_number": CUSTOMER["phone"], "ok": 1}],
        },
    )
    text = json.dumps(event)
    for value in (*CUSTOMER.values(), "Bearer abc", ":pw@"):
        assert value not in text
    assert event["nested"][0] == {"phone_number": REDACTED, "ok": 1}
