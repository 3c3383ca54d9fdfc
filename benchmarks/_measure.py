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
import queue
import resource
import time
import traceback
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


def _capped(target: Callable[..., None], cap_gb: float | None, *args: Any) -> None:
    """``target(*args)`` under an address-space cap of ``cap_gb`` GiB; a run that outgrows it
    puts its failure on the queue (``args[-1]``) instead of taking the machine down."""
    out = args[-1]
    if cap_gb is not None:
        # the soft limit only, so the handler below can lift it to report (a thread to start)
        resource.setrlimit(resource.RLIMIT_AS, (int(cap_gb * 2**30), resource.RLIM_INFINITY))
    start = time.perf_counter()
    try:
        target(*args)
    except Exception as e:  # MemoryError from numpy, LightGBMError(std::bad_alloc) from C++
        traceback.print_exc()
        if cap_gb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
        out.put({"failed": f"{type(e).__name__}: {str(e)[:200]}",
                 "failed_after_s": time.perf_counter() - start,
                 "driver_peak_rss_mb": peak_rss_mb(), "memory_cap_gb": cap_gb})  # fmt: skip


def in_fresh_process(
    target: Callable[..., None], *args: Any, cap_gb: float | None = None
) -> dict[str, Any]:
    """``target(*args, queue)`` in a spawned process (under ``cap_gb`` GiB of address space if
    given); what it puts on the queue, or a ``failed`` record if the process dies without."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_capped, args=(target, cap_gb, *args, q))
    start = time.perf_counter()
    p.start()
    while True:
        try:
            result: dict[str, Any] = q.get(timeout=10)
            break
        except queue.Empty:
            if not p.is_alive():
                result = {"failed": f"process died (exit code {p.exitcode})",
                          "failed_after_s": time.perf_counter() - start, "memory_cap_gb": cap_gb}  # fmt: skip
                break
    p.join()
    return result


def add_ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each finished run's wall seconds and rows/s as ratios to the baseline (the first finished
    pandas run, else the first finished run), which is returned; failed runs get none."""
    done = [r for r in runs if "failed" not in r]
    base = next((r for r in done if r["engine"] == "pandas"), (done or runs)[0])
    for r in done:
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
    return "/".join(f"{v:.0f}" for v in run.get("worker_peak_rss_mb", [])) or "-"
