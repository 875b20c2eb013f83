"""Contract §4's prices and tax on what reaches the PSP: per-unit figures that add up to
the line's (Klarna's ±1 on tax), and a price edited after a capture. The real schema and
SQL (Postgres); the PSP played in-process."""

from __future__ import annotations

import json
from typing import Any

import pytest

from domain.money import klarna_tax_ok
from tests.ledger.harness import insert_order, new_order_id, shipped
from tests.ledger.test_ledger_regressions import drive
from tests.ledger.test_money_rules import adyen_context, snap

pytestmark = pytest.mark.integration

LAMP = {"id": "lamp", "name": "Lamp", "quantity": 3, "unit_price": 1329, "tax_rate": 2000}


def _line_items(body: dict[str, Any], reference: str) -> list[dict[str, Any]]:
    return [item for item in body["lineItems"] if item["id"] == reference]


def test_adyen_per_unit_taxes_add_up_to_the_lines_tax_within_klarnas_one_cent(
    database_url: str,
) -> None:
    """Seed 1060: 3 × 1329 at 20 % captured through Adyen went out as 3 units of 222 tax,
    666 on a line of 3987 whose tax is 664.5; Klarna behind Adyen checks the whole line
    to ±1. The units now carry taxes that add up to the line's, each within a cent of
    its own, and every unit's amounts still add up (net + tax = gross)."""
    ctx, sent = adyen_context(database_url)
    try:
        order_id = new_order_id()
        insert_order(ctx, snap(order_id, shipped([LAMP], lamp=3), provider="adyen"))
        drive(ctx, order_id)
        (capture,) = [r for r in sent if r.url.path.endswith("/captures")]
        body = json.loads(capture.content)
        items = _line_items(body, "lamp")
        assert sum(i["quantity"] for i in items) == 3
        assert sum(i["quantity"] * i["amountIncludingTax"] for i in items) == 3987
        tax = sum(i["quantity"] * i["taxAmount"] for i in items)
        assert klarna_tax_ok(3987, tax, 2000), tax
        assert all(
            i["amountExcludingTax"] + i["taxAmount"] == i["amountIncludingTax"] for i in items
        )
        assert all(abs(i["taxAmount"] - 221.5) <= 1 for i in items)
    finally:
        ctx.close()
