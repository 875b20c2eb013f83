"""The merchant's PSP accounts (contract §6): Klarna accounts per region and Adyen
merchant accounts, from `ACCOUNTS_FILE` or, without it, from the single-account
variables of contract §2. Built once per process (`get_accounts`), never at import.

Secrets in the file are references only (`env:NAME`, `file:/path`), so the file itself
can live in a ConfigMap and the secrets in mounted Secrets. Anything wrong with the file
stops the process at start with one line naming the account and the key, never a value.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from domain.snapshot import AdyenPayment, KlarnaPayment, OrderSnapshot
from ordersync.errors import ConfigError, ValidationFailed
from ordersync.settings import SEED_INCREASE_ALLOWED, Settings, get_settings, increase_rule

# What orders stored before accounts existed carry (migration 0031), and the name of the
# account the single-account variables make.
DEFAULT = "default"

# Klarna's base URLs per region and environment: https://docs.klarna.com/api/api-urls
KLARNA_BASE_URLS: dict[tuple[str, str], str] = {
    ("eu", "live"): "https://api.klarna.com",
    ("na", "live"): "https://api-na.klarna.com",
    ("oc", "live"): "https://api-oc.klarna.com",
    ("eu", "playground"): "https://api.playground.klarna.com",
    ("na", "playground"): "https://api-na.playground.klarna.com",
    ("oc", "playground"): "https://api-oc.playground.klarna.com",
}

IncreaseRule = Callable[[str | None, str | None], bool]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_COUNTRY = re.compile(r"[A-Z]{2}")
_HMAC_KEY = re.compile(r"[0-9A-Fa-f]{64}")

_KLARNA_KEYS = frozenset(
    {
        "region",
        "environment",
        "api_url",
        "username",
        "password",
        "countries",
        "increase_allowed",
        "default",
    }
)
_ADYEN_KEYS = frozenset(
    {"checkout_url", "pal_url", "api_key", "hmac_keys", "modifications_api", "default"}
)


@dataclass(frozen=True)
class KlarnaAccount:
    name: str
    base_url: str
    region: str | None
    username: str = field(repr=False)
    password: str = field(repr=False)
    countries: frozenset[str] = frozenset()
    increase_allowed: Mapping[str, list[str]] = field(
        default_factory=lambda: dict(SEED_INCREASE_ALLOWED)
    )

    def allows_increase(self, payment_method: str | None, country: str | None) -> bool:
        return increase_rule(self.increase_allowed, payment_method, country)


@dataclass(frozen=True)
class AdyenAccount:
    # The merchant account code; "default" for the single-account variables, which
    # serve any merchant account a payment names (as before accounts existed).
    name: str
    checkout_url: str | None
    pal_url: str | None
    api_key: str = field(repr=False)
    hmac_keys: tuple[str, ...] = field(default=(), repr=False)
    modifications_api: Literal["checkout", "classic"] = "checkout"
    # The merchant account sent in requests when the payment names none.
    merchant_account: str | None = None


@dataclass(frozen=True)
class Accounts:
    klarna: Mapping[str, KlarnaAccount]
    adyen: Mapping[str, AdyenAccount]
    # From ACCOUNTS_FILE: orders are routed by country / merchant account; without it,
    # everything goes to the one account per PSP, as before.
    from_file: bool = False
    # The account orders stored before accounts existed belong to, per PSP.
    defaults: Mapping[str, str] = field(default_factory=dict)

    def route(self, order: OrderSnapshot) -> str:
        """The account a snapshot's payment belongs to, or 422 naming the field."""
        payment = order.payment
        if not self.from_file:
            return DEFAULT
        if isinstance(payment, KlarnaPayment):
            if payment.klarna_account is not None:
                if payment.klarna_account not in self.klarna:
                    raise _unroutable(
                        "order.payment.klarna_account", "names no configured Klarna account"
                    )
                return payment.klarna_account
            for account in self.klarna.values():
                if order.country in account.countries:
                    return account.name
            raise _unroutable("order.country", "no Klarna account is configured for it")
        assert isinstance(payment, AdyenPayment)
        code = payment.merchant_account
        if code is None:
            default = self.defaults.get("adyen")
            if default is None:
                raise _unroutable(
                    "order.payment.merchant_account", "required with several merchant accounts"
                )
            return default
        if code not in self.adyen:
            raise _unroutable(
                "order.payment.merchant_account", "names no configured Adyen merchant account"
            )
        return code

    def canonical(self, provider: str, stored: str | None) -> str:
        """An order's stored account by its configured name: orders from before accounts
        carry "default" (or nothing yet), which is the PSP's default account."""
        if stored in (None, DEFAULT):
            return self.defaults.get(provider, DEFAULT)
        assert stored is not None
        return stored

    def hmac_keys_for(self, merchant_account_code: str | None) -> tuple[str, ...] | None:
        """The HMAC keys for an Adyen notification item; None when its merchant account
        is not ours (the single-account variables take any)."""
        if not self.from_file:
            account = self.adyen.get(DEFAULT)
            return account.hmac_keys if account else ()
        account = self.adyen.get(merchant_account_code or "")
        return account.hmac_keys if account else None

    def names(self) -> list[tuple[str, str]]:
        """(provider, account) of every configured account: the bounded set of metric labels."""
        return [("klarna", n) for n in self.klarna] + [("adyen", n) for n in self.adyen]


def _unroutable(path: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        "the order's payment belongs to no configured account",
        fields=[{"path": path, "message": message}],
    )


# -- from the single-account variables ---------------------------------------------


def from_settings(settings: Settings) -> Accounts:
    klarna: dict[str, KlarnaAccount] = {}
    if settings.klarna_api_url:
        klarna[DEFAULT] = KlarnaAccount(
            name=DEFAULT,
            base_url=settings.klarna_api_url.rstrip("/"),
            region=None,
            username=settings.klarna_username or "",
            password=settings.klarna_password.get_secret_value()
            if settings.klarna_password
            else "",
            increase_allowed=settings.klarna_increase_allowed,
        )
    adyen: dict[str, AdyenAccount] = {}
    if settings.adyen_checkout_url or settings.adyen_pal_url or settings.hmac_keys:
        adyen[DEFAULT] = AdyenAccount(
            name=DEFAULT,
            checkout_url=settings.adyen_checkout_url,
            pal_url=settings.adyen_pal_url,
            api_key=settings.adyen_api_key.get_secret_value() if settings.adyen_api_key else "",
            hmac_keys=tuple(settings.hmac_keys),
            modifications_api=settings.adyen_modifications_api,
            merchant_account=settings.adyen_merchant_account,
        )
    return Accounts(klarna=klarna, adyen=adyen, from_file=False)


# -- from ACCOUNTS_FILE --------------------------------------------------------------


def load_file(path: str | Path, environ: Mapping[str, str] | None = None) -> Accounts:
    environ = os.environ if environ is None else environ
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError("ACCOUNTS_FILE cannot be read") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The parser's message quotes a position, not the text.
        where = str(exc).split("(", 1)[-1].rstrip(")") if "(" in str(exc) else "the file"
        raise ConfigError(f"ACCOUNTS_FILE is not valid TOML ({where})") from None
    unknown = sorted(set(data) - {"klarna", "adyen"})
    if unknown:
        raise ConfigError(f"ACCOUNTS_FILE: unknown section {unknown[0]!r}")
    klarna = {
        name: _klarna_account(name, body, environ) for name, body in _tables(data, "klarna").items()
    }
    adyen = {
        name: _adyen_account(name, body, environ) for name, body in _tables(data, "adyen").items()
    }
    seen: dict[str, str] = {}
    for account in klarna.values():
        for country in sorted(account.countries):
            if country in seen:
                raise ConfigError(
                    f"ACCOUNTS_FILE: klarna.{account.name}.countries: {country} is also in "
                    f"klarna.{seen[country]}"
                )
            seen[country] = account.name
    defaults = {
        "klarna": _default("klarna", data, klarna),
        "adyen": _default("adyen", data, adyen),
    }
    return Accounts(
        klarna=klarna,
        adyen=adyen,
        from_file=True,
        defaults={k: v for k, v in defaults.items() if v is not None},
    )


def _tables(data: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    tables = data.get(section, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"ACCOUNTS_FILE: {section} must be a table of accounts")
    for name, body in tables.items():
        if not _NAME.fullmatch(name) or name == DEFAULT:
            raise ConfigError(
                f"ACCOUNTS_FILE: {section}.{name[:64]}: not a usable account name "
                f"(letters, digits, _ . -, up to 64; not {DEFAULT!r})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"ACCOUNTS_FILE: {section}.{name} must be a table")
    return tables


def _default(section: str, data: dict[str, Any], accounts: Mapping[str, Any]) -> str | None:
    """The account that orders from before accounts belong to: the one marked
    `default = true`, or the only one."""
    marked = [
        str(name) for name, body in data.get(section, {}).items() if body.get("default") is True
    ]
    if len(marked) > 1:
        raise ConfigError(f"ACCOUNTS_FILE: {section}.{marked[1]}.default: only one may be default")
    if marked:
        return marked[0]
    return str(next(iter(accounts))) if len(accounts) == 1 else None


def _check_keys(where: str, body: dict[str, Any], allowed: frozenset[str]) -> None:
    for key in body:
        if key not in allowed:
            raise ConfigError(f"ACCOUNTS_FILE: {where}.{key[:64]}: unknown key")
    default = body.get("default")
    if default is not None and not isinstance(default, bool):
        raise ConfigError(f"ACCOUNTS_FILE: {where}.default: must be true or false")


def _klarna_account(name: str, body: dict[str, Any], environ: Mapping[str, str]) -> KlarnaAccount:
    where = f"klarna.{name}"
    _check_keys(where, body, _KLARNA_KEYS)
    region = _optional_text(where, body, "region")
    environment = _optional_text(where, body, "environment")
    api_url = _optional_text(where, body, "api_url")
    if api_url is not None:
        if environment is not None:
            raise ConfigError(f"ACCOUNTS_FILE: {where}.api_url: give either api_url or environment")
        base_url = _url(where, "api_url", api_url)
    else:
        if region not in ("eu", "na", "oc"):
            raise ConfigError(f"ACCOUNTS_FILE: {where}.region: must be eu, na or oc")
        if environment not in ("live", "playground"):
            raise ConfigError(f"ACCOUNTS_FILE: {where}.environment: must be live or playground")
        base_url = KLARNA_BASE_URLS[(region, environment)]
    if region is not None and region not in ("eu", "na", "oc"):
        raise ConfigError(f"ACCOUNTS_FILE: {where}.region: must be eu, na or oc")
    countries = body.get("countries", [])
    if not isinstance(countries, list) or not all(
        isinstance(c, str) and _COUNTRY.fullmatch(c) for c in countries
    ):
        raise ConfigError(
            f"ACCOUNTS_FILE: {where}.countries: must be a list of ISO 3166-1 alpha-2 codes"
        )
    if len(set(countries)) != len(countries):
        raise ConfigError(f"ACCOUNTS_FILE: {where}.countries: a country is listed twice")
    table = body.get("increase_allowed", SEED_INCREASE_ALLOWED)
    if not isinstance(table, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in table.values()
    ):
        raise ConfigError(
            f"ACCOUNTS_FILE: {where}.increase_allowed: must map a payment method to a list "
            "of countries"
        )
    return KlarnaAccount(
        name=name,
        base_url=base_url,
        region=region,
        # A Klarna username is an identifier, shown in the Merchant Portal: a literal is
        # allowed; the password is a secret.
        username=_secret(where, body, "username", environ, literal_ok=True),
        password=_secret(where, body, "password", environ),
        countries=frozenset(countries),
        increase_allowed={str(k).upper(): list(v) for k, v in table.items()},
    )


def _adyen_account(name: str, body: dict[str, Any], environ: Mapping[str, str]) -> AdyenAccount:
    where = f"adyen.{name}"
    _check_keys(where, body, _ADYEN_KEYS)
    mode = body.get("modifications_api", "checkout")
    if mode not in ("checkout", "classic"):
        raise ConfigError(f"ACCOUNTS_FILE: {where}.modifications_api: must be checkout or classic")
    checkout = _optional_text(where, body, "checkout_url")
    pal = _optional_text(where, body, "pal_url")
    if checkout is None:
        # Amount updates go to Checkout in both modes (classic has no line-item update).
        raise ConfigError(f"ACCOUNTS_FILE: {where}.checkout_url: required")
    if mode == "classic" and pal is None:
        raise ConfigError(f"ACCOUNTS_FILE: {where}.pal_url: required with classic")
    keys = tuple(_secret(where, body, "hmac_keys", environ).split())
    if not keys:
        raise ConfigError(f"ACCOUNTS_FILE: {where}.hmac_keys: no key in it")
    for number, key in enumerate(keys, start=1):
        if not _HMAC_KEY.fullmatch(key):
            raise ConfigError(
                f"ACCOUNTS_FILE: {where}.hmac_keys: entry {number} is not an Adyen HMAC key "
                "(64 hexadecimal characters)"
            )
    return AdyenAccount(
        name=name,
        checkout_url=_url(where, "checkout_url", checkout),
        pal_url=_url(where, "pal_url", pal) if pal else None,
        api_key=_secret(where, body, "api_key", environ),
        hmac_keys=keys,
        modifications_api="classic" if mode == "classic" else "checkout",
        merchant_account=name,
    )


def _optional_text(where: str, body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"ACCOUNTS_FILE: {where}.{key}: must be a non-empty string")
    return value.strip()


def _url(where: str, key: str, value: str) -> str:
    if not re.match(r"https?://[^\s/@]+(/\S*)?$", value):
        raise ConfigError(f"ACCOUNTS_FILE: {where}.{key}: must be an http(s) URL")
    return value.rstrip("/")


def _secret(
    where: str,
    body: dict[str, Any],
    key: str,
    environ: Mapping[str, str],
    *,
    literal_ok: bool = False,
) -> str:
    """A secret by reference. The message names the account, the key and the variable
    or file (neither is a secret), never what they hold."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"ACCOUNTS_FILE: {where}.{key}: required (env:NAME or file:/path)")
    if value.startswith("env:"):
        name = value[4:]
        resolved = environ.get(name, "")
        if not name or not resolved.strip():
            raise ConfigError(f"ACCOUNTS_FILE: {where}.{key}: variable {name[:64]} is not set")
        return resolved.strip()
    if value.startswith("file:"):
        path = value[5:]
        try:
            resolved = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError, ValueError):
            raise ConfigError(
                f"ACCOUNTS_FILE: {where}.{key}: file {path[:200]} cannot be read"
            ) from None
        if not resolved:
            raise ConfigError(f"ACCOUNTS_FILE: {where}.{key}: file {path[:200]} is empty")
        return resolved
    if literal_ok:
        return value
    raise ConfigError(
        f"ACCOUNTS_FILE: {where}.{key}: a secret must be a reference (env:NAME or file:/path),"
        " not the value"
    )


def build_accounts(settings: Settings, environ: Mapping[str, str] | None = None) -> Accounts:
    if settings.accounts_file:
        return load_file(settings.accounts_file, environ)
    return from_settings(settings)


@cache
def get_accounts() -> Accounts:
    return build_accounts(get_settings())
