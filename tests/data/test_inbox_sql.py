"""The receiver's batch statement as psycopg sees it: short enough for its cache of
parsed statements, and the same SQL as written; and as Postgres plans it."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
from psycopg import _queries

from data import inbox
from service.ingest import _document, _params
from service.webhooks import parse_event
from tests.integration.stack import KETTLE, order_event

_LITERAL = re.compile(r"'[^']*'")


def test_the_batch_statement_fits_psycopgs_statement_cache() -> None:
    # Longer, psycopg splits its placeholders out with a regex at every batch.
    assert len(inbox.STORE_SHOP_EVENTS.encode()) <= _queries.MAX_CACHED_STATEMENT_LENGTH


def test_compacting_keeps_every_literal_and_placeholder() -> None:
    written, compacted = inbox.STORE_SHOP_EVENTS_TEXT, inbox.STORE_SHOP_EVENTS
    assert _LITERAL.findall(compacted) == _LITERAL.findall(written)
    assert re.findall(r"%\(\w+\)[sb]", compacted) == re.findall(r"%\(\w+\)[sb]", written)
    assert "--" not in compacted
    # Each token of the statement as written, comments aside, in the same order.
    tokens = " ".join(line.split("--", 1)[0] for line in written.splitlines()).split()
    assert compacted.split(" ") == tokens


def _scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    nodes = [(plan["Node Type"], plan.get("Relation Name", ""))]
    return nodes + [n for child in plan.get("Plans", []) for n in _scans(child)]


def test_the_batch_statement_finds_existing_orders_by_key_at_any_size(
    conn: psycopg.Connection[dict[str, Any]],
) -> None:
    """`id IN (SELECT id FROM batch)` over jsonb_array_elements (100 rows to the planner)
    was a sequential scan of orders below ~100 k orders: each batch read every order,
    and the receiver's Postgres time grew with the table (docs/performance.md, round 7)."""
    conn.execute(
        "INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,"
        " desired_amount) SELECT 'scan-' || g, 1, 'klarna', 'k-scan-' || g, 'EUR', 'open',"
        " '{}', 0 FROM generate_series(1, 5000) g"
    )
    conn.execute("ANALYZE orders")
    event = parse_event(json.dumps(order_event("scan-1", "k-scan-1", [KETTLE])).encode())
    document = _document([_params("msg_scan", event)], [0])
    (row,) = conn.execute(
        "EXPLAIN (FORMAT JSON) " + inbox.STORE_SHOP_EVENTS, {"rows": document}
    ).fetchall()
    scans = _scans(row["QUERY PLAN"][0]["Plan"])
    assert ("Seq Scan", "orders") not in scans
