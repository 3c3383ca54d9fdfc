"""Zone assignment: H3 cells at a configurable resolution when the data brings no zones."""

from __future__ import annotations

from functools import lru_cache

import h3
import numpy as np
import pandas as pd

from features.schema import DEFAULT_H3_RESOLUTION


def h3_cells(lat: pd.Series, lng: pd.Series, resolution: int = DEFAULT_H3_RESOLUTION) -> pd.Series:
    """H3 cell ids (hex strings) for each point; NaN coordinates give <NA>.

    h3's Python API is per point, so identical coordinates are looked up once: delivery data
    repeats buildings heavily, which makes this several times faster on real files.
    """
    if not 0 <= resolution <= 15:
        raise ValueError(f"h3 resolution must be in 0..15, got {resolution}")
    frame = pd.DataFrame({"lat": lat.to_numpy(dtype=float), "lng": lng.to_numpy(dtype=float)})
    ok = np.isfinite(frame["lat"]) & np.isfinite(frame["lng"])
    ok &= frame["lat"].between(-90, 90) & frame["lng"].between(-180, 180)
    out = pd.Series(pd.NA, index=lat.index, dtype="string")
    if not ok.any():
        return out
    uniq = frame[ok].drop_duplicates()
    cells = [
        h3.latlng_to_cell(a, b, resolution) for a, b in zip(uniq["lat"], uniq["lng"], strict=True)
    ]
    lookup = uniq.assign(cell=cells)
    merged = frame[ok].merge(lookup, on=["lat", "lng"], how="left")
    out[ok.to_numpy()] = merged["cell"].to_numpy()
    return out


def cell_center(cell: str) -> tuple[float, float]:
    """(lat, lng) of an H3 cell's centre."""
    lat, lng = h3.cell_to_latlng(cell)
    return float(lat), float(lng)


@lru_cache(maxsize=1 << 18)
def cell_of(lat: float, lng: float, resolution: int) -> str:
    """One point's H3 cell, cached (stops and solver nodes repeat); "" when not a position."""
    if not (np.isfinite(lat) and np.isfinite(lng) and -90 <= lat <= 90 and -180 <= lng <= 180):
        return ""
    return str(h3.latlng_to_cell(lat, lng, resolution))
