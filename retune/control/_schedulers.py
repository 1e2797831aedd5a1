"""What a ``set lr`` means when a torch LR scheduler drives the optimizer.

``rescale`` (default): the schedule keeps its shape from the new value: every quantity the
scheduler computes the lr from (``base_lrs``, OneCycleLR's ``initial_lr``/``max_lr``/``min_lr``,
CosineAnnealingLR's ``eta_min``, the children of a SequentialLR) is multiplied by
``new / current``. Recursive schedulers (StepLR, ExponentialLR, ReduceLROnPlateau...) read the
group's lr, so the new value carries on by itself. CyclicLR's ``max_lrs`` and
ReduceLROnPlateau's ``min_lrs`` are scaled as well: the floor moves with the schedule, so a
lowered lr is not clamped back up to the old floor. Schedulers with one ``eta_min`` for all
groups (CosineAnnealingLR, CosineAnnealingWarmRestarts) need every group scaled alike, else
the command is rejected. Rescaling needs a non-zero current lr (else: use ``constant``).
A key the scheduler rewrites each step besides lr (``momentum`` / ``betas`` under
``cycle_momentum=True`` of OneCycleLR and CyclicLR) is rejected in ``rescale`` mode, with the
reason; ``constant`` pins it, and OneCycleLR's ``max_momentum``/``base_momentum`` are tunables.

``constant``: the group holds the new value from then on. Retune pins it: right after every
``scheduler.step()`` (so ``get_last_lr()`` and the group show the pinned value) and again in an
optimizer step pre-hook (so nothing written in between is ever used). The ``step`` wrapper is
installed by giving the scheduler instance a subclass of its own class, which keeps
``state_dict()`` free of Retune objects. Pins are part of the checkpointed state
(:meth:`SchedulerControl.state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from retune.errors import CommandRejected

__all__ = ["SchedulerControl", "assign_group_value"]


def assign_group_value(
    group: dict[str, Any], key: str, value: Any, groups: Sequence[dict[str, Any]] = ()
) -> None:
    """Set a param group value; a tensor-valued entry (capturable lr) is updated in place.

    A tensor given as the optimizer's default (``Adam(params, lr=torch.tensor(0.01))``) is one
    object shared by every group. When ``groups`` (all the optimizer's param groups) shows that
    another group holds the same tensor, this group first gets its own copy, so that changing
    one group never changes another. The entry stays a tensor either way.
    """
    current: Any = group.get(key)
    fill = getattr(current, "fill_", None)
    if not callable(fill):
        group[key] = value
        return
    if any(other is not group and other.get(key) is current for other in groups):
        current = current.clone()
        group[key] = current
    current.fill_(value)


class SchedulerControl:
    """Keeps an LR scheduler consistent with changes Retune makes to the optimizer."""

    def __init__(self, scheduler: Any, optimizer: Any) -> None:
        self.scheduler = scheduler
        self.optimizer = optimizer
        self.pins: dict[tuple[int, str], Any] = {}
        self._hook = optimizer.register_step_pre_hook(self._before_optimizer_step)
        self._original_class: type | None = None

    def _install_step_wrapper(self) -> None:
        if self._original_class is not None:
            return
        original = type(self.scheduler)
        control = self

        def step(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            result = original.step(scheduler, *args, **kwargs)
            control.reapply_pins()
            return result

        self.scheduler.__class__ = type(original.__name__, (original,), {"step": step})
        self._original_class = original

    def _before_optimizer_step(self, *_: Any) -> None:
        self.reapply_pins()

    def reapply_pins(self) -> None:
        """Write every pinned value back into its group (what the scheduler wrote is undone)."""
        for (index, key), value in self.pins.items():
            groups = self.optimizer.param_groups
            assign_group_value(groups[index], key, value, groups)
            last = getattr(self.scheduler, "_last_lr", None)
            if key == "lr" and last is not None and index < len(last):
                last[index] = value

    def _schedulers(self) -> Iterator[Any]:
        yield self.scheduler
        yield from getattr(self.scheduler, "_schedulers", [])

    def driven_keys(self) -> set[str]:
        """Group keys besides lr that the scheduler rewrites each step (OneCycleLR momentum)."""
        keys: set[str] = set()
        for scheduler in self._schedulers():
            if getattr(scheduler, "cycle_momentum", False):
                keys.add("betas" if getattr(scheduler, "use_beta1", False) else "momentum")
        return keys

    def check(self, key: str, mode: str, factors: dict[int, float]) -> None:
        """Reject, before anything changes, what the scheduler cannot follow."""
        if mode == "constant":
            return
        if key in self.driven_keys():
            raise CommandRejected(
                f"{type(self.scheduler).__name__} drives {key} every step (cycle_momentum=True): "
                "set max_momentum/base_momentum to change its cycle, or use mode=constant to "
                f"hold {key}"
            )
        if key != "lr":
            return
        for index, factor in factors.items():
            if not math.isfinite(factor) or factor == 0.0:
                raise CommandRejected(
                    f"cannot rescale the schedule of group {index}: its current lr is 0; "
                    "use mode=constant"
                )
        for scheduler in self._schedulers():
            eta_min = getattr(scheduler, "eta_min", 0)
            groups = len(self.optimizer.param_groups)
            if eta_min and (len(set(factors.values())) > 1 or len(factors) < groups):
                raise CommandRejected(
                    f"{type(scheduler).__name__} has one eta_min for all groups: rescale lr of "
                    "every group by the same factor, or use mode=constant"
                )

    def after_set(
        self, key: str, mode: str, new_values: dict[int, Any], factors: dict[int, float]
    ) -> None:
        """Record the change in the scheduler (rescale) or pin it (constant)."""
        if mode == "constant":
            for index, value in new_values.items():
                self.pins[(index, key)] = value
            self._install_step_wrapper()
            self.reapply_pins()
            return
        for index in new_values:
            self.pins.pop((index, key), None)
        if key == "lr":
            self._rescale_lr(factors)

    def _rescale_lr(self, factors: dict[int, float]) -> None:
        groups = self.optimizer.param_groups
        for index, factor in factors.items():
            group = groups[index]
            for group_key in ("initial_lr", "max_lr", "min_lr"):
                if group_key in group:
                    group[group_key] = group[group_key] * factor
            for scheduler in self._schedulers():
                # base_lrs: closed forms; max_lrs: CyclicLR's peak; min_lrs: the floor of
                # ReduceLROnPlateau (scaled too, so a lowered lr is not clamped back up).
                for attr in ("base_lrs", "max_lrs", "min_lrs", "_last_lr"):
                    values = getattr(scheduler, attr, None)
                    if isinstance(values, list) and index < len(values):
                        values[index] = values[index] * factor
        factor = next(iter(factors.values()), 1.0)
        for scheduler in self._schedulers():
            if getattr(scheduler, "eta_min", 0):
                scheduler.eta_min = scheduler.eta_min * factor

    def state_dict(self) -> dict[str, Any]:
        return {"pins": [[index, key, value] for (index, key), value in self.pins.items()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pins = {(int(i), str(k)): v for i, k, v in state.get("pins", [])}
        if self.pins:
            self._install_step_wrapper()

    def close(self) -> None:
        """Remove the pins, the hook and the step wrapper; the scheduler is as it was given
        (a later manual change of the group's value stays). Idempotent."""
        self.pins.clear()
        self._hook.remove()
        if self._original_class is not None:
            self.scheduler.__class__ = self._original_class
            self._original_class = None
