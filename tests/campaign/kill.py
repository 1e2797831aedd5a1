"""Kill campaign: SIGKILL a real trainer at seeded random moments, check every promise after.

usage: python -m tests.campaign.kill [--kills 100] [--seed 0] [--dir DIR] [--json]

One run (``victim``) on one SQLite store is trained by a chain of processes, each resuming
``latest`` and each SIGKILLed at a moment drawn from a seeded generator, aimed at the risky
places: inside a scheduled checkpoint write, inside a metric flush, during the resume itself,
or anywhere; a third kill themselves at an injected point instead (a blob's fsync or rename,
before or after the manifest row, after a metric commit, halfway through a resume; see
``kill_trainer.INJECTION_POINTS``). A controller thread keeps sending ``set lr`` and ``checkpoint`` commands, so
change checkpoints and new nodes are written too. After every kill:

* ``PRAGMA integrity_check`` of the store says ``ok`` (else: a corrupt store),
* every listed checkpoint decodes, every blob verified, and loads into a fresh model and
  optimizer (else: an unrestorable checkpoint),
* the number of stored points never goes down, every point a process acknowledged (it called
  ``run.flush()`` and printed what it had logged) is stored, and each point's value is its
  step (else: lost acknowledged points),
* the next process resumes from the latest checkpoint at its step and trains on (else: a
  failed resume).

A last process trains to a fixed step and finishes; the run must end ``finished``.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import retune
from retune.checkpoint import ObjectStore, decode_state
from retune.store import STALE_AFTER, CheckpointRecord, Store, objects_url_for, open_store
from tests.campaign import _model
from tests.campaign._proc import Child, ForkServer
from tests.campaign.kill_trainer import INJECTION_POINTS

NAME = "victim"
EVERY = 8  # scheduled checkpoint every EVERY steps
FLUSH_EVERY = 5  # the trainer flushes (and acknowledges) every FLUSH_EVERY steps
ROUND_TIMEOUT = 60.0
MODES = ("save", "save", "flush", "flush", "startup", "anywhere", "inject", "inject", "inject")


@dataclass
class KillReport:
    """What the campaign counted; :meth:`failures` lists every broken promise."""

    kills: int = 0
    kills_in_checkpoint_write: int = 0
    kills_in_flush: int = 0
    kills_in_resume: int = 0
    kills_injected: dict[str, int] = field(default_factory=dict)
    corrupt_stores: int = 0
    checkpoints_listed: int = 0
    checkpoints_verified: int = 0
    unrestorable_checkpoints: int = 0
    acknowledged_points: int = 0
    lost_acknowledged_points: int = 0
    metric_count_decreases: int = 0
    torn_points: int = 0
    resumes: int = 0
    failed_resumes: int = 0
    commands_sent: int = 0
    final_status: str = ""
    stored_points: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        out = list(self.problems)
        for name in (
            "corrupt_stores",
            "unrestorable_checkpoints",
            "lost_acknowledged_points",
            "metric_count_decreases",
            "torn_points",
            "failed_resumes",
        ):
            if getattr(self, name):
                out.append(f"{name} = {getattr(self, name)}")
        if self.final_status != "finished":
            out.append(f"the last process did not finish the run (status {self.final_status!r})")
        return out

    def summary(self) -> str:
        injected = ", ".join(f"{k} {v}" for k, v in sorted(self.kills_injected.items())) or "none"
        return (
            f"kill campaign: {self.kills} SIGKILLs ({self.kills_in_checkpoint_write} inside a "
            f"checkpoint write, {self.kills_in_flush} inside a metric flush, "
            f"{self.kills_in_resume} inside a resume; at injected points: {injected}); "
            f"{self.corrupt_stores} corrupt stores; "
            f"{self.checkpoints_listed - self.unrestorable_checkpoints} of "
            f"{self.checkpoints_listed} listed checkpoints restorable; "
            f"{self.lost_acknowledged_points} of {self.acknowledged_points} acknowledged points "
            f"lost; {self.failed_resumes} of {self.resumes} resumes failed; "
            f"{self.metric_count_decreases} metric count decreases; "
            f"{self.commands_sent} commands sent; run {self.final_status}"
        )


class _Commander(threading.Thread):
    """Sends ``set lr`` and ``checkpoint`` commands to the run while a trainer lives."""

    def __init__(self, store: Store, run_id: str, rng: random.Random, child: Child) -> None:
        super().__init__(daemon=True)
        self.store, self.run_id, self.rng, self.child = store, run_id, rng, child
        self.halt = threading.Event()
        self.sent = 0
        self.errors: list[str] = []

    def run(self) -> None:
        ctl = retune.Controller(self.store, self.run_id, source="python", user="campaign")
        while not self.halt.wait(self.rng.uniform(0.1, 0.4)):
            if not self.child.ready.is_set():
                continue  # commands sent to a dead run are rejected at resume (issue 8 #15)
            try:
                if self.rng.random() < 0.8:
                    ctl.set(lr=round(self.rng.uniform(0.005, 0.1), 6))
                else:
                    ctl.checkpoint()
                self.sent += 1
            except retune.RunNotLive:
                pass
            except retune.RetuneError as e:  # a valid command must be accepted
                self.errors.append(f"{type(e).__name__}: {e}")


def _integrity(db: Path) -> str:
    """``ok``, or what SQLite says is wrong (an unreadable file counts as corrupt too)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return "; ".join(str(row[0]) for row in con.execute("PRAGMA integrity_check"))
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return f"unreadable: {e}"


def _verify_checkpoint(record: CheckpointRecord, default_objects: str) -> str | None:
    """None when ``record`` restores; else why not."""
    try:
        objects = ObjectStore(record.manifest.get("objects") or default_objects)
        state = decode_state(record.manifest, objects, label=record.label)
        _model.load_into_fresh(state)
        if int(state["loop"]["step"]) != record.step:
            return f"{record.label}: loop step {state['loop']['step']} != {record.step}"
    except Exception as e:
        return f"{record.label}: {type(e).__name__}: {e}"
    return None


class _Verifier:
    """The checks after each kill, with what earlier rounds established."""

    def __init__(self, db: Path, report: KillReport) -> None:
        self.db = db
        self.url = f"sqlite:///{db}"
        self.report = report
        self.verified: set[int] = set()
        self.bad: set[int] = set()
        self.acked: dict[int, set[int]] = {}  # node -> acknowledged steps
        self.last_count = 0

    def acknowledge(self, segments: list[list[int]]) -> None:
        for node, first, last in segments:
            self.acked.setdefault(node, set()).update(range(first, last + 1))

    def check(self, *, recheck_all: bool) -> None:
        report = self.report
        verdict = _integrity(self.db)
        if verdict != "ok":
            report.corrupt_stores += 1
            report.problems.append(f"integrity_check after kill {report.kills}: {verdict[:200]}")
            return
        with open_store(self.url) as store:
            run = store.get_run(NAME)
            default_objects = objects_url_for(store.url)
            for record in store.list_checkpoints(run.id):
                if record.id in self.verified and not recheck_all:
                    continue
                why = _verify_checkpoint(record, default_objects)
                if why is None:
                    self.verified.add(record.id)
                elif record.id not in self.bad:
                    self.bad.add(record.id)
                    report.problems.append(f"after kill {report.kills}: {why}")
            series = store.read_metric(run.id, "s")
        report.checkpoints_verified = len(self.verified)
        report.unrestorable_checkpoints = len(self.bad)
        count = len(series.steps)
        if count < self.last_count:
            report.metric_count_decreases += 1
            report.problems.append(f"stored points went from {self.last_count} to {count}")
        self.last_count = max(count, self.last_count)
        report.stored_points = count
        report.torn_points = int((series.values != series.steps.astype(float)).sum())
        stored: dict[int, set[int]] = {}
        for node, step in zip(series.nodes.tolist(), series.steps.tolist(), strict=True):
            stored.setdefault(int(node), set()).add(int(step))
        report.acknowledged_points = sum(len(s) for s in self.acked.values())
        report.lost_acknowledged_points = sum(
            len(steps - stored.get(node, set())) for node, steps in self.acked.items()
        )

    def listed_checkpoints(self) -> tuple[int, CheckpointRecord | None]:
        with open_store(self.url) as store:
            try:
                run = store.get_run(NAME)
            except retune.RunNotFound:
                return 0, None
            records = store.list_checkpoints(run.id)
        return len(records), (records[-1] if records else None)


def _trainer(
    server: ForkServer, workdir: Path, url: str, index: int, steps: int = 0, inject: str = ""
) -> Child:
    args = [url, "--name", NAME, "--every", str(EVERY), "--flush-every", str(FLUSH_EVERY)]
    if steps:
        args += ["--steps", str(steps)]
    if inject:
        args += ["--inject", inject]
    return server.spawn("tests.campaign.kill_trainer", args, workdir / f"trainer-{index:03d}.log")


def _age_heartbeat(url: str) -> None:
    """The killed process is gone (reaped): age its heartbeat past the staleness limit, as
    waiting that long would, so the next process may attach at once instead of 30 s later."""
    with open_store(url) as store:
        run = store.get_run(NAME)
        if run.status in ("running", "paused"):
            store.update_run(run.id, heartbeat_at=time.time() - STALE_AFTER - 1)


def _aim(child: Child, mode: str, rng: random.Random, has_checkpoint: bool) -> str | None:
    """Wait for the moment ``mode`` aims at; None when the trainer ends first."""
    deadline = time.monotonic() + ROUND_TIMEOUT
    if not has_checkpoint:  # resume="latest" needs one: let the first one be written
        if not child.wait_for("SAVED", deadline):
            return None
        mode = rng.choice(("save", "flush", "anywhere"))
    if mode == "inject":  # the trainer kills itself; if it never gets there, kill it anyway
        if child.wait_for("DIE", min(deadline, time.monotonic() + 15)):
            return mode
        if child.exited():
            return None
        return "anywhere"
    if mode == "startup":
        if not child.wait_for("INIT", deadline):
            return None
        time.sleep(rng.uniform(0.0, 0.25))
    elif mode == "save":
        if not child.wait_for("SAVE ", deadline, count=rng.randint(1, 3)):
            return None
        time.sleep(rng.uniform(0.0, 0.02))
    elif mode == "flush":
        if not child.wait_for("FLUSH", deadline, count=rng.randint(1, 6)):
            return None
        time.sleep(rng.uniform(0.0, 0.002))
    else:
        seen = any(line.startswith("READY") for line in child.seen)
        if not seen and not child.wait_for("READY", deadline):
            return None
        time.sleep(rng.uniform(0.0, 1.0))
    return mode


def _where(lines: list[str]) -> str:
    """Where the trainer was when it died, from the last markers it printed."""
    for line in lines:
        if line.startswith("DIE "):
            return "injected:" + line[4:]
    if not any(line.startswith("READY") for line in lines):
        return "resume" if "INIT" in lines else "import"
    for line in reversed(lines):
        if line.startswith(("SAVED", "ACK")):
            return "step"
        if line.startswith("SAVE "):
            return "checkpoint"
        if line == "FLUSH":
            return "flush"
    return "step"


def _check_resume(child: Child, expected: CheckpointRecord | None, report: KillReport) -> None:
    """The process resumed from ``expected`` (the latest checkpoint before it started)."""
    ready = [line for line in child.seen if line.startswith(("READY", "REFUSED"))]
    if not ready:
        return  # killed before it attached: nothing to judge
    if ready[0].startswith("REFUSED"):
        report.failed_resumes += 1
        report.problems.append(f"resume refused: {ready[0][8:200]}")
        return
    if expected is None:
        return  # the first process starts the run
    report.resumes += 1
    step = int(ready[0].split()[3])
    if step != expected.step:
        report.failed_resumes += 1
        report.problems.append(f"resumed at step {step}, latest checkpoint is at {expected.step}")


def run_campaign(
    workdir: Path, *, kills: int, seed: int = 0, log: Callable[[str], None] | None = None
) -> KillReport:
    """Run the whole campaign in ``workdir`` (which it fills); returns the counts."""
    started = time.monotonic()
    rng = random.Random(seed)
    db = workdir / "retune.db"
    url = f"sqlite:///{db}"
    report = KillReport()
    verifier = _Verifier(db, report)
    server = ForkServer(workdir, workdir / "forkserver.log")
    try:
        _rounds(server, workdir, url, kills, rng, report, verifier, log)
    finally:
        server.close()
    with open_store(url) as store:
        report.final_status = store.get_run(NAME).status
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _rounds(
    server: ForkServer,
    workdir: Path,
    url: str,
    kills: int,
    rng: random.Random,
    report: KillReport,
    verifier: _Verifier,
    log: Callable[[str], None] | None,
) -> None:
    for index in range(kills + 1):
        last = index == kills
        _, latest = verifier.listed_checkpoints()
        mode = rng.choice(MODES)
        inject = ""
        if mode == "inject" and latest is not None:  # the first process must leave a checkpoint
            point = rng.choice(sorted(INJECTION_POINTS))
            nth = 1 if point == "resume-apply" else rng.randint(1, 4)
            inject = f"{point}:{nth}"
        elif mode == "inject":
            mode = "anywhere"
        steps = (latest.step if latest else 0) + 3 * EVERY if last else 0
        child = _trainer(server, workdir, url, index, steps=steps, inject="" if last else inject)
        commander: _Commander | None = None
        if index > 0:
            with open_store(url) as probe:
                run_id = probe.get_run(NAME).id
            commander = _Commander(open_store(url), run_id, random.Random(rng.random()), child)
            commander.start()
        try:
            if last:
                deadline = time.monotonic() + ROUND_TIMEOUT
                child.wait_for("DONE", deadline)
                code = child.finish(ROUND_TIMEOUT)
                if code != 0:
                    report.problems.append(f"the last trainer exited {code}: "
                                           f"{child.stderr()[-600:]}")  # fmt: skip
            else:
                aimed = _aim(child, mode, rng, latest is not None)
                if aimed is None:
                    code = child.finish(10)
                    report.problems.append(
                        f"trainer {index} ended before its kill (exit {code}): "
                        f"{child.stderr()[-600:]}"
                    )
                else:
                    child.kill()
                    _age_heartbeat(url)
                    report.kills += 1
                    where = _where(child.seen)
                    report.kills_in_checkpoint_write += where == "checkpoint"
                    report.kills_in_flush += where == "flush"
                    report.kills_in_resume += where == "resume"
                    if where.startswith("injected:"):
                        point = where.split(":", 1)[1]
                        report.kills_injected[point] = report.kills_injected.get(point, 0) + 1
        finally:
            if not child.exited():
                child.kill()
            if commander is not None:
                commander.halt.set()
                commander.join(timeout=30)
                commander.store.close()
                report.commands_sent += commander.sent
                report.problems.extend(commander.errors[:5])
        _check_resume(child, latest, report)
        for line in child.seen:
            if line.startswith("ACK "):
                verifier.acknowledge(json.loads(line[4:]))
        verifier.check(recheck_all=last or index % 10 == 9)
        report.checkpoints_listed = len(verifier.verified | verifier.bad)
        if log is not None and (last or index % 10 == 9 or report.problems):
            log(f"[{index + 1}/{kills + 1}] {report.summary()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="keep the store here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="retune-kill-") as tmp:
        workdir = args.dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        report = run_campaign(workdir, kills=args.kills, seed=args.seed, log=print)
    print(json.dumps(asdict(report)) if args.json else report.summary())
    for failure in report.failures():
        print("FAIL:", failure)
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
