"""Bring raw columns to the contract's dtypes, recording (not raising on) bad values."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import schema
from features.issues import Issues


@dataclass(frozen=True)
class Adapted:
    """A source converted to contract columns, row-aligned with the rows as they came.

    ``deliveries`` and ``source`` share a RangeIndex so a rejected row can be written to
    quarantine exactly as it arrived; ``issues`` holds problems found during conversion.
    """

    deliveries: pd.DataFrame
    source: pd.DataFrame
    issues: Issues


def to_timestamp(values: pd.Series, tz: str) -> pd.Series:
    """Parse to tz-aware timestamps in ``tz``; naive values are read as local time in ``tz``.

    Unparseable values become NaT (the caller compares with the input to report them).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        out = values.dt.tz_convert(tz)
    elif pd.api.types.is_datetime64_dtype(values.dtype):
        out = values.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    else:
        text = values.astype("string").str.strip()
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
        # Offsets were honoured by utc=True; strings without one must be local wall time.
        naive = ~text.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True, na=False)
        if naive.any():
            local = pd.to_datetime(text[naive], errors="coerce", format="ISO8601")
            local = local.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
            parsed = parsed.dt.tz_convert(tz)
            parsed[naive] = local
        out = parsed.dt.tz_convert(tz)
    return out.astype(pd.DatetimeTZDtype(unit=schema.DATETIME_DTYPE_UNIT, tz=tz))


def null_column(col: schema.Column, index: pd.Index, tz: str) -> pd.Series:
    """An all-null column at the contract dtype of ``col``."""
    return pd.Series(index=index, dtype=schema.pandas_dtype(col, tz))  # type: ignore[call-overload]


def coerce_deliveries(frame: pd.DataFrame, tz: str, issues: Issues) -> pd.DataFrame:
    """Every contract column at its dtype; absent optional columns are added as nulls.

    A value present in the input that cannot be read is recorded in ``issues`` as
    ``"<column>: unparseable ..."`` and becomes null, so the row is quarantined with the reason
    while the rest of the file goes on.
    """
    out: dict[str, pd.Series] = {}
    for col in schema.DELIVERIES:
        if col.name not in frame.columns:
            out[col.name] = null_column(col, frame.index, tz)
            continue
        raw = frame[col.name]
        present = raw.notna().to_numpy().copy()
        if raw.dtype == object or isinstance(raw.dtype, pd.StringDtype):
            present &= raw.astype("string").str.strip().fillna("").ne("").to_numpy()
        if col.kind == "timestamp":
            value = to_timestamp(raw, tz)
            issues.add(f"{col.name}: unparseable timestamp", present & value.isna().to_numpy())
        elif col.kind in ("float", "int"):
            num = pd.to_numeric(raw, errors="coerce")
            bad = present & num.isna().to_numpy()
            if col.kind == "int":
                frac = (
                    np.isfinite(num.to_numpy(dtype=float, na_value=np.nan))
                    & (num % 1 != 0).fillna(False).to_numpy()
                )
                bad |= frac
                num = num.where(~frac)
                issues.add(f"{col.name}: not an integer", bad)
                value = num.round().astype("Int64")
            else:
                issues.add(f"{col.name}: not a number", bad)
                value = num.astype("float64")
        else:
            value = raw.astype("string").str.strip()
            value = value.mask(value == "")
        out[col.name] = value
    return pd.DataFrame(out, index=frame.index)
