"""What the web app holds for its lifetime, built once by the app factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from ordersync.db import AsyncPool
from ordersync.metrics import Metrics
from ordersync.settings import Settings
from service.publisher import Publisher


class Enqueue(Protocol):
    def __call__(self, order_id: str, *, force: bool = False) -> Awaitable[None]: ...


Ping = Callable[[], Awaitable[bool]]


@dataclass
class AppState:
    settings: Settings
    pool: AsyncPool
    enqueue: Enqueue
    redis_ping: Ping
    metrics: Metrics
    publisher: Publisher
    # Connections for /readyz and /metrics only (None: they share `pool`).
    probe_pool: AsyncPool | None = None

    @property
    def probes(self) -> AsyncPool:
        return self.probe_pool or self.pool
