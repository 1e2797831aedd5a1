"""``retune.init``: open the store, record what the process is, start (or resume) a run."""

from __future__ import annotations

import os
import random
import sys
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from retune import _json
from retune.checkpoint import resolve_checkpoint
from retune.errors import CheckpointNotFound, InvalidArgument, RunNotFound
from retune.session import _capture, _distributed
from retune.session._checkpointer import CheckpointPolicy
from retune.session._guard import Guard, GuardRuntime, guard_config
from retune.session._restore import resume_from
from retune.session._run import Run
from retune.session._snapshot import RunSnapshot, read_snapshot
from retune.store import RunRecord, Store, objects_url_for, open_store, process_identity

if TYPE_CHECKING:
    from retune.control import LiveTunables

__all__ = ["RESUME_FROM_ENV", "RESUME_RUN_ENV", "init", "load"]

RESUME_RUN_ENV = "RETUNE_RESUME_RUN"
RESUME_FROM_ENV = "RETUNE_RESUME_FROM"


def _consume_resume_env() -> tuple[str | None, str | None]:
    """The run and target ``retune resume`` asked for, read once: the variables are removed
    so a later ``init`` in the same process (or a child process) does not resume again."""
    return os.environ.pop(RESUME_RUN_ENV, None) or None, os.environ.pop(RESUME_FROM_ENV, None)


def _default_data_seed(seeds: dict[str, Any]) -> int:
    """The data-order seed when ``seed=`` is not given, as reproducible as plain PyTorch.

    From torch's global generator when torch is imported (``torch.manual_seed(0)`` gives the
    same data order on every run; nothing is drawn, so the script's random stream is left as
    it was), else from Python's ``random`` (``random.seed(0)`` likewise). Records the source.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        seeds["data_seed_from"] = "torch.initial_seed()"
        return int(torch.initial_seed()) % 2**62
    seeds["data_seed_from"] = "random.getrandbits(62)"
    return random.getrandbits(62)


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
    checkpoint_in_background: bool = True,
    checkpoint_when_busy: str = "wait",
    checkpoint_keep_staging: bool = True,
    flush_interval: float = 1.0,
    poll_interval: float = 0.05,
    ui: bool | int = False,
    meta: dict[str, Any] | None = None,
    guard: bool | Guard | None = None,
    per_rank_metrics: bool = False,
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
    ``"latest"`` and no such run yet, a new run starts. ``retune resume`` sets this for you
    (through ``RETUNE_RESUME_RUN`` / ``RETUNE_RESUME_FROM``, which the first ``init`` of the
    process consumes). A resume never touches the old run when it cannot happen: a run with
    no such checkpoint raises ``CheckpointNotFound`` and keeps its status; a run whose process
    is still alive (fresh heartbeat) raises ``RunInUse`` naming that process's host and pid;
    of two processes resuming at once, one wins. Commands sent while the run had no live
    process are rejected ("the run was not live ...") instead of being applied late.

    ``meta`` adds descriptions to the run's recorded meta (an integration records its
    framework's model and optimizer summaries here, as ``model``/``optimizer`` are for torch).

    Scheduled checkpoints are written on a background thread while training goes on
    (``checkpoint_in_background=False`` writes them before the step returns); when one is due
    while the previous one is still being written, ``checkpoint_when_busy="wait"`` (default)
    waits for it, ``"skip"`` skips it with a ``checkpoint_skipped`` event (docs/checkpoints.md).
    A background save first copies the state in memory; it copies into the buffers the
    previous one wrote from (a plain memcpy, about half the stall of fresh memory), which
    stay allocated between saves; ``checkpoint_keep_staging=False`` frees them after each save.

    Without ``seed=``, the data order's seed derives from torch's global generator
    (``torch.initial_seed()``), so a script that calls ``torch.manual_seed(0)`` gets the same
    order on every run, as plain PyTorch would; it is recorded in ``meta["seeds"]``.

    ``guard=True`` (defaults) or ``guard=retune.Guard(...)`` watches a metric (``loss``) and,
    when it turns NaN/inf or spikes, rolls back to the last good checkpoint, lowers lr, skips
    the batches in between and records it as a ``guard`` node; see ``docs/guard.md``.

    Under ``torch.distributed`` (an initialised default process group of two or more ranks;
    see docs/distributed.md) call it on every rank with the same arguments: rank 0 owns the
    one run of the job (store writes, command polling, heartbeat, checkpoints); the other
    ranks get a handle with the same API that follows rank 0 at every step boundary and
    records nothing, or, with ``per_rank_metrics=True``, its metrics as ``rank{r}/{key}``.
    Every rank starts from rank 0's decisions (run, node, data seed, resumed checkpoint).
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("retune.init needs a non-empty run name")
    if flush_interval <= 0 or poll_interval <= 0:
        raise InvalidArgument("flush_interval and poll_interval must be positive")
    if config is not None and not isinstance(config, dict):
        raise InvalidArgument(f"config must be a dict, got {type(config).__name__}")
    guard_settings = guard_config(guard)
    policy = CheckpointPolicy(
        checkpoint_every_n_steps,
        checkpoint_every_n_epochs,
        keep_last,
        background=checkpoint_in_background,
        when_busy=checkpoint_when_busy,
        keep_staging=checkpoint_keep_staging,
    )
    training = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    cluster = _distributed.detect()
    if cluster is not None and cluster.rank != 0:
        follower = _join(
            cluster,
            training=training,
            seed=seed,
            store=store,
            objects=objects,
            policy=policy,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            per_rank_metrics=per_rank_metrics,
        )
        if guard_settings is not None:  # its trigger joins the agreement; rank 0 acts
            follower.guard = GuardRuntime(follower, guard_settings)
            follower.guard.attach(record=False)
        return follower
    try:
        run, resumed = _start(
            name,
            training=training,
            config=config,
            seed=seed,
            store=store,
            objects=objects,
            resume=resume,
            policy=policy,
            flush_interval=flush_interval,
            poll_interval=poll_interval,
            meta=meta,
            cluster=cluster,
        )
    except BaseException as e:
        if cluster is not None:  # the other ranks wait for the run: tell them it failed
            cluster.send({"error": f"{type(e).__name__}: {e}"})
        raise
    if guard_settings is not None:  # every rank has one: see _distributed
        run.guard = GuardRuntime(run, guard_settings)
        run.guard.attach()
    if cluster is not None:
        pipelined = run.guard is None  # see _distributed._ClusterRun.pipelined
        if isinstance(run, _distributed.LeaderRun):
            run.pipelined = pipelined
        cluster.send(
            {
                "run": run.id,
                "node": run.node,
                "data_seed": run.loop.data_seed,
                "resumed": resumed,
                "pipelined": pipelined,
            }
        )
        try:
            cluster.confirm(None)
        except BaseException as e:
            run.finish("crashed", error=str(e))
            raise
    if ui:  # the next free port if this one is taken; training goes on either way
        run.serve_dashboard(8765 if ui is True else int(ui))
    return run


def _join(
    cluster: _distributed.Cluster,
    *,
    training: dict[str, Any],
    seed: int | None,
    store: str | Store | None,
    objects: str | None,
    policy: CheckpointPolicy,
    flush_interval: float,
    poll_interval: float,
    per_rank_metrics: bool,
) -> Run:
    """A rank other than 0: seed like rank 0, then follow the run rank 0 started."""
    from retune.control import LiveTunables

    _consume_resume_env()  # rank 0 decides the resume; never resume again in a child
    _capture.seed_everything(seed)
    tunables = LiveTunables(training["optimizer"], training["scheduler"])
    build = partial(
        _distributed.RankRun,
        training=training,
        tunables=tunables,
        policy=policy,
        flush_interval=flush_interval,
        poll_interval=poll_interval,
        cluster=cluster,
        per_rank_metrics=per_rank_metrics,
    )
    return _distributed.join(cluster, store=store, objects=objects, build=build)


def _start(
    name: str,
    *,
    training: dict[str, Any],
    config: dict[str, Any] | None,
    seed: int | None,
    store: str | Store | None,
    objects: str | None,
    resume: str | None,
    policy: CheckpointPolicy,
    flush_interval: float,
    poll_interval: float,
    meta: dict[str, Any] | None,
    cluster: _distributed.Cluster | None,
) -> tuple[Run, str | None]:
    """Rank 0, or the only process: create or resume the run; returns it and the label of
    the checkpoint it resumed from."""
    model, optimizer, scheduler = training["model"], training["optimizer"], training["scheduler"]
    env_run, env_from = _consume_resume_env()
    resume_run = env_run if resume is None else None
    if resume_run:
        resume = env_from or "latest"
    seeds = _capture.seed_everything(seed)
    data_seed = seed if seed is not None else _default_data_seed(seeds)
    seeds["data_seed"] = data_seed
    meta = {
        **_describe(model, optimizer, scheduler),
        **(meta or {}),
        "seeds": seeds,
        "environment": _capture.environment(),
        "git": _capture.git_info(),
        "invocation": _capture.invocation(),
        "started_at": time.time(),
    }
    if cluster is not None:
        meta["distributed"] = cluster.describe()
    from retune.control import LiveTunables

    tunables = LiveTunables(optimizer, scheduler)
    owns_store = not isinstance(store, Store)
    opened = open_store(store) if not isinstance(store, Store) else store
    who = meta["invocation"]["user"]
    try:
        existing, record = _attach_or_create(
            opened,
            name=name,
            resume_run=resume_run,
            resume=resume,
            meta=meta,
            config=config,
            tunables=tunables,
            who=who,
        )
    except BaseException:
        if owns_store:
            opened.close()
        raise
    run_class = Run if cluster is None else partial(_distributed.LeaderRun, cluster=cluster)
    run = run_class(
        opened,
        record,
        0 if existing is not None else 1,
        training=training,
        tunables=tunables,
        data_seed=data_seed,
        objects_url=objects or objects_url_for(opened.url),
        policy=policy,
        flush_interval=flush_interval,
        poll_interval=poll_interval,
        owns_store=owns_store,
    )
    resumed = None
    if existing is not None and resume is not None:
        try:
            resumed = resume_from(run, resume, who).label
        except BaseException as e:
            run.finish("crashed", error=f"resume from {resume!r} failed: {e}")
            raise
    return run, resumed


def _attach_or_create(
    store: Store,
    *,
    name: str,
    resume_run: str | None,
    resume: str | None,
    meta: dict[str, Any],
    config: dict[str, Any] | None,
    tunables: LiveTunables,
    who: str | None,
) -> tuple[RunRecord | None, RunRecord]:
    """``(existing, record)``: the run attached for a resume, or a new run with its root.

    Nothing is written to an existing run until the checkpoint to resume from is known to
    exist and this process has won the atomic attach (a live run is refused, naming its
    process); commands sent while no process was live are rejected then.
    """
    existing = None
    if resume is not None:
        try:
            existing = store.get_run(resume_run or name)
        except RunNotFound:
            if resume != "latest" or resume_run:
                raise
    identity = process_identity()
    if existing is None:
        record = store.create_run(
            name,
            config=_json.jsonable(config or {}),
            meta={**meta, "process": identity},
            tunables=tunables.records(),
            root_values=tunables.values(),
            created_by=who,
        )
        return None, record
    assert resume is not None
    try:
        resolve_checkpoint(store, existing.id, resume)
    except CheckpointNotFound as e:
        raise CheckpointNotFound(
            f"cannot resume run {existing.name} ({existing.id}) from {resume!r}: {e};"
            f" the run was left as it was ({existing.status})"
        ) from e
    record = store.attach_run(
        existing.id,
        owner=identity,
        reason=(
            "the run was not live when this command was sent; it was resumed later by"
            f" process {identity['pid']} on host {identity['host']}"
        ),
    )
    store.add_event(record.id, "resumed", {"from": resume, "meta": _json.jsonable(meta)})
    return existing, record


def load(run: str, *, store: str | Store | None = None) -> RunSnapshot:
    """A frozen snapshot of run ``run`` (id, or name for the latest run of that name)."""
    if isinstance(store, Store):
        return read_snapshot(store, run)
    with open_store(store) as opened:
        return read_snapshot(opened, run)
