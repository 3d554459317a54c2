// The lake at a glance. Every chart is one SQL query the server runs in the
// caller's session (row-level security included) and returns with its rows;
// this script only draws them (uPlot), offers the SQL, and redraws when a new
// Delta version lands (it polls a fingerprint of the table versions).
//
// The address's fragment may carry `token=`, `range=`, `user_id=`, `trainer_id=`,
// `org_id=` and `at=<ISO time>` (pins every line chart's readout to that time).
"use strict";

const POLL_MS = 5000;
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f", "#7c2d12", "#475569"];
const state = { token: null, at: null, version: null, charts: [] };

function fragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("token")) {
    // Keep the token out of the address bar and the history.
    sessionStorage.setItem("sluice.token", params.get("token"));
    params.delete("token");
    history.replaceState(null, "", location.pathname + location.search + (params.toString() ? "#" + params : ""));
  }
  for (const id of ["range", "user_id", "trainer_id", "org_id"]) {
    if (params.get(id)) document.getElementById(id).value = params.get(id);
  }
  state.at = params.get("at");
  state.token = sessionStorage.getItem("sluice.token");
}

function query() {
  const params = new URLSearchParams({ range: document.getElementById("range").value });
  for (const id of ["user_id", "trainer_id", "org_id"]) {
    const value = document.getElementById(id).value.trim();
    if (value) params.set(id, value);
  }
  return params.toString();
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (response.status === 401) {
    signOut(body.error);
    throw new Error(body.error);
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

function signOut(why) {
  sessionStorage.removeItem("sluice.token");
  state.token = null;
  document.getElementById("signin").hidden = false;
  document.getElementById("controls").hidden = true;
  document.getElementById("sections").replaceChildren();
  status(why ? "Signed out: " + why : "Sign in with your token.");
}

async function load() {
  if (!state.token) return signOut();
  document.getElementById("signin").hidden = true;
  document.getElementById("controls").hidden = false;
  status("Loading…");
  const answer = await api("/api/v1/dashboard/charts?" + query());
  document.getElementById("who").textContent = `${answer.user} (${answer.role})`;
  for (const el of document.querySelectorAll(".subject")) el.hidden = answer.role === "learner";
  state.charts = answer.charts;
  render(answer.charts);
  state.version = (await api("/api/v1/dashboard/version")).version;
  status(`Updated ${new Date().toLocaleTimeString()}: ${answer.charts.length} charts, range ${answer.range}.`);
}

function render(charts) {
  const sections = document.getElementById("sections");
  sections.replaceChildren();
  for (const name of ["Pipeline", "Platform", "Learning"]) {
    const mine = charts.filter((c) => c.section === name);
    if (!mine.length) continue;
    const section = document.createElement("section");
    section.id = "section-" + name.toLowerCase();
    const title = document.createElement("h2");
    title.textContent = name;
    const grid = document.createElement("div");
    grid.className = "grid";
    section.append(title, grid);
    sections.append(section);
    for (const chart of mine) grid.append(figure(chart));
  }
  for (const chart of charts) draw(chart);
}

function figure(chart) {
  const fig = document.createElement("figure");
  fig.id = "chart-" + chart.id;
  fig.dataset.kind = chart.kind;
  const caption = document.createElement("figcaption");
  caption.textContent = chart.title + (chart.subject ? ` (${chart.subject})` : "");
  const body = document.createElement("div");
  body.className = chart.kind === "lines" ? "plot" : "scroll";
  const sql = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "show SQL";
  const pre = document.createElement("pre");
  pre.className = "sql";
  pre.textContent = chart.sql + ";";
  sql.append(summary, pre);
  fig.append(caption, body, sql);
  return fig;
}

function draw(chart) {
  const fig = document.getElementById("chart-" + chart.id);
  const body = fig.querySelector(".plot, .scroll");
  if (chart.error) {
    body.innerHTML = "";
    const p = document.createElement("p");
    p.className = chart.error.startsWith("no data yet") ? "empty" : "failed";
    p.textContent = chart.error;
    body.append(p);
    fig.dataset.state = "error";
    return;
  }
  if (!chart.rows.length) {
    body.innerHTML = '<p class="empty">No rows in this range.</p>';
    fig.dataset.state = "empty";
    return;
  }
  if (chart.kind === "table") return drawTable(chart, fig, body);
  drawLines(chart, fig, body);
}

function drawTable(chart, fig, body) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const c of chart.columns) head.append(Object.assign(document.createElement("th"), { textContent: c }));
  const rows = table.createTBody();
  for (const row of chart.rows) {
    const tr = rows.insertRow();
    for (const c of chart.columns) {
      const cell = tr.insertCell();
      const value = row[c];
      cell.textContent = value === null || value === undefined ? "" : typeof value === "number" ? format(value) : String(value);
      if (typeof value === "number") cell.className = "num";
    }
  }
  body.replaceChildren(table);
  fig.dataset.state = "drawn";
  fig.dataset.rows = String(chart.rows.length);
}

/// Rows to uPlot's columns: one x (seconds), one array per line.
function pivot(chart) {
  const [time, ...rest] = chart.columns;
  const split = rest.includes("series");
  const values = rest.filter((c) => c !== "series");
  const xs = [...new Set(chart.rows.map((r) => Date.parse(r[time]) / 1000))].sort((a, b) => a - b);
  const at = new Map(xs.map((x, i) => [x, i]));
  const lines = new Map();
  for (const row of chart.rows) {
    const i = at.get(Date.parse(row[time]) / 1000);
    for (const v of values) {
      const name = split ? String(row.series) : v;
      if (!lines.has(name)) lines.set(name, new Array(xs.length).fill(null));
      lines.get(name)[i] = row[v];
    }
  }
  if (xs.length === 1) {
    // One time alone would stretch the axis over years: give it half an hour each
    // side, with no value there.
    xs.unshift(xs[0] - 1800);
    xs.push(xs[1] + 1800);
    for (const [name, ys] of lines) lines.set(name, [null, ...ys, null]);
  }
  return { xs, lines: split ? worstFew(chart, lines) : lines };
}

const KEEP_SERIES = 5;

/// Many lines (nine services, 90 dependencies) make a wall of colour: keep the few
/// with the highest peaks and draw the rest as one line, summed for counts and
/// rates, their worst for shares and latencies.
function worstFew(chart, lines) {
  if (lines.size <= KEEP_SERIES + 1) return lines;
  const peaks = new Map([...lines].map(([name, ys]) => [name, Math.max(...ys.filter((y) => y !== null), -Infinity)]));
  const ranked = [...lines.entries()].sort((a, b) => peaks.get(b[0]) - peaks.get(a[0]));
  const kept = new Map(ranked.slice(0, KEEP_SERIES));
  const rest = ranked.slice(KEEP_SERIES);
  const worst = chart.unit === "share" || chart.unit === "ms";
  const merged = rest[0][1].map((_, i) => {
    const ys = rest.map(([, line]) => line[i]).filter((y) => y !== null);
    if (!ys.length) return null;
    return worst ? Math.max(...ys) : ys.reduce((a, b) => a + b, 0);
  });
  kept.set(`${rest.length} others (${worst ? "worst" : "sum"})`, merged);
  return kept;
}

function drawLines(chart, fig, body) {
  const { xs, lines } = pivot(chart);
  const names = [...lines.keys()];
  const data = [xs, ...names.map((n) => lines.get(n))];
  const series = [{}, ...names.map((n, i) => ({ label: n, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true, value: (u, v) => (v === null ? "–" : format(v)) }))];
  if (chart.target !== null && chart.target !== undefined) {
    data.push(xs.map(() => chart.target));
    series.push({ label: `target ${chart.target} ${chart.unit}`, stroke: "#b42318", dash: [6, 4], width: 1, value: () => String(chart.target) });
  }
  body.replaceChildren();
  if (window.uPlot) {
    const width = Math.max(280, body.clientWidth || fig.clientWidth - 24);
    const plot = new uPlot({
      width,
      height: 240,
      series,
      scales: { x: { time: true }, y: { range: (u, min, max) => yRange(chart.unit, min, max) } },
      axes: [{}, { label: chart.unit, size: 60, values: (u, ticks) => ticks.map(axisValue) }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    }, data, body);
    fig.plot = plot;
  } else {
    body.innerHTML = '<p class="failed">The chart library is not installed: run <code>npm ci --prefix dashboard</code> and rebuild.</p>';
  }
  fig.dataset.state = "drawn";
  fig.dataset.points = String(xs.length);
  fig.dataset.series = names.join(",");
  if (state.at) readout(fig, xs, names, lines, Date.parse(state.at) / 1000);
}

/// The exact numbers at one time, as text (what the cursor shows on hover).
function readout(fig, xs, names, lines, x) {
  const i = xs.indexOf(x);
  const dl = document.createElement("dl");
  dl.className = "readout";
  dl.dataset.at = new Date(x * 1000).toISOString();
  if (i < 0) {
    dl.dataset.found = "false";
  } else {
    for (const name of names) {
      const value = lines.get(name)[i];
      const dt = Object.assign(document.createElement("dt"), { textContent: name });
      const dd = Object.assign(document.createElement("dd"), { textContent: value === null ? "–" : String(value) });
      dd.dataset.series = name;
      dl.append(dt, dd);
    }
    if (fig.plot) fig.plot.setCursor({ left: fig.plot.valToPos(x, "x"), top: 10 });
  }
  fig.append(dl);
}

/// The y axis from zero (or below, for negative values) to a little above the top; a
/// flat line gets a unit of room, and a share never goes past 1.
function yRange(unit, min, max) {
  if (min === null || max === null) return [0, 1];
  const low = Math.min(0, min);
  const high = max > low ? max + (max - low) * 0.05 : low + 1;
  return [low, unit === "share" ? Math.min(1, high) : high];
}

// An axis tick: short enough for the axis (2B rather than 2,000,000,000).
const compact = new Intl.NumberFormat("en", { notation: "compact", maximumSignificantDigits: 4 });
function axisValue(v) {
  return typeof v === "number" && Math.abs(v) >= 10000 ? compact.format(v) : format(v);
}

function format(v) {
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return v.toLocaleString("en");
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3);
}

async function poll() {
  if (!state.token) return;
  try {
    const { version } = await api("/api/v1/dashboard/version");
    if (state.version !== null && version !== state.version) await load();
  } catch (e) {
    status("Refresh failed: " + e.message);
  }
}

function report(message) {
  const box = document.getElementById("errors");
  box.hidden = false;
  box.textContent += message + "\n";
}

window.addEventListener("error", (e) => report(e.message));
window.addEventListener("unhandledrejection", (e) => report(String(e.reason && e.reason.message || e.reason)));

document.getElementById("signin").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = document.getElementById("token").value.trim();
  sessionStorage.setItem("sluice.token", state.token);
  load().catch((err) => status(err.message));
});
document.getElementById("controls").addEventListener("submit", (e) => {
  e.preventDefault();
  load().catch((err) => status(err.message));
});
document.getElementById("range").addEventListener("change", () => load().catch((err) => status(err.message)));
document.getElementById("signout").addEventListener("click", () => signOut());
let resizing;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => render(state.charts), 200);
});

// Served by `sluice run --metrics-addr`: the run's own counters, charted live.
const LIVE_MS = 2000;
const LIVE_KEEP = 900;
const live = { previous: null, rows: {} };
const LIVE_CHARTS = [
  ["live_records", "Records per second, per topic", "records/s"],
  ["live_lag", "Consumer lag per topic (messages not read yet)", "messages"],
  ["live_watermark", "Watermark delay per topic (now minus the topic's event-time watermark)", "s"],
  ["live_bad_late", "Dead letters and late events per minute", "per minute"],
  ["live_commits", "Commits per minute and commit time", "per minute / ms"],
];

async function startLive() {
  document.getElementById("signin").hidden = true;
  document.getElementById("controls").hidden = true;
  document.getElementById("who").textContent = "live pipeline";
  await tick();
  setInterval(() => tick().catch((e) => status("Refresh failed: " + e.message)), LIVE_MS);
}

async function tick() {
  const now = await (await fetch("/api/v1/pipeline")).json();
  const prev = live.previous;
  live.previous = now;
  if (!prev) return status("Waiting for a second sample…");
  const dt = now.now_s - prev.now_s;
  const t = new Date(now.now_s * 1000).toISOString();
  const push = (id, row) => {
    const rows = (live.rows[id] = live.rows[id] || []);
    rows.push(Object.assign({ t }, row));
    if (rows.length > LIVE_KEEP * 20) rows.splice(0, rows.length - LIVE_KEEP * 20);
  };
  let bad = 0, late = 0;
  for (const [topic, c] of Object.entries(now.topics)) {
    const p = prev.topics[topic] || { records: 0, bad: 0, late: 0 };
    push("live_records", { series: topic, value: (c.records - p.records) / dt });
    push("live_lag", { series: topic, value: c.lag });
    if (c.watermark_s !== null) push("live_watermark", { series: topic, value: now.now_s - c.watermark_s });
    bad += c.bad - p.bad;
    late += c.late - p.late;
  }
  push("live_bad_late", { dead_letters: (bad / dt) * 60, late_events: (late / dt) * 60 });
  const commits = now.commits - prev.commits;
  push("live_commits", {
    commits_per_minute: (commits / dt) * 60,
    commit_ms: commits > 0 ? ((now.commit_seconds_sum - prev.commit_seconds_sum) / commits) * 1000 : null,
  });
  const charts = LIVE_CHARTS.map(([id, title, unit]) => {
    const rows = live.rows[id] || [];
    return {
      id, title, unit, section: "Pipeline", kind: "lines", target: null, subject: null, error: null, rows,
      columns: rows.length ? Object.keys(rows[rows.length - 1]) : ["t"],
      sql: "-- not SQL: the run's own counters, from GET /api/v1/pipeline (/metrics has them for Prometheus)",
    };
  });
  charts.push(...liveTables(now));
  state.charts = charts;
  render(charts);
  status(`Live: ${now.commits} commits, ${now.rows_committed.toLocaleString("en")} rows committed, ${now.open_windows} open windows` +
    (now.store_unavailable ? ": the lake's store is not answering, commits are being retried" : ".") +
    (now.shards ? ` This instance of the consumer group runs shards ${now.shards.length ? now.shards.join(", ") : "none (yet)"}.` : ""));
}

/// The live view's tables: backfills under way, and each table's lineage.
function liveTables(now) {
  const table = (id, title, rows, columns, sql) => ({
    id, title, unit: "", section: "Pipeline", kind: "table", target: null, subject: null, rows, columns, sql,
    error: rows.length ? null : "no data yet: " + (id === "live_backfills" ? "no table is being backfilled" : "no tables"),
  });
  const backfills = (now.backfills || []).map((b) => ({
    table: b.table,
    "events replayed": b.done,
    of: b.total,
    share: b.total ? Math.round((100 * b.done) / b.total) + " %" : "",
    "events/s": b.events_per_second,
    "time left": b.done >= b.total ? "joined" : b.seconds_left === null ? "" : b.seconds_left + " s",
  }));
  return [
    table("live_backfills", "Backfills from the archive", backfills, ["table", "events replayed", "of", "share", "events/s", "time left"],
      "-- not SQL: the run's backfill progress, from GET /api/v1/pipeline (/metrics: sluice_backfill_messages)"),
    table("live_tables", "Tables: what each reads and what reads it", (now.tables || []).map((t) => ({ table: t.table, reads: t.reads, "read by": t.read_by })), ["table", "reads", "read by"],
      "-- not SQL: the running definitions' lineage, from GET /api/v1/pipeline (sluice explain TABLE shows the same)"),
  ];
}

async function start() {
  fragment();
  const pipeline = await fetch("/api/v1/pipeline").then((r) => r.ok).catch(() => false);
  if (pipeline) return startLive();
  load().catch((err) => status(err.message));
  setInterval(poll, POLL_MS);
}

start();
