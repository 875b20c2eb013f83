"""Fault injection in the sandbox, in-process and against a real uvicorn server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from devrig.sandbox.app import SandboxConfig, create_app

from tests.devrig.test_sandbox_support import (
    AUTH,
    ORDERS,
    SandboxClient,
    create_order,
    get_order,
    ledger,
    line,
    sandbox_client,
)

CAPTURES = f"{ORDERS}/ord-1/captures"


@pytest.fixture
def client() -> Iterator[SandboxClient]:
    with sandbox_client() as client:
        create_order(client)
        yield client


def arm(client: SandboxClient, **fault: Any) -> dict[str, Any]:
    response = client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 201, response.text
    armed: dict[str, Any] = response.json()
    return armed


def capture(client: SandboxClient, key: str = "cap-1", amount: int = 1000) -> httpx.Response:
    return client.post(
        CAPTURES, json={"captured_amount": amount}, headers={"Klarna-Idempotency-Key": key}
    )


def requests_log(client: SandboxClient) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = client.get("/_sandbox/requests").json()["requests"]
    return entries


def test_error_answers_before_anything_is_applied(client: SandboxClient) -> None:
    arm(client, kind="error", status=503, count=2)
    for _ in range(2):
        response = capture(client)
        assert response.status_code == 503
        assert response.json()["error_code"] == "SERVICE_UNAVAILABLE"
        assert set(response.json()) == {"error_code", "error_messages", "correlation_id"}
        assert ledger(client) == []
    assert capture(client).status_code == 201
    assert len(ledger(client)) == 1
    assert client.get("/_sandbox/faults").json() == {"faults": []}
    faults = [r["fault"] for r in requests_log(client)]
    assert faults == ["error", "error", None]


def test_error_after_apply_then_retry_replays_the_success(client: SandboxClient) -> None:
    arm(client, kind="error_after_apply", status=500)
    lost = capture(client)
    assert lost.status_code == 500
    assert lost.json()["error_code"] == "INTERNAL_SERVER_ERROR"
    [entry] = ledger(client)
    assert entry["idempotency_key"] == "cap-1"
    retry = capture(client)
    assert retry.status_code == 201
    assert retry.headers["Capture-Id"] == entry["capture_id"]
    assert len(ledger(client)) == 1
    assert get_order(client)["captured_amount"] == 1000


def test_after_apply_faults_skip_rejected_requests(client: SandboxClient) -> None:
    arm(client, kind="error_after_apply")
    assert capture(client, amount=99_999).status_code == 403
    assert len(client.get("/_sandbox/faults").json()["faults"]) == 1


def test_drop_after_apply_in_process_is_a_transport_error(client: SandboxClient) -> None:
    arm(client, kind="drop_after_apply", path_contains="/captures")
    with pytest.raises(httpx.TransportError):
        capture(client)
    assert len(ledger(client)) == 1
    assert capture(client).status_code == 201
    assert len(ledger(client)) == 1
    first, second = requests_log(client)
    assert (first["dropped"], first["response_status"]) == (True, None)
    assert (second["replayed"], second["response_status"]) == (True, 201)


def test_delay_before_and_after_apply(client: SandboxClient) -> None:
    arm(client, kind="delay", ms=150)
    started = time.monotonic()
    assert capture(client, key="a").status_code == 201
    assert time.monotonic() - started >= 0.15
    arm(client, kind="delay", ms=50, after_apply=True, count=None)
    started = time.monotonic()
    assert capture(client, key="b").status_code == 201
    assert time.monotonic() - started >= 0.05
    assert len(ledger(client)) == 2


def test_rate_limit_answers_429_with_retry_after(client: SandboxClient) -> None:
    arm(client, kind="rate_limit", retry_after=7)
    response = capture(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["error_code"] == "RATE_LIMITED"
    assert ledger(client) == []
    assert capture(client).status_code == 201


def test_reject_next_increase_hits_increases_only(client: SandboxClient) -> None:
    arm(client, kind="reject_next_increase", count=1)
    patch = f"{ORDERS}/ord-1/authorization"
    decrease = {"order_amount": 6000, "order_lines": [line(unit_price=6000)]}
    assert client.patch(patch, json=decrease).status_code == 204
    increase = {"order_amount": 8000, "order_lines": [line(unit_price=8000)]}
    rejected = client.patch(patch, json=increase)
    assert rejected.status_code == 403
    assert rejected.json()["error_code"] == "NOT_ALLOWED"
    assert get_order(client)["order_amount"] == 6000
    assert client.patch(patch, json=increase).status_code == 204
    assert [e["amount"] for e in ledger(client)] == [6000, 8000]


def test_filters_by_method_and_path(client: SandboxClient) -> None:
    arm(client, kind="error", method="post", path_contains="/refunds", count=None)
    assert client.get(f"{ORDERS}/ord-1").status_code == 200
    assert capture(client).status_code == 201
    refund = client.post(f"{ORDERS}/ord-1/refunds", json={"refunded_amount": 1})
    assert refund.status_code == 500
    [armed] = client.get("/_sandbox/faults").json()["faults"]
    assert (armed["method"], armed["hits"], armed["count"]) == ("POST", 1, None)


def test_faults_spare_the_control_endpoints(client: SandboxClient) -> None:
    arm(client, kind="error", count=None)
    assert client.get("/_sandbox/ledger").status_code == 200
    assert client.get("/_sandbox/health").status_code == 200
    assert client.post("/_sandbox/klarna/orders", json={"order_amount": 0}).status_code == 201


def test_arm_list_and_clear(client: SandboxClient) -> None:
    one = arm(client, kind="error", status=502, count=3)
    arm(client, kind="delay", ms=1)
    assert [f["kind"] for f in client.get("/_sandbox/faults").json()["faults"]] == [
        "error",
        "delay",
    ]
    assert client.delete(f"/_sandbox/faults/{one['id']}").status_code == 204
    assert client.delete(f"/_sandbox/faults/{one['id']}").status_code == 404
    assert client.delete("/_sandbox/faults").status_code == 204
    assert client.get("/_sandbox/faults").json() == {"faults": []}


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "explode"},
        {"kind": "error", "status": 200},
        {"kind": "error", "count": 0},
        {"kind": "delay", "ms": -1},
        {"kind": "rate_limit", "retry_after": "soon"},
        {"kind": "error", "probability": 0},
        {"kind": "error", "typo": 1},
        ["not", "an", "object"],
    ],
)
def test_bad_fault_specs_are_refused(client: SandboxClient, fault: Any) -> None:
    response = client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 400
    assert response.json()["error"] == "bad_fault"


def test_probability_is_seeded_and_repeatable() -> None:
    def run() -> list[int]:
        with sandbox_client(fault_seed=7) as client:
            create_order(client)
            arm(client, kind="error", probability=0.5, count=None, method="GET")
            return [client.get(f"{ORDERS}/ord-1").status_code for _ in range(40)]

    first = run()
    assert first == run()
    assert 5 < first.count(500) < 35


# --- a real server ----------------------------------------------------------------------------


@contextlib.contextmanager
def running_sandbox() -> Iterator[str]:
    app = create_app(SandboxConfig(specs_dir=None))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # Uvicorn logs the deliberate drop as an application error; keep test output quiet.
    config = uvicorn.Config(app, log_level="critical", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_over_real_http_drop_and_timeout_mean_applied_but_unknown() -> None:
    with running_sandbox() as base_url, httpx.Client(base_url=base_url, headers=AUTH) as http:
        created = http.post(
            "/_sandbox/klarna/orders", json={"order_id": "ord-1", "order_amount": 7000}
        )
        assert created.status_code == 201
        key = {"Klarna-Idempotency-Key": "cap-1"}
        body = {"captured_amount": 1000}
        http.post("/_sandbox/faults", json={"kind": "drop_after_apply"}).raise_for_status()
        with pytest.raises(httpx.TransportError):
            http.post(CAPTURES, json=body, headers=key)
        retry = http.post(CAPTURES, json=body, headers=key)
        assert retry.status_code == 201
        entries = http.get("/_sandbox/ledger", params={"order_id": "ord-1"}).json()["entries"]
        assert [(e["operation"], e["idempotency_key"]) for e in entries] == [("capture", "cap-1")]
        assert retry.headers["Capture-Id"] == entries[0]["capture_id"]

        slow = {"kind": "delay", "ms": 400, "after_apply": True}
        http.post("/_sandbox/faults", json=slow).raise_for_status()
        extend = f"{ORDERS}/ord-1/extend-authorization-time"
        with pytest.raises(httpx.TimeoutException):
            http.post(extend, headers={"Klarna-Idempotency-Key": "ext-1"}, timeout=0.1)
        entries = http.get("/_sandbox/ledger", params={"order_id": "ord-1"}).json()["entries"]
        assert [e["operation"] for e in entries] == ["capture", "extend_authorization"]
