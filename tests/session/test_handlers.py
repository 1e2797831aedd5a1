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


def test_a_change_the_live_run_rejects_writes_no_checkpoint(store_url: str) -> None:
    """What only the live run can check (here: a rescale of momentum, which OneCycleLR
    drives every step) is rejected before the checkpoint that precedes a change: nothing is
    written (before, a full checkpoint was saved, then its row deleted, its blobs left for
    gc), and the next accepted change takes the first label."""
    import torch

    from retune.checkpoint import ObjectStore
    from retune.errors import CommandRejected
    from retune.store import objects_url_for

    model = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=100)
    with retune.init("rejected", model=model, optimizer=opt, scheduler=sched,
                     store=store_url) as run:  # fmt: skip
        run.step(loss=1.0)
        with pytest.raises(CommandRejected, match="OneCycleLR drives momentum every step"):
            run.set(momentum=0.8)
        with pytest.raises(CommandRejected, match="OneCycleLR drives momentum every step"):
            run.scale(momentum=0.5)
        objects = ObjectStore(objects_url_for(run.store.url))
        assert run.store.list_checkpoints(run.id) == []
        assert list(objects.keys()) == []
        rejected = [c for c in run.store.list_commands(run.id) if c.status == "rejected"]
        assert [c.kind for c in rejected] == ["set", "scale"]
        assert all("OneCycleLR drives momentum" in (c.reason or "") for c in rejected)
        run.set(lr=0.05, mode="constant")
        [before] = run.store.list_checkpoints(run.id)
        assert (before.label, before.reason) == ("c1", "change") and list(objects.keys())
