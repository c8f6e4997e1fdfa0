"""shard.load.nodes without a server: each pair's owner in a CLUSTER SLOTS reply."""

from __future__ import annotations

import pytest

from shard.cluster import Node, pair_slot
from shard.load.nodes import owners

REPLY = [
    [0, 5460, [b"10.0.0.1", 7000, b"id1"], [b"10.0.0.4", 7003, b"id4"]],
    [5461, 10922, [b"", 7001, b"id2"]],
    [10923, 16383, [b"10.0.0.3", 7002, b"id3"]],
]


def third(slot: int) -> int:
    return min(slot // 5461, 2)


def test_each_pair_gets_the_master_of_its_slot() -> None:
    names = [f"P-{i}" for i in range(200)]
    pairs = [next(p for p in names if third(pair_slot(p)) == t) for t in (2, 0, 1)]
    found = owners(REPLY, Node("10.0.0.9", 7005), pairs, "")
    assert found == {
        pairs[0]: Node("10.0.0.3", 7002),
        pairs[1]: Node("10.0.0.1", 7000),
        pairs[2]: Node("10.0.0.9", 7001),  # an empty host is the asked node's
    }


def test_a_slot_no_master_serves_is_refused() -> None:
    pair = next(p for p in (f"P-{i}" for i in range(200)) if third(pair_slot(p)) == 1)
    with pytest.raises(ValueError, match="no node of the cluster serves slot"):
        owners([REPLY[0], REPLY[2]], Node("10.0.0.1", 7000), [pair], "")
