"""Shop callback deliveries asked for by a worker process, sent as one message per batch.

Every operation that brings an order in sync records an `order.synced` event, and its
delivery used to be a Celery message of its own: each operation cost two messages (the
reconcile and the delivery), and a message's publish, fetch, acknowledgement and task
machinery cost the worker more CPU than the delivery's own work. The orders whose
deliveries this process asked for in the last WINDOW_SECONDS go out as one
`deliver_callback_batch` message instead (at most MAX_ORDERS per message), and that task
delivers each order's events as `deliver_callbacks` does: oldest first, stopping at the
order's first failure (workers/callbacks.py deliver_order).

What the batch holds is never the only record: the events are committed in the outbox
before their delivery is asked for, so a batch lost with its process (killed before the
window ended) is only a delay, as a message the broker refused is: the sweeper finds
every undelivered event that is due (workers/sweeper.py sweep_callbacks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import structlog

from workers.on_demand import OnDemandThread

log = structlog.get_logger("ordersync.callbacks")

# How long an order waits for others to share its message, and how many share one. A
# batch is delivered by one thread, order after order: the bound keeps one slow shop
# answer from holding many orders' events behind it.
WINDOW_SECONDS = 0.05
MAX_ORDERS = 25
# How long a flusher with nothing to send waits before it ends (the next order starts one).
IDLE_SECONDS = 1.0

Send = Callable[[Sequence[str]], None]


class DeliveryBatcher:
    """Collects order ids for delivery and hands them to `send` in batches, from a
    thread of its own (started on demand, one per process: a forked pool process starts
    its own)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: dict[str, None] = {}  # insertion-ordered, each order once
        self._ready = threading.Condition()
        self._flusher = OnDemandThread("callback-batches", self._run)

    def add(self, order_id: str) -> None:
        with self._ready:
            self._pending[order_id] = None
            full = len(self._pending) >= MAX_ORDERS
            if not full:
                self._flusher.ensure()
                self._ready.notify()
                return
            batch = self._take()
        self._flush(batch)

    def flush(self) -> None:
        """Sends what is pending now (a process shutting down)."""
        with self._ready:
            batch = self._take()
        self._flush(batch)

    def _take(self) -> list[str]:
        batch, self._pending = list(self._pending), {}
        return batch

    def _flush(self, batch: list[str]) -> None:
        if not batch:
            return
        try:
            self._send(batch)
        except Exception as exc:
            # Only a delay: the events are in the outbox and the sweeper finds them.
            log.warning("enqueue_failed", error=type(exc).__name__, jobs=1, orders=len(batch))

    def _run(self) -> None:
        while True:
            with self._ready:
                if not self._pending and not self._ready.wait_for(
                    lambda: bool(self._pending), timeout=IDLE_SECONDS
                ):
                    self._flusher.ended()
                    return
            # The window: orders asked for meanwhile share the message.
            with self._ready:
                self._ready.wait_for(lambda: len(self._pending) >= MAX_ORDERS, WINDOW_SECONDS)
                batch = self._take()
            self._flush(batch)
