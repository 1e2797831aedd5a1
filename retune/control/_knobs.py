"""User knobs: values the training loop reads, or getters/setters Retune calls."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from retune.control._tunables import TunableSpec, validate
from retune.errors import InvalidArgument

__all__ = ["Knob"]


class Knob:
    """A registered user tunable. ``knob.value`` is always the current value.

    Either Retune holds the value (``Knob(name, initial)``) and the loop reads it, or it wraps
    ``get``/``set`` callables (a dropout module's ``p``, a loss weight in another object).
    Only the training thread changes it, at a step boundary, after validation.

    ``bounds`` are ``(low, high)``, each a finite number or None; ``inclusive`` says whether
    each bound itself is allowed (default both: ``(False, True)`` with ``(0, 1)`` is ``0 < x
    <= 1``). Commands are checked against them when sent and again when applied.
    """

    def __init__(
        self,
        name: str,
        initial: Any = None,
        *,
        get: Callable[[], Any] | None = None,
        set: Callable[..., None] | None = None,
        bounds: tuple[float | None, float | None] = (None, None),
        inclusive: tuple[bool, bool] = (True, True),
        kind: str | None = None,
        doc: str | None = "",
        modal: bool = False,
    ) -> None:
        if not name or not isinstance(name, str):
            raise InvalidArgument("a tunable needs a non-empty name")
        if (get is None) != (set is None):
            raise InvalidArgument(f"tunable {name}: give both get= and set=, or neither")
        if get is None and initial is None:
            raise InvalidArgument(f"tunable {name}: give an initial value or get=/set=")
        if doc is None:  # accepted before it was checked: a stored null reads back as ""
            doc = ""
        if not isinstance(doc, str):
            raise InvalidArgument(f"tunable {name}: doc must be a string, got {doc!r:.40}")
        self._value = initial
        self._get = get
        self._set = set
        self.modal = modal
        """When True, ``set`` is called as ``set(value, mode)``: the command's mode
        (``rescale``/``constant``), or None when a restore puts a checkpointed value back."""
        current = get() if get is not None else initial
        inferred = kind or _infer_kind(name, current)
        low, high = _check_bounds(name, bounds)
        if not (
            isinstance(inclusive, (tuple, list))
            and len(inclusive) == 2
            and all(isinstance(flag, bool) for flag in inclusive)
        ):
            raise InvalidArgument(
                f"tunable {name}: inclusive must be a pair of booleans (low, high), "
                f"got {inclusive!r:.40}"
            )
        self.spec = TunableSpec(
            name=name,
            kind=inferred,
            low=low,
            high=high,
            low_inclusive=inclusive[0],
            high_inclusive=inclusive[1],
            doc=doc,
        )
        self._value = validate([self.spec], name, current)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def value(self) -> Any:
        return self._get() if self._get is not None else self._value

    def assign(self, value: Any, mode: str | None = None) -> None:
        """Set the value (already validated). A wrapped setter's exception propagates.

        A ``modal`` knob's setter also gets ``mode`` (None when a restore puts a value back)."""
        if self._set is not None and self.modal:
            self._set(value, mode)
        elif self._set is not None:
            self._set(value)
        else:
            self._value = value

    def __float__(self) -> float:
        return float(self.value)

    def __repr__(self) -> str:
        return f"Knob({self.name}={self.value!r})"


def _check_bounds(name: str, bounds: Any) -> tuple[float | None, float | None]:
    """``(low, high)``: each a finite number or None, and low <= high; else InvalidArgument."""
    if isinstance(bounds, (str, bytes)) or not isinstance(bounds, (tuple, list)):
        raise InvalidArgument(
            f"tunable {name}: bounds must be a pair (low, high), got {type(bounds).__name__}"
        )
    if len(bounds) != 2:
        raise InvalidArgument(f"tunable {name}: bounds must be a pair (low, high), got {bounds!r}")
    checked: list[float | None] = []
    for which, bound in zip(("low", "high"), bounds, strict=True):
        if bound is None:
            checked.append(None)
            continue
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise InvalidArgument(
                f"tunable {name}: the {which} bound must be a number or None, "
                f"got {type(bound).__name__} {bound!r:.40}"
            )
        try:
            number = float(bound)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise InvalidArgument(
                f"tunable {name}: the {which} bound must be finite (use None for no bound)"
            )
        checked.append(number)
    low, high = checked
    if low is not None and high is not None and low > high:
        raise InvalidArgument(
            f"tunable {name}: bounds are reversed: low {low:g} is above high {high:g}"
        )
    return low, high


def _infer_kind(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    raise InvalidArgument(f"tunable {name}: values must be float, int or bool, got {value!r}")
