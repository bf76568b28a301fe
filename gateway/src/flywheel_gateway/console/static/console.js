// Flywheel console: live updates (server-sent events from the services' Watch RPCs) and charts
// (SVG drawn here from the page's JSON). No framework and nothing from the network but this
// gateway: a few hundred points per chart need no chart library, and the console must work offline.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];
const TERMINAL = ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"];

function shortEnum(value) {
  const text = String(value ?? "");
  const m = text.match(/^(JOB_STATE|LOOP_STAGE|GATE_DECISION|FINE_TUNE_METHOD)_(.*)$/);
  return (m ? m[2] : text).toLowerCase().replace(/_/g, " ");
}

function stateClass(value) {
  return { JOB_STATE_SUCCEEDED: "ok", JOB_STATE_FAILED: "bad", JOB_STATE_RUNNING: "live" }[value] || "muted";
}

function pick(obj, path) {
  return path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

function readJson(id) {
  const el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}

// ------------------------------------------------------------------ charts

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v) {
  if (!isFinite(v)) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

function frame(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const w = svg.clientWidth || 480;
  const h = svg.clientHeight || 220;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  return { w, h, left: 56, right: 12, top: 10, bottom: 34 };
}

function axes(svg, f, x0, x1, y0, y1) {
  const sx = (x) => f.left + ((x - x0) / (x1 - x0 || 1)) * (f.w - f.left - f.right);
  const sy = (y) => f.h - f.bottom - ((y - y0) / (y1 - y0 || 1)) * (f.h - f.top - f.bottom);
  el("line", { x1: f.left, y1: f.h - f.bottom, x2: f.w - f.right, y2: f.h - f.bottom, class: "axis" }, svg);
  el("line", { x1: f.left, y1: f.top, x2: f.left, y2: f.h - f.bottom, class: "axis" }, svg);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    el("line", { x1: f.left, x2: f.w - f.right, y1: sy(y), y2: sy(y), class: "grid" }, svg);
    el("text", { x: f.left - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, svg).textContent = fmt(y);
  }
  return { sx, sy };
}

function empty(svg, f, text) {
  el("text", { x: f.w / 2, y: f.h / 2, "text-anchor": "middle", class: "empty" }, svg).textContent = text;
}

// A line per series; points = [{x, y, err?}], one array per series.
function lineChart(svg, series) {
  const f = frame(svg);
  const shown = series.filter((s) => s.points.length > 0);
  svg.dataset.points = String(shown.reduce((n, s) => n + s.points.length, 0));
  if (!shown.length) return empty(svg, f, "no data yet");
  const xs = shown.flatMap((s) => s.points.map((p) => p.x));
  const ys = shown.flatMap((s) => s.points.flatMap((p) => [p.y - (p.err || 0), p.y + (p.err || 0)]));
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pad = (y1 - y0) * 0.05;
  const { sx, sy } = axes(svg, f, x0, x1, y0 - pad, y1 + pad);
  el("text", { x: f.left, y: f.h - 8, class: "tick" }, svg).textContent = fmt(x0);
  el("text", { x: f.w - f.right, y: f.h - 8, "text-anchor": "end", class: "tick" }, svg).textContent = fmt(x1);
  shown.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.slice().sort((a, b) => a.x - b.x);
    for (const p of pts) {
      if (p.err) el("line", { x1: sx(p.x), x2: sx(p.x), y1: sy(p.y - p.err), y2: sy(p.y + p.err), stroke: color, class: "err" }, svg);
    }
    el("polyline", { points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" "), stroke: color, class: "line" }, svg);
    for (const p of pts) el("circle", { cx: sx(p.x), cy: sy(p.y), r: pts.length > 60 ? 1.5 : 3, fill: color }, svg);
    const lx = f.left + 8 + i * 130;
    el("rect", { x: lx, y: f.top + 2, width: 10, height: 10, fill: color }, svg);
    el("text", { x: lx + 14, y: f.top + 11, class: "legend" }, svg).textContent = s.name;
  });
}

// One bar per model with its confidence interval when the data has one.
function barChart(svg, rows, key) {
  const f = frame(svg);
  svg.dataset.points = String(rows.length);
  if (!rows.length) return empty(svg, f, "no figures yet");
  const vals = rows.map((r) => Number(r[key] || 0));
  const cis = rows.map((r) => (key === "pass_rate" ? r.pass_rate_ci || null : null));
  const hi = Math.max(...vals, ...cis.map((c) => (c ? Number(c.upper || 0) : 0)), key === "pass_rate" ? 1 : 0.001);
  const { sy } = axes(svg, f, 0, 1, 0, hi);
  const band = (f.w - f.left - f.right) / rows.length;
  rows.forEach((r, i) => {
    const x = f.left + i * band + band * 0.2;
    const color = r.baseline ? "#94a3b8" : COLORS[0];
    el("rect", { x, y: sy(vals[i]), width: band * 0.6, height: sy(0) - sy(vals[i]), fill: color, class: "bar" }, svg);
    const c = cis[i];
    if (c) {
      const cx = x + band * 0.3;
      el("line", { x1: cx, x2: cx, y1: sy(Number(c.lower || 0)), y2: sy(Number(c.upper || 0)), class: "ci" }, svg);
    }
    el("text", { x: x + band * 0.3, y: f.h - 10, "text-anchor": "middle", class: "tick" }, svg).textContent = r.model;
  });
}

// A training log step (live) or a log_history row (from the adapter's manifest) as one flat point.
function flatPoint(raw) {
  if (raw && raw.metrics) {
    const m = raw.metrics;
    return { step: Number(m.step ?? pick(raw, "progress.step") ?? 0), ...m, ...(m.extra || {}) };
  }
  return raw;
}

const charts = [];

function drawAll() {
  for (const c of charts) c.draw();
}

function setupCharts() {
  for (const svg of document.querySelectorAll("svg[data-chart]")) {
    const data = readJson(svg.dataset.source);
    if (!data) continue;
    const chart = { svg, data };
    if (svg.dataset.chart === "bars") {
      chart.draw = () => barChart(svg, chart.data, svg.dataset.key);
    } else if (svg.dataset.series) {
      chart.draw = () => {
        const names = svg.dataset.series.split(",");
        const points = (chart.data.points || []).map(flatPoint);
        lineChart(
          svg,
          names.map((name) => ({
            name: name.replace(/_/g, " "),
            points: points
              .filter((p) => typeof p[name] === "number" && isFinite(p[name]))
              .map((p) => ({ x: Number(p[chart.data.x] ?? 0), y: p[name] })),
          })),
        );
      };
    } else {
      chart.draw = () =>
        lineChart(
          svg,
          (chart.data.series || []).map((s) => ({
            name: s.name,
            points: (chart.data.points || [])
              .filter((p) => typeof p[s.y] === "number")
              .map((p) => ({ x: Number(p[chart.data.x] ?? 0), y: p[s.y], err: s.err ? Number(p[s.err] || 0) : 0 })),
          })),
        );
    }
    charts.push(chart);
  }
  drawAll();
  let pending = null;
  window.addEventListener("resize", () => {
    clearTimeout(pending);
    pending = setTimeout(drawAll, 100);
  });
}

// ------------------------------------------------------------------ live updates

function applySnapshot(resource) {
  for (const node of document.querySelectorAll("[data-live]")) {
    const value = pick(resource, node.dataset.live);
    if (value === undefined) continue;
    if (node.dataset.live === "state") {
      node.innerHTML = "";
      const badge = document.createElement("span");
      badge.className = `state ${stateClass(value)}`;
      badge.textContent = shortEnum(value);
      node.appendChild(badge);
    } else if (node.dataset.format === "short") {
      node.textContent = shortEnum(value);
    } else if (node.dataset.format === "num" && typeof value === "number") {
      node.textContent = fmt(value);
    } else {
      node.textContent = String(value);
    }
  }
}

function addLog(log) {
  for (const c of charts) {
    if (c.data && Array.isArray(c.data.points) && c.svg.dataset.series) {
      c.data.points.push(log);
    }
  }
  drawAll();
  const counter = document.getElementById("points-count");
  const lossChart = charts.find((c) => c.svg.dataset.series);
  if (counter && lossChart) counter.textContent = String(lossChart.data.points.length);
}

function addEpisode(ep) {
  const body = document.querySelector("#episodes tbody");
  if (!body || !ep.trajectory_id || document.getElementById(`ep-${ep.trajectory_id}`)) return;
  const placeholder = body.querySelector("td.muted");
  if (placeholder) placeholder.parentElement.remove();
  const row = document.createElement("tr");
  row.id = `ep-${ep.trajectory_id}`;
  const cells = [ep.trajectory_id, ep.task_id || "", String(ep.attempt || 0), ep.resolved ? "resolved" : shortEnum(ep.failure_category || "unresolved")];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    if (i === 0) {
      const a = document.createElement("a");
      a.href = `/console/trajectories/${encodeURIComponent(text)}`;
      a.textContent = text;
      td.appendChild(a);
    } else td.textContent = text;
    row.appendChild(td);
  });
  body.appendChild(row);
}

function setupStreams() {
  for (const node of document.querySelectorAll("[data-stream]")) {
    const initial = (document.querySelector('[data-live="state"] .state') || {}).textContent;
    const source = new EventSource(node.dataset.stream);
    let reloading = false;
    const onSnapshot = (event) => {
      const resource = JSON.parse(event.data);
      applySnapshot(resource);
      // A resource that reached its end: show the whole page as it is now (tables, gate, history).
      if (!reloading && TERMINAL.includes(resource.state) && initial && shortEnum(resource.state) !== initial.trim()) {
        reloading = true;
        source.close();
        setTimeout(() => window.location.reload(), 400);
      }
    };
    for (const kind of ["run", "evaluation", "loop", "job", "optimization"]) source.addEventListener(kind, onSnapshot);
    source.addEventListener("log", (event) => addLog(JSON.parse(event.data)));
    source.addEventListener("episode", (event) => addEpisode(JSON.parse(event.data)));
    source.addEventListener("end", () => source.close());
    source.addEventListener("failed", (event) => {
      source.close();
      const data = JSON.parse(event.data);
      node.className = "banner bad";
      node.textContent = `live updates stopped: ${data.code} ${data.message}`;
    });
  }
}

function setupActions() {
  for (const button of document.querySelectorAll("button[data-cancel]")) {
    button.addEventListener("click", async () => {
      button.disabled = true;
      const reply = await fetch(button.dataset.cancel, { method: "POST", headers: { "x-flywheel-console": "1" } });
      if (!reply.ok) {
        const body = await reply.json().catch(() => ({}));
        button.textContent = (body.error && body.error.message) || `failed (${reply.status})`;
        return;
      }
      window.location.reload();
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupCharts();
  setupStreams();
  setupActions();
});
