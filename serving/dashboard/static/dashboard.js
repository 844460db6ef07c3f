// The live page: polls GET /v1/dashboard/state and draws it. No build step; uPlot (vendored) draws the charts.
// An admin key, when the service has keys, comes from the form or from the URL's fragment (#key=...), and is
// kept in this tab's sessionStorage only.
"use strict";

const COLORS = { cache: "#2e86c1", scout: "#28b463", validator: "#8e44ad", coalesced: "#f39c12", error: "#c0392b" };
const charts = {};
let refreshMs = 2000;
let timer = null;

function takeKeyFromFragment() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    sessionStorage.setItem("infopt-key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // the key leaves the address bar
  }
}

function fmt(x, digits = 0) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return Number(x).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = document.createElement("tr");
    cells.forEach((c) => tr.appendChild(c instanceof Node ? c : cell(String(c))));
    return tr;
  }));
}

function lineChart(id, seriesNames, colors) {
  const el = document.getElementById(id);
  const opts = {
    width: Math.max(280, el.clientWidth), height: 220,
    series: [{}].concat(seriesNames.map((name) => ({ label: name, stroke: colors[name] || "#555", width: 2,
                                                     points: { show: false } }))),
    axes: [{}, { size: 50 }],
    scales: { x: { time: true } },
    legend: { live: false },
  };
  const data = [[]].concat(seriesNames.map(() => []));
  el.replaceChildren();
  return new uPlot(opts, data, el);
}

function draw(id, names, colors, xs, ys) {
  const key = id + ":" + names.join(",");
  if (!charts[id] || charts[id].key !== key) {
    if (charts[id]) charts[id].plot.destroy();
    charts[id] = { key, plot: lineChart(id, names, colors) };
  }
  charts[id].plot.setData([xs].concat(ys));
  // What the browser test reads: how many points carry data.
  const points = ys.reduce((n, y) => n + y.filter((v) => v > 0).length, 0);
  document.getElementById(id).dataset.drawn = String(points);
}

function render(s) {
  refreshMs = Math.max(500, (s.refresh_s || 2) * 1000);
  document.querySelectorAll(".bucket").forEach((e) => { e.textContent = fmt(s.bucket_s); });
  const w = s.window;
  const mix = s.series.mix;
  const names = Object.keys(mix);
  const served = names.filter((p) => p !== "error").reduce((n, p) => n + mix[p].reduce((a, b) => a + b, 0), 0);
  const cacheServed = (mix.cache || []).reduce((a, b) => a + b, 0);
  document.getElementById("t-requests").textContent = fmt(w.requests);
  document.getElementById("t-saved").textContent = w.saved_share === null ? "–" : fmt(100 * w.saved_share, 1) + "%";
  document.getElementById("t-hits").textContent = served ? fmt(100 * cacheServed / served, 1) + "%" : "–";
  document.getElementById("t-errors").textContent = fmt(w.errors);
  document.getElementById("t-calibration").textContent = (s.quality && s.quality.calibration) || "–";

  draw("chart-mix", names, COLORS, s.series.t, names.map((p) => mix[p]));
  draw("chart-savings", ["validator-only", "spent"], { "validator-only": "#95a5a6", spent: "#8e44ad" },
       s.series.t, [s.series.validator_only_s, s.series.validator_s]);

  fillRows(document.querySelector("#latency tbody"), Object.entries(s.latency).map(([p, l]) =>
    [p, fmt(l.requests), fmt(l.p50_ms), fmt(l.p95_ms), fmt(l.p99_ms), fmt(l.ttft_p50_ms)]));

  const q = s.quality || {};
  const eps = q.epsilon;
  document.getElementById("quality-note").textContent = q.audit === "off"
    ? "The audit is off in this deployment (quality.audit)."
    : `ε = ${eps}, δ = ${q.delta}; a bound above ε tightens the shortcut.`;
  fillRows(document.querySelector("#quality tbody"), (q.estimates || []).map((e) => {
    const over = eps !== undefined && e.upper > eps;
    const bar = document.createElement("span");
    bar.className = "bar" + (over ? " over" : "");
    bar.style.width = Math.min(120, Math.round(120 * e.upper / Math.max(eps || 0.01, 1e-9) / 4)) + "px";
    const td = document.createElement("td");
    td.appendChild(bar);
    return [e.path, e.namespace, fmt(e.audits), fmt(e.disagreements),
            cell(fmt(100 * e.upper, 2) + "%", over ? "over-text" : ""), td];
  }));

  const c = s.cache;
  const cacheRows = [];
  if (!c) cacheRows.push(["cache", "off"]);
  else if (c.error) cacheRows.push(["cache", c.error]);
  else {
    cacheRows.push(["entries", fmt(c.entries)], ["rule", c.rule + (c.verifier ? ` (${c.verifier})` : "")],
                   ["similarity threshold", c.similarity_threshold]);
    Object.entries(c.counters || {}).forEach(([k, v]) => cacheRows.push([k, fmt(v)]));
  }
  fillRows(document.querySelector("#cache tbody"), cacheRows);

  const queue = s.queue;
  fillRows(document.querySelector("#queue tbody"), queue
    ? [["engine work in flight", `${queue.active} / ${queue.limit}`],
       ["waiting", queue.max_waiting ? `${queue.waiting} / ${queue.max_waiting}` : String(queue.waiting)]]
    : [["queue", "no limit of our own (api.max_in_flight)"]]);
  const reps = [];
  Object.values(s.replicas || {}).forEach((deployments) => Object.entries(deployments).forEach(([d, states]) =>
    reps.push([d, Object.entries(states).map(([k, v]) => `${v} ${k.toLowerCase()}`).join(", ")])));
  fillRows(document.querySelector("#replicas tbody"), reps.length ? reps : [["–", "unknown"]]);

  fillRows(document.querySelector("#stages tbody"), Object.entries(s.stages).map(([name, v]) =>
    [name, fmt(v.count), fmt(v.p50_ms, 1), fmt(v.p99_ms, 1)]));

  document.getElementById("status").textContent =
    `profile ${s.profile} · updated ${new Date(s.now * 1000).toLocaleTimeString()} · window ${fmt(s.window_s / 60)} min`;
  document.body.dataset.ready = "1";
}

async function poll() {
  const key = sessionStorage.getItem("infopt-key");
  try {
    const r = await fetch("/v1/dashboard/state", { headers: key ? { Authorization: "Bearer " + key } : {} });
    if (r.status === 401 || r.status === 403) {
      document.getElementById("keyform").hidden = false;
      document.getElementById("status").textContent = r.status === 401 ? "an admin key is needed" : "that key is not an admin key";
    } else if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      document.getElementById("status").textContent = `error ${r.status}: ${(body.error && body.error.message) || r.statusText}`;
    } else {
      document.getElementById("keyform").hidden = true;
      render(await r.json());
    }
  } catch (e) {
    document.getElementById("status").textContent = "cannot reach the service: " + e;
  }
  clearTimeout(timer);
  timer = setTimeout(poll, refreshMs);
}

document.getElementById("keyform").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("infopt-key", document.getElementById("key").value.trim());
  poll();
});
window.addEventListener("resize", () => Object.values(charts).forEach(({ plot }) => {
  plot.setSize({ width: Math.max(280, plot.root.parentElement.clientWidth), height: 220 });
}));
takeKeyFromFragment();
poll();
