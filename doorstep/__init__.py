"""doorstep: per-stop ETAs and zone demand forecasts for last-mile delivery."""

__version__ = "0.1.0"
