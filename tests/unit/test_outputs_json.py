"""The JSON-lines outputs carry every field of the contract, zeros included.

A trade line has exactly the contract's trade fields (``input_id`` only where there is a stream
ID: never in ``shard replay``); an event has ``order_id`` whenever the input's could be read,
``status``, and every quantity field that its input and status imply, even when it is 0.
Price 0 and timestamp 0 are valid values, so the generated inputs use them often.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shard.replay import replay

# The contract's trade fields, minus input_id: replay has no stream IDs.
TRADE_FIELDS = {
    "trade_id", "taker_order_id", "maker_order_id", "price", "quantity", "timestamp", "taker_side",
}  # fmt: skip
FILL = {"filled_quantity", "remaining_quantity"}
REASON = {"reason", "detail"}
# The fields an event must carry besides order_id and status, by (input kind, status).
EVENT_FIELDS: dict[tuple[str, str], set[str]] = {
    ("order", "resting"): FILL,
    ("order", "partially_filled"): FILL,
    ("order", "filled"): FILL,
    ("order", "cancelled"): FILL | {"cancelled_quantity"} | REASON,  # market, ioc, fok
    ("amend", "amended"): FILL,
    ("cancel", "cancelled"): {"remaining_quantity", "cancelled_quantity"},
}

ids = st.sampled_from(["o0", "o1", "o2", "o3"])
prices = st.sampled_from([0, 0, 1, 2, 3])
quantities = st.one_of(st.integers(1, 6), st.just(2**63 - 1))
timestamps = st.sampled_from([0, 0, 1, 1678886400000, 2**63 - 1])


@st.composite
def order(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["limit", "limit", "market", "ioc", "fok", "post_only"]))
    msg: dict[str, Any] = {
        "type": "order",
        "order_id": draw(ids),
        "side": draw(st.sampled_from(["buy", "sell"])),
    }
    msg |= {"order_type": kind, "quantity": draw(quantities), "timestamp": draw(timestamps)}
    if kind != "market":
        msg["price"] = draw(prices)
    return msg


@st.composite
def amend(draw: st.DrawFn) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "amend", "order_id": draw(ids), "timestamp": draw(timestamps)}
    change = draw(st.sampled_from(["quantity", "price", "both"]))
    if change != "price":
        msg["quantity"] = draw(quantities)
    if change != "quantity":
        msg["price"] = draw(prices)
    return msg


cancel = st.fixed_dictionaries(
    {"type": st.just("cancel"), "order_id": ids, "timestamp": timestamps}
)
# Lines that cannot be applied, and whether their order_id can be read.
BAD = [
    (b"not json", False),
    (b'{"type": "order", "side": "buy", "price": 0, "quantity": 1, "timestamp": 0}', False),
    (b'{"type": "order", "order_id": "o9", "side": "up", "price": 0, "quantity": 1}', True),
    (b'{"type": "cancel", "order_id": "o9", "price": 0, "timestamp": 0}', True),
    (b'{"type": "zap", "order_id": "o9", "timestamp": 0}', True),
]
inputs = st.one_of(order(), order(), cancel, amend(), st.sampled_from(BAD))

ZERO_PRICE = [
    {"type": "order", "order_id": "o0", "side": "buy", "price": 0, "quantity": 5, "timestamp": 0},
    {"type": "order", "order_id": "o1", "side": "sell", "price": 0, "quantity": 2, "timestamp": 0},
]


def encode(step: dict[str, Any] | tuple[bytes, bool]) -> bytes:
    return step[0] if isinstance(step, tuple) else json.dumps(step).encode()


def check_outputs(steps: list[dict[str, Any] | tuple[bytes, bool]], out: bytes) -> None:
    """Walk the output beside the inputs: each input's trades, then its one event."""
    lines = [json.loads(x) for x in out.splitlines()]
    at = 0
    for step in steps:
        trades = []
        while "trade_id" in lines[at]:
            trades.append(lines[at])
            at += 1
        event = lines[at]
        at += 1
        for trade in trades:
            assert set(trade) == TRADE_FIELDS, trade
            numbers = ("trade_id", "price", "quantity", "timestamp")
            assert all(type(trade[k]) is int for k in numbers), trade
        if isinstance(step, tuple):  # a bad line
            readable = step[1]
            assert event["status"] == "rejected" and not trades
            assert set(event) == {"status"} | REASON | ({"order_id"} if readable else set())
            continue
        status = event["status"]
        assert event.get("order_id") == step["order_id"], (step, event)
        if status == "rejected":
            assert set(event) == {"order_id", "status"} | REASON and not trades
            continue
        want = EVENT_FIELDS.get((step["type"], status))
        assert want is not None, (step, event)
        assert set(event) == {"order_id", "status"} | want, (step, event)
        filled = sum(t["quantity"] for t in trades)
        assert event.get("filled_quantity", 0) == filled
        for trade in trades:
            assert trade["taker_order_id"] == step["order_id"]
            assert trade["timestamp"] == step["timestamp"]
        if step["type"] == "order":
            parts = ("filled_quantity", "remaining_quantity", "cancelled_quantity")
            assert sum(event.get(k, 0) for k in parts) == step["quantity"], (step, event)
    assert at == len(lines), "output lines left over"


@settings(max_examples=300, deadline=None)
@given(st.lists(inputs, max_size=30))
@example(ZERO_PRICE)
def test_replay_events_carry_every_field(steps: list[dict[str, Any] | tuple[bytes, bool]]) -> None:
    out = io.BytesIO()
    replay([encode(s) for s in steps], out, events=True)
    check_outputs(steps, out.getvalue())


def test_trade_at_price_and_timestamp_zero_through_the_cli() -> None:
    data = b"".join(json.dumps(m).encode() + b"\n" for m in ZERO_PRICE)
    for args in (["replay"], ["replay", "--events"]):
        out = subprocess.run(
            [sys.executable, "-m", "shard", *args], input=data, capture_output=True, check=True
        ).stdout
        trades = [t for t in map(json.loads, out.splitlines()) if "trade_id" in t]
        assert trades == [
            {"trade_id": 1, "taker_order_id": "o1", "maker_order_id": "o0", "price": 0,
             "quantity": 2, "timestamp": 0, "taker_side": "sell"}
        ]  # fmt: skip
    check_outputs(list(ZERO_PRICE), out)
