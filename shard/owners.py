"""Who owns which resting order: the account index of the book. Pure.

Only orders that carry an account are recorded, so a book whose orders have none holds three
empty dicts and its matching path never looks here (the engine uses the plain
:meth:`~shard.book.OrderBook.take` while :attr:`Owners.of` is empty and the taker has no
account).

Cost: O(1) to add or forget an order; :meth:`Owners.orders_of` is O(orders of that account),
never O(book). About 100 bytes per order with an account (two dict entries; the account string
itself is interned, so a million orders of one account share it).
"""

from __future__ import annotations

import sys
from collections.abc import Container


class Owners:
    """The accounts of the resting orders that have one."""

    __slots__ = ("modes", "of", "orders")

    def __init__(self) -> None:
        self.of: dict[str, str] = {}
        """Order ID -> its account."""
        self.modes: dict[str, str] = {}
        """Order ID -> the self-trade prevention mode its order gave (absent: the pair's)."""
        self.orders: dict[str, dict[str, None]] = {}
        """Account -> its live order IDs in arrival order (no empty entry)."""

    def add(self, order_id: str, account: str, mode: str | None) -> None:
        """Record a resting order of ``account`` (``mode``: the stp it gave, if any)."""
        account = sys.intern(account)
        self.of[order_id] = account
        if mode is not None:
            self.modes[order_id] = mode
        owned = self.orders.get(account)
        if owned is None:
            owned = self.orders[account] = {}
        owned[order_id] = None

    def forget(self, order_id: str) -> None:
        """The order left the book: drop it (nothing happens for an order without account)."""
        account = self.of.pop(order_id, None)
        if account is None:
            return
        if self.modes:
            self.modes.pop(order_id, None)
        owned = self.orders[account]
        del owned[order_id]
        if not owned:
            del self.orders[account]

    def orders_of(self, account: str) -> list[str]:
        """The live order IDs of ``account``, oldest first. O(its orders)."""
        return list(self.orders.get(account, ()))

    def check(self, live: Container[str]) -> None:
        """Assert the index is consistent with the book's ``live`` orders. O(orders)."""
        assert all(order_id in live for order_id in self.of), "an owner of a gone order"
        assert set(self.modes) <= set(self.of), "an stp mode of an order without account"
        listed = {o: a for a, owned in self.orders.items() for o in owned}
        assert listed == self.of, "orders by account out of step with accounts by order"
        assert all(self.orders.values()), "an account with no orders kept"
