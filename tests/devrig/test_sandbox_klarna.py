"""The simulated Klarna OM v1: Klarna's rules, line arithmetic, idempotency, ledger."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from devrig.sandbox.klarna import increase_allowed, line_errors

from tests.devrig.test_sandbox_support import (
    ORDERS,
    SEED_KETTLE,
    SandboxClient,
    create_order,
    get_order,
    ledger,
    line,
    sandbox_client,
)


@pytest.fixture
def client() -> Iterator[SandboxClient]:
    with sandbox_client() as client:
        yield client


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error_code"] == code
    assert isinstance(body["error_messages"], list) and body["error_messages"]
    assert uuid.UUID(body["correlation_id"]).version == 4
    return body


def capture(client: SandboxClient, amount: int, key: str | None = None, **body: Any) -> Any:
    headers = {"Klarna-Idempotency-Key": key} if key else {}
    return client.post(
        f"{ORDERS}/ord-1/captures", json={"captured_amount": amount, **body}, headers=headers
    )


# --- orders and auth ----------------------------------------------------------------


def test_created_order_reads_back_as_klarna_returns_it(client: SandboxClient) -> None:
    created = create_order(client)
    order = get_order(client)
    assert order == created
    assert order["status"] == "AUTHORIZED"
    assert order["order_amount"] == order["original_order_amount"] == 7000
    assert order["remaining_authorized_amount"] == 7000
    assert order["captured_amount"] == order["refunded_amount"] == 0
    assert order["initial_payment_method"] == {"type": "INVOICE"}
    assert order["purchase_country"] == "DE" and order["purchase_currency"] == "EUR"
    assert order["captures"] == [] and order["refunds"] == []
    expires = datetime.fromisoformat(order["expires_at"])
    created_at = datetime.fromisoformat(order["created_at"])
    assert expires - created_at == timedelta(days=28)


def test_unknown_order_is_no_such_order(client: SandboxClient) -> None:
    assert_error(client.get(f"{ORDERS}/nope"), 404, "NO_SUCH_ORDER")
    assert_error(client.post(f"{ORDERS}/nope/cancel"), 404, "NO_SUCH_ORDER")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic c2FuZGJveDp3cm9uZw=="}, {"Authorization": "Bearer sandbox"}],
    ids=["missing", "wrong-password", "not-basic"],
)
def test_api_requires_basic_auth(client: SandboxClient, headers: dict[str, str]) -> None:
    create_order(client)
    client.headers.pop("Authorization")
    assert_error(client.get(f"{ORDERS}/ord-1", headers=headers), 401, "UNAUTHORIZED")
    assert_error(capture(client, 100), 401, "UNAUTHORIZED")
    assert ledger(client) == []


def test_create_order_validates_lines_like_klarna(client: SandboxClient) -> None:
    bad = line(unit_price=7000, total_amount=6999)
    response = client.post(
        "/_sandbox/klarna/orders", json={"order_amount": 6999, "order_lines": [bad]}
    )
    assert_error(response, 400, "BAD_VALUE")
    response = client.post(
        "/_sandbox/klarna/orders", json={"order_amount": 100, "order_lines": [line()]}
    )
    body = assert_error(response, 400, "BAD_VALUE")
    assert "does not match order_amount" in body["error_messages"][0]


def test_create_order_defaults_and_duplicate_id(client: SandboxClient) -> None:
    response = client.post("/_sandbox/klarna/orders", json={"order_amount": 0})
    assert response.status_code == 201
    assert uuid.UUID(response.json()["order_id"])
    create_order(client)
    response = client.post("/_sandbox/klarna/orders", json={"order_id": "ord-1", "order_amount": 1})
    assert response.status_code == 409


# --- update authorization --------------------------------------------------------------


def test_seed_example_decrease_to_6000_with_kettle_line(client: SandboxClient) -> None:
    create_order(client, lines=[line(unit_price=7000)])
    response = client.patch(
        f"{ORDERS}/ord-1/authorization",
        json={"order_amount": 6000, "description": "", "order_lines": [SEED_KETTLE]},
        headers={"Klarna-Idempotency-Key": "upd-1"},
    )
    assert response.status_code == 204, response.text
    order = get_order(client)
    assert order["order_amount"] == 6000
    assert order["original_order_amount"] == 7000
    assert order["order_lines"] == [SEED_KETTLE]
    [entry] = ledger(client)
    assert entry["operation"] == "update_authorization"
    assert entry["amount"] == 6000
    assert entry["idempotency_key"] == "upd-1"
    assert entry["lines"] == [SEED_KETTLE]


def test_update_without_lines_deletes_the_lines(client: SandboxClient) -> None:
    create_order(client)
    response = client.patch(f"{ORDERS}/ord-1/authorization", json={"order_amount": 5000})
    assert response.status_code == 204
    assert get_order(client)["order_lines"] == []


@pytest.mark.parametrize(
    ("method", "country", "allowed"),
    [
        ("INVOICE", "DE", True),
        ("INVOICE", "CH", False),
        ("INVOICE_BUSINESS", "SE", True),
        ("INVOICE_BUSINESS", "CH", False),
        ("ACCOUNT", "US", True),
        ("ACCOUNT", "CH", False),
        ("DIRECT_DEBIT", "NL", True),
        ("DIRECT_DEBIT", "CH", False),
        ("FIXED_AMOUNT", "SE", True),
        ("FIXED_AMOUNT", "FI", True),
        ("FIXED_AMOUNT", "AT", True),
        ("FIXED_AMOUNT", "NL", False),
        ("FIXED_AMOUNT", "US", False),
        ("DEFERRED_INTEREST", "US", True),
        ("DEFERRED_INTEREST", "DE", False),
        ("CARD", "DE", False),
        ("PAY_LATER_IN_PARTS", "SE", False),
    ],
)
def test_increase_allow_list(
    client: SandboxClient, method: str, country: str, allowed: bool
) -> None:
    assert increase_allowed(method, country) is allowed
    create_order(client, payment_method=method, purchase_country=country)
    bigger = line(unit_price=8000)
    response = client.patch(
        f"{ORDERS}/ord-1/authorization", json={"order_amount": 8000, "order_lines": [bigger]}
    )
    if allowed:
        assert response.status_code == 204, response.text
        assert get_order(client)["order_amount"] == 8000
    else:
        assert_error(response, 403, "NOT_ALLOWED")
        assert get_order(client)["order_amount"] == 7000
        assert ledger(client) == []


def test_decrease_is_allowed_where_increase_is_not(client: SandboxClient) -> None:
    create_order(client, payment_method="CARD", purchase_country="CH")
    response = client.patch(
        f"{ORDERS}/ord-1/authorization", json={"order_amount": 6000, "order_lines": [SEED_KETTLE]}
    )
    assert response.status_code == 204


def test_update_rejections(client: SandboxClient) -> None:
    create_order(client)
    assert capture(client, 2000).status_code == 201
    patch = f"{ORDERS}/ord-1/authorization"
    assert_error(client.patch(patch, json={"order_amount": -1}), 400, "BAD_VALUE")
    body = assert_error(client.patch(patch, json={"order_amount": 1999}), 403, "NOT_ALLOWED")
    assert "captured_amount" in body["error_messages"][0]
    mismatch = {"order_amount": 6001, "order_lines": [SEED_KETTLE]}
    assert_error(client.patch(patch, json=mismatch), 400, "BAD_VALUE")
    assert_error(client.patch(patch, json={"order_lines": []}), 400, "BAD_VALUE")
    # Down to exactly the captured amount is allowed and leaves the order fully captured.
    assert client.patch(patch, json={"order_amount": 2000}).status_code == 204
    assert get_order(client)["status"] == "CAPTURED"
    assert_error(client.patch(patch, json={"order_amount": 2000}), 403, "NOT_ALLOWED")
    assert [e["operation"] for e in ledger(client)] == ["capture", "update_authorization"]


@pytest.mark.parametrize("how", ["cancel", "expire", "close", "full-capture"])
def test_update_not_allowed_on_finished_orders(client: SandboxClient, how: str) -> None:
    create_order(client)
    if how == "cancel":
        assert client.post(f"{ORDERS}/ord-1/cancel").status_code == 204
    elif how == "full-capture":
        assert capture(client, 7000).status_code == 201
    else:
        assert client.post(f"/_sandbox/klarna/orders/ord-1/{how}").status_code == 200
    response = client.patch(
        f"{ORDERS}/ord-1/authorization", json={"order_amount": 6000, "order_lines": [SEED_KETTLE]}
    )
    assert_error(response, 403, "NOT_ALLOWED")


def test_order_past_expires_at_is_expired(client: SandboxClient) -> None:
    create_order(client)
    state = client.app.state.klarna
    state.orders["ord-1"].expires_at = datetime.now(UTC) - timedelta(seconds=1)
    assert get_order(client)["status"] == "EXPIRED"
    assert_error(capture(client, 100), 403, "CAPTURE_NOT_ALLOWED")


# --- line arithmetic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "fragment"),
    [
        (line(total_amount=5999), "total_amount is 5999"),
        (line(total_tax_amount=1202), "total_tax_amount is 1202"),
        (line(total_tax_amount=1198), "total_tax_amount is 1198"),
        (line(quantity=-1, total_amount=-6000, total_tax_amount=-1200), "quantity"),
        (line(unit_price=-6000, total_amount=-6000, total_tax_amount=-1200), "discount-type"),
        (line(total_discount_amount=-1, total_amount=6001), "total_discount_amount"),
        ({**line(), "quantity": "1"}, "quantity is required"),
        ({**line(), "total_amount": 6000.0}, "total_amount is required"),
        ({k: v for k, v in line().items() if k != "name"}, "name is required"),
    ],
)
def test_bad_lines_are_bad_value(
    client: SandboxClient, bad_line: dict[str, Any], fragment: str
) -> None:
    create_order(client)
    amount = bad_line.get("total_amount")
    amount = amount if isinstance(amount, int) and amount >= 0 else 6000
    response = client.patch(
        f"{ORDERS}/ord-1/authorization", json={"order_amount": amount, "order_lines": [bad_line]}
    )
    body = assert_error(response, 400, "BAD_VALUE")
    assert any(fragment in message for message in body["error_messages"]), body


def test_tax_within_one_minor_unit_passes() -> None:
    assert line_errors([line(total_tax_amount=1201)], 6000, "order_amount") == []
    assert line_errors([line(total_tax_amount=1199)], 6000, "order_amount") == []
    # 1999 at 25 %: exact tax is 399.8, so both 399 and 400 are within one.
    assert line_errors([line(unit_price=1999, total_tax_amount=399)], 1999, "x") == []
    assert line_errors([line(unit_price=1999, total_tax_amount=400)], 1999, "x") == []
    assert line_errors([line(unit_price=1999, total_tax_amount=401)], 1999, "x") != []


def test_discount_lines_and_quantities_multiply(client: SandboxClient) -> None:
    # The contract's basket: shoes 1 x 1200, socks 2 x 450, discount -630 = 1470 at 20 %.
    basket = [
        line("Shoes", 1200, tax_rate=2000),
        line("Socks", 450, quantity=2, tax_rate=2000),
        line("Discount", -630, tax_rate=2000, kind="discount"),
    ]
    create_order(client, lines=basket)
    assert get_order(client)["order_amount"] == 1470
    shipped = [
        line("Socks", 450, tax_rate=2000),
        line("Discount", -135, tax_rate=2000, kind="discount"),
    ]
    response = capture(client, 315, order_lines=shipped, reference="ship-1")
    assert response.status_code == 201, response.text
    [entry] = ledger(client)
    assert (entry["amount"], entry["lines"], entry["reference"]) == (315, shipped, "ship-1")


def test_line_discount_reduces_total() -> None:
    discounted = line(unit_price=1000, quantity=3, discount=500)
    assert discounted["total_amount"] == 2500
    assert line_errors([discounted], 2500, "order_amount") == []
    assert line_errors([discounted], 3000, "order_amount") != []


# --- captures, refunds, cancel, release, extend ---------------------------------------------


def test_capture_flow_and_headers(client: SandboxClient) -> None:
    create_order(client)
    response = capture(client, 3000, shipping_info=[{"tracking_number": "T1"}])
    assert response.status_code == 201
    capture_id = response.headers["Capture-Id"]
    assert response.headers["Location"].endswith(f"{ORDERS}/ord-1/captures/{capture_id}")
    order = get_order(client)
    assert order["status"] == "PART_CAPTURED"
    assert order["captured_amount"] == 3000
    assert order["remaining_authorized_amount"] == 4000
    [listed] = order["captures"]
    assert listed["capture_id"] == capture_id
    assert listed["shipping_info"] == [{"tracking_number": "T1"}]
    assert client.get(response.headers["Location"]).json() == listed

    assert_error(capture(client, 4001), 403, "CAPTURE_NOT_ALLOWED")
    assert_error(capture(client, 0), 400, "BAD_VALUE")
    assert_error(capture(client, 1000, order_lines=[SEED_KETTLE]), 400, "BAD_VALUE")
    assert capture(client, 4000).status_code == 201
    order = get_order(client)
    assert (order["status"], order["remaining_authorized_amount"]) == ("CAPTURED", 0)
    assert_error(capture(client, 1), 403, "CAPTURE_NOT_ALLOWED")
    assert [e["amount"] for e in ledger(client)] == [3000, 4000]


def test_refunds_are_capped_by_what_was_captured(client: SandboxClient) -> None:
    create_order(client)
    refunds = f"{ORDERS}/ord-1/refunds"
    assert_error(client.post(refunds, json={"refunded_amount": 1}), 403, "REFUND_NOT_ALLOWED")
    capture(client, 3000)
    response = client.post(refunds, json={"refunded_amount": 1000, "reference": "r1"})
    assert response.status_code == 201
    refund_id = response.headers["Refund-Id"]
    assert response.headers["Location"].endswith(f"{ORDERS}/ord-1/refunds/{refund_id}")
    assert client.get(response.headers["Location"]).json()["refunded_amount"] == 1000
    assert_error(client.post(refunds, json={"refunded_amount": 2001}), 403, "REFUND_NOT_ALLOWED")
    lines = {"refunded_amount": 2000, "order_lines": [line(unit_price=1999)]}
    assert_error(client.post(refunds, json=lines), 400, "BAD_VALUE")
    assert client.post(refunds, json={"refunded_amount": 2000}).status_code == 201
    order = get_order(client)
    assert order["refunded_amount"] == 3000
    assert order["captures"][0]["refunded_amount"] == 3000
    assert order["refunds"][0]["refund_id"] == refund_id
    assert [e["operation"] for e in ledger(client)] == ["capture", "refund", "refund"]


def test_cancel_only_when_nothing_captured(client: SandboxClient) -> None:
    create_order(client, "a")
    create_order(client, "b")
    assert client.post(f"{ORDERS}/a/cancel").status_code == 204
    assert get_order(client, "a")["status"] == "CANCELLED"
    assert get_order(client, "a")["remaining_authorized_amount"] == 0
    assert_error(client.post(f"{ORDERS}/a/cancel"), 403, "CANCEL_NOT_ALLOWED")
    refused = client.post(f"{ORDERS}/a/captures", json={"captured_amount": 1})
    assert_error(refused, 403, "CAPTURE_NOT_ALLOWED")
    client.post(f"{ORDERS}/b/captures", json={"captured_amount": 1})
    assert_error(client.post(f"{ORDERS}/b/cancel"), 403, "CANCEL_NOT_ALLOWED")
    assert [e["operation"] for e in ledger(client, "a")] == ["cancel"]


def test_release_remaining_authorization(client: SandboxClient) -> None:
    create_order(client)
    release = f"{ORDERS}/ord-1/release-remaining-authorization"
    assert_error(client.post(release), 403, "NOT_ALLOWED")
    capture(client, 2500)
    assert client.post(release).status_code == 204
    order = get_order(client)
    assert (order["status"], order["order_amount"], order["captured_amount"]) == (
        "CAPTURED",
        2500,
        2500,
    )
    assert order["remaining_authorized_amount"] == 0
    assert_error(client.post(release), 403, "NOT_ALLOWED")
    assert ledger(client)[-1]["operation"] == "release_authorization"
    assert ledger(client)[-1]["amount"] == 4500


def test_extend_authorization_time(client: SandboxClient) -> None:
    create_order(client)
    before = datetime.fromisoformat(get_order(client)["expires_at"])
    assert client.post(f"{ORDERS}/ord-1/extend-authorization-time").status_code == 204
    after = datetime.fromisoformat(get_order(client)["expires_at"])
    assert after - before == timedelta(days=28)
    assert ledger(client)[0]["operation"] == "extend_authorization"
    client.post("/_sandbox/klarna/orders/ord-1/expire")
    assert_error(client.post(f"{ORDERS}/ord-1/extend-authorization-time"), 403, "NOT_ALLOWED")


# --- idempotency, ledger, request log -------------------------------------------------------


def test_same_idempotency_key_replays_without_applying_again(client: SandboxClient) -> None:
    create_order(client)
    first = capture(client, 1000, key="cap-1")
    again = capture(client, 1000, key="cap-1")
    # Klarna looks only at the key, not at the body, when deciding it is a retry.
    different_body = capture(client, 5000, key="cap-1")
    assert first.status_code == again.status_code == different_body.status_code == 201
    assert first.headers["Capture-Id"] == again.headers["Capture-Id"]
    assert first.headers["Location"] == different_body.headers["Location"]
    assert len(ledger(client)) == 1
    assert get_order(client)["captured_amount"] == 1000

    assert capture(client, 1000, key="cap-2").headers["Capture-Id"] != first.headers["Capture-Id"]
    assert capture(client, 1000).status_code == 201
    assert capture(client, 1000).status_code == 201
    assert get_order(client)["captured_amount"] == 4000
    replays = [r["replayed"] for r in client.get("/_sandbox/requests").json()["requests"]]
    assert replays.count(True) == 2


def test_idempotency_key_is_scoped_to_order_and_path(client: SandboxClient) -> None:
    create_order(client, "a")
    create_order(client, "b")
    headers = {"Klarna-Idempotency-Key": "same"}
    body = {"captured_amount": 100}
    assert client.post(f"{ORDERS}/a/captures", json=body, headers=headers).status_code == 201
    assert client.post(f"{ORDERS}/b/captures", json=body, headers=headers).status_code == 201
    refund = {"refunded_amount": 100}
    assert client.post(f"{ORDERS}/a/refunds", json=refund, headers=headers).status_code == 201
    assert len(ledger(client, "a")) == 2 and len(ledger(client, "b")) == 1


def test_rejection_is_replayed_too(client: SandboxClient) -> None:
    create_order(client)
    assert_error(capture(client, 9999, key="k"), 403, "CAPTURE_NOT_ALLOWED")
    assert_error(capture(client, 9999, key="k"), 403, "CAPTURE_NOT_ALLOWED")
    assert ledger(client) == []


def test_request_log_keeps_everything_but_credentials(client: SandboxClient) -> None:
    create_order(client)
    capture(client, 100, key="k-1")
    capture(client, 100, key="k-1")
    client.get(f"{ORDERS}/ord-1")
    log = client.get("/_sandbox/requests", params={"order_id": "ord-1"}).json()["requests"]
    assert [(r["method"], r["response_status"]) for r in log] == [
        ("POST", 201),
        ("POST", 201),
        ("GET", 200),
    ]
    assert [r["headers"].get("klarna-idempotency-key") for r in log[:2]] == ["k-1", "k-1"]
    assert all("authorization" not in r["headers"] for r in log)
    assert log[0]["body"] == {"captured_amount": 100}
    assert client.get("/_sandbox/requests", params={"order_id": "x"}).json()["requests"] == []


def test_not_json_is_bad_value(client: SandboxClient) -> None:
    create_order(client)
    response = client.post(
        f"{ORDERS}/ord-1/captures", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "BAD_VALUE")
    assert_error(client.post(f"{ORDERS}/ord-1/captures", json=[1]), 400, "BAD_VALUE")


def test_reset_clears_everything(client: SandboxClient) -> None:
    create_order(client)
    capture(client, 100, key="k")
    client.post("/_sandbox/faults", json={"kind": "error"})
    assert client.post("/_sandbox/reset").status_code == 204
    assert client.get("/_sandbox/health").status_code == 200
    assert client.get("/_sandbox/faults").json() == {"faults": []}
    assert client.get("/_sandbox/ledger").json() == {"entries": []}
    assert client.get("/_sandbox/requests").json() == {"requests": []}
    assert client.get(f"{ORDERS}/ord-1").status_code == 404
    # The key is forgotten with the order: a new order with the same id captures afresh.
    create_order(client)
    assert capture(client, 100, key="k").status_code == 201
    assert len(ledger(client)) == 1
