"""The demand table and the demand features on Dask: the same code, run per partition.

Nothing here re-implements a feature or the table. Two distributed steps:

* **The table** (``demand_table_dask``): each partition of deliveries (partitioned by date, as
  ``doorstep simulate --partitioned`` writes) runs ``demand_from_deliveries`` on its own rows
  (the map: per (zone, period) counts); the rows are then shuffled by zone and each zone's
  series is finished by ``complete_demand`` (the combine: a period split between two date
  partitions is summed, and the zero-fill runs over the zone's whole span, after the combine).
  The result is partitioned by zone: every zone's whole series in one partition.
* **The features**: each zone partition builds a ``DemandPanel`` of its own zones and runs the
  ordinary ``DemandFeaturizer.fit`` / ``transform`` and ``window_queries`` on it. The only
  thing a zone's features read beyond its own series is the city total (the ``total_*``
  features, the city profile), a distributed group-by over periods; each partition gets it as
  one extra series, the rest of the city (the total minus its own zones), so the panel's total
  is the city's while its zone rows are exactly the single-machine panel's rows (same first
  period, same end). The fitted zone statistics are then taken zone by zone from the partition
  that holds the zone (``combine_featurizers``); the statistics every partition shares (the
  city profile, the window) must agree across partitions, and do.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import numpy.typing as npt
import pandas as pd

from features import schema as s
from features.demand import complete_demand, demand_from_deliveries
from features.demand_features import DemandFeatureSpec, DemandFeaturizer, DemandPanel, period

REST = "\x00rest-of-city"  # the rest-of-city series' zone id (a zone id is never this)
LABEL, ZONE, ORIGIN, TARGET = "_volume", "_zone_id", "_origin", "_target"
PER_ZONE_STATE = (
    "zone_mean_",
    "zone_profile_",
    "class_ratio_",
    "daytype_counts_",
    "daytype_profile_",
)  # DemandFeaturizer state with a row per zone


def _table_meta() -> pd.DataFrame:
    return pd.DataFrame(
        {
            s.ZONE_ID: pd.Series(dtype="string"),
            s.TS: pd.Series(dtype="datetime64[ns]"),
            s.VOLUME: pd.Series(dtype="float64"),
        }
    )


def demand_table_dask(
    deliveries: dd.DataFrame,
    freq: str,
    *,
    time_column: str = s.READY_TIME,
    npartitions: int | None = None,
) -> dd.DataFrame:
    """``demand_from_deliveries`` as a distributed group-by: the map per partition of
    deliveries, the combine (sums and zero-fill) per zone; partitioned by zone."""
    meta = _table_meta()
    counts = deliveries.map_partitions(
        demand_from_deliveries, freq, time_column=time_column, meta=meta
    )
    return by_zone(counts, freq, npartitions or deliveries.npartitions)


def demand_tables_dask(deliveries: dd.DataFrame, freqs: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Each frequency's demand table from deliveries on the cluster, brought here (zones x
    periods: small next to the deliveries), in ``demand_from_deliveries``' row order."""
    tables = dask.compute(*[demand_table_dask(deliveries, f) for f in freqs])
    return {
        f: t.sort_values([s.ZONE_ID, s.TS], kind="stable").reset_index(drop=True)
        for f, t in zip(freqs, tables, strict=True)
    }


def by_zone(table: dd.DataFrame | pd.DataFrame, freq: str, npartitions: int) -> dd.DataFrame:
    """A demand table with every zone's whole series in one partition (``complete_demand``
    per partition: duplicates summed, zero periods inside each zone's span filled)."""
    frame: dd.DataFrame = (
        dd.from_pandas(table, npartitions=max(1, min(npartitions, len(table))))
        if isinstance(table, pd.DataFrame)
        else table
    )
    shuffled = frame.shuffle(on=s.ZONE_ID, npartitions=npartitions)
    return shuffled.map_partitions(complete_demand, freq, meta=_table_meta())


def city_totals(table: dd.DataFrame, freq: str, before: pd.Timestamp) -> pd.Series:
    """The city's volume per period before ``before``, every period of its span (zero where no
    zone has a row: inside the span every known zone is zero there)."""
    ts = table[s.TS]
    total = table[ts < before].groupby(s.TS)[s.VOLUME].sum().compute().sort_index()
    if total.empty:
        raise ValueError("demand table: no volume before test_from")
    span = pd.date_range(total.index.min(), total.index.max(), freq=period(freq))
    return total.reindex(span, fill_value=0.0)


def with_rest(part: pd.DataFrame, totals: pd.Series) -> pd.DataFrame:
    """The partition's rows plus the rest of the city (the total minus these zones) at every
    period of the city's span: a panel of it has the single-machine panel's start, end and
    city total, and the partition's zone rows of the single-machine panel."""
    own = part.groupby(s.TS)[s.VOLUME].sum().reindex(totals.index, fill_value=0.0)
    rest = pd.DataFrame(
        {
            s.ZONE_ID: pd.array([REST] * len(totals), dtype="string"),
            s.TS: totals.index.to_numpy(),
            s.VOLUME: (totals - own).to_numpy(),
        }
    )
    return pd.concat([part, rest], ignore_index=True)


def _history(part: pd.DataFrame, before: pd.Timestamp) -> pd.DataFrame:
    return part[pd.to_datetime(part[s.TS]) < before]


def _fit_part(
    part: pd.DataFrame, totals: pd.Series, spec: DemandFeatureSpec, before: pd.Timestamp
) -> DemandFeaturizer | None:
    history = _history(part, before)
    if history.empty:
        return None
    return DemandFeaturizer(spec).fit(with_rest(history, totals))


def _fitted(f: DemandFeaturizer) -> list[str]:
    return sorted(k for k in vars(f) if k.endswith("_") and not k.startswith("_"))


def combine_featurizers(parts: list[DemandFeaturizer], spec: DemandFeatureSpec) -> DemandFeaturizer:
    """One featurizer from the partitions' fits: zone statistics from the partition holding the
    zone, the shared ones (city profile, window, spec) checked equal across partitions."""
    if not parts:
        raise ValueError("demand table: no zone has history before test_from")
    rows: list[tuple[str, int, int]] = []  # zone, part, row in that part
    for i, f in enumerate(parts):
        rows += [(str(z), i, j) for j, z in enumerate(f.zones_) if z != REST]
    rows.sort()
    out = DemandFeaturizer(spec)
    out.zones_ = pd.Index([z for z, _, _ in rows], dtype="string")
    for key in _fitted(parts[0]):
        if key == "zones_":
            continue
        if key in PER_ZONE_STATE:
            setattr(out, key, np.stack([getattr(parts[i], key)[j] for _, i, j in rows]))
            continue
        first = getattr(parts[0], key)
        for f in parts[1:]:
            if not _same(first, getattr(f, key)):
                raise ValueError(
                    f"{key}: differs between partitions; not state every zone shares (add it "
                    "to PER_ZONE_STATE if it has a row per zone)"
                )
        setattr(out, key, first)
    if hasattr(out, "daytype_counts_"):
        # each partition's low-rank shapes read its own zones (and the rest of the city as one
        # zone): the shapes are those of every zone together, as on one machine
        out.set_shapes()
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True))
    return bool(a == b)


def fit_featurizer_dask(
    table: dd.DataFrame, spec: DemandFeatureSpec, before: pd.Timestamp, totals: pd.Series
) -> DemandFeaturizer:
    """``DemandFeaturizer(spec).fit`` on the periods before ``before``, zone partition by zone
    partition (``table`` from ``by_zone``)."""
    parts = dask.compute(
        *[dask.delayed(_fit_part)(p, totals, spec, before) for p in table.to_delayed()]
    )
    return combine_featurizers([p for p in parts if p is not None], spec)


def partition_panel(
    part: pd.DataFrame, totals: pd.Series, spec: DemandFeatureSpec, before: pd.Timestamp
) -> DemandPanel | None:
    """The single-machine panel's rows of this partition's zones (and the rest of the city)."""
    history = _history(part, before)
    if history.empty:
        return None
    return DemandPanel.from_table(
        with_rest(history, totals), spec.freq, end=before, covariates=spec.covariates
    )


def feature_meta(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            **{n: np.empty(0, np.float32) for n in names},
            LABEL: np.empty(0, np.float64),
            ZONE: pd.Series(dtype="string"),
            ORIGIN: np.empty(0, np.int64),
            TARGET: np.empty(0, np.int64),
        }
    )


def feature_frame(
    featurizer: DemandFeaturizer, panel: DemandPanel, q: Any, names: list[str]
) -> pd.DataFrame:
    """Feature rows of queries ``q`` (the rest-of-city series' own rows left out), with the
    label, the zone and the origin/target period indices (the same on every partition: the
    panels share their start)."""
    q = q.take(np.asarray(panel.zones[q.zone] != REST, dtype=bool))
    if len(q) == 0:
        return feature_meta(names)
    out = pd.DataFrame(featurizer.transform(panel, q), columns=names)
    out[LABEL] = panel.values[q.zone, q.target]
    out[ZONE] = pd.array(panel.zones[q.zone], dtype="string")
    out[ORIGIN], out[TARGET] = q.origin, q.target
    return out


def sizes(frame: dd.DataFrame) -> npt.NDArray[np.int64]:
    return np.asarray(frame.map_partitions(len).compute(), dtype=np.int64)
