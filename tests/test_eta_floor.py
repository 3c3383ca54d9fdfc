"""benchmarks/eta_floor.py on a tiny city: the ETA Bayes floor scores the benchmark's ordered rows,
sits far below the model-free baselines, is calibrated-ish, and is ~0 once the simulator's timing
noise is switched off (only the timestamps' whole seconds are left)."""

from __future__ import annotations

import math

from tests.scripts import load_benchmark

floor = load_benchmark("eta_floor")

# 7 days from 2021-04-12: five training days, two test days
CITY = {"days": 7, "couriers": 8, "seed": 3, "test_from": "2021-04-17"}


def test_floor_on_a_tiny_city() -> None:
    r = floor.run(**CITY, reps=60)
    assert r["n_rows"] > 1000 and "model" not in r  # not the benchmark city: no model beside it
    mae = {n: m["mae_min"] for n, m in r["floors"].items()}
    assert all(math.isfinite(v) and v > 0 for v in mae.values())
    best = min(m["mae_min"] for m in r["baselines"].values())
    assert r["baselines"][r["best_baseline"]]["mae_min"] == best
    assert mae["latents_known"] < 0.7 * best
    assert r["floor_ratio_to_best_baseline"] == mae["latents_known"] / best
    # knowing today's pace never costs more than the Monte Carlo noise of the medians
    assert mae["latents_known"] <= mae["day_pace_unknown"] + 0.1
    assert 0.6 < r["floors"]["latents_known"]["coverage_p10_p90"] < 0.95
    # the day's own noise gives back the labels, but for the odd rows validation kept
    assert r["replay_check"]["rows_off_by_over_0.02_min"] <= 0.01 * r["n_rows"]
    buckets = r["floors"]["latents_known"]["by_predicted_horizon"]
    assert sum(b["n_rows"] for b in buckets.values()) == r["n_rows"]


def test_without_timing_noise_the_floor_is_zero() -> None:
    r = floor.run(**CITY, reps=5, quiet=True)
    known = r["floors"]["latents_known"]
    assert known["mae_min"] < 0.02 and known["width_min"] < 0.01  # whole-second stamps only
    # today's pace is still a random draw to whoever does not know it
    assert r["floors"]["day_pace_unknown"]["mae_min"] > 0.5
