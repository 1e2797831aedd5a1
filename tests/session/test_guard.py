"""The guard: a diverging run (NaN batch, lr raised 100x) recovers by itself, reproducibly,
on the record; a run it cannot save pauses with the reason until a person fixes it.

Real subprocess trainers (``guard_trainer.py``: the digits CNN on a tiny subset), real SQLite,
the real CLI in-process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import retune
from retune.cli import main as cli_main
from retune.errors import CommandRejected, InvalidArgument
from retune.session._guard import Guard, GuardRuntime
from retune.store import NodeRecord, Store, open_store

TRAINER = str(Path(__file__).with_name("guard_trainer.py"))


def _train(store: str, *scenarios: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, TRAINER, store, *scenarios],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


def _tree(store: Store, run_id: str) -> list[tuple[Any, ...]]:
    """Everything about the nodes but the wall-clock time they were made."""
    return [
        (n.id, n.parent, n.start_step, n.end_step, n.change_kind, n.values, n.diff, n.info)
        for n in store.list_nodes(run_id)
    ]


def _guard_nodes(store: Store, run_id: str) -> list[NodeRecord]:
    return [n for n in store.list_nodes(run_id) if n.change_kind == "guard"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, Any]]]:
    """One trainer process: NaN batch and lr x100, each with the guard on and off."""
    url = f"sqlite:///{tmp_path_factory.mktemp('guard') / 'retune.db'}"
    rows = _train(url, "nan:on:nan@30", "nan_off:off:nan@30", "lr:on:lr@30", "lr_off:off:lr@30")
    yield url, rows


def test_nan_batch_rolls_back_lowers_lr_and_skips_the_bad_batches(
    faults: tuple[str, dict[str, Any]],
) -> None:
    url, rows = faults
    assert rows["nan"]["finite"] and not rows["nan_off"]["finite"]  # guard off: ends in NaN
    final = float.fromhex(rows["nan"]["loss"])
    assert final < math.log(10)  # below chance: still learning after the recovery
    with open_store(url) as store:
        run = rows["nan"]["run"]
        assert store.get_run(run).status == "finished"
        (node,) = _guard_nodes(store, run)
        info = node.info["guard"]
        assert info["action"] == "recovered"
        assert info["reason"] == "loss nan at step 30"
        assert info["trigger_step"] == 30
        restored = next(c for c in store.list_checkpoints(run) if c.label == info["restored"])
        assert restored.reason == "guard" and restored.step < 30
        assert node.start_step == restored.step and node.parent == restored.node
        assert node.diff == {"lr": [0.1, 0.05]}
        # the batches from the checkpoint's position up to the NaN one, never seen again
        skipped = info["skipped"]
        assert skipped["count"] == 30 - restored.step
        assert skipped["batches"][-1] == [2, 5]  # step 30: epoch 2 (12 per epoch), batch 5
        assert len({tuple(b) for b in skipped["batches"]}) == skipped["count"]
        # the metric stays finite on the guard's branch, and the audit has the recovery
        branch = retune.load(run, store=store).branch(node.id).metric("loss")
        after = branch.values[branch.steps > node.start_step]
        assert len(after) and all(math.isfinite(v) for v in after)
        (audit,) = [c for c in store.list_commands(run) if c.source == "guard"]
        assert audit.kind == "guard" and audit.status == "applied"
        assert audit.result["reason"] == info["reason"] and audit.node == node.id


def test_lr_raised_100x_diverges_without_the_guard_and_recovers_with_it(
    faults: tuple[str, dict[str, Any]],
) -> None:
    url, rows = faults
    healthy, diverged = float.fromhex(rows["lr"]["loss"]), float.fromhex(rows["lr_off"]["loss"])
    assert healthy < math.log(10)
    assert not math.isfinite(diverged) or diverged > 2 * healthy
    with open_store(url) as store:
        nodes = _guard_nodes(store, rows["lr"]["run"])
        assert nodes, "the guard never acted"
        first = nodes[0].info["guard"]
        assert first["reason"].startswith("loss ") and " > 3 x " in first["reason"]
        assert first["trigger_step"] > 30 - 1
        assert nodes[0].diff == {"lr": [0.1, 0.05]}  # the checkpoint's lr, halved: not 10
        assert not _guard_nodes(store, rows["lr_off"]["run"])


def test_show_lists_the_guard_branches_with_their_reasons(
    faults: tuple[str, dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, rows = faults
    assert cli_main(["show", rows["nan"]["run"], "--store", url]) == 0
    out = capsys.readouterr().out
    assert "guard  lr 0.1 -> 0.05" in out
    assert "guard recovered: loss nan at step 30  (skipped" in out


def test_same_seed_same_fault_same_tree_and_loss_bit_for_bit(
    faults: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, rows = faults
    again_url = f"sqlite:///{tmp_path / 'again.db'}"
    again = _train(again_url, "nan:on:nan@30")["nan"]
    assert again["loss"] == rows["nan"]["loss"]  # float.hex: every bit
    with open_store(url) as first, open_store(again_url) as second:
        assert _tree(first, rows["nan"]["run"]) == _tree(second, again["run"])


def test_a_run_that_cannot_recover_pauses_and_a_person_resumes_it(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, TRAINER, store_url, "unstable:on:unstable@20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with open_store(store_url) as store:
            deadline = time.monotonic() + 300
            while True:
                runs = store.list_runs()
                if runs and runs[0].status == "paused":
                    break
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the guard never paused the run"
                time.sleep(0.05)
            run = runs[0].id
            recoveries = [n.info["guard"]["action"] for n in _guard_nodes(store, run)]
            assert recoveries == ["recovered", "recovered", "paused"]  # max_attempts=2
        assert cli_main(["show", run, "--store", store_url]) == 0
        out = capsys.readouterr().out
        assert "status     paused" in out
        assert "paused by  guard paused the run: loss nan at step" in out
        assert "after 2 recoveries without a healthy window" in out
        assert cli_main(["set", run, "lr=0.01", "--store", store_url]) == 0
        assert cli_main(["continue", run, "--store", store_url]) == 0
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    (row,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert row["finite"] and float.fromhex(row["loss"]) < math.log(10)
    with open_store(store_url) as store:
        assert store.get_run(run).status == "finished"
        kinds = [n.change_kind for n in store.list_nodes(run)]
        assert kinds == ["start", "guard", "guard", "guard", "set"]


# -- in-process: configuration, detection, commands ------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spike": 1.0}, "spike must be above 1"),
        ({"lr_factor": 0.0}, "lr_factor must be above 0"),
        ({"lr_factor": 2.0}, "at most 1"),
        ({"window": 0}, "window must be an int of at least 1"),
        ({"max_attempts": -1}, "max_attempts must be an int of at least 0"),
        ({"keep_good": True}, "keep_good must be an int"),
        ({"metric": ""}, "metric must be a metric name"),
        ({"nan": 1}, "nan must be True or False"),
        ({"spike": float("nan")}, "spike must be a finite number"),
    ],
)
def test_bad_guard_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Guard(**kwargs)


def test_init_refuses_a_guard_that_is_not_a_guard(store_url: str) -> None:
    with pytest.raises(InvalidArgument, match=r"guard must be True, False or retune\.Guard"):
        retune.init("g", store=store_url, guard="yes")  # type: ignore[arg-type]


def _clear(guard: GuardRuntime) -> None:
    guard.tripped = None


def test_detection_nan_at_once_spikes_after_warmup_trips_not_folded(store_url: str) -> None:
    with retune.init("g", store=store_url, guard=Guard(window=4, warmup=3, every=1000)) as run:
        guard = run.guard
        assert isinstance(guard, GuardRuntime)
        guard.next_due = 10**9  # observe only: nothing is due at the boundary
        assert not guard.observe(1, {"loss": 100.0})  # warmup: no level yet
        assert not guard.observe(2, {"loss": 1.0})
        assert not guard.observe(3, {"other": float("nan")})  # another metric: ignored
        assert guard.level == pytest.approx(50.5)
        assert not guard.observe(4, {"loss": 1.0})  # level is the mean while warming up
        assert guard.observe(5, {"loss": 200.0})  # 200 > 3 x 34
        assert guard.tripped == "loss 200 > 3 x 34 at step 5"
        level = guard.level
        _clear(guard)
        assert guard.observe(6, {"loss": float("inf")})
        assert guard.tripped == "loss inf at step 6"
        assert guard.level == level  # a trigger is never folded into the level
        _clear(guard)
        guard.enabled = False
        assert not guard.observe(7, {"loss": float("nan")})  # switched off: no trigger


def test_a_guard_checkpoint_that_cannot_be_written_does_not_stop_training(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard never crashes the run: its periodic last-good save failing (a full disk) is
    logged, training goes on, and the next due save tries again."""
    from retune.errors import StoreError
    from retune.session._checkpointer import Checkpointer

    save = Checkpointer.save
    failing = {"on": True}

    def full_disk(self: Checkpointer, reason: str, tag: str | None = None) -> Any:
        if reason == "guard" and failing["on"]:
            raise StoreError("disk full")
        return save(self, reason, tag)

    monkeypatch.setattr(Checkpointer, "save", full_disk)
    with retune.init("g", store=store_url, guard=Guard(every=2)) as run:
        for i in range(4):
            run.step(loss=1.0 + i % 2)  # the guard's saves at steps 1 and 3 fail
        guard = run.guard
        assert isinstance(guard, GuardRuntime) and run.global_step == 4

        def pending() -> Any:  # read afresh after each step
            return guard.pending

        assert pending() is None
        failing["on"] = False
        run.step(loss=1.0)  # step 5: due again, and written
        written = pending()
        assert written is not None and written.reason == "guard"


def test_a_recovery_whose_checkpoint_a_state_part_refuses_puts_everything_back_and_pauses(
    store_url: str,
) -> None:
    """A failed recovery "changes nothing it cannot undo": a state part whose load raises
    mid-recovery gets the state the guard found (the one restores already put back), the run
    pauses with the reason, and no exception reaches the training loop."""
    import threading

    import numpy as np

    refuse = {"on": False}

    def load_part(value: Any) -> None:
        if refuse["on"] and value["at"] < 9:  # it cannot go back; where it is, it can
            raise RuntimeError("the data pipeline cannot seek back")

    run = retune.init("g", store=store_url, guard=Guard(window=2, warmup=2, every=2))
    weights = np.zeros(4)
    run.state["w"] = weights
    run.add_state("pipeline", lambda: {"at": run.global_step}, load_part)
    for _ in range(8):  # last-good checkpoints at steps 2, 4, 6, 8 (kept once confirmed)
        weights[:] = run.global_step + 1
        run.step(loss=1.0)
    refuse["on"] = True
    errors: list[BaseException] = []

    def nan_step() -> None:
        try:
            weights[:] = 9.0  # the state the NaN step left
            run.step(loss=float("nan"))
        except BaseException as e:  # the test reports it
            errors.append(e)

    trainer = threading.Thread(target=nan_step)
    trainer.start()
    with retune.connect(run.id, store=store_url) as ctl:
        deadline = time.monotonic() + 60
        while ctl.run.status != "paused":
            assert trainer.is_alive() and time.monotonic() < deadline, errors
            time.sleep(0.02)
        (node,) = [n for n in ctl.store.list_nodes(run.id) if n.id == run.node]
        assert "the data pipeline cannot seek back" in node.info["guard"]["message"]
        assert (np.asarray(run.state["w"]) == 9.0).all()  # put back: the state it found
        assert [c.reason for c in ctl.store.list_checkpoints(run.id)].count("change") == 0
        refuse["on"] = False
        ctl.continue_()
        trainer.join(60)
    assert not trainer.is_alive() and errors == []
    run.finish()


def test_guard_commands_are_checked_when_sent(store_url: str) -> None:
    with retune.init("plain", store=store_url) as plain:
        ctl = retune.connect(plain.id, store=plain.store)
        with pytest.raises(CommandRejected, match="has no guard"):
            ctl.guard("off")
        ctl.close()
    with (
        retune.init("g", store=store_url, guard=True) as run,
        retune.connect(run.id, store=run.store) as ctl,
    ):
        with pytest.raises(CommandRejected, match="guard actions are on, off, veto, set"):
            ctl.guard("maybe")
        with pytest.raises(CommandRejected, match="unknown guard setting 'speed'"):
            ctl.guard("set", speed=2)
        with pytest.raises(CommandRejected, match="guard_spike"):
            ctl.guard("set", spike=-1)
        # the bounds the guard needs are exclusive: refused when sent, not first by the run
        with pytest.raises(CommandRejected, match="guard_spike must be > 1, got 1"):
            ctl.guard("set", spike=1)
        with pytest.raises(CommandRejected, match="guard_spike must be > 1, got 1"):
            ctl.set(guard_spike=1.0)
        with pytest.raises(CommandRejected, match="guard_lr_factor must be > 0 and <= 1, got 0"):
            ctl.set(guard_lr_factor=0.0)
        assert [c.status for c in run.store.list_commands(run.id)][-3:] == ["rejected"] * 3
        with pytest.raises(CommandRejected, match="no recovery to veto"):
            run._applier.apply_now(run, ctl.guard("veto"))
        applied = run._applier.apply_now(run, ctl.guard("set", spike=5, lr_factor=0.25))
        assert applied.result["diff"] == {"guard_spike": [3.0, 5.0], "guard_lr_factor": [0.5, 0.25]}
        assert run.guard is not None and run.guard.spike == 5.0
        run._applier.apply_now(run, ctl.guard("off"))
        assert not run.guard.enabled and ctl.values()["guard"] is False
        assert len(run.store.list_nodes(run.id)) == 1  # guard commands open no node
        run.guard.attempts = 2
        run._applier.apply_now(run, ctl.set(guard=True, guard_spike=6.0))  # knobs: plain set
        assert run.guard.settings()["enabled"] is True and run.guard.spike == 6.0
        assert run.guard.attempts == 0  # a person's set resets the guard's attempts
        assert run.store.list_nodes(run.id)[-1].change_kind == "set"


def test_veto_undoes_the_last_recovery_and_switches_the_guard_off(store_url: str) -> None:
    guard = Guard(window=2, warmup=1, every=2)
    with retune.init("v", store=store_url, guard=guard) as run:
        ctl = retune.connect(run.id, store=run.store)
        for _ in range(6):
            run.step(loss=1.0)
        run.state["marker"] = "bad"
        run.step(loss=float("nan"))  # step 7: the guard restores a last-good checkpoint
        (node,) = _guard_nodes(run.store, run.id)
        info = node.info["guard"]
        assert run.node == node.id and run.global_step == node.start_step < 7
        assert info["notes"][0] == "lr not lowered: the run has no optimizer lr"
        assert "marker" not in run.state
        vetoed = run._applier.apply_now(run, ctl.guard("veto"))
        assert vetoed.result == {"checkpoint": info["left"], "vetoed": f"n{node.id}",
                                 "enabled": False}  # fmt: skip
        assert run.global_step == 7 and run.state["marker"] == "bad"  # back where it was
        assert run.guard is not None and not run.guard.enabled
        last = run.store.list_nodes(run.id)[-1]
        assert last.change_kind == "restore" and last.info["guard"]["action"] == "vetoed"
        run.step(loss=float("nan"))  # switched off: no recovery
        assert len(_guard_nodes(run.store, run.id)) == 1
        ctl.close()


def test_cli_guard_command_switches_sets_and_refuses_bad_input(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with retune.init("c", store=store_url, guard=True) as run:
        assert run.guard is not None
        cli = ["--store", store_url, "--no-wait"]
        assert cli_main(["guard", run.id, "set", *cli]) == 2
        assert "needs NAME=VALUE" in capsys.readouterr().err
        assert cli_main(["guard", run.id, "off", "spike=4", *cli]) == 2
        assert "takes no NAME=VALUE" in capsys.readouterr().err
        assert cli_main(["guard", run.id, "set", "max_attempts=-1", *cli]) == 2
        assert "guard_max_attempts" in capsys.readouterr().err
        assert cli_main(["guard", run.id, "set", "spike=4", "skip=false", *cli]) == 0
        assert cli_main(["guard", run.id, "off", *cli]) == 0
        assert "queued" in capsys.readouterr().out
        run._applier.poll(run)
        run._applier.apply_pending(run)
        assert run.guard.spike == 4.0 and run.guard.skip_batches is False
        assert not run.guard.enabled
        assert [c.status for c in run.store.list_commands(run.id)][-2:] == ["applied", "applied"]


def test_the_reason_is_recorded_before_the_run_shows_paused(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever sees the run ``paused`` (``retune show``, the dashboard) finds the guard's
    reason already on the node: the status is written last."""
    guard = Guard(window=2, warmup=1, every=2, max_attempts=0)  # pause at the first trigger
    with retune.init("p", store=store_url, guard=guard) as run:
        seen: list[Any] = []
        update_run = run.store.update_run

        def spy(run_id: str, **fields: Any) -> Any:
            if fields.get("status") == "paused":
                seen.append(run.store.list_nodes(run_id)[-1].info.get("guard"))
                run.flags.stop_requested = True  # let the held boundary end this test
            return update_run(run_id, **fields)

        monkeypatch.setattr(run.store, "update_run", spy)
        for _ in range(6):
            run.step(loss=1.0)
        with pytest.raises(retune.StopTraining):
            run.step(loss=float("nan"))
        (info,) = seen
        assert info is not None and info["action"] == "paused"
        assert info["message"].startswith("guard paused the run: loss nan at step 7")
