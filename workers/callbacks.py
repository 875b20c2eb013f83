"""The service's own events to the shop (contract §4), written to an outbox in the same
transaction as the change they report, and delivered by the worker afterwards.

Recording and sending are apart on purpose: an event exists only if the change it
reports was committed, and a slow or failing shop never holds a PSP operation up.
Delivery is at least once (a worker may die between the shop's 2xx and marking the row
delivered), so the `webhook-id` is stable per event and the shop deduplicates on it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import httpx
import structlog
from psycopg import Connection
from psycopg.rows import DictRow
from standardwebhooks.webhooks import Webhook

from data import outbox
from data.orders import Order, attention, halted
from data.outbox import webhook_id
from domain.planner import EXTERNAL_CHANGE, NEEDS_NEW_ORDER, Flag
from integrations.results import retry_delay
from ordersync import metrics
from ordersync.db import pipelined
from ordersync.http import url_at
from ordersync.jobs import Job, enqueue_job
from ordersync.settings import Settings, get_settings

log = structlog.get_logger("ordersync.callbacks")


class EventType(StrEnum):
    """The service's events to the shop (contract §4); not to be confused with the
    order flags (domain/planner.py OrderFlag) that two of them report."""

    NEW_ORDER_REQUIRED = "order.new_order_required"
    NEEDS_ATTENTION = "order.needs_attention"
    SYNCED = "order.synced"


# How long one delivery may hold a row before another worker may try it.
LEASE_SECONDS = 60
# A shop that refuses an event (a 4xx other than 408 and 429) this many times will not
# take it: it is parked (the operator view shows it with the shop's answer, and the log
# says `callback_parked`) so that the order's later events still reach the shop. Outages
# (5xx, timeouts, connection errors) are retried for ever, in order.
PARK_AFTER_REFUSALS = 10
# A batch per task: one order rarely has more, and the sweeper comes back for the rest.
BATCH = 20
_EVENT_NAMESPACE = uuid.UUID("8b0f3c52-6d1e-4a7b-9f2c-3e5d7a1b9c04")


def record_flagged(conn: Connection[DictRow], order: Order, flag: Flag) -> bool:
    """An order was flagged: `order.new_order_required` or `order.needs_attention`.

    Returns False when the shop was told of this state already: a second event for it
    would only make it act twice. A refused basket is told once per refused version
    (its event id, so its `webhook-id`, is derived from the order, version and amount):
    a second, different refused basket is news even though the flag is already set.
    So is money that moved without the service: contract §4 has the shop told of each
    such change ("flags needs_attention (external_change, with what changed) and tells
    the shop"), even while the order waits for a person for another reason; each is
    learnt once (a notification is processed once, a read records it as an operation).
    While only advisory reasons stand (domain/planner.py ADVISORY), each other reason
    is news once: the flag no longer waits for a person alone, so what it reports is.
    """
    event_id: uuid.UUID | None = None
    if flag.flag == NEEDS_NEW_ORDER:
        event_id = uuid.uuid5(_EVENT_NAMESPACE, f"{order.id}:{order.version}:{flag.refused_amount}")
    elif (
        flag.flag in (order.flags or [])
        and flag.code != EXTERNAL_CHANGE
        and (halted(order) or flag.code in attention(order))
    ):
        return False
    reason = {"code": flag.code, "message": flag.message}
    if flag.flag == NEEDS_NEW_ORDER:
        event_type = EventType.NEW_ORDER_REQUIRED
        data: dict[str, Any] = {"lines": [line.to_json() for line in flag.lines], "reason": reason}
    else:
        event_type = EventType.NEEDS_ATTENTION
        data = {"reason": reason}
    return _insert(conn, order, event_type, data, event_id=event_id)()


def record_synced(
    conn: Connection[DictRow],
    order: Order,
    after_commit: list[Callable[[], object]] | None = None,
    *,
    in_sync: bool = False,
) -> bool:
    """Every operation for the order's current version is done: `order.synced`. With
    `after_commit`, whether it was recorded is read once the transaction is committed
    (in pipeline mode, the insert then goes with the COMMIT: no round trip of its own).

    `in_sync`: the same statement marks the order in sync (data/orders.py mark_in_sync);
    True if it was sent (False: the shop still has to act, no event, nothing marked)."""
    authorized = order.authorized_amount
    still_flagged = [
        flag
        for flag in order.flags or []
        # The reconciler clears needs_new_order in this same step once the total fits.
        if not (
            flag == NEEDS_NEW_ORDER
            and authorized is not None
            and order.desired_amount <= authorized
        )
    ]
    if still_flagged:
        return False  # done with what it can do, but the shop still has to act: not "synced"
    data = {
        "amounts": {
            "ordered": order.desired_amount,
            "authorized": order.authorized_amount,
            "captured": order.captured_amount,
            "refunded": order.refunded_amount,
        }
    }
    # A periodic re-read or an operator's reconcile of an order already in sync is no
    # news to the shop; a sync after a flag is. Checked in the insert itself: one trip.
    synced = EventType.SYNCED
    recorded = _insert(
        conn, order, synced, data, unless_last_is=(synced, order.version), in_sync=in_sync
    )
    if after_commit is None:
        recorded()
    else:
        after_commit.append(recorded)
    return in_sync


def _insert(
    conn: Connection[DictRow],
    order: Order,
    event_type: str,
    data: dict[str, Any],
    unless_last_is: tuple[str, int] | None = None,
    event_id: uuid.UUID | None = None,
    *,
    in_sync: bool = False,
) -> Callable[[], bool]:
    """Sends the event's insert; the function returned reads whether it was recorded
    (False: recorded before, or the last one already) and asks for its delivery."""
    event_id = event_id or uuid.uuid4()
    body = {
        "type": event_type,
        "order_id": order.id,
        "version": order.version,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }
    inserted = outbox.insert_event(
        conn, event_id, order.id, order.version, event_type, body, unless_last_is, in_sync=in_sync
    )

    def recorded() -> bool:
        if not inserted():
            return False
        # Sent when the unit of work ends, after this transaction committed. Without a
        # callback URL the events stay in the outbox (the operator API shows them) and
        # no delivery task is worth sending.
        if get_settings().shop_callback_url:
            enqueue_job(Job.DELIVER_CALLBACKS, order.id)
        # The delivery logs the event (callback_delivered); the step logged the change.
        log.debug("callback_recorded", event_type=event_type, webhook_id=webhook_id(event_id))
        return True

    return recorded


# -- delivery -------------------------------------------------------------------------


def deliver_order(
    conn_pool: Any,
    http: httpx.Client,
    settings: Settings,
    order_id: str,
) -> tuple[int, float | None]:
    """Sends the order's due events in the order they happened, stopping at the first
    failure so the shop never sees a later event before an earlier one.

    Returns how many were delivered and, after a failure, in how many seconds to retry.
    """
    return deliver_orders(conn_pool, http, settings, [order_id])[order_id]


def deliver_orders(
    conn_pool: Any,
    http: httpx.Client,
    settings: Settings,
    order_ids: Sequence[str],
) -> dict[str, tuple[int, float | None]]:
    """`deliver_order` for each order, the orders side by side: one round trip claims
    the oldest due event of each, and one marks those delivered and claims each one's
    next (per batch of orders, not per event). Each order's events still go in the
    order they happened, and a failure stops that order only.

    Returns, per order, how many were delivered and when to come back (None: nothing
    due; 0.0: more are due now, past BATCH; else seconds after a failure)."""
    done: dict[str, tuple[int, float | None]] = {}
    url = settings.shop_callback_url
    if not url or not order_ids:
        return dict.fromkeys(order_ids, (0, None))  # recorded only: nowhere to send them
    if settings.shop_callback_secret is None:
        log.error("callback_not_configured", detail="SHOP_CALLBACK_SECRET is not set")
        return dict.fromkeys(order_ids, (0, None))
    signer = Webhook(settings.shop_callback_secret.get_secret_value())
    # Claimed in the orders' sorted order: two deliverers whose batches share orders
    # lock their events in the same order, so neither waits on the other in a cycle.
    counts = dict.fromkeys(sorted(order_ids), 0)
    claimed = _claim(conn_pool, list(counts))
    while claimed:
        delivered: list[tuple[outbox.Event, int | None]] = []
        for row in claimed:
            status, retry_in = _send(conn_pool, http, signer, url, settings, row)
            if retry_in is not None:
                done[row.order_id] = (counts[row.order_id], retry_in)
                continue
            counts[row.order_id] += 1
            delivered.append((row, status))
        more = []
        for row, _ in delivered:
            if counts[row.order_id] < BATCH:
                more.append(row.order_id)
            else:
                done[row.order_id] = (counts[row.order_id], 0.0)
        claimed = _claim(conn_pool, more, delivered)
    return {order_id: done.get(order_id, (counts[order_id], None)) for order_id in counts}


def _claim(
    conn_pool: Any,
    order_ids: list[str],
    delivered: Sequence[tuple[outbox.Event, int | None]] = (),
) -> list[outbox.Event]:
    """Marks the events just delivered, if any, and claims the next one of each order in
    `order_ids` (none for an order with nothing due). Both statements go with the
    COMMIT in pipeline mode, and the claim is read after it: one round trip for the
    batch, and none of its own for the last claim."""
    with pipelined(conn_pool) as conn:
        if delivered:
            outbox.mark_delivered(conn, [(row.id, status) for row, status in delivered])
        claimed = outbox.claim_next(conn, order_ids, LEASE_SECONDS) if order_ids else None
    for row, status in delivered:
        metrics.CALLBACKS.labels(event_type=row.event_type, outcome="delivered").inc()
        log.info(
            "callback_delivered",
            event_type=row.event_type,
            webhook_id=webhook_id(row.id),
            attempts=row.attempts,
            http_status=status,
        )
    if claimed is None:
        return []
    # Each order once; in the batch's order (any order between orders is as good).
    place = {order_id: i for i, order_id in enumerate(order_ids)}
    return sorted(claimed(), key=lambda row: place[row.order_id])


def _send(
    conn_pool: Any,
    http: httpx.Client,
    signer: Webhook,
    url: str,
    settings: Settings,
    row: outbox.Event,
) -> tuple[int | None, float | None]:
    """POSTs one event: the shop's status if it took it (the caller marks it delivered
    with its next claim), else the failure is recorded and the delay before the next
    try returned."""
    msg_id = webhook_id(row.id)
    body = _canonical(row.payload)
    now = datetime.now(UTC)
    # Signed afresh on every attempt: receivers refuse timestamps older than 5 minutes.
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign(msg_id, now, body),
        "content-type": "application/json",
    }
    status: int | None = None
    error: str | None = None
    try:
        response = http.post(url_at(url), content=body.encode(), headers=headers)
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    if error is None:
        return status, None
    with conn_pool.connection() as conn, conn.transaction():
        delay = retry_delay(
            row.attempts, settings.retry_base_seconds, settings.retry_max_seconds, floor=0.5
        )
        refused = status is not None and 400 <= status < 500 and status not in (408, 429)
        park = refused and int(row.attempts) >= PARK_AFTER_REFUSALS
        outbox.mark_failed(conn, row.id, delay, status, error, park=park)
    if park:
        log.error(
            "callback_parked",
            event_type=row.event_type,
            webhook_id=msg_id,
            attempts=row.attempts,
            http_status=status,
        )
        return None, 0.0  # the order's next event goes now
    metrics.CALLBACKS.labels(event_type=row.event_type, outcome="failed").inc()
    log.warning(
        "callback_failed",
        event_type=row.event_type,
        webhook_id=msg_id,
        attempts=row.attempts,
        http_status=status,
        error=error,
        retry_in_seconds=round(delay, 2),
    )
    return None, delay


def _canonical(payload: dict[str, Any]) -> str:
    # The same bytes on every attempt: the body is stored, never rebuilt.
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)
