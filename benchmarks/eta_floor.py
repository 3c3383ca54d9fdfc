"""How good can an ordered-mode ETA on the synthetic city be? The Bayes floor.

On the rows of the ETA synthetic benchmark (`doorstep benchmark eta --format parquet` on the
city of `doorstep simulate --days 60 --couriers 60 --seed 7`, test from 2021-06-04; the rows come
from the project's own `queries_from_deliveries` on the validated file), this script scores the
best point a forecaster could give, the median of the arrival's predictive distribution (MAE's
optimum), estimated from ``reps`` replications of the rest of the route drawn by the simulator
itself (`citysim.replay`). Each replication starts from the query's realised state -- the stop
just reached (or the depot at dispatch) and the realised query time -- so the route's past is
conditioned on, and re-draws every remaining noise term: the service at the stop just reached
and at every later stop (lognormal noise, rare long stops), each leg's detour, travel-time
noise, rare delays and walks within a building. Information sets:

- ``latents_known``: the simulator's parameters and every latent of the day: the courier's pace
  today, rain, service pace, each stop's nominal service and building access, congestion, the
  driven order (all stops of the route, those validation dropped too), the customers' windows
  and whether the courier waits for them, the van's time at the hub. Not knowable: the noise
  draws still ahead;
- ``day_pace_unknown``: the same, but today's lognormal pace factor is drawn from its prior in
  each replication (the courier's habitual pace and tenure are known). It ignores what the
  route's progress so far says about today's pace, so it is a weaker forecaster than a Bayesian
  one holding the same information, not a floor.

The floor is a lower bound for any forecaster, the unordered mode's too (the same rows, with
less information). ``replay_check`` replays each query with the day's own noise: it gives back
every label to within the stamps' whole seconds but a few dozen rows (55 of 171,039 on the
benchmark city), where the query time's rounding to the second moves a later leg's start across
an hour of the congestion profile (~0.7 min); the same rows are off with the odd records
switched off, so they are not odd records (checked on a 21-day city).

    .venv/bin/python benchmarks/eta_floor.py   # the benchmark city, a few minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "eta_floor.json"
MODEL_RESULTS = ROOT / "benchmarks" / "results" / "eta_synthetic.json"
BENCHMARK_CITY = {"days": 60, "couriers": 60, "seed": 7, "test_from": "2021-06-04"}
REPS = 400  # replications per query
CHUNK = 6_000_000  # states x driven positions held at once
INFO_SETS = ("latents_known", "day_pace_unknown")
QUANTILES = (0.1, 0.5, 0.9)
FloatArray = npt.NDArray[np.float64]


@dataclasses.dataclass(frozen=True)
class States:
    """The test queries as simulator states, and their targets' driven positions."""

    day: npt.NDArray[np.int64]  # simulator day of each query
    route: npt.NDArray[np.int64]  # route index within its day
    pos: npt.NDArray[np.int64]  # driven position of the stop just reached (-1: dispatch)
    clock: FloatArray  # the realised query time, minutes after local midnight
    target_pos: npt.NDArray[np.int64]


def run(
    days: int,
    couriers: int,
    seed: int,
    test_from: str,
    reps: int = REPS,
    quiet: bool = False,
) -> dict[str, Any]:
    """The floors, the baselines and (on the benchmark city) the model, on the same rows.
    ``quiet`` sets every timing noise of the simulator to zero and leaves out the odd records
    (a sanity check: the floor is then ~0)."""
    from citysim import CityConfig, simulate_to_parquet
    from citysim.day import Context
    from citysim.fleet import build_city
    from doorstep.config import load_yaml
    from features import schema as s
    from features.eta_queries import queries_from_deliveries
    from features.profiles import local_day
    from training.baselines import fit_baselines
    from training.benchmark_eta import load_for_benchmark
    from training.eta import day_of

    cfg = dataclasses.replace(load_yaml(CityConfig, None), days=days, couriers=couriers, seed=seed)
    cfg = quieted(cfg) if quiet else cfg
    with tempfile.TemporaryDirectory() as tmp:
        simulate_to_parquet(cfg, tmp, partition_by_date=False)
        deliveries, info = load_for_benchmark(Path(tmp) / "deliveries.parquet", "parquet")
    batch = queries_from_deliveries(deliveries)
    t_from = day_of(test_from)
    before = batch.q_route_day < t_from
    history = deliveries[local_day(deliveries[s.DISPATCH_TIME]) < t_from]
    baselines = fit_baselines(history, batch.take_queries(before))
    test = batch.take_queries(~before)
    y = test.t_label_min

    ctx = Context.create(cfg, build_city(cfg))
    states, replays = _states(ctx, deliveries, test)
    rng = np.random.default_rng([seed, 99])
    points = {n: _quantiles(ctx, replays, states, test, reps, n, rng) for n in INFO_SETS}
    off = np.abs(_replayed(ctx, replays, states, test) - y)
    out: dict[str, Any] = {
        "city": {"days": days, "couriers": couriers, "seed": seed, "quiet": quiet},
        "test_from": test_from,
        "mode": "ordered",
        "n_rows": int(test.n_targets),
        "n_queries": int(test.n_queries),
        "reps": reps,
        "conditioning": "each replication starts at the query's stop and realised time",
        "data": info,
        "replay_check": {
            "rows_off_by_over_0.02_min": int((off > 0.02).sum()),
            "max_abs_min_of_the_rest": float(np.max(off[off <= 0.02], initial=0.0)),
        },
        "floors": {},
        "baselines": {},
    }
    for name, (p10, p50, p90) in points.items():
        out["floors"][name] = _scored(y, p10, p50, p90)
    base = baselines.predict(test, "ordered")
    for name, v in base.items():
        out["baselines"][name] = _scored(y, v, v, v, intervals=False)
    best = min(out["baselines"], key=lambda k: out["baselines"][k]["mae_min"])
    floor = out["floors"]["latents_known"]["mae_min"]
    out["best_baseline"] = best
    out["floor_ratio_to_best_baseline"] = floor / out["baselines"][best]["mae_min"]
    out["target_ratio"] = 0.6
    out["target_mae_min"] = 0.6 * out["baselines"][best]["mae_min"]
    bench = {"days": days, "couriers": couriers, "seed": seed, "test_from": test_from}
    if MODEL_RESULTS.exists() and bench == BENCHMARK_CITY and not quiet:
        model = json.loads(MODEL_RESULTS.read_text())["protocols"]["ordered"]
        out["model"] = {
            "source": str(MODEL_RESULTS.relative_to(ROOT)),
            "same_n_rows": model["n_rows"] == test.n_targets,
            "mae_min": model["model"]["mae_min"],
            "width_min": model["model"]["width_min"],
            "ratio_to_best_baseline": model["mae_ratio_to_best_baseline"],
            "x_floor": model["model"]["mae_min"] / floor,
            "by_horizon_mae_min": {k: v["mae_min"] for k, v in model["by_horizon"].items()},
            "unordered_mae_min": json.loads(MODEL_RESULTS.read_text())["protocols"]["unordered"][
                "model"
            ]["mae_min"],
        }
    return out


def quieted(cfg: Any) -> Any:
    """The city with no timing noise (legs, delays, walks in buildings and service exact) and
    no odd records: whatever error is left is the timestamps' whole seconds."""
    r, sv = cfg.routes, cfg.service
    mid = 0.5 * (r.intra_building_min[0] + r.intra_building_min[1])
    return dataclasses.replace(
        cfg,
        routes=dataclasses.replace(
            r, detour_sd=0.0, leg_noise_sd=0.0, delay_prob=0.0, intra_building_min=(mid, mid)
        ),
        service=dataclasses.replace(sv, noise_sd=0.0, long_share=0.0),
        odd=dataclasses.replace(cfg.odd, share=0.0),
    )


def _states(ctx: Any, deliveries: pd.DataFrame, test: Any) -> tuple[States, dict[int, Any]]:
    """Each test query's simulator state, found through the contract's route and stop ids."""
    from citysim.replay import replay_day
    from features import schema as s
    from features.eta_queries import MIN_ROUTE_STOPS

    # the query's stop: the (n_done)-th of its route in the visit order queries_from_deliveries uses
    d = deliveries.sort_values([s.ROUTE_ID, s.ARRIVAL_TIME, s.STOP_ID], kind="stable")
    d = d[d.groupby(s.ROUTE_ID, sort=False)[s.STOP_ID].transform("size") >= MIN_ROUTE_STOPS]
    d = d.reset_index(drop=True)
    codes, names = pd.factorize(d[s.ROUTE_ID], sort=False)
    start = np.r_[0, np.cumsum(np.bincount(codes))[:-1]]
    n_done = test.q_n_done.astype(np.int64)
    row = start[pd.Index(names).get_indexer(test.q_route)] + np.maximum(n_done - 1, 0)
    q_stop = np.where(n_done > 0, d[s.STOP_ID].to_numpy(dtype=object)[row], "")
    arrival_s = d[s.ARRIVAL_TIME].astype("int64").to_numpy()[row] / 1e9
    if not np.array_equal(arrival_s[n_done > 0], test.q_time[n_done > 0]):
        raise AssertionError("query moments do not match their stops' arrivals")

    ymd = pd.Series(test.q_route).str[-8:]
    since_start = pd.to_datetime(ymd, format="%Y%m%d") - pd.Timestamp(ctx.cfg.start)
    sim_day = np.asarray(since_start.dt.days, dtype=np.int64)
    n = test.n_queries
    route, pos, clock = np.empty(n, np.int64), np.empty(n, np.int64), np.empty(n)
    target_pos = np.empty(test.n_targets, np.int64)
    replays = {}
    for k in np.unique(sim_day):
        rd = replays[int(k)] = replay_day(ctx, int(k))
        q = np.flatnonzero(sim_day == k)
        route[q] = pd.Index(rd.route_ids).get_indexer(test.q_route[q])
        flat = pd.Index(rd.stop_ids)
        at = np.flatnonzero(n_done[q] > 0)
        where = flat.get_indexer(pd.Index(q_stop[q[at]]))
        pos[q] = -1
        pos[q[at]] = rd.position[where]
        clock[q] = (test.q_time[q] - rd.midnight_ns / 1e9) / 60.0
        t = np.flatnonzero(np.isin(test.t_query, q))
        tf = flat.get_indexer(test.t_stop_id[t])
        if (route[q] < 0).any() or (where < 0).any() or (tf < 0).any():
            raise AssertionError(f"day {k}: a route or stop of the data is not in the simulator")
        if (rd.plan.door.route[tf] != route[test.t_query[t]]).any():
            raise AssertionError(f"day {k}: a target on another route than its query")
        target_pos[t] = rd.position[tf]
    if (target_pos <= pos[test.t_query]).any():
        raise AssertionError("a target driven before its query's stop")
    return States(sim_day, route, pos, clock, target_pos), replays


def _chunks(states: States, k: int, reps: int, width: int) -> list[npt.NDArray[np.int64]]:
    q = np.flatnonzero(states.day == k)
    per = max(1, CHUNK // max(1, reps * width))
    return [q[i : i + per] for i in range(0, len(q), per)]


def _quantiles(
    ctx: Any,
    replays: dict[int, Any],
    states: States,
    test: Any,
    reps: int,
    info: str,
    rng: np.random.Generator,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """P10/P50/P90 of each target's minutes to arrival over ``reps`` replications."""
    from citysim.day import expected_pace
    from citysim.replay import FreshNoise, drive_from

    out = np.full((len(QUANTILES), test.n_targets), np.nan)
    targets_of = _targets_by_query(test)
    for k, rd in replays.items():
        width = rd.plan.driven.shape[1]
        noise = FreshNoise(ctx, rd, rng)
        for q in _chunks(states, k, reps, width):
            route = np.repeat(states.route[q], reps)
            pace = None
            if info == "day_pace_unknown":
                habit = expected_pace(ctx, k, rd.plan.door.courier)[route]
                pace = habit * rng.lognormal(0.0, ctx.cfg.fleet.day_pace_sd, len(route))
            arrival = drive_from(
                ctx, rd, route, np.repeat(states.pos[q], reps), np.repeat(states.clock[q], reps),
                noise, pace,
            ).reshape(len(q), reps, width)  # fmt: skip
            t, local = targets_of(q)
            minutes = arrival[local, :, states.target_pos[t]] - states.clock[q][local, None]
            out[:, t] = np.quantile(minutes, QUANTILES, axis=1)
    return out[0], out[1], out[2]


def _replayed(ctx: Any, replays: dict[int, Any], states: States, test: Any) -> FloatArray:
    """Minutes to arrival replayed with the day's own noise: the labels, where the data is clean."""
    from citysim.replay import OwnNoise, drive_from

    out = np.full(test.n_targets, np.nan)
    targets_of = _targets_by_query(test)
    for k, rd in replays.items():
        q = np.flatnonzero(states.day == k)
        arrival = drive_from(ctx, rd, states.route[q], states.pos[q], states.clock[q], OwnNoise(rd))
        t, local = targets_of(q)
        out[t] = arrival[local, states.target_pos[t]] - states.clock[q][local]
    return out


def _targets_by_query(test: Any) -> Any:
    """A lookup: for sorted query indices, their targets and each target's query among them."""
    first = np.searchsorted(test.t_query, np.arange(test.n_queries + 1))

    def lookup(q: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        counts = first[q + 1] - first[q]
        t = np.concatenate([np.arange(first[i], first[i + 1]) for i in q]) if len(q) else q
        return t.astype(np.int64), np.repeat(np.arange(len(q)), counts)

    return lookup


def _scored(
    y: FloatArray, p10: FloatArray, p50: FloatArray, p90: FloatArray, intervals: bool = True
) -> dict[str, Any]:
    """The evaluation's metrics, by horizon of the forecast's own P50 (as the ETA evaluation
    buckets) and of the actual minutes (the same rows for every forecaster)."""
    from doorstep.eta_bundle import EtaPrediction
    from training.metrics import by_horizon, eta_metrics

    pred = EtaPrediction(p10, p50, p90)
    m: dict[str, Any] = dict(eta_metrics(y, pred if intervals else p50))
    for on in ("predicted", "actual"):
        m[f"by_{on}_horizon"] = {
            b: {"n_rows": v["n_rows"], "mae_min": v["mae_min"]}
            | (
                {"coverage_p10_p90": v["coverage_p10_p90"], "width_min": v["width_min"]}
                if intervals
                else {}
            )
            for b, v in by_horizon(y, pred, on=on).items()
        }
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=BENCHMARK_CITY["days"])
    ap.add_argument("--couriers", type=int, default=BENCHMARK_CITY["couriers"])
    ap.add_argument("--seed", type=int, default=BENCHMARK_CITY["seed"])
    ap.add_argument("--test-from", default=BENCHMARK_CITY["test_from"])
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    r = run(args.days, args.couriers, args.seed, args.test_from, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    best = r["best_baseline"]
    rows = [(f"floor: {n}", m["mae_min"]) for n, m in r["floors"].items()]
    rows += [(f"baseline: {n}", m["mae_min"]) for n, m in r["baselines"].items()]
    if "model" in r:
        rows.append(("doorstep model (benchmark run)", r["model"]["mae_min"]))
    print(f"ordered mode, {r['n_rows']:,} rows, {r['reps']} replications per query")
    print(f"{'forecast':34} {'MAE min':>8} {'x ' + best:>16}")
    for name, mae in rows:
        print(f"{name:34} {mae:8.3f} {mae / r['baselines'][best]['mae_min']:16.3f}")
    print("floor (latents_known) by horizon of its P50:")
    for b, v in r["floors"]["latents_known"]["by_predicted_horizon"].items():
        print(
            f"  {b:>7} {v['n_rows']:>8,} rows  MAE {v['mae_min']:6.2f}  P10-P90 {v['width_min']:5.1f} min"
        )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
