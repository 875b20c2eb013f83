"""The service's own events to the shop (contract §4), written to an outbox in the same
transaction as the change they report, and delivered by the worker afterwards."""

from __future__ import annotations

from typing import Any

from psycopg import Connection
from psycopg.rows import DictRow

from domain.planner import Flag


def record_flagged(conn: Connection[DictRow], order: dict[str, Any], flag: Flag) -> None:
    """An order was flagged: `order.new_order_required` or `order.needs_attention`."""


def record_synced(conn: Connection[DictRow], order: dict[str, Any]) -> None:
    """Every operation for the order's current version is done: `order.synced`."""
