"""Concurrency campaign: K trainings on one SQLite store, one commander, one reader.

usage: python -m tests.campaign.concurrency [--runs 8] [--steps 3000] [--seed 0] [--json]

K trainer processes (the campaign's tiny real model, a point of ``s`` = step at every step)
share one SQLite store with a process whose threads keep sending commands to all of them, a mix of
valid ``set``/``scale`` and invalid ones, and a process that keeps reading (runs list,
metrics, last values, the audit log). At the end:

* every step's point of every run is stored, exactly once (else: lost / duplicated points),
* no process saw "database is locked" (stderr, exceptions),
* no command is left ``pending`` once its run ended (else: lost commands),
* every command refused at submission is ``rejected`` in the store, never applied,
* every applied ``set``/``scale`` opened exactly one node: as many ``set``/``scale`` nodes as
  applied commands, each command naming its own node (else: applied twice), of its kind,
  starting at the step the command says it was applied at (else: a mismatched audit entry).

Also run as the worker processes: ``... concurrency train|command|read ARGS``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import retune
from retune.store import open_store
from tests.campaign._proc import Child

LOCKED = "database is locked"
DEADLINE = 540.0  # seconds any worker may live
STEP_DELAY = 0.004
PER_RUN_RATE = 8.0  # commands per second and live run: each applied one costs a checkpoint
STEPS_PER_COMMAND = 4  # and no more than one per 4 steps a run made, however slow it trains


# -- workers ----------------------------------------------------------------------------------
def _train(store: str, name: str, steps: int) -> int:
    from tests.campaign import _model

    model, optimizer = _model.build()
    x, y = _model.data()
    run = retune.init(
        name, model=model, optimizer=optimizer, store=store, seed=0, flush_interval=0.2
    )
    print("READY", run.id, flush=True)
    with run:
        for step in range(1, steps + 1):
            rows = (step * 37) % (x.shape[0] - 32)
            loss = _model.train_step(model, optimizer, x[rows : rows + 32], y[rows : rows + 32])
            run.step(loss=loss, s=float(step))
            time.sleep(STEP_DELAY)  # a training step takes time; commands arrive meanwhile
    print("DONE", run.id, flush=True)
    return 0


def _random_command(rng: random.Random) -> tuple[str, dict[str, Any], bool]:
    """(kind, payload, valid?) from a mix of valid and invalid commands."""
    choice = rng.randrange(10)
    if choice < 3:
        return "set", {"values": {"lr": round(rng.uniform(0.001, 0.1), 6)}}, True
    if choice < 5:
        return "scale", {"factors": {"lr": rng.choice((0.5, 0.8, 1.25, 2.0))}}, True
    if choice == 5:
        return "set", {"values": {"momentum": round(rng.uniform(0.0, 0.95), 3)}}, True
    invalid: list[tuple[str, dict[str, Any]]] = [
        ("set", {"values": {"lr": -1.0}}),
        ("set", {"values": {"lr": math.nan}}),
        ("set", {"values": {"momentum": 1.5}}),
        ("set", {"values": {"no_such_knob": 1.0}}),
        ("set", {"values": {"lr": "fast"}}),
        ("scale", {"factors": {"weight_decay": 0}}),
        ("scale", {"factors": {"lr": -2.0}}),
        ("set", {"values": {"lr": 0.01}, "group": 99}),
        ("set", {"values": {}}),
    ]
    kind, payload = rng.choice(invalid)
    return kind, payload, False


def _command(store: str, names: list[str], seed: int, out: Path, threads: int = 4) -> int:
    """Send random commands to every run until all of them ended (``threads`` senders)."""
    sent: list[dict[str, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE
    with open_store(store) as opened:
        ids: dict[str, str] = {}
        while len(ids) < len(names) and time.monotonic() < deadline:
            for name in names:
                try:
                    ids[name] = opened.get_run(name).id
                except retune.RunNotFound:
                    time.sleep(0.05)
        live = set(ids.values())
        per_run: dict[str, int] = dict.fromkeys(live, 0)

        def send(rng: random.Random) -> None:
            while time.monotonic() < deadline:
                with lock:
                    if not live:
                        return
                    run_id = rng.choice(sorted(live))
                try:  # at most one command per STEPS_PER_COMMAND steps the run has made
                    progress = opened.get_run(run_id).step
                except retune.RetuneError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    if per_run[run_id] > progress // STEPS_PER_COMMAND:
                        busy = True
                    else:
                        busy = False
                        per_run[run_id] += 1
                if busy:
                    time.sleep(0.02)
                    continue
                kind, payload, valid = _random_command(rng)
                entry: dict[str, Any] = {"run": run_id, "kind": kind, "valid": valid}
                try:
                    record = retune.control.submit(opened, run_id, kind, payload, source="api")
                    entry.update(id=record.id, accepted=True)
                except retune.RunNotLive:
                    with lock:
                        live.discard(run_id)
                    continue
                except retune.CommandRejected as e:
                    entry.update(id=e.command_id, accepted=False, reason=str(e))
                except retune.RetuneError as e:
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                with lock:
                    sent.append(entry)
                    gap = threads / (PER_RUN_RATE * max(1, len(live)))
                time.sleep(rng.uniform(0.0, 2 * gap))

        senders = [
            threading.Thread(target=send, args=(random.Random(seed * 100 + i),))
            for i in range(threads)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    out.write_text(json.dumps({"sent": sent, "errors": errors}))
    print("DONE", len(sent), flush=True)
    return 0


def _read(store: str, stop: Path, out: Path) -> int:
    reads, errors = 0, []
    deadline = time.monotonic() + DEADLINE
    with open_store(store) as opened:
        while not stop.exists() and time.monotonic() < deadline:
            try:
                runs = opened.list_runs()
                opened.last_metrics([r.id for r in runs])
                for run in runs:
                    opened.read_metric(run.id, "s")
                    opened.list_commands(run.id)
                reads += 1
            except retune.RetuneError as e:
                errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.01)
    out.write_text(json.dumps({"reads": reads, "errors": errors}))
    print("DONE", reads, flush=True)
    return 0


# -- the campaign -----------------------------------------------------------------------------
@dataclass
class ConcurrencyReport:
    """What the campaign counted; :meth:`failures` lists every broken promise."""

    backend: str = "SQLite"
    runs: int = 0
    steps_per_run: int = 0
    expected_points: int = 0
    stored_points: int = 0
    lost_points: int = 0
    duplicate_points: int = 0
    locked_errors: int = 0
    commands_sent: int = 0
    commands_applied: int = 0
    commands_rejected: int = 0
    commands_lost: int = 0
    invalid_commands_applied: int = 0
    duplicate_applications: int = 0
    mismatched_applications: int = 0
    reads: int = 0
    unfinished_runs: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        out = list(self.problems)
        for name in (
            "lost_points",
            "duplicate_points",
            "locked_errors",
            "commands_lost",
            "invalid_commands_applied",
            "duplicate_applications",
            "mismatched_applications",
            "unfinished_runs",
        ):
            if getattr(self, name):
                out.append(f"{name} = {getattr(self, name)}")
        return out

    def summary(self) -> str:
        return (
            f"concurrency: {self.runs} runs on one {self.backend} store lost {self.lost_points} of "
            f"{self.expected_points} points ({self.duplicate_points} duplicated); "
            f"{self.locked_errors} 'database is locked'; {self.commands_sent} commands: "
            f"{self.commands_applied} applied, {self.commands_rejected} rejected, "
            f"{self.commands_lost} lost, {self.invalid_commands_applied} invalid applied, "
            f"{self.duplicate_applications} applied twice; {self.reads} read rounds"
        )


def _verify(url: str, names: list[str], steps: int, sent: list[dict[str, Any]],
            report: ConcurrencyReport) -> None:  # fmt: skip
    refused = {e["id"] for e in sent if not e["accepted"] and e.get("id") is not None}
    with open_store(url) as store:
        for name in names:
            run = store.get_run(name)
            if run.status != "finished":
                report.unfinished_runs += 1
                report.problems.append(f"{name} ended {run.status}: {(run.error or '')[:300]}")
            got = store.read_metric(run.id, "s").steps.tolist()
            report.stored_points += len(got)
            report.lost_points += len(set(range(1, steps + 1)) - set(got))
            report.duplicate_points += len(got) - len(set(got))
            commands = store.list_commands(run.id)
            applied_changes = [
                c for c in commands if c.status == "applied" and c.kind in ("set", "scale")
            ]
            report.commands_applied += sum(c.status == "applied" for c in commands)
            report.commands_rejected += sum(c.status == "rejected" for c in commands)
            lost = [c.id for c in commands if c.status not in ("applied", "rejected")]
            report.commands_lost += len(lost)
            if lost:
                report.problems.append(f"{name}: commands {lost[:10]} left unresolved")
            bad = [c.id for c in commands if c.id in refused and c.status != "rejected"]
            report.invalid_commands_applied += len(bad)
            if bad:
                report.problems.append(f"{name}: refused commands {bad[:10]} were applied")
            nodes = {n.id: n for n in store.list_nodes(run.id)}
            change_nodes = [n for n in nodes.values() if n.change_kind in ("set", "scale")]
            for c in applied_changes:  # the audit entry names the node the change opened
                node = nodes.get(c.node) if c.node is not None else None
                if node is None or node.change_kind != c.kind or node.start_step != c.applied_step:
                    report.mismatched_applications += 1
                    report.problems.append(
                        f"{name}: applied {c.kind} #{c.id} at step {c.applied_step} names "
                        f"{node.label if node else c.node}, which is not the node it opened"
                    )
            named = [c.node for c in applied_changes]
            twice = max(0, len(change_nodes) - len(applied_changes))
            twice += len(named) - len(set(named))
            if twice:
                report.problems.append(
                    f"{name}: {len(applied_changes)} applied set/scale commands but "
                    f"{len(change_nodes)} set/scale nodes, {len(set(named))} distinct"
                )
            report.duplicate_applications += twice


def run_campaign(
    workdir: Path,
    *,
    runs: int,
    steps: int,
    seed: int = 0,
    url: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ConcurrencyReport:
    """Run the whole campaign in ``workdir``; returns the counts.

    The store is a SQLite file in ``workdir`` unless ``url`` names another (a PostgreSQL
    database shared with others: the runs get a unique prefix).
    """
    started = time.monotonic()
    scheme = "sqlite" if url is None else url.split(":", 1)[0].split("+", 1)[0]
    backend = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(scheme, scheme)
    prefix = "crowd-" if url is None else f"crowd-{secrets.token_hex(3)}-"
    url = url or f"sqlite:///{workdir / 'retune.db'}"
    open_store(url).close()  # the schema exists before the crowd arrives, as `retune db upgrade`
    names = [f"{prefix}{i}" for i in range(runs)]
    module = "tests.campaign.concurrency"
    stop = workdir / "stop-reading"
    trainers = [
        Child(["-m", module, "train", url, name, str(steps)], workdir, workdir / f"{name}.log")
        for name in names
    ]
    commander = Child(
        ["-m", module, "command", url, str(seed), str(workdir / "sent.json"), *names],
        workdir,
        workdir / "commander.log",
    )
    reader = Child(
        ["-m", module, "read", url, str(stop), str(workdir / "read.json")],
        workdir,
        workdir / "reader.log",
    )
    report = ConcurrencyReport(
        backend=backend, runs=runs, steps_per_run=steps, expected_points=runs * steps
    )
    children = [*trainers, commander, reader]
    try:
        deadline = time.monotonic() + DEADLINE
        for child in trainers:
            child.wait_for("DONE", deadline)
            if (code := child.finish(max(1.0, deadline - time.monotonic()))) != 0:
                report.problems.append(f"{child.log.stem} exited {code}: {child.stderr()[-400:]}")
        commander.wait_for("DONE", deadline)
        stop.touch()
        reader.wait_for("DONE", deadline)
    except BaseException:
        for child in children:  # interrupted (a test timeout, Ctrl-C): leave nothing behind
            child.kill()
        raise
    for child in children:
        child.finish(30)
    for child in children:
        report.locked_errors += child.stderr().count(LOCKED)
    sent: list[dict[str, Any]] = []
    for worker in ("sent", "read"):
        path = workdir / f"{worker}.json"
        if not path.exists():
            report.problems.append(f"the {worker} worker left no result")
            continue
        result = json.loads(path.read_text())
        sent = result.get("sent", sent)
        report.reads = result.get("reads", report.reads)
        report.locked_errors += sum(LOCKED in e for e in result["errors"])
        report.problems.extend(f"{worker}: {e}" for e in result["errors"][:5])
    report.commands_sent = len(sent)
    _verify(url, names, steps, sent, report)
    report.seconds = round(time.monotonic() - started, 1)
    if log is not None:
        log(report.summary())
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "train":
        return _train(args[1], args[2], int(args[3]))
    if args and args[0] == "command":
        return _command(args[1], args[4:], int(args[2]), Path(args[3]))
    if args and args[0] == "read":
        return _read(args[1], Path(args[2]), Path(args[3]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="keep the store here (default: a temp dir)")
    parser.add_argument("--store", help="another store URL (e.g. postgresql+psycopg://...)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    ns = parser.parse_args(args)
    with tempfile.TemporaryDirectory(prefix="retune-crowd-") as tmp:
        workdir = ns.dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_campaign(workdir, runs=ns.runs, steps=ns.steps, seed=ns.seed, url=ns.store)
    print(json.dumps(asdict(report)) if ns.json else report.summary())
    for failure in report.failures():
        print("FAIL:", failure)
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
