"""Redis Cluster without a server: a pair's slot, the slot map, where the daemon asks next."""

from __future__ import annotations

from redis.exceptions import AskError, MovedError

from shard.cluster import (
    Node,
    SlotRange,
    Topology,
    cluster_enabled,
    key_slot,
    moved_to,
    node_of_url,
    node_url,
    owner_of,
    pair_slot,
    parse_slots,
)
from shard.config import Keys


def test_every_key_of_a_pair_is_in_the_slot_of_its_tag() -> None:
    assert key_slot("somekey") == 11058  # the values of the CLUSTER KEYSLOT documentation
    assert key_slot("foo{hash_tag}") == key_slot("hash_tag") == 2515
    keys = Keys("BTC-USDT", "staging:")
    names = [getattr(keys, n) for n in keys.__slots__ if n not in ("pair", "prefix")]
    assert {key_slot(k) for k in [*names, keys.snapshot_chunk(3, 7)]} == {key_slot("BTC-USDT")}
    assert pair_slot("BTC-USDT") == pair_slot("BTC-USDT", "staging:") == key_slot("BTC-USDT")


def test_cluster_slots_parsed_in_slot_order_with_the_asked_node_for_an_empty_host() -> None:
    reply = [
        [5461, 10922, [b"10.0.0.2", 7001, b"id2"], [b"10.0.0.5", 7004, b"id5"]],
        [0, 5460, [b"", 7000, b"id1"]],
    ]
    ranges = parse_slots(reply, Node("10.0.0.1", 7000))
    assert ranges == [
        SlotRange(0, 5460, Node("10.0.0.1", 7000), ()),
        SlotRange(5461, 10922, Node("10.0.0.2", 7001), (Node("10.0.0.5", 7004),)),
    ]
    assert owner_of(ranges, 5461) == ranges[1]
    assert owner_of(ranges, 0) == ranges[0]
    assert owner_of(ranges, 16000) is None


def test_a_node_url_keeps_everything_but_the_address() -> None:
    url = "rediss://shard:p%40ss@redis.internal:6380/0"
    assert node_url(url, Node("10.0.0.7", 7002)) == "rediss://shard:p%40ss@10.0.0.7:7002/0"
    assert node_url("redis://h:1/0", Node("::1", 7000)) == "redis://[::1]:7000/0"
    assert node_of_url(url) == Node("redis.internal", 6380)
    assert node_of_url("redis://[::1]:7000/0") == Node("::1", 7000)


def test_only_moved_names_a_new_owner_and_info_says_cluster_mode() -> None:
    assert moved_to(MovedError("3999 127.0.0.1:6381")) == Node("127.0.0.1", 6381)
    assert moved_to(AskError("3999 127.0.0.1:6381")) is None  # one command, not the owner
    assert moved_to(ConnectionError()) is None
    assert cluster_enabled({"cluster_enabled": 1})
    assert not cluster_enabled({"cluster_enabled": 0}) and not cluster_enabled({})


def test_topology_asks_the_hint_then_the_owner_then_every_node_learnt() -> None:
    seed = Node("10.0.0.1", 7000)
    topology = Topology(6000, [seed])
    assert topology.candidates() == [seed]
    a, b, c = Node("10.0.0.2", 7001), Node("10.0.0.3", 7002), Node("10.0.0.4", 7003)
    owner = topology.learned([SlotRange(0, 5460, seed, (c,)), SlotRange(5461, 16383, a, (b,))])
    assert owner == a == topology.owner
    assert topology.seeds == [seed, c, a, b]  # the URL's node stays one: losing it strands none
    assert topology.candidates() == [a, seed, c, b]
    assert topology.candidates(b) == [b, a, seed, c]
    # A view in which no node serves the slot names no owner and keeps the last one.
    assert topology.learned([SlotRange(0, 5460, seed, ())]) is None
    assert topology.owner == a
