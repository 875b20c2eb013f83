"""Typed settings from the environment (contract §2), read once per process."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from ordersync.errors import ConfigError

# The seed's table of who may increase an order amount (Klarna "Update order amount").
# Kept as configuration because Klarna's newer documentation differs from it: override
# with KLARNA_INCREASE_ALLOWED='{"INVOICE": ["*", "!CH"], ...}'.
SEED_INCREASE_ALLOWED: dict[str, list[str]] = {
    "INVOICE": ["*", "!CH"],
    "INVOICE_BUSINESS": ["*", "!CH"],
    "ACCOUNT": ["*", "!CH"],
    "FIXED_AMOUNT": ["SE", "NO", "FI", "DK", "AT", "DE"],
    "DIRECT_DEBIT": ["*", "!CH"],
    "DEFERRED_INTEREST": ["US"],
}


class Settings(BaseSettings):
    # Errors never echo the input: it may be a secret.
    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None

    shop_webhook_secrets: SecretStr | None = None
    shop_callback_url: str | None = None
    shop_callback_secret: SecretStr | None = None

    klarna_api_url: str | None = None
    klarna_username: str | None = None
    klarna_password: SecretStr | None = None
    # NoDecode: parsed by our validator, so bad JSON is reported with every other problem.
    klarna_increase_allowed: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=lambda: dict(SEED_INCREASE_ALLOWED)
    )

    adyen_checkout_url: str | None = None
    adyen_api_key: SecretStr | None = None
    adyen_merchant_account: str | None = None
    adyen_modifications_api: Literal["checkout", "classic"] = "checkout"
    adyen_pal_url: str | None = None
    adyen_hmac_keys: SecretStr | None = None
    adyen_webhook_username: str | None = None
    adyen_webhook_password: SecretStr | None = None

    operator_token: SecretStr | None = None
    # Named operator tokens, `name=token` space separated: actions record the name.
    operator_tokens: SecretStr | None = None

    # Several Klarna and Adyen accounts (contract §6, ordersync/accounts.py); without it,
    # the variables above make one account each.
    accounts_file: str | None = None
    # How often beat checks every account's credentials (`ordersync accounts check`).
    account_check_interval_seconds: float = Field(default=86400.0, gt=0)

    log_level: str = "INFO"
    log_format: Literal["json", "console"] | None = None

    # Reconciler tuning. Defaults suit production; tests shorten them.
    reconcile_sweep_seconds: float = Field(default=30.0, gt=0)
    # Postgres connections per web process: a webhook holds one for its single statement
    # (commit included), so this bounds how many commits can be grouped at once.
    web_db_pool_size: int = Field(default=20, ge=1, le=200)
    # Group commit (service/batcher.py): shop webhooks arriving within this many
    # milliseconds of each other, up to WEB_BATCH_MAX of them, are stored by one
    # statement in one commit. 0 stores each on its own.
    web_batch_window_ms: float = Field(default=1.0, ge=0, le=50)
    web_batch_max: int = Field(default=32, ge=1, le=1000)
    # At most this many batch statements under way at once per web process; a batch
    # whose window ends meanwhile waits for one and takes in what arrived
    # (service/batcher.py).
    web_batch_in_flight: int = Field(default=2, ge=1, le=64)
    # uvicorn processes of `ordersync web` (its --workers default); uvicorn's own name.
    web_concurrency: int = Field(default=1, ge=1, le=64)
    # The edge's clocks and caps (service/server.py; README "Security"): the request head
    # must arrive within the first, the body within the second after it; an idle
    # keep-alive connection is closed after the third; over the fourth, connections and
    # requests in progress per process, new requests are answered 503 (0: no cap, the
    # default: uvicorn counts idle connections too, so a cap would let a flood of them
    # turn every request, the liveness probe's included, into a 503; the clocks bound
    # how long each of them lives instead).
    web_header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    web_body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    web_keep_alive_seconds: float = Field(default=5.0, gt=0, le=300)
    web_limit_concurrency: int = Field(default=0, ge=0, le=100_000)
    # How long a marked order may wait for its task before the sweeper enqueues it again.
    sweep_grace_seconds: float = Field(default=10.0, ge=0)
    # How often an unfinished order's PSP state is read again, to notice drift.
    resync_seconds: float = Field(default=6 * 3600.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    # How long a worker holds an operation it is sending; a heartbeat renews it every
    # third of it while the PSP call runs, so a worker that dies is noticed this soon.
    lease_seconds: float = Field(default=10.0, ge=1)
    # How often beat runs the cheap sweep of expired leases alone (a dead worker's
    # operation is resumed this soon after its lease ends; workers/sweeper.py).
    lease_sweep_seconds: float = Field(default=2.0, gt=0)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    psp_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    psp_read_timeout_seconds: float = Field(default=20.0, gt=0)
    extend_authorization_days_before: int = Field(default=3, ge=0)
    notification_timeout_seconds: float = Field(default=3600.0, gt=0)
    # An Adyen notification that matches nothing is retried by the sweeper this long,
    # then recorded as orphaned.
    notification_orphan_seconds: float = Field(default=86400.0, gt=0)

    # Retention (workers/retention.py, run by beat). The key window outlasts Adyen's
    # 30 days of retries and the Standard Webhooks example schedule (about 3 days).
    retention_body_days: float = Field(default=7.0, ge=1)
    retention_key_days: float = Field(default=35.0, ge=31)
    retention_outbox_days: float = Field(default=7.0, ge=1)
    retention_batch: int = Field(default=1000, ge=1, le=10000)
    retention_max_batches: int = Field(default=50, ge=1)
    retention_interval_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _bodies_before_keys(self) -> Settings:
        if self.retention_key_days < self.retention_body_days:
            raise ValueError("RETENTION_KEY_DAYS must be at least RETENTION_BODY_DAYS")
        return self

    @field_validator("shop_webhook_secrets", "adyen_hmac_keys", "operator_tokens", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # An empty value (as a chart renders an unset one) is no value: a process that
        # needs it says so at start (`require`), instead of answering 401 to everything.
        if isinstance(value, str) and not value.split():
            return None
        return value

    @field_validator("shop_webhook_secrets")
    @classmethod
    def _shop_secrets_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        for number, secret in enumerate(_split(value), start=1):
            if not _valid_webhook_secret(secret):
                # Which entry, never what it holds.
                raise ValueError(
                    f"entry {number} is not a Standard Webhooks secret"
                    " (whsec_ followed by base64 of at least 16 bytes)"
                )
        return value

    @field_validator("adyen_hmac_keys")
    @classmethod
    def _hmac_keys_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        for number, key in enumerate(_split(value), start=1):
            if not _HMAC_KEY.fullmatch(key):
                raise ValueError(
                    f"entry {number} is not an Adyen HMAC key (64 hexadecimal characters)"
                )
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() and not _valid_dsn(value):
            # Never psycopg's message: it quotes the text, password and all.
            raise ValueError(
                "not a Postgres URL (postgresql://user:password@host:port/dbname)"
                " or key=value connection string"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value() and not _valid_redis_url(value):
            raise ValueError(
                "not a Redis URL (redis://, rediss:// with a numeric port, unix:// or"
                " redis+socket:// with a path)"
            )
        return value

    @field_validator("operator_tokens")
    @classmethod
    def _operator_tokens_well_formed(cls, value: SecretStr | None) -> SecretStr | None:
        names = set()
        for number, entry in enumerate(_split(value), start=1):
            name, sep, token = entry.partition("=")
            if not sep or not _OPERATOR_NAME.fullmatch(name) or len(token) < MIN_OPERATOR_TOKEN:
                raise ValueError(
                    f"entry {number} is not name=token (a name of letters, digits, . _ -;"
                    f" a token of at least {MIN_OPERATOR_TOKEN} characters)"
                )
            if name in names:
                raise ValueError(f"entry {number} repeats an operator's name")
            names.add(name)
        return value

    @property
    def operators(self) -> list[tuple[str, str]]:
        """(name, token) of everyone who may operate: OPERATOR_TOKENS' named entries, and
        OPERATOR_TOKEN as `operator`."""
        entries = (entry.partition("=") for entry in _split(self.operator_tokens))
        out = [(name, token) for name, _, token in entries]
        if self.operator_token is not None and self.operator_token.get_secret_value():
            out.append((DEFAULT_OPERATOR, self.operator_token.get_secret_value()))
        return out

    @field_validator("klarna_increase_allowed", mode="before")
    @classmethod
    def _parse_table(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("not valid JSON") from None

    @property
    def shop_secrets(self) -> list[str]:
        return _split(self.shop_webhook_secrets)

    @property
    def hmac_keys(self) -> list[str]:
        return _split(self.adyen_hmac_keys)

    def require(self, *names: str) -> None:
        """Fail with one line naming the first missing variable."""
        for name in names:
            if getattr(self, name) in (None, ""):
                raise ConfigError(f"missing required setting {name.upper()}")

    def increase_allowed(self, payment_method: str | None, country: str | None) -> bool:
        return increase_rule(self.klarna_increase_allowed, payment_method, country)


def increase_rule(
    table: Mapping[str, list[str]], payment_method: str | None, country: str | None
) -> bool:
    """Whether an increase is asked for at all: `table` maps a payment method to its
    markets (`*` any, `!XX` never XX)."""
    markets = table.get((payment_method or "").upper())
    if not markets or not country:
        return False
    country = country.upper()
    if f"!{country}" in markets:
        return False
    return "*" in markets or country in markets


def _split(secret: SecretStr | None) -> list[str]:
    return secret.get_secret_value().split() if secret else []


_OPERATOR_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MIN_OPERATOR_TOKEN = 16
# The name actions carry when the operator used OPERATOR_TOKEN.
DEFAULT_OPERATOR = "operator"

# Adyen's HMAC key is 32 bytes, shown in the Customer Area as 64 hex characters.
_HMAC_KEY = re.compile(r"[0-9A-Fa-f]{64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
WEBHOOK_SECRET_PREFIX = "whsec_"
# The Standard Webhooks specification asks for secrets of 24 to 64 random bytes; 16 is
# the least we accept.
MIN_SECRET_BYTES = 16


def _valid_webhook_secret(secret: str) -> bool:
    """What the standardwebhooks library can build a verifier from without failing on a
    request: `whsec_` (optional, as the library allows) and non-empty base64."""
    encoded = secret.removeprefix(WEBHOOK_SECRET_PREFIX)
    if not _BASE64.fullmatch(encoded):
        return False
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(key) >= MIN_SECRET_BYTES


def _valid_dsn(value: SecretStr) -> bool:
    dsn = value.get_secret_value()
    try:
        params = conninfo_to_dict(dsn)
    except (psycopg.Error, ValueError):
        return False
    if "://" not in dsn and "=" not in dsn:
        return False
    port = str(params.get("port") or "")
    return all(part.isdigit() for part in port.split(",")) if port else True


_REDIS_SCHEMES = {"redis", "rediss", "unix", "redis+socket"}


def _valid_redis_url(value: SecretStr) -> bool:
    try:
        url = urlsplit(value.get_secret_value())
        if url.scheme not in _REDIS_SCHEMES:
            return False
        if url.scheme in ("unix", "redis+socket"):
            return bool(url.path)
        _ = url.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        return False
    return bool(url.hostname)


_SETTINGS_FIELD = re.compile(r'field "([a-z0-9_]+)"')


@cache
def get_settings() -> Settings:
    """The settings, validated whole; ConfigError (one line naming every bad variable
    and why, never a value: it may be a secret) if any is wrong."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = [
            f"{str(error['loc'][0]).upper() if error['loc'] else 'settings'}:"
            f" {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None
    except SettingsError as exc:
        # A structured (JSON) setting that does not parse; pydantic-settings' message
        # names the field, and the text is not repeated.
        found = _SETTINGS_FIELD.search(str(exc))
        name = found.group(1).upper() if found else "a JSON setting"
        raise ConfigError(f"invalid settings: {name}: not valid JSON") from None
