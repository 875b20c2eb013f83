"""Seed 004's basket (Adyen line items for Klarna), as the shop sends it (contract §4):
shoes 1200, two pairs of socks at 450, an order-level discount of −630; 1470 in all."""

from __future__ import annotations

from typing import Any

SHOES = {"id": "shoes", "name": "Shoes", "quantity": 1, "unit_price": 1200, "tax_rate": 2000}
SOCKS = {"id": "socks", "name": "Socks", "quantity": 2, "unit_price": 450, "tax_rate": 2000}


def discount(amount: int = 630) -> dict[str, Any]:
    """The order-level discount line taking `amount` off."""
    return {
        "id": "discount",
        "name": "Discount",
        "type": "discount",
        "quantity": 1,
        "unit_price": -amount,
        "tax_rate": 2000,
    }


DISCOUNT = discount()
