"""The client's narrowing of exact decimal columns: the fewest digits that hold every value.

Pure logic over Arrow arrays, no database: the scale found by counting trailing zeros in the
raw buffer must be the one a search of safe casts finds, for any mix of values, nulls,
chunks and slices.
"""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given
from hypothesis import strategies as st

from histdata.frames import DECIMAL_PRECISION, typed


def _fits(column: pa.Array | pa.ChunkedArray, scale: int) -> bool:
    try:
        pc.cast(column, pa.decimal128(DECIMAL_PRECISION, scale))
    except pa.ArrowInvalid:
        return False
    return True


def _reference_scale(column: pa.Array | pa.ChunkedArray) -> int:
    return next(s for s in range(column.type.scale + 1) if _fits(column, s))


_SCALES = st.sampled_from([0, 1, 8, 12, 24])


@st.composite
def _columns(draw: st.DrawFn) -> pa.ChunkedArray:
    scale = draw(_SCALES)
    big = draw(st.booleans())  # values past int64 once unscaled take the cast search
    # Trailing zeros let a column past int64 be rescaled into it (a VWAP at 24 places that
    # has only 12), or not quite.
    zeros = draw(st.integers(0, 7 if big else 20))
    digits = st.integers(-(10**30) if big else -(10**14), 10**30 if big else 10**14)
    values = draw(
        st.lists(
            st.one_of(st.none(), digits.map(lambda n: Decimal(n).scaleb(zeros - scale))),
            max_size=40,
        )
    )
    array = pa.array(values, pa.decimal128(DECIMAL_PRECISION, scale))
    cut = draw(st.integers(0, len(values)))
    chunks = [array.slice(0, cut), array.slice(cut)]
    return pa.chunked_array([c for c in chunks if len(c)] or [array], array.type)


@given(_columns())
def test_narrowed_scale_is_the_fewest_that_holds_every_value(column: pa.ChunkedArray) -> None:
    table = pa.table({"price": column})
    narrowed = typed(table, "exact").column("price")
    assert narrowed.type.scale == _reference_scale(column)
    assert narrowed.to_pylist() == column.to_pylist()
    narrowed.validate(full=True)  # built from buffers: precision, nulls and lengths hold


def test_all_zero_and_empty_columns_need_no_fraction() -> None:
    for values in ([], [None], [Decimal("0.000")]):
        column = pa.array(values, pa.decimal128(DECIMAL_PRECISION, 12))
        narrowed = typed(pa.table({"v": column}), "exact").column("v")
        assert narrowed.type.scale == 0


def test_vwaps_past_int64_narrow_at_and_just_past_the_int64_scale() -> None:
    """A price in the millions at 24 places is past int64 unscaled: at 12 places it fits
    (one rescale, then counted), at 13 or 14 it does not (the search starts just past 12)."""
    for text, scale in [
        ("1234567.123456789012", 12),
        ("1234567.1234567890123", 13),
        ("1234567.12345678901234", 14),
        ("1234567.1", 1),
    ]:
        column = pa.array([Decimal(text), None, Decimal("2")], pa.decimal128(DECIMAL_PRECISION, 24))
        narrowed = typed(pa.table({"vwap": column}), "exact").column("vwap")
        assert narrowed.type.scale == scale, text
        assert narrowed.to_pylist() == column.to_pylist()
