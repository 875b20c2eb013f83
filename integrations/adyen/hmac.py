"""Adyen's HMAC signature of a standard (payments) webhook notification item.

Pure: the web process verifies with it, and the sandbox signs with it. The signed
string is fixed by Adyen: eight fields joined by ':' in this order, an absent field
counting as empty (JSON null too), the amount's value as a decimal integer, and a JSON
boolean as `true`/`false`, as Adyen's own libraries render them (the .NET library's
`merchant-webhook-payload` sends `"success": true`). The key is hex; the
signature is the base64 of HMAC-SHA256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any


def signing_string(item: Mapping[str, Any]) -> str:
    amount = item.get("amount")
    # Anything but an object counts as absent, so no item can make signing raise.
    amount = amount if isinstance(amount, Mapping) else {}
    fields = (
        item.get("pspReference"),
        item.get("originalReference"),
        item.get("merchantAccountCode"),
        item.get("merchantReference"),
        amount.get("value"),
        amount.get("currency"),
        item.get("eventCode"),
        item.get("success"),
    )
    return ":".join(render(value) for value in fields)


def render(value: Any) -> str:
    """One field of the signing string: null is empty, booleans are JSON's."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def sign(item: Mapping[str, Any], hex_key: str) -> str:
    key = binascii.unhexlify(hex_key)
    digest = hmac.new(
        key, signing_string(item).encode("utf-8", "surrogatepass"), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def is_valid(item: Mapping[str, Any], hex_keys: Iterable[str]) -> bool:
    """Whether any of the keys (several during a rotation) signed the item."""
    additional = item.get("additionalData")
    given = additional.get("hmacSignature") if isinstance(additional, Mapping) else None
    if not isinstance(given, str) or not given:
        return False
    valid = False
    for key in hex_keys:
        try:
            expected = sign(item, key)
        except (binascii.Error, ValueError):
            continue  # a malformed key verifies nothing; settings report it at start
        # Every key is tried, so the time taken does not tell which one matched.
        valid |= hmac.compare_digest(expected.encode(), given.encode())
    return valid


def valid_key(hex_key: str) -> bool:
    try:
        return len(binascii.unhexlify(hex_key)) > 0
    except (binascii.Error, ValueError):
        return False
