"""What the benchmarks send: signed shop webhooks, signed Adyen notifications, sandbox
orders; and `drive`, which runs the load generator in its own process."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devrig.demo import KETTLE, TOASTER, signed_headers
from devrig.devstack import klarna_line

from integrations.adyen import hmac as adyen_hmac

TOTAL = 8500


def klarna_id(order_id: str) -> str:
    return f"k-{order_id}"


def snapshot(order_id: str, version: int = 1, shipped: bool = False) -> dict[str, Any]:
    """The seed's kettle and toaster; `shipped`: the kettle went out (a capture of 6000)."""
    kettle = {**KETTLE, "shipped_quantity": 1 if shipped else 0, "returned_quantity": 0}
    toaster = {**TOASTER, "shipped_quantity": 0, "returned_quantity": 0}
    return {
        "id": order_id,
        "version": version,
        "currency": "EUR",
        "country": "DE",
        "status": "open",
        "payment": {
            "provider": "klarna",
            "klarna_order_id": klarna_id(order_id),
            "payment_method": "INVOICE",
        },
        "lines": [kettle, toaster],
    }


def shop_webhook(
    secret: str,
    order_id: str,
    *,
    version: int = 1,
    shipped: bool = False,
    event_type: str = "order.created",
) -> dict[str, Any]:
    body = json.dumps({"type": event_type, "order": snapshot(order_id, version, shipped)}).encode()
    return {
        "method": "POST",
        "path": "/webhooks/shop",
        "tag": order_id,
        "headers": signed_headers(secret, body),
        "body": body.decode(),
    }


def adyen_notification(
    hmac_key: str, username: str, password: str, psp_reference: str
) -> dict[str, Any]:
    """One AUTHORISATION item, as Adyen sends it (one item a request), signed."""
    item: dict[str, Any] = {
        "eventCode": "AUTHORISATION",
        "success": "true",
        "pspReference": psp_reference,
        "merchantAccountCode": "BenchShop",
        "merchantReference": f"ref-{psp_reference}",
        "amount": {"value": TOTAL, "currency": "EUR"},
        "eventDate": "2025-01-01T12:00:00+01:00",
        "paymentMethod": "visa",
        "operations": ["CANCEL", "CAPTURE", "REFUND"],
        "reason": "",
        "additionalData": {},
    }
    item["additionalData"]["hmacSignature"] = adyen_hmac.sign(item, hmac_key)
    body = json.dumps({"live": "false", "notificationItems": [{"NotificationRequestItem": item}]})
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {
        "method": "POST",
        "path": "/webhooks/adyen",
        "tag": psp_reference,
        "headers": {"content-type": "application/json", "authorization": f"Basic {auth}"},
        "body": body,
    }


KLARNA_LINES = [klarna_line(KETTLE), klarna_line(TOASTER)]


def sandbox_order(order_id: str) -> dict[str, Any]:
    body = {
        "order_id": klarna_id(order_id),
        "purchase_currency": "EUR",
        "purchase_country": "DE",
        "payment_method": "INVOICE",
        "order_amount": TOTAL,
        "order_lines": KLARNA_LINES,
    }
    return {
        "method": "POST",
        "path": "/_sandbox/klarna/orders",
        "tag": order_id,
        "headers": {"content-type": "application/json"},
        "body": json.dumps(body),
    }


@dataclass
class LoadResult:
    elapsed: float
    count: int
    errors: int
    samples: list[list[Any]]  # [tag, scheduled, sent, latency_s, status]

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def latencies_ms(self) -> list[float]:
        return [s[3] * 1000 for s in self.samples]

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for sample in self.samples:
            out[sample[4]] = out.get(sample[4], 0) + 1
        return out


def drive(
    url: str,
    requests: Iterable[dict[str, Any]],
    *,
    concurrency: int = 32,
    rate: float | None = None,
    max_seconds: float = 60,
    warmup: int = 0,
) -> LoadResult:
    """Sends the requests from a separate process (its own core); bounded in count and time."""
    parts = urlsplit(url)
    with tempfile.TemporaryDirectory(prefix="ordersync-load-") as tmp:
        spec_path, req_path, out_path = (
            Path(tmp) / n for n in ("spec.json", "req.jsonl", "out.json")
        )
        spec_path.write_text(
            json.dumps(
                {
                    "host": parts.hostname,
                    "port": parts.port,
                    "concurrency": concurrency,
                    "rate": rate,
                    "max_seconds": max_seconds,
                    "warmup": warmup,
                }
            )
        )
        with req_path.open("w") as out:
            for request in requests:
                out.write(json.dumps(request) + "\n")
        subprocess.run(
            [sys.executable, "-m", "bench.loadgen", str(spec_path), str(req_path), str(out_path)],
            check=True,
            timeout=max_seconds + 120,
        )
        data = json.loads(out_path.read_text())
    return LoadResult(data["elapsed"], data["count"], data["errors"], data["samples"])


def create_sandbox_orders(sandbox_url: str, order_ids: list[str]) -> None:
    result = drive(
        sandbox_url, (sandbox_order(o) for o in order_ids), concurrency=16, max_seconds=600
    )
    bad = {k: v for k, v in result.statuses().items() if k != 201 and k != 200}
    if result.count != len(order_ids) or bad or result.errors:
        raise RuntimeError(
            f"sandbox orders: {result.count}/{len(order_ids)} created, "
            f"statuses {result.statuses()}, errors {result.errors}"
        )
