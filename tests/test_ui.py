"""The coverage map: its data, its loopback listener, and the page in a real headless Chromium.

The dataset is planted through histdata's own Storage API: six hours of BTC/USD trades every
ten seconds, with a hole (not observed) from 02:00 to 03:00, an unrecoverable hole from 04:00
to 04:30, a quiet stretch (observed, no trades) from 01:00 to 01:20, and the trade ids the
missed trades took, so each hole is also a trade-id hole. Candles are derived from the trades,
and a Kraken candle of 05:00 that counts 99 trades disagrees with ours.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio_websocket
from stored import stored_candles  # type: ignore[import-not-found]
from test_metrics import free_port  # type: ignore[import-not-found]

from histdata import ui
from histdata.config import load_config, parse_loopback_listen
from histdata.errors import ConfigError, DatabaseUnavailable
from histdata.httpserver import Request
from histdata.model import NS_PER_S, CandleSource, CoverageSpan, Trade
from histdata.storage import Storage
from histdata.storage.candles import derive_candles, write_candles
from histdata.storage.coverage import mark_unrecoverable
from histdata.storage.trades import write_trades
from histdata.supervisor import ChildSpec, Supervisor
from histdata.symbols import SymbolRegistry
from histdata.timeutil import format_time
from histdata.ui.mapdata import coverage_map, resolution_for

SYMBOL = "BTC/USD"
T0 = datetime(2024, 3, 4, tzinfo=UTC)
H = timedelta(hours=1)
END = T0 + 6 * H
HOLE = (T0 + 2 * H, T0 + 3 * H)
UNRECOVERABLE = (T0 + 4 * H, T0 + 4.5 * H)
QUIET = (T0 + H, T0 + H + timedelta(minutes=20))
MISMATCH = T0 + 5 * H  # Kraken's candle of this minute counts more trades than we stored
COVERED = [(T0, HOLE[0]), (HOLE[1], UNRECOVERABLE[0]), (UNRECOVERABLE[1], END)]
STEP_S = 10
STATIC = Path(ui.__file__).parent / "static"
CHROMIUM = shutil.which("chromium")
# Debian's package; as root Chromium needs --no-sandbox, and on this closed network the
# background-networking flags keep it from trying (and failing) to reach Google at start.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # Virtual time runs on until the page's fetches and drawing are done, then the DOM is
    # dumped or the screenshot taken.
    "--virtual-time-budget=15000",
)
WINDOW = (1200, 900)


def _inside(t: datetime, span: tuple[datetime, datetime]) -> bool:
    return span[0] <= t < span[1]


def planted_trades() -> list[Trade]:
    """Trades every STEP_S seconds, ids consecutive over the trades that happened: none in
    the quiet stretch; in the holes they happened (took ids) but were never stored."""
    out = []
    trade_id = 1000
    t = T0
    while t < END:
        if not _inside(t, QUIET):
            trade_id += 1
            if not _inside(t, HOLE) and not _inside(t, UNRECOVERABLE):
                i = trade_id - 1000
                out.append(
                    Trade(
                        SYMBOL,
                        int(t.timestamp()) * NS_PER_S,
                        Decimal(60000 + (i // 6) % 240 - (i * 7919) % 13),
                        Decimal("0.01") * (1 + i % 9),
                        trade_id=trade_id,
                    )
                )
        t += timedelta(seconds=STEP_S)
    return out


@pytest.fixture
async def planted(storage: Storage) -> Storage:
    """The storage holding the dataset of the module docs."""
    await write_trades(
        storage,
        planted_trades(),
        source="live",
        coverage=[(SYMBOL, CoverageSpan("trades", "live", a, b)) for a, b in COVERED],
    )
    await mark_unrecoverable(storage, SYMBOL, "trades", *UNRECOVERABLE, "older than REST serves")
    await derive_candles(storage, SYMBOL, T0, END)
    [ours] = await stored_candles(storage, SYMBOL, MISMATCH, MISMATCH + timedelta(minutes=1))
    await write_candles(storage, [dataclasses.replace(ours, trades=99, source=CandleSource.REST)])
    return storage


@asynccontextmanager
async def ui_child(storage: Storage) -> AsyncIterator[str]:
    """The UI listener as a supervised child on a free loopback port; yields its base URL."""
    port = free_port()
    spec = ChildSpec("ui", partial(ui.run, f"127.0.0.1:{port}", storage, SymbolRegistry.shipped()))
    supervisor = Supervisor("ui", [spec])
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        yield f"http://127.0.0.1:{port}"
        supervisor.shutdown()


class TestConfig:
    def test_off_by_default(self) -> None:
        """Without [ui] listen nothing is served: the default is empty."""
        assert load_config(environ={}).ui.listen == ""

    @pytest.mark.parametrize("listen", ["127.0.0.1:8780", "127.0.0.2:0", "[::1]:8780"])
    def test_loopback_accepted(self, listen: str) -> None:
        """Any loopback address, IPv4 or IPv6, is accepted."""
        config = load_config(environ={"HISTDATA_UI_LISTEN": listen})
        assert config.ui.listen == listen

    @pytest.mark.parametrize(
        "listen", ["0.0.0.0:8780", "[::]:8780", "192.168.1.5:8780", "localhost:8780", "8780"]
    )
    def test_anything_else_refused(self, listen: str) -> None:
        """All-interfaces, LAN addresses and host names are refused, naming the key."""
        with pytest.raises(ConfigError, match=r"\[ui\] listen"):
            load_config(environ={"HISTDATA_UI_LISTEN": listen})

    def test_parse_strips_brackets(self) -> None:
        """An IPv6 listen address is returned without its brackets, ready to bind."""
        assert parse_loopback_listen("[::1]:8780") == ("::1", 8780)


class TestMapData:
    def test_resolution_keeps_the_bucket_count_bounded(self) -> None:
        """A range is cut into at most max_buckets whole-minute buckets, one minute at least."""
        assert resolution_for(T0, T0 + H, max_buckets=2000) == timedelta(minutes=1)
        assert resolution_for(T0, T0 + timedelta(days=365), max_buckets=2000) == timedelta(
            minutes=263
        )

    async def test_planted_ranges_are_reported_at_their_times(self, planted: Storage) -> None:
        """The hole, the unrecoverable hole, the quiet stretch and the id breaks are where
        they were planted, and the four tiling kinds cover the range exactly once."""
        found = await coverage_map(planted, "XBTUSD", T0, END)
        assert found.symbol == SYMBOL
        trades = {
            k: [(r.start, r.end) for r in found.streams[0].ranges if r.kind == k]
            for k in (
                "observed",
                "empty",
                "hole",
                "unrecoverable",
                "id-hole",
                "mismatch",
            )
        }
        assert trades["hole"] == [HOLE]
        assert trades["unrecoverable"] == [UNRECOVERABLE]
        assert trades["empty"] == [QUIET]
        last_before = timedelta(seconds=STEP_S)
        assert trades["id-hole"] == [
            (HOLE[0] - last_before, HOLE[1]),
            (UNRECOVERABLE[0] - last_before, UNRECOVERABLE[1]),
        ]
        tiling = sorted((r.start, r.end) for r in found.streams[0].ranges if r.kind != "id-hole")
        assert tiling[0][0] == T0
        assert tiling[-1][1] == END
        assert all(a[1] == b[0] for a, b in itertools.pairwise(tiling))
        reasons = [r.detail for r in found.streams[0].ranges if r.kind == "unrecoverable"]
        assert reasons == ["older than REST serves"]
        candle_holes = [(r.start, r.end) for r in found.streams[1].ranges if r.kind == "hole"]
        assert candle_holes == [HOLE, UNRECOVERABLE]
        [mismatch] = [r for r in found.streams[1].ranges if r.kind == "mismatch"]
        assert (mismatch.start, mismatch.end) == (MISMATCH, MISMATCH + timedelta(minutes=1))
        assert "trades 6≠99" in mismatch.detail


class TestListener:
    async def test_serves_the_page_and_its_files(self, planted: Storage) -> None:
        """/ is the page with a strict content policy; the vendored chart library is served."""
        async with ui_child(planted) as url, httpx.AsyncClient(base_url=url) as client:
            page = await client.get("/")
            library = await client.get("/static/lightweight-charts.standalone.production.js")
            licence = await client.get("/static/LICENSE-lightweight-charts.txt")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "tradingview.com" in page.text
        assert library.status_code == 200
        assert (
            library.content == (STATIC / "lightweight-charts.standalone.production.js").read_bytes()
        )
        assert "Apache License" in licence.text

    async def test_map_and_candles_answer_json(self, planted: Storage) -> None:
        """/api/map gives the ranges; /v1/candles and /v1/symbols are the query API's."""
        async with ui_child(planted) as url, httpx.AsyncClient(base_url=url) as client:
            mapped = await client.get(
                "/api/map",
                params={
                    "symbol": "XBTUSD",
                    "start": format_time(T0),
                    "end": "2024-03-04T06:00:00Z",
                },
            )
            candles = await client.get(
                "/v1/candles",
                params={
                    "symbol": SYMBOL,
                    "interval": "1h",
                    "start": "2024-03-04",
                    "end": "2024-03-05",
                },
            )
            symbols = await client.get("/v1/symbols")
        assert mapped.status_code == 200
        ranges = mapped.json()["streams"]["trades"]["ranges"]
        assert {
            "kind": "hole",
            "start": "2024-03-04T02:00:00Z",
            "end": "2024-03-04T03:00:00Z",
            "detail": "",
        } in ranges
        assert candles.status_code == 200
        assert [c["time"] for c in candles.json()["candles"]] == [
            "2024-03-04T00:00:00Z",
            "2024-03-04T01:00:00Z",
            "2024-03-04T03:00:00Z",
            "2024-03-04T04:00:00Z",
            "2024-03-04T05:00:00Z",
        ]
        assert [s["symbol"] for s in symbols.json()["symbols"]] == [SYMBOL]

    @pytest.mark.parametrize(
        ("params", "status", "named"),
        [
            ({"symbol": SYMBOL, "start": "2024-03-04"}, 400, "end"),
            ({"symbol": SYMBOL, "start": "2024-03-05", "end": "2024-03-04"}, 400, "end"),
            ({"symbol": SYMBOL, "start": "soon", "end": "2024-03-04"}, 400, "start"),
            ({"symbol": SYMBOL, "start": "2024-03-04", "end": "2024-03-05", "x": "1"}, 400, "x"),
            ({"symbol": "NOPE/USD", "start": "2024-03-04", "end": "2024-03-05"}, 404, "NOPE"),
        ],
    )
    async def test_bad_map_parameters_are_named(
        self, storage: Storage, params: dict[str, str], status: int, named: str
    ) -> None:
        """A bad /api/map parameter is a 400 naming it; an unknown symbol a 404."""
        async with ui_child(storage) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/api/map", params=params)
        assert response.status_code == status
        assert named in response.json()["error"]

    async def test_nothing_but_the_map_and_its_reads(self, storage: Storage) -> None:
        """Trades, the live stream, health, metrics, other files and writes are not served."""
        async with ui_child(storage) as url, httpx.AsyncClient(base_url=url) as client:
            answers = {
                path: (await client.get(path)).status_code
                for path in (
                    "/v1/trades?symbol=BTC/USD&start=2024-03-04&end=2024-03-05",
                    "/v1/stream",
                    "/healthz",
                    "/metrics",
                    "/static/../server.py",
                    "/static/VENDORED.md",
                )
            }
            post = await client.post("/api/map")
        assert set(answers.values()) == {404}, answers
        assert post.status_code == 405

    async def test_database_outage_is_a_503(self) -> None:
        """With no database (the service's getter raises), reads answer 503 and the page
        itself is still served."""

        def no_storage() -> Storage:
            raise DatabaseUnavailable("database is down")

        app = ui.UIApp(no_storage, SymbolRegistry.shipped())
        headers = {"host": "127.0.0.1:8780"}
        map_query = {"symbol": [SYMBOL], "start": ["2024-03-04"], "end": ["2024-03-05"]}
        mapped = await app.handle(Request("GET", "/api/map", map_query, headers))
        candles = await app.handle(Request("GET", "/v1/candles", map_query, headers))
        page = await app.handle(Request("GET", "/", {}, headers))
        assert (mapped.status, candles.status, page.status) == (503, 503, 200)

    async def test_foreign_host_header_is_refused(self, storage: Storage) -> None:
        """A request addressed to another name (DNS rebinding from a web page) gets 403."""
        async with ui_child(storage) as url, httpx.AsyncClient(base_url=url) as client:
            rebound = await client.get("/v1/symbols", headers={"host": "evil.example:8780"})
            local = await client.get("/v1/symbols", headers={"host": "localhost:8780"})
        assert rebound.status_code == 403
        assert local.status_code == 200


# --------------------------------------------------------------------------- the browser


class _Ranges(HTMLParser):
    """Collects the attributes of every element with ``data-kind`` or ``data-lane``."""

    def __init__(self) -> None:
        super().__init__()
        self.ranges: list[dict[str, str]] = []
        self.lanes: dict[str, dict[str, str]] = {}
        self.body: dict[str, str] = {}
        self.chart: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "body":
            self.body = found
        if found.get("id") == "chart-title":
            self.chart = found
        if "data-lane" in found:
            self.lanes[found["data-lane"]] = found
        elif "data-kind" in found and "data-start" in found:
            self.ranges.append(found)


def png_pixel(png: bytes, x: int, y: int) -> tuple[int, int, int]:
    """The RGB colour at ``(x, y)`` of an 8-bit RGB or RGBA PNG (what Chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat, header = 8, b"", b""
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        data = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        position += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert (depth, interlace) == (8, 0), (depth, interlace)
    assert colour in (2, 6), colour  # RGB or RGBA
    channels = 4 if colour == 6 else 3
    stride = width * channels
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    for row in range(y + 1):  # rows filter against the one above: undo them down to y
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                guess = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + guess) & 0xFF
        previous = line
    assert 0 <= x < width
    assert 0 <= y < height
    r, g, b = previous[x * channels : x * channels + 3]
    return r, g, b


def css_colour(kind: str) -> tuple[int, int, int]:
    """The colour style.css gives ``kind`` (``--kind-<kind>: #rrggbb``)."""
    css = (STATIC / "style.css").read_text()
    match = re.search(rf"--kind-{kind}:\s*#([0-9a-fA-F]{{6}});", css)
    assert match is not None, kind
    value = match.group(1)
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


async def chromium(profile: Path, *args: str) -> bytes:
    """Run headless Chromium once with ``profile`` (a new, empty folder); its standard output."""
    assert CHROMIUM is not None
    with trio.fail_after(90):
        done = await trio.run_process(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                *args,
            ],
            capture_stdout=True,
            capture_stderr=True,
        )
    return done.stdout


class DevTools:
    """One page of a headless Chromium driven over the DevTools protocol (a WebSocket), for
    what a dump or a screenshot cannot do: press, move and release the mouse."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def call(self, method: str, **params: object) -> dict[str, Any]:
        """Send one command and return its result (events in between are skipped)."""
        sent = next(self._ids)
        command = {"id": sent, "method": method, "params": params}
        await self._ws.send_message(orjson.dumps(command).decode())  # text frames only
        while True:
            message = orjson.loads(await self._ws.get_message())
            if message.get("id") == sent:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def value(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Poll until ``expression`` is truthy in the page; its value."""
        with trio.fail_after(30):
            # The page has no event to wait on from here: poll it.
            while not (found := await self.value(expression)):  # noqa: ASYNC110
                await trio.sleep(0.05)
        return found

    async def drag(self, start: tuple[int, int], end: tuple[int, int]) -> None:
        """Press the left button at ``start``, move to ``end`` and release it there."""
        common = {"button": "left", "clickCount": 1}
        await self.call(
            "Input.dispatchMouseEvent", type="mousePressed", x=start[0], y=start[1], **common
        )
        await self.call(
            "Input.dispatchMouseEvent", type="mouseMoved", x=end[0], y=end[1], button="left"
        )
        await self.call(
            "Input.dispatchMouseEvent", type="mouseReleased", x=end[0], y=end[1], **common
        )


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some():
        pass


@asynccontextmanager
async def devtools(profile: Path, url: str) -> AsyncIterator[DevTools]:
    """Headless Chromium on ``url`` with remote debugging on a free port, until we leave."""
    assert CHROMIUM is not None
    process = await trio.lowlevel.open_process(
        [
            CHROMIUM,
            *(f for f in CHROMIUM_FLAGS if not f.startswith("--virtual-time-budget")),
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--remote-debugging-port=0",
            url,
        ],
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        stderr = process.stderr
        seen = b""
        with trio.fail_after(30):
            while (found := re.search(rb"DevTools listening on ws://([^/]+)/", seen)) is None:
                chunk = await stderr.receive_some()
                assert chunk, seen.decode(errors="replace")
                seen += chunk
        address = found.group(1).decode()
        async with httpx.AsyncClient() as client:
            targets = (await client.get(f"http://{address}/json/list")).json()
        [target] = [t for t in targets if t["type"] == "page"]
        host, port = address.rsplit(":", 1)
        path = target["webSocketDebuggerUrl"].split(address, 1)[1]
        async with (
            await trio.open_tcp_stream(host, int(port)) as stream,
            trio.open_nursery() as nursery,
        ):
            # Chromium logs a lot; a full pipe would stop it, so keep reading.
            nursery.start_soon(_drain, stderr)
            ws = await trio_websocket.wrap_client_stream(nursery, stream, address, path)
            yield DevTools(ws)
            await ws.aclose()
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        with trio.CancelScope(shield=True):
            await process.wait()


def x_of(lane: dict[str, str], t: datetime) -> tuple[int, int]:
    """Screen ``(x, y)`` of time ``t`` in the middle of ``lane``, from its recorded box and
    the time range it draws."""
    left, top, width, height = (int(v) for v in lane["data-box"].split(","))
    start = datetime.fromisoformat(lane["data-start"])
    end = datetime.fromisoformat(lane["data-end"])
    fraction = (t - start) / (end - start)
    return round(left + fraction * width), top + height // 2


@pytest.mark.skipif(CHROMIUM is None, reason="chromium absent (apt-get install -y chromium)")
class TestInBrowser:
    async def test_planted_hole_is_drawn_at_its_time(
        self, planted: Storage, tmp_path: Path
    ) -> None:
        """In Chromium the page marks the planted hole with its exact times, and the
        screenshot shows the hole's colour at that time's x (and observed beside it)."""
        async with ui_child(planted) as url:
            page = f"{url}/?symbol=XBTUSD&start=2024-03-04T00:00:00Z&end=2024-03-04T06:00:00Z"
            dom = (await chromium(tmp_path / "profile-dom", "--dump-dom", page)).decode()
            shot = tmp_path / "map.png"
            await chromium(tmp_path / "profile-shot", f"--screenshot={shot}", page)
        parsed = _Ranges()
        parsed.feed(dom)
        assert parsed.body.get("data-state") == "ready", dom[:2000]
        lane = parsed.lanes["trades"]
        holes = [
            (r["data-start"], r["data-end"]) for r in parsed.ranges if r["data-kind"] == "hole"
        ]
        kinds = {r["data-kind"] for r in parsed.ranges}
        assert ("2024-03-04T02:00:00Z", "2024-03-04T03:00:00Z") in holes
        assert kinds == {"observed", "empty", "hole", "unrecoverable", "id-hole", "mismatch"}
        mismatches = [
            (r["data-start"], r["data-end"]) for r in parsed.ranges if r["data-kind"] == "mismatch"
        ]
        assert mismatches == [("2024-03-04T05:00:00Z", "2024-03-04T05:01:00Z")]
        assert int(parsed.chart["data-candles"]) > 0  # the chart drew the range's candles
        png = shot.read_bytes()
        middle = HOLE[0] + (HOLE[1] - HOLE[0]) / 2
        assert png_pixel(png, *x_of(lane, middle)) == css_colour("hole")
        assert png_pixel(png, *x_of(lane, HOLE[0] - 15 * timedelta(minutes=1))) == css_colour(
            "observed"
        )
        unrecoverable = UNRECOVERABLE[0] + (UNRECOVERABLE[1] - UNRECOVERABLE[0]) / 2
        assert png_pixel(png, *x_of(lane, unrecoverable)) == css_colour("unrecoverable")

    async def test_chart_shows_the_selected_range(self, planted: Storage, tmp_path: Path) -> None:
        """A selected range (here from the URL, as a drag leaves it) is charted with its
        candles only: 01:30 to 03:30 holds 30 minutes each side of the hole, 60 candles."""
        async with ui_child(planted) as url:
            page = (
                f"{url}/?symbol=BTC/USD&start=2024-03-04T00:00:00Z&end=2024-03-04T06:00:00Z"
                "&chart_start=2024-03-04T01:30:00Z&chart_end=2024-03-04T03:30:00Z"
            )
            dom = (await chromium(tmp_path / "profile", "--dump-dom", page)).decode()
        parsed = _Ranges()
        parsed.feed(dom)
        assert parsed.body.get("data-state") == "ready", dom[:2000]
        assert parsed.chart["data-start"] == "2024-03-04T01:30:00Z"
        assert parsed.chart["data-end"] == "2024-03-04T03:30:00Z"
        assert parsed.chart["data-candles"] == "60"
        assert dom.count('class="selection"') == len(parsed.lanes)

    async def test_dragging_and_clicking_chart_the_range(
        self, planted: Storage, tmp_path: Path
    ) -> None:
        """Dragging across the map charts the dragged range; clicking the hole charts it
        with half an hour either side (01:30 to 03:30: 60 candles)."""
        async with (
            ui_child(planted) as url,
            devtools(tmp_path / "profile", f"{url}/?symbol=BTC/USD") as page,
        ):
            state = "document.body.dataset.state"
            assert await page.wait_for(f"{state} !== 'loading' && {state}") == "ready"
            lane = {
                name: await page.value(f"document.querySelector('[data-lane=trades]').{attr}")
                for name, attr in (
                    ("data-box", "dataset.box"),
                    ("data-start", "dataset.start"),
                    ("data-end", "dataset.end"),
                )
            }
            await page.drag(x_of(lane, T0 + 0.5 * H), x_of(lane, T0 + 1.5 * H))
            dragged = await page.wait_for(
                "document.getElementById('chart-title').dataset.start !== "
                "'2024-03-04T00:00:00Z' && document.getElementById('chart-title').dataset.start"
            )
            dragged_end = await page.value("document.getElementById('chart-title').dataset.end")
            at_hole = x_of(lane, HOLE[0] + (HOLE[1] - HOLE[0]) / 2)
            await page.drag(at_hole, at_hole)
            clicked = orjson.loads(
                await page.wait_for(
                    "document.getElementById('chart-title').dataset.start === "
                    "'2024-03-04T01:30:00Z'"
                    " && JSON.stringify(document.getElementById('chart-title').dataset)"
                )
            )
            search = await page.value("location.search")
        # A pixel is 20 s of the six hours, so the dragged edges land within a minute.
        assert abs(datetime.fromisoformat(dragged) - (T0 + 0.5 * H)) <= timedelta(minutes=1)
        assert abs(datetime.fromisoformat(dragged_end) - (T0 + 1.5 * H)) <= timedelta(minutes=1)
        assert clicked["end"] == "2024-03-04T03:30:00Z"
        assert clicked["candles"] == "60"
        assert "chart_start=2024-03-04T01%3A30%3A00Z" in search


def test_map_json_is_what_the_page_reads() -> None:
    """The page reads the JSON keys /api/map writes (a rename on one side fails here)."""
    script = (STATIC / "app.js").read_text()
    for key in ("streams", "ranges", "resolution_s", "kind", "start", "end", "detail"):
        assert re.search(rf"\.{key}\b", script), key
