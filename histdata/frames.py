"""The wire's Arrow data turned into what backtesters compute on: typed Arrow, pandas, polars.

The socket sends decimals as exact text (:mod:`histdata.formats`); this module casts those
columns inside Arrow, never through Python objects, to either

- ``decimals="exact"``: ``decimal128(38, scale)`` — exact, and still a native column
  (pandas ``ArrowDtype``, polars ``Decimal``); or
- ``decimals="float"``: ``float64``, for vectorised arithmetic, knowing that most decimal
  prices have no exact binary value.

An exact column's scale is the most fractional digits present in it, and its precision the
fewest digits that hold its values, unless the caller fixes the scales (a file written batch
by batch needs one type per column for the whole file). pandas frames are indexed by
``time`` as ``datetime64[ns, UTC]``; a trade's ``trade_id`` is the nullable ``Int64`` (numpy's
int64 has no null). pandas and polars are imported only when a frame of theirs is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from histdata.model import ns_to_datetime

__all__ = [
    "DECIMAL_COLUMNS",
    "DECIMAL_PRECISION",
    "Decimals",
    "FrameKind",
    "to_frame",
    "to_rows",
    "typed",
]

Decimals = Literal["exact", "float"]
FrameKind = Literal["arrow", "pandas", "polars"]
DECIMAL_COLUMNS = frozenset({"open", "high", "low", "close", "volume", "vwap", "price"})
# decimal128's maximum; polars' Decimal has the same limit. At the scales Kraken data has
# (8 to 12 fractional digits) that leaves 26 or more integer digits.
DECIMAL_PRECISION = 38
_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _digits(column: Any) -> tuple[int, int]:
    """The most digits before (at least 1) and after the decimal point in a column of decimal
    text. String lengths and one search per value: a regular expression took 10 times longer."""
    length = pc.utf8_length(column)
    point = pc.find_substring(column, ".")
    has_point = pc.greater_equal(point, 0)
    whole = pc.if_else(has_point, point, length)
    whole = pc.subtract(whole, pc.cast(pc.starts_with(column, "-"), pa.int32()))
    fraction = pc.if_else(has_point, pc.subtract(pc.subtract(length, point), 1), 0)
    return max(1, pc.max(whole).as_py() or 0), pc.max(fraction).as_py() or 0


def typed(data: Any, decimals: Decimals, *, scale: Mapping[str, int] | None = None) -> Any:
    """``data`` (a wire Table or RecordBatch) with its decimal-text columns cast in Arrow.

    The result is of the same kind as ``data``, with the same column names, order and
    schema metadata. Without ``scale`` each exact column gets the scale and precision its own
    values need; with it, column ``name`` gets ``decimal128(38, scale[name])``.

    Raises:
        ValueError: ``decimals`` is neither ``"exact"`` nor ``"float"``.
        pyarrow.ArrowInvalid: a value has more fractional digits than a fixed ``scale``
            (it is never rounded).
    """
    if decimals not in ("exact", "float"):
        raise ValueError(f"decimals must be 'exact' or 'float', not {decimals!r}")
    fields, arrays = [], []
    for field, column in zip(data.schema, data.columns, strict=True):
        if field.name in DECIMAL_COLUMNS and pa.types.is_string(field.type):
            if decimals == "float":
                target = pa.float64()
            elif scale is None:
                # As few digits as the values need: Arrow widens the precision of a sum or
                # product, and a column already at 38 could not be added to another.
                whole, fraction = _digits(column)
                target = pa.decimal128(min(DECIMAL_PRECISION, whole + fraction), fraction)
            else:
                target = pa.decimal128(DECIMAL_PRECISION, scale[field.name])
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
    if decimals not in ("exact", "float"):
        raise ValueError(f"decimals must be 'exact' or 'float', not {decimals!r}")
    columns: list[list[Any]] = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if name == "time":
            columns.append(_times(column))
        elif name in DECIMAL_COLUMNS and decimals == "exact":
            columns.append([None if v is None else Decimal(v) for v in column.to_pylist()])
        elif name in DECIMAL_COLUMNS:
            columns.append(pc.cast(column, pa.float64()).to_pylist())
        else:
            columns.append(column.to_pylist())
    names = table.column_names
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
