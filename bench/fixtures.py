"""Orders already known to ordersync and to the sandbox, made in bulk.

Postgres rows are made set-based (one INSERT … SELECT over generate_series); the
sandbox's Klarna orders over HTTP (it keeps them in memory), by the load generator.
Each order is the seed's kettle and toaster, authorized 8500 and read from Klarna
already, so the next step the reconciler takes is exactly one PSP call.
"""

from __future__ import annotations

import json

import psycopg

from bench.traffic import KLARNA_LINES, TOTAL, create_sandbox_orders, snapshot
from domain.snapshot import OrderSnapshot


def order_ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def insert_synced_orders(
    conn: psycopg.Connection[dict[str, object]],
    prefix: str,
    n: int,
    *,
    version: int,
    shipped: bool,
    requested: bool,
) -> None:
    template = OrderSnapshot.model_validate(snapshot("TEMPLATE", version, shipped)).model_dump(
        mode="json"
    )
    conn.execute(
        """
        INSERT INTO orders (id, version, provider, psp_order_id, currency, status, snapshot,
                            desired_amount, authorized_amount, authorized_lines, psp_status,
                            psp_payment_method, psp_country, psp_synced_at, expires_at,
                            reconcile_requested_at)
        SELECT o.id, %(version)s, 'klarna', 'k-' || o.id, 'EUR', 'open',
               jsonb_set(jsonb_set(%(snap)s::jsonb, '{id}', to_jsonb(o.id)),
                         '{payment,klarna_order_id}', to_jsonb('k-' || o.id)),
               %(total)s, %(total)s, %(lines)s::jsonb, 'authorized', 'INVOICE', 'DE', now(),
               now() + interval '28 days', CASE WHEN %(requested)s THEN now() END
        FROM (SELECT %(prefix)s || g AS id FROM generate_series(0, %(n)s - 1) AS g) AS o
        """,
        {
            "version": version,
            "snap": json.dumps(template),
            "total": TOTAL,
            "lines": json.dumps(KLARNA_LINES),
            "requested": requested,
            "prefix": prefix,
            "n": n,
        },
    )


def synced_orders(
    conn: psycopg.Connection[dict[str, object]],
    sandbox_url: str,
    prefix: str,
    n: int,
    *,
    shipped: bool,
    requested: bool,
) -> list[str]:
    ids = order_ids(prefix, n)
    create_sandbox_orders(sandbox_url, ids)
    insert_synced_orders(
        conn, prefix, n, version=2 if shipped else 1, shipped=shipped, requested=requested
    )
    return ids


def queue_reconciles(order_ids: list[str], *, single: bool = False) -> None:
    """Queues a reconcile of each order as the product queues a backlog of orders marked
    for one (what the receiver leaves them as): through the worker's own sender
    (workers/celery_app.py send_jobs), which sends what one unit of work asks for
    MAX_ORDERS_PER_MESSAGE to a message, as the web's publisher does with what it finds
    queued together. With `single`, one message per order (what the product sends for
    orders that arrive one at a time)."""
    from ordersync.jobs import Enqueued, Job
    from workers.celery_app import send_jobs
    from workers.tasks import reconcile_order

    if single:
        with reconcile_order.app.producer_or_acquire() as producer:
            for order_id in order_ids:
                reconcile_order.apply_async((order_id,), producer=producer)
    else:
        send_jobs([Enqueued(Job.RECONCILE_ORDER, (order_id,)) for order_id in order_ids])
