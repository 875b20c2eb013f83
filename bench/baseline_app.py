"""The ingest baseline: the least a webhook receiver can do durably, served the same way
as ordersync's (Starlette under uvicorn, same worker count). Parse the JSON body, one
INSERT (committed), one Redis LPUSH, answer 202. No signature, no validation, no logs.

`python -m uvicorn bench.baseline_app:create_app --factory`; needs DATABASE_URL and
REDIS_URL, and the table made by `prepare`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from psycopg.types.json import Jsonb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ordersync.db import async_pool
from service.app import redis_client_url

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_baseline (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
)
"""


def create_app() -> Starlette:
    pool = async_pool(os.environ["DATABASE_URL"])
    redis = aioredis.from_url(redis_client_url(os.environ["REDIS_URL"]))

    async def receive(request: Request) -> Response:
        event = json.loads(await request.body())
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "INSERT INTO bench_baseline (payload) VALUES (%s) RETURNING id", (Jsonb(event),)
            )
            row = await cursor.fetchone()
        assert row is not None
        await redis.lpush("bench:baseline", str(row["id"]))
        return JSONResponse({"status": "applied"}, status_code=202)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()
            await redis.aclose()

    routes = [
        Route("/webhooks/shop", receive, methods=["POST"]),
        Route("/webhooks/adyen", receive, methods=["POST"]),
        Route("/healthz", lambda _: Response("ok"), methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
