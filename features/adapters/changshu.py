"""Changshu parcel orders (PARL paper data) to a daily demand table per grid cell.

The orders carry no coordinates, only a cell of a 10x10 grid, so a zone is a cell. Every
order row is a parcel to deliver (a redelivery is work again), so every row counts. The
history's last days are incomplete and are dropped. Rows that cannot be placed (no cell, no
readable date) are returned with their reasons rather than silently lost. Zero periods are
not filled here: ``features.demand`` completes the calendar for every demand source alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from features import schema as s
from features.adapters.tabular import read_csv_text
from features.issues import Issues, MissingColumnsError

# Changshu's own column names.
DATE = "date"
GRID_X = "grid_x"
GRID_Y = "grid_y"
CHANGSHU_REQUIRED: tuple[str, ...] = (DATE, GRID_X, GRID_Y)

LAST_COMPLETE_DATE = "2024-08-31"  # September holds only a few days' stragglers
DATE_FORMAT = "%Y-%m-%d"
TS_DTYPE = np.dtype(f"datetime64[{s.DATETIME_DTYPE_UNIT}]")  # demand ts: naive local
MSG_DATE_MISSING = f"{DATE}: missing"
MSG_DATE_UNPARSEABLE = f"{DATE}: unparseable date"
MSG_CELL_MISSING = "{column}: missing"
MSG_CELL_NOT_INDEX = "{column}: not a non-negative integer"


@dataclass(frozen=True)
class ChangshuRead:
    """Daily demand per cell, the rows that could not be counted, and the bookkeeping.

    ``n_rows == demand[volume].sum() + len(rejected) + n_after_last_date``.
    """

    demand: pd.DataFrame
    rejected: pd.DataFrame
    n_rows: int
    n_after_last_date: int


def read_changshu(path: str | Path, *, last_date: str | date = LAST_COMPLETE_DATE) -> ChangshuRead:
    """Read the orders CSV (plain or gzip) into daily demand: ``zone_id, ts, volume``."""
    return changshu_frame_to_demand(read_csv_text(path), last_date=last_date, where=str(path))


def changshu_frame_to_demand(
    raw: pd.DataFrame, *, last_date: str | date = LAST_COMPLETE_DATE, where: str = "input"
) -> ChangshuRead:
    """Count orders per cell and day; ``raw`` as read (text keeps rejects verbatim)."""
    missing = [c for c in CHANGSHU_REQUIRED if c not in raw.columns]
    if missing:
        raise MissingColumnsError(missing, where=where)
    source = raw.reset_index(drop=True)
    issues = Issues(len(source))

    text = source[DATE].astype("string").str.strip()
    day = pd.to_datetime(text, format=DATE_FORMAT, errors="coerce")
    issues.add(MSG_DATE_MISSING, text.fillna("").eq(""))
    issues.add(MSG_DATE_UNPARSEABLE, text.fillna("").ne("") & day.isna())
    cells = [_cell_index(source[c], c, issues) for c in (GRID_X, GRID_Y)]

    good = ~issues.bad
    late = good & (day > pd.Timestamp(last_date)).to_numpy()
    keep = good & ~late
    zone = "g" + cells[0][keep].astype("string") + "_" + cells[1][keep].astype("string")
    counted = pd.DataFrame({s.ZONE_ID: zone, s.TS: day[keep].astype(TS_DTYPE)})
    demand = counted.groupby([s.ZONE_ID, s.TS], sort=True).size().rename(s.VOLUME).reset_index()
    demand[s.ZONE_ID] = demand[s.ZONE_ID].astype("string")
    demand[s.VOLUME] = demand[s.VOLUME].astype("float64")

    rejected = source.loc[issues.bad].copy()
    rejected[s.REASON] = issues.reasons()[issues.bad].to_numpy()
    return ChangshuRead(demand, rejected.reset_index(drop=True), len(source), int(late.sum()))


def _cell_index(values: pd.Series, column: str, issues: Issues) -> pd.Series:
    """A grid coordinate as an integer; blanks and non-integers are recorded and null."""
    text = values.astype("string").str.strip()
    blank = text.fillna("").eq("").to_numpy()
    num = pd.to_numeric(text, errors="coerce").to_numpy("float64", na_value=np.nan)
    whole = np.isfinite(num) & (num >= 0) & (np.mod(num, 1) == 0)
    issues.add(MSG_CELL_MISSING.format(column=column), blank)
    issues.add(MSG_CELL_NOT_INDEX.format(column=column), ~blank & ~whole)
    return pd.Series(np.where(whole, num, np.nan), index=values.index).astype("Int64")
