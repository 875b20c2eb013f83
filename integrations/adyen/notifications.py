"""Adyen's notifications in our terms, and the pure rules of what each does to the
operation it answers (workers/adyen_inbox.py applies them in one transaction)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from domain.lines import PspLine
from domain.planner import IN_FLIGHT, Kind
from domain.snapshot import LineType


class NotifiedOperation(Protocol):
    """What a notification's verdict reads of the operation it matched."""

    @property
    def kind(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def psp_reference(self) -> str | None: ...


# Which of our operation kinds each modification event can settle.
SETTLES: dict[str, frozenset[Kind]] = {
    "AUTHORISATION_ADJUSTMENT": frozenset({Kind.UPDATE_AUTHORIZATION, Kind.RELEASE_AUTHORIZATION}),
    "CAPTURE": frozenset({Kind.CAPTURE}),
    "CAPTURE_FAILED": frozenset({Kind.CAPTURE}),
    "REFUND": frozenset({Kind.REFUND}),
    "REFUND_FAILED": frozenset({Kind.REFUND}),
    "REFUNDED_REVERSED": frozenset({Kind.REFUND}),
    "CANCELLATION": frozenset({Kind.CANCEL, Kind.RELEASE_AUTHORIZATION}),
}
# Events that report money moving back after the PSP first reported success.
REVERSALS = frozenset({"CAPTURE_FAILED", "REFUND_FAILED", "REFUNDED_REVERSED"})
PAYMENT_EVENTS = frozenset({"AUTHORISATION", "EXPIRE"})
# Money moved back to the shopper by the bank, not by a request of ours.
CHARGEBACKS = frozenset({"CHARGEBACK", "CHARGEBACK_REVERSED", "SECOND_CHARGEBACK"})
# Every event code we act on; any other item is stored and ignored.
ACTED_ON = PAYMENT_EVENTS | frozenset(SETTLES) | CHARGEBACKS
# A modification no operation of ours asked for (made in the Customer Area): the kind of
# money it moved, counted as an external change (contract §4).
EXTERNAL_KINDS: dict[str, Kind] = {
    "CAPTURE": Kind.CAPTURE,
    "REFUND": Kind.REFUND,
    "CANCELLATION": Kind.CANCEL,
    "CHARGEBACK": Kind.REFUND,
    "SECOND_CHARGEBACK": Kind.REFUND,
}
# Operation kinds whose notification carries the operation's own amount.
AMOUNT_CHECKED = frozenset({Kind.CAPTURE, Kind.REFUND, Kind.UPDATE_AUTHORIZATION})


# What is kept of an item (the inbox stores nothing else): the fields the signature,
# the inbox key, the matching and the rules read, and for the operator the event's date
# and the PSP's reason for a refusal. Adyen's items also carry the shopper (e-mail,
# name, IP, addresses, card summary in additionalData and `reason`); none of it is ever
# stored.
KEPT_FIELDS = frozenset(
    {
        "pspReference",
        "originalReference",
        "merchantAccountCode",
        "merchantReference",
        "amount",
        "eventCode",
        "eventDate",
        "success",
        "reason",
        "operations",
        "paymentMethod",
    }
)
KEPT_AMOUNT_FIELDS = frozenset({"value", "currency"})
# additionalData: the authorized lines (openinvoicelines), nothing about the shopper.
_KEPT_LINE_FIELDS = frozenset(
    {"numberOfItems", "itemAmount", "itemVatAmount", "itemVatPercentage", "itemId", "description"}
)


def _kept_additional(key: str) -> bool:
    if key == "openinvoicedata.numberOfLines":
        return True
    prefix, _, field = key.rpartition(".")
    return prefix.startswith("openinvoicedata.line") and field in _KEPT_LINE_FIELDS


def stored_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """The item as the inbox keeps it: allow-listed fields only. A successful item's
    `reason` is dropped too (for an AUTHORISATION it holds the card's summary and
    expiry); a refusal's reason is what the operator is shown."""
    kept = {key: value for key, value in item.items() if key in KEPT_FIELDS}
    if isinstance(kept.get("amount"), Mapping):
        kept["amount"] = {k: v for k, v in kept["amount"].items() if k in KEPT_AMOUNT_FIELDS}
    if str(item.get("success")).lower() == "true":
        kept.pop("reason", None)
    additional = item.get("additionalData")
    if isinstance(additional, Mapping):
        lines = {k: v for k, v in additional.items() if isinstance(k, str) and _kept_additional(k)}
        if lines:
            kept["additionalData"] = lines
    return kept


@dataclass(frozen=True)
class Notification:
    """One NotificationRequestItem, in the terms we act on."""

    psp_reference: str
    original_reference: str | None
    merchant_reference: str | None
    merchant_account: str | None
    event_code: str
    success: bool
    amount: int
    currency: str
    reason: str
    additional: Mapping[str, Any]

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Notification:
        amount = item.get("amount") or {}
        additional = item.get("additionalData")
        return cls(
            psp_reference=str(item["pspReference"]),
            original_reference=item.get("originalReference") or None,
            merchant_reference=item.get("merchantReference") or None,
            merchant_account=item.get("merchantAccountCode"),
            event_code=str(item["eventCode"]),
            success=str(item.get("success")).lower() == "true",
            amount=int(amount.get("value") or 0),
            currency=str(amount.get("currency") or ""),
            reason=str(item.get("reason") or ""),
            additional=additional if isinstance(additional, Mapping) else {},
        )

    @property
    def operation_id(self) -> uuid.UUID | None:
        """Our operation id, which our modification requests send as `reference`."""
        try:
            return uuid.UUID(self.merchant_reference or "")
        except ValueError:
            return None

    @property
    def payment_reference(self) -> str:
        return self.original_reference or self.psp_reference

    def error(self) -> dict[str, Any]:
        return {
            "code": self.event_code,
            "message": self.reason or f"{self.event_code} success={str(self.success).lower()}",
            "correlation_id": self.psp_reference,
        }


# --- deciding (pure) -------------------------------------------------------------------


def mismatch(
    n: Notification, *, currency: str, merchant_account: str | None, amount: int | None = None
) -> str | None:
    """What of the notification does not match the order (or the operation) it names;
    None when all does. A notification that does not match must not move money in our
    books: a verified HMAC says who sent it, not that it is about this order."""
    if n.currency != currency:
        return f"amount.currency {n.currency or '(none)'} is not the order's {currency}"
    if merchant_account is not None and n.merchant_account != merchant_account:
        return (
            f"merchantAccountCode {n.merchant_account or '(none)'} is not the order's "
            f"{merchant_account}"
        )
    if amount is not None and n.amount != amount:
        return f"amount.value {n.amount} is not the operation's {amount}"
    return None


class Verdict(StrEnum):
    SUCCEED = "succeeded"
    REJECT = "rejected"
    RETRY = "retry"
    FLAG = "flagged"  # the operation keeps its outcome; a person must look
    STALE = "stale"  # a repeat, or older than what we already know: no effect


def decide(n: Notification, op: NotifiedOperation) -> Verdict:
    """What the notification does to the operation it matched."""
    kind = Kind(op.kind)
    if kind not in SETTLES.get(n.event_code, frozenset()):
        return Verdict.STALE
    failure = not n.success or n.event_code in REVERSALS
    status = op.status
    # In flight includes `pending` (a retry parked after an unknown outcome, or one whose
    # answer never reached us): the notification is the outcome we were missing. A
    # pending operation still holding a pspReference predates failed_psp_references:
    # that reference is the failed generation's.
    answered = status == "pending" and op.psp_reference is not None
    if status in IN_FLIGHT and not answered:
        if not failure:
            return Verdict.SUCCEED
        if kind is Kind.CAPTURE and n.event_code in ("CAPTURE", "CAPTURE_FAILED"):
            return Verdict.RETRY
        return Verdict.REJECT
    if status == "succeeded":
        return Verdict.FLAG if n.event_code in REVERSALS else Verdict.STALE
    if status in ("rejected", "failed") and not failure:
        # Adyen did what we had given up on: the ledger is short of it.
        return Verdict.FLAG
    return Verdict.STALE


def openinvoice_lines(additional: Mapping[str, Any]) -> list[PspLine]:
    """Lines from `openinvoicedata.lineN.*`, when Adyen sends them with AUTHORISATION.

    Only used to tell which lines were authorized, so a line without an id is keyed by
    its description.
    """
    try:
        count = int(additional.get("openinvoicedata.numberOfLines", 0))
    except (TypeError, ValueError):
        return []
    merged: dict[str, PspLine] = {}
    for number in range(1, count + 1):
        prefix = f"openinvoicedata.line{number}."
        try:
            quantity = int(additional[prefix + "numberOfItems"])
            unit = int(additional[prefix + "itemAmount"]) + int(
                additional.get(prefix + "itemVatAmount", 0)
            )
            rate = int(additional.get(prefix + "itemVatPercentage", 0))
        except (KeyError, TypeError, ValueError):
            return []
        name = str(additional.get(prefix + "description", ""))
        reference = str(additional.get(prefix + "itemId") or name or f"line{number}")
        before = merged.get(reference)
        quantity_before = before.quantity if before else 0
        total = quantity * unit + (before.total_amount if before else 0)
        merged[reference] = PspLine(
            reference=reference,
            name=name,
            type=LineType.DISCOUNT if unit < 0 else LineType.PHYSICAL,
            quantity=quantity_before + quantity,
            unit_price=unit,
            tax_rate=rate,
            total_amount=total,
            total_discount_amount=(quantity_before + quantity) * unit - total,
            total_tax_amount=0,
        )
    return list(merged.values())
