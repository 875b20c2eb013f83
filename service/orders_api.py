"""The operator API (contract §3, §7): thin handlers over service/order_views.py,
service/timeline.py and service/operator_actions.py."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ordersync.db import AsyncPool
from ordersync.errors import BadRequest, ServiceUnavailable, Unauthorized
from service import bounded_json, operator_actions, timeline
from service import order_views as operator
from service.state import AppState
from service.webhooks import read_body

# An acknowledgement's body: a note, nothing more.
MAX_ACTION_BODY = 16 * 1024


class BearerRequired(Unauthorized):
    headers = {"WWW-Authenticate": 'Bearer realm="ordersync"'}


def identify(operators: list[tuple[str, str]], presented: str) -> str | None:
    """The name of the operator whose token was presented, or None. Digests compared in
    constant time, against every token, always: neither a token's content, its length
    nor its place in the list shows in how fast a wrong one is refused."""
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for name, token in operators:
        if hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest()):
            found = found or name
    return found


def require_operators(state: AppState) -> list[tuple[str, str]]:
    operators = state.settings.operators
    if not operators:
        raise ServiceUnavailable(
            "the operator API is disabled: neither OPERATOR_TOKEN nor OPERATOR_TOKENS is set"
        )
    return operators


def authorize(state: AppState, authorization: str | None) -> str:
    """The operator's name, from the bearer token."""
    operators = require_operators(state)
    scheme, _, presented = (authorization or "").partition(" ")
    name = identify(operators, presented.strip())
    if name is None or scheme.lower() != "bearer":
        raise BearerRequired("missing or invalid bearer token")
    return name


def _state(request: Request) -> tuple[AppState, str]:
    state: AppState = request.app.state.ordersync
    return state, authorize(state, request.headers.get("authorization"))


async def get_order(request: Request) -> Response:
    state, _ = _state(request)
    return JSONResponse(await operator.order_detail(state.pool, request.path_params["order_id"]))


async def get_timeline(request: Request) -> Response:
    state, _ = _state(request)
    return JSONResponse(await timeline.order_story(state.pool, request.path_params["order_id"]))


async def list_orders(request: Request) -> Response:
    state, _ = _state(request)
    query = request.query_params
    flag = operator.parse_flag(query.get("flag"))
    limit = operator.parse_limit(query.get("limit"))
    account = operator.parse_account(query.get("account"))
    return JSONResponse(
        await operator.list_flagged(state.pool, flag, limit, query.get("cursor") or None, account)
    )


async def reconcile(request: Request) -> Response:
    state, name = _state(request)
    result = await operator_actions.reconcile(state.pool, request.path_params["order_id"], name)
    return JSONResponse(result, status_code=202)


async def _on_item(
    request: Request,
    action: Callable[[AsyncPool, str, str, str], Awaitable[dict[str, Any]]],
    item: str,
) -> Response:
    """An operator action on one item of an order (a notification, an event), by id."""
    state, name = _state(request)
    params = request.path_params
    result = await action(state.pool, params["order_id"], params[item], name)
    return JSONResponse(result, status_code=202)


async def reprocess_notification(request: Request) -> Response:
    return await _on_item(request, operator_actions.reprocess_notification, "notification_id")


async def resend_event(request: Request) -> Response:
    return await _on_item(request, operator_actions.resend_event, "webhook_id")


async def acknowledge_flag(request: Request) -> Response:
    state, name = _state(request)
    body = bounded_json.loads(await read_body(request.headers, request.receive, MAX_ACTION_BODY))
    if not isinstance(body, dict):
        raise BadRequest(
            "the body is not a JSON object", fields=[{"path": "body", "message": "an object"}]
        )
    params = request.path_params
    result = await operator_actions.acknowledge_flag(
        state.pool, params["order_id"], params["flag"], body.get("note"), name
    )
    return JSONResponse(result)


def routes() -> list[BaseRoute]:
    return [
        Route("/orders", list_orders, methods=["GET"]),
        Route("/orders/{order_id}", get_order, methods=["GET"]),
        Route("/orders/{order_id}/timeline", get_timeline, methods=["GET"]),
        Route("/orders/{order_id}/reconcile", reconcile, methods=["POST"]),
        Route(
            "/orders/{order_id}/notifications/{notification_id}/reprocess",
            reprocess_notification,
            methods=["POST"],
        ),
        Route("/orders/{order_id}/events/{webhook_id}/resend", resend_event, methods=["POST"]),
        Route("/orders/{order_id}/flags/{flag}/acknowledge", acknowledge_flag, methods=["POST"]),
    ]
