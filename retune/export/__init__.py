"""Exporting a run's tree to the tools people already use: MLflow, TensorBoard, CSV, Parquet.

``export(store, run, to, ...)`` streams the run's points out of the store chunk by chunk
(:meth:`retune.store.Store.iter_metric_chunks`) and writes them incrementally, so a run of any
size exports in bounded memory. Each target's package is imported only when used; a missing
one raises :class:`~retune.errors.MissingExtra` naming the extra to install.

* ``mlflow``: one MLflow run per node, children tagged ``mlflow.parentRunId``; idempotent
  (see :mod:`retune.export._mlflow`).
* ``tensorboard``: one event-file folder per branch, hyperparameters in the hparams plugin.
* ``csv`` / ``parquet``: ``nodes``, ``metrics`` and ``commands`` tables.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from retune.errors import InvalidArgument, MissingExtra
from retune.store import Store

__all__ = ["TARGETS", "ExportSummary", "export", "require"]

TARGETS = ("mlflow", "tensorboard", "csv", "parquet")


@dataclass
class ExportSummary:
    """What an export did: where to, how many nodes and points, what it skipped."""

    target: str
    location: str
    run_id: str
    run_name: str
    nodes: int = 0
    points: int = 0
    skipped_points: int = 0
    created: int = 0
    """MLflow runs created (the others already existed and were brought up to date)."""
    branches: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def describe(self) -> str:
        """One or two lines for the terminal."""
        what = f"{self.nodes} nodes, {self.points:,} points"
        if self.target == "mlflow":
            what += f" ({self.created} MLflow runs created, {self.skipped_points:,} points" \
                    " already there)"  # fmt: skip
        elif self.branches:
            what += f" on {len(self.branches)} branches"
        return (
            f"exported run {self.run_name} ({self.run_id}) to {self.target} {self.location}: {what}"
        )


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise :class:`MissingExtra` naming ``retune[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"this needs the {module.partition('.')[0]} package: pip install 'retune[{extra}]'"
        ) from e


def export(
    store: Store,
    run: str,
    to: str,
    *,
    dest: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> ExportSummary:
    """Export ``run`` (an id or a name) to ``to`` (one of :data:`TARGETS`).

    ``dest`` is the folder for ``tensorboard``, ``csv`` and ``parquet`` (created if missing);
    ``tracking_uri`` and ``experiment`` are for ``mlflow`` (default experiment: the run's name).

    Raises:
        RunNotFound: no such run.
        InvalidArgument: an unknown target, or a missing / superfluous destination.
        MissingExtra: the target's package is not installed.
    """
    if to not in TARGETS:
        raise InvalidArgument(f"cannot export to {to!r}; choose one of {', '.join(TARGETS)}")
    record = store.get_run(run)
    if to == "mlflow":
        if dest is not None:
            raise InvalidArgument("an MLflow export takes a tracking URI, not a folder")
        from retune.export._mlflow import export_mlflow

        return export_mlflow(store, record, tracking_uri=tracking_uri, experiment=experiment)
    if dest is None or not str(dest).strip():
        raise InvalidArgument(f"an export to {to} needs a folder")
    if tracking_uri is not None or experiment is not None:
        raise InvalidArgument("tracking_uri and experiment are for MLflow exports")
    if to == "tensorboard":
        from retune.export._tensorboard import export_tensorboard

        return export_tensorboard(store, record, dest)
    from retune.export._tables import export_tables

    return export_tables(store, record, dest, parquet=to == "parquet")
