"""Explore: try candidate values from one checkpoint in the running process, keep the best.

An exploration is one ``explore`` command. The training thread runs it at step boundaries,
with the user's loop unchanged (see ``docs/explore.md`` for the rules):

1. At the boundary where the command is applied it saves the *origin* checkpoint (where the
   run is). The *start* checkpoint is ``from`` when given, else the origin.
2. For each candidate (the product of the values given, in order): restore the start
   checkpoint (model, optimizer, scheduler, RNG, loop position: every candidate starts from
   the bit-identical state and data order), apply the candidate's values as ``set`` does
   (scheduler-aware), open a node (kind ``explore``, child of the start checkpoint's node,
   its diff the candidate's values), and let the loop train ``steps`` steps. The metric's
   points on that node count towards the score (its last value, or the mean of its last K).
   A candidate whose metric, or any metric named ``loss`` or ``*loss``, is NaN or infinite
   stops at that step and scores worst (``diverged``).
3. Then ``best``: continue from the winner's end state (no restore when the winner is the
   last candidate; else its end checkpoint is restored on a new node, child of the
   winner's). ``stay``, no winner, or a cancel (``stop``): restore the origin on a new node,
   child of the origin's node, with the values it had.

The command stays ``applying`` while the exploration runs; each candidate's start and end is
an ``explore`` event holding the whole state so far; the command's result holds the final
state (every candidate's node, values and score, and the winner).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from retune.checkpoint import resolve_checkpoint
from retune.control._commands import check_candidates, parse_score
from retune.errors import CommandRejected, InvalidArgument, RetuneError
from retune.session._protocols import TrainingSession
from retune.store import CheckpointRecord, CommandRecord

__all__ = ["Exploration", "is_loss"]

log = logging.getLogger("retune")


def is_loss(key: str) -> bool:
    """A metric whose NaN/inf means divergence: ``loss`` or any name ending in ``loss``."""
    return key.endswith("loss")


def _where(record: CheckpointRecord) -> dict[str, Any]:
    return {"checkpoint": record.label, "node": record.node, "step": record.step}


@dataclass
class _Candidate:
    index: int
    values: dict[str, Any]
    node: int | None = None
    status: str = "waiting"  # waiting | running | done | diverged | failed | cancelled
    score: float | None = None
    start_step: int | None = None
    steps: int = 0
    end_step: int | None = None
    checkpoint: CheckpointRecord | None = None
    reason: str | None = None
    points: list[float] = field(default_factory=list)
    diverged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "values": self.values,
            "node": self.node,
            "status": self.status,
            "score": self.score,
            "start_step": self.start_step,
            "steps": self.steps,
            "end_step": self.end_step,
            "checkpoint": self.checkpoint.label if self.checkpoint else None,
            "points": len(self.points),
            "reason": self.reason,
        }


class Exploration:
    """One running exploration of one training session (training thread only)."""

    def __init__(self, session: TrainingSession, command: CommandRecord) -> None:
        payload = command.payload
        self.session = session
        self.command = command
        self.command_id = command.id
        self.values: dict[str, list[Any]] = dict(payload["values"])
        self.steps = int(payload["steps"])
        self.metric = str(payload["metric"])
        self.goal = str(payload.get("goal", "min"))
        self.score_rule = str(payload.get("score", "last"))
        self.keep = parse_score(self.score_rule)
        self.then = str(payload.get("then", "best"))
        self.group = payload.get("group")
        self.mode = str(payload.get("mode", "rescale"))
        self.cap = int(payload.get("max_candidates") or 1)
        self.start_target = payload.get("from")
        names = list(self.values)
        self.candidates = [
            _Candidate(i, dict(zip(names, combo, strict=True)))
            for i, combo in enumerate(itertools.product(*self.values.values()))
        ]
        self.current: _Candidate | None = None
        self.status = "running"
        self.origin: CheckpointRecord | None = None
        self.start: CheckpointRecord | None = None
        self.winner: int | None = None
        self.continued: dict[str, Any] | None = None

    # -- starting -----------------------------------------------------------------------
    def begin(self) -> None:
        """Check the spec against the live run, save the origin and start the first
        candidate. Raises ``CommandRejected`` (nothing changed) when it cannot start."""
        s = self.session
        try:
            check_candidates(s.tunables.specs, self.values, self.group, self.cap)
        except InvalidArgument as e:
            raise CommandRejected(str(e)) from e
        start: CheckpointRecord | None = None
        if self.start_target is not None:
            s.checkpointer.wait()  # a save in flight (a change's) is listed first: "latest"
            try:
                start = resolve_checkpoint(s.store, s.id, str(self.start_target))
                s.checkpointer.load(start)  # every blob verified before anything changes
            except RetuneError as e:
                raise CommandRejected(str(e)) from e
        self.origin = s.checkpointer.save("explore")
        self.start = start or self.origin
        s.exploration = self
        self._event("started")
        self._next(0)

    # -- every step boundary ------------------------------------------------------------
    def observe(self, values: dict[str, float]) -> None:
        """Metrics recorded at the current step (``run.step`` / ``run.log``) by the running
        candidate: the metric's points after its start count; NaN/inf marks divergence."""
        candidate = self.current
        if candidate is None or candidate.start_step is None:
            return
        step = self.session.global_step
        for key, value in values.items():
            watched = key == self.metric
            if watched and step > candidate.start_step:
                candidate.points.append(value)
            if (watched or is_loss(key)) and not math.isfinite(value) and not candidate.diverged:
                candidate.diverged = True
                candidate.reason = f"{key} was {value} at step {step}"

    def after_step(self, values: dict[str, float]) -> None:
        """Count the step just completed for the running candidate; end it after its steps,
        or at once when it diverged, and go on to the next one (or conclude)."""
        candidate = self.current
        if candidate is None or candidate.start_step is None:
            return
        self.observe(values)
        candidate.steps = self.session.global_step - candidate.start_step
        if candidate.diverged or candidate.steps >= self.steps:
            self._end_candidate(candidate)
            self._next(candidate.index + 1)

    # -- candidates ---------------------------------------------------------------------
    def _next(self, index: int) -> None:
        while index < len(self.candidates):
            if self._start_candidate(self.candidates[index]):
                return
            index += 1
        self._conclude("done")

    def _start_candidate(self, candidate: _Candidate) -> bool:
        """Restore the start checkpoint and apply the candidate's values on a new node;
        False (candidate ``failed``, with the reason) when that is impossible."""
        s = self.session
        assert self.start is not None
        try:
            state = s.checkpointer.load(self.start)
        except RetuneError as e:
            candidate.status, candidate.reason = "failed", f"restoring {self.start.label}: {e}"
            self._event("candidate")
            return False
        s.flush()
        s.store.end_node(s.id, s.node, s.global_step)
        s.load_state(state)
        try:
            diff = s.tunables.set(candidate.values, self.group, self.mode)
        except CommandRejected as e:
            candidate.status, candidate.reason = "failed", str(e)
            self._event("candidate")
            return False
        s.start_node("explore", diff, self.command.user, parent=self.start.node)
        candidate.node, candidate.start_step = s.node, s.global_step
        candidate.status = "running"
        self.current = candidate
        self._note(candidate)
        self._event("candidate")
        return True

    def _end_candidate(self, candidate: _Candidate) -> None:
        s = self.session
        candidate.end_step = s.global_step
        if candidate.diverged:
            candidate.status, candidate.score = "diverged", None
        else:
            candidate.status = "done"
            points = candidate.points if self.keep is None else candidate.points[-self.keep :]
            if not points:
                candidate.reason = f"no points of {self.metric!r} were recorded"
            elif self.keep is None:
                candidate.score = points[-1]
            else:
                candidate.score = math.fsum(points) / len(points)
            try:  # its end state, so the run can continue from it (or the user, later)
                candidate.checkpoint = s.checkpointer.save("explore")
            except RetuneError as e:
                log.warning("retune: no end checkpoint of candidate %d: %s", candidate.index, e)
        self._note(candidate)
        self._event("candidate")

    def _best(self) -> _Candidate | None:
        scored = [c for c in self.candidates if c.status == "done" and c.score is not None]
        if not scored:
            return None
        sign = 1.0 if self.goal == "min" else -1.0
        return min(scored, key=lambda c: (sign * (c.score or 0.0), c.index))

    # -- ending -------------------------------------------------------------------------
    def _conclude(self, outcome: str, reason: str | None = None) -> None:
        """Continue from the winner (``best``) or go back to the origin; resolve the command."""
        s = self.session
        assert self.origin is not None
        best = self._best()
        self.winner = best.index if best is not None else None
        current = self.current
        try:
            if outcome == "done" and self.then == "best" and best is not None:
                if best is current and best.checkpoint is not None:
                    self.continued = {"node": s.node, "from": None}  # already at its end state
                elif best.checkpoint is not None:
                    self._go_to(best.checkpoint)
                else:
                    self._go_to(self.origin)
            else:
                self._go_to(self.origin)
        except RetuneError as e:  # the run goes on where it is; say so
            reason = f"could not restore: {e}"
            self.continued = {"node": s.node, "from": None, "error": str(e)}
        self.current = None
        self.status = outcome
        s.exploration = None
        if best is not None:
            self._note(best)  # marked the winner
        result = self.describe()
        s.store.resolve_command(
            self.command_id,
            status="applied",
            reason=reason,
            applied_step=self.origin.step,
            node=s.node,
            result=result,
        )
        self._event("finished")

    def _go_to(self, record: CheckpointRecord) -> None:
        s = self.session
        state = s.checkpointer.load(record)
        s.flush()
        s.store.end_node(s.id, s.node, s.global_step)
        s.load_state(state)
        s.start_node("restore", {}, self.command.user, parent=record.node)
        self.continued = {"node": s.node, "from": record.label}
        role = "winner" if record is not self.origin else "origin"
        info = {"exploration": self.command_id, "role": f"continue from {role}"}
        s.store.update_node_info(s.id, s.node, {"explore": info})

    def cancel(self, command: CommandRecord) -> dict[str, Any]:
        """A ``stop`` during the exploration: end it and go back to the origin (the run goes
        on from where it was when the exploration began, on a new node)."""
        candidate = self.current
        if candidate is not None:
            candidate.status, candidate.end_step = "cancelled", self.session.global_step
            candidate.reason = f"stopped by command {command.id}"
            self._note(candidate)
        self._conclude("cancelled", reason=f"cancelled by command {command.id} (stop)")
        return {"exploration": self.command_id, "ended": "exploration", **(self.continued or {})}

    def interrupt(self, reason: str) -> None:
        """The run is ending mid-exploration: record the outcome so far, change nothing."""
        s = self.session
        candidate = self.current
        if candidate is not None:
            candidate.status, candidate.end_step = "cancelled", s.global_step
            candidate.reason = reason
        self.current = None
        self.status = "interrupted"
        s.exploration = None
        s.store.resolve_command(
            self.command_id, status="rejected", reason=reason, node=s.node, result=self.describe()
        )
        s.store.add_event(
            s.id,
            "command_rejected",
            {"command": self.command_id, "kind": "explore", "reason": reason},
            node=s.node,
            step=s.global_step,
        )

    # -- recording ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The exploration's state as JSON-ready data (see ``describe_exploration``)."""
        return {
            "command": self.command_id,
            "status": self.status,
            "metric": self.metric,
            "goal": self.goal,
            "score": self.score_rule,
            "steps": self.steps,
            "then": self.then,
            "origin": _where(self.origin) if self.origin else None,
            "start": _where(self.start) if self.start else None,
            "candidates": [c.as_dict() for c in self.candidates],
            "current": self.current.index if self.current else None,
            "winner": self.winner,
            "continued": self.continued,
        }

    def _event(self, phase: str) -> None:
        s = self.session
        s.store.add_event(
            s.id,
            "explore",
            {"command": self.command_id, "phase": phase, "state": self.describe()},
            node=s.node,
            step=s.global_step,
        )

    def _note(self, candidate: _Candidate) -> None:
        """The candidate's score and status on its node's ``info["explore"]``."""
        if candidate.node is None:
            return
        info = {"exploration": self.command_id, "role": "candidate", "index": candidate.index,
                "metric": self.metric, "goal": self.goal, "score": candidate.score,
                "status": candidate.status, "winner": self.winner == candidate.index}  # fmt: skip
        self.session.store.update_node_info(self.session.id, candidate.node, {"explore": info})
