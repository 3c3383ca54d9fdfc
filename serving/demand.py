"""Demand answers: the configured demand store + what the planner observed today -> bands.

The lags need recent history; it comes from the demand store (the hourly Parquet table by
default), re-read whenever the file changes, so the pipeline that appends yesterday's volume
needs no restart. Volume observed so far today comes with the request, and the hourly model
re-plans the rest of the day from it (the intraday nowcast the model was trained for).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from doorstep.demand_bundle import DemandBundle
from features import schema as s
from features.demand import daily_from_hourly, read_demand_file, validate_demand
from serving.loader import ModelInfo
from serving.schemas import Band, DemandRequest, DemandResponse, ModelRef, ZoneDemand


class StoreUnavailable(RuntimeError):
    """The demand store cannot be read (503, with the reason)."""


@dataclass(frozen=True)
class StoreSnapshot:
    hourly: pd.DataFrame  # zone_id, ts (naive local), volume
    daily: pd.DataFrame
    zones: frozenset[str]
    last_ts: pd.Timestamp | None
    stamp: tuple[float, int]


class DemandStore:
    """The hourly demand table, cached until its file changes (mtime or size)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._snapshot: StoreSnapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> StoreSnapshot:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise StoreUnavailable(f"demand store {self.path}: {exc.strerror}") from exc
        stamp = (st.st_mtime, st.st_size)
        snap = self._snapshot
        if snap is not None and snap.stamp == stamp:
            return snap
        with self._lock:
            if self._snapshot is None or self._snapshot.stamp != stamp:
                self._snapshot = self._read(stamp)
            return self._snapshot

    def _read(self, stamp: tuple[float, int]) -> StoreSnapshot:
        raw = read_demand_file(self.path)
        hourly = validate_demand(raw, "h", where=str(self.path)).table
        daily = daily_from_hourly(hourly)
        last = hourly[s.TS].max() if len(hourly) else None
        zones = frozenset(hourly[s.ZONE_ID].astype(str).unique())
        return StoreSnapshot(hourly, daily, zones, None if pd.isna(last) else last, stamp)


@dataclass
class DemandEngine:
    bundle: DemandBundle
    info: ModelInfo
    store: DemandStore
    tz: str

    def __post_init__(self) -> None:
        self.ref = ModelRef(
            name=self.info.name, version=self.info.version, feature_set=self.info.feature_set
        )

    def _bands(self, frame: pd.DataFrame) -> list[Band]:
        ts = pd.DatetimeIndex(frame[s.TS]).tz_localize(
            self.tz, ambiguous=False, nonexistent="shift_forward"
        )
        return [
            Band(ts=t.to_pydatetime(), p10=round(a, 3), p50=round(b, 3), p90=round(c, 3))
            for t, a, b, c in zip(
                ts,
                frame["p10"].tolist(),
                frame["p50"].tolist(),
                frame["p90"].tolist(),
                strict=True,
            )
        ]

    def forecast(self, req: DemandRequest) -> DemandResponse:
        snap = self.store.snapshot()
        day = pd.Timestamp(req.date)
        cutoff = req.cutoff
        origin = day + pd.Timedelta(hours=cutoff)
        hourly = snap.hourly[snap.hourly[s.TS] < (day if req.observed else origin)]
        observed = pd.DataFrame(
            {
                s.ZONE_ID: [o.zone_id for o in req.observed],
                s.TS: [day + pd.Timedelta(hours=o.hour) for o in req.observed],
                s.VOLUME: [o.volume for o in req.observed],
            }
        ).astype({s.ZONE_ID: "string", s.TS: "datetime64[ns]", s.VOLUME: "float64"})
        history = pd.concat([hourly, observed], ignore_index=True) if req.observed else hourly
        today = history[history[s.TS] >= day]
        so_far = today.groupby(s.ZONE_ID)[s.VOLUME].sum().to_dict()
        if cutoff < 24:
            zone_h = self.bundle.forecast(history, origin, None, freq="h")
            total_h = self.bundle.total(zone_h, freq="h")
        else:
            zone_h = total_h = pd.DataFrame(columns=[s.ZONE_ID, s.TS, "p10", "p50", "p90"])
        daily = snap.daily[snap.daily[s.TS] < day]
        zone_d = self.bundle.forecast(daily, day, req.days, freq="d")
        total_d = self.bundle.total(zone_d, freq="d")

        wanted = req.zones if req.zones is not None else sorted(zone_d[s.ZONE_ID].unique())
        by_zone_h = {str(z): g for z, g in zone_h.groupby(s.ZONE_ID, sort=False)}
        by_zone_d = {str(z): g for z, g in zone_d.groupby(s.ZONE_ID, sort=False)}
        # a zone with no history: nothing says parcels will come, so 0 (flagged as unknown)
        zero_h = total_h.assign(p10=0.0, p50=0.0, p90=0.0)
        zero_d = total_d.assign(p10=0.0, p50=0.0, p90=0.0)
        zones = []
        for z in wanted:
            known = z in by_zone_d
            zones.append(
                ZoneDemand(
                    zone_id=z,
                    known=known,
                    observed_today=float(so_far.get(z, 0.0)),
                    hourly=self._bands(by_zone_h.get(z, zero_h)),
                    daily=self._bands(by_zone_d[z] if known else zero_d),
                )
            )
        last = snap.last_ts
        return DemandResponse(
            model=self.ref,
            date=req.date,
            cutoff_hour=cutoff,
            history_until=None
            if last is None
            else pd.Timestamp(last).tz_localize(self.tz, ambiguous=False).to_pydatetime(),
            zones=zones,
            total_hourly=self._bands(total_h),
            total_daily=self._bands(total_d),
        )
