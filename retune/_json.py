"""JSON that survives every backend: non-finite floats become tagged strings and come back."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["dumps", "jsonable", "loads", "number"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def jsonable(value: Any) -> Any:
    """A copy of ``value`` that strict JSON (and PostgreSQL) accepts.

    Non-finite floats become ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; tuples become lists;
    numpy scalars become Python numbers; anything else unknown becomes ``str(value)``.
    """
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    numel = getattr(value, "numel", None)  # a one-element torch tensor, without importing torch
    if callable(numel) and numel() == 1:
        return jsonable(value.item())
    return str(value)


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`jsonable` ``(value)``; never emits bare ``NaN``."""
    return json.dumps(jsonable(value), allow_nan=False, **kwargs)


def loads(text: str) -> Any:
    """``json.loads``; tagged non-finite strings are left as strings (callers decide)."""
    return json.loads(text)


def number(value: Any) -> Any:
    """Turn a tagged non-finite string back into its float; other values pass through."""
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    return value
