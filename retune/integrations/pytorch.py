"""What Retune records about a plain PyTorch model, optimizer and scheduler.

Imported only when ``retune.init`` is given one of them, so ``import retune`` never imports torch.
Every function returns JSON-ready data (numbers, strings, lists, dicts).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from retune import _json

__all__ = [
    "dropout_modules",
    "model_summary",
    "optimizer_summary",
    "optimizer_values",
    "scheduler_summary",
]

MAX_MODULES = 2000


def model_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Module tree (name, class, own parameter count), parameter counts, dtypes and devices.

    Shared parameters are counted once. Trees larger than ``MAX_MODULES`` are cut, and say so.
    """
    seen: set[int] = set()
    total = trainable = 0
    dtypes: Counter[str] = Counter()
    devices: Counter[str] = Counter()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        count = param.numel()
        total += count
        if param.requires_grad:
            trainable += count
        dtypes[str(param.dtype).removeprefix("torch.")] += count
        devices[str(param.device)] += count
    modules: list[dict[str, Any]] = []
    for name, module in model.named_modules():
        if len(modules) >= MAX_MODULES:
            break
        own = sum(p.numel() for p in module.parameters(recurse=False))
        modules.append(
            {
                "name": name or "",
                "class": type(module).__name__,
                "depth": 0 if not name else name.count(".") + 1,
                "params": own,
            }
        )
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": total,
        "trainable_parameters": trainable,
        "buffers": sum(b.numel() for b in model.buffers()),
        "dtypes": dict(dtypes),
        "devices": dict(devices),
        "modules": modules,
        "modules_truncated": len(modules) >= MAX_MODULES,
        "repr": repr(model)[:20_000],
    }


def _group_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, torch.Tensor):
            out[key] = _json.jsonable(value.item() if value.numel() == 1 else value.tolist())
        else:
            out[key] = _json.jsonable(value)
    return out


def optimizer_values(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """Every param group's hyperparameters (everything but ``params``), in group order."""
    return [_group_hyperparameters(group) for group in optimizer.param_groups]


def optimizer_summary(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Optimizer class, defaults, and each param group's hyperparameters and size."""
    groups = []
    for group, values in zip(optimizer.param_groups, optimizer_values(optimizer), strict=True):
        params = group["params"]
        groups.append(
            {
                "hyperparameters": values,
                "num_tensors": len(params),
                "num_parameters": sum(p.numel() for p in params),
            }
        )
    return {
        "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
        "defaults": _group_hyperparameters(optimizer.defaults),
        "param_groups": groups,
    }


def scheduler_summary(scheduler: Any) -> dict[str, Any]:
    """Scheduler class and its ``state_dict()`` (callables shown by name)."""
    state: Any
    try:
        state = scheduler.state_dict()
    except Exception as e:  # a user scheduler may not support it; record why
        state = {"error": f"state_dict() failed: {e}"}
    return {
        "class": f"{type(scheduler).__module__}.{type(scheduler).__qualname__}",
        "state": _json.jsonable(state),
    }


def dropout_modules(model: torch.nn.Module) -> list[Any]:
    """Every dropout module of ``model`` (``nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout``)."""
    kinds = (torch.nn.modules.dropout._DropoutNd,)
    return [module for module in model.modules() if isinstance(module, kinds)]
