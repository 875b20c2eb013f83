"""Helpers shared by the test_sandbox_* modules; holds no tests of its own."""

from __future__ import annotations

import base64
import contextlib
import functools
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from devrig.sandbox.app import SandboxConfig, create_app
from starlette.applications import Starlette

SPECS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "vendor-specs"
ORDERS = "/ordermanagement/v1/orders"
# The request of Klarna's "Update order amount" example (seed 000).
SEED_KETTLE = {
    "type": "physical",
    "reference": "75001",
    "name": "Kettle",
    "quantity": 1,
    "quantity_unit": "pcs",
    "unit_price": 6000,
    "tax_rate": 2500,
    "total_amount": 6000,
    "total_discount_amount": 0,
    "total_tax_amount": 1200,
}
AUTH = {"Authorization": "Basic " + base64.b64encode(b"sandbox:sandbox").decode()}


def line(
    name: str = "Kettle",
    unit_price: int = 6000,
    quantity: int = 1,
    tax_rate: int = 2500,
    discount: int = 0,
    kind: str = "physical",
    **overrides: Any,
) -> dict[str, Any]:
    """A line whose totals obey Klarna's arithmetic unless overridden."""
    total = quantity * unit_price - discount
    tax = round(total - Fraction(total * 10000, 10000 + tax_rate))
    out: dict[str, Any] = {
        "type": kind,
        "reference": name.lower(),
        "name": name,
        "quantity": quantity,
        "quantity_unit": "pcs",
        "unit_price": unit_price,
        "tax_rate": tax_rate,
        "total_amount": total,
        "total_discount_amount": discount,
        "total_tax_amount": tax,
    }
    out.update(overrides)
    return out


class SandboxClient:
    """A synchronous client over httpx.ASGITransport, so tests read top to bottom.

    Starlette's TestClient would do, but it is deprecated with plain httpx.
    """

    def __init__(self, app: Starlette, portal: BlockingPortal) -> None:
        self.app = app
        self._portal = portal
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://sandbox", headers=AUTH
        )
        self.headers = self.http.headers

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        call = functools.partial(self.http.request, method, url, **kwargs)
        return self._portal.call(call)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)


@contextlib.contextmanager
def sandbox_client(**config: Any) -> Iterator[SandboxClient]:
    config.setdefault("specs_dir", None)
    with start_blocking_portal() as portal:
        client = SandboxClient(create_app(SandboxConfig(**config)), portal)
        try:
            yield client
        finally:
            portal.call(client.http.aclose)


def create_order(
    client: SandboxClient,
    order_id: str = "ord-1",
    lines: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    lines = lines if lines is not None else [line(unit_price=7000)]
    body = {
        "order_id": order_id,
        "purchase_currency": "EUR",
        "purchase_country": "DE",
        "payment_method": "INVOICE",
        "order_amount": sum(item["total_amount"] for item in lines),
        "order_lines": lines,
        **fields,
    }
    response = client.post("/_sandbox/klarna/orders", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def ledger(client: SandboxClient, order_id: str = "ord-1") -> list[dict[str, Any]]:
    response = client.get("/_sandbox/ledger", params={"provider": "klarna", "order_id": order_id})
    entries: list[dict[str, Any]] = response.json()["entries"]
    return entries


def get_order(client: SandboxClient, order_id: str = "ord-1") -> dict[str, Any]:
    response = client.get(f"{ORDERS}/{order_id}")
    assert response.status_code == 200, response.text
    order: dict[str, Any] = response.json()
    return order
