"""Benchmark the synthetic city: stops per second and peak memory at a few sizes.

Each case runs in a fresh process so its peak RSS is its own. The baseline, measured in the
same run, is how fast this machine merely writes the simulated deliveries frame to Parquet; the
ratio (simulate rate / write rate) is comparable across machines. ``--full`` adds a 10M-stop
city streamed to Parquet by day (bounded memory), which takes a few minutes.

    .venv/bin/python benchmarks/bench_simulate.py            # modest sizes, ~1 minute
    .venv/bin/python benchmarks/bench_simulate.py --full     # plus ~10M stops
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "simulate.json"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    days: int
    couriers: int
    stream: bool = False  # simulate_to_parquet (by day) instead of simulate (in memory)
    radius_km: float | None = None  # a bigger city for a bigger fleet
    buildings_per_km2_core: float | None = None


MODEST = (Case("30d x 50 couriers", 30, 50), Case("90d x 200 couriers", 90, 200))
FULL = Case(
    "330d x 1200 couriers, streamed",
    330,
    1200,
    stream=True,
    radius_km=12.0,
    buildings_per_km2_core=140.0,
)


def _config(case: Case) -> Any:
    from citysim import CityConfig

    cfg = CityConfig(days=case.days, couriers=case.couriers, seed=7)
    geo = cfg.geo
    if case.radius_km is not None:
        geo = dataclasses.replace(geo, radius_km=case.radius_km)
    if case.buildings_per_km2_core is not None:
        geo = dataclasses.replace(geo, buildings_per_km2_core=case.buildings_per_km2_core)
    return dataclasses.replace(cfg, geo=geo)


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0


def _run_case(case: Case, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    from citysim import simulate, simulate_to_parquet

    cfg = _config(case)
    result: dict[str, Any] = {"case": case.name, "days": case.days, "couriers": case.couriers}
    start = time.perf_counter()
    if case.stream:
        with tempfile.TemporaryDirectory() as tmp:
            summary = simulate_to_parquet(cfg, tmp, partition_by_date=True)
            result["seconds"] = time.perf_counter() - start
            result["stops"] = summary.stops
            result["parquet_mb"] = (
                sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet")) / 2**20
            )
    else:
        res = simulate(cfg)
        result["seconds"] = time.perf_counter() - start
        result["stops"] = len(res.deliveries)
        result["write_rows_per_s"] = _write_rate(res.deliveries)
    result["stops_per_s"] = result["stops"] / result["seconds"]
    result["peak_rss_mb"] = _peak_rss_mb()
    queue.put(result)


def _write_rate(frame: Any) -> float:
    """Baseline: rows per second of writing the same frame to Parquet on this machine."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        frame.to_parquet(Path(tmp) / "d.parquet", index=False)
        return len(frame) / (time.perf_counter() - start)


def run(case: Case) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run_case, args=(case, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also stream a ~10M-stop city")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)

    cases = [*MODEST, FULL] if args.full else list(MODEST)
    results = [run(case) for case in cases]
    write_rate = max(r.get("write_rows_per_s", 0.0) for r in results)
    smallest = results[0]["stops_per_s"]
    for r in results:
        r["ratio_to_parquet_write"] = r["stops_per_s"] / write_rate
        r["ratio_to_smallest"] = r["stops_per_s"] / smallest
    payload = {
        "benchmark": "citysim.simulate",
        "machine": {"python": platform.python_version(), "cpus": mp.cpu_count()},
        "baseline": {"parquet_write_rows_per_s": write_rate},
        "cases": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    print(f"{'case':34s} {'stops':>11s} {'s':>7s} {'stops/s':>9s} {'RSS MB':>7s} {'vs write':>8s}")
    for r in results:
        print(
            f"{r['case']:34s} {r['stops']:>11,d} {r['seconds']:>7.1f} {r['stops_per_s']:>9,.0f} "
            f"{r['peak_rss_mb']:>7.0f} {r['ratio_to_parquet_write']:>8.3f}"
        )
    print(f"baseline: parquet write {write_rate:,.0f} rows/s; results -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
