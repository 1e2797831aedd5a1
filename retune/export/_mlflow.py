"""MLflow export: one MLflow run per node, children linked with ``mlflow.parentRunId``.

Each node becomes an MLflow run named ``RUN_NAME nK`` in the experiment (default: the Retune
run's name), with:

* **params**: the node's hyperparameters, named as ``retune compare`` names them (``lr``, or
  ``lr.0``/``lr.1`` for ``lr[0]``/``lr[1]`` when param groups differ: MLflow refuses
  brackets); values as text (numbers exactly, tuples as JSON lists).
* **metrics**: the node's own points with their steps and timestamps (milliseconds). Metric
  names MLflow refuses (characters other than letters, digits, ``_ - . / space``, or ``..``
  segments) are written with ``_`` in their place; the ``retune.key.*`` tags map them back.
  MLflow stores NaN as NaN and +/-inf as the largest finite double.
* **tags**: ``retune.run_id``, ``retune.run_name``, ``retune.node`` (``n3``), ``retune.parent``,
  ``retune.change_kind``, ``retune.start_step``, ``retune.end_step``, ``retune.diff`` (the
  change, as ``retune show`` writes it), ``retune.diff_json`` and ``retune.info`` (the node's
  free-form info as JSON: an exploration's score, ...; updated by every export);
  ``mlflow.parentRunId`` on every node but the root.

**Idempotent.** Existing runs are found by their ``retune.run_id`` / ``retune.node`` tags and
brought up to date instead of duplicated. Each node's MLflow run records, per metric, the last
step exported (a ``retune.step.<hash>`` tag written in the same ``log_batch`` as the points, so
an interrupted export never writes a point twice); a re-export after more training appends
only the newer points, logs params the run lacks, updates ``retune.end_step``, and marks a
node's run ``FINISHED`` once the node has closed (``FAILED`` / ``KILLED`` for the open node of
a crashed / stopped run). Points stream from the store chunk by chunk and go out in pages of
``log_batch`` (MLflow's limits: 1,000 metrics, 100 tags or params per call).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from typing import Any

from retune import _json
from retune._compare import flat_hyperparameters
from retune._format import diff_text
from retune.errors import InvalidArgument, RetuneError
from retune.export import ExportSummary, require
from retune.store import LIVE_STATUSES, NodeRecord, RunRecord, Store

__all__ = ["export_mlflow", "metric_name", "param_name", "step_tag"]

PAGE_METRICS = 1000
PAGE_TAGS = 100
_BAD = re.compile(r"[^\w.\- /]", re.ASCII)


def metric_name(key: str) -> str:
    """``key`` as a name MLflow accepts (itself whenever it already is one)."""
    name = _BAD.sub("_", key)
    parts = ["_" if p in ("", ".", "..") else p for p in name.split("/")]
    name = "/".join(parts)
    if len(name) > 250:
        name = name[:237] + "~" + hashlib.sha1(key.encode()).hexdigest()[:12]
    return name


def param_name(name: str) -> str:
    """A hyperparameter's name as an MLflow param: ``lr[0]`` -> ``lr.0``, ``lr[head]`` ->
    ``lr.head`` (MLflow refuses brackets); otherwise as :func:`metric_name`."""
    return metric_name(re.sub(r"\[([^\]]*)\]", r".\1", name))


def step_tag(key: str) -> str:
    """The tag holding the last step of ``key`` exported into a node's MLflow run."""
    return "retune.step." + hashlib.sha1(key.encode()).hexdigest()[:16]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _json.dumps(value)


def _names(keys: list[str]) -> dict[str, str]:
    """MLflow names for the run's keys, distinct even when two keys sanitize alike."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for key in keys:
        name = metric_name(key)
        if name in taken:
            name = f"{name[:237]}~{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        taken.add(name)
        out[key] = name
    return out


def _mlflow_call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call MLflow, turning its errors into one-line Retune errors."""
    exceptions = require("mlflow.exceptions", "mlflow")
    try:
        return fn(*args, **kwargs)
    except exceptions.MlflowException as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RetuneError(f"MLflow refused to {what}: {message}") from e


def _existing(client: Any, experiment_id: str, run_id: str) -> dict[str, Any]:
    """The MLflow runs an earlier export made for ``run_id``, by node label."""
    found: dict[str, Any] = {}
    token = None
    while True:
        page = _mlflow_call(
            "search runs",
            client.search_runs,
            [experiment_id],
            filter_string=f"tags.`retune.run_id` = '{run_id}'",
            max_results=1000,
            page_token=token,
        )
        for run in page:
            label = run.data.tags.get("retune.node")
            if label is not None and label not in found:
                found[label] = run
        token = page.token
        if not token:
            return found


def _node_tags(record: RunRecord, node: NodeRecord) -> dict[str, str]:
    return {
        "retune.run_id": record.id,
        "retune.run_name": record.name,
        "retune.node": node.label,
        "retune.parent": "" if node.parent is None else f"n{node.parent}",
        "retune.change_kind": node.change_kind,
        "retune.start_step": str(node.start_step),
        "retune.end_step": "" if node.end_step is None else str(node.end_step),
        "retune.diff": diff_text(node.diff) or ("(root)" if node.parent is None else "(none)"),
        "retune.diff_json": _json.dumps(node.diff),
        "retune.info": _json.dumps(node.info),
    }


def _pages(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _NodeBuffer:
    """One node's points waiting for a ``log_batch``, with the step tags they move."""

    def __init__(self, mlflow_id: str, watermarks: dict[str, int]) -> None:
        self.mlflow_id = mlflow_id
        self.watermarks = watermarks
        self.metrics: list[Any] = []
        self.steps: dict[str, int] = {}


def export_mlflow(
    store: Store, record: RunRecord, *, tracking_uri: str | None, experiment: str | None
) -> ExportSummary:
    """Export every node of ``record`` to MLflow (see the module's docstring)."""
    require("mlflow", "mlflow")
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    if experiment is not None and not experiment.strip():
        raise InvalidArgument("the experiment name is empty")
    client = MlflowClient(tracking_uri=tracking_uri)
    name = experiment or record.name
    found = _mlflow_call("read experiments", client.get_experiment_by_name, name)
    if found is None:
        experiment_id = _mlflow_call("create an experiment", client.create_experiment, name)
    else:
        experiment_id = found.experiment_id
    location = f"{client.tracking_uri} (experiment {name!r})"
    summary = ExportSummary("mlflow", location, record.id, record.name)
    nodes = store.list_nodes(record.id)
    flat = flat_hyperparameters([n.values for n in nodes], record.tunables)
    keys = store.metric_keys(record.id)
    names = _names(keys)
    existing = _existing(client, experiment_id, record.id)
    ids: dict[int, str] = {}
    buffers: dict[int, _NodeBuffer] = {}
    for node, values in zip(nodes, flat, strict=True):
        tags = _node_tags(record, node)
        key_tags = {f"retune.key.{step_tag(k)[12:]}": k for k, n in names.items() if n != k}
        run = existing.get(node.label)
        if run is None:
            if node.parent is not None:
                tags["mlflow.parentRunId"] = ids[node.parent]
            run = _mlflow_call(
                "create a run",
                client.create_run,
                experiment_id,
                start_time=int(node.created_at * 1000),
                tags=tags,
                run_name=f"{record.name} {node.label}",
            )
            summary.created += 1
            have_params: dict[str, str] = {}
            have_tags: dict[str, str] = dict(tags)
        else:
            have_params = dict(run.data.params)
            have_tags = dict(run.data.tags)
        mlflow_id = run.info.run_id
        ids[node.id] = mlflow_id
        named = {param_name(k): _text(v) for k, v in values.items()}
        params = [Param(k, v) for k, v in named.items() if k not in have_params]
        changed = [RunTag(k, v) for k, v in {**tags, **key_tags}.items() if have_tags.get(k) != v]
        for page in _pages(params, PAGE_TAGS):
            _mlflow_call("log params", client.log_batch, mlflow_id, params=page)
        for page in _pages(changed, PAGE_TAGS):
            _mlflow_call("set tags", client.log_batch, mlflow_id, tags=page)
        watermarks = {}
        for key in keys:
            step = have_tags.get(step_tag(key))
            if step is not None and step.lstrip("-").isdigit():
                watermarks[key] = int(step)
        buffers[node.id] = _NodeBuffer(mlflow_id, watermarks)
    summary.nodes = len(nodes)

    def flush(buffer: _NodeBuffer) -> None:
        if not buffer.metrics:
            return
        tags = [RunTag(step_tag(k), str(s)) for k, s in buffer.steps.items()]
        _mlflow_call("log metrics", client.log_batch, buffer.mlflow_id, metrics=buffer.metrics,
                     tags=tags)  # fmt: skip
        buffer.watermarks.update(buffer.steps)
        buffer.metrics = []
        buffer.steps = {}

    for chunk in store.iter_metric_chunks(record.id):
        buffer = buffers.get(chunk.node)
        if buffer is None:  # a node created after the nodes were listed: next export
            continue
        after = buffer.watermarks.get(chunk.key)
        steps, points, times = chunk.steps, chunk.values, chunk.times
        if after is not None:
            keep = steps > after
            summary.skipped_points += int(len(steps) - keep.sum())
            steps, points, times = steps[keep], points[keep], times[keep]
        mlflow_key = names[chunk.key]
        for step, value, wall in zip(steps.tolist(), points.tolist(), times.tolist(), strict=True):
            if chunk.key not in buffer.steps and len(buffer.steps) >= PAGE_TAGS:
                flush(buffer)
            buffer.metrics.append(Metric(mlflow_key, value, int(wall * 1000), step))
            buffer.steps[chunk.key] = step
            summary.points += 1
            if len(buffer.metrics) >= PAGE_METRICS:
                flush(buffer)
    for buffer in buffers.values():
        flush(buffer)

    end_status = {"crashed": "FAILED", "stopped": "KILLED"}.get(record.status, "FINISHED")
    for node in nodes:
        run = existing.get(node.label)
        if run is not None and run.info.status != "RUNNING":
            continue
        if node.end_step is None and record.status in LIVE_STATUSES:
            continue  # still training: the run stays RUNNING until a later export
        status = "FINISHED" if node.end_step is not None else end_status
        _mlflow_call("end a run", client.set_terminated, ids[node.id], status=status)
    return summary
