"""Project-level contracts: README tables match the schema, MLflow entry points load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mlflow.projects import _project_spec

from features import schema as s

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = (
    "main", "simulate", "ingest", "ingest_sql", "demand_table", "train_eta", "tune_eta", "benchmark_eta",
    "train_demand", "tune_demand", "benchmark_demand",
)  # fmt: skip


@pytest.mark.parametrize(("name", "columns"), [("deliveries", s.DELIVERIES), ("demand", s.DEMAND)])
def test_readme_contract_table_matches_schema(name: str, columns: tuple[s.Column, ...]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- contract:{name} -->\n(.*?)\n<!-- /contract:{name} -->", readme, re.S)
    assert match, f"README lacks the generated {name} contract table"
    assert match.group(1) == s.contract_markdown(columns)


def test_mlproject_is_the_single_spec_mlflow_finds() -> None:
    link = ROOT / "MLproject"
    assert link.is_symlink() and link.resolve() == (ROOT / "mlproject.yaml").resolve()
    project = _project_spec.load_project(str(ROOT))
    assert project.name == "doorstep"
    assert set(ENTRY_POINTS) <= set(project._entry_points)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_mlproject_entry_points_build_commands(entry: str, tmp_path: Path) -> None:
    project = _project_spec.load_project(str(ROOT))
    point = project.get_entry_point(entry)
    existing = tmp_path / "x.parquet"
    existing.write_bytes(b"")
    params = {name: str(existing) for name, p in point.parameters.items() if p.default is None}
    command = point.compute_command(params, storage_dir=str(tmp_path))
    assert command.startswith("doorstep ")
    assert "{" not in command  # every placeholder was filled


def test_every_entry_point_names_a_real_cli_command() -> None:
    from typer.main import get_command

    from doorstep.cli import app

    known = set(get_command(app).commands)  # type: ignore[attr-defined]
    project = _project_spec.load_project(str(ROOT))
    for name, point in project._entry_points.items():
        assert point.command.split()[1] in known, name
