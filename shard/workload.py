"""Seeded synthetic order flow: the standard mix used by benchmarks, tests and load runs.

The same ``seed`` always gives the same messages. The generator keeps its own list of orders it
believes live (it does not run the engine), so some cancels and amends hit orders that already
traded and are rejected as ``unknown_order``, as in real flow.

Standard mix (shares of messages):

============================ ======= ============================================================
kind                         share   shape
============================ ======= ============================================================
limit, passive               48 %    1-50 ticks behind the touch (one-sided geometric), rests
limit, crossing              7 %     priced 0-5 ticks through the mid, trades, rest may rest
ioc / market / fok           3 % / 1 % / 1 %   through the mid (fok often killed)
post_only                    2 %     passive; rejected when it would cross
cancel                       30 %    a random order the generator believes live
amend                        8 %     half reduce quantity (keeps place), half move price
============================ ======= ============================================================

Prices are integers around ``mid`` (100.00 x 10^8) on a 0.01 tick; quantities 1-100 lots (x 10).
Timestamps start at 1,700,000,000,000 ms and rise by 0-1 ms per message.

With ``accounts=K`` the same messages (drawn from the same seed) also carry accounts: each new
order, with probability one half, gets one of ``acct0`` ... ``acct{K-1}``, and three in ten of
those an ``stp`` mode drawn from the five; a cancel or amend of an order with an account gives
that account, as a gateway would. The accounts come from a second generator, so the messages
without them are the standard mix's, field for field.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

MID = 100 * 10**8
TICK = 10**6
START_MS = 1_700_000_000_000

Message = dict[str, Any]


def _qty(rng: random.Random) -> int:
    return rng.randint(1, 100) * 10


STP_MODES = ("cancel_taker", "cancel_maker", "cancel_both", "decrement", "none")


def standard_mix(
    n: int, seed: int = 1, *, prefix: str = "o", accounts: int = 0
) -> Iterator[Message]:
    """``n`` messages of the standard mix (with ``accounts``: as the module says)."""
    messages = _mix(n, seed, prefix)
    return _with_accounts(messages, seed, accounts) if accounts else messages


def _with_accounts(messages: Iterator[Message], seed: int, accounts: int) -> Iterator[Message]:
    arng = random.Random(seed * 7919 + accounts)
    owner: dict[str, str] = {}
    for msg in messages:
        oid = msg["order_id"]
        if msg["type"] == "order":
            if arng.random() < 0.5:
                owner[oid] = msg["account"] = f"acct{arng.randrange(accounts)}"
                if arng.random() < 0.3:
                    msg["stp"] = arng.choice(STP_MODES)
        elif oid in owner:
            msg["account"] = owner[oid]
        yield msg


def _mix(n: int, seed: int, prefix: str) -> Iterator[Message]:
    rng = random.Random(seed)
    live: list[str] = []
    ts = START_MS
    for i in range(n):
        ts += rng.random() < 0.5
        r = rng.random()
        oid = f"{prefix}{i}"
        side = "buy" if rng.random() < 0.5 else "sell"
        sign = -1 if side == "buy" else 1  # passive direction
        if r < 0.48 or (0.60 <= r < 0.62):
            depth = min(int(rng.expovariate(0.12)), 49) + 1
            msg: Message = {
                "type": "order",
                "order_id": oid,
                "timestamp": ts,
                "side": side,
                "price": MID + sign * depth * TICK,
                "quantity": _qty(rng),
            }
            if r >= 0.60:
                msg["order_type"] = "post_only"
            live.append(oid)
        elif r < 0.60:
            price = MID - sign * rng.randint(0, 5) * TICK
            msg = {
                "type": "order",
                "order_id": oid,
                "timestamp": ts,
                "side": side,
                "price": price,
                "quantity": _qty(rng),
            }
            if r < 0.55:
                live.append(oid)
            elif r < 0.58:
                msg["order_type"] = "ioc"
            elif r < 0.59:
                msg["order_type"] = "market"
                del msg["price"]
            else:
                msg["order_type"] = "fok"
        elif r < 0.92 and live:
            j = rng.randrange(len(live))
            live[j], live[-1] = live[-1], live[j]
            msg = {"type": "cancel", "order_id": live.pop(), "timestamp": ts}
        elif live:
            target = live[rng.randrange(len(live))]
            if rng.random() < 0.5:
                msg = {
                    "type": "amend",
                    "order_id": target,
                    "timestamp": ts,
                    "quantity": rng.randint(1, 5),
                }
            else:
                depth = min(int(rng.expovariate(0.12)), 49) + 1
                msg = {
                    "type": "amend",
                    "order_id": target,
                    "timestamp": ts,
                    "price": MID + rng.choice((-1, 1)) * depth * TICK,
                }
        else:
            msg = {"type": "cancel", "order_id": oid, "timestamp": ts}
        yield msg


def resting_orders(
    n: int, seed: int = 1, *, levels: int = 1000, prefix: str = "r", accounts: int = 0
) -> Iterator[Message]:
    """``n`` non-crossing limit orders: bids below the mid and asks above, over ``levels``
    price levels per side (with ``accounts``: each of one of ``acct0`` ... in turn)."""
    rng = random.Random(seed)
    for i in range(n):
        side = "buy" if i % 2 == 0 else "sell"
        depth = rng.randrange(levels) + 1
        msg: Message = {
            "type": "order",
            "order_id": f"{prefix}{i}",
            "timestamp": START_MS + i // 1000,
            "side": side,
            "price": MID + (-depth if side == "buy" else depth) * TICK,
            "quantity": _qty(rng),
        }
        if accounts:
            msg["account"] = f"acct{i % accounts}"
        yield msg
