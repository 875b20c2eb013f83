"""Every check that reads a request body is linear in its size.

For each of the worst inputs we could construct (escaped quotes, unterminated or not,
deep nesting, long numbers, many small values, a long key over many values, many
signature entries, a full Adyen batch of long items), the whole check the web process
runs on it (signature, bounded JSON, model or Adyen envelope and HMAC) is timed at
1 KiB, 32 KiB and 1 MiB. The figure is the time per byte at 1 MiB; its baseline is the
time per byte at 1 KiB of the same input, measured in the same run: a ratio near (or
below) 1 is linear; 489c33b's escaped quotes were quadratic (3.1 s at 32 KiB).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from bench.common import Row
from domain.snapshot import ShopEvent
from integrations.adyen import hmac as adyen_hmac
from ordersync.errors import OrdersyncError
from service.adyen_webhook import parse_items
from service.webhooks import parse_event, verify_shop_signature

KIB = 1024
SIZES = (KIB, 32 * KIB, 1024 * KIB)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
HMAC_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
# Flat: the 1 MiB input may cost at most this many times the 1 KiB one, per byte (or
# twice what the standard library's json.loads grows by on the same input, when memory
# alone makes that more: half a million objects do not fit in a cache). Quadratic would
# be a thousand times.
FLAT = 3.0


def worst_bodies(size: int) -> dict[str, bytes]:
    """The inputs that were (or could be) superlinear, at about `size` bytes."""
    return {
        "escaped_quotes_unterminated": b'{"notificationItems":"' + b'\\"' * (size // 2),
        "escaped_quotes_terminated": b'{"a":"' + b'\\"' * (size // 2) + b'"}',
        "backslashes": b'["' + b"\\\\" * (size // 2) + b'"]',
        "deep_nesting": b"[" * size,
        "deep_nesting_closed": b"[" * (size // 2) + b"]" * (size // 2),
        "long_number": b'{"a":' + b"9" * size + b"}",
        "long_float": b'{"a":1.' + b"5" * size + b"}",
        "many_small_numbers": b"[" + b"1," * (size // 2) + b"1]",
        "long_key_many_values": b'{"' + b"k" * (size // 2) + b'":[' + b"0," * (size // 4) + b"0]}",
        "wide_object": b"{" + b",".join(b'"%d":0' % i for i in range(size // 8)) + b"}",
    }


def shop_headers(body: bytes, entries: int = 1) -> dict[str, str]:
    """Standard Webhooks headers for `body`, the valid signature last of `entries`."""
    webhook_id, timestamp = "msg_bench", str(int(time.time()))
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    valid = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    bogus = "v1," + base64.b64encode(b"\0" * 32).decode()
    signatures = " ".join([bogus] * (entries - 1) + [valid])
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": signatures,
    }


def shop_check(body: bytes, headers: dict[str, str]) -> None:
    """What POST /webhooks/shop does with a body before storing it."""
    try:
        verify_shop_signature(body, headers, [SECRET])
        parse_event(body)
    except OrdersyncError:
        pass


def adyen_check(body: bytes) -> None:
    """What POST /webhooks/adyen does with a body before storing it."""
    try:
        items = parse_items(body)
        for item in items:
            adyen_hmac.is_valid(item, [HMAC_KEY])
    except OrdersyncError:
        pass


def adyen_batch(size: int) -> bytes:
    """100 signed items whose text fields fill `size` (with escaped quotes)."""
    filler = '\\"' * max(1, (size // 100 - 400) // 4)
    items = []
    for i in range(100):
        item: dict[str, Any] = {
            "pspReference": f"PSP{i:013d}",
            "merchantAccountCode": "Bench",
            "merchantReference": json.loads(f'"{filler}"'),
            "eventCode": "CAPTURE",
            "success": "true",
            "amount": {"value": 1000, "currency": "EUR"},
        }
        item["additionalData"] = {"hmacSignature": adyen_hmac.sign(item, HMAC_KEY)}
        items.append({"NotificationRequestItem": item})
    return json.dumps({"live": "false", "notificationItems": items}).encode()


def valid_order(size: int) -> bytes:
    lines = [
        {"id": f"sku-{i}", "name": "x" * 50, "quantity": 1, "unit_price": 100, "tax_rate": 1900}
        for i in range(max(1, min(1000, size // 120)))
    ]
    event = {
        "type": "order.updated",
        "order": {
            "id": "bench-1",
            "version": 1,
            "currency": "EUR",
            "country": "DE",
            "payment": {"provider": "klarna", "klarna_order_id": "k-1"},
            "lines": lines,
        },
    }
    body = json.dumps(event).encode()
    ShopEvent.model_validate_json(body)
    return body


def cases(size: int) -> dict[str, Callable[[], None]]:
    found: dict[str, Callable[[], None]] = {}
    for name, body in worst_bodies(size).items():
        headers = shop_headers(body)
        found[f"shop: {name}"] = lambda b=body, h=headers: shop_check(b, h)  # type: ignore[misc]
        found[f"adyen: {name}"] = lambda b=body: adyen_check(b)  # type: ignore[misc]
    small = b'{"type": "order.updated"}'
    entries = max(1, size // 48)  # each entry is 47 characters and a space
    many = shop_headers(small, entries)
    found["shop: many signature entries"] = lambda: shop_check(small, many)
    batch = adyen_batch(size)
    found["adyen: 100 items of escaped quotes"] = lambda: adyen_check(batch)
    order = valid_order(size)
    headers = shop_headers(order)
    found["shop: a valid order (up to 1,000 lines)"] = lambda: shop_check(order, headers)
    return found


def input_bytes(name: str, size: int) -> int:
    """The size the case actually reads (some inputs are only about `size`)."""
    if name == "shop: many signature entries":
        return len(shop_headers(b"{}", max(1, size // 48))["webhook-signature"])
    if name.endswith("100 items of escaped quotes"):
        return len(adyen_batch(size))
    if name.startswith("shop: a valid order"):
        return len(valid_order(size))
    return len(worst_bodies(size)[name.split(": ", 1)[1]])


def per_byte(fn: Callable[[], None], size: int, budget: float) -> float:
    """Nanoseconds per byte, best of as many runs as fit in `budget` seconds (3 to 200),
    without the cyclic collector's pauses, which land on whichever run is unlucky."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        deadline = time.perf_counter() + budget
        runs = 0
        while runs < 3 or (time.perf_counter() < deadline and runs < 200):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
            runs += 1
    finally:
        gc.enable()
    return best * 1e9 / size


def run(quick: bool = False, sizes: tuple[int, ...] = SIZES) -> tuple[list[Row], dict[str, Any]]:
    budget = 0.05 if quick else 1.5
    figures: dict[str, dict[int, float]] = {}
    for size in sizes:
        for name, fn in cases(size).items():
            figures.setdefault(name, {})[size] = per_byte(fn, input_bytes(name, size), budget)
    rows = []
    small, large = sizes[0], sizes[-1]
    # The standard library's own parser on the same inputs: how much its time per byte
    # grows with size for reasons that are not ours (allocation, caches), same run.
    stdlib: dict[str, float] = {}
    for kind in worst_bodies(small):
        at = {size: worst_bodies(size)[kind] for size in (small, large)}
        stdlib[kind] = per_byte(lambda b=at[large]: _json(b), len(at[large]), budget) / per_byte(
            lambda b=at[small]: _json(b), len(at[small]), budget
        )
    for name, by_size in figures.items():
        ratio = by_size[large] / by_size[small]
        allowed = max(FLAT, 2 * stdlib.get(name.split(": ", 1)[1], 1.0))
        rows.append(
            Row(
                f"{name}: ns/byte @{large // KIB} KiB (baseline @{small // KIB} KiB)",
                by_size[large],
                "ns/B",
                baseline=by_size[small],
                target=f"≤ {allowed:.1f}x",
                met=ratio <= allowed,
            )
        )
    extra = {
        "ns_per_byte": {
            name: {str(s): round(v, 2) for s, v in d.items()} for name, d in figures.items()
        },
        "stdlib_json_ratio": {kind: round(r, 2) for kind, r in stdlib.items()},
    }
    return rows, extra


def _json(body: bytes) -> None:
    with contextlib.suppress(ValueError, RecursionError):
        json.loads(body)
