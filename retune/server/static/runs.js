// The runs page: a table whose columns you choose (status, step, duration, tags, any metric's
// last or best value, any hyperparameter), sorted and filtered; select runs to compare them:
// their charts overlaid (one colour per run, side branches dashed), a hyperparameter table of
// every node, and parallel coordinates (hyperparameters -> a chosen metric).
import { fill, $, h, s, api, enc, fmt, dur, live, throttle, lanes, nodeNumber, COLORS, store } from "./util.js";
import { ChartBoard, chartToolbar } from "./charts.js";

const STATUSES = ["running", "paused", "finished", "stopped", "crashed", "stale"];
const view = { runs: [], columns: null, sort: store.get("runs-sort", { column: "started", desc: true }), selected: new Set() };

const preferred = (keys) => [...keys].sort((a, b) => (b.includes("val") - a.includes("val")) || a.localeCompare(b));

function allColumns(runs) {
  const metrics = preferred(new Set(runs.flatMap((r) => Object.keys(r.last_metrics))));
  const hparams = [...new Set(runs.flatMap((r) => Object.keys(r.hparams ?? {})))].sort();
  return [
    { id: "status", label: "status", get: (r) => r.status, cell: (r) => h("span", { class: `status status-${r.status}` }, r.status) },
    { id: "step", label: "step", get: (r) => r.step },
    { id: "duration", label: "duration", get: (r) => r.duration, cell: (r) => dur(r.duration) },
    { id: "started", label: "started", get: (r) => r.created_at, cell: (r) => new Date(r.created_at * 1000).toLocaleString() },
    { id: "tags", label: "tags", get: (r) => (r.tags ?? []).join(" "), cell: (r) => (r.tags ?? []).map((t) => h("span", { class: "tag" }, t)) },
    { id: "note", label: "note", get: (r) => r.note ?? "", cell: (r) => h("span", { class: "note-cell", title: r.note ?? "" }, r.note ?? "") },
    ...metrics.map((k) => ({ id: `last:${k}`, label: `${k} (last)`, get: (r) => r.last_metrics[k], cell: (r) => fmt(r.last_metrics[k]), metric: k })),
    ...metrics.map((k) => ({ id: `best:${k}`, label: `${k} (best)`, get: (r) => r.best_metrics?.[k], cell: (r) => fmt(r.best_metrics?.[k]), best: k })),
    ...hparams.map((k) => ({ id: `hp:${k}`, label: k, get: (r) => r.hparams?.[k], cell: (r) => fmt(r.hparams?.[k]), hparam: k })),
  ];
}

function defaultColumns(columns) {
  return ["status", "step", "tags", "duration", ...columns.filter((c) => c.metric).slice(0, 3).map((c) => c.id), ...columns.filter((c) => c.hparam).slice(0, 3).map((c) => c.id)];
}

const compareValues = (a, b) => a === b ? 0 : a === undefined || a === null ? 1 : b === undefined || b === null ? -1
  : typeof a === "number" && typeof b === "number" ? a - b : String(a).localeCompare(String(b));

async function fetchRuns(columns) {
  const best = (columns ?? []).filter((c) => c.startsWith("best:")).map((c) => c.slice(5));
  const query = new URLSearchParams(best.map((k) => ["best", k]));
  return api(`/api/runs${best.length ? `?${query}` : ""}`);
}

function columnChooser(columns) {
  const boxes = columns.map((c) => h("label", { class: "choice" }, h("input", { type: "checkbox", "data-column": c.id, checked: view.columns.includes(c.id), onchange: async (e) => {
    view.columns = e.target.checked ? [...view.columns, c.id] : view.columns.filter((x) => x !== c.id);
    store.set("runs-columns", view.columns);
    if (c.best && e.target.checked) view.runs = await fetchRuns(view.columns);
    drawTable();
  } }), c.label));
  return boxes;
}

function drawTable() {
  const columns = allColumns(view.runs);
  view.columns = view.columns ?? store.get("runs-columns", null) ?? defaultColumns(columns);
  const shown = view.columns.map((id) => columns.find((c) => c.id === id)).filter(Boolean);
  const text = $("#filter").value.toLowerCase(), status = $("#status-filter").value;
  const rows = view.runs.filter((r) => (!status || r.status === status) &&
    (!text || [r.name, r.id, ...(r.tags ?? []), r.note ?? ""].some((x) => x.toLowerCase().includes(text))));
  const sortCol = columns.find((c) => c.id === view.sort.column) ?? (view.sort.column === "name" ? { get: (r) => r.name } : columns.find((c) => c.id === "started"));
  rows.sort((a, b) => { const d = compareValues(sortCol.get(a), sortCol.get(b)); return view.sort.desc ? -d : d; });
  const header = (id, label) => h("th", { "data-column": id, class: view.sort.column === id ? `sorted ${view.sort.desc ? "desc" : "asc"}` : "", title: "sort",
    onclick: () => { view.sort = { column: id, desc: view.sort.column === id ? !view.sort.desc : false }; store.set("runs-sort", view.sort); drawTable(); } },
    label, view.sort.column === id ? (view.sort.desc ? " ▼" : " ▲") : "");
  fill($("#runs thead"), h("tr", {}, h("th", {}, ""), header("name", "name"), shown.map((c) => header(c.id, c.label))));
  fill($("#runs tbody"), ...rows.map((r) => h("tr", { "data-run": r.id, class: view.selected.has(r.id) ? "chosen" : "" },
    h("td", {}, h("input", { type: "checkbox", class: "select-run", "data-run": r.id, "aria-label": `select ${r.name}`, checked: view.selected.has(r.id), onchange: (e) => {
      e.target.checked ? view.selected.add(r.id) : view.selected.delete(r.id); drawTable();
    } })),
    h("td", {}, h("a", { href: `/runs/${enc(r.id)}` }, r.name), h("span", { class: "muted id" }, ` ${r.id}`)),
    shown.map((c) => h("td", { "data-column": c.id }, c.cell ? c.cell(r) : fmt(c.get(r)))))));
  fill($("#columns-list"), ...columnChooser(columns));
  $("#runs-empty").hidden = view.runs.length > 0;
  const n = view.selected.size;
  $("#compare-runs").disabled = n < 2;
  $("#compare-runs").textContent = n < 2 ? "select two or more runs to compare" : `compare ${n} runs`;
}

// ---- comparing runs -------------------------------------------------------------------------
const cmp = { runs: [], board: null, metric: null };

async function compareRuns() {
  const ids = [...view.selected];
  const runs = ids.map((id) => view.runs.find((r) => r.id === id)).filter(Boolean);
  const trees = await Promise.all(runs.map((r) => api(`/api/runs/${enc(r.id)}/tree`)));
  const keys = await Promise.all(runs.map((r) => api(`/api/runs/${enc(r.id)}/metrics`)));
  cmp.runs = runs.map((r, i) => ({ run: r, tree: trees[i].nodes, keys: keys[i], color: COLORS[i % COLORS.length] }));
  const allKeys = preferred(new Set(keys.flat()));
  cmp.metric = allKeys.includes(cmp.metric) ? cmp.metric : allKeys[0];
  const opts = store.get("chart-opts", { x: "step", smoothing: 0 });
  const charts = h("div", { id: "compare-charts" });
  cmp.board = new ChartBoard(charts, "compare", loadOverlay, opts);
  const metric = h("select", { id: "hparams-metric", onchange: () => { cmp.metric = metric.value; drawHParams(); } },
    ...allKeys.map((k) => h("option", { value: k, selected: k === cmp.metric }, k)));
  $("#compare-view").hidden = false;
  fill($("#compare-view"), 
    h("div", { class: "card" }, h("h2", {}, `comparing ${runs.length} runs`, h("button", { class: "small close", onclick: () => { $("#compare-view").hidden = true; } }, "close")),
      h("ul", { class: "legend", id: "compare-legend" }, cmp.runs.map((c) => h("li", { class: "legend-item", "data-run": c.run.id, "data-color": c.color },
        h("span", { class: "swatch", style: `background:${c.color}` }), c.run.name))),
      h("p", { class: "muted" }, "one colour per run; a run's main branch is solid, its other branches dashed"),
      chartToolbar(opts, () => { store.set("chart-opts", opts); cmp.board.redraw(); })),
    charts,
    h("div", { class: "card" }, h("h2", {}, "hyperparameters of every node"), h("div", { class: "toolbar" }, h("label", {}, "metric ", metric)),
      h("div", { id: "parcoords-box" }), h("div", { class: "scroll" }, h("table", { id: "hparams-table" }))));
  drawHParams();
  await cmp.board.draw(allKeys);
  $("#compare-view").scrollIntoView({ block: "start" });
}

async function loadOverlay(key) {
  const traces = [];
  await Promise.all(cmp.runs.map(async (c, index) => {
    if (!c.keys.includes(key)) return;
    const all = lanes(c.tree).slice(-64);
    const query = new URLSearchParams([["key", key], ...all.map((l) => ["node", l.leaf]), ["max_points", "2000"]]);
    const fetched = await api(`/api/runs/${enc(c.run.id)}/branches?${query}`);
    all.forEach((lane, i) => {
      const series = fetched.branches[lane.leaf];
      const own = new Set(lane.nodes.map(nodeNumber));
      const idx = [];
      series.nodes.forEach((n, j) => { if (i === 0 || own.has(n)) idx.push(j); });
      if (i > 0 && idx.length && idx[0] > 0) idx.unshift(idx[0] - 1);
      const pick = (a) => idx.map((j) => a[j]);
      traces.push({ order: index * 1000 + i, name: `${c.run.name} ${lane.id}`, run: c.run.id, color: c.color, dash: i === 0 ? "solid" : "dash",
        steps: pick(series.steps), values: pick(series.values), times: pick(series.times), nodes: pick(series.nodes) });
    });
  }));
  traces.sort((a, b) => a.order - b.order);
  return { traces, changes: [] };
}

function hparamRows() {
  return cmp.runs.flatMap((c) => c.tree.map((n) => ({ run: c.run, color: c.color, node: n, values: n.values, metric: n.metrics[cmp.metric] })));
}

function drawHParams() {
  const rows = hparamRows();
  const names = [...new Set(rows.flatMap((r) => Object.keys(r.values)))].sort();
  fill($("#hparams-table"), 
    h("thead", {}, h("tr", {}, h("th", {}, "run"), h("th", {}, "node"), names.map((k) => h("th", {}, k)), h("th", {}, `${cmp.metric ?? "metric"} last`), h("th", {}, "best"))),
    h("tbody", {}, rows.map((r) => h("tr", { "data-run": r.run.id, "data-node": r.node.id },
      h("td", {}, h("span", { class: "swatch", style: `background:${r.color}` }), r.run.name), h("td", {}, r.node.id),
      names.map((k) => h("td", { "data-hparam": k }, fmt(r.values[k]))), h("td", { class: "metric-last" }, fmt(r.metric?.last)), h("td", { class: "metric-best" }, fmt(r.metric?.best))))));
  fill($("#parcoords-box"), parallelCoordinates(rows, names, cmp.metric));
}

// Parallel coordinates as SVG: one vertical axis per hyperparameter (numbers on a linear or,
// when they span 100x or more, a log scale; text as categories), then the metric's best value;
// one line per node, in its run's colour.
export function parallelCoordinates(rows, names, metric) {
  const axes = [...names.map((k) => ({ key: k, get: (r) => r.values[k] })), { key: `${metric} (best)`, get: (r) => r.metric?.best, metric: true }];
  const W = Math.max(480, 130 * axes.length), H = 260, top = 28, bottom = 30, left = 50, right = 50;
  const x = (i) => left + (axes.length === 1 ? 0 : i * (W - left - right) / (axes.length - 1));
  for (const axis of axes) {
    const values = rows.map(axis.get).filter((v) => v !== undefined && v !== null);
    const numbers = values.filter((v) => typeof v === "number" && Number.isFinite(v));
    if (numbers.length === values.length && numbers.length) {
      let lo = Math.min(...numbers), hi = Math.max(...numbers);
      axis.log = lo > 0 && hi / lo >= 100;
      const f = axis.log ? Math.log10 : (v) => v;
      if (lo === hi) { lo -= 1e-12; hi += 1e-12; }
      axis.lo = lo; axis.hi = hi;
      axis.pos = (v) => typeof v === "number" && Number.isFinite(v) ? H - bottom - (f(v) - f(lo)) / (f(hi) - f(lo)) * (H - top - bottom) : null;
    } else {
      const cats = [...new Set(values.map((v) => fmt(v)))].sort();
      axis.cats = cats;
      axis.pos = (v) => v === undefined || v === null ? null : H - bottom - (cats.indexOf(fmt(v)) + 0.5) / cats.length * (H - top - bottom);
    }
  }
  const lines = rows.map((r) => {
    const points = axes.map((a, i) => [x(i), a.pos(a.get(r))]).filter(([, y]) => y !== null);
    const title = `${r.run.name} ${r.node.id}: ${axes.map((a) => `${a.key} ${fmt(a.get(r))}`).join(", ")}`;
    return s("polyline", { class: "pc-line", points: points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" "), stroke: r.color, "data-run": r.run.id, "data-node": r.node.id },
      s("title", {}, title));
  });
  const axisEls = axes.map((a, i) => s("g", { class: "pc-axis", "data-axis": a.key },
    s("line", { x1: x(i), x2: x(i), y1: top, y2: H - bottom }),
    s("text", { x: x(i), y: 14, class: "pc-label" }, a.key),
    a.cats ? a.cats.map((c) => s("text", { x: x(i) + 4, y: a.pos(c) + 4, class: "pc-tick", "text-anchor": "start" }, c))
      : a.lo !== undefined ? [s("text", { x: x(i) + 4, y: H - bottom + 14, class: "pc-tick pc-min", "text-anchor": "start" }, fmt(a.lo)), s("text", { x: x(i) + 4, y: top - 2, class: "pc-tick pc-max", "text-anchor": "start" }, fmt(a.hi))] : ""));
  return s("svg", { id: "parcoords", viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": `parallel coordinates of ${names.join(", ")} against ${metric}` }, lines, axisEls);
}

export async function runsPage() {
  $("#crumb").textContent = "runs";
  const filter = h("input", { type: "search", id: "filter", placeholder: "filter: name, tag, note" });
  const status = h("select", { id: "status-filter" }, h("option", { value: "" }, "any status"), ...STATUSES.map((st) => h("option", { value: st }, st)));
  fill($("#main"), 
    h("div", { class: "card runs-card" },
      h("div", { class: "toolbar wrap" }, filter, status, h("details", { id: "columns" }, h("summary", {}, "columns"), h("div", { id: "columns-list" })),
        h("button", { id: "compare-runs", class: "primary", disabled: true, onclick: () => compareRuns().catch((e) => { $("#compare-view").hidden = false; fill($("#compare-view"), h("p", { class: "error", role: "alert" }, e.message)); }) }, "compare")),
      h("div", { class: "scroll" }, h("table", { id: "runs" }, h("thead"), h("tbody"))),
      h("p", { id: "runs-empty", class: "muted", hidden: true }, "No runs yet. Start one with `retune demo`, or call retune.init() in your training script.")),
    h("div", { id: "compare-view", hidden: true }));
  const preselect = new URLSearchParams(location.search).getAll("compare");
  preselect.forEach((id) => view.selected.add(id));
  view.columns = store.get("runs-columns", null);
  view.runs = await fetchRuns(view.columns);
  const draw = async () => { view.runs = await fetchRuns(view.columns); drawTable(); };
  filter.addEventListener("input", drawTable);
  status.addEventListener("change", drawTable);
  drawTable();
  live(throttle(draw, 1000));
}
