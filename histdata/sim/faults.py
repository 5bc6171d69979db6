"""Fault injection for the simulator: the ways Kraken misbehaves, switchable at run time.

Tests and demos flip these on a running simulator (``sim.faults.malformed_ratio = 0.2``,
``sim.faults.close_ws(1006)``); ``histdata sim`` sets them from flags. Every fault is one
Kraken has been seen to commit; the switches whose default is on are Kraken's normal
behaviour where the sources disagree, defaulting to the newest real capture
(docs/kraken.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CLOSE_CODES", "Faults", "ThrottleKind"]

# 1001 Cloudflare proxy restart, 1006 abnormal closure (TCP dropped, no close frame),
# 1011 keepalive ping timeout, 1013 market data unavailable.
CLOSE_CODES = (1001, 1006, 1011, 1013)
ThrottleKind = str  # "body" (HTTP 200 EGeneral:Too many requests), "eapi", "html429"
_THROTTLE_KINDS = ("body", "eapi", "html429")


@dataclass
class Faults:
    """Switchable misbehaviour. Attributes may be set directly; methods act at once.

    Attributes:
        malformed_ratio: chance that a WebSocket ``trade`` frame comes with a malformed
            companion: a frame that is not JSON, a frame of an unknown channel, or a corrupt
            row (bad price, quantity, time, side or symbol) inside the real frame. Real
            trades are never altered, so a client that rejects the bad input loses nothing.
        boundary_duplicates: REST ``Trades`` ``since`` is inclusive, so paging by ``last``
            (the final trade's exact time) repeats that trade, and any that share its
            timestamp, on the next page: one duplicate per boundary, as measured on Kraken.
            Off, ``since`` is exclusive (the older reading of the docs) and pages do not
            overlap, except that a group of same-time trades cut by a page end loses its
            rest, as it would on Kraken if ``since`` were exclusive.
        drop_last_ratio: chance that a ``Trades`` reply omits ``last`` (seen on Kraken).
        slow_s: seconds every REST reply is delayed.
        ohlc_placeholders: empty intervals in REST ``OHLC`` come as zero-volume rows at the
            previous close (vwap 0, count 0), the forming interval too; off, they are left
            out (older captures show both; the 2025 one has placeholders).
        ohlc_since_exclusive: REST ``OHLC`` ``since`` keeps only rows opening after it
            (2018 and 2024 observations); off, rows opening at ``since`` are kept too (the
            2026 capture).
    """

    malformed_ratio: float = 0.0
    boundary_duplicates: bool = True
    drop_last_ratio: float = 0.0
    slow_s: float = 0.0
    ohlc_placeholders: bool = True
    ohlc_since_exclusive: bool = False
    _throttles: list[ThrottleKind] = field(default_factory=list, init=False, repr=False)
    _close: Callable[[int], None] | None = field(default=None, init=False, repr=False)
    _silence: Callable[[float], None] | None = field(default=None, init=False, repr=False)

    def attach(
        self, *, close: Callable[[int], None] | None, silence: Callable[[float], None] | None
    ) -> None:
        """Connect :meth:`close_ws` and :meth:`silence` to a running server (None: detach)."""
        self._close, self._silence = close, silence

    def throttle_next(self, n: int, *, kind: ThrottleKind = "body") -> None:
        """Answer the next ``n`` REST requests as rate-limited.

        ``kind`` is ``"body"`` (HTTP 200 ``{"error":["EGeneral:Too many requests"]}``, the
        current public throttle), ``"eapi"`` (``EAPI:Rate limit exceeded``) or ``"html429"``
        (Cloudflare's HTML page with status 429).

        Raises:
            ValueError: ``n`` is negative or ``kind`` unknown.
        """
        if n < 0 or kind not in _THROTTLE_KINDS:
            raise ValueError(f"throttle_next needs n >= 0 and kind in {_THROTTLE_KINDS}")
        self._throttles.extend([kind] * n)

    def take_throttle(self) -> ThrottleKind | None:
        """The injected throttle for the request being answered, if one is pending."""
        if self._throttles:
            return self._throttles.pop(0)
        return None

    def close_ws(self, code: int = 1001) -> None:
        """Close every open WebSocket connection now with ``code`` (1006: drop the TCP link).

        Raises:
            ValueError: ``code`` is not one of :data:`CLOSE_CODES`.
            RuntimeError: the simulator is not running.
        """
        if code not in CLOSE_CODES:
            raise ValueError(f"close code must be one of {CLOSE_CODES}, got {code}")
        if self._close is None:
            raise RuntimeError("the simulator is not running")
        self._close(code)

    def silence(self, seconds: float) -> None:
        """Stop sending anything on every open WebSocket for ``seconds``, without closing.

        Connections opened meanwhile are served normally: this is a dead path, not an
        outage of the exchange.

        Raises:
            RuntimeError: the simulator is not running.
        """
        if self._silence is None:
            raise RuntimeError("the simulator is not running")
        self._silence(seconds)
