"""TensorBoard export: one event-file folder per branch, hyperparameters in the hparams plugin.

A branch is the path from the root to a node where training went on after its last child
branched off (a leaf, an open node, or a node trained past the step its last child started
from); its curve is DESIGN.md's: each node's points up to where the next node of the path
starts. Its folder is the path itself, ``DIR/n1/n3/n5``, so ``tensorboard --logdir DIR``
lists runs ``n1``, ``n1/n3``, ``n1/n3/n5`` (the tree, as the run selector shows it).

Each folder holds one event file (``events.out.tfevents.*.retune.RUN_ID``) with the branch's
scalars (TensorBoard stores them as float32) and the hparams plugin's session start and end:
the hyperparameters of the branch's last node, named as ``retune compare`` names them, plus
``branch`` and ``node``. ``DIR`` itself gets the hparams experiment (every hyperparameter and
metric). Points stream from the store chunk by chunk and are written as they come. A
re-export of the same run first removes the event files an earlier export of that run wrote
under ``DIR``, so nothing is shown twice.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, BinaryIO

from retune import _json
from retune._compare import flat_hyperparameters
from retune.errors import InvalidArgument
from retune.export import ExportSummary, require
from retune.session._tree import path_to
from retune.store import LIVE_STATUSES, NodeRecord, RunRecord, Store

__all__ = ["branch_ends", "export_tensorboard"]


def branch_ends(nodes: list[NodeRecord]) -> list[NodeRecord]:
    """The nodes that end a branch: leaves, open nodes, and nodes trained on after their last
    child started (a restore to an earlier checkpoint leaves the old line as its own branch)."""
    starts: dict[int, int] = {}
    for node in nodes:
        if node.parent is not None:
            starts[node.parent] = max(starts.get(node.parent, node.start_step), node.start_step)
    return [
        n for n in nodes if n.id not in starts or n.end_step is None or n.end_step > starts[n.id]
    ]


class _EventFile:
    """One TensorBoard event file, written record by record (TFRecord framing)."""

    def __init__(self, path: Path, wall_time: float) -> None:
        self._pb = require("tensorboard.compat.proto.event_pb2", "tensorboard")
        record_writer = require("tensorboard.summary.writer.record_writer", "tensorboard")
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._records = record_writer.RecordWriter(self._handle)
        self.write(self._pb.Event(wall_time=wall_time, file_version="brain.Event:2"))
        self._templates: dict[str, Any] = {}

    def write(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def scalars(self, key: str, steps: list[int], values: list[float], times: list[float]) -> None:
        event = self._templates.get(key)
        if event is None:
            summary_pb2 = require("tensorboard.compat.proto.summary_pb2", "tensorboard")
            value = summary_pb2.Summary.Value(tag=key, simple_value=0.0)
            event = self._pb.Event(summary=summary_pb2.Summary(value=[value]))
            self._templates[key] = event
        cell = event.summary.value[0]
        write = self._records.write
        for step, value, wall in zip(steps, values, times, strict=True):
            event.step = step
            event.wall_time = wall
            cell.simple_value = value
            write(event.SerializeToString())

    def close(self) -> None:
        self._handle.close()


def _hparam_value(value: Any) -> Any:
    if isinstance(value, (bool, str)) or value is None:
        return "" if value is None else value
    if isinstance(value, (int, float)):
        return float(value)
    return _json.dumps(value)


def _plugin_summary(tag: str, data: Any) -> Any:
    summary_pb2 = require("tensorboard.compat.proto.summary_pb2", "tensorboard")
    metadata = require("tensorboard.plugins.hparams.metadata", "tensorboard")
    value = summary_pb2.Summary.Value(
        tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR
    )
    return summary_pb2.Summary(value=[value])


def _session_start(hparams: dict[str, Any], group: str, start: float) -> Any:
    plugin = require("tensorboard.plugins.hparams.plugin_data_pb2", "tensorboard")
    metadata = require("tensorboard.plugins.hparams.metadata", "tensorboard")
    info = plugin.SessionStartInfo(group_name=group, start_time_secs=start)
    for name, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, float):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = value
    data = plugin.HParamsPluginData(session_start_info=info)
    return _plugin_summary(metadata.SESSION_START_INFO_TAG, data)


def _session_end(status: int, end: float) -> Any:
    plugin = require("tensorboard.plugins.hparams.plugin_data_pb2", "tensorboard")
    metadata = require("tensorboard.plugins.hparams.metadata", "tensorboard")
    data = plugin.HParamsPluginData(
        session_end_info=plugin.SessionEndInfo(status=status, end_time_secs=end)
    )
    return _plugin_summary(metadata.SESSION_END_INFO_TAG, data)


def _experiment(record: RunRecord, hparams: list[dict[str, Any]], keys: list[str]) -> Any:
    api = require("tensorboard.plugins.hparams.api_pb2", "tensorboard")
    plugin = require("tensorboard.plugins.hparams.plugin_data_pb2", "tensorboard")
    metadata = require("tensorboard.plugins.hparams.metadata", "tensorboard")
    infos = []
    names: list[str] = []
    for values in hparams:
        names.extend(n for n in values if n not in names)
    for name in names:
        kinds = {type(v[name]) for v in hparams if name in v}
        kind = api.DATA_TYPE_STRING
        if kinds == {bool}:
            kind = api.DATA_TYPE_BOOL
        elif kinds == {float}:
            kind = api.DATA_TYPE_FLOAT64
        infos.append(api.HParamInfo(name=name, type=kind))
    metrics = [api.MetricInfo(name=api.MetricName(tag=key)) for key in keys]
    experiment = api.Experiment(
        name=record.name,
        description=f"Retune run {record.name} ({record.id})",
        time_created_secs=record.created_at,
        hparam_infos=infos,
        metric_infos=metrics,
    )
    return _plugin_summary(metadata.EXPERIMENT_TAG, plugin.HParamsPluginData(experiment=experiment))


def _status(record: RunRecord, node: NodeRecord) -> int | None:
    """The hparams session status of a branch ending at ``node``; None while it trains."""
    api = require("tensorboard.plugins.hparams.api_pb2", "tensorboard")
    if node.end_step is None and record.status in LIVE_STATUSES:
        return None
    if node.end_step is None and record.status == "crashed":
        return int(api.STATUS_FAILURE)
    return int(api.STATUS_SUCCESS)


def export_tensorboard(store: Store, record: RunRecord, dest: str) -> ExportSummary:
    """Write every branch of ``record`` under ``dest`` (see the module's docstring)."""
    event_pb2 = require("tensorboard.compat.proto.event_pb2", "tensorboard")
    require("tensorboard.plugins.hparams.metadata", "tensorboard")
    root = Path(dest)
    if root.exists() and not root.is_dir():
        raise InvalidArgument(f"{dest} exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgument(f"cannot create the folder {dest}: {e.strerror}") from e
    suffix = f".retune.{record.id}"
    for old in root.rglob(f"events.out.tfevents.*{suffix}"):
        old.unlink()
    nodes = store.list_nodes(record.id)
    keys = store.metric_keys(record.id)
    flat = dict(
        zip(
            (n.id for n in nodes),
            flat_hyperparameters([n.values for n in nodes], record.tunables),
            strict=True,
        )
    )
    stamp = int(time.time())
    summary = ExportSummary("tensorboard", str(root), record.id, record.name, nodes=len(nodes))
    ends = branch_ends(nodes)
    session_hparams = []
    for end in ends:
        path = path_to(tuple(nodes), end.id)
        label = "/".join(n.label for n in path)
        hparams = {name: _hparam_value(v) for name, v in flat[end.id].items()}
        hparams.update(branch=label, node=end.label)
        session_hparams.append(hparams)
        folder = root.joinpath(*(n.label for n in path))
        folder.mkdir(parents=True, exist_ok=True)
        events = _EventFile(folder / f"events.out.tfevents.{stamp}{suffix}", record.created_at)
        last_time = record.created_at
        try:
            start = event_pb2.Event(
                wall_time=path[0].created_at,
                step=path[0].start_step,
                summary=_session_start(hparams, label, path[0].created_at),
            )
            events.write(start)
            limits = {
                node.id: (math.inf if child is None else child.start_step)
                for node, child in zip(path, [*path[1:], None], strict=True)
            }
            for chunk in store.iter_metric_chunks(record.id, nodes=list(limits)):
                limit = limits[chunk.node]
                steps, values, times = chunk.steps, chunk.values, chunk.times
                if steps[-1] > limit:
                    keep = steps <= limit
                    steps, values, times = steps[keep], values[keep], times[keep]
                if len(steps):
                    events.scalars(chunk.key, steps.tolist(), values.tolist(), times.tolist())
                    summary.points += len(steps)
                    last_time = max(last_time, float(times[-1]))
            status = _status(record, end)
            if status is not None:
                last = end.end_step if end.end_step is not None else end.start_step
                events.write(
                    event_pb2.Event(
                        wall_time=last_time, step=last, summary=_session_end(status, last_time)
                    )
                )
        finally:
            events.close()
        summary.branches.append(label)
        summary.files.append(str(folder))
    experiment = _EventFile(root / f"events.out.tfevents.{stamp}{suffix}", record.created_at)
    try:
        experiment.write(
            event_pb2.Event(
                wall_time=record.created_at, summary=_experiment(record, session_hparams, keys)
            )
        )
    finally:
        experiment.close()
    return summary
