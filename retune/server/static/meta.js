// A run's tags and note, editable in place (PUT /api/runs/{run}/tags and /note).
import { fill, h, api, enc } from "./util.js";

export function runMeta(root, run, refresh) {
  if (!root || root.contains(document.activeElement) && document.activeElement.matches("input, textarea")) return;  // never under the cursor
  const editable = !run.read_only;
  const save = async (what, body) => {
    try { await api(`/api/runs/${enc(run.id)}/${what}`, { method: "PUT", body: JSON.stringify(body) }); root.querySelector(".meta-error").textContent = ""; document.activeElement?.blur(); await refresh(); }
    catch (err) { root.querySelector(".meta-error").textContent = err.message; }
  };
  const tags = (run.tags ?? []).map((t) => h("span", { class: "tag", "data-tag": t }, t,
    editable ? h("button", { class: "untag", title: `remove ${t}`, "aria-label": `remove tag ${t}`, onclick: () => save("tags", { tags: run.tags.filter((x) => x !== t) }) }, "×") : ""));
  const add = h("input", { type: "text", class: "add-tag", placeholder: "add a tag", size: "10", onkeydown: (e) => {
    if (e.key === "Enter" && add.value.trim()) save("tags", { tags: [...(run.tags ?? []), add.value.trim()] });
  } });
  const note = h("textarea", { class: "note", rows: "1", placeholder: editable ? "a note about this run" : "", readonly: !editable }, run.note ?? "");
  const saveNote = h("button", { class: "small save-note", hidden: true, onclick: () => save("note", { note: note.value }) }, "save note");
  note.addEventListener("input", () => { saveNote.hidden = note.value === (run.note ?? ""); });
  fill(root, h("div", { class: "tags" }, tags, editable ? add : ""), editable || run.note ? h("div", { class: "note-row" }, note, saveNote) : "", h("span", { class: "meta-error error", role: "alert" }));
}
