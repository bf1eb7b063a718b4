// infertap flight recorder: plain JavaScript, no library, no build step. Reads this endpoint's
// `spans`, `status`, `gpu/series` and `ticks` by relative URLs (works behind kubectl port-forward).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = 1500;
const $ = (id) => document.getElementById(id);

const state = {
  spans: [],
  byId: new Map(),
  sort: { key: "start", dir: -1 },
  selected: null,
  spansLimit: 1000,
};

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) {
    const e = new Error(path + ": HTTP " + r.status);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

const attr = (span, key) => (key in span.attributes ? span.attributes[key] : null);
const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
const fmt = (v, digits = 0) => (v === null ? "" : v.toFixed(digits));

function statusOf(span) {
  if (attr(span, "infertap.server_aborted")) return "aborted";
  if (span.status.code === "error") return "error";
  if (attr(span, "infertap.cancelled")) return "cancelled";
  if (attr(span, "infertap.incomplete")) return "incomplete";
  return "ok";
}

// One table row's values, from one span of `spans`.
function rowOf(span) {
  const start = span.start_time_unix_nano;
  const durS = (span.end_time_unix_nano - start) / 1e9;
  const ttft = num(attr(span, "gen_ai.latency.time_to_first_token"));
  const itl = num(attr(span, "infertap.inter_token_latency.p95"));
  const busy = num(attr(span, "infertap.gpu.share.busy_time"));
  const pid = attr(span, "process.pid");
  return {
    id: span.span_id,
    start,
    model: attr(span, "gen_ai.request.model") || attr(span, "gen_ai.response.model") || "",
    pod: attr(span, "k8s.pod.name") || (pid !== null ? "pid " + pid : ""),
    status: statusOf(span),
    error: span.status.code === "error",
    cancelled: !!attr(span, "infertap.cancelled"),
    incomplete: !!attr(span, "infertap.incomplete"),
    ttft: ttft === null ? null : ttft * 1000,
    itl: itl === null ? null : itl * 1000,
    tokens: num(attr(span, "gen_ai.usage.output_tokens")),
    inTokens: num(attr(span, "gen_ai.usage.input_tokens")),
    duration: durS * 1000,
    gpu: busy === null || durS <= 0 ? null : (100 * busy) / durS,
    joules: num(attr(span, "infertap.gpu.share.energy")),
    name: span.name,
  };
}

function filters() {
  return {
    model: $("f-model").value,
    pod: $("f-pod").value,
    status: $("f-status").value,
    slow: $("f-slow").checked,
    ttftMs: Number($("f-ttft-ms").value) || 0,
    itlMs: Number($("f-itl-ms").value) || 0,
    errors: $("f-errors").checked,
    cancelled: $("f-cancelled").checked,
    incomplete: $("f-incomplete").checked,
  };
}

function passes(row, f) {
  if (f.model && row.model !== f.model) return false;
  if (f.pod && row.pod !== f.pod) return false;
  if (f.status && row.status !== f.status) return false;
  if (f.slow && !((row.ttft !== null && row.ttft > f.ttftMs) || (row.itl !== null && row.itl > f.itlMs))) return false;
  if (f.errors && !row.error) return false;
  if (f.cancelled && !row.cancelled) return false;
  if (f.incomplete && !row.incomplete) return false;
  return true;
}

function compare(a, b, key) {
  const x = a[key], y = b[key];
  if (x === y) return 0;
  if (x === null || x === undefined) return 1;
  if (y === null || y === undefined) return -1;
  return x < y ? -1 : 1;
}

function fillSelect(select, values) {
  const keep = select.value;
  const have = new Set([...select.options].map((o) => o.value));
  for (const v of [...values].sort()) {
    if (v && !have.has(v)) select.add(new Option(v, v));
  }
  select.value = keep;
}

function el(tag, props = {}, text) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderTable() {
  const rows = state.spans.map(rowOf);
  fillSelect($("f-model"), new Set(rows.map((r) => r.model)));
  fillSelect($("f-pod"), new Set(rows.map((r) => r.pod)));
  const f = filters();
  const shown = rows.filter((r) => passes(r, f));
  const { key, dir } = state.sort;
  shown.sort((a, b) => dir * compare(a, b, key) || (a.id < b.id ? -1 : 1));
  const body = document.createElement("tbody");
  for (const r of shown) {
    const tr = el("tr");
    tr.dataset.spanId = r.id;
    if (r.id === state.selected) tr.classList.add("selected");
    const cells = [
      [new Date(r.start / 1e6).toLocaleTimeString(), ""],
      [r.model || r.name, ""],
      [r.pod, ""],
      [r.status, "st-" + r.status],
      [fmt(r.ttft, 1), "num"],
      [fmt(r.itl, 1), "num"],
      [r.tokens === null ? "" : String(r.tokens), "num"],
      [fmt(r.duration, 1), "num"],
      [r.gpu === null ? "" : r.gpu.toFixed(1) + " %", "num"],
      [fmt(r.joules, 2), "num"],
    ];
    for (const [text, cls] of cells) tr.append(el("td", { className: cls }, text));
    if (r.inTokens !== null) tr.cells[6].title = r.inTokens + " input tokens";
    tr.addEventListener("click", () => openRequest(r.id));
    body.append(tr);
  }
  $("requests").tBodies[0].replaceWith(body);
  $("row-count").textContent = shown.length + " of " + rows.length;
  for (const th of $("requests").tHead.rows[0].cells) {
    th.classList.toggle("sorted-asc", th.dataset.key === key && dir > 0);
    th.classList.toggle("sorted-desc", th.dataset.key === key && dir < 0);
  }
}

// ---- health --------------------------------------------------------------------------------

const sum = (o) => Object.values(o || {}).reduce((a, b) => a + (Number(b) || 0), 0);

function renderHealth(s) {
  $("agent-version").textContent = "v" + s.version;
  const kernelDropped = sum(s.records.kernel_dropped);
  const parseFailures = s.http.parse_failures + s.http.sse_parse_failures + s.http.json_parse_failures
    + (s.http2 ? s.http2.frame_errors : 0);
  const attached = s.probes.filter((p) => p.attached).length;
  const ex = s.exporter;
  const sampling = ex.sampling || {};
  // [key, label, value, severity: "" | "warn" (loss) | "bad"]
  const items = [
    ["targets", "targets", s.targets.length + (s.targets.length ? " (" + s.targets.map((t) => t.comm + " " + t.pid).slice(0, 3).join(", ") + ")" : ""), s.targets.length ? "" : "warn"],
    ["probes", "probes attached", attached + " / " + s.probes.length, attached < s.probes.length ? "bad" : ""],
    ["connections", "connections open", String(s.connections.open), ""],
    ["records_read", "records read", String(s.records.read), ""],
    ["kernel_dropped", "records dropped in kernel", String(kernelDropped), kernelDropped ? "warn" : ""],
    ["lost_bytes", "bytes lost", String(s.records.lost_bytes), s.records.lost_bytes ? "warn" : ""],
    ["requests_lost", "requests lost", String(s.http.requests_lost), s.http.requests_lost ? "warn" : ""],
    ["requests_incomplete", "requests incomplete", String(s.http.requests_incomplete), s.http.requests_incomplete ? "warn" : ""],
    ["malformed", "malformed records", String(s.records.malformed), s.records.malformed ? "warn" : ""],
    ["connections_shed", "connections shed", String(s.connections.shed_total + s.connections.lost_in_kernel_total), (s.connections.shed_total + s.connections.lost_in_kernel_total) ? "warn" : ""],
    ["parse_failures", "parse failures", String(parseFailures), parseFailures ? "warn" : ""],
    ["exporter", "exporter", ex.state + (ex.endpoint ? " → " + ex.endpoint : ""), ex.state.startsWith("failing") ? "bad" : ""],
    ["spans_exported", "spans exported", String(ex.spans_exported), ""],
    ["spans_export_lost", "spans failed / shed", ex.spans_failed + " / " + ex.spans_dropped, ex.spans_failed + ex.spans_dropped ? "warn" : ""],
    ["sampler", "sampler", (sampling.sampler || "—") + (sampling.ratio !== null && sampling.ratio !== undefined ? " " + sampling.ratio : ""), ""],
    ["gpu", "GPU source", s.gpu.state + (s.gpu.source ? " (" + s.gpu.source + ")" : "") + (s.gpu.devices ? ", " + s.gpu.devices + " GPU" : ""), s.gpu.state === "failing" || s.gpu.state === "failed" ? "bad" : ""],
  ];
  const grid = $("health-grid");
  grid.replaceChildren();
  for (const [key, label, value, sev] of items) {
    const d = el("div", { className: "metric" + (sev ? " " + sev : "") });
    d.dataset.key = key;
    d.append(el("span", { className: "k" }, label), el("span", { className: "v" }, value));
    grid.append(d);
  }
  // Loss, said prominently: anything the agent could not see or could not send.
  const losses = [];
  if (kernelDropped) {
    const per = Object.entries(s.records.kernel_dropped).filter(([, n]) => n).map(([r, n]) => r + " " + n).join(", ");
    losses.push(kernelDropped + " records dropped in the kernel (" + per + ")");
  }
  if (s.records.lost_bytes) losses.push(s.records.lost_bytes + " bytes lost");
  if (s.http.requests_lost) losses.push(s.http.requests_lost + " requests lost");
  if (s.http.requests_incomplete) losses.push(s.http.requests_incomplete + " requests incomplete");
  if (s.records.malformed) losses.push(s.records.malformed + " malformed records");
  if (s.connections.shed_total) losses.push(s.connections.shed_total + " connections shed");
  if (s.connections.lost_in_kernel_total) losses.push(s.connections.lost_in_kernel_total + " connections lost in the kernel");
  if (ex.spans_dropped) losses.push(ex.spans_dropped + " spans shed from the export queue");
  if (ex.spans_failed) losses.push(ex.spans_failed + " spans failed to export");
  const w = $("loss-warning");
  w.hidden = losses.length === 0;
  w.textContent = losses.length ? "⚠ Telemetry lost: " + losses.join("; ") + "." : "";
}

// ---- request view --------------------------------------------------------------------------

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function openRequest(id) {
  const span = state.byId.get(id);
  if (!span) return;
  state.selected = id;
  if (location.hash !== "#span=" + id) history.replaceState(null, "", "#span=" + id);
  for (const tr of $("requests").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.spanId === id);
  const start = span.start_time_unix_nano, end = span.end_time_unix_nano;
  const pad = Math.max(0.1 * (end - start), 200e6);
  const from = Math.max(0, Math.floor(start - pad)), to = Math.ceil(end + pad);
  const [ticks, series] = await Promise.all([
    getJSON("ticks?span_id=" + id).catch(() => null),
    getJSON("gpu/series?from=" + from + "&to=" + to).catch(() => ({ devices: [] })),
  ]);
  if (state.selected !== id) return;
  $("request-view").hidden = false;
  $("rv-title").textContent = span.name + " — " + statusOf(span);
  $("rv-ids").textContent = "trace " + span.trace_id + "  span " + span.span_id + (span.parent_span_id ? "  parent " + span.parent_span_id : "");
  drawTimeline(span, ticks, series, from, to);
  renderTrace(span);
  renderAttributes(span);
}

function drawTimeline(span, ticks, series, t0, t1) {
  const root = $("timeline");
  root.replaceChildren();
  const W = Math.max(600, $("request-view").clientWidth - 30);
  const L = 150, R = 20;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const start = span.start_time_unix_nano, end = span.end_time_unix_nano;
  root.dataset.t0 = t0;
  root.dataset.t1 = t1;
  let y = 4;
  // Time axis: ms after the request's start.
  const stepMs = niceStep((t1 - t0) / 1e6 / 8);
  for (let ms = Math.ceil((t0 - start) / 1e6 / stepMs) * stepMs; start + ms * 1e6 <= t1; ms += stepMs) {
    const px = x(start + ms * 1e6);
    root.append(svg("line", { x1: px, x2: px, y1: y + 14, y2: y + 18, stroke: "#999" }));
    root.append(svg("text", { x: px, y: y + 11, "font-size": 10, "text-anchor": "middle", fill: "#666" }, ms + " ms"));
  }
  y += 24;
  // This request: bar, first token, content chunks.
  root.append(svg("text", { x: 4, y: y + 13, "font-size": 12 }, "this request"));
  root.append(svg("rect", { id: "wf-bar", x: x(start), y, width: Math.max(1, x(end) - x(start)), height: 18, fill: "#7aa5ee" }));
  const ttft = num(attr(span, "gen_ai.latency.time_to_first_token"));
  if (ticks && ticks.offsets_us) {
    for (const us of ticks.offsets_us) {
      const px = x(start + us * 1000);
      root.append(svg("line", { class: "wf-tick", x1: px, x2: px, y1: y + 3, y2: y + 15, stroke: "#1d2330", "stroke-width": 1 }));
    }
  }
  // The server's own phases (vLLM's per-request metrics, llama.cpp's timings), laid back from the
  // first token: prefill ends there, the queue before it, decode after it.
  const queue = num(attr(span, "gen_ai.latency.time_in_queue"));
  const prefill = num(attr(span, "gen_ai.latency.time_in_model_prefill"));
  const decode = num(attr(span, "gen_ai.latency.time_in_model_decode"));
  if (ttft !== null && (queue !== null || prefill !== null || decode !== null)) {
    const first = start + ttft * 1e9;
    const phases = [
      ["queue", first - ((prefill || 0) + (queue || 0)) * 1e9, queue, "#f2c14e"],
      ["prefill", first - (prefill || 0) * 1e9, prefill, "#e4572e"],
      ["decode", first, decode, "#4caf50"],
    ];
    for (const [name, from, secs, color] of phases) {
      if (secs === null || secs <= 0) continue;
      const r = svg("rect", { id: "wf-phase-" + name, class: "wf-phase", x: x(from), y: y + 20, width: Math.max(1, x(from + secs * 1e9) - x(from)), height: 4, fill: color });
      r.append(svg("title", {}, name + " " + (secs * 1000).toFixed(1) + " ms (reported by the server)"));
      root.append(r);
    }
  }
  if (ttft !== null) {
    const px = x(start + ttft * 1e9);
    root.append(svg("line", { id: "wf-first-token", x1: px, x2: px, y1: y - 4, y2: y + 22, stroke: "#d32f2f", "stroke-width": 2 }));
  }
  y += 26;
  // Other requests of the same process (or GPUs) in flight meanwhile.
  const pid = attr(span, "process.pid");
  const gpus = attr(span, "infertap.gpu.ids") || [];
  const others = state.spans.filter((s) => s.span_id !== span.span_id
    && s.start_time_unix_nano < t1 && s.end_time_unix_nano > t0
    && ((pid !== null && attr(s, "process.pid") === pid)
      || (gpus.length && (attr(s, "infertap.gpu.ids") || []).some((g) => gpus.includes(g)))))
    .slice(0, 16);
  if (others.length) root.append(svg("text", { x: 4, y: y + 9, "font-size": 12 }, "in flight (" + others.length + ")"));
  for (const o of others) {
    const a = Math.max(o.start_time_unix_nano, t0), b = Math.min(o.end_time_unix_nano, t1);
    const r = svg("rect", { class: "wf-other", x: x(a), y, width: Math.max(1, x(b) - x(a)), height: 7, fill: "#c9cfdb" });
    r.append(svg("title", {}, o.name + " " + o.span_id));
    root.append(r);
    y += 9;
  }
  y += 8;
  // GPU series of the devices serving it (all devices when it names none).
  const devices = series.devices.filter((d) => !gpus.length || gpus.includes(d.uuid));
  const H = 70;
  for (const d of devices) {
    root.append(svg("text", { x: 4, y: y + 14, "font-size": 12 }, "GPU " + d.index));
    root.append(svg("text", { x: 4, y: y + 28, "font-size": 10, fill: "#666" }, (d.name || "").slice(0, 22)));
    if (d.energy_joules !== null && d.energy_joules !== undefined) {
      root.append(svg("text", { x: 4, y: y + 42, "font-size": 10, fill: "#666" }, d.energy_joules.toFixed(1) + " J in view"));
    }
    root.append(svg("rect", { x: L, y, width: W - L - R, height: H, fill: "none", stroke: "#e3e6ec" }));
    const power = d.figures.power || [];
    const maxPower = Math.max(1, ...power.map((p) => p[2]));
    const bw = d.figures.dram_bandwidth && d.figures.dram_bandwidth.length ? ["dram_bandwidth", d.figures.dram_bandwidth] : ["memory_busy", d.figures.memory_busy || []];
    const lines = [
      ["gpu_utilization", d.figures.gpu_utilization || [], 1, "#2f6fdd"],
      [bw[0], bw[1], 1, "#8e44ad"],
      ["power", power, maxPower, "#e67e22"],
    ];
    for (const [figure, points, scale, color] of lines) {
      if (!points.length) continue;
      const yv = (v) => y + H - 2 - (Math.min(1, Math.max(0, v / scale)) * (H - 4));
      let dpath = "";
      for (const [s, e, v] of points) {
        if (e <= t0 || s >= t1) continue;
        const a = x(Math.max(s, t0)), b = x(Math.min(e, t1));
        dpath += (dpath ? " L" : "M") + a.toFixed(1) + " " + yv(v).toFixed(1) + " L" + b.toFixed(1) + " " + yv(v).toFixed(1);
      }
      const p = svg("path", { class: "gpu-series", d: dpath, fill: "none", stroke: color, "stroke-width": 1.5 });
      p.dataset.figure = figure;
      p.dataset.gpu = d.uuid;
      p.dataset.points = points.length;
      root.append(p);
    }
    y += H + 8;
  }
  $("rv-gpu-note").textContent = devices.length ? "" : "No GPU samples for this window (GPU telemetry off, or none kept).";
  // The request's start and end across every row.
  for (const t of [start, end]) {
    root.append(svg("line", { x1: x(t), x2: x(t), y1: 20, y2: y, stroke: "#7aa5ee", "stroke-dasharray": "3 3" }));
  }
  root.setAttribute("width", W);
  root.setAttribute("height", y + 4);
  root.style.width = W + "px";
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-3))));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

function renderTrace(span) {
  const body = $("rv-trace").tBodies[0];
  body.replaceChildren();
  const same = state.spans.filter((s) => s.trace_id === span.trace_id)
    .sort((a, b) => a.start_time_unix_nano - b.start_time_unix_nano);
  for (const s of same) {
    const tr = el("tr");
    if (s.span_id === span.span_id) tr.style.fontWeight = "600";
    const decision = attr(s, "infertap.epp.decision");
    const routing = decision === null ? "" : decision + (attr(s, "infertap.epp.endpoint") ? " → " + attr(s, "infertap.epp.endpoint") : "");
    tr.append(el("td", {}, s.name), el("td", {}, s.kind),
      el("td", { className: "num" }, ((s.start_time_unix_nano - span.start_time_unix_nano) / 1e6).toFixed(1)),
      el("td", { className: "num" }, ((s.end_time_unix_nano - s.start_time_unix_nano) / 1e6).toFixed(1)),
      el("td", {}, routing));
    tr.addEventListener("click", () => openRequest(s.span_id));
    body.append(tr);
  }
}

function renderAttributes(span) {
  const body = $("rv-attrs").tBodies[0];
  body.replaceChildren();
  const rows = [["status", span.status.code + (span.status.message ? ": " + span.status.message : "")], ["kind", span.kind],
    ...Object.entries(span.attributes).sort(([a], [b]) => (a < b ? -1 : 1))];
  for (const [k, v] of rows) {
    const tr = el("tr");
    tr.append(el("td", {}, k), el("td", {}, Array.isArray(v) ? v.join(", ") : String(v)));
    body.append(tr);
  }
}

// ---- refresh -------------------------------------------------------------------------------

async function refresh() {
  try {
    const [spans, status] = await Promise.all([loadSpans(), getJSON("status")]);
    state.spans = spans;
    state.byId = new Map(spans.map((s) => [s.span_id, s]));
    renderHealth(status);
    renderTable();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    // A link to a request (`#span=ID`) opens its view once its span is here.
    const m = /^#span=([0-9a-f]{16})$/.exec(location.hash);
    if (m && state.selected === null && state.byId.has(m[1])) openRequest(m[1]);
  } catch (e) {
    $("updated").textContent = "cannot reach the agent: " + e.message;
  }
}

async function loadSpans() {
  try {
    return await getJSON("spans?limit=" + state.spansLimit);
  } catch (e) {
    if (e.status === 400 && state.spansLimit > 100) {
      state.spansLimit = 100; // a small --span-buffer
      return getJSON("spans?limit=100");
    }
    throw e;
  }
}

function loop() {
  const next = () => setTimeout(loop, REFRESH_MS);
  if ($("live").checked) refresh().finally(next);
  else next();
}

for (const th of $("requests").tHead.rows[0].cells) {
  th.addEventListener("click", () => {
    const key = th.dataset.key;
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : (key === "start" ? -1 : 1) };
    renderTable();
  });
}
$("filters").addEventListener("input", renderTable);
$("filters").addEventListener("change", renderTable);
$("rv-close").addEventListener("click", () => {
  state.selected = null;
  history.replaceState(null, "", location.pathname + location.search);
  $("request-view").hidden = true;
  renderTable();
});
loop();
