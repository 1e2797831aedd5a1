// Retune dashboard: plain ES module, no build step. Talks only to /api.
const $ = (sel, root = document) => root.querySelector(sel);
const h = (tag, attrs = {}, ...children) => {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
};
const COLORS = ["#3157d5", "#d5533a", "#1f8a4c", "#9b3fc4", "#c99514", "#1796a8", "#b8336a", "#5f6b7a"];
const fmt = (v) => v === null || v === undefined ? "-" : typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : Array.isArray(v) ? `(${v.map(fmt).join(", ")})` : String(v);
// Plotly reads a subset of HTML in every string it draws (titles, legend, hover): names are
// data, never markup, so each one is escaped before it reaches a chart.
const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const enc = encodeURIComponent;
const dur = (s) => s == null ? "-" : s < 60 ? `${Math.round(s)}s` : s < 3600 ? `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;

async function api(path, options = {}) {
  const res = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || `HTTP ${res.status}`);
  return body;
}

function live(onChange) {
  const pill = $("#live");
  const source = new EventSource("/api/events");
  source.addEventListener("runs", () => { pill.textContent = "live"; onChange(); });
  source.onerror = () => { pill.textContent = "reconnecting"; };
}

function throttle(fn, ms) {
  let waiting = false, again = false;
  return async () => {
    if (waiting) { again = true; return; }
    waiting = true;
    try { await fn(); } finally {
      setTimeout(() => { waiting = false; if (again) { again = false; throttle(fn, ms)(); } }, ms);
    }
  };
}

// ---- runs page --------------------------------------------------------------------------
async function runsPage() {
  $("#crumb").textContent = "runs";
  const filter = h("input", { type: "text", id: "filter", placeholder: "filter by name" });
  const status = h("select", { id: "status-filter" }, h("option", { value: "" }, "any status"),
    ...["running", "paused", "finished", "stopped", "crashed", "stale"].map((s) => h("option", { value: s }, s)));
  const body = h("tbody");
  $("#main").replaceChildren(h("div", { class: "toolbar" }, filter, status),
    h("table", { id: "runs" }, h("thead", {}, h("tr", {}, ...["name", "id", "status", "step", "last metrics", "started", "duration"].map((c) => h("th", {}, c)))), body));
  const draw = async () => {
    const runs = await api(`/api/runs${status.value ? `?status=${enc(status.value)}` : ""}`);
    const text = filter.value.toLowerCase();
    body.replaceChildren(...runs.filter((r) => r.name.toLowerCase().includes(text)).map((r) => h("tr", { "data-run": r.id },
      h("td", {}, h("a", { href: `/runs/${enc(r.id)}` }, r.name)), h("td", {}, r.id),
      h("td", { class: `status-${r.status}` }, r.status), h("td", {}, r.step),
      h("td", {}, Object.entries(r.last_metrics).slice(0, 4).map(([k, v]) => `${k}=${fmt(v)}`).join("  ")),
      h("td", {}, new Date(r.created_at * 1000).toLocaleString()), h("td", {}, dur(r.duration)))));
  };
  filter.addEventListener("input", draw);
  status.addEventListener("change", draw);
  await draw();
  live(throttle(draw, 500));
}

// ---- run page ---------------------------------------------------------------------------
const state = { run: null, tree: [], keys: [], selected: null, compare: [], log: false, smooth: false };

const MAX_BRANCHES = 8;  // distinct colours stay readable; the newest branches are drawn
function leaves(nodes) { return nodes.filter((n) => n.children.length === 0).slice(-MAX_BRANCHES); }

function smooth(values) {
  const out = []; let avg = null;
  for (const v of values) { if (v === null) { out.push(null); continue; } avg = avg === null ? v : 0.9 * avg + 0.1 * v; out.push(avg); }
  return out;
}

// One chart per metric, each on its own: a failed fetch or bad data shows an error in that
// chart's box and never stops the others from drawing.
async function drawCharts() {
  const branches = state.compare.length === 2 ? state.compare : leaves(state.tree).map((n) => n.id);
  const container = $("#charts");
  const changes = state.tree.filter((n) => n.parent !== null);
  await Promise.all(state.keys.map(async (key) => {
    let div = [...container.children].find((el) => el.dataset.key === key);
    if (!div) { div = h("div", { class: "chart card", "data-key": key }); container.append(div); }
    try {
      const query = new URLSearchParams([["key", key], ...branches.map((b) => ["node", b]), ["max_points", "2000"]]);
      const fetched = await api(`/api/runs/${enc(state.run.id)}/branches?${query}`);
      drawChart(div, key, branches, fetched, changes);
      div.removeAttribute("data-error");
      div.querySelector(":scope > .chart-error")?.remove();
    } catch (err) {
      div.dataset.error = err.message;
      if (window.Plotly) Plotly.purge(div);
      div.replaceChildren(h("p", { class: "chart-error error", role: "alert" }, `${key}: ${err.message}`));
    }
  }));
}

function drawChart(div, key, branches, fetched, changes) {
  const traces = [];
  for (const branch of branches) {
    const s = fetched.branches?.[branch];
    if (!s || !Array.isArray(s.steps) || !Array.isArray(s.values)) throw new Error(`no data for branch ${branch}`);
    if (!s.steps.length) continue;
    traces.push({ x: s.steps, y: state.smooth ? smooth(s.values) : s.values, name: esc(branch), mode: "lines",
      line: { color: COLORS[state.tree.findIndex((n) => n.id === branch) % COLORS.length], width: 1.6 } });
  }
  div.querySelector(":scope > .chart-error")?.remove();
  div.dataset.points = String(traces.reduce((a, t) => a + t.x.length, 0));
  const shapes = changes.map((n) => ({ type: "line", x0: n.start_step, x1: n.start_step, yref: "paper", y0: 0, y1: 1, line: { color: "#aab", width: 1, dash: "dot" } }));
  Plotly.react(div, traces, { title: { text: esc(key), font: { size: 13 } }, margin: { l: 45, r: 10, t: 30, b: 30 }, shapes,
    yaxis: { type: state.log ? "log" : "linear" }, xaxis: { title: { text: "step" } }, legend: { orientation: "h" } },
    { displaylogo: false, responsive: true });
}

// The control panel: one row per tunable (and param group). "live" is the value the run's record
// holds (the trainer writes the optimizer's current values at each flush, so a scheduler's lr
// shows as it moves); the input takes a new value and is never overwritten while you edit.
const shown = (value) => Array.isArray(value) ? value.join(",") : fmt(value);
const tunableValue = (t, group) => t.groups ? t.value?.[group] : t.value;
const panelShape = (run) => JSON.stringify((run.tunables ?? []).map((t) => [t.name, t.groups]));

function tunableRows(run) {
  const rows = [];
  for (const t of run.tunables ?? []) {
    const groups = t.groups ? t.groups.map((name, i) => [i, name]) : [[null, null]];
    for (const [i, name] of groups) {
      const input = h("input", { class: "value", type: "text", placeholder: "new value", "data-name": t.name, "data-group": i ?? "" });
      const quick = t.name === "lr" ? [0.1, 0.5, 2].map((f) => h("button", { "data-scale": f, onclick: () => send("scale", { factors: { lr: f }, group: i }) }, `×${f}`)) : [];
      rows.push(h("tr", {}, h("td", {}, t.name), h("td", {}, i === null ? "-" : `${i}${name ? ` (${name})` : ""}`),
        h("td", { class: "live", "data-name": t.name, "data-group": i ?? "" }, shown(tunableValue(t, i))), h("td", {}, input), h("td", {}, ...quick)));
    }
  }
  return rows;
}

function refreshTunables(run) {
  const body = $("#tunables tbody");
  if (!body) return;
  if (body.dataset.shape !== panelShape(run)) {
    body.replaceChildren(...tunableRows(run));
    body.dataset.shape = panelShape(run);
    return;
  }
  for (const cell of body.querySelectorAll("td.live")) {
    const t = run.tunables.find((x) => x.name === cell.dataset.name);
    cell.textContent = shown(tunableValue(t, cell.dataset.group === "" ? null : Number(cell.dataset.group)));
  }
}

function parseValue(text) {
  if (text.includes(",")) return text.split(",").map((p) => parseValue(p.trim()));
  if (text === "true" || text === "false") return text === "true";
  const n = Number(text);
  return text.trim() !== "" && !Number.isNaN(n) ? n : text;
}

async function send(kind, payload = {}) {
  const status = $("#command-status");
  $("#error").textContent = "";
  try {
    const cmd = await api(`/api/runs/${enc(state.run.id)}/commands`, { method: "POST", body: JSON.stringify({ kind, payload }) });
    const line = h("li", { class: "cmd-pending", "data-command": cmd.id }, `#${cmd.id} ${kind}: pending`);
    status.prepend(line);
    for (let i = 0; i < 600; i++) {
      await new Promise((r) => setTimeout(r, 250));
      const now = await api(`/api/commands/${enc(cmd.id)}`);
      if (now.status === "applying" && line.className !== "cmd-applying") {
        line.className = "cmd-applying"; line.textContent = `#${cmd.id} ${kind}: applying`;
      }
      if (now.status === "applied" || now.status === "rejected") {
        line.className = `cmd-${now.status}`;
        line.textContent = now.status === "applied" ? `#${cmd.id} ${kind}: applied at step ${now.applied_step}` : `#${cmd.id} ${kind}: rejected: ${now.reason}`;
        if (now.status === "rejected") $("#error").textContent = now.reason;
        await refreshRun();
        return now;
      }
    }
  } catch (err) {
    $("#error").textContent = err.message;
  }
}

function applyEdits() {
  const byGroup = new Map();
  for (const input of document.querySelectorAll("#tunables input.value")) {
    if (input.value.trim() === "") continue;
    const group = input.dataset.group === "" ? null : Number(input.dataset.group);
    if (!byGroup.has(group)) byGroup.set(group, {});
    byGroup.get(group)[input.dataset.name] = parseValue(input.value.trim());
    input.value = "";
  }
  if (!byGroup.size) { $("#error").textContent = "nothing changed: type a new value first"; return; }
  for (const [group, values] of byGroup) send("set", { values, group });
}

function drawTree() {
  const byId = Object.fromEntries(state.tree.map((n) => [n.id, n]));
  const current = state.run.status === "running" || state.run.status === "paused" ? state.tree.filter((n) => n.end_step === null).map((n) => n.id).pop() : null;
  const item = (node) => {
    const diff = Object.entries(node.diff).map(([k, [a, b]]) => `${k} ${fmt(a)} → ${fmt(b)}`).join(", ");
    const key = Object.keys(node.metrics).sort((a, b) => (b.startsWith("val") - a.startsWith("val")))[0];
    const color = COLORS[state.tree.indexOf(node) % COLORS.length];
    const label = h("span", { class: `node${node.id === current ? " current" : ""}${state.compare.includes(node.id) ? " selected" : ""}`, "data-node": node.id,
      onclick: (e) => selectNode(node.id, e.shiftKey) },
      h("span", { class: "swatch", style: `background:${color}` }), `${node.id} `, h("span", { class: "muted" }, `${node.start_step}..${node.end_step ?? "…"} ${node.change_kind} `),
      diff ? h("span", { class: "diff" }, diff + " ") : "", key ? `${key}=${fmt(node.metrics[key].last)}` : "");
    return h("li", {}, label, node.children.length ? h("ul", {}, node.children.map((c) => item(byId[c]))) : "");
  };
  $("#tree").replaceChildren(h("ul", {}, state.tree.filter((n) => n.parent === null).map(item)));
}

function selectNode(id, compare) {
  if (compare) {
    state.compare = [...state.compare.filter((x) => x !== id), id].slice(-2);
    drawTree(); drawCharts();
    return;
  }
  state.selected = id;
  const node = state.tree.find((n) => n.id === id);
  const metrics = Object.entries(node.metrics).map(([k, m]) => `${k}: last ${fmt(m.last)}, best ${fmt(m.best)}`).join("\n");
  const values = h("input", { type: "text", id: "restore-values", placeholder: "optional: lr=1e-3 weight_decay=1e-4" });
  $("#node-detail").replaceChildren(
    h("h2", {}, `${node.id} (${node.change_kind}, by ${node.created_by ?? "?"})`),
    h("pre", {}, `steps ${node.start_step}..${node.end_step ?? "…"}\ndiff ${JSON.stringify(node.diff)}\nvalues ${JSON.stringify(node.values)}\ncheckpoints ${node.checkpoints.join(", ") || "none"}\n${metrics}`),
    h("div", { class: "toolbar" }, values, h("button", { id: "restore-here", class: "primary", disabled: state.run.read_only || !node.checkpoints.length, onclick: () => {
      const set = {};
      for (const word of values.value.split(/\s+/).filter(Boolean)) { const [k, v] = word.split("="); set[k] = parseValue(v ?? ""); }
      send("restore", { target: node.id, set });
    } }, "restore here")),
    h("p", { class: "muted" }, "shift-click two nodes to compare their branch curves"));
}

async function refreshRun() {
  const id = state.run.id;
  const base = `/api/runs/${enc(id)}`;
  const [run, tree, keys, commands] = await Promise.all([api(base), api(`${base}/tree`), api(`${base}/metrics`), api(`${base}/commands`)]);
  Object.assign(state, { run, tree: tree.nodes, keys });
  $("#run-status").textContent = `${run.status} · step ${run.step} · ${dur(run.duration)}`;
  $("#run-status").className = `status-${run.status}`;
  if (!run.read_only) refreshTunables(run);
  drawTree();
  $("#audit tbody").replaceChildren(...commands.slice().reverse().map((c) => h("tr", {},
    h("td", {}, c.id), h("td", {}, new Date(c.created_at * 1000).toLocaleTimeString()), h("td", {}, `${c.user ?? "?"} (${c.source})`),
    h("td", {}, `${c.kind} ${c.result?.diff ? Object.entries(c.result.diff).map(([k, [a, b]]) => `${k} ${fmt(a)} → ${fmt(b)}`).join(", ") : JSON.stringify(c.payload)}`), h("td", { class: `cmd-${c.status}` }, c.status + (c.reason ? `: ${c.reason}` : "")), h("td", {}, c.applied_step ?? "-"))));
  await drawCharts();
}

async function runPage(id) {
  state.run = await api(`/api/runs/${enc(id)}`);
  $("#crumb").textContent = `${state.run.name} (${state.run.id})`;
  const controls = state.run.read_only ? [h("p", { class: "muted" }, "read-only dashboard")] : [
    h("table", { id: "tunables" }, h("thead", {}, h("tr", {}, ...["tunable", "group", "live", "new value", ""].map((c) => h("th", {}, c)))), h("tbody")),
    h("div", { class: "toolbar" }, h("button", { id: "apply", class: "primary", onclick: applyEdits }, "apply"),
      h("button", { id: "pause", onclick: () => send("pause") }, "pause"), h("button", { id: "resume", onclick: () => send("resume") }, "resume"),
      h("button", { id: "stop", onclick: () => send("stop") }, "stop"), h("button", { id: "checkpoint", onclick: () => send("checkpoint", {}) }, "checkpoint now")),
    h("div", { id: "error", class: "error", role: "alert" }), h("ul", { id: "command-status" })];
  const logToggle = h("input", { type: "checkbox", id: "log-scale", onchange: (e) => { state.log = e.target.checked; drawCharts(); } });
  const smoothToggle = h("input", { type: "checkbox", id: "smoothing", onchange: (e) => { state.smooth = e.target.checked; drawCharts(); } });
  $("#main").replaceChildren(h("p", { id: "run-status" }), h("div", { class: "grid" },
    h("section", {}, h("div", { class: "toolbar" }, h("label", {}, logToggle, " log scale"), h("label", {}, smoothToggle, " smoothing"),
      h("span", { class: "muted" }, "dotted lines: changes; one colour per branch")), h("div", { id: "charts", class: "charts" }),
      h("div", { class: "card" }, h("h2", {}, "audit log"), h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ...["#", "time", "who", "what", "outcome", "step"].map((c) => h("th", {}, c)))), h("tbody")))),
    h("aside", {}, h("div", { class: "card" }, h("h2", {}, "control"), ...controls),
      h("div", { class: "card tree" }, h("h2", {}, "tree"), h("div", { id: "tree" })), h("div", { class: "card", id: "node-detail" }))));
  state.run.tunables = state.run.tunables ?? [];
  if (!state.run.read_only) refreshTunables(state.run);
  await refreshRun();
  live(throttle(refreshRun, 500));
}

const match = location.pathname.match(/^\/runs\/([^/]+)$/);
(match ? runPage(decodeURIComponent(match[1])) : runsPage()).catch((err) => { $("#main").replaceChildren(h("p", { class: "error", role: "alert" }, err.message)); });
