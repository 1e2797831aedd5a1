"""How runs end: finish, context manager, normal exit without finish, crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import retune


def _script(tmp_path: Path, body: str) -> tuple[subprocess.CompletedProcess[str], str]:
    store = str(tmp_path / "life.db")
    code = "import sys, retune\nstore = sys.argv[1]\n" + body
    done = subprocess.run(
        [sys.executable, "-c", code, store],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, store


def test_normal_exit_without_finish_flushes_and_finishes(tmp_path: Path) -> None:
    done, store = _script(
        tmp_path,
        "run = retune.init('noexit', store=store, flush_interval=3600)\n"
        "for i in range(5000):\n    run.step(loss=float(i))\n",
    )
    assert done.returncode == 0, done.stderr
    snap = retune.load("noexit", store=store)
    assert snap.status == "finished"
    assert len(snap.metric("loss")) == 5000
    assert snap.nodes[0].end_step == 5000


def test_uncaught_exception_marks_the_run_crashed_with_its_traceback(tmp_path: Path) -> None:
    done, store = _script(
        tmp_path,
        "run = retune.init('boom', store=store, flush_interval=3600)\n"
        "for i in range(10):\n    run.step(loss=float(i))\n"
        "raise RuntimeError('exploding gradients')\n",
    )
    assert done.returncode == 1
    assert "exploding gradients" in done.stderr  # the user's traceback is still printed
    snap = retune.load("boom", store=store)
    assert snap.status == "crashed"
    assert snap.run.error is not None and "RuntimeError: exploding gradients" in snap.run.error
    assert len(snap.metric("loss")) == 10


def test_exception_inside_the_context_manager_marks_crashed(store_url: str) -> None:
    with pytest.raises(ZeroDivisionError), retune.init("ctx", store=store_url) as run:
        run.step(loss=1.0)
        _ = 1 / 0
    snap = retune.load("ctx", store=store_url)
    assert snap.status == "crashed" and "ZeroDivisionError" in (snap.run.error or "")
    assert len(snap.metric("loss")) == 1
    store = retune.store.open_store(store_url)
    assert [e.kind for e in store.list_events(snap.id)] == ["crashed"]


def test_keyboard_interrupt_marks_stopped(store_url: str) -> None:
    with pytest.raises(KeyboardInterrupt), retune.init("ctrl-c", store=store_url) as run:
        run.step(loss=1.0)
        raise KeyboardInterrupt
    assert retune.load("ctrl-c", store=store_url).status == "stopped"


def test_import_retune_does_not_import_torch() -> None:
    code = (
        "import sys, retune, retune.store, retune.cli, retune.control\n"
        "heavy = {'torch', 'keras', 'transformers', 'tensorflow'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sigterm_flushes_and_marks_the_run_stopped(tmp_path: Path) -> None:
    import os
    import signal
    import time

    store = str(tmp_path / "term.db")
    code = (
        "import sys, time, retune\n"
        "run = retune.init('termed', store=sys.argv[1], flush_interval=3600)\n"
        "for i in range(10_000_000):\n"
        "    run.step(loss=float(i))\n"
        "    if i == 500: print('ready', flush=True)\n"
        "    time.sleep(0.0005)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, store], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    snap = retune.load("termed", store=store)
    assert snap.status == "stopped" and snap.run.error == "terminated by SIGTERM"
    steps = snap.metric("loss").steps
    assert len(steps) > 500 and steps.tolist() == list(range(1, len(steps) + 1))


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [(0, "finished", None), (None, "finished", None), (3, "crashed", "exited with status 3")],
)
def test_sys_exit_inside_the_context_manager_is_what_its_code_says(
    store_url: str, code: int | None, status: str, error: str | None
) -> None:
    """A script that calls ``sys.exit(0)`` inside ``with`` ended well (issue 8 item 3 made
    ``SystemExit`` a recognized end instead of a crash with a traceback)."""
    with pytest.raises(SystemExit), retune.init("exits", store=store_url) as run:
        run.step(loss=1.0)
        sys.exit(code)
    snap = retune.load("exits", store=store_url)
    assert snap.status == status
    if error is None:
        assert snap.run.error is None
    else:
        assert snap.run.error is not None and error in snap.run.error


@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])
def test_a_sigterm_while_the_end_is_written_waits_for_it(tmp_path: Path, times: int) -> None:
    """A launcher (torchrun) terminates the other ranks the moment one dies, often while a
    rank records the crash: the first SIGTERM waits until the end is written, then ends the
    process with 143 (before, the run stayed ``running`` with no reason). A second one
    interrupts at once, as the module promises."""
    done, store = _script(
        tmp_path,
        "import os, signal\n"
        "with retune.init('ending', store=store) as run:\n"
        "    run.step(loss=1.0)\n"
        "    real = run.store.update_run\n"
        "    def update_run(run_id, **fields):\n"
        "        if 'status' in fields:  # terminated as it records the end\n"
        f"            for _ in range({times}):\n"
        "                os.kill(os.getpid(), signal.SIGTERM)\n"
        "        return real(run_id, **fields)\n"
        "    run.store.update_run = update_run\n"
        "    raise RuntimeError('rank 0 died')\n",
    )
    assert done.returncode == 143, done.stderr
    snap = retune.load("ending", store=store)
    if times == 1:
        assert snap.status == "crashed" and "RuntimeError: rank 0 died" in (snap.run.error or "")
        assert snap.nodes[0].end_step == 1
    else:
        assert snap.status == "running"  # interrupted at once: shown stale once it ages


def test_a_sigterm_while_a_background_thread_writes_an_end_is_not_held(tmp_path: Path) -> None:
    """Signals interrupt only the main thread: a run that ends on another thread (a notebook's
    training thread) does not hold one, so the main thread's blocking call is interrupted at
    once (held, it was delivered to the other thread and the main thread slept on: the
    script would outlive the test's timeout)."""
    done, _ = _script(
        tmp_path,
        "import os, signal, threading, time\n"
        "run = retune.init('bg-end', store=store)\n"
        "real = run.store.update_run\n"
        "def update_run(run_id, **fields):\n"
        "    if 'status' in fields:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(run_id, **fields)\n"
        "run.store.update_run = update_run\n"
        "threading.Thread(target=run.finish).start()\n"
        "time.sleep(3600)\n",
    )
    assert done.returncode == 143, done.stderr
