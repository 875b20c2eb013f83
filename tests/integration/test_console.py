"""The operator console over HTTP (contract §7), against the real stack: who may use it,
its headers and cookies, CSRF on every POST, the timeline as JSON and the actions through
the API. The browser tests are test_console_browser.py."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.integration.console import (
    KETTLE,
    csrf_of,
    failed_notification,
    login,
    operator_token,
    refused_order,
)
from tests.integration.stack import Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration

# Every POST of the console, with a form that would otherwise pass.
POSTS = [
    ("/console/orders/{id}/reconcile", {}),
    ("/console/orders/{id}/acknowledge", {"target": "needs_new_order", "note": "n"}),
    ("/console/orders/{id}/reprocess", {"target": "1"}),
    ("/console/orders/{id}/resend", {"target": "msg_" + "0" * 32}),
    ("/console/logout", {}),
]
PAGES = [
    "/console",
    "/console/health",
    "/console/orders/{id}",
    "/console/orders/{id}/confirm/reconcile",
]


@pytest.fixture(scope="module")
def refused(stack: Stack) -> str:
    return refused_order(stack)


def bearer(stack: Stack, name: str | None = None) -> dict[str, str]:
    token = operator_token(stack, name) if name else stack.operator_token
    return {"Authorization": f"Bearer {token}"}


def test_without_a_session_pages_send_to_login_and_posts_are_refused(
    stack: Stack, refused: str
) -> None:
    with httpx.Client(base_url=stack.web_url, timeout=15) as anonymous:
        for path in PAGES:
            answer = anonymous.get(path.format(id=refused))
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/console/login")
        for path, form in POSTS:
            assert anonymous.post(path.format(id=refused), data=form).status_code == 403
        # A wrong token is refused, with the login form again.
        page = anonymous.get("/console/login")
        answer = anonymous.post(
            "/console/login", data={"csrf": csrf_of(page.text), "token": "wrong" * 5}
        )
        assert answer.status_code == 401
        assert "ordersync_console" not in anonymous.cookies
        # The login form itself needs its CSRF token.
        assert anonymous.post("/console/login", data={"token": "x"}).status_code == 403


def test_session_cookie_and_headers(stack: Stack, refused: str) -> None:
    with httpx.Client(base_url=stack.web_url, timeout=15) as client:
        page = client.get("/console/login")
        answer = client.post(
            "/console/login",
            data={"csrf": csrf_of(page.text), "token": operator_token(stack, "bob")},
            # Behind a TLS-terminating proxy the cookie is Secure.
            headers={"X-Forwarded-Proto": "https"},
        )
        cookie = next(
            v for k, v in answer.headers.multi_items() if k == "set-cookie" and "console=" in v
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" in cookie
    # Without TLS, no Secure flag (the browser would drop the cookie on plain HTTP).
    with login(stack, "bob") as client:
        cookie = client.cookies.jar
        assert all(not c.secure for c in cookie)
        for path in [*PAGES, "/console/login", "/console/static/console.css"]:
            answer = client.get(path.format(id=refused))
            assert answer.status_code == 200, path
            headers = answer.headers
            assert headers["x-frame-options"] == "DENY"
            assert headers["cache-control"] == "no-store"
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            # default-src 'none' and no script-src: no script runs at all.
            assert "script-src" not in headers["content-security-policy"]
            assert "<script" not in answer.text


def test_every_post_without_csrf_is_refused_and_changes_nothing(stack: Stack, refused: str) -> None:
    with login(stack) as client:
        before = _actions(stack, refused)
        for path, form in POSTS:
            for token in (None, "", "0" * 64, "é" * 10):
                data = {**form} if token is None else {**form, "csrf": token}
                answer = client.post(path.format(id=refused), data=data)
                assert answer.status_code == 403, (path, token)
        assert _actions(stack, refused) == before
        assert client.get("/console").status_code == 200  # still logged in


def test_timeline_json_and_acknowledge_through_the_api(stack: Stack, refused: str) -> None:
    story = httpx.get(
        f"{stack.web_url}/orders/{refused}/timeline", headers=bearer(stack), timeout=15
    ).json()
    kinds = [entry["kind"] for entry in story["timeline"]]
    assert kinds.count("shop_webhook") == 3
    refusal = next(
        e
        for e in story["timeline"]
        if e["kind"] == "operation" and e["answer"]["status"] == "rejected"
    )
    assert refusal["answer"]["error_code"] == "NOT_ALLOWED"
    assert refusal["answer"]["correlation_id"]
    # The frozen request, byte for byte as sent.
    assert refusal["request"]["method"] == "PATCH"
    assert json.loads(refusal["request"]["body"])["order_amount"] == 10000
    assert refusal["idempotency_key"]
    assert "shop_event" in kinds
    [flag] = story["flags"]
    assert flag["flag"] == "needs_new_order" and "Klarna refused" in flag["what_happened"]
    assert [line["reference"] for line in flag["lines"]] == ["75003"]

    answer = httpx.post(
        f"{stack.web_url}/orders/{refused}/flags/needs_new_order/acknowledge",
        json={"note": "Emailed the customer about the hat"},
        headers=bearer(stack, "bob"),
        timeout=15,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["flags"] == ["needs_new_order"]  # the flag stays
    story = httpx.get(
        f"{stack.web_url}/orders/{refused}/timeline", headers=bearer(stack), timeout=15
    ).json()
    ack = story["timeline"][-1]
    assert (ack["kind"], ack["operator"], ack["note"]) == (
        "operator_action",
        "bob",
        "Emailed the customer about the hat",
    )
    # Refused: no note, a flag the order does not carry, an unknown order.
    for path, body, status in [
        ("flags/needs_new_order/acknowledge", {"note": ""}, 422),
        ("flags/needs_new_order/acknowledge", {"note": "x" * 2001}, 422),
        ("flags/needs_new_order/acknowledge", [1], 400),
        ("flags/needs_attention/acknowledge", {"note": "n"}, 409),
    ]:
        answer = httpx.post(
            f"{stack.web_url}/orders/{refused}/{path}", json=body, headers=bearer(stack), timeout=15
        )
        assert answer.status_code == status, (path, answer.text)
    answer = httpx.get(
        f"{stack.web_url}/orders/no-such/timeline", headers=bearer(stack), timeout=15
    )
    assert answer.status_code == 404
    assert httpx.get(f"{stack.web_url}/orders/{refused}/timeline", timeout=15).status_code == 401


def test_reprocess_resend_and_reconcile_through_the_api(stack: Stack) -> None:
    order_id, inbox_id = failed_notification(stack)
    url = f"{stack.web_url}/orders/{order_id}"
    answer = httpx.post(
        f"{url}/notifications/{inbox_id}/reprocess", headers=bearer(stack, "alice"), timeout=15
    )
    assert answer.status_code == 202, answer.text
    # Processed again (it still matches nothing, so it ends orphaned again).
    wait_for(lambda: _outcome(stack, inbox_id) == "orphaned", timeout=30, what="processed again")
    answer = httpx.post(
        f"{url}/notifications/{inbox_id}/reprocess", headers=bearer(stack), timeout=15
    )
    assert answer.status_code == 202  # orphaned: may be reprocessed too
    again = httpx.post(
        f"{url}/notifications/{inbox_id}/reprocess", headers=bearer(stack), timeout=15
    )
    assert again.status_code in (202, 409)
    for bad in ["999999999", "x", "-1"]:
        answer = httpx.post(
            f"{url}/notifications/{bad}/reprocess", headers=bearer(stack), timeout=15
        )
        assert answer.status_code == 404
    actions = [a for a in _actions(stack, order_id) if a["action"] == "reprocess_notification"]
    assert [a["operator"] for a in actions][:2] == ["alice", "operator"]


def test_resend_an_undelivered_event(stack: Stack) -> None:
    order_id = new_order_id()
    shop_fails(stack, order_id, 1000)
    klarna_id = stack.klarna_order([KETTLE])
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=1))

    def failing() -> list[dict[str, Any]]:
        with stack.db() as conn:
            return conn.execute(
                "SELECT id FROM outbox WHERE order_id = %s AND delivered_at IS NULL"
                " AND last_status = 503",
                (order_id,),
            ).fetchall()

    [row] = wait_for(failing, what="a failed delivery")
    # A long back-off ahead, and the shop answers again: only a resend sends it now.
    with stack.db() as conn:
        conn.execute(
            "UPDATE outbox SET next_attempt_at = now() + interval '1 day' WHERE id = %s",
            (row["id"],),
        )
    shop_fails(stack, order_id, 0)
    event_id = f"msg_{row['id'].hex}"
    story = httpx.get(
        f"{stack.web_url}/orders/{order_id}/timeline", headers=bearer(stack), timeout=15
    ).json()
    [event] = [e for e in story["timeline"] if e["kind"] == "shop_event"]
    assert event["can_resend"] and event["event"]["last_status"] == 503
    answer = httpx.post(
        f"{stack.web_url}/orders/{order_id}/events/{event_id}/resend",
        headers=bearer(stack, "bob"),
        timeout=15,
    )
    assert answer.status_code == 202, answer.text
    wait_for(lambda: _delivered(stack, order_id, event_id), timeout=30, what="resent and delivered")
    assert _actions(stack, order_id)[-1]["operator"] == "bob"
    answer = httpx.post(
        f"{stack.web_url}/orders/{order_id}/events/{event_id}/resend",
        headers=bearer(stack),
        timeout=15,
    )
    assert answer.status_code == 409  # a delivered event is never sent again


def shop_fails(stack: Stack, order_id: str, count: int) -> None:
    httpx.post(
        f"{stack.sandbox_url}/_sandbox/shop/callbacks/fail",
        json={"order_id": order_id, "count": count, "status": 503},
        timeout=10,
    ).raise_for_status()


def _outcome(stack: Stack, inbox_id: int) -> str | None:
    with stack.db() as conn:
        row = conn.execute("SELECT outcome FROM inbox WHERE id = %s", (inbox_id,)).fetchone()
    return None if row is None else row["outcome"]


def _delivered(stack: Stack, order_id: str, event_id: str) -> bool:
    with stack.db() as conn:
        rows = conn.execute(
            "SELECT id, delivered_at FROM outbox WHERE order_id = %s", (order_id,)
        ).fetchall()
    return any(
        f"msg_{row['id'].hex}" == event_id and row["delivered_at"] is not None for row in rows
    )


def _actions(stack: Stack, order_id: str) -> list[dict[str, Any]]:
    with stack.db() as conn:
        return conn.execute(
            "SELECT * FROM operator_actions WHERE order_id = %s ORDER BY id", (order_id,)
        ).fetchall()
