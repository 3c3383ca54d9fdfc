"""Benchmark the prediction service on 127.0.0.1: latency, throughput, cold start, memory.

The baseline, measured in the same run, is the same work done in-process without HTTP: parse
the example's JSON into the request model, predict, serialise the response. Each HTTP figure
is reported beside its ratio to that baseline (these machines are shared and noisy; ratios
travel better than milliseconds).

Needs registered champions (run the main job first: ``./dev.sh demo --no-serve``). Load is
bounded in time and stays on 127.0.0.1. The load generator shares the machine's cores with the
server, so HTTP figures include its cost: ``wrk`` (C, one thread; ``apt-get install wrk``) is
used when installed, else a Python httpx client that needs several times more CPU per request.
The JSON records which one ran, and the load average (the machine may be shared).

    .venv/bin/python benchmarks/bench_serving.py [--seconds 15] [--workers 2 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.launch import free_port, model_cache_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
EXAMPLES = ROOT / "serving" / "examples"
TARGETS = {
    "p99_c1_ms": 20.0,
    "p99_c16_ms": 80.0,
    "http_overhead_ratio": 3.0,
    "matrix_100x100_ms": 200.0,
    "cold_start_s": 15.0,
}


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _matrix_body(n: int = 100) -> dict[str, Any]:
    ex = json.loads((EXAMPLES / "eta.json").read_text())
    rng = np.random.default_rng(0)
    base = np.array([[st["lat"], st["lng"]] for st in ex["stops"]])
    pts = base[rng.integers(0, len(base), n)] + rng.normal(0, 0.004, (n, 2))
    points = [{"lat": round(a, 6), "lng": round(b, 6)} for a, b in pts]
    return {
        "origins": points,
        "destinations": points,
        "departure_time": ex["courier"]["time"],
        "vehicle_type": ex["courier"]["vehicle_type"],
    }


def in_process(n: int) -> dict[str, Any]:
    """The baseline: the service's own code path minus HTTP, on one thread."""
    from doorstep.fast_trees import accelerate
    from serving.config import load_serving_config
    from serving.eta import EtaEngine
    from serving.loader import load_models
    from serving.schemas import EtaRequest, MatrixRequest

    models = load_models(load_serving_config())
    if models.eta is None or models.eta_info is None:
        sys.exit(f"no ETA model: {models.errors.get('eta')} (run ./dev.sh demo --no-serve first)")
    models.eta.num_threads = 1
    if models.eta.leg is not None:
        models.eta.leg.num_threads = 1
    trees = accelerate(models.eta)  # what the service does: compiled trees when cached
    engine = EtaEngine(models.eta, models.eta_info)
    body = (EXAMPLES / "eta.json").read_bytes()

    def timed(request: bytes) -> tuple[list[float], float]:
        """Milliseconds of what the /v1/eta endpoint does, minus HTTP, after a warm-up, and
        the CPU milliseconds per request (less distorted than wall time on a busy machine)."""
        for _ in range(30):
            engine.predict_json([EtaRequest.model_validate_json(request)])
        out = []
        cpu0 = time.process_time()
        for _ in range(n):
            t = time.perf_counter()
            engine.predict_json([EtaRequest.model_validate_json(request)])
            out.append((time.perf_counter() - t) * 1000)
        return out, (time.process_time() - cpu0) / n * 1000

    lat, cpu_ms = timed(body)
    # the unordered example runs the learned visit order too (its ranker and pair model)
    ubody = (EXAMPLES / "eta_unordered.json").read_bytes()
    ulat, _ = timed(ubody)
    mbody = json.dumps(_matrix_body()).encode()
    mlat = []
    for _ in range(20):
        t = time.perf_counter()
        engine.matrix(MatrixRequest.model_validate_json(mbody)).model_dump_json()
        mlat.append((time.perf_counter() - t) * 1000)
    n_stops = len(json.loads(body)["stops"])
    return {
        "eta_p50_ms": _pct(lat, 50),
        "eta_p99_ms": _pct(lat, 99),
        "eta_cpu_ms_per_request": cpu_ms,
        "eta_stops_per_s_one_thread": n_stops / (_pct(lat, 50) / 1000),
        "unordered_stops": len(json.loads(ubody)["stops"]),
        "unordered_p50_ms": _pct(ulat, 50),
        "unordered_p99_ms": _pct(ulat, 99),
        "matrix_100x100_p50_ms": _pct(mlat, 50),
        "model_version": models.eta_info.version,
        "compiled_boosters": trees.compiled,
        "lightgbm_boosters": trees.missing,
    }


def _tree_rss_mb(pid: int) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


async def _closed_loop(
    url: str, body: bytes, concurrency: int, seconds: float, max_requests: int | None = None
) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop and (max_requests is None or len(lat) < max_requests):
                t = time.perf_counter()
                r = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                if r.status_code != 200:
                    errors += 1
                    continue
                lat.append((time.perf_counter() - t) * 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "requests": len(lat),
        "errors": errors,
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "requests_per_s": len(lat) / wall,
    }


# wrk's closed loop (each connection sends its next request when the last is answered), the
# same as ``_closed_loop``; the summary comes back as one JSON line (latencies in us)
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("DOORSTEP_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %.1f, "p99_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def load_generator() -> str:
    """``wrk`` when installed (a C client steals far less CPU from the server), else httpx."""
    return "wrk" if shutil.which("wrk") else "httpx"


def _wrk(url: str, body: bytes, concurrency: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        script, body_file = Path(tmp) / "post.lua", Path(tmp) / "body.json"
        script.write_text(WRK_SCRIPT)
        body_file.write_bytes(body)
        argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s"]
        done = subprocess.run(
            [*argv, "--timeout", "30s", "-s", str(script), url],
            env={**os.environ, "DOORSTEP_BENCH_BODY": str(body_file)},
            capture_output=True,
            text=True,
            check=True,
        )
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    wall = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["errors"]
    return {
        "requests": ok,
        "errors": raw["errors"],
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "requests_per_s": ok / wall,
    }


def _load(
    generator: str, url: str, body: bytes, concurrency: int, seconds: float
) -> dict[str, Any]:
    if generator == "wrk":
        return _wrk(url, body, concurrency, seconds)
    cap = 3000 if concurrency == 1 else None
    return asyncio.run(_closed_loop(url, body, concurrency, seconds, max_requests=cap))


def over_http(seconds: float, workers: int, generator: str) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DOORSTEP_WORKERS": str(workers)}
    doorstep = Path(sys.executable).parent / "doorstep"
    log = open(Path(tempfile.gettempdir()) / "doorstep-bench-serve.log", "w")  # noqa: SIM115
    body = (EXAMPLES / "eta.json").read_bytes()
    n_stops = len(json.loads(body)["stops"])
    # the arbiter copies each pinned version into the model cache once; later starts reuse it
    cached = any(model_cache_dir().glob("eta-*/model-info.json"))
    t_launch = time.perf_counter()
    proc = subprocess.Popen(
        [str(doorstep), "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    try:
        cold = None
        while time.perf_counter() - t_launch < 120:
            try:
                r = httpx.post(
                    f"{base}/v1/eta",
                    content=body,
                    headers={"content-type": "application/json"},
                    timeout=5,
                )
                if r.status_code == 200:
                    cold = time.perf_counter() - t_launch
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                sys.exit(f"server exited: see {log.name}")
            time.sleep(0.05)
        if cold is None:
            sys.exit("server not answering after 120 s")
        # let every worker finish loading, and its background start-up work (the demand store
        # read, the planner's page warming its default view: seconds of CPU) end before timing
        time.sleep(10.0)
        url = f"{base}/v1/eta"
        _load(generator, url, body, 16, 3.0)  # warm every worker and connection
        c1 = _load(generator, url, body, 1, seconds)
        c16 = _load(generator, url, body, 16, seconds)
        mbody = json.dumps(_matrix_body()).encode()
        matrix = asyncio.run(_closed_loop(f"{base}/v1/eta/matrix", mbody, 1, 5.0, max_requests=50))
        rss = _tree_rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for res in (c1, c16):
        res["stops_per_s"] = res["requests_per_s"] * n_stops
    return {
        "workers": workers,
        "cold_start_s": cold,
        "model_cache_had_a_copy": cached,
        "c1": c1,
        "c16": c16,
        "matrix_100x100": matrix,
        "rss_mb": rss,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each load phase")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[os.cpu_count() or 1],
        help="worker counts to serve with; the first one's figures are the headline",
    )
    ap.add_argument("--generator", choices=("wrk", "httpx"), default=None, help="default: wrk")
    ap.add_argument("--n", type=int, default=500, help="in-process repetitions")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}")
    os.environ.setdefault("DOORSTEP_DEMAND_STORE", str(ROOT / "data" / "demand_hourly.parquet"))

    generator = args.generator or load_generator()
    load_before = os.getloadavg()
    base = in_process(args.n)
    runs = [over_http(args.seconds, w, generator) for w in args.workers]
    http = runs[0]
    ratio = http["c1"]["p50_ms"] / base["eta_p50_ms"]
    measured = {
        "p99_c1_ms": http["c1"]["p99_ms"],
        "p99_c16_ms": http["c16"]["p99_ms"],
        "http_overhead_ratio": ratio,
        "matrix_100x100_ms": http["matrix_100x100"]["p50_ms"],
        "cold_start_s": http["cold_start_s"],
    }
    result = {
        "what": "50-stop ordered /v1/eta (serving/examples/eta.json), 100x100 /v1/eta/matrix",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        # 1, 5 and 15 minute load averages: the machine is shared with other experiments
        "load_average_before": load_before,
        "load_generator": generator,
        "workers": http["workers"],
        "in_process": base,
        "http": http,
        "other_worker_counts": [
            {
                "workers": r["workers"],
                "cold_start_s": r["cold_start_s"],
                "c1_p99_ms": r["c1"]["p99_ms"],
                "c16_p50_ms": r["c16"]["p50_ms"],
                "c16_p99_ms": r["c16"]["p99_ms"],
                "c16_requests_per_s": r["c16"]["requests_per_s"],
            }
            for r in runs[1:]
        ],
        "ratios_to_in_process": {
            "c1_p50": ratio,
            "c1_p99": http["c1"]["p99_ms"] / base["eta_p99_ms"],
            "c16_p99": http["c16"]["p99_ms"] / base["eta_p99_ms"],
            "matrix_p50": http["matrix_100x100"]["p50_ms"] / base["matrix_100x100_p50_ms"],
        },
        "targets": {
            k: {"target": v, "measured": measured[k], "met": measured[k] <= v}
            for k, v in TARGETS.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("in-process 50-stop p50 / p99 (ms)", f"{base['eta_p50_ms']:.2f} / {base['eta_p99_ms']:.2f}", "1.0x"),
        (f"in-process {base['unordered_stops']}-stop unordered p50 / p99 (ms)",
         f"{base['unordered_p50_ms']:.2f} / {base['unordered_p99_ms']:.2f}",
         f"{base['unordered_p50_ms'] / base['eta_p50_ms']:.2f}x (p50)"),
        ("HTTP c=1 p50 / p99 (ms)", f"{http['c1']['p50_ms']:.2f} / {http['c1']['p99_ms']:.2f}", f"{ratio:.2f}x"),
        ("HTTP c=16 p50 / p99 (ms)", f"{http['c16']['p50_ms']:.2f} / {http['c16']['p99_ms']:.2f}",
         f"{result['ratios_to_in_process']['c16_p99']:.2f}x (p99)"),
        ("HTTP c=16 requests/s, stops/s", f"{http['c16']['requests_per_s']:.0f}, {http['c16']['stops_per_s']:.0f}",
         f"{http['c16']['stops_per_s'] / base['eta_stops_per_s_one_thread']:.2f}x one thread"),
        ("matrix 100x100 HTTP / in-process (ms)",
         f"{http['matrix_100x100']['p50_ms']:.1f} / {base['matrix_100x100_p50_ms']:.1f}",
         f"{result['ratios_to_in_process']['matrix_p50']:.2f}x"),
        ("cold start, launch to first 200 (s)", f"{http['cold_start_s']:.1f}", "-"),
        ("resident memory, all processes (MB)", f"{http['rss_mb']:.0f}" if http["rss_mb"] else "n/a", "-"),
    ]  # fmt: skip
    print(f"load generator {generator}, {http['workers']} workers, load average {load_before}")
    print(f"{'measure':40} {'value':>22} {'ratio':>22}")
    for name, value, r in rows:
        print(f"{name:40} {value:>22} {r:>22}")
    for k, v in result["targets"].items():
        print(
            f"target {k}: {v['measured']:.2f} <= {v['target']}: {'met' if v['met'] else 'NOT met'}"
        )
    for r in result["other_worker_counts"]:
        print(f"{r['workers']} workers: {r}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
