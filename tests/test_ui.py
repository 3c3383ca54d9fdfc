"""The planner's page (``/ui/``): its data helpers, its JSON endpoints, and the page itself in a
real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by Selenium) against
a real ``doorstep serve`` process.

The city is small and seeded: three couriers over 30 days (``tests/synth.py``), zones are the H3
cells of their stops, the demand store is synthetic hourly volume in those zones ending on the
deliveries' last day, and tiny ETA and demand champions sit in a throwaway registry. Screenshots
go to ``tests/artifacts/`` (git-ignored); their paths are printed.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pandas as pd
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from features import schema as s
from features.zones import h3_cells
from serving.asgi import ApiKeyMiddleware
from serving.launch import free_port, local_server
from serving.ui import default_view, polygon, ui_app
from serving.ui_data import metric_tables, prepare, zone_depots
from tests.synth import make_deliveries
from tests.test_demand_model import synthetic

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
TZ = "Asia/Shanghai"
HOUR = 12  # the page is opened "as of" noon on the deliveries' last day


# --- data helpers --------------------------------------------------------------------------


def test_polygon_is_the_h3_boundary_as_lng_lat() -> None:
    cell = h3_cells(pd.Series([43.84]), pd.Series([126.55]))[0]
    ring = polygon(cell)
    assert ring is not None and len(ring) == 6
    assert all(126.5 < lng < 126.6 and 43.8 < lat < 43.9 for lng, lat in ring)
    assert polygon("z3") is None and polygon("") is None


def test_default_view_is_today_or_a_replay_of_the_stores_last_day() -> None:
    now = dt.datetime(2021, 7, 1, 3, 30, tzinfo=dt.UTC)  # 11:30 in Shanghai
    assert default_view(pd.Timestamp("2021-06-30 23:00"), TZ, now) == (
        dt.date(2021, 7, 1),
        11,
        True,
    )
    assert default_view(pd.Timestamp("2021-06-20 23:00"), TZ, now) == (
        dt.date(2021, 6, 20),
        11,
        False,
    )


def test_zone_depots_takes_each_zones_most_common_depot() -> None:
    frame = pd.DataFrame(
        {
            s.ZONE_ID: ["a", "a", "a", "b", "b", "c", None],
            s.DEPOT_ID: ["D1", "D2", "D2", "D9", "D3", None, "D1"],
        }
    )
    assert zone_depots(frame) == {"a": "D2", "b": "D3"}  # a tie goes to the smaller id


def test_prepare_fills_zone_plan_order_and_depot_from_the_stops() -> None:
    d = make_deliveries(days=1, couriers=1, stops=4, seed=1)
    d = d.drop(columns=[s.PLANNED_SEQ, s.DEPOT_LAT, s.DEPOT_LNG, s.PACKAGES])
    d = d.iloc[::-1].reset_index(drop=True)  # rows out of order: the plan comes from arrivals
    out = prepare(d)
    assert out[s.PLANNED_SEQ].tolist() == [0, 1, 2, 3]
    assert out[s.ARRIVAL_TIME].is_monotonic_increasing
    assert (out[s.DEPOT_LAT] == out[s.LAT].iloc[0]).all()
    assert out[s.ZONE_ID].str.len().eq(15).all() and (out[s.PACKAGES] == 1).all()
    assert out[s.ROUTE_DATE].iloc[0] == dt.date(2021, 6, 1)


def test_metric_tables_put_the_model_beside_its_baselines() -> None:
    tables = metric_tables(
        {
            "fit_seconds": 3.0,
            "ordered.model.mae_min": 9.0,
            "ordered.model.acc20": 0.8,
            "ordered.model.n_rows": 100.0,
            "ordered.baseline.speed.mae_min": 12.0,
            "ordered.baseline.speed.acc20": 0.7,
            "ordered.baseline.zone_hour.mae_min": 11.0,
            "ordered.baseline.zone_hour.acc20": 0.6,
            "h.day_ahead.total.wape": 0.1,
        }
    )
    assert tables["other"] == {"fit_seconds": 3.0}
    h, ordered = tables["tables"]
    assert h["segment"] == "h.day_ahead" and [r["name"] for r in h["rows"]] == ["total"]
    assert ordered["columns"] == ["mae_min", "acc20"]  # counts are left out
    assert [r["name"] for r in ordered["rows"]] == ["model", "speed", "zone_hour"]
    assert ordered["best"] == {"mae_min": "zone_hour", "acc20": "speed"}


# --- endpoints without models or data --------------------------------------------------------


def _bare_service(deliveries: Path) -> SimpleNamespace:
    """A service whose models did not load, as the page sees it."""
    errors = {"demand": "models:/doorstep-demand@champion: not found", "eta": "not found"}
    return SimpleNamespace(
        config=SimpleNamespace(deliveries=str(deliveries)),
        demand_engine=None,
        eta_engine=None,
        errors=errors,
        info=lambda: {"ready": False, "models": {}, "errors": dict(errors)},
    )


def test_endpoints_say_why_when_models_and_deliveries_are_missing(tmp_path: Path) -> None:
    d = make_deliveries(days=2, couriers=2, stops=5, seed=2).assign(**{s.DEPOT_ID: "D7"})
    d.to_parquet(tmp_path / "deliveries.parquet")
    with TestClient(ui_app(lambda: _bare_service(tmp_path / "deliveries.parquet"))) as c:
        zones = c.get("/api/zones").json()
        assert zones["forecast"] is False and "No demand model is loaded" in zones["message"]
        assert "doorstep-demand@champion" in zones["message"]
        cells = set(h3_cells(d[s.LAT], d[s.LNG]))
        assert {z["zone_id"] for z in zones["zones"]} == cells  # still drawn, from deliveries
        assert {z["depot_id"] for z in zones["zones"]} == {"D7"}
        routes = c.get("/api/routes").json()
        assert routes["date"] == "2021-06-02" and len(routes["routes"]) == 2
        assert c.get("/api/route?id=nope").status_code == 404
        assert c.get("/api/zones?date=June").status_code == 400
        assert c.get("/api/zones?hour=24").status_code == 400
        assert c.get("/").status_code == 200 and "<svg" in c.get("/").text
    with TestClient(ui_app(lambda: _bare_service(tmp_path / "absent.parquet"))) as c:
        r = c.get("/api/routes")
        assert r.status_code == 404 and "DOORSTEP_DELIVERIES" in r.json()["error"]
        assert c.get("/api/zones").json()["zones"] == []
    with TestClient(ui_app(lambda: None)) as c:
        assert c.get("/api/models").status_code == 503


def test_the_page_is_open_but_its_data_needs_the_api_key(tmp_path: Path) -> None:
    app = Starlette(routes=[Mount("/ui", ui_app(lambda: _bare_service(tmp_path / "x.parquet")))])
    c = TestClient(ApiKeyMiddleware(app, key="s3cret"))  # type: ignore[arg-type]
    assert c.get("/ui/").status_code == 200
    assert c.get("/ui/app.js").status_code == 200
    assert c.get("/ui/api/models").status_code == 401
    assert c.get("/ui/api/models", headers={"x-api-key": "s3cret"}).status_code == 200


# --- the page in a real browser ------------------------------------------------------------


def _browser_paths() -> tuple[str, str] | None:
    binary = next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))),
        None,
    )
    driver = shutil.which("chromedriver")
    return (binary, driver) if binary and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    paths = _browser_paths()
    if paths is None:
        pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,2600")
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A seeded city in a throwaway registry, served by a real ``doorstep serve`` process."""
    from tests.test_pipeline_demand import TINY as TINY_DEMAND
    from tests.test_pipeline_eta import LOOSE, TINY, TINY_LEG
    from training.pipeline_demand import train_and_register_demand
    from training.pipeline_eta import train_and_register_eta

    if _browser_paths() is None:
        pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver)")
    tmp = tmp_path_factory.mktemp("ui")
    deliveries = make_deliveries(days=30, couriers=3, stops=7, seed=5)
    deliveries[s.ZONE_ID] = h3_cells(deliveries[s.LAT], deliveries[s.LNG])
    deliveries[s.DEPOT_ID] = deliveries[s.COURIER_ID].map(lambda c: "D1" if c == "c0" else "D2")
    deliveries.to_parquet(tmp / "deliveries.parquet")
    zones = sorted(deliveries[s.ZONE_ID].unique())
    hourly = synthetic("h", zones=len(zones), days=36, seed=4)
    end = deliveries[s.DISPATCH_TIME].max().tz_localize(None).normalize() + pd.Timedelta(hours=23)
    hourly[s.TS] = hourly[s.TS] + (end - hourly[s.TS].max())
    hourly[s.ZONE_ID] = hourly[s.ZONE_ID].map({f"z{i}": z for i, z in enumerate(zones)})
    hourly.to_parquet(tmp / "demand_hourly.parquet", index=False)
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "DOORSTEP_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "DOORSTEP_DEMAND_STORE": str(tmp / "demand_hourly.parquet"),
        "DOORSTEP_DELIVERIES": str(tmp / "deliveries.parquet"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        train_and_register_eta(
            deliveries, TINY, data_source="synth", gate=LOOSE, leg_config=TINY_LEG
        )
        days = hourly.assign(**{s.TS: hourly[s.TS].dt.floor("D")})
        daily = days.groupby([s.ZONE_ID, s.TS])[s.VOLUME].sum().reset_index()
        train_and_register_demand(hourly, daily, TINY_DEMAND, data_source="synth")
    # an empty key reads as none: the page's requests need no key here
    with local_server({**env, "DOORSTEP_API_KEY": ""}, tmp / "serve.log") as base:
        last = end.date()
        yield {
            "base": base,
            "date": last.isoformat(),
            "page": f"{base}/ui/?date={last.isoformat()}&hour={HOUR}",
            "deliveries": prepare(deliveries),
            "hourly": hourly,
            "zones": zones,
        }


def _wait(driver: Any, condition: Any, timeout: float = 20) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def _screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")
    return path


def _open(driver: Any, url: str) -> float:
    """Load the page and wait for the map; the page's own mark of the first render, in ms
    from navigation start."""
    driver.get(url)
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.rendered"))
    return float(driver.execute_script("return document.body.dataset.rendered"))


@pytest.mark.slow
def test_page_loads_with_every_zone_on_the_map(browser: Any, city: dict[str, Any]) -> None:
    rendered_ms = _open(browser, city["page"])
    print(f"first render (navigation start to map drawn): {rendered_ms:.0f} ms")
    polygons = _css(browser, "#zones polygon.zone")
    assert len(polygons) == len(city["zones"])
    assert {p.get_attribute("data-zone") for p in polygons} == set(city["zones"])
    assert all(p.get_attribute("fill").startswith("rgb(") for p in polygons)
    status = browser.find_element("id", "demand-status").text
    assert f"{city['date']} as of {HOUR:02d}:00" in status and "doorstep-demand v1" in status
    # hovering a zone shows its P10-P90 (the polygon's SVG <title>)
    title = polygons[0].find_element("css selector", "title").get_attribute("textContent")
    assert "P10–P90" in title and "P50" in title
    depots = [r.text for r in _css(browser, "#depot-table tbody th")]
    assert depots == ["D1", "D2"]
    assert browser.find_element("id", "city-total").text.startswith("City: P50")
    assert rendered_ms < 10_000  # a sanity bound; the 1 s target is benchmarks/bench_ui.py's
    _screenshot(browser, "ui_demand.png")


@pytest.mark.slow
def test_choosing_a_zone_updates_the_chart(browser: Any, city: dict[str, Any]) -> None:
    from selenium.webdriver.common.keys import Keys

    _open(browser, city["page"])
    chart = browser.find_element("id", "zone-chart")
    _wait(browser, lambda d: chart.get_attribute("data-zone"))
    first = chart.get_attribute("data-zone")
    select = browser.find_element("id", "zone-select")
    select.send_keys(Keys.ARROW_DOWN)  # the keyboard path: a select, not the polygons
    _wait(browser, lambda d: chart.get_attribute("data-zone") not in (None, first))
    zone = chart.get_attribute("data-zone")
    assert zone == select.get_attribute("value") and zone in city["zones"]
    assert zone in browser.find_element("id", "chart-title").text
    selected = _css(browser, "#zones polygon.selected")
    assert [p.get_attribute("data-zone") for p in selected] == [zone]
    assert len(_css(browser, "#zone-chart polygon.band-plan")) == 1
    assert len(_css(browser, "#zone-chart polygon.band-now")) == 1
    assert len(_css(browser, "#zone-chart rect.actual")) == HOUR  # the store's hours so far
    # the chart's numbers are the service's: /v1/demand re-planned at the same hour
    body = {"date": city["date"], "zones": [zone], "cutoff_hour": HOUR, "days": 1}
    bands = httpx.post(f"{city['base']}/v1/demand", json=body).json()["zones"][0]["hourly"]
    rows = _css(browser, "#zone-table tbody tr")
    assert len(rows) == 24
    cells = rows[HOUR].find_elements("css selector", "td")
    replanned = cells[1].get_attribute("textContent")
    assert replanned.startswith(f"{bands[0]['p50']:.1f} ("), (replanned, bands[0])
    # clicking a polygon chooses its zone too
    other = next(
        p for p in _css(browser, "#zones polygon.zone") if p.get_attribute("data-zone") != zone
    )
    other.click()
    _wait(browser, lambda d: chart.get_attribute("data-zone") == other.get_attribute("data-zone"))


@pytest.mark.slow
def test_a_route_shows_its_stops_in_order_with_windows_and_actuals(
    browser: Any, city: dict[str, Any]
) -> None:
    from selenium.webdriver.support.ui import Select

    _open(browser, city["page"])
    d = city["deliveries"]
    last = d[d[s.ROUTE_DATE] == d[s.ROUTE_DATE].max()]
    routes = Select(browser.find_element("id", "route-select"))
    _wait(browser, lambda _: len(routes.options) == last[s.ROUTE_ID].nunique())
    route_id = sorted(last[s.ROUTE_ID].unique())[1]
    routes.select_by_value(route_id)
    browser.find_element("id", "route-go").click()
    stops = last[last[s.ROUTE_ID] == route_id].sort_values(s.PLANNED_SEQ)
    _wait(browser, lambda _: len(_css(browser, "#route-timeline rect.window")) == len(stops))
    marks = _css(browser, "#route-stops .stop-mark")
    assert [m.get_attribute("data-stop") for m in marks] == stops[s.STOP_ID].tolist()
    assert [m.text for m in _css(browser, "#route-stops .stop-label")] == [
        str(i + 1) for i in range(len(stops))
    ]
    assert len(_css(browser, "#route-timeline circle.p50")) == len(stops)
    assert len(_css(browser, "#route-timeline path.actual")) == len(stops)
    table = _css(browser, "#stop-table tbody tr")
    actual = [r.find_elements("css selector", "td")[3].text for r in table]
    want = [t.tz_convert(TZ).strftime("%H:%M") for t in stops[s.ARRIVAL_TIME]]
    assert actual == want
    windows = [r.find_elements("css selector", "td")[2].text for r in table]
    assert all("–" in w and len(w) == 11 for w in windows)
    assert route_id in browser.find_element("id", "route-summary").text
    _screenshot(browser, "ui_route.png")


@pytest.mark.slow
def test_a_pasted_request_is_predicted(browser: Any, city: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, city["page"])
    d = city["deliveries"]
    route = d[d[s.ROUTE_ID] == d[s.ROUTE_ID].iloc[0]]
    stops = [
        {"stop_id": f"p{i}", "lat": float(r[s.LAT]), "lng": float(r[s.LNG])}
        for i, (_, r) in enumerate(route.head(4).iterrows())
    ]
    t0 = route[s.DISPATCH_TIME].iloc[0].isoformat()
    request = {"courier": {"time": t0, "lat": 43.84, "lng": 126.55}, "stops": stops}
    browser.find_element(By.CSS_SELECTOR, "#paste summary").click()
    box = browser.find_element("id", "route-json")
    browser.execute_script("arguments[0].value = arguments[1]", box, json.dumps(request))
    browser.find_element(By.CSS_SELECTOR, "#paste-form button").click()
    _wait(browser, lambda _: len(_css(browser, "#route-timeline rect.window")) == 4)
    assert "Pasted route: 4 stops" in browser.find_element("id", "route-summary").text
    assert len(_css(browser, "#route-timeline path.actual")) == 0  # nothing happened yet
    box.clear()
    box.send_keys('{"courier": {}, "stops": []}')
    browser.find_element(By.CSS_SELECTOR, "#paste-form button").click()
    status = browser.find_element("id", "routes-status")
    _wait(browser, lambda _: "No ETAs" in status.text)
    assert "courier.time" in status.text


@pytest.mark.slow
def test_models_panel_shows_versions_windows_and_metrics(
    browser: Any, city: dict[str, Any]
) -> None:
    _open(browser, city["page"])
    info = httpx.get(f"{city['base']}/v1/model-info").json()["models"]
    cards = _wait(browser, lambda _: _css(browser, "#model-cards article.model") or None)
    by_kind = {c.get_attribute("data-kind"): c for c in cards}
    assert set(by_kind) == {"eta", "demand"}
    for kind, card in by_kind.items():
        text = card.text
        assert f"version {info[kind]['version']}" in text and "@champion" in text
        assert " to ".join(info[kind]["training_window"]) in text
        assert "Trained" in text and "UTC" in text
        rows = card.find_elements("css selector", "table.metrics tbody th")
        assert any(r.text.startswith("baseline ") for r in rows)
        assert any(r.text == "model" for r in rows)
    _screenshot(browser, "ui_models.png")


@pytest.mark.slow
def test_page_says_why_when_nothing_is_loaded(browser: Any, tmp_path: Path) -> None:
    """The page alone (no BentoML app: one per process) over a service with no models and no
    deliveries table, served by uvicorn on 127.0.0.1."""
    import uvicorn

    app = Starlette(routes=[Mount("/ui", ui_app(lambda: _bare_service(tmp_path / "x.parquet")))])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        _open(browser, f"http://127.0.0.1:{port}/ui/")
        demand = browser.find_element("id", "demand-status").text
        assert "No demand model is loaded" in demand
        routes = browser.find_element("id", "routes-status")
        _wait(browser, lambda _: "No routes to pick" in routes.text)
        assert "DOORSTEP_DELIVERIES" in routes.text
        models = browser.find_element("id", "models-status")
        _wait(browser, lambda _: "Not loaded" in models.text)
        assert len(_css(browser, "#zones polygon")) == 0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
