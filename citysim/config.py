"""The city's configuration: frozen dataclasses, every default runs on one machine.

Load with ``doorstep.config.load_yaml(CityConfig, "configs/simulate.yaml")``; override the
top-level size with ``dataclasses.replace(cfg, days=..., couriers=..., seed=...)``.
The meaning of each parameter, and why it has its value, is in ``citysim/ASSUMPTIONS.md``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from features.schema import DEFAULT_H3_RESOLUTION, DEFAULT_TZ, StopType, VehicleType

# Vehicle and stop-type tables are indexed in these orders everywhere in the simulator.
VEHICLES: tuple[VehicleType, ...] = (
    VehicleType.WALK,
    VehicleType.BIKE,
    VehicleType.EBIKE,
    VehicleType.SCOOTER,
    VehicleType.CAR,
    VehicleType.VAN,
)
STOP_TYPES: tuple[StopType, ...] = (
    StopType.RESIDENTIAL,
    StopType.BUSINESS,
    StopType.LOCKER,
    StopType.SHOP,
    StopType.OTHER,
)


@dataclass(frozen=True)
class PerVehicle:
    """One number per vehicle type (speeds, mixes, sensitivities)."""

    walk: float
    bike: float
    ebike: float
    scooter: float
    car: float
    van: float

    def array(self) -> npt.NDArray[np.float64]:
        return np.array([getattr(self, v.value) for v in VEHICLES], dtype=np.float64)


@dataclass(frozen=True)
class PerStopType:
    """One number per stop type (service base times, per-parcel times)."""

    residential: float
    business: float
    locker: float
    shop: float
    other: float

    def array(self) -> npt.NDArray[np.float64]:
        return np.array([getattr(self, t.value) for t in STOP_TYPES], dtype=np.float64)


@dataclass(frozen=True)
class GeoConfig:
    """Where the city is and how its buildings are spread over H3 zones."""

    center_lat: float = 43.84
    center_lng: float = 126.55
    radius_km: float = 8.0
    core_radius_km: float = 2.5
    subcentres: int = 3
    buildings_per_km2_core: float = 70.0
    buildings_per_km2_edge: float = 2.5
    empty_zone_prob_edge: float = 0.35
    depots: int = 6
    entrances: int = 4
    entrance_spread_m: float = 15.0


@dataclass(frozen=True)
class DemandConfig:
    """Parcel orders per zone-hour: level, seasonality, calendar, trend and noise."""

    parcels_per_courier: float = 34.0
    weekly_residential: tuple[float, ...] = (1.0, 0.98, 0.97, 0.98, 1.0, 1.1, 1.15)
    weekly_business: tuple[float, ...] = (1.08, 1.06, 1.05, 1.05, 1.0, 0.42, 0.34)
    trend_per_year: float = 0.2
    zone_trend_sd_per_year: float = 0.25
    ar_phi: float = 0.75
    ar_sd: float = 0.1
    zone_day_sd: float = 0.12
    dispersion: float = 6.0
    holiday_factor: float = 0.55
    holiday_business_factor: float = 0.3
    rebound_factor: float = 1.25
    rebound_days: int = 2
    holiday_country: str = "CN"
    holidays: tuple[str, ...] = ()
    promo_days: tuple[str, ...] = ("06-18", "11-11")
    promo_factor: float = 1.8
    rain_factor: float = 1.06


@dataclass(frozen=True)
class WeatherConfig:
    """A two-state (dry / rain) Markov chain over days, and what rain does."""

    p_rain_after_dry: float = 0.2
    p_rain_after_rain: float = 0.55
    travel_factor: PerVehicle = field(
        default_factory=lambda: PerVehicle(1.1, 1.3, 1.25, 1.25, 1.15, 1.15)
    )
    service_factor: float = 1.08


@dataclass(frozen=True)
class FleetConfig:
    """Couriers: vehicles, speeds, personal pace, learning and absences."""

    speed_kmh: PerVehicle = field(
        default_factory=lambda: PerVehicle(4.8, 13.0, 18.0, 22.0, 24.0, 21.0)
    )
    overhead_min: PerVehicle = field(
        default_factory=lambda: PerVehicle(0.3, 0.5, 0.5, 0.6, 1.6, 2.0)
    )
    congestion_sensitivity: PerVehicle = field(
        default_factory=lambda: PerVehicle(0.05, 0.4, 0.5, 0.6, 1.0, 1.0)
    )
    mix_core: PerVehicle = field(
        default_factory=lambda: PerVehicle(0.12, 0.22, 0.5, 0.12, 0.03, 0.01)
    )
    mix_edge: PerVehicle = field(
        default_factory=lambda: PerVehicle(0.0, 0.05, 0.35, 0.2, 0.25, 0.15)
    )
    pace_sd: float = 0.18
    day_pace_sd: float = 0.06
    new_share: float = 0.12
    learning_gain: float = 0.3
    learning_days: float = 25.0
    absence_prob: float = 0.03
    holiday_absence_prob: float = 0.15
    reorder_habit_share: float = 0.12


@dataclass(frozen=True)
class RouteConfig:
    """Waves, the planner, the courier's deviations from it, and travel-time noise."""

    dispatch_hour: float = 8.0
    dispatch_sd_min: float = 8.0
    cutoff_hour: int = 12
    wave2_from_hour: int = 7
    van_hour: float = 12.75
    van_sd_min: float = 10.0
    handover_min: float = 4.0
    detour: float = 1.3
    detour_sd: float = 0.12
    planner_service_min: float = 3.0
    swap_sd: tuple[float, float] = (0.05, 0.5)
    reorder_prob_habit: float = 0.5
    reorder_prob: float = 0.02
    reverse_prob: float = 0.04
    leg_noise_sd: float = 0.28
    delay_prob: float = 0.02
    delay_mean_min: float = 12.0
    access_mean_min: float = 0.6
    intra_building_min: tuple[float, float] = (0.3, 1.2)
    late_route_share: float = 0.01
    late_dispatch_hour: float = 14.0


@dataclass(frozen=True)
class ServiceConfig:
    """Time at the door: by stop type, parcels and stairs, with noise."""

    base_min: PerStopType = field(default_factory=lambda: PerStopType(2.6, 2.2, 1.0, 1.8, 2.5))
    per_parcel_min: PerStopType = field(
        default_factory=lambda: PerStopType(0.6, 0.6, 0.35, 0.4, 0.5)
    )
    per_floor_min: float = 0.25
    elevator_per_floor_min: float = 0.04
    noise_sd: float = 0.35
    long_share: float = 0.002
    long_min: tuple[float, float] = (25.0, 75.0)
    unknown_label_share: float = 0.01


@dataclass(frozen=True)
class WindowConfig:
    """Customer time windows on a share of stops, and whether the courier waits for them."""

    share: float = 0.12
    slot_hours: int = 2
    first_slot_hour: int = 9
    last_slot_hour: int = 21
    plan_sd_min: float = 50.0
    wait_prob: float = 0.7
    max_wait_min: float = 20.0


@dataclass(frozen=True)
class OddConfig:
    """Records that ingest validation must catch, as a share of all stop rows."""

    share: float = 0.004
    teleport_km: tuple[float, float] = (30.0, 80.0)


@dataclass(frozen=True)
class CityConfig:
    """A seeded synthetic city: size, calendar, and every modelled effect."""

    days: int = 90
    couriers: int = 200
    seed: int = 7
    start_date: str = "2021-04-12"
    tz: str = DEFAULT_TZ
    h3_resolution: int = DEFAULT_H3_RESOLUTION
    geo: GeoConfig = field(default_factory=GeoConfig)
    demand: DemandConfig = field(default_factory=DemandConfig)
    weather: WeatherConfig = field(default_factory=WeatherConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    routes: RouteConfig = field(default_factory=RouteConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    odd: OddConfig = field(default_factory=OddConfig)

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days: must be >= 1, got {self.days}")
        if not 1 <= self.couriers < 100_000:
            raise ValueError(f"couriers: must be in 1..99999, got {self.couriers}")
        if not 0 <= self.h3_resolution <= 15:
            raise ValueError(f"h3_resolution: must be in 0..15, got {self.h3_resolution}")
        if len(self.demand.weekly_residential) != 7 or len(self.demand.weekly_business) != 7:
            raise ValueError("demand.weekly_*: need one factor per weekday (Monday first)")
        if not 0 < self.routes.wave2_from_hour <= self.routes.cutoff_hour <= 24:
            raise ValueError("routes: need 0 < wave2_from_hour <= cutoff_hour <= 24")
        if not 0 <= self.odd.share < 0.2:
            raise ValueError(f"odd.share: must be in [0, 0.2), got {self.odd.share}")
        self.start  # noqa: B018 -- validates the date early

    @property
    def start(self) -> dt.date:
        """The first simulated local day."""
        try:
            return dt.date.fromisoformat(str(self.start_date))
        except ValueError as exc:
            raise ValueError(f"start_date: expected YYYY-MM-DD, got {self.start_date!r}") from exc
