"""Lightning's RetuneCallback with a real tiny model trained by ``lightning_train.py`` in a
subprocess: config, metrics per real optimizer step, live commands from another process,
stop, in-process restore, and ``retune resume`` of a killed run, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

import retune
from retune.errors import CommandRejected
from retune.store import STALE_AFTER, open_store
from tests.integrations._held_save import training_goes_on_beside_a_held_epoch_save

SCRIPT = Path(__file__).with_name("lightning_train.py")
TIMEOUT = 120.0


class Trainer:
    """A ``lightning_train.py`` process; collects its ``LR step value`` lines as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def lrs(self) -> dict[int, float]:
        out: dict[int, float] = {}
        for line in list(self.lines):
            if line.startswith("LR "):
                _, step, value = line.split()
                out[int(step)] = float(value)
        return out

    def wait_step(self, step: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while max(self.lrs(), default=0) < step:
            assert self.proc.poll() is None, "\n".join(self.lines[-30:])
            assert time.monotonic() < deadline, f"the trainer did not reach step {step}"
            time.sleep(0.05)

    def finish(self) -> int:
        try:
            code = self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(10)
        return code

    def output(self) -> str:
        return "\n".join(self.lines[-40:])


def _run(trainer: Trainer, store_url: str, name: str) -> Any:
    trainer.wait_step(1)
    return retune.load(name, store=store_url)


def test_import_retune_does_not_import_lightning() -> None:
    code = "import sys, retune, retune.integrations; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_callback_refuses_what_it_takes_from_the_trainer() -> None:
    from retune.errors import InvalidArgument
    from retune.integrations.lightning import RetuneCallback

    with pytest.raises(InvalidArgument, match="remove optimizer"):
        RetuneCallback("x", optimizer=object())
    with pytest.raises(InvalidArgument, match="non-empty run name"):
        RetuneCallback(" ")


def test_an_epoch_checkpoint_is_written_while_the_next_epoch_trains(
    store_url: str, tmp_path: Path
) -> None:
    """``checkpoint_every_n_epochs`` saves in the background, as the core's schedule does:
    with the save of the first epoch's end (step 8) held mid-write (blobs written, not
    listed), fit goes on into the next epoch; once released it is listed and restores."""
    flag = tmp_path / "blocked.json"
    trainer = Trainer(store_url, "beside", "--epochs", "3",
                      env={**os.environ, "RETUNE_TEST_BLOCK_SAVE": f"8:{flag}"})  # fmt: skip
    state = training_goes_on_beside_a_held_epoch_save(
        trainer, flag, store_url, "beside", 8, timeout=TIMEOUT
    )
    assert state["parts"]["lightning"]["fit_loop"]  # where Lightning's loop was


@pytest.mark.slow
def test_live_commands_from_another_process(store_url: str) -> None:
    """set lr (scheduler-aware), a bad value, pause/continue and stop, on a running fit."""
    name = "live"
    trainer = Trainer(store_url, name, "--epochs", "60", "--scheduler", "step", "--delay", "0.02")
    try:
        run = _run(trainer, store_url, name)
        config = run.config
        assert config["hparams"] == {"lr": 0.05, "scheduler": "step", "delay": 0.02}
        assert config["trainer"]["max_epochs"] == 60
        assert config["trainer"]["accumulate_grad_batches"] == 1
        assert config["trainer"]["precision"] == "32-true"
        assert config["schedulers"][0]["interval"] == "step"
        assert config["optimizers"][0]["class"] == "torch.optim.sgd.SGD"
        with retune.connect(run.id, store=store_url) as ctl:
            applied = ctl.set(lr=0.01, wait=True)
            assert applied.status == "applied", applied.reason
            step = applied.applied_step
            assert step is not None
            trainer.wait_step(step + 7)  # two StepLR steps (step_size=3) later
            lrs = trainer.lrs()
            assert lrs[step] == 0.01  # Lightning's optimizer holds the value at the step
            later = [lrs[s] for s in range(step + 1, step + 8)]
            assert all(0.0072 < v <= 0.01 for v in later), later  # rescaled, not undone
            assert later[-1] < 0.01  # and the schedule keeps its shape from the new value

            with pytest.raises(CommandRejected, match="lr must be >= 0") as caught:
                ctl.set(lr=-1.0, wait=True)
            bad = [c for c in ctl.history() if c.id == caught.value.command_id]
            assert bad and bad[0].status == "rejected"
            after_bad = max(trainer.lrs())
            trainer.wait_step(after_bad + 2)  # it keeps training
            assert trainer.lrs()[after_bad + 1] <= 0.01

            assert ctl.pause(wait=True).status == "applied"
            assert retune.load(run.id, store=store_url).status == "paused"
            held = max(trainer.lrs())
            assert ctl.continue_(wait=True).status == "applied"
            trainer.wait_step(held + 2)

            assert ctl.stop(wait=True).status == "applied"
        assert trainer.finish() == 0, trainer.output()
    finally:
        if trainer.proc.poll() is None:
            trainer.proc.kill()
    out = trainer.output()
    assert "FIT-RETURNED" in out  # fit returned cleanly
    final = retune.load(run.id, store=store_url)
    assert final.status == "stopped"
    stopped_at = int(out.split("FIT-RETURNED")[1].split()[0])
    assert final.run.step == stopped_at
    assert any(c.reason == "stop" for c in final.checkpoints)


def test_accumulation_and_an_epoch_scheduler_under_set_lr(store_url: str) -> None:
    """accumulate_grad_batches=4: one Retune step per optimizer step; ``set lr`` (a real
    command, at step 3) with an epoch-interval StepLR(step_size=3, gamma=0.9): the optimizer
    holds 0.01 from step 3, and the schedule goes on from it (x0.9 after the third epoch)."""
    trainer = Trainer(
        store_url, "acc", "--epochs", "4", "--accumulate", "4", "--scheduler", "epoch",
        "--set-lr-at-step", "3", "0.01",
    )  # fmt: skip
    assert trainer.finish() == 0, trainer.output()
    run = retune.load("acc", store=store_url)
    loss = run.metric("loss")
    # 64 samples / batch 8 = 8 batches per epoch, 2 optimizer steps per epoch
    assert list(loss.steps) == list(range(1, 9))
    assert list(run.metric("loss_epoch").steps) == [2, 4, 6, 8]
    assert run.run.step == 8 and run.status == "finished"
    lrs = trainer.lrs()
    assert sorted(lrs) == list(range(9))  # micro-batches print the step so far (0 first)
    assert [lrs[s] for s in (1, 2)] == [0.05, 0.05]
    # (lrs[s]: what the optimizer holds going into step s + 1)
    assert [lrs[s] for s in (3, 4, 5)] == [0.01] * 3  # epoch steps 1, 2: no decay yet
    assert [lrs[s] for s in (6, 7, 8)] == [pytest.approx(0.009)] * 3  # the third epoch's end
    [change] = [n for n in run.tree() if n.change_kind == "set"]
    assert change.start_step == 3


def _wait_branch_step(trainer: Trainer, restored_at: int, step: int) -> None:
    """Wait until the trainer, after rewinding to ``restored_at`` (its ``LR restored_at``
    line following a step beyond it), has printed step ``step`` again."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        steps = [int(line.split()[1]) for line in list(trainer.lines) if line.startswith("LR ")]
        rewound = [i for i in range(1, len(steps)) if steps[i] == restored_at < steps[i - 1]]
        if rewound and step in steps[rewound[-1] :]:
            return
        assert time.monotonic() < deadline, trainer.output()
        assert trainer.proc.poll() is None, trainer.output()
        time.sleep(0.05)


@pytest.mark.slow
def test_restore_while_fit_runs_rewinds_in_place_bit_for_bit(store_url: str) -> None:
    """Restores from another process while fit runs, each a new branch: to a checkpoint
    inside an epoch (same values: the branch repeats the original's losses bit for bit), then
    to an epoch's end with another lr (held by Lightning's optimizer from the next step)."""
    name = "restore"
    trainer = Trainer(store_url, name, "--epochs", "4", "--scheduler", "step", "--delay", "0.1")
    try:
        run = _run(trainer, store_url, name)
        with retune.connect(run.id, store=store_url) as ctl:
            saved = ctl.checkpoint(wait=True)
            assert saved.status == "applied", saved.reason
            mid = saved.result["step"]
            assert mid <= 24, "the checkpoint came too late to leave room for the restores"
            trainer.wait_step(max(17, mid + 3))  # epoch-end checkpoints at 8 and 16 exist
            back = ctl.restore(saved.result["checkpoint"], wait=True)
            assert back.status == "applied" and back.applied_step == mid, back.reason
            _wait_branch_step(trainer, mid, mid + 3)
            later = ctl.restore("n1@8", set={"lr": 0.02}, wait=True)
            assert later.status == "applied" and later.applied_step == 8, later.reason
        assert trainer.finish() == 0, trainer.output()
    finally:
        if trainer.proc.poll() is None:
            trainer.proc.kill()
    snap = retune.load(run.id, store=store_url)
    assert snap.status == "finished"
    nodes = {n.id: n for n in snap.tree()}
    assert [(n.change_kind, n.parent, n.start_step) for n in nodes.values()] == [
        ("start", None, 0),
        ("restore", 1, mid),
        ("restore", 1, 8),
    ]
    original, again = snap.branch(1).metric("loss"), snap.branch(2).metric("loss")
    end = min(int(original.steps.max()), int(again.steps.max()))
    want = original.values[(original.steps > mid) & (original.steps <= end)]
    got = again.values[(again.steps > mid) & (again.steps <= end)]
    assert len(want) >= 3 and got.tobytes() == want.tobytes()
    third = snap.branch(3)
    assert list(third.metric("loss").steps)[-1] == 32  # fit ran on to max_epochs
    lrs = third.metric("lr")
    # 0.02 from step 9 on, and StepLR (step_size 3) goes on from it at step 9: 0.02 * 0.9
    assert lrs.values[lrs.steps == 9][0] == pytest.approx(0.018)
    lines = trainer.lines
    last = max(i for i, line in enumerate(lines) if line.startswith("LR 8 "))
    assert lines[last] == "LR 8 0.02"


def _age(store_url: str, run_id: str) -> None:
    """The killed process's last heartbeat is older than STALE_AFTER (time passes)."""
    with open_store(store_url) as store:
        store.update_run(run_id, heartbeat_at=time.time() - STALE_AFTER - 60)


def _resume(store_url: str, run_id: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``retune resume RUN -- python lightning_train.py ...`` in a new process."""
    command = [sys.executable, "-m", "retune", "resume", run_id, "--store", store_url, "--"]
    return subprocess.run(
        [*command, sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted 3-epoch run per scheduler interval (in a store of their own)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('full') / 'full.db'}"
    runs: dict[str, Any] = {}
    for scheduler in ("epoch", "step"):
        full = Trainer(url, f"full-{scheduler}", "--epochs", "3", "--scheduler", scheduler)
        assert full.finish() == 0, full.output()
        runs[scheduler] = retune.load(f"full-{scheduler}", store=url)
    return runs


def _same(a: Any, b: Any, key: str, *, skip_steps: tuple[int, ...] = ()) -> None:
    want, got = a.metric(key), b.metric(key)
    assert list(got.steps) == list(want.steps), key
    keep = [i for i, step in enumerate(want.steps) if int(step) not in skip_steps]
    assert got.values[keep].tobytes() == want.values[keep].tobytes(), key


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scheduler", "cut", "resumed_at", "partial_epoch"),
    [
        ("epoch", ["--crash-at-step", "20"], 16, None),  # killed; resumed at an epoch's end
        ("step", ["--stop-at-step", "12"], 12, 16),  # stop command mid-epoch (batch 4 of 8)
        ("epoch", ["--stop-at-step", "16"], 16, None),  # stop command on an epoch's last batch
    ],
    ids=["killed-epoch-end", "stopped-mid-epoch", "stopped-last-batch"],
)
def test_stop_or_kill_then_resume_is_bit_exact(
    store_url: str,
    uninterrupted: dict[str, Any],
    scheduler: str,
    cut: list[str],
    resumed_at: int,
    partial_epoch: int | None,
) -> None:
    """Stopped (a stop command) or killed, then resumed by ``retune resume`` in a new process:
    the branch's step losses and lrs equal an uninterrupted run's bit for bit (CPU, fixed
    seed, step- and epoch-interval schedulers), mid-epoch included; so do the epoch means,
    except the one epoch a stop cut short (Lightning does not checkpoint its accumulators)."""
    args = ["--epochs", "3", "--scheduler", scheduler]
    first = Trainer(store_url, "cut", *args, *cut)
    killed = "--crash-at-step" in cut
    assert first.finish() == (3 if killed else 0), first.output()
    before = retune.load("cut", store=store_url)
    assert before.status == ("running" if killed else "stopped")
    if killed:
        _age(store_url, before.id)
    resumed = _resume(store_url, before.id, store_url, "cut", *args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"LR {resumed_at + 1} " in resumed.stdout
    assert f"LR {resumed_at} " not in resumed.stdout
    a = uninterrupted[scheduler]
    b = retune.load("cut", store=store_url)
    assert b.status == "finished"
    nodes = b.tree()
    assert [(n.change_kind, n.start_step) for n in nodes] == [("start", 0), ("resume", resumed_at)]
    branch = b.branch(nodes[-1].id)
    _same(a, branch, "loss")
    _same(a, branch, "lr")
    partial = (partial_epoch,) if partial_epoch is not None else ()
    _same(a, branch, "loss_epoch", skip_steps=partial)
    assert list(a.metric("loss").steps) == list(range(1, 25))


def test_an_exception_in_fit_ends_the_run_crashed_with_its_traceback(store_url: str) -> None:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from retune.integrations.lightning import RetuneCallback

    class Breaks(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            if self.global_step == 3:
                raise ValueError("bad batch")
            loss: torch.Tensor = self.net(batch[0]).pow(2).mean()
            self.log("loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)
    callback = RetuneCallback("breaks", store=store_url)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[callback],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match="bad batch"):
        trainer.fit(Breaks(), data)
    snap = retune.load("breaks", store=store_url)
    assert snap.status == "crashed"
    assert "ValueError: bad batch" in (snap.run.error or "")
    assert list(snap.metric("loss").steps) == [1, 2, 3]
    assert callback.run.ended


@pytest.mark.slow
def test_the_example_trains_and_records_validation(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "lightning_digits.py"
    store = f"sqlite:///{tmp_path / 'example.db'}"
    out = subprocess.run(
        [sys.executable, str(example), "--epochs", "1", "--store", store],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    snap = retune.load("digits", store=store)
    assert snap.status == "finished" and snap.run.step == 24  # 1500 samples / batch 64
    assert {"loss", "lr", "loss_epoch", "val_loss", "val_acc"} <= set(snap.keys)
    assert snap.config["hparams"] == {"lr": 0.05, "hidden": 64, "dropout": 0.1}
    assert [c.step for c in snap.checkpoints] == [24]


def test_guard_recovers_from_a_nan_batch_through_the_callback(store_url: str) -> None:
    """``RetuneCallback(..., guard=...)``: a NaN loss at step 12 is rolled back in place to a
    last-good checkpoint (Lightning's loop rewound), lr halved; fit ends healthy."""
    trainer = Trainer(store_url, "lguard", "--guard", "--nan-at-step", "12", "--epochs", "3")
    assert trainer.finish() == 0, trainer.output()
    run = retune.load("lguard", store=store_url)
    assert run.status == "finished"
    (node,) = [n for n in run.nodes if n.change_kind == "guard"]
    info = node.info["guard"]
    assert info["reason"] == "loss nan at step 12" and info["action"] == "recovered"
    assert node.start_step < 12 and node.diff == {"lr": [0.05, 0.025]}
    assert "batches not skipped: the loop does not iterate run.batches()" in info["notes"]
    loss = run.branch(node.id).metric("loss")
    after = loss.values[loss.steps > node.start_step]
    assert len(after) > 10 and all(v == v for v in after)  # no NaN after the rollback
    lrs = trainer.lrs()
    assert lrs[max(lrs)] == 0.025  # Lightning's optimizer holds the lowered lr
