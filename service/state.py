"""What the web app holds for its lifetime, built once by the app factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from domain.snapshot import ShopEvent
from ordersync.db import AsyncPool
from ordersync.metrics import Metrics
from ordersync.settings import Settings
from service.ingest import Stored
from service.publisher import Publisher


class Enqueue(Protocol):
    def __call__(self, order_id: str, *, force: bool = False) -> Awaitable[None]: ...


Ping = Callable[[], Awaitable[bool]]
# Stores one shop event (grouped with concurrent ones into one commit) and returns its
# outcome once committed; raises the request's Conflict.
StoreShopEvent = Callable[[str, ShopEvent], Awaitable[Stored]]


@dataclass
class AppState:
    settings: Settings
    pool: AsyncPool
    enqueue: Enqueue
    redis_ping: Ping
    metrics: Metrics
    publisher: Publisher
    store_shop_event: StoreShopEvent
