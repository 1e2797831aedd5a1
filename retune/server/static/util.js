// Shared helpers of the dashboard's ES modules: DOM building, formatting, the API, live updates,
// colours and the sentences the audit log and node details are written in.
export const $ = (sel, root = document) => root.querySelector(sel);
export const h = (tag, attrs = {}, ...children) => {
  const el = tag === "svg" || attrs.svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "svg") continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== "") el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
};
export const s = (tag, attrs = {}, ...children) => h(tag, { ...attrs, svg: true }, ...children);

export const COLORS = ["#3157d5", "#d5533a", "#1f8a4c", "#9b3fc4", "#c99514", "#1796a8", "#b8336a", "#5f6b7a",
  "#7a9a01", "#e07b00", "#0b6e99", "#a04000"];
export const fmt = (v) => v === null || v === undefined ? "-" : typeof v === "number"
  ? (Number.isInteger(v) ? String(v) : Math.abs(v) >= 1e-3 && Math.abs(v) < 1e5 ? String(Number(v.toPrecision(4))) : v.toExponential(2).replace("e-0", "e-").replace("e+0", "e+"))
  : typeof v === "boolean" ? String(v) : Array.isArray(v) ? v.map(fmt).join(", ") : typeof v === "object" ? Object.entries(v).map(([k, x]) => `${k} ${fmt(x)}`).join(", ") : String(v);
// Plotly reads a subset of HTML in every string it draws (titles, legend, hover): names are
// data, never markup, so each one is escaped before it reaches a chart.
export const esc = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
export const enc = encodeURIComponent;
export const dur = (s) => s == null ? "-" : s < 60 ? `${Math.round(s)}s` : s < 3600 ? `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, "0")}s` : `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
export const ENDED = ["finished", "crashed", "stopped", "stale"];

export async function api(path, options = {}) {
  const res = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.message || `HTTP ${res.status}`);
  return body;
}

// Calls onChange when the server says something moved. `relevant` picks, from the event's
// data ([[run id, status, step, heartbeat], ...], [[run id, its last commands], ...]), what
// this page shows: an event that leaves that as it was changes nothing here (another run
// training does not redraw a finished run's page). `shown` is that same key for what the page
// has drawn already, if it can tell: then the first event redraws only when something moved.
export function live(onChange, relevant = (data) => data, shown = undefined) {
  const pill = $("#live");
  const source = new EventSource("/api/events");
  let seen = shown;
  source.addEventListener("runs", (event) => {
    pill.textContent = "live";
    let key = null;
    try { key = JSON.stringify(relevant(JSON.parse(event.data))); } catch { key = null; }
    if (key !== null && key === seen) return;
    seen = key;
    onChange();
  });
  source.onerror = () => { pill.textContent = "reconnecting"; };
}

export function throttle(fn, ms) {
  let waiting = false, again = false;
  const call = async () => {
    if (waiting) { again = true; return; }
    waiting = true;
    try { await fn(); } finally {
      setTimeout(() => { waiting = false; if (again) { again = false; call(); } }, ms);
    }
  };
  return call;
}

export const nodeNumber = (id) => Number(String(id).replace(/^n/, ""));

// A branch is a lane of the tree: it starts at a root or at a node that is not its parent's
// first child, and follows first children down to a leaf. Its colour comes from the number of
// its first node, so it never changes while the run grows (a `set` continues the lane; a
// restore starts a new one).
export function lanes(tree) {
  const byId = Object.fromEntries(tree.map((n) => [n.id, n]));
  const out = [];
  for (const node of tree) {
    const parent = node.parent === null ? null : byId[node.parent];
    if (parent && parent.children[0] === node.id) continue;
    const nodes = [node.id];
    let at = node;
    while (at.children.length) { at = byId[at.children[0]]; if (!at) break; nodes.push(at.id); }
    out.push({ id: node.id, nodes, leaf: nodes[nodes.length - 1], color: laneColor(node.id) });
  }
  return out;
}
export const laneColor = (id) => COLORS[(nodeNumber(id) - 1) % COLORS.length];
export function laneOf(tree, id) { return lanes(tree).find((l) => l.nodes.includes(id)); }

// Sentences for changes and commands: `set lr 0.0003 -> 0.0001, group 0, mode rescale`.
export const diffText = (diff) => Object.entries(diff ?? {}).map(([k, v]) => Array.isArray(v) && v.length === 2 ? `${k} ${fmt(v[0])} -> ${fmt(v[1])}` : `${k} ${fmt(v)}`).join(", ");
const valuesText = (values) => Object.entries(values ?? {}).map(([k, v]) => Array.isArray(v) && typeof v[0] !== "number" ? `${k} in ${fmt(v)}` : Array.isArray(v) ? `${k} in ${v.map(fmt).join(" / ")}` : `${k} ${fmt(v)}`).join(", ");

export function commandText(c) {
  const p = c.payload ?? {}, diff = c.result?.diff;
  const words = [c.kind], extra = [];
  const has = (d) => d && Object.keys(d).length;
  if (c.kind === "set") words.push(has(diff) ? diffText(diff) : valuesText(p.values));
  else if (c.kind === "scale") { words.push(Object.entries(p.factors ?? {}).map(([k, f]) => `${k} x${fmt(f)}`).join(", ")); if (has(diff)) extra.push(diffText(diff)); }
  else if (c.kind === "restore") { words.push(`to ${p.target ?? "?"}`); if (has(diff)) words.push(`with ${diffText(diff)}`); else if (has(p.set)) words.push(`with ${valuesText(p.set)}`); }
  else if (c.kind === "checkpoint") { if (p.tag) words.push(`tagged ${p.tag}`); }
  else if (c.kind === "explore") {
    words.push(valuesText(p.values));
    if (p.steps) extra.push(`${p.steps} steps each`);
    if (p.metric) extra.push(`scored by ${p.goal ?? "min"} ${p.metric}`);
    if (p.from) extra.push(`from ${p.from}`);
    if (p.then) extra.push(`then ${p.then}`);
    const winner = c.result?.winner;
    if (winner !== undefined && winner !== null) extra.push(`winner ${typeof winner === "number" ? `n${winner}` : fmt(winner)}`);
  } else if (c.kind === "guard") {
    words.push(p.action ?? "");
    if (p.action === "set") words.push(valuesText(p.values));
    if (p.reason) extra.push(p.reason);
  } else words.push(valuesText(Object.fromEntries(Object.entries(p).filter(([, v]) => v !== null && typeof v !== "object"))));
  if (["set", "scale", "restore"].includes(c.kind)) {
    if (p.group !== undefined && p.group !== null) extra.push(`group ${p.group}`);
    if (p.mode) extra.push(`mode ${p.mode}`);
  }
  return [words.filter(Boolean).join(" "), ...extra].join(", ");
}

export function outcomeText(c) {
  if (c.status === "applied") return c.applied_step === null || c.applied_step === undefined ? "applied" : `applied at step ${c.applied_step}${c.node ? `, node n${c.node}` : ""}`;
  if (c.status === "rejected") return `rejected: ${c.reason ?? "no reason given"}`;
  return c.status;
}

export function download(name, blob) {
  const a = h("a", { href: URL.createObjectURL(blob), download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

export const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
export const store = {
  get(key, fallback) { try { return JSON.parse(localStorage.getItem(`retune:${key}`)) ?? fallback; } catch { return fallback; } },
  set(key, value) { try { localStorage.setItem(`retune:${key}`, JSON.stringify(value)); } catch { /* private mode */ } },
};

// replaceChildren with nested arrays flattened and empty parts ("", null, false) left out.
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false && c !== "").map((c) => c instanceof Node ? c : document.createTextNode(String(c))));
  return el;
}
