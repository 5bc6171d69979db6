"""Trade-id continuity (:mod:`histdata.storage.continuity`) on a real database."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from histdata.model import Trade, datetime_to_ns, ns_to_datetime
from histdata.storage import Storage
from histdata.storage.continuity import audit_trade_ids, id_holes, mark_unfillable, open_holes
from histdata.storage.trades import write_trades

SYMBOL = "BTC/USD"
T0 = datetime(2026, 3, 1, tzinfo=UTC)
FAR = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def at(trade_id: int) -> datetime:
    """Trade ``n`` happens n seconds after T0."""
    return T0 + timedelta(seconds=trade_id)


def trades(ids: Iterable[int]) -> list[Trade]:
    return [
        Trade(SYMBOL, datetime_to_ns(at(i)), Decimal("100.5"), Decimal("0.1"), trade_id=i)
        for i in ids
    ]


async def store(storage: Storage, ids: Iterable[int]) -> None:
    await write_trades(storage, trades(ids), source="live")


def spans(holes: Iterable[object]) -> list[tuple[int, int]]:
    return [(h.first_id, h.last_id) for h in holes]  # type: ignore[attr-defined]


class TestReadView:
    async def test_breaks_are_found_with_the_trades_around_them(self, storage: Storage) -> None:
        """Missing ids are reported with the times of the stored trades on either side."""
        await store(storage, [*range(1, 11), *range(12, 21), 25])
        holes = await id_holes(storage, SYMBOL, *FAR)
        assert spans(holes) == [(11, 11), (21, 24)]
        assert (holes[1].after, holes[1].before) == (at(20), at(25))
        assert holes[1].missing == 4
        assert "trade ids 21..24 missing (4)" in holes[1].describe()

    async def test_a_break_straddling_the_range_edge_is_reported(self, storage: Storage) -> None:
        """A range that starts inside a hole still reports it (the trade before is outside)."""
        await store(storage, [*range(1, 11), *range(30, 40)])
        holes = await id_holes(storage, SYMBOL, at(20), at(35))
        assert spans(holes) == [(11, 29)]

    async def test_id_less_rows_take_no_part(self, storage: Storage) -> None:
        """CSV rows without ids neither make nor hide a hole."""
        await store(storage, [1, 2, 3])
        csv = [Trade(SYMBOL, datetime_to_ns(at(5)), Decimal("1"), Decimal("1"))]
        await write_trades(storage, csv, source="csv")
        assert await id_holes(storage, SYMBOL, *FAR) == []

    async def test_unknown_symbol_has_no_holes(self, storage: Storage) -> None:
        """A symbol with no row yet has nothing to report (and nothing is written)."""
        assert await id_holes(storage, "ETH/USD", *FAR) == []


class TestAudit:
    async def test_incremental_audit_records_and_closes_holes(self, storage: Storage) -> None:
        """Each round reads only new ids; filled holes close, partly filled ones shrink."""
        await store(storage, [*range(1, 11), *range(12, 21), 25])
        first = await audit_trade_ids(storage, SYMBOL)
        assert (first.checked, first.found) == (19, 2)
        assert spans(first.open) == [(11, 11), (21, 24)]
        await store(storage, range(26, 31))
        second = await audit_trade_ids(storage, SYMBOL)
        assert (second.checked, second.found, second.closed) == (5, 0, 0)
        await store(storage, [11, 22])
        third = await audit_trade_ids(storage, SYMBOL)
        assert third.closed == 1
        assert spans(third.open) == [(21, 21), (23, 24)]
        assert spans(await open_holes(storage, SYMBOL)) == [(21, 21), (23, 24)]

    async def test_a_break_at_the_newest_id_is_found(self, storage: Storage) -> None:
        """A hole just below the newest stored trade is found in the round that stores it."""
        await store(storage, range(1, 6))
        await audit_trade_ids(storage, SYMBOL)
        await store(storage, [9])
        result = await audit_trade_ids(storage, SYMBOL)
        assert spans(result.open) == [(6, 8)]

    async def test_older_history_below_the_audited_range_is_checked(self, storage: Storage) -> None:
        """A backfill of ids below the first audited one is audited too."""
        await store(storage, range(100, 110))
        await audit_trade_ids(storage, SYMBOL)
        await store(storage, [*range(90, 95), 97])
        result = await audit_trade_ids(storage, SYMBOL)
        assert spans(result.open) == [(95, 96), (98, 99)]

    async def test_unfillable_holes_are_reported_so(self, storage: Storage) -> None:
        """A hole REST could not fill is reported with its reason and no longer open."""
        await store(storage, [1, 2, 5])
        (hole,) = (await audit_trade_ids(storage, SYMBOL)).open
        await mark_unfillable(storage, SYMBOL, hole, "REST served none of these ids")
        assert await open_holes(storage, SYMBOL) == []
        (reported,) = await id_holes(storage, SYMBOL, *FAR)
        assert reported.status == "unfillable"
        assert reported.reason == "REST served none of these ids"
        assert ns_to_datetime(datetime_to_ns(reported.after)) == at(2)
