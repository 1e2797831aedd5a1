// The tree picture (GET /api/runs/{run}/tree.svg) inline in the run page: wheel to zoom, drag to
// pan (both move the SVG's viewBox), click a node to open it, shift-click to select it for
// comparison. The picture is parsed as XML and anything active in it is dropped before use.
import { fill, h } from "./util.js";

function clean(svg) {
  for (const el of svg.querySelectorAll("script, foreignObject")) el.remove();
  for (const el of [svg, ...svg.querySelectorAll("*")]) {
    for (const attr of [...el.attributes]) if (/^on/i.test(attr.name) || /javascript:/i.test(attr.value)) el.removeAttribute(attr.name);
  }
  return svg;
}

export class TreePicture {
  constructor(root, runId, onNode) {
    Object.assign(this, { root, runId, onNode, signature: null, box: null });
  }

  async refresh(tree, status, selected, compare) {
    const signature = JSON.stringify([status, tree.map((n) => [n.id, n.end_step, n.children.length, n.checkpoints.length])]);
    if (signature !== this.signature) {
      const res = await fetch(`/api/runs/${encodeURIComponent(this.runId)}/tree.svg`);
      if (!res.ok) { this.root.closest(".card")?.setAttribute("hidden", ""); return; }
      const doc = new DOMParser().parseFromString(await res.text(), "image/svg+xml");
      const svg = doc.documentElement;
      if (svg.nodeName !== "svg") return;
      this.signature = signature;
      this.full = (svg.getAttribute("viewBox") ?? "0 0 100 100").split(/\s+/).map(Number);
      svg.removeAttribute("height");
      svg.setAttribute("width", "100%");
      this.svg = document.importNode(clean(svg), true);
      if (this.box) this.svg.setAttribute("viewBox", this.box.join(" "));
      this.wire();
      fill(this.root, h("div", { class: "toolbar" }, h("span", { class: "muted" }, "wheel: zoom · drag: move · click: open a node · shift-click: compare"),
        h("button", { class: "small", id: "tree-reset", onclick: () => { this.box = null; this.svg.setAttribute("viewBox", this.full.join(" ")); } }, "fit")), this.svg);
    }
    for (const g of this.svg?.querySelectorAll("g.rt-node") ?? []) {
      const id = `n${g.dataset.node}`;
      g.classList.toggle("picked", id === selected);
      g.classList.toggle("compared", compare.includes(id));
    }
  }

  wire() {
    const svg = this.svg;
    const view = () => (svg.getAttribute("viewBox") ?? this.full.join(" ")).split(/\s+/).map(Number);
    svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y, w, hh] = view();
      const rect = svg.getBoundingClientRect();
      const px = x + (e.clientX - rect.left) / rect.width * w, py = y + (e.clientY - rect.top) / rect.height * hh;
      const k = Math.min(4, Math.max(0.25, e.deltaY > 0 ? 1.2 : 1 / 1.2));
      const nw = Math.min(this.full[2] * 4, Math.max(20, w * k)), nh = hh * nw / w;
      this.box = [px - (px - x) * nw / w, py - (py - y) * nh / hh, nw, nh];
      svg.setAttribute("viewBox", this.box.join(" "));
    }, { passive: false });
    let drag = null;
    svg.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, box: view(), moved: false }; });
    svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) < 4 && !drag.moved) return;
      drag.moved = true;
      const rect = svg.getBoundingClientRect();
      const [x, y, w, hh] = drag.box;
      this.box = [x - dx / rect.width * w, y - dy / rect.height * hh, w, hh];
      svg.setAttribute("viewBox", this.box.join(" "));
    });
    svg.addEventListener("pointerup", (e) => {
      const moved = drag?.moved; drag = null;
      if (moved) return;
      const chain = e.target.closest?.("g.rt-chain");
      if (chain) {  // a collapsed chain: show or fold its members
        const members = svg.querySelector(`g.rt-chain-members[data-chain="${CSS.escape(chain.dataset.chain)}"]`);
        if (members) members.getAttribute("display") === "none" ? members.removeAttribute("display") : members.setAttribute("display", "none");
        return;
      }
      const g = e.target.closest?.("g.rt-node");
      if (g) this.onNode(`n${g.dataset.node}`, e.shiftKey);
    });
    svg.addEventListener("pointerleave", () => { drag = null; });
  }
}
