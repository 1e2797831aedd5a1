"""Tunables: named knobs with a type and bounds, and the validation every command goes through.

A :class:`TunableSpec` is plain data (it is stored with the run and used to validate commands
in processes that have no torch). Optimizer hyperparameters are discovered per param group by
:func:`discover_optimizer`; user knobs are declared with ``run.tunable(...)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from retune.errors import InvalidArgument

__all__ = ["TunableSpec", "discover_optimizer", "resolve_groups", "validate"]

# Group keys that look numeric but are not safe or meaningful to change mid-training.
_NOT_TUNABLE = {
    "params",
    "initial_lr",  # written by every LR scheduler: its reference point, not a knob
    "initial_accumulator_value",  # only read when the optimizer state is created
    "foreach",
    "fused",
    "capturable",
    "differentiable",
    "maximize",
    "amsgrad",  # changes the shape of the optimizer state
    "decoupled_weight_decay",
    "name",
}
_SAFE_BOOLS = {"nesterov"}
# (low, high, low_inclusive, high_inclusive) by key; everything numeric must also be finite.
_BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "lr": (0.0, None, True, True),  # 0 is legitimate: warmup starts and schedules end there
    "max_lr": (0.0, None, False, True),
    "min_lr": (0.0, None, True, True),
    "momentum": (0.0, 1.0, True, False),
    "max_momentum": (0.0, 1.0, True, False),
    "base_momentum": (0.0, 1.0, True, False),
    "dampening": (0.0, 1.0, True, True),
    "betas": (0.0, 1.0, True, False),
    "weight_decay": (0.0, None, True, True),
    "eps": (0.0, None, False, True),
    "lr_decay": (0.0, None, True, True),
    "rho": (0.0, 1.0, True, True),
    "momentum_decay": (0.0, None, True, True),
}
_RMSPROP_ALPHA = (0.0, 1.0, True, False)
# Integer-valued group entries (LBFGS); bounds as above. Other int entries whose key is not a
# known float hyperparameter are ints without bounds; known float keys stay floats even when
# the user wrote them as ints (``weight_decay=0``).
_INT_BOUNDS: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "max_iter": (1.0, None, True, True),
    "max_eval": (1.0, None, True, True),
    "history_size": (1.0, None, True, True),
}
_FLOAT_KEYS = {
    *_BOUNDS,
    "alpha",
    "lambd",
    "t0",
    "beta2_decay",
    "d",
    "tolerance_grad",
    "tolerance_change",
}


@dataclass(frozen=True)
class TunableSpec:
    """What a command may change: a name, a kind, bounds, and (for optimizer values) groups.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str`` (user knobs only); ``length`` is set
    for tuples (``betas``: 2), each element then has the bounds. ``groups`` names the
    optimizer's param groups (a name, or ``None`` for an unnamed group) for
    ``source == "optimizer"``; user knobs have none.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    length: int | None = None
    source: str = "user"
    groups: tuple[str | None, ...] | None = None
    doc: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["groups"] = list(self.groups) if self.groups is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TunableSpec:
        """The spec :meth:`to_dict` wrote; ``ValueError`` saying what is wrong for anything
        else (a store edited by hand, or damaged), never a ``TypeError`` from deep inside."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a tunable must be a mapping, got {type(data).__name__}")
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if fields.get("doc", "") is None:  # runs of an earlier version stored a knob's null doc
            fields["doc"] = ""
        wanted: dict[str, tuple[type, ...]] = {
            "name": (str,),
            "kind": (str,),
            "low": (int, float, type(None)),
            "high": (int, float, type(None)),
            "low_inclusive": (bool,),
            "high_inclusive": (bool,),
            "length": (int, type(None)),
            "source": (str,),
            "groups": (list, tuple, type(None)),
            "doc": (str,),
        }
        for field in ("name", "kind"):
            if field not in fields:
                raise ValueError(f"a tunable lacks its {field!r}: {dict(data)!r:.120}")
        for field, value in fields.items():
            types = wanted[field]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ValueError(
                    f"tunable {fields['name']!r:.60}: {field} is {value!r:.60}, not "
                    + " or ".join("None" if t is type(None) else t.__name__ for t in types)
                )
        groups = fields.get("groups")
        if groups is not None:
            if not all(g is None or isinstance(g, str) for g in groups):
                raise ValueError(f"tunable {fields['name']!r:.60}: groups {groups!r:.60}")
            fields["groups"] = tuple(groups)
        return cls(**fields)

    def describe_bounds(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>=' if self.low_inclusive else '>'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<=' if self.high_inclusive else '<'} {self.high:g}")
        return " and ".join(parts)


def _kind_of(key: str, value: Any) -> tuple[str, int | None] | None:
    """(kind, tuple length) of a group value, or None when it is not a tunable value."""
    if isinstance(value, bool):
        return ("bool", None)
    if isinstance(value, int) and key not in _FLOAT_KEYS:
        return ("int", None)  # LBFGS max_iter, history_size...
    if isinstance(value, (int, float)):
        return ("float", None)
    numel = getattr(value, "numel", None)
    if callable(numel) and numel() == 1 and getattr(value, "is_floating_point", lambda: False)():
        return ("float", None)  # a tensor-valued lr (capturable / fused optimizers)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return ("float", len(value))
    return None


def discover_optimizer(optimizer: Any) -> list[TunableSpec]:
    """One spec per hyperparameter found in any param group of a ``torch.optim`` optimizer.

    Numeric values, tuples of numbers (``betas``) and tensor-valued ``lr`` are tunable; bools
    only where flipping them mid-training is safe (``nesterov``; not ``amsgrad``, which changes
    the state's shape, nor implementation switches like ``foreach``). Integer entries are
    ``int`` unless the key is a known float hyperparameter. Every value must be finite; known
    keys have bounds (lr >= 0, momentum/betas in [0, 1), weight_decay >= 0, eps > 0, RMSprop's
    alpha in [0, 1), ...), unknown ones none. Groups are named by their ``name`` key when they
    have one.
    """
    groups = optimizer.param_groups
    names = tuple(g.get("name") if isinstance(g.get("name"), str) else None for g in groups)
    is_rmsprop = type(optimizer).__name__ == "RMSprop"
    seen: dict[str, TunableSpec] = {}
    for group in groups:
        for key, value in group.items():
            if key in _NOT_TUNABLE or key in seen:
                continue
            found = _kind_of(key, value)
            if found is None or (found[0] == "bool" and key not in _SAFE_BOOLS):
                continue
            kind, length = found
            bounds = _BOUNDS.get(key) or _INT_BOUNDS.get(key)
            if key == "alpha" and is_rmsprop:
                bounds = _RMSPROP_ALPHA
            low, high, low_inc, high_inc = bounds or (None, None, True, True)
            seen[key] = TunableSpec(
                name=key,
                kind=kind,
                low=low,
                high=high,
                low_inclusive=low_inc,
                high_inclusive=high_inc,
                length=length,
                source="optimizer",
                groups=names,
            )
    return list(seen.values())


def resolve_groups(spec: TunableSpec, group: int | str | None) -> list[int]:
    """The group indexes a command addresses: all when ``group`` is None."""
    if spec.groups is None:
        if group is not None:
            raise InvalidArgument(f"{spec.name} is not per param group; drop the group")
        return []
    count = len(spec.groups)
    if group is None:
        return list(range(count))
    labels = ", ".join(f"{i}" + (f" ({n})" if n else "") for i, n in enumerate(spec.groups))
    if isinstance(group, bool):
        raise InvalidArgument(f"group must be an index or a name, got {group!r}")
    if isinstance(group, int):
        if 0 <= group < count:
            return [group]
        raise InvalidArgument(f"group {group} does not exist; the groups are: {labels}")
    if group.isascii() and group.isdigit() and int(group) < count:
        return [int(group)]
    if group in spec.groups:
        return [spec.groups.index(group)]
    raise InvalidArgument(f"no param group named {group!r}; the groups are: {labels}")


def _short(value: int) -> str:
    """A huge int for a message, without converting all its digits."""
    if value.bit_length() <= 128:
        return str(value)
    return f"about 10**{int(value.bit_length() * 0.30103)}"


def _check_number(spec: TunableSpec, value: Any, label: str) -> Any:
    if spec.kind == "str":
        if isinstance(value, str):
            return value
        raise InvalidArgument(f"{label} expects a string, got {value!r}")
    if spec.kind == "bool":
        if isinstance(value, bool):
            return value
        raise InvalidArgument(f"{label} expects true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{label} expects {'an int' if spec.kind == 'int' else 'a float'}"
                              f", got {value!r}")  # fmt: skip
    if spec.kind == "int" and not isinstance(value, int):
        if not float(value).is_integer():
            raise InvalidArgument(f"{label} expects an int, got {value!r}")
        value = int(value)
    if isinstance(value, int) and (abs(value) >= 2**63 or spec.kind == "float"):
        try:  # math.isfinite overflows on 10**400: say "too large" instead
            if abs(value) >= 2**63 and spec.kind == "int":
                raise OverflowError
            float(value)
        except OverflowError:
            raise InvalidArgument(
                f"{label} is too large ({value.bit_length()} bits), got {_short(value)}"
            ) from None
    if not math.isfinite(value):
        raise InvalidArgument(f"{label} must be finite, got {value}")
    low_ok = spec.low is None or (value >= spec.low if spec.low_inclusive else value > spec.low)
    high_ok = spec.high is None or (
        value <= spec.high if spec.high_inclusive else value < spec.high
    )
    if not (low_ok and high_ok):
        raise InvalidArgument(f"{label} must be {spec.describe_bounds()}, got {value:g}")
    return int(value) if spec.kind == "int" else (float(value) if spec.kind == "float" else value)


def validate(
    specs: Sequence[TunableSpec], name: str, value: Any, group: int | str | None = None
) -> Any:
    """Check ``value`` for tunable ``name`` (and ``group``); return it normalized.

    Raises :class:`InvalidArgument` with a one-line reason: unknown name (listing the valid
    ones), wrong type, NaN/inf, out of bounds, wrong tuple length, unknown group.
    """
    spec = next((s for s in specs if s.name == name), None)
    if spec is None:
        valid = ", ".join(sorted(s.name for s in specs)) or "none declared"
        raise InvalidArgument(f"unknown tunable {name!r}; valid names: {valid}")
    resolve_groups(spec, group)
    if spec.length is None:
        return _check_number(spec, value, name)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidArgument(f"{name} expects {spec.length} numbers, got {value!r}")
    if len(value) != spec.length:
        raise InvalidArgument(f"{name} expects {spec.length} numbers, got {len(value)}")
    return tuple(_check_number(spec, v, f"{name}[{i}]") for i, v in enumerate(value))
