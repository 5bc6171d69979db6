"""``histdata export``: plain Parquet/Feather/CSV files and freqtrade's data directory.

The command runs as a real subprocess, through the socket of a served QueryApp or straight
from the database, as a user runs it. The freqtrade files are read back with freqtrade's own
data handlers (freqtrade is in the dev extra), the code its backtesting loads data with, and
one test runs ``freqtrade backtesting`` itself on an export.
"""

from __future__ import annotations

import math
import re
import sys
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import trio
from freqtrade.data.history import get_datahandler, load_pair_history
from freqtrade.enums import CandleType, TradingMode
from test_read_command import (  # type: ignore[import-not-found]
    T0,
    UNREACHABLE,
    histdata,
    seed,
    socket_path,
)

from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.commands.export import freqtrade_name
from histdata.formats import CANDLE_FIELDS
from histdata.httpserver import Request, Response, open_tcp_listener, serve_http
from histdata.model import Candle, CandleSource, Trade
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.trades import write_trades
from histdata.symbols import SymbolRegistry

__all__ = ["socket_path"]  # the fixture, shared with the read command's tests

RANGE = ["--start", "2024-03-04", "--end", "2024-03-05"]
TRADES = ["export", "BTC/USD", "--trades", *RANGE]
CHUNK = 40  # the served app's chunk: a 150-candle export arrives in 4 batches


async def serve(storage: Storage, path: Path, nursery: trio.Nursery) -> QueryApp:
    app = QueryApp(
        storage, SymbolRegistry.shipped(), hub=LiveHub(), status=dict, metrics=bytes, chunk=CHUNK
    )
    await nursery.start(app.serve, path)
    return app


async def same_ms_trades(storage: Storage) -> None:
    """Three id-less trades in one nanosecond, as a 3-column Kraken CSV gives them."""
    ns = int((T0 + timedelta(minutes=5)).timestamp()) * 10**9
    await write_trades(
        storage,
        [Trade("BTC/USD", ns, Decimal("64010"), Decimal(1), seq=k) for k in range(3)],
        source="csv",
    )


def wave_candles(minutes: int) -> list[Candle]:
    """1-minute BTC/USD candles from T0 on a price wave with a period of about 3 hours."""
    out = []
    for i in range(minutes):
        o = Decimal(64000 + round(400 * math.sin(i / 30), 1))
        c = Decimal(64000 + round(400 * math.sin((i + 1) / 30), 1))
        out.append(
            Candle(
                "BTC/USD",
                T0 + timedelta(minutes=i),
                o,
                max(o, c) + 5,
                min(o, c) - 5,
                c,
                Decimal("1.5"),
                None,
                10,
                source=CandleSource.CSV,
            )
        )
    return out


TWO_DAYS_5M = ["export", "BTC/USD", "-i", "5m", "--start", "2024-03-04", "--end", "2024-03-06"]
BACKTEST = [sys.executable, "-m", "freqtrade", "backtesting", "--strategy", "Cross"]
BACKTEST += ["--timerange", "20240304-20240306", "--export", "none"]
# A moving-average cross on 5m candles: trades often on wave_candles.
STRATEGY = """
from freqtrade.strategy import IStrategy


class Cross(IStrategy):
    INTERFACE_VERSION = 3
    timeframe = "5m"
    minimal_roi = {"0": 0.05}
    stoploss = -0.05
    startup_candle_count = 12

    def populate_indicators(self, df, metadata):
        df["fast"] = df["close"].rolling(3).mean()
        df["slow"] = df["close"].rolling(12).mean()
        return df

    def populate_entry_trend(self, df, metadata):
        up = (df["fast"] > df["slow"]) & (df["fast"].shift(1) <= df["slow"].shift(1))
        df.loc[up, "enter_long"] = 1
        return df

    def populate_exit_trend(self, df, metadata):
        down = (df["fast"] < df["slow"]) & (df["fast"].shift(1) >= df["slow"].shift(1))
        df.loc[down, "exit_long"] = 1
        return df
"""
# What ccxt's Kraken markets need of Kraken's public Assets and AssetPairs documents.
KRAKEN_MARKETS = {
    "Assets": {
        "XXBT": {"aclass": "currency", "altname": "XBT", "decimals": 10, "display_decimals": 5},
        "ZUSD": {"aclass": "currency", "altname": "USD", "decimals": 4, "display_decimals": 2},
    },
    "AssetPairs": {
        "XXBTZUSD": {
            "altname": "XBTUSD",
            "wsname": "XBT/USD",
            "aclass_base": "currency",
            "base": "XXBT",
            "aclass_quote": "currency",
            "quote": "ZUSD",
            "cost_decimals": 5,
            "pair_decimals": 1,
            "lot_decimals": 8,
            "lot_multiplier": 1,
            "leverage_buy": [],
            "leverage_sell": [],
            "fees": [[0, 0.26]],
            "fees_maker": [[0, 0.16]],
            "ordermin": "0.0001",
            "costmin": "0.5",
            "tick_size": "0.1",
            "status": "online",
        }
    },
}


async def kraken_markets(request: Request) -> Response:
    """A stand-in for Kraken's public market-list endpoints, for freqtrade's start-up."""
    found = KRAKEN_MARKETS.get(request.path.rsplit("/", 1)[-1])
    if found is None:
        return Response.json(404, {"error": ["EGeneral:Unknown method"]})
    return Response.json(200, {"error": [], "result": found})


def freqtrade_config(port: int) -> dict[str, Any]:
    """A minimal freqtrade backtest config whose exchange API is the stand-in on ``port``."""
    local = f"http://127.0.0.1:{port}"
    return {
        "max_open_trades": 1,
        "stake_currency": "USD",
        "stake_amount": 100,
        "dry_run": True,
        "dry_run_wallet": 1000,
        "timeframe": "5m",
        "trading_mode": "spot",
        "exchange": {
            "name": "kraken",
            "key": "",
            "secret": "",
            "pair_whitelist": ["BTC/USD"],
            "ccxt_config": {"urls": {"api": {"public": local, "private": local}}},
        },
        "pairlists": [{"method": "StaticPairList"}],
        "entry_pricing": {"price_side": "same"},
        "exit_pricing": {"price_side": "same"},
    }


class TestPlainLayout:
    async def test_parquet_is_written_batch_by_batch_with_exact_decimals(
        self,
        storage: Storage,
        database_url: str,
        socket_path: Path,
        tmp_path: Path,
        nursery: trio.Nursery,
    ) -> None:
        """Via the socket each server chunk becomes one row group, with exact decimals."""
        await seed(storage)
        await serve(storage, socket_path, nursery)
        args = ["export", "XBTUSD", "-i", "1m", *RANGE, "--format", "parquet"]
        served = await histdata(
            [*args, "-o", str(tmp_path / "s.parquet")],
            database_url=UNREACHABLE,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert served.returncode == 0, served.stderr
        assert b"wrote 150 1m candles" in served.stderr
        direct = await histdata(
            [*args, "--direct", "-o", str(tmp_path / "d.parquet")],
            database_url=database_url,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert direct.returncode == 0, direct.stderr
        via_socket = pq.ParquetFile(tmp_path / "s.parquet")
        assert via_socket.metadata.num_row_groups == math.ceil(150 / CHUNK)
        table = via_socket.read()
        assert table.equals(pq.read_table(tmp_path / "d.parquet"))
        assert tuple(table.column_names) == CANDLE_FIELDS
        assert table.schema.field("volume").type == pa.decimal128(38, 12)
        assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
        assert table.column("volume")[0].as_py() == Decimal("0.00000001")
        assert table.column("vwap")[0].as_py() is None
        assert table.schema.metadata[b"symbol"] == b"BTC/USD"
        names = sorted(p.name for p in await trio.Path(tmp_path).iterdir() if "parquet" in p.name)
        assert names == ["d.parquet", "s.parquet"]  # no partial file left behind

    async def test_feather_trades_as_floats(
        self, storage: Storage, database_url: str, socket_path: Path, tmp_path: Path
    ) -> None:
        """--trades --format feather --decimals float writes the trade columns as float64."""
        await seed(storage)
        out = tmp_path / "t.feather"
        done = await histdata(
            [*TRADES, "--format", "feather", "-o", str(out), "--decimals", "float"],
            database_url=database_url,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        table = feather.read_table(out)
        assert table.schema.field("price").type == pa.float64()
        assert table.schema.field("time").type == pa.timestamp("ns", tz="UTC")
        assert table.column("trade_id").to_pylist() == [0, 1, None, 3, 4, 5]
        assert table.column("time").cast(pa.int64())[1].as_py() % 10**9 == 250_000_001

    @pytest.mark.parametrize("kind", ["candles", "trades"])
    async def test_csv_is_what_the_read_command_prints(
        self,
        storage: Storage,
        database_url: str,
        socket_path: Path,
        tmp_path: Path,
        nursery: trio.Nursery,
        kind: str,
    ) -> None:
        """The CSV export is byte for byte the output of `histdata candles`/`trades`."""
        await seed(storage)
        interval = ["-i", "1h"] if kind == "candles" else []
        printed = await histdata(
            [kind, "BTC/USD", *interval, *RANGE],
            database_url=database_url,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert printed.returncode == 0, printed.stderr
        await serve(storage, socket_path, nursery)
        out = tmp_path / "x.csv"
        exported = await histdata(
            [
                "export",
                "BTC/USD",
                *(interval or ["--trades"]),
                *RANGE,
                "--format",
                "csv",
                "-o",
                str(out),
            ],
            database_url=UNREACHABLE,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert exported.returncode == 0, exported.stderr
        assert out.read_bytes() == printed.stdout
        assert printed.stdout.count(b"\n") > 2


class TestFreqtradeLayout:
    def test_file_names_are_freqtrades(self) -> None:
        """Pairs and timeframes are spelled as freqtrade's data handlers look them up."""
        assert freqtrade_name("BTC/USD", 5, "feather") == "BTC_USD-5m.feather"
        assert freqtrade_name("ETH/USD", 60, "parquet") == "ETH_USD-1h.parquet"
        assert freqtrade_name("BTC/USD", 10080, "feather") == "BTC_USD-1w.feather"
        assert freqtrade_name("BTC/USD", None, "feather") == "BTC_USD-trades.feather"

    @pytest.mark.parametrize("fmt", ["feather", "parquet"])
    async def test_freqtrade_loads_the_candles(
        self,
        storage: Storage,
        socket_path: Path,
        tmp_path: Path,
        nursery: trio.Nursery,
        fmt: str,
    ) -> None:
        """freqtrade's loader finds the 5m file and reads float candles with UTC dates."""
        await seed(storage)
        await serve(storage, socket_path, nursery)
        datadir = tmp_path / "user_data" / "data" / "kraken"
        done = await histdata(
            [
                "export",
                "XBTUSD",
                "-i",
                "5m",
                *RANGE,
                "--layout",
                "freqtrade",
                "--format",
                fmt,
                "-o",
                str(datadir),
            ],
            database_url=UNREACHABLE,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert (datadir / f"BTC_USD-5m.{fmt}").is_file()
        handler = get_datahandler(datadir, fmt)
        assert ("BTC/USD", "5m", CandleType.SPOT) in handler.ohlcv_get_available_data(
            datadir, TradingMode.SPOT
        )
        df = load_pair_history("BTC/USD", "5m", datadir, data_format=fmt, fill_up_missing=False)
        assert list(df.columns) == ["date", "open", "high", "low", "close", "volume"]
        assert str(df["date"].dtype) == "datetime64[ms, UTC]"
        assert {str(df[c].dtype) for c in df.columns[1:]} == {"float64"}
        assert len(df) == 30
        assert df["date"].iloc[1].isoformat() == "2024-03-04T00:05:00+00:00"
        assert df["high"].iloc[0] == 64104.0  # the 5m high: 64100 + 4
        assert df["volume"].iloc[0] == pytest.approx(15e-8)

    async def test_freqtrade_loads_every_trade(
        self, storage: Storage, database_url: str, socket_path: Path, tmp_path: Path
    ) -> None:
        """freqtrade's trade loader keeps every trade, id-less ones of one ms included."""
        await seed(storage)
        await same_ms_trades(storage)
        datadir = tmp_path / "kraken"
        done = await histdata(
            [*TRADES, "--layout", "freqtrade", "-o", str(datadir)],
            database_url=database_url,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert (datadir / "BTC_USD-trades.feather").is_file()
        trades = get_datahandler(datadir, "feather").trades_load("BTC/USD", TradingMode.SPOT)
        assert len(trades) == 9
        assert list(trades.columns[:7]) == [
            "timestamp",
            "id",
            "type",
            "side",
            "price",
            "amount",
            "cost",
        ]
        assert trades["timestamp"].iloc[1] == int(T0.timestamp()) * 1000 + 250
        assert trades["id"].iloc[1] == "1"
        assert trades["side"].iloc[1] == "sell"
        assert trades["cost"].iloc[0] == pytest.approx(640.001)
        same = trades[trades["price"] == 64010.0]
        assert len(same["id"].unique()) == 3
        assert str(trades["date"].dtype).startswith("datetime64")

    async def test_freqtrade_backtests_on_the_export(
        self, storage: Storage, database_url: str, tmp_path: Path, nursery: trio.Nursery
    ) -> None:
        """`freqtrade backtesting` runs on an exported data directory and makes trades."""
        # freqtrade loads Kraken's market list before any backtest; a local stand-in serves
        # the two documents it asks for (Assets, AssetPairs), so nothing leaves the machine.
        await write_candles(storage, wave_candles(2 * 24 * 60))
        datadir = tmp_path / "user_data" / "data" / "kraken"
        exported = await histdata(
            [*TWO_DAYS_5M, "--layout", "freqtrade", "--direct", "-o", str(datadir)],
            database_url=database_url,
            socket_path=tmp_path / "none.sock",
            data_dir=tmp_path,
        )
        assert exported.returncode == 0, exported.stderr
        listener = await open_tcp_listener()
        port = listener.socket.getsockname()[1]
        await nursery.start(serve_http, kraken_markets, [listener])
        await trio.Path(tmp_path / "user_data" / "strategies").mkdir(parents=True)
        await trio.Path(tmp_path / "user_data" / "strategies" / "Cross.py").write_text(STRATEGY)
        config = tmp_path / "config.json"
        await trio.Path(config).write_text(orjson.dumps(freqtrade_config(port)).decode())
        run = await trio.run_process(
            [
                *BACKTEST,
                "--config",
                str(config),
                "--userdir",
                str(tmp_path / "user_data"),
                "--datadir",
                str(datadir),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        output = (run.stdout + run.stderr).decode()
        assert run.returncode == 0, output[-3000:]
        # From the 12 startup candles on, to the last 5m candle of the range.
        assert "Backtested 2024-03-04 01:00:00 -> 2024-03-05 23:55:00" in output
        summary = re.search(r"│\s+Cross\s+│\s+(\d+)\s+│", output)
        assert summary is not None, output[-3000:]
        assert int(summary.group(1)) > 0


class TestErrors:
    async def test_usage_errors_exit_2(
        self, storage: Storage, database_url: str, socket_path: Path, tmp_path: Path
    ) -> None:
        """Clashing options and an unknown symbol exit 2 with one line, writing nothing."""
        env: dict[str, Any] = {
            "database_url": database_url,
            "socket_path": socket_path,
            "data_dir": tmp_path,
        }
        out = str(tmp_path / "out")
        csv = await histdata(
            ["export", "BTC/USD", *RANGE, "--layout", "freqtrade", "--format", "csv", "-o", out],
            **env,
        )
        assert csv.returncode == 2
        assert b"not csv" in csv.stderr
        both = await histdata(
            ["export", "BTC/USD", "-i", "1m", "--trades", *RANGE, "-o", out],
            **env,
        )
        assert both.returncode == 2
        unknown = await histdata(
            ["export", "DOGE/EUR", *RANGE, "-o", out],
            **env,
        )
        assert unknown.returncode == 2
        assert b"DOGE/EUR" in unknown.stderr
        assert not await trio.Path(out).exists()

    async def test_a_failed_export_leaves_no_file(self, socket_path: Path, tmp_path: Path) -> None:
        """With the database unreachable the export exits 1 and leaves nothing at --output."""
        out = tmp_path / "c.parquet"
        failed = await histdata(
            ["export", "BTC/USD", *RANGE, "-o", str(out)],
            database_url=UNREACHABLE,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert failed.returncode == 1
        assert failed.stderr.count(b"\n") == 1
        assert list(await trio.Path(tmp_path).iterdir()) == []

    async def test_a_value_finer_than_the_exact_scale_fails_without_rounding(
        self, storage: Storage, database_url: str, socket_path: Path, tmp_path: Path
    ) -> None:
        """A price finer than decimal128(38, 12) fails the export (exit 1, no file): no rounding."""
        await seed(storage)
        fine = Trade(
            "BTC/USD", int(T0.timestamp()) * 10**9 + 7, Decimal("1.0000000000001"), Decimal(1)
        )
        await write_trades(storage, [fine], source="rest")
        out = tmp_path / "t.parquet"
        env: dict[str, Any] = {"database_url": database_url, "socket_path": socket_path}
        failed = await histdata([*TRADES, "-o", str(out)], data_dir=tmp_path, **env)
        assert failed.returncode == 1
        assert b"--decimals float" in failed.stderr
        assert list(await trio.Path(tmp_path).iterdir()) == []
        floats = await histdata(
            [*TRADES, "--decimals", "float", "-o", str(out)], data_dir=tmp_path, **env
        )
        assert floats.returncode == 0, floats.stderr
        assert pq.read_table(out).num_rows == 7

    async def test_an_output_that_is_a_directory_fails_cleanly(
        self, storage: Storage, database_url: str, socket_path: Path, tmp_path: Path
    ) -> None:
        """When the finished file cannot take its name the export exits 1, leaving no file."""
        await seed(storage)
        target = trio.Path(tmp_path / "taken")
        await target.mkdir()
        failed = await histdata(
            ["export", "BTC/USD", *RANGE, "-o", str(target)],
            database_url=database_url,
            socket_path=socket_path,
            data_dir=tmp_path,
        )
        assert failed.returncode == 1
        assert [p.name for p in await trio.Path(tmp_path).iterdir()] == ["taken"]
