"""Two money rules (README "Ledger model" and "Fees"), pure.

A price cut on units already captured is given back by the order's next capture (a
negative `discount` line with the line's reference), so the captures add up to the
basket the authorization follows; and a fee due "with the order's first capture" whose
first capture was made outside the service goes alone once no capture of goods is left
to carry it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.lines import (
    CUT_SUFFIX,
    PspLine,
    capture_lines,
    captured_total,
    ledger_from,
    lines_total,
    refund_lines,
)
from domain.planner import (
    Done,
    Flag,
    Kind,
    OrderView,
    PastOperation,
    Plan,
    PspState,
    PspStatus,
    Settle,
    plan_next,
)
from domain.snapshot import UNITEMISED_DISCOUNT_ID, LineType
from tests.domain.builders import allow_all, order


def line(
    id_: str, quantity: int, price: int, shipped: int = 0, returned: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "id": id_,
        "name": id_.upper(),
        "quantity": quantity,
        "unit_price": price,
        "tax_rate": 2000,
        "shipped_quantity": shipped,
        "returned_quantity": returned,
        **extra,
    }


def unit(reference: str, quantity: int, total: int, rate: int = 2000) -> PspLine:
    return PspLine(reference, reference.upper(), LineType.PHYSICAL, quantity, 0, rate, total, 0, 0)


def captured(*lines: PspLine, external: bool = False) -> PastOperation:
    return PastOperation(
        Kind.CAPTURE, "succeeded", lines_total(lines), tuple(lines), external=external
    )


def psp(authorized: int, captured: int, status: PspStatus = PspStatus.PART_CAPTURED) -> PspState:
    return PspState(status, authorized, captured, 0, "INVOICE", "DE")


# -- a price cut on units already captured (seeds 44798, 41380) -------------------------


def test_a_price_cut_on_captured_units_is_given_back_by_the_next_capture() -> None:
    """Seed 44798: a unit of l1 captured at 100 (before the first read), l1 priced to 0,
    the authorization follows the basket (6111); l2 ships. The capture gives the 100
    back (6111 − 100 = 6011, what the authorization still holds), so the customer pays
    exactly the basket, and the captures add up to it."""
    history = (captured(unit("l1", 1, 100), external=True),)
    now = order([line("l1", 2, 0, shipped=2), line("l2", 3, 2037, shipped=3)])
    decision = plan_next(OrderView(now, psp(6111, 100), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert decision.amount == 6011 == lines_total(decision.lines)
    cut = [x for x in decision.lines if x.type is LineType.DISCOUNT]
    assert [(x.reference, x.total_amount, x.tax_rate) for x in cut] == [("l1", -100, 2000)]
    ledger = ledger_from([("capture", op.lines) for op in history] + [("capture", decision.lines)])
    assert captured_total(ledger) == 6111 == now.total
    # Units counted as the goods they are: l1 2, l2 3 (the correction is no unit).
    assert ledger["l1"].captured_quantity == 2 and ledger["l2"].captured_quantity == 3


def test_a_price_cut_given_back_is_no_longer_refunded_with_the_units() -> None:
    """Refunds at the captured price: l1's unit was captured at 100 and its cut to 0
    given back since, so returning it gives back nothing more; returning l2's units
    gives back what they were captured at (2037 each), not a share of l1's cut."""
    first = [unit("l1", 1, 100, rate=1200)]
    now = order([line("l1", 1, 0, shipped=1), line("l2", 1, 2037, shipped=1)])
    ledger = ledger_from([("capture", first)])
    second = capture_lines(now, ledger)
    assert lines_total(second) == 1937
    # The cut goes back at the tax rate the unit was captured at.
    assert [(x.total_amount, x.tax_rate) for x in second if x.type is LineType.DISCOUNT] == [
        (-100, 1200)
    ]
    ledger = ledger_from([("capture", first), ("capture", second)])
    back = order([line("l1", 1, 0, shipped=1, returned=1), line("l2", 1, 2037, shipped=1)])
    assert lines_total(refund_lines(back, ledger)) == 0
    back = order([line("l1", 1, 0, shipped=1), line("l2", 1, 2037, shipped=1, returned=1)])
    assert lines_total(refund_lines(back, ledger)) == 2037


def test_a_price_cut_is_carried_by_the_lines_own_units_first() -> None:
    """One rule with seed 20574: the line's units still to capture carry a price edit
    made after a capture; only what they cannot carry goes back as a correction. Three
    units at 100, one captured, the price cut to 50: the last two take 150 − 100 = 50."""
    ledger = ledger_from([("capture", [unit("l1", 1, 100)])])
    lines = capture_lines(order([line("l1", 3, 50, shipped=3)]), ledger)
    assert [(x.reference, x.type, x.quantity, x.total_amount) for x in lines] == [
        ("l1", LineType.PHYSICAL, 2, 50)
    ]


def test_a_price_cut_that_takes_a_capture_whole_leaves_it_worth_nothing() -> None:
    """The correction takes no more than the capture carries, the rest waits for the
    next capture (the ledger keeps what is still to give back). A correction that takes
    all of it leaves a capture of 0: no minimum of 1 is charged (it was, before)."""
    ledger = ledger_from([("capture", [unit("l1", 1, 500)])])
    now = order([line("l1", 1, 0, shipped=1), line("l2", 1, 200, shipped=1), line("l3", 1, 900)])
    first = capture_lines(now, ledger)
    assert lines_total(first) == 0
    assert [(x.reference, x.total_amount) for x in first if x.type is LineType.DISCOUNT] == [
        ("l1", -200)
    ]
    ledger = ledger_from([("capture", [unit("l1", 1, 500)]), ("capture", first)])
    later = order(
        [line("l1", 1, 0, shipped=1), line("l2", 1, 200, shipped=1), line("l3", 1, 900, shipped=1)]
    )
    assert lines_total(capture_lines(later, ledger)) == 900 - 300


def _settled(decision: object) -> tuple[PspLine, ...]:
    assert isinstance(decision, Settle), decision
    assert lines_total(decision.lines) == 0
    return decision.lines


def test_goods_whose_capture_a_cut_takes_whole_are_settled_without_a_psp_call() -> None:
    """Seed 60683: a unit of l1 captured at 100, l1 priced to 0, the authorization
    follows the basket (198); one unit of l3 (99) ships. The cut takes its capture whole:
    the money is held already, so nothing is sent (before: a capture of 1 minor unit);
    l3's unit is recorded captured at 99 against 99 of the cut. The next l3 unit takes
    the 1 left: 98, and the captures come to the basket."""
    history: tuple[PastOperation, ...] = (captured(unit("l1", 1, 100)),)
    now = order([line("l1", 2, 0, shipped=1), line("l3", 2, 99, shipped=1)])
    lines = _settled(plan_next(OrderView(now, psp(198, 100), history=history), allow_all))
    assert [(x.reference, x.quantity, x.total_amount) for x in lines] == [
        ("l3", 1, 99),
        ("l1", 1, -99),
    ]
    history += (PastOperation(Kind.CAPTURE, "succeeded", 0, lines),)
    later = order([line("l1", 2, 0, shipped=1), line("l3", 2, 99, shipped=2)])
    decision = plan_next(OrderView(later, psp(198, 100), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert decision.amount == 98
    history += (captured(*decision.lines),)
    ledger = ledger_from((op.kind.value, op.lines) for op in history)
    assert ledger["l3"].captured_quantity == 2
    assert captured_total(ledger) == 198 == later.total
    assert plan_next(OrderView(later, psp(198, 198, PspStatus.CAPTURED), history), allow_all) == (
        Done()
    )


def test_units_whose_own_lines_price_cut_takes_their_capture_whole_are_settled() -> None:
    """Seed 64257: l1 3 × 100, one unit captured at 100, then priced to 50 and cut to two
    units, both shipped. The line is worth 100, all held: the second unit carries its
    line's cut (its own units carry a price edit first) and is worth 0 to capture, so it
    is settled against the money held, nothing sent. Before, nothing was recorded
    (Done): l1 counted one unit captured of two shipped, and returning one unit gave
    back 100, the dearer captured unit's price, for goods now 50 each."""
    history: tuple[PastOperation, ...] = (captured(unit("l1", 1, 100)),)
    now = order([line("l1", 2, 50, shipped=2)])
    lines = _settled(plan_next(OrderView(now, psp(100, 100), history=history), allow_all))
    assert [(x.reference, x.quantity, x.total_amount) for x in lines] == [("l1", 1, 0)]
    history += (PastOperation(Kind.CAPTURE, "succeeded", 0, lines),)
    assert plan_next(OrderView(now, psp(100, 100), history=history), allow_all) == Done()
    ledger = ledger_from((op.kind.value, op.lines) for op in history)
    assert ledger["l1"].captured_quantity == 2
    assert captured_total(ledger) == 100 == now.total
    back = order([line("l1", 2, 50, shipped=2, returned=1)])
    assert lines_total(refund_lines(back, ledger)) == 50


def test_the_last_goods_whose_shares_take_their_value_whole_are_settled_at_0() -> None:
    """§4: a capture carries exactly the newly shipped lines, and the order-level lines'
    shares are rounded cumulatively "so that ... the shares add up to the discount
    line's total once everything has shipped". l2 (3 × 450) was captured at 1350 with
    −71 of an unitemised discount, then priced to 750; the unitemised discount went (+71
    back), a discount −248 and a gift card −367 came; the increase was refused. l1 (450)
    ships last, so every share left falls on it: 450 − 210 − 311 + 71 = 0. What is
    still owed (806) is more than the unit is worth, so the due spread cannot help.
    Before, nothing was recorded (Done): a shipped unit of value never counted
    captured. It is settled at 0 (no PSP call); what stays owed stays owed, told by the
    refused increase (seed 62851)."""
    discount = PspLine(
        UNITEMISED_DISCOUNT_ID, "Discount", LineType.DISCOUNT, 1, -71, 2000, -71, 0, -12
    )
    history: tuple[PastOperation, ...] = (captured(unit("l2", 3, 1350), discount),)
    now = order(
        [
            line("l1", 1, 450, shipped=1),
            line("l2", 3, 750, shipped=3),
            line("l3", 1, -248, type="discount"),
            line("l4", 1, -367, type="gift_card"),
        ]
    )
    assert now.total == 2085
    view = OrderView(now, psp(1705, 1279), history=history, refused_amount=2085)
    lines = _settled(plan_next(view, allow_all))
    assert [(x.reference, x.quantity, x.total_amount) for x in lines if x.reference == "l1"] == [
        ("l1", 1, 450)
    ]
    history += (PastOperation(Kind.CAPTURE, "succeeded", 0, lines),)
    ledger = ledger_from((op.kind.value, op.lines) for op in history)
    assert ledger["l1"].captured_quantity == 1
    assert captured_total(ledger) == 1279
    after = plan_next(
        OrderView(now, psp(1705, 1279), history=history, refused_amount=2085), allow_all
    )
    assert not isinstance(after, Settle | Plan), after
    # An authorization captured whole takes no capture, not even one of 0 (seed 63).
    paid = (captured(unit("l2", 1, 450)),)
    gift = line("l3", 1, -450, type="gift_card")
    covered = order([line("l1", 1, 450, shipped=1), line("l2", 1, 450, shipped=1), gift])
    full = psp(450, 450, PspStatus.CAPTURED)
    assert plan_next(OrderView(covered, full, history=paid), allow_all) == Done()


def test_a_line_removed_after_its_capture_is_given_back_as_a_cut() -> None:
    """Seed 40889: a shipping fee captured (150) and then removed is worth 0 now, a cut
    of all it was captured for; the authorization follows the basket down, so the next
    goods shipped fit only if their capture gives it back (README "Ledger model"). The
    cut takes the unit's 110 whole: settled, nothing sent; the next unit takes the 40
    left."""
    fee = PspLine("fee", "FEE", LineType.SHIPPING_FEE, 1, 150, 2000, 150, 0, 25)
    history: tuple[PastOperation, ...] = (captured(unit("l1", 1, 110), fee),)
    now = order([line("l1", 3, 110, shipped=2)])
    lines = _settled(plan_next(OrderView(now, psp(330, 260), history=history), allow_all))
    cut = [(x.reference, x.total_amount) for x in lines if x.type is LineType.DISCOUNT]
    assert cut == [("fee", -110)]
    history += (PastOperation(Kind.CAPTURE, "succeeded", 0, lines),)
    ledger = ledger_from([(op.kind.value, op.lines) for op in history])
    assert ledger["l1"].captured_quantity == 2
    last = order([line("l1", 3, 110, shipped=3)])
    decision = plan_next(OrderView(last, psp(330, 260), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.amount == 70


def test_a_cut_no_capture_is_left_to_give_back_is_refunded() -> None:
    """Nothing left to capture: the cut the captures could not give back is refunded, a
    positive `discount` line with the cut line's reference (and CUT_SUFFIX), instead of
    the customer paying it and a person being told (captured_above_total). The units
    are then held at their price now, so a refund of them gives back no more."""
    history: tuple[PastOperation, ...] = (captured(unit("l1", 1, 100)),)
    now = order([line("l1", 1, 0, shipped=1), line("l3", 1, 99, shipped=1)])
    full = psp(100, 100, PspStatus.CAPTURED)
    lines = _settled(plan_next(OrderView(now, full, history=history), allow_all))
    history += (PastOperation(Kind.CAPTURE, "succeeded", 0, lines),)
    refund = plan_next(OrderView(now, full, history=history), allow_all)
    assert isinstance(refund, Plan) and refund.kind is Kind.REFUND, refund
    assert [(x.reference, x.type, x.total_amount) for x in refund.lines] == [
        ("l1" + CUT_SUFFIX, LineType.DISCOUNT, 1)
    ]
    history += (PastOperation(Kind.REFUND, "succeeded", 1, refund.lines),)
    refunded = PspState(PspStatus.CAPTURED, 100, 100, 1, "INVOICE", "DE")
    assert plan_next(OrderView(now, refunded, history=history), allow_all) == Done()
    ledger = ledger_from((op.kind.value, op.lines) for op in history)
    back = order([line("l1", 1, 0, shipped=1, returned=1), line("l3", 1, 99, shipped=1)])
    assert lines_total(refund_lines(back, ledger)) == 0
    back = order([line("l1", 1, 0, shipped=1), line("l3", 1, 99, shipped=1, returned=1)])
    assert lines_total(refund_lines(back, ledger)) == 99


@pytest.mark.parametrize("removed", [True, False])
def test_a_cut_line_gives_back_the_discount_share_it_carried_to_the_other_goods(
    removed: bool,
) -> None:
    """Seed 55371 (Klarna): one l1 unit captured before the first read (2599), the
    service's capture took the next with the surcharge (l1 2599, l3 150, discount −213,
    of which −12 is the surcharge's share); the surcharge then went (removed, or priced
    to 0) and the discount grew to −837; the authorization follows the basket (6960) and
    the last unit ships. The captures must add up to the basket and the discount shares
    to the discount's total (§4): the last capture takes the rest of the discount
    (−624) and gives back all 150 the surcharge was captured for: 1825, what is left.
    Before, the give-back stopped at what the surcharge's unit held (138): 1837 did not
    fit, `capture_exceeds_authorization`, the last unit never charged. The surcharge's
    −12 share now sits on the goods that carried its give-back, so no unit is held
    below 0 and returning every l1 unit gives back what the customer paid."""
    fee = PspLine("l3", "L3", LineType.SURCHARGE, 1, 150, 2000, 150, 0, 25)
    share = PspLine("l2", "L2", LineType.DISCOUNT, 1, -213, 2000, -213, 0, -36)
    history = (
        captured(unit("l1", 1, 2599), external=True),
        captured(unit("l1", 1, 2599), fee, share),
    )
    lines = [line("l1", 3, 2599, shipped=3), line("l2", 1, -837, type="discount")]
    if not removed:
        lines.append(line("l3", 1, 0, type="surcharge"))
    decision = plan_next(OrderView(order(lines), psp(6960, 5135), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert decision.amount == 1825 == lines_total(decision.lines)
    assert sorted((x.reference, x.total_amount) for x in decision.lines) == [
        ("l1", 2599),
        ("l2", -624),
        ("l3", -150),
    ]
    ledger = ledger_from([("capture", op.lines) for op in history] + [("capture", decision.lines)])
    assert captured_total(ledger) == 6960
    held = ledger["l3"]
    assert held.held_value + held.held_share + held.held_correction == 0
    assert ledger["l1"].captured_share == -837
    lines[0] = line("l1", 3, 2599, shipped=3, returned=3)
    assert lines_total(refund_lines(order(lines), ledger)) == 6960


def test_money_moved_outside_is_explained_without_a_correction() -> None:
    """A capture made outside carried no correction: its lines are matched at the goods'
    value alone (contract §4, counted, never made again)."""
    ledger = ledger_from([("capture", [unit("l1", 1, 100)])])
    now = order([line("l1", 1, 0, shipped=1), line("l2", 1, 2037, shipped=1)])
    assert lines_total(capture_lines(now, ledger, give_back=False)) == 2037


# -- a fee whose first capture was made outside (seed 41850) ----------------------------


FEE = line("fee", 1, 495, type="shipping_fee")


def test_a_fee_whose_first_capture_was_made_outside_goes_alone_once_the_goods_are_captured() -> (
    None
):
    """Seed 41850: the goods were captured in the Customer Area (tied to l3); no capture
    of goods is left to carry the fee "with the order's first capture": it goes alone."""
    history = (captured(unit("l3", 1, 99), external=True),)
    now = order([line("l3", 1, 99, shipped=1), FEE])
    decision = plan_next(OrderView(now, psp(594, 99), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert [(x.reference, x.total_amount) for x in decision.lines] == [("fee", 495)]


def test_a_cancel_after_a_first_capture_made_outside_charges_the_fee_before_it_releases() -> None:
    """§4 step 4 captures what is due before letting go; the fee was due with the order's
    first capture (made outside), so it is captured, then the rest released."""
    history = (captured(unit("l3", 1, 99), external=True),)
    now = order([line("l3", 1, 99, shipped=1), line("l2", 3, 99), FEE], status="cancelled")
    decision = plan_next(OrderView(now, psp(891, 99), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert [(x.reference, x.total_amount) for x in decision.lines] == [("fee", 495)]


def test_a_fee_waits_for_goods_still_to_ship_after_a_first_capture_made_outside() -> None:
    """With goods still to ship, the fee rides with their capture (the service's first)."""
    history = (captured(unit("l3", 1, 99), external=True),)
    now = order([line("l3", 1, 99, shipped=1), line("l2", 3, 99), FEE])
    decision = plan_next(OrderView(now, psp(891, 99), history=history), allow_all)
    assert not (isinstance(decision, Plan) and decision.kind is Kind.CAPTURE)
    shipped = order([line("l3", 1, 99, shipped=1), line("l2", 3, 99, shipped=3), FEE])
    decision = plan_next(OrderView(shipped, psp(891, 99), history=history), allow_all)
    assert isinstance(decision, Plan)
    assert sorted(x.reference for x in decision.lines) == ["fee", "l2"]


def test_a_fee_alone_the_authorization_cannot_hold_waits() -> None:
    history = (captured(unit("l3", 1, 99), external=True),)
    now = order([line("l3", 1, 99, shipped=1), FEE])
    view = OrderView(now, psp(300, 99), history=history, refused_amount=594)
    decision = plan_next(view, allow_all)  # the increase to 594 was refused
    assert not isinstance(decision, Plan)


def test_a_fee_added_after_every_unit_of_goods_was_captured_goes_alone() -> None:
    """A fee the first capture did not carry (added later) goes with the next capture of
    goods, or alone when none is left to come."""
    history = (captured(unit("l3", 1, 99)),)
    now = order([line("l3", 1, 99, shipped=1), FEE])
    decision = plan_next(OrderView(now, psp(594, 99), history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert [(x.reference, x.total_amount) for x in decision.lines] == [("fee", 495)]


def test_a_fee_goes_alone_after_a_first_capture_made_outside_of_goods_priced_to_nothing_since() -> (
    None
):
    """Seed 63106: two e-books captured before the first read (100 each), then priced to
    0. That was the order's first capture all the same (money moved for it), and no
    capture of goods is left to come: the fees go alone (README "Fees"), carrying the
    price cut back, so the captures come to the basket's 300. They waited for goods
    that never come, because the first capture was judged by the goods' price now."""
    history = (captured(unit("l1", 2, 200), external=True),)
    now = order(
        [
            line("l1", 3, 0, type="digital"),
            line("l2", 1, 150, type="shipping_fee"),
            line("l3", 1, 150, type="surcharge"),
        ]
    )
    update = plan_next(OrderView(now, psp(600, 200), history=history), allow_all)
    assert isinstance(update, Plan) and update.kind is Kind.UPDATE_AUTHORIZATION
    followed = replace(psp(update.amount, 200), authorized_lines=update.lines)
    decision = plan_next(OrderView(now, followed, history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE
    assert {"l2", "l3"} <= {x.reference for x in decision.lines}
    assert 200 + decision.amount == now.total


def test_a_price_cut_given_back_for_units_captured_outside_is_no_unit_of_the_services() -> None:
    """Seed 53311: l1's unit was captured outside (100, not marked shipped), l1 was cut
    to 50, and the service's next capture (an l3 unit) gave the 50 back as a `discount`
    line with l1's reference. That line is l1's price correction, not a unit of l1 the
    service captured: the quantities the service answers for are l3's unit only, so
    l1's shipped 0 is no reversal (quantities never go down, §4)."""
    cut = PspLine("l1", "L1", LineType.DISCOUNT, 1, -50, 2000, -50, 0, -8)
    history = (
        captured(unit("l1", 1, 100), external=True),
        captured(unit("l3", 1, 4023), cut),
    )
    now = order([line("l1", 1, 50), line("l3", 1, 4023, shipped=1)])
    view = OrderView(now, psp(4073, 4073), history=history)
    decision = plan_next(view, allow_all)
    assert not (isinstance(decision, Flag) and decision.code == "quantities_reversed"), decision


def test_a_cut_left_goes_with_a_refund_of_returns_due_anyway() -> None:
    """Everything captured (l1 at 100, l3 at 99), then l1 priced to 0 and l3 returned at
    once: one refund gives back l3 at its captured price and l1's cut (before: two PSP
    calls, the returns first). A line whose units come back has no cut refunded: they
    go back whole at their captured price."""
    history = (captured(unit("l1", 1, 100), unit("l3", 1, 99)),)
    full = psp(199, 199, PspStatus.CAPTURED)
    now = order([line("l1", 1, 0, shipped=1), line("l3", 1, 99, shipped=1, returned=1)])
    refund = plan_next(OrderView(now, full, history=history), allow_all)
    assert isinstance(refund, Plan) and refund.kind is Kind.REFUND, refund
    assert refund.amount == 199 == lines_total(refund.lines)
    assert [(x.reference, x.total_amount) for x in refund.lines] == [
        ("l3", 99),
        ("l1" + CUT_SUFFIX, 100),
    ]
    both = order([line("l1", 1, 0, shipped=1, returned=1), line("l3", 1, 99, shipped=1)])
    refund = plan_next(OrderView(both, full, history=history), allow_all)
    assert isinstance(refund, Plan) and [(x.reference, x.total_amount) for x in refund.lines] == [
        ("l1", 100)
    ]


@pytest.mark.parametrize("returned_too", [False, True])
def test_a_cut_refunded_whole_moves_the_discount_share_it_carried_to_the_goods_held(
    returned_too: bool,
) -> None:
    """Both price-cut rules at once (README "Ledger model"): A captured at 150 with the
    whole discount's −12, B at 100; then A priced to 0, nothing left to capture. The
    customer must end paying the basket (100 − 12 = 88), so the cut refunded is all A was
    captured for (150), and A's −12 then sits on B: returning B gives back 88, not 100
    (before: 250 refunded of 238 captured). When B comes back in the same refund, no goods
    are left to carry the −12: the cut is refunded up to what A holds (138), and the
    customer gets all 238 back."""
    reduce = PspLine("d", "D", LineType.DISCOUNT, 1, -12, 2000, -12, 0, -2)
    history: tuple[PastOperation, ...] = (
        captured(unit("a", 1, 150), reduce),
        captured(unit("b", 1, 100)),
    )
    full = psp(238, 238, PspStatus.CAPTURED)
    b = line("b", 1, 100, shipped=1, returned=1 if returned_too else 0)
    now = order([line("a", 1, 0, shipped=1), b, line("d", 1, -12, type="discount")])
    refund = plan_next(OrderView(now, full, history=history), allow_all)
    assert isinstance(refund, Plan) and refund.kind is Kind.REFUND, refund
    cut = [x.total_amount for x in refund.lines if x.reference == "a" + CUT_SUFFIX]
    assert cut == [138 if returned_too else 150]
    assert refund.amount == (238 if returned_too else 150)
    history += (PastOperation(Kind.REFUND, "succeeded", refund.amount, refund.lines),)
    ledger = ledger_from((op.kind.value, op.lines) for op in history)
    a = ledger["a"]
    assert a.held_value + a.held_share + a.held_correction == 0
    assert sum(entry.captured_share for entry in ledger.values()) == -12
    if not returned_too:
        assert ledger["b"].held_share == -12
        back = order([line("a", 1, 0, shipped=1), {**b, "returned_quantity": 1}])
        assert lines_total(refund_lines(back, ledger)) == 88


# -- a price cut after money went back without naming units (seeds 70558, 70406) ---------


def _refunded_outside(amount: int) -> PastOperation:
    """A portal refund listed without lines (or a chargeback): counted, units unknown."""
    return PastOperation(Kind.REFUND, "succeeded", amount, (), external=True)


def test_a_cut_after_a_refund_naming_no_units_is_given_back_only_on_what_may_still_be_held() -> (
    None
):
    """Seed 70558: both units of l1 captured at 100, 100 refunded in the portal without
    lines (one of them, at its captured price), l1 cut to 50; one unit of l4 (99) ships.
    The PSP holds 100 for l1 and l1 is worth 100 − 50 for the unit left: 50 is over, not
    100. Before, the capture gave back 99 of a cut of 100 (a Settle), money that had
    already gone back, and refunding the last unit then gave back more than was captured
    (contract §4 step 3)."""
    history = (captured(unit("l1", 2, 200)), _refunded_outside(100))
    now = order([line("l1", 2, 50, shipped=2), line("l4", 2, 99, shipped=1)])
    state = PspState(PspStatus.PART_CAPTURED, 298, 200, 100, "INVOICE", "DE")
    decision = plan_next(OrderView(now, state, history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.CAPTURE, decision
    assert decision.amount == 49 == lines_total(decision.lines)
    cut = [(x.reference, x.total_amount) for x in decision.lines if x.type is LineType.DISCOUNT]
    assert cut == [("l1", -50)]


def test_a_cut_refunded_whole_after_a_refund_naming_no_units_is_what_may_still_be_held() -> None:
    """Seed 70406's class: the cut no capture is left to give back is refunded whole
    (surplus_refund_lines) only on what may still be held of its units: 2 × 100
    captured, 100 gone back unnamed, l1 now 2 × 50: 50, not 100."""
    history = (captured(unit("l1", 2, 200)), _refunded_outside(100))
    now = order([line("l1", 2, 50, shipped=2)])
    state = PspState(PspStatus.CAPTURED, 200, 200, 100, "INVOICE", "DE")
    decision = plan_next(OrderView(now, state, history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.REFUND, decision
    assert [(x.reference, x.total_amount) for x in decision.lines] == [("l1" + CUT_SUFFIX, 50)]


def test_a_cut_after_a_refund_naming_no_units_is_given_back_once() -> None:
    """Seed 90378's class (Klarna SE): l1's two units captured, one refunded in the
    Merchant Portal without lines, l1 priced down. The cut on what may still be held is
    refunded whole (surplus_refund_lines); once that refund is booked, nothing of the
    cut is left to give back. Before, `_cuts` scaled what was left by the unnamed share
    of a base the refund itself had lowered, so every reconcile refunded about half of
    the last one again (52, 24, 12, 6, 3, 1, 1): the customer got back about twice the
    cut, and the held unit went below what it is worth now (README "Ledger model": the
    units are held at what they are worth now, "so the customer pays the order's
    total"; contract §4 step 3)."""
    history = (captured(unit("l1", 2, 200)), _refunded_outside(100))
    cut = PspLine(
        "l1" + CUT_SUFFIX, "Price adjustment: L1", LineType.DISCOUNT, 1, 0, 2000, 50, 0, 0
    )
    given = PastOperation(Kind.REFUND, "succeeded", 50, (cut,))
    now = order([line("l1", 2, 50, shipped=2)])
    state = PspState(PspStatus.CAPTURED, 200, 200, 150, "INVOICE", "DE")
    decision = plan_next(OrderView(now, state, history=(*history, given)), allow_all)
    assert not (isinstance(decision, Plan) and decision.kind is Kind.REFUND), decision


def test_a_cut_after_a_refund_naming_no_units_given_by_a_capture_is_not_given_again() -> None:
    """The capture path of the rule above (seed 70558's order): the first capture after
    the cut gave back the 50 the unit left is over (l4 99, l1 −50); the next capture of
    goods (l4's second unit) carries none of it again. Before, it gave back 16 more."""
    correction = PspLine("l1", "L1", LineType.DISCOUNT, 1, 0, 2000, -50, 0, 0)
    ledger = ledger_from(
        [("capture", [unit("l1", 2, 200)]), ("capture", [unit("l4", 1, 99), correction])]
    )
    now = order([line("l1", 2, 50, shipped=2), line("l4", 2, 99, shipped=2)])
    lines = capture_lines(now, ledger, refunded_unnamed=100)
    assert [(x.reference, x.total_amount) for x in lines] == [("l4", 99)]


# -- an authorization about to expire with only a fee left to charge ---------------------


def test_an_authorization_holding_a_fee_still_to_charge_is_extended_before_it_expires() -> None:
    """README "Fees": a fee is charged with the order's first capture of goods, or alone
    once no capture of goods is left; until then the authorization holds it. An
    authorization is extended while lines are unshipped (EXTEND_AUTHORIZATION_DAYS_BEFORE),
    and a fee of value not yet captured is such a line, even when the goods still to ship
    are worth nothing: letting it run out would leave the fee uncharged for good."""
    now = datetime(2026, 11, 23, tzinfo=UTC)
    soon = replace(psp(495, 0, PspStatus.AUTHORIZED), expires_at=now + timedelta(days=2))
    free_and_fee = order([line("sample", 1, 0), FEE])
    view = OrderView(free_and_fee, soon, now=now, extend_within=timedelta(days=3))
    assert plan_next(view, allow_all) == Plan(Kind.EXTEND_AUTHORIZATION, 0)
    # Once the fee is captured, nothing of value is left to hold: no extension.
    charged = (captured(unit("fee", 1, 495)),)
    done = replace(psp(495, 495, PspStatus.CAPTURED), expires_at=now + timedelta(days=2))
    view = OrderView(free_and_fee, done, history=charged, now=now, extend_within=timedelta(days=3))
    assert plan_next(view, allow_all) != Plan(Kind.EXTEND_AUTHORIZATION, 0)


@pytest.mark.parametrize("name", ["Socks", "S" * 255])
def test_a_cut_refunded_whole_is_named_apart_from_the_goods_it_was_taken_from(name: str) -> None:
    """Seed 65616's class: the cut refunded whole (surplus_refund_lines) goes to the PSP
    under a name of its own. Adyen classic's openinvoicedata lines carry a description
    and no id of ours, so a positive line named like the goods reads, in the Customer
    Area and the simulated Adyen alike, as one unit of them coming back, which the shop
    never marked returned (contract §4 step 3: a refund "with exactly those lines").
    The name stays within Klarna's 255 characters, which the same line goes out under."""
    history = (captured(unit("l1", 1, 100)),)
    now = order([line("l1", 1, 50, shipped=1, name=name)])
    state = PspState(PspStatus.CAPTURED, 100, 100, 0, "INVOICE", "DE")
    decision = plan_next(OrderView(now, state, history=history), allow_all)
    assert isinstance(decision, Plan) and decision.kind is Kind.REFUND, decision
    assert [(x.reference, x.total_amount) for x in decision.lines] == [("l1" + CUT_SUFFIX, 50)]
    [cut] = decision.lines
    assert cut.name != name and cut.name.startswith("Price adjustment: ")
    assert len(cut.name) <= 255
    if len(name) < 200:
        assert cut.name == f"Price adjustment: {name}"


def test_an_expired_order_whose_capture_left_is_worth_nothing_has_nothing_left_to_charge() -> None:
    """§4 flags an expiry `external_change` "where the shop's snapshot does not already
    explain it" (README: "an expiry with goods still to charge"). Seed 90797: l1's three
    units were captured (7797 − 180 unitemised), a discount −863 came after, the
    authorization expired, then the shop added a shipping fee of 150. The capture left
    would carry the fee with the discount's shares still untaken, −150: worth 0, so the
    expiry took nothing the shop still asks for (the captures are above the total, which
    `captured_above_total` tells). Before: flagged, "what is not captured can no longer
    be". A fee still worth something after its shares is still flagged."""
    discount = PspLine(
        UNITEMISED_DISCOUNT_ID, "Discount", LineType.DISCOUNT, 1, -180, 0, -180, 0, 0
    )
    history = (captured(unit("l1", 3, 7797, rate=0), discount),)
    goods = [
        line("l1", 3, 2599, shipped=3, tax_rate=0),
        line("l4", 1, -863, type="discount", tax_rate=0),
    ]
    fee = line("l5", 1, 150, type="shipping_fee", tax_rate=0)
    now = order([*goods, fee], amount=6876)
    expired = psp(8789, 7617, PspStatus.EXPIRED)
    assert plan_next(OrderView(now, expired, history=history), allow_all) == Done()
    dear = order([*goods, {**fee, "unit_price": 1500}], amount=8226)
    told = plan_next(OrderView(dear, expired, history=history), allow_all)
    assert isinstance(told, Flag) and told.code == "external_change", told


def test_shares_taking_a_fee_whole_settle_nothing_on_an_authorization_captured_whole() -> None:
    """README "Ledger model": goods the order-level shares take whole are settled at 0
    "only while the authorization holds money (open: not captured whole, ...)". l2's
    three units were captured for all the authorization held (297 of 297) though the
    payment still reads `part_captured`; a shipping fee (150) added since and a discount
    (−447) make the order worth 0, so the shares take the fee whole. Before, the fee was
    settled at 0 against money the authorization no longer held (seed 222558)."""
    history: tuple[PastOperation, ...] = (captured(unit("l2", 3, 297, rate=2500)),)
    now = order(
        [
            line("l1", 2, 0, shipped=0),
            line("l2", 3, 99, shipped=3),
            line("l3", 1, -447, type="discount"),
            line("l4", 1, 150, type="shipping_fee"),
        ]
    )
    assert now.total == 0
    decision = plan_next(OrderView(now, psp(297, 297), history=history), allow_all)
    assert not isinstance(decision, Settle), decision


def test_shares_taking_a_fee_whole_ride_no_settle_of_a_cut_on_an_authorization_captured_whole() -> (
    None
):
    """README "Ledger model": units carrying their own line's cut whole are settled at 0,
    but goods the order-level shares take whole only "while the authorization holds
    money (open: not captured whole, ...)". l1's unit was captured at 450, all the
    authorization held; l1 priced to 150 with a second unit shipped (its own cut takes
    it whole), a gift card (−450) and a shipping fee (150) added since: the gift card's
    share takes the fee whole. Before, the fee rode the cut's settle, booked against
    money no longer held (seed 223357); now the unit is settled alone."""
    history: tuple[PastOperation, ...] = (captured(unit("l1", 1, 450)),)
    now = order(
        [
            line("l1", 2, 150, shipped=2),
            line("l2", 1, -450, type="gift_card"),
            line("l3", 1, 150, type="shipping_fee"),
        ]
    )
    assert now.total == 0
    full = psp(450, 450, PspStatus.CAPTURED)
    decision = plan_next(OrderView(now, full, history=history), allow_all)
    settled = decision.lines if isinstance(decision, Settle) else ()
    assert "l3" not in [x.reference for x in settled], decision
