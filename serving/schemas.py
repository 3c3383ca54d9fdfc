"""The HTTP API's request and response models (pydantic): the service's public contract.

Validation happens here, before any model code runs, and every failure names its field:
pydantic reports a location such as ``stops.7.lat`` with the reason, and the service turns it
into a 400. Limits (stops per route, routes per batch, matrix size) are declared here so the
OpenAPI page shows them.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from features import schema as s
from features.eta_request import CourierState, RouteQuery, StopInput

MAX_STOPS = 1000
MAX_ROUTES = 500
MAX_POINTS = 1000  # origins or destinations of a matrix
MAX_CELLS = 250_000

Lat = Annotated[float, Field(ge=-90.0, le=90.0, description="WGS84 latitude, degrees")]
Lng = Annotated[float, Field(ge=-180.0, le=180.0, description="WGS84 longitude, degrees")]
Id = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    # an unknown field is most often a typo of an optional one: refuse it rather than ignore it
    model_config = ConfigDict(extra="forbid", frozen=True)


class Courier(_Strict):
    """Where and when the courier is now, and (optionally) what the route has done so far."""

    time: AwareDatetime = Field(description="now, with a UTC offset (e.g. +08:00)")
    lat: Lat
    lng: Lng
    courier_id: Id | None = Field(None, description="known couriers get their own pace")
    vehicle_type: str | None = Field(None, max_length=40, description="walk, bike, ebike, ...")
    route_started_at: AwareDatetime | None = Field(None, description="when the route left")
    stops_done: int | None = Field(None, ge=0, le=100_000)
    km_done: float | None = Field(None, ge=0.0, le=10_000.0)
    last_aoi_id: Id | None = None
    done_aoi_ids: list[str] | None = Field(
        None, max_length=100_000, description="areas of the stops done so far, in order"
    )
    depot_lat: Lat | None = None
    depot_lng: Lng | None = None
    route_id: Id | None = None

    @model_validator(mode="after")
    def _started_before_now(self) -> Courier:
        if self.route_started_at is not None and self.route_started_at > self.time:
            raise ValueError("route_started_at: after the courier's time")
        if (self.depot_lat is None) != (self.depot_lng is None):
            raise ValueError("depot_lat, depot_lng: give both or neither")
        return self

    def to_state(self) -> CourierState:
        return CourierState(
            time=self.time,
            lat=self.lat,
            lng=self.lng,
            courier_id=self.courier_id,
            vehicle_type=self.vehicle_type,
            route_started_at=self.route_started_at,
            stops_done=self.stops_done,
            km_done=self.km_done,
            last_aoi_id=self.last_aoi_id,
            done_aoi_ids=None if self.done_aoi_ids is None else tuple(self.done_aoi_ids),
            depot_lat=self.depot_lat,
            depot_lng=self.depot_lng,
            route_id=self.route_id,
        )


class Stop(_Strict):
    stop_id: Id
    lat: Lat
    lng: Lng
    zone_id: Id | None = Field(None, description="default: the H3 cell the model uses")
    aoi_id: Id | None = Field(None, description="building or area of interest")
    stop_type: str | None = Field(None, max_length=40)
    packages: int = Field(1, ge=1, le=10_000)
    ready_time: AwareDatetime | None = Field(None, description="parcel in the courier's hands")
    planned_arrival: AwareDatetime | None = Field(None, description="the routing engine's plan")
    # "booked": the response's window_start / window_end are the predicted P10-P90 window
    booked_window_start: AwareDatetime | None = Field(
        None, description="the customer's booked delivery slot: the courier may wait for it"
    )
    booked_window_end: AwareDatetime | None = Field(None, description="end of the booked slot")

    @model_validator(mode="after")
    def _window_order(self) -> Stop:
        start, end = self.booked_window_start, self.booked_window_end
        if start and end and end <= start:
            raise ValueError("booked_window_end: must be after booked_window_start")
        return self

    def to_input(self) -> StopInput:
        return StopInput(
            stop_id=self.stop_id,
            lat=self.lat,
            lng=self.lng,
            zone_id=self.zone_id,
            aoi_id=self.aoi_id,
            stop_type=self.stop_type,
            packages=self.packages,
            ready_time=self.ready_time,
            planned_arrival=self.planned_arrival,
            booked_window_start=self.booked_window_start,
            booked_window_end=self.booked_window_end,
        )


class EtaRequest(_Strict):
    """One route: the courier's state and the stops still to visit."""

    mode: Literal["ordered", "unordered"] = Field(
        "ordered", description="ordered: stops in the planned visiting order; unordered: a set"
    )
    courier: Courier
    stops: list[Stop] = Field(min_length=1, max_length=MAX_STOPS)

    @model_validator(mode="after")
    def _unique_stop_ids(self) -> EtaRequest:
        seen: dict[str, int] = {}
        for i, st in enumerate(self.stops):
            if st.stop_id in seen:
                raise ValueError(
                    f"stops.{i}.stop_id: duplicate stop id {st.stop_id!r} "
                    f"(also stops.{seen[st.stop_id]})"
                )
            seen[st.stop_id] = i
        return self

    def to_query(self) -> RouteQuery:
        return RouteQuery(self.courier.to_state(), [st.to_input() for st in self.stops])


class EtaBatchRequest(_Strict):
    routes: list[EtaRequest] = Field(min_length=1, max_length=MAX_ROUTES)


class Quantiles(BaseModel):
    p10: float
    p50: float
    p90: float


class StopEta(BaseModel):
    stop_id: str
    sequence: int = Field(description="position in the request's list, 0-based")
    eta_minutes: Quantiles = Field(description="minutes from the courier's time")
    arrival_time: dt.datetime = Field(description="expected arrival (P50), tz-aware")
    window_start: dt.datetime = Field(description="P10 arrival: the delivery window opens")
    window_end: dt.datetime = Field(description="P90 arrival: the delivery window closes")
    known_zone: bool = Field(description="false: the zone's profile fell back to the city's")


class ModelRef(BaseModel):
    name: str
    version: str | None
    feature_set: str


class EtaResponse(BaseModel):
    mode: str
    model: ModelRef
    known_courier: bool = Field(description="false: a cold-start pace was used")
    fallbacks: list[str] = Field(description="what was served from a fallback, if anything")
    stops: list[StopEta]


class EtaBatchResponse(BaseModel):
    routes: list[EtaResponse]


class Point(_Strict):
    lat: Lat
    lng: Lng


class MatrixRequest(_Strict):
    """Origins x destinations at a departure time: the matrix a routing solver asks for."""

    origins: list[Point] = Field(min_length=1, max_length=MAX_POINTS)
    destinations: list[Point] = Field(min_length=1, max_length=MAX_POINTS)
    departure_time: AwareDatetime
    vehicle_type: str | None = Field(None, max_length=40)

    @model_validator(mode="after")
    def _size(self) -> MatrixRequest:
        cells = len(self.origins) * len(self.destinations)
        if cells > MAX_CELLS:
            raise ValueError(f"origins x destinations: {cells:,} cells, at most {MAX_CELLS:,}")
        return self


class MatrixResponse(BaseModel):
    model: ModelRef
    departure_time: dt.datetime
    minutes: list[list[float]] = Field(description="minutes[i][j]: origin i to destination j")


class Observed(_Strict):
    zone_id: Id
    hour: int = Field(ge=0, le=23, description="local hour of the request's date")
    volume: float = Field(ge=0.0, le=1e7)


class DemandRequest(_Strict):
    """Zones and a date (local); optionally the volume observed so far that day."""

    date: dt.date
    zones: list[Id] | None = Field(None, max_length=10_000, description="default: every zone")
    observed: list[Observed] = Field(default_factory=list, max_length=240_000)
    cutoff_hour: int | None = Field(
        None,
        ge=0,
        le=23,
        description="re-plan from this local hour; default: after the last observed hour, else 0",
    )
    days: int = Field(7, ge=1, le=14, description="daily forecasts from the date on")

    @model_validator(mode="after")
    def _observed_before_cutoff(self) -> DemandRequest:
        seen: set[tuple[str, int]] = set()
        for i, ob in enumerate(self.observed):
            if self.cutoff_hour is not None and ob.hour >= self.cutoff_hour:
                raise ValueError(
                    f"observed.{i}.hour: {ob.hour} is not before cutoff_hour {self.cutoff_hour}"
                )
            if (ob.zone_id, ob.hour) in seen:
                raise ValueError(f"observed.{i}: duplicate zone_id and hour")
            seen.add((ob.zone_id, ob.hour))
        return self

    @property
    def cutoff(self) -> int:
        if self.cutoff_hour is not None:
            return self.cutoff_hour
        return max((ob.hour for ob in self.observed), default=-1) + 1


class Band(BaseModel):
    ts: dt.datetime
    p10: float
    p50: float
    p90: float


class ZoneDemand(BaseModel):
    zone_id: str
    known: bool = Field(description="false: no history for this zone; forecast 0 (fallback)")
    observed_today: float
    hourly: list[Band] = Field(description="the rest of the date, from the cutoff hour")
    daily: list[Band]


class DemandResponse(BaseModel):
    model: ModelRef
    date: dt.date
    cutoff_hour: int
    history_until: dt.datetime | None = Field(description="the last period in the demand store")
    zones: list[ZoneDemand]
    total_hourly: list[Band]
    total_daily: list[Band]


ERROR_EXAMPLE = {
    "error": "1 validation error",
    "detail": [{"loc": ["stops", 7, "lat"], "msg": "Input should be less than or equal to 90"}],
}

__all__ = [
    "ERROR_EXAMPLE",
    "MAX_STOPS",
    "DemandRequest",
    "DemandResponse",
    "EtaBatchRequest",
    "EtaBatchResponse",
    "EtaRequest",
    "EtaResponse",
    "MatrixRequest",
    "MatrixResponse",
    "s",
]
