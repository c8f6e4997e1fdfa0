"""How many input entries the next read may take, so that one read's cost in memory is bounded.

A read's reply is held whole, in Redis's output buffer and then in the daemon, before any of its
entries is decoded; an entry over ``max_entry_bytes`` is refused as ``oversize`` only then. So
the count of each read is chosen from what the reads before it carried (the h11 idea: state and
decisions here, the I/O in the caller):

* an entry that decodes is at most ``max_entry_bytes``, so a read takes at most
  ``read_budget_bytes // max_entry_bytes`` entries (and at most ``batch_size``): 1,000 with the
  defaults, 16 MiB of input at most;
* a read that carried oversize entries sets the next count to the budget divided by the largest
  of them (one entry of 10 MB at a time with the defaults); each read without one doubles the
  count back towards that limit;
* after a start or a reconnection nothing is known, so counts start from one entry and double
  with each read (a backlog of huge entries at start, the poison pill, is taken one at a time).

What is not bounded: a read sent at a large count while huge entries arrive behind a backlog of
small ones takes count x their size once, before the count adapts. Cost: O(1) per read.
"""

from __future__ import annotations


class ReadBudget:
    """The count of the next read. :meth:`restart` after a (re)connection; :meth:`taken` after
    each read is applied, with the size of its largest oversize entry (0 if none)."""

    __slots__ = ("budget", "count", "limit")

    def __init__(self, batch_size: int, budget_bytes: int, entry_bytes: int) -> None:
        self.budget = budget_bytes
        self.limit = max(1, min(batch_size, budget_bytes // entry_bytes))
        self.count = 1

    def restart(self) -> None:
        self.count = 1

    def taken(self, biggest_oversize: int) -> None:
        if biggest_oversize:
            self.count = max(1, min(self.limit, self.budget // biggest_oversize))
        else:
            self.count = min(self.limit, self.count * 2)
