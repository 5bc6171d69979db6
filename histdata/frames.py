"""The wire's Arrow data turned into what backtesters compute on: typed Arrow, pandas, polars.

The socket sends decimals as ``decimal128(38, scale)`` at the wire's fixed scales
(:data:`histdata.formats.CANDLES`) or, asked for ``decimals=float``, as ``float64``. This
module shapes those columns inside Arrow, never through Python objects, to either

- ``decimals="exact"``: ``decimal128`` at the precision and scale the values need — exact,
  and still a native column (pandas ``ArrowDtype``, polars ``Decimal``) whose sums and
  products fit Arrow's 38 digits; or
- ``decimals="float"``: ``float64``, for vectorised arithmetic, knowing that most decimal
  prices have no exact binary value.

An exact column's scale is the fewest fractional digits that hold every value, and its
precision the fewest digits, unless the caller fixes the scales (a file written batch by
batch needs one type per column for the whole file). pandas frames are indexed by ``time``
as ``datetime64[ns, UTC]``; a trade's ``trade_id`` is the nullable ``Int64`` (numpy's int64
has no null). pandas and polars are imported only when a frame of theirs is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from histdata.formats import DECIMAL_PRECISION, DECIMALS, Decimals
from histdata.model import ns_to_datetime

__all__ = [
    "DECIMAL_PRECISION",
    "Decimals",
    "FrameKind",
    "to_frame",
    "to_rows",
    "typed",
]

FrameKind = Literal["arrow", "pandas", "polars"]
_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
_INT64_MAX = 2**63 - 1


def _rescaled(column: Any, scale: int) -> Any | None:
    """``column`` as ``decimal128(38, scale)``, or None if a value would have to round."""
    try:
        return pc.cast(column, pa.decimal128(DECIMAL_PRECISION, scale))  # safe: refuses to round
    except pa.ArrowInvalid:
        return None


def _unscaled_int64(column: Any) -> Any:
    """The unscaled values of a decimal128 column whose values all fit in an int64, valid
    ones only, as one numpy array: the low eight bytes of each little-endian 16-byte value
    are then the whole value."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        words = np.frombuffer(chunk.buffers()[1], np.int64, 2 * len(chunk), 16 * chunk.offset)[0::2]
        if chunk.null_count:
            words = words[chunk.is_valid().to_numpy(zero_copy_only=False)]
        parts.append(words)
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _trailing_digits(column: Any) -> int:
    """The fewest fractional digits of a decimal column whose unscaled values fit in an
    int64: its scale less the trailing zeros of the values' greatest common divisor (ten to
    the k divides every value exactly when it divides their gcd)."""
    scale = int(column.type.scale)
    common = int(np.gcd.reduce(_unscaled_int64(column))) if len(column) else 0
    if common == 0:  # no value, or all of them zero
        return 0
    digits = scale
    while digits and common % 10 == 0:
        common //= 10
        digits -= 1
    return digits


def _int64_narrowed(column: Any, target: pa.DataType) -> Any:
    """A decimal column whose unscaled values fit in an int64, as ``target`` (a coarser
    scale that holds every value exactly), built from the values' buffer in numpy: each
    unscaled value divided by the power of ten the scales differ by, sign-extended to 128
    bits. What a safe cast would give, at a fraction of its cost."""
    step = 10 ** (int(column.type.scale) - int(target.scale))
    if step > _INT64_MAX:  # only zeros are multiples of it that fit in an int64
        return pc.cast(column, target)
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        n = len(chunk)
        words = np.frombuffer(chunk.buffers()[1], np.int64, 2 * n, 16 * chunk.offset)[0::2]
        values = np.empty(2 * n, np.int64)
        values[0::2] = words // step  # exact: every value is a multiple of step
        values[1::2] = values[0::2] >> 63
        valid = None
        if chunk.null_count:
            # A boolean array's values are a bitmap: the validity of the new array, from 0.
            mask = chunk.is_valid()
            if mask.offset:
                mask = pa.concat_arrays([pa.array([], pa.bool_()), mask])
            valid = mask.buffers()[1]
        out.append(
            pa.Array.from_buffers(
                target, n, [valid, pa.py_buffer(values)], null_count=chunk.null_count
            )
        )
    return pa.chunked_array(out, target) if isinstance(column, pa.ChunkedArray) else out[0]


def _fewest_digits(column: Any, largest: Decimal) -> tuple[int, Any]:
    """The fewest fractional digits that hold every value of a decimal column exactly
    (``largest``: the greatest absolute value), and the column at a scale where its unscaled
    values fit in an int64 (None if there is none that holds them exactly).

    The column is brought to the finest scale at which every unscaled value fits in an
    int64 (one safe cast, none when it is there already: prices and volumes at the wire's
    scales are), and the trailing zeros are counted in numpy. Only when some value needs
    finer digits than that (a VWAP of a price in the millions at 24 places) does a binary
    search of safe casts over the finer scales find the answer.
    """
    scale = int(column.type.scale)
    low = 0
    room = scale  # the finest scale at which |largest| fits in an int64
    while room >= 0 and largest.scaleb(room) > _INT64_MAX:
        room -= 1
    if sys.byteorder == "little" and room >= 0:
        fitted = column if room == scale else _rescaled(column, room)
        if fitted is not None:
            return _trailing_digits(fitted), fitted
        low = room + 1
    high = scale
    while low < high:
        middle = (low + high) // 2
        if _rescaled(column, middle) is not None:
            high = middle
        else:
            low = middle + 1
    return low, None


def _narrowed(column: Any) -> Any:
    """A decimal column as the smallest decimal128 that holds every value exactly: the
    fewest fractional digits (:func:`_fewest_digits`) and the fewest integer digits (at
    least 1)."""
    extremes = pc.min_max(column)
    largest = max(
        (abs(value.as_py()) for value in (extremes["min"], extremes["max"]) if value.is_valid),
        default=Decimal(0),
    )
    low, fitted = _fewest_digits(column, largest)
    whole = max(1, len(str(int(largest))))
    target = pa.decimal128(min(DECIMAL_PRECISION, whole + low), low)
    if target == column.type:
        return column
    return pc.cast(column, target) if fitted is None else _int64_narrowed(fitted, target)


def typed(data: Any, decimals: Decimals, *, scale: Mapping[str, int] | None = None) -> Any:
    """``data`` (a wire Table or RecordBatch) with its decimal columns shaped in Arrow.

    The result is of the same kind as ``data``, with the same column names, order and
    schema metadata. Exact columns get the precision and scale their own values need, or,
    with ``scale``, column ``name`` gets ``decimal128(38, scale[name])``; float columns
    ``float64`` (a wire already in float64 passes through).

    Raises:
        ValueError: ``decimals`` is neither ``"exact"`` nor ``"float"``.
        pyarrow.ArrowInvalid: a value has more fractional digits than a fixed ``scale``
            (it is never rounded), or an exact result is asked of a float wire.
    """
    if decimals not in DECIMALS:
        raise ValueError(f"decimals must be 'exact' or 'float', not {decimals!r}")
    fields, arrays = [], []
    for field, column in zip(data.schema, data.columns, strict=True):
        if pa.types.is_decimal(field.type) or (
            decimals == "exact" and pa.types.is_floating(field.type)
        ):
            if decimals == "float":
                target = pa.float64()
            elif pa.types.is_floating(field.type):
                raise pa.ArrowInvalid(f"column {field.name!r} is float64: it has no exact value")
            elif scale is None:
                column = _narrowed(column)
                target = column.type
            else:
                target = pa.decimal128(DECIMAL_PRECISION, scale[field.name])
            if target != column.type:
                column = pc.cast(column, target)
            field = field.with_type(target)
        fields.append(field)
        arrays.append(column)
    schema = pa.schema(fields, metadata=data.schema.metadata)
    return type(data).from_arrays(arrays, schema=schema)


def _pandas(table: Any) -> Any:
    import pandas as pd

    time = table.schema.get_field_index("time")
    table = table.set_column(time, "time", pc.cast(table.column(time), pa.timestamp("ns", "UTC")))
    nullable_ints = "trade_id" in table.column_names  # a trade table's only int64 column

    def mapper(arrow_type: Any) -> Any:
        if pa.types.is_decimal(arrow_type):
            return pd.ArrowDtype(arrow_type)
        if nullable_ints and pa.types.is_int64(arrow_type):
            return pd.Int64Dtype()
        return None

    return table.to_pandas(types_mapper=mapper).set_index("time")


def to_frame(table: Any, frame: FrameKind, decimals: Decimals) -> Any:
    """A wire table as ``frame``: a pyarrow Table, or a pandas or polars DataFrame.

    Raises:
        ValueError: ``frame`` or ``decimals`` is not one of the documented values.
        ImportError: the library of ``frame`` is not installed.
    """
    if frame not in ("arrow", "pandas", "polars"):
        raise ValueError(f"frame must be 'arrow', 'pandas' or 'polars', not {frame!r}")
    converted = typed(table, decimals)
    if frame == "arrow":
        return converted
    if frame == "pandas":
        return _pandas(converted)
    import polars as pl

    return pl.from_arrow(converted)


def _times(column: Any) -> list[datetime | None]:
    # to_pylist() refuses ns times with sub-µs digits unless pandas is installed.
    scale = _NS_PER_UNIT[column.type.unit]
    return [
        None if v is None else ns_to_datetime(v * scale) for v in column.cast("int64").to_pylist()
    ]


def to_rows(table: Any, decimals: Decimals) -> list[dict[str, Any]]:
    """A wire table as dicts in field order: ``Decimal`` (or ``float``) values, aware UTC times.

    Raises:
        ValueError: ``decimals`` is neither ``"exact"`` nor ``"float"``.
    """
    table = typed(table, decimals)
    columns: list[list[Any]] = [
        _times(column) if name == "time" else column.to_pylist()
        for name, column in zip(table.column_names, table.columns, strict=True)
    ]
    names = table.column_names
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
