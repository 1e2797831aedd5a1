"""Retune in Jupyter (``pip install retune[notebook]``): train in the background of the
kernel, steer from cells, watch live charts.

* :func:`start` / ``run.start(train)`` — run ``train(run)`` in a background thread; the
  :class:`Job` it returns shows and updates its state, can be waited on and stopped; a kernel
  interrupt stops it cleanly at the next step boundary.
* ``run.set(...)``, ``run.scale(...)``, ``run.restore(...)`` from any cell go through the
  command path (source ``notebook``) and return the applied command.
* ``run.hp`` — every tunable per param group, as a table.
* :func:`plot_metric` / ``run.plot("loss", "val_acc")`` — a chart that keeps updating,
  branches overlaid, a marker at each change. ``run.dashboard()`` — the dashboard inline.

Importing :mod:`retune` does not import this package; this package imports plotly and
ipywidgets only when a chart or a job is displayed.
"""

from __future__ import annotations

from retune.notebook._chart import COLORS, LiveChart, branch_series, plot_metric
from retune.notebook._dashboard import dashboard, dashboard_url
from retune.notebook._job import Job, start

__all__ = [
    "COLORS",
    "Job",
    "LiveChart",
    "branch_series",
    "dashboard",
    "dashboard_url",
    "plot_metric",
    "start",
]
