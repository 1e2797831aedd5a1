"""The full training state of a run: what a checkpoint captures and what a restore puts back.

Captured, in the training thread at a step boundary: model, optimizer (every per-parameter
buffer), scheduler, grad scaler, RNG states (python ``random``, numpy's global generator, torch
CPU and every CUDA device), the loop position (epoch, batch, global step, data seed), Retune's
own state (node, knob values, scheduler pins) and the user's ``run.state``.

A restored state is checked whole before anything is put back (:func:`check_state`): a
checkpoint is data, so it may only fill in what the live objects already have. Only known
keys, plain values (never a callable), tensors of the live shapes, and every optimizer
hyperparameter, scheduler learning rate, pin and knob value within its declared bounds.
"""

from __future__ import annotations

import math
import random
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from retune.control import validate
from retune.errors import CheckpointCorrupt, InvalidArgument

if TYPE_CHECKING:
    from retune.session._protocols import StatefulRun

__all__ = ["apply_state", "capture_state", "check_state"]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuples(state["python"]))
    np.random.set_state(state["numpy"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in state:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def capture_state(run: StatefulRun) -> dict[str, Any]:
    """The state tree of ``run`` now (tensors are referenced, not copied)."""
    state: dict[str, Any] = {
        "rng": _rng_state(),
        "loop": run.loop_state(),
        "retune": {"node": run.node, "tunables": run.tunables.state_dict()},
        "user": dict(run.state),
    }
    if run.state_parts:
        state["parts"] = {name: capture() for name, (capture, _) in run.state_parts.items()}
    for name in ("model", "optimizer", "scheduler", "scaler"):
        target = getattr(run, name)
        if target is not None:
            state[name] = target.state_dict()
    return state


def apply_state(run: StatefulRun, state: dict[str, Any]) -> None:
    """Put a captured state back into the live objects of ``run`` (training thread only).

    :func:`check_state` runs first: a state that does not fit raises
    :class:`CheckpointCorrupt` and nothing is changed.
    """
    check_state(run, state)
    for name in ("model", "optimizer", "scheduler", "scaler"):
        target = getattr(run, name)
        if target is not None and name in state:
            target.load_state_dict(state[name])
    run.tunables.load_state_dict(state["retune"]["tunables"])
    run.state.clear()
    run.state.update(state["user"])
    run.set_loop_state(state["loop"])
    _set_rng_state(state["rng"])
    parts = dict(state.get("parts", {}))
    for name, (_, load) in run.state_parts.items():
        if name in parts:
            load(parts.pop(name))
    run.unclaimed_parts = parts


# -- checking a decoded state against the live objects -------------------------------------


class _Bad(Exception):
    """One reason a state does not fit (turned into CheckpointCorrupt by check_state)."""


def _dict(value: Any, where: str) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{where} is {type(value).__name__}, not a dict")
    return value


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _plain(value: Any, where: str) -> None:
    """Data only: numbers, strings, None, tensors, arrays, and containers of them."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, np.ndarray, np.generic)):
        return
    if _is_tensor(value):
        return
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, (torch.dtype, torch.device)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _plain(item, f"{where}[{key!r}]")
        return
    raise _Bad(f"{where} holds a {type(value).__name__}, not data")


def _same_kind(live: Any, value: Any, where: str) -> None:
    """``value`` may replace ``live``: the same kind of data (numbers for numbers, ...)."""
    _plain(value, where)
    if live is None or value is None:
        return
    kinds = (bool, (int, float, np.integer, np.floating), str, (list, tuple), dict)
    for kind in kinds:
        if isinstance(live, kind):
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise _Bad(f"{where} is {value!r}, where a {type(live).__name__} belongs")
            return
    if _is_tensor(live) and not (_is_tensor(value) or isinstance(value, (int, float))):
        raise _Bad(f"{where} is {type(value).__name__}, where a tensor belongs")


def _number(value: Any) -> Any:
    item = getattr(value, "item", None)
    if _is_tensor(value) and value.numel() == 1 and callable(item):
        return item()
    return value


def _in_bounds(run: StatefulRun, name: str, value: Any, where: str) -> None:
    """Validate ``value`` of tunable ``name`` (when it is one) against its declared bounds."""
    specs = run.tunables.specs
    if not any(spec.name == name for spec in specs):
        return
    plain = _number(value)
    if isinstance(plain, list):
        plain = tuple(plain)
    try:
        validate(specs, name, plain)
    except InvalidArgument as e:
        raise _Bad(f"{where}: {e}") from e


def _check_model(model: Any, state: Any) -> None:
    state = _dict(state, "the model state")
    live = model.state_dict()
    missing, extra = set(live) - set(state), set(state) - set(live)
    if missing or extra:
        raise _Bad(
            f"the model state does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(map(str, extra))[:3]})"
        )
    for key, value in state.items():
        if _is_tensor(live[key]):
            if not _is_tensor(value) or tuple(value.shape) != tuple(live[key].shape):
                shape = tuple(value.shape) if _is_tensor(value) else type(value).__name__
                raise _Bad(f"the model's {key} is {shape}, the model has {tuple(live[key].shape)}")
        else:
            _plain(value, f"the model's {key}")


def _numeric(value: Any) -> bool:
    """A hyperparameter a group cannot lose: a number, a tensor, or a tuple of numbers."""
    if isinstance(value, tuple):
        return bool(value) and all(_numeric(v) for v in value)
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or _is_tensor(value)


def _check_optimizer(run: StatefulRun, optimizer: Any, state: Any) -> None:
    state = _dict(state, "the optimizer state")
    if set(state) != {"state", "param_groups"}:
        raise _Bad(f"the optimizer state has keys {sorted(map(str, state))}")
    groups, live_groups = state["param_groups"], optimizer.param_groups
    if not isinstance(groups, list) or len(groups) != len(live_groups):
        raise _Bad(f"the optimizer state does not have the optimizer's {len(live_groups)} groups")
    ids: list[int] = []
    for index, (saved, live) in enumerate(zip(groups, live_groups, strict=True)):
        group = _dict(saved, f"param group {index}")
        params = group.get("params")
        if not isinstance(params, list) or len(params) != len(live["params"]):
            raise _Bad(
                f"param group {index} does not have the group's {len(live['params'])} params"
            )
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in params):
            raise _Bad(f"param group {index} names its params by something other than ints")
        ids.extend(params)
        missing = [key for key, value in live.items() if key not in group and _numeric(value)]
        if missing:  # load_state_dict would drop them from the live group
            raise _Bad(f"param group {index} lacks {', '.join(map(repr, sorted(missing)))}")
        for key, value in group.items():
            if key == "params":
                continue
            if key not in live:
                raise _Bad(f"param group {index} has the unknown entry {key!r}")
            _same_kind(live[key], value, f"param group {index}'s {key}")
            _in_bounds(run, key, value, f"param group {index}'s {key}")
    if len(set(ids)) != len(ids):
        raise _Bad("the optimizer state names one parameter twice")
    per_param = _dict(state["state"], "the optimizer's per-parameter state")
    known = set(ids)
    for key, value in per_param.items():
        if not isinstance(key, int) or isinstance(key, bool) or key not in known:
            raise _Bad(f"the optimizer's per-parameter state names parameter {key!r}")
        for name, item in _dict(value, f"the optimizer state of parameter {key}").items():
            _plain(item, f"the optimizer state of parameter {key}: {name}")


def _check_scheduler(run: StatefulRun, scheduler: Any, state: Any) -> None:
    state = _dict(state, "the scheduler state")
    live = scheduler.state_dict()
    for key, value in state.items():
        if key not in live:  # e.g. get_lr, optimizer, or any other attribute
            raise _Bad(f"the scheduler state has the unknown entry {key!r}")
        _same_kind(live[key], value, f"the scheduler's {key}")
    for key in ("base_lrs", "_last_lr"):
        values = state.get(key)
        if isinstance(values, (list, tuple)):
            for value in values:
                _in_bounds(run, "lr", value, f"the scheduler's {key}")


def _check_scaler(scaler: Any, state: Any) -> None:
    state = _dict(state, "the grad scaler state")
    live = scaler.state_dict()
    for key, value in state.items():
        if key not in live:
            raise _Bad(f"the grad scaler state has the unknown entry {key!r}")
        _same_kind(live[key], value, f"the grad scaler's {key}")
        number = _number(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise _Bad(f"the grad scaler's {key} is {number}")


def _check_retune(run: StatefulRun, state: Any) -> None:
    tunables = _dict(_dict(state, "Retune's state").get("tunables"), "the tunables' state")
    knobs = _dict(tunables.get("knobs", {}), "the knob values")
    for name, value in knobs.items():
        if name in run.tunables.knobs:
            _in_bounds(run, name, value, f"knob {name}")
    pins = _dict(tunables.get("scheduler", {}), "the scheduler pins").get("pins", [])
    if not isinstance(pins, list):
        raise _Bad("the scheduler pins are not a list")
    groups = len(run.optimizer.param_groups) if run.optimizer is not None else 0
    optimizer_names = {s.name for s in run.tunables.specs if s.groups is not None}
    for pin in pins:
        if not isinstance(pin, (list, tuple)) or len(pin) != 3:
            raise _Bad(f"a scheduler pin is {pin!r}")
        index, key, value = pin
        if type(index) is not int or not 0 <= index < groups or key not in optimizer_names:
            raise _Bad(f"a scheduler pin names group {index!r}'s {key!r}")
        _plain(value, f"the pin of {key}")
        _in_bounds(run, key, value, f"the pin of group {index}'s {key}")


def _check_loop(state: Any) -> None:
    state = _dict(state, "the loop position")
    for key in ("epoch", "batch", "data_seed", "step"):
        value = state.get(key)
        if type(value) is not int or (key != "data_seed" and value < 0):
            raise _Bad(f"the loop position's {key} is {value!r}")


def _check_rng(state: Any) -> None:
    state = _dict(state, "the RNG state")
    try:  # each on a fresh generator: the global ones are untouched until all is checked
        random.Random().setstate(_as_tuples(state["python"]))
        np.random.RandomState().set_state(state["numpy"])
        torch = sys.modules.get("torch")
        if torch is not None and "torch" in state:
            torch.Generator().set_state(state["torch"])
        if "cuda" in state:
            _plain(state["cuda"], "the CUDA RNG state")
    except _Bad:
        raise
    except Exception as e:  # any malformed state: TypeError, ValueError, RuntimeError...
        raise _Bad(f"the RNG state is not valid ({type(e).__name__}: {e})") from e


def check_state(run: StatefulRun, state: Any) -> None:
    """Raise :class:`CheckpointCorrupt` unless ``state`` fits the live objects of ``run``.

    Checked, before anything is changed: the structure; model keys and tensor shapes; the
    optimizer's groups, their entries (only keys the live groups have, values of the same
    kind, no callables) and per-parameter state; the scheduler's and grad scaler's entries
    (only keys their live ``state_dict()`` has: a checkpoint cannot replace ``get_lr`` or any
    other attribute); every optimizer hyperparameter, scheduler learning rate, scheduler pin
    and knob value within the run's declared bounds; the loop position; the RNG states.
    """
    try:
        state = _dict(state, "the checkpoint state")
        for key in ("rng", "loop", "retune", "user"):
            if key not in state:
                raise _Bad(f"the checkpoint state has no {key!r}")
        if run.model is not None and "model" in state:
            _check_model(run.model, state["model"])
        if run.optimizer is not None and "optimizer" in state:
            _check_optimizer(run, run.optimizer, state["optimizer"])
        if run.scheduler is not None and "scheduler" in state:
            _check_scheduler(run, run.scheduler, state["scheduler"])
        if run.scaler is not None and "scaler" in state:
            _check_scaler(run.scaler, state["scaler"])
        _check_retune(run, state["retune"])
        _dict(state["user"], "the user state")
        _check_loop(state["loop"])
        _check_rng(state["rng"])
        if "parts" in state:
            _plain(_dict(state["parts"], "the extra state parts"), "the extra state parts")
    except _Bad as e:
        raise CheckpointCorrupt(f"the checkpoint does not fit this run: {e}") from None
