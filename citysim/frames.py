"""Raw day arrays to contract frames (dtypes of ``features.schema.pandas_dtype``) and Parquet.

Inside the simulator a table is a dict of numpy arrays keyed by contract column names:
timestamps as int64 ns since the epoch (UTC instants for deliveries, naive local wall time for
the demand ``ts``; ``NAT`` for none), strings as object arrays.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from features import schema as s

NAT = np.iinfo(np.int64).min
NS_PER_MIN = 60_000_000_000
Table = dict[str, np.ndarray]


def concat(tables: list[Table], columns: tuple[s.Column, ...]) -> Table:
    return {c.name: np.concatenate([t[c.name] for t in tables]) for c in columns}


def deliveries_frame(table: Table, tz: str) -> pd.DataFrame:
    """Contract columns at their final dtypes (timestamps tz-aware in ``tz``)."""
    out: dict[str, object] = {}
    for col in s.DELIVERIES:
        values = table[col.name]
        if col.kind == "timestamp":
            stamps = pd.DatetimeIndex(values.view("M8[ns]")).tz_localize("UTC").tz_convert(tz)
            out[col.name] = pd.Series(stamps).astype(s.pandas_dtype(col, tz))  # type: ignore[arg-type]
        else:
            out[col.name] = pd.Series(values).astype(s.pandas_dtype(col))  # type: ignore[arg-type]
    return pd.DataFrame(out)


def demand_frame(table: Table) -> pd.DataFrame:
    zone_dtype = s.pandas_dtype(s.DEMAND_COLUMNS[s.ZONE_ID])
    return pd.DataFrame(
        {
            s.ZONE_ID: pd.Series(table[s.ZONE_ID]).astype(zone_dtype),  # type: ignore[arg-type]
            s.TS: table[s.TS].view("M8[ns]"),
            s.VOLUME: table[s.VOLUME].astype(np.float64),
        }
    )


def arrow_schema(frame: pd.DataFrame) -> pa.Schema:
    """The Parquet schema every chunk is written with (fixed from a reference frame)."""
    return pa.Schema.from_pandas(frame, preserve_index=False)


def to_arrow(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
