"""The gateway's fan-out without a server: depth entries and trades merged into flushes, handed
to clients that send at their own pace, ask for snapshots and fall behind. A client that
applies what it is sent, as the page does, always holds the book of the seq it was last sent
(checksum-checked at every message), gets every trade once and in order, and holds a bounded
number of unsent updates."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shard.config import ConfigError
from shard.gateway.config import GatewayConfig, load_gateway
from shard.gateway.feed import TICKS_HELD, PairFeed, Subscriber
from shard.l2 import checksum
from shard.marketdata import Best, DepthEntry, Level, Update
from shard.messages import Trade


class Client:
    """What a browser keeps: the book from the messages it was sent, checked as it goes."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.book: dict[str, dict[int, int]] = {"bids": {}, "asks": {}}
        self.seq = -1
        self.trades: list[int] = []

    def receive(self, text: str) -> None:
        message = msgspec.json.decode(text)
        kind = message["type"]
        if kind == "trades":
            self.trades += [t["trade_id"] for t in message["trades"]]
            return
        if kind == "snapshot":
            self.book = {"bids": {}, "asks": {}}
            self.trades = [t["trade_id"] for t in message["trades"]]
        elif kind == "depth":
            assert message["prev"] == self.seq
        else:
            return
        for side in ("bids", "asks"):
            for price, quantity, _ in message[side]:
                if quantity:
                    self.book[side][price] = quantity
                else:
                    self.book[side].pop(price, None)
        bids = sorted(self.book["bids"].items(), reverse=True)
        asks = sorted(self.book["asks"].items())
        assert checksum(bids, asks) == message["checksum"]
        self.seq = message["seq"]

    def send_all(self, feed: PairFeed) -> None:
        """One pass of the gateway's sender for this client (app.stream's deliver)."""
        sub = self.sub
        if sub.snapshot:
            self.receive(msgspec.json.encode(feed.snapshot(sub)).decode())
            return
        depth = sub.take_depth()
        if depth is not None:
            self.receive(depth)
        while sub.trades:
            self.receive(sub.take_trades())


class Venue:
    """A pair's book and trades as the daemon would publish them, fed to a gateway's feed."""

    def __init__(self) -> None:
        self.feed = PairFeed(cast(Any, None), cast(Any, None), "P")
        self.feed.view.synced = True
        self.trade_id = 0

    def entry(self, changes: list[tuple[bool, int, int]]) -> None:
        book = self.feed.view.book
        bids = {p: Level(p, q, 1) for is_bid, p, q in changes if is_bid}
        asks = {p: Level(p + 100, q, 1) for is_bid, p, q in changes if not is_bid}
        draft = DepthEntry(
            "0-1", book.seq + 1, f"{book.seq + 1}-0", tuple(bids.values()),
            tuple(asks.values()), None, None, 0,
        )  # fmt: skip
        book.apply(draft)  # applied; the checksum is this book's, as the daemon's
        best_bid, best_ask = book.bids.best(), book.asks.best()
        entry = draft._replace(
            best_bid=None if best_bid is None else Best(best_bid.price, best_bid.quantity),
            best_ask=None if best_ask is None else Best(best_ask.price, best_ask.quantity),
            checksum=book.checksum(),
        )
        self.feed.on_book(Update(entry.seq, entry.input_id, entry, None))

    def trades(self, n: int) -> None:
        made = []
        for _ in range(n):
            self.trade_id += 1
            made.append(Trade(self.trade_id, "t", "m", 100, 1, 0, "buy"))
        self.feed.trades.extend(made)
        self.feed.on_trades(made)


steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("entry"),
            st.lists(
                st.tuples(st.booleans(), st.integers(1, 25), st.integers(0, 4)),
                min_size=1,
                max_size=4,
            ),
        ),
        st.tuples(st.just("trades"), st.integers(1, 3)),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("send"), st.integers(0, 2)),
        st.tuples(st.just("ask"), st.integers(0, 2)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_every_client_holds_the_book_it_was_sent_and_every_trade_once(
    script: list[tuple[str, Any]],
) -> None:
    venue = Venue()
    feed = venue.feed
    clients = [Client(feed.subscribe(10**6)) for _ in range(3)]
    for kind, arg in script:
        if kind == "entry":
            venue.entry(arg)
        elif kind == "trades":
            venue.trades(arg)
        elif kind == "flush":
            feed.flush()
        elif kind == "send":
            clients[arg].send_all(feed)
        else:  # the client asks for a snapshot
            clients[arg].sub.snapshot = True
        for client in clients:
            assert len(client.sub.ticks) <= TICKS_HELD
    feed.flush()
    for client in clients:
        client.send_all(feed)
        client.send_all(feed)  # a snapshot first, if one was asked for
        view = feed.view
        assert client.seq == view.seq
        assert client.book["bids"] == {lv.price: lv.quantity for lv in view.bids()}
        assert client.book["asks"] == {lv.price: lv.quantity for lv in view.asks()}
        # Every trade from its (last) snapshot's on, once and in order.
        if venue.trade_id:
            assert client.trades == list(range(client.trades[0], venue.trade_id + 1))
        else:
            assert client.trades == []


def test_a_client_in_step_is_sent_the_text_encoded_once_for_all() -> None:
    venue = Venue()
    feed = venue.feed
    first, second = feed.subscribe(100), feed.subscribe(100)
    for sub in (first, second):
        feed.snapshot(sub)
    venue.entry([(True, 5, 2)])
    venue.trades(2)
    feed.flush()
    assert first.take_depth() is second.take_depth()
    assert first.take_trades() is second.take_trades()


def test_a_client_that_falls_behind_on_trades_is_marked_and_holds_none() -> None:
    venue = Venue()
    feed = venue.feed
    sub = feed.subscribe(5)
    feed.snapshot(sub)
    venue.trades(3)
    feed.flush()
    assert not sub.overflowed and sub.unsent_trades == 3
    venue.trades(3)
    feed.flush()
    assert sub.overflowed and sub.kicked.is_set() and not sub.trades


def test_trades_a_snapshot_held_are_not_sent_again() -> None:
    venue = Venue()
    feed = venue.feed
    sub = feed.subscribe(100)
    client = Client(sub)
    venue.trades(2)  # read, not yet flushed
    client.send_all(feed)  # the snapshot holds trades 1 and 2
    venue.trades(1)
    feed.flush()
    client.send_all(feed)
    assert client.trades == [1, 2, 3]


def test_a_client_far_behind_holds_one_merged_update_that_is_still_exact() -> None:
    venue = Venue()
    feed = venue.feed
    client = Client(feed.subscribe(100))
    client.send_all(feed)
    for n in range(5 * TICKS_HELD):
        venue.entry([(n % 2 == 0, n % 7 + 1, n % 3)])
        feed.flush()
        assert len(client.sub.ticks) <= TICKS_HELD
    client.send_all(feed)  # one depth message from its seq to the book's
    assert client.seq == feed.view.seq == 5 * TICKS_HELD
    assert client.book["bids"] == {lv.price: lv.quantity for lv in feed.view.bids()}
    assert client.sub.conflated == 5 * TICKS_HELD - 1


def test_the_flush_interval_is_configured_in_milliseconds() -> None:
    config, _ = load_gateway("config/gateway.toml", env={})
    assert config.ws_interval_ms == 100
    env = {"SHARD_GATEWAY_WS_INTERVAL_MS": "0"}
    assert load_gateway("config/gateway.toml", env=env)[0].ws_interval_ms == 0
    with pytest.raises(ConfigError, match="ws_interval_ms = -5 is below 0"):
        GatewayConfig(pairs=["P"], ws_interval_ms=-5)
