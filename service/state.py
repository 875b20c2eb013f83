"""What the web app holds for its lifetime, built once by the app factory."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ordersync.db import AsyncPool
from ordersync.metrics import Metrics
from ordersync.settings import Settings
from service.publisher import Publisher

Ping = Callable[[], Awaitable[bool]]


@dataclass
class AppState:
    settings: Settings
    pool: AsyncPool
    redis_ping: Ping
    metrics: Metrics
    publisher: Publisher
