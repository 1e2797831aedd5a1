// Retune dashboard: plain ES modules, no build step, no CDN. Talks only to /api.
import { fill, $, h } from "./util.js";
import { runsPage } from "./runs.js";
import { runPage } from "./run.js";

const match = location.pathname.match(/^\/runs\/([^/]+)$/);
(match ? runPage(decodeURIComponent(match[1])) : runsPage()).catch((err) => {
  fill($("#main"), h("p", { class: "error", role: "alert" }, err.message));
});
