"""Worker-side observations that need a look at Postgres."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from psycopg import Connection
from psycopg.rows import DictRow

from data import inbox
from data.orders import Operation
from ordersync import metrics

# Not asked for by a snapshot: the service extends an authorization on its own schedule.
_NOT_SNAPSHOT_DRIVEN = frozenset({"extend_authorization"})


def operation_confirmed(conn: Connection[DictRow], op: Operation) -> Callable[[str], None]:
    """Observes how long the shop waited: from receiving the snapshot version that the
    operation was planned for (its `target_version`) to the PSP confirming it.

    The inbox row of that version is the sound start: `orders.updated_at` moves with
    every flag and figure, and an operation planned for v3 may be confirmed after v4
    arrived. Versions that came in before the first stored one (none) are skipped.

    The read is sent now, with the statements recording the outcome (no round trip of
    its own); the function returned observes, for the order's PSP, once they are back.
    """
    if op.kind in _NOT_SNAPSHOT_DRIVEN:
        return lambda provider: None
    received = inbox.version_received_at(conn, op.order_id, op.target_version)

    def observe(provider: str) -> None:
        received_at = received()
        if received_at is None:
            return
        seconds = (datetime.now(UTC) - received_at).total_seconds()
        metrics.CONFIRMATION.labels(provider=provider, operation=op.kind).observe(max(0.0, seconds))

    return observe
