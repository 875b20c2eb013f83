"""Per-process resources of a worker: settings, a Postgres pool, one pooled HTTP client
and the PSP clients over it. Built on first use in each (forked) process, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx

from data import orders as store
from domain.lines import PspLine
from integrations.adyen.client import AdyenClient
from integrations.klarna.client import KlarnaClient
from integrations.provider import Provider
from ordersync.db import SyncPool, sync_pool
from ordersync.settings import Settings, get_settings

DB_POOL_CAP = 32


@dataclass
class WorkerContext:
    settings: Settings
    pool: SyncPool
    http: httpx.Client
    providers: dict[str, Provider]

    def close(self) -> None:
        self.http.close()
        self.pool.close()


def build_context(settings: Settings) -> WorkerContext:
    settings.require("database_url")
    assert settings.database_url is not None
    http = httpx.Client(
        timeout=httpx.Timeout(
            settings.psp_read_timeout_seconds, connect=settings.psp_connect_timeout_seconds
        ),
        limits=httpx.Limits(
            max_connections=max(20, _concurrency), max_keepalive_connections=max(10, _concurrency)
        ),
        headers={"User-Agent": "ordersync/0.1"},
    )
    providers: dict[str, Provider] = {}
    if settings.klarna_api_url:
        providers["klarna"] = KlarnaClient(
            http,
            settings.klarna_api_url,
            settings.klarna_username or "",
            settings.klarna_password.get_secret_value() if settings.klarna_password else "",
        )
    # A task holds at most one connection at a time, and never across a PSP call, so
    # with many threads waiting on a slow PSP most hold none: past 32 the pool stops
    # growing with the concurrency (a thread waits for a connection a moment instead)
    # and Postgres's connection limit is not spent on idle ones.
    pool = sync_pool(
        settings.database_url.get_secret_value(),
        max_size=max(4, min(_concurrency + 1, DB_POOL_CAP)),
    )
    if settings.adyen_checkout_url or settings.adyen_pal_url:

        def captured_lines(order_id: str) -> list[PspLine]:
            with pool.connection() as conn:
                return store.captured_lines(conn, order_id)

        providers["adyen"] = AdyenClient(
            http,
            checkout_url=settings.adyen_checkout_url,
            api_key=settings.adyen_api_key.get_secret_value() if settings.adyen_api_key else "",
            merchant_account=settings.adyen_merchant_account,
            modifications_api=settings.adyen_modifications_api,
            pal_url=settings.adyen_pal_url,
            captured_lines=captured_lines,
        )
    return WorkerContext(settings=settings, pool=pool, http=http, providers=providers)


_context: WorkerContext | None = None
_context_pid: int | None = None
_concurrency = 1


def size_for_concurrency(tasks: int) -> None:
    """How many tasks one process runs at once (the threads pool's concurrency; 1 for
    prefork and solo): the Postgres pool and the HTTP client are sized to it."""
    global _concurrency
    _concurrency = max(1, tasks)


def get_context() -> WorkerContext:
    """The process's context; a forked child builds its own rather than share sockets."""
    global _context, _context_pid
    if _context is None or _context_pid != os.getpid():
        _context = build_context(get_settings())
        _context_pid = os.getpid()
    return _context


def close_context() -> None:
    global _context
    if _context is not None and _context_pid == os.getpid():
        _context.close()
    _context = None
