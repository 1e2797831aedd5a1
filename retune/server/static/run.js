// The run page: charts with a legend of every branch, the control panel (or, on an ended run,
// what can still be done), the tree, a node's details, the node comparison and the audit log.
import { fill, $, h, api, enc, fmt, dur, live, throttle, lanes, laneOf, diffText, commandText, outcomeText, nodeNumber, ENDED, store } from "./util.js";
import { ChartBoard, chartToolbar, plotTraces, plotly } from "./charts.js";
import { runMeta } from "./meta.js";
import { TreePicture } from "./treepic.js";

const MAX_LANES = 64;  // what one /branches request may hold
const DRAWN_LANES = 8;  // drawn at first: the newest; the legend shows the others on a click
const state = { run: null, tree: [], keys: [], selected: null, compare: [], hidden: new Set(), shown: new Set(), commands: [] };

function laneTraces(key, fetched, allLanes) {
  const traces = [];
  for (const lane of allLanes) {
    const series = fetched.branches?.[lane.leaf];
    if (!series || !Array.isArray(series.steps) || !Array.isArray(series.values)) throw new Error(`no data for branch ${lane.id}`);
    // the lane's own points: those of its nodes (the shared path before it belongs to others),
    // plus the last point before it, so the curve joins its parent's
    const own = new Set(lane.nodes.map(nodeNumber));
    const index = [];
    series.nodes.forEach((n, i) => { if (own.has(n)) index.push(i); });
    if (index.length && index[0] > 0) index.unshift(index[0] - 1);
    const pick = (a) => index.map((i) => a[i]);
    traces.push({ name: laneName(lane), color: lane.color, dash: "solid", steps: pick(series.steps), values: pick(series.values),
      times: pick(series.times ?? series.steps.map(() => 0)), nodes: pick(series.nodes), lane: lane.id });
  }
  return traces;
}

function laneName(lane) {
  const byId = Object.fromEntries(state.tree.map((n) => [n.id, n]));
  const first = byId[lane.id];
  const how = first?.parent ? `${first.change_kind} from ${first.parent}` : "root";
  return `${lane.nodes.length > 1 ? `${lane.id}…${lane.leaf}` : lane.id} (${how})`;
}

let board, picture;
function shownLanes() { return lanes(state.tree); }
function isVisible(lane, all) {
  if (state.hidden.has(lane.id)) return false;
  return state.shown.has(lane.id) || all.indexOf(lane) >= all.length - DRAWN_LANES;
}
function drawnLanes() { const all = shownLanes(); return all.filter((l) => isVisible(l, all)).slice(-MAX_LANES); }

async function loadKey(key) {
  const all = drawnLanes();
  if (!all.length) return { traces: [], changes: [] };
  const query = new URLSearchParams([["key", key], ...all.map((l) => ["node", l.leaf]), ["max_points", "2000"]]);
  const fetched = await api(`/api/runs/${enc(state.run.id)}/branches?${query}`);
  return { traces: laneTraces(key, fetched, all), changes: state.tree.filter((n) => n.parent !== null).map((n) => n.start_step) };
}

function drawLegend() {
  const all = shownLanes();
  const items = all.map((lane) => h("li", { class: `legend-item${isVisible(lane, all) ? "" : " hidden"}`, "data-lane": lane.id, "data-color": lane.color,
    title: "click to show or hide", onclick: () => {
      if (isVisible(lane, all)) { state.hidden.add(lane.id); state.shown.delete(lane.id); } else { state.hidden.delete(lane.id); state.shown.add(lane.id); }
      drawLegend(); board.draw(state.keys);
    } },
    h("span", { class: "swatch", style: `background:${lane.color}` }), laneName(lane)));
  fill($("#legend"), ...items);
}

// ---- control panel ---------------------------------------------------------------------------
const shown = (value) => Array.isArray(value) ? value.map(fmt).join(", ") : fmt(value);
const tunableValue = (t, group) => t.groups ? t.value?.[group] : t.value;
const panelShape = (run) => JSON.stringify([run.status, (run.tunables ?? []).map((t) => [t.name, t.groups])]);

function tunableRows(run) {
  const rows = [];
  for (const t of run.tunables ?? []) {
    const groups = t.groups ? t.groups.map((name, i) => [i, name]) : [[null, null]];
    for (const [i, name] of groups) {
      const input = h("input", { class: "value", type: "text", placeholder: "new value", "data-name": t.name, "data-group": i ?? "" });
      const quick = t.name === "lr" ? [0.1, 0.5, 2].map((f) => h("button", { class: "small", "data-scale": f, onclick: () => send("scale", { factors: { lr: f }, group: i }) }, `×${f}`)) : [];
      rows.push(h("tr", {}, h("td", { class: "name" }, t.name), h("td", {}, i === null ? "-" : `${i}${name ? ` ${name}` : ""}`),
        h("td", { class: "live", "data-name": t.name, "data-group": i ?? "" }, shown(tunableValue(t, i))),
        h("td", {}, h("div", { class: "new-value" }, input, quick.length ? h("span", { class: "quick" }, ...quick) : ""))));
    }
  }
  return rows;
}

function refreshTunables(run) {
  const body = $("#tunables tbody");
  if (!body) return;
  if (body.dataset.shape !== panelShape(run)) { fill(body, ...tunableRows(run)); body.dataset.shape = panelShape(run); return; }
  for (const cell of body.querySelectorAll("td.live")) {
    const t = run.tunables.find((x) => x.name === cell.dataset.name);
    cell.textContent = shown(tunableValue(t, cell.dataset.group === "" ? null : Number(cell.dataset.group)));
  }
}

export function parseValue(text) {
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
    const text = commandText({ kind, payload });
    const line = h("li", { class: "cmd-pending", "data-command": cmd.id }, `#${cmd.id} ${text}: pending`);
    status?.prepend(line);
    if (cmd.status === "rejected") { line.className = "cmd-rejected"; line.textContent = `#${cmd.id} ${text}: ${outcomeText(cmd)}`; $("#error").textContent = cmd.reason; return cmd; }
    for (let i = 0; i < 600; i++) {
      await new Promise((r) => setTimeout(r, 250));
      const now = await api(`/api/commands/${enc(cmd.id)}`);
      if (now.status === "applying" && line.className !== "cmd-applying") { line.className = "cmd-applying"; line.textContent = `#${cmd.id} ${text}: applying`; }
      if (now.status === "applied" || now.status === "rejected") {
        line.className = `cmd-${now.status}`;
        line.textContent = `#${cmd.id} ${text}: ${outcomeText(now)}`;
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

const resumeCommand = (run) => {
  const argv = run.meta?.invocation?.argv ?? [];
  const quote = (a) => /^[A-Za-z0-9_./=:@%+-]+$/.test(a) ? a : `'${String(a).replaceAll("'", "'\\''")}'`;
  const cmd = argv.length ? ["python", ...argv].map(quote).join(" ") : "python train.py";
  return `retune resume ${quote(run.name)} --from latest -- ${cmd}`;
};

function copyBox(id, text) {
  const code = h("code", { id }, text);
  return h("div", { class: "copy" }, code, h("button", { class: "small", onclick: async (e) => {
    try { await navigator.clipboard.writeText(text); e.target.textContent = "copied"; } catch { getSelection().selectAllChildren(code); }
  } }, "copy"));
}

// What the control card holds depends on the run's state: live -> the panel; paused -> the
// panel and a prominent "continue"; ended -> what can still be done.
function controls(run) {
  if (run.read_only) return [h("p", { class: "muted" }, "This dashboard is read-only: commands are refused.")];
  if (ENDED.includes(run.status)) {
    return [
      h("p", {}, `This run is ${run.status}${run.status === "stale" ? " (its process stopped reporting)" : ""}: it takes no more commands. What you can still do:`),
      h("h3", {}, "continue it in a new process, from its latest checkpoint"), copyBox("resume-command", resumeCommand(run)),
      h("p", { class: "muted" }, "or from any checkpoint: click a node in the tree, then pick one of its checkpoints (--from c3)."),
      h("h3", {}, "compare"), h("p", {}, h("a", { id: "compare-link", href: `/?compare=${enc(run.id)}` }, "compare this run with others"), " · shift-click nodes in the tree to compare branches"),
      h("h3", {}, "export"), copyBox("export-command", `retune export ${run.name} --out ${run.name}`),
      h("p", {}, h("a", { href: `/api/runs/${enc(run.id)}/tree`, download: `${run.name}-tree.json` }, "download the tree"), " · each chart has CSV, PNG and SVG downloads"),
    ];
  }
  const paused = run.status === "paused";
  return [
    paused ? h("div", { class: "banner paused", id: "paused-banner" }, h("strong", {}, "Paused"), ` at step ${run.step}. Training waits until you continue.`,
      h("button", { id: "continue", class: "primary big", onclick: () => send("continue") }, "continue")) : "",
    h("table", { id: "tunables" }, h("thead", {}, h("tr", {}, ...["tunable", "group", "live", "new value"].map((c) => h("th", {}, c)))), h("tbody")),
    h("div", { class: "toolbar wrap" }, h("button", { id: "apply", class: "primary", onclick: applyEdits }, "apply"),
      paused ? "" : h("button", { id: "pause", onclick: () => send("pause") }, "pause"),
      h("button", { id: "stop", onclick: () => send("stop") }, "stop"), h("button", { id: "checkpoint", onclick: () => send("checkpoint", {}) }, "checkpoint now")),
    h("div", { id: "error", class: "error", role: "alert" }), h("ul", { id: "command-status" }),
  ];
}

function drawControls() {
  const key = `${state.run.status}|${state.run.read_only}`;
  const card = $("#control");
  if (card.dataset.state !== key) {
    card.dataset.state = key;
    fill(card, h("h2", {}, ENDED.includes(state.run.status) ? "what can still be done" : "control"), ...controls(state.run));
  }
  if (!state.run.read_only && !ENDED.includes(state.run.status)) refreshTunables(state.run);
}

// ---- tree, node details, compare ---------------------------------------------------------------
function metricKey(node) { return Object.keys(node.metrics).sort((a, b) => (b.startsWith("val") - a.startsWith("val")))[0]; }

function drawTree() {
  const byId = Object.fromEntries(state.tree.map((n) => [n.id, n]));
  const live = !ENDED.includes(state.run.status);
  const current = live ? state.tree.filter((n) => n.end_step === null).map((n) => n.id).pop() : null;
  const laneByNode = new Map(lanes(state.tree).flatMap((l) => l.nodes.map((id) => [id, l])));  // one pass, not one per node
  const item = (node) => {
    const key = metricKey(node);
    const lane = laneByNode.get(node.id);
    const label = h("span", { class: `node${node.id === current ? " current" : ""}${state.compare.includes(node.id) ? " selected" : ""}${state.selected === node.id ? " focused" : ""}`,
      "data-node": node.id, tabindex: "0", onclick: (e) => selectNode(node.id, e.shiftKey), onkeydown: (e) => { if (e.key === "Enter") selectNode(node.id, e.shiftKey); } },
      h("span", { class: "swatch", style: `background:${lane?.color}` }), `${node.id} `, h("span", { class: "muted" }, `${node.start_step}–${node.end_step ?? "now"} ${node.change_kind} `),
      Object.keys(node.diff).length ? h("span", { class: "diff" }, diffText(node.diff) + " ") : "", key ? `${key} ${fmt(node.metrics[key].last)}` : "",
      node.info?.guard ? h("span", { class: "badge guard", title: node.info.guard.reason }, " guard") : "",
      node.info?.explore?.winner ? h("span", { class: "badge" }, " best") : "");
    return h("li", {}, label, node.children.length ? h("ul", {}, node.children.map((c) => item(byId[c]))) : "");
  };
  fill($("#tree"), h("ul", {}, state.tree.filter((n) => n.parent === null).map(item)));
  if (state.picture) picture?.refresh(state.tree, state.run.status, state.selected, state.compare).catch(() => {});
  $("#compare-bar").hidden = state.compare.length < 2;
  $("#compare-bar .what").textContent = `${state.compare.join(", ")} selected`;
}

function selectNode(id, compare) {
  if (compare) {
    state.compare = state.compare.includes(id) ? state.compare.filter((x) => x !== id) : [...state.compare, id].slice(-6);
    drawTree();
    return;
  }
  state.selected = id;
  drawTree();
  drawNode();
}

const kv = (rows) => h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));

function drawNode() {
  const node = state.tree.find((n) => n.id === state.selected);
  const card = $("#node-detail");
  if (!node) { card.hidden = true; return; }
  card.hidden = false;
  // redrawn only when what it shows changed: a value being typed is never wiped by a refresh
  const signature = JSON.stringify([node, state.run.status, state.run.read_only, state.keys]);
  if (card.dataset.signature === signature) return;
  card.dataset.signature = signature;
  const lane = laneOf(state.tree, node.id);
  const metrics = Object.entries(node.metrics);
  const values = h("input", { type: "text", id: "restore-values", placeholder: "optional: lr=1e-3 weight_decay=1e-4" });
  const canRestore = !state.run.read_only && !ENDED.includes(state.run.status) && node.checkpoints.length;
  fill(card, 
    h("h2", {}, h("span", { class: "swatch", style: `background:${lane?.color}` }), `node ${node.id}`),
    kv([["made by", `${node.change_kind}${node.parent ? ` from ${node.parent}` : ""}, by ${node.created_by ?? "unknown"}`],
      ["steps", `${node.start_step} to ${node.end_step ?? "now"}`],
      ["change", Object.keys(node.diff).length ? diffText(node.diff) : "none (same values as before)"],
      ["checkpoints", node.checkpoints.length ? node.checkpoints.join(", ") : "none"],
      ...infoRows(node)]),
    guardVeto(node),
    h("h3", {}, "hyperparameters"),
    Object.keys(node.values).length ? kv(Object.entries(node.values).map(([k, v]) => [k, fmt(v)])) : h("p", { class: "muted" }, "no tunables recorded"),
    metrics.length ? [h("h3", {}, "metrics"), h("table", { class: "kv" }, h("thead", {}, h("tr", {}, h("th", {}, "metric"), h("th", {}, "last"), h("th", {}, "best"))),
      h("tbody", {}, metrics.map(([k, m]) => h("tr", {}, h("td", {}, k), h("td", {}, fmt(m.last)), h("td", {}, fmt(m.best))))))] : "",
    canRestore ? h("div", { class: "toolbar wrap" }, values, h("button", { id: "restore-here", class: "primary", onclick: () => {
      const set = {};
      for (const word of values.value.split(/\s+/).filter(Boolean)) { const [k, v] = word.split("="); set[k] = parseValue(v ?? ""); }
      send("restore", { target: node.id, set });
    } }, "restore here")) : ENDED.includes(state.run.status) && node.checkpoints.length
      ? [h("p", { class: "muted" }, "continue from this node in a new process:"), copyBox("resume-node", resumeCommand(state.run).replace("--from latest", `--from ${node.checkpoints[node.checkpoints.length - 1]}`))]
      : h("p", { class: "muted" }, node.checkpoints.length ? "" : "no checkpoint in this node: it cannot be restored"),
    canRestore ? exploreForm(node) : "",
    h("p", { class: "muted" }, "shift-click nodes to select them for comparison"));
}

// What the training process recorded about a node: the guard's reason and what it skipped, an
// exploration candidate's score (issues 12 and 14), as table rows.
function infoRows(node) {
  const rows = [];
  const guard = node.info?.guard;
  if (guard?.action === "vetoed") {  // a person undid a recovery: this node is the state it left
    rows.push(["guard", `vetoed n${guard.vetoed_node}: ${guard.reason}`]);
    if (guard.restored) rows.push(["restored", guard.restored]);
  } else if (guard) {
    rows.push(["guard", `${guard.action === "paused" ? "paused the run" : "recovered"}: ${guard.reason}`]);
    if (guard.restored) rows.push(["restored", `${guard.restored} (step ${guard.restored_step}), lr x ${fmt(guard.lr_factor)}`]);
    const skipped = guard.skipped?.count ?? 0;
    rows.push(["skipped batches", skipped ? `${skipped} (epoch ${guard.skipped.from?.[0]} batch ${guard.skipped.from?.[1]} to epoch ${guard.skipped.to?.[0]} batch ${guard.skipped.to?.[1]})` : "none"]);
    for (const note of guard.notes ?? []) rows.push(["note", note]);
  }
  const explore = node.info?.explore;
  if (explore?.role?.startsWith("continue")) {  // where training went on after the exploration
    rows.push(["exploration", `${explore.role} of #${explore.exploration ?? "?"}`]);
  } else if (explore) {
    rows.push(["exploration", `candidate of #${explore.exploration ?? "?"}, score ${fmt(explore.score)}${explore.winner ? " (winner)" : ""}`]);
  }
  return rows;
}

// The guard's recovery can be undone from here while the run is live and still on it (the same
// `guard veto` command as the CLI's: the state it left comes back on a new node and the guard
// switches off).
function guardVeto(node) {
  if (state.run.read_only || ENDED.includes(state.run.status)) return "";
  // the trainer vetoes only the recovery training is still on (a later change ends that node)
  const current = state.tree.filter((n) => n.end_step === null).map((n) => n.id).pop();
  if (!["recovered", "paused"].includes(node.info?.guard?.action) || node.id !== current) return "";
  return h("div", { class: "toolbar wrap" },
    h("button", { id: "guard-veto", onclick: () => send("guard", { action: "veto" }) }, "veto this recovery"),
    h("span", { class: "muted" }, "goes back to the state the guard left and switches the guard off"));
}

// Explore: try several values from this node's checkpoint, each for N steps, then continue from
// the best (issue 12). The trainer answers `explore` commands it does not know with a reason.
function exploreForm(node) {
  const name = h("select", { id: "explore-name" }, ...(state.run.tunables ?? []).map((t) => h("option", { value: t.name }, t.name)));
  const values = h("input", { type: "text", id: "explore-values", placeholder: "values: 1e-3, 3e-4" });
  const steps = h("input", { type: "number", id: "explore-steps", value: "100", min: "1" });
  const metric = h("select", { id: "explore-metric" }, ...state.keys.map((k) => h("option", { value: k, selected: k === metricKey(node) }, k)));
  const goal = h("select", { id: "explore-goal" }, h("option", { value: "min" }, "lowest"), h("option", { value: "max" }, "highest"));
  return h("details", { class: "explore" }, h("summary", {}, "explore from here"),
    h("div", { class: "form" }, h("label", {}, "try ", name), values, h("label", {}, "for ", steps, " steps each"),
      h("label", {}, "keep the ", goal, " ", metric),
      h("button", { id: "explore-start", onclick: () => {
        const list = values.value.split(",").map((v) => parseValue(v.trim())).filter((v) => v !== "");
        if (!list.length) { $("#error").textContent = "explore: give at least one value"; return; }
        send("explore", { values: { [name.value]: list }, steps: Number(steps.value), metric: metric.value, goal: goal.value, then: "best", from: node.checkpoints[node.checkpoints.length - 1] });
      } }, "explore")));
}

// Several nodes side by side (GET /api/runs/{run}/compare): the hyperparameters (those that
// differ stand out), each metric's branches overlaid in their lanes' colours, and the metrics
// aligned by step.
async function drawCompare() {
  const card = $("#compare");
  card.hidden = false;
  const ids = state.compare.slice();
  const colour = (id) => laneOf(state.tree, id)?.color;
  const swatchHead = () => h("tr", {}, h("th", {}, ""), ids.map((id) => h("th", {}, h("span", { class: "swatch", style: `background:${colour(id)}` }), id)));
  let data;
  try {
    data = await api(`/api/runs/${enc(state.run.id)}/compare?nodes=${ids.join(",")}&max_points=1000&rows=8`);
  } catch (err) {
    fill(card, h("h2", {}, `compare ${ids.join(", ")}`), h("p", { class: "error", role: "alert" }, err.message));
    return;
  }
  const params = h("table", { id: "compare-table" }, h("thead", {}, swatchHead()), h("tbody", {}, data.hyperparameters.map((row) =>
    h("tr", { class: row.differs ? "differs" : "", "data-hparam": row.name }, h("th", {}, row.name), ids.map((id) => h("td", {}, fmt(row.values[id])))))));
  const charts = [];
  const tables = [];
  for (const [key, m] of Object.entries(data.metrics)) {
    const div = h("div", { class: "chart compare-chart", "data-key": key });
    charts.push(h("div", { class: "card chart-card" }, h("div", { class: "chart-head" }, h("span", { class: "chart-title" }, key)), div));
    const traces = ids.map((id) => ({ name: id, color: colour(id), steps: m.branches[id].steps, values: m.branches[id].values,
      times: m.branches[id].steps.map(() => 0), nodes: m.branches[id].steps.map(() => nodeNumber(id)) }));
    plotly().then(() => plotTraces(div, key, traces, { x: "step", smoothing: 0 }));
    tables.push(h("h3", {}, `${key} by step`), h("div", { class: "scroll" }, h("table", { class: "aligned", "data-key": key }, h("thead", {}, h("tr", {}, h("th", {}, "step"), ids.map((id) => h("th", {}, id)))),
      h("tbody", {}, m.aligned.steps.map((step, i) => h("tr", {}, h("td", {}, step), ids.map((id) => h("td", {}, fmt(m.aligned.values[id][i])))))))));
  }
  fill(card, h("h2", {}, `compare ${ids.join(", ")}`, h("button", { class: "small close", onclick: () => { card.hidden = true; } }, "close")),
    data.diverge_step !== null && data.diverge_step !== undefined ? h("p", { class: "muted" }, `the branches part at step ${data.diverge_step}`) : "",
    h("h3", {}, "hyperparameters"), h("div", { class: "scroll" }, params), h("div", { class: "charts" }, charts), tables);
  card.scrollIntoView({ block: "start" });
}

// ---- audit ----------------------------------------------------------------------------------
function drawAudit() {
  const card = $("#audit-card");
  card.hidden = !state.commands.length;
  fill($("#audit tbody"), ...state.commands.slice().reverse().map((c) => h("tr", { "data-command": c.id },
    h("td", {}, c.id), h("td", {}, new Date(c.created_at * 1000).toLocaleTimeString()), h("td", {}, `${c.user ?? "unknown"} (${c.source})`),
    h("td", { class: "what" }, commandText(c)), h("td", { class: `cmd-${c.status}` }, outcomeText(c)))));
}

// The four reads a refresh needs, all at once. `ref` is the run's id, or what the URL named it by.
async function readRun(ref) {
  const base = `/api/runs/${enc(ref)}`;
  const [run, tree, keys, commands] = await Promise.all([api(base), api(`${base}/tree`), api(`${base}/metrics`), api(`${base}/commands`)]);
  return { run, tree: tree.nodes, keys, commands };
}

// What the server's live events say of this run, as the page read it: its row (the stored
// status, step, heartbeat) and, for a live run, its last five commands with their status.
function drawnKey(run, commands) {
  const live = ["running", "paused"].includes(run.stored_status);
  return [[run.id, run.stored_status, run.step, run.heartbeat_at],
    live ? [run.id, commands.slice(-5).map((c) => [c.id, c.status])] : undefined];
}

// Redraws the page from `reading` (a readRun promise; by default a new one).
async function refreshRun(reading = readRun(state.run.id)) {
  const { run, keys } = Object.assign(state, await reading);
  fill($("#run-status"), h("span", { class: `status status-${run.status}` }, run.status), ` · step ${run.step} · ${dur(run.duration)}`);
  runMeta($("#run-meta"), run, refreshRun);
  drawControls();
  drawTree();
  drawLegend();
  drawAudit();
  if (state.selected) drawNode();
  await board.draw(keys);
  state.picture = true;  // the picture after the charts: they come first on a loaded server
  await picture.refresh(state.tree, state.run.status, state.selected, state.compare).catch(() => {});
}

export async function runPage(id) {
  plotly().catch(() => {});  // fetched while the data is read
  const reading = readRun(id);  // the first refresh's reads start now, not after the page is built
  state.run = (await reading).run;
  $("#crumb").textContent = `${state.run.name} (${state.run.id})`;
  const opts = store.get("chart-opts", { x: "step", smoothing: 0 });
  const charts = h("div", { id: "charts" });
  board = new ChartBoard(charts, `run:${state.run.id}`, loadKey, opts);
  picture = new TreePicture(null, state.run.id, (id, shift) => selectNode(id, shift));
  const toolbar = chartToolbar(opts, () => { store.set("chart-opts", opts); board.redraw(); });
  fill($("#main"), 
    h("div", { class: "run-head" }, h("p", { id: "run-status" }), h("div", { id: "run-meta" })),
    h("div", { class: "grid" },
      h("section", { class: "main-col" },
        h("div", { class: "card legend-card" }, toolbar, h("ul", { id: "legend", class: "legend" })),
        charts,
        h("div", { class: "card", id: "tree-picture-card" }, h("h2", {}, "tree picture"), h("div", { id: "tree-picture" })),
        h("div", { class: "card", id: "compare", hidden: true }),
        h("div", { class: "card", id: "audit-card", hidden: true }, h("h2", {}, "audit log"),
          h("div", { class: "scroll" }, h("table", { id: "audit" }, h("thead", {}, h("tr", {}, ...["#", "time", "who", "what", "outcome"].map((c) => h("th", {}, c)))), h("tbody"))))),
      h("aside", {},
        h("div", { class: "card", id: "control" }),
        h("div", { class: "card tree" }, h("h2", {}, "tree"),
          h("div", { id: "compare-bar", hidden: true }, h("span", { class: "what" }), h("button", { id: "compare-nodes", class: "small primary", onclick: drawCompare }, "compare"),
            h("button", { class: "small", onclick: () => { state.compare = []; drawTree(); } }, "clear")),
          h("div", { id: "tree" })),
        h("div", { class: "card", id: "node-detail", hidden: true }))));
  picture.root = $("#tree-picture");
  await refreshRun(reading);
  const mine = (row) => row[0] === state.run.id;  // this run's status, step, heartbeat, commands
  live(throttle(refreshRun, 500), ([runs, commands]) => [runs.find(mine), commands.find(mine)],
    JSON.stringify(drawnKey(state.run, state.commands)));
}
