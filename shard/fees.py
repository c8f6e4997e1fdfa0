"""Maker and taker fees: integer rates in parts per million of a trade's notional. Pure.

A fee is in the price's units (quote x 10^8), computed on the exact notional (price x quantity,
a Python integer: no overflow at any int64 price and quantity):

* a rate r >= 0 charges ceil(notional x r / 10^6);
* a rebate (r < 0, the maker's only) pays -floor(notional x |r| / 10^6): the venue never pays
  out a fraction, and never charges one less than it earns.

The maker rate may be negative, the taker rate may not, and maker + taker >= 0, so the venue
never pays out more on a trade than it takes (:func:`check_rates`).
"""

from __future__ import annotations

from typing import Final, NamedTuple

PPM: Final = 1_000_000
MAX_RATE_PPM: Final = PPM
"""A rate's magnitude is at most 100% of the notional."""


class Fees(NamedTuple):
    """A pair's rates, in parts per million of the notional."""

    maker_ppm: int = 0
    taker_ppm: int = 0


def fee(notional: int, ppm: int) -> int:
    """The fee on ``notional`` at ``ppm``: rounded up for a charge, towards zero for a rebate."""
    if ppm >= 0:
        return -(-notional * ppm // PPM)
    return -(notional * -ppm // PPM)


def check_rates(maker_ppm: int, taker_ppm: int) -> str | None:
    """What is wrong with these rates, as a sentence; None if they can be used."""
    for name, rate in (("maker_fee_ppm", maker_ppm), ("taker_fee_ppm", taker_ppm)):
        if abs(rate) > MAX_RATE_PPM:
            return f"{name} {rate} is beyond 100% of the notional (|rate| <= {MAX_RATE_PPM})"
    if taker_ppm < 0:
        return f"taker_fee_ppm {taker_ppm} is negative: only the maker may get a rebate"
    if maker_ppm + taker_ppm < 0:
        return (
            f"maker_fee_ppm {maker_ppm} + taker_fee_ppm {taker_ppm} is negative: the venue "
            "would pay out more on each trade than it takes"
        )
    return None
