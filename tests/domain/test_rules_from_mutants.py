"""Rules of the contract that surviving mutants showed no test held (docs/mutation.md
names the mutant each one kills). Pure: the planner against the in-memory PSP of
tests/domain/test_ledger.py."""

from __future__ import annotations

from domain.planner import Kind
from tests.domain.test_ledger import Psp, order, plans, shipped
from tests.seed_basket import discount

A = {"id": "a", "name": "A", "quantity": 2, "unit_price": 500, "tax_rate": 2000}
B = {"id": "b", "name": "B", "quantity": 2, "unit_price": 1500, "tax_rate": 2000}


def test_a_unit_refunded_after_a_joint_refund_gets_what_it_was_captured_at() -> None:
    # A's units are captured at 375 each (a 25 % discount), B's later at 1425 (the
    # discount lowered to 400 in all): each unit carries its own capture's share.
    psp = Psp(authorized=3000)
    psp.sync(order([shipped(A, 2), B, discount(1000)]))
    psp.sync(order([shipped(A, 2), shipped(B, 2), discount(400)]))
    assert psp.captured == 750 + 2850
    # One of each comes back in one refund, then A's second unit on its own.
    [joint] = plans(
        psp.sync(order([shipped(A, 2, 1), shipped(B, 2, 1), discount(400)])), Kind.REFUND
    )
    assert joint.amount == 375 + 1425
    [last] = plans(
        psp.sync(order([shipped(A, 2, 2), shipped(B, 2, 1), discount(400)])), Kind.REFUND
    )
    assert last.amount == 375
