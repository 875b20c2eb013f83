"""What an Adyen notification does to the operation it matched (pure rules)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from integrations.adyen.notifications import Notification, Verdict, decide, openinvoice_lines


def note(event: str, success: bool = True) -> Notification:
    return Notification.from_item(
        {
            "pspReference": "MOD1",
            "originalReference": "PAY1",
            "merchantReference": "x",
            "merchantAccountCode": "M",
            "eventCode": event,
            "success": str(success).lower(),
            "amount": {"currency": "EUR", "value": 315},
        }
    )


def op(kind: str, status: str, psp_reference: str | None = "MOD1") -> SimpleNamespace:
    return SimpleNamespace(kind=kind, status=status, psp_reference=psp_reference)


@pytest.mark.parametrize(
    ("event", "success", "kind", "status", "verdict"),
    [
        # In flight, including before the sender recorded `awaiting_notification`.
        ("CAPTURE", True, "capture", "awaiting_notification", Verdict.SUCCEED),
        ("CAPTURE", True, "capture", "sent", Verdict.SUCCEED),
        ("CAPTURE", False, "capture", "awaiting_notification", Verdict.RETRY),
        ("CAPTURE_FAILED", True, "capture", "awaiting_notification", Verdict.RETRY),
        ("AUTHORISATION_ADJUSTMENT", False, "update_authorization", "sent", Verdict.REJECT),
        ("AUTHORISATION_ADJUSTMENT", True, "release_authorization", "sent", Verdict.SUCCEED),
        ("REFUND", False, "refund", "awaiting_notification", Verdict.REJECT),
        ("CANCELLATION", True, "cancel", "awaiting_notification", Verdict.SUCCEED),
        # Twice: the second delivery of a success changes nothing.
        ("CAPTURE", True, "capture", "succeeded", Verdict.STALE),
        # A late failure never undoes a success; money moved back needs a person.
        ("CAPTURE", False, "capture", "succeeded", Verdict.STALE),
        ("AUTHORISATION_ADJUSTMENT", False, "update_authorization", "succeeded", Verdict.STALE),
        ("CAPTURE_FAILED", True, "capture", "succeeded", Verdict.FLAG),
        ("REFUNDED_REVERSED", True, "refund", "succeeded", Verdict.FLAG),
        # A failure already acted on (retry scheduled) is not acted on twice.
        ("CAPTURE_FAILED", True, "capture", "pending", Verdict.STALE),
        ("CAPTURE", True, "capture", "pending", Verdict.STALE),
        # Adyen did what we had given up on.
        ("CAPTURE", True, "capture", "failed", Verdict.FLAG),
        ("CAPTURE", False, "capture", "failed", Verdict.STALE),
        # An event that cannot settle this kind of operation.
        ("REFUND", True, "capture", "awaiting_notification", Verdict.STALE),
    ],
)
def test_decide(event: str, success: bool, kind: str, status: str, verdict: Verdict) -> None:
    assert decide(note(event, success), op(kind, status)) is verdict


def test_a_pending_operation_that_never_got_an_answer_is_settled() -> None:
    # The first call timed out after Adyen took it: no pspReference was recorded.
    assert decide(note("CAPTURE"), op("capture", "pending", None)) is Verdict.SUCCEED
    assert decide(note("CAPTURE", False), op("capture", "pending", None)) is Verdict.RETRY


def test_operation_id_comes_from_the_merchant_reference() -> None:
    assert note("CAPTURE").operation_id is None
    item = {
        "pspReference": "P",
        "eventCode": "CAPTURE",
        "success": "true",
        "merchantReference": "6f1c2a3e-0000-4000-8000-000000000001",
    }
    assert str(Notification.from_item(item).operation_id).startswith("6f1c2a3e")


def test_openinvoice_lines_of_an_authorisation() -> None:
    data = {
        "openinvoicedata.numberOfLines": "2",
        "openinvoicedata.line1.itemId": "sku-2",
        "openinvoicedata.line1.description": "Socks",
        "openinvoicedata.line1.numberOfItems": "2",
        "openinvoicedata.line1.itemAmount": "375",
        "openinvoicedata.line1.itemVatAmount": "75",
        "openinvoicedata.line1.itemVatPercentage": "2000",
        "openinvoicedata.line2.description": "Discount",
        "openinvoicedata.line2.numberOfItems": "1",
        "openinvoicedata.line2.itemAmount": "-525",
        "openinvoicedata.line2.itemVatAmount": "-105",
    }
    socks, discount = openinvoice_lines(data)
    assert (socks.reference, socks.quantity, socks.total_amount) == ("sku-2", 2, 900)
    assert (discount.reference, discount.type.value, discount.total_amount) == (
        "Discount",
        "discount",
        -630,
    )
    assert openinvoice_lines({"openinvoicedata.numberOfLines": "x"}) == []
