"""The exactly-once protocol's decisions, without a server: what to read next and whether to
block, what a commit reply means, and the resync table."""

from __future__ import annotations

import pytest

from shard.batch import Batch, Entries, build_batch
from shard.checkpoint import Checkpoint
from shard.commit import Fenced
from shard.config import Config, Keys
from shard.engine import Engine
from shard.pipeline import Pipeline, ProtocolError, Resync, resync
from shard.workload import standard_mix

PAIR = "BTC-USDT"
KEYS = Keys(PAIR)


def entries(count: int, first: int = 1, seed: int = 3) -> Entries:
    """``count`` raw entries of the standard mix, IDs ``1-first`` on, as XREAD returns them."""
    out: Entries = []
    for i, msg in enumerate(standard_mix(count + first - 1, seed=seed)):
        if i + 1 >= first:
            pairs = [x for k, v in msg.items() for x in (k.encode(), str(v).encode())]
            out.append((f"1-{i + 1}".encode(), pairs))
    return out


def reply(batch: Entries) -> object:
    """An XREAD reply holding ``batch`` (nil if empty, as after a BLOCK timed out)."""
    return [[KEYS.orders.encode(), batch]] if batch else None


def pipeline(**overrides: object) -> Pipeline:
    return Pipeline(Config(pair=PAIR, **overrides), KEYS)  # type: ignore[arg-type]


def batch_at(expected: Checkpoint, target: Checkpoint) -> Batch:
    return Batch("1-1", expected, target, [], [], ["1-1"], 1, 0, [], 0, [], [], [], [])


# -- reads -------------------------------------------------------------------------------------


def test_a_backlog_is_read_without_block_and_counts_double_to_the_batch_size() -> None:
    """95 entries in batches of 10: counts 1, 1, 2, 4, 8, 10 ... (the read ahead is sent before
    the batch before it is applied); each read after a full one goes without BLOCK, the read
    after a short one blocks, and only an empty read that blocked means idle."""
    p, engine = pipeline(batch_size=10), Engine()
    stream, at, reads = entries(95), 0, []
    read = p.next_read()
    while read is not None:
        reads.append(read)
        got = p.received(reply(stream[at : at + int(read[2])]))  # type: ignore[arg-type]
        at += len(got)
        if not got:
            assert "BLOCK" in read  # idle: the read had blocked
            break
        read = p.next_read(len(got))
        p.confirmed(p.apply(engine, got))
    counts = [int(r[2]) for r in reads]  # type: ignore[arg-type]
    assert counts[:6] == [1, 1, 2, 4, 8, 10]
    # The first read blocks (nothing is known); every read after a full one does not; the
    # last full-sized read came back short (9 of 10), so the read after it blocks.
    assert ["BLOCK" in r for r in reads] == [True] + [False] * (len(reads) - 2) + [True]
    assert at == 95 and p.committed.last_id == "1-95" and p.inputs_done == 95


def test_a_backlog_that_ends_on_a_full_read_is_followed_by_a_blocking_read() -> None:
    """The stream ends exactly where a full read ends: the read ahead (without BLOCK) comes
    back empty, which ends the backlog, and the next read blocks."""
    p, engine = pipeline(batch_size=4), Engine()
    p.budget.count = 4
    assert "BLOCK" in (p.next_read() or ())
    got = p.received(reply(entries(4)))
    ahead = p.next_read(len(got))
    assert ahead is not None and "BLOCK" not in ahead and p.read_ahead_first(True)
    p.apply(engine, got)
    assert p.received(None) == [] and not p.backlog
    assert "BLOCK" in (p.next_read() or ())


def test_reads_by_position_go_after_the_last_entry_read_else_the_last_applied() -> None:
    p, engine = pipeline(batch_size=10), Engine()
    assert p.next_read()[-1] == "0-0"  # type: ignore[index]
    got = p.received(reply(entries(1)))
    assert p.next_read()[-1] == "1-1"  # type: ignore[index]  # read ahead of its apply
    p.apply(engine, got)
    p.reset()  # a reconnection: from what was applied, one entry at a time
    read = p.next_read()
    assert read is not None and read[-1] == "1-1" and read[2] == 1 and "BLOCK" in read
    p.recovered(Checkpoint("1-7", 0, 7))
    assert p.next_read()[-1] == "1-7"  # type: ignore[index]


def test_with_xack_reads_go_through_the_group() -> None:
    read = pipeline(ack="xack").next_read()
    assert read is not None
    assert read[:4] == ("XREADGROUP", "GROUP", "shard", PAIR) and read[-2:] == (KEYS.orders, ">")


def test_max_inputs_bounds_the_reads_counting_the_batches_in_doubt() -> None:
    p = Pipeline(Config(pair=PAIR, batch_size=10), KEYS, max_inputs=12)
    p.budget.count = 10
    assert p.room() == 10
    p.apply(Engine(), entries(10))  # applied, not yet confirmed
    assert p.room() == 2 and p.room(taken=2) == 0
    assert p.next_read(taken=2) is None


def test_an_empty_reply_ends_the_backlog() -> None:
    p = pipeline()
    p.next_read()
    assert p.received(None) == [] and not p.backlog
    p.next_read()
    assert p.read_blocks


def test_oversize_entries_shrink_the_next_read() -> None:
    p = pipeline(batch_size=1000, max_entry_bytes=1000, read_budget_bytes=100_000)
    huge = (b"1-1", [b"type", b"order", b"pad", b"x" * 10_000])
    p.next_read()
    p.apply(Engine(), p.received(reply([huge])))
    assert p.budget.count == 100_000 // 10_012  # the budget over the largest oversize entry


# -- commit replies ----------------------------------------------------------------------------


def test_a_fenced_reply_at_the_batch_target_is_our_own_commit() -> None:
    p = pipeline()
    batch = p.apply(Engine(), entries(3))
    assert p.own_commit(Fenced(batch.target, "FENCED"))
    assert not p.own_commit(Fenced(batch.target, "GAP"))
    assert not p.own_commit(Fenced(batch.expected, "FENCED"))  # not landed: someone else
    assert not p.own_commit(Fenced(Checkpoint("9-9", 1, 1), "FENCED"))


def test_commits_are_confirmed_in_order() -> None:
    p, engine = pipeline(), Engine()
    first = p.apply(engine, entries(2))
    second = p.apply(engine, entries(2, first=3))
    assert second.expected == first.target and p.pending_inputs == 4
    with pytest.raises(ProtocolError):
        p.confirmed(second)
    p.confirmed(first)
    p.confirmed(second)
    assert p.committed == second.target and p.inputs_done == 4 and not p.unconfirmed
    with pytest.raises(ProtocolError):
        _ = p.in_doubt


# -- the resync table ----------------------------------------------------------------------------

A, B, C = Checkpoint("1-1", 0, 1), Checkpoint("1-2", 1, 2), Checkpoint("1-3", 1, 3)


@pytest.mark.parametrize(
    ("stored", "committed", "unconfirmed", "plan"),
    [
        (A, A, [], Resync.CONTINUE),
        (Checkpoint("1-1", 0, 1, "other digest"), A, [], Resync.CONTINUE),
        (B, A, [], Resync.RECOVER),  # Redis moved on: another daemon
        (Checkpoint(), A, [], Resync.RECOVER),  # Redis went back: a rollback
        (None, A, [], Resync.RECOVER),  # the checkpoint is gone
        (B, A, [batch_at(A, B)], Resync.LANDED),  # the reply was lost, the commit landed
        (A, A, [batch_at(A, B)], Resync.RESEND),  # it never landed
        (C, A, [batch_at(A, B)], Resync.RECOVER),
        (None, A, [batch_at(A, B)], Resync.RECOVER),
        (B, A, [batch_at(A, B), batch_at(B, C)], Resync.RECOVER),  # two in doubt
    ],
)
def test_the_resync_table(
    stored: Checkpoint | None, committed: Checkpoint, unconfirmed: list[Batch], plan: Resync
) -> None:
    assert resync(stored, committed, unconfirmed) is plan


# -- the batch builder ---------------------------------------------------------------------------


def test_a_batch_carries_what_its_commit_publishes() -> None:
    engine = Engine()
    batch = build_batch(engine, entries(200), Checkpoint(), 65536)
    assert batch.first == "1-1" and batch.acks == [f"1-{i}" for i in range(1, 201)]
    assert batch.expected == Checkpoint() and batch.inputs == 200
    assert batch.target == Checkpoint(
        "1-200", batch.trade_count, 200, engine.digest(), 0, "cancel_taker 0 0"
    )
    assert batch.trade_count == engine.book.next_trade_id - 1 > 0
    assert batch.trades[0] == 0 and batch.trades.count(0) >= batch.trade_count
    assert len(batch.rejected) > 0 and set(batch.rejected) <= {"unknown_order", "would_cross"}


def test_entries_applied_before_are_acknowledged_not_applied_again() -> None:
    engine = Engine()
    first = build_batch(engine, entries(5), Checkpoint(), 65536)
    again = build_batch(engine, entries(8), first.target, 65536)  # 1-1..1-5 delivered again
    assert again.acks == [f"1-{i}" for i in range(1, 9)]
    assert again.first == "1-6" and again.inputs == 3
    assert again.target.last_id == "1-8" and again.target.events == 8
    nothing = build_batch(engine, entries(8), again.target, 65536)
    assert nothing.first == "" and nothing.inputs == 0 and nothing.target == again.target
