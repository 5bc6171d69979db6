"""Wire formats: exact decimals, ISO times with Z, contract field order, streaming pieces."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest

from histdata.formats import (
    CANDLES,
    TRADES,
    Encoder,
    arrow_batches,
    candle_encoder,
    candle_event,
    candle_row,
    csv_line,
    decimal_text,
    format_time_ns,
    trade_encoder,
    trade_row,
)
from histdata.model import Candle, Side, Trade

ROW = ("2024-01-01T00:00:00Z", "1.5", "2", "1", "1.25", "0.001", None, "3")


def encode(encoder: Encoder, windows: list[list[tuple[str | None, ...]]]) -> bytes:
    parts = [encoder.begin()]
    parts += [encoder.rows(b"".join(csv_line(row) for row in window)) for window in windows]
    parts.append(encoder.end())
    return b"".join(parts)


class TestText:
    def test_decimals_never_use_exponents(self) -> None:
        """Tiny and trailing-zero decimals print in plain notation, digit for digit."""
        assert decimal_text(Decimal("1E-8")) == "0.00000001"
        assert decimal_text(Decimal("42000.10")) == "42000.10"

    def test_trade_times_keep_their_precision(self) -> None:
        """Trade times show ns only when present, µs when present, else whole seconds."""
        assert format_time_ns(1_704_067_200_000_000_000) == "2024-01-01T00:00:00Z"
        assert format_time_ns(1_704_067_200_123_456_000) == "2024-01-01T00:00:00.123456Z"
        assert format_time_ns(1_704_067_200_123_456_700) == "2024-01-01T00:00:00.123456700Z"


class TestEncoders:
    def test_json_chunks_join_into_one_document(self) -> None:
        """JSON pieces from several chunks form one valid document in field order."""
        body = encode(candle_encoder("json", 'we"ird', 60), [[ROW], [], [ROW, ROW]])
        doc = orjson.loads(body)
        assert doc["symbol"] == 'we"ird'
        assert doc["interval"] == "1h"
        assert len(doc["candles"]) == 3
        assert list(doc["candles"][0].items()) == [
            ("time", "2024-01-01T00:00:00Z"),
            ("open", "1.5"),
            ("high", "2"),
            ("low", "1"),
            ("close", "1.25"),
            ("volume", "0.001"),
            ("vwap", None),
            ("trades", 3),
        ]

    def test_empty_json_and_csv(self) -> None:
        """With no rows, JSON is an empty list and CSV just the header."""
        assert orjson.loads(encode(trade_encoder("json", "BTC/USD"), []))["trades"] == []
        assert encode(trade_encoder("csv", "BTC/USD"), []) == b"time,price,volume,side,trade_id\n"

    def test_arrow_stream_of_several_batches(self) -> None:
        """Arrow pieces form one IPC stream whose batches concatenate to all rows, decimals
        exact at the column's fixed scale and times to the ns."""
        trade = Trade(
            symbol="BTC/USD",
            time_ns=1_704_067_200_123_456_789,
            price=Decimal("0.00001234"),
            volume=Decimal(5),
            side=Side.BUY,
            trade_id=7,
        )
        body = encode(trade_encoder("arrow", "BTC/USD"), [[trade_row(trade)], [trade_row(trade)]])
        table = pa.ipc.open_stream(io.BytesIO(body)).read_all()
        assert table.num_rows == 2
        assert table.column("price").to_pylist() == [Decimal("0.00001234")] * 2
        assert table.schema.field("price").type == pa.decimal128(38, 12)
        assert table.column("time").cast(pa.int64())[0].as_py() == trade.time_ns
        assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
        assert table.schema.metadata == {b"symbol": b"BTC/USD"}

    def test_arrow_floats_and_absent_values(self) -> None:
        """With decimals="float" decimal columns are float64; empty fields are nulls."""
        trade = Trade("BTC/USD", 1_704_067_201 * 10**9, Decimal("1.5"), Decimal(2))
        window = csv_line(trade_row(trade))
        [batch] = arrow_batches(TRADES.arrow("float"), window)
        assert batch.to_pylist()[0]["price"] == 1.5
        assert batch.column("side").null_count == batch.column("trade_id").null_count == 1
        [candle] = arrow_batches(CANDLES.arrow("exact"), csv_line(ROW))
        assert candle.column("vwap").null_count == 1
        assert candle.column("trades").to_pylist() == [3]

    def test_a_decimal_finer_than_its_scale_is_refused(self) -> None:
        """A price with more fractional digits than the exact type holds is an error, never
        rounded."""
        row = ("2024-01-01T00:00:00Z", "0.0000000000001", "1", None, None)
        with pytest.raises(pa.ArrowInvalid):
            arrow_batches(TRADES.arrow("exact"), csv_line(row))

    def test_schema_names_the_csv_header(self) -> None:
        """The CSV header is the schema's column names, in contract order."""
        assert CANDLES.csv_header == b"time,open,high,low,close,volume,vwap,trades\n"
        assert TRADES.names == ("time", "price", "volume", "side", "trade_id")

    def test_candle_event_is_one_ndjson_line(self) -> None:
        """A live candle update is one JSON line that says whether it is final."""
        candle = Candle(
            symbol="ETH/USD",
            time=datetime(2024, 1, 1, tzinfo=UTC),
            open=Decimal("1.10"),
            high=Decimal(2),
            low=Decimal(1),
            close=Decimal("1.5"),
            volume=Decimal("3"),
            vwap=Decimal("1.2"),
            trades=4,
            final=False,
        )
        line = candle_event(candle)
        assert line.count(b"\n") == 1
        event = orjson.loads(line)
        assert event["open"] == "1.10"
        assert event["final"] is False
        assert event["interval"] == "1m"
        assert candle_row(candle)[0] == "2024-01-01T00:00:00Z"
