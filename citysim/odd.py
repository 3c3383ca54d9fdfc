"""Records that ingest validation must catch, injected into a day's finished rows.

Five kinds in equal shares: GPS at (0, 0), arrival recorded before the parcel was ready, an
exact duplicate row, a stop id reused with different contents (a re-scan), and a GPS teleport
(a stop moved tens of km while its neighbours are minutes apart, so it implies an impossible
speed). Nothing marks them: only validation finds them. ``zone_id`` stays the address-based
zone (a bad GPS fix does not move the customer).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from citysim.city import IntArray
from citysim.config import OddConfig
from citysim.frames import NS_PER_MIN, Table
from features import schema as s
from features.geo import offset_deg

TELEPORT_MAX_GAP_MIN = 8.0  # neighbours this close in time make a 30 km jump > 200 km/h


class OddKind(StrEnum):
    ZERO_GPS = "zero_gps"
    ARRIVAL_BEFORE_READY = "arrival_before_ready"
    TELEPORT = "teleport"
    DUPLICATE_ROW = "duplicate_row"
    DUPLICATE_ID = "duplicate_id"


def inject(
    table: Table, route: IntArray, cfg: OddConfig, rng: np.random.Generator
) -> tuple[Table, IntArray, dict[str, int]]:
    """Corrupt about ``cfg.share`` of the rows; returns the new rows, their routes and counts."""
    n = len(route)
    counts = dict.fromkeys((k.value for k in OddKind), 0)
    if n == 0 or cfg.share <= 0:
        return table, route, counts
    want = rng.multinomial(rng.binomial(n, cfg.share), [1 / len(OddKind)] * len(OddKind))
    table = {k: v.copy() for k, v in table.items()}

    teleport = _teleport_candidates(table, route)
    teleport = rng.permutation(teleport)[: want[2]]
    free = np.setdiff1d(np.arange(n), teleport)
    picked = rng.permutation(free)[: want[0] + want[1] + want[3] + want[4]]
    zero, before, dup_row, dup_id = np.split(picked, np.cumsum([want[0], want[1], want[3]]))

    table[s.LAT][zero] = 0.0
    table[s.LNG][zero] = 0.0

    shift = table[s.ARRIVAL_TIME][before] - table[s.READY_TIME][before]
    shift += (rng.uniform(5, 60, len(before)) * NS_PER_MIN).astype(np.int64)
    table[s.ARRIVAL_TIME][before] -= shift
    table[s.DEPARTURE_TIME][before] -= shift

    km = rng.uniform(*cfg.teleport_km, len(teleport))
    angle = rng.uniform(0, 2 * np.pi, len(teleport))
    dlat, dlng = offset_deg(float(np.nanmean(table[s.LAT])), km * np.cos(angle), km * np.sin(angle))
    table[s.LAT][teleport] += dlat
    table[s.LNG][teleport] += dlng

    rescan = {k: v[dup_id].copy() for k, v in table.items()}
    later = (rng.uniform(30, 180, len(dup_id)) * NS_PER_MIN).astype(np.int64)
    rescan[s.ARRIVAL_TIME] += later
    rescan[s.DEPARTURE_TIME] += later
    rescan[s.PACKAGES] = rescan[s.PACKAGES] + 1
    copies = {k: v[dup_row] for k, v in table.items()}
    out = {k: np.concatenate([table[k], copies[k], rescan[k]]) for k in table}
    route_out = np.concatenate([route, route[dup_row], route[dup_id]])
    # Extra rows sit next to their originals, as in a real export.
    order = np.lexsort((np.arange(len(route_out)), out[s.PLANNED_SEQ], route_out))
    out = {k: v[order] for k, v in out.items()}
    counts.update(
        {
            OddKind.ZERO_GPS.value: len(zero),
            OddKind.ARRIVAL_BEFORE_READY.value: len(before),
            OddKind.TELEPORT.value: len(teleport),
            OddKind.DUPLICATE_ROW.value: len(dup_row),
            OddKind.DUPLICATE_ID.value: len(dup_id),
        }
    )
    return out, route_out[order], counts


def _teleport_candidates(table: Table, route: IntArray) -> IntArray:
    """Rows whose previous and next stops (in driven order) are a few minutes away."""
    arrival = table[s.ARRIVAL_TIME]
    order = np.lexsort((arrival, route))
    r, t = route[order], arrival[order]
    gap = np.diff(t) / NS_PER_MIN
    same = r[1:] == r[:-1]
    close = same & (gap < TELEPORT_MAX_GAP_MIN)
    inner = np.zeros(len(order), dtype=bool)
    inner[1:-1] = close[:-1] & close[1:]
    return order[inner]
