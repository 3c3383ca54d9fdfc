"""Deliveries from a database (``--format sql``): the same rows, checks and errors as a file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from doorstep.cli import app
from features import schema as s
from features.adapters.sql import is_database_url, redact
from features.ingest import IngestOptions, ingest
from tests.synth import make_deliveries

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """Contract rows as a warehouse stores them: timestamps as ISO text, one bad latitude."""
    out = make_deliveries(days=3, couriers=2, stops=5, seed=3)
    out = out.astype({c: str for c in s.TIMESTAMP_COLUMNS if c in out})
    out.loc[4, s.LAT] = 95.0
    return out


@pytest.fixture(scope="module")
def database(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("db") / "warehouse.db"
    with sqlite3.connect(path) as conn:
        frame.to_sql("deliveries", conn, index=False)
        # a partner's own names, to be mapped
        renamed = frame.rename(columns={s.STOP_ID: "parcel", s.ARRIVAL_TIME: "delivered_at"})
        renamed.to_sql("parcels", conn, index=False)
    return f"sqlite:///{path}"


def test_a_table_ingests_like_the_same_rows_from_a_file(
    database: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    from_db = ingest(database, IngestOptions(fmt="sql", query="deliveries"))
    csv = tmp_path / "same.csv"
    frame.to_csv(csv, index=False)
    from_file = ingest(csv, IngestOptions(fmt="csv"))
    assert from_db.n_input == len(frame) and from_db.n_quarantined == 1
    assert from_db.quarantine[s.REASON].tolist() == ["lat/lng: out of range"]
    pd.testing.assert_frame_equal(from_db.deliveries, from_file.deliveries)


def test_a_query_selects_rows_and_a_mapping_renames_columns(
    database: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(f"columns:\n  {s.STOP_ID}: parcel\n  {s.ARRIVAL_TIME}: delivered_at\n")
    courier = frame[s.COURIER_ID].iloc[0]
    query = f"SELECT * FROM parcels WHERE {s.COURIER_ID} = '{courier}' AND {s.LAT} < 90"
    result = ingest(database, IngestOptions(fmt="sql", query=query, mapping=mapping))
    expected = frame[(frame[s.COURIER_ID] == courier) & (frame[s.LAT] < 90)]
    assert result.n_quarantined == 0
    assert sorted(result.deliveries[s.STOP_ID]) == sorted(expected[s.STOP_ID])
    assert str(result.deliveries[s.ARRIVAL_TIME].dt.tz) == "Asia/Shanghai"


@pytest.mark.parametrize(
    ("source", "query", "message"),
    [
        ("{db}", "no_such_table", "no table 'no_such_table'"),
        ("{db}", "SELECT * FROM deliveries WHERE", "failed"),
        ("{db}", "  ", "--query: give a table name or a SELECT statement"),
        ("{db}", "SELECT 1 AS x", "missing required column(s)"),
        ("warehouse.db", "deliveries", "--format sql takes a database URL"),
        ("nosuchdialect://host/db", "deliveries", "not a database URL SQLAlchemy can open"),
    ],
)
def test_bad_sources_and_queries_raise_naming_the_problem(
    database: str, source: str, query: str, message: str
) -> None:
    from features.issues import MissingColumnsError

    with pytest.raises(
        (ValueError, MissingColumnsError), match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        ingest(source.format(db=database), IngestOptions(fmt="sql", query=query))


def test_a_query_only_goes_with_the_sql_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--query: only for --format sql"):
        ingest(tmp_path / "x.csv", IngestOptions(fmt="csv", query="deliveries"))


def test_passwords_never_appear_in_messages() -> None:
    url = "postgresql+psycopg://etl:s3cret@127.0.0.1:1/warehouse"
    assert "s3cret" not in redact(url) and "***" in redact(url)
    assert is_database_url(url) and not is_database_url("/data/deliveries.parquet")
    # no driver installed (ImportError) or nothing listening on port 1: either way, no password
    with pytest.raises(ValueError) as err:
        ingest(url, IngestOptions(fmt="sql", query="deliveries"))
    assert "s3cret" not in str(err.value) and "***" in str(err.value)


def test_cli_ingests_from_a_database(database: str, tmp_path: Path) -> None:
    out = tmp_path / "ingested"
    args = ["ingest", database, "--format", "sql", "--query", "deliveries", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "lat/lng: out of range" in result.output
    assert len(pd.read_parquet(out / "quarantine.parquet")) == 1
    assert len(pd.read_parquet(out / "deliveries.parquet")) == 29


def test_cli_reports_a_bad_query_as_a_usage_error(database: str, tmp_path: Path) -> None:
    args = ["ingest", database, "--format", "sql", "--query", "missing", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "no table 'missing'" in result.output
