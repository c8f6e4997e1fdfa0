"""The problem statement's example: three messages and the one trade they make."""

from __future__ import annotations

import json
from typing import Any

SEED: list[dict[str, Any]] = [
    {"type": "order", "order_id": "order1", "timestamp": 1678886400000, "price": 1000000000,
     "quantity": 10, "side": "buy"},
    {"type": "order", "order_id": "order2", "timestamp": 1678886400001, "price": 1000000000,
     "quantity": 5, "side": "sell"},
    {"type": "cancel", "order_id": "order1", "timestamp": 1678886400002},
]  # fmt: skip
SEED_LINES = [json.dumps(m).encode() for m in SEED]
SEED_TRADE = {
    "trade_id": 1, "taker_order_id": "order2", "maker_order_id": "order1", "price": 1000000000,
    "quantity": 5, "timestamp": 1678886400001, "taker_side": "sell",
}  # fmt: skip
