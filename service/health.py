"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.state import AppState

CHECK_TIMEOUT_SECONDS = 2.0


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state: AppState = request.app.state.ordersync
    postgres, redis = await asyncio.gather(_postgres_ok(state), _redis_ok(state))
    ready = postgres and redis
    return JSONResponse(
        {
            "status": "ready" if ready else "unavailable",
            "postgres": "ok" if postgres else "down",
            "redis": "ok" if redis else "down",
        },
        status_code=200 if ready else 503,
    )


async def _postgres_ok(state: AppState) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            async with state.probes.connection() as conn:
                await conn.execute("SELECT 1")
        return True
    except Exception:  # any failure means "not ready"; the reason is in the DB's own logs
        return False


async def _redis_ok(state: AppState) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            return await state.redis_ping()
    except Exception:
        return False
