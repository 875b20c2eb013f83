"""One lease heartbeat per worker process.

Every operation a thread of this process is sending holds a lease (data/orders.py);
one thread renews all of them together, in one statement, every third of the shortest
lease held, so a slow PSP call never outlives its lease and a worker that dies stops
renewing (another takes over within one lease). A thread and a transaction per call
per beat cost more than the call they guard.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog

from data import orders as store
from ordersync.db import SyncPool
from workers.on_demand import OnDemandThread

log = structlog.get_logger("ordersync.reconcile")

# How long a heartbeat with nothing to renew waits before it ends.
IDLE_SECONDS = 1.0


@dataclass(frozen=True)
class Held:
    token: uuid.UUID
    lease_seconds: float


class Heartbeat:
    def __init__(self, pool: Callable[[], SyncPool]) -> None:
        self._pool = pool
        self._held: dict[uuid.UUID, Held] = {}
        self._lock = threading.Lock()
        self._beater = OnDemandThread("lease-heartbeat", self._run)

    @contextmanager
    def holding(self, op: store.Operation, lease_seconds: float) -> Iterator[None]:
        """Renews `op`'s lease while the block runs (while this worker still holds it)."""
        assert op.lease_token is not None
        with self._lock:
            self._held[op.id] = Held(op.lease_token, lease_seconds)
            self._beater.ensure()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(op.id, None)

    def _interval(self) -> float:
        with self._lock:
            leases = [held.lease_seconds for held in self._held.values()]
        return min(leases) / 3 if leases else IDLE_SECONDS

    def _run(self) -> None:
        while True:
            time.sleep(self._interval())
            with self._lock:
                if not self._held:
                    # Nothing to renew: the thread ends, and the next call starts one
                    # (a context closed in a test leaves no thread behind).
                    self._beater.ended()
                    return
            self.beat()

    def beat(self) -> None:
        """One renewal of every lease still held (the thread's beat; the simulation
        calls it in the middle of a PSP call slower than the lease)."""
        with self._lock:
            held = dict(self._held)
        if not held:
            return
        try:
            with self._pool().connection() as conn:
                renewed = store.renew_leases(
                    conn,
                    [(op_id, h.token, h.lease_seconds) for op_id, h in held.items()],
                )
        except Exception as exc:  # the next beat tries again
            log.warning("lease_renewal_failed", error=type(exc).__name__)
            return
        with self._lock:
            for op_id, h in held.items():
                # Lost (taken over, or recorded): never renewed again by this holder.
                if op_id not in renewed and self._held.get(op_id) == h:
                    del self._held[op_id]
