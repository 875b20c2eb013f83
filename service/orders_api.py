"""The operator API (contract §3): thin handlers over service/operator.py."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ordersync.errors import ServiceUnavailable, Unauthorized
from ordersync.jobs import Job, enqueue_job
from service import order_views as operator
from service.state import AppState


class BearerRequired(Unauthorized):
    headers = {"WWW-Authenticate": 'Bearer realm="ordersync"'}


def authorize(state: AppState, authorization: str | None) -> None:
    token = state.settings.operator_token
    if token is None or not token.get_secret_value():
        raise ServiceUnavailable("the operator API is disabled: OPERATOR_TOKEN is not set")
    scheme, _, presented = (authorization or "").partition(" ")
    # Digests compared in constant time, and always compared: neither the token's
    # content nor its length shows in how fast a wrong one is refused.
    ok = hmac.compare_digest(
        hashlib.sha256(presented.strip().encode()).digest(),
        hashlib.sha256(token.get_secret_value().encode()).digest(),
    )
    if not ok or scheme.lower() != "bearer":
        raise BearerRequired("missing or invalid bearer token")


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.ordersync
    authorize(state, request.headers.get("authorization"))
    return state


async def get_order(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(await operator.order_detail(state.pool, request.path_params["order_id"]))


async def list_orders(request: Request) -> Response:
    state = _state(request)
    query = request.query_params
    flag = operator.parse_flag(query.get("flag"))
    limit = operator.parse_limit(query.get("limit"))
    account = operator.parse_account(query.get("account"))
    return JSONResponse(
        await operator.list_flagged(state.pool, flag, limit, query.get("cursor") or None, account)
    )


async def reconcile(request: Request) -> Response:
    state = _state(request)
    result = await operator.request_reconcile(state.pool, request.path_params["order_id"])
    enqueue_job(Job.RECONCILE_ORDER, result["order_id"], force=True)
    return JSONResponse(result, status_code=202)


def routes() -> list[BaseRoute]:
    return [
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/orders/{order_id}/reconcile", reconcile, methods=["POST"]),
    ]
