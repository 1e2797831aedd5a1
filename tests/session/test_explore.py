"""Explorations in a live training process: divergence, ``then=stay``, commands that arrive
during an exploration, ``stop`` ending the exploration (a second stop ending the run), and
``run.explore`` in a plain loop (in-process), including a loop that ends mid-exploration."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import retune
from retune.control import Controller, connect
from retune.errors import CommandRejected
from retune.store import Store, open_store
from tests.cli.conftest import ROOT, poll, trained_to

TRAINER = Path(__file__).with_name("explore_trainer.py")
NAME = "digits-explore"


@pytest.fixture(scope="module")
def trainer(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], Controller]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('explore') / 'retune.db'}"
    proc = subprocess.Popen([sys.executable, str(TRAINER), url, NAME], cwd=ROOT)
    store: Store | None = None
    try:
        poll(trained_to(proc, url, NAME, 20), "the trainer's first steps")
        store = open_store(url, create=False)
        with connect(NAME, store=store) as ctl:
            yield proc, ctl
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if store is not None:
            store.close()


def test_a_diverging_candidate_stops_early_scores_worst_and_stay_goes_back(
    trainer: tuple[subprocess.Popen[bytes], Controller],
) -> None:
    _, ctl = trainer
    command = ctl.explore(lr=[0.02, 1e12], steps=8, metric="val_loss", score="mean:3",
                          then="stay", wait=True, timeout=120)  # fmt: skip
    state = ctl.exploration(command.id)
    assert state["status"] == "done" and command.status == "applied"
    good, bad = state["candidates"]
    assert bad["status"] == "diverged" and bad["score"] is None
    assert bad["steps"] < 8 and ("nan" in bad["reason"] or "inf" in bad["reason"])
    assert good["status"] == "done" and state["winner"] == 0
    values = ctl.store.read_metric(ctl.run.id, "val_loss", nodes=[good["node"]]).values
    assert len(values) == 8 and good["score"] == math.fsum(values[-3:]) / 3
    nodes = {n.id: n for n in ctl.store.list_nodes(ctl.run.id)}
    assert nodes[bad["node"]].end_step == bad["end_step"] < state["start"]["step"] + 8
    # stay: back to where the run was, with the values it had, on a new node
    origin, continued = state["origin"], state["continued"]
    node = nodes[continued["node"]]
    assert continued["from"] == origin["checkpoint"]
    assert node.parent == origin["node"] and node.start_step == origin["step"]
    assert node.change_kind == "restore" and node.values["lr"] == [0.05]
    poll(lambda: len(ctl.store.read_metric(ctl.run.id, "loss", nodes=[node.id]).steps) > 3,
         "training on the origin's branch")  # fmt: skip
    assert ctl.run.status == "running"


def test_commands_during_an_exploration_and_stop_ending_it(
    trainer: tuple[subprocess.Popen[bytes], Controller],
) -> None:
    proc, ctl = trainer
    command = ctl.explore(lr=[0.01, 0.02], steps=10**6, metric="val_loss")

    def running() -> bool:
        return bool(ctl.exploration(command.id)["current"] == 0)

    poll(running, "the first candidate")
    with pytest.raises(CommandRejected, match=r"an exploration \(command \d+\) is running"):
        ctl.set(lr=0.03, wait=True)
    second = ctl.explore(lr=[0.03], steps=5, metric="val_loss")  # valid: refused when applied
    with pytest.raises(CommandRejected, match="explore is refused until it ends"):
        ctl.wait(second.id)
    ctl.pause(wait=True)
    assert ctl.run.status == "paused"
    ctl.continue_(wait=True)
    assert ctl.checkpoint(wait=True).result["checkpoint"]
    # stop ends the exploration, not the run: back to where the run was
    stop = ctl.stop(wait=True)
    assert stop.result["ended"] == "exploration"
    state = ctl.exploration(command.id)
    assert state["status"] == "cancelled" and state["winner"] is None
    assert [c["status"] for c in state["candidates"]] == ["cancelled", "waiting"]
    node = next(n for n in ctl.store.list_nodes(ctl.run.id) if n.id == state["continued"]["node"])
    assert node.parent == state["origin"]["node"] and node.start_step == state["origin"]["step"]
    step = ctl.run.step
    poll(lambda: ctl.run.step > step + 5, "training after the cancelled exploration")
    assert ctl.run.status == "running" and proc.poll() is None
    # a second stop stops the run
    ctl.stop(wait=True)
    assert proc.wait(timeout=60) == 0
    assert ctl.run.status == "stopped"


def _plain_run(url: str) -> tuple[retune.Run, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return retune.init("plain", model=model, optimizer=optimizer, store=url), model, optimizer


def _train(run: retune.Run, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           steps: int) -> None:  # fmt: skip
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        run.step(loss=loss.item())


def test_run_explore_in_a_plain_loop(store_url: str) -> None:
    run, model, optimizer = _plain_run(store_url)
    with run:
        _train(run, model, optimizer, 3)
        command = run.explore(lr=[0.5, 0.01], steps=4, metric="loss")
        assert command.status == "pending"
        _train(run, model, optimizer, 20)
    with open_store(store_url) as store:
        done = store.get_command(command.id)
        assert done.status == "applied", done.reason
        a, b = done.result["candidates"]
        assert a["start_step"] == b["start_step"] == 4 and a["steps"] == b["steps"] == 4
        winner = done.result["candidates"][done.result["winner"]]
        assert winner["score"] == min(a["score"], b["score"])
        nodes = {n.id: n for n in store.list_nodes(run.id)}
        assert {nodes[a["node"]].parent, nodes[b["node"]].parent} == {1}
        # the loop's 20 steps: the 1st applies it, 8 train candidates, 11 continue the winner
        assert store.get_run(run.id).step == 4 + 4 + 11


def test_a_loop_that_ends_mid_exploration_records_it_interrupted(store_url: str) -> None:
    run, model, optimizer = _plain_run(store_url)
    with run:
        command = run.explore(lr=[0.5, 0.01], steps=50, metric="loss")
        _train(run, model, optimizer, 10)
    with open_store(store_url) as store:
        done = store.get_command(command.id)
        assert done.status == "rejected"
        assert done.reason == "the run ended (finished) during the exploration"
        assert done.result["status"] == "interrupted"
        assert [c["status"] for c in done.result["candidates"]] == ["cancelled", "waiting"]
