"""Keras 3 (torch backend): one callback gives ``model.fit`` the whole of Retune.

``RetuneCallback(name, model=model, **init_kwargs)`` starts (or resumes) the run when it is
created, so ``callback.initial_epoch`` is known before ``fit`` starts::

    cb = RetuneCallback("digits", model=model, checkpoint_every_n_epochs=1)
    model.fit(x, y, epochs=10, initial_epoch=cb.initial_epoch, callbacks=[cb])

Keras must run on the torch backend: this module sets ``KERAS_BACKEND=torch`` when keras is
not imported yet and raises ``InvalidArgument`` when keras is already imported with another
backend. ``import retune`` never imports this module (nor keras).

What the callback does, at the edges only (the command path, validation, the audit and the
checkpoints are the shared core):

- records the model summary (layers, parameter counts) and ``optimizer.get_config()`` in the
  run's meta;
- calls ``run.step()`` once per real optimizer step (``on_train_batch_end``), with the
  per-batch value of every running-mean metric (loss, accuracy...): Keras' ``logs`` are means
  over the epoch so far; the batch's own value is computed directly from the metric's state,
  ``(total_b - total_{b-1}) / (count_b - count_{b-1})``, so a smaller last batch or sample
  weights are counted right. Metrics that are not means (AUC...) are logged as Keras reports
  them. Epoch and validation metrics are logged in ``on_epoch_end`` as ``epoch/NAME``;
- registers the optimizer's hyperparameters (``learning_rate``, ``beta_1``, ``beta_2``,
  ``weight_decay``, ``momentum``, ``rho``, ``epsilon``... as the optimizer has them) as
  knobs with their valid ranges; a ``LearningRateSchedule`` is wrapped in a schedule that
  multiplies it by a factor (``mode=rescale``) or returns a constant (``mode=constant``);
- turns ``stop`` into ``model.stop_training = True`` (the run ends ``stopped``);
- captures every model, metric and optimizer variable (seed-generator states included) as
  numpy arrays with the loop position (``run.add_state("keras", ...)``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from retune.errors import InvalidArgument, StopTraining


def _require_torch_backend() -> None:
    """Keras must use the torch backend: set it when keras is not imported yet, else check."""
    loaded = sys.modules.get("keras")
    if loaded is not None:
        backend = loaded.backend.backend()
        if backend != "torch":
            raise InvalidArgument(
                f"retune.integrations.keras needs the torch backend, but keras was imported with "
                f"{backend!r}; set KERAS_BACKEND=torch before importing keras"
            )
        return
    chosen = os.environ.setdefault("KERAS_BACKEND", "torch")
    if chosen != "torch":
        raise InvalidArgument(
            f"retune.integrations.keras needs the torch backend, but KERAS_BACKEND={chosen!r}; "
            "set KERAS_BACKEND=torch"
        )


_require_torch_backend()

import keras  # type: ignore[import-untyped]  # noqa: E402
import numpy as np  # noqa: E402

from retune import _json  # noqa: E402

__all__ = ["RetuneCallback", "RetuneSchedule", "batch_values"]

# the optimizer attributes Retune can change live, with their valid ranges (inclusive unless
# _EXCLUDED says an end is not: beta_1 in [0, 1), epsilon > 0, as torch's own bounds)
_HYPERPARAMETERS: dict[str, tuple[float | None, float | None]] = {
    "learning_rate": (0.0, None),
    "beta_1": (0.0, 1.0),
    "beta_2": (0.0, 1.0),
    "weight_decay": (0.0, None),
    "momentum": (0.0, 1.0),
    "rho": (0.0, 1.0),
    "epsilon": (0.0, None),
    "clipnorm": (0.0, None),
    "global_clipnorm": (0.0, None),
    "clipvalue": (0.0, None),
}
_EXCLUDED: dict[str, tuple[bool, bool]] = {
    "beta_1": (True, False),
    "beta_2": (True, False),
    "rho": (True, False),
    "epsilon": (False, True),
}


@keras.saving.register_keras_serializable(package="retune")
class RetuneSchedule(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """A user's schedule times ``factor`` (rescale), or ``constant`` when one is set."""

    def __init__(self, inner: Any, factor: float = 1.0, constant: float | None = None) -> None:
        self.inner = inner
        self.factor = float(factor)
        self.constant = constant

    def __call__(self, step: Any) -> Any:
        if self.constant is not None:
            return keras.ops.convert_to_tensor(self.constant, dtype=keras.backend.floatx())
        value = self.inner(step)
        return value if self.factor == 1.0 else value * self.factor

    def base(self, step: Any) -> float:
        """The user's schedule at ``step``, before Retune's factor or constant."""
        return float(keras.ops.convert_to_numpy(self.inner(step)))

    def get_config(self) -> dict[str, Any]:
        return {
            "inner": keras.saving.serialize_keras_object(self.inner),
            "factor": self.factor,
            "constant": self.constant,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RetuneSchedule:
        inner = keras.saving.deserialize_keras_object(config["inner"])
        return cls(inner, config["factor"], config["constant"])


def batch_values(
    before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]]
) -> dict[str, float]:
    """Each running mean's value for one batch from its ``(total, count)`` before and after.

    ``(total_after - total_before) / (count_after - count_before)``; a metric whose count did
    not move (nothing was added) is left out.
    """
    out: dict[str, float] = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count != count0:
            out[name] = (total - total0) / (count - count0)
    return out


def _flat_metrics(metrics: list[Any]) -> list[Any]:
    out: list[Any] = []
    for metric in metrics:
        inner = getattr(metric, "metrics", None)
        if isinstance(inner, list) and inner and not isinstance(metric, keras.metrics.Mean):
            out.extend(_flat_metrics(inner))
        else:
            out.append(metric)
    return out


def _model_summary(model: Any) -> dict[str, Any]:
    layers = []
    for layer in model._flatten_layers(include_self=False):
        layers.append(
            {
                "name": layer.name,
                "class": type(layer).__name__,
                "params": int(sum(int(np.prod(v.shape)) for v in layer.weights)),
                "trainable_params": int(
                    sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
                ),
            }
        )
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    total = sum(int(np.prod(v.shape)) for v in model.weights)
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "name": model.name,
        "parameters": total,
        "trainable_parameters": trainable,
        "non_trainable_parameters": total - trainable,
        "layers": layers,
    }


def _to_numpy(variable: Any) -> np.ndarray[Any, Any]:
    return np.array(keras.ops.convert_to_numpy(variable.value), copy=True)


class RetuneCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Records, controls and checkpoints one ``model.fit`` as Retune run ``name``.

    Create it after ``model.compile(...)`` (the model built): it calls ``retune.init(name,
    **init_kwargs)`` at once (``store=``, ``config=``, ``seed=``, ``checkpoint_every_n_steps=``,
    ``checkpoint_every_n_epochs=``, ``resume=``, ``guard=``...; not ``model``/``optimizer``/
    ``scheduler``, which are Keras here) and exposes the run as ``callback.run``. After a resume,
    ``callback.initial_epoch`` is where ``fit`` must start: pass it as ``initial_epoch=``.

    A resumed checkpoint taken at an epoch boundary continues exactly (with the same seed, on
    CPU: the same losses bit for bit). One taken mid-epoch (a stop command, a scheduled step
    checkpoint) continues at the start of the next epoch with the checkpointed variables: Keras
    cannot start ``fit`` in the middle of an epoch, so the rest of that epoch is skipped.

    A restore while ``fit`` runs (a ``restore`` command, applied at the next batch boundary)
    assigns every variable from the checkpoint (weights, optimizer slots and iterations, metric
    totals, seed-generator states), the schedule's factor/constant and the global step; Keras'
    own loop cannot be rewound from a callback, so it goes on from where it is: the next batch
    of the current epoch, then the remaining epochs (epoch numbers are not moved back).

    ``own_shuffle`` (default True): at every epoch start torch's global generator is seeded
    from the run's data seed and the epoch, so Keras' shuffled order of epoch ``e`` is the same
    in a resumed process as in an uninterrupted one.

    The run is finished in ``on_train_end`` (``stopped`` after a stop) unless
    ``finish_on_train_end=False`` (then call ``callback.run.finish()`` yourself).
    """

    def __init__(
        self,
        name: str,
        *,
        model: Any,
        own_shuffle: bool = True,
        finish_on_train_end: bool = True,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        import retune

        for key in ("model", "optimizer", "scheduler", "scaler", "meta"):
            if key in init_kwargs:
                raise InvalidArgument(f"RetuneCallback takes the Keras model, not {key}=")
        if not isinstance(model, keras.Model):
            raise InvalidArgument(f"model must be a keras.Model, got {type(model).__name__}")
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise InvalidArgument("compile the model (model.compile(optimizer=...)) first")
        if not model.built:
            raise InvalidArgument("build the model first (give it an Input or call build())")
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        current = optimizer._learning_rate
        schedule_type = keras.optimizers.schedules.LearningRateSchedule
        if not isinstance(current, (keras.Variable, schedule_type)):
            raise InvalidArgument(
                "the optimizer's learning_rate is a plain callable; use a float or a "
                "keras LearningRateSchedule so Retune can change it"
            )
        if isinstance(current, keras.optimizers.schedules.LearningRateSchedule) and not isinstance(
            current, RetuneSchedule
        ):
            optimizer._learning_rate = RetuneSchedule(current)
        self._keras_model = model
        self._optimizer = optimizer
        self._own_shuffle = own_shuffle
        self._finish = finish_on_train_end
        self._epoch = 0  # the epoch being trained (or next to train)
        self._batch = 0  # batches of it done
        self._steps: int | None = None
        self._iterations = 0  # optimizer steps seen (gradient accumulation: steps, not batches)
        self._means: list[Any] = []
        self._before: dict[str, tuple[float, float]] = {}
        self._started = False  # fit has built its metric variables
        self._pending: dict[str, Any] = {}  # resumed values of variables not built yet
        self.initial_epoch = 0
        """The epoch ``fit`` must start at (``initial_epoch=``): 0, or where a resume continues."""
        meta = {
            "model": _model_summary(model),
            "optimizer": {
                "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
                "config": _json.jsonable(optimizer.get_config()),
            },
            "framework": {"name": "keras", "version": keras.__version__, "backend": "torch"},
        }
        self.run = retune.init(name, meta=meta, **init_kwargs)
        try:
            self._register_knobs()
            self.run.add_state("keras", self._capture, self._load)
        except BaseException as e:
            self.run.finish("crashed", error=f"RetuneCallback setup failed: {e}")
            raise

    # -- tunables -----------------------------------------------------------------------------
    def _register_knobs(self) -> None:
        from retune.control import Knob

        optimizer = self._optimizer
        for name, bounds in _HYPERPARAMETERS.items():
            if name == "learning_rate":
                knob = self._learning_rate_knob(bounds)
            else:
                value = getattr(optimizer, name, None)
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue  # absent, None (a clipping not used) or not a number

                def get(name: str = name) -> float:
                    return float(getattr(self._optimizer, name))

                def set_(value: float, name: str = name) -> None:
                    setattr(self._optimizer, name, float(value))

                knob = Knob(name, get=get, set=set_, bounds=bounds, kind="float",
                            inclusive=_EXCLUDED.get(name, (True, True)))  # fmt: skip
            self.run.tunables.add(knob)
        self.run.publish_tunables()  # and their values on the node training now

    def _learning_rate_knob(self, bounds: tuple[float | None, float | None]) -> Any:
        from retune.control import Knob

        optimizer = self._optimizer
        schedule = optimizer._learning_rate
        if isinstance(schedule, RetuneSchedule):

            def get() -> float:
                return float(keras.ops.convert_to_numpy(schedule(optimizer.iterations)))

            def set_(value: float, mode: str | None) -> None:
                if mode is None:
                    return  # a restore: the "keras" state part puts factor and constant back
                if mode == "constant":
                    schedule.constant = float(value)
                    return
                base = schedule.base(optimizer.iterations)
                if base == 0.0:
                    raise InvalidArgument(
                        "the learning-rate schedule is 0 at this step, so it cannot be rescaled "
                        "to a new value; use mode constant"
                    )
                schedule.factor = float(value) / base
                schedule.constant = None

            return Knob(
                "learning_rate",
                get=get,
                set=set_,
                bounds=bounds,
                kind="float",
                modal=True,
                doc="the schedule times a factor (rescale) or a constant (constant)",
            )
        if not isinstance(schedule, keras.Variable):
            raise InvalidArgument(
                "the optimizer's learning_rate is a plain callable; use a float or a "
                "keras LearningRateSchedule so Retune can change it"
            )

        def get_var() -> float:
            return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

        def set_var(value: float) -> None:
            optimizer.learning_rate = float(value)

        return Knob("learning_rate", get=get_var, set=set_var, bounds=bounds, kind="float")

    # -- state --------------------------------------------------------------------------------
    def _variables(self) -> dict[str, Any]:
        """Every model, metric and optimizer variable by a unique key (its path, numbered
        when paths repeat). Seed-generator states are model variables."""
        model, seen, out = self._keras_model, set(), {}
        for variable in [*model.variables, *self._optimizer.variables, *model.metrics_variables]:
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            key, n = variable.path, 1
            while key in out:
                n += 1
                key = f"{variable.path}#{n}"
            out[key] = variable
        return out

    def _capture(self) -> dict[str, Any]:
        schedule = self._optimizer._learning_rate
        return {
            "epoch": self._epoch,
            "batch": self._batch,
            "iterations": self._iterations,
            "variables": {key: _to_numpy(v) for key, v in self._variables().items()},
            "before": {k: [t, c] for k, (t, c) in self._before.items()},
            "schedule": (
                {"factor": schedule.factor, "constant": schedule.constant}
                if isinstance(schedule, RetuneSchedule)
                else {}
            ),
        }

    def _assign(
        self, values: Mapping[str, Any], *, all_now: bool, partial: bool = False
    ) -> dict[str, Any]:
        """Assign checkpointed values by key, all or none; returns the ones whose variable
        does not exist yet (Keras builds metric variables when ``fit`` starts)."""
        live = self._variables()
        model_keys = {
            key
            for key, v in live.items()
            if not any(v is m for m in self._keras_model.metrics_variables)
        }
        missing = [] if partial else sorted(model_keys - set(values))
        if missing:
            raise InvalidArgument(
                f"the checkpoint has no value for {len(missing)} variable(s) of this model and "
                f"optimizer (e.g. {missing[0]}): it was taken with another model"
            )
        later = {key: value for key, value in values.items() if key not in live}
        if all_now and later:
            raise InvalidArgument(
                f"the checkpoint holds variables this model does not have: {sorted(later)[:3]}"
            )
        for key, value in values.items():
            if key in live and tuple(np.shape(value)) != tuple(live[key].shape):
                raise InvalidArgument(
                    f"variable {key} is {tuple(np.shape(value))} in the checkpoint, "
                    f"{tuple(live[key].shape)} here"
                )
        for key, value in values.items():
            if key in live:
                live[key].assign(np.asarray(value))
        return later

    def _load(self, state: dict[str, Any]) -> None:
        started = self._started
        self._pending = self._assign(state["variables"], all_now=started)
        schedule = self._optimizer._learning_rate
        saved = state.get("schedule") or {}
        if isinstance(schedule, RetuneSchedule) and saved:
            schedule.factor = float(saved["factor"])
            constant = saved["constant"]
            schedule.constant = None if constant is None else float(constant)
        self._iterations = int(state["iterations"])
        self._before = {k: (float(t), float(c)) for k, (t, c) in state["before"].items()}
        if not started:  # a resume: fit has not started; it starts at initial_epoch
            self._epoch = int(state["epoch"])
            self._batch = int(state["batch"])
            self.initial_epoch = self._epoch + (1 if self._batch > 0 else 0)
        # an in-process restore: Keras' loop goes on from where it is (see the class doc)
        self._sync_loop()

    def _sync_loop(self) -> None:
        self.run.loop.epoch = self._epoch
        self.run.loop.batch = self._batch

    # -- metrics ------------------------------------------------------------------------------
    def _mean_state(self) -> dict[str, tuple[float, float]]:
        out = {}
        for metric in self._means:
            out[metric.name] = (float(metric.total.value), float(metric.count.value))
        return out

    def _current_lr(self) -> float:
        return float(self._optimizer.learning_rate)

    # -- the Keras hooks ----------------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._started = True
        if self._pending:
            pending, self._pending = self._pending, {}
            self._assign(pending, all_now=True, partial=True)
        self._steps = self.params.get("steps") if self.params else None
        self._iterations = int(keras.ops.convert_to_numpy(self._optimizer.iterations))

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        if epoch != self._epoch or self._batch:
            self._epoch, self._batch = epoch, 0
        self._sync_loop()
        self._before = {}
        self._means = [
            m
            for m in _flat_metrics(list(self._keras_model.metrics))
            if isinstance(m, keras.metrics.Mean)
        ]
        if self._own_shuffle:
            import torch

            torch.manual_seed((self.run.loop.data_seed * 1_000_003 + epoch) % 2**63)

    def on_train_batch_end(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._batch += 1
        self._sync_loop()
        iterations = int(self._optimizer.iterations)
        after = self._mean_state()
        if iterations == self._iterations:
            return  # gradient accumulation: no optimizer step yet (the means keep counting)
        self._iterations = iterations
        values: dict[str, float] = {
            name: float(value)
            for name, value in (logs or {}).items()
            if _is_number(value) and name not in after
        }
        values.update(batch_values(self._before, after))
        values["learning_rate"] = lr = self._current_lr()  # the value the next step will use
        self.run.tunables.observe("learning_rate", lr)  # retune get shows a schedule move
        self._before = after
        try:
            self.run.step(values)
        except StopTraining:
            self._keras_model.stop_training = True
            return
        if self.run.should_stop:
            self._keras_model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        epoch_values = {
            f"epoch/{name}": float(value)
            for name, value in (logs or {}).items()
            if _is_number(value)
        }
        self.run.log({**epoch_values, "epoch": epoch})
        if self.run.should_stop:
            return  # a stop command: its checkpoint holds the position (an EarlyStopping
            # of the user's ends fit normally: the epoch is counted and checkpointed)
        self._epoch, self._batch = epoch + 1, 0
        self._sync_loop()
        every = self.run.checkpointer.policy.every_n_epochs
        if every and (epoch + 1) % every == 0:
            self.run.checkpointer.save_async("schedule")  # as the core's: beside training

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._finish:
            self.run.finish()


def _is_number(value: Any) -> bool:
    if isinstance(value, (str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
