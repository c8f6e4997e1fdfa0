"""Who owns which resting order: the account index of the book. Pure.

Only orders that carry an account are recorded, so a book whose orders have none holds two
empty dicts and a counter, and its matching path never looks here (the engine hands the index
to :meth:`~shard.book.OrderBook.take` only while it is not empty).

Each account with live orders is one :class:`Account`, and an order maps to that object, not
to its name: the orders of an account share one name string without interning it, the
matching path tells a taker's own orders by identity, and the stp mode an order gave is kept
with it there. Cost: O(1) to add or forget an order; :meth:`Owners.orders_of` is O(orders of
that account), never O(book). About 100 bytes per order with an account (two dict entries).
"""

from __future__ import annotations

from collections.abc import Container


class Account:
    """An account that has live orders: its name, and its orders."""

    __slots__ = ("name", "orders")

    def __init__(self, name: str) -> None:
        self.name = name
        self.orders: dict[str, str | None] = {}
        """Its live order IDs in arrival order -> the stp mode each gave (None: the pair's)."""


class Owners:
    """The accounts of the resting orders that have one."""

    __slots__ = ("accounts", "given", "of")

    def __init__(self) -> None:
        self.of: dict[str, Account] = {}
        """Order ID -> its account."""
        self.given = 0
        """How many of the orders gave an stp mode."""
        self.accounts: dict[str, Account] = {}
        """Account name -> the account, while it has a live order (no empty one is kept)."""

    def add(self, order_id: str, name: str, mode: str | None) -> None:
        """Record a resting order of account ``name`` (``mode``: the stp it gave, if any).
        (:meth:`~shard.book.OrderBook.add` does the same inline.)"""
        account = self.accounts.get(name)
        if account is None:
            account = self.accounts[name] = Account(name)
        account.orders[order_id] = mode
        self.of[order_id] = account
        if mode is not None:
            self.given += 1

    def forget(self, order_id: str) -> None:
        """The order left the book: drop it (nothing happens for an order without account).
        (:meth:`~shard.book.OrderBook.cancel` does the same inline.)"""
        account = self.of.pop(order_id, None)
        if account is None:
            return
        orders = account.orders
        if orders.pop(order_id) is not None:
            self.given -= 1
        if not orders:
            del self.accounts[account.name]

    def account_of(self, order_id: str) -> str | None:
        """The account name of a live order, None if it has none (or is not live). O(1)."""
        account = self.of.get(order_id)
        return None if account is None else account.name

    def mode_of(self, order_id: str) -> str | None:
        """The stp mode a live order of an account gave, None if it gave none. O(1)."""
        account = self.of.get(order_id)
        return None if account is None else account.orders[order_id]

    def orders_of(self, name: str) -> list[str]:
        """The live order IDs of account ``name``, oldest first. O(its orders)."""
        account = self.accounts.get(name)
        return [] if account is None else list(account.orders)

    def check(self, live: Container[str]) -> None:
        """Assert the index is consistent with the book's ``live`` orders. O(orders)."""
        assert all(order_id in live for order_id in self.of), "an owner of a gone order"
        listed = {o: a for a in self.accounts.values() for o in a.orders}
        assert listed == self.of, "orders by account out of step with accounts by order"
        assert all(self.accounts[a.name] is a for a in self.accounts.values()), "misnamed"
        assert all(a.orders for a in self.accounts.values()), "an account with no orders kept"
        given = sum(m is not None for a in self.accounts.values() for m in a.orders.values())
        assert self.given == given, "the count of stp modes given is stale"
