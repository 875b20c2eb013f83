"""The console's pages and actions: thin handlers over the operator API's functions.

Every answer carries the web's security headers (service/edge.py: no script, no frame,
no-store); every POST needs the session's CSRF token (403 without); every value reaches
the page through Jinja2's autoescaping."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from data import operator_actions as audit
from ordersync.errors import NotFound, OrdersyncError, ValidationFailed
from service import health_figures, operator_actions, timeline
from service import operator_words as words
from service import order_views as operator
from service.bounded_json import text_problem
from service.console import session as sessions
from service.orders_api import identify, require_operators
from service.state import AppState

log = structlog.get_logger("ordersync.console")

SESSION_COOKIE = "ordersync_console"
LOGIN_COOKIE = "ordersync_login"
PAGE_SIZE = 25
MAX_FORM_BYTES = 16 * 1024
MAX_FILTER = 64
# Where a login may send the operator back to: a console page, nothing else.
_NEXT = re.compile(r"/console(/[A-Za-z0-9._:/-]{0,200})?")
# The console's actions: (what the confirm page asks, what the done banner says).
ACTIONS = {
    "reconcile": "Reconcile now",
    "reprocess": "Reprocess this notification",
    "resend": "Resend this event to the shop",
    "acknowledge": "Acknowledge the flag",
}
DONE = {
    "reconcile": "Reconcile requested: the service is reading the payment provider now.",
    "reprocess": "The notification is being processed again.",
    "resend": "The event is being sent to the shop again.",
    "acknowledge": "Your note is recorded on the order.",
}


# -- rendering ------------------------------------------------------------------------


def money(amount: Any, currency: str = "") -> str:
    if not isinstance(amount, int):
        return "–"
    sign = "−" if amount < 0 else ""
    units, cents = divmod(abs(amount), 100)
    return f"{sign}{units:,}.{cents:02d} {currency}".strip()


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def since(value: Any) -> str:
    at = parse_time(value)
    if at is None:
        return "–"
    return duration((datetime.now(UTC) - at).total_seconds())


def when(value: Any) -> str:
    at = parse_time(value)
    return "–" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(body: Any) -> str:
    """A request body as sent, indented for reading when it is JSON."""
    if not isinstance(body, str):
        return json.dumps(body, indent=2, sort_keys=True)
    try:
        return json.dumps(json.loads(body), indent=2)
    except ValueError:
        return body


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("service.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=money, since=since, when=when, duration=duration, pretty=pretty)
    env.globals.update(words=words)
    return env


@cache
def stylesheet() -> bytes:
    return resources.files("service.console").joinpath("static/console.css").read_bytes()


def _tls(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def page(request: Request, template: str, code: int = 200, **context: Any) -> HTMLResponse:
    body = environment().get_template(template).render(request=request, **context)
    return HTMLResponse(body, status_code=code)


# -- who --------------------------------------------------------------------------------


class Refused(OrdersyncError):
    status_code = 403
    code = "forbidden"


Handler = Callable[
    [Request, AppState, sessions.Session, list[tuple[str, str]]], Awaitable[Response]
]


def console(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page or action that needs a session: without one a GET goes to the login page
    and a POST is refused; a POST also needs the session's CSRF token. Errors become a
    page with the error's status; every answer gets the security headers."""

    async def endpoint(request: Request) -> Response:
        state: AppState = request.app.state.ordersync
        try:
            operators = require_operators(state)
            current = sessions.verify(operators, request.cookies.get(SESSION_COOKIE))
            if current is None:
                if request.method == "GET":
                    target = request.url.path
                    query = urlencode({"next": target}) if _NEXT.fullmatch(target) else ""
                    to = f"/console/login?{query}".rstrip("?")
                    return RedirectResponse(to, status_code=303)
                raise Refused("no session: log in first")
            if request.method == "POST":
                form = await _form(request)
                if not sessions.csrf_ok(operators, current, form.get("csrf")):
                    raise Refused("the form's CSRF token is missing or wrong; reload the page")
                request.state.form = form
            response = await handler(request, state, current, operators)
        except OrdersyncError as exc:
            response = _error_page(request, exc)
        return response

    return endpoint


def _error_page(request: Request, exc: OrdersyncError) -> Response:
    log.info("console_refused", error=exc.code, status=exc.status_code)
    fields = [f"{f.get('path')}: {f.get('message')}" for f in exc.fields or []]
    return page(
        request,
        "error.html",
        exc.status_code,
        status=exc.status_code,
        detail=exc.detail,
        fields=fields,
    )


async def _form(request: Request) -> dict[str, str]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise ValidationFailed("the form is too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ValidationFailed("the form is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise ValidationFailed("the form is not UTF-8 form data") from None
    return {key: value for key, value in pairs}


def _context(
    operators: list[tuple[str, str]], current: sessions.Session, **extra: Any
) -> dict[str, Any]:
    return {
        "operator": current.operator,
        "csrf": sessions.csrf_token(operators, current),
        **extra,
    }


async def login_page(request: Request) -> Response:
    state: AppState = request.app.state.ordersync
    try:
        require_operators(state)
    except OrdersyncError as exc:
        return _error_page(request, exc)
    return _login_form(request, None, 200)


def _login_form(request: Request, problem: str | None, status: int) -> Response:
    nonce = secrets.token_urlsafe(24)
    next_page = request.query_params.get("next", "")
    response = page(
        request,
        "login.html",
        status,
        csrf=nonce,
        next=next_page if _NEXT.fullmatch(next_page) else "/console",
        problem=problem,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_tls(request),
        max_age=3600,
    )
    return response


async def login(request: Request) -> Response:
    state: AppState = request.app.state.ordersync
    try:
        operators = require_operators(state)
        form = await _form(request)
    except OrdersyncError as exc:
        return _error_page(request, exc)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    presented = form.get("csrf", "")
    if not nonce or not sessions.same(nonce, presented):
        return _error_page(request, Refused("the login form's CSRF token is missing"))
    name = identify(operators, form.get("token", "").strip())
    if name is None:
        log.info("console_login_refused")
        return _login_form(request, "That token is not valid.", 401)
    log.info("console_login", operator=name)
    next_page = form.get("next", "")
    response = RedirectResponse(
        next_page if _NEXT.fullmatch(next_page) else "/console", status_code=303
    )
    response.set_cookie(
        SESSION_COOKIE,
        sessions.issue(operators, name),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_tls(request),
        max_age=sessions.SESSION_SECONDS,
    )
    response.delete_cookie(LOGIN_COOKIE, path="/console", httponly=True, samesite="strict")
    return response


@console
async def logout(request: Request, *_: Any) -> Response:
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/console", httponly=True, samesite="strict")
    return response


# -- pages ------------------------------------------------------------------------------


def _filter_text(name: str, value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if len(value) > MAX_FILTER or text_problem(value):
        raise ValidationFailed(
            "invalid filter",
            fields=[
                {"path": f"query.{name}", "message": f"text of at most {MAX_FILTER} characters"}
            ],
        )
    return value or None


@console
async def needs_a_person(
    request: Request, state: AppState, current: sessions.Session, operators: Any
) -> Response:
    query = request.query_params
    flag = operator.parse_flag(query.get("flag"))
    reason = _filter_text("reason", query.get("reason"))
    search = _filter_text("q", query.get("q"))
    account = operator.parse_account(query.get("account"))
    cursor = query.get("cursor") or None
    listing = await operator.list_flagged(
        state.pool, flag, PAGE_SIZE, cursor, account, reason=reason, search=search
    )
    ids = [o["id"] for o in listing["orders"]]
    async with state.pool.connection() as conn:
        acks = await audit.acknowledged(conn, ids) if ids else []
    acknowledged: dict[str, list[dict[str, Any]]] = {}
    for ack in acks:
        acknowledged.setdefault(ack["order_id"], []).append(ack)
    rows = []
    for order in listing["orders"]:
        explained = timeline.flag_explanations(order)
        waited_from = min(
            (e["flagged_at"] for e in explained if e["flagged_at"]), default=order["updated_at"]
        )
        rows.append(
            {
                "order": order,
                "flags": explained,
                "since": waited_from,
                "acks": acknowledged.get(order["id"], []),
            }
        )
    filters = {
        "flag": flag or "",
        "account": account or "",
        "reason": reason or "",
        "q": search or "",
    }
    next_link = None
    if listing["next_cursor"]:
        next_link = "/console?" + urlencode({**filters, "cursor": listing["next_cursor"]})
    return page(
        request,
        "orders.html",
        **_context(
            operators,
            current,
            rows=rows,
            filters=filters,
            # The merchant's accounts (contract §6); the filter shows when there are several.
            accounts=sorted({*state.accounts.klarna, *state.accounts.adyen}),
            next_link=next_link,
            paged=bool(cursor),
            flags=list(words.FLAGS),
            reasons=sorted(words.REASONS),
        ),
    )


@console
async def one_order(
    request: Request, state: AppState, current: sessions.Session, operators: Any
) -> Response:
    story = await timeline.order_story(state.pool, request.path_params["order_id"])
    done = request.query_params.get("done", "")
    return page(
        request,
        "order.html",
        **_context(operators, current, story=story, order=story["order"], done=DONE.get(done)),
    )


@console
async def health(
    request: Request, state: AppState, current: sessions.Session, operators: Any
) -> Response:
    async with state.pool.connection() as conn:
        figures = await health_figures.read(conn)
    sweep_age = (
        (datetime.now(UTC) - figures.last_sweep).total_seconds() if figures.last_sweep else None
    )
    return page(
        request,
        "health.html",
        **_context(
            operators,
            current,
            figures=figures,
            sweep_age=sweep_age,
            sweep_every=state.settings.reconcile_sweep_seconds,
        ),
    )


def _action(request: Request) -> str:
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise NotFound("no such action")
    return str(action)


@console
async def confirm(
    request: Request, state: AppState, current: sessions.Session, operators: Any
) -> Response:
    """Every action is confirmed on a page of its own, which says what it will do."""
    action = _action(request)
    story = await timeline.order_story(state.pool, request.path_params["order_id"])
    target = request.query_params.get("target", "")
    if len(target) > 128 or text_problem(target):
        raise ValidationFailed(
            "invalid target", fields=[{"path": "query.target", "message": "too long"}]
        )
    return page(
        request,
        "confirm.html",
        **_context(
            operators,
            current,
            action=action,
            title=ACTIONS[action],
            target=target,
            order=story["order"],
            story=story,
        ),
    )


@console
async def act(
    request: Request, state: AppState, current: sessions.Session, operators: Any
) -> Response:
    action = _action(request)
    order_id = request.path_params["order_id"]
    form: dict[str, str] = request.state.form
    target = form.get("target", "")
    name = current.operator
    if action == "reconcile":
        result = await operator_actions.reconcile(state.pool, order_id, name)
    elif action == "reprocess":
        result = await operator_actions.reprocess_notification(state.pool, order_id, target, name)
    elif action == "resend":
        result = await operator_actions.resend_event(state.pool, order_id, target, name)
    else:
        result = await operator_actions.acknowledge_flag(
            state.pool, order_id, target, form.get("note"), name
        )
    location = f"/console/orders/{result['order_id']}?" + urlencode({"done": action})
    return RedirectResponse(location, status_code=303)


async def css(_: Request) -> Response:
    response = Response(stylesheet(), media_type="text/css")
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/console", needs_a_person, methods=["GET"]),
        Route("/console/login", login_page, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", logout, methods=["POST"]),
        Route("/console/health", health, methods=["GET"]),
        Route("/console/static/console.css", css, methods=["GET"]),
        Route("/console/orders/{order_id}", one_order, methods=["GET"]),
        Route("/console/orders/{order_id}/confirm/{action}", confirm, methods=["GET"]),
        Route("/console/orders/{order_id}/{action}", act, methods=["POST"]),
    ]
