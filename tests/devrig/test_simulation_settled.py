"""Where the simulation places the service's settlements (captures of 0, never sent)
among the PSP's bookings before the oracle judges them (devrig/devrig/simulation.py
`_with_settled`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from devrig.oracle import Booked
from devrig.simulation import PspOrder, _with_settled


def _op(seq: int, kind: str, amount: int, *, external: bool = False, lines: Any = ()) -> Any:
    return SimpleNamespace(
        seq=seq, kind=kind, status="succeeded", external=external, amount=amount, lines=lines
    )


def test_a_settlement_comes_after_the_outside_capture_the_service_had_recorded() -> None:
    """Seed 87054 (Klarna): l2's unit captured in the Merchant Portal (99), recorded by
    the service as an external capture; l2 then priced to 49 and its second unit
    settled at 0 against the cut (README "Ledger model": "units that carry their own
    line's cut whole" are settled), the cut left refunded. The settlement was placed by
    the service's own captures and refunds alone, so before the portal capture: the
    oracle saw a unit at 0 with no unit of its line held (settled_without_a_cut)."""
    unit = Booked("l2", "physical", 1, 99, 20, 2500)
    cut = Booked("l2#price-cut", "discount", 1, 1, 0, 2500)
    psp = PspOrder("klarna", "k1", "USD", 184, [])
    psp.ledger = [("capture", 99, [unit]), ("refund", 1, [cut])]
    psp.outside = {0}
    settle_line = {
        "reference": "l2",
        "type": "physical",
        "quantity": 1,
        "total_amount": 0,
        "total_tax_amount": 0,
        "tax_rate": 2500,
    }
    ops = [
        _op(1, "capture", 99, external=True),
        _op(2, "capture", 0, lines=[settle_line]),
        _op(3, "refund", 1),
    ]
    ledger = _with_settled(psp, ops)
    assert [entry[0] for entry in ledger] == ["capture", "settle", "refund"]
