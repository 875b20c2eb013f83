"""The order lines of every PSP request: authorization updates, captures and refunds.

Pure arithmetic on integers in minor units. Every request's lines sum exactly to its
amount, and the parts of a shop line taken by successive captures (or refunds) add up
to exactly what the line is worth, because every split is made cumulatively: a request
takes its share of what is *still open*, so the last one takes exactly the rest.

Lines are expressed in Klarna's terms (whole-line totals, tax included); the Adyen
builders at the bottom turn them into per-unit items.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.money import distribute, per_unit, share, tax_of
from domain.snapshot import MAX_LINE_NAME, Line, LineType, OrderSnapshot

CAPTURE = "capture"
REFUND = "refund"


@dataclass(frozen=True)
class PspLine:
    """One line as sent to a PSP, in Klarna's terms (whole-line totals)."""

    reference: str  # the shop's line id
    name: str
    type: LineType
    quantity: int
    unit_price: int  # tax included, before the line's own discount
    tax_rate: int  # basis points
    total_amount: int  # quantity * unit_price - total_discount_amount
    total_discount_amount: int
    total_tax_amount: int
    quantity_unit: str | None = None
    product_url: str | None = None
    image_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "reference": self.reference,
            "name": self.name,
            "type": self.type.value,
            "quantity": self.quantity,
            "unit_price": self.unit_price,
            "tax_rate": self.tax_rate,
            "total_amount": self.total_amount,
            "total_discount_amount": self.total_discount_amount,
            "total_tax_amount": self.total_tax_amount,
        }
        for key, value in (
            ("quantity_unit", self.quantity_unit),
            ("product_url", self.product_url),
            ("image_url", self.image_url),
        ):
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PspLine:
        return cls(
            reference=str(data["reference"]),
            name=str(data["name"]),
            type=LineType(data["type"]),
            quantity=int(data["quantity"]),
            unit_price=int(data["unit_price"]),
            tax_rate=int(data["tax_rate"]),
            total_amount=int(data["total_amount"]),
            total_discount_amount=int(data.get("total_discount_amount", 0)),
            total_tax_amount=int(data["total_tax_amount"]),
            quantity_unit=data.get("quantity_unit"),
            product_url=data.get("product_url"),
            image_url=data.get("image_url"),
        )


@dataclass
class LineLedger:
    """What the PSP has already done for one shop line (by reference).

    For a product line, `captured_share` is what its captured units carry of the
    order's reducing lines (discounts, negative; a correction after a discount edit can
    make it positive): the per-unit ledger. A unit's captured price is its part of
    `captured_amount + captured_share`; a refund gives back that and no more.
    """

    captured_quantity: int = 0
    captured_amount: int = 0  # negative for discount lines' shares
    refunded_quantity: int = 0
    refunded_amount: int = 0
    captured_share: int = 0
    refunded_share: int = 0
    # The part of those shares that is sales tax (> 0): a refund gives it back on the
    # sales tax lines and the rest on the discount lines, each as its units carried it.
    captured_tax_share: int = 0
    refunded_tax_share: int = 0
    # A price cut on units already captured that later captures gave back (a `discount`
    # line with this line's reference, < 0), and what refunds of its units took of that
    # back: the units are held at their captured value plus this (_price_corrections).
    captured_correction: int = 0
    refunded_correction: int = 0
    # Of the refunded correction, a price cut refunded because no capture was left to
    # give it back (surplus_refund_lines, > 0): the units hold that much less.
    given_back: int = 0
    # The product line as it was last captured: a refund gives back at its tax rate.
    captured_line: PspLine | None = field(default=None, compare=False)
    # The line as last sent: a discount the shop has since dropped is still named by it.
    line: PspLine | None = field(default=None, compare=False)

    @property
    def held_quantity(self) -> int:
        return self.captured_quantity - self.refunded_quantity

    @property
    def held_value(self) -> int:
        return self.captured_amount - self.refunded_amount

    @property
    def held_share(self) -> int:
        return self.captured_share - self.refunded_share

    @property
    def held_tax_share(self) -> int:
        return self.captured_tax_share - self.refunded_tax_share

    @property
    def held_correction(self) -> int:
        return self.captured_correction - self.refunded_correction

    @property
    def captured_net(self) -> int:
        """What the line's captures took for it, a price cut given back since included."""
        return self.captured_amount + self.captured_correction


Ledger = dict[str, LineLedger]


SHARE_TYPES = frozenset({LineType.DISCOUNT, LineType.SALES_TAX})


def _is_share(line: PspLine) -> bool:
    # Every shared line goes out as a one-unit share (see _share_line): `discount` for
    # the reducing lines, `sales_tax` for sales tax; no product line has either type.
    return line.type in SHARE_TYPES


def ledger_from(operations: Iterable[tuple[str, Sequence[PspLine]]]) -> Ledger:
    """Fold the lines of the *succeeded* operations, given as (kind, lines).

    Kinds other than capture and refund (authorization updates, cancels) move no money
    line by line, so they are ignored here. A discount share counts its quantity of 1
    like any other line; nothing in this module reads a reducing line's quantities.
    Each request's discount shares are attributed to its product lines, which is what
    makes the ledger per unit.
    """
    ledger: Ledger = {}
    for kind, lines in operations:
        if kind not in (CAPTURE, REFUND):
            continue
        # A share line with the reference of a product line already captured is that
        # line's price correction: its own units carry it, not the request's.
        corrections = [line for line in lines if _is_correction(ledger, line)]
        products = [line for line in lines if not _is_share(line)]
        moved = 0
        for line in corrections:
            entry = ledger[str(corrected(ledger, line))]
            holds = max(entry.held_value + entry.held_share + entry.held_correction, 0)
            if kind == CAPTURE:
                entry.captured_correction += line.total_amount
                beyond = max(-line.total_amount - holds, 0) if products else 0
            else:
                entry.refunded_correction += line.total_amount
                # A refund gives a cut back at a negative line with returned units, or
                # whole at a positive one when no capture was left to carry it.
                entry.given_back += max(line.total_amount, 0)
                beyond = max(line.total_amount - holds, 0)
            if beyond:
                # A cut given back beyond what its units hold (their captured value
                # less the discount share they carried): that share goes back to the
                # order-level line, so other goods carry it, no unit is held below 0
                # (_price_corrections, seed 55371). A capture's own goods take it with
                # the rest of that line; a refund's (the cut refunded whole,
                # surplus_refund_lines) the goods still held and not returned with it.
                if kind == CAPTURE:
                    moved -= beyond
                else:
                    busy = {str(corrected(ledger, x)) for x in corrections}
                    beyond = _move_share(ledger, beyond, busy | {x.reference for x in products})
                entry.captured_share += beyond
        lines = [line for line in lines if not _is_correction(ledger, line)]
        shares_total = sum(line.total_amount for line in lines if _is_share(line)) + moved
        tax_total = sum(line.total_amount for line in lines if line.type is LineType.SALES_TAX)
        attributed = (
            _capture_attribution(products, shares_total)
            if kind == CAPTURE
            else _refund_attribution(ledger, products, shares_total)
        )
        taxed = (
            _capture_attribution(products, tax_total)
            if kind == CAPTURE
            else _refund_attribution(ledger, products, tax_total, tax=True)
        )
        for line in lines:
            entry = ledger.setdefault(line.reference, LineLedger())
            entry.line = line
            if kind == CAPTURE:
                entry.captured_quantity += line.quantity
                entry.captured_amount += line.total_amount
                if not _is_share(line):
                    entry.captured_line = line
            else:
                entry.refunded_quantity += line.quantity
                entry.refunded_amount += line.total_amount
        for line, part, tax in zip(products, attributed, taxed, strict=True):
            entry = ledger[line.reference]
            if kind == CAPTURE:
                entry.captured_share += part
                entry.captured_tax_share += tax
            else:
                entry.refunded_share += part
                entry.refunded_tax_share += tax
    return ledger


def _move_share(ledger: Ledger, amount: int, busy: Collection[str]) -> int:
    """Puts `amount` (> 0) more of the discount on the goods still held, other than the
    `busy` lines, by what each holds, as far as they hold it; returns what they took."""
    held = [
        entry
        for reference, entry in ledger.items()
        if reference not in busy
        and entry.captured_line is not None
        and not _is_share(entry.captured_line)
        and entry.held_quantity > 0
    ]
    weights = [max(x.held_value + x.held_share + x.held_correction, 0) for x in held]
    taken = min(amount, sum(weights))
    for entry, part in zip(held, distribute(taken, weights), strict=True):
        entry.captured_share -= part
    return taken


# A price cut refunded whole (surplus_refund_lines) names its line with this suffix:
# Adyen's items carry no type, and an item with the line's own id is one of its units.
CUT_SUFFIX = "#price-cut"
# ... and describes it with this before the goods' name. Adyen classic's openinvoicedata
# lines carry a description and no id of ours, so a positive line named like the goods
# reads (in the Customer Area as at Klarna) as one unit of them coming back, which the
# shop never returned (contract §4 step 3: a refund "with exactly those lines").
CUT_NAME = "Price adjustment: "


def cut_name(name: str) -> str:
    """The name of the refund of a price cut on the line named `name`: never the goods'
    own, within the PSPs' name limit (MAX_LINE_NAME)."""
    return (CUT_NAME + name)[:MAX_LINE_NAME]


def corrected(ledger: Ledger, line: PspLine) -> str | None:
    """The product line a share line corrects, if it is a price correction: a share line
    with the reference of a line the PSP holds captured (or that reference and
    CUT_SUFFIX), which its units carry, not the request's."""
    if not _is_share(line):
        return None
    reference = line.reference.removesuffix(CUT_SUFFIX)
    entry = ledger.get(reference)
    return reference if entry is not None and entry.captured_line is not None else None


def _is_correction(ledger: Ledger, line: PspLine) -> bool:
    return corrected(ledger, line) is not None


def _capture_attribution(products: Sequence[PspLine], shares_total: int) -> list[int]:
    """A capture's discount shares, split over its product lines by their value."""
    if not products:
        return []
    weights = [line.total_amount for line in products]
    if sum(weights) == 0:
        weights = [line.quantity for line in products]
    if sum(weights) == 0:
        return [shares_total] + [0] * (len(products) - 1)
    return distribute(shares_total, weights)


def _refund_attribution(
    ledger: Ledger, products: Sequence[PspLine], shares_total: int, *, tax: bool = False
) -> list[int]:
    """What each refunded product line gave back of its units' discount shares (with
    `tax`: of their sales tax shares alone).

    The same per-unit figures refund_lines computed; a refund built otherwise (by an
    older version) is split by value instead, so the folding never fails.
    """
    expected = []
    for line in products:
        entry = ledger.get(line.reference, LineLedger())
        held = entry.held_quantity
        quantity = min(line.quantity, held)
        holds = entry.held_tax_share if tax else entry.held_share
        expected.append(share(holds, quantity, held) if held > 0 else 0)
    if sum(expected) == shares_total:
        return expected
    return _capture_attribution(products, shares_total)


def captured_total(ledger: Ledger) -> int:
    """Everything captured for the order, discount shares and price corrections
    included."""
    return sum(entry.captured_net for entry in ledger.values())


def all_units_captured(order: OrderSnapshot, ledger: Ledger) -> bool:
    """Nothing is left to capture, ever: every product unit has shipped, and what has
    not been captured of it is worth nothing (a capture of 0 is never sent)."""
    shipped = all(
        shipped_quantity(order, line) >= line.quantity
        or (line.is_fee and ledger.get(line.id, LineLedger()).captured_quantity >= line.quantity)
        for line in order.effective_lines
        if not line.shared and line.total != 0
    )
    # Valued before any price cut it would give back: goods a cut takes whole are still
    # goods to capture (settled against the money held, planner Settle).
    return shipped and lines_total(capture_lines(order, ledger, give_back=False)) <= 0


def same_lines(a: Iterable[PspLine], b: Iterable[PspLine]) -> bool:
    """Whether two baskets list the same units at the same totals (names aside)."""

    def key(lines: Iterable[PspLine]) -> list[tuple[str, int, int]]:
        return sorted(
            (line.reference, line.quantity, line.total_amount) for line in lines if line.quantity
        )

    return key(a) == key(b)


def lines_total(lines: Iterable[PspLine]) -> int:
    return sum(line.total_amount for line in lines)


def shipped_quantity(order: OrderSnapshot, line: Line) -> int:
    """Units of `line` the shop marked shipped (never more than it has)."""
    return min(line.shipped_quantity, line.quantity)


def _goods_to_capture(order: OrderSnapshot, ledger: Ledger) -> bool:
    """Whether goods shipped that are not captured yet: a capture of goods is due, and
    the fees not yet charged go with it (contract §4: shipping fees and surcharges are
    charged with the order's first capture, or when marked shipped if that comes first;
    a fee added after the first capture goes with the next one)."""
    return any(
        shipped_quantity(order, line) > ledger.get(line.id, LineLedger()).captured_quantity
        for line in order.effective_lines
        if not line.shared and not line.is_fee
    )


def reversed_quantities(order: OrderSnapshot, ledger: Ledger) -> list[str]:
    """Lines whose shipped or returned quantity went below what the PSP already captured
    or refunded for them (contract §4: quantities never go down), with the figures."""
    found = []
    for line in order.effective_lines:
        entry = ledger.get(line.id)
        if entry is None or line.shared:
            continue
        # A fee is charged without being marked shipped: only its returns can go down.
        if not line.is_fee and shipped_quantity(order, line) < entry.captured_quantity:
            found.append(
                f"{line.id}: shipped {line.shipped_quantity} < captured {entry.captured_quantity}"
            )
        if line.returned_quantity < entry.refunded_quantity:
            found.append(
                f"{line.id}: returned {line.returned_quantity} < refunded {entry.refunded_quantity}"
            )
    return found


# --- building lines -----------------------------------------------------------------


def _whole(line: Line) -> PspLine:
    return PspLine(
        reference=line.id,
        name=line.name,
        type=line.type,
        quantity=line.quantity,
        unit_price=line.unit_price,
        tax_rate=line.tax_rate,
        total_amount=line.total,
        total_discount_amount=line.total_discount_amount,
        # The shop's own tax figure is kept when it sent one: Klarna shows it to the
        # customer, and it was validated (±1) when the snapshot came in.
        total_tax_amount=line.tax,
        quantity_unit=line.quantity_unit,
        product_url=line.product_url,
        image_url=line.image_url,
    )


def line_part(line: Line, quantity: int, value: int) -> PspLine:
    """`quantity` units of a product line worth `value` together.

    The unit price stays the shop's; the cumulative rounding difference goes into
    `total_discount_amount`, which keeps Klarna's `q * unit - discount = total`.
    """
    if quantity == line.quantity and value == line.total:
        return _whole(line)
    # Only reachable if the shop raised a price after part of the line was captured:
    # the rest is then dearer per unit than the list price, and Klarna's discount must
    # not go negative, so the unit price shown is the smallest one that covers it.
    unit_price = max(line.unit_price, -(-value // quantity))
    return PspLine(
        reference=line.id,
        name=line.name,
        type=line.type,
        quantity=quantity,
        unit_price=unit_price,
        tax_rate=line.tax_rate,
        total_amount=value,
        total_discount_amount=quantity * unit_price - value,
        total_tax_amount=tax_of(value, line.tax_rate),
        quantity_unit=line.quantity_unit,
        product_url=line.product_url,
        image_url=line.image_url,
    )


def _reducing_share(line: Line, value: int) -> PspLine:
    """A `discount` line carrying `value` of a reducing line (< 0; > 0 for a correction
    after the discount was lowered).

    Always one unit, whatever the reducing line's quantity: a share is an amount, not
    a number of coupons.
    """
    tax = line.tax if value == line.total else tax_of(value, line.tax_rate)
    return _share_line(line.id, line.name, line.tax_rate, value, tax, _share_type(line.type))


def _share_type(line_type: LineType) -> LineType:
    return LineType.SALES_TAX if line_type is LineType.SALES_TAX else LineType.DISCOUNT


def _share_line(
    reference: str,
    name: str,
    tax_rate: int,
    value: int,
    tax: int | None = None,
    line_type: LineType = LineType.DISCOUNT,
) -> PspLine:
    return PspLine(
        reference=reference,
        name=name,
        type=line_type,
        quantity=1,
        unit_price=value,
        tax_rate=tax_rate,
        total_amount=value,
        total_discount_amount=0,
        total_tax_amount=tax_of(value, tax_rate) if tax is None else tax,
    )


def _split_lines(order: OrderSnapshot) -> tuple[list[Line], list[Line]]:
    products: list[Line] = []
    reducing: list[Line] = []
    for line in order.effective_lines:
        (reducing if line.shared else products).append(line)
    return products, reducing


def _reducing_shares(
    reducing: Sequence[Line],
    open_amounts: Sequence[int],
    value_this: int,
    value_open: int,
    carried: int = 0,
) -> list[PspLine]:
    """The discount lines that go with `value_this` of `value_open` product value.

    `open_amounts` are the reducing lines' still-open magnitudes (≥ 0). The request's
    total share is taken cumulatively over all reducing lines together and then split
    over them cumulatively. With one reducing line this is exactly
    `share(open_j, value_this, value_open)`; with several it can differ from per-line
    rounding by one cent per line, but it keeps the invariant "open discount ≤ open
    product value", so no request's amount can ever go negative (per-line rounding
    half away from zero can take one cent more discount than the product value).

    `carried`: what the request adds beyond its products (its share of a sales tax
    line, a correction the customer owes back). A gift card may pay for the tax too,
    so the reductions may take that as well (contract §4: shared by value "so that once
    everything has shipped the captures add up to the order's total").
    """
    open_total = sum(open_amounts)
    if open_total == 0 or value_this == 0:
        return []
    # The cap never binds while the invariant holds; it guards against a shop that
    # lowered its prices below what was already captured.
    total_share = min(share(open_total, value_this, value_open), value_this + carried)
    result: list[PspLine] = []
    for line, part in zip(reducing, distribute(total_share, open_amounts), strict=True):
        if part:
            result.append(_reducing_share(line, -part))
    return result


def basket_lines(order: OrderSnapshot) -> list[PspLine]:
    """The complete basket, for authorization updates (Klarna PATCH, Adyen amountUpdates).

    Lines of quantity 0 are left out: they are worth nothing and would only show the
    customer an item they no longer get.
    """
    return [_whole(line) for line in order.effective_lines if line.quantity != 0]


def capture_lines(
    order: OrderSnapshot,
    ledger: Ledger,
    *,
    paid_unnamed: int = 0,
    unshared: int = 0,
    held: Collection[str] = (),
    give_back: bool = True,
    refunded_unnamed: int = 0,
) -> list[PspLine]:
    """The lines of a capture of everything shipped but not yet captured.

    Empty when nothing new has shipped. A shipped free item (worth 0) is still listed,
    so that the ledger records it as captured. A discount edited after a capture is
    followed here: what the captures so far took of it is compared with what it is
    now, and the remaining captures carry the difference, so that once everything has
    shipped the captures add up to the order's total.

    `paid_unnamed`: money captured without the service whose lines the PSP did not name
    (counted, never made again: contract §4). It paid for goods at their own value, with
    no share, so the order-level lines are shared over the open value it did not cover.

    `unshared`: open value left out of the sharing (never below this capture's own), so
    this capture takes more of the order-level lines: a cancel's last capture, whose
    goods were authorized with a larger share than a basket grown since leaves them.

    `held`: fees left out of this capture (still open, so still counted in the sharing):
    one the authorization left cannot carry waits, and the goods that fit go alone.

    `give_back`: whether the capture gives back price cuts on units already captured
    (_price_corrections); money moved without the service carried none.

    `refunded_unnamed`: money the PSP refunded without naming units (_price_corrections).
    """
    products, reducing = _split_lines(order)
    result: list[PspLine] = []
    value_this = 0
    value_open = 0
    with_goods = _goods_to_capture(order, ledger)
    fee_alone = not with_goods and _fees_due_alone(order, ledger)
    for line in products:
        entry = ledger.get(line.id, LineLedger())
        open_quantity = line.quantity - entry.captured_quantity
        # ≥ 0: a line already captured for more than it is now worth (a price cut after
        # a capture) has nothing left for its units; the cut goes back with the capture
        # as a correction (_price_corrections).
        open_value = max(line.total - entry.captured_net, 0) if open_quantity > 0 else 0
        value_open += open_value
        fee_now = line.is_fee and (with_goods or fee_alone)
        target = line.quantity if fee_now else shipped_quantity(order, line)
        if line.id in held:
            target = entry.captured_quantity
        quantity = target - entry.captured_quantity
        if quantity <= 0:
            continue
        value = share(open_value, quantity, open_quantity)
        value_this += value
        result.append(line_part(line, quantity, value))
    if not result:
        return []
    value_open = max(value_open - paid_unnamed - unshared, value_this)
    # Signed: what is still to take of each reducing line (< 0), or what the captures so
    # far took beyond what it is now (> 0, a correction the customer owes back).
    still_open = [
        line.total - ledger.get(line.id, LineLedger()).captured_amount for line in reducing
    ]
    taking = [(line, -value) for line, value in zip(reducing, still_open, strict=True) if value < 0]
    corrections: list[PspLine] = []
    for line, value in zip(reducing, still_open, strict=True):
        if value > 0:
            part = share(value, value_this, value_open)
            if part:
                corrections.append(_reducing_share(line, part))
    # A reducing line the shop has dropped since it was captured: all of it comes back.
    in_order = {line.id for line in order.effective_lines}
    for reference, entry in ledger.items():
        if reference in in_order or entry.line is None or not _is_share(entry.line):
            continue
        part = share(-entry.captured_amount, value_this, value_open)
        if part:
            corrections.append(
                _share_line(
                    reference, entry.line.name, entry.line.tax_rate, part, None, entry.line.type
                )
            )
    shares = _reducing_shares(
        [line for line, _ in taking],
        [value for _, value in taking],
        value_this,
        value_open,
        carried=sum(line.total_amount for line in corrections if line.total_amount > 0),
    )
    merged = _merge_shares(result + shares + corrections)
    if not give_back:
        return merged
    return merged + _price_corrections(order, ledger, lines_total(merged), refunded_unnamed)


def _price_corrections(
    order: OrderSnapshot, ledger: Ledger, carrier: int, refunded_unnamed: int = 0
) -> list[PspLine]:
    """What a capture worth `carrier` gives back of price cuts on units already captured.

    A price edit after a capture is carried by the line's units still to capture (the
    line's captures add up to what it is worth now); a cut those units cannot carry —
    the line is already captured for more than it is now worth — is given back by the
    order's next capture, as a negative `discount` line with the line's reference at
    the tax rate its units were captured at, so that the captures still add up to the
    order's total (contract §4) and the authorization, which follows the basket, holds
    them. The line's units are then held at what is left (a refund gives back no
    more). Never more than the capture carries (the rest waits for the next one, or is
    refunded once none is left: surplus_refund_lines), and not for a line with units
    refunded already (their money went back at the captured price): those the planner
    flags (_capture_gap).

    A goods or fee line the shop removed after its capture is worth 0 now: a cut of all
    it was captured for. A cut that takes the whole capture makes it worth 0: nothing is
    sent, the goods are settled against the money already held (planner Settle; seeds
    46929, 60683), never charged a minimum of 1.

    `refunded_unnamed`: money the PSP refunded without naming units may have been the
    cut units' own (seed 70558: both units of a line captured at 100, one refunded in
    the portal without lines, the line cut to 50 since: the PSP holds 50 more than it
    is worth, not 100): _cuts counts a cut only on what may still be held of its units,
    never out of money already gone back (contract §4: never more than was captured for
    those units).
    """
    cuts = _cuts(order, ledger, refunded_unnamed)
    total = sum(over for _, _, _, over in cuts)
    carried = min(total, max(carrier, 0))
    if carried <= 0:
        return []
    result = []
    parts = distribute(carried, [over for _, _, _, over in cuts])
    for (reference, name, entry, _), part in zip(cuts, parts, strict=True):
        if part:
            assert entry.captured_line is not None
            rate = entry.captured_line.tax_rate
            result.append(_share_line(reference, name, rate, -part))
    return result


def _cuts(
    order: OrderSnapshot, ledger: Ledger, refunded_unnamed: int = 0
) -> list[tuple[str, str, LineLedger, int]]:
    """Lines captured for more than they are worth now, with what is still to give back
    of it (_price_corrections): (reference, name, ledger entry, amount > 0).

    `refunded_unnamed`: money the PSP refunded without naming units. Had it been this
    line's units, at the price they were captured at, each unit that went back took its
    part of the cut with it: the cut counts only on the units it leaves, at worst."""
    worth_now = {line.id: line for line in order.effective_lines}
    cuts: list[tuple[str, str, LineLedger, int]] = []
    for reference, entry in ledger.items():
        captured = entry.captured_line
        if captured is None or _is_share(captured):
            continue
        line = worth_now.get(reference)
        if line is not None and line.shared:
            continue
        # All its units were captured for above their worth now, a discount share they
        # carried included (less a cut refunded whole since): that share goes back to
        # the discount line, so the captures add up to the total and the shares to the
        # discount's (contract §4); ledger_from books it on other goods, so a unit is
        # never held below 0 and a refund never takes money back.
        over = entry.captured_net - entry.given_back - (line.total if line is not None else 0)
        if refunded_unnamed > 0 and over > 0:
            # The whole cut on the units the unnamed money may have left, less what was
            # given back of it already (by captures or refunded whole): scaling what is
            # left instead, by a base each give-back lowers, gave back about half of the
            # last give-back again on every plan (seed 90378: 52, 24, 12, 6, 3, 1, 1), more
            # than the units are over (contract §4 step 3; README "Ledger model").
            base = entry.captured_amount
            cut = base - (line.total if line is not None else 0)
            already = entry.given_back - entry.captured_correction
            kept = cut * max(base - refunded_unnamed, 0) // base if base > 0 else 0
            over = min(over, kept - already)
        if over > 0 and entry.captured_quantity > 0 and entry.refunded_quantity == 0:
            cuts.append((reference, line.name if line is not None else captured.name, entry, over))
    return cuts


def surplus_refund_lines(
    order: OrderSnapshot,
    ledger: Ledger,
    returning: Collection[str] = (),
    refunded_unnamed: int = 0,
) -> list[PspLine]:
    """A price cut on units already captured that no capture is left to give back (every
    unit of goods of some value captured, or the order cancelled with its shipped goods
    captured): refunded, one positive `discount` line per cut line with its reference and
    CUT_SUFFIX, named by cut_name (never like the goods), at the tax rate its units were
    captured at. Those units are then held at what they are worth now, so the customer
    pays the order's total and a later refund of them gives back no more (contract §4:
    refunds at the captured price, never more than was captured for those units). Empty
    while a capture may still carry it, and for a line removed since its capture (told
    as before: _capture_gap, _ended_above).

    A cut gives back all its units were captured for, a discount share they carried
    included: that share then sits on the goods still held (ledger_from), so the refund
    is never more than those goods and the cut ones hold together, the units `returning`
    with it (given back by the same refund) left out, and money the PSP refunded without
    naming units (`refunded_unnamed`, which may have been the cut units': _price_corrections)."""
    if order.status != "cancelled" and not all_units_captured(order, ledger):
        return []
    if _goods_to_capture(order, ledger):
        return []
    in_order = {line.id for line in order.effective_lines}
    cuts = [cut for cut in _cuts(order, ledger, refunded_unnamed) if cut[0] in in_order]
    # (A line removed after its capture is no price the shop set: its goods left the
    # warehouse, and §4 charges nothing for them only once marked returned.)
    room = sum(
        max(entry.held_value + entry.held_share + entry.held_correction, 0)
        for reference, entry in ledger.items()
        if reference not in returning
        and entry.captured_line is not None
        and not _is_share(entry.captured_line)
        and entry.held_quantity > 0
    )
    room -= max(refunded_unnamed, 0)
    overs = [over for _, _, _, over in cuts]
    if sum(overs) > room:
        overs = distribute(max(room, 0), overs)
    result = []
    for (reference, name, entry, _), over in zip(cuts, overs, strict=True):
        assert entry.captured_line is not None
        rate = entry.captured_line.tax_rate
        if over > 0:
            result.append(_share_line(reference + CUT_SUFFIX, cut_name(name), rate, over))
    return result


def _fees_due_alone(order: OrderSnapshot, ledger: Ledger) -> bool:
    """Fees charged "with the order's first capture" (contract §4) when that capture
    was made without the service (a portal capture, one before the first read) and no
    capture of goods is left to carry them: every unit of goods of some value is
    captured, or the order is cancelled with its shipped goods captured. They then go
    alone, as the fee of a first capture the service made would have gone with it."""
    goods = [line for line in order.effective_lines if not line.shared and not line.is_fee]
    # Made when money moved for goods, whatever they are priced at now (units captured
    # and priced to 0 since: seed 63106); units captured at 0 moved none.
    first_made = any(
        ledger.get(line.id, LineLedger()).captured_quantity > 0
        and ledger.get(line.id, LineLedger()).captured_amount > 0
        for line in goods
    )
    if not first_made:
        return False
    if order.status == "cancelled":
        return True
    return all(
        ledger.get(line.id, LineLedger()).captured_quantity >= line.quantity
        for line in goods
        if line.total > 0
    )


def _merge_shares(lines: list[PspLine]) -> list[PspLine]:
    """One line per reference (a reducing line is either taken or corrected)."""
    seen: dict[str, int] = {}
    merged: list[PspLine] = []
    for line in lines:
        if line.reference not in seen:
            seen[line.reference] = len(merged)
            merged.append(line)
            continue
        index = seen[line.reference]
        before = merged[index]
        merged[index] = _share_line(
            line.reference,
            line.name,
            line.tax_rate,
            before.total_amount + line.total_amount,
            None,
            line.type,
        )
    return merged


def refund_lines(order: OrderSnapshot, ledger: Ledger) -> list[PspLine]:
    """The lines of a refund of everything returned but not yet refunded.

    Only captured units are refunded, at what they were captured at: their part of the
    line's captured value and of the discount shares their captures carried, whatever
    the shop's discount lines say now. So a refund never exceeds what was captured for
    the returned units, and the last unit back takes exactly what is left of them.
    """
    products, _ = _split_lines(order)
    result: list[PspLine] = []
    cuts_back: list[PspLine] = []
    shares_back = 0
    tax_back = 0
    for line in products:
        entry = ledger.get(line.id, LineLedger())
        held_quantity = entry.held_quantity
        if held_quantity <= 0:
            continue
        quantity = min(line.returned_quantity - entry.refunded_quantity, held_quantity)
        if quantity <= 0:
            continue
        value = share(max(entry.held_value, 0), quantity, held_quantity)
        shares_back += share(entry.held_share, quantity, held_quantity)
        tax_back += share(entry.held_tax_share, quantity, held_quantity)
        captured = _as_captured(line, entry)
        result.append(line_part(captured, quantity, value))
        # A price cut a later capture gave back for these units is no longer held.
        cut = share(entry.held_correction, quantity, held_quantity)
        if cut:
            cuts_back.append(_share_line(line.id, line.name, captured.tax_rate, cut))
    if not result:
        return []
    # Each shared line gives back what the units carried of it (contract §4: sales tax
    # is shared by refunds "as discount lines are"), not their net on one kind alone.
    return (
        result
        + _shares_back(order, ledger, shares_back - tax_back)
        + _shares_back(order, ledger, tax_back, tax=True)
        + cuts_back
    )


def _as_captured(line: Line, entry: LineLedger) -> Line:
    """The shop's line at the tax rate its units were captured at: a refund gives back
    the tax that was charged, whatever the rate is now."""
    captured = entry.captured_line
    if captured is None or captured.tax_rate == line.tax_rate:
        return line
    return line.model_copy(update={"tax_rate": captured.tax_rate, "total_tax_amount": None})


def _shares_back(
    order: OrderSnapshot, ledger: Ledger, amount: int, *, tax: bool = False
) -> list[PspLine]:
    """`amount` of discount shares given back (with `tax`: of sales tax shares), split
    over those shared lines by what each still holds, so that when everything is back
    each has given back all of it."""
    if amount == 0:
        return []
    names = {line.id: line for line in order.effective_lines}
    kind = [
        (reference, entry)
        for reference, entry in ledger.items()
        if entry.line is not None
        and _is_share(entry.line)
        and (entry.line.type is LineType.SALES_TAX) == tax
    ]
    held = [
        (reference, entry)
        for reference, entry in kind
        if entry.held_value != 0 and (entry.held_value < 0) == (amount < 0)
    ]
    if not held:
        # A later capture's correction gave the discount back already (its share then
        # sits on the units of that capture): the units returned now still carry theirs,
        # and the first discount line the order had carries it back.
        held = kind[:1]
        if not held:
            return []
        reference, entry = held[0]
        shop, line = names.get(reference), entry.line
        if shop is not None:
            return [_reducing_share(shop, amount)]
        assert line is not None
        return [_share_line(reference, line.name, line.tax_rate, amount, None, line.type)]
    parts = distribute(abs(amount), [abs(entry.held_value) for _, entry in held])
    result = []
    for (reference, entry), part in zip(held, parts, strict=True):
        if not part:
            continue
        value = part if amount > 0 else -part
        shop = names.get(reference)
        if shop is not None:
            result.append(_reducing_share(shop, value))
        else:
            assert entry.line is not None
            line = entry.line
            result.append(_share_line(reference, line.name, line.tax_rate, value, None, line.type))
    return result


# --- PSP formats --------------------------------------------------------------------


def klarna_order_lines(lines: Sequence[PspLine]) -> list[dict[str, Any]]:
    """Klarna OM `order_line` objects (update authorization, capture, refund)."""
    result: list[dict[str, Any]] = []
    for line in lines:
        item: dict[str, Any] = {
            "type": line.type.value,
            "reference": line.reference,
            "name": line.name,
            "quantity": line.quantity,
        }
        if line.quantity_unit is not None:
            item["quantity_unit"] = line.quantity_unit
        item |= {
            "unit_price": line.unit_price,
            "tax_rate": line.tax_rate,
            "total_amount": line.total_amount,
            "total_discount_amount": line.total_discount_amount,
            "total_tax_amount": line.total_tax_amount,
        }
        if line.product_url is not None:
            item["product_url"] = line.product_url
        if line.image_url is not None:
            item["image_url"] = line.image_url
        result.append(item)
    return result


def _per_unit(line: PspLine) -> list[tuple[int, int, int]]:
    return per_unit(line.total_amount, line.quantity, line.tax_rate)


def adyen_line_items(lines: Sequence[PspLine]) -> list[dict[str, Any]]:
    """Adyen Checkout v71 `lineItems` (per-unit amounts, integers as the schema says)."""
    result: list[dict[str, Any]] = []
    for line in lines:
        for quantity, unit, tax in _per_unit(line):
            item: dict[str, Any] = {
                "quantity": quantity,
                "amountExcludingTax": unit - tax,
                "taxPercentage": line.tax_rate,
                "description": line.name,
                "id": line.reference,
                "taxAmount": tax,
                "amountIncludingTax": unit,
            }
            if line.product_url is not None:
                item["productUrl"] = line.product_url
            if line.image_url is not None:
                item["imageUrl"] = line.image_url
            result.append(item)
    return result


def openinvoice_data(lines: Sequence[PspLine], currency: str) -> dict[str, str]:
    """Classic Pal v68 `additionalData.openinvoicedata.*` for captures and refunds."""
    data: dict[str, str] = {}
    number = 0
    for line in lines:
        for quantity, unit, tax in _per_unit(line):
            number += 1
            prefix = f"openinvoicedata.line{number}."
            data[prefix + "currencyCode"] = currency
            data[prefix + "description"] = line.name
            data[prefix + "itemAmount"] = str(unit - tax)
            data[prefix + "itemVatAmount"] = str(tax)
            data[prefix + "itemVatPercentage"] = str(line.tax_rate)
            data[prefix + "numberOfItems"] = str(quantity)
            if line.product_url is not None:
                data[prefix + "productUrl"] = line.product_url
            if line.image_url is not None:
                data[prefix + "imageUrl"] = line.image_url
    return {"openinvoicedata.numberOfLines": str(number), **data}
