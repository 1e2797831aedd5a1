"""Recording a real (tiny) PyTorch training, and reading it back."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import retune
from retune.errors import InvalidArgument


def _train(store: str, steps_per_epoch: int = 5, epochs: int = 3) -> retune.Run:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 0.1, "name": "body"},
            {"params": model[2].parameters(), "lr": 0.05},
        ],
        momentum=0.9,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with retune.init(
        "tiny",
        model=model,
        optimizer=opt,
        scheduler=sched,
        config={"batch": 32, "epochs": epochs},
        seed=7,
        store=store,
    ) as run:
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                run.step(loss=loss.item(), acc=0.5, lr=sched.get_last_lr()[0])
            run.log(val_loss=loss.detach(), val_acc=np.float32(0.75))
    return run


def test_a_real_training_is_recorded_with_its_configuration(store_url: str) -> None:
    run = _train(store_url)
    snap = retune.load("tiny", store=store_url)
    assert snap.id == run.id and snap.status == "finished"
    assert snap.config == {"batch": 32, "epochs": 3}
    assert snap.metric("loss").steps.tolist() == list(range(1, 16))
    assert snap.metric("val_acc").steps.tolist() == [5, 10, 15]
    assert snap.metric("val_acc").values.tolist() == [0.75] * 3
    assert snap.metric("lr").values[-1] == pytest.approx(0.1 * 0.5**3)

    meta = snap.meta
    model = meta["model"]
    assert model["parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    assert model["dtypes"] == {"float32": 58} and model["devices"] == {"cpu": 58}
    assert [m["class"] for m in model["modules"]] == ["Sequential", "Linear", "ReLU", "Linear"]
    groups = meta["optimizer"]["param_groups"]
    assert meta["optimizer"]["class"] == "torch.optim.sgd.SGD"
    assert groups[0]["hyperparameters"]["name"] == "body"
    assert groups[0]["hyperparameters"]["momentum"] == 0.9
    assert groups[1]["hyperparameters"]["lr"] == 0.05  # as it was at init
    assert meta["scheduler"]["class"].endswith("StepLR")
    assert meta["scheduler"]["state"]["gamma"] == 0.5
    assert meta["seeds"]["seed"] == 7 and meta["seeds"]["torch_initial_seed"] == 7
    assert meta["environment"]["torch"]["version"] == torch.__version__
    assert meta["invocation"]["argv"] == sys.argv
    assert meta["started_at"] > 0
    (root,) = snap.nodes
    assert (root.start_step, root.end_step, root.change_kind) == (0, 15, "start")
    assert root.values["lr"] == [0.1, 0.05] and root.values["momentum"] == [0.9, 0.9]


def test_same_name_twice_gives_two_runs_and_name_means_latest(store_url: str) -> None:
    first = retune.init("twice", store=store_url)
    first.finish()
    second = retune.init("twice", store=store_url)
    second.finish()
    assert first.id != second.id
    assert retune.load("twice", store=store_url).id == second.id
    assert retune.load(first.id, store=store_url).id == first.id


def test_nan_and_inf_are_kept_and_flagged(store_url: str) -> None:
    with retune.init("nan", store=store_url) as run:
        run.step(loss=1.0)
        run.step(loss=math.nan)
        run.step(loss=math.inf)
        run.step(loss=-math.inf)
    series = retune.load("nan", store=store_url).metric("loss")
    assert series.steps.tolist() == [1, 2, 3, 4]
    assert series.nonfinite.tolist() == [False, True, True, True]
    assert series.has_nonfinite


def test_bad_metric_values_are_rejected_before_anything_is_recorded(store_url: str) -> None:
    with retune.init("bad", store=store_url) as run:
        with pytest.raises(InvalidArgument, match="'loss' must be a number"):
            run.step(loss="low")
        with pytest.raises(InvalidArgument, match="single number"):
            run.step(loss=torch.ones(3))
        with pytest.raises(InvalidArgument, match="metric names"):
            run.log({"": 1.0})
        assert run.global_step == 0
        run.step({"val/loss": 0.5})
    snap = retune.load("bad", store=store_url)
    assert snap.keys == ["val/loss"]
    with pytest.raises(InvalidArgument, match=r"has no metric 'loss' \(it has: val/loss\)"):
        snap.metric("loss")


def test_a_finished_run_refuses_more_steps(store_url: str) -> None:
    run = retune.init("done", store=store_url)
    run.finish()
    run.finish()  # idempotent
    with pytest.raises(InvalidArgument, match="has ended"):
        run.step(loss=1.0)


def test_snapshot_is_frozen_and_downsamples_without_losing_spikes(store_url: str) -> None:
    with retune.init("long", store=store_url) as run:
        for i in range(10_000):
            value = 1000.0 if i == 4321 else (math.nan if i == 777 else math.sin(i / 100))
            run.step(x=value)
    snap = retune.load("long", store=store_url)
    full = snap.metric("x")
    small = snap.metric("x", max_points=300)
    assert len(small) <= 300
    assert 4322 in small.steps.tolist() and np.nanmax(small.values) == 1000.0
    assert 778 in small.steps.tolist() and small.has_nonfinite
    assert np.nanmin(small.values) == np.nanmin(full.values)
    window = snap.metric("x", start=100, end=199)
    assert window.steps.tolist() == list(range(100, 200))
    with pytest.raises(ValueError):
        full.values[0] = 0.0
    with pytest.raises(AttributeError):
        snap.run = None  # type: ignore[misc,assignment]


def test_to_pandas(store_url: str) -> None:
    with retune.init("pd", store=store_url) as run:
        run.step(loss=1.0, acc=0.1)
        run.step(loss=0.5, acc=0.2)
    snap = retune.load("pd", store=store_url)
    frame = snap.metric("loss").to_pandas()
    assert frame["step"].tolist() == [1, 2] and frame["value"].tolist() == [1.0, 0.5]
    assert set(snap.to_pandas()["key"]) == {"loss", "acc"}


def test_store_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETUNE_STORE", str(tmp_path / "env.db"))
    with retune.init("env") as run:
        run.step(loss=1.0)
    assert (tmp_path / "env.db").exists()
    assert retune.load("env").status == "finished"


def test_default_store_is_dot_retune_in_the_working_directory(tmp_path: Path) -> None:
    with retune.init("here") as run:
        run.step(loss=1.0)
    assert (tmp_path / ".retune" / "retune.db").exists()


def test_git_commit_and_dirty_flag_of_the_script_repository(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text(
        "import sys, retune\nrun = retune.init('git', store=sys.argv[1])\nrun.finish()\n"
    )
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "train.py"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    store = str(tmp_path / "g.db")
    subprocess.run([sys.executable, str(script), store], cwd=tmp_path, check=True)
    info = retune.load("git", store=store).meta["git"]
    assert info["commit"] == head and info["dirty"] is False
    script.write_text(script.read_text() + "# edited\n")
    subprocess.run([sys.executable, str(script), store], cwd=tmp_path, check=True)
    assert retune.load("git", store=store).meta["git"]["dirty"] is True


def test_knobs_declared_after_init_are_among_every_node_s_values(store_url: str) -> None:
    """``retune.init`` opens the start (or resume) node before the script declares its
    knobs: their values join that node's, so ``compare`` and the exports do not show them as
    differences between nodes (they showed ``None`` on the start and resume nodes)."""
    from retune.store import open_store

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("knobs", model=model, optimizer=opt, store=store_url) as run:
        run.tunable("clip_norm", 1.0, bounds=(0, None))
        run.step(loss=1.0)
        run.set(lr=0.05)
        run.step(loss=0.5)
    with retune.init("knobs", model=model, optimizer=opt, store=store_url,
                     resume="latest") as resumed:  # fmt: skip
        assert resumed.id == run.id
        resumed.tunable("clip_norm", 1.0, bounds=(0, None))
        resumed.tunable("warmup", 3, bounds=(0, None))  # new in the resumed script
        resumed.step(loss=0.4)
    with open_store(store_url, create=False) as store:
        nodes = store.list_nodes(run.id)
    assert [(n.change_kind, n.values["clip_norm"]) for n in nodes] == [
        ("start", 1.0), ("set", 1.0), ("resume", 1.0)]  # fmt: skip
    # the resume goes back to the latest checkpoint: the one before the set, lr 0.1
    assert [n.values["lr"] for n in nodes] == [[0.1], [0.05], [0.1]]
    assert "warmup" not in nodes[0].values and nodes[2].values["warmup"] == 3
    with retune.init("guarded", store=store_url, guard=True) as guarded:  # its knobs too
        guarded.step(loss=1.0)
        (start,) = guarded.store.list_nodes(guarded.id)
    assert start.values["guard_spike"] == 3.0 and start.values["guard"] is True
