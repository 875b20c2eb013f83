"""The pure tests' shared builders: an order snapshot of given lines, a sales tax line,
and a market allow-list that allows every increase."""

from __future__ import annotations

from typing import Any

from domain.snapshot import OrderSnapshot


def allow_all(_method: str | None, _country: str | None) -> bool:
    return True


def order(lines: list[dict[str, Any]], status: str = "open", **extra: Any) -> OrderSnapshot:
    return OrderSnapshot.model_validate(
        {
            "id": "o1",
            "version": 1,
            "currency": "EUR",
            "country": "DE",
            "status": status,
            "payment": {"provider": "klarna", "klarna_order_id": "k1"},
            "lines": lines,
            **extra,
        }
    )


def sales_tax(amount: int) -> dict[str, Any]:
    """The order-level sales tax line adding `amount` (untaxed itself). Contract §4: it
    is shared by captures and refunds in proportion to value, as discount lines are."""
    return {
        "id": "tax",
        "name": "Sales tax",
        "type": "sales_tax",
        "quantity": 1,
        "unit_price": amount,
        "tax_rate": 0,
    }
