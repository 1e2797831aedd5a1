"""A real training in a subprocess, controlled from this process through the CLI and Python."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import retune
from retune.control import connect
from retune.errors import CommandRejected, RunNotLive
from retune.store import open_store

TRAINER = Path(__file__).with_name("trainer.py")


def _cli(store: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retune", *args, "--store", store],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Trainer:
    def __init__(
        self,
        store: str,
        name: str,
        steps: int = 1_000_000,
        delay: float = 0.005,
        poll_interval: float = 0.02,
    ):
        self.store, self.name = store, name
        self.proc = subprocess.Popen(
            [sys.executable, str(TRAINER), store, name, str(steps), str(delay), str(poll_interval)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            assert time.monotonic() < deadline, "trainer did not start"
            try:
                if open_store(store).get_run(name).step >= 5:
                    break
            except retune.RetuneError:
                pass
            time.sleep(0.1)

    def finish(self) -> list[dict[str, Any]]:
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        groups: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
        return groups

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def trainer(store_url: str) -> Iterator[Trainer]:
    running = Trainer(store_url, "e2e")
    yield running
    running.kill()


def _eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _values(store: str) -> dict[str, Any]:
    return {e["name"]: e["value"] for e in open_store(store).get_run("e2e").tunables}


@pytest.mark.slow
def test_lr_changed_from_another_process_by_cli_and_connect(trainer: Trainer) -> None:
    store = trainer.store
    done = _cli(store, "set", "e2e", "lr=0.03")
    assert done.returncode == 0, done.stderr
    assert "applied set at step" in done.stdout and "lr[body] 0.1 -> 0.03" in done.stdout

    ctl = connect("e2e", store=store)
    applied = ctl.set(lr=0.02, group="body", wait=True)
    assert applied.status == "applied" and applied.applied_step is not None
    assert applied.result["diff"] == {"lr[body]": [0.03, 0.02]}
    assert _values(store)["lr"] == [0.02, 0.03]

    time.sleep(0.3)
    ctl.stop(wait=True)
    groups = trainer.finish()
    assert [g["lr"] for g in groups] == [0.02, 0.03]  # the optimizer's own param groups

    snap = retune.load("e2e", store=store)
    assert snap.status == "stopped"
    lr = snap.metric("lr")
    step = applied.applied_step
    assert set(lr.values[lr.steps > step].tolist()) == {0.02}
    assert set(lr.values[lr.steps <= step].tolist()) <= {0.1, 0.03}
    nodes = snap.nodes
    assert [n.change_kind for n in nodes] == ["start", "set", "set"]
    assert nodes[2].diff == {"lr[body]": [0.03, 0.02]} and nodes[2].parent == nodes[1].id
    assert nodes[2].start_step == step and nodes[1].end_step == step
    assert nodes[2].values["lr"] == [0.02, 0.03]
    assert set(lr.nodes[lr.steps > step].tolist()) == {nodes[2].id}
    changes = _cli(store, "changes", "e2e")
    assert "cli" in changes.stdout and "python" in changes.stdout


REJECTIONS: list[tuple[dict[str, Any], int | None, str]] = [
    ({"lrr": 0.1}, None, "unknown tunable 'lrr'; valid names: clip_norm, dampening, fragile"),
    ({"lr": "abc"}, None, "lr expects a float, got 'abc'"),
    ({"lr": math.nan}, None, "lr must be finite"),
    ({"lr": math.inf}, None, "lr must be finite"),
    ({"lr": -0.1}, None, "lr must be >= 0, got -0.1"),
    ({"momentum": 1.0}, None, "momentum must be >= 0 and < 1, got 1"),
    ({"lr": 0.01}, 7, "group 7 does not exist; the groups are: 0 (body), 1"),
    ({"fragile": 2.0}, None, "setting fragile failed: ValueError: refusing to set fragile"),
]


@pytest.mark.slow
def test_rejections_leave_training_running_and_values_unchanged(trainer: Trainer) -> None:
    store = trainer.store
    ctl = connect("e2e", store=store)
    before = _values(store)
    for values, group, reason in REJECTIONS:
        with pytest.raises(CommandRejected) as caught:
            ctl.set(values, group=group, wait=True)
        assert reason.split(": ValueError")[0] in str(caught.value)
        assert _values(store) == before
    # an Adam-only name: betas does not exist on SGD, and the CLI says so with exit 2
    bad = _cli(store, "set", "e2e", "betas=0.9,1.0")
    assert bad.returncode == 2 and bad.stderr.startswith("retune: error: unknown tunable")
    assert "Traceback" not in bad.stderr
    step_before = open_store(store).get_run("e2e").step
    _eventually(lambda: open_store(store).get_run("e2e").step > step_before)  # still training
    commands = ctl.history()
    assert [c.status for c in commands] == ["rejected"] * (len(REJECTIONS) + 1)
    fragile = commands[len(REJECTIONS) - 1]
    assert fragile.applied_step is None and "refusing to set fragile to 2.0" in (
        fragile.reason or ""
    )
    ctl.stop(wait=True)
    groups = trainer.finish()
    assert [g["lr"] for g in groups] == [0.1, 0.05]
    assert [g["momentum"] for g in groups] == [0.9, 0.9]
    with pytest.raises(RunNotLive, match="is stopped"):
        ctl.set(lr=0.01)
    assert ctl.history()[-1].status == "rejected"
    late = _cli(store, "set", "e2e", "lr=0.01")
    assert late.returncode == 2 and "is stopped" in late.stderr


@pytest.mark.slow
def test_pause_resume_stop(trainer: Trainer) -> None:
    store = trainer.store
    ctl = connect("e2e", store=store)
    paused = ctl.pause(wait=True)
    assert ctl.run.status == "paused"
    time.sleep(1.5)
    held = ctl.run
    assert held.step == paused.applied_step
    time.sleep(1.2)
    assert ctl.run.heartbeat_at is not None and held.heartbeat_at is not None
    assert ctl.run.heartbeat_at > held.heartbeat_at  # alive while paused
    knob = ctl.set(clip_norm=0.5, wait=True)  # commands still apply while paused
    assert knob.applied_step == paused.applied_step
    assert _cli(store, "resume", "e2e").returncode == 0
    assert ctl.run.status == "running"
    _eventually(lambda: ctl.run.step > (paused.applied_step or 0))
    with pytest.raises(CommandRejected, match="not paused"):
        ctl.resume(wait=True)
    stopped = _cli(store, "stop", "e2e")
    assert stopped.returncode == 0 and "applied stop at step" in stopped.stdout
    trainer.finish()
    snap = retune.load("e2e", store=store)
    assert snap.status == "stopped"
    assert snap.metric("clip").values[-1] == 0.5
