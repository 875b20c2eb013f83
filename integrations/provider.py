"""What the reconciler needs from a PSP client; one client class per PSP implements it."""

from __future__ import annotations

import uuid
from typing import Any, Protocol

from domain.snapshot import OrderSnapshot
from integrations.results import PspRequest, PspResult


class OrderFields(Protocol):
    """What a client reads of a stored order (data/orders.py Order has it)."""

    @property
    def id(self) -> str: ...
    @property
    def psp_order_id(self) -> str: ...
    @property
    def captured_amount(self) -> int: ...


class OperationFields(Protocol):
    """What a client reads of an operation, stored or only planned (data/orders.py
    Operation and Draft have it)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def kind(self) -> str: ...
    @property
    def amount(self) -> int: ...
    @property
    def lines(self) -> list[dict[str, Any]]: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def key_generation(self) -> int: ...
    @property
    def request(self) -> dict[str, Any] | None: ...


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

    def build(
        self, order: OrderFields, snapshot: OrderSnapshot, op: OperationFields
    ) -> PspRequest | PspResult:
        """The exact request for `op`, computed once when it is planned (a REJECTED
        result when it cannot be sent at all). `op` needs id, kind, amount, lines and
        idempotency_key."""
        ...

    def send(self, op: OperationFields, request: PspRequest) -> PspResult:
        """Sends the stored `request` of `op` with its idempotency key, byte for byte."""
        ...

    def execute(
        self, order: OrderFields, snapshot: OrderSnapshot, op: OperationFields
    ) -> PspResult:
        """build, then send (for callers without a stored request)."""
        ...

    def read(self, order: OrderFields) -> PspResult:
        """Reads the PSP's order; `body` of a successful result feeds `figures`."""
        ...

    def figures(self, body: dict[str, Any]) -> dict[str, Any]:
        """The PSP's order in our columns: authorized, captured, refunded, status,
        payment_method, country, expires_at, lines."""
        ...

    def applied(self, op: OperationFields, body: dict[str, Any]) -> bool:
        """Whether the PSP's order shows the effect of `op` (after an unknown outcome)."""
        ...
