"""What the web app holds for its lifetime, built once by the app factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from domain.snapshot import ShopEvent
from ordersync.accounts import Accounts
from ordersync.db import AsyncPool
from ordersync.metrics import Metrics
from ordersync.settings import Settings
from service.ingest import Stored
from service.publisher import Publisher

Ping = Callable[[], Awaitable[bool]]
# Stores one shop event (grouped with concurrent ones into one commit) and returns its
# outcome once committed; raises the request's Conflict.
StoreShopEvent = Callable[[str, ShopEvent], Awaitable[Stored]]


@dataclass
class AppState:
    settings: Settings
    pool: AsyncPool
    redis_ping: Ping
    metrics: Metrics
    publisher: Publisher
    store_shop_event: StoreShopEvent
    # Connections for /readyz and /metrics only (None: they share `pool`).
    probe_pool: AsyncPool | None = None
    # The merchant's PSP accounts (contract §6): routing and Adyen's HMAC keys.
    accounts: Accounts = field(default_factory=lambda: Accounts(klarna={}, adyen={}))

    @property
    def probes(self) -> AsyncPool:
        return self.probe_pool or self.pool
