"""A clean stop (command, SIGTERM, Ctrl-C) checkpoints where it stops; resume continues there.

Real subprocess trainers (``stop_trainer.py``), real SQLite, real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import retune
from retune.control._commands import submit
from retune.errors import StopTraining
from retune.store import open_store

TRAINER = str(Path(__file__).with_name("stop_trainer.py"))


def _start(store: str, name: str, mode: str) -> subprocess.Popen[str]:
    # A pytest-xdist worker ignores SIGINT, and an ignored signal stays ignored across exec:
    # the trainer would never see the test's Ctrl-C (Python installs its handler only where
    # SIGINT is not ignored). Started while SIGINT has a handler here, it starts as from a shell.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, TRAINER, store, name, mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, previous)


def _run(store: str, name: str, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, TRAINER, store, name, mode],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _line(stdout: str, first_word: str) -> list[str]:
    lines = [line.split() for line in stdout.splitlines() if line.startswith(first_word + " ")]
    assert lines, stdout
    return lines[-1]


def _signal_after_ready(store: str, name: str, mode: str, signum: int) -> tuple[int, str, str]:
    proc = _start(store, name, mode)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def _resumed_start(store: str, name: str) -> list[str]:
    done = _run(store, name, "resume")
    assert done.returncode == 0, done.stderr
    return _line(done.stdout, "start")


@pytest.mark.parametrize("mode", ["plain", "with"])
def test_sigterm_checkpoints_at_the_boundary_and_resume_continues_exactly_there(
    tmp_path: Path, mode: str
) -> None:
    store = str(tmp_path / "term.db")
    code, out, err = _signal_after_ready(store, "termed", mode, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    _, final_step, final_weights = _line(out, "final")
    snap = retune.load("termed", store=store)
    # issue 8 item 3: inside `with`, SIGTERM is a stop, not a crash
    assert snap.status == "stopped" and snap.run.error == "terminated by SIGTERM"
    assert snap.run.step == int(final_step)
    assert len(snap.metric("loss")) == int(final_step)
    last = open_store(store).list_checkpoints(snap.id)[-1]
    assert (last.reason, last.step) == ("stop", int(final_step))
    _, start_step, lr, start_weights = _resumed_start(store, "termed")
    assert int(start_step) == int(final_step)
    assert start_weights == final_weights  # the exact state at the stop, not an earlier one


def test_ctrl_c_checkpoints_at_the_boundary(tmp_path: Path) -> None:
    store = str(tmp_path / "int.db")
    code, out, err = _signal_after_ready(store, "interrupted", "with", signal.SIGINT)
    assert code != 0 and "KeyboardInterrupt" in err
    _, final_step, final_weights = _line(out, "final")
    snap = retune.load("interrupted", store=store)
    assert snap.status == "stopped"
    last = open_store(store).list_checkpoints(snap.id)[-1]
    assert (last.reason, last.step) == ("stop", int(final_step))
    _, start_step, _, start_weights = _resumed_start(store, "interrupted")
    assert (int(start_step), start_weights) == (int(final_step), final_weights)


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return float(loss.item())


def test_stop_command_then_resume_continues_at_the_stop_with_the_change(tmp_path: Path) -> None:
    """Issue 8 item 2: set lr at step ~N, stop later: resume starts at the stop, new lr."""
    store = str(tmp_path / "stop.db")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(16, 4)
    with retune.init("stopper", model=model, optimizer=opt, store=store, poll_interval=0.01) as run:
        for _ in range(20):
            run.step(loss=_train(model, opt, x))
        submit(run.store, run.id, "set", {"values": {"lr": 0.01}}, source="python")
        deadline = time.monotonic() + 60
        while run.node == 1 and time.monotonic() < deadline:  # applied at a boundary
            run.step(loss=_train(model, opt, x))
        set_step = run.global_step
        for _ in range(15):
            run.step(loss=_train(model, opt, x))
        submit(run.store, run.id, "stop", {}, source="python")
        with pytest.raises(StopTraining):
            while time.monotonic() < deadline:
                run.step(loss=_train(model, opt, x))
    stop_step = run.global_step
    assert run.node == 2 and stop_step > set_step + 15
    stopped_weights = ",".join(
        f"{v:.9g}" for v in torch.cat([p.detach().flatten() for p in model.parameters()])
    )
    assert retune.load("stopper", store=store).status == "stopped"
    _, start_step, lr, start_weights = _resumed_start(store, "stopper")
    assert int(start_step) == stop_step
    assert float(lr) == 0.01
    assert start_weights == stopped_weights


def test_a_stop_ends_run_epochs_and_run_batches_and_the_script_exits_0(tmp_path: Path) -> None:
    """Issue 8 item 6: no `with`, own stop at step 30: the loops end, the code after runs."""
    store = str(tmp_path / "iter.db")
    done = _run(store, "iterating", "iterators")
    assert done.returncode == 0, done.stderr
    _, _, _, step, epoch, batch = _line(done.stdout, "after")
    snap = retune.load("iterating", store=store)
    assert snap.status == "stopped"
    assert int(step) >= 30 and snap.run.step == int(step)
    last = open_store(store).list_checkpoints(snap.id)[-1]
    assert (last.reason, last.step) == ("stop", int(step))
    # the stopped epoch is not counted as done: resume finishes it
    assert (int(epoch), int(batch)) == ((int(step) - 1) // 16, (int(step) - 1) % 16 + 1)


def test_a_crash_in_a_training_thread_marks_the_run_crashed(tmp_path: Path) -> None:
    """Issue 8 item 6: threading.excepthook is hooked too."""
    store = str(tmp_path / "thread.db")
    done = _run(store, "threaded", "thread")
    assert done.returncode == 0 and "main thread done" in done.stdout, done.stderr
    assert "worker exploded" in done.stderr  # the thread's traceback is still printed
    snap = retune.load("threaded", store=store)
    assert snap.status == "crashed"
    assert snap.run.error is not None and "RuntimeError: worker exploded" in snap.run.error
    assert len(snap.metric("loss")) == 20


def test_a_second_sigterm_interrupts_a_process_that_reaches_no_boundary(tmp_path: Path) -> None:
    store = str(tmp_path / "blocked.db")
    proc = _start(store, "blocked", "blocked")
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGTERM)
    assert "stopping at the next step boundary" in proc.stderr.readline()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    snap = retune.load("blocked", store=store)
    assert snap.status == "stopped" and len(snap.metric("loss")) == 60
    assert open_store(store).list_checkpoints(snap.id) == []  # no boundary, no checkpoint


def test_with_no_boundary_the_first_sigterm_interrupts_after_the_grace_period(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "grace.db")
    code, _, err = _signal_after_ready(store, "graced", "blocked", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert retune.load("graced", store=store).status == "stopped"
