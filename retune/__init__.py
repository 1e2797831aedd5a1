"""Retune: interactive hyperparameter tuning with experiment tracking and model restoring.

Attach it to a training loop with :func:`init`, read a run back with :func:`load`, control
a live run from anywhere with :func:`connect`.
Importing ``retune`` never imports torch, keras or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retune.control import Controller, connect
from retune.errors import (
    CheckpointCorrupt,
    CheckpointNotFound,
    CommandRejected,
    CommandTimeout,
    DistributedError,
    InvalidArgument,
    NodeNotFound,
    RetuneError,
    RunInUse,
    RunNotFound,
    RunNotLive,
    SchemaMismatch,
    StopTraining,
    StoreError,
    StoreNotFound,
    StoreUnavailable,
)
from retune.session import MetricSeries, Run, RunSnapshot, init, load

if TYPE_CHECKING:
    from retune.store import Store
    from retune.viz import TreeFigure

__version__ = "0.1.0"


def plot_tree(run: Any, store: str | Store | None = None, **options: Any) -> TreeFigure:
    """The tuning tree of ``run`` as a picture (a ``retune.viz.TreeFigure``: inline SVG in a
    notebook, ``.save(path)`` to write it). ``run`` is a run id or name (read from ``store``,
    a URL or Store, default ``$RETUNE_STORE``), a :class:`Run`, a :class:`Controller` or a
    :class:`RunSnapshot`; ``options``: ``color_by``, ``goal``, ``width``, ``collapse_chains``
    (see ``retune.viz.tree_picture``). Imports the drawing code on first use."""
    from retune.viz import plot_tree as draw

    return draw(run, store, **options)


def plot_metric(run: object, *keys: str, **options: object) -> object:
    """A live chart of ``keys`` for ``run`` in a notebook (``retune[notebook]``): branches
    overlaid, a marker at each change, redrawn while the run trains. ``run`` is a live
    :class:`Run` or a run id or name (``store=`` names the store). See
    :func:`retune.notebook.plot_metric`. Imports plotly on first use."""
    from retune.notebook import plot_metric as draw

    return draw(run, *keys, **options)


__all__ = [
    "CheckpointCorrupt",
    "CheckpointNotFound",
    "CommandRejected",
    "CommandTimeout",
    "Controller",
    "DistributedError",
    "InvalidArgument",
    "MetricSeries",
    "NodeNotFound",
    "RetuneError",
    "Run",
    "RunNotFound",
    "RunInUse",
    "RunNotLive",
    "RunSnapshot",
    "SchemaMismatch",
    "StoreError",
    "StoreNotFound",
    "StoreUnavailable",
    "StopTraining",
    "__version__",
    "connect",
    "init",
    "load",
    "plot_metric",
    "plot_tree",
]
