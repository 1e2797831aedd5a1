"""Jobs and the command path from another thread, without a kernel (tiny runs, no torch).

The training function here plays a notebook's: it steps in a background thread while this
(main) thread sends commands as a cell would. Everything goes through a real SQLite store.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import retune
from retune.errors import CommandRejected, InvalidArgument, RunNotLive
from retune.notebook import _interrupt, start
from retune.notebook._chart import branch_series, describe_diff, leaves
from retune.session._steer import command_source


class Trainer:
    """``train(run)``: steps until stopped, recording the knob's value seen at each step."""

    def __init__(self) -> None:
        self.seen: dict[int, float] = {}

    def __call__(self, run: Any) -> str:
        while True:
            step = run.step(loss=1.0 / (run.global_step + 1))
            self.seen[step] = run.hp.get("clip", 0.0)
            threading.Event().wait(0.001)  # pace it: a few hundred steps a second


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'retune.db'}"


APPLIED_IN: list[threading.Thread] = []  # the threads the "decay" knob's setter ran in


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, store: str) -> str:
    """SQLite, and the test PostgreSQL when one is configured (else that case skips)."""
    if request.param == "postgres":
        from tests._postgres import fresh_postgres

        return fresh_postgres()
    return store


@pytest.fixture
def steered(any_store: str) -> Iterator[tuple[Any, Any, Trainer]]:
    run = retune.init("steered", store=any_store, checkpoint_every_n_steps=10)
    run.tunable("clip", 1.0, bounds=(0.0, None), doc="<script>x</script> clip norm")
    decay = [0.1]

    def set_decay(value: float) -> None:
        APPLIED_IN.append(threading.current_thread())
        decay[0] = value

    run.tunable("decay", get=lambda: decay[0], set=set_decay, bounds=(0.0, 1.0))
    APPLIED_IN.clear()
    trainer = Trainer()
    job = run.start(trainer, total=10_000)
    yield run, job, trainer
    job.stop()


def test_cells_steer_a_background_training(
    steered: tuple[Any, Any, Trainer], any_store: str
) -> None:
    store = any_store
    run, job, trainer = steered
    assert job.wait_for(step=15) >= 15 and job.state == "running"
    changed = run.set(clip=0.5)
    # applied by the training thread at the boundary after step ``at``: the steps after it
    # train with 0.5
    assert changed.status == "applied" and changed.source == command_source() == "python"
    at = changed.applied_step
    job.wait_for(step=at + 3)
    assert trainer.seen[at - 1] == 1.0 and trainer.seen[at + 1] == 0.5
    with pytest.raises(CommandRejected, match="clip must be >= 0"):
        run.set(clip=-1.0)
    scaled = run.scale(clip=0.5)
    assert scaled.status == "applied" and run.hp["clip"] == 0.25
    restored = run.restore(f"n1@{at}", clip=0.9, decay=0.3)
    assert restored.status == "applied" and run.hp.clip == 0.9 and run.hp.decay == 0.3
    # the restore and its values were applied by the training thread, not by this one
    assert APPLIED_IN and set(APPLIED_IN) == {run.training_thread}
    assert run.training_thread is not threading.current_thread()
    assert job.stop() == "stopped" and job.state == "stopped" and job.done
    with retune.connect(run.id, store=store) as ctl:
        audit = ctl.history()
        record = ctl.run
    assert [(c.kind, c.status) for c in audit] == [
        ("set", "applied"),
        ("set", "rejected"),
        ("scale", "applied"),
        ("restore", "applied"),
        ("stop", "applied"),
    ]
    assert record.status == "stopped"
    nodes = retune.load(run.id, store=store).tree()
    assert [(n.id, n.parent, n.change_kind) for n in nodes] == [
        (1, None, "start"),
        (2, 1, "set"),
        (3, 2, "scale"),
        (4, 1, "restore"),
    ]
    with pytest.raises(RunNotLive):
        run.set(clip=0.1)


def test_hp_is_a_table_of_every_tunable(steered: tuple[Any, Any, Trainer]) -> None:
    run, _job, _ = steered
    assert dict(run.hp) == {"clip": 1.0, "decay": 0.1}
    assert repr(run.hp) == "TunableValues(clip=1, decay=0.1)"
    table = run.hp._repr_html_()
    assert "<td>clip</td>" in table and "<script>" not in table and "&lt;script&gt;" in table
    with pytest.raises(AttributeError, match="no tunable 'nope'"):
        _ = run.hp.nope


def test_a_training_function_that_raises_crashes_its_run(store: str) -> None:
    run = retune.init("crashing", store=store)

    def broken(run: Any) -> None:
        run.step(loss=1.0)
        raise ValueError("boom")

    job = start(broken, run)
    assert job.wait(30) == "crashed"
    assert job.error is not None and "ValueError: boom" in job.error
    record = retune.load(run.id, store=store).run
    assert record.status == "crashed" and record.error is not None
    assert "Traceback" in record.error and "in broken" in record.error
    assert "crashed" in job._repr_html_() and "ValueError: boom" in job._repr_html_()


def test_an_interrupt_stops_every_running_job_at_a_boundary(store: str) -> None:
    run = retune.init("interrupted", store=store)
    job = run.start(Trainer())
    job.wait_for(step=5)
    # what the kernel's SIGINT runs while idle (the kernel test sends a real SIGINT)
    _interrupt._idle(signal.SIGINT, None)
    assert job.wait(30) == "stopped" and job.interrupted
    record = retune.load(run.id, store=store)
    assert record.run.error == "interrupted (kernel interrupt)"
    assert [c.step for c in record.checkpoints if c.reason == "stop"] == [record.run.step]
    # during a cell the interrupt still reaches the cell as KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _interrupt._in_cell(signal.SIGINT, None)
    assert not _interrupt.install()  # no kernel here: nothing is installed


def test_start_refuses_what_it_cannot_run(store: str) -> None:
    run = retune.init("refused", store=store)
    with pytest.raises(InvalidArgument, match="training function"):
        start("train", run)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="total"):
        run.start(Trainer(), total=0)
    job = run.start(Trainer())
    with pytest.raises(InvalidArgument, match="already trains"):
        run.start(Trainer())
    assert job.stop() == "stopped"
    with pytest.raises(RunNotLive):
        run.start(Trainer())


def test_chart_branches_match_the_servers(store: str) -> None:
    """The chart reads each branch as the dashboard's /branches route does: same points."""
    from fastapi.testclient import TestClient

    from retune.server import create_app
    from retune.store import open_store

    with retune.init("branches", store=store, checkpoint_every_n_steps=50) as run:
        run.tunable("clip", 1.0, bounds=(0.0, None))
        for i in range(3000):
            run.step(loss=float((i * 7919) % 101), acc=i / 3000)
            if i == 1500:
                run.restore("n1@1450", clip=0.3)
    with open_store(store) as opened:
        nodes = opened.list_nodes(run.id)
        ends = [n.id for n in leaves(nodes)]
        assert ends == [2]
        mine = branch_series(opened, run.id, "loss", ends, max_points=300)[2]
        with TestClient(create_app(opened, allowed_hosts={"testserver"})) as client:
            answer = client.get(
                f"/api/runs/{run.id}/branches",
                params={"key": "loss", "node": "n2", "max_points": 300},
            ).json()["branches"]["n2"]
    assert mine.steps.tolist() == answer["steps"] and mine.values.tolist() == answer["values"]
    assert max(answer["values"]) == 100.0 and len(answer["steps"]) <= 300  # spikes kept
    assert describe_diff(nodes[1].diff) == "clip 1 -> 0.3"


def test_dashboard_is_the_runs_page_inline(store: str) -> None:
    import httpx

    from retune.notebook import dashboard_url

    run = retune.init("framed", store=store)
    try:
        frame = run.dashboard(port=18765)
        assert frame.src.endswith(f"/runs/{run.id}") and frame.height == 720
        assert httpx.get(frame.src, timeout=10).status_code == 200
        assert dashboard_url(run.store.url) == frame.src.split("runs/")[0]  # one per store
    finally:
        run.finish()


def test_a_job_pauses_and_continues(store: str) -> None:
    run = retune.init("pausing", store=store)
    job = run.start(Trainer())
    job.wait_for(step=3)
    paused = job.pause()
    assert paused.status == "applied" and job.state == "paused"
    held = job.step
    assert "paused" in job._repr_html_() and paused.applied_step == held
    job.resume()
    assert job.wait_for(step=held + 5) >= held + 5 and job.state == "running"
    assert job.stop() == "stopped"
