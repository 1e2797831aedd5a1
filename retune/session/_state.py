"""The full training state of a run: what a checkpoint captures and what a restore puts back.

Captured, in the training thread at a step boundary: model, optimizer (every per-parameter
buffer), scheduler, grad scaler, RNG states (python ``random``, numpy's global generator, torch
CPU and every CUDA device), the loop position (epoch, batch, global step, data seed), Retune's
own state (node, knob values, scheduler pins) and the user's ``run.state``.
"""

from __future__ import annotations

import random
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from retune.session._run import Run

__all__ = ["apply_state", "capture_state"]


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


def capture_state(run: Run) -> dict[str, Any]:
    """The state tree of ``run`` now (tensors are referenced, not copied)."""
    state: dict[str, Any] = {
        "rng": _rng_state(),
        "loop": run._loop_state(),
        "retune": {"node": run.node, "tunables": run.tunables.state_dict()},
        "user": dict(run.state),
    }
    for name in ("model", "optimizer", "scheduler", "scaler"):
        target = getattr(run, name)
        if target is not None:
            state[name] = target.state_dict()
    return state


def apply_state(run: Run, state: dict[str, Any]) -> None:
    """Put a captured state back into the live objects of ``run`` (training thread only)."""
    for name in ("model", "optimizer", "scheduler", "scaler"):
        target = getattr(run, name)
        if target is not None and name in state:
            target.load_state_dict(state[name])
    run.tunables.load_state_dict(state["retune"]["tunables"])
    run.state.clear()
    run.state.update(state["user"])
    run._set_loop_state(state["loop"])
    _set_rng_state(state["rng"])
