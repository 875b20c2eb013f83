"""The oracle: what the contract (CONTRACT.md §4–5) says one order's history must end at.

Written from the contract and the seeds alone. It imports nothing of the product (an
import-linter contract in pyproject.toml holds that) and knows nothing of how the
product plans, so a bug the product and its own tests share is not shared here.

A history is the shop's snapshots, in the order they were delivered, the PSP-side
events (money moved outside the service, expiry, refused increases) and *settle
points*: moments at which everything in flight has finished. Between two settle points
the service may act on any of the snapshots it has seen, so there the oracle says what
is *allowed*; at a settle point it says what is *required*. It answers per line (units
captured, at which prices and tax rates, units refunded), for the authorization
(open, cancelled, released, expired) and for the flags and shop events that must exist,
and the flags that may.

Money that moves is checked against the PSP's own ledger by `check_ledger`: every
request's lines add up to its amount, a refunded unit gives back what a capture took for
a unit of its line (value and its share of the order-level lines), and once every product unit has
shipped the captures add up to the order's total.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

BP = 10_000
GOODS = frozenset({"physical", "digital"})
FEES = frozenset({"shipping_fee", "surcharge"})  # charged with the first capture
SHARED_UP = frozenset({"sales_tax"})  # shared by value, like a discount but positive
REDUCING = frozenset({"discount", "gift_card", "store_credit"})
# The contract names these two reasons; other needs_attention reasons are the build's own.
EXTERNAL = "external_change"
REVERSED = "quantities_reversed"
# Reasons a fault (not the history) may cause: allowed only where faults happened.
FAULT_REASONS = frozenset(
    {
        "retries_exhausted",
        "outcome_unknown",
        "notification_timeout",
        "read_failed",
        "task_failed",
        # §4 "An operation that still fails after its retries flags needs_attention":
        # an extension Klarna confirmed whose new expiry the reads after it (a replica
        # lagging the write, a fault) do not show is one whose effect the build cannot
        # see; it tells a person rather than extend again (seed 54422).
        "extension_without_effect",
    }
)
# The PSPs' refusals of a release or a cancel (Adyen: AUTHORISATION_ADJUSTMENT, the
# release being an amount update down to the captures, and CANCELLATION with success
# false; Klarna: 403 NOT_ALLOWED, CANCEL_NOT_ALLOWED), the reason a build names when the
# authorization it lets go of has ended already.
LET_GO_REFUSED = frozenset(
    {"AUTHORISATION_ADJUSTMENT", "CANCELLATION", "NOT_ALLOWED", "CANCEL_NOT_ALLOWED"}
)
# Reasons for a basket the captures can no longer follow (a price edit after a capture).
CANNOT_FOLLOW = frozenset({"captured_above_total", "captured_below_total", "amount_below_captured"})
# README "Ledger model": a price cut no capture was left to give back is refunded as a
# `discount` line naming its goods line with this suffix (Adyen's items carry no type).
CUT_REFUND = "#price-cut"


def tax_in(gross: int, rate: int) -> int:
    """The tax inside a tax-inclusive amount, nearest cent, ties to even (seed 004:
    315 at 20 % holds 52 tax, 400 at 21 % holds 69)."""
    exact = Fraction(gross * rate, BP + rate)
    return round(exact)  # Fraction rounds half to even


def line_value(line: dict[str, Any]) -> int:
    return int(line["quantity"]) * int(line["unit_price"]) - int(
        line.get("total_discount_amount", 0)
    )


def order_total(snapshot: dict[str, Any]) -> int:
    """The sum of the lines, or `amount` when the shop gave an unitemised discount."""
    lines = sum(line_value(line) for line in snapshot["lines"])
    amount = snapshot.get("amount")
    return lines if amount is None else min(int(amount), lines)


def basket(snapshot: dict[str, Any]) -> list[str]:
    """What the customer buys (§4 step 1's "complete new basket"): every line but the
    shop's shipped and returned quantities, which no update carries."""
    return sorted(
        json.dumps(
            {k: v for k, v in line.items() if k not in ("shipped_quantity", "returned_quantity")},
            sort_keys=True,
        )
        for line in snapshot["lines"]
    )


def kind(line: dict[str, Any]) -> str:
    return str(line.get("type", "physical"))


@dataclass
class LineExpect:
    """What the PSP must hold for one shop line at the end."""

    captured: int = 0  # units
    refunded: int = 0
    # (unit price, tax rate) a captured unit may carry; more than one only when the shop
    # edited the line while its units waited to be captured.
    prices: set[tuple[int, int]] = field(default_factory=set)
    captured_range: tuple[int, int] | None = None  # set when the exact count is not known
    # (quantity, line value) in the same snapshots: after a price edit between two
    # captures of a line, the later ones carry the difference so that the line's
    # captures add up to its value (the contract's "captures add up to the total").
    totals: set[tuple[int, int]] = field(default_factory=set)
    # Refunded as few as this: a refund made outside whose lines the PSP never named
    # may have been taken for returned units of this line (see external_refund).
    refunded_low: int | None = None

    def maybe(self, low: int, high: int) -> None:
        """Units low..high may be captured. A range an earlier window left stays open:
        units worth nothing then (no capture of 0 is sent) are never captured later
        for that window, so the low end is the lowest either window allows."""
        if self.captured_range is not None:
            low = min(low, self.captured_range[0])
            high = max(high, self.captured_range[1])
        self.captured_range = (low, high)

    def outside(self, before: int, units: int) -> None:
        """`units` captured outside the service after `before` were counted. A range
        still open (the service's capture of shipped units left to timing): §4 "counts
        it in the order's figures, never makes it a second time". Learnt before that
        capture, the outside units may stand for shipped ones (no more than the high
        end); learnt after, they come on top of it; the counted and outside units are
        held either way."""
        if self.captured_range is not None and self.captured_range[1] > before:
            low, high = self.captured_range
            self.captured_range = (max(low, before + units), high + units)
        else:
            self.surely(before, units)

    def surely(self, before: int, units: int) -> None:
        """`units` more captured for certain, after `before` were counted: a range an
        earlier window left (its high end no more than `before`) moves up with them.
        One whose units were not counted (shipped beyond an authorization that window
        could not raise: its high end above `before`) may be among these: the PSP then
        holds as many as this capture leaves, or what that window's timing left (seed
        80407: 1 or 2 of 3 left to timing, then all 3 captured)."""
        if self.captured_range is None:
            return
        low, high = self.captured_range
        if high <= before:
            self.captured_range = (low + units, high + units)
        else:
            self.captured_range = (low, max(high, before + units))


@dataclass
class Expectation:
    lines: dict[str, LineExpect] = field(default_factory=dict)
    authorization: str = "open"  # open | cancelled | released | expired
    authorized: int | None = None  # the PSP's authorized amount when it is known exactly
    total: int = 0  # the order's total by the last stored snapshot
    all_shipped: bool = False  # every unit of every goods line shipped
    must_equal_total: bool = False  # captures − refunds-free: Σ captures == total
    required: set[tuple[str, str]] = field(default_factory=set)  # (flag, reason or "")
    allowed: set[tuple[str, str]] = field(default_factory=set)
    rejected_versions: list[int] = field(default_factory=list)  # answered 422
    ignored_versions: list[int] = field(default_factory=list)  # older than stored
    outcomes: set[str] = field(default_factory=set)  # names of what the history exercised
    uncertain_end = False  # shipped lines beyond the authorization: the end depends on timing
    authorized_low: int | None = None  # the PSP may hold as little as this (see settle)
    authorized_high: int | None = None  # the PSP may hold as much as this (see settle)
    # Per line Y: units of other lines X, captured outside without the PSP naming their
    # lines to the service, that a build may count as Y's (Y's units were worth the same
    # when the money moved): {Y: {X: units}}.
    interchangeable: dict[str, dict[str, int]] = field(default_factory=dict)
    # needs_attention with any reason is allowed (a refused payment: see
    # Oracle.authorisation_refused).
    any_attention: bool = False
    # The same for refunds made outside without named lines: {Y: {X: units}}.
    interchangeable_back: dict[str, dict[str, int]] = field(default_factory=dict)
    # The order-level lines of the stored snapshots (reducing and sales tax), id → the
    # least total each had (0 at most); an unitemised discount (`amount` below the
    # lines) under any id the snapshots do not use, as `unitemised`. What a settle's
    # shares may take (check_ledger).
    shares: dict[str, int] = field(default_factory=dict)
    unitemised: int = 0
    # Per line: units beyond those the PSP booked that a capture made outside without
    # named lines may stand for (it filled the basket, and they were all it left to
    # charge; Oracle.external_capture). The PSP's per-line count may be that much short.
    paid_whole: dict[str, int] = field(default_factory=dict)
    # Units whose capture was left to timing (a range) when a chargeback took everything
    # held: if they were captured, their money went back with it, and a build may count
    # them refunded once the shop marks them returned (Oracle.chargeback).
    charged_back_maybe: dict[str, int] = field(default_factory=dict)

    def requires(self, flag: str, reason: str = "") -> None:
        self.required.add((flag, reason))
        self.allowed.add((flag, reason))


@dataclass
class _State:
    captured: dict[str, int] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    authorized: int = 0
    closed: str | None = None  # cancelled | released | expired, by us or outside
    closed_version: int = 0  # the last snapshot stored when the PSP let go
    external_units: dict[str, int] = field(default_factory=dict)  # captured outside
    external_back: dict[str, int] = field(default_factory=dict)  # refunded outside
    charged_back: bool = False
    # A capture made outside whose lines the PSP did not name (an Adyen notification).
    unnamed_outside: bool = False
    # Units whose money a chargeback gave back (it takes everything still held): a shop
    # return of them is not refunded again.
    charged_back_units: dict[str, int] = field(default_factory=dict)
    money: Fraction = Fraction(0)  # captured, order-level lines shared in by value
    # Captured at most: a capture made for an earlier snapshot of its window carried that
    # basket's shares of the order-level lines, which a later one may have lowered.
    money_high: Fraction = Fraction(0)
    # Counted in money though timing decides whether the PSP holds it: units worth nothing
    # (no capture of 0 is sent) and a fee the first capture may not have carried (README
    # "Fees": it waits for the next capture of goods), whose LineExpect is a range.
    money_unsure: Fraction = Fraction(0)
    # A worker may have fully captured the authorization for a snapshot that passed,
    # which §4 step 1 then no longer raises ("not fully captured"): goods shipped since
    # may wait for the new order the shop is asked for (seed 83974).
    maybe_full: bool = False
    any_capture: bool = False
    own_capture: bool = False  # one made by the service (fees go with its first)
    free_shipped: bool = False  # units worth nothing shipped (no capture of 0 is sent)
    maybe_captured: bool = False  # units worth something in an earlier snapshot only
    # Units counted as captured that were worth nothing: no capture of 0 is sent, so the
    # PSP may hold them or not.
    worthless: dict[str, int] = field(default_factory=dict)
    # What those units, priced since, may have been captured for (counted in money_high
    # once per line, at the most they were worth).
    worthless_high: dict[str, Fraction] = field(default_factory=dict)
    # Units counted as refunded that were returned while their line was priced at
    # nothing: held at nothing once the cut is given back, their refund may be none.
    back_at_nothing: dict[str, int] = field(default_factory=dict)
    # Unit prices of captures made outside, with their tax rate (None: not known yet).
    outside_prices: dict[str, set[tuple[int, int | None]]] = field(default_factory=dict)
    # Captures made outside whose lines the PSP does not tell the service (an Adyen
    # notification names none): (line, units, the other lines whose units were worth
    # as much when the money moved).
    unnamed: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    # The same for refunds made outside (a Klarna portal refund listed without lines,
    # an Adyen REFUND notification).
    unnamed_back: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    # Units an unnamed outside capture that filled the basket may stand for beyond the
    # units the PSP booked it on (Expectation.paid_whole).
    paid_whole: dict[str, int] = field(default_factory=dict)
    # The PSP may still authorize this much: a capture made for an earlier snapshot of a
    # window, before an order-level line lowered the basket, left no room to lower it.
    authorized_high: int = 0
    # The PSP may authorize as little as this: a worker lowered the authorization to a
    # smaller basket that passed in a window, and no raise follows (the PSP refuses
    # increases). None: no such basket passed.
    authorized_floor: int | None = None
    # The PSP may hold an authorization this low, fully captured: a worker captured all of
    # a basket that passed in a window (or a fee alone filled what was left, README
    # "Fees"), and §4 step 1 updates only an authorization "not fully captured"; captures
    # only add, so it stays full. Goods shipped since may wait for the new order the shop
    # is asked for (seeds 62118, 62218). None: no such basket passed.
    full_at: int | None = None


def identity(snapshot: dict[str, Any]) -> tuple[Any, ...]:
    payment = snapshot["payment"]
    return (snapshot["currency"], tuple(sorted(payment.items())))


class Oracle:
    """Folds one history; `expectation()` after the last step."""

    def __init__(self, first_authorized: int, *, refuses_increases: bool) -> None:
        self.state = _State(authorized=first_authorized)
        self.refuses = refuses_increases
        self.exp = Expectation(authorized=first_authorized)
        self.stored: dict[str, Any] | None = None
        self.window: list[dict[str, Any]] = []  # stored since the last settle point
        self.faulty = False
        self.pending_external = False
        self.halted = False  # a person must look before anything moves (foreign_currency)
        self.expired_in_window = False  # expired while this window's capture was in flight
        self._before_update = 0  # the authorization before this settle point lowered it
        self._maybe_full = False  # the authorization may be fully captured in this window
        # What the PSP held when a fee left to timing may have fully captured it.
        self._kept_authorized: int | None = None
        # A worker may have cancelled for a snapshot that passed (cancelled or emptied)
        # in a window whose last one was open: the PSP may have let go, or not.
        self._maybe_cancelled = False
        # This window's cancel must first capture goods shipped beyond the authorization.
        self._cancel_held = False
        # The authorization ended without the service (expired, cancelled outside) since
        # the last settle point: a release or cancel sent before the service learnt it
        # is refused.
        self._ended_in_window = False
        # What moved without the service since the last settle point, when nothing
        # before it had required external_change already.
        self.external_since_settle: set[str] = set()
        # A cancel made outside: whether the shop's snapshot stored then said cancelled,
        # and how many snapshots of the window were stored before it.
        self._cancel_seen_cancelled = False
        self._cancel_at = 0
        # The most units of each line any stored snapshot marked shipped, and per
        # stored version the lines whose shipped quantity it lowered below that.
        self._shipped_most: dict[str, int] = {}
        self._lowered: dict[int, set[str]] = {}

    # -- the steps ---------------------------------------------------------------

    def snapshot(self, snap: dict[str, Any]) -> str:
        """A snapshot delivered: 'stored', 'ignored' (older) or 'rejected' (422)."""
        if self.stored is not None:
            if identity(snap) != identity(self.stored):
                self.exp.rejected_versions.append(snap["version"])
                self.exp.outcomes.add("identity_change_rejected")
                return "rejected"
            if snap["version"] <= self.stored["version"]:
                self.exp.ignored_versions.append(snap["version"])
                self.exp.outcomes.add("older_version_ignored")
                return "ignored"
        self.stored = snap
        self.window.append(snap)
        # What a settle's shares may have taken (check_ledger): each order-level line at
        # the most it ever was, since a capture made before an edit followed the line then.
        shares = self.exp.shares
        for line in snap["lines"]:
            if kind(line) in REDUCING | SHARED_UP:
                key = str(line["id"])
                shares[key] = min(shares.get(key, 0), line_value(line))
        unitemised = order_total(snap) - sum(line_value(x) for x in snap["lines"])
        self.exp.unitemised = min(self.exp.unitemised, unitemised)
        lowered = set()
        for line in snap["lines"]:
            shipped = int(line.get("shipped_quantity", 0))
            if shipped < self._shipped_most.get(line["id"], 0):
                lowered.add(str(line["id"]))
            self._shipped_most[line["id"]] = max(shipped, self._shipped_most.get(line["id"], 0))
        self._lowered[int(snap["version"])] = lowered
        return "stored"

    def fault(self) -> None:
        """Something transient went wrong in this window (a retry, a crash, a lost answer)."""
        self.faulty = True

    def external_capture(
        self,
        line_id: str,
        units: int,
        value: int,
        *,
        named: bool = True,
        tax_rate: int | None = None,
    ) -> None:
        """Units captured outside the service (checkout, the Merchant Portal), for
        `value` in all. `named`: whether the PSP tells the service its lines (a Klarna
        read does; an Adyen notification gives an amount only). `tax_rate`: the rate
        its maker booked it at, when known."""
        if not named:
            self.state.unnamed_outside = True
        if not named and units and self.stored is not None:
            # §4 asks that such money be counted and "never made a second time"; which
            # units it paid for the service can only tell by their value: units of
            # another line worth as much at that moment explain it as well.
            alike = self._worth_as_much(line_id, units, value)
            if alike:
                self.state.unnamed.append((line_id, units, alike))
        self.state.external_units[line_id] = self.state.external_units.get(line_id, 0) + units
        before = self.state.captured.get(line_id, 0)
        self.state.captured[line_id] = before + units
        entry = self.exp.lines.get(line_id)
        if entry is not None:
            # §4 "counts it in the order's figures": on top of units an earlier window
            # left to timing (a range), which then moves up with them.
            entry.outside(before, units)
        self.state.any_capture = True
        self.state.money += value
        self.state.money_high += value
        if not named and units:
            self._filled_by_unnamed(line_id)
        # Made without the service, at the price its maker chose: §4 asks that it be
        # counted and never made again, not that it be at the shop's price of the
        # moment the service judges it.
        # At the line's tax rate of the moment, or, made before any snapshot named the
        # line, at any rate it has later (see expectation).
        snaps = [*self.window, *([self.stored] if self.stored else [])]
        rates: set[int | None] = {
            int(x["tax_rate"]) for snap in snaps for x in snap["lines"] if x["id"] == line_id
        }
        if units:
            outside = self.state.outside_prices.setdefault(line_id, set())
            outside |= {(value // units, rate) for rate in rates or {None}}
            if tax_rate is not None:
                # Its maker's own rate counts too: one booked from a snapshot the
                # service never stored (checkout's, before the first read, that a
                # newer version overtook) is at a rate no stored snapshot names.
                outside.add((value // units, tax_rate))
        self._external("external_capture")

    def _filled_by_unnamed(self, line_id: str) -> None:
        """An unnamed capture (an Adyen notification gives an amount only) that brought
        the captures to the stored basket's total, when every unit of that basket not
        yet counted captured is of the line the PSP booked it on: it is then what §4
        step 2 would have captured for all of them, their order-level shares in ("the
        shares add up to the discount line's total once everything has shipped"), and
        README "External changes" ties such money to "the units it marks shipped and
        not yet captured (all of them, ...)" worth its amount at the prices then. The
        build may count those units captured by it (seed 88491: a store credit's last
        −100 on l1's two units of 100; the PSP model booked one unit at 100)."""
        st, stored = self.state, self.stored
        # Two cents for the shares the service's own captures rounded (§4 "rounded
        # cumulatively"), as elsewhere.
        if stored is None or stored["status"] != "open" or abs(st.money - order_total(stored)) > 2:
            return
        left = {
            str(x["id"]): int(x["quantity"]) - st.captured.get(str(x["id"]), 0)
            for x in stored["lines"]
            if kind(x) in GOODS | FEES and line_value(x) > 0
        }
        left = {k: v for k, v in left.items() if v > 0}
        if set(left) == {line_id}:
            st.paid_whole[line_id] = st.paid_whole.get(line_id, 0) + left[line_id]

    def _worth_as_much(
        self, line_id: str, units: int, value: int, *, shared: bool = False
    ) -> tuple[str, ...]:
        """The other goods lines of the stored basket whose units, as many, are worth
        `value` too: money moved without named lines explains them as well.
        `shared`: also worth it with their order-level shares in (§4: a refund is "at
        the prices and tax they were captured at", shares of a store credit or discount
        included; within the shares' cumulative rounding, a cent), seed 101642."""
        assert self.stored is not None
        ratio = self._ratio(self.stored) if shared else Fraction(1)
        return tuple(
            str(x["id"])
            for x in self.stored["lines"]
            if x["id"] != line_id
            and kind(x) in GOODS
            and int(x["quantity"]) > 0
            and (
                line_value(x) * units == value * int(x["quantity"])
                or (
                    shared
                    and abs(line_value(x) * units * ratio - value * int(x["quantity"]))
                    <= int(x["quantity"])
                )
            )
        )

    def external_refund(
        self, line_id: str, units: int, *, named: bool = True, value: int = 0
    ) -> None:
        """Units refunded outside the service, for `value` in all; `named`: whether the
        PSP tells the service its lines."""
        if not named and units and self.stored is not None:
            # §4: counted and "never made a second time"; which units it gave back the
            # service can only tell by value: returned units of another line worth as
            # much when it moved explain it as well, and the build may take it for
            # them (then refunds one fewer of them when the shop marks them returned).
            alike = self._worth_as_much(line_id, units, value, shared=True)
            if alike:
                self.state.unnamed_back.append((line_id, units, alike))
        self.state.refunded[line_id] = self.state.refunded.get(line_id, 0) + units
        self.state.external_back[line_id] = self.state.external_back.get(line_id, 0) + units
        self._external("external_refund")

    def chargeback(self) -> None:
        """A chargeback of everything still held: the customer has that money back."""
        st = self.state
        st.charged_back = True
        for line_id, units in st.captured.items():
            held = units - st.refunded.get(line_id, 0) - st.charged_back_units.get(line_id, 0)
            if held > 0:
                st.charged_back_units[line_id] = st.charged_back_units.get(line_id, 0) + held
        # §4: a chargeback is money moved without the service, which it "counts in the
        # order's figures, never makes ... a second time". Units whose capture was left
        # to timing (captured_range) may be held too: then the chargeback gave back
        # their money, and a build that ties it to them when the shop marks them
        # returned sends no refund for them (seed 93071: two units shipped in a window
        # the oracle could not tell was captured, charged back, then returned).
        for line_id, entry in self.exp.lines.items():
            if entry.captured_range is None:
                continue
            maybe = (
                entry.captured_range[1]
                - st.captured.get(line_id, 0)
                - self.exp.charged_back_maybe.get(line_id, 0)
            )
            if maybe > 0:
                self.exp.charged_back_maybe[line_id] = (
                    self.exp.charged_back_maybe.get(line_id, 0) + maybe
                )
        self._external("chargeback")

    def external_cancel(self) -> None:
        self._ended_in_window = True
        self.state.closed = "cancelled"
        self.state.closed_version = self.stored["version"] if self.stored else 0
        self._cancel_seen_cancelled = bool(self.stored and self.stored["status"] == "cancelled")
        self._cancel_at = len(self.window)
        self._external("external_cancel")

    def foreign_notification(self) -> None:
        """A notification whose amount, currency or merchant account is not the
        payment's: it changes nothing; a build may flag it for a person."""
        self.exp.outcomes.add("foreign_notification")
        self.exp.allowed.add(("needs_attention", "notification_mismatch"))

    def foreign_currency(self) -> None:
        """The PSP holds the payment in another currency than the first snapshot fixed
        (§4: "An order's currency ... fixed by its first snapshot"): money the service
        did not move that way; it must tell a person, as for any external change. The
        flag halts the service (§4 "an operator's reconcile then takes the PSP's figures
        as the new baseline": the operator's read finds the same currency, so it halts
        again): from then on only what moves outside the service is in the ledger."""
        self.halted = True
        self._external("foreign_currency")

    def failed_after_success(self, event_code: str) -> None:
        """Adyen reports a capture (refund) that succeeded as failed after all
        (CAPTURE_FAILED, REFUNDED_REVERSED). The contract names no rule for it beyond
        §4's "An operation that still fails ... flags needs_attention": a person is told
        (any reason, the build's own), and nothing the service recorded is undone by it
        (README: "a late failure never undoes a success"), so the ledger stays."""
        self.exp.outcomes.add(f"{event_code.lower()}_after_success")
        self.exp.requires("needs_attention")
        self.exp.allowed.add(("needs_attention", f"{event_code.lower()}_after_succeeded"))

    def authorisation_refused(self) -> None:
        """The PSP refused the payment the shop's order was placed with: nothing is
        authorized (§4 "for an Adyen payment, the AUTHORISATION notification" gives the
        authorized amount: none), so nothing can be captured, and the shop, which sent
        the order as paid, must be told. The contract names no reason for it; a user of
        a payment service expects a person to look (needs_attention, any reason the
        build gives) and, as the shop must take a new payment, needs_new_order may be
        raised as for a refused increase. Nothing moves after it (halted)."""
        self.halted = True
        self.state.closed = "refused"
        self.exp.outcomes.add("authorisation_refused")
        self.exp.requires("needs_attention")
        self.exp.any_attention = True
        self.exp.allowed.add(("needs_new_order", ""))

    def rejected(self, operation: str, code: str) -> None:
        """The PSP refuses `operation` (an extension of the authorization) whenever the
        service asks: §4 "An operation that still fails after its retries flags
        needs_attention"; a business rejection is not retried (§5), so it flags at
        once, with the PSP's code."""
        self.exp.outcomes.add(f"{operation}_refused")
        self.exp.allowed.add(("needs_attention", code))

    def expire(
        self,
        *,
        capture_in_flight: bool = False,
        window_done: bool = False,
        extension_due: bool = False,
    ) -> None:
        """The authorization expired; `capture_in_flight`: while a capture of this
        window was on its way, so units shipped in it may have been captured first.
        `window_done`: at a settle point, after the window's last snapshot (no later
        one can explain the expiry: a cancel the shop sends after an EXPIRE the service
        has not learnt of yet does). `extension_due`: the date that passed was inside the
        extend window (README EXTEND_AUTHORIZATION_DAYS_BEFORE)."""
        self.expired_in_window = capture_in_flight
        if self.state.closed is None:
            self._ended_in_window = True
            if extension_due and any(
                snap["status"] == "open"
                and (self._unshipped_of_value(snap) or self._fee_to_charge(snap))
                for snap in [*self.window, *([self.stored] if self.stored else [])]
            ):
                # README EXTEND_AUTHORIZATION_DAYS_BEFORE: the service extends an
                # authorization this long before `expires_at` "while goods of value are
                # unshipped or a fee is uncaptured". A worker that planned the extension
                # for a snapshot of this window before the date passed sends it after:
                # Klarna refuses it (403 NOT_ALLOWED, "the order being expired ... among
                # the possible causes"), a business rejection is not retried (§5), and
                # §4: "An operation that still fails after its retries flags
                # needs_attention", with the PSP's code (as rejected() for an extension
                # Klarna always refuses). Allowed, not required: the worker may have
                # learnt of the expiry first, or shipped everything before it planned.
                self.exp.outcomes.add("extension_after_the_authorization_ended")
                self.exp.allowed.add(("needs_attention", "NOT_ALLOWED"))
            self.state.closed = "expired"
            self.exp.outcomes.add("expired")
            stored = self.stored
            if (
                stored is not None
                and stored["status"] == "cancelled"
                and self._uncaptured_goods()
                and (
                    (capture_in_flight and window_done)
                    or not self._shipped_uncaptured({x["id"]: x for x in stored["lines"]})
                )
            ):
                # §4 flags an expiry "where the shop's snapshot does not already
                # explain it": the shop cancelled, nothing shipped is left to charge,
                # so the authorization took nothing the shop wants charged with it; the
                # flag may be raised, not must (seed 53375, the cancel refused after it).
                # A lapse at a settle point comes after the window's work, so what
                # shipped in it went with the capture in flight (seed 97560).
                self.exp.outcomes.add("expiry_of_a_cancelled_order")
                self.exp.allowed.add(("needs_attention", EXTERNAL))
            elif (
                self._uncaptured_goods()
                and capture_in_flight
                and not (window_done and self._unshipped_goods())
            ):
                # The goods may be the ones that capture takes: whether work is left
                # is known only at the settle point (_captures allows the flag then).
                # (Goods not shipped are in no capture: with them, and no snapshot to
                # come before the service learns of it, the flag stays required, below.)
                self.exp.outcomes.add("expiry_with_work")
                self.exp.allowed.add(("needs_attention", EXTERNAL))
            elif self._uncaptured_goods() and not self._goods_to_charge(
                self.stored or {"lines": []}, at_most=True
            ):
                # §4 flags the expiry "where the shop's snapshot does not already explain
                # it": whether goods were left to charge hangs on a capture an earlier
                # window left to timing (a range); captured, nothing was lost with the
                # authorization, so the flag may be raised, not must.
                self.exp.outcomes.add("expiry_with_work_left_to_timing")
                self.exp.allowed.add(("needs_attention", EXTERNAL))
            elif self._uncaptured_goods():
                self._external("expiry_with_work")
            elif stored is not None and any(
                int(x["quantity"]) > self._captured_at_least(x["id"]) and line_value(x) > 0
                for x in stored["lines"]
                if kind(x) in GOODS
            ):
                # The other way round (seed 53845): counted as captured, but an earlier
                # window left that capture to timing (a range from 0); not captured,
                # the goods were left to charge when the authorization went, which the
                # shop's snapshot does not explain (§4): the flag may be raised.
                self.exp.outcomes.add("expiry_with_work_left_to_timing")
                self.exp.allowed.add(("needs_attention", EXTERNAL))
            elif stored is not None and self._fee_to_charge(stored):
                # A fee the shop lists and no capture has charged: README "Fees": "Until
                # a fee is captured the authorization holds it", so the expiry took
                # money the shop still asks for, which its snapshot does not explain
                # (§4: flagged "where the shop's snapshot does not already explain it").
                # Allowed, not required: the order-level shares may take its capture
                # whole, which then charges nothing (README "External changes", seed
                # 90797), and one that could not fit waits anyway (seed 203760: a
                # surcharge after a refused increase).
                self.exp.outcomes.add("expiry_with_a_fee_to_charge")
                self.exp.allowed.add(("needs_attention", EXTERNAL))

    def _external(self, what: str) -> None:
        self.exp.outcomes.add(what)
        if ("needs_attention", EXTERNAL) not in self.exp.required:
            self.external_since_settle.add(what)
        self.exp.requires("needs_attention", EXTERNAL)

    def _cancel_explained(self) -> None:
        """A cancel made outside while the shop's snapshot said cancelled (seed 52336:
        the order halted by a flag, so the service had not cancelled it yet)."""
        if self.external_since_settle != {"external_cancel"}:
            return
        after = self.window[self._cancel_at :]
        cancelled = [snap for snap in after if snap["status"] == "cancelled"]
        if self._cancel_seen_cancelled and self.stored is not None:
            cancelled.append(self.stored)
        if not cancelled:
            return
        # §4 flags money that moved without the service "where the shop's snapshot does
        # not already explain it": a cancelled snapshot asks for that cancel (step 4),
        # so a service that learns of it while it holds one need not flag it.
        self.exp.required.discard(("needs_attention", EXTERNAL))
        self.exp.outcomes.add("cancel_outside_explained_by_the_shop")
        if any(
            self._shipped_uncaptured({line["id"]: line for line in snap["lines"]})
            for snap in cancelled
        ) and not any(o.endswith("_refused") for o in self.exp.outcomes):
            # Step 4 captures shipped goods before it lets go: a cancel that came first
            # left them uncharged, which the snapshot does not explain; a person is told
            # (any reason: psp_order_cancelled, external_change, ...).
            self.exp.requires("needs_attention")

    # -- a settle point -----------------------------------------------------------

    def settle(self) -> None:
        """Everything the service could do for the snapshots so far is done."""
        exp, st = self.exp, self.state
        if self.faulty:
            exp.allowed |= {("needs_attention", r) for r in FAULT_REASONS}
        self._cancel_explained()
        if not self.window or self.stored is None:
            self.faulty = False
            return
        if self.halted:
            self.window = [self.window[-1]]
            self.faulty = False
            self._ended_in_window = False
            self.external_since_settle = set()
            return
        last = self.window[-1]
        lines = {line["id"]: line for line in last["lines"]}
        if self.external_since_settle == {"external_capture"} and all(
            int(lines.get(line_id, {}).get("shipped_quantity", 0)) >= st.captured.get(line_id, 0)
            for line_id in st.external_units
        ):
            # §4 flags it "where the shop's snapshot does not already explain it": the
            # shop marked those units shipped in this window, so whether the service
            # learnt of the capture before or after that snapshot decides.
            exp.required.discard(("needs_attention", EXTERNAL))
        self.external_since_settle = set()
        # Quantities never go down below what the PSP already holds for them: required
        # when the last snapshot says so, allowed when one a worker may have seen did.
        for snap in self.window:
            for line in snap["lines"]:
                line_id = line["id"]
                if kind(line) not in GOODS | FEES:
                    continue
                own = st.captured.get(line_id, 0) - st.external_units.get(line_id, 0)
                ours_back = st.refunded.get(line_id, 0) - st.external_back.get(line_id, 0)
                shipped = int(line.get("shipped_quantity", 0))
                if kind(line) in FEES:
                    # Charged with the first capture, shipped or not; but refunded only
                    # once marked returned, so §4's "lowers one below what was already
                    # ... refunded" holds for its returns.
                    shipped = own
                # §4 flags a quantity lowered "below what was already captured": units
                # worth nothing may never have been captured, so for them it may be.
                held = st.captured.get(line_id, 0) - st.worthless.get(line_id, 0)
                # Units whose capture was left to timing (a range) may never have been
                # captured, nor refunded then: lowering their returned quantity may be.
                entry = exp.lines.get(line_id)
                if entry is not None and entry.captured_range is not None:
                    held = min(held, entry.captured_range[0])
                surely = held - st.external_units.get(line_id, 0)
                returned = int(line.get("returned_quantity", 0))
                # "... or refunded": a refund the service made is its own whoever
                # captured the units (one before its first read, in the portal), so
                # returns are held against its refunds of every unit surely held.
                # README "Ledger model": units whose cut was given back are held at
                # their captured price less it, "so a refund of them gives back no
                # more": returned while priced at nothing, no refund (none of 0 is sent)
                # may have been made, so none was "already ... refunded" (seed 88020).
                surely_back = ours_back - st.back_at_nothing.get(line_id, 0)
                if shipped < surely or returned < min(surely_back, held):
                    exp.outcomes.add("quantities_reversed")
                    if snap is last:
                        exp.requires("needs_attention", REVERSED)
                    else:
                        exp.allowed.add(("needs_attention", REVERSED))
                elif shipped < own or returned < min(ours_back, st.captured.get(line_id, 0)):
                    exp.outcomes.add("quantities_reversed")
                    exp.allowed.add(("needs_attention", REVERSED))
                elif (
                    kind(line) in GOODS
                    and line_id in self._lowered.get(int(snap["version"]), set())
                    and shipped < self._captured_at_most(line_id)
                ):
                    # §4: "A snapshot that lowers one below what was already captured
                    # ... is flagged": the shop lowered it, and the PSP may hold more
                    # units than it now says shipped (captured outside, or by a
                    # capture left to timing), so the flag may be raised.
                    exp.outcomes.add("quantities_reversed")
                    exp.allowed.add(("needs_attention", REVERSED))
        # Intermediate snapshots may each have been acted on: what they could trigger is
        # allowed (an increase refused, a cancel later reopened).
        fully_captured = st.any_capture and st.money + 2 >= st.authorized
        for snap in self.window[:-1]:
            # §4 step 1 updates only an authorization "not fully captured": past a fully
            # captured one, as past a refused increase, the shop is told to take a new order.
            grown = order_total(snap) > st.authorized and snap["status"] == "open"
            if grown and (self.refuses or fully_captured):
                exp.allowed.add(("needs_new_order", ""))
            if snap["status"] == "cancelled" or order_total(snap) == 0:
                exp.allowed.add(("needs_new_order", ""))
            if (
                st.closed in ("cancelled", "released")
                and snap["status"] == "open"
                and order_total(snap) > 0
                and snap["version"] > st.closed_version
            ):
                # §4: "Once the PSP has cancelled or released, a later open snapshot flags
                # needs_new_order": a worker may have seen this one before the last.
                exp.allowed.add(("needs_new_order", ""))
        for position, snap in enumerate(self.window):
            if snap["status"] == "open" and self._emptied_earlier(
                below=order_total(snap), before=position
            ):
                # §4 step 1 updates the authorization "not fully captured": a worker that
                # acted on an earlier snapshot of this window with every unit of value
                # shipped lowered the authorization to it and captured it all (step 2);
                # acting on this grown one next, it can raise it no more, so the shop is
                # asked for a new order (as after a refused increase) and the captures
                # below the basket are told to a person. Whatever the window ends at (a
                # cancel, the authorized total again) undoes neither (seed 62870).
                exp.allowed.add(("needs_new_order", ""))
                exp.allowed.add(("needs_attention", "captured_below_total"))
                exp.outcomes.add("grown_after_a_full_capture_in_passing")
        cancelling = last["status"] == "cancelled" or order_total(last) == 0
        if self._ended_in_window and any(
            snap["status"] == "cancelled"
            or order_total(snap) != st.authorized
            or basket(snap) != basket(self.window[0])
            for snap in self.window
        ):
            # The authorization ended without the service (an expiry, a cancel outside)
            # while the shop cancelled, emptied or changed the order: a worker that sent
            # its release, cancel (§4 step 4) or update (step 1) before it learnt of the
            # end has it refused, and §4: "An operation that still fails after its
            # retries flags needs_attention" (a business rejection is not retried, §5).
            # Other lines for the same total are an update too (§4 step 1: "a basket
            # with the same total but other lines is an update too"; seed 44567).
            exp.allowed |= {("needs_attention", r) for r in LET_GO_REFUSED}
            exp.outcomes.add("let_go_after_the_authorization_ended")
        if self._ended_in_window and any(
            self._shipped_uncaptured({x["id"]: x for x in snap["lines"]}) for snap in self.window
        ):
            # The same for the capture of goods shipped and not yet captured (§4 step 2,
            # or step 4's "first capture every shipped line not yet captured") that a
            # worker sent before it learnt the authorization had ended: refused (Klarna
            # CAPTURE_NOT_ALLOWED), and "An operation that still fails after its retries
            # flags needs_attention" (seed 63292).
            exp.allowed.add(("needs_attention", "CAPTURE_NOT_ALLOWED"))
            exp.outcomes.add("capture_after_the_authorization_ended")
        if st.closed == "expired" and any(
            # (A fee too: "Until a fee is captured the authorization holds it", README
            # "Fees"; see expire().)
            snap["status"] == "open" and (self._goods_to_charge(snap) or self._fee_to_charge(snap))
            for snap in self.window
        ):
            # §4 counts "an authorization that expired" as money that moved without the
            # service, flagged external_change "where the shop's snapshot does not
            # already explain it": a snapshot stored after the expiry with goods still
            # to charge (added or grown since) is not explained by it, as the
            # authorization that would charge them is gone. (The flag raised at the
            # expiry itself, expire(), covers only the basket stored then.)
            exp.allowed.add(("needs_attention", EXTERNAL))
            exp.outcomes.add("goods_after_the_expiry")
        cancelled_in_passing = False
        if (
            (not cancelling or self._shipped_uncaptured(lines))
            and st.closed is None
            and any(
                snap["status"] == "cancelled" or order_total(snap) == 0 for snap in self.window[:-1]
            )
        ):
            # A worker may have cancelled for an earlier snapshot of this window: then
            # what shipped since cannot be captured (even when the last snapshot
            # cancels too), and the shop is told.
            exp.uncertain_end = True
            exp.allowed |= {("needs_attention", r) for r in ("psp_order_cancelled", EXTERNAL)}
            exp.outcomes.add("cancel_then_open_in_one_window")
            cancelled_in_passing = True
            for line_id, line in lines.items():
                shipped = int(line.get("shipped_quantity", 0))
                if kind(line) in GOODS | FEES and shipped > st.captured.get(line_id, 0):
                    entry = exp.lines.setdefault(line_id, LineExpect())
                    entry.maybe(st.captured.get(line_id, 0), shipped)
        total = order_total(last)
        before: int | None = None  # the authorization before this window lowered it
        held_high: int | None = None
        # Step 1 (§4): the authorization follows the basket before anything is captured.
        lows = [order_total(x) for x in self.window if x["status"] == "open"]
        # (Only an open snapshot is a basket step 1 updates to: a window of cancelled
        # ones lowers nothing.)
        if self.refuses and st.closed is None and lows and min(lows) < st.authorized:
            # A worker may have lowered the authorization to an earlier, smaller basket
            # of this window, and the PSP will not raise it again.
            exp.authorized_low = min(exp.authorized_low or st.authorized, *lows)
            exp.allowed.add(("needs_new_order", ""))
            # §4 step 1 ("update the authorization with the complete new basket") for a
            # basket that passed: it stays that low in later windows too, so what ships
            # then is judged against it as well (below, _captures).
            positive = [t for t in lows if t > 0]
            if positive:
                st.authorized_floor = min(st.authorized_floor or st.authorized, *positive)
        # Every unit of value in the basket already captured, and nothing of the
        # authorization left: a higher total then comes from an order-level line (a
        # discount dropped), not from items to authorize; §4's new order is "for the new
        # items", so a person settles the gap instead (or the shop is told; either).
        nothing_new = (
            st.any_capture
            and st.money + 2 >= st.authorized
            and not any(
                int(line["quantity"]) > self._captured_at_most(line_id) and line_value(line) > 0
                for line_id, line in lines.items()
                if kind(line) in GOODS | FEES
            )
        )
        # Captures the PSP may hold: certain ones, or ones an earlier window left to
        # timing (money_high counts those too).
        maybe_held = st.any_capture or st.money_high > 0
        if maybe_held and total < st.money_high + 2:
            # Within a cent or two of what was captured the shares' rounding decides
            # whether the basket is below it: the PSP may be unable to follow. (Also
            # below what a capture left to timing may hold, money_high.)
            exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
        # README "Fees": a fee added after the first capture goes with a later capture
        # of goods, or alone once none is left to come; left to timing (a range), it may
        # have taken the rest of the authorization. §4 step 1 updates only an
        # authorization "not fully captured": the shop may then be asked for a new
        # order, and the PSP keep what it held (seed 60578).
        fee_filled = (
            st.closed is None
            and not cancelling
            and total > st.authorized
            and st.any_capture
            and st.money + 2 < st.authorized <= st.money + self._fees_left_to_timing(lines) + 2
        )
        if st.closed is None and not cancelling and self._fee_alone_earlier(full=True, below=total):
            # Every unit of goods captured outside, the fees go "alone once none is left
            # to come" (README "Fees"): a worker acting on an earlier, smaller basket of
            # this window lowered the authorization to it (§4 step 1) and the fees took
            # all that was left. Step 1 updates only an authorization "not fully
            # captured", so the basket grown since is a new payment, whether it ends
            # above, at or below the authorization the window began with (seed 201367).
            exp.allowed.add(("needs_new_order", ""))
            exp.uncertain_end = True
            exp.outcomes.add("grown_after_a_fee_alone_filled_a_lower_basket")
            self._maybe_full = True
        held_before = st.authorized
        if st.closed is None and not cancelling and total != st.authorized:
            if total > st.authorized and self.refuses and not nothing_new:
                if (
                    any(e.captured_range for e in exp.lines.values())
                    or self._emptied_earlier()
                    or self._fee_alone_earlier(full=True)
                    or total <= st.authorized_high + 2
                ):
                    # What an earlier window (or an earlier snapshot of this one)
                    # captured was left to timing: everything may be captured already
                    # (see nothing_new), or not. A fee charged alone for an earlier
                    # snapshot of this window (README "Fees": "alone once none is left
                    # to come") may have taken all that was left: §4 step 1 then asks
                    # nothing of the PSP ("not fully captured"), so no increase is
                    # refused; a worker that saw the last basket first asked, and was.
                    exp.allowed.add(("needs_new_order", ""))
                    exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                else:
                    exp.requires("needs_new_order")
                exp.outcomes.add("increase_refused")
            elif st.any_capture and (total < st.money - 2 or st.money + 2 >= st.authorized):
                # Below what was captured, or the authorization fully captured already:
                # the PSP cannot follow with an update.
                exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                if total > st.authorized:
                    # §4 step 1 updates only an authorization not fully captured: more
                    # than it is a new payment, as after a refused increase.
                    exp.allowed.add(("needs_new_order", ""))
                # §4 step 1 updates the authorization for every snapshot "not fully
                # captured": a worker may have acted on an earlier snapshot of this
                # window, before the captures or the last basket stood in the way, so
                # the PSP may hold that basket's total. And captures never exceed the
                # authorization, so a share-weighted estimate above it (order-level
                # lines changed between captures) says nothing certain: the last
                # basket may have been followed too.
                reachable = [x for x in self.window[:-1] if x["status"] == "open"]
                if st.money > st.authorized + 2:
                    reachable.append(last)
                held_surely = st.money - st.money_unsure
                # What the PSP may still hold: an earlier window's update it could not
                # follow (a basket that fell below captures made at an earlier
                # snapshot's shares) left it there, above the last basket counted.
                may_hold = max(st.authorized, exp.authorized_high or 0)
                if held_surely + 2 < min(total, may_hold) and last not in reachable:
                    # What stood in the way may never have been captured (a fee the
                    # first capture did not carry waits for the next capture of goods,
                    # README "Fees"; seed 81459), or the PSP kept room an earlier
                    # window could not take away (seed 108039): then the authorization
                    # is "not fully captured" and the basket is above the captures, so
                    # step 1 updates to it.
                    reachable.append(last)
                if reachable:
                    totals = [order_total(x) for x in reachable]
                    exp.authorized_high = max(
                        exp.authorized_high or st.authorized, st.authorized, *totals
                    )
                    exp.authorized_low = min(
                        exp.authorized_low or st.authorized,
                        st.authorized,
                        *(t for t in totals if t > 0),
                    )
            elif total > st.authorized and (
                self._emptied_earlier() or self._fee_alone_earlier(full=True)
            ):
                # A capture for an earlier snapshot of this window may have taken the
                # whole authorization first; §4 step 1 then raises nothing ("not fully
                # captured") and the shop is told to take a new order. Timing decides.
                exp.allowed.add(("needs_new_order", ""))
                exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                exp.uncertain_end = True
                exp.outcomes.add("grown_after_a_full_capture_in_one_window")
                self._maybe_full = True
            else:
                if self._emptied_earlier(below=total):
                    # §4 step 1 updates only an authorization "not fully captured": a
                    # worker acting on an earlier, smaller snapshot of this window with
                    # everything shipped lowered the authorization to it and captured
                    # all of it; the basket grown since is then a new payment.
                    exp.allowed.add(("needs_new_order", ""))
                    exp.outcomes.add("grown_after_a_full_capture_in_one_window")
                self._grown_past_covered(total, "grown_after_a_basket_the_captures_cover")
                exp.outcomes.add("increase" if total > st.authorized else "decrease")
                held_high = exp.authorized_high  # an earlier update the PSP may have refused
                exp.authorized_high = None
                before = st.authorized
                self._before_update = st.authorized
                st.authorized = total
        elif st.closed is None and not cancelling:
            # The basket ends at the authorized total, but an earlier one of this window
            # the captures cover may have been acted on: lowered to it, the authorization
            # is fully captured and §4 step 1 ("not fully captured") raises it no more
            # (seed 110329: lowered to what was captured, grown back, more shipped).
            self._grown_past_covered(total, "grown_back_after_a_basket_the_captures_cover")
        # Steps 2-4: captures, refunds, then a cancel lets go of what is left.
        captured_before = dict(st.captured)
        money_before = st.money
        if fee_filled:
            st.full_at = min(st.full_at or held_before, held_before)
        self._captures(last, lines)
        if cancelled_in_passing:
            # A worker that cancelled for the earlier snapshot left nothing to capture
            # with: §4 "Once the PSP has cancelled or released, a later open snapshot
            # flags needs_new_order". The fees "charged with the order's first capture"
            # then go uncaptured too, as the goods shipped since do.
            for line_id, units in st.captured.items():
                if units > captured_before.get(line_id, 0):
                    exp.lines.setdefault(line_id, LineExpect()).maybe(
                        captured_before.get(line_id, 0), units
                    )
        if fee_filled:
            exp.allowed.add(("needs_new_order", ""))
            self._kept_authorized = held_before
        if before is not None and total < st.money_high + 2:
            # (Within a cent or two of the captures the shares' rounding decides whether
            # the basket is below them, as for CANNOT_FOLLOW above.)
            # Units shipped in this window were captured, and the last basket is below
            # them: a worker that captured for an earlier snapshot first could not lower
            # the authorization after (§4 step 1 follows the basket only "not fully
            # captured"; the PSP refuses an amount below its captures), so the PSP may
            # still hold what an earlier snapshot of the window, or the last settle, set.
            # A capture for an earlier snapshot (st.money_high) may be what the basket
            # fell below; and an update an earlier window sent may have been refused
            # alike, so the PSP may still hold what it held then (held_high).
            exp.authorized_high = max(before, held_high or 0, *lows)
        if st.closed is None and any(
            # (The captures before this window's too: a fee charged alone in it, README
            # "Fees", comes after the update that worker could not make.)
            order_total(snap) <= money + 2 < total
            for snap in self.window[:-1]
            if snap["status"] == "open"
            for money in (money_before, st.money)
        ):
            # A worker may have lowered the authorization to an earlier basket of this
            # window that the captures cover: fully captured, it cannot be raised to the
            # last one (§4 step 1, "not fully captured"), so the shop is asked for a new
            # payment, as after a refused increase.
            exp.allowed.add(("needs_new_order", ""))
            exp.authorized_low = min(
                exp.authorized_low or st.authorized,
                *(order_total(x) for x in self.window[:-1] if x["status"] == "open"),
            )
            covered = [
                order_total(snap)
                for snap in self.window[:-1]
                if snap["status"] == "open"
                and any(order_total(snap) <= money + 2 for money in (money_before, st.money))
            ]
            st.full_at = min(st.full_at or min(covered), *covered)
        self._refunds(lines)
        # Units whose capture depends on timing: what was captured is not known exactly.
        uncertain = any(e.captured_range for e in exp.lines.values())
        # nothing_new after a cancel: the authorization was fully captured, so nothing was
        # left to release (§4 step 4), and the PSP never "cancelled or released"; a higher
        # basket over units all captured is a gap for a person (CANNOT_FOLLOW, below), not
        # new items for a new order (1146's reasoning).
        if st.closed in ("cancelled", "released") and not cancelling:
            # §4's new order is "for the new items": with every unit of value already
            # captured, a higher total (a discount dropped) is a gap for a person.
            new_items = any(
                int(line["quantity"]) > self._captured_at_most(line_id) and line_value(line) > 0
                for line_id, line in lines.items()
                if kind(line) in GOODS | FEES
            )
            if (
                # More than the PSP may hold already: a capture made for an earlier
                # snapshot of its window may have taken more than the last one's shares.
                total > st.money_high + 2
                and last["version"] > st.closed_version
                and not uncertain
                and not nothing_new
                and new_items
            ):
                # Reopened after the PSP let go, wanting more than was captured: the
                # shop must take a new payment.
                exp.requires("needs_new_order")
                exp.outcomes.add("reopened_after_cancel")
            elif total > 0 and last["version"] > st.closed_version:
                exp.allowed.add(("needs_new_order", ""))
        elif st.closed in ("cancelled", "released") and any(
            x["status"] == "open" and order_total(x) > 0 and x["version"] > st.closed_version
            for x in self.window[:-1]
        ):
            # §4: "Once the PSP has cancelled or released, a later open snapshot flags
            # needs_new_order". The window's last snapshot cancels (or empties) the
            # order again, but a worker may have acted on an open one before it.
            exp.allowed.add(("needs_new_order", ""))
            exp.outcomes.add("reopened_after_cancel_in_passing")
        elif cancelling and st.closed is None and self._cancel_held:
            # §4 step 4: "first capture every shipped line not yet captured (those goods
            # left the warehouse; to charge nothing for them the shop marks them
            # returned), then cancel ... or release". Goods shipped beyond the
            # authorization cannot all be captured, so the cancel may wait for a person
            # (who is told) rather than let go of goods that left: the PSP may still
            # hold the authorization, or have let go of it (what fitted captured).
            self._maybe_cancelled = True
            exp.uncertain_end = True
            exp.outcomes.add("cancel_held_by_goods_beyond_authorization")
        elif cancelling and st.closed is None:
            exp.outcomes.add("cancel_after_shipment" if st.any_capture else "cancel_before_capture")
            st.closed = "released" if st.any_capture else "cancelled"
            st.closed_version = last["version"]
            if not st.any_capture and st.maybe_captured:
                # Captured or not depended on timing (see _captures): the PSP then
                # released what was left, or cancelled.
                exp.uncertain_end = True
            elif st.any_capture and st.money - st.money_unsure <= 0 and not st.external_units:
                # What was counted captured is all fees left to timing: one that waits
                # for goods of value (README "Fees", "with the order's first capture of
                # goods"; units worth nothing send none) may never have gone, and then
                # §4 step 4 cancels ("cancel (nothing captured) or release"; seed 87910).
                exp.uncertain_end = True
                exp.outcomes.add("cancel_after_fees_left_to_timing")
            elif not st.any_capture and any(
                units > 0 and line_id in lines and line_value(lines[line_id]) > 0
                for line_id, units in st.worthless.items()
            ):
                # Units shipped while worth nothing (no capture of 0 is sent) and worth
                # something now: §4 step 4 "first capture every shipped line not yet
                # captured (those goods left the warehouse ...), then cancel (nothing
                # captured) or release the remaining authorization". Unless they rode
                # with an earlier capture at 0, they are captured now and the PSP
                # releases; which, timing decides.
                exp.uncertain_end = True
                exp.outcomes.add("cancel_after_units_priced_since_shipping")
        if st.any_capture and any(
            snap["status"] == "open"
            and order_total(snap) > st.money + 2
            and not any(
                int(line["quantity"]) > self._captured_at_most(str(line["id"]))
                and line_value(line) > 0
                for line in snap["lines"]
                if kind(line) in GOODS | FEES
            )
            for snap in self.window
        ):
            # Every unit captured, for less than the basket says (a price raised after
            # its unit was captured, or shares a capture made outside never carried):
            # no capture is left to carry the difference. The last basket, or one that
            # passed in this window, which a worker may have acted on before the next
            # added goods (seed 162145).
            exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
        # What the PSP may hold now, this window's captures included (money_high has
        # grown since maybe_held, which the baskets in passing below are judged by).
        if last["status"] == "open" and st.money_high > 0 and total < st.money_high:
            # An open order lowered below what was captured (after the PSP let go, or
            # to nothing): captures only add, and §4 refunds only returned units, so
            # the PSP cannot follow; a person is told, as for an open authorization.
            # What the PSP may hold counts (money_high), not only what it surely does:
            # units priced to nothing in the window they shipped in were captured at
            # their earlier price by a worker that acted on that snapshot (§4 step 2,
            # "newly shipped quantities → a capture with exactly those lines"), and a
            # basket a cent below that is below it (allowed, not required: with
            # order-level shares the estimate is within a cent or two).
            exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
        if maybe_held and any(
            # (Within a cent or two the shares' rounding decides, as for the last basket.)
            x["status"] == "open" and order_total(x) < st.money_high + 2
            for x in self.window[:-1]
        ):
            # The same for a snapshot that passed in this window: a worker that acted on
            # it found the basket below the captures, which no update can follow (§4
            # step 1; the PSP refuses an amount below what it captured), and told a
            # person, though a later snapshot raised the basket again.
            exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
            exp.outcomes.add("below_captures_in_passing")
        self._maybe_cancelled |= cancelled_in_passing
        if last["status"] == "cancelled" and self._held_above_worth(last):
            # A cancelled order holding units captured for more than they are worth now
            # (a price cut after their capture): §4 step 4 captures only shipped lines
            # not yet captured, so nothing is left to give the cut back, and step 3
            # refunds only returned units "at the prices and tax they were captured at";
            # a person may be told the figures (the build's reason for a basket the
            # captures cannot follow) while the release goes on.
            exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
            exp.outcomes.add("cancelled_above_what_its_goods_are_worth")
        self._cancel_held = False
        self._ended_in_window = False
        self.window = [last]
        self.faulty = False
        self.expired_in_window = False
        self._before_update = 0
        st.maybe_full = st.maybe_full or self._maybe_full
        self._maybe_full = False

    def _fees_due_alone(
        self,
        last: dict[str, Any],
        lines: dict[str, dict[str, Any]],
        newly: dict[str, int],
        fees: list[str],
    ) -> list[str]:
        """Fees the service charges alone: §4 "shipping_fee and surcharge lines are
        charged with the order's first capture"; that capture was made outside the
        service (its maker chose what it took, fees not among it) and no capture of
        goods is left to carry them (every unit of goods of some value captured, or the
        order cancelled with nothing shipped left to capture). README "Fees": the
        service then charges them alone. Only when the PSP named the outside capture's
        lines (an unnamed one may not be tied to units, so the service may not know a
        first capture was made: then either)."""
        st = self.state
        if newly or st.own_capture or st.closed is not None:
            return []
        outside_goods = any(
            units > 0 and line_id in lines and kind(lines[line_id]) in GOODS
            for line_id, units in st.external_units.items()
        )
        if not outside_goods:
            return []
        goods = [
            (line_id, line)
            for line_id, line in lines.items()
            if kind(line) in GOODS and line_value(line) > 0
        ]
        done = last["status"] == "cancelled" or all(
            st.captured.get(line_id, 0) >= int(line["quantity"]) for line_id, line in goods
        )
        if not done:
            return []
        due = [
            line_id
            for line_id, line in lines.items()
            if kind(line) in FEES
            and line_id not in fees
            and st.captured.get(line_id, 0) < int(line["quantity"])
        ]
        covered = any(
            # A worker may have lowered the authorization to an earlier basket of this
            # window that the captures cover: fully captured, it is not raised for the
            # fee (§4 step 1, "not fully captured"); the shop is asked for a new order.
            x["status"] == "open" and order_total(x) <= st.money + 2
            for x in self.window[:-1]
        )
        # A fee charged alone for an earlier snapshot of this window (since replaced)
        # may have taken what the authorization had left for these (seed 53301).
        covered = covered or bool(set(self._fee_alone_earlier()) - set(due))
        if st.unnamed_outside or covered:
            for line_id in due:
                entry = self.exp.lines.setdefault(line_id, LineExpect())
                before = st.captured.get(line_id, 0)
                entry.maybe(before, int(lines[line_id]["quantity"]))
                entry.prices |= self._prices(line_id)
            return []
        return due

    def _fee_alone_earlier(
        self, *, full: bool = False, below: int | None = None
    ) -> dict[str, tuple[int, int]]:
        """Fees a worker acting on an earlier snapshot of this window charged alone
        (README "Fees", seed 52774): then every unit of goods of value was captured
        outside, none by the service, and the fees fit in what is left of the
        authorization. Per fee line: its units and their worth, from the first such
        snapshot. `full`: only when they took all that was left (§4 step 1 then raises
        the authorization no more: "not fully captured"). `below`: only snapshots whose
        basket is below it."""
        st = self.state
        if st.own_capture or st.closed is not None:
            return {}
        found: dict[str, tuple[int, int]] = {}
        for snap in self.window[:-1]:
            if snap["status"] != "open":
                continue
            if below is not None and order_total(snap) + 2 >= below:
                continue
            lines = {line["id"]: line for line in snap["lines"]}
            outside_goods = any(
                units > 0 and line_id in lines and kind(lines[line_id]) in GOODS
                for line_id, units in st.external_units.items()
            )
            goods = [x for x in snap["lines"] if kind(x) in GOODS and line_value(x) > 0]
            if not outside_goods or not all(
                st.captured.get(x["id"], 0) >= int(x["quantity"]) for x in goods
            ):
                continue
            due = {
                str(x["id"]): (int(x["quantity"]), line_value(x))
                for x in snap["lines"]
                if kind(x) in FEES
                and st.captured.get(x["id"], 0) < int(x["quantity"])
                and x["id"] not in found
            }
            # Going alone they are the last capture of value, so they carry what is left
            # of the order-level lines (§4: shares "rounded cumulatively so that ... the
            # shares add up to the discount line's total once everything has shipped");
            # the captures made outside took the goods at their price, no share (seed
            # 57197: a surcharge of 370 with a gift card of −299 is a capture of 71).
            shares = order_total(snap) - sum(
                line_value(x) for x in snap["lines"] if kind(x) in GOODS | FEES
            )
            worth = st.money + sum(v for _, v in due.values()) + shares
            # Charged for that snapshot, before this window's update: against the
            # authorization as it stood then (a basket lowered since, e.g. the fee
            # removed, did not take back what was already captured; §4 step 1, the PSP
            # refuses an amount below what it captured; seed 55354).
            authorized = {max(st.authorized, self._before_update)}
            if order_total(snap) <= min(authorized) or not self.refuses:
                # Or after the update that worker made first for that snapshot (§4 step
                # 1, "total or lines changed and not fully captured → update the
                # authorization"; a raise only where the PSP allows one).
                authorized.add(order_total(snap))
            if due and any(
                worth <= held + 2 and (not full or worth + 2 >= held) for held in authorized
            ):
                found.update(due)
        return found

    def _fees_left_to_timing(self, lines: dict[str, dict[str, Any]]) -> int:
        """The most fees whose capture an earlier window left to timing may have taken:
        their units above what is surely captured, at their full price."""
        total = 0
        for line_id, line in lines.items():
            entry = self.exp.lines.get(line_id)
            if kind(line) not in FEES or entry is None or entry.captured_range is None:
                continue
            units = entry.captured_range[1] - self.state.captured.get(line_id, 0)
            total += max(units, 0) * max(int(line["unit_price"]), 0)
        goods_left = any(
            kind(line) in GOODS
            and line_value(line) > 0
            and self.state.captured.get(line_id, 0) < int(line["quantity"])
            for line_id, line in lines.items()
        )
        if total and not goods_left:
            # With no goods of value left to come, such a fee went alone, the last
            # capture of value, carrying the rest of the order-level lines (README
            # "Fees"; §4: "once everything has shipped the captures add up to the
            # order's total"): all that was left of the authorization it was charged
            # against, set to that basket by §4 step 1 (seed 62700).
            total = max(total, self.state.authorized - int(self.state.money))
        return total

    def _unshipped_goods(self) -> bool:
        """Goods of value in the stored snapshot neither shipped nor (maybe) captured:
        no capture of the service's takes them, so an expiry leaves them to charge."""
        return self.stored is not None and any(
            int(line["quantity"])
            > max(int(line.get("shipped_quantity", 0)), self._captured_at_most(line["id"]))
            and line_value(line) > 0
            for line in self.stored["lines"]
            if kind(line) in GOODS
        )

    def _unshipped_of_value(self, snap: dict[str, Any]) -> bool:
        """Goods of value in `snap` with units the shop has not marked shipped."""
        return any(
            int(line["quantity"]) > int(line.get("shipped_quantity", 0)) and line_value(line) > 0
            for line in snap["lines"]
            if kind(line) in GOODS
        )

    def _shipped_uncaptured(self, lines: dict[str, dict[str, Any]]) -> bool:
        return any(
            kind(line) in GOODS | FEES
            and int(line.get("shipped_quantity", 0)) > self.state.captured.get(line_id, 0)
            for line_id, line in lines.items()
        )

    def _emptied_earlier(self, below: int | None = None, before: int | None = None) -> bool:
        """A snapshot of this window before the last (before position `before`, when
        given) had every unit of value shipped, some not captured yet, for an
        authorization a worker could set to its total: a worker may have captured all of
        it, leaving the authorization fully captured before the basket grew."""
        end = len(self.window) - 1 if before is None else before
        return any(
            self._captured_whole_by(snap)
            # (When asked, only a snapshot below the given basket counts.)
            and (below is None or order_total(snap) + 2 < below)
            for snap in self.window[:end]
        )

    def _captured_whole_by(self, snap: dict[str, Any]) -> bool:
        """An open snapshot with every unit of value shipped, some not captured yet, for
        an authorization a worker could set to its total: a worker acting on it may have
        captured all of it, leaving the authorization fully captured."""
        goods = [x for x in snap["lines"] if kind(x) in GOODS and line_value(x) > 0]
        return (
            snap["status"] == "open"
            and bool(goods)
            and all(int(x.get("shipped_quantity", 0)) >= int(x["quantity"]) for x in goods)
            and any(
                int(x.get("shipped_quantity", 0)) > self.state.captured.get(x["id"], 0)
                for x in goods
            )
            # A worker acting on that snapshot first sets the authorization to its
            # total (a decrease always, an increase where the PSP allows one), then
            # captures all of it: fully captured however far it was lowered.
            and (order_total(snap) <= self.state.authorized + 2 or not self.refuses)
        )

    def _filled_snapshot(self) -> dict[str, Any] | None:
        """The first snapshot of this window `_emptied_earlier` finds (every unit of value
        shipped, a worker may have captured all of it), or None."""
        for position in range(1, len(self.window)):
            if self._emptied_earlier(before=position) and not self._emptied_earlier(
                before=position - 1
            ):
                return self.window[position - 1]
        return None

    def _covered_earlier(self, below: int) -> bool:
        """A snapshot of this window before the last, open, whose total the captures
        before this window already cover, below the given basket."""
        return self.state.any_capture and any(
            snap["status"] == "open"
            and 0 < order_total(snap) <= self.state.money + 2
            and order_total(snap) + 2 < below
            for snap in self.window[:-1]
        )

    def _grown_past_covered(self, total: int, outcome: str) -> None:
        """An earlier snapshot of this window the captures already cover, below the last
        basket: once the authorization was lowered to it, it was fully captured, so §4
        step 1 ("not fully captured") raises it no more; the units shipped since wait for
        the new order the shop is asked for (or were captured, had no worker seen it)."""
        if not self._covered_earlier(below=total):
            return
        exp = self.exp
        exp.allowed.add(("needs_new_order", ""))
        exp.allowed.add(("needs_attention", "capture_exceeds_authorization"))
        exp.uncertain_end = True
        exp.outcomes.add(outcome)
        self._maybe_full = True

    def _captured_at_least(self, line_id: str) -> int:
        """Units of the line the PSP surely holds: fewer than counted when a window
        left their capture to timing (a range)."""
        entry = self.exp.lines.get(line_id)
        counted = self.state.captured.get(line_id, 0)
        return min(counted, entry.captured_range[0]) if entry and entry.captured_range else counted

    def _captured_at_most(self, line_id: str) -> int:
        """Units of the line the PSP may hold: more than counted when a window left
        their capture to timing (a range)."""
        entry = self.exp.lines.get(line_id)
        high = entry.captured_range[1] if entry and entry.captured_range else 0
        return max(self.state.captured.get(line_id, 0), high)

    def _ratio(self, snap: dict[str, Any]) -> Fraction:
        """What a unit's value becomes once order-level lines (discounts, sales tax)
        are shared in by value."""
        own = sum(line_value(line) for line in snap["lines"] if kind(line) in GOODS | FEES)
        return Fraction(order_total(snap), own) if own else Fraction(1)

    def _held_above_worth(self, snap: dict[str, Any]) -> bool:
        """Some unit the PSP may hold was captured at a unit price above its price now."""
        for line in snap["lines"]:
            if kind(line) not in GOODS | FEES or int(line["quantity"]) <= 0:
                continue
            entry = self.exp.lines.get(line["id"])
            back = self.state.refunded.get(line["id"], 0)
            held = self.state.captured.get(line["id"], 0) - back
            if entry is not None and entry.captured_range is not None:
                held = max(held, entry.captured_range[1] - back)
            if held <= 0:
                continue
            now = Fraction(line_value(line), int(line["quantity"]))
            prices = {p for p, _ in (entry.prices if entry else set())}
            prices |= {p for p, _ in self.state.outside_prices.get(line["id"], set())}
            if any(p > now for p in prices):
                return True
            if (
                back > 0
                and self.state.captured.get(line["id"], 0) >= 2
                and any(p < now for p in prices)
                and any(p >= now for p in prices)
            ):
                # README "Ledger model": "a line's own units still to capture carry its
                # price edit first", so that the line's captures add up to what it is
                # worth: a unit captured after a raise carries what its line's earlier
                # units were captured below the price now, and is held above it. With
                # all of them held the line holds no more than its worth; with one
                # given back (returned, or refunded outside) the one held may be that
                # dearer unit (seed 87323).
                return True
        return False

    def _uncaptured_goods(self) -> bool:
        if self.stored is None:
            return False
        return self._goods_to_charge(self.stored)

    def _fee_to_charge(self, snap: dict[str, Any]) -> bool:
        """A fee line of value with units no capture surely charged (README "Fees":
        "Until a fee is captured the authorization holds it")."""
        return any(
            int(line["quantity"]) > self._captured_at_least(line["id"]) and line_value(line) > 0
            for line in snap["lines"]
            if kind(line) in FEES
        )

    def _goods_to_charge(self, snap: dict[str, Any], *, at_most: bool = False) -> bool:
        """`at_most`: counting units a capture left to timing may hold as captured."""

        def held(line_id: str) -> int:
            if at_most:
                return self._captured_at_most(line_id)
            return self.state.captured.get(line_id, 0)

        return any(
            int(line["quantity"]) > held(line["id"]) and line_value(line) > 0
            for line in snap["lines"]
            if kind(line) in GOODS
        )

    def _captures(self, last: dict[str, Any], lines: dict[str, dict[str, Any]]) -> None:
        exp, st = self.exp, self.state
        newly = {
            line_id: int(line.get("shipped_quantity", 0)) - st.captured.get(line_id, 0)
            for line_id, line in lines.items()
            if kind(line) in GOODS
        }
        newly = {k: v for k, v in newly.items() if v > 0}
        if st.closed in ("cancelled", "released", "expired"):
            shipped_fee = any(
                kind(line) in FEES
                and int(line.get("shipped_quantity", 0)) > st.captured.get(line_id, 0)
                for line_id, line in lines.items()
            )
            if not newly and not shipped_fee:
                if st.closed == "expired" and self.expired_in_window:
                    self._fees_alone_overtaken()
                if any(
                    units > 0 and line_id in lines and line_value(lines[line_id]) > 0
                    for line_id, units in st.worthless.items()
                ):
                    # Shipped while worth nothing (no capture of 0 is sent), priced
                    # since: §4 step 4 "first capture every shipped line not yet
                    # captured (those goods left the warehouse ...)", but the
                    # authorization is gone and nothing can charge them: a person may
                    # be told, as for goods shipped after a close (seed 55125).
                    exp.allowed.add(("needs_attention", "psp_order_cancelled"))
                    exp.outcomes.add("priced_after_close")
                if (
                    not st.own_capture
                    and any(units > 0 and i in lines for i, units in st.worthless.items())
                    and any(
                        kind(line) in FEES
                        and line_value(line) > 0
                        and st.captured.get(line_id, 0) < int(line["quantity"])
                        for line_id, line in lines.items()
                    )
                ):
                    # The same for a fee due with them: "charged with the order's first
                    # capture" (§4), it may make that capture of units worth nothing
                    # worth sending (the fee_after_free_units reading below, seed
                    # 84920), which the gone authorization cannot take (seed 114676).
                    exp.allowed.add(("needs_attention", "psp_order_cancelled"))
                    exp.outcomes.add("fee_with_free_units_after_close")
                return
            left_to_timing = [
                line_id
                for line_id in newly
                if line_id in exp.lines and exp.lines[line_id].captured_range is not None
            ]
            if st.closed == "expired" and self.expired_in_window:
                # §4 counts "an authorization that expired"; it does not order the
                # expiry against a capture already sent: the units shipped in this
                # window may have been captured before it lapsed, or not.
                # A fee goes with the first capture, so with that one too; one a
                # capture before did not carry (e.g. it took only another fee the shop
                # marked shipped) may ride with a later one, as without the expiry.
                exp.outcomes.add("expired_with_capture_in_flight")
                first_fees = {
                    line_id: int(line["quantity"]) - st.captured.get(line_id, 0)
                    for line_id, line in lines.items()
                    if kind(line) in FEES
                }
                if not st.own_capture:
                    # The capture in flight may have been made for an earlier snapshot
                    # of the window, with a fee the last one no longer has: "charged
                    # with the order's first capture", it went with it.
                    for snap in self.window[:-1]:
                        for x in snap["lines"]:
                            if kind(x) in FEES and x["id"] not in lines:
                                first_fees.setdefault(
                                    str(x["id"]), int(x["quantity"]) - st.captured.get(x["id"], 0)
                                )
                for line_id, units in (newly | first_fees).items():
                    entry = exp.lines.setdefault(line_id, LineExpect())
                    before = st.captured.get(line_id, 0)
                    entry.captured_range = (before, before + max(units, 0))
                    # §4 step 2: "a capture with exactly those lines", of the snapshot
                    # it was sent for: this window's prices, which a later window
                    # (judging the units still open) must not replace.
                    entry.prices |= self._prices(line_id)
                    entry.totals |= self._totals(line_id)
                # Made before the expiry, that capture took them at the prices and
                # shares of the snapshot it was sent for: a basket lowered below it is
                # one the captures cannot follow (a person is told), as for any capture.
                st.money_high += sum(
                    max((p for p, _ in self._prices(i)), default=0) * max(n, 0)
                    for i, n in (newly | first_fees).items()
                ) * max(self._ratio(snap) for snap in self.window)
                if order_total(last) < st.money_high + 2:
                    exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
            if st.closed != "expired" and order_total(last) <= st.money_high + 2:
                # Goods shipped after our cancel or release that the money the PSP may
                # hold already pays for (the basket is worth no more): §4 step 2 makes
                # their capture 0 (the shares, or a price cut given back, take it whole),
                # which README "Ledger model" settles against the money held, sending
                # nothing the gone authorization could refuse; §4 asks a new payment
                # only of a reopened order "worth more than was captured". Settled or
                # left uncounted: either, as for units worth nothing (seed 111266). (The
                # flags allowed below stay allowed: a person may still be told.)
                for line_id, units in newly.items():
                    before = st.captured.get(line_id, 0)
                    entry = exp.lines.setdefault(line_id, LineExpect())
                    entry.maybe(before, before + units)
                    entry.prices |= self._prices(line_id)
                    entry.totals |= self._totals(line_id)
                    st.captured[line_id] = before + units
                    st.worthless[line_id] = st.worthless.get(line_id, 0) + units
                exp.outcomes.add("shipped_after_close_paid_by_the_money_held")
            for line_id in left_to_timing:
                # An earlier window left their capture to timing: the close the oracle
                # counts may never have happened (a capture flagged
                # capture_exceeds_authorization halts the order before its cancel,
                # README "needs_attention halts"), and the shop reopened. Captured now,
                # they carry this window's prices, and a price edit since is carried by
                # them so that the line's captures add up to its value (§4 "once
                # everything has shipped the captures add up to the order's total").
                exp.lines[line_id].prices |= self._prices(line_id)
                exp.lines[line_id].totals |= self._totals(line_id)
            # Goods shipped against an authorization that is gone: a person must act.
            exp.allowed.add(("needs_attention", "psp_order_cancelled"))
            exp.allowed.add(("needs_new_order", ""))
            exp.allowed.add(("needs_attention", f"order_{st.closed}"))
            exp.allowed.add(("needs_attention", EXTERNAL))
            exp.outcomes.add("shipped_after_close")
            return
        fees = [
            line_id
            for line_id, line in lines.items()
            if kind(line) in FEES
            and st.captured.get(line_id, 0) < int(line["quantity"])
            and (
                ((newly or st.free_shipped) and not st.own_capture)
                or int(line.get("shipped_quantity", 0)) > 0
            )
        ]
        for snap in self.window[:-1] if newly else []:
            for line in snap["lines"]:
                if kind(line) in FEES and line["id"] not in lines and not st.own_capture:
                    # A fee removed while the goods waited: captured if a worker acted
                    # on the snapshot that still had it; then the captures exceed the
                    # basket, which a person must settle.
                    entry = exp.lines.setdefault(line["id"], LineExpect())
                    entry.maybe(0, int(line["quantity"]))
                    entry.prices |= self._prices(line["id"])
                    exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                    # And it took its share of the authorization: a fee added in its
                    # place, charged when marked shipped, may then exceed what is left.
                    exp.allowed.add(("needs_attention", "capture_exceeds_authorization"))
                    exp.uncertain_end = True
                    exp.outcomes.add("fee_removed_while_shipping")
        for snap in self.window[:-1] if newly and st.own_capture else []:
            goods_then = any(
                kind(x) in GOODS and int(x.get("shipped_quantity", 0)) > st.captured.get(x["id"], 0)
                for x in snap["lines"]
            )
            for line in snap["lines"] if goods_then else []:
                line_id = str(line["id"])
                before = st.captured.get(line_id, 0)
                if kind(line) not in FEES or line_id in lines or before >= int(line["quantity"]):
                    continue
                # §4: fee lines "are charged with the order's first capture (or when
                # the shop marks them shipped, if that comes first)"; for one added
                # after the first capture it does not say which (see riding below;
                # README "Fees": with the service's next capture of goods). A worker
                # that captured the goods for this snapshot may have charged it with
                # them; removed since, the captures exceed the basket unless a later
                # capture gives it back, else a person is told (seed 56791).
                entry = exp.lines.setdefault(line_id, LineExpect())
                if entry.captured_range is None or entry.captured_range[1] < int(line["quantity"]):
                    entry.maybe(before, int(line["quantity"]))
                    st.money_high += line_value(line) * self._ratio(snap)
                entry.prices |= self._prices(line_id)
                exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                exp.outcomes.add("fee_added_after_first_capture_removed_while_shipping")
        alone = self._fees_due_alone(last, lines, newly, fees)
        fees += alone
        for line_id, (units, fee_worth) in self._fee_alone_earlier().items():
            if line_id in fees:
                continue
            # README "Fees": a fee whose first capture was made outside goes alone once
            # no capture of goods is left to carry it; a worker may have acted on an
            # earlier snapshot of this window where that held (the goods grew or the
            # fee was removed since), or not: timing decides (seed 52774).
            entry = exp.lines.setdefault(line_id, LineExpect())
            before = st.captured.get(line_id, 0)
            entry.maybe(before, max(before, units))
            entry.prices |= self._prices(line_id)
            st.money_high += fee_worth
            exp.outcomes.add("fee_alone_in_passing")
            if line_id not in lines:
                # Removed since: charged, the captures exceed the basket, which no
                # update can follow (§4 step 1); a person settles it (README "Fees").
                exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                exp.uncertain_end = True
        riding: dict[str, int] = {}  # fees that may go with this capture
        for line_id, line in lines.items():
            # Added after the first capture: the contract does not say when it is
            # charged (with a later capture, or when marked shipped): either.
            if (
                kind(line) in FEES
                and st.own_capture
                and line_id not in fees
                and st.captured.get(line_id, 0) < int(line["quantity"])
            ):
                riding[line_id] = int(line["quantity"]) - st.captured.get(line_id, 0)
                entry = exp.lines.setdefault(line_id, LineExpect())
                entry.maybe(st.captured.get(line_id, 0), int(line["quantity"]))
                entry.prices |= self._prices(line_id)
                exp.outcomes.add("fee_added_after_first_capture")
        for line_id, units in st.worthless.items():
            if units > 0 and line_id in lines and line_value(lines[line_id]) > 0:
                # Shipped while worth nothing (no capture of 0 is sent), and worth
                # something now: shipped and not captured, they are captured at this
                # window's prices (§4 step 2, and "once everything has shipped the
                # captures add up to the order's total").
                entry = exp.lines.setdefault(line_id, LineExpect())
                entry.prices |= self._prices(line_id)
                entry.totals |= self._totals(line_id)
                # Then the PSP may hold their worth: a basket lowered below it is one
                # the captures cannot follow (README "Ledger model": `order_amount`
                # "cannot go below `captured_amount`"; seed 97932).
                line = lines[line_id]
                worth = Fraction(line_value(line) * units, int(line["quantity"])) * self._ratio(
                    last
                )
                more = worth - st.worthless_high.get(line_id, Fraction(0))
                if more > 0:
                    st.money_high += more
                    st.worthless_high[line_id] = worth
        if not newly and not fees:
            return
        if self._maybe_cancelled:
            # Shipped after a cancel that timing may have sent in an earlier window (see
            # settle): captured if the PSP never let go, else a person or the shop is
            # told, as for goods shipped after a close.
            for line_id in [*newly, *fees]:
                entry = exp.lines.setdefault(line_id, LineExpect())
                before = st.captured.get(line_id, 0)
                want = int(lines[line_id]["quantity"]) if line_id in fees else 0
                # A range an earlier window left open stays open: units it may never
                # have captured before the cancel are not captured after it either
                # (§4: "Once the PSP has cancelled ... a later open snapshot flags
                # needs_new_order").
                entry.maybe(before, max(before + newly.get(line_id, 0), want))
                entry.prices |= self._prices(line_id)
                entry.totals |= self._totals(line_id)
            exp.allowed |= {("needs_attention", r) for r in ("psp_order_cancelled", EXTERNAL)}
            exp.allowed.add(("needs_new_order", ""))
            exp.uncertain_end = True
            exp.outcomes.add("shipped_after_a_cancel_in_passing")
        # The snapshots of this window a worker may have captured for (goods shipped
        # beyond what the PSP holds): the first capture may have gone out for one of them.
        # A fee is charged "when the shop marks them shipped, if that comes first" (§4):
        # a snapshot that marks one shipped is one a capture may have followed too.
        earlier = [
            snap
            for snap in self.window[:-1]
            if any(
                kind(line) in GOODS | FEES
                and int(line.get("shipped_quantity", 0)) > st.captured.get(line["id"], 0)
                for line in snap["lines"]
            )
        ]
        later_maybe: set[str] = set()
        # Goods of some value: units worth nothing send no capture a fee could go with
        # (README "Fees": "with the order's first capture of goods"; seed 84920).
        goods_shipped = any(int(lines[i]["unit_price"]) > 0 for i in newly)
        for line_id in fees:
            exp.outcomes.add("fee_with_first_capture")
            newly[line_id] = int(lines[line_id]["quantity"]) - st.captured.get(line_id, 0)
            quantity = int(lines[line_id]["quantity"])
            if int(lines[line_id].get("shipped_quantity", 0)) == 0 and any(
                sum(int(x["quantity"]) for x in snap["lines"] if x["id"] == line_id) < quantity
                for snap in earlier
            ):
                # Added (or raised) after a snapshot the first capture may have followed:
                # then it is a fee added after the first capture, which the contract
                # leaves to a later capture or to its shipment (see below): either.
                later_maybe.add(line_id)
                exp.outcomes.add("fee_added_while_shipping")
            elif line_id in alone:
                exp.outcomes.add("fee_alone_after_a_first_capture_outside")
            elif not goods_shipped and int(lines[line_id].get("shipped_quantity", 0)) == 0:
                # Only units worth nothing shipped so far (no capture of 0 is sent): the
                # fee makes the first capture worth sending now, or waits for goods of
                # some value; either is "with the order's first capture".
                later_maybe.add(line_id)
                exp.outcomes.add("fee_after_free_units")
        if any(self._ratio(snap) != self._ratio(last) for snap in earlier):
            # A capture made for an earlier snapshot took the order-level lines' shares
            # (discounts, sales tax) of that basket; when later ones changed and nothing
            # is left to carry the difference, the captures cannot add up to the total
            # ("captures ... in proportion to value" of the basket they were made for).
            exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
            # And what it took of the authorization is that basket's, so the
            # authorization may be fully captured where this basket says it is not: a
            # later increase may then need a new order (§4 step 1, "not fully captured").
            exp.allowed.add(("needs_new_order", ""))
            exp.outcomes.add("shares_changed_while_shipping")
            st.authorized_high = max(st.authorized_high, self._before_update)
        value = sum(int(lines[i]["unit_price"]) * n for i, n in newly.items()) * self._ratio(last)
        limit: Fraction | int = st.authorized
        cancelling = last["status"] == "cancelled" or order_total(last) == 0
        # §4 step 1 updates only an authorization not fully captured: once it is, a
        # basket grown past it gets no raise either (the shop is told to take a new
        # order).
        fully_captured = (
            st.any_capture
            and st.money + 2 >= st.authorized
            and order_total(last) > st.authorized + 2
        )
        no_raise = self.refuses or cancelling or fully_captured or self._maybe_full
        # §4 step 1 sets the authorization to the basket, never above it, and a capture
        # goes only up to what is left of it (CONTRACT §8). Money refunded outside
        # (counted, "never made a second time") left captures the basket does not
        # explain: the goods may then need more than is left, and wait for a person
        # rather than take a cut the refund already gave back (seed 85748).
        at_basket = (
            not no_raise
            and st.authorized + 2 >= order_total(last)
            and (any(st.external_back.values()) or st.charged_back)
        )
        if no_raise:
            # No raise will come; and a worker may have lowered the authorization to an
            # earlier, smaller basket of this window, or of an earlier one (the floor).
            lows = [order_total(s) for s in self.window if s["status"] == "open"]
            if self.refuses and st.authorized_floor is not None:
                lows.append(st.authorized_floor)
            limit = min([st.authorized, *[t for t in lows if t > 0]])
        if st.full_at is not None:
            # The PSP may hold an authorization fully captured at full_at: then step 1
            # raised nothing ("not fully captured"), and what shipped since waits for the
            # new order the shop is asked for (seeds 62118, 62218).
            no_raise = True
            limit = min(limit, st.full_at)
        # Such a fee, riding with this capture, may take what the goods would fit in.
        riding_value = sum(
            int(lines[i]["unit_price"]) * n for i, n in riding.items()
        ) * self._ratio(last)
        # Two cents for the order-level lines' shares, rounded (§4 "rounded
        # cumulatively"); with none to round (no shares in this basket, the money held
        # exact) nothing is: the PSP takes a capture only up to "the remaining
        # authorization" (CONTRACT §8, "capture ≤ remaining authorization"; seed 54681).
        exact = self._ratio(last) == 1 and Fraction(st.money).denominator == 1
        slack = 0 if exact else 2
        # An authorization below the basket (lowered to an earlier one, a raise
        # refused) is no sum of this basket's shares: a capture within their rounding of
        # what is left of it may be a cent above it, and the PSP refuses that (CONTRACT
        # §8, capture ≤ remaining authorization; seed 92680: 7309.98 rounds to 7310
        # against 7309 left), so whether it fits is the rounding's, not certain.
        near = (
            not exact
            and limit < order_total(last)
            and value + riding_value > limit - st.money - slack
        )
        beyond = value + riding_value > limit - st.money + slack
        # README "Ledger model": "A price or discount edit after a capture is carried by
        # the captures still to come ... A discount edit goes the same way, as a
        # correction line with the discount's reference (which can be positive)", so
        # that the shares "add up to the discount line's total" (§4). Units captured at
        # an earlier basket's shares, worth more at this one's (a discount cut since),
        # leave that difference to this capture: it may pass what is left of an
        # authorization no raise will follow, and the units wait (seed 205314). Those
        # counted captured before it (a fee riding with it is in riding_value).
        carried = (
            sum(
                int(x["unit_price"]) * st.captured.get(x["id"], 0)
                for x in last["lines"]
                if kind(x) in GOODS | FEES and x["id"] not in riding
            )
            * self._ratio(last)
            - st.money
        )
        if not beyond and carried > slack and value + riding_value + carried > limit - st.money:
            near = True
            exp.outcomes.add("edit_carried_beyond_authorization")
        # A worker may have captured for an earlier snapshot of this window (§4 step 2,
        # "a capture with exactly those lines" of the snapshot it was sent for: its
        # prices, its order-level shares, the fees due with the first capture), and the
        # captures before took up to their dearest shares (money_high): what fits in
        # "the remaining authorization" (CONTRACT §8) by the last snapshot's estimate
        # may not have fitted then, and what did not fit waits (seeds 102722, 103304).
        dearest = max(
            [
                value + riding_value,
                *(
                    sum(
                        int(x["unit_price"])
                        * min(
                            newly.get(x["id"], 0) + riding.get(x["id"], 0),
                            int(x["quantity"]) - st.captured.get(x["id"], 0)
                            if kind(x) in FEES
                            else int(x.get("shipped_quantity", 0)) - st.captured.get(x["id"], 0),
                        )
                        for x in snap["lines"]
                        if x["id"] in newly or x["id"] in riding
                    )
                    * self._ratio(snap)
                    for snap in earlier
                ),
            ]
        )
        if not beyond and dearest > limit - st.money_high + slack:
            near = True
            exp.outcomes.add("shipped_beyond_authorization_for_an_earlier_snapshot")
        if (beyond or near) and (no_raise or at_basket):
            # The shipped lines exceed an authorization the PSP would not raise: what
            # fits is captured, the shop is told to take a new order.
            exp.outcomes.add("shipped_beyond_authorization")
            if not beyond:
                exp.outcomes.add("shipped_within_rounding_of_the_authorization")
            self._cancel_held = cancelling
            for line_id, units in newly.items():
                entry = exp.lines.setdefault(line_id, LineExpect())
                before = st.captured.get(line_id, 0)
                entry.maybe(before, before + units)
                entry.prices |= self._prices(line_id)
                # Captured after all, they may carry a price edit as any capture does.
                entry.totals |= self._totals(line_id)
            exp.allowed.add(("needs_attention", "capture_exceeds_authorization"))
            exp.uncertain_end = True
            # Captured or not, timing decides (a worker that raised the authorization
            # first captured them, §4 steps 1-2): the PSP may hold their money, at most
            # at the dearest price and shares a snapshot of this window gave them.
            st.money_high += sum(
                max((p for p, _ in self._prices(i)), default=int(lines[i]["unit_price"])) * n
                for i, n in newly.items()
                if i in lines
            ) * max(self._ratio(snap) for snap in [*earlier, last])
            return
        free = {i for i in newly if all(p == 0 for p, _ in self._prices(i))}
        if 0 < value < 1:
            # Worth less than a cent once the order-level lines' shares are in: §4's
            # shares are "rounded cumulatively so that every request's lines sum exactly
            # to its amount and the shares add up to the discount line's total once
            # everything has shipped", so this capture may round to nothing (and none of
            # 0 is sent), the cent left to the units still to ship.
            free = set(newly)
            exp.outcomes.add("capture_rounded_to_nothing")
        priced_out = {i for i in newly if int(lines[i]["unit_price"]) == 0} - free
        if priced_out:
            # Priced to 0 in this window after they shipped: a capture for the last
            # snapshot is worth nothing (none of 0 is sent), one for an earlier snapshot
            # carried them at their price then; which, and so the authorization's end
            # (cancelled or released), is timing.
            free |= priced_out
            exp.uncertain_end = True
            exp.outcomes.add("priced_to_nothing_while_shipping")
        if self._ratio(last) == 0:
            free_by_price = free
            free = set(newly)  # order-level lines take all of it: nothing to capture
            if set(newly) - free_by_price and any(self._ratio(s) for s in self.window[:-1]):
                # An earlier snapshot of this window gave them value: a worker may have
                # captured them for it before the order-level lines took it all.
                st.maybe_captured = True
            if any(self._ratio(snap) != 0 for snap in earlier):
                # Discounted to nothing in this window after they shipped: as for units
                # priced to 0, a capture for an earlier snapshot carried them; timing.
                exp.uncertain_end = True
                exp.outcomes.add("priced_to_nothing_while_shipping")
        if st.any_capture and order_total(last) < st.money_high - 2:
            # The total went below what is captured (a price or discount edit after a
            # capture): the captures can no longer add up to it (a person is told,
            # CANNOT_FOLLOW), and the order-level lines not yet shared may take all that
            # is still open, so these units may be worth nothing, never captured. What
            # is captured is what an earlier capture took at the order-level shares of
            # the snapshot it was made for, any of its window's (§4: captures "carry a
            # share of order-level discount lines in proportion to the value of the
            # lines they carry, ... rounded cumulatively so that ... the shares add up
            # to the discount line's total once everything has shipped"): so the
            # dearest of them (money_high), not the last one's estimate, decides. A unit
            # never captured is never refunded ("never more than was captured").
            free = set(newly)
        # The same within this window: a worker that captured for an earlier snapshot
        # (at its prices and order-level shares, with the fees if first) may have
        # taken more than the last basket is worth; the units shipped after it are then
        # worth nothing to capture, as above. Per line: at least what that snapshot
        # shipped.
        after_overshoot: dict[str, int] = {}
        for snap in earlier:
            shipped_then = {
                x["id"]: int(x.get("shipped_quantity", 0)) - st.captured.get(x["id"], 0)
                for x in snap["lines"]
                if kind(x) in GOODS
            }
            # A first capture made for that snapshot carried its own fees (§4: "charged
            # with the order's first capture"), whether or not the last one keeps them.
            its_fees = {
                x["id"]
                for x in snap["lines"]
                if kind(x) in FEES
                and not st.own_capture
                and st.captured.get(x["id"], 0) < int(x["quantity"])
            }
            taken = sum(
                int(x["unit_price"]) * max(shipped_then.get(x["id"], 0), 0)
                + (
                    int(x["unit_price"]) * int(x["quantity"])
                    if x["id"] in fees or x["id"] in its_fees
                    else 0
                )
                for x in snap["lines"]
                if kind(x) in GOODS | FEES
            ) * self._ratio(snap)
            # Or that snapshot had every unit of value shipped: a worker acting on it
            # lowered the authorization to its total and captured all of it (§4 steps
            # 1-2); step 1 updates only an authorization "not fully captured", so the
            # units shipped since wait for the new order the shop is asked for (seed
            # 80315: the basket grew back to the authorized total).
            whole = self._captured_whole_by(snap) and order_total(snap) + 2 < order_total(last)
            if whole:
                exp.uncertain_end = True
                exp.outcomes.add("shipped_after_a_basket_captured_whole_in_passing")
                exp.authorized_low = min(exp.authorized_low or st.authorized, order_total(snap))
                # (And it stays fully captured for the windows after: see full_at.)
                st.full_at = min(st.full_at or order_total(snap), order_total(snap))
            if st.money + taken > order_total(last) + 2 or whole:
                for line_id, units in newly.items():
                    floor = min(max(shipped_then.get(line_id, 0), 0), units)
                    after_overshoot[line_id] = min(after_overshoot.get(line_id, units), floor)
            position = next(i for i, x in enumerate(self.window) if x is snap)
            if any(
                x["status"] == "open" and order_total(x) < st.money + taken + 2
                for x in self.window[position + 1 : -1]
            ):
                # A worker that captured for that snapshot, then acted on a later one of
                # this window, found that basket below the captures: no capture or
                # update can follow it (§4 step 1; the PSP refuses an amount below what
                # it captured), so a person is told, though the basket grew again after
                # (seed 57924; the captures before the window: below_captures_in_passing
                # in settle).
                exp.allowed |= {("needs_attention", r) for r in CANNOT_FOLLOW}
                exp.outcomes.add("below_a_capture_of_its_window_in_passing")
        if self._maybe_full or st.maybe_full:
            # A worker may have captured all of an earlier snapshot and left the
            # authorization fully captured (settle, _maybe_full): units shipped after
            # that snapshot then wait for the new order (§4 step 1 "not fully captured";
            # "the shop must ask the customer to place a new order for the new items"),
            # or were captured, had no worker seen it. In a later window, every unit.
            filled = None if st.maybe_full else self._filled_snapshot()
            for line_id, units in newly.items():
                then = 0
                if filled is not None:
                    then = sum(
                        int(x.get("shipped_quantity", 0)) - st.captured.get(line_id, 0)
                        for x in filled["lines"]
                        if x["id"] == line_id
                    )
                floor = min(max(then, 0), units)
                after_overshoot[line_id] = min(after_overshoot.get(line_id, units), floor)
                exp.outcomes.add("shipped_after_a_full_capture_in_passing")
        if after_overshoot:
            exp.outcomes.add("captured_beyond_a_later_basket_in_one_window")
        money_then = st.money
        st.money += sum(
            int(lines[i]["unit_price"]) * n for i, n in newly.items() if i in lines
        ) * self._ratio(last)
        # A worker may have captured for an earlier snapshot of this window, at its
        # prices and its order-level shares: at most the dearest of them. A fee added
        # after the first capture may ride with this one (the contract leaves when it
        # is charged open, see riding): then the PSP holds its money too.
        st.money_high += sum(
            max((p for p, _ in self._prices(i)), default=int(lines[i]["unit_price"])) * n
            for i, n in [*newly.items(), *riding.items()]
            if i in lines
        ) * max(self._ratio(snap) for snap in [*earlier, last])
        open_value = sum(
            int(line["unit_price"]) * (int(line["quantity"]) - st.captured.get(line_id, 0))
            for line_id, line in lines.items()
            if kind(line) in GOODS | FEES and int(line["unit_price"]) > 0
        )
        if st.external_units and open_value > 0:
            # Units captured outside carried no share of the order-level lines; §4's
            # shares exist "so that once everything has shipped the captures add up to
            # the order's total", so this capture may take its part by value of what the
            # open lines still owe (total − captured), more than the last basket's
            # ratio gives (seeds 219, 85917).
            owed = order_total(last) - money_then
            part = (
                sum(int(lines[i]["unit_price"]) * n for i, n in newly.items() if i in lines)
                * Fraction(owed, 1)
                / open_value
            )
            st.money_high = max(st.money_high, money_then + part)
        for line_id, units in newly.items():
            before = st.captured.get(line_id, 0)
            st.captured[line_id] = before + units
            entry = exp.lines.setdefault(line_id, LineExpect())
            entry.prices |= self._prices(line_id)
            entry.totals |= self._totals(line_id)
            if line_id in free or line_id in later_maybe:
                # Worth nothing (no capture of 0 is ever sent, it may ride along with
                # one), or a fee the first capture may not have carried.
                entry.maybe(before, before + units)
                st.money_unsure += int(lines[line_id]["unit_price"]) * units * self._ratio(last)
                st.worthless[line_id] = st.worthless.get(line_id, 0) + units
            elif after_overshoot.get(line_id, units) < units:
                entry.maybe(before + after_overshoot[line_id], before + units)
            else:
                entry.surely(before, units)
        complete = all(
            st.captured.get(line_id, 0) >= int(line["quantity"])
            for line_id, line in lines.items()
            if kind(line) in GOODS | FEES and line_value(line) > 0
        ) and not any(e.captured_range for e in exp.lines.values())
        if complete and set(newly) - free and money_then <= order_total(last):
            # §4: shares "rounded cumulatively so that ... the shares add up to the
            # discount line's total once everything has shipped", and "once everything
            # has shipped the captures add up to the order's total": the capture that
            # leaves nothing of value to capture takes the rest of the order-level lines,
            # all of it when the units before were captured outside (which carried
            # none; seeds 58085, 58171), not the last basket's ratio of its own units.
            st.money = Fraction(order_total(last))
            st.money_high = max(st.money_high, st.money)
        st.any_capture = st.any_capture or bool(set(newly) - free)
        st.own_capture = st.own_capture or bool(set(newly) - free)
        st.free_shipped = st.free_shipped or bool(free)
        exp.outcomes.add("capture")

    def _fees_alone_overtaken(self) -> None:
        """EXPIRE came before the CAPTURE of a capture in flight, and no goods shipped
        beyond what is held: that capture can only have taken fees alone (README "Fees":
        a fee the first capture did not carry goes "alone once none is left to come:
        every unit of goods of some value captured, or the order cancelled with its
        shipped goods captured"), sent for a snapshot of this window. §4 counts the
        expiry but does not order it against a capture already sent, and README "a
        CAPTURE that arrives after EXPIRE is counted": each fee of the window still
        uncaptured may be held, or not (seed 62357)."""
        st = self.state
        goods = {str(x["id"]) for snap in self.window for x in snap["lines"] if kind(x) in GOODS}
        if not any(st.captured.get(line_id, 0) > 0 for line_id in goods):
            return  # no goods held: no fee is due alone
        for snap in self.window:
            for x in snap["lines"]:
                line_id = str(x["id"])
                before = st.captured.get(line_id, 0)
                if kind(x) not in FEES or before >= int(x["quantity"]):
                    continue
                entry = self.exp.lines.setdefault(line_id, LineExpect())
                entry.maybe(before, int(x["quantity"]))
                entry.prices |= self._prices(line_id)
                self.exp.outcomes.add("fees_alone_overtaken_by_the_expiry")

    def _totals(self, line_id: str) -> set[tuple[int, int]]:
        return {
            (int(line["quantity"]), line_value(line))
            for snap in self.window
            for line in snap["lines"]
            if line["id"] == line_id
        }

    def _prices(self, line_id: str) -> set[tuple[int, int]]:
        """Every (unit price, tax rate) the line had in this window's snapshots."""
        return {
            (int(line["unit_price"]), int(line["tax_rate"]))
            for snap in self.window
            for line in snap["lines"]
            if line["id"] == line_id
        }

    def _refunds(self, lines: dict[str, dict[str, Any]]) -> None:
        st = self.state
        for line_id, line in lines.items():
            if kind(line) in REDUCING | SHARED_UP:
                continue
            held = st.captured.get(line_id, 0)
            # Units refunded outside count: a shop return of them is not refunded again.
            back = max(int(line.get("returned_quantity", 0)), st.external_back.get(line_id, 0))
            # §4: money moved without the service (a chargeback) is counted and "never
            # made a second time": units whose money a chargeback gave back are not
            # refunded when the shop marks them returned (the PSP holds nothing for
            # them). A build that plans the refund anyway finds nothing left to refund
            # and may flag it for a person.
            given_back = st.charged_back_units.get(line_id, 0)
            # The same for units whose capture was left to timing (a range) when the
            # chargeback took everything held: captured, their money went back with it
            # (Oracle.chargeback, Expectation.charged_back_maybe; seed 114429).
            maybe_back = self.exp.charged_back_maybe.get(line_id, 0)
            if (given_back or maybe_back) and min(back, held + maybe_back) > st.refunded.get(
                line_id, 0
            ):
                self.exp.allowed.add(("needs_attention", "refund_exceeds_captured"))
            want = min(back, held) - given_back
            if want > st.refunded.get(line_id, 0):
                if kind(line) in GOODS and int(line["unit_price"]) == 0:
                    st.back_at_nothing[line_id] = (
                        st.back_at_nothing.get(line_id, 0) + want - st.refunded.get(line_id, 0)
                    )
                st.refunded[line_id] = want
                self.exp.outcomes.add("refund")

    # -- the end ------------------------------------------------------------------

    def expectation(self) -> Expectation:
        self.settle()
        exp, st = self.exp, self.state
        for line_id, units in st.captured.items():
            entry = exp.lines.setdefault(line_id, LineExpect())
            entry.captured = units
            entry.refunded = st.refunded.get(line_id, 0)
        for line_id, units in st.refunded.items():
            exp.lines.setdefault(line_id, LineExpect()).refunded = units
        for line_id, outside in st.outside_prices.items():
            entry = exp.lines.setdefault(line_id, LineExpect())
            if not entry.prices:
                continue  # a line no capture of the service's is judged for: none is
            named = [x for x in (self.stored or {"lines": []})["lines"] if x["id"] == line_id]
            rates = {r for _, r in entry.prices} | {int(x["tax_rate"]) for x in named}
            entry.prices |= {(p, r) for p, r in outside if r is not None}
            entry.prices |= {(p, rate) for p, r in outside if r is None for rate in rates}
        exp.authorization = st.closed or "open"
        exp.authorized = st.authorized if st.closed is None else None
        if st.full_at is not None and exp.authorized is not None:
            # A basket captured whole in passing (full_at): the PSP may have stayed there.
            exp.authorized_low = min(exp.authorized_low or exp.authorized, st.full_at)
        kept = self._kept_authorized
        if kept is not None and exp.authorized is not None:
            # A fee left to timing may have fully captured the authorization (settle,
            # seed 60578): the PSP may still hold what it held then.
            exp.authorized_low = min(exp.authorized_low or exp.authorized, exp.authorized, kept)
            exp.authorized_high = max(exp.authorized_high or exp.authorized, exp.authorized, kept)
        if self.stored is not None:
            exp.total = order_total(self.stored)
            goods = [line for line in self.stored["lines"] if kind(line) in GOODS | FEES]
            exp.all_shipped = all(
                exp.lines.get(line["id"], LineExpect()).captured >= int(line["quantity"])
                for line in goods
                if line_value(line) > 0
            )
            # §4: sales tax and discounts are "shared by captures ... in proportion to
            # value", so the captures add up to the total only once goods of some value
            # shipped; a basket of order-level lines alone has nothing to carry them.
            shippable = any(line_value(line) > 0 for line in goods)
            exp.must_equal_total = (
                exp.all_shipped
                and shippable
                and st.closed is None
                and self.stored["status"] == "open"
                and not st.charged_back
                and not self.halted
                and not any(r in CANNOT_FOLLOW for _, r in exp.allowed)
                and not any(e.captured_range for e in exp.lines.values())
            )
        exp.paid_whole = dict(st.paid_whole)
        for line_id, units, alike in st.unnamed:
            # Money captured outside whose lines the service was never told: the build
            # may have taken it for units of a line worth as much (not capturing them),
            # and then captured the units the PSP booked it on once they shipped.
            for other in alike:
                entry = exp.lines.setdefault(other, LineExpect())
                lo, hi = entry.captured_range or (entry.captured, entry.captured)
                entry.captured_range = (max(0, lo - units), hi)
                swaps = exp.interchangeable.setdefault(other, {})
                swaps[line_id] = swaps.get(line_id, 0) + units
            entry = exp.lines.setdefault(line_id, LineExpect())
            lo, hi = entry.captured_range or (entry.captured, entry.captured)
            entry.captured_range = (lo, hi + units)
            if alike and self.stored is not None:
                # Taken for shipped units of a line worth as much, that money was the
                # order's first capture (§4: counted, "never makes it a second time"),
                # which could not carry the fees "charged with the order's first
                # capture": as after a capture the PSP names, they go with the
                # service's next capture of goods, or alone once none is left to come
                # (README "Fees"); the build knows it was a first capture only once it
                # tied the money to units, so they may also stay uncharged.
                for fee in self.stored["lines"]:
                    got = exp.lines.get(str(fee["id"]))
                    if kind(fee) in FEES and got is not None:
                        lo, hi = got.captured_range or (got.captured, got.captured)
                        paid_outside = st.external_units.get(str(fee["id"]), 0)
                        got.captured_range = (min(lo, paid_outside), hi)
        for line_id, units, alike in st.unnamed_back:
            # Money refunded outside whose lines the service was never told: the build
            # may have taken it for returned units of a line worth as much (refunding
            # one fewer of them); the PSP booked it on line_id, as counted.
            for other in alike:
                entry = exp.lines.setdefault(other, LineExpect())
                low = entry.refunded if entry.refunded_low is None else entry.refunded_low
                entry.refunded_low = max(0, low - units)
                swaps = exp.interchangeable_back.setdefault(other, {})
                swaps[line_id] = swaps.get(line_id, 0) + units
        return exp


def ended_as(want: str, status: str, *, provider: str, authorized: int, captured: int) -> bool:
    """Whether the PSP's order status and figures are the authorization's end `want`."""
    if want == "released":
        # §4 step 4 "release the remaining authorization": nothing of it is left. One
        # already lowered to what was captured has nothing to release, whatever status
        # the PSP keeps it in.
        if provider == "klarna" and authorized != captured:
            return False
        return status in ("CAPTURED", "CANCELLED") or (
            status == "PART_CAPTURED" and authorized == captured
        )
    ends = {
        "open": ("AUTHORIZED", "PART_CAPTURED", "CAPTURED"),
        "cancelled": ("CANCELLED",),
        "expired": ("EXPIRED",),
        "refused": ("REFUSED",),
    }
    return status in ends[want]


# --- the PSP's ledger against the contract's money rules ------------------------------


@dataclass(frozen=True)
class Booked:
    """One line of a capture or refund as the PSP booked it (whole-line totals)."""

    reference: str
    type: str
    quantity: int
    total: int  # tax included
    tax: int
    tax_rate: int


def _carries_the_difference(
    gross: int, units: int, units_before: int, gross_before: int, quantity: int, value: int
) -> bool:
    """Whether a capture of `units` of a line for `gross`, after `units_before` of it were
    captured for `gross_before`, carries a price edit made between the two so that the
    line's captures add up to its `value` once all `quantity` units are captured.

    The contract fixes the end ("once everything has shipped the captures add up to the
    order's total", §4) and how shared lines get there ("in proportion to the value ...
    rounded cumulatively"), not which later unit carries the difference: a capture may
    take its units' part of the line's whole value (k of q), or of what is still open of
    it ((value - captured) * k / open units). Either way the line never goes beyond its
    value and its last unit takes exactly the rest.
    """
    if quantity <= 0:
        return False
    captured = units_before + units
    of_whole = abs((gross_before + gross) * quantity - value * captured) <= quantity * captured
    open_units = quantity - units_before
    # README "Ledger model": "a line's own units still to capture carry its price edit
    # first", and goods are never captured below nothing (§4 step 2: "newly shipped
    # quantities → a capture with exactly those lines"): when the units captured before
    # hold more than the line is worth now, the open units go at 0 and the rest of the
    # cut is given back by other captures or refunded whole, so that "once everything
    # has shipped the captures add up to the order's total" (§4; seeds 86021, 85270).
    left = max(value - gross_before, 0)
    of_open = open_units >= units and abs(gross * open_units - left * units) <= open_units
    return of_whole or of_open


def _carries_after_unnamed(
    held: dict[str, list[Fraction]],
    exp: Expectation,
    reference: str,
    gross: int,
    units: int,
    units_before: int,
    gross_before: int,
    totals: set[tuple[int, int]],
) -> bool:
    """`_carries_the_difference`, with units of this line a capture made outside without
    named lines may have paid for (`Expectation.interchangeable`: the PSP booked it on
    another line worth as much then) counted as captured before, at the value the PSP
    holds them at. The service may have taken that money for this line's units (§4:
    counted, "never makes it a second time"); a price edit since is then carried by this
    line's later captures as after any capture of it."""
    for other, most in exp.interchangeable.get(reference, {}).items():
        for value in set(held.get(other, [])):
            for k in range(1, min(most, len(held[other])) + 1):
                before = gross_before + value * k
                if before.denominator != 1:
                    continue
                if any(
                    _carries_the_difference(gross, units, units_before + k, int(before), q, total)
                    for q, total in totals
                ):
                    return True
    return False


def _spare(
    held: dict[str, list[Fraction]],
    got: dict[str, list[int]],
    borrowed: dict[tuple[str, str], int],
    exp: Expectation,
    reference: str,
) -> list[tuple[str, int]]:
    """Units of other lines a capture made outside without named lines paid for, that
    the build may have taken for this line's (`Expectation.interchangeable`): per such
    line, how many are not yet moved over to this one (`borrowed`) and still held."""
    return [
        (
            other,
            min(
                units - borrowed.get((reference, other), 0),
                len(held.get(other, [])) - got.get(other, [0, 0])[1],
            ),
        )
        for other, units in exp.interchangeable.get(reference, {}).items()
    ]


def _borrow(
    held: dict[str, list[Fraction]],
    borrowed: dict[tuple[str, str], int],
    line: Booked,
    short: int,
    spare: list[tuple[str, int]],
) -> None:
    """A refund of `short` more units of a line than the PSP holds for it: units of the
    other lines it may stand for (`_spare`) move over to it, at their value."""
    reference = line.reference
    for other, available in spare:
        take = min(short, available)
        for _ in range(max(take, 0)):
            per = Fraction(line.total, line.quantity)
            unit = min(held[other], key=lambda v: abs(v - per))
            held[other].remove(unit)
            held.setdefault(reference, []).append(unit)
        if take > 0:
            borrowed[(reference, other)] = borrowed.get((reference, other), 0) + take
            short -= take


def _refund_pool(
    held: dict[str, list[Fraction]], reference: str, spare: list[tuple[str, int]], *, dear: bool
) -> list[Fraction]:
    """The captured values a refund of the line's units may be judged within: its own
    units', and those of the units of other lines it may stand for (`_spare`, not yet
    moved over by `_borrow`): the cheapest of them, or with `dear` the dearest."""
    pool = list(held.get(reference, []))
    for other, available in spare:
        if available > 0:
            pool += sorted(held[other], reverse=dear)[:available]
    return pool


def _cut(held: dict[str, list[Fraction]], line: Booked, *, clamp: bool, back: int = 0) -> Fraction:
    """A price cut given back for a line's captured units: spread over them by value.

    `back`: units of the line refunded already. They went back at what they were
    captured at (§4 step 3: refunds "at the prices and tax they were captured at"), so
    the cut is the units' still held (seed 90378); the `back` dearest keep their value,
    so an earlier refund judged within the dearest units stays within them (their
    cheapest bound only falls).

    Returns what it gives back beyond what they hold (< 0), which they are then held at
    nothing: the order-level share they carried (a discount) went back with it to the
    discount line, whose rest the capture carrying the cut takes (§4: "the shares add
    up to the discount line's total once everything has shipped"), so the goods of that
    capture hold it, and a refund of them gives back what the customer paid for them
    ("never more than was captured for those units"; seed 55371)."""
    units = held.get(line.reference, [])
    kept = sorted(range(len(units)), key=lambda i: units[i], reverse=True)[: max(back, 0)]
    # (With every unit back, nothing says whose the cut is: all keep taking it, as before.)
    cut = [i for i in range(len(units)) if i not in kept] or list(range(len(units)))
    value = sum((units[i] for i in cut), Fraction(0))
    beyond = Fraction(0)
    for index in cut:
        unit = units[index]
        part = Fraction(line.total * unit, value) if value else Fraction(line.total, len(cut))
        units[index] = unit + part
        if clamp and units[index] < 0:
            beyond += units[index]
            units[index] = Fraction(0)
    return beyond


def _spread(
    held: dict[str, list[Fraction]],
    amount: Fraction,
    busy: set[str],
    got: dict[str, list[int]],
) -> None:
    """`amount` (<= 0) more of the discount on the units held of lines not `busy`, by
    value (a cut refunded whole beyond what its units held: _cut).

    Units refunded already are not held: README "Ledger model" has "for a refunded cut
    those still held" carry it, and §4 step 3 refunds "at the prices and tax they were
    captured at (never more than was captured for those units)", so those went back at
    their value then. As in `_cut`, the dearest as many as came back of each line keep
    their value (nothing says which came back), so an earlier refund judged within them
    stays within them (seed 209563)."""
    units = []
    for reference, values in held.items():
        if reference in busy:
            continue
        back = got.get(reference, [0, 0])[1]
        kept = set(sorted(range(len(values)), key=lambda i: values[i], reverse=True)[:back])
        units += [(reference, i) for i, unit in enumerate(values) if unit > 0 and i not in kept]
    value = sum((held[r][i] for r, i in units), Fraction(0))
    for reference, index in units if amount and value else []:
        held[reference][index] += amount * held[reference][index] / value


def check_ledger(
    requests: list[tuple[str, int, list[Booked]]], exp: Expectation
) -> list[tuple[str, str]]:
    """(kind, amount, lines) of every capture and refund the PSP applied, in order,
    against the expectation; returns (code, detail) for every rule broken.

    A `settle` is goods the service took at money the PSP already holds (README "Ledger
    model": a price cut on captured units that takes a capture whole is no call for
    nothing): a capture of 0, judged as captures are, whose cut lines lower the units
    they name. It moves no money, so §4's "once everything has shipped the captures add
    up to the order's total" still holds it: settled against money not held, the
    captures fall short."""
    found: list[tuple[str, str]] = []
    held: dict[str, list[Fraction]] = {}  # per line: the captured value of each held unit
    captured = refunded = 0
    got: dict[str, list[int]] = {}
    captured_gross: dict[str, int] = {}  # per line: captured value before shares
    borrowed: dict[tuple[str, str], int] = {}  # (line, other line): units taken over
    slack = 0  # rounding allowed on everything refunded so far
    given_back = 0  # price cuts refunded whole: no units came back for them
    taken: dict[str, int] = {}  # per order-level line: the shares the captures took
    for what, amount, lines in requests:
        settle = what == "settle"
        if settle:
            what = "capture"
        if sum(line.total for line in lines) != amount:
            found.append(("lines_do_not_sum", f"{what} of {amount}: lines sum differently"))
        for line in lines:
            if abs(line.tax - tax_in(line.total, line.tax_rate)) > 1:
                found.append(("tax_wrong", f"{line.reference}: tax {line.tax} on {line.total}"))
        # README "Ledger model": a price cut on units already captured is given back by a
        # later capture as a `discount` line with that goods line's reference; it is
        # those units' (§4 step 3: refunds "at the prices and tax they were captured at
        # (never more than was captured for those units)"), not a share of the order-level
        # lines the request's other goods carry ("in proportion to the value of the lines
        # they carry").
        cuts = [
            line
            for line in lines
            if line.type in REDUCING and got.get(line.reference, [0, 0])[0] > 0
        ]
        lines = [line for line in lines if line not in cuts]
        # README "Ledger model": "a line's own units still to capture carry its price edit
        # first"; units of a line captured before that carry a cut whole are taken at 0
        # (§4 step 2: "newly shipped quantities → a capture with exactly those lines"),
        # settled against the money its earlier units left with the PSP. Whether 0 is
        # their line's price edit is the price check's below.
        own_cut = any(
            line.total == 0
            and line.quantity
            and line.type not in REDUCING | SHARED_UP
            and got.get(line.reference, [0, 0])[0] > 0
            for line in lines
        )
        # §4: captures carry the order-level lines' shares "rounded cumulatively so that
        # every request's lines sum exactly to its amount and the shares add up to the
        # discount line's total once everything has shipped"; the last goods to ship
        # carry every share left, and where those take the goods' value whole, their
        # capture with "exactly those lines" (step 2) comes to 0: no call, a settle
        # (README "Ledger model"), the goods at their price (the price check's below).
        # The shares taken so far never pass an order-level line's total, and name only
        # the order's own (a discount the order never had paid for nothing).
        # §4: "`sales_tax` lines (US) are shared by captures and refunds in proportion to
        # value, as discount lines are, so that once everything has shipped the captures
        # add up to the order's total": a sales tax line priced down after its capture
        # leaves a negative share for the goods still to ship, which may take them whole
        # too; its shares taken never fall below the least the line ever was (never 0 <).
        for line in lines:
            if line.type in REDUCING | SHARED_UP and what == "capture":
                taken[line.reference] = taken.get(line.reference, 0) + line.total
        goods_value = sum(line.total for line in lines if line.type not in REDUCING | SHARED_UP)
        taken_by_shares = (
            goods_value > 0
            and sum(line.total for line in lines) == 0
            and any(line.total < 0 for line in lines if line.type in REDUCING | SHARED_UP)
            and all(
                taken[line.reference]
                >= exp.shares.get(line.reference, 0 if line.type in SHARED_UP else exp.unitemised)
                for line in lines
                if line.type in REDUCING | SHARED_UP and line.total < 0
            )
        )
        if settle and not cuts and not own_cut and not taken_by_shares:
            # Nothing paid for these goods but money a price cut left with the PSP.
            found.append(("settled_without_a_cut", f"{[line.reference for line in lines]}"))
        # README "Ledger model": a cut no capture was left to give back is refunded, the
        # units it names then held at that much less (§4 step 3: refunds "never more
        # than was captured for those units"); no unit comes back for it.
        surplus = [
            line
            for line in lines
            if what == "refund"
            and line.type in REDUCING
            and line.reference.endswith(CUT_REFUND)
            and got.get(line.reference.removesuffix(CUT_REFUND), [0, 0])[0] > 0
        ]
        lines = [line for line in lines if line not in surplus]
        units = [line for line in lines if line.type not in REDUCING | SHARED_UP]
        shared: Fraction | int = sum(
            line.total for line in lines if line.type in REDUCING | SHARED_UP
        )
        if what == "capture":
            for line in cuts:
                # (A request of cuts alone has no goods to carry it: the units keep it.)
                back = got.get(line.reference, [0, 0])[1]
                shared += _cut(held, line, clamp=bool(units), back=back)
        for line in surplus:
            reference = line.reference.removesuffix(CUT_REFUND)
            cut = Booked(reference, line.type, 1, -line.total, -line.tax, line.tax_rate)
            # Beyond what its units hold, the discount share they carried goes to the
            # goods still held (§4: "the shares add up to the discount line's total"),
            # not those this refund gives back.
            busy = {x.reference.removesuffix(CUT_REFUND) for x in surplus + units}
            back = got.get(reference, [0, 0])[1]
            _spread(held, _cut(held, cut, clamp=True, back=back), busy, got)
            given_back += line.total
            amount -= line.total
        value = sum(line.total for line in units)
        if what == "capture":
            captured += amount
            for line in units:
                per = Fraction(line.total, line.quantity) if line.quantity else Fraction(0)
                share = Fraction(shared * line.total, value) if value else Fraction(0)
                unit = per + (share / line.quantity if line.quantity else 0)
                held.setdefault(line.reference, []).extend([unit] * line.quantity)
                counts = got.setdefault(line.reference, [0, 0])
                units_before, gross_before = counts[0], captured_gross.get(line.reference, 0)
                counts[0] += line.quantity
                price = exp.lines.get(line.reference)
                gross = line.total  # the line's own value, before order-level shares
                so_far = gross_before + gross
                captured_gross[line.reference] = so_far
                if price is not None and price.prices and line.quantity:
                    at_price = any(
                        abs(gross - p * line.quantity) <= line.quantity and r == line.tax_rate
                        for p, r in price.prices
                    )
                    catch_up = any(
                        _carries_the_difference(
                            gross, line.quantity, units_before, gross_before, q, value
                        )
                        for q, value in price.totals
                    ) or _carries_after_unnamed(
                        held,
                        exp,
                        line.reference,
                        gross,
                        line.quantity,
                        units_before,
                        gross_before,
                        price.totals,
                    )
                    if not (at_price or catch_up):
                        found.append(
                            (
                                "captured_at_wrong_price",
                                f"{line.reference}: {line.quantity} for {gross} "
                                f"(rate {line.tax_rate}), expected one of {sorted(price.prices)}",
                            )
                        )
        else:
            refunded += amount
            slack += 1 + len(units)  # one cent of rounding per line and per request
            for line in units:
                counts = got.setdefault(line.reference, [0, 0])
                short = line.quantity - (len(held.get(line.reference, [])) - counts[1])
                spare = _spare(held, got, borrowed, exp, line.reference)
                _borrow(held, borrowed, line, short, spare)
                if line.quantity > len(held.get(line.reference, [])) - counts[1]:
                    found.append(("refund_beyond_captured", f"{line.reference}"))
                    continue
                counts[1] += line.quantity
            # §4: returned units are refunded "at the prices and tax they were captured
            # at (never more than was captured for those units)". Units of one line are
            # alike, and when they were captured at different prices (a price or discount
            # edit between captures, a capture made outside) nothing says which came
            # back: r units refunded give back no less than the r cheapest and no more
            # than the r dearest captured units of their line, all of it once all are back.
            # A capture made outside whose lines the PSP did not name may have been
            # taken for units of this line worth as much then (README "External
            # changes": such money "is tied to units only when the shop's snapshots
            # show units worth exactly its amount"; `Expectation.interchangeable`): the
            # build then holds the line's units at that money too, as captured for
            # them, and nothing says which came back.
            cheapest = sum(
                (
                    sum(
                        sorted(
                            _refund_pool(
                                held, ref, _spare(held, got, borrowed, exp, ref), dear=False
                            )
                        )[: n[1]],
                        Fraction(0),
                    )
                    for ref, n in got.items()
                    if n[1]
                ),
                Fraction(0),
            )
            dearest = sum(
                (
                    sum(
                        sorted(
                            _refund_pool(
                                held, ref, _spare(held, got, borrowed, exp, ref), dear=True
                            ),
                            reverse=True,
                        )[: n[1]],
                        Fraction(0),
                    )
                    for ref, n in got.items()
                    if n[1]
                ),
                Fraction(0),
            )
            if not cheapest - slack <= refunded <= dearest + slack:
                due = f"{float(cheapest):.2f}" + (
                    f"..{float(dearest):.2f}" if dearest != cheapest else ""
                )
                found.append(
                    ("refund_not_at_captured_price", f"refunded {refunded}, captured {due}")
                )
    for reference, entry in exp.lines.items():
        have = got.get(reference, [0, 0])
        lo, hi = entry.captured_range or (entry.captured, entry.captured)
        external = 0  # the expectation counts units captured outside; the PSP ledger too
        # Units an unnamed capture that filled the basket stands for beyond those the
        # PSP booked: counted by the build (the simulation checks its figures), never
        # captured or settled again ("never makes it a second time", §4).
        external += exp.paid_whole.get(reference, 0)
        if not lo - external <= have[0] <= hi:
            found.append(
                ("captured_units", f"{reference}: {have[0]} captured, expected {lo}..{hi}")
            )
        low = entry.refunded if entry.refunded_low is None else entry.refunded_low
        # §4 step 3: a refund "never more than was captured for those units": units
        # held at nothing (a price cut given back since) have nothing to refund, and no
        # refund of 0 is sent.
        low -= sum(1 for unit in held.get(reference, []) if unit <= 0)
        if not low <= have[1] <= entry.refunded and not entry.captured_range:
            found.append(
                ("refunded_units", f"{reference}: {have[1]} refunded, expected {entry.refunded}")
            )
    for reference, counts in got.items():
        if reference not in exp.lines and counts[0]:
            found.append(("captured_units", f"{reference}: {counts[0]} captured, expected 0"))
    if exp.must_equal_total and captured - given_back != exp.total:
        found.append(("captures_not_total", f"captured {captured}, the order is {exp.total}"))
    refunded += given_back
    if refunded > captured:
        found.append(("refund_beyond_captured", f"refunded {refunded} of {captured}"))
    return found
