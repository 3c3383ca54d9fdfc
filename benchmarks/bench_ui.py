"""Benchmark the planner's page: first render (navigation start to the zone map drawn) in a
real headless Chromium against a real ``doorstep serve`` on 127.0.0.1.

The page marks the moment its map is drawn (``performance.mark("map-drawn")`` and
``document.body.dataset.rendered``). Measured in one run:

* ``first_visit``: a fresh browser's first load after the service is ready (the default view,
  whose forecast the service computes in the background at start-up);
* ``uncached_view``: a (date, hour) the service has not forecast yet, so the forecast is part
  of the render;
* ``repeat``: reloads of the default view (forecast cached, static files in the browser cache);
* ``blank``: the baseline, a blank static page (served by Python's ``http.server``) that sets the
  same mark when its DOM is ready: what any page costs in this browser on this machine.

Target (issue 7): first render under 1 s with the demo city's zones. Needs registered
champions (``./dev.sh demo --no-serve``) and Debian's ``chromium`` + ``chromium-driver``.

    .venv/bin/python benchmarks/bench_ui.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from serving.launch import local_server

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ui.json"
TARGET_MS = 1000.0
BLANK = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>blank</title>
<link rel="icon" href="data:,"></head><body><script>
document.addEventListener("DOMContentLoaded", () => {
  performance.mark("map-drawn");
  document.body.dataset.rendered = performance.now().toFixed(1);
});
</script></body></html>
"""


@dataclass(frozen=True)
class Render:
    rendered_ms: float  # navigation start to the mark
    dom_ms: float  # navigation start to DOMContentLoaded
    zones: int  # polygons on the map


@contextmanager
def serve(workers: int, log_path: Path) -> Iterator[str]:
    """``doorstep serve`` on a free port until ``/readyz`` answers 200."""
    try:
        with local_server({}, log_path, workers=workers, timeout_s=120) as base:
            yield base
    except RuntimeError as exc:
        sys.exit(f"the service did not start: {exc}")


@contextmanager
def blank_site() -> Iterator[str]:
    """The baseline page on its own static server."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "blank.html").write_text(BLANK)
        handler = functools.partial(_QuietHandler, directory=tmp)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/blank.html"
        finally:
            server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        sys.exit("no chromium + chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    return webdriver.Chrome(service=Service(driver), options=options)


def load(driver: Any, url: str) -> Render:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body && document.body.dataset.rendered")
    )
    values = driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0];"
        "return [Number(document.body.dataset.rendered), n.domContentLoadedEventEnd,"
        " document.querySelectorAll('#zones polygon').length];"
    )
    return Render(round(float(values[0]), 1), round(float(values[1]), 1), int(values[2]))


def summary(renders: list[Render]) -> dict[str, Any]:
    ms = sorted(r.rendered_ms for r in renders)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 1),
        "max_ms": round(ms[-1], 1),
        "dom_median_ms": round(statistics.median(r.dom_ms for r in renders), 1),
        "zones": renders[0].zones,
    }


def run(repeats: int, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, serve(workers, Path(tmp) / "serve.log") as base:
        first_driver = browser()
        try:
            # right after /readyz: the default view's forecast, started in the background at
            # start-up, may still be running; this is what the first visitor sees
            first = load(first_driver, f"{base}/ui/")
        finally:
            first_driver.quit()
        zones = httpx.get(f"{base}/ui/api/zones", timeout=60).json()
        if "error" in zones or not zones.get("forecast"):
            sys.exit(f"no demand forecast to draw: {zones.get('error') or zones.get('message')}")
        models = httpx.get(f"{base}/v1/model-info", timeout=10).json()["models"]
        driver = browser()
        try:
            uncached_hour = (zones["hour"] + 12) % 24
            uncached = load(driver, f"{base}/ui/?date={zones['date']}&hour={uncached_hour}")
            repeat = [load(driver, f"{base}/ui/") for _ in range(repeats)]
            with blank_site() as blank_url:
                blank = [load(driver, blank_url) for _ in range(repeats)]
        finally:
            driver.quit()
    rep, base_line = summary(repeat), summary(blank)
    return {
        "benchmark": "ui_first_render",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "data": {
            "zones_in_forecast": len(zones["zones"]),
            "date": zones["date"],
            "hour": zones["hour"],
            "live": zones["live"],
            "demand_store": models.get("demand", {}).get("store"),
        },
        "models": {
            k: {f: m.get(f) for f in ("name", "version", "source", "training_window")}
            for k, m in models.items()
        },
        "first_visit": asdict(first),
        "uncached_view": asdict(uncached),
        "repeat": rep,
        "blank": base_line,
        "ratio_repeat_to_blank": round(rep["median_ms"] / base_line["median_ms"], 2),
        "ratio_first_to_blank": round(first.rendered_ms / base_line["median_ms"], 2),
        "target_ms": TARGET_MS,
        "target_met": first.rendered_ms < TARGET_MS and rep["p90_ms"] < TARGET_MS,
    }


def table(result: dict[str, Any]) -> str:
    blank = result["blank"]["median_ms"]
    rows = [
        ("first visit (fresh browser)", result["first_visit"]["rendered_ms"]),
        ("uncached (date, hour)", result["uncached_view"]["rendered_ms"]),
        (f"repeat, median of {result['repeat']['n']}", result["repeat"]["median_ms"]),
        ("repeat, p90", result["repeat"]["p90_ms"]),
        (f"blank page, median of {result['blank']['n']}", blank),
    ]
    lines = ["| load | to map drawn (ms) | x blank |", "|---|---:|---:|"]
    lines += [f"| {name} | {ms:.0f} | {ms / blank:.1f} |" for name, ms in rows]
    zones = result["repeat"]["zones"]
    met = "met" if result["target_met"] else "NOT met"
    lines.append(f"\n{zones} zones drawn; target first render < {TARGET_MS:.0f} ms: {met}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.repeats, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
