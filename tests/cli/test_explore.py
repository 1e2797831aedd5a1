"""``retune explore`` against a live digits model: candidates from one checkpoint, each exactly
what a separate restore with its value trains, scored, the run continuing from the best; bad
specs refused with the reason while training goes on.

One trainer subprocess serves the whole module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retune.control import connect
from retune.errors import CommandRejected
from retune.store import open_store
from tests.cli.conftest import ROOT, poll, retune_cli, trained_to

TRAINER = Path(__file__).parents[1] / "session" / "explore_trainer.py"
NAME = "digits-explore"
STEPS = 6


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A digits trainer running until stopped; yields the store URL once it has trained."""
    url = f"sqlite:///{tmp_path_factory.mktemp('explore') / 'retune.db'}"
    proc = subprocess.Popen([sys.executable, str(TRAINER), url, NAME], cwd=ROOT)
    try:
        poll(trained_to(proc, url, NAME, 20), "the trainer's first steps")
        yield url
    finally:
        if proc.poll() is None:
            retune_cli("stop", NAME, "--store", url, "--timeout", "30")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _series(
    url: str, run_id: str, key: str, node: int, end: int | None = None
) -> tuple[list[int], list[float]]:
    """The node's points of ``key`` (up to step ``end``: the winner's node may go on)."""
    with open_store(url, create=False) as store:
        series = store.read_metric(run_id, key, nodes=[node], end=end)
    return series.steps.tolist(), series.values.tolist()


def test_bad_specs_are_rejected_with_a_reason_and_training_goes_on(live: str) -> None:
    done = retune_cli("explore", NAME, "momentumx=0.1,0.2", "--steps", "5", "--metric",
                      "val_loss", "--store", live)  # fmt: skip
    assert done.returncode == 2 and "unknown tunable 'momentumx'" in done.stderr, done.stderr
    with open_store(live, create=False) as store, connect(NAME, store=store) as ctl:
        run = ctl.run
        cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
            ({"lr": []}, {}, "explore's lr has an empty list of values"),
            ({"lr": [0.01 * i for i in range(1, 10)], "momentum": [0.1, 0.5]}, {},
             "9 lr x 2 momentum = 18 candidates, more than the cap of 16"),
            ({"lr": [0.1, -1.0]}, {}, "lr"),
            ({"lr": [0.1, 0.1]}, {}, "lists 0.1 twice"),
            ({"lr": [0.1]}, {"steps": 0}, "steps must be 1 to"),
            ({"lr": [0.1]}, {"score": "mean:0"}, "score must be 'last' or 'mean:K'"),
            ({"lr": [0.1]}, {"start": "c999"}, "checkpoint"),
        ]  # fmt: skip
        for values, options, reason in cases:
            with pytest.raises(CommandRejected, match=re.escape(reason)):
                ctl.explore(values, **{"steps": 5, "metric": "val_loss", **options})
        commands = store.list_commands(run.id)
        assert [c.status for c in commands] == ["rejected"] * (len(cases) + 1)
        assert all(c.kind == "explore" and c.reason for c in commands)
        step = ctl.run.step
        poll(lambda: ctl.run.step > step + 20, "training to go on")
        assert ctl.run.status == "running"


def test_explore_three_lrs_restores_each_exactly_and_continues_from_the_best(live: str) -> None:
    done = retune_cli("explore", NAME, "lr=0.1,0.03,0.01", "--steps", str(STEPS), "--from",
                      "n1@10", "--metric", "val_loss", "--json", "--store", live)  # fmt: skip
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["status"] == "done"
    start, candidates = state["start"], state["candidates"]
    assert start["step"] == 10 and start["node"] == 1  # --from n1@10
    assert state["origin"]["step"] > 20  # where the run was: saved, not the start
    assert [c["values"] for c in candidates] == [{"lr": 0.1}, {"lr": 0.03}, {"lr": 0.01}]
    with open_store(live, create=False) as store:
        run = store.get_run(NAME)
        nodes = {n.id: n for n in store.list_nodes(run.id)}
        command = store.get_command(state["command"])
    assert command.status == "applied" and command.result["winner"] == state["winner"]
    end = start["step"] + STEPS
    for c in candidates:  # three branches from the same checkpoint, each with its diff
        node = nodes[c["node"]]
        assert node.parent == start["node"] and node.start_step == start["step"]
        assert node.change_kind == "explore" and node.diff == {"lr": [0.05, c["values"]["lr"]]}
        assert c["status"] == "done" and c["end_step"] == start["step"] + STEPS
        if c["node"] != state["continued"]["node"]:
            assert node.end_step == start["step"] + STEPS
        steps, values = _series(live, run.id, "val_loss", c["node"], end)
        assert steps[-1] == start["step"] + STEPS and c["score"] == values[-1]
        assert node.info["explore"]["score"] == c["score"]
    scores = [c["score"] for c in candidates]
    assert state["winner"] == int(np.argmin(scores))
    winner = candidates[state["winner"]]
    assert nodes[winner["node"]].info["explore"]["winner"] is True
    # training continues from the best candidate's end state, with its value
    continued = state["continued"]["node"]
    if state["winner"] == len(candidates) - 1:
        assert continued == winner["node"]
    else:
        assert nodes[continued].parent == winner["node"]
        assert nodes[continued].start_step == start["step"] + STEPS
        assert state["continued"]["from"] == winner["checkpoint"]
    poll(lambda: len(_series(live, run.id, "loss", continued)[0]) > STEPS + 2,
         "training on the winner's branch")  # fmt: skip
    with open_store(live, create=False) as store:
        lr = next(t for t in store.get_run(run.id).tunables if t["name"] == "lr")
        assert lr["value"] == [winner["values"]["lr"]]
    shown = retune_cli("explorations", NAME, "--store", live)
    assert shown.returncode == 0, shown.stderr
    assert f"winner: candidate {state['winner'] + 1}; the run continues on n{continued}" in (
        shown.stdout
    )

    # each candidate trained exactly what a separate restore with its value trains
    for c in candidates:
        lr = c["values"]["lr"]
        with connect(NAME, store=live) as ctl:
            branch = ctl.restore(start["checkpoint"], set={"lr": lr}, wait=True).node
        assert branch is not None

        def trained(branch: int = branch) -> bool:
            return len(_series(live, run.id, "loss", branch)[0]) >= STEPS

        poll(trained, "the restored branch's steps")
        for key in ("loss", "val_loss"):
            steps, values = _series(live, run.id, key, branch)
            cand_steps, cand_values = _series(live, run.id, key, c["node"], end)
            assert steps[:STEPS] == cand_steps == list(range(start["step"] + 1,
                                                             start["step"] + STEPS + 1))  # fmt: skip
            assert values[:STEPS] == cand_values  # bit for bit
