"""adyen_payments: what Adyen authorized for each payment (its AUTHORISATION)."""

from __future__ import annotations

from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

Row = dict[str, Any]

RECORD = """
INSERT INTO adyen_payments (psp_reference, authorized_amount, currency, merchant_account, lines)
VALUES (%(psp)s, %(amount)s, %(currency)s, %(account)s, %(lines)s)
ON CONFLICT (psp_reference) DO UPDATE
SET authorized_amount = EXCLUDED.authorized_amount, currency = EXCLUDED.currency,
    merchant_account = EXCLUDED.merchant_account, lines = EXCLUDED.lines
"""


def record(
    conn: Connection[Row],
    psp_reference: str,
    amount: int,
    currency: str,
    merchant_account: str | None,
    lines: list[dict[str, Any]],
) -> None:
    params = {
        "psp": psp_reference,
        "amount": amount,
        "currency": currency,
        "account": merchant_account,
        "lines": Jsonb(lines),
    }
    conn.execute(RECORD, params)
