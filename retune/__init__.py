"""Retune: interactive hyperparameter tuning with experiment tracking and model restoring.

Attach it to a training loop with :func:`init`, read a run back with :func:`load`.
Importing ``retune`` never imports torch, keras or transformers.
"""

from __future__ import annotations

from retune.errors import (
    CheckpointCorrupt,
    CheckpointNotFound,
    CommandRejected,
    InvalidArgument,
    NodeNotFound,
    RetuneError,
    RunNotFound,
    RunNotLive,
    SchemaMismatch,
    StoreError,
    StoreUnavailable,
)
from retune.session import MetricSeries, Run, RunSnapshot, init, load

__version__ = "0.1.0"

__all__ = [
    "CheckpointCorrupt",
    "CheckpointNotFound",
    "CommandRejected",
    "InvalidArgument",
    "MetricSeries",
    "NodeNotFound",
    "RetuneError",
    "Run",
    "RunNotFound",
    "RunNotLive",
    "RunSnapshot",
    "SchemaMismatch",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "init",
    "load",
]
