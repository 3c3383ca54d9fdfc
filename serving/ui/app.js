// The planner's page: plain JavaScript drawing SVG from the service's JSON. No framework, no
// map tiles: zones and stops are projected from their own coordinates, so the page works
// offline. Predictions come from the service's endpoints (/v1/eta, /ui/api/*), never from here.
"use strict";

const UI = new URL(".", document.currentScript.src); // .../ui/
const ROOT = new URL("..", UI); // where /v1 lives
const SVG = "http://www.w3.org/2000/svg";
const PARAMS = new URLSearchParams(location.search);
const state = { key: sessionStorage.getItem("doorstep-key") || "", tz: "UTC", zones: [], date: null, hour: null, zone: null };

// --- small helpers ------------------------------------------------------------------------

function el(name, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function html(name, attrs = {}, text = null) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

function clear(node, keep = 0) {
  while (node.childNodes.length > keep) node.removeChild(node.lastChild);
}

function fmt(x, digits = 1) {
  return x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits);
}

function clock(iso) {
  if (!iso) return "–";
  return new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: state.tz }).format(new Date(iso));
}

function setStatus(id, message, isError = false) {
  const node = document.getElementById(id);
  node.textContent = message || "";
  node.classList.toggle("error", Boolean(isError));
  node.hidden = !message;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (state.key) headers["X-API-Key"] = state.key;
  const url = path.startsWith("/") ? new URL(path.slice(1), ROOT) : new URL(path, UI);
  let response;
  try {
    response = await fetch(url, { ...options, headers });
  } catch (err) {
    return { ok: false, status: 0, body: { error: `the service did not answer (${err.message})` } };
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = { error: `HTTP ${response.status}` }; }
  if (response.status === 401) document.getElementById("key-form").hidden = false;
  return { ok: response.ok, status: response.status, body };
}

function errorText(result) {
  const b = result.body || {};
  if (Array.isArray(b.detail)) return b.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return b.error || `HTTP ${result.status}`;
}

// equirectangular projection around the data's own mean latitude, fitted to a box
function projection(points, width, height, pad = 12) {
  let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
  for (const [lng, lat] of points) {
    x0 = Math.min(x0, lng); x1 = Math.max(x1, lng); y0 = Math.min(y0, lat); y1 = Math.max(y1, lat);
  }
  const k = Math.cos(((y0 + y1) / 2) * Math.PI / 180);
  const w = Math.max((x1 - x0) * k, 1e-6);
  const h = Math.max(y1 - y0, 1e-6);
  const scale = Math.min((width - 2 * pad) / w, (height - 2 * pad) / h);
  const ox = (width - w * scale) / 2;
  const oy = (height - h * scale) / 2;
  return ([lng, lat]) => [ox + (lng - x0) * k * scale, oy + (y1 - lat) * scale];
}

// light to dark blue on the square root of the value (a few busy zones would wash out the rest)
const RAMP = [[239, 245, 251], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
function colour(value, max) {
  const t = max > 0 ? Math.sqrt(Math.max(value, 0) / max) : 0;
  const pos = t * (RAMP.length - 1);
  const i = Math.min(Math.floor(pos), RAMP.length - 2);
  const f = pos - i;
  const c = RAMP[i].map((v, j) => Math.round(v + (RAMP[i + 1][j] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// --- demand -------------------------------------------------------------------------------

async function loadDemand() {
  const q = new URLSearchParams();
  if (PARAMS.get("date")) q.set("date", PARAMS.get("date"));
  if (PARAMS.get("hour")) q.set("hour", PARAMS.get("hour"));
  const result = await api(`api/zones?${q}`);
  if (!result.ok) {
    setStatus("demand-status", `No demand map: ${errorText(result)}`, true);
    markRendered();
    return;
  }
  const data = result.body;
  state.tz = data.tz || state.tz;
  state.zones = data.zones;
  state.date = data.date || null;
  state.hour = data.hour ?? null;
  drawZoneMap(data);
  markRendered();
  if (!data.forecast) {
    setStatus("demand-status", data.message, true);
    return;
  }
  const when = `${data.date} as of ${String(data.hour).padStart(2, "0")}:00 (${state.tz})`;
  const replay = data.live ? "" : " The demand store has no data for today: this replays its last day.";
  const unmapped = data.unmapped.length ? ` ${data.unmapped.length} zone(s) are not H3 cells and are not drawn.` : "";
  setStatus("demand-status", `Forecast for ${when}, model ${data.model.name} v${data.model.version}.${replay}${unmapped}`);
  drawTotals(data);
  fillZoneSelect(data);
}

function markRendered() {
  if (document.body.dataset.rendered) return;
  performance.mark("map-drawn");
  document.body.dataset.rendered = performance.now().toFixed(1);
}

function drawZoneMap(data) {
  const svg = document.getElementById("zone-map");
  clear(svg, 2); // keep <title> and <desc>
  const points = data.zones.flatMap((z) => z.polygon);
  if (!points.length) return;
  const project = projection(points, 600, 480);
  const max = Math.max(0, ...data.zones.map((z) => z.p50 ?? 0));
  const group = el("g", { id: "zones" });
  for (const z of data.zones) {
    const pts = z.polygon.map((p) => project(p).map((v) => v.toFixed(1)).join(",")).join(" ");
    const poly = el("polygon", { points: pts, class: "zone", "data-zone": z.zone_id });
    let label = `Zone ${z.zone_id}${z.depot_id ? ` (depot ${z.depot_id})` : ""}`;
    if (data.forecast) {
      poly.setAttribute("fill", colour(z.p50, max));
      label += `: P50 ${fmt(z.p50)} parcels today, P10–P90 ${fmt(z.p10)}–${fmt(z.p90)}; so far ${fmt(z.observed, 0)}`;
    } else {
      poly.classList.add("nodata");
    }
    poly.appendChild(el("title", {}, label));
    poly.addEventListener("click", () => selectZone(z.zone_id));
    group.appendChild(poly);
  }
  svg.appendChild(group);
  const legend = document.getElementById("map-legend");
  clear(legend);
  if (data.forecast) {
    const ramp = html("span", { class: "ramp" });
    ramp.style.background = `linear-gradient(to right, ${[0, 0.25, 0.5, 0.75, 1].map((t) => colour(t * t * max, max)).join(",")})`;
    legend.append(html("span", {}, "0"), ramp, html("span", {}, fmt(max, 0)));
  }
}

function drawTotals(data) {
  const city = data.city;
  document.getElementById("city-total").textContent =
    `City: P50 ${fmt(city.p50, 0)} parcels (P10–P90 ${fmt(city.p10, 0)}–${fmt(city.p90, 0)}), ${fmt(city.observed, 0)} so far.`;
  const table = document.getElementById("depot-table");
  clear(table, 1);
  if (!data.depots.length) {
    table.appendChild(html("tr")).appendChild(html("td", { colspan: "4" }, "No zone-to-depot mapping (no deliveries table): the city total above is the only total."));
    return;
  }
  const head = table.appendChild(html("thead")).appendChild(html("tr"));
  for (const h of ["Depot", "Zones", "P50 today", "So far"]) head.appendChild(html("th", { scope: "col" }, h));
  const body = table.appendChild(html("tbody"));
  for (const d of data.depots) {
    const tr = body.appendChild(html("tr"));
    tr.appendChild(html("th", { scope: "row" }, d.depot_id));
    tr.append(html("td", {}, String(d.zones)), html("td", {}, fmt(d.p50, 0)), html("td", {}, fmt(d.observed, 0)));
  }
}

function fillZoneSelect(data) {
  const select = document.getElementById("zone-select");
  clear(select);
  const zones = [...data.zones].sort((a, b) => b.p50 - a.p50);
  for (const z of zones) {
    select.appendChild(html("option", { value: z.zone_id }, `${z.zone_id} — P50 ${fmt(z.p50)}`));
  }
  select.disabled = false;
  select.addEventListener("change", () => selectZone(select.value));
  const wanted = PARAMS.get("zone");
  selectZone(wanted && zones.some((z) => z.zone_id === wanted) ? wanted : zones[0]?.zone_id);
}

async function selectZone(zoneId) {
  if (!zoneId) return;
  state.zone = zoneId;
  document.getElementById("zone-select").value = zoneId;
  for (const p of document.querySelectorAll("#zones .zone")) p.classList.toggle("selected", p.dataset.zone === zoneId);
  const q = new URLSearchParams({ id: zoneId, date: state.date, hour: String(state.hour) });
  const result = await api(`api/zone?${q}`);
  if (state.zone !== zoneId) return; // a later choice won
  if (!result.ok) {
    setStatus("demand-status", `Zone ${zoneId}: ${errorText(result)}`, true);
    return;
  }
  drawZoneChart(result.body);
}

function drawZoneChart(z) {
  const svg = document.getElementById("zone-chart");
  clear(svg, 1);
  svg.dataset.zone = z.zone_id;
  document.getElementById("chart-title").textContent =
    `Zone ${z.zone_id}: hourly forecast (today P50 ${fmt(z.day.p50)}, P10–P90 ${fmt(z.day.p10)}–${fmt(z.day.p90)})`;
  const [W, H, L, R, T, B] = [520, 260, 40, 20, 10, 28];
  const values = [...z.plan.map((b) => b.p90), ...z.replan.map((b) => b.p90), ...z.actual.map((a) => a.volume), 1];
  const ymax = Math.max(...values) * 1.1;
  const x = (h) => L + (h / 24) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - T - B);
  const axis = el("g", { class: "axis" });
  axis.appendChild(el("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
  axis.appendChild(el("line", { x1: L, x2: L, y1: T, y2: H - B }));
  for (let h = 0; h <= 24; h += 3) {
    axis.appendChild(el("line", { x1: x(h), x2: x(h), y1: H - B, y2: H - B + 4 }));
    axis.appendChild(el("text", { x: x(h), y: H - B + 15, "text-anchor": "middle" }, `${String(h).padStart(2, "0")}:00`));
  }
  for (let i = 0; i <= 4; i += 1) {
    const v = (ymax / 1.1) * (i / 4);
    axis.appendChild(el("text", { x: L - 5, y: y(v) + 4, "text-anchor": "end" }, fmt(v, v < 10 ? 1 : 0)));
  }
  axis.appendChild(el("text", { x: 4, y: T + 8, class: "label" }, "parcels"));
  svg.appendChild(axis);
  // each hour's band spans [hour, hour + 1): a step shape, as volumes are per hour
  const band = (bands, cls) => {
    if (!bands.length) return;
    const top = bands.flatMap((b) => [`${x(b.hour)},${y(b.p90)}`, `${x(b.hour + 1)},${y(b.p90)}`]);
    const bottom = [...bands].reverse().flatMap((b) => [`${x(b.hour + 1)},${y(b.p10)}`, `${x(b.hour)},${y(b.p10)}`]);
    svg.appendChild(el("polygon", { points: [...top, ...bottom].join(" "), class: cls }));
  };
  const line = (bands, cls) => {
    if (!bands.length) return;
    const pts = bands.flatMap((b) => [`${x(b.hour)},${y(b.p50)}`, `${x(b.hour + 1)},${y(b.p50)}`]);
    svg.appendChild(el("polyline", { points: pts.join(" "), class: cls }));
  };
  band(z.plan, "band-plan");
  band(z.replan, "band-now");
  line(z.plan, "p50-plan");
  line(z.replan, "p50-now");
  const bw = (W - L - R) / 24;
  for (const a of z.actual) {
    const bar = el("rect", { x: x(a.hour) + bw * 0.3, y: y(a.volume), width: bw * 0.4, height: Math.max(H - B - y(a.volume), 0), class: "actual" });
    bar.appendChild(el("title", {}, `${String(a.hour).padStart(2, "0")}:00 actual ${fmt(a.volume, 0)}`));
    svg.appendChild(bar);
  }
  if (z.hour > 0) svg.appendChild(el("line", { x1: x(z.hour), x2: x(z.hour), y1: T, y2: H - B, class: "now-line" }));
  drawZoneTable(z);
}

function drawZoneTable(z) {
  const table = document.getElementById("zone-table");
  clear(table, 1);
  const head = table.appendChild(html("thead")).appendChild(html("tr"));
  for (const h of ["Hour", "Planned P50 (P10–P90)", "Re-planned P50 (P10–P90)", "Actual"]) head.appendChild(html("th", { scope: "col" }, h));
  const body = table.appendChild(html("tbody"));
  const replan = new Map(z.replan.map((b) => [b.hour, b]));
  const actual = new Map(z.actual.map((a) => [a.hour, a.volume]));
  for (const b of z.plan) {
    const r = replan.get(b.hour);
    const tr = body.appendChild(html("tr"));
    tr.appendChild(html("th", { scope: "row" }, `${String(b.hour).padStart(2, "0")}:00`));
    tr.append(
      html("td", {}, `${fmt(b.p50)} (${fmt(b.p10)}–${fmt(b.p90)})`),
      html("td", {}, r ? `${fmt(r.p50)} (${fmt(r.p10)}–${fmt(r.p90)})` : "–"),
      html("td", {}, actual.has(b.hour) ? fmt(actual.get(b.hour), 0) : "–"),
    );
  }
}

// --- routes -------------------------------------------------------------------------------

async function loadRoutes(date) {
  const q = date ? `?date=${encodeURIComponent(date)}` : "";
  const result = await api(`api/routes${q}`);
  const dateSel = document.getElementById("route-date");
  const routeSel = document.getElementById("route-select");
  const go = document.getElementById("route-go");
  if (!result.ok) {
    setStatus("routes-status", `No routes to pick: ${errorText(result)}`, true);
    document.getElementById("paste").open = true;
    return;
  }
  const data = result.body;
  clear(dateSel);
  for (const d of data.dates) dateSel.appendChild(html("option", { value: d }, d));
  dateSel.value = data.date;
  clear(routeSel);
  for (const r of data.routes) {
    const label = `${r.route_id} — courier ${r.courier_id}, ${r.stops} stops, out at ${clock(r.dispatch_time)}${r.depot_id ? `, depot ${r.depot_id}` : ""}`;
    routeSel.appendChild(html("option", { value: r.route_id }, label));
  }
  dateSel.disabled = routeSel.disabled = go.disabled = !data.routes.length;
  dateSel.disabled = !data.dates.length;
  setStatus("routes-status", data.routes.length ? `${data.routes.length} routes on ${data.date}.` : `No routes on ${data.date}.`);
  const wanted = PARAMS.get("route");
  if (wanted && data.routes.some((r) => r.route_id === wanted) && !state.routeShown) {
    routeSel.value = wanted;
    state.routeShown = true;
    await showRoute(wanted);
  }
}

async function showRoute(routeId) {
  setStatus("routes-status", `Predicting route ${routeId}…`);
  const detail = await api(`api/route?id=${encodeURIComponent(routeId)}`);
  if (!detail.ok) {
    setStatus("routes-status", `Route ${routeId}: ${errorText(detail)}`, true);
    return;
  }
  document.getElementById("route-json").value = JSON.stringify(detail.body.request, null, 1);
  await predict(detail.body.request, detail.body);
}

async function predict(request, past = null) {
  const result = await api("/v1/eta", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(request) });
  if (!result.ok) {
    setStatus("routes-status", `No ETAs: ${errorText(result)}`, true);
    return;
  }
  const eta = result.body;
  const actual = new Map((past ? past.stops : []).map((st) => [st.stop_id, st]));
  const rows = eta.stops.map((st, i) => ({ ...st, input: request.stops[i], past: actual.get(st.stop_id) || null }));
  const who = past ? `Route ${past.route_id} (courier ${past.courier_id})` : "Pasted route";
  const fallbacks = eta.fallbacks.length ? ` Fallbacks: ${eta.fallbacks.join(", ")}.` : "";
  document.getElementById("route-summary").textContent =
    `${who}: ${rows.length} stops, ${eta.mode}, leaving ${clock(request.courier.time)}; model ${eta.model.name} v${eta.model.version}.${fallbacks}`;
  document.getElementById("route-result").hidden = false;
  drawRouteMap(request, rows);
  drawTimeline(request, rows);
  drawStopTable(rows);
  setStatus("routes-status", past ? "Predicted at dispatch, beside what happened." : "Predicted.");
}

function drawRouteMap(request, rows) {
  const svg = document.getElementById("route-map");
  clear(svg, 1);
  svg.dataset.route = request.courier.route_id || "";
  const start = [request.courier.lng, request.courier.lat];
  const stops = rows.map((r) => [r.input.lng, r.input.lat]);
  const project = projection([start, ...stops], 480, 420, 18);
  // zone outlines around the route, for orientation
  for (const z of state.zones) {
    const pts = z.polygon.map(project);
    if (pts.every(([px, py]) => px < 0 || py < 0 || px > 480 || py > 420)) continue;
    svg.appendChild(el("polygon", { points: pts.map((p) => p.map((v) => v.toFixed(1)).join(",")).join(" "), class: "outline" }));
  }
  const path = [start, ...stops].map((p) => project(p).map((v) => v.toFixed(1)).join(",")).join(" ");
  svg.appendChild(el("polyline", { points: path, class: "route-line" }));
  const [dx, dy] = project(start);
  const depot = el("rect", { x: dx - 6, y: dy - 6, width: 12, height: 12, class: "depot" });
  depot.appendChild(el("title", {}, "Courier's start (depot)"));
  svg.appendChild(depot);
  const group = el("g", { id: "route-stops" });
  rows.forEach((r, i) => {
    const [sx, sy] = project(stops[i]);
    const g = el("g", { class: "stop-mark", "data-stop": r.stop_id });
    g.appendChild(el("circle", { cx: sx, cy: sy, r: 7, class: "stop" }));
    g.appendChild(el("text", { x: sx, y: sy, class: "stop-label" }, String(i + 1)));
    g.appendChild(el("title", {}, `${i + 1}. ${r.stop_id}: P50 ${clock(r.arrival_time)}, window ${clock(r.window_start)}–${clock(r.window_end)}`));
    group.appendChild(g);
  });
  svg.appendChild(group);
}

function drawTimeline(request, rows) {
  const svg = document.getElementById("route-timeline");
  clear(svg, 1);
  const [W, L, R, T, row] = [560, 36, 12, 22, 14];
  const H = T + rows.length * row + 8;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const t0 = Date.parse(request.courier.time);
  const times = rows.flatMap((r) => [Date.parse(r.window_end), r.past && r.past.arrival_time ? Date.parse(r.past.arrival_time) : t0]);
  const t1 = Math.max(t0 + 30 * 60000, ...times);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const axis = el("g", { class: "axis" });
  const step = Math.max(15, Math.ceil((t1 - t0) / 60000 / 8 / 15) * 15) * 60000;
  for (let t = t0; t <= t1; t += step) {
    axis.appendChild(el("line", { x1: x(t), x2: x(t), y1: T - 4, y2: H - 8 }));
    axis.appendChild(el("text", { x: x(t), y: T - 8, "text-anchor": "middle" }, clock(new Date(t).toISOString())));
  }
  svg.appendChild(axis);
  rows.forEach((r, i) => {
    const cy = T + i * row + row / 2;
    svg.appendChild(el("text", { x: L - 6, y: cy + 4, "text-anchor": "end", class: "label" }, String(i + 1)));
    const w = el("rect", { x: x(Date.parse(r.window_start)), y: cy - 4, width: Math.max(x(Date.parse(r.window_end)) - x(Date.parse(r.window_start)), 1.5), height: 8, class: "window", "data-stop": r.stop_id });
    w.appendChild(el("title", {}, `${i + 1}. ${r.stop_id}: window ${clock(r.window_start)}–${clock(r.window_end)}`));
    svg.appendChild(w);
    svg.appendChild(el("circle", { cx: x(Date.parse(r.arrival_time)), cy, r: 2.8, class: "p50" }));
    if (r.past && r.past.arrival_time) {
      const ax = x(Date.parse(r.past.arrival_time));
      const mark = el("path", { d: `M${ax} ${cy - 5} L${ax + 5} ${cy} L${ax} ${cy + 5} L${ax - 5} ${cy} Z`, class: "actual" });
      mark.appendChild(el("title", {}, `${i + 1}. actual ${clock(r.past.arrival_time)}`));
      svg.appendChild(mark);
    }
  });
}

function drawStopTable(rows) {
  const table = document.getElementById("stop-table");
  clear(table, 1);
  const past = rows.some((r) => r.past);
  const head = table.appendChild(html("thead")).appendChild(html("tr"));
  const cols = ["#", "Stop", "P50 arrival", "Window (P10–P90)"];
  if (past) cols.push("Actual arrival", "Actual − P50 (min)", "In window");
  for (const h of cols) head.appendChild(html("th", { scope: "col" }, h));
  const body = table.appendChild(html("tbody"));
  rows.forEach((r, i) => {
    const tr = body.appendChild(html("tr"));
    tr.appendChild(html("th", { scope: "row" }, String(i + 1)));
    tr.append(html("td", {}, r.stop_id), html("td", {}, clock(r.arrival_time)), html("td", {}, `${clock(r.window_start)}–${clock(r.window_end)}`));
    if (past) {
      const at = r.past && r.past.arrival_time;
      const diff = at ? (Date.parse(at) - Date.parse(r.arrival_time)) / 60000 : null;
      const inside = at ? Date.parse(r.window_start) <= Date.parse(at) && Date.parse(at) <= Date.parse(r.window_end) : null;
      tr.append(html("td", {}, clock(at)), html("td", {}, fmt(diff, 1)), html("td", {}, inside === null ? "–" : inside ? "yes" : "no"));
    }
  });
}

// --- models -------------------------------------------------------------------------------

async function loadModels() {
  const result = await api("api/models");
  const box = document.getElementById("model-cards");
  clear(box);
  if (!result.ok) {
    setStatus("models-status", `No model information: ${errorText(result)}`, true);
    return;
  }
  const info = result.body;
  const errors = Object.entries(info.errors || {}).map(([k, v]) => `${k}: ${v}`);
  setStatus("models-status", errors.length ? `Not loaded — ${errors.join("; ")}` : `${Object.keys(info.models).length} model(s) serving.`, errors.length > 0);
  box.className = "models-grid";
  for (const [kind, m] of Object.entries(info.models)) box.appendChild(modelCard(kind, m));
}

function modelCard(kind, m) {
  const card = html("article", { class: "model", "aria-labelledby": `model-${kind}`, "data-kind": kind });
  card.appendChild(html("h3", { id: `model-${kind}` }, `${kind === "eta" ? "ETA" : "Demand"}: ${m.name} version ${m.version ?? "(unversioned)"}${m.alias ? ` @${m.alias}` : ""}`));
  const dl = card.appendChild(html("dl"));
  const add = (k, v) => { if (v !== null && v !== undefined && v !== "") dl.append(html("dt", {}, k), html("dd", {}, String(v))); };
  add("Feature set", m.feature_set);
  add("Training window", (m.training_window || []).join(" to "));
  add("Trained", m.trained_at ? new Date(m.trained_at).toISOString().replace("T", " ").slice(0, 16) + " UTC" : null);
  add("Loaded from", m.source);
  add("Run", m.run_id);
  if (m.compiled_boosters) add("Boosters", `${m.compiled_boosters.length} compiled, ${m.lightgbm_boosters.length} LightGBM`);
  for (const t of m.tables || []) card.appendChild(html("div", { class: "scroll" })).appendChild(metricTable(t));
  if (!(m.tables || []).length) card.appendChild(html("p", {}, "No hold-out metrics were logged for this model."));
  return card;
}

function metricTable(t) {
  const table = html("table", { class: "metrics" });
  table.appendChild(html("caption", {}, `Hold-out: ${t.segment} (highlighted: the best baseline per column)`));
  const head = table.appendChild(html("thead")).appendChild(html("tr"));
  head.appendChild(html("th", { scope: "col" }, ""));
  for (const c of t.columns) head.appendChild(html("th", { scope: "col" }, c));
  const body = table.appendChild(html("tbody"));
  for (const r of t.rows) {
    const tr = body.appendChild(html("tr", { class: r.baseline ? "baseline" : "model" }));
    tr.appendChild(html("th", { scope: "row" }, r.baseline ? `baseline ${r.name}` : r.name));
    for (const c of t.columns) {
      const v = r.values[c];
      const td = html("td", {}, v === undefined ? "" : fmt(v, Math.abs(v) < 10 ? 3 : 1));
      if (t.best[c] === r.name) { td.className = "best"; td.title = "best baseline"; }
      tr.appendChild(td);
    }
  }
  return table;
}

// --- start --------------------------------------------------------------------------------

function wire() {
  document.getElementById("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = document.getElementById("api-key").value;
    sessionStorage.setItem("doorstep-key", state.key);
    location.reload();
  });
  document.getElementById("route-date").addEventListener("change", (e) => loadRoutes(e.target.value));
  document.getElementById("route-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("route-select").value;
    if (id) showRoute(id);
  });
  document.getElementById("paste-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let request;
    try {
      request = JSON.parse(document.getElementById("route-json").value);
    } catch (err) {
      setStatus("routes-status", `That is not JSON: ${err.message}`, true);
      return;
    }
    predict(request);
  });
}

wire();
loadDemand();
loadRoutes(PARAMS.get("route_date"));
loadModels();
