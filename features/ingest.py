"""Ingest deliveries from a file or a database: adapt to the contract, validate every row,
write the split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from features import schema as s
from features.coerce import Adapted, coerce_deliveries
from features.issues import Issues, MissingColumnsError
from features.validate import ValidationConfig, ValidationResult, validate_deliveries

if TYPE_CHECKING:
    from features.adapters.tabular import ColumnMapping

Format = Literal["lade", "csv", "parquet", "sql"]
FORMATS: tuple[str, ...] = ("lade", "csv", "parquet", "sql")
DELIVERIES_FILE = "deliveries.parquet"
QUARANTINE_FILE = "quarantine.parquet"


@dataclass(frozen=True)
class IngestOptions:
    """How to read a source: its format, column mapping, time zone, (LaDe) year and (SQL) the
    table or query to read."""

    fmt: Format = "parquet"
    mapping: Path | None = None
    tz: str = s.DEFAULT_TZ
    year: int = 2021
    query: str | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass(frozen=True)
class IngestPaths:
    deliveries: Path
    quarantine: Path


def load_source(path: str | Path, options: IngestOptions) -> Adapted:
    """Read ``path`` (for ``sql``, a database URL) into contract columns, aligned with the rows
    as they came."""
    if options.fmt == "sql":
        from features.adapters.sql import is_database_url, read_sql_source

        url = str(path)
        if not is_database_url(url):
            raise ValueError(f"{url}: --format sql takes a database URL (dialect://...)")
        mapping, tz = _mapping_and_tz(options)
        return read_sql_source(url, options.query or "", mapping=mapping, tz=tz)
    if options.query:
        raise ValueError(f"--query: only for --format sql, not {options.fmt}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if options.fmt == "lade":
        from features.adapters.lade import read_lade

        return read_lade(path, year=options.year, tz=options.tz)
    if options.fmt in ("csv", "parquet"):
        from features.adapters.tabular import read_table

        mapping, tz = _mapping_and_tz(options)
        return read_table(path, fmt=options.fmt, mapping=mapping, tz=tz)
    raise ValueError(f"format: must be one of {', '.join(FORMATS)}, got {options.fmt!r}")


def _mapping_and_tz(options: IngestOptions) -> tuple[ColumnMapping | None, str]:
    """The column mapping, and the zone of naive timestamps: the mapping's when it names one
    (a property of the source, like its column names), else the caller's."""
    from features.adapters.tabular import load_mapping

    mapping = load_mapping(options.mapping) if options.mapping else None
    return mapping, (mapping.timezone if mapping is not None and mapping.timezone else options.tz)


def ingest(path: str | Path, options: IngestOptions | None = None) -> ValidationResult:
    """Adapt and validate a file or a database query; raises only when nothing can be read
    (missing columns, an unreadable source)."""
    options = options or IngestOptions()
    return validate_deliveries(load_source(path, options), options.validation)


def ingest_frame(
    frame: pd.DataFrame, tz: str = s.DEFAULT_TZ, config: ValidationConfig | None = None
) -> ValidationResult:
    """Validate an in-memory frame that already uses contract column names."""
    missing = [c for c in s.REQUIRED_DELIVERY_COLUMNS if c not in frame.columns]
    if missing:
        raise MissingColumnsError(missing, where="deliveries frame")
    source = frame.reset_index(drop=True)
    issues = Issues(len(source))
    adapted = Adapted(coerce_deliveries(source, tz, issues), source, issues)
    return validate_deliveries(adapted, config)


def write_ingest(result: ValidationResult, out_dir: str | Path) -> IngestPaths:
    """Write valid rows and quarantine (source rows as they came, plus ``reason``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = IngestPaths(out / DELIVERIES_FILE, out / QUARANTINE_FILE)
    result.deliveries.to_parquet(paths.deliveries, index=False)
    _parquet_safe(result.quarantine).to_parquet(paths.quarantine, index=False)
    return paths


def _parquet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Mixed-type object columns (garbage next to numbers) are stored as their text."""
    out = frame.copy()
    for name in out.columns:
        if out[name].dtype == object:
            out[name] = out[name].map(lambda v: None if v is None or v is pd.NA else str(v))
    return out


def read_deliveries(path: str | Path, tz: str | None = None) -> pd.DataFrame:
    """Read a contract deliveries table (file or partitioned directory) written by doorstep."""
    frame = pd.read_parquet(path)
    missing = [c for c in s.REQUIRED_DELIVERY_COLUMNS if c not in frame.columns]
    if missing:
        raise MissingColumnsError(missing, where=str(path))
    if tz is not None:
        for name in s.TIMESTAMP_COLUMNS:
            if name in frame.columns and isinstance(frame[name].dtype, pd.DatetimeTZDtype):
                frame[name] = frame[name].dt.tz_convert(tz)
    return frame
