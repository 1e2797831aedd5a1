"""RetuneCallback for the Hugging Face Trainer: a real tiny BERT trained in subprocesses.

The helper ``hf_train.py`` trains 3 epochs of 8 optimizer steps (24 steps, linear schedule
with warmup: a ``LambdaLR``) and can hold at chosen steps until a command has reached the
run, so that each command is applied at a known step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import retune
from retune.store import STALE_AFTER, open_store

pytest.importorskip("transformers")

HELPER = Path(__file__).with_name("hf_train.py")
RETUNE = [sys.executable, "-m", "retune"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RETUNE_STORE": ""}


def _start(store: str, name: str, folder: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HELPER), store, name, "--dir", str(folder), *args],
        cwd=folder,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], code: int = 0) -> dict[str, object]:
    out, _ = process.communicate(timeout=240)
    assert process.returncode == code, out[-3000:]
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, object] = json.loads(line[len("RESULT ") :])
            return result
    return {}


def _wait_file(path: Path, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def _losses(store: str, name: str, node: int | None = None) -> dict[int, float]:
    snapshot = retune.load(name, store=store)
    if node is None:
        node = max(n.id for n in snapshot.tree())
    series = snapshot.branch(node).metric("loss")
    return {int(s): float(v) for s, v in zip(series.steps, series.values, strict=True)}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[str, dict[int, float]]]:
    """Uninterrupted runs by gradient-accumulation steps, made on first use: (store, losses)."""
    folder = tmp_path_factory.mktemp("hf_reference")
    made: dict[int, tuple[str, dict[int, float]]] = {}

    class Lazy(dict):  # type: ignore[type-arg]
        def __missing__(self, accumulation: int) -> tuple[str, dict[int, float]]:
            store = str(folder / f"retune-{accumulation}.db")
            name = f"whole{accumulation}"
            result = _finish(_start(store, name, folder, "--accumulation", str(accumulation)))
            assert result["global_step"] == 24 // accumulation
            made[accumulation] = (store, _losses(store, name))
            return made[accumulation]

    return Lazy()


@pytest.fixture(scope="module")
def reference(
    references: dict[int, tuple[str, dict[int, float]]],
) -> tuple[str, dict[int, float]]:
    """The uninterrupted run without gradient accumulation (24 steps)."""
    return references[1]


def test_import_retune_imports_no_transformers() -> None:
    code = (
        "import sys, retune, retune.integrations.transformers as m; "
        "assert 'transformers' not in sys.modules, 'transformers imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_arguments_are_one_line_errors() -> None:
    from retune.integrations.transformers import RetuneCallback

    with pytest.raises(retune.InvalidArgument, match="non-empty run name"):
        RetuneCallback("  ")
    with pytest.raises(retune.InvalidArgument, match="takes optimizer from the Trainer"):
        RetuneCallback("run", optimizer=object())
    callback = RetuneCallback("run", store="sqlite:///unused.db")
    from transformers import TrainerCallback

    assert callback.run is None  # the run starts with train()
    assert isinstance(callback, TrainerCallback)


def test_every_optimizer_step_is_logged_with_the_config(
    reference: tuple[str, dict[int, float]],
) -> None:
    store, losses = reference
    assert sorted(losses) == list(range(1, 25))  # every step, not every logging_steps (5)
    snapshot = retune.load("whole1", store=store)
    assert snapshot.status == "finished"
    arguments = snapshot.config["training_arguments"]
    assert arguments["per_device_train_batch_size"] == 8
    assert not [key for key in arguments if "token" in key]  # hub tokens never recorded
    assert snapshot.config["model_config"]["hidden_size"] == 16
    lr = snapshot.metric("lr")
    assert len(lr) == 24 and float(lr.values[2]) == pytest.approx(1e-3)


@pytest.mark.slow
def test_set_lr_survives_the_lambda_schedule_reject_pause_and_stop(tmp_path: Path) -> None:
    store = str(tmp_path / "retune.db")
    trainer = _start(store, "ctl", tmp_path, "--hold-at", "4,8,12")
    try:
        _wait_file(tmp_path / "held4", trainer)
        with retune.connect("ctl", store=store) as ctl:
            done = ctl.set(lr=5e-4, wait=True, timeout=60)  # rescale (default)
            assert done.status == "applied" and done.applied_step == 4
            _wait_file(tmp_path / "held8", trainer)
            done = ctl.set(lr=2e-4, mode="constant", wait=True, timeout=60)
            assert done.status == "applied" and done.applied_step == 8
            _wait_file(tmp_path / "held12", trainer)
            with pytest.raises(retune.CommandRejected, match="lr must be >= 0"):
                ctl.set(lr=-1.0)
            assert ctl.values()["lr"] == [2e-4, 2e-4]  # unchanged (two param groups)
            assert ctl.pause(wait=True, timeout=60).applied_step == 12
            assert ctl.run.status == "paused"
            assert trainer.poll() is None  # held, not ended
            assert ctl.stop(wait=True, timeout=60).status == "applied"
        result = _finish(trainer)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert result["global_step"] == 12  # stop ended train() cleanly at the paused step
    assert result["lr"] == [2e-4, 2e-4]  # the constant lr held through every scheduler step
    snapshot = retune.load("ctl", store=store)
    assert snapshot.status == "stopped"
    steps = [int(s) for s in snapshot.metric("lr").steps]
    values = [float(v) for v in snapshot.metric("lr").values]
    by_step = dict(zip(steps, values, strict=True))
    # linear decay after 3 warmup steps over 24: lr(s) = base * (24 - s) / 21; rescaled at 4
    assert by_step[5] == pytest.approx(5e-4 * 19 / 20)
    assert by_step[7] == pytest.approx(5e-4 * 17 / 20)
    assert [by_step[s] for s in (9, 10, 11, 12)] == [2e-4] * 4  # constant: not undone
    kinds = [n.change_kind for n in snapshot.tree()]
    assert kinds == ["start", "set", "set"]
    # the stop checkpointed step 12: the same script continues from there, lr still pinned
    resumed = _resume(store, "ctl", tmp_path)
    assert resumed["global_step"] == 24 and resumed["lr"] == [2e-4, 2e-4]
    snapshot = retune.load("ctl", store=store)
    assert (snapshot.status, snapshot.tree()[-1].change_kind) == ("finished", "resume")
    lr = snapshot.branch(snapshot.tree()[-1].id).metric("lr")
    assert {float(v) for s, v in zip(lr.steps, lr.values, strict=True) if s > 12} == {2e-4}


def _resume(store: str, name: str, folder: Path, *options: str) -> dict[str, object]:
    """``retune resume NAME -- python hf_train.py ...``: the same script, a new process."""
    command = [*RETUNE, "resume", name, "--store", store, "--", sys.executable, str(HELPER)]
    done = subprocess.run(
        [*command, store, name, "--dir", str(folder), *options],
        check=False,
        cwd=folder,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, object] = json.loads(line[len("RESULT ") :])
            return result
    raise AssertionError(f"no RESULT line: {done.stdout[-2000:]}")


def _age_heartbeat(store: str, name: str) -> None:
    """The killed process's heartbeat is made old, as time would (no waiting)."""
    with open_store(store) as opened:
        run = opened.get_run(name)
        opened.update_run(run.id, heartbeat_at=time.time() - STALE_AFTER - 60)


@pytest.mark.slow
def test_a_killed_run_resumed_mid_epoch_logs_the_same_losses_bit_for_bit(
    tmp_path: Path, references: dict[int, tuple[str, dict[int, float]]]
) -> None:
    """With 2 gradient-accumulation steps: 4 optimizer steps of 2 batches per epoch."""
    _, whole = references[2]
    store = str(tmp_path / "retune.db")
    # step 5 is the first step of epoch 2: the resume skips that epoch's first 2 batches
    options = ["--accumulation", "2"]
    killed = _start(store, "killed", tmp_path, "--kill-at", "5", "--every", "5", *options)
    _finish(killed, code=9)
    _age_heartbeat(store, "killed")
    _resume(store, "killed", tmp_path, *options)
    tree = retune.load("killed", store=store).tree()
    assert [(n.change_kind, n.parent, n.start_step) for n in tree] == [
        ("start", None, 0),
        ("resume", 1, 5),
    ]
    resumed = _losses(store, "killed")
    assert sorted(resumed) == list(range(1, 13))
    assert resumed == whole  # every loss, bit for bit (floats compared exactly)


@pytest.mark.slow
def test_restore_while_training_rewinds_in_place_on_a_new_branch(
    tmp_path: Path, reference: tuple[str, dict[int, float]]
) -> None:
    _, whole = reference
    store = str(tmp_path / "retune.db")
    trainer = _start(store, "restored", tmp_path, "--hold-at", "12", "--every", "5")
    try:
        _wait_file(tmp_path / "held12", trainer)
        with retune.connect("restored", store=store) as ctl:
            done = ctl.restore("n1@10", set={"lr": 3e-4}, mode="constant", wait=True, timeout=60)
            assert done.status == "applied", done.reason
        result = _finish(trainer)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    tree = retune.load("restored", store=store).tree()
    restore = tree[-1]
    assert (restore.change_kind, restore.parent, restore.start_step) == ("restore", 1, 10)
    branch = _losses(store, "restored", restore.id)
    # the first step after the restore saw the state, batch and RNG of step 10 exactly
    assert branch[11] == whole[11]
    assert branch[12] != whole[12]  # then the new lr acts
    assert [branch[s] for s in range(1, 11)] == [whole[s] for s in range(1, 11)]
    # the Trainer's epoch loop was fixed at train(): the branch runs the epochs left (to 16)
    assert result["global_step"] == 16 and sorted(branch) == list(range(1, 17))
    lr = retune.load("restored", store=store).branch(restore.id).metric("lr")
    assert {float(v) for s, v in zip(lr.steps, lr.values, strict=True) if s > 10} == {3e-4}


def test_guard_recovers_from_a_nan_batch_through_the_callback(
    store_url: str, tmp_path: Path
) -> None:
    """``RetuneCallback(..., guard=...)``: the NaN loss of step 12 is rolled back in place to a
    last-good checkpoint, lr halved (the warmup/linear schedule rescaled); training ends
    with finite losses and the Trainer's optimizer holds the lowered schedule."""
    result = _finish(_start(store_url, "hfguard", tmp_path, "--guard", "--nan-at", "12"))
    run = retune.load("hfguard", store=store_url)
    assert run.status == "finished"
    (node,) = [n for n in run.nodes if n.change_kind == "guard"]
    info = node.info["guard"]
    assert info["reason"] == "loss nan at step 12" and info["action"] == "recovered"
    assert node.start_step < 12
    (old, new) = node.diff["lr"]
    assert new == pytest.approx(old * 0.5)
    loss = run.branch(node.id).metric("loss")
    after = loss.values[loss.steps > node.start_step]
    assert len(after) and all(v == v for v in after)  # no NaN after the rollback
    lrs = result["lr"]
    assert isinstance(lrs, list) and all(lr == lr for lr in lrs)
