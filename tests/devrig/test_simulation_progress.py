"""The long run's progress line (devrig/devrig/simulation.py `Progress`): where a stopped
run resumes is the lowest seed not yet done, whatever order the processes report in."""

from __future__ import annotations

from typing import Any

from devrig.simulation import Progress


def test_resume_point_is_the_lowest_seed_not_done() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, first_seed=10, histories=8, every=0.0)
    progress.add(range(11, 18, 2), violations=1)  # process 1 of 2: 11, 13, 15, 17
    assert progress.resume == 10
    assert lines[-1].endswith("the rest: --first-seed 10 --histories 8")
    progress.add(range(10, 14, 2), violations=0)  # process 0: 10, 12
    assert progress.resume == 14
    progress.add(range(14, 18, 2), violations=0)  # process 0: 14, 16
    assert progress.resume == 18
    assert lines[-1].startswith("progress: 8/8 histories")
    assert "violations 1, every seed below 18 done" in lines[-1]
    assert "the rest" not in lines[-1]


def test_a_merchant_refund_of_a_unit_gives_back_what_a_unit_still_held_was_paid() -> None:
    """The simulated merchant's portal refund of one unit: a coat captured outside at
    1200 and refunded, then two captured by the service at 1089 each (their share of a
    gift card in): the next unit refunded gives back 1089, not the 1200 of the unit
    already back (more than any unit still held was captured at, §4)."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    coat = Booked("l1", "physical", 1, 1200, 200, 2000)
    two = Booked("l1", "physical", 2, 2400, 400, 2000)
    gift = Booked("l2", "gift_card", 1, -222, 0, 2000)
    psp = PspOrder("klarna", "k1", "USD", 3378, [], captured=3378, refunded=1200)
    psp.ledger = [("capture", 1200, [coat]), ("refund", 1200, [coat])]
    psp.ledger.append(("capture", 2178, [two, gift]))
    assert _captured_unit_value(psp, "l1") == 1089


def test_a_merchant_refund_of_the_last_unit_held_gives_back_what_the_line_still_holds() -> None:
    """Seed 93930 (Klarna): l1's units captured at 2599, 2599 and 2449 with the whole
    gift card (-659) on the third; the service refunded two at their line's share
    (5098 - 439 = 4659, between the two cheapest and the two dearest, as the oracle
    allows: "nothing says which came back"). The merchant's portal refund of the last
    unit gives back what the line still holds, 2329: with it all of the 6988 is back
    ("all of it once all are back"), not 1790, the third capture's unit, which left 539
    captured for units all refunded."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    unit = Booked("l1", "digital", 1, 2599, 433, 2000)
    psp = PspOrder("klarna", "k1", "USD", 6988, [], captured=6988, refunded=4659)
    psp.ledger = [
        ("capture", 2599, [unit]),
        ("capture", 2599, [unit]),
        (
            "capture",
            1790,
            [Booked("l1", "digital", 1, 2449, 408, 2000), Booked("l3", "gift_card", 1, -659, 0, 0)],
        ),
        (
            "refund",
            4659,
            [Booked("l1", "digital", 2, 5098, 850, 2000), Booked("l3", "gift_card", 1, -439, 0, 0)],
        ),
    ]
    psp.types = {"l1": "digital", "l3": "gift_card"}
    assert _captured_unit_value(psp, "l1") == 2329


def test_a_merchant_refund_after_a_cut_gives_back_what_the_unit_still_held_was_paid() -> None:
    """Seed 70558: l1's two units captured at 100, one refunded in the portal, l1 cut to
    50 since and the 50 given back by the next capture. The held unit was paid 50: the
    merchant's refund of it gives back 50, not 75 (the cut spread over the unit already
    back too, more than was captured for that unit, §4)."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    psp = PspOrder("klarna", "k1", "EUR", 298, [], captured=249, refunded=100)
    psp.ledger = [
        ("capture", 200, [Booked("l1", "physical", 2, 200, 13, 700)]),
        ("refund", 100, [Booked("l1", "physical", 1, 100, 7, 700)]),
        (
            "capture",
            49,
            [Booked("l4", "physical", 1, 99, 20, 2500), Booked("l1", "discount", 1, -50, -3, 700)],
        ),
    ]
    psp.types = {"l1": "physical", "l4": "physical"}
    assert _captured_unit_value(psp, "l1") == 50


def test_a_merchant_refund_after_a_cut_refunded_whole_gives_back_what_the_unit_is_held_at() -> None:
    """Seed 85268: l1's two units captured at 450, l1 priced to 400 with nothing left to
    capture, so the service refunded the cut whole (`l1#price-cut` 100, README "Ledger
    model"). Each unit was paid 400 since: the merchant's refund of one gives back 400,
    not 450 (more than was captured for that unit, §4 step 3)."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    psp = PspOrder("klarna", "k1", "EUR", 900, [], captured=900, refunded=100)
    psp.ledger = [
        ("capture", 900, [Booked("l1", "physical", 2, 900, 150, 2000)]),
        ("refund", 100, [Booked("l1#price-cut", "discount", 1, 100, 17, 2000)]),
    ]
    psp.types = {"l1": "physical"}
    assert _captured_unit_value(psp, "l1") == 400


class _Always:
    """A random stream that always draws 0: every chance is taken."""

    def random(self) -> float:
        return 0.0


def _expiring(psp: Any, oracle: Any, seed: int) -> tuple[Any, Any]:
    """One Klarna order whose expiry date is inside the extend window and was seen
    there at the last settle point, in a simulation whose every chance is taken:
    (MoreGaps, Order)."""
    import random
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace
    from typing import cast

    from devrig.simulation import MoreGaps, Order

    psp.expires_at = datetime.now(UTC) + timedelta(hours=1)  # inside the extend window
    order = Order(shop=cast(Any, SimpleNamespace(order_id="o1")), psp=psp, oracle=oracle)
    sim = SimpleNamespace(
        orders={"o1": order},
        kind=lambda name: None,
        note=lambda event: None,
        settings=SimpleNamespace(extend_authorization_days_before=2),
    )
    more = MoreGaps(cast(Any, sim), seed)
    more.rng = cast(random.Random, _Always())
    more.expiring[psp.psp_id] = 0
    return more, order


def test_an_authorization_with_nothing_left_never_expires() -> None:
    """Seed 61856: a Klarna capture before the first read took one unit, the basket
    was lowered to it and the authorization updated to the captured 2302 (Klarna's
    order then fully captured), and the shop cancelled. The simulated Klarna still let
    the expiry date pass on it and called the order EXPIRED, where Klarna has nothing
    left to expire (a release is refused: "Order is fully captured")."""
    from devrig.oracle import Oracle
    from devrig.simulation import PspOrder

    psp = PspOrder("klarna", "k1", "EUR", 2302, [], captured=2302, status="PART_CAPTURED")
    more, order = _expiring(psp, Oracle(2302, refuses_increases=False), 61856)
    for _ in range(3):
        more.at_barrier()
        more.after_settle(set())
    assert psp.status == "PART_CAPTURED"
    assert order.oracle.state.closed is None


def test_a_lapse_at_a_settle_point_comes_after_the_captures_of_its_window() -> None:
    """Seed 87368 (Klarna US, 6581, extension refused): the shop marked both l1 units
    shipped and the service captured them (5198, §4 step 2) while the expiry date
    drew near; at the settle point the date passed (`_lapse`). The oracle was told of
    the expiry as if it came before the window's work, so it expected nothing captured
    (captured_units l1: 2, expected 0). The lapse is drawn at the barrier, after the
    window's snapshots and tasks: a capture of the window may have gone first (README
    "a `CAPTURE` that arrives after `EXPIRE` is counted"; §4 counts the expiry without
    ordering it against the service's captures), or not."""
    from devrig.oracle import Booked, Oracle, check_ledger, tax_in
    from devrig.simulation import PspOrder

    def snapshot(version: int, shipped: int) -> dict[str, Any]:
        return {
            "id": "o1",
            "version": version,
            "currency": "USD",
            "country": "US",
            "status": "open",
            "payment": {"provider": "klarna", "klarna_order_id": "k1"},
            "lines": [
                {"id": "l1", "name": "l1", "type": "physical", "quantity": 2,
                 "unit_price": 2599, "tax_rate": 2000, "shipped_quantity": shipped,
                 "returned_quantity": 0},
                {"id": "l2", "name": "l2", "type": "digital", "quantity": 1,
                 "unit_price": 1383, "tax_rate": 2000, "shipped_quantity": 0,
                 "returned_quantity": 0},
            ],
        }  # fmt: skip

    oracle = Oracle(6581, refuses_increases=True)
    oracle.snapshot(snapshot(1, 0))
    oracle.settle()
    oracle.snapshot(snapshot(2, 2))
    # The service's capture of the window, made before the date passed.
    psp = PspOrder("klarna", "k1", "USD", 6581, [], captured=5198, status="PART_CAPTURED")
    more, _ = _expiring(psp, oracle, 87368)
    more.at_barrier()
    assert psp.status == "EXPIRED"
    # l2 never shipped: no capture takes it, so the expiry left goods to charge, which
    # the shop's snapshot does not explain (§4): the flag stays required.
    assert ("needs_attention", "external_change") in oracle.exp.required
    oracle.settle()
    capture = [Booked("l1", "physical", 2, 5198, tax_in(5198, 2000), 2000)]
    found = check_ledger([("capture", 5198, capture)], oracle.expectation())
    assert found == []
    # Not captured before the date passed is as right: the lapse may have come first.
    assert check_ledger([], oracle.expectation()) == []


def test_a_merchant_refunds_no_unit_held_at_below_nothing() -> None:
    """Seed 94745 (Klarna US): l2's two units captured at 99 each with their share of a
    store credit (−22 over 693 of goods and fee), l2 priced to 0 and the cut given back
    whole by the next capture (an `l2` discount line of −198): each unit is held at
    95 − 99 = −4. The merchant's portal refund of one would be a refund of −4, which no
    PSP takes (Klarna's `refunded_amount` minimum 0) and moves no money (§4 step 3):
    there is nothing to give back for it."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    psp = PspOrder("klarna", "k1", "USD", 1779, [], captured=1344)
    psp.ledger = [
        (
            "capture",
            671,
            [
                Booked("l2", "digital", 2, 198, 0, 0),
                Booked("l4", "shipping_fee", 1, 495, 0, 0),
                Booked("l3", "store_credit", 1, -22, 0, 0),
            ],
        ),
        (
            "capture",
            673,
            [
                Booked("l1", "physical", 2, 900, 0, 0),
                Booked("l3", "store_credit", 1, -29, 0, 0),
                Booked("l2", "discount", 1, -198, 0, 0),
            ],
        ),
    ]
    psp.types = {"l1": "physical", "l2": "digital", "l3": "store_credit", "l4": "shipping_fee"}
    assert _captured_unit_value(psp, "l2") is None
    assert _captured_unit_value(psp, "l1") == 435  # 450 less its store-credit share


def test_a_merchant_refunds_no_unit_whose_money_a_chargeback_gave_back() -> None:
    """Seed 108386 (Adyen US): l1's first unit and l2's two captured (2521), then charged
    back whole; l1's second unit captured since (442). §4 counts a chargeback "in the
    order's figures, never makes it a second time": the customer has l2's money back,
    so a merchant's Customer Area refund can only give back l1's unit still held, not
    an l2 unit (which the PSP model booked at the 442 left, far below the 795 it was
    captured at)."""
    from devrig.oracle import _State
    from devrig.simulation import _merchant_refundable

    state = _State(captured={"l1": 2, "l2": 2}, charged_back_units={"l1": 1, "l2": 2})
    lines = [
        {"id": "l1", "type": "digital", "quantity": 2, "returned_quantity": 0},
        {"id": "l2", "type": "physical", "quantity": 3, "returned_quantity": 0},
        {"id": "l4", "type": "shipping_fee", "quantity": 1, "returned_quantity": 0},
    ]
    assert [line["id"] for line in _merchant_refundable(lines, state)] == ["l1"]


def test_a_merchant_refund_after_a_chargeback_gives_back_a_unit_captured_since() -> None:
    """l1's first unit captured at 1000 and charged back; its second captured since at
    800 (a price edit): the merchant's refund of the unit still held gives back 800, not
    the charged-back unit's 1000 (units go back in the order they were captured, the
    chargeback's first)."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    psp = PspOrder("adyen", "p1", "EUR", 1800, [], captured=1800, charged_back=1000)
    psp.ledger = [
        ("capture", 1000, [Booked("l1", "physical", 1, 1000, 167, 2000)]),
        ("capture", 800, [Booked("l1", "physical", 1, 800, 133, 2000)]),
    ]
    psp.types = {"l1": "physical"}
    assert _captured_unit_value(psp, "l1", away=1) == 800


def test_a_merchant_refund_after_a_cut_gives_back_no_more_than_the_unit_holds_by_value() -> None:
    """Seed 213438 (Klarna DE): l1's first unit captured at 450 with the shipping fee,
    its second at 324 (450 less a discount share of 126); l1 then priced to 150 with
    nothing left to capture, so the service refunded the cut whole (`l1#price-cut` 600,
    README "Ledger model": "those units are then held at their captured price less the
    cut"). The oracle spreads the cut over the units by value (101.16 and 72.84): a
    merchant's refund of one unit by hand gives back no more than 101, not 150 (the
    cut spread evenly, 300 a unit; §4 step 3, "never more than was captured for those
    units")."""
    from devrig.oracle import Booked
    from devrig.simulation import PspOrder, _captured_unit_value

    psp = PspOrder("klarna", "k1", "EUR", 1269, [], captured=1269, refunded=600)
    psp.ledger = [
        (
            "capture",
            945,
            [
                Booked("l1", "physical", 1, 450, 75, 2000),
                Booked("l3", "shipping_fee", 1, 495, 83, 2000),
            ],
        ),
        (
            "capture",
            324,
            [
                Booked("l1", "physical", 1, 450, 75, 2000),
                Booked("l4", "discount", 1, -126, -21, 2000),
            ],
        ),
        ("refund", 600, [Booked("l1#price-cut", "discount", 1, 600, 100, 2000)]),
    ]
    psp.types = {"l1": "physical", "l3": "shipping_fee", "l4": "discount"}
    assert _captured_unit_value(psp, "l1") == 101
