"""Issue 5: operators see every order and act on flagged ones; the shop is told; metrics
move. Everything through the real stack: web, worker, beat, sandbox and its shop."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from tests.integration.console import halted_order
from tests.integration.stack import Stack, new_order_id, order_event, wait_for

pytestmark = pytest.mark.integration

KETTLE = {"id": "75001", "name": "Kettle", "quantity": 1, "unit_price": 6000, "tax_rate": 2500}
TOASTER = {"id": "75002", "name": "Toaster", "quantity": 1, "unit_price": 2500, "tax_rate": 2500}
HAT = {"id": "75003", "name": "Hat", "quantity": 1, "unit_price": 1500, "tax_rate": 2500}


def _auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.operator_token}"}


def _get(stack: Stack, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{stack.web_url}{path}", params=params, headers=_auth(stack), timeout=10)


def _callbacks(stack: Stack, order_id: str) -> list[dict[str, Any]]:
    return list(
        httpx.get(
            f"{stack.sandbox_url}/_sandbox/shop/callbacks",
            params={"order_id": order_id},
            timeout=10,
        ).json()["callbacks"]
    )


def _delivered(stack: Stack, order_id: str, event_type: str) -> list[dict[str, Any]]:
    return [
        c
        for c in _callbacks(stack, order_id)
        if c["answered"] == 200 and c["event"]["type"] == event_type
    ]


def _refused_increase(stack: Stack) -> tuple[str, str]:
    klarna_id = stack.klarna_order([KETTLE])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=1))
    stack.fault(kind="reject_next_increase", count=1, path_contains=klarna_id)
    stack.send(order_event(order_id, klarna_id, [KETTLE, HAT], version=2))
    wait_for(
        lambda: "needs_new_order" in (stack.order_row(order_id) or {}).get("flags", []),
        what="needs_new_order",
    )
    return order_id, klarna_id


def _exhausted_retries(stack: Stack) -> tuple[str, str]:
    return halted_order(stack)


# -- auth ------------------------------------------------------------------------------

OPERATOR_ROUTES = [("GET", "/orders/{id}"), ("GET", "/orders"), ("POST", "/orders/{id}/reconcile")]


@pytest.mark.parametrize(("method", "path"), OPERATOR_ROUTES)
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        "Basic b3BlcmF0b3I6c2VjcmV0",
        "{token}x",
        "Token {token}",
    ],
)
def test_every_operator_route_refuses_a_missing_or_wrong_token(
    stack: Stack, method: str, path: str, authorization: str | None
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization.format(token=stack.operator_token)
    url = stack.web_url + path.format(id="1001")
    answer = httpx.request(method, url, headers=headers, timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"] == "unauthorized"
    assert answer.headers["www-authenticate"].startswith("Bearer")


# -- the order, its history and its flags ----------------------------------------------


def test_show_a_refused_increase_with_reason_lines_keys_and_correlation_id(stack: Stack) -> None:
    order_id, klarna_id = _refused_increase(stack)
    order = _get(stack, f"/orders/{order_id}").json()
    assert order["id"] == order_id and order["version"] == 2
    assert order["flags"] == ["needs_new_order"]
    reason = order["flag_reasons"]["needs_new_order"]
    assert reason["code"] == "NOT_ALLOWED"
    assert [line["reference"] for line in reason["lines"]] == ["75003"]
    assert order["amounts"] == {"ordered": 7500, "authorized": 6000, "captured": 0, "refunded": 0}
    assert order["payment"]["klarna_order_id"] == klarna_id
    assert order["payment"]["payment_method"] == "INVOICE"
    assert order["payment"]["country"] == "DE"
    (op,) = order["operations"]
    assert (op["kind"], op["status"], op["amount"], op["attempts"]) == (
        "update_authorization",
        "rejected",
        7500,
        1,
    )
    assert op["idempotency_key"] == stack.operations(order_id)[0]["idempotency_key"]
    assert op["error"]["code"] == "NOT_ALLOWED" and op["error"]["correlation_id"]
    assert [w["version"] for w in order["webhooks"]] == [1, 2]
    assert {line["id"] for line in order["lines"]} == {"75001", "75003"}
    assert all(line["captured_quantity"] == 0 for line in order["lines"])


def test_list_flagged_orders_newest_first_with_a_cursor(stack: Stack) -> None:
    first, _ = _refused_increase(stack)
    second, _ = _refused_increase(stack)
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        page = _get(
            stack,
            "/orders",
            flag="needs_new_order",
            limit=1,
            **({"cursor": cursor} if cursor else {}),
        ).json()
        assert len(page["orders"]) <= 1
        seen += [o["id"] for o in page["orders"]]
        assert all("needs_new_order" in o["flags"] for o in page["orders"])
        assert all("operations" not in o and "lines" not in o for o in page["orders"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert seen.index(second) < seen.index(first)  # newest first
    attention = _get(stack, "/orders", flag="needs_attention").json()
    assert first not in [o["id"] for o in attention["orders"]]
    bad = _get(stack, "/orders", flag="nonsense")
    assert bad.status_code == 422 and bad.json()["fields"][0]["path"] == "query.flag"
    assert _get(stack, "/orders", cursor="garbage").status_code == 422


def test_unknown_order_is_404(stack: Stack) -> None:
    answer = _get(stack, "/orders/no-such-order")
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"
    post = httpx.post(
        f"{stack.web_url}/orders/no-such-order/reconcile", headers=_auth(stack), timeout=10
    )
    assert post.status_code == 404


def test_reconcile_clears_needs_attention_and_settles_the_unknown_operation(
    stack: Stack,
) -> None:
    order_id, _klarna_id = _exhausted_retries(stack)
    # Every PATCH answered 500, which may come after the effect: unknown, never failed.
    (parked,) = stack.operations(order_id)
    assert (parked["status"], parked["outcome_unknown"]) == ("pending", True)
    order = _get(stack, f"/orders/{order_id}").json()
    assert order["flag_reasons"]["needs_attention"]["code"] == "outcome_unknown"
    assert order["operations"][0]["error"]["code"]
    assert order["operations"][0]["waiting_for"].startswith("outcome_unknown")
    wait_for(
        lambda: _delivered(stack, order_id, "order.needs_attention"),
        what="order.needs_attention at the shop",
    )

    stack.clear_faults()
    answer = httpx.post(
        f"{stack.web_url}/orders/{order_id}/reconcile", headers=_auth(stack), timeout=10
    )
    assert answer.status_code == 202
    assert answer.json()["cleared_flags"] == ["needs_attention"]

    ops = wait_for(
        lambda: (o := stack.operations(order_id)) and o[-1]["status"] == "succeeded" and o,
        what="the operation to be settled",
    )
    # Klarna was read first (not applied), then the same request resent under its key.
    assert [o["status"] for o in ops] == ["succeeded"]
    assert stack.order_row(order_id)["flags"] == []  # type: ignore[index]
    synced = wait_for(
        lambda: [
            c for c in _delivered(stack, order_id, "order.synced") if c["event"]["version"] == 2
        ],
        what="order.synced of v2",
    )
    assert synced[0]["event"]["data"]["amounts"]["authorized"] == 6000
    # The shop heard of v1's sync, the halt, then v2's sync: in that order.
    kinds = [
        (c["event"]["type"], c["event"]["version"])
        for c in _callbacks(stack, order_id)
        if c["answered"] == 200
    ]
    assert kinds == [("order.synced", 1), ("order.needs_attention", 2), ("order.synced", 2)]


# -- the shop's callbacks --------------------------------------------------------------


def test_new_order_required_reaches_the_shop_signed_with_the_refused_lines(stack: Stack) -> None:
    order_id, _ = _refused_increase(stack)
    (got,) = wait_for(
        lambda: _delivered(stack, order_id, "order.new_order_required"),
        what="order.new_order_required",
    )
    assert got["verified"] is True
    assert re.fullmatch(r"msg_[0-9a-f]{32}", got["webhook_id"])
    event = got["event"]
    assert (event["order_id"], event["version"]) == (order_id, 2)
    assert event["occurred_at"]
    assert [line["reference"] for line in event["data"]["lines"]] == ["75003"]
    assert event["data"]["reason"]["code"] == "NOT_ALLOWED"
    # The shop still has to act: the same version is not reported "synced".
    assert not [
        c for c in _delivered(stack, order_id, "order.synced") if c["event"]["version"] == 2
    ]


def test_callbacks_are_retried_until_2xx_with_one_webhook_id_and_never_resent(
    stack: Stack,
) -> None:
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    httpx.post(
        f"{stack.sandbox_url}/_sandbox/shop/callbacks/fail",
        json={"order_id": order_id, "count": 2, "status": 503},
        timeout=10,
    ).raise_for_status()
    # Already in step with Klarna: one event, order.synced of v1.
    stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=1))
    wait_for(
        lambda: _delivered(stack, order_id, "order.synced"),
        timeout=30,
        what="order.synced after two failures",
    )
    time.sleep(2.5)  # two more sweeps: a delivered event is not sent again
    attempts = [c for c in _callbacks(stack, order_id) if c["event"]["type"] == "order.synced"]
    assert [c["answered"] for c in attempts] == [503, 503, 200]
    assert len({c["webhook_id"] for c in attempts}) == 1
    assert all(c["verified"] for c in attempts)
    # The body is the same bytes each time; only the timestamp and signature move.
    assert len({json.dumps(c["event"], sort_keys=True) for c in attempts}) == 1
    with stack.db() as conn:
        (row,) = conn.execute("SELECT * FROM outbox WHERE order_id = %s", (order_id,)).fetchall()
    assert row["attempts"] == 3 and row["delivered_at"] is not None
    assert row["last_status"] == 200


# -- metrics ---------------------------------------------------------------------------


def _samples(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _sum(samples: dict[str, float], prefix: str, **labels: str) -> float:
    total = 0.0
    for name, value in samples.items():
        if name.split("{")[0] != prefix:
            continue
        if all(f'{k}="{v}"' in name for k, v in labels.items()):
            total += value
    return total


def test_metrics_move_when_webhooks_and_operations_happen(stack: Stack) -> None:
    web_before = _samples(httpx.get(f"{stack.web_url}/metrics", timeout=10).text)
    worker_before = _samples(httpx.get(stack.worker_metrics_url, timeout=10).text)

    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=1))
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=2))
    wait_for(
        lambda: [o for o in stack.operations(order_id) if o["status"] == "succeeded"],
        what="the PATCH",
    )
    flagged, _ = _refused_increase(stack)

    web = _samples(httpx.get(f"{stack.web_url}/metrics", timeout=10).text)

    def moved(name: str, **labels: str) -> float:
        return _sum(web, name, **labels) - _sum(web_before, name, **labels)

    assert moved("ordersync_webhooks_received_total", source="shop", outcome="applied") >= 4
    assert 'ordersync_inbox_oldest_unprocessed_seconds{source="shop"}' in web
    assert 'ordersync_inbox_backlog{source="shop"}' in web
    assert web["ordersync_database_up"] == 1
    assert web['ordersync_orders_flagged{flag="needs_new_order"}'] >= 1

    def worker_moved() -> dict[str, float] | None:
        now = _samples(httpx.get(stack.worker_metrics_url, timeout=10).text)
        ok = _sum(
            now,
            "ordersync_psp_requests_total",
            provider="klarna",
            operation="update_authorization",
            outcome="succeeded",
        ) > _sum(
            worker_before,
            "ordersync_psp_requests_total",
            provider="klarna",
            operation="update_authorization",
            outcome="succeeded",
        ) and _sum(now, "ordersync_orders_flagged_total", flag="needs_new_order") > _sum(
            worker_before, "ordersync_orders_flagged_total", flag="needs_new_order"
        )
        return now if ok else None

    worker = wait_for(worker_moved, what="worker metrics to move")
    assert _sum(worker, "ordersync_psp_request_seconds_count", provider="klarna") > 0
    assert _sum(
        worker, "ordersync_snapshot_to_confirmation_seconds_count", operation="update_authorization"
    ) > _sum(
        worker_before,
        "ordersync_snapshot_to_confirmation_seconds_count",
        operation="update_authorization",
    )
    heartbeat = worker["ordersync_worker_heartbeat_timestamp_seconds"]
    assert time.time() - heartbeat < 10
    assert _sum(worker, "ordersync_callbacks_total", outcome="delivered") > 0
    assert flagged


def test_retries_are_counted(stack: Stack) -> None:
    before = _sum(
        _samples(httpx.get(stack.worker_metrics_url, timeout=10).text),
        "ordersync_operation_retries_total",
    )
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=1))
    stack.fault(kind="error", status=503, count=1, path_contains=f"{klarna_id}/authorization")
    stack.send(order_event(order_id, klarna_id, [KETTLE], version=2))
    wait_for(
        lambda: [o for o in stack.operations(order_id) if o["status"] == "succeeded"],
        what="the PATCH after one retry",
    )
    after = _sum(
        _samples(httpx.get(stack.worker_metrics_url, timeout=10).text),
        "ordersync_operation_retries_total",
    )
    assert after > before


# -- logs: the request id travels -------------------------------------------------------


def test_the_request_id_reaches_the_worker_and_the_psp_call_log(stack: Stack) -> None:
    klarna_id = stack.klarna_order([KETTLE, TOASTER])
    order_id = new_order_id()
    stack.send(order_event(order_id, klarna_id, [KETTLE, TOASTER], version=1))
    request_id = f"req-{order_id}"
    from devrig.demo import signed_headers

    body = json.dumps(order_event(order_id, klarna_id, [KETTLE], version=2)).encode()
    headers = {**signed_headers(stack.secret, body), "X-Request-ID": request_id}
    answer = httpx.post(f"{stack.web_url}/webhooks/shop", content=body, headers=headers, timeout=10)
    assert answer.headers["x-request-id"] == request_id

    def psp_line() -> dict[str, Any] | None:
        for line in (stack.logs / "worker.log").read_text().splitlines():
            if request_id in line:
                record = json.loads(line)
                if record.get("event") == "psp_request_done":
                    return record
        return None

    record = wait_for(psp_line, what="psp_request_done with the webhook's request id")
    assert record["order_id"] == order_id and record["idempotency_key"]
    web_lines = [
        json.loads(line)
        for line in (stack.logs / "web.log").read_text().splitlines()
        if request_id in line
    ]
    assert any(r["event"] == "webhook_stored" for r in web_lines)


# -- the CLI, over the same functions --------------------------------------------------


def _cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": stack.database_url,
        "REDIS_URL": stack.redis_url,
        "LOG_FORMAT": "json",
    }
    return subprocess.run(
        [sys.executable, "-m", "cli", "orders", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_shows_lists_and_reconciles(stack: Stack) -> None:
    order_id, _klarna_id = _refused_increase(stack)
    # Settled first, so the API and the CLI read the same state.
    wait_for(lambda: _delivered(stack, order_id, "order.new_order_required"), what="callback")
    shown = _cli(stack, "show", order_id)
    assert shown.returncode == 0, shown.stderr
    assert "FLAG      needs_new_order: NOT_ALLOWED" in shown.stdout
    assert "not authorized: 75003" in shown.stdout
    assert stack.operations(order_id)[0]["idempotency_key"] in shown.stdout
    as_json = json.loads(_cli(stack, "show", order_id, "--json").stdout)
    api = _get(stack, f"/orders/{order_id}").json()
    assert as_json == api
    # The same timeline as GET /orders/{id}/timeline, printed and as JSON.
    assert "Klarna refused to increase" in shown.stdout
    assert "answer: NOT_ALLOWED" in shown.stdout
    story = json.loads(_cli(stack, "show", order_id, "--timeline-json").stdout)
    assert story == _get(stack, f"/orders/{order_id}/timeline").json()

    listed = _cli(stack, "list", "--flag", "needs_new_order")
    assert listed.returncode == 0 and order_id in listed.stdout
    page = json.loads(_cli(stack, "list", "--flag", "needs_new_order", "--json").stdout)
    assert order_id in [o["id"] for o in page["orders"]]

    missing = _cli(stack, "show", "no-such-order")
    assert missing.returncode == 1 and "no order no-such-order" in missing.stderr

    done = _cli(stack, "reconcile", order_id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["queued"] is True
