"""The tunables of a live training process and the one place they are changed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retune.control._knobs import Knob
from retune.control._schedulers import SchedulerControl, assign_group_value
from retune.control._tunables import TunableSpec, discover_optimizer, resolve_groups, validate
from retune.control._values import TunableValues
from retune.errors import CommandRejected, InvalidArgument

__all__ = ["LiveTunables"]


def _plain(value: Any) -> Any:
    """A group value as JSON-ready data: tensors -> float, tuples -> lists."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


@dataclass
class _Change:
    spec: TunableSpec
    group: int | None  # None for a user knob
    old: Any
    new: Any


class LiveTunables:
    """Optimizer hyperparameters (per param group) and user knobs of one training process.

    Only the training thread calls :meth:`set` / :meth:`scale`, at a step boundary. Both
    validate against the live optimizer first, then apply every change or none: if a value is
    invalid or a user setter raises, what was already applied is rolled back and
    ``CommandRejected`` is raised with the reason.
    """

    def __init__(self, optimizer: Any = None, scheduler: Any = None) -> None:
        self.optimizer = optimizer
        self._optimizer_specs = discover_optimizer(optimizer) if optimizer is not None else []
        self.knobs: dict[str, Knob] = {}
        self.unclaimed_knobs: dict[str, Any] = {}
        """Knob values a loaded checkpoint holds for knobs not declared yet (a resume happens
        in ``retune.init``, before the script declares its knobs): :meth:`add` applies them."""
        self._knob_values: dict[str, Any] = {}
        self.scheduler: SchedulerControl | None = None
        if scheduler is not None and optimizer is not None:
            self.scheduler = SchedulerControl(scheduler, optimizer)

    @property
    def hp(self) -> TunableValues:
        """Every tunable's current value, read live (``run.hp``)."""
        return TunableValues(self)

    def read(self, spec: TunableSpec, group: int | None) -> Any:
        """``spec``'s current value: a user knob's (``group`` None), or one param group's as
        plain data (tensors -> float, tuples -> lists). Safe off the training thread."""
        if group is None:
            return self.knobs[spec.name].value
        return _plain(self.optimizer.param_groups[group].get(spec.name))

    @property
    def specs(self) -> list[TunableSpec]:
        return [*self._optimizer_specs, *(k.spec for k in self.knobs.values())]

    def add(self, knob: Knob) -> Knob:
        """Declare a user knob; its name must not clash with another tunable."""
        if any(spec.name == knob.name for spec in self.specs):
            raise InvalidArgument(f"a tunable named {knob.name!r} is already declared")
        if knob.name in self.unclaimed_knobs:  # the value the checkpoint resumed from held
            saved = self.unclaimed_knobs.pop(knob.name)
            try:
                value = validate([knob.spec], knob.name, saved)
            except InvalidArgument as e:
                raise InvalidArgument(
                    f"knob {knob.name!r}: the checkpoint holds {saved!r:.60}, which this "
                    f"declaration refuses ({e}); declare it as it was, or start a new run"
                ) from e
            if _plain(knob.value) != _plain(value):
                knob.assign(value)
        self.knobs[knob.name] = knob
        return knob

    # -- reading ----------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        """Every tunable's current value: a list per param group for optimizer values."""
        out: dict[str, Any] = {}
        for spec in self.specs:
            if spec.groups is None:
                out[spec.name] = _plain(self.read(spec, None))
            else:
                out[spec.name] = [self.read(spec, i) for i in range(len(spec.groups))]
        return out

    def records(self) -> list[dict[str, Any]]:
        """Specs with their current values, as stored with the run (training thread)."""
        current = self.values()
        self._knob_values = {name: current[name] for name in self.knobs}
        return [{**spec.to_dict(), "value": current[spec.name]} for spec in self.specs]

    def observe(self, name: str, value: Any) -> None:
        """The value knob ``name`` has now, as the training thread just read it: what
        :meth:`live_records` shows for it until the next call (for a knob that moves by
        itself, such as a learning-rate schedule; other knobs change only by commands)."""
        if name in self.knobs:
            self._knob_values[name] = _plain(value)

    def live_records(self) -> list[dict[str, Any]]:
        """Like :meth:`records`, safe to call off the training thread: optimizer values are
        read live (a scheduler moves lr every step); user knobs, which change only through
        commands on the training thread, keep the value of the last :meth:`records` call
        (no user getter runs on another thread)."""
        out = []
        for spec in self.specs:
            if spec.groups is None:
                value = self._knob_values.get(spec.name)
            else:
                value = [self.read(spec, i) for i in range(len(spec.groups))]
            out.append({**spec.to_dict(), "value": value})
        return out

    # -- changing ---------------------------------------------------------------------------
    def set(
        self,
        values: Mapping[str, Any],
        group: int | str | None = None,
        mode: str = "rescale",
        *,
        apply: bool = True,
    ) -> dict[str, Any]:
        """Set absolute values; returns the diff ``{label: [old, new]}``. Raises
        :class:`CommandRejected` with the reason, changing nothing. With ``apply=False``
        nothing changes either way: every check but the setters' own, and the diff it would
        make (a command checks this before it saves the checkpoint that precedes a change)."""
        changes: list[_Change] = []
        specs = self.specs
        for name, raw in values.items():
            new = self._validated(specs, name, raw, group)
            spec = next(s for s in specs if s.name == name)
            targets: list[int | None] = [*resolve_groups(spec, group)] or [None]
            for index in targets:
                old = self.read(spec, index)
                if old is None:
                    raise CommandRejected(f"param group {index} has no {name}")
                changes.append(_Change(spec, index, old, new))
        return self._apply(changes, mode, apply)

    def scale(
        self,
        factors: Mapping[str, float],
        group: int | str | None = None,
        mode: str = "rescale",
        *,
        apply: bool = True,
    ) -> dict[str, Any]:
        """Multiply values per group (so per-group ratios are kept); returns the diff. As
        :meth:`set`, also for ``apply``."""
        changes: list[_Change] = []
        specs = self.specs
        indexes: list[int | None]
        for name, factor in factors.items():
            spec = next((s for s in specs if s.name == name), None)
            if spec is None:
                self._validated(specs, name, factor, group)  # raises the unknown-name reason
                continue
            if spec.kind != "float":
                raise CommandRejected(f"{name} is a {spec.kind}; only floats can be scaled")
            try:
                indexes = [*resolve_groups(spec, group)] or [None]
            except InvalidArgument as e:
                raise CommandRejected(str(e)) from e
            for index in indexes:
                old = self.read(spec, index)
                new = [v * factor for v in old] if isinstance(old, list) else old * factor
                changes.append(_Change(spec, index, old, self._validated(specs, name, new, None)))
        return self._apply(changes, mode, apply)

    @staticmethod
    def _validated(specs: list[TunableSpec], name: str, value: Any, group: Any) -> Any:
        try:
            return validate(specs, name, value, group)
        except InvalidArgument as e:
            raise CommandRejected(str(e)) from e

    def _apply(self, changes: list[_Change], mode: str, apply: bool = True) -> dict[str, Any]:
        if mode not in ("rescale", "constant"):
            raise CommandRejected(f"mode must be rescale or constant, got {mode!r}")
        by_key = self._scheduler_plan(changes)
        if self.scheduler is not None:
            for key, (_, factors) in by_key.items():
                self.scheduler.check(key, mode, factors)
        if not apply:
            return self._diff(changes)
        done: list[_Change] = []
        try:
            for change in changes:
                self._write(change, change.new, mode)
                done.append(change)
        except Exception as e:
            failed = change.spec.name
            for applied in reversed(done):
                self._write(applied, applied.old, mode)
            raise CommandRejected(f"setting {failed} failed: {e}") from e
        if self.scheduler is not None:
            for key, (new_values, factors) in by_key.items():
                self.scheduler.after_set(key, mode, new_values, factors)
        return self._diff(changes)

    def _scheduler_plan(
        self, changes: list[_Change]
    ) -> dict[str, tuple[dict[int, Any], dict[int, float]]]:
        plan: dict[str, tuple[dict[int, Any], dict[int, float]]] = {}
        for change in changes:
            if change.group is None:
                continue
            new_values, factors = plan.setdefault(change.spec.name, ({}, {}))
            new_values[change.group] = change.new
            if change.spec.name == "lr":
                factors[change.group] = change.new / change.old if change.old else float("inf")
        return plan

    def _write(self, change: _Change, value: Any, mode: str | None = None) -> None:
        if change.group is None:
            self.knobs[change.spec.name].assign(value, mode)
        else:
            group = self.optimizer.param_groups[change.group]
            stored = tuple(value) if isinstance(value, (list, tuple)) else value
            assign_group_value(group, change.spec.name, stored, self.optimizer.param_groups)

    @staticmethod
    def _diff(changes: list[_Change]) -> dict[str, Any]:
        diff: dict[str, Any] = {}
        by_name: dict[str, list[_Change]] = {}
        for change in changes:
            by_name.setdefault(change.spec.name, []).append(change)
        for name, group_changes in by_name.items():
            spec = group_changes[0].spec
            all_groups = spec.groups is None or len(group_changes) == len(spec.groups)
            olds = {repr(_plain(c.old)) for c in group_changes}
            news = {repr(_plain(c.new)) for c in group_changes}
            if all_groups and len(olds) == 1 and len(news) == 1:
                first = group_changes[0]
                diff[name] = [_plain(first.old), _plain(first.new)]
                continue
            for c in group_changes:
                label = spec.groups[c.group] if spec.groups and c.group is not None else None
                diff[f"{name}[{label or c.group}]"] = [_plain(c.old), _plain(c.new)]
        return diff

    def state_dict(self) -> dict[str, Any]:
        """Knob values and scheduler pins (optimizer values live in the optimizer's state)."""
        return {
            "knobs": {name: _plain(knob.value) for name, knob in self.knobs.items()},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
        }

    def close(self) -> None:
        """Remove what Retune installed on the scheduler (pins, optimizer hook, step wrapper):
        after the run ends, the optimizer and scheduler behave as if Retune was never there.
        Idempotent."""
        if self.scheduler is not None:
            self.scheduler.close()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.unclaimed_knobs = {}
        for name, value in state.get("knobs", {}).items():
            knob = self.knobs.get(name)
            if knob is None:
                self.unclaimed_knobs[name] = value  # declared later: see add()
            elif _plain(knob.value) != value:  # setters run only on change
                knob.assign(value)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state.get("scheduler", {}))
