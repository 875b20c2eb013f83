"""The shop's view of an order: the snapshot it sends with every event (contract §4).

The snapshot is the desired state. Validation happens here, field by field, so that a
bad body is answered with the exact path of the bad field and nothing is stored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from domain.money import klarna_tax_ok, per_unit, tax_of

# The PSPs' own limits, from their API descriptions (../shared/vendor-specs/). Every
# figure we compute from a snapshot and send is held to them here, so that nothing the
# shop sends is accepted and then refused by the PSP (or worse, overflows on the way).
#
# Klarna OM v1 (klarna-order-management-v1.openapi.json): `order_line.total_amount`,
# `order_line.unit_price`, `order_line.total_tax_amount` and
# `order_line.total_discount_amount` have `maximum: 100000000`; so do
# `Update_authorization.order_amount`, `CaptureObject.captured_amount` and
# `RefundObject.refunded_amount` (with `minimum: 0`). Adyen (CheckoutService-v71,
# Webhooks-v1): `Amount.value` is `format: int64` without a maximum; an Adyen payment is
# held to the same ceiling so one order model serves both.
MAX_AMOUNT = 100_000_000
# Klarna OM v1: `Update_authorization.order_lines`, `CaptureObject.order_lines` and
# `RefundObject.order_lines` have `maxItems: 1000`. Adyen Checkout v71 `lineItems` sets
# no maxItems; the same 1000 is held for Adyen, counted after per-unit splitting (a line
# whose total does not divide by its quantity becomes two `LineItem`s).
MAX_PSP_LINES = 1000
# Postgres bigint, which stores `version`.
MAX_VERSION = 2**63 - 1
# Klarna OM v1 `Order.order_id`: "Cannot be longer than 255 characters" (a UUID in
# practice). Adyen Webhooks v1 `pspReference`: "Adyen's 16-character unique reference".
# Both end up in URL paths, so only letters, digits, '-' and '_' are accepted.
KLARNA_ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,254}$"
PSP_REFERENCE_PATTERN = r"^[A-Za-z0-9]{1,64}$"
# Contract §4: an order id ends up in URL paths (/orders/{id}), logs and a terminal, so
# it is 1–64 characters of a letter or digit, then letters, digits, '-', '_', '.', ':'
# (no '/', no '..', no control or invisible characters).
ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
UNITEMISED_DISCOUNT_ID = "ordersync-unitemised-discount"


class LineType(StrEnum):
    PHYSICAL = "physical"
    DIGITAL = "digital"
    DISCOUNT = "discount"
    SHIPPING_FEE = "shipping_fee"
    SALES_TAX = "sales_tax"
    STORE_CREDIT = "store_credit"
    GIFT_CARD = "gift_card"
    SURCHARGE = "surcharge"


# Lines that lower the order total: they are never shipped; captures and refunds carry
# a proportional share of them instead.
REDUCING_TYPES = frozenset({LineType.DISCOUNT, LineType.STORE_CREDIT, LineType.GIFT_CARD})
# Lines that are never shipped and are shared by captures and refunds in proportion to
# the value of the goods they carry (contract §4): the reducing lines, and US sales tax.
SHARED_TYPES = REDUCING_TYPES | {LineType.SALES_TAX}
# Lines charged with the order's first capture (or when the shop marks them shipped, if
# that comes first), refunded only when the shop marks them returned (contract §4).
FEE_TYPES = frozenset({LineType.SHIPPING_FEE, LineType.SURCHARGE})

# Largest integer a JSON number written with a fraction or exponent holds exactly.
_EXACT = 2**53


def _integral(value: object) -> object:
    """JSON has one number type: 2.0 and 2e0 are the integer 2 (a generated client may
    send them), taken when exact; 2.5, a string or a boolean stays refused (strict)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT:
        return int(value)
    return value


Integral = BeforeValidator(_integral)
Amount = Annotated[int, Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, strict=True), Integral]
Count = Annotated[int, Field(ge=0, le=1_000_000, strict=True), Integral]


class _Model(BaseModel):
    # Unknown fields are dropped, not kept: a shop may send customer data we must not store.
    model_config = ConfigDict(extra="ignore", frozen=True)


# Klarna OM v1 `order_line.name`: "Descriptive item name. Maximum 255 characters."
# (Adyen's `description` takes more.) Every name the service sends stays within it.
MAX_LINE_NAME = 255


class Line(_Model):
    """One order line. Beyond each field's own bounds (422 naming the field):
    total_discount_amount ≤ quantity × unit_price (0 on discount, store_credit and
    gift_card lines, whose unit_price carries the reduction); shipped_quantity ≤
    quantity; returned_quantity ≤ shipped_quantity; total_amount, when given, equals
    quantity × unit_price − total_discount_amount, which is within ±10^8, not negative
    (not positive on a reducing line); total_tax_amount, when given, is within ±1 of
    the tax at tax_rate."""

    id: str = Field(min_length=1, max_length=255)
    name: str = Field(max_length=MAX_LINE_NAME)
    type: LineType = LineType.PHYSICAL
    quantity: Count
    quantity_unit: str | None = Field(default=None, max_length=10)
    unit_price: Amount
    tax_rate: Annotated[int, Field(ge=0, le=10_000, strict=True), Integral]
    total_discount_amount: Annotated[int, Field(ge=0, le=MAX_AMOUNT, strict=True), Integral] = 0
    shipped_quantity: Count = 0
    returned_quantity: Count = 0
    total_amount: Amount | None = None
    total_tax_amount: Amount | None = None
    product_url: str | None = Field(default=None, max_length=1024)
    image_url: str | None = Field(default=None, max_length=1024)

    @field_validator("total_discount_amount")
    @classmethod
    def _discount_within_line(cls, value: int, info: ValidationInfo) -> int:
        gross = info.data.get("quantity", 0) * info.data.get("unit_price", 0)
        line_type = info.data.get("type")
        if line_type in REDUCING_TYPES:
            if value != 0:
                raise ValueError("a discount line carries its discount in unit_price")
        elif value > gross:
            raise ValueError(f"must not exceed quantity × unit_price ({gross})")
        return value

    @field_validator("shipped_quantity")
    @classmethod
    def _shipped_within_quantity(cls, value: int, info: ValidationInfo) -> int:
        if "quantity" in info.data and value > info.data["quantity"]:
            raise ValueError("must not exceed quantity")
        if value and info.data.get("type") in REDUCING_TYPES:
            raise ValueError("discount lines are not shipped")
        return value

    @field_validator("returned_quantity")
    @classmethod
    def _returned_within_shipped(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("type") in FEE_TYPES:
            # A fee is charged without being marked shipped; it is returned on its own.
            if "quantity" in info.data and value > info.data["quantity"]:
                raise ValueError("must not exceed quantity")
            return value
        if "shipped_quantity" in info.data and value > info.data["shipped_quantity"]:
            raise ValueError("must not exceed shipped_quantity")
        return value

    @field_validator("total_amount")
    @classmethod
    def _total_matches(cls, value: int | None, info: ValidationInfo) -> int | None:
        expected = _computed_total(info)
        if value is not None and expected is not None and value != expected:
            raise ValueError(
                f"must equal quantity × unit_price − total_discount_amount ({expected})"
            )
        if expected is not None:
            _check_sign(expected, info.data.get("type"))
        return value

    @field_validator("total_tax_amount")
    @classmethod
    def _tax_matches(cls, value: int | None, info: ValidationInfo) -> int | None:
        total = _computed_total(info)
        rate = info.data.get("tax_rate")
        if value is None or total is None or rate is None:
            return value
        if not klarna_tax_ok(total, value, rate):
            raise ValueError(f"must be within ±1 of {tax_of(total, rate)}")
        return value

    @model_validator(mode="after")
    def _total_within_limits(self) -> Line:
        # Checked whether or not the shop sent `total_amount`: the computed figure is sent.
        if not -MAX_AMOUNT <= self.total <= MAX_AMOUNT:
            raise ValueError(
                f"total_amount (quantity × unit_price − total_discount_amount = {self.total})"
                f" is outside ±{MAX_AMOUNT}, Klarna's order_line.total_amount limit"
            )
        return self

    @property
    def total(self) -> int:
        """What the line costs with its own discount, tax included."""
        return self.quantity * self.unit_price - self.total_discount_amount

    @property
    def tax(self) -> int:
        if self.total_tax_amount is not None:
            return self.total_tax_amount
        return tax_of(self.total, self.tax_rate)

    @property
    def reduces_total(self) -> bool:
        return self.type in REDUCING_TYPES

    @property
    def shared(self) -> bool:
        """Carried by captures and refunds as a proportional share, never shipped."""
        return self.type in SHARED_TYPES

    @property
    def is_fee(self) -> bool:
        return self.type in FEE_TYPES


def _computed_total(info: ValidationInfo) -> int | None:
    data = info.data
    if not {"quantity", "unit_price", "total_discount_amount"} <= data.keys():
        return None
    return int(data["quantity"] * data["unit_price"] - data["total_discount_amount"])


def _check_sign(total: int, line_type: LineType | None) -> None:
    if line_type in REDUCING_TYPES and total > 0:
        raise ValueError("a discount line's total must not be positive")
    if line_type not in REDUCING_TYPES and total < 0:
        raise ValueError(f"a {line_type} line's total must not be negative; use a discount line")


class KlarnaPayment(_Model):
    provider: Literal["klarna"]
    klarna_order_id: str = Field(pattern=KLARNA_ORDER_ID_PATTERN)
    payment_method: str | None = Field(default=None, max_length=64)
    # Which of the merchant's Klarna accounts (ACCOUNTS_FILE) took the payment; without
    # it, the account whose countries list the order's country.
    klarna_account: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AdyenPayment(_Model):
    provider: Literal["adyen"]
    psp_reference: str = Field(pattern=PSP_REFERENCE_PATTERN)
    merchant_account: str | None = Field(default=None, max_length=255)


Payment = Annotated[KlarnaPayment | AdyenPayment, Field(discriminator="provider")]


class Shipping(_Model):
    carrier: str | None = Field(default=None, max_length=100)
    tracking_number: str | None = Field(default=None, max_length=100)
    tracking_uri: str | None = Field(default=None, max_length=1024)
    shipping_method: str | None = Field(default=None, max_length=100)


class OrderSnapshot(_Model):
    """The order as the shop wants it now (contract §4). Beyond each field's own bounds
    (422 naming the field): line ids are unique; the lines add up to 0 or more;
    amount, when given, is at most the sum of the lines; the total is at most 10^8;
    the lines make at most 1,000 PSP lines (Adyen: per unit, a line whose total does
    not divide by its quantity counts twice)."""

    id: str = Field(pattern=ORDER_ID_PATTERN)
    version: Annotated[int, Field(ge=0, le=MAX_VERSION, strict=True), Integral]
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    country: str = Field(pattern=r"^[A-Z]{2}$")
    status: Literal["open", "cancelled"] = "open"
    payment: Payment
    lines: list[Line] = Field(max_length=MAX_PSP_LINES)
    amount: Annotated[int, Field(ge=0, le=MAX_AMOUNT, strict=True), Integral] | None = None
    shipping: Shipping | None = None

    @field_validator("lines")
    @classmethod
    def _unique_ids(cls, lines: list[Line], info: ValidationInfo) -> list[Line]:
        seen: set[str] = set()
        for line in lines:
            if line.id in seen:
                raise ValueError(f"line id {line.id!r} appears twice")
            if line.id == UNITEMISED_DISCOUNT_ID:
                raise ValueError(f"line id {line.id!r} is reserved")
            seen.add(line.id)
        lines_total = sum(line.total for line in lines)
        if lines_total < 0:
            raise ValueError("the lines add up to less than zero")
        payment = info.data.get("payment")
        count = psp_line_count(lines, adyen=isinstance(payment, AdyenPayment))
        if count > MAX_PSP_LINES:
            raise ValueError(f"make {count} PSP lines; the limit is {MAX_PSP_LINES}")
        return lines

    @field_validator("amount")
    @classmethod
    def _amount_not_above_lines(cls, value: int | None, info: ValidationInfo) -> int | None:
        lines: list[Line] | None = info.data.get("lines")
        if value is not None and lines is not None:
            lines_total = sum(line.total for line in lines)
            if value > lines_total:
                raise ValueError(f"must not exceed the sum of the lines ({lines_total})")
            if lines_total - value > MAX_AMOUNT:
                # The difference becomes one discount line, held to Klarna's limits.
                raise ValueError(
                    f"the unitemised discount ({lines_total - value}) would exceed {MAX_AMOUNT}"
                )
            payment = info.data.get("payment")
            count = psp_line_count(lines, adyen=isinstance(payment, AdyenPayment))
            if value < lines_total and count + 1 > MAX_PSP_LINES:
                raise ValueError(
                    f"the unitemised discount line would make {count + 1} PSP lines;"
                    f" the limit is {MAX_PSP_LINES}"
                )
        return value

    @model_validator(mode="after")
    def _total_within_limits(self) -> OrderSnapshot:
        # Klarna `Update_authorization.order_amount`: 0 to 100000000.
        if self.total > MAX_AMOUNT:
            raise ValueError(
                f"the order total ({self.total}) exceeds {MAX_AMOUNT}, the PSPs' limit;"
                " see order.lines and order.amount"
            )
        return self

    @property
    def effective_lines(self) -> list[Line]:
        """The lines with the unitemised discount made explicit (Adyen's third method).

        An `amount` below the sum of the lines means the shop gave a discount it did not
        itemise; it becomes a discount line so every PSP request can list it.
        """
        lines_total = sum(line.total for line in self.lines)
        if self.amount is None or self.amount == lines_total:
            return list(self.lines)
        gap = lines_total - self.amount
        rates = {line.tax_rate for line in self.lines if not line.reduces_total}
        # One rate in the basket: the discount carries it. Mixed rates: no single rate is
        # right, so the discount is booked without tax rather than with a wrong one.
        rate = rates.pop() if len(rates) == 1 else 0
        discount = Line(
            id=UNITEMISED_DISCOUNT_ID,
            name="Discount",
            type=LineType.DISCOUNT,
            quantity=1,
            unit_price=-gap,
            tax_rate=rate,
        )
        return [*self.lines, discount]

    @property
    def total(self) -> int:
        return sum(line.total for line in self.effective_lines)

    @property
    def provider(self) -> str:
        return self.payment.provider

    @property
    def psp_order_id(self) -> str:
        if isinstance(self.payment, KlarnaPayment):
            return self.payment.klarna_order_id
        return self.payment.psp_reference


def fixed_terms(order: OrderSnapshot) -> dict[str, str | None]:
    """What an order's first snapshot fixes for good (contract §4: currency and payment),
    by the path of the field a later snapshot would change; the one definition of that
    rule (data/inbox.py compares it when a snapshot is stored, and names the field).
    The account the order was routed to (contract §6) is fixed as well, compared beside
    these: routing needs the configured accounts, which the domain does not know."""
    payment = order.payment
    terms: dict[str, str | None] = {
        "order.currency": order.currency,
        "order.payment.provider": payment.provider,
    }
    if isinstance(payment, KlarnaPayment):
        terms["order.payment.klarna_order_id"] = payment.klarna_order_id.lower()
    else:
        terms["order.payment.psp_reference"] = payment.psp_reference.lower()
        terms["order.payment.merchant_account"] = payment.merchant_account
    return terms


def psp_line_count(lines: list[Line], *, adyen: bool) -> int:
    """How many lines a request for the whole basket carries: Klarna takes each line as
    it is; Adyen speaks per unit, so a line whose total does not divide evenly by its
    quantity, or whose units' taxes need a cent moved, is sent as several
    (domain.money.per_unit)."""
    if not adyen:
        return len(lines)
    return sum(len(per_unit(line.total, line.quantity, line.tax_rate)) for line in lines)


EventType = Literal[
    "order.created", "order.updated", "order.shipped", "order.returned", "order.cancelled"
]


class ShopEvent(_Model):
    """The body of POST /webhooks/shop: an event and the order's full snapshot."""

    type: EventType
    order: OrderSnapshot
