"""The pure tests' shared builders: an order snapshot of given lines, and a market
allow-list that allows every increase."""

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
