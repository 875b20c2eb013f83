"""What the reconciler needs from a PSP client; one client class per PSP implements it."""

from __future__ import annotations

from typing import Any, Protocol

from domain.snapshot import OrderSnapshot
from integrations.results import PspRequest, PspResult

Row = dict[str, Any]


class Provider(Protocol):
    name: str
    # Whether the PSP's order can be read (Klarna can; Adyen only notifies).
    can_read: bool
    # The merchant's account at the PSP this client speaks for (contract §6).
    account: str | None

    def increase_allowed(self, payment_method: str | None, country: str | None) -> bool:
        """Whether asking for more than was authorized is worth a request at all."""
        ...

    def check(self) -> PspResult:
        """One harmless read that proves the account's credentials."""
        ...

    def build(self, order: Row, snapshot: OrderSnapshot, op: Row) -> PspRequest | PspResult:
        """The exact request for `op`, computed once when it is planned (a REJECTED
        result when it cannot be sent at all). `op` needs id, kind, amount, lines and
        idempotency_key."""
        ...

    def send(self, op: Row, request: PspRequest) -> PspResult:
        """Sends the stored `request` of `op` with its idempotency key, byte for byte."""
        ...

    def execute(self, order: Row, snapshot: OrderSnapshot, op: Row) -> PspResult:
        """build, then send (for callers without a stored request)."""
        ...

    def read(self, order: Row) -> PspResult:
        """Reads the PSP's order; `body` of a successful result feeds `figures`."""
        ...

    def figures(self, body: dict[str, Any]) -> dict[str, Any]:
        """The PSP's order in our columns: authorized, captured, refunded, status,
        payment_method, country, expires_at, lines."""
        ...

    def applied(self, op: Row, body: dict[str, Any]) -> bool:
        """Whether the PSP's order shows the effect of `op` (after an unknown outcome)."""
        ...
