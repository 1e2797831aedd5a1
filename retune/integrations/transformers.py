"""Retune for the Hugging Face ``Trainer``: ``Trainer(callbacks=[RetuneCallback(...)])``.

Imported only by the user (``from retune.integrations.transformers import RetuneCallback``):
``import retune`` never imports transformers. transformers itself is imported lazily.

What the callback does, event by event:

- ``on_train_begin`` (the optimizer and LR scheduler exist by then): ``retune.init`` with the
  model, the real torch optimizer (under accelerate's wrapper) and the Trainer's scheduler;
  records ``TrainingArguments.to_dict()`` (every ``*token*`` entry dropped) and the model
  config as the run's config. Under ``retune resume RUN -- python script.py`` the init loads
  Retune's checkpoint: model, optimizer, scheduler, RNG, ``TrainerState`` fields and the data
  position; HF's own ``resume_from_checkpoint`` (which unpickles) is never used.
- A forward hook on the model keeps the ``loss`` of every training forward pass; each real
  optimizer step (``on_step_end``) calls ``run.step`` with the mean loss of its micro-batches
  and the lr of every param group. Commands are applied there; ``stop`` sets
  ``control.should_training_stop`` (the run ends ``stopped``, checkpointed at that step).
- The data position: the Trainer seeds each epoch's order with ``seed + epoch`` (accelerate's
  seedable sampler). A resume or a restore at global step ``k`` (data epoch ``d``, batch ``j``
  of it) maps the Trainer's next epoch to data epoch ``d`` and skips its first ``j`` batches
  with the loader's own ``skip_batches`` (the mechanism of accelerate's
  ``skip_first_batches``); the RNG state of step ``k`` is put back right before the first
  training step, after the skipped batches were drawn, as the Trainer's own resume does.
- An in-process ``restore`` (CLI, dashboard, ``retune.connect``) rewinds in place: the live
  objects and ``TrainerState`` are put back at once, the current epoch loop is ended, and the
  next one continues from the restored data position. The Trainer's epoch loop is fixed when
  ``train()`` starts, so after a restore the call runs the epochs it has left and then ends
  (possibly before ``max_steps``); ``retune resume`` continues from there.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np

from retune.errors import InvalidArgument, StopTraining

__all__ = ["RetuneCallback", "training_config"]

_STATE_PART = "transformers"

log = logging.getLogger("retune")


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


def training_config(args: Any, model: Any) -> dict[str, Any]:
    """``{"training_arguments": ..., "model_config": ...}``: what the run records as config.

    Every argument whose name contains ``token`` (hub tokens) is dropped, never recorded.
    """
    arguments = {key: value for key, value in args.to_dict().items() if "token" not in key.lower()}
    config: dict[str, Any] = {"training_arguments": arguments}
    model_config = getattr(model, "config", None)
    if model_config is not None and hasattr(model_config, "to_dict"):
        config["model_config"] = model_config.to_dict()
        config["model_class"] = type(model).__name__
    return config


def _rng_now() -> dict[str, Any]:
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def _set_rng(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _loss_of(output: Any) -> Any:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if loss is None and isinstance(output, (tuple, list)) and output:
        first = output[0]
        if getattr(first, "ndim", None) == 0:
            loss = first
    return loss


def _make_callback_class() -> type:
    base = _trainer_callback_base()

    class _RetuneCallback(base):  # type: ignore[misc, valid-type]
        __doc__ = RetuneCallback.__doc__

        def __init__(self, name: str, **init_kwargs: Any) -> None:
            if not isinstance(name, str) or not name.strip():
                raise InvalidArgument("RetuneCallback needs a non-empty run name")
            for reserved in ("model", "optimizer", "scheduler"):
                if reserved in init_kwargs:
                    raise InvalidArgument(
                        f"RetuneCallback takes {reserved} from the Trainer; do not pass {reserved}="
                    )
            self.name = name
            self.init_kwargs = init_kwargs
            self.run: Any = None
            self._state: Any = None  # the TrainerState of the running train()
            self._control: Any = None
            self._loader: Any = None
            self._hook: Any = None
            self._losses: list[Any] = []
            self._summed = False  # the model's losses are parts of the step's (sum them)
            self._steps_in_epoch = 0  # batches per epoch (a micro-batch each)
            self._accumulation = 1
            self._data_epoch = 0  # the data epoch the Trainer is in now
            self._hf_epoch = -1  # the Trainer's own epoch counter (on_epoch_begin)
            self._offset = 0  # data epoch = the Trainer's epoch + offset
            self._batch = 0  # batches of the data epoch done (at a step end)
            self._skip_next = 0  # batches the next epoch skips
            self._skipped = 0  # batches the current epoch skipped
            self._rng_at_step: dict[str, Any] | None = None  # put back before the next step
            self._rewound = False  # a restore moved the position: end this epoch loop

        # -- the run ------------------------------------------------------------------------
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import retune

            model = kwargs["model"]
            optimizer = kwargs.get("optimizer")
            optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
            self._loader = kwargs.get("train_dataloader")
            self._state, self._control = state, control
            self._accumulation = max(1, int(args.gradient_accumulation_steps))
            self._steps_in_epoch = len(self._loader) if self._loader is not None else 0
            self._hf_epoch, self._data_epoch, self._offset = -1, 0, 0
            self._batch, self._skip_next, self._skipped = 0, 0, 0
            self._losses, self._rng_at_step, self._rewound = [], None, False
            extra = dict(self.init_kwargs)
            config = {**training_config(args, model), **(extra.pop("config", None) or {})}
            self.run = retune.init(
                self.name,
                model=model,
                optimizer=optimizer,
                scheduler=kwargs.get("lr_scheduler"),
                config=config,
                **extra,
            )
            self.run.add_state(_STATE_PART, self._capture, self._load)
            self._hook = model.register_forward_hook(self._keep_loss, with_kwargs=True)

        def _keep_loss(self, module: Any, inputs: Any, kwargs: Any, output: Any) -> None:
            if module.training:
                loss = _loss_of(output)
                if loss is not None:
                    self._losses.append(loss.detach())
                    # a loss normalised by the items of the whole step: the step's is the sum
                    self._summed = kwargs.get("num_items_in_batch") is not None

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._hf_epoch += 1
            self._rewound = False
            if self._steps_in_epoch and self._batch >= self._steps_in_epoch:
                self._data_epoch += 1  # the previous data epoch is done
                self._batch = 0
            self._offset = self._data_epoch - self._hf_epoch
            self._skipped, self._skip_next = self._skip_next, 0
            self._position_loader()

        def _position_loader(self) -> None:
            loader = self._loader
            if loader is None:
                return
            if self._skipped and not hasattr(loader, "skip_batches"):
                raise InvalidArgument(
                    f"the Trainer's data loader ({type(loader).__name__}) cannot skip batches; "
                    "resume and restore need accelerate's DataLoaderShard"
                )
            if hasattr(loader, "skip_batches"):
                loader.skip_batches = self._skipped
            if self._skipped and self._steps_in_epoch % self._accumulation:
                log.warning(
                    "retune: %d batches per epoch is not a multiple of gradient_accumulation_steps"
                    " (%d): the Trainer's last accumulation of this resumed epoch may not match "
                    "the uninterrupted run",
                    self._steps_in_epoch,
                    self._accumulation,
                )
            sampler = _seedable_sampler(loader)
            if sampler is not None and not getattr(sampler, "_retune_wrapped", False):
                original = sampler.set_epoch
                callback = self

                def set_epoch(epoch: int) -> None:
                    original(epoch + callback._offset)

                sampler.set_epoch = set_epoch
                sampler._retune_wrapped = True
            elif sampler is None and self._offset:
                raise InvalidArgument(
                    "the Trainer's sampler is not accelerate's seedable sampler: the data order "
                    "of a resumed epoch cannot be reproduced (keep use_seedable_sampler=True)"
                )

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._rng_at_step is not None:  # after the skipped batches, as HF does
                _set_rng(self._rng_at_step)
                self._rng_at_step = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            run = self.run
            if run is None:
                return
            self._batch = min(
                self._batch + self._accumulation, self._steps_in_epoch or self._batch + 1
            )
            if self._steps_in_epoch:
                state.epoch = self._data_epoch + self._batch / self._steps_in_epoch
            metrics: dict[str, float] = {}
            losses, self._losses = self._losses, []
            if losses:
                total = sum(float(x) for x in losses)
                metrics["loss"] = total if self._summed else total / len(losses)
            groups = run.optimizer.param_groups if run.optimizer is not None else []
            for index, group in enumerate(groups):
                metrics["lr" if index == 0 else f"lr/{index}"] = float(group["lr"])
            metrics["epoch"] = float(state.epoch or 0.0)
            try:
                run.step(metrics)
            except StopTraining:
                control.should_training_stop = True
                return
            if run.should_stop:
                control.should_training_stop = True
            if self._rewound:
                control.should_epoch_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._end("finished")

        def _end(self, status: str) -> None:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            run, self.run = self.run, None
            if run is not None and not run.ended:
                run.finish(status)

        # -- the checkpointed state ------------------------------------------------------------
        def _capture(self) -> dict[str, Any]:
            state = self._state
            epoch, batch = self._data_epoch, self._batch
            if self._steps_in_epoch and batch >= self._steps_in_epoch:
                epoch, batch = epoch + 1, 0
            return {
                "global_step": int(state.global_step),
                "epoch": float(state.epoch or 0.0),
                "data_epoch": int(epoch),
                "batch": int(batch),
                "total_flos": float(state.total_flos),
                "num_input_tokens_seen": int(state.num_input_tokens_seen),
                "best_metric": state.best_metric,
                "best_global_step": state.best_global_step,
            }

        def _load(self, value: dict[str, Any]) -> None:
            state = self._state
            state.global_step = int(value["global_step"])
            state.epoch = float(value["epoch"])
            state.total_flos = float(value["total_flos"])
            state.num_input_tokens_seen = int(value["num_input_tokens_seen"])
            state.best_metric = value.get("best_metric")
            state.best_global_step = value.get("best_global_step")
            self._losses = []
            self._data_epoch = int(value["data_epoch"])
            self._batch = int(value["batch"])
            self._skip_next = self._batch
            self._rng_at_step = _rng_now() if self._batch else None
            if self._hf_epoch >= 0:  # in-process restore: end this epoch loop, continue
                self._rewound = True

    return _RetuneCallback


def _seedable_sampler(loader: Any) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    for candidate in (
        getattr(batch_sampler, "sampler", None),
        getattr(getattr(batch_sampler, "batch_sampler", None), "sampler", None),
    ):
        if candidate is not None and type(candidate).__name__ == "SeedableRandomSampler":
            return candidate
    return None


_CLASS: type | None = None


class RetuneCallback:
    """A ``transformers.TrainerCallback`` that records, controls and checkpoints the Trainer.

    ``RetuneCallback(name, **init_kwargs)``: ``init_kwargs`` go to :func:`retune.init`
    (``store=``, ``checkpoint_every_n_steps=``, ``guard=``, ``config=`` merged into the config,
    ...); the model, optimizer and scheduler come from the Trainer. ``callback.run`` is the
    :class:`retune.Run` while ``train()`` runs. See the module docstring for what each event
    does and docs/integrations.md for the guarantees.
    """

    def __new__(cls, name: str, **init_kwargs: Any) -> Any:
        global _CLASS
        if _CLASS is None:
            _CLASS = _make_callback_class()
        return _CLASS(name, **init_kwargs)
