"""``run.hp``: every tunable of a live run and its current value, per param group.

A read-only view (a ``Mapping``): ``run.hp.clip_norm`` / ``run.hp["clip_norm"]`` give a user
knob's value, ``run.hp["lr"]`` an optimizer hyperparameter's value per param group (a list,
as ``retune get`` and the store hold it). In a terminal it is one line; in a notebook it is a
table (one row per tunable and group). Reading it from another thread is safe: optimizer
values are read live from the param groups, user knobs through their ``value``.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from retune.control._tunables import TunableSpec

__all__ = ["TunableValues"]


class _Readable(Protocol):
    """What the view reads: the live tunables (``LiveTunables``)."""

    @property
    def specs(self) -> list[TunableSpec]: ...

    def read(self, spec: TunableSpec, group: int | None) -> Any: ...


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_shown(v) for v in value) + ")"
    return str(value)


class TunableValues(Mapping[str, Any]):
    """Current values of every tunable of a live run: optimizer values and user knobs."""

    def __init__(self, live: _Readable) -> None:
        self._live = live

    def _spec(self, name: str) -> TunableSpec:
        for spec in self._live.specs:
            if spec.name == name:
                return spec
        valid = ", ".join(spec.name for spec in self._live.specs) or "none declared"
        raise KeyError(f"no tunable {name!r}; the run has: {valid}")

    def _value(self, spec: TunableSpec) -> Any:
        if spec.groups is None:
            return self._live.read(spec, None)
        return [self._live.read(spec, i) for i in range(len(spec.groups))]

    def __getitem__(self, name: str) -> Any:
        return self._value(self._spec(name))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def __iter__(self) -> Iterator[str]:
        return iter([spec.name for spec in self._live.specs])

    def __len__(self) -> int:
        return len(self._live.specs)

    def rows(self) -> list[dict[str, Any]]:
        """One row per tunable and param group: name, group (index and name, or None),
        value, kind, bounds (text) and doc; what the table shows."""
        out: list[dict[str, Any]] = []
        for spec in self._live.specs:
            value = self._value(spec)
            groups: list[tuple[str | None, Any]]
            if spec.groups is None:
                groups = [(None, value)]
            else:
                groups = [
                    (f"{i}" + (f" ({label})" if label else ""), value[i])
                    for i, label in enumerate(spec.groups)
                ]
            for group, group_value in groups:
                out.append(
                    {
                        "name": spec.name,
                        "group": group,
                        "value": group_value,
                        "kind": spec.kind,
                        "bounds": spec.describe_bounds(),
                        "doc": spec.doc,
                    }
                )
        return out

    def __repr__(self) -> str:
        return "TunableValues(" + ", ".join(f"{k}={_shown(v)}" for k, v in self.items()) + ")"

    def _repr_html_(self) -> str:
        """A table: one row per tunable and param group (names are escaped)."""
        head = "".join(f"<th>{c}</th>" for c in ("tunable", "group", "value", "kind", "bounds"))
        body = []
        for row in self.rows():
            cells = [
                row["name"],
                "" if row["group"] is None else row["group"],
                _shown(row["value"]),
                row["kind"],
                row["bounds"],
            ]
            title = f' title="{html.escape(row["doc"])}"' if row["doc"] else ""
            body.append(
                f"<tr{title}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"
            )
        return (
            '<table class="retune-hp"><thead><tr>'
            + head
            + "</tr></thead><tbody>"
            + "".join(body)
            + "</tbody></table>"
        )
