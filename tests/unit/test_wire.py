"""Output entries: the rows the commit sends (shape, then values) give exactly the field/value
lists of the contract, for every combination of fields an event can have."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shard.messages import Event, Trade
from shard.wire import (
    EVENT_NAMES,
    EVENT_SHAPES,
    TRADE_NAMES,
    TRADE_SHAPES,
    Row,
    add_event,
    add_trade,
    event_fields,
    event_from_fields,
    trade_fields,
    trade_from_fields,
)

maybe_int = st.none() | st.integers(0, 2**63 - 1)
events = st.builds(
    Event,
    input_id=st.none() | st.just("1700000000000-7"),
    order_id=st.none() | st.text(min_size=1, max_size=8),
    status=st.sampled_from(["resting", "filled", "cancelled", "rejected"]),
    filled_quantity=maybe_int,
    remaining_quantity=maybe_int,
    cancelled_quantity=maybe_int,
    reason=st.none() | st.just("invalid_field"),
    detail=st.none() | st.just("price -1 is negative"),
    cancelled_orders=maybe_int,
    account=st.none() | st.text(min_size=1, max_size=8),
    resting_order=st.none() | st.just(1),
)
trades = st.builds(
    Trade,
    trade_id=st.integers(1, 2**63 - 1),
    taker_order_id=st.text(min_size=1, max_size=8),
    maker_order_id=st.text(min_size=1, max_size=8),
    price=st.integers(0, 2**63 - 1),
    quantity=st.integers(1, 2**63 - 1),
    timestamp=st.integers(0, 2**63 - 1),
    taker_side=st.sampled_from(["buy", "sell"]),
    input_id=st.none() | st.just("1700000000000-7"),
    maker_account=st.none() | st.text(min_size=1, max_size=8),
    taker_account=st.none() | st.text(min_size=1, max_size=8),
    maker_fee=st.none() | st.integers(-(2**70), 2**70),
    taker_fee=st.integers(0, 2**70),
)


def reference_fields(e: Event) -> list[str]:
    """The contract's rule spelled out: every field that applies, in order; an absent input ID
    is empty, and a reason always comes with its detail."""
    out: list[str] = []
    for name in EVENT_NAMES:
        value = getattr(e, name)
        if name == "input_id" or (name == "detail" and e.reason is not None):
            value = value or ""
        if value is not None and not (name == "detail" and e.reason is None):
            out += (name, str(value))
    return out


@given(events)
def test_an_event_row_names_exactly_its_fields(e: Event) -> None:
    rows: Row = [7, "an earlier row's values"]
    add_event(rows, e)
    shape, values = rows[2], rows[3:]
    assert isinstance(shape, int)
    assert len(EVENT_SHAPES[shape]) == len(values)
    assert event_fields(e) == reference_fields(e)


def test_every_shape_is_reachable_and_distinct() -> None:
    seen = set()
    for bits in range(256):
        e = Event(
            "1-1",
            "o1" if bits & 1 else None,
            "cancelled",
            1 if bits & 2 else None,
            2 if bits & 4 else None,
            3 if bits & 8 else None,
            "no_liquidity" if bits & 16 else None,
            "detail" if bits & 16 else None,
            4 if bits & 32 else None,
            "acct-1" if bits & 64 else None,
            1 if bits & 128 else None,
        )
        rows: Row = []
        add_event(rows, e)
        assert rows[0] == bits
        fields = event_fields(e)
        assert list(EVENT_SHAPES[bits]) == fields[::2]
        assert event_from_fields(dict(zip(fields[::2], fields[1::2], strict=True))) == e
        seen.add(EVENT_SHAPES[bits])
    assert len(seen) == 256


def test_trade_rows_and_fields() -> None:
    t = Trade(3, "taker", "maker", 10_000, 5, 1_700_000_000_000, "buy", None)
    rows: Row = []
    add_trade(rows, t)
    assert rows == [0, "3", "taker", "maker", "10000", "5", "1700000000000", "buy", ""]
    assert trade_fields(t)[::2] == list(TRADE_NAMES[:8]) == list(TRADE_SHAPES[0])
    assert trade_fields(t)[1::2] == rows[1:]


@given(trades)
def test_a_trade_row_names_exactly_its_fields(t: Trade) -> None:
    """A trade's accounts are each there only when its order had one; the fees are both there
    or neither (a pair with fees charges every trade, 0 included)."""
    if t.maker_fee is None:
        t.taker_fee = None
    rows: Row = [5, "an earlier row"]
    add_trade(rows, t)
    shape, values = rows[2], rows[3:]
    assert isinstance(shape, int) and len(TRADE_SHAPES[shape]) == len(values)
    want = [
        x
        for name in TRADE_NAMES
        if (value := getattr(t, name)) is not None or name == "input_id"
        for x in (name, "" if value is None else str(value))
    ]
    assert trade_fields(t) == want
    fields = trade_fields(t)
    back = dict(zip(fields[::2], fields[1::2], strict=True))
    assert trade_fields(trade_from_fields(back)) == want
