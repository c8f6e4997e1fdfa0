"""A pair's trading terms: the configuration that changes outputs (the self-trade prevention
default and the fee rates), and how they are recorded so that a replay applies each input
under the terms it was first applied under. Pure.

The terms in force are recorded in the checkpoint by every commit (``terms``: ``<stp_default>
<maker_fee_ppm> <taker_fee_ppm>``; absent in a checkpoint older than them, which reads as the
defaults). They change only at a start: a daemon whose configured terms differ from the
checkpoint's replays under the checkpoint's, stores a snapshot there, and only then applies
inputs under its own (:meth:`shard.snapshotter.Snapshots.store_now`). So the inputs between the
latest snapshot and the checkpoint were all applied under the checkpoint's terms.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from shard.fees import Fees, check_rates
from shard.messages import STP_MODES

STP_DEFAULT: Final = "cancel_taker"


class Terms(NamedTuple):
    """The self-trade prevention mode of an order that gives none, and the fee rates (ppm)."""

    stp_default: str = STP_DEFAULT
    maker_fee_ppm: int = 0
    taker_fee_ppm: int = 0

    @property
    def fees(self) -> Fees | None:
        """The rates as the engine takes them; None when both are 0."""
        if not self.maker_fee_ppm and not self.taker_fee_ppm:
            return None
        return Fees(self.maker_fee_ppm, self.taker_fee_ppm)

    def text(self) -> str:
        """As the checkpoint records them."""
        return f"{self.stp_default} {self.maker_fee_ppm} {self.taker_fee_ppm}"

    def problem(self) -> str | None:
        """What is wrong with these terms, as a sentence; None if they can be used."""
        if self.stp_default not in STP_MODES:
            return f"stp_default must be one of {', '.join(STP_MODES)}, got {self.stp_default!r}"
        return check_rates(self.maker_fee_ppm, self.taker_fee_ppm)


def parse_terms(text: str) -> Terms | None:
    """The terms a checkpoint records (``''``: the defaults); None if ``text`` is not such."""
    if not text:
        return Terms()
    parts = text.split(" ")
    if len(parts) != 3 or not all(p.lstrip("-").isdigit() for p in parts[1:]):
        return None
    terms = Terms(parts[0], int(parts[1]), int(parts[2]))
    return None if terms.problem() else terms
