"""``retune.init``: open the store, record what the process is, start a run."""

from __future__ import annotations

import time
from typing import Any

from retune import _json
from retune.errors import InvalidArgument
from retune.session import _capture
from retune.session._run import Run
from retune.session._snapshot import RunSnapshot, read_snapshot
from retune.store import Store, open_store

__all__ = ["init", "load"]


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
    config: dict[str, Any] | None = None,
    seed: int | None = None,
    store: str | Store | None = None,
    flush_interval: float = 1.0,
    poll_interval: float = 0.05,
) -> Run:
    """Start recording a training run and return its handle.

    Records automatically: the model summary (module tree, parameter counts, dtypes, devices),
    the optimizer class and each param group's hyperparameters, the scheduler class and state,
    ``config``, seeds (``seed`` seeds python, numpy and torch when given), the environment,
    the git commit and dirty flag of the calling script's repository, the command line, host
    and start time. ``store`` is a URL, a path, or an open :class:`~retune.store.Store`
    (default: ``$RETUNE_STORE`` or ``./.retune/retune.db``).
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("retune.init needs a non-empty run name")
    if flush_interval <= 0 or poll_interval <= 0:
        raise InvalidArgument("flush_interval and poll_interval must be positive")
    if config is not None and not isinstance(config, dict):
        raise InvalidArgument(f"config must be a dict, got {type(config).__name__}")
    seeds = _capture.seed_everything(seed)
    described = _describe(model, optimizer, scheduler)
    meta = {
        **described,
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
    record = opened.create_run(
        name, config=_json.jsonable(config or {}), meta=meta, tunables=tunables.records()
    )
    root = opened.create_node(
        record.id,
        parent=None,
        start_step=0,
        change_kind="start",
        values=tunables.values(),
        diff={},
        created_by=meta["invocation"]["user"],
    )
    return Run(
        opened,
        record,
        root,
        tunables=tunables,
        flush_interval=flush_interval,
        poll_interval=poll_interval,
        owns_store=owns_store,
    )


def load(run: str, *, store: str | Store | None = None) -> RunSnapshot:
    """A frozen snapshot of run ``run`` (id, or name for the latest run of that name)."""
    if isinstance(store, Store):
        return read_snapshot(store, run)
    with open_store(store) as opened:
        return read_snapshot(opened, run)
