"""A day's routes: the planner's sequence and the order the courier really drives.

Stops live in flat arrays; a route is a row of a padded ``(routes, max_stops)`` matrix of flat
indices (``-1`` pads). Every step here is vectorised across all routes of the day; the only
loops run over positions in a route (tens), never over stops.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from citysim.city import FloatArray, IntArray

PAD = -1
SWEEP_JITTER = 0.3  # radians: where the courier starts their usual loop varies a little
BoolMatrix = npt.NDArray[np.bool_]


def layout(route: IntArray, n_routes: int) -> IntArray:
    """Padded matrix of flat indices; ``route`` must be sorted (stops grouped by route)."""
    counts = np.bincount(route, minlength=n_routes)
    width = int(counts.max()) if len(route) else 0
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(route)) - starts[route]
    out = np.full((n_routes, width), PAD, dtype=np.int64)
    out[route, pos] = np.arange(len(route))
    return out


def gather(values: np.ndarray, index: IntArray, fill: float | int | bool = 0) -> np.ndarray:
    """``values[index]`` with ``fill`` where ``index`` is a pad."""
    out = values[np.maximum(index, 0)]
    return np.where(index >= 0, out, fill)


def plan_nearest(
    slots: IntArray,
    x: FloatArray,
    y: FloatArray,
    wave: IntArray,
    start: tuple[FloatArray, FloatArray],
    hub: tuple[FloatArray, FloatArray],
) -> IntArray:
    """Nearest-neighbour plan: first-wave stops from the depot, then second-wave ones from the hub.

    The naive engine's plan is what ``planned_seq`` records; good enough to be a baseline, poor
    enough (it is greedy) that couriers who know their area beat it.
    """
    n_routes, width = slots.shape
    valid = slots >= 0
    sx, sy = gather(x, slots, np.nan), gather(y, slots, np.nan)
    second = gather(wave, slots, 0) == 1
    remaining = valid.copy()
    cx, cy = start[0].copy(), start[1].copy()
    switched = np.zeros(n_routes, dtype=bool)
    out = np.full_like(slots, PAD)
    rows = np.arange(n_routes)
    for k in range(width):
        first_left = remaining & ~second
        has_first = first_left.any(axis=1)
        switch = ~has_first & ~switched & remaining.any(axis=1)
        cx[switch], cy[switch] = hub[0][switch], hub[1][switch]
        switched |= switch
        cand = np.where(has_first[:, None], first_left, remaining)
        live = cand.any(axis=1)
        if not live.any():
            break
        d2 = np.where(cand, (sx - cx[:, None]) ** 2 + (sy - cy[:, None]) ** 2, np.inf)
        j = np.argmin(d2, axis=1)
        r, jj = rows[live], j[live]
        out[r, k] = slots[r, jj]
        remaining[r, jj] = False
        cx[r], cy[r] = sx[r, jj], sy[r, jj]
    return out


def deviate(
    plan: IntArray,
    building: IntArray,
    wave: IntArray,
    bx: FloatArray,
    by: FloatArray,
    swap_sd: FloatArray,
    sweep: tuple[FloatArray, FloatArray, FloatArray],
    reorder: npt.NDArray[np.bool_],
    reverse: npt.NDArray[np.bool_],
    rng: np.random.Generator,
) -> IntArray:
    """The order the courier drives: the plan with local swaps, some routes reordered.

    Swaps and reorders move whole building groups (a courier does not leave a block half
    done). ``swap_sd`` is the courier's own tendency to swap neighbouring groups; ``reorder``
    routes are driven as a sweep around the courier's usual centre from their usual starting
    bearing (``sweep`` = centre x, centre y, bearing: a habit, so it repeats across days);
    ``reverse`` routes drive a random stretch of the plan backwards.
    """
    n_routes, width = plan.shape
    valid = plan >= 0
    pos = np.broadcast_to(np.arange(width, dtype=np.float64), plan.shape)
    b = gather(building, plan, -1)
    w = gather(wave, plan, 0)
    change = np.ones_like(valid)
    change[:, 1:] = (b[:, 1:] != b[:, :-1]) | (w[:, 1:] != w[:, :-1])
    group = np.cumsum(change, axis=1) - 1
    jitter = rng.normal(0.0, 1.0, plan.shape) * swap_sd[:, None]
    key = group + np.take_along_axis(jitter, group, axis=1)

    if reorder.any():
        px, py = gather(bx, plan, np.nan), gather(by, plan, np.nan)
        mx, my = sweep[0][:, None], sweep[1][:, None]
        theta0 = sweep[2][:, None] + rng.normal(0.0, SWEEP_JITTER, (n_routes, 1))
        bearing = np.mod(np.arctan2(py - my, px - mx) - theta0, 2 * np.pi) * width
        key = np.where(reorder[:, None], bearing, key)
    if reverse.any():
        n_first = (valid & (w == 0)).sum(axis=1)
        a = (rng.random(n_routes) * n_first).astype(np.int64)
        span = (rng.random(n_routes) * (n_first - a)).astype(np.int64)
        lo = np.take_along_axis(key, np.minimum(a, width - 1)[:, None], axis=1)
        hi = np.take_along_axis(key, np.minimum(a + span, width - 1)[:, None], axis=1)
        inside = reverse[:, None] & (pos >= a[:, None]) & (pos <= (a + span)[:, None])
        key = np.where(inside, lo + hi - key, key)
    key = key + 1e-6 * pos + w * 1e9  # stable within a group; the second wave always after
    key = np.where(valid, key, np.inf)
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(plan, order, axis=1)
