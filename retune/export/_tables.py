"""CSV and Parquet exports: a run's ``nodes``, ``metrics`` and ``commands`` as three tables.

``DIR/nodes.{csv,parquet}``: one row per node (``node``, ``label``, ``parent``, steps, the
change, its ``diff``, ``values`` and ``info`` as JSON, and one ``hp.NAME`` column per
hyperparameter, named as :func:`retune._compare.flat_hyperparameters` names them).
``DIR/metrics.{csv,parquet}``: one row per point (``run_id``, ``node``, ``key``, ``step``,
``value``, ``time``), key by key in step order; NaN and inf kept (CSV writes ``nan``,
``inf``, ``-inf``). ``DIR/commands.{csv,parquet}``: the audit log, one row per command.

Points stream from the store chunk by chunk; CSV rows are written as they come and Parquet
row groups of :data:`ROW_GROUP` rows, so memory stays bounded. Each file is written beside
its final name and renamed into place: a re-export replaces the tables whole, and a failed one
leaves the previous tables as they were.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retune import _json
from retune._compare import flat_hyperparameters
from retune.errors import InvalidArgument
from retune.export import ExportSummary, require
from retune.store import RunRecord, Store

__all__ = ["ROW_GROUP", "export_tables"]

ROW_GROUP = 131_072
"""Rows per Parquet row group of the metrics table (the most points held at once)."""

_NODE_COLUMNS = [
    "run_id",
    "node",
    "label",
    "parent",
    "start_step",
    "end_step",
    "change_kind",
    "created_by",
    "created_at",
    "diff",
    "values",
    "info",
]
_COMMAND_COLUMNS = [
    "run_id",
    "id",
    "kind",
    "status",
    "reason",
    "source",
    "user",
    "created_at",
    "resolved_at",
    "applied_step",
    "node",
    "payload",
    "result",
]
_METRIC_COLUMNS = ["run_id", "node", "key", "step", "value", "time"]


@contextmanager
def _replacing(path: Path, mode: str = "w") -> Iterator[Any]:
    """A file written as ``.name.partial`` and renamed to ``path`` only when complete."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        if "b" in mode:
            yield partial
        else:
            with open(partial, mode, newline="", encoding="utf-8") as handle:
                yield handle
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _folder(dest: str) -> Path:
    folder = Path(dest)
    if folder.exists() and not folder.is_dir():
        raise InvalidArgument(f"{dest} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgument(f"cannot create the folder {dest}: {e.strerror}") from e
    return folder


def _node_rows(store: Store, record: RunRecord) -> tuple[list[str], list[list[Any]]]:
    nodes = store.list_nodes(record.id)
    flat = flat_hyperparameters([n.values for n in nodes], record.tunables)
    names: list[str] = []
    for values in flat:
        names.extend(n for n in values if n not in names)
    rows = []
    for node, values in zip(nodes, flat, strict=True):
        rows.append(
            [
                record.id,
                node.id,
                node.label,
                node.parent,
                node.start_step,
                node.end_step,
                node.change_kind,
                node.created_by,
                node.created_at,
                _json.dumps(node.diff),
                _json.dumps(node.values),
                _json.dumps(node.info),
            ]
            + [values.get(name) for name in names]
        )
    return _NODE_COLUMNS + [f"hp.{n}" for n in names], rows


def _command_rows(store: Store, record: RunRecord) -> list[list[Any]]:
    return [
        [
            record.id,
            c.id,
            c.kind,
            c.status,
            c.reason,
            c.source,
            c.user,
            c.created_at,
            c.resolved_at,
            c.applied_step,
            c.node,
            _json.dumps(c.payload),
            _json.dumps(c.result),
        ]
        for c in store.list_commands(record.id)
    ]


def _cell(value: Any) -> Any:
    """A CSV cell: lists as JSON, floats exactly (``repr``: ``nan``, ``inf`` spelled out)."""
    if isinstance(value, (list, tuple, dict)):
        return _json.dumps(value)
    return value


def _csv(folder: Path, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    path = folder / f"{name}.csv"
    with _replacing(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
    return path


def _arrow_column(values: list[Any]) -> Any:
    """A typed Arrow column: numbers as float64/int64, bools as bool, anything else as text."""
    pa = require("pyarrow", "parquet")
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.array(values, pa.bool_())
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.array(values, pa.int64())
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    return pa.array(
        [None if v is None else (v if isinstance(v, str) else _json.dumps(v)) for v in values],
        pa.string(),
    )


def _parquet(
    folder: Path, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> Path:
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    table = pa.table(
        {column: _arrow_column([row[i] for row in rows]) for i, column in enumerate(columns)}
    )
    path = folder / f"{name}.parquet"
    with _replacing(path, "wb") as partial:
        pq.write_table(table, partial)
    return path


def _metrics_csv(store: Store, record: RunRecord, folder: Path) -> tuple[Path, int]:
    path = folder / "metrics.csv"
    points = 0
    with _replacing(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_METRIC_COLUMNS)
        for chunk in store.iter_metric_chunks(record.id):
            quoted = io.StringIO()  # the key may need CSV quoting: once per chunk
            csv.writer(quoted, lineterminator="").writerow([record.id, chunk.node, chunk.key, ""])
            head = quoted.getvalue()
            handle.write(  # floats as repr: exact, and nan / inf / -inf spelled out
                "".join(
                    f"{head}{step},{value!r},{time!r}\n"
                    for step, value, time in zip(
                        chunk.steps.tolist(),
                        chunk.values.tolist(),
                        chunk.times.tolist(),
                        strict=True,
                    )
                )
            )
            points += len(chunk.steps)
    return path, points


def _metrics_parquet(store: Store, record: RunRecord, folder: Path) -> tuple[Path, int]:
    pa = require("pyarrow", "parquet")
    pq = require("pyarrow.parquet", "parquet")
    schema = pa.schema(
        [
            ("run_id", pa.dictionary(pa.int32(), pa.string())),
            ("node", pa.int32()),
            ("key", pa.dictionary(pa.int32(), pa.string())),
            ("step", pa.int64()),
            ("value", pa.float64()),
            ("time", pa.float64()),
        ]
    )
    path = folder / "metrics.parquet"
    points = 0
    pending: list[Any] = []
    held = 0

    def flush(writer: Any) -> None:
        nonlocal held
        if pending:
            writer.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP)
            pending.clear()
            held = 0

    with _replacing(path, "wb") as partial, pq.ParquetWriter(partial, schema) as writer:
        for chunk in store.iter_metric_chunks(record.id):
            count = len(chunk.steps)
            zeros = np.zeros(count, dtype=np.int32)
            run_col = pa.DictionaryArray.from_arrays(zeros, pa.array([record.id]))
            key_col = pa.DictionaryArray.from_arrays(zeros, pa.array([chunk.key]))
            pending.append(
                pa.table(
                    [
                        run_col,
                        pa.array(np.full(count, chunk.node, dtype=np.int32)),
                        key_col,
                        pa.array(chunk.steps),
                        pa.array(chunk.values),
                        pa.array(chunk.times),
                    ],
                    schema=schema,
                )
            )
            held += count
            points += count
            if held >= ROW_GROUP:
                flush(writer)
        flush(writer)
    return path, points


def export_tables(store: Store, record: RunRecord, dest: str, *, parquet: bool) -> ExportSummary:
    """Write the three tables of ``record`` into ``dest`` as CSV or (``parquet``) Parquet."""
    if parquet:  # check before writing anything
        require("pyarrow.parquet", "parquet")
    folder = _folder(dest)
    target = "parquet" if parquet else "csv"
    summary = ExportSummary(target, str(folder), record.id, record.name)
    node_columns, node_rows = _node_rows(store, record)
    write = _parquet if parquet else _csv
    metrics = _metrics_parquet if parquet else _metrics_csv
    files = [write(folder, "nodes", node_columns, node_rows)]
    path, summary.points = metrics(store, record, folder)
    files.append(path)
    files.append(write(folder, "commands", _COMMAND_COLUMNS, _command_rows(store, record)))
    summary.nodes = len(node_rows)
    summary.files = [str(f) for f in files]
    return summary
