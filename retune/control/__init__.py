"""Commands and tunables: what may be changed, the two validations, and how changes apply.

* :class:`TunableSpec` / :func:`validate` — plain-data specs, checked at submission (any
  process, no torch) and again in the training process.
* :func:`submit` — queue a command (recorded as rejected, with the reason, when invalid).
  ``resume`` is accepted as the old name of ``continue`` (un-pause); ``continue`` is stored.
* :func:`connect` / :class:`Controller` — control a run from another process
  (``with retune.connect(run) as ctl:`` releases the store connection).
* ``current_user`` lives in :mod:`retune.store` (with ``STALE_AFTER``); re-exported here.
* :class:`LiveTunables` — the training process's side: applies set/scale atomically and keeps
  an attached LR scheduler consistent (``rescale`` or ``constant`` mode).
"""

from __future__ import annotations

from retune.control._client import Controller, connect
from retune.control._commands import KIND_ALIASES, SOURCES, canonical_kind, current_user, submit
from retune.control._knobs import Knob
from retune.control._live import LiveTunables
from retune.control._parse import parse_assignments, parse_value
from retune.control._schedulers import SchedulerControl
from retune.control._tunables import TunableSpec, discover_optimizer, validate
from retune.control._values import TunableValues

__all__ = [
    "KIND_ALIASES",
    "SOURCES",
    "Controller",
    "Knob",
    "LiveTunables",
    "SchedulerControl",
    "TunableSpec",
    "TunableValues",
    "canonical_kind",
    "connect",
    "current_user",
    "discover_optimizer",
    "parse_assignments",
    "parse_value",
    "submit",
    "validate",
]
