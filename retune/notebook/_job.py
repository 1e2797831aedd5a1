"""Training in the background of a kernel: :func:`start` and the :class:`Job` it returns."""

from __future__ import annotations

import contextlib
import html
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from retune.errors import InvalidArgument, JobTimeout, RetuneError, RunNotLive, StopTraining
from retune.notebook import _interrupt
from retune.notebook._reader import reader

if TYPE_CHECKING:
    from retune.session import Run
    from retune.store import CommandRecord

__all__ = ["Job", "start"]

REFRESH_SECONDS = 0.5
"""How often a displayed job redraws its state while it trains."""

_STATE_COLOURS = {
    "running": "#1f8a4c",
    "paused": "#b7791f",
    "finished": "#6b7385",
    "stopped": "#6b7385",
    "crashed": "#c62f2f",
}


class Job:
    """A training function running in a background thread of this process (a kernel).

    Create it with :func:`start` or ``run.start(train)``. The thread calls
    ``train(run, *args, **kwargs)`` and, when it returns or raises, ends the run as
    ``with run:`` would: ``finished``; ``stopped`` after a stop (``job.stop()``, a ``stop``
    command from anywhere, a kernel interrupt); ``crashed`` with the traceback for any other
    exception (the job catches it, so nothing depends on ``threading.excepthook``).

    Displayed in a notebook it shows its state (running / paused / stopped / finished /
    crashed), the step, the last metrics and, when ``total`` is known, a progress bar, and
    keeps that view current while it trains. In a terminal ``repr(job)`` is one line.
    """

    def __init__(
        self,
        run: Run,
        train: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        total: int | None = None,
    ) -> None:
        self.run = run
        self.total = total
        self.result: Any = None
        """What ``train`` returned (None until it has)."""
        self.error: str | None = None
        """The traceback when ``train`` raised (the run is then ``crashed``)."""
        self.status: str | None = None
        """How the run ended (``finished``, ``stopped``, ``crashed``); None while it trains."""
        self.interrupted = False
        """True once a kernel interrupt asked this job to stop."""
        self._train = train
        self._args = args
        self._kwargs = kwargs
        self._done = threading.Event()
        self._widget: Any = None
        self._thread = threading.Thread(
            target=self._main, name=f"retune-job-{run.name}", daemon=True
        )

    # -- the thread -------------------------------------------------------------------------
    def _begin(self) -> None:
        # the run knows its training thread before its first step: a command sent from a
        # cell meanwhile waits for that thread instead of being applied from the cell
        self.run.training_thread = self._thread
        _interrupt.watch(self)
        self._thread.start()

    def _main(self) -> None:
        status, error = "finished", None
        try:
            self.result = self._train(self.run, *self._args, **self._kwargs)
        except StopTraining:
            status = "stopped"
        except KeyboardInterrupt:
            status, error = "stopped", "interrupted (KeyboardInterrupt)"
        except SystemExit as e:
            if e.code in (None, 0):
                status = "finished"
            else:
                status, error = "crashed", f"the training function exited with status {e.code!r}"
        except BaseException:
            status, error = "crashed", traceback.format_exc()
            self.error = error
        if self.interrupted and status != "crashed":
            status, error = "stopped", "interrupted (kernel interrupt)"
        try:
            self.run.finish(status, error=error)
        except RetuneError as e:  # the store refused the end; the run says so as it can
            self.error = (self.error or "") + f"\nthe run could not be ended: {e}"
        except Exception:
            self.error = (self.error or "") + "\n" + traceback.format_exc()
        self.status = self._ended_status(status)
        _interrupt.unwatch(self)
        self._done.set()
        self._refresh()

    def _ended_status(self, status: str) -> str:
        try:
            return reader(self.run.store.url).get_run(self.run.id).status
        except RetuneError:
            return status

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``running``, ``paused``, or how the run ended: ``finished``, ``stopped``,
        ``crashed``."""
        if self._done.is_set():
            return self.status or "finished"
        return "paused" if self.run.flags.paused else "running"

    @property
    def step(self) -> int:
        """The run's last completed step."""
        return self.run.global_step

    @property
    def done(self) -> bool:
        """True once the training function returned or raised and the run was ended."""
        return self._done.is_set()

    def metrics(self) -> dict[str, float]:
        """The last value of every metric as written to the store (the writer flushes every
        second)."""
        try:
            last = reader(self.run.store.url).last_metrics([self.run.id]).get(self.run.id, {})
        except RetuneError:
            return {}
        return {key: value for key, (_, value) in sorted(last.items())}

    # -- waiting and stopping ---------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> str:
        """Block until the training function has ended and the run is closed; returns
        :attr:`state`. Raises ``JobTimeout`` after ``timeout`` seconds (training goes on).
        A kernel interrupt while waiting stops the job too (see :mod:`._interrupt`)."""
        if not self._done.wait(timeout):
            raise JobTimeout(f"{self!r} is still {self.state} after {timeout:g}s")
        return self.state

    def wait_for(
        self,
        step: int | None = None,
        *,
        until: Callable[[Job], bool] | None = None,
        timeout: float = 120.0,
    ) -> int:
        """Block until the run reaches ``step`` (and/or ``until(job)`` is true) or the job
        ends; returns the step then. ``JobTimeout`` after ``timeout`` seconds."""
        if step is None and until is None:
            raise InvalidArgument("wait_for needs step= or until=")
        deadline = time.monotonic() + timeout
        while not self._done.is_set():
            reached = step is None or self.run.global_step >= step
            if reached and (until is None or until(self)):
                return self.run.global_step
            if time.monotonic() >= deadline:
                wanted = f"step {step}" if step is not None else "its condition"
                raise JobTimeout(
                    f"{self!r} did not reach {wanted} within {timeout:g}s (it is {self.state})"
                )
            self._done.wait(0.02)
        return self.run.global_step

    def stop(self, *, timeout: float = 120.0) -> str:
        """End the training cleanly at its next step boundary (a ``stop`` command, recorded
        in the audit, checkpointed) and wait until the run is closed; returns :attr:`state`
        (``stopped``). A job that has already ended is left as it is."""
        if not self._done.is_set():
            with contextlib.suppress(RunNotLive):  # it ended meanwhile
                self._send("stop", timeout)
        return self.wait(timeout)

    def pause(self, *, timeout: float = 60.0) -> CommandRecord:
        """Hold the training at its next step boundary (a ``pause`` command)."""
        return self._send("pause", timeout)

    def resume(self, *, timeout: float = 60.0) -> CommandRecord:
        """Let a paused training continue (a ``continue`` command)."""
        return self._send("continue", timeout)

    def _send(self, kind: str, timeout: float) -> CommandRecord:
        from retune.session._steer import send

        return send(self.run, kind, {}, timeout=timeout)

    def _interrupt(self) -> None:
        """A kernel interrupt (signal handler, main thread): stop at the next boundary."""
        if not self._done.is_set():
            self.interrupted = True
            self.run.request_stop()

    # -- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Job(run={self.run.name!r}, state={self.state}, step={self.step})"

    def _repr_html_(self) -> str:
        state = self.state
        colour = _STATE_COLOURS.get(state, "#1d2330")
        step = self.step
        parts = [
            f'<div class="retune-job" data-state="{state}" data-step="{step}" '
            'style="font-family:system-ui,sans-serif;font-size:13px">',
            f"<b>{html.escape(self.run.name)}</b> "
            f'<span style="color:{colour};font-weight:600">{state}</span> step {step}',
        ]
        if self.total:
            parts.append(
                f' <progress max="{self.total}" value="{min(step, self.total)}" '
                'style="vertical-align:middle;width:12em"></progress> '
                f"{min(100.0, 100.0 * step / self.total):.0f}%"
            )
        metrics = self.metrics()
        if metrics:
            shown = "  ".join(f"{html.escape(k)}={v:.4g}" for k, v in metrics.items())
            parts.append(f'<div style="color:#6b7385">{shown}</div>')
        if self.error:
            last = self.error.strip().splitlines()[-1]
            parts.append(
                f'<div style="color:#c62f2f">{html.escape(last)} '
                "(<code>job.error</code> holds the traceback)</div>"
            )
        parts.append("</div>")
        return "".join(parts)

    def _repr_mimebundle_(self, **_: Any) -> dict[str, Any]:
        """A live view (an ipywidgets HTML widget, redrawn while the job trains), with the
        static HTML and the one-line text beside it for front ends without widgets."""
        bundle: dict[str, Any] = {"text/plain": repr(self), "text/html": self._repr_html_()}
        widget = self._live_widget()
        if widget is not None:
            bundle.update(widget._repr_mimebundle_())
        return bundle

    def _live_widget(self) -> Any:
        if self._widget is None:
            try:
                import ipywidgets
            except ImportError:
                return None
            self._widget = ipywidgets.HTML(self._repr_html_())
            if not self._done.is_set():
                threading.Thread(target=self._redraw, name="retune-job-view", daemon=True).start()
        return self._widget

    def _redraw(self) -> None:
        while not self._done.wait(REFRESH_SECONDS):
            self._refresh()
        self._refresh()

    def _refresh(self) -> None:
        if self._widget is not None:
            try:
                self._widget.value = self._repr_html_()
            except Exception:  # the front end went away: the job goes on regardless
                return


def start(
    train: Callable[..., Any], run: Run, /, *args: Any, total: int | None = None, **kwargs: Any
) -> Job:
    """Start ``train(run, *args, **kwargs)`` in a background thread; returns its :class:`Job`
    at once. ``total`` is the expected number of steps (a progress bar when displayed).

    The job owns the end of the run (``finish``), so ``train`` need not use ``with run:``.
    One job per run: starting a second while one trains raises ``InvalidArgument``.
    """
    if not callable(train):
        raise InvalidArgument(f"start needs a training function, got {type(train).__name__}")
    if run.ended:
        raise RunNotLive(f"run {run.name} ({run.id}) has ended; start a new one")
    trainer = run.training_thread
    if trainer is not None and trainer.is_alive() and trainer is not threading.current_thread():
        raise InvalidArgument(f"run {run.name} already trains in thread {trainer.name}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise InvalidArgument(f"total must be a positive number of steps, got {total!r}")
    job = Job(run, train, args, dict(kwargs), total=total)
    job._begin()
    return job
