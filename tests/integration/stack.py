"""The real stack for integration tests: embedded Postgres, Redis, the sandbox, and the
`ordersync` web, worker and beat processes, started once per test session."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from devrig.demo import signed_headers
from devrig.devstack import Process, klarna_line, wait_until
from psycopg.rows import dict_row


@dataclass
class Stack:
    database_url: str
    redis_url: str
    web_url: str
    sandbox_url: str
    secret: str
    operator_token: str
    env: dict[str, str]
    logs: Path
    redis: Any = None
    processes: dict[str, Process] = field(default_factory=dict)
    worker_metrics_url: str = ""

    @property
    def klarna_auth(self) -> tuple[str, str]:
        return self.env["KLARNA_USERNAME"], self.env["KLARNA_PASSWORD"]

    # -- the shop -----------------------------------------------------------------

    def send(
        self,
        event: dict[str, Any],
        *,
        webhook_id: str | None = None,
        secret: str | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        raw = body if body is not None else json.dumps(event).encode()
        headers = signed_headers(secret or self.secret, raw, webhook_id)
        return httpx.post(f"{self.web_url}/webhooks/shop", content=raw, headers=headers, timeout=15)

    # -- the sandbox --------------------------------------------------------------

    def klarna_order(
        self,
        lines: list[dict[str, Any]],
        *,
        payment_method: str = "INVOICE",
        country: str = "DE",
        currency: str = "EUR",
    ) -> str:
        klarna_lines = [klarna_line(line) for line in lines]
        response = httpx.post(
            f"{self.sandbox_url}/_sandbox/klarna/orders",
            json={
                "purchase_currency": currency,
                "purchase_country": country,
                "payment_method": payment_method,
                "order_amount": sum(line["total_amount"] for line in klarna_lines),
                "order_lines": klarna_lines,
            },
            timeout=10,
        )
        response.raise_for_status()
        return str(response.json()["order_id"])

    def ledger(self, psp_order_id: str) -> list[dict[str, Any]]:
        data = httpx.get(
            f"{self.sandbox_url}/_sandbox/ledger", params={"order_id": psp_order_id}, timeout=10
        ).json()
        return list(data["entries"])

    def psp_requests(self, psp_order_id: str) -> list[dict[str, Any]]:
        data = httpx.get(
            f"{self.sandbox_url}/_sandbox/requests", params={"order_id": psp_order_id}, timeout=10
        ).json()
        return list(data["requests"])

    def fault(self, **fault: Any) -> None:
        httpx.post(f"{self.sandbox_url}/_sandbox/faults", json=fault, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(f"{self.sandbox_url}/_sandbox/faults", timeout=10).raise_for_status()

    # -- our database -------------------------------------------------------------

    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with psycopg.connect(self.database_url, row_factory=dict_row, autocommit=True) as conn:
            yield conn

    def order_row(self, order_id: str) -> dict[str, Any] | None:
        with self.db() as conn:
            return conn.execute("SELECT * FROM orders WHERE id = %s", (order_id,)).fetchone()

    def operations(self, order_id: str) -> list[dict[str, Any]]:
        with self.db() as conn:
            return conn.execute(
                "SELECT * FROM operations WHERE order_id = %s ORDER BY seq", (order_id,)
            ).fetchall()

    def inbox_count(self, order_id: str) -> int:
        with self.db() as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM inbox WHERE order_id = %s", (order_id,)
            ).fetchone()
        assert row is not None
        return int(row["n"])


# Timing out in a test is a failed expectation, whatever the helper raises.
wait_for = wait_until


def order_event(
    order_id: str,
    psp_order_id: str,
    lines: list[dict[str, Any]],
    *,
    version: int = 1,
    event_type: str = "order.updated",
    status: str = "open",
    country: str = "DE",
    payment_method: str = "INVOICE",
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": event_type,
        "order": {
            "id": order_id,
            "version": version,
            "currency": "EUR",
            "country": country,
            "status": status,
            "payment": {
                "provider": "klarna",
                "klarna_order_id": psp_order_id,
                "payment_method": payment_method,
            },
            "lines": lines,
            **extra,
        },
    }


def new_order_id() -> str:
    return f"it-{uuid.uuid4().hex[:12]}"


# A customer's personal data, sent by tests in fields the service has no use for; it
# must never reach a log line (checked over every process's log at the session's end).
# The seed's kettle, the line most integration tests order.
KETTLE = {"id": "75001", "name": "Kettle", "quantity": 1, "unit_price": 6000, "tax_rate": 2500}

CUSTOMER = {
    "given_name": "Annegret",
    "family_name": "Quistorp-Vielhaber",
    "email": "annegret.quistorp@example.org",
    "phone": "+49 30 98765432",
    "street_address": "Zwetschgenallee 17",
    "postal_code": "10999",
    "city": "Berlin",
}
