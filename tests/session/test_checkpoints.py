"""Checkpoints, exact restore (in-process and in a new process), resume after a crash, the tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import retune
from retune.cli import main as cli
from retune.errors import CheckpointNotFound, CommandRejected, InvalidArgument
from retune.store import open_store
from tests.checkpoint.exact_trainer import EPOCHS, build, train

TRAINER = Path(__file__).parents[1] / "checkpoint" / "exact_trainer.py"
KEYS = ("loss", "lr", "noise", "seen")


def _reference(store: str, name: str = "ref") -> retune.RunSnapshot:
    model, opt, sched, loader = build()
    with retune.init(name, model=model, optimizer=opt, scheduler=sched, seed=7, store=store,
                     checkpoint_every_n_steps=10) as run:  # fmt: skip
        train(run, model, opt, sched, loader)
    return retune.load(name, store=store)


def _same_points(a: retune.MetricSeries, b: retune.MetricSeries) -> None:
    assert a.steps.tolist() == b.steps.tolist()
    assert a.values.tolist() == b.values.tolist()  # every logged value, compared with ==


def test_restore_in_process_reproduces_the_original_branch_bit_for_bit(store_url: str) -> None:
    reference = _reference(store_url)
    model, opt, sched, loader = build()
    with retune.init("restored", model=model, optimizer=opt, scheduler=sched, seed=7,
                     store=store_url, checkpoint_every_n_steps=10) as run:  # fmt: skip
        train(run, model, opt, sched, loader, restore_at=37, restore_target="n1@25")
    snap = retune.load("restored", store=store_url)
    n1, n2 = snap.nodes
    assert (n1.end_step, n2.parent, n2.start_step, n2.change_kind) == (37, 1, 20, "restore")
    for key in KEYS:
        _same_points(reference.metric(key), snap.branch("n2").metric(key))
    original = snap.branch("n1").metric("loss")
    assert original.steps.tolist() == list(range(1, 38))  # the old branch keeps its own
    _same_points(original, reference.metric("loss").select(end=37))


@pytest.mark.slow
def test_resume_in_a_new_process_reproduces_the_original_branch(tmp_path: Path) -> None:
    store = str(tmp_path / "r.db")
    subprocess.run([sys.executable, str(TRAINER), store, "exact"], check=True, timeout=300)
    done = subprocess.run(
        [sys.executable, "-m", "retune", "resume", "exact", "--from", "c3", "--store", store,
         "--", sys.executable, str(TRAINER), store, "exact"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming exact" in done.stdout and "from c3 at step 30" in done.stdout
    snap = retune.load("exact", store=store)
    assert snap.status == "finished"
    (resumed,) = [n for n in snap.nodes if n.change_kind == "resume"]
    assert (resumed.parent, resumed.start_step) == (1, 30)
    for key in KEYS:
        _same_points(snap.branch("n1").metric(key), snap.branch(resumed.id).metric(key))


CRASHING = """
import sys
sys.path.insert(0, sys.argv[3])
import retune
from tests.checkpoint.exact_trainer import build, train
store, crash_at = sys.argv[1], int(sys.argv[2])
model, opt, sched, loader = build()
run = retune.init("crashy", model=model, optimizer=opt, scheduler=sched, seed=7, store=store,
                  checkpoint_every_n_steps=10, resume="latest")
real_step = run.step
def step(*a, **k):
    if run.global_step + 1 == crash_at:
        raise RuntimeError("out of memory (simulated)")
    return real_step(*a, **k)
run.step = step
with run:
    train(run, model, opt, sched, loader)
"""


@pytest.mark.slow
def test_resume_latest_after_a_crash_continues_where_it_stopped(tmp_path: Path) -> None:
    store = str(tmp_path / "c.db")
    root = str(Path(__file__).parents[2])
    crashed = subprocess.run([sys.executable, "-c", CRASHING, store, "25", root],
                             capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert crashed.returncode == 1 and "out of memory (simulated)" in crashed.stderr
    assert retune.load("crashy", store=store).status == "crashed"
    again = subprocess.run([sys.executable, "-c", CRASHING, store, "0", root],
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr
    snap = retune.load("crashy", store=store)
    assert snap.status == "finished" and snap.run.error is None
    (resumed,) = [n for n in snap.nodes if n.change_kind == "resume"]
    assert resumed.start_step == 20  # the last checkpoint before the crash at step 25
    reference = _reference(str(tmp_path / "ref.db"))
    for key in KEYS:
        _same_points(reference.metric(key), snap.branch(resumed.id).metric(key))


def test_three_restores_make_the_right_tree(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    model, opt, sched, loader = build()
    plan = [  # (global step that triggers, target, new values)
        (30, "n1@20", {"lr": 0.005}),
        (35, "n1@10", {"weight_decay": 1e-4}),
        (25, "n2@30", {"lr": 0.002}),
    ]
    with retune.init("tree", model=model, optimizer=opt, scheduler=sched, seed=7,
                     store=store_url, checkpoint_every_n_steps=10) as run:  # fmt: skip
        for _ in run.epochs(EPOCHS):
            for x, y in run.batches(loader):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                sched.step()
                run.step(loss=loss.item())
                if plan and run.global_step == plan[0][0]:
                    _, target, values = plan.pop(0)
                    run.restore(target, set=values)
        live = run.tree()
    assert [n.end_step for n in live] == [30, 35, 25, None]  # n4 still training
    tree = retune.load("tree", store=store_url).tree()
    assert not plan
    shape = [(n.id, n.parent, n.start_step, n.change_kind) for n in tree]
    assert shape == [(1, None, 0, "start"), (2, 1, 20, "restore"), (3, 1, 10, "restore"),
                     (4, 2, 30, "restore")]  # fmt: skip
    assert [n.end_step for n in tree] == [30, 35, 25, 52]
    assert tree[0].children == (2, 3) and tree[1].children == (4,)
    assert tree[1].diff["lr"][1] == 0.005 and tree[2].diff == {"weight_decay": [0.0, 1e-4]}
    assert tree[3].diff["lr"][1] == 0.002 and tree[3].values["weight_decay"] == [0.0]
    assert tree[2].values["weight_decay"] == [1e-4]
    assert all("loss" in n.metrics and n.metrics["loss"]["last"] is not None for n in tree)
    assert cli(["tree", "tree", "--store", store_url]) == 0
    drawn = capsys.readouterr().out.splitlines()
    assert drawn[1].startswith("o n1 steps 0..30  start")
    assert drawn[2].startswith("├─ o n2 steps 20..35  restore lr ")
    assert drawn[3].startswith("│  └─ o n4 steps 30..52  restore lr ") and "-> 0.002" in drawn[3]
    assert drawn[4].startswith("└─ o n3 steps 10..25  restore weight_decay 0 -> 0.0001")
    assert cli(["tree", "tree", "--store", store_url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [n["id"] for n in data["nodes"]] == ["n1", "n2", "n3", "n4"]
    assert data["nodes"] == json.loads(json.dumps([n.to_dict() for n in tree]))
    branch = retune.load("tree", store=store_url).branch("n4").metric("loss")
    assert branch.steps.tolist() == list(range(1, 53))
    assert branch.nodes.tolist() == [1] * 20 + [2] * 10 + [4] * 22


def _live_run(store: str, name: str) -> tuple[retune.Run, Any]:
    model, opt, sched, loader = build()
    run = retune.init(name, model=model, optimizer=opt, scheduler=sched, seed=7, store=store,
                      checkpoint_every_n_steps=10)  # fmt: skip
    return run, (model, opt, sched, loader)


def test_a_corrupt_blob_rejects_the_restore_and_changes_nothing(
    store_url: str, tmp_path: Path
) -> None:
    run, (model, opt, sched, loader) = _live_run(store_url, "corrupt")
    with run:
        for x, y in list(loader)[:12]:  # train: the checkpoint at step 10 holds trained weights
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            run.step(loss=loss.item())
        run.checkpointer.wait()  # the scheduled checkpoint is written in the background
        (checkpoint,) = run.store.list_checkpoints(run.id)
        saved = run.checkpointer.load(checkpoint)
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        moments = {k: v["exp_avg"].clone() for k, v in opt.state_dict()["state"].items()}
        # a restore that went through would change the weights: two steps were trained since
        assert not all(torch.equal(saved["model"][k], v) for k, v in weights.items())
        from retune.checkpoint import manifest_blobs

        for key in manifest_blobs(checkpoint.manifest):
            path = tmp_path / "objects" / key[:2] / key[2:]
            path.write_bytes(b"garbage")
        with pytest.raises(
            CommandRejected, match=r"checkpoint c1 of run \w+ cannot be restored: blob"
        ):
            run.restore("c1")
        assert run.global_step == 12 and run.node == 1
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
        state = opt.state_dict()["state"]
        assert all(torch.equal(v, state[k]["exp_avg"]) for k, v in moments.items())
        run.step(loss=1.0)  # training goes on
    commands = open_store(store_url).list_commands(run.id)
    assert [c.status for c in commands] == ["rejected"]
    with pytest.raises(CheckpointNotFound):
        retune.checkpoint.resolve_checkpoint(open_store(store_url), run.id, "c7")


def test_checkpoint_and_restore_commands_from_another_thread(store_url: str) -> None:
    run, (model, opt, sched, loader) = _live_run(store_url, "threads")
    ctl = retune.connect("threads", store=store_url)
    results: dict[str, Any] = {}

    def drive() -> None:
        results["ckpt"] = ctl.checkpoint(tag="best", wait=True)
        time.sleep(0.2)
        results["restore"] = ctl.restore(results["ckpt"].result["checkpoint"],
                                         set={"lr": 0.001}, wait=True)  # fmt: skip
        ctl.stop()

    driver = threading.Thread(target=drive)
    driver.start()
    with run:
        for _ in run.epochs(1000):
            for x, y in run.batches(loader):
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                run.step(loss=loss.item())
                time.sleep(0.002)
    driver.join()
    checkpoint = results["ckpt"]
    assert checkpoint.status == "applied" and checkpoint.result["checkpoint"].startswith("c")
    tagged = [c for c in run.store.list_checkpoints(run.id) if c.tag == "best"]
    assert len(tagged) == 1 and tagged[0].reason == "command"
    restored = results["restore"]
    assert restored.applied_step == checkpoint.applied_step
    assert restored.result["diff"] == {"lr": [pytest.approx(0.01), 0.001]}
    assert retune.load("threads", store=store_url).status == "stopped"


def test_keep_policy_and_gc(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = torch.nn.Linear(200, 200)  # 160 kB of weights: their own blob
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("keep", model=model, optimizer=opt, store=store_url,
                     checkpoint_every_n_steps=5, keep_last=2) as run:  # fmt: skip
        for i in range(30):
            with torch.no_grad():
                model.weight.add_(1.0)
            run.step(loss=float(i))
            if i == 7:
                run.checkpoint(tag="keeper")
    kept = run.store.list_checkpoints(run.id)
    assert [(c.step, c.reason) for c in kept] == [(8, "user"), (25, "schedule"), (30, "schedule")]
    assert cli(["gc", "--store", store_url, "--dry-run"]) == 0  # within the grace period
    assert "kept 4 unused blobs younger than the grace period" in capsys.readouterr().out
    assert cli(["gc", "--store", store_url, "--dry-run", "--grace", "0"]) == 0
    assert "would delete 4 blobs" in capsys.readouterr().out
    assert cli(["gc", "--store", store_url, "--grace", "0"]) == 0
    assert "deleted 4 blobs" in capsys.readouterr().out
    objects = retune.checkpoint.ObjectStore(str(tmp_path / "objects"))
    for checkpoint in kept:  # what gc kept still restores
        state = retune.checkpoint.decode_state(checkpoint.manifest, objects)
        assert torch.all(state["model"]["weight"] == float(checkpoint.step))


def test_the_scheduled_checkpoint_a_branch_started_from_is_kept(store_url: str) -> None:
    """A restore (or resume) from a scheduled checkpoint: the keep policy deletes the older
    scheduled ones, but not that branch point (it was pruned, and the branch's start could
    not be restored any more)."""
    with retune.init("branch", store=store_url, checkpoint_every_n_steps=1, keep_last=2,
                     checkpoint_in_background=False) as run:  # fmt: skip
        for _ in range(3):
            run.step(loss=1.0)
        run.restore("c2")  # step 2 of n1: a branch n2 from there
        for _ in range(6):
            run.step(loss=0.5)
        listed = [(c.label, c.node, c.step, c.reason) for c in run.store.list_checkpoints(run.id)]
    assert ("c2", 1, 2, "schedule") in listed  # the branch point
    scheduled = [entry for entry in listed if entry[3] == "schedule" and entry[0] != "c2"]
    assert [step for _, _, step, _ in scheduled] == [7, 8]  # keep_last=2 of the others


def test_user_state_and_bad_state(store_url: str) -> None:
    run, _ = _live_run(store_url, "state")
    with run:
        run.state["best"] = {"acc": 0.9, "weights": torch.ones(3), "tags": ["a", "b"]}
        record = run.checkpoint()
        run.state["best"] = None
        run.step(loss=1.0)
        state = run.checkpointer.load(record)
        assert state["user"]["best"]["tags"] == ["a", "b"]
        assert torch.equal(state["user"]["best"]["weights"], torch.ones(3))
        run.state["bad"] = object()
        with pytest.raises(InvalidArgument, match=r"state\['user'\]\['bad'\]"):
            run.checkpoint()


KILLED = """
import sys, torch, retune
store = sys.argv[1]
model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
for p in model.parameters():
    torch.nn.init.zeros_(p)
run = retune.init("killed", model=model, store=store)
for i in range(1000):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    run.step(loss=float(i))
    run.checkpoint()
"""


@pytest.mark.slow
def test_sigkill_while_saving_leaves_complete_checkpoints_or_none(tmp_path: Path) -> None:
    store, flag = str(tmp_path / "k.db"), tmp_path / "blocked.json"
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "RETUNE_TEST_BLOCK_SAVE": f"3:{flag}", "PYTHONPATH": root}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, store], env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():  # the save at step 3 wrote its blobs, not its manifest row
            assert proc.poll() is None, "the trainer ended before its save was blocked"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert json.loads(flag.read_text()) == {"pid": proc.pid, "step": 3}
        objects = retune.checkpoint.ObjectStore(str(tmp_path / "objects"))
        opened = open_store(store)
        referenced: set[str] = set()
        for manifest in opened.all_manifests():
            referenced |= retune.checkpoint.manifest_blobs(manifest)
        assert set(objects.keys()) - referenced  # the save in progress had written blobs
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    run = opened.get_run("killed")
    checkpoints = opened.list_checkpoints(run.id)
    assert [c.step for c in checkpoints] == [1, 2]  # the unfinished one is not listed
    for checkpoint in checkpoints:  # every listed checkpoint restores bit for bit
        state = retune.checkpoint.decode_state(checkpoint.manifest, objects)
        assert len(state["model"]) == 16
        for tensor in state["model"].values():
            assert torch.equal(tensor, torch.full_like(tensor, float(checkpoint.step)))


def test_a_checkpoint_is_listed_only_with_every_point_up_to_its_step(tmp_path: Path) -> None:
    """Killed right after a checkpoint, with nothing flushed by the writer yet: resuming
    from it must not leave a gap in the curves."""
    store = str(tmp_path / "k.db")
    code = (
        "import os, signal, sys\n"
        "import retune\n"
        "run = retune.init('gap', store=sys.argv[1], flush_interval=1000.0)\n"
        "for i in range(5):\n"
        "    run.step(loss=float(i))\n"
        "run.checkpoint()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, store], timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL
    [checkpoint] = open_store(store).list_checkpoints(open_store(store).get_run("gap").id)
    assert checkpoint.step == 5
    assert retune.load("gap", store=store).metric("loss").steps.tolist() == [1, 2, 3, 4, 5]
