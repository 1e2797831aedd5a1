"""``retune.init``: open the store, record what the process is, start (or resume) a run."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from retune import _json
from retune.errors import InvalidArgument, RunNotFound
from retune.session import _capture
from retune.session._checkpointer import CheckpointPolicy
from retune.session._restore import resume_from
from retune.session._run import Run
from retune.session._snapshot import RunSnapshot, read_snapshot
from retune.store import Store, objects_url_for, open_store

__all__ = ["RESUME_FROM_ENV", "RESUME_RUN_ENV", "init", "load"]

RESUME_RUN_ENV = "RETUNE_RESUME_RUN"
RESUME_FROM_ENV = "RETUNE_RESUME_FROM"


def _describe(model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Model/optimizer/scheduler summaries (imports torch only when given one)."""
    meta: dict[str, Any] = {}
    if model is None and optimizer is None and scheduler is None:
        return meta
    from retune.integrations import pytorch

    if model is not None:
        meta["model"] = pytorch.model_summary(model)
    if optimizer is not None:
        meta["optimizer"] = pytorch.optimizer_summary(optimizer)
    if scheduler is not None:
        meta["scheduler"] = pytorch.scheduler_summary(scheduler)
    return meta


def init(
    name: str,
    *,
    model: Any = None,
    optimizer: Any = None,
    scheduler: Any = None,
    scaler: Any = None,
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    store: str | Store | None = None,
    objects: str | None = None,
    resume: str | None = None,
    checkpoint_every_n_steps: int | None = None,
    checkpoint_every_n_epochs: int | None = None,
    keep_last: int = 5,
    flush_interval: float = 1.0,
    poll_interval: float = 0.05,
    ui: bool | int = False,
) -> Run:
    """Start recording a training run (or resume one) and return its handle.

    Records automatically: the model summary (module tree, parameter counts, dtypes, devices),
    the optimizer class and each param group's hyperparameters, the scheduler class and state,
    ``config``, seeds (``seed`` seeds python, numpy and torch when given), the environment,
    the git commit and dirty flag of the calling script's repository, the command line, host
    and start time. ``store`` is a URL, a path, or an open :class:`~retune.store.Store`
    (default: ``$RETUNE_STORE`` or ``./.retune/retune.db``); checkpoint blobs go to ``objects``
    (any fsspec URL; default ``objects/`` beside the SQLite file).

    ``resume="latest"`` (or a checkpoint ``c3``, a node ``n3``, ``n3@1200``) continues the
    latest run named ``name`` from that checkpoint on a new node: the model, optimizer,
    scheduler, RNG, loop position and ``run.state`` are loaded before this returns. With
    ``"latest"`` and no such run yet, a new run starts. ``retune resume`` sets this for you.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("retune.init needs a non-empty run name")
    if flush_interval <= 0 or poll_interval <= 0:
        raise InvalidArgument("flush_interval and poll_interval must be positive")
    if config is not None and not isinstance(config, dict):
        raise InvalidArgument(f"config must be a dict, got {type(config).__name__}")
    policy = CheckpointPolicy(checkpoint_every_n_steps, checkpoint_every_n_epochs, keep_last)
    resume_run = os.environ.get(RESUME_RUN_ENV) if resume is None else None
    if resume_run:
        resume = os.environ.get(RESUME_FROM_ENV) or "latest"
    seeds = _capture.seed_everything(seed)
    data_seed = seed if seed is not None else secrets.randbits(62)
    seeds["data_seed"] = data_seed
    meta = {
        **_describe(model, optimizer, scheduler),
        "seeds": seeds,
        "environment": _capture.environment(),
        "git": _capture.git_info(),
        "invocation": _capture.invocation(),
        "started_at": time.time(),
    }
    from retune.control import LiveTunables

    tunables = LiveTunables(optimizer, scheduler)
    owns_store = not isinstance(store, Store)
    opened = open_store(store) if not isinstance(store, Store) else store
    existing = None
    if resume is not None:
        try:
            existing = opened.get_run(resume_run or name)
        except RunNotFound:
            if resume != "latest":
                raise
    if existing is not None:
        record = opened.reopen_run(existing.id)
        opened.add_event(record.id, "resumed", {"from": resume, "meta": _json.jsonable(meta)})
    else:
        record = opened.create_run(
            name, config=_json.jsonable(config or {}), meta=meta, tunables=tunables.records()
        )
    run = Run(
        opened,
        record,
        0,
        training={
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "scaler": scaler,
        },
        tunables=tunables,
        data_seed=data_seed,
        objects_url=objects or objects_url_for(opened.url),
        policy=policy,
        flush_interval=flush_interval,
        poll_interval=poll_interval,
        owns_store=owns_store,
    )
    who = meta["invocation"]["user"]
    if existing is not None and resume is not None:
        try:
            resume_from(run, resume, who)
        except BaseException as e:
            run.finish("crashed", error=f"resume from {resume!r} failed: {e}")
            raise
    else:
        root = opened.create_node(
            record.id,
            parent=None,
            start_step=0,
            change_kind="start",
            values=tunables.values(),
            diff={},
            created_by=who,
        )
        run._node = root.id
    if ui:  # the next free port if this one is taken; training goes on either way
        run.serve_dashboard(8765 if ui is True else int(ui))
    return run


def load(run: str, *, store: str | Store | None = None) -> RunSnapshot:
    """A frozen snapshot of run ``run`` (id, or name for the latest run of that name)."""
    if isinstance(store, Store):
        return read_snapshot(store, run)
    with open_store(store) as opened:
        return read_snapshot(opened, run)
