"""Submitting commands: the first of the two validations, shared by Python, CLI and UI.

A command is checked against what the run declared (its tunables as recorded in the store)
before it is queued. A command that fails this check is still recorded, already ``rejected``
with the reason in the same transaction (no poller ever sees it pending), and the caller gets
the same reason as an exception; nothing reaches the trainer.

Kinds: ``set``, ``scale``, ``pause``, ``continue`` (un-pause), ``stop``, ``checkpoint``,
``restore``, ``guard`` (on, off, veto, set the guard's knobs), ``explore`` (try candidate
values from one checkpoint: ``docs/explore.md``). ``resume`` is accepted as the old name of
``continue`` and stored as ``continue``: "resume" now only means continuing a run in a new
process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from retune.control._tunables import TunableSpec, validate
from retune.errors import CommandRejected, InvalidArgument, RetuneError, RunNotLive
from retune.store import LIVE_STATUSES, CommandRecord, RunRecord, Store, current_user

__all__ = [
    "EXPLORE_CEILING",
    "EXPLORE_DEFAULT_CAP",
    "KIND_ALIASES",
    "GUARD_ACTIONS",
    "GUARD_KNOBS",
    "SCHEDULER_MODES",
    "SOURCES",
    "canonical_kind",
    "check_candidates",
    "current_user",
    "explore_payload",
    "parse_score",
    "restore_payload",
    "submit",
]

SOURCES = ("python", "cli", "ui", "notebook", "api")
SCHEDULER_MODES = ("rescale", "constant")
GUARD_ACTIONS = ("on", "off", "veto", "set")
"""What a ``guard`` command does: switch the guard on or off, undo its last recovery (and
switch it off), or set its knobs without opening a node."""
GUARD_KNOBS = {
    "guard": "enabled",
    "guard_spike": "spike",
    "guard_lr_factor": "lr_factor",
    "guard_max_attempts": "max_attempts",
    "guard_skip": "skip_batches",
}
"""The guard's tunables (changed live with ``set`` or a ``guard set`` command) and the
``retune.Guard`` field each one drives."""
KIND_ALIASES = {"resume": "continue"}
"""Old command names still accepted at submission, and the name stored for each."""


EXPLORE_DEFAULT_CAP = 16
"""How many candidates an exploration may have unless it raises its own ``max_candidates``."""
EXPLORE_CEILING = 256
"""The most candidates any exploration may have (``max_candidates`` cannot go beyond)."""
_MAX_EXPLORE_STEPS = 10**9
_MAX_METRIC = 255  # the store's metric key column


def canonical_kind(kind: str) -> str:
    """The stored name of a command kind (``resume`` -> ``continue``); others unchanged."""
    return KIND_ALIASES.get(kind, kind)


def _specs(run: RunRecord) -> list[TunableSpec]:
    """What the run declared tunable. ``CommandRejected`` when the store holds something
    else (edited by hand, or damaged): no command can be validated against it."""
    try:
        if not isinstance(run.tunables, list):
            raise ValueError(f"a list was expected, got {type(run.tunables).__name__}")
        return [TunableSpec.from_dict(entry) for entry in run.tunables]
    except ValueError as e:
        raise CommandRejected(
            f"run {run.name} ({run.id}) has a damaged list of tunables in the store, so no "
            f"command can be checked against it: {e}"
        ) from e


def _group(payload: Mapping[str, Any]) -> int | str | None:
    group = payload.get("group")
    if group is None or (isinstance(group, (int, str)) and not isinstance(group, bool)):
        return group
    raise InvalidArgument(f"group must be an index or a name, got {group!r}")


def _check_set(store: Store, run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    values = payload.get("values")
    if not isinstance(values, Mapping) or not values:
        raise InvalidArgument("set needs at least one name=value")
    group = _group(payload)
    mode = _mode(payload)
    specs = _specs(run)
    normalized = {name: validate(specs, name, value, group) for name, value in values.items()}
    return {"values": normalized, "group": group, "mode": mode}


def _check_scale(store: Store, run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    factors = payload.get("factors")
    if not isinstance(factors, Mapping) or not factors:
        raise InvalidArgument("scale needs at least one name=factor")
    group = _group(payload)
    specs = _specs(run)
    known = {spec.name for spec in specs}
    out: dict[str, float] = {}
    for name, factor in factors.items():
        if name not in known:
            valid = ", ".join(sorted(known)) or "none declared"
            raise InvalidArgument(f"unknown tunable {name!r}; valid names: {valid}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            raise InvalidArgument(f"scale factor for {name} must be a number, got {factor!r}")
        try:
            value = float(factor)
        except OverflowError:
            raise InvalidArgument(f"scale factor for {name} is too large") from None
        if not math.isfinite(value) or value <= 0:
            raise InvalidArgument(f"scale factor for {name} must be finite and > 0, got {factor}")
        out[name] = value
    return {"factors": out, "group": group, "mode": _mode(payload)}


def _mode(payload: Mapping[str, Any]) -> str:
    mode = payload.get("mode", "rescale")
    if mode not in SCHEDULER_MODES:
        raise InvalidArgument(f"mode must be one of {', '.join(SCHEDULER_MODES)}, got {mode!r}")
    return str(mode)


def _check_plain(store: Store, _run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    if payload:
        raise InvalidArgument(f"this command takes no arguments, got {dict(payload)}")
    return {}


def _check_checkpoint(store: Store, _run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    tag = payload.get("tag")
    if tag is not None and (not isinstance(tag, str) or not tag or len(tag) > 255):
        raise InvalidArgument("a checkpoint tag must be a non-empty string of at most 255 chars")
    return {"tag": tag}


def _check_checkpoint_target(store: Store, run: RunRecord, target: str) -> None:
    """Refuse a target no checkpoint of the run matches (``InvalidArgument``), except one
    that could name the live run's first checkpoint while it is being written (listed only
    once durable): the training process, which waits for that save, resolves the target
    again at the boundary and rejects the command there, with the reason."""
    from retune.checkpoint import check_target, resolve_checkpoint
    from retune.errors import CheckpointNotFound

    try:
        if run.status in LIVE_STATUSES and not store.list_checkpoints(run.id):
            check_target(store, run.id, target)
        else:
            resolve_checkpoint(store, run.id, target)
    except CheckpointNotFound as e:
        raise InvalidArgument(str(e)) from e


def _check_restore(store: Store, run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    target = payload.get("target")
    if not isinstance(target, str) or not target:
        raise InvalidArgument("restore needs a target: c3, latest, n3 or n3@1200")
    _check_checkpoint_target(store, run, target)
    values = payload.get("set") or {}
    if not isinstance(values, Mapping):
        raise InvalidArgument("restore's set must map names to values")
    group = _group(payload)
    specs = _specs(run)
    normalized = {name: validate(specs, name, value, group) for name, value in values.items()}
    mode = _mode(payload)
    return {"target": target, "set": normalized, "group": group, "mode": mode}


def _check_guard(store: Store, run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    action = payload.get("action")
    if action not in GUARD_ACTIONS:
        raise InvalidArgument(f"guard actions are {', '.join(GUARD_ACTIONS)}, got {action!r:.40}")
    specs = _specs(run)
    if not any(spec.name == "guard" for spec in specs):
        raise InvalidArgument(
            f"run {run.name} ({run.id}) has no guard: start it with retune.init(..., guard=True)"
        )
    if action != "set":
        extra = set(payload) - {"action"}
        if extra:
            raise InvalidArgument(f"guard {action} takes no values, got {sorted(extra)}")
        return {"action": action}
    values = payload.get("values")
    if not isinstance(values, Mapping) or not values:
        raise InvalidArgument("guard set needs at least one name=value, e.g. spike=4")
    normalized: dict[str, Any] = {}
    for name, value in values.items():
        full = name if isinstance(name, str) and name.startswith("guard") else f"guard_{name}"
        if full not in GUARD_KNOBS:
            names = ", ".join(k.removeprefix("guard_") for k in GUARD_KNOBS if k != "guard")
            raise InvalidArgument(f"unknown guard setting {name!r:.40}; settings: {names}")
        normalized[full] = validate(specs, full, value, None)
    return {"action": "set", "values": normalized}


def parse_score(text: Any) -> int | None:
    """An exploration's scoring rule: ``"last"`` -> None (the metric's last point),
    ``"mean:K"`` -> K (the mean of its last K points, K >= 1, ASCII digits).

    Raises :class:`InvalidArgument` otherwise.
    """
    if text == "last":
        return None
    if isinstance(text, str) and text.startswith("mean:"):
        digits = text[5:]
        if digits.isascii() and digits.isdigit() and len(digits) <= 9 and int(digits) >= 1:
            return int(digits)
    raise InvalidArgument(f"score must be 'last' or 'mean:K' with K >= 1, got {text!r:.60}")


def _check_metric_name(metric: Any) -> str:
    if not isinstance(metric, str) or not metric.strip():
        raise InvalidArgument(f"explore needs a metric name (e.g. val_loss), got {metric!r:.60}")
    if len(metric) > _MAX_METRIC or "\x00" in metric or not metric.isprintable():
        raise InvalidArgument(
            f"metric name {metric[:40]!r} must be printable text of at most {_MAX_METRIC} chars"
        )
    return metric


def _check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise InvalidArgument(f"explore's steps must be a whole number, got {steps!r:.60}")
    if not 0 < steps <= _MAX_EXPLORE_STEPS:
        raise InvalidArgument(f"explore's steps must be 1 to {_MAX_EXPLORE_STEPS}, got {steps}")
    return steps


def _check_cap(cap: Any) -> int:
    if cap is None:
        return EXPLORE_DEFAULT_CAP
    if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= EXPLORE_CEILING:
        raise InvalidArgument(
            f"max_candidates must be a whole number from 1 to {EXPLORE_CEILING}, got {cap!r:.60}"
        )
    return cap


def check_candidates(
    specs: list[TunableSpec], values: Any, group: int | str | None, cap: int
) -> dict[str, list[Any]]:
    """Validate an exploration's ``{name: [values...]}`` against ``specs``; normalized.

    Every name must be a declared tunable, every list non-empty without repeats, every value
    valid (type, finite, bounds), and the product of the list lengths at most ``cap``.
    Raises :class:`InvalidArgument` with the reason. Used at submission and again when the
    training process applies the exploration.
    """
    if not isinstance(values, Mapping) or not values:
        raise InvalidArgument("explore needs at least one name=value1,value2,...")
    out: dict[str, list[Any]] = {}
    count = 1
    for name, choices in values.items():
        if not isinstance(choices, (list, tuple)):
            raise InvalidArgument(f"explore's {name} needs a list of values, got {choices!r:.60}")
        if not choices:
            raise InvalidArgument(f"explore's {name} has an empty list of values")
        normalized = [validate(specs, name, value, group) for value in choices]
        seen: set[str] = set()
        for value in normalized:
            if repr(value) in seen:
                raise InvalidArgument(f"explore's {name} lists {value!r} twice")
            seen.add(repr(value))
        out[str(name)] = [list(v) if isinstance(v, tuple) else v for v in normalized]
        count *= len(normalized)
    if count > cap:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in out.items())
        raise InvalidArgument(
            f"explore would try {sizes} = {count} candidates, more than the cap of {cap}; "
            f"give fewer values or raise max_candidates (--max-candidates, at most "
            f"{EXPLORE_CEILING})"
        )
    return out


def _check_explore(store: Store, run: RunRecord, payload: Mapping[str, Any]) -> dict[str, Any]:
    known = {"values", "steps", "metric", "goal", "score", "from", "then", "max_candidates",
             "group", "mode"}  # fmt: skip
    unknown = sorted(str(k) for k in payload if k not in known)
    if unknown:
        raise InvalidArgument(f"explore does not take {', '.join(unknown)}")
    group = _group(payload)
    cap = _check_cap(payload.get("max_candidates"))
    values = check_candidates(_specs(run), payload.get("values"), group, cap)
    steps = _check_steps(payload.get("steps"))
    metric = _check_metric_name(payload.get("metric"))
    goal = payload.get("goal", "min")
    if goal not in ("min", "max"):
        raise InvalidArgument(f"goal must be min or max, got {goal!r:.60}")
    score = payload.get("score", "last")
    parse_score(score)
    then = payload.get("then", "best")
    if then not in ("best", "stay"):
        raise InvalidArgument(f"then must be best or stay, got {then!r:.60}")
    start = payload.get("from")
    if start is not None:
        if not isinstance(start, str) or not start:
            raise InvalidArgument("from must name a checkpoint: c3, latest, n3 or n3@1200")
        _check_checkpoint_target(store, run, start)
    return {"values": values, "steps": steps, "metric": metric, "goal": goal, "score": score,
            "from": start, "then": then, "max_candidates": cap, "group": group,
            "mode": _mode(payload)}  # fmt: skip


_CHECKS = {
    "set": _check_set,
    "scale": _check_scale,
    "pause": _check_plain,
    "continue": _check_plain,
    "stop": _check_plain,
    "checkpoint": _check_checkpoint,
    "restore": _check_restore,
    "guard": _check_guard,
    "explore": _check_explore,
}


def restore_payload(
    target: str, values: Mapping[str, Any] | None, group: int | str | None, mode: str
) -> dict[str, Any]:
    """The payload of a ``restore`` command, as every surface builds it."""
    return {"target": target, "set": dict(values or {}), "group": group, "mode": mode}


def explore_payload(
    values: Mapping[str, Any],
    *,
    steps: int,
    metric: str,
    goal: str = "min",
    score: str = "last",
    start: str | None = None,
    then: str = "best",
    max_candidates: int | None = None,
    group: int | str | None = None,
    mode: str = "rescale",
) -> dict[str, Any]:
    """The payload of an ``explore`` command, as every surface builds it.

    A single value (not a list) stands for a one-element list; a tuple is one value of a
    tuple-valued tunable only inside a list (``betas=[(0.9, 0.99), (0.9, 0.999)]``).
    """
    lists = {name: list(v) if isinstance(v, list) else [v] for name, v in values.items()}
    return {"values": lists, "steps": steps, "metric": metric, "goal": goal, "score": score,
            "from": start, "then": then, "max_candidates": max_candidates, "group": group,
            "mode": mode}  # fmt: skip


def submit(
    store: Store,
    run_ref: str,
    kind: str,
    payload: Mapping[str, Any],
    *,
    source: str,
    user: str | None = None,
) -> CommandRecord:
    """Validate and queue a command for run ``run_ref`` (id or name); returns it ``pending``.

    ``kind`` may be an old alias (``resume`` for ``continue``); the canonical kind is stored.
    Raises ``RunNotFound`` for an unknown run (nothing recorded). Any other failure is recorded
    as a command already ``rejected`` with the reason (one transaction: the training process
    never sees it pending), then raised: ``RunNotLive`` for a run that is not running or
    paused, ``CommandRejected`` (whose message is the reason) otherwise.
    """
    if source not in SOURCES:
        raise InvalidArgument(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    run = store.get_run(run_ref)
    kind = canonical_kind(kind)
    who = user if user is not None else current_user()
    check = _CHECKS.get(kind)
    error: RetuneError
    try:
        if check is None:
            raise InvalidArgument(
                f"unknown command {kind!r}; commands: {', '.join(sorted(_CHECKS))}"
                " (resume is accepted for continue)"
            )
        if run.status not in LIVE_STATUSES:
            raise RunNotLive(
                f"run {run.name} ({run.id}) is {run.status}; commands need a running or paused run"
            )
        normalized = check(store, run, payload)
    except (RunNotLive, CommandRejected) as e:
        error = e
    except InvalidArgument as e:
        error = CommandRejected(str(e))
    else:
        queued = store.submit_command(run.id, kind, normalized, source=source, user=who)
        if queued.status == "rejected":  # the run ended meanwhile: the store refused it
            raise RunNotLive(f"run {run.name} ({run.id}): {queued.reason}")
        return queued
    recorded = store.submit_command(
        run.id,
        kind,
        dict(payload),
        source=source,
        user=who,
        status="rejected",
        reason=str(error),
    )
    if isinstance(error, CommandRejected):
        error.command_id = recorded.id
    raise error
