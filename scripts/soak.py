"""``make soak``: the full reliability campaign, with the figures docs/reliability.md quotes.

usage: python scripts/soak.py [--kills 100] [--runs 8] [--steps 3000] [--examples 150]
                              [--seed 0] [--only kill,concurrency,fuzz,properties] [--json PATH]
                              [--doc docs/reliability.md] [--postgres URL]
                              [--property-examples 1000]

Runs the kill campaign, the concurrency campaign, the API fuzzing campaign and the property
tests (new random examples) in full (the short forms run in ``make test``), prints each one's
figures and every broken promise, writes all the counts as JSON (``--json``) and the figures
into the doc between its ``<!-- soak:begin -->`` and ``<!-- soak:end -->`` lines (``--doc``),
and exits 1 when any promise broke. With ``--postgres URL`` the concurrency part also runs on
that database.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests package

from tests.campaign import concurrency, fuzz, kill


def _say(line: str) -> None:
    print(line, flush=True)


def _properties(examples: int) -> tuple[str, bool, str]:
    """Run tests/campaign/test_properties.py drawing ``examples`` new commands (the
    ``explore`` profile); (summary, passed, the failure's last lines)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HYPOTHESIS_PROFILE": "explore"}
    env["RETUNE_PROPERTY_EXAMPLES"] = str(examples)
    test = "tests/campaign/test_properties.py"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    try:
        out = subprocess.run(
            command, cwd=root, env=env, capture_output=True, text=True, timeout=1800, check=False
        )
    except subprocess.TimeoutExpired:
        return "property tests: timed out", False, "timed out after 1800 s"
    passed = out.returncode == 0
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    failed = [line.split(" - ", 1)[-1] for line in lines if line.startswith("FAILED ")]
    tail = "; ".join(failed[:3]) or (lines[-1] if lines else "no output")  # pytest's -ra lines
    verdict = "a command was applied iff valid" if passed else "FAILED"
    return (
        f"property tests: {examples} random set/scale commands to a live run: {verdict}",
        passed,
        tail[:400],
    )


BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            check=False,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[1],
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _write_doc(
    doc: Path, figures: dict[str, Any], summaries: list[str], failures: list[str]
) -> None:
    """Replace the text between the doc's soak markers with these figures."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} section to fill")
    lines = [
        BEGIN,
        f"Written by `make soak` on {figures['started']} (commit {_commit()}, seed "
        f"{figures['seed']}, {platform.system()} {platform.machine()}, Python "
        f"{platform.python_version()}).",
        "",
        *[f"* {summary}" for summary in summaries],
        "",
        "Every promise held." if not failures else "**Broken promises:**",
        *[f"* `{failure}`" for failure in failures[:30]],
        END,
    ]
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    doc.write_text(head + "\n".join(lines) + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--examples", type=int, default=150, help="fuzz cases per operation/mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="kill,concurrency,fuzz,properties")
    parser.add_argument("--property-examples", type=int, default=1000)
    parser.add_argument("--postgres", default="", help="also run the concurrency part here")
    parser.add_argument("--json", type=Path, help="write every count here")
    parser.add_argument("--doc", type=Path, help="write the figures into this Markdown file")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(","))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    figures: dict[str, Any] = {"seed": args.seed, "started": started}
    failures: list[str] = []
    summaries: list[str] = []
    with tempfile.TemporaryDirectory(prefix="retune-soak-") as tmp:
        root = Path(tmp)
        if "kill" in wanted:
            (root / "kill").mkdir()
            print(f"== kill campaign: {args.kills} SIGKILLs", flush=True)
            k = kill.run_campaign(root / "kill", kills=args.kills, seed=args.seed, log=_say)
            figures["kill"] = asdict(k)
            summaries.append(k.summary())
            failures += [f"kill: {f}" for f in k.failures()]
        if "concurrency" in wanted:
            (root / "concurrency").mkdir()
            print(f"== concurrency: {args.runs} runs x {args.steps} steps", flush=True)
            c = concurrency.run_campaign(
                root / "concurrency", runs=args.runs, steps=args.steps, seed=args.seed, log=_say
            )
            figures["concurrency"] = asdict(c)
            summaries.append(c.summary())
            failures += [f"concurrency: {f}" for f in c.failures()]
            if args.postgres:
                (root / "concurrency-postgres").mkdir()
                print("== concurrency on PostgreSQL", flush=True)
                p = concurrency.run_campaign(
                    root / "concurrency-postgres",
                    runs=args.runs,
                    steps=args.steps,
                    seed=args.seed,
                    url=args.postgres,
                    log=_say,
                )
                figures["concurrency_postgres"] = asdict(p)
                summaries.append(p.summary())
                failures += [f"concurrency (PostgreSQL): {f}" for f in p.failures()]
        if "fuzz" in wanted:
            (root / "fuzz").mkdir()
            print(f"== API fuzzing: {args.examples} cases per operation and mode", flush=True)
            f = fuzz.run_campaign(root / "fuzz", examples=args.examples, seed=args.seed, log=_say)
            figures["fuzz"] = asdict(f)
            summaries.append(f.summary())
            failures += [f"fuzz: {x}" for x in f.failures()]
    if "properties" in wanted:
        print(f"== property tests: {args.property_examples} new random commands", flush=True)
        summary, passed, tail = _properties(args.property_examples)
        figures["properties"] = {"examples": args.property_examples, "passed": passed}
        summaries.append(summary)
        print(summary, flush=True)
        if not passed:
            failures.append(f"properties: {tail}")
    figures["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print("== soak figures")
    for summary in summaries:
        print(summary)
    for failure in failures:
        print("FAIL:", failure)
    if args.doc:
        _write_doc(args.doc, figures, summaries, failures)
    print("soak:", "FAILED" if failures else "every promise held")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
