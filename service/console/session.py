"""Console sessions and CSRF tokens, stateless: a session is a signed cookie naming the
operator and a fingerprint of the token they logged in with.

The signing key is derived from every configured operator token, so each web process
(and each replica) derives the same key, and changing any token ends every session.
A session also ends when its operator's token is removed or changed, and after
SESSION_SECONDS."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600
_MAX_COOKIE = 1024


@dataclass(frozen=True)
class Session:
    operator: str
    session_id: str
    expires: int


def same(expected: str, presented: str) -> bool:
    # As bytes: compare_digest refuses a str that is not ASCII, and input may be anything.
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))


def _fingerprint(token: str) -> str:
    return hashlib.sha256(b"ordersync-operator\0" + token.encode()).hexdigest()[:32]


def signing_key(operators: list[tuple[str, str]]) -> bytes:
    material = "\0".join(f"{name}={token}" for name, token in sorted(operators))
    return hashlib.sha256(b"ordersync-console-session\0" + material.encode()).digest()


def _sign(key: bytes, payload: bytes) -> str:
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def issue(operators: list[tuple[str, str]], name: str, now: float | None = None) -> str:
    token = dict(operators)[name]
    body = {
        "op": name,
        "fp": _fingerprint(token),
        "sid": secrets.token_hex(16),
        "exp": int((now or time.time()) + SESSION_SECONDS),
    }
    # Unpadded: a cookie value with `=` would be sent quoted.
    raw = json.dumps(body, separators=(",", ":")).encode()
    payload = base64.urlsafe_b64encode(raw).rstrip(b"=")
    return f"{payload.decode()}.{_sign(signing_key(operators), payload)}"


def verify(
    operators: list[tuple[str, str]], cookie: str | None, now: float | None = None
) -> Session | None:
    """The session the cookie carries, or None if it is absent, forged, expired, or its
    operator's token is no longer the one it was issued for."""
    if not cookie or len(cookie) > _MAX_COOKIE or not operators:
        return None
    payload, _, signature = cookie.partition(".")
    if not payload.isascii():
        return None  # a cookie we issued is base64url and hex
    expected = _sign(signing_key(operators), payload.encode())
    if not same(expected, signature):
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(payload.encode() + b"=" * (-len(payload) % 4)))
        name, fingerprint = str(body["op"]), str(body["fp"])
        session = Session(name, str(body["sid"]), int(body["exp"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    token = dict(operators).get(name)
    if token is None or not same(_fingerprint(token), fingerprint):
        return None
    if session.expires < (now or time.time()):
        return None
    return session


def csrf_token(operators: list[tuple[str, str]], session: Session) -> str:
    """The token every form of this session carries."""
    return _sign(signing_key(operators), b"csrf\0" + session.session_id.encode())


def csrf_ok(operators: list[tuple[str, str]], session: Session, presented: str | None) -> bool:
    return same(csrf_token(operators, session), presented or "")
