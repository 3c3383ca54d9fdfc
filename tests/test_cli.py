"""CLI smoke tests: the contract commands, their outputs and exit codes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from doorstep.cli import app
from features import schema as s
from tests.synth import make_deliveries

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def contract_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = make_deliveries(days=3, couriers=2, stops=5, seed=2)
    frame = frame.astype({c: str for c in s.TIMESTAMP_COLUMNS if c in frame})
    frame.loc[0, s.LAT] = 123.0  # one bad row
    path = tmp_path_factory.mktemp("csv") / "deliveries.csv"
    frame.to_csv(path, index=False)
    return path


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("simulate", "ingest", "demand-table", "demo", "train", "benchmark", "models"):
        assert command in result.output


def test_ingest_keeps_good_rows_and_quarantines_bad(contract_csv: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(contract_csv), "--format", "csv", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "lat/lng: out of range" in result.output
    good = pd.read_parquet(tmp_path / "deliveries.parquet")
    bad = pd.read_parquet(tmp_path / "quarantine.parquet")
    assert len(good) == 29 and len(bad) == 1
    assert bad[s.REASON].tolist() == ["lat/lng: out of range"]
    assert bad[s.LAT].tolist() == ["123.0"]  # as it came
    assert str(good[s.ARRIVAL_TIME].dt.tz) == "Asia/Shanghai"


def test_ingest_missing_columns_exits_2_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "thin.csv"
    pd.DataFrame({s.STOP_ID: ["a"], s.LAT: [1.0]}).to_csv(path, index=False)
    result = runner.invoke(app, ["ingest", str(path), "--format", "csv", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "missing required column(s)" in result.output
    assert "arrival_time" in result.output


def test_ingest_with_no_valid_row_exits_2(contract_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(contract_csv, dtype=str)
    frame[s.LNG] = "999"
    path = tmp_path / "all_bad.csv"
    frame.to_csv(path, index=False)
    result = runner.invoke(app, ["ingest", str(path), "--format", "csv", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "no valid rows" in result.output
    assert len(pd.read_parquet(tmp_path / "o" / "quarantine.parquet")) == len(frame)


def test_ingest_unknown_format_exits_2(contract_csv: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(contract_csv), "--format", "xml", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--format: must be one of lade, csv, parquet, sql, got 'xml'" in result.output


def test_demand_table_from_deliveries(contract_csv: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["ingest", str(contract_csv), "--format", "csv", "--out", str(tmp_path)]).exit_code == 0
    out = tmp_path / "demand.csv"
    result = runner.invoke(
        app, ["demand-table", str(tmp_path / "deliveries.parquet"), "--format", "deliveries", "--freq", "h", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == [s.ZONE_ID, s.TS, s.VOLUME]
    assert table[s.VOLUME].sum() == pd.read_parquet(tmp_path / "deliveries.parquet")[s.PACKAGES].sum()


def test_demand_table_changshu_rejects_hourly(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("grid_x,grid_y,date\n1,2,2024-01-01\n")
    result = runner.invoke(app, ["demand-table", str(path), "--format", "changshu", "--freq", "h", "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2
    assert "Changshu orders carry dates only" in result.output


def test_demand_table_changshu_real(changshu_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "changshu.parquet"
    result = runner.invoke(app, ["demand-table", str(changshu_path), "--format", "changshu", "--freq", "d", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert table[s.TS].max() <= pd.Timestamp("2024-08-31")
    assert table[s.ZONE_ID].nunique() <= 52
    assert table[s.VOLUME].sum() == 155_266


def test_ingest_lade_real(lade_jilin_path: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", str(lade_jilin_path), "--format", "lade", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    good = pd.read_parquet(tmp_path / "deliveries.parquet")
    bad = pd.read_parquet(tmp_path / "quarantine.parquet")
    assert len(good) + len(bad) == 26_711
    assert len(bad) < 0.01 * 26_711
    assert good[s.ZONE_ID].str.len().eq(15).all()  # H3 cells at resolution 8


def test_demand_table_validates_a_planners_table(tmp_path: Path) -> None:
    path = tmp_path / "plan.csv"
    path.write_text("zone_id,ts,volume\na,2024-01-01,3\na,2024-01-03,2\nb,2024-01-01,-1\n")
    out = tmp_path / "clean.parquet"
    result = runner.invoke(app, ["demand-table", str(path), "--format", "table", "--freq", "d", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    assert table[s.VOLUME].tolist() == [3.0, 0.0, 2.0]
    bad = pd.read_parquet(tmp_path / "clean_quarantine.parquet")
    assert bad[s.REASON].tolist() == ["volume: negative"]
