"""Vectorised great-circle geometry (km) used by validation, features and the simulator."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

EARTH_RADIUS_KM = 6371.0088

FloatArray = npt.NDArray[np.float64]


def haversine_km(
    lat1: npt.ArrayLike, lng1: npt.ArrayLike, lat2: npt.ArrayLike, lng2: npt.ArrayLike
) -> FloatArray:
    """Great-circle distance in km between paired points (broadcasts like numpy)."""
    p1, l1, p2, l2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lat1, lng1, lat2, lng2))
    a = np.sin((p2 - p1) / 2.0) ** 2 + np.cos(p1) * np.cos(p2) * np.sin((l2 - l1) / 2.0) ** 2
    # a >= +0.0 (squares, cosines of latitudes): min(max()) equals np.clip here, and is cheaper
    return np.asarray(
        2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(np.maximum(a, 0.0), 1.0)))
    )


def offset_deg(
    lat0: float, dx_km: npt.ArrayLike, dy_km: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    """Degrees of (lat, lng) for planar offsets in km around latitude ``lat0`` (small areas)."""
    dlat = np.asarray(dy_km, dtype=np.float64) / 110.574
    dlng = np.asarray(dx_km, dtype=np.float64) / (111.320 * np.cos(np.radians(lat0)))
    return dlat, dlng
