"""Several markets (contract §6) on the real stack: a second web, worker and beat of
their own, configured by an ACCOUNTS_FILE with two Klarna markets and two Adyen merchant
accounts, against a sandbox that knows the same markets, each with its own credentials
(another market's or account's → 401)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from devrig.demo import new_secret, signed_headers
from devrig.devstack import (
    Process,
    RedisServer,
    database_named,
    free_port,
    klarna_line,
    wait_http,
)
from psycopg.rows import dict_row

from integrations.adyen.hmac import sign
from ordersync.db import migrate
from tests.integration.stack import Stack, new_order_id, wait_for

pytestmark = pytest.mark.integration

KETTLE = {"id": "kettle", "name": "Kettle", "quantity": 1, "unit_price": 6000, "tax_rate": 2500}
TOASTER = {"id": "toaster", "name": "Toaster", "quantity": 1, "unit_price": 2500, "tax_rate": 2500}


@dataclass
class Markets:
    web_url: str
    sandbox_url: str
    database_url: str
    secret: str
    env: dict[str, str]
    operator_token: str
    logs: Path
    worker_metrics_url: str

    def send(self, event: dict[str, Any]) -> httpx.Response:
        raw = json.dumps(event).encode()
        headers = signed_headers(self.secret, raw, None)
        return httpx.post(f"{self.web_url}/webhooks/shop", content=raw, headers=headers, timeout=15)

    def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()

    def requests(self, psp_order_id: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.sandbox_url}/_sandbox/requests", params={"order_id": psp_order_id}, timeout=10
        )
        return list(answer.json()["requests"])

    def operator(self, path: str) -> httpx.Response:
        return httpx.get(
            f"{self.web_url}{path}",
            headers={"Authorization": f"Bearer {self.operator_token}"},
            timeout=10,
        )


ACCOUNTS = """
[klarna.eu]
api_url = "{sandbox}/klarna/eu"
region = "eu"
username = "env:KLARNA_EU_USERNAME"
password = "file:{secrets}/klarna-eu-password"
countries = ["DE", "AT", "SE"]

[klarna.us]
api_url = "{sandbox}/klarna/na"
region = "na"
username = "env:KLARNA_US_USERNAME"
password = "env:KLARNA_US_PASSWORD"
countries = ["US"]

[adyen.ShopEU]
checkout_url = "{sandbox}/v71"
api_key = "env:ADYEN_EU_API_KEY"
hmac_keys = "env:ADYEN_EU_HMAC_KEYS"

[adyen.ShopUS]
checkout_url = "{sandbox}/v71"
pal_url = "{sandbox}/pal/servlet/Payment/v68"
modifications_api = "classic"
api_key = "file:{secrets}/adyen-us-api-key"
hmac_keys = "env:ADYEN_US_HMAC_KEYS"
"""


@pytest.fixture(scope="module")
def markets(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Markets]:
    base = tmp_path_factory.mktemp("markets")
    # The session's Postgres, a database of its own: the session's beat never sees it.
    name = f"markets_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    database_url = database_named(stack.database_url, name)
    migrate(database_url)
    redis = RedisServer(base / "redis")
    redis.start()
    sandbox_url = f"http://127.0.0.1:{free_port()}"
    web_url = f"http://127.0.0.1:{free_port()}"
    folder = base / "secrets"
    folder.mkdir()
    (folder / "klarna-eu-password").write_text(secrets.token_urlsafe(16) + "\n")
    (folder / "adyen-us-api-key").write_text(secrets.token_urlsafe(16))
    accounts = base / "accounts.toml"
    accounts.write_text(ACCOUNTS.format(sandbox=sandbox_url, secrets=folder))
    token = secrets.token_urlsafe(16)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url,
        "SHOP_WEBHOOK_SECRETS": new_secret(),
        "OPERATOR_TOKEN": token,
        "ACCOUNTS_FILE": str(accounts),
        "KLARNA_EU_USERNAME": "merchant-eu",
        "KLARNA_US_USERNAME": "merchant-us",
        "KLARNA_US_PASSWORD": secrets.token_urlsafe(16),
        "ADYEN_EU_API_KEY": secrets.token_urlsafe(16),
        "ADYEN_EU_HMAC_KEYS": secrets.token_hex(32).upper(),
        "ADYEN_US_HMAC_KEYS": secrets.token_hex(32).upper(),
        "ADYEN_WEBHOOK_USERNAME": "adyen",
        "ADYEN_WEBHOOK_PASSWORD": secrets.token_urlsafe(16),
        "SANDBOX_ADYEN_WEBHOOK_URL": f"{web_url}/webhooks/adyen",
        "LOG_FORMAT": "json",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "1",
        "RECONCILE_SWEEP_SECONDS": "1",
        "SWEEP_GRACE_SECONDS": "1",
        # The daily credentials check, every 2 s here, so the gauge is there to read.
        "ACCOUNT_CHECK_INTERVAL_SECONDS": "2",
    }
    logs = base / "logs"
    logs.mkdir()
    web_port = web_url.rsplit(":", 1)[1]
    metrics_port = str(free_port())
    processes = [
        Process("sandbox", ["sandbox", "--port", sandbox_url.rsplit(":", 1)[1]], env, logs / "s"),
        Process("web", ["web", "--host", "127.0.0.1", "--port", web_port], env, logs / "w"),
        Process(
            "worker",
            [
                "worker",
                "--concurrency",
                "2",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                metrics_port,
            ],
            env,
            logs / "k",
        ),
        Process("beat", ["beat"], env, logs / "b"),
    ]
    for process in processes:
        process.start()
    try:
        wait_http(f"{sandbox_url}/_sandbox/health", process=processes[0])
        wait_http(f"{web_url}/healthz", process=processes[1])
        yield Markets(
            web_url,
            sandbox_url,
            database_url,
            env["SHOP_WEBHOOK_SECRETS"],
            env,
            token,
            logs,
            f"http://127.0.0.1:{metrics_port}/metrics",
        )
    finally:
        for process in processes:
            process.stop()
        redis.stop()
    secret_values = [
        (folder / "klarna-eu-password").read_text().strip(),
        (folder / "adyen-us-api-key").read_text().strip(),
        *(env[k] for k in ("KLARNA_US_PASSWORD", "ADYEN_EU_API_KEY", "ADYEN_EU_HMAC_KEYS")),
    ]
    for path in logs.iterdir():
        text = path.read_text(errors="replace")
        assert not [v for v in secret_values if v in text], f"a secret in {path.name}"


def klarna_order(m: Markets, market: str, country: str, currency: str) -> str:
    lines = [KETTLE, TOASTER]
    answer = httpx.post(
        f"{m.sandbox_url}/_sandbox/klarna/orders",
        json={
            "market": market,
            "purchase_country": country,
            "purchase_currency": currency,
            "order_amount": 8500,
            "order_lines": [klarna_line(line) for line in lines],
        },
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["order_id"])


def event(
    order_id: str,
    payment: dict[str, Any],
    lines: list[dict[str, Any]],
    version: int,
    country: str = "DE",
    currency: str = "EUR",
) -> dict[str, Any]:
    return {
        "type": "order.updated",
        "order": {
            "id": order_id,
            "version": version,
            "currency": currency,
            "country": country,
            "status": "open",
            "payment": payment,
            "lines": lines,
        },
    }


def klarna_event(
    order_id: str,
    psp: str,
    lines: list[dict[str, Any]],
    version: int,
    country: str,
    currency: str,
    **payment: Any,
) -> dict[str, Any]:
    klarna = {"provider": "klarna", "klarna_order_id": psp, "payment_method": "INVOICE"}
    return event(order_id, {**klarna, **payment}, lines, version, country, currency)


def adyen_event(
    order_id: str, psp: str, merchant: str, lines: list[dict[str, Any]], version: int
) -> dict[str, Any]:
    adyen = {"provider": "adyen", "psp_reference": psp, "merchant_account": merchant}
    return event(order_id, adyen, lines, version)


def adyen_payment(m: Markets, merchant: str, value: int) -> str:
    answer = httpx.post(
        f"{m.sandbox_url}/_sandbox/adyen/payments",
        json={"value": value, "currency": "EUR", "merchantAccount": merchant},
        timeout=10,
    )
    answer.raise_for_status()
    return str(answer.json()["pspReference"])


def settled(m: Markets, order_id: str, count: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        ops = m.rows("SELECT * FROM operations WHERE order_id = %s ORDER BY seq", order_id)
        done = len(ops) == count and all(
            op["status"] in ("succeeded", "rejected", "failed") for op in ops
        )
        return ops if done else None

    return wait_for(check, what=f"{count} settled operations")


def test_a_de_and_a_us_order_each_go_to_their_own_klarna_account(markets: Markets) -> None:
    m = markets
    de_psp = klarna_order(m, "eu", "DE", "EUR")
    us_psp = klarna_order(m, "na", "US", "USD")
    de, us = new_order_id(), new_order_id()
    for order_id, psp, country, currency in [
        (de, de_psp, "DE", "EUR"),
        (us, us_psp, "US", "USD"),
    ]:
        for version, lines in [(1, [KETTLE, TOASTER]), (2, [KETTLE])]:
            event = klarna_event(order_id, psp, lines, version, country, currency)
            assert m.send(event).status_code == 202
    for order_id in (de, us):
        (update,) = settled(m, order_id, 1)
        assert (update["kind"], update["status"], update["amount"]) == (
            "update_authorization",
            "succeeded",
            6000,
        )
    # Every request for each order went to its market's URL with its market's
    # credentials (the sandbox records whose credentials it accepted); the frozen
    # request names the account.
    for order_id, psp, market, account in [(de, de_psp, "eu", "eu"), (us, us_psp, "na", "us")]:
        sent = m.requests(psp)
        assert sent and all(r["path"].startswith(f"/klarna/{market}/") for r in sent)
        assert {r["account"] for r in sent} == {market}
        assert {r["response_status"] for r in sent} <= {200, 204}
        (row,) = m.rows("SELECT account FROM orders WHERE id = %s", order_id)
        assert row["account"] == account
        (op,) = m.rows("SELECT request FROM operations WHERE order_id = %s", order_id)
        assert op["request"]["account"] == account
        # Operators see it: the API, its filter, and the CLI.
        assert m.operator(f"/orders/{order_id}").json()["account"] == account

    # An account switch by a later snapshot → 422 naming the field, nothing stored.
    switched = klarna_event(de, de_psp, [KETTLE], 3, "DE", "EUR", klarna_account="us")
    answer = m.send(switched)
    assert answer.status_code == 422
    assert answer.json()["fields"][0]["path"] == "order.payment.klarna_account"
    assert m.rows("SELECT version FROM orders WHERE id = %s", de)[0]["version"] == 2
    # A country no account serves, or an unknown account → 422 naming the field.
    fr = klarna_event(new_order_id(), de_psp, [KETTLE], 1, "FR", "EUR")
    assert m.send(fr).json()["fields"][0]["path"] == "order.country"
    mars = klarna_event(new_order_id(), de_psp, [KETTLE], 1, "DE", "EUR", klarna_account="mars")
    assert m.send(mars).json()["fields"][0]["path"] == "order.payment.klarna_account"

    # The CLI names the account.
    env = {**m.env, "PATH": "/usr/bin:/bin"}
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "ordersync"), "orders", "show", us],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "account   us" in shown.stdout
    # The worker's log lines for the US order's reconcile carry its account, and its
    # metrics count the requests per account.
    lines = [json.loads(line) for line in (m.logs / "k").read_text().splitlines() if line]
    done = [r for r in lines if r.get("event") == "psp_request_done" and r.get("order_id") == us]
    assert done and {r["account"] for r in done} == {"us"}
    metrics = httpx.get(m.worker_metrics_url, timeout=10).text
    assert 'account="us"' in metrics and 'account="eu"' in metrics


def test_another_markets_credentials_are_refused_by_the_sandbox(markets: Markets) -> None:
    m = markets
    psp = klarna_order(m, "na", "US", "USD")
    us_auth = (m.env["KLARNA_US_USERNAME"], m.env["KLARNA_US_PASSWORD"])
    url = f"{m.sandbox_url}/klarna/na/ordermanagement/v1/orders/{psp}"
    assert httpx.get(url, auth=us_auth, timeout=10).status_code == 200
    eu_url = f"{m.sandbox_url}/klarna/eu/ordermanagement/v1/orders/{psp}"
    assert httpx.get(eu_url, auth=us_auth, timeout=10).status_code == 401


def test_two_adyen_merchant_accounts_each_with_its_own_key_and_hmac(markets: Markets) -> None:
    m = markets
    orders = {}
    for merchant in ("ShopEU", "ShopUS"):
        psp = adyen_payment(m, merchant, 8500)
        order_id = new_order_id()
        assert m.send(adyen_event(order_id, psp, merchant, [KETTLE, TOASTER], 1)).status_code == 202
        assert m.send(adyen_event(order_id, psp, merchant, [KETTLE], 2)).status_code == 202
        orders[merchant] = (order_id, psp)
    for merchant, (order_id, psp) in orders.items():
        (update,) = settled(m, order_id, 1)
        assert update["status"] == "succeeded"  # its notification passed its own HMAC key
        sent = m.requests(psp)
        assert sent and {r["account"] for r in sent} == {merchant}
        assert all(json.loads(json.dumps(r["body"]))["merchantAccount"] == merchant for r in sent)
        (row,) = m.rows("SELECT account FROM orders WHERE id = %s", order_id)
        assert row["account"] == merchant
        flagged = m.operator(f"/orders?account={merchant}").json()["orders"]
        assert all(o["account"] == merchant for o in flagged)

    # A notification for ShopUS signed with ShopEU's key → 401, nothing stored; one for
    # a merchant account not configured → 401 too.
    eu_key = m.env["ADYEN_EU_HMAC_KEYS"]
    us_key = m.env["ADYEN_US_HMAC_KEYS"]
    _, us_psp = orders["ShopUS"]
    before = m.rows("SELECT count(*) AS n FROM inbox WHERE source = 'adyen'")[0]["n"]
    for merchant, key in [("ShopUS", eu_key), ("ShopXX", us_key)]:
        item = {
            "amount": {"currency": "EUR", "value": 8500},
            "eventCode": "REPORT_AVAILABLE",
            "eventDate": "2026-12-01T10:00:00+01:00",
            "merchantAccountCode": merchant,
            "merchantReference": "x",
            "pspReference": us_psp,
            "success": "true",
        }
        item["additionalData"] = {"hmacSignature": sign(item, key)}
        body = {"live": "false", "notificationItems": [{"NotificationRequestItem": item}]}
        answer = httpx.post(
            f"{m.web_url}/webhooks/adyen",
            json=body,
            auth=("adyen", m.env["ADYEN_WEBHOOK_PASSWORD"]),
            timeout=10,
        )
        assert answer.status_code == 401, merchant
    after = m.rows("SELECT count(*) AS n FROM inbox WHERE source = 'adyen'")[0]["n"]
    assert after == before

    # An order cannot move to the other merchant account: its payment is another one,
    # and the merchant account is pinned with the order.
    order_id, psp = orders["ShopEU"]
    answer = m.send(adyen_event(order_id, psp, "ShopUS", [KETTLE], 3))
    assert answer.status_code in (409, 422)


def test_beat_checks_every_account_into_a_gauge(markets: Markets) -> None:
    def gauge() -> str | None:
        text = httpx.get(markets.worker_metrics_url, timeout=10).text
        found = [line for line in text.splitlines() if line.startswith("ordersync_account_cred")]
        return "\n".join(found) if len(found) == 4 else None

    text = wait_for(gauge, what="four account gauges")
    for provider, account in [("klarna", "eu"), ("klarna", "us"), ("adyen", "ShopEU")]:
        assert f'account="{account}",provider="{provider}"}} 1.0' in text, text


def test_accounts_check_reads_once_per_account_and_says_which_are_refused(
    markets: Markets, tmp_path: Path
) -> None:
    ordersync = str(Path(sys.executable).parent / "ordersync")
    env = {**markets.env, "PATH": "/usr/bin:/bin"}
    ok = subprocess.run(
        [ordersync, "accounts", "check"], env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in ("eu", "us", "ShopEU", "ShopUS"):
        assert name in ok.stdout
    assert "refused" not in ok.stdout
    # A wrong password for the US market: refused, exit 1, the others still ok.
    env["KLARNA_US_PASSWORD"] = "not-it"
    bad = subprocess.run(
        [ordersync, "accounts", "check", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1
    results = {
        (r["provider"], r["account"]): r["result"] for r in map(json.loads, bad.stdout.splitlines())
    }
    assert results == {
        ("klarna", "eu"): "ok",
        ("klarna", "us"): "refused",
        ("adyen", "ShopEU"): "ok",
        ("adyen", "ShopUS"): "ok",
    }
    assert "not-it" not in bad.stdout + bad.stderr
