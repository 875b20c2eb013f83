"""What flags, reasons and states mean, in the words of an operator who has never read
the code: the console shows them, the timeline's JSON carries them, the CLI prints them.
A reason this table does not know (one added later) is described from its flag."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Words:
    what: str  # what happened, one sentence
    todo: str  # what the operator does about it


FLAGS: dict[str, Words] = {
    "needs_new_order": Words(
        "The payment provider would not authorize the order's new, higher total.",
        "The shop has been told (event order.new_order_required, with the items that were"
        " not authorized). Ask the customer to pay for those items in a new order, or"
        " remove them from this order in the shop. Nothing else is halted: items that fit"
        " the authorization are still captured. The flag clears itself once the shop sends"
        " a basket that fits; acknowledge it with a note to say who is handling it.",
    ),
    "needs_attention": Words(
        "Something went wrong that the service will not retry on its own, so automatic"
        " work on this order is halted; or, for a reason that only reports the basket or"
        " money moved outside the service, you are told while captures, refunds and"
        " releases go on.",
        "Read the reason below and fix its cause, then press \u201cReconcile now\u201d: the"
        " service reads the payment provider first (so nothing is done twice), clears this"
        " flag and carries on.",
    ),
}

REASONS: dict[str, Words] = {
    "NOT_ALLOWED": Words(
        "Klarna refused to increase the authorized amount to the new total.",
        "Ask the customer for a new order for the items Klarna did not authorize.",
    ),
    "increase_not_allowed": Words(
        "This payment method cannot be increased in this country (Klarna's rules), so the"
        " service did not ask Klarna.",
        "Ask the customer for a new order for the added items.",
    ),
    "retries_exhausted": Words(
        "The payment provider kept failing, and the service stopped after its retries.",
        "Check the provider's status page; once it answers again, reconcile.",
    ),
    "outcome_unknown": Words(
        "A request to the payment provider may or may not have been applied: its answer"
        " never arrived.",
        "Reconcile: the service asks the provider first and never sends it twice.",
    ),
    "provider_not_configured": Words(
        "The service has no credentials for this payment provider.",
        "Configure the provider's credentials, restart the service, then reconcile.",
    ),
    "task_failed": Words(
        "The service met an internal error while working on this order.",
        "Engineers: search the logs for this order id; after the fix, reconcile.",
    ),
    "notification_timeout": Words(
        "Adyen never confirmed a request the service made.",
        "Look the payment up in Adyen's Customer Area; then reconcile.",
    ),
    "drift": Words(
        "Money moved at the payment provider without this service (a capture or refund"
        " made in the merchant portal).",
        "Check it was intended; reconcile takes the provider's figures as the baseline.",
    ),
    "external_change": Words(
        "Money moved at the payment provider without this service (merchant portal,"
        " chargeback, expiry).",
        "Check it was intended; reconcile takes the provider's figures as the baseline.",
    ),
    "quantities_reversed": Words(
        "The shop lowered shipped or returned quantities below what was already captured"
        " or refunded.",
        "Correct the order in the shop (an exchange is a new line); nothing automatic is"
        " done for those items.",
    ),
    "amount_below_captured": Words(
        "The shop's new total is below what has already been captured.",
        "Mark the removed items as returned in the shop so they are refunded, or fix the total.",
    ),
    "capture_exceeds_authorization": Words(
        "The shipped items are worth more than what is still authorized.",
        "Ask the customer to pay the difference, or correct the order in the shop.",
    ),
    "refund_exceeds_captured": Words(
        "The returned items are worth more than what was captured and not yet refunded.",
        "Check the returns in the shop against the captures shown below.",
    ),
    "captured_above_total": Words(
        "More was captured than the order is now worth.",
        "Refund the difference by marking items returned in the shop, or adjust the order.",
    ),
    "captured_below_total": Words(
        "Everything shipped, but less was captured than the order is worth.",
        "Decide whether to charge the difference outside the service or accept it.",
    ),
    "authorization_cancelled": Words(
        "The payment provider has cancelled or released the authorization, and the shop"
        " wants the order open again.",
        "Ask the customer to pay again in a new order; this payment cannot be captured.",
    ),
    "authorization_fully_captured": Words(
        "The customer added items after everything authorized had been captured: there is"
        " no authorization left to raise for them.",
        "Ask the customer to pay for the new items in a new order.",
    ),
    "psp_order_cancelled": Words(
        "The shop ships items of an order the payment provider has cancelled.",
        "Ask the customer to pay again; the cancelled payment cannot be captured.",
    ),
    "order_expired": Words(
        "The authorization expired before everything was captured.",
        "Ask the customer to pay for the remaining items.",
    ),
    "order_closed": Words(
        "The payment provider closed the order before everything was captured.",
        "Ask the customer to pay for the remaining items.",
    ),
    "extension_without_effect": Words(
        "The authorization was extended but its expiry did not move.",
        "Check the order at Klarna; then reconcile.",
    ),
    "authorisation_refused": Words(
        "Adyen reports the payment as not authorised.",
        "Ask the customer to pay again.",
    ),
}

ADYEN_CONTRADICTION = Words(
    "Adyen reported a result that contradicts what this service had recorded.",
    "Look the payment up in Adyen's Customer Area, then reconcile.",
)


def flag_words(flag: str) -> Words:
    return FLAGS.get(
        flag, Words(f"The order is flagged ({flag}).", "Read the reason, then reconcile.")
    )


def reason_words(flag: str, code: str | None) -> Words:
    if code in REASONS:
        return REASONS[code]
    if code and "_after_" in code:
        return ADYEN_CONTRADICTION
    general = flag_words(flag)
    return Words(
        f"The service flagged the order with the reason {code or 'unknown'}.", general.todo
    )


OPERATION_KINDS = {
    "update_authorization": "change the authorized amount",
    "capture": "capture (charge) shipped items",
    "refund": "refund returned items",
    "cancel": "cancel the payment",
    "release_authorization": "release what is left of the authorization",
    "extend_authorization": "extend the authorization",
}

OPERATION_STATUSES = {
    "pending": "waiting to be sent",
    "sent": "being sent now",
    "awaiting_notification": "sent; waiting for Adyen's confirmation",
    "succeeded": "done",
    "rejected": "refused by the payment provider",
    "failed": "failed; not applied",
}

ACTIONS = {
    "reconcile": "reconciled now",
    "reprocess_notification": "reprocessed a notification",
    "resend_event": "resent an event to the shop",
    "acknowledge_flag": "acknowledged the flag",
}
