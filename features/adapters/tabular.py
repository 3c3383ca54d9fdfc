"""Any CSV or Parquet deliveries file, through a column mapping declared in YAML.

A partner's file rarely uses our column names. Rather than a script per partner, a small YAML
mapping says which of their columns is which contract column, and which contract columns are
the same for every row (``vehicle_type: bike``). See ``configs/mappings/example.yaml``.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from features import schema as s
from features.coerce import Adapted, coerce_deliveries
from features.issues import Issues, MissingColumnsError

TableFormat = Literal["csv", "parquet"]
TABLE_FORMATS: tuple[str, ...] = ("csv", "parquet")
MAPPING_KEYS = ("columns", "constants", "timezone")
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ColumnMapping:
    """Where each contract column comes from in a source file.

    ``columns`` maps contract column -> source column; ``constants`` gives a contract column
    one value for every row; ``timezone`` is the zone of the file's naive timestamps and,
    when set, wins over the caller's default (it is a property of the file, like its names).
    Contract columns the mapping does not mention are taken from a source column of the same
    name when there is one.
    """

    columns: dict[str, str] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    timezone: str | None = None

    def __post_init__(self) -> None:
        unknown = sorted((set(self.columns) | set(self.constants)) - set(s.DELIVERY_COLUMNS))
        if unknown:
            raise ValueError(
                f"mapping: unknown contract column(s): {', '.join(unknown)}; "
                f"known: {', '.join(s.DELIVERY_COLUMNS)}"
            )
        both = sorted(set(self.columns) & set(self.constants))
        if both:
            raise ValueError(f"mapping: column(s) both mapped and constant: {', '.join(both)}")
        not_names = sorted(k for k, v in self.columns.items() if not isinstance(v, str) or not v)
        if not_names:
            raise ValueError(
                f"mapping: source column name must be text for: {', '.join(not_names)}"
            )
        if self.timezone is not None:
            try:
                zoneinfo.ZoneInfo(self.timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"mapping: unknown timezone {self.timezone!r}") from exc

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ColumnMapping:
        """Build from parsed YAML, rejecting keys the format does not have."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(MAPPING_KEYS))
        if unknown:
            raise ValueError(
                f"mapping: unknown key(s) {', '.join(unknown)}; known: {', '.join(MAPPING_KEYS)}"
            )
        for key in ("columns", "constants"):
            if not isinstance(data.get(key) or {}, dict):
                raise ValueError(f"mapping: {key} must be a mapping of contract column to value")
        return cls(
            columns=dict(data.get("columns") or {}),
            constants=dict(data.get("constants") or {}),
            timezone=data.get("timezone"),
        )


def load_mapping(path: str | Path) -> ColumnMapping:
    """Read a :class:`ColumnMapping` from YAML (format: ``configs/mappings/example.yaml``)."""
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return ColumnMapping.from_dict(raw)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def read_table(
    path: str | Path,
    *,
    fmt: TableFormat,
    mapping: ColumnMapping | None = None,
    tz: str,
) -> Adapted:
    """Read a deliveries file and bring it to contract columns, row for row.

    CSV (plain or gzip) is read as text, so a garbage value survives into quarantine exactly
    as written; Parquet is read as stored. ``tz`` is the zone of naive timestamps unless the
    mapping names one.
    """
    if fmt == "csv":
        raw = read_csv_text(path)
    elif fmt == "parquet":
        raw = pd.read_parquet(path).reset_index(drop=True)
    else:
        raise ValueError(f"fmt: must be one of {', '.join(TABLE_FORMATS)}, got {fmt!r}")
    return map_frame(raw, mapping, tz=tz, where=str(path))


def map_frame(
    raw: pd.DataFrame, mapping: ColumnMapping | None, *, tz: str, where: str = "input"
) -> Adapted:
    """Rename, add constants and coerce an in-memory frame (``raw`` becomes ``source``)."""
    mapping = mapping or ColumnMapping()
    source = raw.reset_index(drop=True)
    missing = _missing(source, mapping)
    if missing:
        raise MissingColumnsError(missing, where=where)
    frame = pd.DataFrame(index=source.index)
    for name in s.DELIVERY_COLUMNS:
        if name in mapping.constants:
            frame[name] = pd.Series([mapping.constants[name]] * len(source), dtype=object)
        elif name in mapping.columns:
            frame[name] = source[mapping.columns[name]]
        elif name in source.columns:
            frame[name] = source[name]
    issues = Issues(len(source))
    deliveries = coerce_deliveries(frame, mapping.timezone or tz, issues)
    return Adapted(deliveries, source, issues)


def read_csv_text(path: str | Path) -> pd.DataFrame:
    """Every column as text, empty cells null; gzip is recognised by content, not only name
    (other compressions by the file name's suffix). ``NaT`` (what pandas 2 writes for a missing
    timestamp turned to text) is null too, beside pandas' default null markers."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == GZIP_MAGIC
    compression: Literal["gzip", "infer"] = "gzip" if gzipped else "infer"
    return pd.read_csv(
        path, dtype=str, keep_default_na=True, na_values=["NaT"], compression=compression
    )


def _missing(source: pd.DataFrame, mapping: ColumnMapping) -> list[str]:
    """Contract columns that cannot be filled, naming the source column a mapping pointed at.

    A mapped source column that is absent is an error even for an optional contract column:
    the mapping promised it, and silently filling nulls would hide a typo.
    """
    out = []
    for name in s.DELIVERY_COLUMNS:
        if name in mapping.constants:
            continue
        if name in mapping.columns:
            if mapping.columns[name] not in source.columns:
                out.append(f"{name} (source column {mapping.columns[name]!r})")
        elif name in s.REQUIRED_DELIVERY_COLUMNS and name not in source.columns:
            out.append(name)
    return out
