"""`ordersync accounts check` and its daily beat job: one harmless read per configured
account, proving its credentials (contract §6). Klarna is reported to disable
credentials left unused for months; this finds out before an order does."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from integrations.provider import Provider
from integrations.results import Outcome, PspResult
from ordersync import metrics
from ordersync.accounts import DEFAULT, Accounts
from workers.context import account_clients

log = structlog.get_logger("ordersync.accounts")

# What a refused credential looks like: Klarna 401/403, Adyen 401/403.
REFUSED_STATUSES = frozenset({401, 403})


@dataclass(frozen=True)
class Checked:
    provider: str
    account: str
    where: str  # the region and base URL; never a credential
    result: str  # "ok", "refused" or "unreachable"
    detail: str

    @property
    def ok(self) -> bool:
        return self.result == "ok"


def verdict(provider: str, result: PspResult) -> tuple[str, str]:
    """A check's answer in an operator's words. A Klarna 404 for the made-up order id
    means the credentials were accepted (Klarna checks them first)."""
    status = result.http_status
    if status in REFUSED_STATUSES:
        return "refused", f"HTTP {status}"
    if result.outcome is Outcome.SUCCEEDED or (provider == "klarna" and status == 404):
        return "ok", f"HTTP {status}"
    if status is None:
        code = result.error.code if result.error else "no answer"
        return "unreachable", code
    return "unreachable", f"HTTP {status}"


def check_accounts(accounts: Accounts, http: httpx.Client) -> list[Checked]:
    clients = account_clients(http, accounts)
    out: list[Checked] = []
    for (provider, name), client in clients.items():
        if name == DEFAULT and (provider, name) not in _own(accounts):
            continue  # the default account's alias: checked under its own name
        out.append(_check_one(provider, name, client, _where(accounts, provider, name)))
    return out


def _own(accounts: Accounts) -> set[tuple[str, str]]:
    return set(accounts.names())


def _where(accounts: Accounts, provider: str, name: str) -> str:
    if provider == "klarna":
        k = accounts.klarna[name]
        return f"{k.region or '-'} {k.base_url}"
    a = accounts.adyen[name]
    return f"{a.modifications_api} {a.checkout_url}"


def _check_one(provider: str, name: str, client: Provider, where: str) -> Checked:
    try:
        result = client.check()
    except Exception as exc:  # a check must report, never stop the others
        result = PspResult(Outcome.TRANSIENT, error=None, http_status=None)
        log.warning(
            "account_check_error", provider=provider, account=name, error=type(exc).__name__
        )
    outcome, detail = verdict(provider, result)
    metrics.account_checked(provider, name, outcome == "ok")
    log.info("account_checked", provider=provider, account=name, result=outcome, detail=detail)
    return Checked(provider, name, where, outcome, detail)
