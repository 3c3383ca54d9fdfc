"""citysim: a seeded synthetic city of last-mile deliveries (see ASSUMPTIONS.md).

>>> from citysim import CityConfig, simulate
>>> res = simulate(CityConfig(days=7, couriers=20, seed=1))  # doctest: +SKIP
"""

from citysim.city import City
from citysim.config import CityConfig
from citysim.engine import SimResult, SimSummary, simulate, simulate_to_parquet

__all__ = ["City", "CityConfig", "SimResult", "SimSummary", "simulate", "simulate_to_parquet"]
