"""Real Nasdaq order flow (LOBSTER samples): every real execution is reproduced exactly."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from shard.decode import decode_json
from shard.engine import Engine
from shard.messages import Trade

FILES = {
    "aapl_2012-06-21_0930_first999_l10.jsonl": (94, 53),
    "msft_2012-06-21_0930_first1950_l50.jsonl": (160, 833),
}


@pytest.mark.parametrize("name", sorted(FILES))
def test_every_real_execution_is_reproduced(realflow: Path, name: str) -> None:
    iocs, live_at_end = FILES[name]
    engine = Engine()
    by_taker: dict[str, list[Trade]] = defaultdict(list)
    for n, line in enumerate((realflow / name).read_bytes().splitlines()):
        trades: list[Trade] = []
        event = engine.apply(decode_json(line), f"1-{n}", trades)
        assert event.status != "rejected", (n, event)
        for trade in trades:
            by_taker[trade.taker_order_id].append(trade)
        if n % 50 == 0:
            engine.book.check()
    engine.book.check()

    with open(realflow / f"{name}.ioc_targets.tsv", newline="") as f:
        targets = list(csv.DictReader(f, delimiter="\t"))
    assert len(targets) == iocs
    for row in targets:
        got = [(t.maker_order_id, t.quantity, t.price) for t in by_taker.pop(row["ioc_id"])]
        # The targets file keeps LOBSTER's native USD x 10^4 prices; ours are USD x 10^8.
        assert got == [(row["maker_id"], int(row["qty"]), int(row["price"]) * 10**4)], row
    assert not by_taker, f"trades no real execution explains: {dict(by_taker)}"
    assert len(engine.book) == live_at_end
    stats = json.loads((realflow / f"{name}.stats.json").read_text())
    assert stats["live_orders_at_end"] == live_at_end
