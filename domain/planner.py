"""The reconcile planner: desired state + what the PSP has done → the next operation.

Pure and level-triggered: it looks only at the latest snapshot and the ledger of
operations already applied, never at the events that led there, so a burst of snapshots
ends in operations for the final state only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from fractions import Fraction

from domain.lines import (
    CUT_SUFFIX,
    SHARE_TYPES,
    Ledger,
    PspLine,
    all_units_captured,
    basket_lines,
    capture_lines,
    captured_total,
    corrected,
    ledger_from,
    line_part,
    lines_total,
    refund_lines,
    reversed_quantities,
    same_lines,
    shipped_quantity,
    surplus_refund_lines,
)
from domain.money import share, tax_of
from domain.snapshot import Line, OrderSnapshot


class Kind(StrEnum):
    UPDATE_AUTHORIZATION = "update_authorization"
    CAPTURE = "capture"
    REFUND = "refund"
    CANCEL = "cancel"
    RELEASE_AUTHORIZATION = "release_authorization"
    EXTEND_AUTHORIZATION = "extend_authorization"


class PspStatus(StrEnum):
    AUTHORIZED = "authorized"
    PART_CAPTURED = "part_captured"
    CAPTURED = "captured"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    CLOSED = "closed"


# An operation in one of these may still take effect at the PSP: at most one per order.
IN_FLIGHT = ("pending", "sent", "awaiting_notification")


class OrderFlag(StrEnum):
    """What an order may be flagged with (orders.flags); each is told to the shop as its
    own event type (workers/callbacks.py EventType)."""

    NEEDS_NEW_ORDER = "needs_new_order"
    NEEDS_ATTENTION = "needs_attention"


NEEDS_NEW_ORDER = OrderFlag.NEEDS_NEW_ORDER
NEEDS_ATTENTION = OrderFlag.NEEDS_ATTENTION
FLAGS = tuple(flag.value for flag in OrderFlag)
# The needs_attention reason contract §4 names for money moved without the service.
EXTERNAL_CHANGE = "external_change"
# needs_attention reasons that report the basket or money moved without the service,
# not something that failed or whose outcome is unknown: the operator and the shop are
# told (once per reason while the flag stands), and the money moves contract §4
# prescribes still happen (capture what shipped, refund returns at their captured
# prices, fees with the first capture, release on cancel). Every other reason (a
# failure, an unknown outcome, a rejection, one a build adds later) halts automatic
# operations until an operator's reconcile: acting again could repeat what went wrong.
ADVISORY = frozenset(
    {EXTERNAL_CHANGE, "amount_below_captured", "captured_above_total", "captured_below_total"}
)


@dataclass(frozen=True)
class PspState:
    """The PSP's figures for the order, as last read or confirmed."""

    status: PspStatus
    authorized: int
    captured: int
    refunded: int
    payment_method: str | None = None
    country: str | None = None
    authorized_lines: tuple[PspLine, ...] = ()
    expires_at: datetime | None = None

    @property
    def open_for_changes(self) -> bool:
        return self.status in (PspStatus.AUTHORIZED, PspStatus.PART_CAPTURED)


@dataclass(frozen=True)
class PastOperation:
    kind: Kind
    status: str
    amount: int
    lines: tuple[PspLine, ...] = ()
    # Money that moved without the service, recorded so it is never made again.
    external: bool = False
    reference: str | None = None  # the operation's id
    # The shop's snapshot version stored when it was planned (or, for money moved
    # without the service, learnt).
    version: int | None = None
    # Money moved without the service: the snapshot stored when it was learnt, whose
    # prices its units are tied at (_attribution). None when not known.
    basis: OrderSnapshot | None = None


@dataclass(frozen=True)
class Plan:
    kind: Kind
    amount: int
    lines: tuple[PspLine, ...] = ()


@dataclass(frozen=True)
class Flag:
    flag: str
    code: str
    message: str
    lines: tuple[PspLine, ...] = ()
    # For needs_new_order: the total that was refused, so it is not asked for again.
    refused_amount: int | None = None
    # A reason ADVISORY names that halts all the same: what the PSP holds cannot be
    # counted (a currency the order never had, a chargeback it could not count).
    halting: bool = False


def halts(flag: Flag) -> bool:
    """Whether a needs_attention flag halts automatic operations until an operator's
    reconcile (ADVISORY: the reasons that only tell)."""
    return flag.flag == NEEDS_ATTENTION and (flag.halting or flag.code not in ADVISORY)


@dataclass(frozen=True)
class Wait:
    """Out of sync, but nothing can be done until something changes."""

    reason: str


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Attribute:
    """A capture or refund made without the service (its lines unknown) comes to exactly
    what the shop now marks shipped (returned) and not yet captured (refunded): those
    are its lines. Nothing is sent; the ledger learns which units it moved, so they are
    never moved twice and the order's per-line figures count them."""

    reference: str
    lines: tuple[PspLine, ...]


@dataclass(frozen=True)
class Settle:
    """Goods shipped whose capture a price cut on units already captured takes whole
    (README "Ledger model"): their money is held already, so nothing is sent to the PSP.
    So are the last goods whose order-level shares take their capture whole (§4): the
    discount or gift card paid for them.
    Recorded as a capture of 0 (the goods at their value, the cut given back against
    them: lines that sum to 0), the ledger counts them captured and never charges them
    again; a capture of 1 minor unit would charge the customer for nothing."""

    lines: tuple[PspLine, ...]


Decision = Plan | Flag | Wait | Done | Attribute | Settle


@dataclass(frozen=True)
class OrderView:
    """Everything the planner may look at for one order."""

    order: OrderSnapshot
    psp: PspState
    history: Sequence[PastOperation] = ()
    flags: frozenset[str] = field(default_factory=frozenset)
    refused_amount: int | None = None
    now: datetime | None = None
    # Extend the authorization when it expires within this, while lines are unshipped.
    extend_within: timedelta | None = None
    # A quantities_reversed reason an operator's reconcile acknowledged.
    acknowledged_reversal: str | None = None
    # The needs_attention reasons told while the flag stands, and whether one of them
    # halts (orders.flag_reason; halts()). Flagged with nothing known: it halts.
    told: frozenset[str] = frozenset()
    halting: bool = True

    @property
    def halted(self) -> bool:
        return NEEDS_ATTENTION in self.flags and self.halting

    def advise(self, flag: Flag) -> Flag | None:
        """An advisory flag the shop and operator were not told of yet while the order
        stays flagged; None once told: it never holds up the money moves after it."""
        if not halts(flag) and NEEDS_ATTENTION in self.flags and flag.code in self.told:
            return None
        return flag


def _is_correction_of(ledger: Ledger, line: PspLine) -> bool:
    """A share line naming a product line the PSP holds captured: its price correction."""
    return corrected(ledger, line) is not None


def _carries_its_own_cut(order: OrderSnapshot, ledger: Ledger, line: PspLine) -> bool:
    """Units shipped of a line of some value whose capture is 0 because they carry a price
    cut on the line's units captured before (README "Ledger model": "a line's own units
    still to capture carry its price edit first"): the cut takes them whole, so they are
    settled against the money held, like goods whose capture a correction takes whole;
    left uncaptured, they would be counted shipped and never captured, and a return of
    one would give back the dearer captured unit's price (seed 64257)."""
    if line.type in SHARE_TYPES or not line.quantity or line.total_amount != 0:
        return False
    now = next((x for x in order.effective_lines if x.id == line.reference), None)
    held = ledger.get(line.reference)
    return now is not None and now.total > 0 and held is not None and held.captured_quantity > 0


def plan_next(
    view: OrderView, increase_allowed: Callable[[str | None, str | None], bool]
) -> Decision:
    order, psp = view.order, view.psp
    ledger = ledger_from(
        (op.kind.value, op.lines) for op in view.history if op.status == "succeeded"
    )
    # Naming the units of money already moved sends nothing: a flag does not hold it up.
    attribution = _attribution(order, ledger, view.history)
    if attribution is not None:
        return attribution
    if view.halted:
        # A person has to look first; acting again could repeat what went wrong. An
        # advisory reason (ADVISORY) only tells: the contract's money moves go on.
        return Wait("needs_attention")
    # Held against what the service itself did: a capture made elsewhere of goods the
    # shop has not marked shipped is an external change (flagged when learnt), not a
    # quantity the shop took back.
    # A price correction the service sent for units captured outside (a share line with
    # the reference of a line the PSP holds captured) is that line's price, no unit of it
    # the service captured (price-cut give-back rule; seed 53311).
    own = ledger_from(
        (op.kind.value, [x for x in op.lines if not _is_correction_of(ledger, x)])
        for op in view.history
        if op.status == "succeeded" and not op.external
    )
    reversed_lines = reversed_quantities(order, own)
    reversal = (
        "shipped or returned quantities went below what the PSP captured or refunded: "
        + "; ".join(reversed_lines)
    )
    if reversed_lines and reversal != view.acknowledged_reversal:
        # Quantities never go down: what the PSP did for those units stands, and nothing
        # automatic is done for them (an exchange is a new line with a new id); once an
        # operator acknowledged this reversal, the order's other lines go on.
        return Flag(NEEDS_ATTENTION, "quantities_reversed", reversal)
    if psp.status in (PspStatus.EXPIRED, PspStatus.CLOSED):
        # Captured money is refunded whatever became of the authorization.
        refund = _refund_step(order, psp, ledger)
        if refund is not None:
            return refund
        if _has_work(order, ledger) or (order.status == "open" and _uncharged(order, ledger)):
            # The authorization ended without the service (contract §4): counted (the
            # PSP's figures), and unless nothing is left to charge, a person is told.
            return (
                view.advise(
                    Flag(
                        NEEDS_ATTENTION,
                        EXTERNAL_CHANGE,
                        f"the PSP order is {psp.status.value} (authorized {psp.authorized}, "
                        f"captured {psp.captured}); what is not captured can no longer be",
                    )
                )
                or Done()
            )
        return Done()

    if order.status == "cancelled" or _emptied(order, psp):
        # Goods that left the warehouse are charged before the rest is let go: to charge
        # nothing for them the shop marks them returned. An emptied basket is not an
        # authorization of 0: the PSP is told to let go.
        if psp.open_for_changes or psp.status is PspStatus.CANCELLED:
            decision = _capture_step(order, psp, ledger, view.refused_amount, last=True)
            if isinstance(decision, Plan | Settle):
                return decision
            if isinstance(decision, Flag):
                return _refund_first(order, psp, ledger, decision)
            # A Wait: what still ships was never authorized (a refused increase); what
            # fitted is captured, the rest is let go.
        if psp.status is PspStatus.AUTHORIZED and psp.captured == 0:
            return Plan(Kind.CANCEL, 0)
        if psp.status is PspStatus.PART_CAPTURED and psp.authorized > psp.captured:
            return Plan(Kind.RELEASE_AUTHORIZATION, psp.authorized - psp.captured)
    elif _let_go(view) and order.total > psp.captured:
        # Reopened after the PSP cancelled or released the authorization: nothing is left
        # to charge the rest to; the shop must take a new payment.
        return _refund_first(order, psp, ledger, _new_payment(view, ledger))
    else:
        decision = _authorization_step(view, increase_allowed)
        if decision is not None:
            if isinstance(decision, Plan):
                return decision
            # A flag about the authorization never holds a refund up either.
            return _refund_first(order, psp, ledger, decision)
        decision = _capture_step(order, psp, ledger, view.refused_amount)
        if decision is not None:
            if isinstance(decision, Plan | Settle):
                return decision
            # A capture that cannot be made never holds a refund up.
            return _refund_first(order, psp, ledger, decision)
        if _expires_soon(view) and (_unshipped(order) or _fee_to_charge(order, ledger)):
            # A refund never waits (contract §4.3): an extension that fails halts the
            # order, and returned goods must be paid back whatever becomes of the
            # authorization.
            return _refund_step(order, psp, ledger) or Plan(Kind.EXTEND_AUTHORIZATION, 0)

    refund = _refund_step(order, psp, ledger)
    if refund is not None:
        return refund
    gap = _capture_gap(order, psp, ledger)
    if gap is not None:
        return view.advise(gap) or Done()
    return Done()


def _new_payment(view: OrderView, ledger: Ledger) -> Flag | Wait:
    """Reopened after the PSP cancelled or released the authorization (contract §4: "a
    later open snapshot flags needs_new_order ... and tells the shop"): the flag, or
    once the shop was told of this total, a wait for its new payment."""
    order, psp = view.order, view.psp
    if _cancelled_outside_since(view):
        # Cancelled without the service while the shop's order stood as it is now:
        # that is an external change for a person (flagged when learnt); §4 asks
        # for a new payment only of "a later open snapshot".
        return Wait("cancelled_outside")
    told = view.refused_amount == order.total
    if told or (NEEDS_NEW_ORDER in view.flags and view.refused_amount is None):
        return Wait("needs_new_order")
    basket = tuple(basket_lines(order))
    return Flag(
        NEEDS_NEW_ORDER,
        "authorization_cancelled",
        f"the PSP authorization was {'cancelled' if psp.captured == 0 else 'released'}; "
        "the reopened order needs a new payment",
        lines=unauthorized_lines(basket, _captured_basket(ledger)),
        refused_amount=order.total,
    )


def _refund_first(
    order: OrderSnapshot, psp: PspState, ledger: Ledger, decision: Decision
) -> Decision:
    """Contract §4 step 3: "a refund never waits behind a capture that cannot be made",
    nor behind an authorization that cannot follow: a refund to send goes before
    `decision`. A refund that cannot be made either (its own flag, which halts) never
    hides the new payment the shop must be asked for (§4: needs_new_order "tells the
    shop"): that flag goes first, and once the shop is told (the planner then waits on
    it, or no longer asks) the refund's flag follows on the next plan. Flagged first,
    the refund's flag came back after every operator's reconcile and the shop was never
    told."""
    refund = _refund_step(order, psp, ledger)
    if isinstance(refund, Flag) and isinstance(decision, Flag) and decision.flag == NEEDS_NEW_ORDER:
        return decision
    return refund or decision


def _refund_step(order: OrderSnapshot, psp: PspState, ledger: Ledger) -> Plan | Flag | None:
    """A refund of the newly returned units, at what they were captured at, with a
    price cut on captured units that no capture is left to give back (surplus_refund_lines):
    one PSP call when both are due. A line whose units this refund gives back at their
    captured price has no cut left to refund."""
    lines = refund_lines(order, ledger)
    if lines_total(lines) <= 0:
        lines = []
    returned = {x.reference for x in lines if x.type not in SHARE_TYPES}
    lines += [
        x
        for x in surplus_refund_lines(order, ledger, returned, _refunded_unnamed(psp, ledger))
        if x.reference.removesuffix(CUT_SUFFIX) not in returned
    ]
    amount = lines_total(lines)
    if not lines or amount <= 0:
        return None
    if amount > psp.captured - psp.refunded:
        return Flag(
            NEEDS_ATTENTION,
            "refund_exceeds_captured",
            f"a refund of {amount} exceeds what is captured and not refunded",
        )
    return Plan(Kind.REFUND, amount, tuple(lines))


def _attribution(
    order: OrderSnapshot, ledger: Ledger, history: Sequence[PastOperation]
) -> Attribute | None:
    """A capture or refund made without the service whose lines the PSP did not give
    (an Adyen notification, a chargeback, a read without lines) is tied to units once the
    shop's snapshot explains it: the units the shop marks returned and not yet refunded
    (all of them, or some units of one line) come to exactly a refund's amount; for a
    capture, the units it marks shipped and not yet captured (all of them, or some
    units of one line) come to its amount.

    A capture is valued at the prices the units had when the service learnt of it (the
    snapshot stored then, `PastOperation.basis`), never at a price the shop set later:
    the money moved for what the goods were worth at that moment, and a refund of those
    units gives back what they were captured at (contract §4), not what the shop asks
    for them now. A price edit after the money moved can make today's value of some
    shipped units equal its amount by chance (units worth 0 then, 50 each now), and
    tying it to them would have the service refund money nobody paid for those units.
    Units that did not exist then are never tied to it. Money with no known basis, or
    that matches no units at those prices, stays unnamed: counted in the order's figures
    and never moved again, the order flagged `external_change` when it was learnt, so a
    person decides what it paid for; nothing is guessed.

    A refund is valued at the captured prices the ledger keeps, which a later price edit
    does not change, so today's snapshot values it as well as any other.
    """
    captures = [
        (op, _priced_then(order, op.basis))
        for op in history
        if _unnamed(op, Kind.CAPTURE) and op.basis is not None and op.amount > 0
    ]
    for op, then in captures:
        lines = _of_value(capture_lines(then, ledger, give_back=False))
        if lines and lines_total(lines) == op.amount:
            return Attribute(str(op.reference), tuple(lines))
    lines = refund_lines(order, ledger)
    if lines and lines_total(lines) > 0:
        for op in history:
            if _unnamed(op, Kind.REFUND) and op.amount == lines_total(lines):
                return Attribute(str(op.reference), tuple(lines))
    for op, then in captures:
        part = _shipped_part(then, ledger, op.amount)
        if part:
            return Attribute(str(op.reference), part)
    for op in history:
        if _unnamed(op, Kind.REFUND) and op.amount > 0:
            part = _returned_part(order, ledger, op.amount)
            if part:
                return Attribute(str(op.reference), part)
    # A unit held at a fraction of a cent (its share of the order-level lines) that a
    # person gave back in a portal was rounded by them, not by the service's cumulative
    # rounding: within a cent a unit of the returned units' captured value, the refund
    # is theirs (never made a second time, contract §4). Only after no exact match.
    for op in history:
        if _unnamed(op, Kind.REFUND) and op.amount > 0:
            near = _rounded(lines, op.amount) if lines else None
            near = near or _returned_part(order, ledger, op.amount, rounded=True)
            if near:
                return Attribute(str(op.reference), near)
    return None


def _of_value(lines: Sequence[PspLine]) -> list[PspLine]:
    """The lines of a capture request that money moved without the service can stand
    for: units worth nothing are no part of it (no capture of 0 is ever sent, and the
    PSP's ledger never shows them), so they are never tied to it; nor is a fee priced 0
    that a first capture of the service would carry (README "Fees": a first capture made
    outside carries no fee)."""
    return [x for x in lines if x.total_amount or x.type in SHARE_TYPES]


def _unnamed(op: PastOperation, kind: Kind) -> bool:
    """Money of `kind` that moved without the service and is not yet tied to units."""
    return (
        op.external
        and op.kind is kind
        and not op.lines
        and op.status == "succeeded"
        and op.reference is not None
    )


def _priced_then(order: OrderSnapshot, basis: OrderSnapshot) -> OrderSnapshot:
    """The order as it was priced in `basis` (unit prices, tax rates, discounts, the
    order-level lines and amount), with the units the shop marks shipped now: for each
    line `basis` knew, now's shipped quantity up to its quantity then; a line added
    since is not in it."""
    shipped = {line.id: line.shipped_quantity for line in order.lines}
    return basis.model_copy(
        update={
            "lines": [
                _with_shipped(line, min(shipped.get(line.id, 0), line.quantity))
                for line in basis.lines
            ]
        }
    )


def _shipped_part(order: OrderSnapshot, ledger: Ledger, amount: int) -> tuple[PspLine, ...]:
    """Units of one line the shop marks shipped and no capture has taken whose value
    (alone, with the shares a capture of them carries, or at their price without a
    price edit left to them) comes to `amount`: a capture made without the service of
    part of a shipment. Counted as those units, they are never captured a second time
    (contract §4, money that moved without the service).
    `order` is priced as when the money moved (_priced_then)."""
    for line in order.effective_lines:
        if line.shared or line.is_fee:
            continue
        held = _captured_qty(ledger, line.id)
        for units in range(1, shipped_quantity(order, line) - held + 1):
            alone = [
                _with_shipped(other, _captured_qty(ledger, other.id))
                if other.id != line.id
                else _with_shipped(other, held + units)
                for other in order.lines
            ]
            found = _worth(
                amount,
                line.id,
                _of_value(
                    capture_lines(
                        order.model_copy(update={"lines": alone}), ledger, give_back=False
                    )
                ),
            )
            if found is not None:
                return found
            if amount == share(line.total, units, line.quantity) and line.total > 0:
                # The units at their price alone (contract §4: money moved outside is
                # counted, never made a second time). A price edit the earlier captures
                # did not carry rides with the units still to capture (README "Ledger
                # model"); money moved outside never carries it, so it stays owed
                # (captured by a later capture, or told: _capture_gap).
                return (line_part(line, units, amount),)
    return ()


def _returned_part(
    order: OrderSnapshot, ledger: Ledger, amount: int, *, rounded: bool = False
) -> tuple[PspLine, ...]:
    """Units of one line the shop marks returned and no refund has given back whose
    captured value (alone, or with the shares their captures carried) comes to `amount`:
    a refund made without the service of part of a return. Counted as those units, they
    are never refunded a second time (contract §4: never more than was captured for
    them). `rounded`: their value with the shares, rounded otherwise (_rounded)."""
    for line in order.effective_lines:
        if line.shared:
            continue
        done = _refunded_qty(ledger, line.id)
        for units in range(
            1, min(line.returned_quantity, _captured_qty(ledger, line.id)) - done + 1
        ):
            alone = [
                other.model_copy(update={"returned_quantity": _refunded_qty(ledger, other.id)})
                if other.id != line.id
                else other.model_copy(update={"returned_quantity": done + units})
                for other in order.lines
            ]
            request = refund_lines(order.model_copy(update={"lines": alone}), ledger)
            found = _rounded(request, amount) if rounded else _worth(amount, line.id, request)
            if found:
                return found
    return ()


def _rounded(request: Sequence[PspLine], amount: int) -> tuple[PspLine, ...] | None:
    """A refund of returned units (`request`, at what they were captured at) as money
    moved without the service for `amount`: the same units when `amount` is their
    value rounded otherwise, a cent a unit at most. Its last product line takes the
    difference, so the lines sum to what moved and the units still held keep the rest
    (the last one back takes exactly what is left)."""
    products = [i for i, x in enumerate(request) if x.type not in SHARE_TYPES]
    if not products:
        return None
    diff = amount - lines_total(request)
    if abs(diff) > sum(request[i].quantity for i in products):
        return None
    index = products[-1]
    line = request[index]
    total = line.total_amount + diff
    if total < 0:
        return None
    unit_price = max(line.unit_price, -(-total // line.quantity))
    adjusted = replace(
        line,
        unit_price=unit_price,
        total_amount=total,
        total_discount_amount=line.quantity * unit_price - total,
        total_tax_amount=tax_of(total, line.tax_rate),
    )
    return (*request[:index], adjusted, *request[index + 1 :])


def _worth(amount: int, line_id: str, request: list[PspLine]) -> tuple[PspLine, ...] | None:
    """What money moved without the service stands for, if these units explain it: the
    request for them with the shares it carries, or the line's own units alone."""
    if lines_total(request) == amount:
        return tuple(request)
    own = tuple(x for x in request if x.reference == line_id)
    return own if lines_total(own) == amount else None


def _refunded_qty(ledger: Ledger, line_id: str) -> int:
    entry = ledger.get(line_id)
    return entry.refunded_quantity if entry else 0


def _with_shipped(line: Line, shipped: int) -> Line:
    """The line as if the shop had marked only `shipped` of it shipped, none returned."""
    return line.model_copy(update={"shipped_quantity": shipped, "returned_quantity": 0})


def _let_go(view: OrderView) -> bool:
    """The PSP cancelled the authorization, or released what was left of it."""
    if view.psp.status is PspStatus.CANCELLED:
        return True
    return (
        any(
            op.kind in (Kind.CANCEL, Kind.RELEASE_AUTHORIZATION) and op.status == "succeeded"
            for op in view.history
        )
        and view.psp.authorized <= view.psp.captured
    )


def _cancelled_outside_since(view: OrderView) -> bool:
    """The PSP let go without the service (no cancel or release of ours succeeded),
    and the shop has sent nothing since the service learnt of it."""
    ours = any(
        op.kind in (Kind.CANCEL, Kind.RELEASE_AUTHORIZATION)
        and op.status == "succeeded"
        and not op.external
        for op in view.history
    )
    learnt = [
        op.version
        for op in view.history
        if op.kind is Kind.CANCEL and op.external and op.status == "succeeded"
    ]
    return (
        not ours and bool(learnt) and all(v is not None and v >= view.order.version for v in learnt)
    )


def _captured_basket(ledger: Ledger) -> tuple[PspLine, ...]:
    return tuple(
        replace(entry.captured_line, quantity=entry.held_quantity)
        for entry in ledger.values()
        if entry.captured_line is not None
    )


def explained_lines(
    order: OrderSnapshot, history: Sequence[PastOperation], kind: Kind, amount: int
) -> tuple[PspLine, ...] | None:
    """The lines of a capture or refund made without the service, if the shop's snapshot
    already explains it: exactly what it has marked shipped (returned) and not yet
    captured (refunded) comes to that amount. None when it does not (contract §4: then
    the order is flagged `external_change`)."""
    ledger = ledger_from((op.kind.value, op.lines) for op in history if op.status == "succeeded")
    if kind is Kind.CAPTURE:
        lines = capture_lines(order, ledger, give_back=False)
    elif kind is Kind.REFUND:
        lines = refund_lines(order, ledger)
    else:
        return None
    return tuple(lines) if lines and lines_total(lines) == amount else None


def _emptied(order: OrderSnapshot, psp: PspState) -> bool:
    """Nothing left to pay for in an open order: every product removed (or all of it
    discounted away)."""
    return psp.open_for_changes and order.total == 0


def _capture_gap(order: OrderSnapshot, psp: PspState, ledger: Ledger) -> Flag | None:
    """The captures cannot add up to the total any more: everything is captured for
    another sum, or more is held than the order is worth.

    The remaining captures carry a discount or price edit made after a capture; with
    none left (or a price lowered below what was captured) the PSP cannot follow, and
    a person is told the figures rather than anything being charged or refunded that
    the captured prices do not say.
    """
    if order.status == "cancelled":
        # Money the PSP refunded that no refund's lines name (a portal refund listed
        # without lines, an unattributed Adyen REFUND, a chargeback).
        return _ended_above(ledger, order, unnamed_back=_refunded_unnamed(psp, ledger))
    if order.status != "open" or psp.status not in (PspStatus.PART_CAPTURED, PspStatus.CAPTURED):
        return None
    # A price cut refunded whole (surplus_refund_lines) is what the captures took less.
    captured = captured_total(ledger) - sum(entry.given_back for entry in ledger.values())
    held = captured - sum(entry.refunded_amount for entry in ledger.values())
    if captured > order.total:
        # Captured beyond the total (a price or discount edit after a capture, a basket
        # emptied): captures only add, so they can never come to the total again.
        direction = "above"
    elif captured != order.total and all_units_captured(order, ledger):
        direction = "below"
    else:
        return None
    return Flag(
        NEEDS_ATTENTION,
        f"captured_{direction}_total",
        f"captured {captured} (refunded {captured - held}) against the order's total "
        f"{order.total} ({order.total - captured:+d}); the PSP cannot follow with a capture",
    )


def _ended_above(ledger: Ledger, order: OrderSnapshot, *, unnamed_back: int = 0) -> Flag | None:
    """A cancelled order whose units still held were captured for more than they are
    worth now (a price cut after their capture that no capture was left to give back):
    the customer keeps paying the old price. §4 names no refund for it, so the release
    goes on and a person is told the figures (advisory, once).

    Each line's held units against their part of its value now, exactly: a line whose
    units went in several captures is off by less than a cent, which is no cut. What
    they hold is what they cost the customer: their share of a discount or store credit
    counts (a refund made outside names the units' price only, its share unsplit), so
    a unit held below its price now is never told as captured above it (seeds 54516,
    55512); a cut smaller than the unit's share goes untold (advisory, the safe side).
    A sales-tax share is no price: it never counts above (seed 55478).

    `unnamed_back`: money the PSP refunded without naming units. It may have been these
    very units' (seed 59160: the one unit captured, cut since, refunded in the portal;
    the PSP holds nothing): an over-charge is told only beyond it, and the refund itself
    was told as an external change when learnt.
    """
    held_money = 0
    worth = Fraction(0)
    for line in order.effective_lines:
        entry = ledger.get(line.id)
        if line.shared or entry is None or line.quantity <= 0:
            continue
        units = entry.held_quantity
        if units <= 0:
            continue
        money = entry.held_value + min(entry.held_share - entry.held_tax_share, 0)
        money += entry.held_correction
        now = Fraction(line.total * min(units, line.quantity), line.quantity)
        if money - now >= 1:
            held_money += money
            worth += now
    if not held_money:
        return None
    value = round(worth)
    if held_money - value - unnamed_back < 1:
        return None
    return Flag(
        NEEDS_ATTENTION,
        "captured_above_total",
        f"captured {held_money} for goods now worth {value} ({value - held_money:+d}); "
        "the order is cancelled: no capture is left to give the difference back, and "
        "nothing is refunded that the captured prices do not say",
    )


def _authorization_step(
    view: OrderView, increase_allowed: Callable[[str | None, str | None], bool]
) -> Decision | None:
    order, psp = view.order, view.psp
    target = order.total
    fully_captured = psp.captured >= psp.authorized
    basket = tuple(basket_lines(order))
    # The PSP's purchase country decides (the shop's snapshot may say otherwise).
    country = psp.country or order.country
    grown = target > psp.authorized and target != view.refused_amount
    if grown and fully_captured and _uncaptured_units(view):
        # Step 1 updates only an authorization not fully captured: one fully captured
        # can no more be raised than one the PSP refuses to raise, and the shop must be
        # told to take a new payment for the units added (contract §4, a refused
        # increase). A higher total over units all captured (a discount dropped, a
        # price raised) is a gap the captures cannot follow: _capture_gap.
        return Flag(
            NEEDS_NEW_ORDER,
            "authorization_fully_captured",
            f"the authorization of {psp.authorized} is fully captured and cannot be "
            f"raised to {target}; ask the customer for a new order",
            lines=unauthorized_lines(basket, psp.authorized_lines),
            refused_amount=target,
        )
    if grown and not increase_allowed(psp.payment_method, country):
        return Flag(
            NEEDS_NEW_ORDER,
            "increase_not_allowed",
            f"{psp.payment_method or 'this payment method'} in {country} "
            "cannot be increased; ask the customer for a new order",
            lines=unauthorized_lines(basket, psp.authorized_lines),
            refused_amount=target,
        )
    if fully_captured or not psp.open_for_changes:
        return None
    if target == psp.authorized:
        # Lines are part of the state: the same total with other lines is sent too
        # (Klarna: "supplied order lines will replace the existing order lines").
        if not psp.authorized_lines or same_lines(basket, psp.authorized_lines):
            return None
        return Plan(Kind.UPDATE_AUTHORIZATION, target, basket)
    if target == view.refused_amount:
        return None  # refused once for this very total: the shop must ask for a new order
    if target < psp.captured:
        # Told once; then what ships is still captured and what returns refunded.
        return view.advise(
            Flag(
                NEEDS_ATTENTION,
                "amount_below_captured",
                f"the new total {target} is below the captured {psp.captured}",
            )
        )
    return Plan(Kind.UPDATE_AUTHORIZATION, target, basket)


def _capture_step(
    order: OrderSnapshot,
    psp: PspState,
    ledger: Ledger,
    refused_amount: int | None,
    *,
    last: bool = False,
) -> Decision | None:
    """`last`: the capture before a cancel or release, after which nothing else is
    charged."""
    back = _refunded_unnamed(psp, ledger)
    lines = capture_lines(order, ledger, refunded_unnamed=back)
    if not lines:
        return None
    if lines_total(lines) == 0 and (
        (
            any(_is_correction_of(ledger, x) for x in lines)
            and any(x.total_amount > 0 for x in lines if x.type not in SHARE_TYPES)
        )
        or any(_carries_its_own_cut(order, ledger, x) for x in lines)
    ):
        # A price cut given back takes the whole capture: the money is held already.
        if psp.captured >= psp.authorized:
            fees = {line.id for line in order.effective_lines if line.is_fee}
            own = [
                x
                for x in lines
                if _is_correction_of(ledger, x)
                or (x.type not in SHARE_TYPES and x.reference not in fees)
            ]
            if own and len(own) < len(lines) and lines_total(own) == 0:
                # README "Ledger model": fees the order-level shares take whole are
                # settled at 0 only while the authorization holds money ("open: not
                # captured whole"); captured whole, the goods carrying a cut are
                # settled alone.
                return Settle(tuple(own))
        return Settle(tuple(lines))
    cancelled = psp.status is PspStatus.CANCELLED
    if cancelled and lines_total(lines) <= 0:
        return None
    # With the authorization cancelled the capture is still weighed against what it
    # held: goods it could not have charged either (a refused increase) were let go
    # with it by the rule below, not lost to the cancel.
    remaining = psp.authorized - psp.captured
    fully_captured = remaining <= 0
    amount = wanted = lines_total(lines)
    unshipped_fees = {line.id for line in order.effective_lines if line.is_fee}
    unshipped_fees -= {line.id for line in order.effective_lines if line.shipped_quantity}
    if amount > remaining and all(
        x.reference in unshipped_fees for x in lines if x.type not in SHARE_TYPES
    ):
        # Fees going alone (README "Fees": their first capture was made outside) that
        # the authorization cannot hold wait, as a fee riding with goods would.
        return None
    unnamed = max(psp.captured - captured_total(ledger), 0)
    if amount > remaining and unnamed > 0:
        # Money captured outside without named lines paid for goods at their value
        # alone: the shares it did not carry fall to what is still captured here, so
        # the captures still come to the order's total (contract §4).
        lines = capture_lines(order, ledger, paid_unnamed=unnamed, refunded_unnamed=back)
        amount = lines_total(lines)
    if amount <= 0 and any(x.total_amount > 0 for x in lines if x.type not in SHARE_TYPES):
        # §4: the shares make "the captures add up to the order's total". Goods captured
        # outside carried none, and priced up since, the shares left can outweigh the
        # open goods and take a shipped unit's whole value: nothing would be sent and
        # the unit never captured. The open goods take what is still due instead.
        spread = _spread_due(order, ledger, unnamed, back)
        if spread:
            lines, amount = spread, lines_total(spread)
        elif amount == 0 and psp.open_for_changes and not fully_captured:
            # A shipped unit is never left uncounted: the last goods to ship carry every
            # share left (§4: the shares "add up to the discount line's total once
            # everything has shipped"), and when they, with what is still owed, take the
            # units' whole value, the units are settled at 0 (no PSP call) like goods a
            # cut takes whole. What stays owed stays owed: a refused increase told it,
            # _capture_gap tells the rest (seed 62851). Only on an authorization that
            # holds money: one captured whole or let go takes no capture, not even one
            # of 0 (seed 63), nor does an Adyen payment whose AUTHORISATION was refused
            # (closed when learnt, workers/adyen_inbox.py). Captured whole is read from
            # the figures, not the status alone: a payment still `part_captured` whose
            # captures reached what it authorizes holds no money either (README
            # "Ledger model": "open: not captured whole").
            return Settle(tuple(lines))
    if amount > remaining and last:
        # §4 step 4 charges every shipped line before letting go. Shared over a basket
        # grown by lines never authorized (an increase not made or refused), the
        # shipped goods' discount share shrinks and their capture can pass the
        # authorization they were made within; being the last capture, they take
        # what they need of the order-level lines' remainder to fit it.
        fitted = _fit_shares(order, ledger, remaining, unnamed, back)
        if fitted:
            lines, amount = fitted, lines_total(fitted)
    if amount > remaining:
        lines = _fit_capture(order, ledger, remaining, back)
        amount = lines_total(lines)
        if amount <= 0:  # only what is worth nothing fits: the rest must not go unflagged
            if refused_amount is not None:
                # Expected after a refused increase: the extra lines were never authorized
                # (the shop was asked for a new order for them); a cancel or release
                # lets them go with the rest, and once it has, nothing is left to do.
                return Wait("shipped_lines_not_authorized")
            if cancelled:
                return _cancelled_flag(wanted)
            return Flag(
                NEEDS_ATTENTION,
                "capture_exceeds_authorization",
                f"the shipped lines ({wanted}) exceed the remaining authorization "
                f"{remaining} (authorized {psp.authorized}, captured {psp.captured})",
            )
    if cancelled:
        return _cancelled_flag(wanted)
    if amount <= 0:
        return None
    return Plan(Kind.CAPTURE, amount, tuple(lines))


def _refunded_unnamed(psp: PspState, ledger: Ledger) -> int:
    """Money the PSP refunded that no refund's lines name (a portal refund listed without
    lines, an unattributed Adyen REFUND, a chargeback): it may have been any held
    units', so a price cut is given back only beyond it (_price_corrections)."""
    named = sum(entry.refunded_amount + entry.refunded_correction for entry in ledger.values())
    return max(psp.refunded - named, 0)


def _cancelled_flag(amount: int) -> Flag:
    """Step 4 charges goods that left the warehouse before letting go; with the
    authorization cancelled (outside, or before they shipped) nothing can charge them,
    and the PSP refuses a capture: a person is told, nothing is sent."""
    return Flag(
        NEEDS_ATTENTION,
        "psp_order_cancelled",
        f"goods marked shipped ({amount}) cannot be captured: the PSP authorization is cancelled",
    )


def _fit_shares(
    order: OrderSnapshot, ledger: Ledger, remaining: int, paid_unnamed: int, back: int = 0
) -> list[PspLine]:
    """Every shipped line, its order-level shares taken over the least open value that
    brings the capture within `remaining` (capture_lines' `unshared`); empty when even
    all of the shares left do not. Each candidate is a whole capture_lines result, so
    its lines sum to its amount."""

    def fits(unshared: int) -> list[PspLine]:
        lines = capture_lines(
            order, ledger, paid_unnamed=paid_unnamed, unshared=unshared, refunded_unnamed=back
        )
        return lines if lines_total(lines) <= remaining else []

    return _least(fits, sum(abs(line.total) for line in order.lines))


def _least(fits: Callable[[int], list[PspLine]], high: int) -> list[PspLine]:
    """What `fits` gives for the least value in 0..high it gives lines for, found by
    halving (a value that fits, every larger one fits too); empty when `high` does not."""
    low, best = 0, fits(high)
    if not best:
        return []
    # fits(high) holds throughout.
    while high - low > 1:
        middle = (low + high) // 2
        candidate = fits(middle)
        if candidate:
            high, best = middle, candidate
        else:
            low = middle
    return best


def _spread_due(
    order: OrderSnapshot, ledger: Ledger, paid_unnamed: int, back: int = 0
) -> list[PspLine]:
    """This capture's goods with their part, by value among the goods still open, of
    what the order still owes (its total less what the captures hold): the order-level
    lines' shares taken over that much more open value (capture_lines' `unshared`,
    negative) that the capture comes to at least its part. Empty when nothing is owed
    or the goods alone do not reach it."""
    held = captured_total(ledger) - sum(entry.given_back for entry in ledger.values())
    due = order.total - held - paid_unnamed
    everything = order.model_copy(
        update={
            "lines": [
                line if line.shared else _with_shipped(line, line.quantity) for line in order.lines
            ]
        }
    )
    whole = capture_lines(everything, ledger, paid_unnamed=paid_unnamed, refunded_unnamed=back)
    lines = capture_lines(order, ledger, paid_unnamed=paid_unnamed, refunded_unnamed=back)
    goods = sum(x.total_amount for x in whole if x.type not in SHARE_TYPES)
    this = sum(x.total_amount for x in lines if x.type not in SHARE_TYPES)
    if due <= 0 or not 0 < this <= goods:
        return []
    part = share(due, this, goods)
    if part >= this:
        return []

    def fits(extra: int) -> list[PspLine]:
        found = capture_lines(
            order, ledger, paid_unnamed=paid_unnamed, unshared=-extra, refunded_unnamed=back
        )
        return found if lines_total(found) >= part else []

    return _least(fits, sum(abs(line.total) for line in order.lines) * max(this, 1))


def _fit_capture(
    order: OrderSnapshot, ledger: Ledger, remaining: int, back: int = 0
) -> list[PspLine]:
    """The largest prefix of what this capture would carry that fits the remaining
    authorization.

    Lines are dropped from the end (where a shop appends what it adds), and each
    candidate is recomputed whole so its discount shares stay exact. A fee riding with
    the goods (§4, charged with the first capture) is one of those lines: when it does
    not fit (a surcharge whose increase was refused) it waits, and the goods that fit
    are still captured.
    """
    carried = {part.reference for part in capture_lines(order, ledger, refunded_unnamed=back)}
    dropping = [
        line
        for line in order.effective_lines
        if not line.shared
        and (
            shipped_quantity(order, line) > _captured_qty(ledger, line.id)
            or (line.is_fee and line.id in carried)
        )
    ]
    held: set[str] = set()
    while dropping:
        dropped = dropping.pop()
        if dropped.is_fee:
            held.add(dropped.id)
        else:
            lines = list(order.lines)
            index = next(i for i, line in enumerate(lines) if line.id == dropped.id)
            lines[index] = _with_shipped(dropped, _captured_qty(ledger, dropped.id))
            order = order.model_copy(update={"lines": lines})
        candidate = capture_lines(order, ledger, held=held, refunded_unnamed=back)
        if candidate and lines_total(candidate) <= remaining:
            return candidate
    return []


def _expires_soon(view: OrderView) -> bool:
    expires_at = view.psp.expires_at
    if expires_at is None or view.now is None or view.extend_within is None:
        return False
    return view.psp.open_for_changes and expires_at - view.now <= view.extend_within


def _unshipped(order: OrderSnapshot) -> bool:
    return any(
        shipped_quantity(order, line) < line.quantity
        for line in order.lines
        if not line.shared and not line.is_fee and line.total > 0
    )


def _fee_to_charge(order: OrderSnapshot, ledger: Ledger) -> bool:
    """A fee of value no capture has charged yet: the authorization still holds it (README
    "Fees"), so it is kept alive for it as for goods unshipped."""
    return any(
        _captured_qty(ledger, line.id) < line.quantity
        for line in order.lines
        if line.is_fee and line.total > 0
    )


def _uncharged(order: OrderSnapshot, ledger: Ledger) -> bool:
    """Goods of value not shipped yet and not captured either: units captured and then
    marked unshipped again (a reversal) are nothing left to charge."""
    return any(
        shipped_quantity(order, line) < line.quantity
        and _captured_qty(ledger, line.id) < line.quantity
        for line in order.lines
        if not line.shared and not line.is_fee and line.total > 0
    )


def _uncaptured_units(view: OrderView) -> bool:
    """Units of the basket (goods or fees, not shares) that no capture has charged."""
    ledger = ledger_from(
        (op.kind.value, op.lines) for op in view.history if op.status == "succeeded"
    )
    return any(
        line.quantity > _captured_qty(ledger, line.id)
        for line in view.order.effective_lines
        if not line.shared
    )


def _captured_qty(ledger: Ledger, line_id: str) -> int:
    entry = ledger.get(line_id)
    return entry.captured_quantity if entry else 0


def _has_work(order: OrderSnapshot, ledger: Ledger) -> bool:
    """Something left to charge: a capture worth more than nothing. One the order-level
    shares take whole (a fee added after the captures, a discount still to share) would
    charge nothing, so an authorization that ended took nothing the shop still asks for
    (contract §4: an expiry is flagged "where the shop's snapshot does not already
    explain it"; seed 90797)."""
    return lines_total(capture_lines(order, ledger)) > 0


def unauthorized_lines(
    basket: Sequence[PspLine], authorized: Sequence[PspLine]
) -> tuple[PspLine, ...]:
    """The lines of `basket` beyond what was authorized: new lines, or more units."""
    before = {line.reference: line.quantity for line in authorized}
    if not before:
        return tuple(line for line in basket if line.total_amount > 0)
    return tuple(
        line
        for line in basket
        if line.total_amount > 0 and line.quantity > before.get(line.reference, 0)
    )
