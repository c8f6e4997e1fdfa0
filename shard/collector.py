"""How the daemon runs Python's cyclic garbage collector: rarely, and never over the book.

Two costs made the collector the largest pause in the daemon over a large book
(``docs/benchmarks.md`` has the figures):

* **Full collections walk the book.** The engine's order index is one dict with an entry per
  resting order; a full (generation 2) collection visits every entry, O(resting orders), and
  ran every few tens of thousands of inputs. :func:`settle` (after a recovery) and
  :func:`freeze_survivors` move everything alive into the permanent generation
  (:func:`gc.freeze`), which collections skip; the index stays there as it grows. An empty
  dict is not tracked at all, so the daemon freezes a book that starts empty at its first
  snapshot with a non-empty book, and not after that.
  A level that empties is freed by its reference count as before; only objects that die *in a
  cycle* after being frozen wait for the next :func:`settle`, which first unfreezes, so a
  replaced engine is reclaimed then.
* **Young collections ran every few hundred allocations.** A 1,000-entry batch keeps about
  3,000 container objects alive (the read reply, the output field lists) until it commits, so
  the default threshold (700) collected several times per batch and promoted the batch's
  objects, which fed the older generations. At :data:`YOUNG_THRESHOLD` two batches in flight
  stay under it, and a young collection runs only when objects really accumulate.

What is left of the collector's time is mostly the one walk that freezes the grown index.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Final

YOUNG_THRESHOLD: Final = 10_000
"""Allocations (net of frees) of container objects between young collections; Python's is 700."""


@contextlib.contextmanager
def tuned() -> Iterator[None]:
    """Run the block with :data:`YOUNG_THRESHOLD`; restore the thresholds and unfreeze after."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def settle() -> None:
    """Collect all garbage, frozen or not, then exempt every survivor from later collections.

    Cost: one full collection over everything, O(live objects); for when a pause is expected
    anyway (after a recovery)."""
    gc.unfreeze()
    freeze_survivors()


def freeze_survivors() -> None:
    """Collect the garbage not frozen yet, then exempt every survivor from later collections.

    Cost: a collection of what was not frozen: the first time after the book grew from empty,
    a walk over its index, O(resting orders); after that, O(objects made since)."""
    gc.collect()
    gc.freeze()
