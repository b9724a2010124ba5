"""Exact money arithmetic: Decimal ↔ integer units, and largest-remainder splitting (bills in billing, counts in the
attributor: one rule for both).

Bills carry amounts finer than a cent (FOCUS samples have 11 decimals), so a line is split in integer units of its own
precision, at least micro-units: the parts then sum to the billed amount exactly, whatever it is. Pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from .errors import InputError

#: Micro-units: the default quantum (and the one the vectorised benchmark path uses).
MICRO_SCALE = 6
#: Digits an amount may need (Decimal's default context precision), so sums of amounts and their parts are exact.
MAX_DIGITS = 28


class MoneyError(InputError, ValueError):
    """An amount that is not a finite decimal number."""


def parse_amount(text: str) -> Decimal:
    """A decimal from a bill field; rejects NaN, infinities, exponents beyond reason and empty text."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise MoneyError(f"not a decimal number: {text!r}") from None
    if not value.is_finite():
        raise MoneyError(f"not a finite number: {text!r}")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    # Sums of parts must stay exact in Decimal's default 28-digit context: whole digits + decimals <= 28.
    if max(value.adjusted() + 1, 1) + max(-exponent, 0) > MAX_DIGITS:
        raise MoneyError(f"more than {MAX_DIGITS} significant digits: {text!r}")
    return value


def scale_of(amount: Decimal) -> int:
    """Decimal digits needed to hold ``amount`` exactly, at least ``MICRO_SCALE``."""
    exponent = amount.normalize().as_tuple().exponent
    assert isinstance(exponent, int)
    return max(MICRO_SCALE, -exponent)


def to_units(amount: Decimal, scale: int) -> int:
    """``amount`` as an integer count of ``10**-scale``; raises if that is not exact."""
    units = amount.scaleb(scale)
    if units != units.to_integral_value():
        raise MoneyError(f"{amount} is not a whole number of 1e-{scale}")
    return int(units)


def from_units(units: int, scale: int) -> Decimal:
    return Decimal(units).scaleb(-scale)


def largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Split integer ``total`` in proportion to non-negative integer ``weights``; the parts sum to ``total`` exactly.

    Each part is the floor of its exact share; the units left over go one each to the largest remainders, ties to the
    earlier index (callers order their keys, so results are deterministic). A negative total (a credit) is split as
    its absolute value and negated, so a credit mirrors the charge it offsets. All-zero weights are the caller's case
    to handle (there is no proportion); this raises.
    """
    if any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative")
    wsum = sum(weights)
    if wsum == 0:
        raise ValueError("no weight to split by")
    sign = -1 if total < 0 else 1
    magnitude = abs(total)
    parts = []
    remainders = []
    for i, w in enumerate(weights):
        q, r = divmod(magnitude * w, wsum)
        parts.append(q)
        remainders.append((-r, i))
    left = magnitude - sum(parts)
    for _, i in sorted(remainders)[:left]:
        parts[i] += 1
    return [sign * p for p in parts]
