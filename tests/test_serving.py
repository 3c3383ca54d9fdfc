"""The BentoML service at three levels: the service class called directly, the ASGI app, and a
real ``doorstep serve`` process on 127.0.0.1 answering the README's example requests.

Tiny ETA and demand models are trained and registered once per module in a throwaway MLflow
store; the demand store is a synthetic hourly table that ends the day before the committed
demand example's date, with the example's zones among its zones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from starlette.testclient import TestClient

from features import schema as s
from tests.synth import make_deliveries
from tests.test_demand_model import synthetic

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "serving" / "examples"
ROUTES = {
    "eta.json": "/v1/eta",
    "eta_unordered.json": "/v1/eta",
    "eta_matrix.json": "/v1/eta/matrix",
    "demand.json": "/v1/demand",
}
JSON = {"content-type": "application/json"}


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def _demand_store(path: Path) -> pd.DataFrame:
    """Synthetic hourly volume ending the day before the demand example's date, in its zones."""
    demand = example("demand.json")
    table = synthetic("h", zones=5, days=36, seed=4)
    end = pd.Timestamp(demand["date"]) - pd.Timedelta(hours=1)
    table[s.TS] = table[s.TS] + (end - table[s.TS].max())
    names = {f"z{i}": z for i, z in enumerate(demand["zones"])}
    table[s.ZONE_ID] = table[s.ZONE_ID].map(lambda z: names.get(z, z))
    table.to_parquet(path, index=False)
    return table


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Env of a throwaway registry holding tiny doorstep-eta and doorstep-demand champions."""
    from tests.test_pipeline_demand import TINY as TINY_DEMAND
    from tests.test_pipeline_eta import LOOSE, TINY, TINY_LEG
    from training.pipeline_demand import train_and_register_demand
    from training.pipeline_eta import train_and_register_eta

    tmp = tmp_path_factory.mktemp("serving")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "DOORSTEP_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "DOORSTEP_DEMAND_STORE": str(tmp / "demand_hourly.parquet"),
        "DOORSTEP_MODEL_CACHE": str(tmp / "model-cache"),  # the launcher's local copies
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("DOORSTEP_API_KEY", raising=False)
        deliveries = make_deliveries(days=30, couriers=3, stops=7, seed=5)
        eta = train_and_register_eta(
            deliveries, TINY, data_source="synth", gate=LOOSE, leg_config=TINY_LEG
        )
        assert eta.version == "1"
        hourly = _demand_store(tmp / "demand_hourly.parquet")
        daily = hourly.assign(**{s.TS: hourly[s.TS].dt.floor("D")})
        daily = daily.groupby([s.ZONE_ID, s.TS], as_index=False)[s.VOLUME].sum()
        demand = train_and_register_demand(hourly, daily, TINY_DEMAND, data_source="synth")
        assert demand.version == "1"
        yield env


@pytest.fixture(scope="module")
def service(registry: dict[str, str]) -> Iterator[Any]:
    from serving.service import Doorstep

    with pytest.MonkeyPatch.context() as mp:
        for k, v in registry.items():
            mp.setenv(k, v)
        yield Doorstep()


@pytest.fixture(scope="module")
def client(registry: dict[str, str]) -> Iterator[TestClient]:
    from serving.service import Doorstep

    with pytest.MonkeyPatch.context() as mp:
        for k, v in registry.items():
            mp.setenv(k, v)
        with TestClient(Doorstep.to_asgi()) as c:
            yield c


# --- level 1: the service class called directly --------------------------------------------


def test_service_loads_both_champions_and_is_ready(service: Any) -> None:
    info = service.info()
    assert info["ready"] is True and info["errors"] == {}
    assert info["models"]["eta"]["version"] == "1"
    assert info["models"]["eta"]["alias"] == "champion"
    assert info["models"]["eta"]["feature_set"] == "eta_v6"
    assert info["models"]["demand"]["name"] == "doorstep-demand"
    assert info["models"]["eta"]["training_window"][0] < info["models"]["eta"]["training_window"][1]
    assert any(k.endswith("model.mae_min") for k in info["models"]["eta"]["metrics"])


def test_direct_ordered_eta_is_monotone_with_windows(service: Any) -> None:
    from serving.schemas import EtaRequest, EtaResponse

    req = EtaRequest.model_validate(example("eta.json"))
    resp = EtaResponse.model_validate_json(asyncio.run(service.eta(req)).body)  # the contract
    assert [x.stop_id for x in resp.stops] == [x.stop_id for x in req.stops]
    p10 = np.array([x.eta_minutes.p10 for x in resp.stops])
    p50 = np.array([x.eta_minutes.p50 for x in resp.stops])
    p90 = np.array([x.eta_minutes.p90 for x in resp.stops])
    assert (p10 <= p50).all() and (p50 <= p90).all() and (p10 >= 0).all()
    assert (np.diff(p50) >= -1e-9).all()  # never earlier further along the plan
    first = resp.stops[0]
    assert first.arrival_time.utcoffset() is not None
    assert first.window_start <= first.arrival_time <= first.window_end
    t0 = req.courier.time
    assert abs((first.arrival_time - t0).total_seconds() / 60 - first.eta_minutes.p50) < 0.02
    # the example's courier and zones come from another city than the tiny model's
    assert resp.known_courier is False and "courier_pace" in resp.fallbacks
    assert resp.model.name == "doorstep-eta" and resp.model.version == "1"


def test_direct_answers_equal_the_bundle_on_the_training_features(
    service: Any, registry: dict[str, str]
) -> None:
    """One code path: the service's numbers are the bundle's prediction for the same routes
    built by ``requests_from_deliveries`` (whose features equal the training rows: see
    tests/test_eta_features.py)."""
    from features.eta_queries import queries_from_deliveries
    from features.eta_request import requests_from_deliveries
    from serving.schemas import Courier, EtaRequest, EtaResponse, Stop

    deliveries = make_deliveries(days=30, couriers=3, stops=7, seed=5)
    last = deliveries[deliveries[s.DISPATCH_TIME] >= deliveries[s.DISPATCH_TIME].max().normalize()]
    routes = requests_from_deliveries(last)[:5]
    bundle = service.eta_engine.bundle
    history = queries_from_deliveries(last)
    expected = bundle.predict(history, "unordered")
    key = {
        (sid, round(history.q_time[q], 3)): i
        for i, (sid, q) in enumerate(zip(history.t_stop_id, history.t_query, strict=True))
    }
    for route in routes:
        req = EtaRequest(
            mode="unordered",
            courier=Courier(
                **{f.name: getattr(route.state, f.name) for f in dataclasses.fields(route.state)}
            ),
            stops=[Stop(**dataclasses.asdict(st)) for st in route.stops],
        )
        resp = EtaResponse.model_validate_json(asyncio.run(service.eta(req)).body)
        t = round(route.state.time.timestamp(), 3)
        for st in resp.stops:
            i = key[(st.stop_id, t)]
            assert st.eta_minutes.p50 == pytest.approx(expected.p50[i], abs=0.006)
            assert st.eta_minutes.p90 == pytest.approx(expected.p90[i], abs=0.006)


def test_requests_are_batched_as_their_copied_route_queries() -> None:
    """The engine hands the request models to ``build_batch`` without copying them into
    ``RouteQuery`` dataclasses: the batch must be the same, field by field."""
    from features.eta_queries import QueryBatch
    from features.eta_request import ZoneResolver, build_batch
    from serving.eta import _route
    from serving.schemas import EtaRequest

    body = dict(ETA)
    body["courier"] = {**ETA["courier"], "done_aoi_ids": ["B001138", "B001143"], "stops_done": 2}
    body["stops"] = [dict(st) for st in ETA["stops"]]
    body["stops"][3] |= {"ready_time": ETA["courier"]["time"], "zone_id": "z-1"}
    body["stops"][4] |= {"planned_arrival": "2021-06-10T09:00:00+08:00"}
    req = EtaRequest.model_validate(body)
    zones = ZoneResolver()
    direct = build_batch([_route(req)], "Asia/Shanghai", zones)
    copied = build_batch([req.to_query()], "Asia/Shanghai", zones)
    for f in dataclasses.fields(QueryBatch):
        a, b = getattr(direct, f.name), getattr(copied, f.name)
        assert a.dtype == b.dtype, f.name
        if a.dtype == object:
            assert a.tolist() == b.tolist(), f.name
        else:
            np.testing.assert_array_equal(a, b, err_msg=f.name)


def test_direct_matrix_and_demand(service: Any) -> None:
    from serving.schemas import DemandRequest, MatrixRequest

    m = asyncio.run(service.eta_matrix(MatrixRequest.model_validate(example("eta_matrix.json"))))
    ex = example("eta_matrix.json")
    assert len(m.minutes) == len(ex["origins"]) and len(m.minutes[0]) == len(ex["destinations"])
    assert all(v >= 0 for row in m.minutes for v in row)
    d = asyncio.run(service.demand(DemandRequest.model_validate(example("demand.json"))))
    ex = example("demand.json")
    assert [z.zone_id for z in d.zones] == ex["zones"] and all(z.known for z in d.zones)
    assert d.cutoff_hour == 12
    for z in d.zones:
        assert [b.ts.hour for b in z.hourly] == list(range(12, 24))
        assert len(z.daily) == ex["days"]
        assert all(b.p10 <= b.p50 <= b.p90 for b in z.hourly + z.daily)
        observed = sum(o["volume"] for o in ex["observed"] if o["zone_id"] == z.zone_id)
        assert z.observed_today == pytest.approx(observed)
    assert len(d.total_daily) == ex["days"]


def test_direct_demand_unknown_zone_is_flagged_not_refused(service: Any) -> None:
    from serving.schemas import DemandRequest

    body = {**example("demand.json"), "zones": ["nowhere", example("demand.json")["zones"][0]]}
    d = asyncio.run(service.demand(DemandRequest.model_validate(body)))
    unknown, known = d.zones
    assert unknown.known is False and all(b.p90 == 0 for b in unknown.daily)
    assert known.known is True


def test_intraday_replan_uses_the_observed_volume(service: Any) -> None:
    """A morning twice as busy as usual raises the afternoon's forecast."""
    from serving.schemas import DemandRequest

    ex = example("demand.json")
    zone = ex["zones"][0]
    base = {"date": ex["date"], "zones": [zone], "cutoff_hour": 12}
    usual = asyncio.run(service.demand(DemandRequest.model_validate({**base, "observed": [
        o for o in ex["observed"] if o["zone_id"] == zone
    ]})))  # fmt: skip
    busy = asyncio.run(service.demand(DemandRequest.model_validate({**base, "observed": [
        {**o, "volume": 3 * o["volume"] + 5} for o in ex["observed"] if o["zone_id"] == zone
    ]})))  # fmt: skip
    usual_rest = sum(b.p50 for b in usual.zones[0].hourly)
    busy_rest = sum(b.p50 for b in busy.zones[0].hourly)
    assert busy_rest > usual_rest


# --- level 2: over ASGI ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_asgi_examples_answer(client: TestClient, name: str) -> None:
    r = client.post(ROUTES[name], content=(EXAMPLES / name).read_bytes(), headers=JSON)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] in ("doorstep-eta", "doorstep-demand")


def test_asgi_batch_keeps_order_and_modes(client: TestClient) -> None:
    routes = [example("eta_unordered.json"), example("eta.json")]
    r = client.post("/v1/eta/batch", json={"routes": routes})
    assert r.status_code == 200, r.text
    from serving.schemas import EtaBatchResponse

    EtaBatchResponse.model_validate_json(r.content)  # the body honours the documented model
    out = r.json()["routes"]
    assert [x["mode"] for x in out] == ["unordered", "ordered"]
    assert [len(x["stops"]) for x in out] == [len(routes[0]["stops"]), len(routes[1]["stops"])]
    single = client.post("/v1/eta", json=routes[1]).json()
    assert single["stops"] == out[1]["stops"]


def _bad(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(body))
    target = body
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DELETE = object()
ETA = example("eta.json")


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (_bad(ETA, ["stops", 7, "lat"], 91.0), "stops.7.lat", "less than or equal to 90"),
        (_bad(ETA, ["stops", 3, "lng"], -190), "stops.3.lng", "greater than or equal to -180"),
        (_bad(ETA, ["courier", "time"], "2021-06-10T07:53:52"), "courier.time", "timezone"),
        (_bad(ETA, ["stops"], []), "stops", "at least 1"),
        (_bad(ETA, ["stops"], ETA["stops"] * 21), "stops", "at most 1000"),
        (
            _bad(ETA, ["stops", 5, "stop_id"], ETA["stops"][2]["stop_id"]),
            "stops.5.stop_id",
            "duplicate",
        ),
        (_bad(ETA, ["mode"], "shortest"), "mode", "'ordered' or 'unordered'"),
        (_bad(ETA, ["courier", "lat"], _DELETE), "courier.lat", "required"),
        (_bad(ETA, ["stops", 0, "packages"], 0), "stops.0.packages", "greater than or equal to 1"),
        (_bad(ETA, ["stops", 0, "colour"], "red"), "stops.0.colour", "not permitted"),
        (
            _bad(
                _bad(ETA, ["stops", 2, "booked_window_start"], "2021-06-10T12:00:00+08:00"),
                ["stops", 2, "booked_window_end"],
                "2021-06-10T11:00:00+08:00",
            ),
            "stops.2",
            "booked_window_end: must be after booked_window_start",
        ),
    ],
    ids=[
        "lat",
        "lng",
        "naive",
        "empty",
        "too-many",
        "duplicate",
        "mode",
        "missing",
        "packages",
        "extra",
        "window",
    ],
)
def test_asgi_bad_eta_requests_are_400_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str, words: str
) -> None:
    r = client.post("/v1/eta", json=body)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    where = [".".join(str(p) for p in d["loc"]) for d in detail]
    text = " ".join(d["msg"] for d in detail)
    assert field in where or field in text, (where, text)
    assert words in text


def test_asgi_malformed_json_and_wrong_shapes_are_400(client: TestClient) -> None:
    for content in (b'{"mode": "ordered", "stops": [', b"[1, 2]", b"", b"null"):
        r = client.post("/v1/eta", content=content, headers=JSON)
        assert r.status_code == 400, (content, r.status_code, r.text)
        assert "error" in r.json()


def test_asgi_bad_matrix_and_demand_requests(client: TestClient) -> None:
    m = example("eta_matrix.json")
    r = client.post("/v1/eta/matrix", json={**m, "departure_time": "2021-06-10T08:00:00"})
    assert r.status_code == 400 and "departure_time" in r.text
    r = client.post("/v1/eta/matrix", json={**m, "origins": [{"lat": 0, "lng": 0}] * 1001})
    assert r.status_code == 400 and "origins" in r.text
    d = example("demand.json")
    r = client.post("/v1/demand", json={**d, "cutoff_hour": 5})
    assert r.status_code == 400 and "observed" in r.text and "cutoff_hour" in r.text
    r = client.post("/v1/demand", json={**d, "date": "2030-01-01", "observed": []})
    assert r.status_code == 422 and "date" in r.json()["error"]


def test_asgi_health_ready_info_docs(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/model-info", follow_redirects=False)
    assert info.status_code == 200 and info.json()["models"]["eta"]["version"] == "1"
    spec = client.get("/docs.json").json()
    for route in ("/v1/eta", "/v1/eta/batch", "/v1/eta/matrix", "/v1/demand"):
        assert route in spec["paths"], route
    # the planner's page is mounted as a deferred app (built in the worker): it still answers
    page = client.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    models = client.get("/ui/api/models")
    assert models.status_code == 200 and models.json()["models"]["eta"]["version"] == "1"


def test_api_key_guards_the_v1_routes(client: TestClient) -> None:
    """The service installs ``ApiKeyMiddleware`` unconditionally; it reads the key from the
    configuration when the app is built. One BentoML app per process (its Prometheus metrics
    register once), so the built app is wrapped again here with a key in the environment."""
    from serving.asgi import ApiKeyMiddleware
    from serving.service import Doorstep

    assert any(m is ApiKeyMiddleware for m, _ in Doorstep.middlewares)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOORSTEP_API_KEY", "s3cret")
        guarded = TestClient(ApiKeyMiddleware(client.app))
    assert guarded.post("/v1/eta", json=ETA).status_code == 401
    assert guarded.post("/v1/eta", json=ETA, headers={"x-api-key": "nope"}).status_code == 401
    assert guarded.post("/v1/eta", json=ETA, headers={"x-api-key": "s3cret"}).status_code == 200
    assert (
        guarded.get("/v1/model-info", headers={"authorization": "Bearer s3cret"}).status_code == 200
    )
    assert guarded.get("/healthz").status_code == 200  # probes stay open


def test_service_without_models_is_not_ready(tmp_path: Path) -> None:
    from serving.schemas import EtaRequest
    from serving.service import Doorstep

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
        mp.setenv("DOORSTEP_ARTIFACT_ROOT", str(tmp_path / "a"))
        svc = Doorstep()
    assert svc.__is_ready__() is False
    assert "eta" in svc.info()["errors"]
    r = asyncio.run(svc.eta(EtaRequest.model_validate(ETA)))
    assert r.status_code == 503 and b"not loaded" in r.body


# --- level 3: a real `doorstep serve` process --------------------------------------------------


@pytest.mark.slow
def test_real_process_answers_the_readme_examples(registry: dict[str, str], tmp_path: Path) -> None:
    from serving.launch import local_server

    with local_server(registry, tmp_path / "serve.log") as base:
        readme = (ROOT / "README.md").read_text()
        for name, route in ROUTES.items():
            assert f"{route} " in readme and f"@serving/examples/{name}" in readme, name
            r = httpx.post(f"{base}{route}", content=(EXAMPLES / name).read_bytes(), headers=JSON)
            assert r.status_code == 200, (name, r.text)
        info = httpx.get(f"{base}/v1/model-info").json()
        assert info["models"]["eta"]["version"] == "1" and info["ready"] is True
        r = httpx.post(f"{base}/v1/eta", json=_bad(ETA, ["stops", 7, "lat"], 91.0))
        assert r.status_code == 400 and "stops" in r.text
        metrics = httpx.get(f"{base}/metrics").text
        assert "bentoml_service_request" in metrics
        logs = (tmp_path / "serve.log").read_text()
        # no raw coordinates or courier ids in the logs by default
        assert ETA["courier"]["courier_id"] not in logs
        assert str(ETA["stops"][0]["lat"]) not in logs


def test_packed_models_load_without_the_registry(registry: dict[str, str], tmp_path: Path) -> None:
    """``doorstep build`` packs the champions; a Bento then loads them with no registry."""
    from serving.config import ServingConfig, load_serving_config
    from serving.loader import load_models
    from serving.pack import pack_models

    with pytest.MonkeyPatch.context() as mp:
        for k, v in registry.items():
            mp.setenv(k, v)
        packed = pack_models(load_serving_config(), tmp_path / "packed")
    assert packed.versions == {"eta": "1", "demand": "1"} and packed.skipped == {}
    offline = ServingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'absent.db'}", packed_dir=str(packed.directory)
    )
    models = load_models(offline)
    assert models.errors == {}
    assert models.eta_info is not None and models.eta_info.version == "1"
    assert models.demand_info is not None and models.demand_info.alias == "champion"
    assert not (tmp_path / "absent.db").exists()  # the registry was never opened


def test_workers_load_the_pinned_versions_from_a_local_copy_without_mlflow(
    registry: dict[str, str], tmp_path: Path
) -> None:
    """The arbiter pins the aliases and copies each version once into the model cache; a
    worker then loads that copy without importing MLflow (seconds of start-up) and reports
    the same registry coordinates as a worker that asked the registry."""
    import subprocess
    import sys

    from serving.config import ENV_DEMAND_URI, ENV_ETA_URI, load_serving_config
    from serving.launch import resolve_aliases
    from serving.loader import load_models

    env = {**registry, "DOORSTEP_MODEL_CACHE": str(tmp_path / "cache")}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        config = load_serving_config()
        resolved = resolve_aliases(config, cache=True)
        again = resolve_aliases(config, cache=True)  # cached: the same copy, not a new one
        from_registry = load_models(config)
    assert resolved.env == again.env and set(resolved.env) == {ENV_ETA_URI, ENV_DEMAND_URI}
    copies = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert copies == ["demand", "eta"]
    worker = (
        "import json, sys\n"
        "from serving.config import load_serving_config\n"
        "from serving.loader import load_models\n"
        "m = load_models(load_serving_config())\n"
        "print(json.dumps({'errors': m.errors, 'mlflow': 'mlflow' in sys.modules,\n"
        "  'eta': m.eta_info.as_dict(), 'demand': m.demand_info.as_dict()}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", worker],
        env={**os.environ, **env, **resolved.env},
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["errors"] == {} and out["mlflow"] is False
    assert from_registry.eta_info is not None and from_registry.demand_info is not None
    assert out["eta"] == json.loads(json.dumps(from_registry.eta_info.as_dict()))
    assert out["demand"] == json.loads(json.dumps(from_registry.demand_info.as_dict()))


def test_service_module_imports_no_model_code() -> None:
    """BentoML's arbiter imports the service only for its definition: no pandas, LightGBM,
    scikit-learn or MLflow there (each worker imports them once, for itself)."""
    import subprocess
    import sys

    probe = (
        "import sys, json, serving.service\n"
        "print(json.dumps(sorted(m for m in ('pandas', 'lightgbm', 'sklearn', 'mlflow', 'h3')"
        " if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_demand_store_is_reread_when_its_file_changes(tmp_path: Path) -> None:
    """A pipeline appending yesterday's volume to the store needs no restart."""
    import os as _os

    from serving.demand import DemandStore, StoreUnavailable

    path = tmp_path / "store.parquet"
    table = synthetic("h", zones=2, days=3, seed=1)
    table[table[s.TS] < table[s.TS].max().normalize()].to_parquet(path, index=False)
    store = DemandStore(path)
    first = store.snapshot()
    assert store.snapshot() is first  # unchanged file: the cached table
    table.to_parquet(path, index=False)
    _os.utime(path, (first.stamp[0] + 5, first.stamp[0] + 5))
    second = store.snapshot()
    assert second is not first and second.last_ts > first.last_ts
    path.unlink()
    with pytest.raises(StoreUnavailable, match="demand store"):
        store.snapshot()
