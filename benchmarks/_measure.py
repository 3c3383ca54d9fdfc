"""Measurement helpers the engine benchmarks share (``bench_dask.py``, ``bench_dask_demand.py``).

Each run goes in a fresh process (``in_fresh_process``) so peak memory is the run's own; peak
resident memory of the driver and of each Dask worker; ratios to the baseline run measured in
the same invocation; the JSON payload. Imported as ``from _measure import ...``: the scripts run
as files, so their folder is on ``sys.path``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import platform
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_peak_rss_mb(client: Any) -> list[float]:
    """Each Dask worker's peak resident memory in MB."""
    rss = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return [float(v) for v in rss.values()]


def in_fresh_process(target: Callable[..., None], *args: Any) -> dict[str, Any]:
    """``target(*args, queue)`` in a spawned process; what it puts on the queue."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result: dict[str, Any] = q.get()
    p.join()
    return result


def add_ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each run's wall seconds and rows/s as ratios to the baseline (the first pandas run, else
    the first run), which is returned."""
    base = next((r for r in runs if r["engine"] == "pandas"), runs[0])
    for r in runs:
        r["wall_ratio_to_baseline"] = r["wall_s"] / base["wall_s"]
        r["rows_per_s_ratio_to_baseline"] = r["rows_per_s"] / base["rows_per_s"]
    return base


def write_results(path: Path, what: str, baseline: str, config: Any, runs: list[Any]) -> None:
    """The JSON every engine benchmark writes: what was measured, on which machine, against
    which baseline run, with which config (a dataclass), and the runs."""
    payload = {
        "what": what,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "baseline": baseline,
        "config": dataclasses.asdict(config),
        "runs": runs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def workers_cell(run: dict[str, Any]) -> str:
    """The workers' peak MB for the printed table, ``-`` for a run without workers."""
    return "/".join(f"{v:.0f}" for v in run["worker_peak_rss_mb"]) or "-"
