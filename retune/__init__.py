"""Retune: interactive hyperparameter tuning with experiment tracking and model restoring.

Attach it to a training loop with :func:`init`, read a run back with :func:`load`, control
a live run from anywhere with :func:`connect`.
Importing ``retune`` never imports torch, keras or transformers.
"""

from __future__ import annotations

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
from retune.session import Guard, MetricSeries, Run, RunSnapshot, init, load

__version__ = "0.1.0"

__all__ = [
    "CheckpointCorrupt",
    "CheckpointNotFound",
    "CommandRejected",
    "CommandTimeout",
    "Controller",
    "DistributedError",
    "Guard",
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
]
