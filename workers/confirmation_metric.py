"""Worker-side observations that need a look at Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

from data.orders import Operation
from ordersync import metrics

# Not asked for by a snapshot: the service extends an authorization on its own schedule.
_NOT_SNAPSHOT_DRIVEN = frozenset({"extend_authorization"})


def wanted(op: Operation) -> bool:
    """Whether the operation's confirmation is observed: asked for by a snapshot."""
    return op.kind not in _NOT_SNAPSHOT_DRIVEN


def operation_confirmed(op: Operation, provider: str, received_at: datetime | None) -> None:
    """Observes how long the shop waited: from receiving the snapshot version that the
    operation was planned for (its `target_version`) to the PSP confirming it.

    The inbox row of that version is the sound start: `orders.updated_at` moves with
    every flag and figure, and an operation planned for v3 may be confirmed after v4
    arrived. Versions that came in before the first stored one (none) are skipped.

    `received_at` is read by the statement that records the outcome (data/orders.py
    RECORD_SUCCESS, inbox.VERSION_RECEIVED_AT): no statement of its own.
    """
    if received_at is None or not wanted(op):
        return
    seconds = (datetime.now(UTC) - received_at).total_seconds()
    metrics.CONFIRMATION.labels(provider=provider, operation=op.kind).observe(max(0.0, seconds))
