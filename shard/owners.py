"""Who owns which resting order: the account index of the book. Pure.

Only orders that carry an account are recorded, so a book whose orders have none holds three
empty dicts and its matching path never looks here (the engine uses the plain
:meth:`~shard.book.OrderBook.take` while :attr:`Owners.of` is empty and the taker has no
account).

Each account with live orders is one :class:`Account`, and an order maps to that object, not
to its name: the orders of an account share one name string without interning it, and the
matching path tells a taker's own orders by identity. Cost: O(1) to add or forget an order;
:meth:`Owners.orders_of` is O(orders of that account), never O(book). About 100 bytes per
order with an account (two dict entries).
"""

from __future__ import annotations

from collections.abc import Container


class Account:
    """An account that has live orders: its name and its order IDs in arrival order."""

    __slots__ = ("name", "orders")

    def __init__(self, name: str) -> None:
        self.name = name
        self.orders: dict[str, None] = {}


class Owners:
    """The accounts of the resting orders that have one."""

    __slots__ = ("accounts", "modes", "of")

    def __init__(self) -> None:
        self.of: dict[str, Account] = {}
        """Order ID -> its account."""
        self.modes: dict[str, str] = {}
        """Order ID -> the self-trade prevention mode its order gave (absent: the pair's)."""
        self.accounts: dict[str, Account] = {}
        """Account name -> the account, while it has a live order (no empty one is kept)."""

    def add(self, order_id: str, name: str, mode: str | None) -> None:
        """Record a resting order of account ``name`` (``mode``: the stp it gave, if any).
        (:meth:`~shard.book.OrderBook.add` does the same inline.)"""
        account = self.accounts.get(name)
        if account is None:
            account = self.accounts[name] = Account(name)
        account.orders[order_id] = None
        self.of[order_id] = account
        if mode is not None:
            self.modes[order_id] = mode

    def forget(self, order_id: str) -> None:
        """The order left the book: drop it (nothing happens for an order without account)."""
        account = self.of.pop(order_id, None)
        if account is None:
            return
        if self.modes:
            self.modes.pop(order_id, None)
        orders = account.orders
        del orders[order_id]
        if not orders:
            del self.accounts[account.name]

    def account_of(self, order_id: str) -> str | None:
        """The account name of a live order, None if it has none (or is not live). O(1)."""
        account = self.of.get(order_id)
        return None if account is None else account.name

    def orders_of(self, name: str) -> list[str]:
        """The live order IDs of account ``name``, oldest first. O(its orders)."""
        account = self.accounts.get(name)
        return [] if account is None else list(account.orders)

    def check(self, live: Container[str]) -> None:
        """Assert the index is consistent with the book's ``live`` orders. O(orders)."""
        assert all(order_id in live for order_id in self.of), "an owner of a gone order"
        assert set(self.modes) <= set(self.of), "an stp mode of an order without account"
        listed = {o: a for a in self.accounts.values() for o in a.orders}
        assert listed == self.of, "orders by account out of step with accounts by order"
        assert all(self.accounts[a.name] is a for a in self.accounts.values()), "misnamed"
        assert all(a.orders for a in self.accounts.values()), "an account with no orders kept"
