"""The Keras 3 (torch backend) callback: real tiny models trained in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import retune
from retune.control import Knob, LiveTunables
from retune.errors import CommandRejected, RunNotFound
from retune.store import STALE_AFTER, open_store
from tests.integrations._held_save import training_goes_on_beside_a_held_epoch_save

SCRIPT = Path(__file__).with_name("keras_train.py")
TIMEOUT = 120.0
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETUNE_")}
    env["KERAS_BACKEND"] = "torch"
    env["PYTHONPATH"] = str(ROOT)
    return env


class Trainer:
    """A ``keras_train.py`` process; collects its ``HP step lr beta`` lines as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**_env(), **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def hps(self) -> dict[int, tuple[float, float]]:
        out: dict[int, tuple[float, float]] = {}
        for line in list(self.lines):
            if line.startswith("HP "):
                _, step, lr, beta, _ = line.split()
                out[int(step)] = (float(lr), float(beta))
        return out

    def weight_sums(self, step: int) -> list[float]:
        """The model's weight sum each time a line for ``step`` was printed, in order."""
        return [
            float(line.split()[4])
            for line in list(self.lines)
            if line.startswith("HP ") and int(line.split()[1]) == step
        ]

    def wait_step(self, step: int) -> None:
        deadline = time.monotonic() + TIMEOUT
        while max(self.hps(), default=0) < step:
            assert self.proc.poll() is None, self.output()
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


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT,
    )


def _age(store_url: str, name: str) -> None:
    """Make a killed run's heartbeat old, as if STALE_AFTER seconds had passed."""
    store = open_store(store_url)
    try:
        run = store.get_run(name)
        store.update_run(run.id, heartbeat_at=time.time() - STALE_AFTER - 5)
    finally:
        store.close()


# -- no keras in the core --------------------------------------------------------------------
def test_import_retune_does_not_import_keras() -> None:
    code = "import sys, retune, retune.integrations; assert 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=_env(), timeout=60)


def test_another_backend_in_the_environment_is_refused_with_a_clear_error() -> None:
    code = (
        "import os; os.environ['KERAS_BACKEND'] = 'jax'\n"
        "try:\n    import retune.integrations.keras\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
        "import sys; print('keras imported:', 'keras' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=_env(),
        timeout=60,
    )  # fmt: skip
    assert "InvalidArgument" in out.stdout, out.stdout + out.stderr
    assert "needs the torch backend" in out.stdout and "'jax'" in out.stdout
    assert "keras imported: False" in out.stdout


def test_keras_already_imported_with_another_backend_is_refused() -> None:
    # only the torch backend is installed here, so a module standing in for a keras imported
    # with jax is put in sys.modules; the check reads keras.backend.backend() as Keras has it
    code = (
        "import sys, types\n"
        "fake = types.ModuleType('keras'); fake.backend = types.SimpleNamespace(backend=lambda: 'jax')\n"
        "sys.modules['keras'] = fake\n"
        "try:\n    import retune.integrations.keras\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=_env(),
        timeout=60,
    )  # fmt: skip
    assert "InvalidArgument" in out.stdout, out.stdout + out.stderr
    assert "keras was imported with 'jax'" in out.stdout


# -- the core extension: a modal knob gets the command's mode ---------------------------------
def test_a_modal_knob_setter_gets_the_mode_and_none_on_restore() -> None:
    calls: list[tuple[float, str | None]] = []
    box = [1.0]

    def set_(value: float, mode: str | None) -> None:
        calls.append((value, mode))
        box[0] = value

    tunables = LiveTunables()
    tunables.add(Knob("lr", get=lambda: box[0], set=set_, bounds=(0, None), modal=True))
    tunables.set({"lr": 0.5}, mode="constant")
    tunables.set({"lr": 0.25})
    tunables.load_state_dict({"knobs": {"lr": 2.0}})
    assert calls == [(0.5, "constant"), (0.25, "rescale"), (2.0, None)]


def test_a_plain_knob_setter_still_gets_only_the_value() -> None:
    seen: list[float] = []
    tunables = LiveTunables()
    tunables.add(Knob("clip", get=lambda: 1.0, set=seen.append, bounds=(0, None)))
    tunables.set({"clip": 3.0}, mode="constant")
    assert seen == [3.0]


# -- per-batch values -------------------------------------------------------------------------
def test_batch_values_by_hand() -> None:
    from retune.integrations.keras import batch_values  # imports keras (torch backend)

    # batches of 16, 16 and 8 samples with mean losses 2.0, 4.0, 1.0 (sums 32, 64, 8)
    before: dict[str, tuple[float, float]] = {}
    steps = [(32.0, 16.0), (96.0, 32.0), (104.0, 40.0)]
    got = []
    for total, count in steps:
        after = {"loss": (total, count)}
        got.append(batch_values(before, after)["loss"])
        before = after
    assert got == [2.0, 4.0, 1.0]
    # the running means Keras reports would be 2.0, 3.0, 2.6
    assert batch_values({"loss": (1.0, 1.0)}, {"loss": (1.0, 1.0)}) == {}


def test_setup_mistakes_are_refused_with_the_reason(store_url: str) -> None:
    import keras  # type: ignore[import-untyped]  # torch backend: tests/integrations/conftest.py

    from retune.errors import InvalidArgument
    from retune.integrations.keras import RetuneCallback

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(InvalidArgument, match="compile the model"):
        RetuneCallback("setup", model=model, store=store_url)
    with pytest.raises(InvalidArgument, match="takes the Keras model, not optimizer="):
        RetuneCallback("setup", model=model, optimizer=object(), store=store_url)

    def constant_lr() -> float:
        return 0.01

    model.compile(optimizer=keras.optimizers.SGD(constant_lr), loss="mse")
    with pytest.raises(InvalidArgument, match="plain callable"):
        RetuneCallback("setup", model=model, store=store_url)
    with pytest.raises(RunNotFound):  # refused before any run was started
        retune.load("setup", store=store_url)


def test_logged_losses_are_per_batch_values_not_running_means(
    store_url: str, tmp_path: Path
) -> None:
    # lr 0: the weights never move, so each batch's loss is computable from the predictions
    dump = tmp_path / "d.npz"
    done = _train(
        store_url, "perbatch", "--lr-zero", "--no-shuffle", "--no-dropout", "--epochs", "1",
        "--samples", "40", "--batch", "16", "--dump", str(dump),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    data = np.load(dump)
    err = data["pred"].astype(np.float64) - data["y"].astype(np.float64)
    batches = [slice(0, 16), slice(16, 32), slice(32, 40)]
    want_loss = [float(np.mean(err[b] ** 2)) for b in batches]
    want_mae = [float(np.mean(np.abs(err[b]))) for b in batches]
    snap = retune.load("perbatch", store=store_url)
    assert snap.metric("loss").steps.tolist() == [1, 2, 3]
    np.testing.assert_allclose(snap.metric("loss").values, want_loss, rtol=1e-5)
    np.testing.assert_allclose(snap.metric("mae").values, want_mae, rtol=1e-5)
    # Keras' epoch log is the sample-weighted mean, which the last batch alone is not
    epoch_loss = snap.metric("epoch/loss").values[0]
    assert epoch_loss == pytest.approx(np.mean(err**2), rel=1e-5)
    assert abs(snap.metric("loss").values[-1] - epoch_loss) > 1e-3
    meta = snap.meta
    assert meta["model"]["parameters"] == 8 * 16 + 16 + 16 + 1
    assert [layer["class"] for layer in meta["model"]["layers"]][-2:] == ["Dense", "Dense"]
    assert meta["optimizer"]["config"]["name"] == "adam"
    assert meta["framework"]["name"] == "keras"
    # the optimizer's knobs, declared once fit starts, are among the start node's values
    (start,) = snap.tree()
    assert start.values["learning_rate"] == 0.0 and "beta_1" in start.values


def test_gradient_accumulation_records_one_step_per_optimizer_step(store_url: str) -> None:
    done = _train(store_url, "accum", "--accumulate", "2", "--epochs", "2", "--no-shuffle")
    assert done.returncode == 0, done.stdout + done.stderr
    snap = retune.load("accum", store=store_url)
    # 2 epochs of 4 batches, 2 batches an optimizer step: 4 steps, not 8
    assert snap.metric("loss").steps.tolist() == [1, 2, 3, 4]
    assert snap.status == "finished"


# -- live control from another process --------------------------------------------------------
@pytest.mark.slow
def test_live_commands_from_another_process(store_url: str) -> None:
    trainer = Trainer(store_url, "live", "--epochs", "100000", "--every-epochs", "1")
    try:
        trainer.wait_step(3)
        with retune.connect("live", store=store_url) as ctl:
            assert {"learning_rate", "beta_1", "beta_2", "epsilon"} <= set(ctl.values())
            done = ctl.set(learning_rate=0.05, beta_1=0.5, wait=True, timeout=TIMEOUT)
            assert done.status == "applied", done.reason
            step = done.applied_step
            assert step is not None
            trainer.wait_step(step + 1)
            hps = trainer.hps()  # printed after each step by a callback reading the optimizer
            assert hps[step] == pytest.approx((0.05, 0.5))  # set at that step's boundary
            assert hps[step + 1] == pytest.approx((0.05, 0.5))
            assert hps[step - 1] == pytest.approx((0.01, 0.9))
            with pytest.raises(CommandRejected, match="learning_rate must be >= 0"):
                ctl.set(learning_rate=-1.0, wait=True, timeout=TIMEOUT)
            with pytest.raises(CommandRejected, match=r"beta_1 must be >= 0 and < 1, got 1"):
                ctl.set(beta_1=1.0, wait=True, timeout=TIMEOUT)  # beta in [0, 1), said so
            rejected = [c for c in ctl.history() if c.status == "rejected"]
            assert len(rejected) == 2  # recorded in the audit
            trainer.wait_step(step + 3)  # still training
            assert ctl.values()["learning_rate"] == pytest.approx(0.05)
            assert ctl.values()["beta_1"] == 0.5
            paused = ctl.pause(wait=True, timeout=TIMEOUT)
            assert paused.status == "applied"
            held = paused.applied_step
            assert retune.load("live", store=store_url).status == "paused"
            assert max(trainer.hps()) <= (held or 0) + 1
            ctl.continue_(wait=True, timeout=TIMEOUT)
            trainer.wait_step((held or 0) + 3)
            stopped = ctl.stop(wait=True, timeout=TIMEOUT)
            assert stopped.status == "applied"
        assert trainer.finish() == 0, trainer.output()
    finally:
        if trainer.proc.poll() is None:
            trainer.proc.kill()
            trainer.proc.wait()
    snap = retune.load("live", store=store_url)
    assert snap.status == "stopped"
    lrs = snap.metric("learning_rate")
    assert lrs.values[lrs.steps > step].min() == pytest.approx(0.05)


@pytest.mark.slow
def test_a_schedule_gets_rescale_and_constant_and_a_zero_schedule_rejects_rescale(
    store_url: str,
) -> None:
    trainer = Trainer(store_url, "sched", "--epochs", "100000", "--schedule")
    try:
        trainer.wait_step(3)
        with retune.connect("sched", store=store_url) as ctl:
            done = ctl.set(learning_rate=0.02, wait=True, timeout=TIMEOUT)  # rescale
            assert done.status == "applied", done.reason
            step = done.applied_step or 0
            trainer.wait_step(step + 12)
            hps = trainer.hps()
            # ExponentialDecay(0.01, 10, 0.9) times 0.02/schedule(step): the shape is kept
            ratio = hps[step + 10][0] / hps[step][0]
            assert ratio == pytest.approx(0.9, rel=1e-4)
            assert hps[step][0] == pytest.approx(0.02, rel=1e-5)
            # what retune get shows follows the schedule (it stayed at 0.02 before)
            deadline = time.monotonic() + TIMEOUT
            while ctl.values()["learning_rate"] > 0.0199:
                assert time.monotonic() < deadline, "retune get never showed the schedule move"
                time.sleep(0.05)
            const = ctl.set(learning_rate=0.003, mode="constant", wait=True, timeout=TIMEOUT)
            assert const.status == "applied", const.reason
            cstep = const.applied_step or 0
            trainer.wait_step(cstep + 12)
            hps = trainer.hps()
            held = [hps[s][0] for s in range(cstep, cstep + 12)]
            assert held == [pytest.approx(0.003)] * 12
            ctl.stop(wait=True, timeout=TIMEOUT)
        assert trainer.finish() == 0, trainer.output()
    finally:
        if trainer.proc.poll() is None:
            trainer.proc.kill()
            trainer.proc.wait()
    zero = Trainer(store_url, "zero", "--epochs", "100000", "--schedule-zero")
    try:
        zero.wait_step(2)
        with retune.connect("zero", store=store_url) as ctl:
            with pytest.raises(CommandRejected, match=r"cannot be rescaled.*use mode constant"):
                ctl.set(learning_rate=0.01, wait=True, timeout=TIMEOUT)
            zero.wait_step(max(zero.hps()) + 1)  # still training, lr still 0
            assert zero.hps()[max(zero.hps())][0] == 0.0
            good = ctl.set(learning_rate=0.01, mode="constant", wait=True, timeout=TIMEOUT)
            assert good.status == "applied", good.reason
            ctl.stop(wait=True, timeout=TIMEOUT)
        assert zero.finish() == 0, zero.output()
    finally:
        if zero.proc.poll() is None:
            zero.proc.kill()
            zero.proc.wait()


# -- restore while fit runs -------------------------------------------------------------------
@pytest.mark.slow
def test_restore_while_fit_runs_opens_a_branch_with_the_new_lr(store_url: str) -> None:
    trainer = Trainer(store_url, "branch", "--epochs", "100000", "--every-epochs", "1")
    try:
        trainer.wait_step(10)  # two epoch checkpoints (4 steps an epoch)
        with retune.connect("branch", store=store_url) as ctl:
            labels = [c.label for c in ctl.store.list_checkpoints(ctl.run.id)]
            assert "c1" in labels, (labels, trainer.output())
            done = ctl.restore("c1", set={"learning_rate": 0.002}, wait=True, timeout=TIMEOUT)
            assert done.status == "applied", done.reason
            at = done.applied_step
            assert at == 4  # the global step went back to the checkpoint's
            # the line the restore prints: the steps seen before it may already be past 12
            deadline = time.monotonic() + TIMEOUT
            while len(trainer.weight_sums(4)) < 2 and time.monotonic() < deadline:
                assert trainer.proc.poll() is None, trainer.output()
                time.sleep(0.05)
            sums = trainer.weight_sums(4)  # after step 4, then right after the restore
            assert len(sums) == 2 and sums[0] == sums[1], (
                trainer.output()
            )  # every weight came back exactly
            ctl.stop(wait=True, timeout=TIMEOUT)
        assert trainer.finish() == 0, trainer.output()
    finally:
        if trainer.proc.poll() is None:
            trainer.proc.kill()
            trainer.proc.wait()
    snap = retune.load("branch", store=store_url)
    nodes = snap.tree()
    restored = [n for n in nodes if n.change_kind == "restore"]
    assert len(restored) == 1 and restored[0].parent == 1
    branch = snap.branch(restored[0].id)
    lrs = branch.metric("learning_rate")
    assert lrs.values[lrs.steps > 4].max() == pytest.approx(0.002)
    # the restored branch starts from the checkpoint's weights: its step-5 loss is the same
    # as the first branch's step-5 loss would be only with the same lr; it is recorded anew
    assert 5 in branch.metric("loss").steps.tolist()


# -- resume in a new process ------------------------------------------------------------------
@pytest.mark.slow
def test_resume_of_a_killed_run_at_an_epoch_boundary_is_bit_exact(store_url: str) -> None:
    whole = _train(store_url, "whole", "--epochs", "3", "--every-epochs", "1")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    killed = _train(store_url, "cut", "--epochs", "3", "--every-epochs", "1",
                    "--kill-after-epoch", "0")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    _age(store_url, "cut")
    resumed = subprocess.run(
        [sys.executable, "-m", "retune", "resume", "cut", "--store", store_url, "--",
         sys.executable, str(SCRIPT), store_url, "cut", "--epochs", "3", "--every-epochs", "1"],
        check=False, capture_output=True, text=True, env=_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "initial_epoch=1" in resumed.stdout
    cut = retune.load("cut", store=store_url)
    assert cut.status == "finished"
    leaf = [n for n in cut.tree() if n.change_kind == "resume"]
    assert len(leaf) == 1
    branch = cut.branch(leaf[0].id)
    ref = retune.load("whole", store=store_url)
    for key in ("loss", "mae", "learning_rate", "epoch/val_loss"):
        got = branch.metric(key, start=5)
        want = ref.metric(key, start=5)
        assert got.steps.tolist() == want.steps.tolist(), key
        assert got.values.tobytes() == want.values.tobytes(), key  # bit for bit
    assert ref.metric("loss").steps.tolist() == list(range(1, 13))


def test_an_epoch_checkpoint_is_written_while_the_next_epoch_trains(
    store_url: str, tmp_path: Path
) -> None:
    """``checkpoint_every_n_epochs`` saves in the background, as the core's schedule does:
    with the epoch-end save of step 4 held mid-write (blobs written, not listed), fit goes
    on into the next epoch; once released it is listed and restores."""
    flag = tmp_path / "blocked.json"
    trainer = Trainer(store_url, "beside", "--epochs", "3", "--every-epochs", "1",
                      env={"RETUNE_TEST_BLOCK_SAVE": f"4:{flag}"})  # fmt: skip
    training_goes_on_beside_a_held_epoch_save(
        trainer, flag, store_url, "beside", 4, timeout=TIMEOUT
    )


@pytest.mark.slow
def test_a_stopped_run_resumes_at_the_next_epoch(store_url: str) -> None:
    trainer = Trainer(store_url, "halt", "--epochs", "100000")
    try:
        trainer.wait_step(2)
        with retune.connect("halt", store=store_url) as ctl:
            stopped = ctl.stop(wait=True, timeout=TIMEOUT)
        assert trainer.finish() == 0, trainer.output()
    finally:
        if trainer.proc.poll() is None:
            trainer.proc.kill()
            trainer.proc.wait()
    at = stopped.applied_step or 0
    nxt = (at - 1) // 4 + 1  # the epoch after the one step `at` belongs to (4 steps an epoch)
    assert retune.load("halt", store=store_url).status == "stopped"
    resumed = subprocess.run(
        [sys.executable, "-m", "retune", "resume", "halt", "--store", store_url, "--",
         sys.executable, str(SCRIPT), store_url, "halt", "--epochs", str(nxt + 1)],
        check=False, capture_output=True, text=True, env=_env(), timeout=TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # a stop continues at the next epoch's start (mid-epoch: Keras starts epochs whole)
    assert f"initial_epoch={nxt}" in resumed.stdout
    snap = retune.load("halt", store=store_url)
    assert snap.status == "finished"
    resume_node = next(n for n in snap.tree() if n.change_kind == "resume")
    steps = snap.branch(resume_node.id).metric("loss", start=at + 1).steps.tolist()
    assert steps == list(range(at + 1, at + 5))  # one more epoch of 4 steps, numbered on
