"""Render the benchmarks' JSON results into docs/benchmarks.md, between marker comments.

Run by ``make bench`` after the benchmarks: each benchmark wrote ``benchmarks/results/NAME.json``
and here each result becomes the block between ``<!-- bench:NAME -->`` and
``<!-- /bench:NAME -->`` in the doc, so the figures the docs quote are generated, never pasted
by hand. The prose around the markers is kept as it is. ``--check`` changes nothing and exits
1 when the doc differs from what the results would render (the doc is stale).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
DOC = ROOT / "docs" / "benchmarks.md"


class ReportError(Exception):
    """The results or the doc cannot be rendered (missing marker, unreadable JSON)."""


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; every column but the first is right-aligned."""
    rule = ["---", *("---:" for _ in headers[1:])]
    lines = [headers, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _header(result: dict[str, Any], settings: str) -> str:
    when = datetime.fromtimestamp(result["recorded_at"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = (
        "**quick settings (`--quick`): reduced sizes, not the figures of record**"
        if result.get("quick")
        else "normal settings"
    )
    return f"`{result['machine']}`; {settings}; {mode}; recorded {when}."


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f}"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _commands_verdict(problems: list[str], all_well: str, failed: str) -> str:
    """``all_well`` when no command went wrong, else how many did (``failed``) and the first
    five reasons."""
    if not problems:
        return all_well
    return f"**{len(problems)} {failed}**: " + "; ".join(problems[:5])


def _x(ratio: float) -> str:
    return f"{ratio:,.2f}x" if ratio < 10 else f"{ratio:,.0f}x"


# -- one renderer per benchmark ------------------------------------------------------------

LOGGING_NAMES = {
    "bare loop": "bare loop",
    "retune": "Retune `run.step` + final `flush()`",
    "tensorboard": "TensorBoard `SummaryWriter`",
    "mlflow": "MLflow `log_metrics` (SQLite)",
}


def render_logging_overhead(r: dict[str, Any]) -> str:
    steps, repeat = r["steps"], r["repeat"]
    rows = []
    for name, label in LOGGING_NAMES.items():
        runs = r["us_per_step"][name]
        rows.append([
            label,
            f"{steps[name]:,}",
            f"{r['median_us_per_step'][name]:,.2f}",
            f"{r['p90_us_per_step'][name]:,.2f}" if "p90_us_per_step" in r else "",
            f"{r['cpu_us_per_step'][name]:,.2f}" if "cpu_us_per_step" in r else "",
            f"{min(runs):,.2f}-{max(runs):,.2f}",
            f"{r['overhead_us_per_step'][name]:,.2f}",
            f"{r['close_ms'][name]:,.1f}",
            f"{sum(r['full_gcs'][name])}/{repeat}",
        ])  # fmt: skip
    headers = ["contender", "steps", "µs/step (median)", "p90", "CPU µs/step", "range",
               "overhead µs/step", "close / flush ms", "full GCs"]  # fmt: skip
    ratios, costs, targets, met = (
        r["ratios_on_overhead"], r["ratios_on_cost"], r["targets"], r["targets_met"]
    )  # fmt: skip

    def verdict(key: str) -> str:
        return _met(met[key])

    lines = [
        _header(
            r,
            f"median of {repeat} rounds; {r['points_verified']:,} stored points "
            "compared with what was logged, all equal",
        ),
        "",
        markdown_table(headers, rows),
        "",
        "Ratios on the **per-step overhead** over the bare loop (on per-step cost in "
        f"brackets): TensorBoard / Retune **{_x(ratios['tensorboard / retune'])}** "
        f"({_x(costs['tensorboard / retune'])}), MLflow / Retune "
        f"**{_x(ratios['mlflow / retune'])}** ({_x(costs['mlflow / retune'])}). Targets: Retune "
        f"at most {targets['retune_us_per_step']:g} µs per step including the final flush "
        f"({verdict('retune_us_per_step')}: {r['median_us_per_step']['retune']:.2f} wall, "
        f"{r.get('cpu_us_per_step', {}).get('retune', float('nan')):.2f} process CPU"
        + (
            f"; then `finish()` {statistics.median(r['retune_finish_ms']):,.1f} ms"
            if r.get("retune_finish_ms")
            else ""
        )
        + "), at least "
        f"{targets['tensorboard / retune']:g}x below TensorBoard "
        f"({verdict('tensorboard / retune')}) and {targets['mlflow / retune']:g}x below MLflow "
        f"({verdict('mlflow / retune')}).",
    ]
    return "\n".join(lines)


def _latency_row(label: str, lat: dict[str, float]) -> list[str]:
    return [label, *(f"{lat[k]:,.1f}" for k in ("min", "p50", "p90", "p99", "max"))]


def render_command_latency(r: dict[str, Any]) -> str:
    s, valid, invalid = r["settings"], r["outcome"]["valid"], r["outcome"]["invalid"]
    rows = []
    if r["latency_ms"]:
        rows.append(_latency_row(f"{valid['applied']} valid commands, submit -> applied",
                                 r["latency_ms"]))  # fmt: skip
    if r["rejection_ms"]:
        rows.append(_latency_row(f"{invalid['rejected']} invalid commands, submit -> rejected",
                                 r["rejection_ms"]))  # fmt: skip
    verdict = _commands_verdict(
        r["problems"],
        "every valid command was applied and every invalid one rejected",
        "commands did not end as expected (the run failed)",
    )
    p50 = r["latency_ms"].get("p50", float("nan"))
    lines = [
        _header(r, f"{r['sent']} commands, {r['step_ms']:.2f} ms steps, {s['poll_ms']:g} ms poll"),
        "",
        markdown_table(["latency (ms)", "min", "p50", "p90", "p99", "max"], rows),
        "",
        f"Outcomes, every command counted: valid {valid['applied']} applied, "
        f"{valid['rejected']} rejected, {valid['other']} other; invalid {invalid['rejected']} "
        f"rejected, {invalid['applied']} applied, {invalid['other']} other: {verdict}. Median "
        f"latency {p50:.1f} ms against the bound of poll interval + one step "
        f"({r['bound_ms']:.1f} ms: {_met(p50 <= r['bound_ms'])}). Step time: bare "
        f"{r['bare_step_ms']:.3f} ms, with Retune {r['retune_step_ms']:.3f} ms "
        + _step_overhead(r),
    ]
    return "\n".join(lines)


def _step_overhead(r: dict[str, Any]) -> str:
    if "overhead_ci_pct" not in r:  # recorded before the phases were paired
        return f"({r['overhead_pct']:+.1f}%; target at most +2%: {_met(r['overhead_pct'] <= 2)})."
    low, high = r["overhead_ci_pct"]
    return (
        f"(medians); the overhead, the median of {r['settings']['phases']} paired phases "
        f"(alternating which runs first), is **{r['overhead_pct']:+.1f}%**, 95% bootstrap "
        f"interval {low:+.1f}% to {high:+.1f}% (target at most +2%, met when the whole interval "
        f"is under it: {_verdict(low, high, 2.0)})."
    )


def _verdict(low: float, high: float, target: float) -> str:
    """Met when the whole interval is under ``target``, not met when all of it is above."""
    if high < target or low >= target:
        return _met(high < target)
    return (
        "**not shown**: the interval straddles the target, so this machine's noise decides "
        "the figure, not Retune"
    )


CHECKPOINT_SAVES = {
    "raw write": "raw write",
    "torch.save": "`torch.save`",
    "safetensors": "safetensors `save_file`",
    "retune": "Retune `encode_state`",
}
CHECKPOINT_RESTORES = {
    "retune": "Retune `decode_state` (mmap, sha256 verified)",
    "torch.load mmap": "`torch.load(mmap=True, weights_only=True)`",
    "torch.load": "`torch.load(weights_only=True)`",
    "safetensors": "safetensors `load_file` (mmap)",
    "raw read": "raw read (`read_bytes`)",
}


def render_checkpoint_io(r: dict[str, Any]) -> str:
    mb, s, summary = r["bytes"] / 1e6, r["settings"], r["summary"]
    saves = [[label, f"{r['save_s'][k]:.3f}", f"{mb / r['save_s'][k]:,.0f}"]
             for k, label in CHECKPOINT_SAVES.items()]  # fmt: skip
    restores = [
        [
            label,
            f"{r['restore_s'][k]:.3f}",
            f"{r['ready_s'][k]:.3f}",
            f"{mb / r['ready_s'][k]:,.0f}",
        ]
        for k, label in CHECKPOINT_RESTORES.items()
    ]
    frozen = [
        [label, f"{sizes['retune'] / 1e6:,.0f} MB", f"{sizes['torch.save'] / 1e6:,.0f} MB",
         f"**{sizes['retune'] / sizes['torch.save']:.2f}x**"]
        for label, sizes in (("Adam (state for the trainable 10% only)", r["frozen_adam"]),
                             ("plain SGD (no optimizer state)", r["frozen_sgd"]))
    ]  # fmt: skip
    verified = sum(r["verified_restores"].values())
    lines = [
        _header(
            r,
            f"{mb:,.0f} MB state ({s['layers']} x Linear({s['width']}, {s['width']}) + "
            f"Adam), median of {s['repeat']}; {verified} timed restores each compared "
            "bit for bit with the saved state, all equal",
        ),
        "",
        markdown_table(["save (fsynced)", "s", "MB/s"], saves),
        "",
        markdown_table(
            ["restore", "call returns s", "+ copied into the model s", "MB/s (copied)"], restores
        ),
        "",
        f"Retune's save reaches **{summary['save_throughput_vs_raw']:.2f}x** the raw write "
        f"throughput (target: at least 0.7x: {_met(summary['save_throughput_vs_raw'] >= 0.7)}). "
        "With the state copied into the model, Retune's "
        f"restore is **{summary['ready_vs_torch_load_mmap']:.2f}x** as fast as `torch.load` "
        f"with `mmap=True` (the like-for-like baseline) and "
        f"**{summary['ready_vs_torch_load']:.2f}x** as fast as `torch.load` without it "
        "(target: at least as fast as the baseline: "
        f"{_met(summary['ready_vs_torch_load_mmap'] >= 1)}).",
        "",
        f"Frozen fine-tuning, {s['checkpoints']} checkpoints (the last one decoded and compared "
        "bit for bit):",
        "",
        markdown_table(["optimizer", "Retune", "`torch.save`", "ratio"], frozen),
    ]
    return "\n".join(lines)


def render_dashboard(r: dict[str, Any]) -> str:
    repeat = r["settings"]["repeat"]
    api, cold = r["api_1M_to_2000_s"], r["page_cold_s"]
    rows = [
        ["API: 1,000,000-point metric -> 2,000 points", f"{api:.3f}", "< 0.2", _met(api < 0.2)],
        ["Chromium: run page, 500 nodes, 200,000 points/metric, **cold**", f"{cold:.2f}",
         "< 2", _met(cold < 2)],
        ["Chromium: the same page, warm (cache on, after a first load)",
         f"{r['page_warm_s']:.2f}", "-", "-"],
    ]  # fmt: skip
    if "tree_svg_api_s" in r:  # results recorded before the tree picture have no such rows
        svg_api, svg_page = r["tree_svg_api_s"], r["tree_svg_chromium_s"]
        rows[1:1] = [
            ["API: the tree picture, `tree.svg` of the 500-node run", f"{svg_api:.3f}", "< 2",
             _met(svg_api < 2)],
            ["Chromium: `tree.svg` opened cold until its 500 nodes are in the document",
             f"{svg_page:.2f}", "< 2", _met(svg_page < 2)],
        ]  # fmt: skip
    if "runs_page_1000_s" in r:  # results recorded before the runs-page figure have none
        runs_api, runs_page = r["api_runs_1000_s"], r["runs_page_1000_s"]
        rows[1:1] = [
            ["API: the runs list, 1,000 runs with their last metrics", f"{runs_api:.3f}", "-", "-"],
            ["Chromium: runs page with 1,000 runs, cold, until every row shows",
             f"{runs_page:.2f}", "< 1", _met(runs_page < 1)],
        ]  # fmt: skip
    lines = [
        _header(r, f"median of {repeat}"),
        "",
        markdown_table(["measurement", "seconds", "target", ""], rows),
        "",
        f"Cold loads: {r['cold_cache_hits']} responses served from the browser cache, "
        f"plotly.min.js fetched from the server {r['plotly_fetches_cold']} times in "
        f"{repeat} loads; warm loads: {r['warm_cache_hits']} responses from the cache. The "
        "target applies to the cold figure.",
    ]
    return "\n".join(lines)


def render_integrations_overhead(r: dict[str, Any]) -> str:
    target = r["target_pct"]
    rows = [
        [name, f"{f['without_ms']:.2f}", f"{f['with_ms']:.2f}", f"{f['overhead_pct']:+.1f}%",
         _met(f["overhead_pct"] <= target)]
        for name, f in r["frameworks"].items()
    ]  # fmt: skip
    return "\n".join([
        _header(r, f"median of {r['rounds']} interleaved rounds per framework, one process each"),
        "",
        markdown_table(
            ["framework", "step ms without", "step ms with Retune", "overhead",
             f"target <= {target:g}%"], rows,
        ),
    ])  # fmt: skip


STALL_NAMES = {
    "none": "no checkpoint (reference loop)",
    "torch.save": "`torch.save` (synchronous, no fsync)",
    "torch.save + fsync": "`torch.save` + fsync",
    "dcp.async_save": "`torch.distributed.checkpoint.async_save` (`no_dist=True`)",
    "retune (sync)": "Retune `run.checkpoint()` (both phases at the boundary)",
    "retune (async)": "Retune scheduled save (phase 2 in the background)",
    "retune (change)": "Retune `set` command (its checkpoint's phase 2 in the background)",
}


def render_checkpoint_stall(r: dict[str, Any]) -> str:
    s, mb = r["settings"], r["bytes"] / 1e6
    rows = []
    for name, label in STALL_NAMES.items():
        if name not in r["loop_s"]:  # recorded before this contender existed
            continue
        ratio = "" if name == "none" else _x(r["ratio_to_torch_save"][name])
        rows.append([
            label,
            f"{r['loop_s'][name]:.3f}",
            "" if name == "none" else f"{r['median_stall_s'][name] * 1e3:,.0f}",
            "" if name == "none" else f"{r['blocked_s'][name] * 1e3:,.0f}",
            "" if name == "none" else
            f"{r['slowed_s'][name] * 1e3:,.0f} ({r['steps_beside_save'][name]:.0f})",
            "" if name == "none" else f"{r['final_wait_s'][name] * 1e3:,.0f}",
            ratio,
        ])  # fmt: skip
    ratio = r["ratio_to_torch_save"]["retune (async)"]
    blocked = r["blocked_ratio_to_torch_save"]["retune (async)"]
    load = r.get("load_average")
    lines = [
        _header(
            r,
            f"{mb:,.0f} MB state ({s['layers']} x Linear({s['width']}, {s['width']}) + Adam), "
            f"{s['steps']} steps of {s['step_ms']:.1f} ms, one checkpoint after step "
            f"{s['save_at']}; median of {s['repeat']} rounds; every Retune and `torch.save` "
            "checkpoint compared bit for bit with the state of its step, all equal",
        ),
        "",
        markdown_table(
            [
                "contender",
                "loop s",
                "stall ms",
                "blocked ms",
                "slowed ms (steps beside)",
                "final wait ms",
                "stall / torch.save",
            ],
            rows,
        ),
        "",
        f"Retune's background save stalls training **{_x(ratio)}** as long as a synchronous "
        f"`torch.save` of the same state, slowed steps included (target: at most "
        f"{r['target']:g}x: {_met(r['target_met'])}); the training thread is blocked at the "
        f"boundary **{_x(blocked)}** as long."
        + (f" Load average when it ended: {load:.1f} on this machine." if load else ""),
    ]
    if "retune (change)" in r["loop_s"]:
        change, sync = r["median_stall_s"]["retune (change)"], r["median_stall_s"]["retune (sync)"]
        lines[-1] += (
            f" A `set` command applied at the boundary stalls training {change * 1e3:,.0f} ms "
            f"(**{_x(r['ratio_to_torch_save']['retune (change)'])}**), where writing its "
            f"checkpoint at the boundary, as `run.checkpoint()` does, stalls {sync * 1e3:,.0f} ms."
        )
    return "\n".join(lines)


def _rounds(values: list[float]) -> str:
    """Every round's figure when there are few; their range and quartiles when many."""
    if len(values) <= 20:
        return " ".join(f"{v:.1f}" for v in values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{min(values):.1f}-{max(values):.1f} (quartiles {q1:.1f}-{q3:.1f})"


def render_distributed_overhead(r: dict[str, Any]) -> str:
    s, target, lat = r["settings"], r["target_pct"], r["latency_ms"]
    rounds = [
        ["without Retune", f"{r['median_without_ms']:.2f}", _rounds(r["without_ms"])],
        ["with Retune attached", f"{r['median_with_ms']:.2f}", _rounds(r["with_ms"])],
    ]
    latency = [_latency_row(f"{r['applied']} `set lr`, submit -> applied on both ranks", lat)]
    quartiles = statistics.quantiles(r["without_ms"], n=4, method="inclusive")
    spread = (quartiles[2] - quartiles[0]) / statistics.median(r["without_ms"]) * 100
    low, high = r["overhead_ci_pct"]
    verdict_target = _verdict(low, high, target)
    verdict = _commands_verdict(
        r["problems"],
        "every command was applied on both ranks",
        "commands were not applied on every rank",
    )
    return "\n".join([
        _header(r, f"{s['ranks']} ranks ({s['backend']}, {s['launcher']}), DDP MLP, "
                   f"{s['steps']} steps per round after {s.get('warmup', 0)} untimed, median of "
                   f"{s['rounds']} interleaved rounds"),
        "",
        markdown_table(["per-step time (rank 0)", "ms (median)", "rounds (ms)"], rounds),
        "",
        f"Overhead, the median of the {s['rounds']} paired ratios (each round with Retune "
        f"against the round without it beside it, alternating which runs first): "
        f"**{r['overhead_pct']:+.1f}%**, 95% bootstrap interval {low:+.1f}% to {high:+.1f}% "
        f"(ratio of the medians {r['overhead_of_medians_pct']:+.1f}%; target under "
        f"{target:g}% on a ~{s['step_ms']:g} ms step, met when the whole interval is under "
        f"it: {verdict_target}). The rounds without "
        f"Retune alone spread by {spread:.0f}% (interquartile range over the median); the "
        f"agreement `all_reduce` alone takes {r['agreement_us']:.0f} µs.",
        "",
        markdown_table(["latency (ms)", "min", "p50", "p90", "p99", "max"], latency),
        "",
        f"{verdict.capitalize()} ({s['poll_ms']} ms poll).",
    ])  # fmt: skip


EXPORT_NAMES = {
    "csv": "`retune export --to csv` (streamed)",
    "parquet": "`retune export --to parquet` (streamed)",
    "tensorboard": "`retune export --to tensorboard` (streamed)",
    "naive-csv": "naive: one pandas DataFrame, `to_csv`",
    "naive-parquet": "naive: one pandas DataFrame, `to_parquet`",
}


def render_export(r: dict[str, Any]) -> str:
    full, quarter, s = r["results"]["full"], r["results"]["quarter"], r["summary"]
    points, mlflow = r["points"], r["results"]["mlflow"]
    rows = [
        [label, f"{full[k]['points']:,}", f"{full[k]['seconds']:.2f}",
         f"{full[k]['points'] / full[k]['seconds']:,.0f}", f"{full[k]['peak_mb']:.1f}",
         f"{quarter[k]['peak_mb']:.1f}"]
        for k, label in EXPORT_NAMES.items()
    ]  # fmt: skip
    lines = [
        _header(
            r,
            f"{points:,} stored points (3 nodes, 2 metrics, chunks of 1,000); each "
            "export in a fresh process, every package imported before timing",
        ),
        "",
        markdown_table(
            [
                "export",
                "points written",
                "seconds",
                "points/s",
                "peak MB",
                f"peak MB at {points // 4:,} points",
            ],
            rows,
        ),
        "",
        f"Peak memory of the streamed CSV export: **{_x(s['csv_vs_naive_memory'])} less** than "
        f"the naive one (time: {_x(s['csv_vs_naive_time'])} as fast); Parquet: "
        f"**{_x(s['parquet_vs_naive_memory'])} less** (time: "
        f"{_x(s['parquet_vs_naive_time'])} as fast). TensorBoard writes every branch's whole "
        "path, so shared prefixes are written once per branch (more points than stored).",
        "",
        f"MLflow (SQLite tracking store) at {r['mlflow_points']:,} points: "
        f"{mlflow['seconds']:.1f} s ({mlflow['points'] / mlflow['seconds']:,.0f} points/s, "
        f"peak {mlflow['peak_mb']:.1f} MB); MLflow's own `log_batch` is the limit, so 1,000,000 "
        f"points would take about {points / (mlflow['points'] / mlflow['seconds']) / 60:,.0f} "
        "minutes at that rate.",
    ]
    return "\n".join(lines)


def render_guard(r: dict[str, Any]) -> str:
    s = r["settings"]
    target = r["target_us"]
    rows = [
        ["`run.step(loss=...)`, no guard", f"{r['plain_us_per_step']:.3f} us", "-", "-"],
        ["`run.step(loss=...)`, guard on (detection)", f"{r['guarded_us_per_step']:.3f} us",
         "-", "-"],
        ["difference of the two loops", f"{r['overhead_us_per_step']:.3f} us", "-", "-"],
        ["what the guard adds to `step()` (`GuardRuntime.observe`, best of rounds)",
         f"{r['observe_us']:.3f} us", f"< {target:g} us", _met(r["observe_us"] < target)],
        [f"trigger to training again, {r['state_mb']:.0f} MB state, every weight changed",
         f"{r['trigger_to_training_s']:.2f} s", "-", "-"],
        ["slowest step that took a last-good checkpoint (a full save)",
         f"{r['step_with_checkpoint_s']:.2f} s", "-", "-"],
    ]  # fmt: skip
    lines = [
        _header(r, f"{s['steps']:,} steps x {s['repeat']} alternating rounds, median"),
        "",
        markdown_table(["measurement", "value", "target", ""], rows),
        "",
        "The two loops' difference is within the noise of a shared machine; the guard's own "
        "work per step is the `observe` line. Recovery time is the median of "
        f"{len(r['trigger_runs_s'])}: verify and decode the last-good checkpoint, save the "
        "state being left (for a veto), load, lower lr, record the node and audit entry.",
    ]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "logging_overhead": render_logging_overhead,
    "command_latency": render_command_latency,
    "checkpoint_io": render_checkpoint_io,
    "checkpoint_stall": render_checkpoint_stall,
    "dashboard": render_dashboard,
    "integrations_overhead": render_integrations_overhead,
    "guard": render_guard,
    "distributed_overhead": render_distributed_overhead,
    "export": render_export,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- bench:{re.escape(name)} -->\n).*?(<!-- /bench:{re.escape(name)} -->)", re.S
    )


def render(doc: str, results: dict[str, dict[str, Any]]) -> str:
    """``doc`` with the block of each result replaced; text outside the markers is kept.

    Raises :class:`ReportError` when a result has no block (both markers) in ``doc``.
    """
    for name, result in results.items():
        pattern = _block(name)
        if not pattern.search(doc):
            raise ReportError(
                f"the doc has no <!-- bench:{name} --> ... <!-- /bench:{name} --> block"
            )
        body = RENDERERS[name](result)

        def replace(match: re.Match[str], body: str = body) -> str:
            return f"{match.group(1)}{body}\n{match.group(2)}"

        doc = pattern.sub(replace, doc)
    return doc


def load_results(folder: Path) -> dict[str, dict[str, Any]]:
    """Every ``NAME.json`` of a known benchmark in ``folder``."""
    results = {}
    for name in RENDERERS:
        path = folder / f"{name}.json"
        if not path.exists():
            continue
        try:
            results[name] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReportError(f"{path}: cannot read the results ({e})") from e
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
        if not results:
            raise ReportError(f"no results in {args.results}; run `make bench` first")
        doc = args.doc.read_text(encoding="utf-8")
        rendered = render(doc, results)
    except (ReportError, OSError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    if args.check:
        if rendered != doc:
            print(f"report: {args.doc} is stale; run `benchmarks/report.py`", file=sys.stderr)
            return 1
        return 0
    args.doc.write_text(rendered, encoding="utf-8")
    print(f"report: {', '.join(results)} -> {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
