"""The daemon's garbage-collector policy: thresholds restored, frozen cycles reclaimed."""

from __future__ import annotations

import gc
import weakref

from shard import collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_tuned_raises_the_young_threshold_and_restores_it() -> None:
    before = gc.get_threshold()
    with collector.tuned():
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, *before[1:])
        collector.settle()
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_settle_hides_survivors_and_reclaims_frozen_cycles() -> None:
    try:
        node = Node()
        dead = weakref.ref(node)
        collector.settle()
        assert not any(o is node for o in gc.get_objects())  # frozen: collections skip it
        del node
        gc.collect()
        assert dead() is not None  # a frozen cycle outlives a collection...
        collector.settle()
        assert dead() is None  # ...until the next settle unfreezes and collects it
    finally:
        gc.unfreeze()
