"""The kill campaign's trainer: a tiny real model that resumes ``latest`` and trains on.

usage: python -m tests.campaign.kill_trainer STORE [--steps N] [--every E] [--flush-every F]

It prints markers (flushed at once) so the campaign can aim its SIGKILLs:

* ``INIT`` right before ``retune.init`` (a kill after it lands inside the resume),
* ``READY <run id> <node> <step>`` once the run is attached,
* ``SAVE <step>`` / ``SAVED <step>`` around a step that takes a scheduled checkpoint,
* ``FLUSH`` / ``ACK <json>`` around ``run.flush()``; the JSON lists the segments
  ``[node, first step, last step]`` whose every point this process knows is in the store,
* ``DONE`` after a clean finish (with ``--steps``), ``REFUSED <reason>`` if init fails,
* ``DIE <point>`` right before it SIGKILLs itself at an injected point (``--inject POINT:N``:
  the N-th time it reaches POINT, one of :data:`INJECTION_POINTS`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import retune
from tests.campaign import _model

INJECTION_POINTS = {
    # point: (what is wrapped, die before the call (else right after it returns))
    "blob-fsync": ("os.fsync", True),  # a blob or its folder written, not yet synced
    "blob-rename": ("os.replace", True),  # a complete temporary blob not yet renamed
    "before-manifest": ("SqlStore.add_checkpoint", True),  # blobs in place, no manifest row
    "after-manifest": ("SqlStore.add_checkpoint", False),  # committed, before the keep policy
    "metric-commit": ("SqlStore.append_metrics", False),  # committed, not yet acknowledged
    "resume-apply": ("Optimizer.load_state_dict", True),  # model put back, optimizer not yet
}


def _inject(point: str, nth: int) -> None:
    """SIGKILL this process the ``nth`` time it reaches ``point`` (no-op if it does not exist
    in this version of Retune: the trainer prints ``NOINJECT``)."""
    import torch

    from retune.store import _sql

    target, before = INJECTION_POINTS[point]
    owner_name, attr = target.split(".")
    owners: dict[str, Any] = {
        "os": os,
        "SqlStore": _sql.SqlStore,
        "Optimizer": torch.optim.Optimizer,
    }
    owner = owners[owner_name]
    original: Callable[..., Any] | None = getattr(owner, attr, None)
    if original is None:
        print("NOINJECT", point, flush=True)
        return
    calls = 0

    def reached() -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            print("DIE", point, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            reached()
        result = original(*args, **kwargs)
        if not before:
            reached()
        return result

    setattr(owner, attr, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--name", default="victim")
    parser.add_argument("--steps", type=int, default=0, help="stop at this step (0: never)")
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--flush-every", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.004)
    parser.add_argument("--inject", help="POINT:N, SIGKILL itself the N-th time at POINT")
    args = parser.parse_args(argv)
    if args.inject:
        point, nth = args.inject.split(":")
        _inject(point, int(nth))
    model, optimizer = _model.build()
    x, y = _model.data()
    print("INIT", flush=True)
    try:
        run = retune.init(
            args.name,
            model=model,
            optimizer=optimizer,
            store=args.store,
            resume="latest",
            seed=0,
            checkpoint_every_n_steps=args.every,
            keep_last=3,
            flush_interval=0.05,
            poll_interval=0.02,
        )
    except retune.RetuneError as e:
        print("REFUSED", json.dumps(str(e)), flush=True)
        return 3
    print("READY", run.id, run.node, run.global_step, flush=True)
    segments: list[list[int]] = []
    with run:
        while args.steps == 0 or run.global_step < args.steps:
            step = run.global_step + 1
            saving = step % args.every == 0
            if saving:
                print("SAVE", step, flush=True)
            rows = (step * 37) % (x.shape[0] - 32)
            loss = _model.train_step(model, optimizer, x[rows : rows + 32], y[rows : rows + 32])
            node = run.node  # the node the point is recorded on (commands apply after it)
            run.step(loss=loss, s=float(step), lr=optimizer.param_groups[0]["lr"])
            if segments and segments[-1][0] == node and segments[-1][2] == step - 1:
                segments[-1][2] = step
            else:
                segments.append([node, step, step])
            if saving:
                print("SAVED", step, flush=True)
            if step % args.flush_every == 0:
                print("FLUSH", flush=True)
                run.flush()
                print("ACK", json.dumps(segments), flush=True)
            time.sleep(args.delay)
    print("DONE", run.global_step, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
