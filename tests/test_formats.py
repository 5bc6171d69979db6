"""Wire formats: exact decimals, ISO times with Z, contract field order, streaming pieces."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pyarrow as pa

from histdata.formats import (
    batch_rows,
    candle_encoder,
    candle_event,
    candle_row,
    candle_schema,
    decimal_text,
    format_time_ns,
    record_batch,
    trade_encoder,
    trade_row,
    trade_schema,
)
from histdata.model import Candle, Side, Trade

ROW = (1_704_067_200_000_000, "2024-01-01T00:00:00Z", "1.5", "2", "1", "1.25", "0.001", None, 3)


def encode(encoder: object, chunks: list[list[object]]) -> bytes:
    parts = [encoder.begin()]  # type: ignore[attr-defined]
    parts += [encoder.rows(chunk) for chunk in chunks]  # type: ignore[attr-defined]
    parts.append(encoder.end())  # type: ignore[attr-defined]
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
        """Arrow pieces form one IPC stream whose batches concatenate to all rows."""
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
        assert table.column("price").to_pylist() == ["0.00001234"] * 2
        assert table.column("time").cast(pa.int64())[0].as_py() == trade.time_ns
        assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")

    def test_text_rows_survive_a_trip_through_arrow(self) -> None:
        """Rows made into an Arrow batch and back are the same rows (times to the ns)."""
        trade = Trade("BTC/USD", 1_704_067_200_123_456_789, Decimal("1.5"), Decimal(2))
        trade_rows = [
            trade_row(trade),
            trade_row(
                Trade(
                    "BTC/USD", 1_704_067_201 * 10**9, Decimal(1), Decimal(1), Side.SELL, trade_id=9
                )
            ),
        ]
        assert batch_rows(record_batch(trade_schema("BTC/USD"), trade_rows)) == trade_rows
        assert batch_rows(record_batch(candle_schema("BTC/USD", 5), [ROW, ROW])) == [ROW, ROW]
        assert record_batch(candle_schema("BTC/USD", 5), []).num_rows == 0

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
        assert candle_row(candle)[1] == "2024-01-01T00:00:00Z"
