"""The pairs refresher: Kraken's AssetPairs into the ``symbols`` table, and the feeds to match.

At service start (:meth:`PairsRefresher.start`, before the tree runs) AssetPairs is fetched
once, within a short deadline; when Kraken cannot be reached the registry comes from the
``symbols`` table (through ``probe``), and only when that fails too from the shipped table.
Then every ``interval_s`` (``[kraken] asset_pairs_refresh_s``) it is fetched again. Each
answer is stored (:func:`~histdata.storage.symbol_table.refresh_symbols`: new pairs added,
provisional names confirmed or corrected, unlisted pairs delisted) and the registry reloaded
from the table; an answer fetched while the database is away is applied to the registry at
once and stored as soon as storage opens.

After each change the ``[kraken] symbols`` entries are expanded again
(:meth:`~histdata.symbols.SymbolRegistry.expand`: ``"*"`` and patterns select the online
pairs) and handed to the :class:`~histdata.actors.feeds.FeedGroup`, which reconnects only
if the set changed: new pairs are picked up and delisted ones dropped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog
import trio

from histdata.actors.feeds import FeedGroup
from histdata.errors import DatabaseUnavailable, HistdataError, UnknownSymbol
from histdata.kraken import KrakenRest
from histdata.storage import Storage
from histdata.storage.symbol_table import SymbolRefresh, load_into, refresh_symbols
from histdata.supervisor import cancel_when, current_child_stopping
from histdata.supervisor.changes import statistics_changed
from histdata.symbols import SymbolRegistry

__all__ = ["PairsRefresher", "PairsStatistics"]

_log = structlog.get_logger("histdata.actors.pairs", actor="pairs")
# A failed store is retried this often while the database is up but refusing.
_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class PairsStatistics:
    """Refreshes done and failed, the registry's size, and what the feeds subscribe."""

    refreshes: int
    failures: int
    last_refresh_at: float | None
    last_error: str | None
    known: int
    subscribed: int
    stored_pending: bool  # an answer waits for the database


class PairsRefresher:
    """Keeps ``registry`` and ``feeds`` current with AssetPairs (see the module docs).

    ``rest()`` returns the open REST client; ``storage()`` the open Storage or None;
    ``ready()`` waits for storage to open.
    """

    def __init__(
        self,
        rest: Callable[[], KrakenRest],
        storage: Callable[[], Storage | None],
        ready: Callable[[], Awaitable[Storage]],
        registry: SymbolRegistry,
        feeds: FeedGroup,
        patterns: Sequence[str],
        *,
        interval_s: float = 3600.0,
        fetch_timeout_s: float = 10.0,
    ) -> None:
        self._rest = rest
        self._storage = storage
        self._ready = ready
        self.registry = registry
        self.feeds = feeds
        self.patterns = tuple(patterns)
        self.interval_s = interval_s
        self.fetch_timeout_s = fetch_timeout_s
        self._pending: SymbolRegistry | None = None
        self._synced = False
        self._refreshes = 0
        self._failures = 0
        self._last_at: float | None = None
        self._last_error: str | None = None

    def statistics(self) -> PairsStatistics:
        """A snapshot of the refresher's counters."""
        return PairsStatistics(
            refreshes=self._refreshes,
            failures=self._failures,
            last_refresh_at=self._last_at,
            last_error=self._last_error,
            known=len(self.registry),
            subscribed=len(self.feeds.symbols),
            stored_pending=self._pending is not None,
        )

    async def start(self, probe: Callable[[], Awaitable[SymbolRegistry | None]]) -> None:
        """The registry and subscriptions the service starts with (see the module docs).

        ``probe()`` returns the registry stored in the database, or None when it cannot be
        reached.

        Raises:
            UnknownSymbol: a plain ``[kraken] symbols`` entry names no known pair.
        """
        listed = await self._fetch()
        if listed is not None:
            self.registry.replace(listed)
            self._pending = listed
        else:
            stored = await probe()
            if stored is not None:
                self.registry.replace(stored)
            else:
                _log.warning("Kraken and the database unreachable: the shipped pairs only")
        self.feeds.set_symbols(self.registry.expand(self.patterns))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Store what start fetched once storage opens, then refresh every ``interval_s``."""
        stopping = current_child_stopping()
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when, stopping, nursery.cancel_scope)
            next_at = trio.current_time() + self.interval_s
            while True:
                with trio.move_on_at(next_at):
                    while not self._synced:
                        await self._sync(await self._ready())
                await trio.sleep_until(next_at)
                next_at = trio.current_time() + self.interval_s
                await self.refresh()

    async def refresh(self) -> SymbolRefresh | None:
        """Fetch AssetPairs, store it (or keep it for when storage opens), re-subscribe.

        Returns what storing changed, or None when nothing was stored.
        """
        listed = await self._fetch()
        if listed is None:
            return None
        self._pending = listed
        self._synced = False  # run() stores it as soon as storage is open
        storage = self._storage()
        if storage is None:
            self.registry.replace([*self.registry, *listed])
            self._apply()
            return None
        return await self._sync(storage)

    async def _fetch(self) -> SymbolRegistry | None:
        try:
            with trio.fail_after(self.fetch_timeout_s):
                listed = await self._rest().asset_pairs()
        except (HistdataError, trio.TooSlowError) as exc:
            self._failures += 1
            self._last_error = f"AssetPairs: {exc}" if str(exc) else "AssetPairs: timed out"
            _log.warning("AssetPairs unavailable; keeping the known pairs", error=self._last_error)
            return None
        if not len(listed):
            self._failures += 1
            self._last_error = "AssetPairs listed no pair"
            _log.warning("AssetPairs listed no pair; keeping the known pairs")
            return None
        return listed

    async def _sync(self, storage: Storage) -> SymbolRefresh | None:
        """Store the pending answer (or load the table), then re-subscribe."""
        result: SymbolRefresh | None = None
        try:
            if self._pending is not None:
                result = await refresh_symbols(storage, self._pending)
                self._pending = None
                self._refreshes += 1
                self._last_at = time.time()
                statistics_changed.notify()
                _log.info(
                    "AssetPairs stored",
                    listed=result.listed,
                    added=result.added,
                    delisted=result.delisted,
                    renamed=result.renamed,
                    conflicts=result.conflicts,
                )
            else:
                await storage.run(load_into, self.registry)
        except DatabaseUnavailable as exc:
            _log.warning("cannot store AssetPairs yet", error=str(exc))
            await trio.sleep(_RETRY_S)
            return None
        self._synced = True
        self._apply()
        return result

    def _apply(self) -> None:
        try:
            symbols = self.registry.expand(self.patterns)
        except UnknownSymbol as exc:
            _log.error("a [kraken] symbols entry is no longer known", error=str(exc))
            return
        self.feeds.set_symbols(symbols)
