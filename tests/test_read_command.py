"""``histdata candles`` / ``histdata trades``: through the socket when served, else the database.

The command runs as a real subprocess configured by HISTDATA_* variables, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
import trio

from histdata.actors.hub import LiveHub
from histdata.actors.query import QueryApp
from histdata.model import Candle, CandleSource, Side, Trade
from histdata.storage import Storage
from histdata.storage.candles import write_candles
from histdata.storage.trades import write_trades
from histdata.symbols import SymbolRegistry

T0 = datetime(2024, 3, 4, tzinfo=UTC)
# A database nobody can reach: output on this setting proves the answer came via the socket.
UNREACHABLE = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"


async def seed(storage: Storage) -> None:
    await write_candles(
        storage,
        [
            Candle(
                symbol="BTC/USD",
                time=T0 + timedelta(minutes=i),
                open=Decimal("64000.5"),
                high=Decimal("64100") + i,
                low=Decimal("63900.25"),
                close=Decimal("64050.1") + i,
                volume=Decimal("0.00000001") * (i + 1),
                vwap=None if i < 3 else Decimal("64000.75"),
                trades=3,
                source=CandleSource.REST,
            )
            for i in range(150)
        ],
    )
    await write_trades(
        storage,
        [
            Trade(
                "BTC/USD",
                int(T0.timestamp()) * 10**9 + i * 250_000_001,
                Decimal("64000.1"),
                Decimal("0.01"),
                side=Side.SELL if i % 3 else None,
                trade_id=None if i == 2 else i,
            )
            for i in range(6)
        ],
        source="rest",
    )


@pytest.fixture
def socket_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="hdr") as directory:
        yield Path(directory) / "histdata.sock"


async def histdata(
    args: list[str], *, database_url: str, socket_path: Path, data_dir: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run ``histdata ARGS`` in a subprocess configured through the environment."""
    env = {
        **os.environ,
        "HISTDATA_DATABASE_URL": database_url,
        "HISTDATA_QUERY_SOCKET": str(socket_path),
        "HISTDATA_SERVICE_DATA_DIR": str(data_dir),
        "HISTDATA_SERVICE_LOG_FORMAT": "console",
    }
    return await trio.run_process(
        [sys.executable, "-m", "histdata.cli", *args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


CANDLES = ["candles", "XBTUSD", "-i", "1h", "--start", "2024-03-04", "--end", "2024-03-05"]
TRADES = ["trades", "BTC/USD", "--start", "2024-03-04", "--end", "1709514000"]


class TestReadCommand:
    @pytest.mark.parametrize("command", [CANDLES, TRADES], ids=["candles", "trades"])
    async def test_socket_and_database_print_the_same_csv(
        self,
        storage: Storage,
        database_url: str,
        socket_path: Path,
        tmp_path: Path,
        nursery: trio.Nursery,
        command: list[str],
    ) -> None:
        """Without a server the command reads the database; with one, the socket; same CSV."""
        await seed(storage)
        direct = await histdata(
            command, database_url=database_url, socket_path=socket_path, data_dir=tmp_path
        )
        assert direct.returncode == 0, direct.stderr
        app = QueryApp(storage, SymbolRegistry.shipped(), hub=LiveHub(), status=dict, metrics=bytes)
        await nursery.start(app.serve, socket_path)
        served = await histdata(
            command, database_url=UNREACHABLE, socket_path=socket_path, data_dir=tmp_path
        )
        assert served.returncode == 0, served.stderr
        assert app.requests == 1
        assert served.stdout == direct.stdout
        lines = served.stdout.decode().splitlines()
        if command is CANDLES:
            assert lines == [
                "time,open,high,low,close,volume,vwap,trades",
                "2024-03-04T00:00:00Z,64000.5,64159,63900.25,64109.1,0.00001830,,180",
                "2024-03-04T01:00:00Z,64000.5,64219,63900.25,64169.1,0.00005430,64000.75,180",
                "2024-03-04T02:00:00Z,64000.5,64249,63900.25,64199.1,0.00004065,64000.75,90",
            ]
        else:
            assert lines[0] == "time,price,volume,side,trade_id"
            assert lines[1:4] == [
                "2024-03-04T00:00:00Z,64000.1,0.01,,0",
                "2024-03-04T00:00:00.250000001Z,64000.1,0.01,sell,1",
                "2024-03-04T00:00:00.500000002Z,64000.1,0.01,sell,",
            ]
            assert len(lines) == 7

    async def test_arrow_matches_across_paths(
        self,
        storage: Storage,
        database_url: str,
        socket_path: Path,
        tmp_path: Path,
        nursery: trio.Nursery,
    ) -> None:
        """--format arrow prints the same IPC stream on both paths, and pyarrow reads it."""
        await seed(storage)
        command = [*CANDLES, "--format", "arrow"]
        direct = await histdata(
            command, database_url=database_url, socket_path=socket_path, data_dir=tmp_path
        )
        app = QueryApp(storage, SymbolRegistry.shipped(), hub=LiveHub(), status=dict, metrics=bytes)
        await nursery.start(app.serve, socket_path)
        served = await histdata(
            command, database_url=UNREACHABLE, socket_path=socket_path, data_dir=tmp_path
        )
        assert (direct.returncode, served.returncode, app.requests) == (0, 0, 1)
        assert served.stdout == direct.stdout
        table = pa.ipc.open_stream(served.stdout).read_all()
        assert table.schema.metadata[b"interval"] == b"1h"
        assert table.column("volume").to_pylist() == ["0.00001830", "0.00005430", "0.00004065"]
        assert table.column("time").to_pylist()[2] == T0 + timedelta(hours=2)

    async def test_errors_exit_2_with_one_line_on_both_paths(
        self,
        storage: Storage,
        database_url: str,
        socket_path: Path,
        tmp_path: Path,
        nursery: trio.Nursery,
    ) -> None:
        """Bad input exits 2 with one line naming the problem, whether served or direct."""
        unknown = ["candles", "DOGE/EUR", "--start", "2024-03-04", "--end", "2024-03-05"]
        backwards = ["trades", "BTC/USD", "--start", "2024-03-05", "--end", "2024-03-04"]
        direct = await histdata(
            unknown, database_url=database_url, socket_path=socket_path, data_dir=tmp_path
        )
        assert (direct.returncode, direct.stdout) == (2, b"")
        assert b"DOGE/EUR" in direct.stderr
        app = QueryApp(storage, SymbolRegistry.shipped(), hub=LiveHub(), status=dict, metrics=bytes)
        await nursery.start(app.serve, socket_path)
        served = await histdata(
            unknown, database_url=UNREACHABLE, socket_path=socket_path, data_dir=tmp_path
        )
        assert (served.returncode, served.stdout) == (2, b"")
        assert served.stderr.decode().strip().endswith("(HTTP 404)")
        assert b"DOGE/EUR" in served.stderr
        wrong = await histdata(
            backwards, database_url=UNREACHABLE, socket_path=socket_path, data_dir=tmp_path
        )
        assert wrong.returncode == 2
        assert wrong.stderr.decode().strip() == "histdata: parameter 'end': must be after start"
