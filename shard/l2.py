"""The book as market data shows it (L2: levels aggregated by price) and its checksum. Pure.

The checksum is the contract's: CRC-32 (``zlib.crc32``, unsigned) of the ASCII text of the
:data:`CHECKSUM_LEVELS` best bids best first, ``|``, then the :data:`CHECKSUM_LEVELS` best asks
best first, each level ``<price>:<quantity>``, joined by ``,``. A client that applies the depth
entries to its copy of the book recomputes it to prove the copy right. Cost: O(levels summed).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Final

CHECKSUM_LEVELS: Final = 10

Level = Sequence[int]
"""A level as ``(price, quantity)`` or ``(price, quantity, orders)``."""


def checksum(bids: Iterable[Level], asks: Iterable[Level]) -> int:
    """The contract's checksum of the best levels given, best first (at most
    :data:`CHECKSUM_LEVELS` of each side are read)."""
    return checksum_of(side_text(bids), side_text(asks))


def side_text(levels: Iterable[Level]) -> str:
    """One side's part of the checksummed text: its best levels as ``<price>:<quantity>``."""
    return ",".join([f"{level[0]}:{level[1]}" for level in islice(levels, CHECKSUM_LEVELS)])


def level_text(price: int, quantity: int) -> str:
    """One level's part of :func:`side_text`."""
    return f"{price}:{quantity}"


def checksum_of(bids_text: str, asks_text: str) -> int:
    """The checksum of the two sides' :func:`side_text`."""
    return zlib.crc32(f"{bids_text}|{asks_text}".encode())
