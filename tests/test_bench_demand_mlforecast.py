"""The mlforecast peer benchmark: skips cleanly without its data or mlforecast, and scores
doorstep and the peer on the same points when both are there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.scripts import load_benchmark
from tests.test_demand_model import synthetic

bench = load_benchmark("bench_demand_mlforecast")


def test_skips_without_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    args = ["--history", str(tmp_path / "none.parquet"), "--test-from", "2024-08-01"]
    assert bench.main([*args, "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.startswith("skipped:") and not out.exists()


def test_skips_without_mlforecast(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlforecast" else real(name, *a),
    )
    assert bench.main(["--history", str(tmp_path / "x.csv"), "--test-from", "2024-08-01"]) == 0
    assert "skipped: mlforecast is not installed" in capsys.readouterr().out


def test_same_points_for_both_models(tmp_path: Path) -> None:
    pytest.importorskip(
        "mlforecast", reason="optional benchmark dependency (pip install -e '.[bench]')"
    )
    history, out = tmp_path / "daily.csv", tmp_path / "r.json"
    synthetic("d", zones=4, days=100, seed=41).to_csv(history, index=False)
    args = ["--history", str(history), "--freq", "d", "--test-from", "2024-03-26"]
    assert bench.main([*args, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["n_points"] == 4 * 15  # Mar 26 to Apr 9
    assert set(results["models"]) == {"doorstep", "mlforecast_poisson", "mlforecast_l2"}
    for m in results["models"].values():
        assert m["mae"] >= 0 and m["fit_seconds"] > 0
    assert results["models"]["mlforecast_l2"]["coverage_p10_p90"] is None
    assert results["models"]["doorstep"]["mae"] < results["baselines"]["seasonal_naive"]["mae"]
