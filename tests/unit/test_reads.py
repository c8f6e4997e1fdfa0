"""The read budget (shard.reads): what one read may take, from what the reads before it carried."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shard.reads import ReadBudget

MiB = 2**20


def test_counts_start_from_one_and_double_to_the_limit() -> None:
    reads = ReadBudget(batch_size=1000, budget_bytes=16 * MiB, entry_bytes=16_384)
    counts = []
    for _ in range(12):
        counts.append(reads.count)
        reads.taken(0)
    assert counts == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000]


def test_an_oversize_entry_sets_the_count_from_its_size() -> None:
    reads = ReadBudget(batch_size=1000, budget_bytes=16 * MiB, entry_bytes=16_384)
    for _ in range(11):
        reads.taken(0)
    reads.taken(10 * MiB)
    assert reads.count == 1
    reads.taken(0)
    assert reads.count == 2
    reads.taken(20_000)
    assert reads.count == 16 * MiB // 20_000
    reads.restart()
    assert reads.count == 1


def test_the_limit_is_the_budget_over_the_entry_size_or_the_batch() -> None:
    assert ReadBudget(1000, 16 * MiB, 16_384).limit == 1000
    assert ReadBudget(1000, 1 * MiB, 16_384).limit == 64
    assert ReadBudget(1000, 1000, 16_384).limit == 1


@given(
    sizes=st.lists(st.one_of(st.just(0), st.integers(16_385, 2**31)), max_size=50),
    budget=st.integers(1, 2**30),
    entry=st.integers(1, 2**20),
    batch=st.integers(1, 5000),
)
def test_a_read_after_an_oversize_entry_fits_the_budget(
    sizes: list[int], budget: int, entry: int, batch: int
) -> None:
    """Entries as large as the last oversize one fit the budget at the count it sets (or the
    read is a single entry); the count never leaves [1, limit]."""
    reads = ReadBudget(batch, budget, entry)
    for size in sizes:
        reads.taken(size)
        assert 1 <= reads.count <= reads.limit
        if size:
            assert reads.count == 1 or reads.count * size <= budget
