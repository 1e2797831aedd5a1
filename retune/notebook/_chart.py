"""Live charts inline: ``run.plot("loss", "val_acc")`` / :func:`plot_metric`.

One plotly ``FigureWidget`` (one row per metric) whose traces are the branches of the tree
(the newest eight leaves, as in the dashboard, with its colours), a dotted line and a label at
each change (hover it for the diff). A background thread reads the store every ``interval``
seconds while the run is live and redraws what moved; after the run ends it draws once more
and stops. Each branch is read in full and downsampled like the server does (min/max
buckets, ``max_points`` per branch), so no spike is lost however long the run.
"""

from __future__ import annotations

import html
import math
import threading
import traceback
from collections.abc import Sequence
from typing import Any

from retune.errors import InvalidArgument, RetuneError
from retune.notebook._reader import reader
from retune.store import LIVE_STATUSES, MetricSeries, NodeRecord, Store

__all__ = ["COLORS", "LiveChart", "branch_series", "plot_metric"]

COLORS = ("#3157d5", "#d5533a", "#1f8a4c", "#9b3fc4", "#c99514", "#1796a8", "#b8336a", "#5f6b7a")
"""One colour per branch, in tree order: the dashboard's palette (``static/app.js``)."""
MAX_BRANCHES = 8
"""Branches drawn at most (the newest leaves), as in the dashboard."""
CHANGE_LINE = {"color": "#aab", "width": 1, "dash": "dot"}
MAX_FAILURES = 30
"""Background redraws that may fail in a row before a chart stops following its run."""


def leaves(nodes: Sequence[NodeRecord]) -> list[NodeRecord]:
    """The newest :data:`MAX_BRANCHES` leaves (nodes without children), in tree order."""
    parents = {node.parent for node in nodes}
    return [node for node in nodes if node.id not in parents][-MAX_BRANCHES:]


def branch_series(
    store: Store, run_id: str, key: str, ends: Sequence[int], max_points: int = 2000
) -> dict[int, MetricSeries]:
    """``key`` along each branch (root to each node of ``ends``), downsampled as the server's
    ``/branches`` route does it (one read of the metric)."""
    from retune.session._tree import branch_mask, path_to

    data = store.read_metric(run_id, key)
    nodes = tuple(store.list_nodes(run_id))
    out = {}
    for end in ends:
        path = path_to(nodes, end)
        index = branch_mask(path, data.nodes, data.steps).nonzero()[0]
        index = index[data.steps[index].argsort(kind="stable")]
        out[end] = data.take(index).select(max_points=max_points)
    return out


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_diff(diff: dict[str, Any]) -> str:
    """``lr 0.002 -> 0.0005, weight_decay ...``: a change as one line (not escaped)."""
    parts = []
    for name, change in diff.items():
        if isinstance(change, (list, tuple)) and len(change) == 2:
            parts.append(f"{name} {_number(change[0])} -> {_number(change[1])}")
        else:
            parts.append(f"{name} {change}")
    return ", ".join(parts)


class LiveChart:
    """A chart of one run's metrics that redraws itself while the run trains.

    Display it (it is the last expression of a cell, or ``display(chart)``); ``chart.figure``
    is the plotly ``FigureWidget``; :meth:`refresh` redraws now; :meth:`close` stops the
    updates. :attr:`points` counts the points drawn (after downsampling).
    """

    def __init__(
        self,
        run_id: str,
        store_url: str,
        keys: Sequence[str],
        *,
        interval: float = 1.0,
        max_points: int = 2000,
        height: int | None = None,
    ) -> None:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        if not keys:
            raise InvalidArgument("name the metrics to plot: run.plot('loss', 'val_acc')")
        if max_points < 3:
            raise InvalidArgument(f"max_points must be at least 3, got {max_points}")
        if not interval > 0:
            raise InvalidArgument(f"interval must be a positive number of seconds: {interval}")
        self.run_id = run_id
        self.keys = list(keys)
        self.interval = interval
        self.max_points = max_points
        self._store = reader(store_url)
        self._seen: tuple[Any, ...] | None = None
        self._branches: tuple[int, ...] = ()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.points = 0
        self.errors: list[str] = []
        """The last few tracebacks of failed background redraws (for diagnosis)."""
        rows = len(self.keys)
        figure = make_subplots(
            rows=rows,
            cols=1,
            shared_xaxes=True,
            vertical_spacing=min(0.12, 0.3 / rows),
            subplot_titles=[html.escape(key) for key in self.keys],
        )
        figure.update_layout(
            template="none",
            height=height or 60 + 250 * rows,
            margin={"l": 55, "r": 10, "t": 30, "b": 40},
            legend={"orientation": "h"},
            font={"family": "system-ui, sans-serif", "size": 12},
            meta={"retune_run": run_id},
        )
        figure.update_annotations(font_size=13)
        figure.update_xaxes(title_text="step", row=rows, col=1)
        self.figure = go.FigureWidget(figure)
        self.refresh()
        if not self._ended():
            threading.Thread(target=self._follow, name="retune-chart", daemon=True).start()

    # -- reading and drawing ----------------------------------------------------------------
    def _ended(self) -> bool:
        return self._seen is not None and self._seen[0] not in LIVE_STATUSES

    def refresh(self, force: bool = False) -> bool:
        """Redraw from the store if the run moved (or ``force``); True when it redrew."""
        with self._lock:
            run = self._store.get_run(self.run_id)
            nodes = self._store.list_nodes(self.run_id)
            seen = (run.status, run.step, run.heartbeat_at, len(nodes), nodes[-1].end_step)
            if seen == self._seen and not force:
                return False
            self._draw(nodes)
            self._seen = seen  # only once drawn: a failed draw is tried again
            return True

    def _draw(self, nodes: list[NodeRecord]) -> None:
        ends = leaves(nodes)
        order = {node.id: i for i, node in enumerate(nodes)}
        per_key = {
            key: branch_series(self._store, self.run_id, key, [n.id for n in ends], self.max_points)
            for key in self.keys
        }
        traces: list[dict[str, Any]] = []
        for row, key in enumerate(self.keys, start=1):
            for end in ends:
                series = per_key[key][end.id]
                traces.append(
                    {
                        "x": series.steps.tolist(),
                        "y": [None if math.isnan(v) else v for v in series.values.tolist()],
                        "name": f"n{end.id}",
                        "legendgroup": f"n{end.id}",
                        "showlegend": row == 1,
                        "mode": "lines",
                        "line": {"color": COLORS[order[end.id] % len(COLORS)], "width": 1.6},
                        "xaxis": "x" if row == 1 else f"x{row}",
                        "yaxis": "y" if row == 1 else f"y{row}",
                        "hovertemplate": f"n{end.id} step %{{x}}: %{{y:.4g}}<extra></extra>",
                    }
                )
        shapes, labels = self._changes(nodes)
        fig = self.figure
        branches = tuple(end.id for end in ends)
        with fig.batch_update():
            if branches != self._branches or len(fig.data) != len(traces):
                fig.data = ()
                fig.add_traces([_scatter(t) for t in traces])
                self._branches = branches
            else:
                for trace, new in zip(fig.data, traces, strict=True):
                    trace.x, trace.y = new["x"], new["y"]
            titles = [a for a in fig.layout.annotations if not _is_change_label(a)]
            fig.layout.annotations = [*titles, *labels]
            fig.layout.shapes = shapes
        self.points = sum(len(t["x"]) for t in traces)

    def _changes(self, nodes: list[NodeRecord]) -> tuple[list[dict[str, Any]], list[Any]]:
        """A dotted line in every row at each step where a change starts a node, and one
        label on top naming the nodes that start there (hover it: kind and diff of each).
        Every name is escaped: plotly reads HTML in text."""
        at: dict[int, list[NodeRecord]] = {}
        for node in nodes:
            if node.parent is not None:
                at.setdefault(node.start_step, []).append(node)
        shapes: list[dict[str, Any]] = []
        labels: list[Any] = []
        for step, started in sorted(at.items()):
            for row in range(1, len(self.keys) + 1):
                suffix = "" if row == 1 else str(row)
                shapes.append(
                    {
                        "type": "line",
                        "x0": step,
                        "x1": step,
                        "xref": f"x{suffix}",
                        "yref": f"y{suffix} domain",
                        "y0": 0,
                        "y1": 1,
                        "line": CHANGE_LINE,
                    }
                )
            hover = "<br>".join(
                html.escape(f"n{n.id} {n.change_kind}: {describe_diff(n.diff) or 'same values'}")
                for n in started
            )
            labels.append(
                {
                    "x": step,
                    "xref": "x",
                    "y": 1.0,
                    "yref": "y domain",
                    "yanchor": "bottom",
                    "text": " ".join(f"n{n.id}" for n in started),
                    "showarrow": False,
                    "font": {"size": 10, "color": "#6b7385"},
                    "hovertext": hover,
                    "name": "retune-change",
                }
            )
        return shapes, labels

    # -- following the run ------------------------------------------------------------------
    def _follow(self) -> None:
        failures = 0
        while not self._closed.wait(self.interval):
            try:
                self.refresh()
            except RetuneError:
                continue  # the store is busy or away for a moment: try again next time
            except Exception:
                # the widget's state moved under us (the front end syncs ranges back on the
                # kernel's main thread) or the front end went away: redraw it all next time,
                # and give up only when it keeps failing
                self.errors = [*self.errors[-4:], traceback.format_exc()]
                self._branches = ()
                failures += 1
                if failures >= MAX_FAILURES:
                    return
                continue
            failures = 0
            if self._ended():
                return

    def close(self) -> None:
        """Stop following the run (the chart keeps what it shows)."""
        self._closed.set()

    @property
    def following(self) -> bool:
        """True while the chart still redraws itself."""
        return not self._closed.is_set() and not self._ended()

    def __repr__(self) -> str:
        return f"LiveChart(run={self.run_id!r}, keys={self.keys!r}, points={self.points})"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.figure._repr_mimebundle_(**kwargs)


def _is_change_label(annotation: Any) -> bool:
    return getattr(annotation, "name", None) == "retune-change"


def _scatter(trace: dict[str, Any]) -> Any:
    import plotly.graph_objects as go

    return go.Scatter(**trace)


def plot_metric(run: Any, *keys: str, **options: Any) -> LiveChart:
    """A :class:`LiveChart` of ``keys`` for ``run`` (a live ``Run``, a ``RunSnapshot`` or a
    run id/name; ``store=`` then names the store). Options: ``interval`` (seconds between
    reads), ``max_points`` (per branch), ``height`` (pixels)."""
    store_url = options.pop("store", None)
    if isinstance(run, str):
        from retune.store import open_store

        with open_store(store_url, create=False) as store:
            record = store.get_run(run)
            run_id, url = record.id, store.url
    else:
        run_id = run.id
        url = store_url or _url_of(run)
    if not keys:
        keys = tuple(reader(url).metric_keys(run_id))
    return LiveChart(run_id, url, keys, **options)


def _url_of(run: Any) -> str:
    store = getattr(run, "store", None)
    if isinstance(store, Store):
        return store.url
    raise InvalidArgument("pass store= (the run's store URL) to plot a run read back")
