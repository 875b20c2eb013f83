"""Per-process resources of a worker: settings, a Postgres pool, one pooled HTTP client
and the PSP clients over it. Built on first use in each (forked) process, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import httpx

from data import orders as store
from domain.lines import PspLine
from integrations.adyen.client import AdyenClient, CapturedLines
from integrations.klarna.client import KlarnaClient
from integrations.provider import Provider
from ordersync.accounts import DEFAULT, Accounts, build_accounts
from ordersync.db import SyncPool, sync_pool
from ordersync.http import LeanTransport, WorkerClient, environment_proxies
from ordersync.settings import Settings, get_settings
from workers.heartbeat import Heartbeat

DB_POOL_CAP = 32


@dataclass
class WorkerContext:
    settings: Settings
    pool: SyncPool
    http: httpx.Client
    # One client per PSP, for contexts built without accounts (tests, the simulation).
    providers: dict[str, Provider]
    # (PSP, account) → that account's client; the default account also under "default",
    # which orders stored before accounts carry (contract §6).
    by_account: dict[tuple[str, str], Provider] = field(default_factory=dict)
    # The process's one lease heartbeat, over whatever pool the context has now.
    heartbeat: Heartbeat = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.heartbeat = Heartbeat(lambda: self.pool)

    def provider(self, psp: str, account: str | None) -> Provider | None:
        """The client for an order's (or a frozen request's) account, and no other: an
        account no longer configured has none, and the order waits for it."""
        if self.by_account:
            return self.by_account.get((psp, account or DEFAULT))
        return self.providers.get(psp)

    def close(self) -> None:
        self.http.close()
        self.pool.close()


def build_context(settings: Settings) -> WorkerContext:
    settings.require("database_url")
    assert settings.database_url is not None
    # Keep-alive connections for every thread that may be waiting on a PSP at once.
    # The transport is the standard library's (ordersync/http.py: httpcore was a
    # quarter of the worker's CPU per operation), unless the environment names a proxy:
    # httpx honours HTTP(S)_PROXY only with its own transport. No cookie jar
    # (WorkerClient).
    timeout = httpx.Timeout(
        settings.psp_read_timeout_seconds, connect=settings.psp_connect_timeout_seconds
    )
    headers = {"User-Agent": "ordersync/0.1"}
    if environment_proxies():
        http = WorkerClient(
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max(20, _concurrency),
                max_keepalive_connections=max(10, _concurrency),
            ),
            headers=headers,
        )
    else:
        http = WorkerClient(
            timeout=timeout,
            transport=LeanTransport(max_idle=max(10, _concurrency)),
            headers=headers,
        )
    # A task holds at most one connection at a time, and never across a PSP call, so
    # with many threads waiting on a slow PSP most hold none: past 32 the pool stops
    # growing with the concurrency (a thread waits for a connection a moment instead)
    # and Postgres's connection limit is not spent on idle ones.
    pool = sync_pool(
        settings.database_url.get_secret_value(),
        max_size=max(4, min(_concurrency + 1, DB_POOL_CAP)),
    )

    def captured_lines(order_id: str) -> list[PspLine]:
        with pool.connection() as conn:
            return store.captured_lines(conn, order_id)

    by_account = account_clients(http, build_accounts(settings), captured_lines)
    return WorkerContext(
        settings=settings, pool=pool, http=http, providers={}, by_account=by_account
    )


def account_clients(
    http: httpx.Client, accounts: Accounts, captured_lines: CapturedLines | None = None
) -> dict[tuple[str, str], Provider]:
    """A client per configured account, over one pooled HTTP client."""
    clients: dict[tuple[str, str], Provider] = {}
    for k in accounts.klarna.values():
        clients[("klarna", k.name)] = KlarnaClient(
            http,
            k.base_url,
            k.username,
            k.password,
            account=k.name,
            increase_allowed=k.allows_increase,
        )
    for a in accounts.adyen.values():
        if not (a.checkout_url or a.pal_url):
            continue  # HMAC keys alone: notifications are checked, nothing is sent
        clients[("adyen", a.name)] = AdyenClient(
            http,
            checkout_url=a.checkout_url,
            api_key=a.api_key,
            merchant_account=a.merchant_account,
            modifications_api=a.modifications_api,
            pal_url=a.pal_url,
            captured_lines=captured_lines,
            account=a.name,
        )
    for psp, name in accounts.defaults.items():
        if (psp, name) in clients:
            clients[(psp, DEFAULT)] = clients[(psp, name)]
    return clients


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
