"""Bulk import of Kraken CSV/ZIP history against a real database."""

from __future__ import annotations

import contextlib
import io
import itertools
import random
import time
import zipfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import trio
from stored import count_trades, stored_candles  # type: ignore[import-not-found]

from histdata.errors import RejectedInput
from histdata.importer import (
    FileLayout,
    ImportSource,
    SeqCounter,
    discover_sources,
    import_paths,
    sniff_layout,
    split_name,
)
from histdata.importer.columnar import read_trade3_block, second_boundary
from histdata.importer.rows import max_time_ns, parse_ohlcvt, parse_trade3
from histdata.importer.sources import line_blocks
from histdata.model import NS_PER_S, Candle, Trade
from histdata.storage import Storage
from histdata.storage.coverage import HoleKind, coverage_report
from histdata.storage.trades import read_trades, write_trades
from histdata.symbols import SymbolRegistry

T0 = 1_599_998_400  # a whole hour
REGISTRY = SymbolRegistry.shipped()
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


def write_trades3(path: Path, rows: int, *, seed: int = 1) -> Counter[int]:
    """Write a time-ordered 3-column trades file; return trades per second."""
    rng = random.Random(seed)
    per_second: Counter[int] = Counter()
    t = T0
    lines = []
    for _ in range(rows):
        if rng.random() < 0.4:
            t += rng.randint(1, 3)
        per_second[t] += 1
        lines.append(
            f"{t},{rng.randint(10000, 20000)}.{rng.randint(0, 9)},0.{rng.randint(1, 10**8):08d}\n"
        )
    path.write_text("".join(lines))
    return per_second


def write_ohlcvt(path: Path, minutes: int, *, step: int = 1, seed: int = 2) -> list[str]:
    """Write a 1-minute OHLCVT file skipping every 5th minute (no trades there)."""
    rng = random.Random(seed)
    lines = []
    for i in range(minutes):
        if i % 5 == 4:
            continue
        o, c = rng.randint(100, 200), rng.randint(100, 200)
        h, lo = max(o, c) + rng.randint(0, 5), min(o, c) - rng.randint(0, 5)
        volume, count = rng.randint(1, 99), rng.randint(1, 9)
        lines.append(f"{T0 + i * 60 * step},{o}.0,{h}.0,{lo}.0,{c}.0,{volume}.5,{count}\n")
    path.write_text("".join(lines))
    return lines


class TestSniff:
    def test_pair_and_interval_come_from_the_name(self) -> None:
        """Altname file names resolve through the registry, folders and case ignored."""
        assert split_name("XBTUSD_60.csv", REGISTRY).symbol == "BTC/USD"
        assert split_name("XBTUSD_60.csv", REGISTRY).interval_min == 60
        assert split_name("TimeAndSales_Combined/xbtusd.csv", REGISTRY).interval_min is None

    def test_unknown_pair_is_rejected(self) -> None:
        """A name no Kraken quote currency ends is a bad_name rejection naming the nearest."""
        with pytest.raises(RejectedInput) as info:
            split_name("XBTUSE.csv", REGISTRY)
        assert info.value.reason == "bad_name"
        assert "XBTUSE" in info.value.detail

    def test_an_unlisted_pair_is_named_by_krakens_rules(self) -> None:
        """Offline, a file of a pair the registry lacks gets its v2 name from Kraken's rules."""
        registry = SymbolRegistry.shipped()
        assert split_name("BCHEUR.csv", registry).symbol == "BCH/EUR"
        assert split_name("XDGUSD_1.csv", registry).symbol == "DOGE/USD"
        assert registry.resolve("BCH/EUR").provisional

    def test_layouts_are_told_apart_by_content(self) -> None:
        """3-column, headed 7-column trades and OHLCVT rows each sniff to their layout."""
        trades = split_name("XBTUSD.csv", REGISTRY)
        candles = split_name("XBTUSD_1.csv", REGISTRY)
        assert sniff_layout(["1600000000,10.5,0.1\n"], trades) is FileLayout.TRADES3
        seven = [
            "Price,Volume,Timestamp,Type(b/s),OrderType(m/l),Misc,TradeID\n",
            "10.5,0.1,1600000000.1234,b,m,,42\n",
        ]
        assert sniff_layout(seven, trades) is FileLayout.TRADES7
        assert sniff_layout(["1600000020,1,2,0.5,1.5,3,4\n"], candles) is FileLayout.OHLCVT

    def test_name_and_content_must_agree(self) -> None:
        """Trade rows inside a file named like an OHLCVT file are refused, not misread."""
        with pytest.raises(RejectedInput):
            sniff_layout(["1600000000,10.5,0.1\n"], split_name("XBTUSD_1.csv", REGISTRY))


class TestSeqCounter:
    def test_same_time_rows_are_numbered_in_order(self) -> None:
        """Rows sharing a time get 0, 1, 2…; a new time starts again at 0."""
        seqs = SeqCounter()
        assert [seqs.next(t) for t in (5, 5, 5, 6, 6)] == [0, 1, 2, 0, 1]

    def test_time_going_back_continues_its_count(self) -> None:
        """A row back in time continues that time's count and is counted as backwards."""
        seqs = SeqCounter()
        assert [seqs.next(t) for t in (5, 5, 6, 5, 7, 4)] == [0, 1, 0, 2, 0, 0]
        assert seqs.backwards == 2

    def test_time_before_the_window_is_rejected(self) -> None:
        """A row older than the window is rejected rather than given a colliding seq."""
        seqs = SeqCounter(window=2)
        for t in (1, 2, 3, 4):
            seqs.next(t)
        with pytest.raises(RejectedInput) as info:
            seqs.next(1)
        assert info.value.reason == "out_of_order"

    def test_skipped_runs_leave_the_state_of_row_by_row_numbering(self) -> None:
        """skip_runs then next() numbers every later row as next() alone would, window included."""
        rng = random.Random(5)
        for _ in range(200):
            window = rng.randint(1, 6)
            before = [rng.randint(0, 12) for _ in range(rng.randint(0, 15))]
            by_row, bulk = SeqCounter(window=window), SeqCounter(window=window)
            for t in before:
                for counter in (by_row, bulk):
                    with contextlib.suppress(RejectedInput):
                        counter.next(t)
            start = max(before, default=0) + rng.randint(0, 2)
            if bulk.first_seq(start) is None:
                continue
            times = sorted({start, *(start + rng.randint(1, 9) for _ in range(rng.randint(0, 8)))})
            counts = [rng.randint(1, 3) for _ in times]
            first_seqs = [
                by_row.next(t) for t, n in zip(times, counts, strict=True) for _ in range(n)
            ]
            assert first_seqs[0] == bulk.first_seq(start)
            bulk.skip_runs(times, counts)
            for t in [rng.randint(0, 25) for _ in range(30)]:
                outcomes: list[int | str] = []
                for counter in (by_row, bulk):
                    try:
                        outcomes.append(counter.next(t))
                    except RejectedInput as exc:
                        outcomes.append(exc.reason)
                assert outcomes[0] == outcomes[1]
            assert by_row.backwards == bulk.backwards


def exact(trade: Trade) -> tuple[int, int, Decimal, int, Decimal, int]:
    """A trade's time, seq, and price and volume with their scales (the exponent)."""
    price, volume = trade.price, trade.volume
    return (
        trade.time_ns,
        trade.seq,
        price,
        int(price.as_tuple().exponent),
        volume,
        int(volume.as_tuple().exponent),
    )


def parse_rows(lines: list[str], seqs: SeqCounter) -> list[Trade]:
    max_ns = max_time_ns(time.time_ns())
    return [parse_trade3(line.rstrip("\n").split(","), "BTC/USD", seqs, max_ns) for line in lines]


class TestColumnarBlocks:
    def test_block_equals_row_by_row_parsing(self) -> None:
        """A valid block yields the same trades and seqs as the row parser, text kept exact."""
        lines = [f"{T0},100.50,0.1\n", f"{T0},007.5,2.\n", f"{T0 + 2},1,0.00010\n"]
        seqs = SeqCounter()
        found = read_trade3_block("".join(lines).encode(), seqs, max_time_ns(time.time_ns()))
        assert found is not None
        block, rejections = found
        assert block is not None
        assert rejections == []
        assert (block.rows, block.first_s, block.last_s) == (3, T0, T0 + 2)
        assert block.to_trades("BTC/USD") == parse_rows(lines, SeqCounter())
        encoded = bytes(block.encode_copy_csv(7)).decode().splitlines()
        assert encoded[0] == "7,2020-09-13 12:00:00,100.50,0.1,0,c"
        assert encoded[1] == "7,2020-09-13 12:00:00,007.5,2.,1,c"
        assert seqs.next(T0 * NS_PER_S + 2 * NS_PER_S) == 1

    def test_block_continues_the_seq_of_the_previous_one(self) -> None:
        """Rows of a second that began in the previous block keep counting from it."""
        seqs = SeqCounter()
        seqs.next(T0 * NS_PER_S)
        found = read_trade3_block(f"{T0},1,1\n{T0},1,1\n".encode(), seqs, 2**62)
        assert found is not None
        block = found[0]
        assert block is not None
        assert block.table["seq"].to_pylist() == [1, 2]

    @pytest.mark.parametrize(
        "bad",
        [
            "",  # blank line: only the row path tells it from ",,"
            f"{T0 + 1}.5,1,1",  # fractional time: valid, but for the row parser
            f"{T0 - 5},1,1",  # time goes back
        ],
    )
    def test_blocks_the_fast_path_cannot_number_go_to_the_row_parser(self, bad: str) -> None:
        """A block with a line only the row path can place is refused whole, seqs untouched."""
        seqs = SeqCounter()
        data = f"{T0},1,1\n{bad}\n{T0 + 2},1,1\n".encode()
        assert read_trade3_block(data, seqs, max_time_ns(time.time_ns())) is None
        assert seqs.next(T0 * NS_PER_S) == 0

    @pytest.mark.parametrize(
        "bad",
        [
            f"{T0 + 1},abc,0.5",  # bad price
            f"{T0 + 1},1",  # missing field
            f"{T0 + 1},1,2,3",  # a field too many
            f"{T0 + 1},1,0.000",  # zero volume
            f"{T0 + 1},0E5,1",  # zero price in exponent notation
            f'"{T0 + 1}",1,1',  # quoted: the row parser does not unquote
            "1000000000,1,1",  # before 2010
            f"{T0 + 1},1e99999,1",  # beyond what numeric holds
            f"{T0 + 1}, 1,1",  # a space
        ],
    )
    def test_a_bad_line_is_rejected_in_place_as_the_row_parser_would(self, bad: str) -> None:
        """Only the bad line leaves the block, with the row parser's reason and its position."""
        max_ns = max_time_ns(time.time_ns())
        with pytest.raises(RejectedInput) as expected:
            parse_trade3(bad.split(","), "BTC/USD", SeqCounter(), max_ns)
        data = f"{T0},1,1\n{bad}\n{T0 + 2},1,1\n".encode()
        found = read_trade3_block(data, SeqCounter(), max_ns)
        assert found is not None
        block, [rejection] = found
        assert block is not None
        assert block.rows == 2
        assert (rejection.line, rejection.error.reason) == (1, expected.value.reason)
        assert (rejection.before_s, rejection.after_s) == (T0, T0 + 2)

    @pytest.mark.parametrize(
        ("unusual", "stored"),
        [("7.0E-7", "7.0E-7"), ("1.5e+3", "1.5e+3"), ("\u0663.5", "3.5")],
    )
    def test_valid_unusual_numbers_stay_on_the_fast_path(self, unusual: str, stored: str) -> None:
        """Exponents and non-ASCII digits are kept in the block with the row parser's value."""
        max_ns = max_time_ns(time.time_ns())
        lines = [f"{T0},1,1\n", f"{T0 + 1},2,{unusual}\n"]
        found = read_trade3_block("".join(lines).encode(), SeqCounter(), max_ns)
        assert found is not None
        block, rejections = found
        assert block is not None
        assert rejections == []
        assert block.table["volume"].to_pylist()[1] == stored
        assert block.to_trades("BTC/USD") == parse_rows(lines, SeqCounter())

    def test_blocks_end_between_seconds_and_lose_nothing(self) -> None:
        """Blocks hold whole lines, never split a second, and join back into the file."""
        rng = random.Random(3)
        t, lines = T0, []
        for _ in range(5_000):
            t += rng.choice([0, 0, 1])
            lines.append(f"{t},1.{rng.randint(0, 9)},2\n")
        data = "".join(lines).encode()
        blocks = [
            b for b in line_blocks(io.BytesIO(data), 1_000, second_boundary) if isinstance(b, bytes)
        ]
        assert b"".join(blocks) == data
        assert len(blocks) > 50
        for left, right in itertools.pairwise(blocks):
            assert left.endswith(b"\n")
            assert left.rsplit(b"\n", 2)[-2].split(b",")[0] != right.split(b",")[0]


async def trade_counts_per_second(storage: Storage, start: int, end: int) -> Counter[int]:
    counts: Counter[int] = Counter()
    for trade in await read_trades(storage, "BTC/USD", at(start), at(end)):
        counts[trade.time_ns // NS_PER_S] += 1
    return counts


class TestImportTrades:
    async def test_three_column_file_imports_exactly_once(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """100k rows: every row stored, same-second trades all kept, a re-import adds 0."""
        path = tmp_path / "XBTUSD.csv"
        expected = write_trades3(path, 100_000)
        first = await import_paths(storage, [path])
        assert (first.rows_read, first.inserted, first.present) == (100_000, 100_000, 0)
        end = max(expected) + 1
        assert await trade_counts_per_second(storage, T0, end) == expected
        assert max(expected.values()) > 1  # the file really has shared seconds
        again = await import_paths(storage, [path])
        assert (again.inserted, again.present) == (0, 100_000)
        assert await count_trades(storage, "BTC/USD", at(T0), at(end)) == 100_000

    @pytest.mark.slow
    async def test_million_row_file(self, storage: Storage, tmp_path: Path) -> None:
        """1,000,000 rows: exact count, same-second trades all present, re-import adds 0."""
        path = tmp_path / "XBTUSD.csv"
        expected = write_trades3(path, 1_000_000, seed=7)
        first = await import_paths(storage, [path])
        assert (first.rows_read, first.inserted) == (1_000_000, 1_000_000)
        end = max(expected) + 1
        assert await trade_counts_per_second(storage, T0, end) == expected
        again = await import_paths(storage, [path])
        assert (again.inserted, again.present) == (0, 1_000_000)

    async def test_corrupt_lines_keep_every_good_line(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """Each bad line is rejected with its reason and line number; all good lines land."""
        path = tmp_path / "XBTUSD.csv"
        lines = [f"{T0 + i},100.{i},0.5\n" for i in range(20)]
        lines[3] = f"{T0 + 3},abc,0.5\n"  # bad price
        lines[7] = f"{T0 + 7},100.7\n"  # missing column
        lines[11] = f"{T0 + 11},100.1,0\n"  # zero volume
        lines[15] = "\n"  # blank
        lines[17] = "17000000000000,100.1,0.5\n"  # far future
        path.write_bytes("".join(lines).encode() + b"\xff\xfe,1,2\n" + f"{T0 + 30},1,1\n".encode())
        summary = (await import_paths(storage, [path])).files[0]
        assert summary.rows_read == 22
        assert summary.inserted == 16
        assert summary.rejected == {
            "bad_price": 1,
            "bad_columns": 1,
            "bad_volume": 1,
            "blank_line": 1,
            "bad_time": 2,
        }
        assert summary.examples["bad_columns"][0].startswith("line 8:")
        assert [e.split(":")[0] for e in summary.examples["bad_time"]] == ["line 18", "line 21"]
        assert await count_trades(storage, "BTC/USD", at(T0), at(T0 + 31)) == 16

    @pytest.mark.parametrize("block_bytes", [600, 4_000, 8 << 20])
    async def test_unusual_and_bad_rows_give_the_row_parsers_result(
        self, storage: Storage, tmp_path: Path, block_bytes: int
    ) -> None:
        """Rows, values with their scale, seqs and rejections equal a pure row-parser reading."""
        rng = random.Random(block_bytes)
        odd = [
            "{t},1.5E-7,2",
            "{t},\u0663.25,1",
            "{t},7.,0.1e1",
            "{t},abc,1",
            "{t},1",
            "{t},0e3,1",
            "{t},1,2,3",
            "{t}, 5,1",
            "1000000000,1,1",
            "{t},2,1E99999",
        ]
        t, lines = T0, []
        for _ in range(3_000):
            t += rng.choice([0, 0, 1, 7])
            pattern = rng.choice(odd) if rng.random() < 0.03 else "{t},1{r}.5,0.{r}"
            lines.append(pattern.format(t=t, r=rng.randint(0, 999)) + "\n")
        path = tmp_path / "XBTUSD.csv"
        path.write_text("".join(lines), encoding="utf-8")
        seqs, max_ns = SeqCounter(), max_time_ns(time.time_ns())
        expected: list[tuple[int, int, Decimal, int, Decimal, int]] = []
        reasons: Counter[str] = Counter()
        for line in lines:
            try:
                trade = parse_trade3(line.rstrip("\n").split(","), "BTC/USD", seqs, max_ns)
            except RejectedInput as exc:
                reasons[exc.reason] += 1
                continue
            expected.append(exact(trade))
        summary = (await import_paths(storage, [path], block_bytes=block_bytes)).files[0]
        assert summary.rejected == dict(reasons)
        stored = [
            exact(trade) for trade in await read_trades(storage, "BTC/USD", at(T0), at(t + 1))
        ]
        assert stored == expected

    async def test_zip_members_stream_like_loose_files(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """CSVs inside a ZIP (in a folder) import the same rows; other members are ignored."""
        loose = tmp_path / "XBTUSD.csv"
        write_trades3(loose, 5_000)
        archive = tmp_path / "Kraken_Trading_History.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(loose, "TimeAndSales_Combined/XBTUSD.csv")
            zf.writestr("README.txt", "not data")
        sources = list(discover_sources([archive]))
        assert [s.member for s in sources] == ["TimeAndSales_Combined/XBTUSD.csv"]
        summary = await import_paths(storage, [archive])
        assert (summary.rows_read, summary.inserted) == (5_000, 5_000)
        assert (await import_paths(storage, [loose])).inserted == 0

    async def test_quarterly_seven_column_form_keeps_ids_and_sides(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """The headed 7-column form stores trade ids, sides and order types."""
        path = tmp_path / "XBTUSD.csv"
        path.write_text(
            "Price,Volume,Timestamp,Type(b/s),OrderType(m/l),Misc,TradeID\n"
            f"100.5,0.1,{T0}.1234567,b,m,,1001\n"
            f"100.6,0.2,{T0}.1234567,s,l,,1002\n"
        )
        summary = (await import_paths(storage, [path])).files[0]
        assert (summary.layout, summary.inserted) == (FileLayout.TRADES7, 2)
        trades = await read_trades(storage, "BTC/USD", at(T0), at(T0 + 1))
        assert [(t.trade_id, t.side, t.ord_type) for t in trades] == [
            (1001, "buy", "market"),
            (1002, "sell", "limit"),
        ]
        assert trades[0].time_ns == T0 * NS_PER_S + 123_456_700

    async def test_interrupted_import_reruns_to_the_same_result(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """Cancelled after a few committed batches, a re-run ends with exactly the file."""
        path = tmp_path / "XBTUSD.csv"
        expected = write_trades3(path, 20_000, seed=3)
        batches = 0
        with trio.CancelScope() as scope:

            def on_progress(source: ImportSource, done: int) -> None:
                nonlocal batches
                batches += 1
                if batches == 3:
                    scope.cancel()

            await import_paths(storage, [path], block_bytes=30_000, on_progress=on_progress)
        end = max(expected) + 1
        committed = await count_trades(storage, "BTC/USD", at(T0), at(end))
        assert 0 < committed < 20_000
        rerun = await import_paths(storage, [path], block_bytes=30_000)
        assert (rerun.inserted, rerun.present) == (20_000 - committed, committed)
        assert await trade_counts_per_second(storage, T0, end) == expected

    async def test_csv_rows_already_stored_from_rest_are_not_duplicated(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """An id-less CSV row matching a stored REST trade (second, price, volume) is skipped."""
        rest = [
            Trade(
                "BTC/USD", T0 * NS_PER_S + 250_000_000, Decimal("100.5"), Decimal("0.1"), trade_id=7
            ),
            Trade(
                "BTC/USD", T0 * NS_PER_S + 750_000_000, Decimal("100.5"), Decimal("0.1"), trade_id=8
            ),
        ]
        await write_trades(storage, rest, source="rest")
        path = tmp_path / "XBTUSD.csv"
        # Three identical rows in that second: two are the REST trades, one is new.
        path.write_text(f"{T0},100.50,0.1\n{T0},100.5,0.10\n{T0},100.5,0.1\n{T0 + 1},101,1\n")
        summary = (await import_paths(storage, [path])).files[0]
        assert (summary.inserted, summary.present, summary.cross_source) == (2, 2, 2)
        assert await count_trades(storage, "BTC/USD", at(T0), at(T0 + 2)) == 4

    async def test_copy_and_overlap_paths_store_identical_rows(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A file copied into empty ranges and one merged around stored trades end up equal."""
        lines = write_trades3(tmp_path / "XBTUSD.csv", 3_000, seed=11)
        (tmp_path / "ETHUSD.csv").write_bytes((tmp_path / "XBTUSD.csv").read_bytes())
        end = max(lines) + 1
        # A REST trade (with an id, so it matches no CSV row) in the middle of ETH's range
        # sends the block around it down the staging and ON CONFLICT path.
        middle = sorted(lines)[len(lines) // 2]
        rest = Trade("ETH/USD", middle * NS_PER_S + 1_000, Decimal("1"), Decimal("1"), trade_id=1)
        await write_trades(storage, [rest], source="rest")
        summary = await import_paths(
            storage, [tmp_path / "XBTUSD.csv", tmp_path / "ETHUSD.csv"], block_bytes=8_000
        )
        assert [f.inserted for f in summary.files] == [3_000, 3_000]

        def rows(trades: list[Trade]) -> list[tuple[int, str, str, int]]:
            return [(t.time_ns, str(t.price), str(t.volume), t.seq) for t in trades]

        btc = await read_trades(storage, "BTC/USD", at(T0), at(end))
        eth = await read_trades(storage, "ETH/USD", at(T0), at(end))
        assert rows(btc) == rows([t for t in eth if t.trade_id is None])
        assert len(btc) == 3_000
        for symbol in ("BTC/USD", "ETH/USD"):
            report = await coverage_report(storage, symbol, "trades", at(T0), at(end))
            assert report.holes == []

    async def test_bad_line_far_into_the_file_keeps_its_line_number(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """Blocks copied whole count their lines, so a later rejection names its true line."""
        path = tmp_path / "XBTUSD.csv"
        lines = [f"{T0 + i // 3},100.{i % 10},0.5\n" for i in range(3_000)]
        lines[2_500] = f"{T0 + 2_500 // 3},100.1,-1\n"
        path.write_text("".join(lines))
        summary = (await import_paths(storage, [path], block_bytes=2_000)).files[0]
        assert (summary.rows_read, summary.inserted) == (3_000, 2_999)
        assert summary.examples["bad_volume"] == ["line 2501: volume '-1' is not a decimal number"]
        expected = Counter(T0 + i // 3 for i in range(3_000) if i != 2_500)
        assert await trade_counts_per_second(storage, T0, T0 + 1_000) == expected

    async def test_rows_going_back_in_time_get_the_same_seqs(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A file whose times step back across blocks is numbered exactly as row by row."""
        rng = random.Random(9)
        times = sorted(T0 + rng.randint(0, 400) for _ in range(2_000))
        for i in rng.sample(range(2_000), 20):
            times[i] -= rng.randint(1, 30)  # a few rows out of order
        lines = [f"{t},{rng.randint(1, 99)}.5,1\n" for t in times]
        (tmp_path / "XBTUSD.csv").write_text("".join(lines))
        summary = (await import_paths(storage, [tmp_path / "XBTUSD.csv"], block_bytes=3_000)).files[
            0
        ]
        expected = parse_rows(lines, SeqCounter())
        assert summary.inserted == 2_000
        assert summary.out_of_order == 20
        stored = await read_trades(storage, "BTC/USD", at(T0 - 60), at(T0 + 500))
        assert sorted((t.time_ns, t.seq) for t in stored) == sorted(
            (t.time_ns, t.seq) for t in expected
        )
        assert {(t.time_ns, t.seq): t.price for t in stored} == {
            (t.time_ns, t.seq): t.price for t in expected
        }


def exact_candle(c: Candle) -> tuple[object, ...]:
    """A candle's time, numbers with their scales, and count."""
    numbers = (c.open, c.high, c.low, c.close, c.volume)
    return (c.time, *((n, int(n.as_tuple().exponent)) for n in numbers), c.trades)


class TestImportCandles:
    @pytest.mark.parametrize("block_bytes", [500, 5_000, 8 << 20])
    async def test_column_path_gives_the_row_parsers_result(
        self, storage: Storage, tmp_path: Path, block_bytes: int
    ) -> None:
        """Stored candles (values and scales) and rejections equal a pure row-parser reading."""
        rng = random.Random(block_bytes)
        odd = [
            "{t},10,11,9,10.5,1e-3,3",  # exponent volume: valid
            "{t},\u0661\u0660,11,9,10.5,2,3",  # non-ASCII digits: valid
            "{t},10,8,9,10.5,2,3",  # high below low
            "{m},10,11,9,10.5,2,3",  # not on a minute
            "{t},0,11,9,10.5,2,3",  # zero open
            "{t},10,11,9,10.5,2,x",  # bad count
            "{t},10,11,9,10.5,2",  # a field short
            "{t},10,11,9,10.5,2,3,4",  # a field too many
            "{p},10,11,9,10.5,2,3",  # a minute repeated: the last one wins
        ]
        minute = (T0 // 60) * 60
        t, lines = minute, []
        for _ in range(600):
            t += 60 * rng.choice([1, 1, 2])
            if rng.random() < 0.05:
                pattern = rng.choice(odd)
            else:
                pattern = "{t},1{r}.5,1{r}.9,1{r}.1,1{r}.25,0.{r},{r}"
            lines.append(pattern.format(t=t, m=t + 7, p=t - 60, r=rng.randint(0, 999)) + "\n")
        path = tmp_path / "XBTUSD_1.csv"
        path.write_text("".join(lines), encoding="utf-8")
        max_ns = max_time_ns(time.time_ns())
        expected: dict[datetime, tuple[object, ...]] = {}
        reasons: Counter[str] = Counter()
        for line in lines:
            try:
                candle = parse_ohlcvt(line.rstrip("\n").split(","), "BTC/USD", 1, max_ns)
            except RejectedInput as exc:
                reasons[exc.reason] += 1
                continue
            expected[candle.time] = exact_candle(candle)
        summary = (await import_paths(storage, [path], block_bytes=block_bytes)).files[0]
        assert summary.rejected == dict(reasons)
        stored = await stored_candles(storage, "BTC/USD", at(minute), at(t + 60))
        assert [exact_candle(c) for c in stored] == [expected[k] for k in sorted(expected)]
        again = (await import_paths(storage, [path], block_bytes=block_bytes)).files[0]
        assert (again.inserted, again.updated) == (0, 0)

    async def test_one_minute_file_stores_candles_and_coverage(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """Every row becomes a CSV candle; omitted minutes read as observed with no trades."""
        path = tmp_path / "XBTUSD_1.csv"
        lines = write_ohlcvt(path, 500)
        summary = (await import_paths(storage, [path], batch_rows=97)).files[0]
        assert (summary.rows_read, summary.inserted, summary.rejected_total) == (400, 400, 0)
        end = at(T0 + 499 * 60)
        candles = await stored_candles(storage, "BTC/USD", at(T0), end + timedelta(minutes=1))
        assert len(candles) == 400
        assert {c.vwap for c in candles} == {None}
        assert {c.source for c in candles} == {"csv"}
        stored = [
            f"{int(c.time.timestamp())},{c.open},{c.high},{c.low},{c.close},{c.volume},{c.trades}\n"
            for c in candles
        ]
        assert stored == lines
        report = await coverage_report(storage, "BTC/USD", "candles", at(T0), end)
        assert report.holes == []
        assert len(report.empty) == 99
        assert all(r.kind is HoleKind.NO_TRADES for r in report.empty)
        assert (await import_paths(storage, [path])).inserted == 0

    async def test_coarse_file_is_checked_against_minutes_not_stored(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A 5m file is compared with rolled-up 1m candles; a wrong bucket is reported."""
        minute = tmp_path / "XBTUSD_1.csv"
        write_ohlcvt(minute, 61)
        await import_paths(storage, [minute])
        rows = []
        for bucket in range(12):
            stored = await stored_candles(
                storage, "BTC/USD", at(T0 + bucket * 300), at(T0 + bucket * 300 + 300)
            )
            o, c = stored[0].open, stored[-1].close
            h, lo = max(x.high for x in stored), min(x.low for x in stored)
            v, n = sum(x.volume for x in stored), sum(x.trades for x in stored)
            if bucket == 4:
                h += 1
            rows.append(f"{T0 + bucket * 300},{o},{h},{lo},{c},{v},{n}\n")
        rows.append(f"{T0 + 12 * 300},1,1,1,1,1,1\n")  # past our 1m coverage
        coarse = tmp_path / "XBTUSD_5.csv"
        coarse.write_text("".join(rows))
        summary = (await import_paths(storage, [coarse])).files[0]
        assert summary.checked == (11, 1, 1)
        assert summary.mismatches[0].time == at(T0 + 4 * 300)
        assert set(summary.mismatches[0].fields) == {"high"}
        assert summary.inserted == 0

    async def test_unrecognised_file_is_skipped_with_a_reason(
        self, storage: Storage, tmp_path: Path
    ) -> None:
        """A CSV whose name is not a Kraken pair is skipped, not half-imported."""
        path = tmp_path / "notes.csv"
        path.write_text("hello,world\n")
        summary = (await import_paths(storage, [path])).files[0]
        assert summary.skipped.startswith("bad_name")
