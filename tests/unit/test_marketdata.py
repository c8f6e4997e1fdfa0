"""The pure part of the market-data client: parsing depth entries and the book hash, applying
entries to a local book, and the checks that decide a resync."""

from __future__ import annotations

import random

import pytest

from shard.l2 import checksum
from shard.marketdata import (
    Best,
    BookView,
    DepthEntry,
    L2Book,
    Level,
    MalformedError,
    Outcome,
    book_from_hash,
    decimal,
    decode_ticker,
    ladder,
    parse_entry,
    snapshot,
)


def entry_fields(
    seq: int,
    bids: dict[int, tuple[int, int]],
    asks: dict[int, tuple[int, int]],
    changed_bids: list[int],
    changed_asks: list[int],
) -> dict[bytes, bytes]:
    """A depth entry as the contract writes it, for the book (bids, asks) after the batch."""
    top_b = sorted(bids.items(), reverse=True)
    top_a = sorted(asks.items())

    def side(prices: list[int], levels: dict[int, tuple[int, int]]) -> str:
        return ",".join(
            f"{p}:{levels.get(p, (0, 0))[0]}:{levels.get(p, (0, 0))[1]}" for p in prices
        )

    def best(top: list[tuple[int, tuple[int, int]]]) -> str:
        return f"{top[0][0]}:{top[0][1][0]}" if top else ""

    fields = {
        "seq": str(seq),
        "input_id": f"1-{seq}",
        "bids": side(sorted(changed_bids, reverse=True), bids),
        "asks": side(sorted(changed_asks), asks),
        "best_bid": best(top_b),
        "best_ask": best(top_a),
        "checksum": str(checksum([(p, q) for p, (q, _) in top_b], [(p, q) for p, (q, _) in top_a])),
    }
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_parse_entry_reads_every_field() -> None:
    e = parse_entry(
        b"5-0",
        {
            b"seq": b"3",
            b"input_id": b"5-0",
            b"bids": b"101:5:2,100:0:0",
            b"asks": b"",
            b"best_bid": b"101:5",
            b"best_ask": b"",
            b"checksum": b"123",
        },
    )
    assert e == DepthEntry(
        "5-0", 3, "5-0", (Level(101, 5, 2), Level(100, 0, 0)), (), Best(101, 5), None, 123
    )


def test_parse_entry_takes_text_as_well_as_bytes() -> None:
    fields = entry_fields(1, {100: (7, 1)}, {}, [100], [])
    as_text = {k.decode(): v.decode() for k, v in fields.items()}
    assert parse_entry("1-0", as_text) == parse_entry(b"1-0", fields)


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("seq", "x", "seq must be a non-negative integer"),
        ("seq", "-1", "seq must be a non-negative integer"),
        ("bids", "101:5", "bids level must be <price>:<quantity>:<orders>"),
        ("asks", "101:5:0", "has quantity or orders 0 but not both"),
        ("asks", "101:+5:1", "asks must be a non-negative integer"),
        ("best_bid", "101", "best_bid must be <price>:<quantity> or empty"),
        ("checksum", "1.5", "checksum must be a non-negative integer"),
    ],
)
def test_parse_entry_names_the_bad_field(name: str, value: str, words: str) -> None:
    fields = {k.decode(): v.decode() for k, v in entry_fields(1, {}, {}, [], []).items()}
    fields[name] = value
    with pytest.raises(MalformedError, match=words):
        parse_entry("1-0", fields)


def test_parse_entry_names_a_missing_field() -> None:
    fields = entry_fields(1, {}, {}, [], [])
    del fields[b"checksum"]
    with pytest.raises(MalformedError, match="depth entry 1-0 has no checksum field"):
        parse_entry("1-0", fields)


def test_book_from_hash() -> None:
    book = book_from_hash(
        {
            b"seq": b"4",
            b"depth_id": b"9-0",
            b"input_id": b"9-0",
            b"b:100": b"7:2",
            b"b:101": b"5:1",
            b"a:103": b"1:1",
            b"a:102": b"3:1",
            b"future_field": b"ignored",
        }
    )
    assert (book.seq, book.depth_id, book.input_id) == (4, "9-0", "9-0")
    assert list(book.bids.top()) == [Level(101, 5, 1), Level(100, 7, 2)]
    assert list(book.asks.top()) == [Level(102, 3, 1), Level(103, 1, 1)]
    assert book.checksum() == checksum([(101, 5), (100, 7)], [(102, 3), (103, 1)])


def test_an_empty_hash_is_the_empty_book_at_seq_0() -> None:
    book = book_from_hash({})
    assert (book.seq, book.depth_id, len(book.bids), len(book.asks)) == (0, "0-0", 0, 0)


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("b:100", "7", "book field b:100 level must be"),
        ("a:x", "7:1", "book field a:x must be a non-negative integer"),
        ("b:100", "0:0", "book field b:100 holds an empty level"),
        ("seq", "", "seq must be a non-negative integer"),
    ],
)
def test_book_from_hash_names_the_bad_field(name: str, value: str, words: str) -> None:
    with pytest.raises(MalformedError, match=words):
        book_from_hash({name: value})


def test_the_contracts_checksum_example() -> None:
    book = book_from_hash({"b:101": "5:1", "b:100": "7:3", "a:102": "3:1"})
    assert book.checksum() == checksum([(101, 5), (100, 7)], [(102, 3)])
    import zlib

    assert book.checksum() == zlib.crc32(b"101:5,100:7|102:3")


def test_apply_sets_and_removes_levels_and_verifies() -> None:
    book = book_from_hash({"seq": "1", "depth_id": "1-0", "b:100": "7:1", "a:102": "3:1"})
    fields = entry_fields(2, {101: (5, 1)}, {102: (3, 1)}, [101, 100], [])
    e = parse_entry("2-0", fields)
    assert book.apply(e) is Outcome.APPLIED
    assert list(book.bids.top()) == [Level(101, 5, 1)]
    assert 100 not in book.bids
    assert (book.seq, book.depth_id, book.input_id) == (2, "2-0", "1-2")


def test_removing_an_absent_level_is_harmless() -> None:
    book = L2Book()
    e = parse_entry("1-0", entry_fields(1, {}, {}, [100], [200]))
    assert book.apply(e) is Outcome.APPLIED


def test_an_entry_at_or_below_the_books_seq_is_skipped() -> None:
    book = book_from_hash({"seq": "5", "depth_id": "5-0", "b:100": "7:1"})
    for seq in (1, 5):
        e = parse_entry(f"{seq}-0", entry_fields(seq, {}, {}, [100], []))
        assert book.apply(e) is Outcome.SKIPPED
    assert list(book.bids.top()) == [Level(100, 7, 1)]
    assert book.seq == 5


def test_a_gap_is_not_applied() -> None:
    book = book_from_hash({"seq": "5", "depth_id": "5-0", "b:100": "7:1"})
    e = parse_entry("7-0", entry_fields(7, {}, {}, [100], []))
    assert book.apply(e) is Outcome.GAP
    assert (book.seq, list(book.bids.top())) == (5, [Level(100, 7, 1)])


def test_a_wrong_local_level_is_a_mismatch() -> None:
    # The local copy says 100 x 6; the true book has 100 x 7, and the entry adds 99.
    book = book_from_hash({"seq": "1", "depth_id": "1-0", "b:100": "6:1"})
    e = parse_entry("2-0", entry_fields(2, {100: (7, 1), 99: (1, 1)}, {}, [99], []))
    assert book.apply(e) is Outcome.MISMATCH


def test_a_wrong_level_below_the_top_10_is_not_seen() -> None:
    """The contract's checksum covers the 10 best levels a side, no more."""
    true = {100 - i: (1, 1) for i in range(12)}
    local = {**true, 89: (2, 1)}
    book = book_from_hash({"seq": "1", **{f"b:{p}": f"{q}:{o}" for p, (q, o) in local.items()}})
    e = parse_entry("2-0", entry_fields(2, {**true, 101: (1, 1)}, {}, [101], []))
    assert book.apply(e) is Outcome.APPLIED


def test_a_wrong_best_with_a_right_checksum_is_a_mismatch() -> None:
    book = L2Book()
    fields = entry_fields(1, {100: (7, 1)}, {}, [100], [])
    fields[b"best_bid"] = b"100:8"
    assert book.apply(parse_entry("1-0", fields)) is Outcome.MISMATCH


def test_levels_come_out_best_first_whatever_order_they_arrive_in() -> None:
    rng = random.Random(7)
    bids = {p: (rng.randint(1, 9), 1) for p in rng.sample(range(1000, 2000), 40)}
    asks = {p: (rng.randint(1, 9), 1) for p in rng.sample(range(2000, 3000), 40)}
    fields = entry_fields(1, bids, asks, list(bids), list(asks))
    # Shuffle the changed levels: applying does not depend on their order.
    for name in (b"bids", b"asks"):
        parts = fields[name].split(b",")
        rng.shuffle(parts)
        fields[name] = b",".join(parts)
    book = L2Book()
    assert book.apply(parse_entry("1-0", fields)) is Outcome.APPLIED
    assert [x.price for x in book.bids.top()] == sorted(bids, reverse=True)
    assert [x.price for x in book.asks.top()] == sorted(asks)
    assert [x.price for x in book.asks.top(3)] == sorted(asks)[:3]


def test_a_random_walk_stays_in_sync_with_a_model() -> None:
    rng = random.Random(3)
    bids: dict[int, tuple[int, int]] = {}
    asks: dict[int, tuple[int, int]] = {}
    book = L2Book()
    for seq in range(1, 300):
        changed_b, changed_a = [], []
        for _ in range(rng.randint(1, 5)):
            side, changed, lo = (
                (bids, changed_b, 100) if rng.random() < 0.5 else (asks, changed_a, 130)
            )
            price = rng.randint(lo, lo + 29)
            if price in side and rng.random() < 0.4:
                del side[price]
            else:
                side[price] = (rng.randint(1, 50), rng.randint(1, 4))
            changed.append(price)
        fields = entry_fields(seq, bids, asks, list(set(changed_b)), list(set(changed_a)))
        assert book.apply(parse_entry(f"{seq}-0", fields)) is Outcome.APPLIED
        assert [tuple(x) for x in book.bids.top()] == [
            (p, q, o) for p, (q, o) in sorted(bids.items(), reverse=True)
        ]
        assert [tuple(x) for x in book.asks.top()] == [
            (p, q, o) for p, (q, o) in sorted(asks.items())
        ]


def test_decimal() -> None:
    assert decimal(1_000_000_000) == "10.00000000"
    assert decimal(1_000_000_000, 2) == "10.00"
    assert decimal(123_456_789, 4) == "1.2345"
    assert decimal(-5, 8) == "-0.00000005"
    assert decimal(0, 2) == "0.00"


def test_decode_ticker_keeps_the_contract_order_and_what_is_there() -> None:
    raw = {b"volume": b"12", b"last_taker_side": b"buy", b"last_price": b"1000000000"}
    assert list(decode_ticker(raw).items()) == [
        ("last_price", 1000000000),
        ("last_taker_side", "buy"),
        ("volume", 12),
    ]


def view_of(fields: dict[str, str]) -> BookView:
    view = BookView(None, "BTC-USDT")  # type: ignore[arg-type]  # no I/O below
    view.book = book_from_hash(fields)
    return view


def test_ladder_puts_asks_above_bids_with_cumulative_quantities() -> None:
    view = view_of({
        "seq": "3", "input_id": "9-0",
        "b:1000000000": "3:1", "b:999000000": "10:4",
        "a:1001000000": "5:1", "a:1005000000": "7:2",
    })  # fmt: skip
    lines = ladder(view, {}, 10)
    rows = [line.split() for line in lines[2:7]]
    assert rows == [
        ["ask", "10.05", "7", "2", "12"],
        ["ask", "10.01", "5", "1", "5"],
        ["--", "spread", "0.01", "--"],
        ["bid", "10.00", "3", "1", "3"],
        ["bid", "9.99", "10", "4", "13"],
    ]
    assert lines[0].split() == ["BTC-USDT", "seq", "3", "input", "9-0"]
    assert lines[-1] == "ticker: no trade yet"


def test_ladder_shows_as_many_decimals_as_the_prices_need_and_the_depth_asked() -> None:
    view = view_of({"b:100000001": "1:1", "b:100000000": "1:1", "b:99999999": "1:1"})
    lines = ladder(view, {}, 2)
    assert [line.split()[1] for line in lines[3:5]] == ["1.00000001", "1.00000000"]
    assert "spread: none" in lines[2]


def test_snapshot_json_has_integers() -> None:
    view = view_of({"seq": "3", "input_id": "9-0", "b:100": "3:1", "a:102": "5:2"})
    ticker = decode_ticker({b"last_price": b"101", b"last_taker_side": b"sell"})
    assert snapshot(view, ticker, None) == {
        "pair": "BTC-USDT",
        "seq": 3,
        "input_id": "9-0",
        "bids": [[100, 3, 1]],
        "asks": [[102, 5, 2]],
        "ticker": {"last_price": 101, "last_taker_side": "sell"},
    }
