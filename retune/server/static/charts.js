// Charts: one card per metric, grouped by prefix (`train/`, `val/`), pinned ones first, in an
// order the user may change. Each card: log scale, CSV / PNG / SVG download, and a hover that
// names the value, its node and its step. A shared toolbar picks the x axis (step, relative
// time, wall time) and the smoothing (exponential, debiased as TensorBoard does, the raw curve
// drawn faint behind).
import { fill, $, h, esc, fmt, cssVar, download, store } from "./util.js";

// Plotly (its basic bundle, 1.2 MB) is fetched when the first chart is drawn, not before the
// page shows.
let loading = null;
export function plotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  loading = loading ?? new Promise((resolve, reject) => {
    const script = h("script", { src: "/static/plotly.min.js" });
    script.onload = () => resolve(window.Plotly);
    script.onerror = () => { loading = null; reject(new Error("could not load the charting library")); };
    document.head.append(script);
  });
  return loading;
}

// The TensorBoard smoothing: an exponential moving average, debiased so the start is not
// pulled towards zero; nulls (NaN points) are kept as gaps.
export function smooth(values, weight) {
  if (!weight) return values.slice();
  let last = 0, count = 0;
  return values.map((v) => {
    if (v === null || !Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v; count += 1;
    return last / (1 - weight ** count);
  });
}

export function chartToolbar(opts, onChange) {
  const xmode = h("select", { id: "x-axis", onchange: () => { opts.x = xmode.value; onChange(); } },
    ...[["step", "x: step"], ["relative", "x: relative time"], ["wall", "x: wall time"]].map(([v, t]) => h("option", { value: v, selected: opts.x === v }, t)));
  const label = h("span", { id: "smoothing-value", class: "muted" }, fmt(opts.smoothing));
  const slider = h("input", { type: "range", id: "smoothing", min: "0", max: "0.99", step: "0.01", value: String(opts.smoothing),
    "aria-label": "smoothing", oninput: () => { opts.smoothing = Number(slider.value); label.textContent = fmt(opts.smoothing); onChange(); } });
  return h("div", { class: "toolbar", id: "chart-toolbar" }, xmode, h("label", {}, "smoothing ", slider), label);
}

function axisX(trace, opts, t0) {
  if (opts.x === "relative") return trace.times.map((t) => t - t0);
  if (opts.x === "wall") return trace.times.map((t) => new Date(t * 1000).toISOString());
  return trace.steps;
}

// Where the tree changed course, a dotted line across the chart at each step of `steps`: one
// path shape of many segments, not one shape per change. The picture is the same, but Plotly
// lays out and draws each shape on its own: 500 line shapes cost four times the curves.
function changeLines(steps) {
  const path = [...new Set(steps)].map((step) => `M${step},0V1`).join("");
  return { type: "path", path, xref: "x", yref: "paper", line: { color: cssVar("--muted"), width: 1, dash: "dot" } };
}

// `traces`: [{name, color, dash, steps, values, times, nodes, visible}]
export function plotTraces(div, key, traces, opts, extra = {}) {
  const t0 = Math.min(...traces.flatMap((t) => t.times.length ? [t.times[0]] : []), Infinity);
  const data = [];
  for (const t of traces) {
    const x = axisX(t, opts, t0);
    const hover = `%{y:.5g}<br>node %{customdata}<br>step %{text}<extra>${esc(t.name)}</extra>`;
    const common = { x, text: t.steps, customdata: t.nodes.map((n) => `n${n}`), mode: "lines", visible: t.visible === false ? false : true, legendgroup: t.name };
    if (opts.smoothing > 0) {
      data.push({ ...common, y: t.values, name: esc(t.name), meta: "raw", showlegend: false, hoverinfo: "skip", opacity: 0.25, line: { color: t.color, width: 1, dash: t.dash ?? "solid" } });
    }
    data.push({ ...common, y: smooth(t.values, opts.smoothing), name: esc(t.name), meta: opts.smoothing > 0 ? "smoothed" : "raw", hovertemplate: hover,
      line: { color: t.color, width: 1.7, dash: t.dash ?? "solid" } });
  }
  const fg = cssVar("--fg"), grid = cssVar("--line");
  const shapes = opts.x === "step" && extra.changes?.length ? [changeLines(extra.changes)] : [];
  div.dataset.points = String(traces.reduce((a, t) => a + (t.visible === false ? 0 : t.steps.length), 0));
  div.dataset.smoothing = String(opts.smoothing);
  Plotly.react(div, data, {
    margin: { l: 50, r: 10, t: 8, b: 36 }, showlegend: false, shapes, paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    font: { color: fg, size: 11 }, hovermode: "closest",
    yaxis: { type: extra.log ? "log" : "linear", gridcolor: grid, zerolinecolor: grid },
    xaxis: { title: { text: opts.x === "step" ? "step" : opts.x === "relative" ? "seconds since start" : "" }, type: opts.x === "wall" ? "date" : "linear", gridcolor: grid, zerolinecolor: grid },
  }, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["toImage", "select2d", "lasso2d"] });
}

export function toCSV(key, traces) {
  const quote = (v) => /[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v);
  const rows = [["metric", "series", "node", "step", "time", "value"].join(",")];
  for (const t of traces) t.steps.forEach((step, i) => rows.push([key, t.name, `n${t.nodes[i]}`, step, t.times[i], t.values[i] ?? "NaN"].map(quote).join(",")));
  return rows.join("\n") + "\n";
}

const fileName = (key) => String(key).replace(/[^A-Za-z0-9._-]+/g, "_") || "metric";
export const prefixOf = (key) => key.includes("/") ? key.slice(0, key.indexOf("/")) : "";

// The chart cards inside `container`. `load(key)` -> {traces, changes}. `scope` names where the
// user's pins, order and log scales are remembered (localStorage).
export class ChartBoard {
  constructor(container, scope, load, opts) {
    Object.assign(this, { container, scope, load, opts });
    this.prefs = store.get(`charts:${scope}`, { pinned: [], order: [], log: [] });
    this.traces = {};
  }

  save() { store.set(`charts:${this.scope}`, this.prefs); }

  ordered(keys) {
    const order = this.prefs.order.filter((k) => keys.includes(k));
    const rest = keys.filter((k) => !order.includes(k));
    return [...order, ...rest];
  }

  move(key, delta) {
    const keys = this.ordered(this.keys);
    const i = keys.indexOf(key), j = i + delta;
    if (i < 0 || j < 0 || j >= keys.length) return;
    [keys[i], keys[j]] = [keys[j], keys[i]];
    this.prefs.order = keys; this.save(); this.layout();
  }

  toggle(list, key) {
    const set = new Set(this.prefs[list]);
    set.has(key) ? set.delete(key) : set.add(key);
    this.prefs[list] = [...set]; this.save();
  }

  card(key) {
    let div = this.container.querySelector(`.chart-card[data-key="${CSS.escape(key)}"]`);
    if (div) return div;
    const chart = h("div", { class: "chart", "data-key": key });
    const log = h("input", { type: "checkbox", class: "log-scale", checked: this.prefs.log.includes(key), onchange: () => { this.toggle("log", key); this.drawOne(key); } });
    const button = (cls, text, title, fn) => h("button", { class: `small ${cls}`, title, onclick: fn }, text);
    div = h("div", { class: "card chart-card", "data-key": key },
      h("div", { class: "chart-head" }, h("span", { class: "chart-title", title: key }, key),
        h("label", { class: "muted" }, log, " log"),
        button("pin", "pin", "pin to the top", () => { this.toggle("pinned", key); this.layout(); }),
        button("up", "↑", "move up", () => this.move(key, -1)), button("down", "↓", "move down", () => this.move(key, 1)),
        button("csv", "CSV", "download the data", () => download(`${fileName(key)}.csv`, new Blob([toCSV(key, this.traces[key] ?? [])], { type: "text/csv" }))),
        button("png", "PNG", "download as PNG", () => Plotly.downloadImage(chart, { format: "png", filename: fileName(key), width: 900, height: 500 })),
        button("svg", "SVG", "download as SVG", () => Plotly.downloadImage(chart, { format: "svg", filename: fileName(key), width: 900, height: 500 }))),
      chart);
    return div;
  }

  // Groups: pinned first, then one section per prefix (no prefix: "metrics").
  layout() {
    const keys = this.ordered(this.keys);
    const pinned = keys.filter((k) => this.prefs.pinned.includes(k));
    const groups = new Map([["pinned", pinned]]);
    for (const k of keys) {
      if (pinned.includes(k)) continue;
      const g = prefixOf(k) ? `${prefixOf(k)}/` : "metrics";
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(k);
    }
    const sections = [];
    for (const [name, members] of groups) {
      if (!members.length) continue;
      let section = this.container.querySelector(`section.chart-group[data-group="${CSS.escape(name)}"]`);
      if (!section) section = h("section", { class: "chart-group", "data-group": name }, h("h3", {}, name), h("div", { class: "charts" }));
      const grid = section.querySelector(".charts");
      const cards = members.map((k) => this.card(k));
      cards.forEach((c) => c.classList.toggle("pinned", pinned.includes(c.dataset.key)));
      fill(grid, ...cards);
      sections.push(section);
    }
    fill(this.container, ...sections);
    for (const k of keys) { const chart = this.card(k).querySelector(".chart"); if (chart.data && window.Plotly) Plotly.Plots.resize(chart); }
  }

  async draw(keys) {
    if (!this.keys || keys.join("\n") !== this.keys.join("\n")) { this.keys = keys; this.layout(); }
    await Promise.all(keys.map((k) => this.drawOne(k, true)));
  }

  async drawOne(key, fetch = false) {
    const card = this.card(key), chart = card.querySelector(".chart");
    try {
      if (fetch || !this.loaded?.[key]) {
        this.loaded = this.loaded ?? {};
        this.loaded[key] = await this.load(key);
      }
      await plotly();
      const { traces, changes } = this.loaded[key];
      this.traces[key] = traces;
      chart.querySelector(":scope > .chart-error")?.remove();
      plotTraces(chart, key, traces, this.opts, { log: this.prefs.log.includes(key), changes });
      card.removeAttribute("data-error");
    } catch (err) {
      card.dataset.error = err.message;
      if (chart.data && window.Plotly) Plotly.purge(chart);
      fill(chart, h("p", { class: "chart-error error", role: "alert" }, `${key}: ${err.message}`));
    }
  }

  redraw() { for (const key of this.keys ?? []) if (this.loaded?.[key]) this.drawOne(key); }
}
