"""The Starlette receiver: webhooks in, operator API, health and metrics."""

from __future__ import annotations

import contextlib
import gc
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import psycopg
import redis.asyncio as aioredis
import structlog
from psycopg_pool import PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from domain.snapshot import ShopEvent
from ordersync import jobs
from ordersync.accounts import build_accounts
from ordersync.db import async_pool
from ordersync.errors import OrdersyncError
from ordersync.jobs import BROKER_TRANSPORT_OPTIONS
from ordersync.metrics import Metrics
from ordersync.settings import Settings, get_settings
from service import orders_api as operator_api
from service.adyen_webhook import adyen_webhook
from service.batcher import Batcher
from service.console import routes as console
from service.edge import with_security_headers
from service.health import healthz, readyz
from service.ingest import Stored, store_shop_event, store_shop_events
from service.meta_routes import metrics_endpoint, openapi_endpoint
from service.publisher import Publisher, check_broker, redis_sender
from service.state import AppState
from service.webhooks import shop_webhook

log = structlog.get_logger("ordersync.web")


def redis_client_url(redis_url: str) -> str:
    """kombu spells a Unix socket `redis+socket://`; redis-py spells it `unix://`."""
    if redis_url.startswith("redis+socket://"):
        return "unix://" + redis_url.removeprefix("redis+socket://")
    return redis_url


_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]


class RequestContext:
    """Binds a request id (the caller's X-Request-ID, or a new one) to every log line,
    and puts it on every answer: it is the outermost layer of our own, so an error that
    nothing else handled is answered here (500, contract error JSON) with the id too.
    The request is also a unit of work: the jobs its handler asked for after its
    commit are handed to the publisher when it has answered.

    `direct` routes (the webhook POSTs, which are most requests) are called from here,
    past Starlette's exception middleware and router: what they raise goes to the same
    `exception_handlers` the app has, looked up the same way (the exception's class,
    then its bases), so every answer is what it would have been through the router."""

    def __init__(
        self,
        app: ASGIApp,
        send_jobs: jobs.Sender,
        direct: Mapping[tuple[str, str], ASGIApp] | None = None,
        exception_handlers: Mapping[type[Exception], ExceptionHandler] | None = None,
    ) -> None:
        self.app = app
        self.send_jobs = send_jobs
        self.direct = dict(direct or {})
        self.exception_handlers = dict(exception_handlers or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                given = value  # a repeated header: its last value, as a dict of them has it
        # Only an id that is safe to echo and to log is taken over.
        request_id = given.decode() if _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, path=scope["path"][:256])
        started = False
        id_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [*message.get("headers", []), id_header]
                message["headers"] = with_security_headers(headers)
            await send(message)

        direct = None
        if self.direct and not scope.get("root_path"):
            direct = self.direct.get((scope["method"], scope["path"]))
        with jobs.unit_of_work(self.send_jobs):
            try:
                if direct is None:
                    await self.app(scope, receive, send_with_id)
                else:
                    try:
                        await direct(scope, receive, send_with_id)
                    except Exception as exc:
                        handler = self._handler(exc)
                        if handler is None or started:
                            raise
                        response = await handler(Request(scope, receive), exc)
                        await response(scope, receive, send_with_id)
            except ClientDisconnect:
                # The client went away (or was cut off by the server's body clock) while
                # its body was read: nothing was stored and nobody is left to answer.
                log.info("client_disconnected")
            except Exception as exc:
                log.exception("unhandled_error", error=type(exc).__name__)
                if started:
                    raise
                response = JSONResponse(
                    {"error": "internal_error", "detail": "unexpected error"}, status_code=500
                )
                await response(scope, receive, send_with_id)

    def _handler(self, exc: Exception) -> ExceptionHandler | None:
        # As Starlette's exception middleware: the nearest class in the exception's MRO.
        for cls in type(exc).__mro__:
            if cls in self.exception_handlers:
                return self.exception_handlers[cls]
        return None


class _Receiver(Starlette):
    """The app, whose webhook POSTs skip one more layer: Starlette's outermost middleware
    (ServerErrorMiddleware, which answers 500 to what escapes everything inside it) is
    not in their way. RequestContext, the first layer inside it, answers every error of
    theirs itself (500 with the contract's JSON, or a handler's answer) and lets one
    through only once the answer has started, which ServerErrorMiddleware would only
    raise again; so a webhook's answers are the same (tests/service/test_direct_routes.py).
    The `front` is a RequestContext made with the very arguments of the one in the stack,
    called only for its direct routes."""

    _front: RequestContext | None = None

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        first: Any = self.user_middleware[0] if self.user_middleware else None
        # Only when nothing else stands between the two (no body limit, no middleware
        # before RequestContext): then skipping the outer layer skips only it.
        if (
            first is not None
            and first.cls is RequestContext
            and getattr(self, "max_body_size", None) is None
        ):
            self._front = RequestContext(self.router, *first.args, **first.kwargs)
        return stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        front = self._front
        if (
            front is not None
            and scope["type"] == "http"
            and (scope["method"], scope["path"]) in front.direct
            and not scope.get("root_path")
        ):
            scope["app"] = self
            await front(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _ordersync_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, OrdersyncError)
    log.info("request_refused", error=exc.code, status=exc.status_code, detail=exc.detail)
    return JSONResponse(exc.to_json(), status_code=exc.status_code, headers=exc.headers)


async def _http_error(_: Request, exc: Exception) -> Response:
    # Starlette's own 404/405 in the contract's error format, not plain text.
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        {"error": code, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )


async def _database_down(_: Request, exc: Exception) -> Response:
    # Never a 2xx for something not stored: 503 makes the sender retry.
    log.error("database_unavailable", error=type(exc).__name__)
    return JSONResponse(
        {"error": "unavailable", "detail": "storage is unavailable; retry later"},
        status_code=503,
    )


# The collector's young generation is collected every GC_GEN0_THRESHOLD container
# allocations net of frees (CPython's default 700). Measured on the web process under
# the ingest load (gc.callbacks, 16 s, ~3,500 webhooks): at the default, a few dozen
# young collections and two full ones, each full one walking every object of the
# process (modules, pydantic's schemas, the app): tens of milliseconds with the CPU
# shared, in the middle of 32 requests' answers. Small as CPU, it is a tail.
GC_GEN0_THRESHOLD = 50_000


def _tune_collector() -> None:
    """Once the web process has started: what is alive then (modules, the app, pools,
    settings) lives as long as the process, so it is moved out of the collector's sight
    (a full collection no longer walks it), and young collections are made rarer."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings | None = None, *, tune_collector: bool = False) -> Starlette:
    settings = settings or get_settings()
    settings.require("database_url", "redis_url", "shop_webhook_secrets")
    assert settings.database_url is not None and settings.redis_url is not None
    pool = async_pool(settings.database_url.get_secret_value(), max_size=settings.web_db_pool_size)
    # /readyz and /metrics are unauthenticated: they get their own two connections, so
    # however often they are called they never take one a webhook is waiting for.
    probe_pool = async_pool(
        settings.database_url.get_secret_value(), max_size=2, name="ordersync-probes"
    )
    redis = aioredis.from_url(
        redis_client_url(settings.redis_url.get_secret_value()),
        socket_timeout=2,
        socket_connect_timeout=2,
    )

    check_broker(settings.redis_url.get_secret_value(), BROKER_TRANSPORT_OPTIONS)
    publisher = Publisher(redis_sender(redis))

    async def redis_ping() -> bool:
        return bool(await redis.ping())

    # Group commit: concurrent shop webhooks share one statement and one commit.
    accounts = build_accounts(settings)
    batcher: Batcher[tuple[str, ShopEvent], Stored] = Batcher(
        lambda items: store_shop_events(pool, items, accounts),
        window_seconds=settings.web_batch_window_ms / 1000,
        max_items=settings.web_batch_max,
        max_in_flight=settings.web_batch_in_flight,
    )

    async def store_shop(webhook_id: str, event: ShopEvent) -> Stored:
        if settings.web_batch_window_ms <= 0:
            return await store_shop_event(pool, webhook_id, event, accounts)
        # A row's own Conflict is raised here, for its request alone.
        return await batcher.submit((webhook_id, event))

    state = AppState(
        settings=settings,
        pool=pool,
        redis_ping=redis_ping,
        metrics=Metrics(),
        publisher=publisher,
        store_shop_event=store_shop,
        probe_pool=probe_pool,
        accounts=accounts,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Open without waiting: the web process must start (and say 503) while Postgres
        # is still coming up.
        await pool.open(wait=False)
        await probe_pool.open(wait=False)
        await publisher.start()
        if tune_collector:
            _tune_collector()
        try:
            yield
        finally:
            await batcher.drain()
            await publisher.stop()
            await pool.close()
            await probe_pool.close()
            await redis.aclose()

    exception_handlers: dict[type[Exception], ExceptionHandler] = {
        OrdersyncError: _ordersync_error,
        HTTPException: _http_error,
        psycopg.OperationalError: _database_down,
        PoolTimeout: _database_down,
    }
    webhooks: dict[tuple[str, str], ASGIApp] = {
        ("POST", "/webhooks/shop"): shop_webhook,
        ("POST", "/webhooks/adyen"): adyen_webhook,
    }
    app = _Receiver(
        routes=[
            # Also reached straight from RequestContext (`direct`): the routes stay
            # here for the router's 405 to other methods, and for the OpenAPI check.
            Route("/webhooks/shop", shop_webhook, methods=["POST"]),
            Route("/webhooks/adyen", adyen_webhook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            *operator_api.routes(),
            *console.routes(),
        ],
        exception_handlers=dict(exception_handlers),
        lifespan=lifespan,
    )
    # No redirect to the slash-less path: Starlette builds it from the Host header, so
    # a client could make us point anywhere; `/orders/` is simply 404.
    app.router.redirect_slashes = False
    app.state.ordersync = state
    app.add_middleware(
        RequestContext,
        send_jobs=publisher.send,
        direct=webhooks,
        exception_handlers=exception_handlers,
    )
    return app


def create_web_app() -> Starlette:
    """The factory uvicorn calls in each of its processes."""
    from ordersync.logging import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, tune_collector=True)
