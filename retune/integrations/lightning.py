"""Retune for Lightning: one callback, ``Trainer(callbacks=[RetuneCallback(name="mnist")])``.

Imported only when used (``import retune`` never imports lightning). The callback adapts the
edges only; the command path, validation, audit, nodes and checkpoints are Retune's core:

* **config**: the module's ``hparams`` (``save_hyperparameters``), the trainer's settings
  (precision, ``accumulate_grad_batches``, ``max_epochs``/``max_steps``, devices, ...) and every
  optimizer and scheduler (class, param groups, interval, frequency).
* **step boundary**: ``on_train_batch_end`` after a *real* optimizer step (``trainer.global_step``
  advanced), so gradient accumulation does not multiply steps. There ``run.step()`` records what
  the module logged with ``self.log(..., on_step=True)`` plus ``lr`` per param group, and applies
  commands: ``set``/``scale`` through the core (the first optimizer's hyperparameters, with
  scheduler-aware ``lr`` for the scheduler that ``configure_optimizers`` returned for it: Lightning
  steps that same object), ``pause`` holds, ``stop`` sets ``trainer.should_stop`` so ``fit``
  returns cleanly and the run ends ``stopped``.
* **checkpoints**: Retune checkpoints (model, optimizer, scheduler, RNG) plus the part
  ``lightning``: the fit loop's progress (``fit_loop.state_dict()``: plain counters), the RNG
  state the current epoch's data order was drawn from and how many of its batches were
  trained, the other callbacks' states (those that are plain data) and the state of every
  further optimizer and scheduler. ``checkpoint_every_n_epochs`` saves at each n-th epoch end.
* **resume** (``retune resume RUN -- python train.py``): the first ``fit`` resumes inside
  ``on_fit_start``, before Lightning's loop starts, and loads the fit loop's progress the way
  Lightning's own ``ckpt_path=`` does; from a checkpoint inside an epoch it also redraws that
  epoch's data order and skips the batches already trained (Lightning alone would replay the
  epoch of a plain ``DataLoader`` from its first batch). Bit-exact on CPU, mid-epoch included.
* **restore** while ``fit`` runs: rewinds in place at the step boundary: the core puts back
  model, optimizer, scheduler and RNG; the callback loads every loop counter (epoch, batch,
  global step) and rebuilds the epoch's data iterator at the checkpoint's position, so the
  new branch continues exactly as the original did from there.

Limits (see docs/integrations.md): one process (``world_size`` 1); only the first optimizer is
tunable; epoch means (``on_epoch=True``) of the epoch a resume cuts cover its batches after the
resume, those of the epoch a restore lands in also the batches of the branch it left; a dataset
whose ``__getitem__`` draws from the global RNG is exact only from epoch ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L  # noqa: N812 (the name Lightning documents)
import torch
from lightning.pytorch.loops.loop import _Loop

from retune import _json
from retune.errors import InvalidArgument, StopTraining
from retune.session._state import _rng_state, _set_rng_state

__all__ = ["RetuneCallback"]

_LOOP_PART = "lightning"


def _number(value: Any) -> float | None:
    """A float for a one-element tensor or a real number, else None (not logged)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        return float(value.detach().cpu().item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _is_data(value: Any) -> bool:
    """Plain data a checkpoint may hold: numbers, strings, None, tensors, lists, dicts."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _is_data(v) for k, v in value.items())
    return False


def trainer_settings(trainer: L.Trainer) -> dict[str, Any]:
    """The trainer's settings that shape training, as JSON-ready data."""
    strategy = trainer.strategy
    settings: dict[str, Any] = _json.jsonable(
        {
            "precision": str(trainer.precision),
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "max_epochs": trainer.max_epochs,
            "min_epochs": trainer.min_epochs,
            "max_steps": trainer.max_steps,
            "min_steps": trainer.min_steps,
            "devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "accelerator": type(trainer.accelerator).__name__,
            "strategy": type(strategy).__name__,
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
            "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
            "val_check_interval": trainer.val_check_interval,
            "deterministic": bool(torch.are_deterministic_algorithms_enabled()),
            "lightning_version": L.__version__,
        }
    )
    return settings


def optimizer_configs(trainer: L.Trainer) -> dict[str, Any]:
    """Every optimizer and scheduler ``configure_optimizers`` returned, with its settings."""
    from retune.integrations import pytorch

    optimizers = [pytorch.optimizer_summary(o) for o in trainer.optimizers]
    schedulers = []
    for config in trainer.lr_scheduler_configs:
        summary = pytorch.scheduler_summary(config.scheduler)
        owner = next(
            (i for i, o in enumerate(trainer.optimizers) if o is config.scheduler.optimizer), None
        )
        summary.update(
            interval=config.interval,
            frequency=config.frequency,
            monitor=config.monitor,
            strict=config.strict,
            name=config.name,
            optimizer=owner,
        )
        schedulers.append(summary)
    configs: dict[str, Any] = _json.jsonable({"optimizers": optimizers, "schedulers": schedulers})
    return configs


class RetuneCallback(L.Callback):
    """Record, control, checkpoint and resume a Lightning ``fit`` as a Retune run.

    ``name`` and ``init_kwargs`` go to :func:`retune.init` (``store=``, ``seed=``,
    ``checkpoint_every_n_steps=``, ``checkpoint_every_n_epochs=``, ``config=``, ``guard=``,
    ...), which runs at the first ``on_fit_start``, once the optimizers exist; ``model``,
    ``optimizer`` and ``scheduler`` are the module, the first optimizer and its first
    scheduler, and may not be given. The run is ``callback.run`` from then on; it ends when
    ``fit`` ends: ``finished``, ``stopped`` (a ``stop`` command) or ``crashed`` (an exception,
    with its traceback).

    Only the first optimizer's hyperparameters are tunable; further optimizers and schedulers
    are recorded and checkpointed. Not supported: more than one device (the run would be
    recorded once per process).
    """

    def __init__(self, name: str, **init_kwargs: Any) -> None:
        taken = {"model", "optimizer", "scheduler"} & set(init_kwargs)
        if taken:
            raise InvalidArgument(
                f"RetuneCallback takes the model, optimizer and scheduler from the trainer; "
                f"remove {', '.join(sorted(taken))}"
            )
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument("RetuneCallback needs a non-empty run name")
        self.name = name
        self.init_kwargs = init_kwargs
        self.run: Any = None
        self._trainer: L.Trainer | None = None
        self._last_step = 0  # trainer.global_step at the last run.step()
        self._fitting = False  # inside fit's training loop: a restore rewinds in place
        self._every_n_epochs = int(init_kwargs.get("checkpoint_every_n_epochs") or 0)
        self.restores = 0  # in-place restores applied during this fit
        # the RNG states just before this epoch's data iterator drew its order, and what a
        # mid-epoch resume still has to do once Lightning has built that iterator
        self._epoch_rng: dict[str, Any] | None = None
        self._skip_batches = 0
        self._step_rng: dict[str, Any] | None = None
        self._epoch_end_done = False  # a restore to an epoch's end: that end was recorded

    @property
    def state_key(self) -> str:
        return f"RetuneCallback[{self.name}]"

    # -- starting ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start (or resume) the run once the optimizers and schedulers exist."""
        self._trainer = trainer
        if self.run is not None and not self.run.ended:
            return
        if trainer.world_size > 1:
            raise InvalidArgument(
                f"RetuneCallback records one process; this fit runs {trainer.world_size}"
                " (devices x nodes): use one device"
            )
        import retune

        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        scheduler = None
        for scheduler_config in trainer.lr_scheduler_configs:
            if optimizer is not None and scheduler_config.scheduler.optimizer is optimizer:
                scheduler = scheduler_config.scheduler
                break
        self._primary = (optimizer, scheduler)
        user_config = dict(self.init_kwargs.get("config") or {})
        config = {
            **user_config,
            "hparams": _json.jsonable(dict(pl_module.hparams)),
            "trainer": trainer_settings(trainer),
            **optimizer_configs(trainer),
        }
        kwargs = {**self.init_kwargs, "config": config}
        self.run = retune.init(
            self.name, model=pl_module, optimizer=optimizer, scheduler=scheduler, **kwargs
        )
        # a resume loads the checkpoint inside init; this part's value comes back now, through
        # _load, before Lightning's loop starts (as its own ckpt_path= restore would)
        self.run.add_state(_LOOP_PART, self._capture, self._load)
        self._last_step = trainer.global_step
        self._sync_loop()
        if self._epoch_rng is None:  # the first epoch's order is drawn in fit's setup_data
            self._epoch_rng = _rng_state()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A mid-epoch resume: skip the batches of the epoch already trained (the iterator
        drew the epoch's order from the epoch's RNG state), then the step's RNG state."""
        self._fitting = True
        self._last_step = trainer.global_step
        if self._step_rng is not None:
            fetcher = trainer.fit_loop._data_fetcher
            if fetcher is not None and self._skip_batches:
                for _ in range(self._skip_batches):
                    next(fetcher)
                fetcher.fetched -= self._skip_batches  # Lightning adds the restored count
            _set_rng_state(self._step_rng)
            self._step_rng, self._skip_batches = None, 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the RNG states this epoch's data order is drawn from (Lightning creates the
        epoch's iterator right after this hook, under exactly this condition)."""
        loop = trainer.fit_loop
        if trainer.current_epoch > 0 and not loop.is_resuming and not loop.epoch_loop.restarting:
            self._epoch_rng = _rng_state()

    # -- the step boundary -------------------------------------------------------------------
    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After a real optimizer step: record the step's metrics and apply commands."""
        run = self.run
        if run is None or run.ended or trainer.global_step == self._last_step:
            return  # an accumulating micro-batch (or no run): not a step boundary
        self._sync_loop()
        run.loop.batch = batch_idx + 1
        metrics = self._step_metrics(trainer)
        try:
            run.step(metrics)
        except StopTraining:
            trainer.should_stop = True
        self._last_step = trainer.global_step

    def _step_metrics(self, trainer: L.Trainer) -> dict[str, float]:
        """What the module logged for this step (``on_step=True``) and ``lr`` per group."""
        metrics = {
            key.removesuffix("_step"): value
            for key, value in self._loop_metrics(trainer, on_step=True).items()
        }
        for index, optimizer in enumerate(trainer.optimizers):
            groups = optimizer.param_groups
            for g, group in enumerate(groups):
                lr = _number(group.get("lr"))
                if lr is None:
                    continue
                suffix = "" if len(groups) == 1 else f"/{g}"
                prefix = "lr" if index == 0 else f"lr-opt{index}"
                metrics[f"{prefix}{suffix}"] = lr
        return metrics

    # -- epochs and validation ---------------------------------------------------------------
    @staticmethod
    def _loop_metrics(trainer: L.Trainer, *, on_step: bool) -> dict[str, float]:
        """What the active loop (training or validation) logged, step or epoch level."""
        results = trainer._results
        if results is None:
            return {}
        out: dict[str, float] = {}
        for key, value in results.metrics(on_step)["callback"].items():
            number = _number(value)
            if number is not None:
                out[key] = number
        return out

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's metrics; the scheduled epoch checkpoint (a resume from it is exact)."""
        run = self.run
        if run is None or run.ended:
            return
        if self._epoch_end_done:  # restored to this epoch's end: logged and saved back then
            self._epoch_end_done = False
            run.loop.epoch, run.loop.batch = trainer.current_epoch + 1, 0
            return
        batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        whole = batches >= trainer.num_training_batches
        values = self._loop_metrics(trainer, on_step=False)
        values = {k: v for k, v in values.items() if f"{k}_epoch" not in values}  # forked: once
        if values and (whole or not run.flags.stop_requested):
            run.log(values)  # not the partial means of an epoch a stop cut short
        if run.flags.stop_requested or trainer.should_stop:
            # stopped at the epoch's last batch: this epoch-end state resumes exactly (the
            # stop's own checkpoint, inside the epoch, would make Lightning skip the epoch end)
            if run.flags.stop_requested and whole:
                run.checkpointer.save("stop")
            return
        run.loop.epoch = trainer.current_epoch + 1
        run.loop.batch = 0
        if self._every_n_epochs and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
            run.checkpointer.save_async("schedule")  # as the core's: written beside training

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log what validation logged (epoch level, module hooks included) at the current
        step; not the sanity check."""
        run = self.run
        if run is None or run.ended or trainer.sanity_checking or not self._fitting:
            return
        values = self._loop_metrics(trainer, on_step=False)
        if values:
            run.log(values)

    # -- state -------------------------------------------------------------------------------
    def _sync_loop(self) -> None:
        trainer = self._trainer
        if self.run is not None and trainer is not None:
            self.run.loop.epoch = trainer.current_epoch

    def _capture(self) -> dict[str, Any]:
        """The ``lightning`` part of a checkpoint: loop progress, callbacks, other optimizers."""
        trainer = self._trainer
        assert trainer is not None
        callbacks: dict[str, Any] = {}
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if callback is self:
                continue
            state = callback.state_dict()
            if state and _is_data(state):
                callbacks[callback.state_key] = state
        primary_opt, primary_sched = self._primary
        return {
            "fit_loop": trainer.fit_loop.state_dict(),
            "global_step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "epoch_batches": trainer.fit_loop.epoch_loop.batch_progress.current.ready,
            "epoch_total": _json.jsonable(trainer.num_training_batches),
            "epoch_rng": self._epoch_rng,
            "callbacks": callbacks,
            "optimizers": [o.state_dict() for o in trainer.optimizers if o is not primary_opt],
            "schedulers": [
                c.scheduler.state_dict()
                for c in trainer.lr_scheduler_configs
                if c.scheduler is not primary_sched
            ],
        }

    def _load(self, value: Any) -> None:
        """Put the ``lightning`` part back: before the loop starts (a resume) Lightning's fit
        loop progress is loaded whole; while fit runs (a restore) the global step is rewound."""
        trainer = self._trainer
        assert trainer is not None
        if not isinstance(value, Mapping) or not isinstance(value.get("fit_loop"), Mapping):
            raise InvalidArgument("the checkpoint's Lightning state is not a dict")
        primary_opt, primary_sched = self._primary
        others = [o for o in trainer.optimizers if o is not primary_opt]
        for optimizer, state in zip(others, value.get("optimizers", []), strict=False):
            optimizer.load_state_dict(state)
        configs = trainer.lr_scheduler_configs
        scheds = [c.scheduler for c in configs if c.scheduler is not primary_sched]
        for scheduler, state in zip(scheds, value.get("schedulers", []), strict=False):
            scheduler.load_state_dict(state)
        loop = value["fit_loop"]
        if not self._fitting:
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                state = value.get("callbacks", {}).get(callback.state_key)
                if state is not None and callback is not self:
                    callback.load_state_dict(state)
            trainer.fit_loop.load_state_dict(dict(loop))
            self._resume_data_position(trainer, value)
            return
        self.restores += 1
        self._rewind(trainer, value)
        self._last_step = trainer.global_step
        self._sync_loop()

    def _rewind(self, trainer: L.Trainer, value: Mapping[str, Any]) -> None:
        """A restore while fit runs (inside ``on_train_batch_end``, the model, optimizer,
        scheduler and RNG already back): put Lightning's loop where the checkpoint was.

        Every progress counter is loaded in place (no restart mode: the loop is running).
        Inside an epoch, the epoch's iterator is rebuilt from the epoch's RNG state and the
        trained batches skipped, so the next batch is the one the checkpoint would see next. At
        an epoch's end, this epoch loop ends after the current batch and what was left of the
        epoch end (the epoch-interval scheduler step, the epoch counter) runs once more, without
        validation and without logging the epoch again (both were done before the checkpoint).
        """
        fit_loop = trainer.fit_loop
        epoch_loop = fit_loop.epoch_loop
        step_rng = _rng_state()
        saved = dict(value["fit_loop"])
        fit_loop.load_state_dict(saved)
        fit_loop.restarting = False  # the setter reaches every child loop
        pending: list[Any] = [fit_loop]
        while pending:
            loop = pending.pop()
            loop._loaded_from_state_dict = False
            loop._resuming_from_checkpoint = False
            pending.extend(v for v in vars(loop).values() if isinstance(v, _Loop))
        fit_loop._combined_loader_states_to_load = []
        fetcher = fit_loop._data_fetcher
        progress = saved.get("epoch_progress", {}).get("current", {})
        if progress.get("processed", 0) > progress.get("completed", 0):  # at an epoch's end
            for counters in (fit_loop.epoch_progress, epoch_loop.batch_progress):
                # the loop increments these once more after this hook / this epoch loop
                name = "processed" if counters is fit_loop.epoch_progress else "completed"
                for tracker in (counters.current, counters.total):
                    setattr(tracker, name, getattr(tracker, name) - 1)
            epoch_loop._batches_that_stepped -= 1
            epoch_loop._skip_next_val = True
            self._epoch_end_done = True
            if fetcher is not None:
                fetcher.done = True
            return
        self._epoch_end_done = False
        epoch_rng, done = value.get("epoch_rng"), value.get("epoch_batches")
        if fetcher is None or not isinstance(epoch_rng, Mapping) or type(done) is not int:
            raise InvalidArgument("the checkpoint does not say where its epoch's data was")
        self._epoch_rng = dict(epoch_rng)
        _set_rng_state(self._epoch_rng)
        iter(fetcher)
        for _ in range(done):
            next(fetcher)
        _set_rng_state(step_rng)

    def _resume_data_position(self, trainer: L.Trainer, value: Mapping[str, Any]) -> None:
        """Before fit builds the data iterator: a checkpoint taken inside an epoch puts the
        epoch's RNG states in place (so the iterator draws the same order) and skips the
        batches already trained in :meth:`on_train_start`. A checkpoint at an epoch's end
        (``on_train_epoch_end``: the epoch is processed, not yet completed) or after its last
        batch needs nothing: the next epoch's order is drawn from the restored RNG."""
        epoch_rng, done = value.get("epoch_rng"), value.get("epoch_batches")
        total = value.get("epoch_total")
        progress = value["fit_loop"].get("epoch_progress", {}).get("current", {})
        if not isinstance(progress, Mapping) or not isinstance(epoch_rng, Mapping):
            return
        if progress.get("processed", 0) > progress.get("completed", 0):
            return  # captured in on_train_epoch_end
        if type(done) is not int or done <= 0 or (isinstance(total, int) and done >= total):
            return
        self._step_rng = _rng_state()
        self._skip_batches = done
        self._epoch_rng = dict(epoch_rng)
        _set_rng_state(self._epoch_rng)

    # -- ending ------------------------------------------------------------------------------
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fitting = False
        if self.run is not None and not self.run.ended:
            self.run.finish()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._fitting = False
        run = self.run
        if run is None or run.ended:
            return
        if isinstance(exception, KeyboardInterrupt):
            run.finish("stopped", error="interrupted (KeyboardInterrupt)")
        else:
            import traceback

            run.finish("crashed", error="".join(traceback.format_exception(exception)))

    def state_dict(self) -> dict[str, Any]:
        """What Lightning's own checkpoints keep of this callback: the run it records."""
        run = self.run
        return {} if run is None else {"run_id": run.id, "step": run.global_step}
