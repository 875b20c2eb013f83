"""Rows for repository tests. Test data only: production writes orders through the
receiver's own statement."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg.rows import class_row

from data.orders import ORDER_COLUMNS, Order

SNAPSHOT: dict[str, Any] = {
    "id": "o-1",
    "version": 1,
    "currency": "EUR",
    "status": "open",
    "payment": {"provider": "klarna", "klarna_order_id": "k-1"},
    "lines": [
        {
            "reference": "shoes",
            "name": "Shoes",
            "quantity": 1,
            "unit_price": 1200,
            "tax_rate": 2500,
            "shipped_quantity": 0,
            "returned_quantity": 0,
        }
    ],
}


def insert_order(
    conn: psycopg.Connection[dict[str, Any]], order_id: str = "o-1", **columns: Any
) -> Order:
    values: dict[str, Any] = {
        "id": order_id,
        "version": 1,
        "provider": "klarna",
        "psp_order_id": f"k-{order_id}",
        "currency": "EUR",
        "status": "open",
        "snapshot": json.dumps({**SNAPSHOT, "id": order_id}),
        "desired_amount": 1200,
        **columns,
    }
    names = ", ".join(values)
    marks = ", ".join(f"%({name})s" for name in values)
    row = (
        conn.cursor(row_factory=class_row(Order))
        .execute(
            f"INSERT INTO orders ({names}) VALUES ({marks}) RETURNING {ORDER_COLUMNS}",
            values,
        )
        .fetchone()
    )
    assert row is not None
    return row
