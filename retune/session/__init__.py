"""The run handle and how it starts: buffers metrics, talks to the store in the background."""

from __future__ import annotations

from retune.session._guard import Guard
from retune.session._init import init, load
from retune.session._run import Run
from retune.session._snapshot import MetricSeries, RunSnapshot

__all__ = ["Guard", "MetricSeries", "Run", "RunSnapshot", "init", "load"]
