"""A synchronous Python client for histdata's query socket, for backtesters.

::

    from histdata.client import Client

    with Client("var/histdata.sock") as hd:
        candles = hd.candles("BTC/USD", "1h", "2024-01-01", "2024-02-01")   # list of dicts
        frame = hd.candles("XBTUSD", "1h", "2024-01-01", "2024-02-01", frame="pandas")
        floats = hd.candles("BTC/USD", "1m", "2024-01-01", "2025-01-01",
                            frame="pandas", decimals="float")                 # float64 columns
        both = hd.timeframes("BTC/USD", ["1m", "1h"], "2024-01-01", "2024-01-02")
        last = hd.latest_candle("BTC/USD", "1m")
        for event in hd.stream(["BTC/USD"]):                                 # live NDJSON
            ...

Rows are dicts with the contract's fields in order; prices and volumes are exact
:class:`~decimal.Decimal` and times aware UTC :class:`~datetime.datetime` (a trade time's
digits below the microsecond, which ``datetime`` cannot hold, are dropped; the list keeps the
exact trade order). Data travels as an Arrow IPC stream whose decimals are already
``decimal128`` or, with ``decimals="float"``, ``float64`` (the service converts them), and
frames are built from it in Arrow (:mod:`histdata.frames`): ``frame="arrow"`` returns a
pyarrow Table, ``"pandas"`` or ``"polars"`` a DataFrame (the library must be installed; this
module imports pyarrow only for a read, and pandas or polars only when asked).
``decimals="exact"`` (the default) makes decimal columns Arrow ``decimal128`` at the
precision and scale the values need (pandas ``ArrowDtype``, polars ``Decimal``),
``decimals="float"`` makes them ``float64`` — a choice the caller makes knowingly. pandas
frames are indexed by ``time`` (``datetime64[ns, UTC]``).
``exact=True/False`` is the old spelling of ``decimals=`` and warns (``DeprecationWarning``).
:meth:`Client.open_candle_stream` and :meth:`Client.open_trade_stream` read the wire's record
batches as they arrive, for ranges larger than memory.

Errors: :class:`ServiceNotRunning` when nothing listens on the socket, :class:`BadRequest`
(400: the message names the parameter), :class:`NotFound` (404: unknown symbol or endpoint),
:class:`ServiceUnavailable` (503), :class:`StreamDropped` (the live stream fell behind), all
subclasses of :class:`ClientError`, which is also raised when a response is cut short.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from histdata.errors import HistdataError
from histdata.formats import DECIMALS, Decimals
from histdata.timeutil import parse_interval

if TYPE_CHECKING:
    from histdata.frames import FrameKind

__all__ = [
    "BadRequest",
    "Client",
    "ClientError",
    "NotFound",
    "ServiceNotRunning",
    "ServiceUnavailable",
    "StreamDropped",
    "socket_transport",
]

TimeLike = datetime | str | int | float


class ClientError(HistdataError):
    """The query service answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        self.status = status
        self.url = url
        super().__init__(message)


class ServiceNotRunning(ClientError):
    """Nothing accepts connections on the socket: the service is not running there."""


class BadRequest(ClientError):
    """HTTP 400: a parameter was rejected; the message names it."""


class NotFound(ClientError):
    """HTTP 404: unknown symbol (or endpoint)."""


class ServiceUnavailable(ClientError):
    """HTTP 503: the service runs but its database is unavailable (or it is unhealthy)."""


class StreamDropped(ClientError):
    """The service cut off the live stream; :attr:`reason` says why (``slow_consumer``: the
    client read too slowly and its queue filled)."""

    def __init__(self, message: str, *, reason: str, url: str = "") -> None:
        self.reason = reason
        super().__init__(message, url=url)


_BY_STATUS: dict[int, type[ClientError]] = {400: BadRequest, 404: NotFound, 503: ServiceUnavailable}


def _time_param(value: TimeLike) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}; use an aware UTC time")
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _decimals(decimals: Decimals | None, exact: bool | None) -> Decimals:
    """The ``decimals`` choice, from the deprecated ``exact`` flag when that is given."""
    if exact is None:
        if decimals is not None and decimals not in DECIMALS:
            raise ValueError(f"decimals must be 'exact' or 'float', not {decimals!r}")
        return decimals or "exact"
    warnings.warn(
        "exact= is deprecated; use decimals='exact' or decimals='float'",
        DeprecationWarning,
        stacklevel=3,
    )
    chosen: Decimals = "exact" if exact else "float"
    if decimals is not None and decimals != chosen:
        raise ValueError(f"exact={exact} contradicts decimals={decimals!r}; pass decimals only")
    return chosen


class _BodyReader(io.RawIOBase):
    """A response body as a readable file, pulled chunk by chunk, for pyarrow's IPC reader."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def socket_transport(socket_path: str) -> httpx.HTTPTransport:
    """An httpx transport for plain HTTP over the Unix socket at ``socket_path``.

    TLS is never used on a local socket, so no certificate store is loaded: httpx's default
    loads the CA bundle for every transport, which took 18 ms here, more than serving a year
    of 1h candles.
    """
    return httpx.HTTPTransport(uds=socket_path, verify=False)


class Client:
    """Blocking client over the Unix socket at ``socket_path`` (see module docs).

    ``timeout_s`` bounds each network wait (connect, each read), not a whole transfer; None
    waits forever.
    """

    def __init__(
        self, socket_path: str = "./var/histdata.sock", *, timeout_s: float | None = 60.0
    ) -> None:
        self._socket = socket_path
        self._http = httpx.Client(
            transport=socket_transport(socket_path),
            base_url="http://histdata",
            timeout=timeout_s,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _raise_for(self, response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            message = str(orjson.loads(response.read())["error"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = response.text[:200]
        cls = _BY_STATUS.get(response.status_code, ClientError)
        raise cls(
            f"HTTP {response.status_code}: {message}",
            status=response.status_code,
            url=str(response.request.url),
        )

    def _not_running(self, error: str, path: str) -> ServiceNotRunning:
        return ServiceNotRunning(f"histdata is not running at {self._socket}: {error}", url=path)

    def _get(self, path: str, params: dict[str, str]) -> httpx.Response:
        try:
            response = self._http.get(path, params=params)
        except httpx.ConnectError as exc:
            # Raised outside this block: httpcore leaves the socket of a failed Unix connect
            # in its traceback, and dropping the traceback here closes it now, not at some GC.
            refused = str(exc)
        except httpx.TransportError as exc:
            raise ClientError(f"request to {path} failed: {exc}", url=path) from exc
        else:
            self._raise_for(response)
            return response
        raise self._not_running(refused, path)

    @contextmanager
    def _arrow(self, path: str, params: dict[str, str]) -> Iterator[Any]:
        """An Arrow IPC stream reader on the response body, read as it arrives."""
        import pyarrow as pa

        refused = None
        try:
            with self._http.stream("GET", path, params={**params, "format": "arrow"}) as response:
                self._raise_for(response)
                # 1 MiB reads: pyarrow asks for each message's parts separately.
                body = io.BufferedReader(_BodyReader(response.iter_bytes()), 1 << 20)
                yield pa.ipc.open_stream(body)
        except httpx.ConnectError as exc:
            refused = str(exc)  # raised below, for the reason given in _get
        except httpx.TransportError as exc:
            raise ClientError(f"request to {path} failed: {exc}", url=path) from exc
        except OSError as exc:  # pyarrow's error for a body cut short
            raise ClientError(f"response from {path} was cut short: {exc}", url=path) from exc
        if refused is not None:
            raise self._not_running(refused, path)

    def _read(
        self, path: str, params: dict[str, str], frame: FrameKind | None, decimals: Decimals
    ) -> Any:
        """The whole answer as rows or ``frame``, decimals converted by the service."""
        from histdata.frames import to_frame, to_rows

        with self._arrow(path, {**params, "decimals": decimals}) as reader:
            table = reader.read_all()
        return to_rows(table, decimals) if frame is None else to_frame(table, frame, decimals)

    # -- the API ----------------------------------------------------------------------------

    def candles(
        self,
        symbol: str,
        interval: str | int,
        start: TimeLike,
        end: TimeLike,
        *,
        frame: FrameKind | None = None,
        decimals: Decimals | None = None,
        exact: bool | None = None,
    ) -> Any:
        """Candles of ``symbol`` at ``interval`` whose bucket starts in ``[start, end)``.

        Returns a list of dicts (``time, open, high, low, close, volume, vwap, trades``), or
        with ``frame`` a pyarrow Table or a DataFrame. ``decimals`` is ``"exact"`` (the
        default) or ``"float"``; ``exact`` is its deprecated spelling.

        Raises:
            ClientError: a subclass as described in the module docs.
            ValueError: ``frame`` or ``decimals`` is not a documented value, or ``exact``
                contradicts ``decimals``.
            ImportError: the library of ``frame`` is not installed.
        """
        chosen = _decimals(decimals, exact)
        params = self._candle_params(symbol, interval, start, end)
        return self._read("/v1/candles", params, frame, chosen)

    def trades(
        self,
        symbol: str,
        start: TimeLike,
        end: TimeLike,
        *,
        frame: FrameKind | None = None,
        decimals: Decimals | None = None,
        exact: bool | None = None,
    ) -> Any:
        """Trades of ``[start, end)`` in trade order (``time, price, volume, side, trade_id``).

        Returns and raises as :meth:`candles` does.
        """
        chosen = _decimals(decimals, exact)
        return self._read("/v1/trades", self._trade_params(symbol, start, end), frame, chosen)

    def open_candle_stream(
        self,
        symbol: str,
        interval: str | int,
        start: TimeLike,
        end: TimeLike,
        *,
        decimals: Decimals = "exact",
    ) -> AbstractContextManager[Any]:
        """The candles of :meth:`candles` as a ``pyarrow.RecordBatchStreamReader`` over the
        response as it arrives: its ``schema`` (with ``symbol`` and ``interval`` metadata)
        is known at once, and iterating it yields the server's record batches.

        Decimals are the wire's: ``decimal128(38, s)`` at the fixed scales of
        :data:`histdata.formats.CANDLES`, or ``float64`` with ``decimals="float"``. Memory
        holds one batch, so any range can be read. Use it as a context manager; it raises
        :class:`ClientError` subclasses on entry, or while iterating when the body is cut
        short.
        """
        params = self._candle_params(symbol, interval, start, end)
        return self._arrow("/v1/candles", {**params, "decimals": _decimals(decimals, None)})

    def open_trade_stream(
        self, symbol: str, start: TimeLike, end: TimeLike, *, decimals: Decimals = "exact"
    ) -> AbstractContextManager[Any]:
        """The trades of :meth:`trades` as a record batch stream (as
        :meth:`open_candle_stream`; metadata ``symbol``)."""
        params = self._trade_params(symbol, start, end)
        return self._arrow("/v1/trades", {**params, "decimals": _decimals(decimals, None)})

    @staticmethod
    def _candle_params(
        symbol: str, interval: str | int, start: TimeLike, end: TimeLike
    ) -> dict[str, str]:
        return {
            "symbol": symbol,
            "interval": str(interval),
            "start": _time_param(start),
            "end": _time_param(end),
        }

    @staticmethod
    def _trade_params(symbol: str, start: TimeLike, end: TimeLike) -> dict[str, str]:
        return {"symbol": symbol, "start": _time_param(start), "end": _time_param(end)}

    def timeframes(
        self,
        symbol: str,
        intervals: Sequence[str | int],
        start: TimeLike,
        end: TimeLike,
        *,
        frame: FrameKind | None = None,
        decimals: Decimals | None = None,
        exact: bool | None = None,
    ) -> dict[str, Any]:
        """Candles at several intervals over the same range: ``{interval: rows or frame}``."""
        chosen = _decimals(decimals, exact)
        return {
            str(interval): self.candles(symbol, interval, start, end, frame=frame, decimals=chosen)
            for interval in intervals
        }

    def latest_candle(
        self, symbol: str, interval: str | int = "1m", *, now: datetime | None = None
    ) -> dict[str, Any] | None:
        """The newest candle of ``symbol`` started within the last two intervals (possibly
        still in progress), or None when there is none that recent.

        Raises:
            ValueError: ``interval`` is not an interval (checked before any request).
        """
        minutes = parse_interval(str(interval))
        at = now or datetime.now(UTC)
        rows = self.candles(
            symbol,
            interval,
            at - timedelta(minutes=2 * minutes),
            at + timedelta(minutes=minutes),
        )
        return rows[-1] if rows else None

    def symbols(self) -> list[dict[str, Any]]:
        """Stored symbols with the first and last time of each stream (ISO strings)."""
        return list(orjson.loads(self._get("/v1/symbols", {}).content)["symbols"])

    def coverage(
        self, symbol: str, start: TimeLike, end: TimeLike, *, stream: str = "trades"
    ) -> dict[str, Any]:
        """Covered ranges and gaps of ``stream`` (``trades`` or ``candles``) in the range."""
        params = {
            "symbol": symbol,
            "stream": stream,
            "start": _time_param(start),
            "end": _time_param(end),
        }
        result: dict[str, Any] = orjson.loads(self._get("/v1/coverage", params).content)
        return result

    def health(self) -> dict[str, Any]:
        """The service's health document (raises :class:`ServiceUnavailable` when unhealthy)."""
        result: dict[str, Any] = orjson.loads(self._get("/healthz", {}).content)
        return result

    def stream(self, symbols: Sequence[str] | None = None) -> Generator[dict[str, Any], None, None]:
        """Live events (``type``: ``trade``, ``candle``, ``heartbeat``) as dicts, until the
        service stops (the iteration then ends) or the generator is closed (which closes the
        connection).

        Event values are the wire's: decimals and times as strings. Raises
        :class:`StreamDropped` when the service drops the stream because the client fell
        behind, and the other :class:`ClientError` subclasses when it refuses it.
        """
        params = {"symbols": ",".join(symbols)} if symbols else {}
        refused = None
        try:
            with self._http.stream("GET", "/v1/stream", params=params, timeout=None) as response:
                self._raise_for(response)
                for line in response.iter_lines():
                    if not line:
                        continue
                    event: dict[str, Any] = orjson.loads(line)
                    if event.get("type") == "error":
                        raise StreamDropped(
                            str(event.get("error")),
                            reason=str(event.get("reason")),
                            url="/v1/stream",
                        )
                    if event.get("type") == "hello":
                        continue
                    yield event
        except httpx.ConnectError as exc:
            refused = str(exc)  # raised below, for the reason given in _get
        except httpx.TransportError as exc:
            raise ClientError(f"live stream failed: {exc}", url="/v1/stream") from exc
        if refused is not None:
            raise self._not_running(refused, "/v1/stream")
