"""How good can an hourly day-ahead demand forecast of the synthetic city be? The Bayes floor.

The simulator knows each zone-hour's intensity (``citysim.demand.zone_hour_intensity``). For
three information sets this script scores the best point a forecaster holding that information
could give, the median of the count's predictive distribution (MAE's optimum), on the demand
benchmark's points and scale (`doorstep benchmark demand --freq h`, every zone x hour of the test
days, pooled MASE over the training weeks' seasonal-naive MAE):

- ``festival_unknown``: ``knowable`` less the shopping festival's uplift (treated as an ordinary
  day). On the benchmark city no training week has a festival, so no forecaster learning from
  the table can know its size: this is the floor of what the history itself teaches;
- ``knowable``: what could be known at 00:00 of the day: each zone's base, growth, weekday and
  hour shares, the calendar (holidays, rebound, festivals) and yesterday's city shock. Not known:
  today's AR(1) shock step, rain, the zone-day noise, the gamma and Poisson draws;
- ``city_day_known``: plus today's city factor (shock and rain);
- ``zone_day_known``: plus each zone-day's noise (only the count noise left).

No model learns these parameters exactly, so a learned forecast sits above ``knowable``; how far
above is what the benchmark's MASE target is measured against. The volumes are recomputed from
the simulator's own random streams (``tests/test_citysim.py`` checks that they are the simulated
table's; for the benchmark city, seed 7, they were compared whole).

    .venv/bin/python benchmarks/demand_floor.py   # the benchmark city, ~2 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "demand_floor.json"
MODEL_RESULTS = ROOT / "benchmarks" / "results" / "demand_synthetic_hourly.json"
DRAWS = 100_000  # Monte Carlo draws per day for a predictive median
GRID = np.exp(np.linspace(np.log(1e-3), np.log(80.0), 500))  # expected volumes tabulated


def median_table(mult: npt.NDArray[np.float64], dispersion: float, rng: np.random.Generator) -> Any:
    """The median of Poisson(mu x M x G) as a function of mu, for day-level multiplier draws
    ``mult`` (M) and gamma mixing G: tabulated on ``GRID``, read off by the nearest point below."""
    gam = rng.gamma(dispersion, 1.0 / dispersion, len(mult))
    med = np.array([np.median(rng.poisson(mu * mult * gam)) for mu in GRID])

    def lookup(mu: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        k = np.clip(np.searchsorted(GRID, mu, side="right") - 1, 0, len(GRID) - 1)
        return np.where(mu < GRID[0], 0.0, med[k])

    return lookup


def run(days: int, couriers: int, seed: int, test_from: str, draws: int = DRAWS) -> dict[str, Any]:
    """The floors, the baselines and (if its results exist) the model on one city."""
    from citysim import CityConfig
    from citysim.day import Context, day_rng
    from citysim.demand import zone_hour_intensity
    from citysim.fleet import build_city
    from doorstep.config import load_yaml
    from features import schema as s
    from features.demand_features import DemandPanel, make_queries
    from training.demand_backtest import (
        baseline_predictions,
        insample_scale,
        metrics,
        scored_zones,
    )

    cfg = dataclasses.replace(load_yaml(CityConfig, None), days=days, couriers=couriers, seed=seed)
    ctx = Context.create(cfg, build_city(cfg))
    d, w, cal = cfg.demand, cfg.weather, ctx.cal
    parts = [zone_hour_intensity(cfg, ctx.model, cal, k, day_rng(cfg, k)) for k in range(days)]
    volume = _volumes(cfg, ctx, days)
    zones = ctx.city.zones[s.ZONE_ID].to_numpy(dtype=object)
    dates = [cal.dates[cal.index(k)] for k in range(days)]
    ts = pd.date_range(str(dates[0]), periods=days * 24, freq="h")
    table = pd.DataFrame(
        {
            s.ZONE_ID: np.repeat(zones, len(ts)),
            s.TS: np.tile(ts, len(zones)),
            s.VOLUME: volume.ravel().astype(np.float64),
        }
    )
    test = pd.Timestamp(test_from)
    panel = DemandPanel.from_table(table, "h", end=ts[-1] + pd.Timedelta(hours=1))
    scored = scored_zones(panel, test)
    scale = insample_scale(panel, scored, test)
    origins = pd.date_range(test, ts[-1].normalize(), freq="D")
    q = make_queries(panel, origins, 24, scored)
    y = np.nan_to_num(panel.values[q.zone, q.target], nan=0.0)
    rng = np.random.default_rng(0)
    sd_step = np.sqrt(1.0 - d.ar_phi**2) * d.ar_sd
    points: dict[str, npt.NDArray[np.float64]] = {n: np.empty(len(y)) for n in INFO_SETS}
    day_of_row = (q.target // 24).astype(int)
    hour_of_row = (q.target % 24).astype(int)
    # panel row -> city zone (the panel orders zones its own way)
    city_index = pd.Index(zones.astype(str)).get_indexer(pd.Index(panel.zones).astype(str))
    cz = city_index[q.zone]
    for k in np.unique(day_of_row):
        i, p = cal.index(int(k)), parts[int(k)]
        rows = day_of_row == k
        mu = (p.level * p.known)[cz[rows]] * p.shape[cz[rows], hour_of_row[rows]]
        p_rain = w.p_rain_after_rain if cal.rain[i - 1] else w.p_rain_after_dry
        shock = d.ar_phi * cal.shock[i - 1] + sd_step * rng.standard_normal(draws)
        rain = np.where(rng.random(draws) < p_rain, d.rain_factor, 1.0)
        noise = rng.lognormal(-0.5 * d.zone_day_sd**2, d.zone_day_sd, draws)
        knowable = median_table(np.exp(shock) * rain * noise, d.dispersion, rng)
        points["knowable"][rows] = knowable(mu)
        # the festival's uplift, unseen in the training weeks, cannot be learned from the table
        points["festival_unknown"][rows] = knowable(mu / cal.promo[i])
        points["city_day_known"][rows] = median_table(noise, d.dispersion, rng)(mu * p.city)
        exact = mu * p.city * p.noise[cz[rows]]
        nb = stats.nbinom(d.dispersion, d.dispersion / (d.dispersion + exact))
        points["zone_day_known"][rows] = nb.ppf(0.5)
    out: dict[str, Any] = {
        "city": {"days": days, "couriers": couriers, "seed": seed, "zones": len(scored)},
        "test_from": test_from,
        "n_points": len(y),
        "mase_scale": scale,
        "floors": {n: metrics(y, points[n], q.zone, scale) for n in INFO_SETS},
        "baselines": {
            n: metrics(y, v, q.zone, scale) for n, v in baseline_predictions(panel, q).items()
        },
    }
    if MODEL_RESULTS.exists():
        model = json.loads(MODEL_RESULTS.read_text())["protocols"]["day_ahead"]
        out["model"] = {"source": str(MODEL_RESULTS.relative_to(ROOT)), **model["model"]}
    return out


INFO_SETS = ("festival_unknown", "knowable", "city_day_known", "zone_day_known")


def _volumes(cfg: Any, ctx: Any, days: int) -> npt.NDArray[np.int64]:
    """The simulator's zone-hour counts, as ``citysim.day.run_day`` draws them."""
    from citysim.day import day_rng
    from citysim.demand import zone_hour_volume

    return np.concatenate(
        [zone_hour_volume(cfg, ctx.model, ctx.cal, k, day_rng(cfg, k)) for k in range(days)],
        axis=1,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=70)
    ap.add_argument("--couriers", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--test-from", default="2021-06-07")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    r = run(args.days, args.couriers, args.seed, args.test_from)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    rows = [(f"floor: {n}", m) for n, m in r["floors"].items()]
    rows += [(f"baseline: {n}", m) for n, m in r["baselines"].items()]
    if "model" in r:
        rows.append(("doorstep model (benchmark run)", r["model"]))
    print(f"hourly day-ahead, {r['n_points']:,} points, MASE scale {r['mase_scale']:.4f}")
    print(f"{'forecast':34} {'MASE':>7} {'WAPE':>7} {'x knowable':>11}")
    floor = r["floors"]["knowable"]["mase"]
    for name, m in rows:
        print(f"{name:34} {m['mase']:7.4f} {m['wape']:7.4f} {m['mase'] / floor:11.3f}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
