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

import numpy as np

from retune import _json
from retune._compare import flat_hyperparameters
from retune.errors import InvalidArgument
from retune.export import ExportSummary, require
from retune.session._tree import path_to
from retune.store import LIVE_STATUSES, NodeRecord, RunRecord, Store

__all__ = ["branch_ends", "export_tensorboard", "masked_crc32c", "scalar_records"]


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


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


_CRC32C = _crc_table()


def masked_crc32c(rows: np.ndarray) -> np.ndarray:
    """The masked CRC-32C (Castagnoli) of each row of a 2-D uint8 array, as TFRecord frames
    use it; one numpy pass per byte column, so a whole chunk of records costs a few dozen
    vector operations."""
    crc = np.full(len(rows), 0xFFFFFFFF, dtype=np.uint32)
    for column in rows.T:
        crc = _CRC32C[(crc ^ column) & 0xFF] ^ (crc >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    masked = ((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)
    return masked.astype("<u4")


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    lengths = np.ones(len(values), dtype=np.int64)
    rest = values >> np.uint64(7)
    while rest.any():
        lengths += rest > 0
        rest = rest >> np.uint64(7)
    return lengths


def scalar_records(key: str, steps: np.ndarray, values: np.ndarray, times: np.ndarray) -> bytes:
    """TFRecord-framed ``Event`` protos, one per point: ``wall_time`` (field 1, double),
    ``step`` (field 2, varint) and ``summary`` (field 5) holding one ``Value`` with ``tag``
    (field 1) and ``simple_value`` (field 2, float32). Built with numpy, chunk at a time, in
    the order given; what TensorBoard's readers parse is the protobuf wire format itself."""
    tag = key.encode("utf-8")
    value_len = 1 + len(_varint(len(tag))) + len(tag) + 1 + 4
    summary_len = 1 + len(_varint(value_len)) + value_len
    tail = np.frombuffer(
        bytes([0x2A]) + _varint(summary_len) + bytes([0x0A]) + _varint(value_len)
        + bytes([0x0A]) + _varint(len(tag)) + tag + bytes([0x15]),
        np.uint8,
    )  # fmt: skip
    unsigned = np.ascontiguousarray(steps, dtype=np.int64).view(np.uint64)
    lengths = _varint_lengths(unsigned)
    out = []
    start = 0
    while start < len(steps):  # runs of one varint length (ascending steps: a few runs)
        width = int(lengths[start])
        other = np.flatnonzero(lengths[start:] != width)
        stop = start + int(other[0]) if len(other) else len(steps)
        n = stop - start
        size = 1 + 8 + 1 + width + len(tail) + 4
        data = np.empty((n, size), dtype=np.uint8)
        data[:, 0] = 0x09
        data[:, 1:9] = np.ascontiguousarray(times[start:stop], "<f8").view(np.uint8).reshape(n, 8)
        data[:, 9] = 0x10
        v = unsigned[start:stop]
        for i in range(width):
            byte = (v >> np.uint64(7 * i)) & np.uint64(0x7F)
            if i < width - 1:
                byte |= np.uint64(0x80)
            data[:, 10 + i] = byte.astype(np.uint8)
        at = 10 + width
        data[:, at : at + len(tail)] = tail
        at += len(tail)
        data[:, at:] = np.ascontiguousarray(values[start:stop], "<f4").view(np.uint8).reshape(n, 4)
        header = np.frombuffer(np.array([size], dtype="<u8").tobytes(), np.uint8)
        frame = np.empty((n, 8 + 4 + size + 4), dtype=np.uint8)
        frame[:, :8] = header
        frame[:, 8:12] = masked_crc32c(header.reshape(1, 8)).view(np.uint8)
        frame[:, 12 : 12 + size] = data
        frame[:, 12 + size :] = masked_crc32c(data).view(np.uint8).reshape(n, 4)
        out.append(frame.tobytes())
        start = stop
    return b"".join(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _EventFile:
    """One TensorBoard event file, written record by record (TFRecord framing)."""

    def __init__(self, path: Path, wall_time: float) -> None:
        self._pb = require("tensorboard.compat.proto.event_pb2", "tensorboard")
        self._handle: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.write(self._pb.Event(wall_time=wall_time, file_version="brain.Event:2"))

    def write(self, event: Any) -> None:
        data = np.frombuffer(event.SerializeToString(), np.uint8)
        header = np.frombuffer(np.array([len(data)], dtype="<u8").tobytes(), np.uint8)
        self._handle.write(header.tobytes())
        self._handle.write(masked_crc32c(header.reshape(1, -1)).tobytes())
        self._handle.write(data.tobytes())
        self._handle.write(masked_crc32c(data.reshape(1, -1)).tobytes())

    def scalars(self, key: str, steps: np.ndarray, values: np.ndarray, times: np.ndarray) -> None:
        self._handle.write(scalar_records(key, steps, values, times))

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
                    events.scalars(chunk.key, steps, values, times)
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
