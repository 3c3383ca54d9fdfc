"""benchmarks/demand_floor.py on a small city: the Bayes floor scores the benchmark's points and
sits far below the baselines, and knowing more never makes it worse by more than noise."""

from __future__ import annotations

from tests.scripts import load_benchmark

floor = load_benchmark("demand_floor")


def test_floor_on_a_small_city() -> None:
    # 21 days from 2021-04-12: two training weeks and the test week 04-26..05-02 (Labour Day)
    r = floor.run(days=21, couriers=12, seed=3, test_from="2021-04-26", draws=4000)
    zones = r["city"]["zones"]
    assert zones > 20 and r["n_points"] == zones * 24 * 7
    mase = {n: m["mase"] for n, m in r["floors"].items()}
    best_baseline = min(m["mase"] for m in r["baselines"].values())
    assert mase["knowable"] < 0.85 * best_baseline
    # more information helps, up to the Monte Carlo noise of the tabulated medians
    assert mase["zone_day_known"] <= mase["city_day_known"] + 0.01
    assert mase["city_day_known"] <= mase["knowable"] + 0.01
    assert mase["knowable"] <= mase["festival_unknown"] + 0.01
    assert all(m["coverage_p10_p90"] is None for m in r["floors"].values())  # points, no window
