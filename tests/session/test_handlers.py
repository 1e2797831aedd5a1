"""Command handlers seen from the run: pause holds the loop at a boundary, ``continue`` (and
its old name ``resume``) lets it go on. Real SQLite, a real training thread."""

from __future__ import annotations

import threading
import time

import pytest

import retune
from retune.control._commands import submit
from retune.session._handlers import HANDLERS


def _wait(condition: object, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("word", ["continue", "resume"])
def test_pause_holds_the_loop_and_continue_lets_it_go_on(store_url: str, word: str) -> None:
    run = retune.init("held", store=store_url, poll_interval=0.01)
    done = threading.Event()

    def train() -> None:
        while not done.is_set():
            run.step(loss=1.0)
            time.sleep(0.001)

    worker = threading.Thread(target=train)
    worker.start()
    try:
        paused = submit(run.store, run.id, "pause", {}, source="python")
        _wait(lambda: run.store.get_command(paused.id).status == "applied", "the pause")
        held_at = run.global_step
        assert run.store.get_run(run.id).status == "paused"
        unpaused = submit(run.store, run.id, word, {}, source="python")
        _wait(lambda: run.store.get_command(unpaused.id).status == "applied", word)
        assert run.store.get_run(run.id).status == "running"
        _wait(lambda: run.global_step > held_at, "the loop to go on")
    finally:
        done.set()
        worker.join(60)
    run.finish()
    assert retune.load("held", store=store_url).status == "finished"


def test_every_command_kind_has_a_handler() -> None:
    from retune.store._records import COMMAND_KINDS

    assert set(COMMAND_KINDS) <= set(HANDLERS)
    assert HANDLERS["resume"] is HANDLERS["continue"]
