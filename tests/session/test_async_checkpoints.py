"""Checkpoints written in the background: training goes on, nothing half-written is listed,
back-pressure (wait / skip), failures recorded, finish() waits.

The hook ``RETUNE_TEST_BLOCK_SAVE=STEP:PATH`` blocks a save's phase 2 (blobs written, manifest
row not yet) until ``PATH`` is removed; for a scheduled save that is the background thread.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import retune
from retune.checkpoint import ObjectStore, decode_state, manifest_blobs
from retune.errors import InvalidArgument
from retune.session._checkpointer import CheckpointPolicy
from retune.store import CommandRecord, open_store

ROOT = Path(__file__).parents[2]
DEADLINE = 120.0


def _until(condition: object, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``condition()`` until true, failing after :data:`DEADLINE` seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        assert proc is None or proc.poll() is None, f"the trainer ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _block(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: int) -> Path:
    flag = tmp_path / "blocked.json"
    monkeypatch.setenv("RETUNE_TEST_BLOCK_SAVE", f"{step}:{flag}")
    return flag


def _train(run: retune.Run, weights: np.ndarray, steps: int) -> None:
    for _ in range(steps):
        weights.fill(float(run.global_step + 1))  # the state at step s holds s everywhere
        run.step(loss=float(run.global_step))


def _started(
    name: str, store: str, size: int = 50_000, **options: Any
) -> tuple[retune.Run, np.ndarray]:
    """A run whose state is one array of ``size`` zeros (50,000: big enough for a blob of its
    own); returns the run and the array, which :func:`_train` fills with the step."""
    run = retune.init(name, store=store, **options)
    weights = np.zeros(size)
    run.state["w"] = weights
    return run, weights


def _kinds(store: str, run: retune.Run) -> list[tuple[str, int | None]]:
    return [(e.kind, e.step) for e in open_store(store).list_events(run.id)]


def test_training_goes_on_while_a_save_is_written_and_a_busy_save_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "s.db")
    flag = _block(monkeypatch, tmp_path, 5)
    run, weights = _started("skip", store, checkpoint_every_n_steps=5, checkpoint_when_busy="skip")
    _train(run, weights, 5)
    _until(flag.exists, "the save of step 5 to block")
    assert json.loads(flag.read_text())["step"] == 5
    _train(run, weights, 7)  # training goes on: steps 6..12, the save of step 5 still blocked
    assert run.global_step == 12 and flag.exists()
    assert run.checkpointer.in_flight is not None and run.checkpointer.in_flight.step == 5
    assert run.store.list_checkpoints(run.id) == []  # not listed while being written
    assert ("checkpoint_skipped", 10) in _kinds(store, run)  # step 10's was due: skipped
    assert run.checkpointer.skipped == 1
    flag.unlink()
    run.checkpointer.wait()
    [saved] = run.store.list_checkpoints(run.id)
    state = run.checkpointer.load(saved)
    # the copy taken at step 5, although the live array has changed seven times since
    assert saved.step == 5 and np.array_equal(state["user"]["w"], np.full(50_000, 5.0))
    assert state["loop"]["step"] == 5
    assert run.branch("n1").metric("loss").steps.tolist() == list(range(1, 13))
    run.finish()


def test_the_next_save_waits_for_the_one_in_flight_and_finish_waits_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "w.db")
    flag = _block(monkeypatch, tmp_path, 3)
    run, weights = _started("wait", store, checkpoint_every_n_steps=3)
    returned: list[int] = []

    def train() -> None:
        for _ in range(4):  # steps 1..4: the save of step 3 blocks in the background
            _train(run, weights, 1)
            returned.append(run.global_step)
        _train(run, weights, 2)  # step 6 is due while step 3's save is in flight: waits
        returned.append(run.global_step)
        run.finish()  # waits for the save of step 6

    trainer = threading.Thread(target=train)
    trainer.start()
    _until(lambda: returned[-1:] == [4] and flag.exists(), "training past the blocked save")
    _until(lambda: run.global_step == 6, "step 6")
    trainer.join(0.5)
    assert trainer.is_alive() and returned[-1] == 4  # held at step 6's boundary
    assert run.store.list_checkpoints(run.id) == []
    flag.unlink()
    trainer.join(DEADLINE)
    assert not trainer.is_alive() and returned[-1] == 6
    checkpoints = open_store(store).list_checkpoints(run.id)
    assert [c.step for c in checkpoints] == [3, 6]  # finish() waited for the last one
    for checkpoint in checkpoints:
        state = decode_state(checkpoint.manifest, ObjectStore(str(tmp_path / "objects")))
        assert np.array_equal(state["user"]["w"], np.full(50_000, float(checkpoint.step)))
    assert open_store(store).get_run(run.id).status == "finished"


@pytest.mark.parametrize("keep", [True, False], ids=["kept", "freed"])
def test_background_saves_copy_into_the_last_one_s_buffers_unless_told_not_to(
    tmp_path: Path, keep: bool
) -> None:
    """Phase 1 copies into the buffers the previous background save wrote from (no page
    faults of fresh memory); ``checkpoint_keep_staging=False`` keeps none between saves.
    Either way every checkpoint holds the state of its own step."""
    from tests.checkpoint.test_staging import _pointers

    store = str(tmp_path / "s.db")
    run, weights = _started("staging", store, checkpoint_every_n_steps=2,
                            checkpoint_keep_staging=keep)  # fmt: skip
    staging = run.checkpointer._staging
    held: list[set[int]] = []
    for _ in range(3):
        _train(run, weights, 2)
        run.checkpointer.wait()
        if staging is not None:
            assert staging.nbytes >= weights.nbytes
            held.append(_pointers(staging))
    run.finish()
    assert (staging is not None) is keep
    if staging is not None:
        assert held[0] == held[1] == held[2]  # one set of buffers, reused
        assert staging.nbytes == 0  # an ended run (kept in a notebook) holds no copy
    checkpoints = open_store(store).list_checkpoints(run.id)
    assert [c.step for c in checkpoints] == [2, 4, 6]
    for checkpoint in checkpoints:
        state = decode_state(checkpoint.manifest, ObjectStore(str(tmp_path / "objects")))
        assert np.array_equal(state["user"]["w"], np.full(50_000, float(checkpoint.step)))


def test_a_background_save_writes_from_one_thread_a_synchronous_one_from_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A background save hashes and writes in its own one thread (more would take the
    training's core); a save that training waits for uses the writer pool."""
    writers: list[str] = []
    put = ObjectStore.put

    def recording_put(self: ObjectStore, *args: object, **kwargs: object) -> str:
        writers.append(threading.current_thread().name)
        return put(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ObjectStore, "put", recording_put)
    run = retune.init("writers", store=str(tmp_path / "t.db"), checkpoint_every_n_steps=2)
    for index in range(8):
        run.state[f"w{index}"] = np.full(50_000, float(index))  # eight blobs of their own
    _train(run, run.state["w0"], 2)
    run.checkpointer.wait()
    background, writers[:] = set(writers), []
    assert background == {f"retune-save-{run.id}"}
    run.checkpoint()
    pool = [name for name in writers if name.startswith("ThreadPoolExecutor")]
    assert len(pool) >= 8 and f"retune-save-{run.id}" not in writers  # the pack: this thread
    run.finish()


def test_ctrl_c_during_a_save_on_the_training_thread_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With background saves off, a scheduled save runs on the training thread: Ctrl-C while
    it writes reaches the training loop (and nothing half-written is listed)."""
    put = ObjectStore.put

    def interrupted(self: ObjectStore, *args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    run = retune.init("fg", store=str(tmp_path / "f.db"), checkpoint_every_n_steps=2,
                      checkpoint_in_background=False)  # fmt: skip
    run.state["w"] = np.zeros(50_000)
    run.step(loss=1.0)
    monkeypatch.setattr(ObjectStore, "put", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run.step(loss=2.0)
    monkeypatch.setattr(ObjectStore, "put", put)
    assert run.store.list_checkpoints(run.id) == [] and run.checkpointer.failed == 0
    run.finish()


def test_a_failed_background_save_is_recorded_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = str(tmp_path / "f.db")
    (tmp_path / "a-file").write_text("not a folder")
    run = retune.init("failing", store=store, objects=str(tmp_path / "a-file" / "objects"),
                      checkpoint_every_n_steps=2)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="retune"):
        for i in range(5):
            run.step(loss=float(i))  # never raises
        run.finish()
    assert run.checkpointer.failed == 2
    failed = [e for e in open_store(store).list_events(run.id) if e.kind == "checkpoint_failed"]
    assert [(e.step, e.payload["reason"]) for e in failed] == [(2, "schedule"), (4, "schedule")]
    assert "cannot create the object folder" in failed[0].payload["error"]
    assert "checkpoint at step 2 was not saved" in caplog.text
    assert open_store(store).get_run(run.id).status == "finished"
    assert retune.load("failing", store=store).metric("loss").steps.tolist() == [1, 2, 3, 4, 5]


def test_state_that_cannot_be_checkpointed_is_refused_at_the_step(tmp_path: Path) -> None:
    run = retune.init("bad", store=str(tmp_path / "b.db"), checkpoint_every_n_steps=1)
    run.state["bad"] = object()
    with pytest.raises(InvalidArgument, match=r"state\['user'\]\['bad'\]"):
        run.step(loss=1.0)  # phase 1 runs at the step: the error is not deferred
    del run.state["bad"]
    run.finish()
    with pytest.raises(InvalidArgument, match="when_busy"):
        CheckpointPolicy(when_busy="later")


KILLED = """
import sys, torch, retune
store = sys.argv[1]
model = torch.nn.Linear(200, 200)
run = retune.init("killed", model=model, store=store, checkpoint_every_n_steps=5,
                  flush_interval=0.05)
for i in range(100_000):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(i + 1))
    run.step(loss=float(i + 1))
"""


@pytest.mark.slow
def test_sigkill_during_a_background_write_lists_only_complete_checkpoints(
    tmp_path: Path,
) -> None:
    store, flag = str(tmp_path / "k.db"), tmp_path / "blocked.json"
    env = {**os.environ, "RETUNE_TEST_BLOCK_SAVE": f"10:{flag}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, store], env=env)
    try:
        _until(flag.exists, "the save of step 10 to block", proc)
        assert json.loads(flag.read_text()) == {"pid": proc.pid, "step": 10}
        opened = open_store(store)
        run = opened.get_run("killed")

        def trained_to(step: int) -> bool:
            return step in retune.load(run.id, store=store).metric("loss").steps.tolist()

        # training went on while the save was blocked in its background write: it reached
        # step 15, where the next save waits for the one in flight (when_busy="wait")
        _until(lambda: trained_to(15), "training to reach step 15", proc)
        assert [c.step for c in opened.list_checkpoints(run.id)] == [5]
        referenced: set[str] = set()
        for manifest in opened.all_manifests():
            referenced |= manifest_blobs(manifest)
        objects = ObjectStore(str(tmp_path / "objects"))
        assert set(objects.keys()) - referenced  # the save in flight had written its blobs
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    checkpoints = opened.list_checkpoints(run.id)
    assert [c.step for c in checkpoints] == [5]  # the unfinished one is not listed
    import torch

    for checkpoint in checkpoints:  # every listed checkpoint restores bit for bit
        state = decode_state(checkpoint.manifest, objects)
        assert set(state["model"]) == {"weight", "bias"}
        for tensor in state["model"].values():
            assert torch.equal(tensor, torch.full_like(tensor, float(checkpoint.step)))
        assert state["loop"]["step"] == checkpoint.step


@pytest.mark.parametrize("target", ["latest", " n1@3 ", "n1", "c1"])
def test_a_restore_waits_for_the_save_in_flight_and_lands_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """A target that names the checkpoint still being written ("latest", the node, a step on
    it, its label; padded too) is not refused as "none yet" while that save is the run's
    first: the restore waits until it is listed, then restores it."""
    store = str(tmp_path / "r.db")
    flag = _block(monkeypatch, tmp_path, 3)
    run, weights = _started("latest", store, checkpoint_every_n_steps=3)
    outcome: list[object] = []

    def train() -> None:
        _train(run, weights, 5)  # the save of step 3 blocks in the background
        try:
            outcome.append(run.restore(target))  # from the training thread: at once
        except Exception as e:  # the test reports it
            outcome.append(e)

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        _until(lambda: run.global_step == 5 and flag.exists(), "step 5 with the save blocked")
        trainer.join(0.5)
        assert trainer.is_alive() and not outcome, outcome  # it waits for the listing
    finally:
        flag.unlink(missing_ok=True)
        trainer.join(DEADLINE)
    [command] = outcome
    assert isinstance(command, CommandRecord), command
    assert command.status == "applied" and command.result["checkpoint"] == "c1"
    assert run.global_step == 3 and np.array_equal(run.state["w"], np.full(50_000, 3.0))
    run.finish()


def test_a_stop_whose_scheduled_save_failed_takes_its_own_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop at a step whose background save fails must not rely on it: the run takes a
    ``stop`` checkpoint of its own, so a resume continues from the stop."""
    store = str(tmp_path / "f.db")
    run, weights = _started("failed", store, checkpoint_every_n_steps=5)
    write = run.checkpointer._write

    def failing_write(encoded: object, reason: str, *args: object, **kwargs: object) -> object:
        if reason == "schedule":
            raise retune.StoreUnavailable("disk full (test)")
        return write(encoded, reason, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(run.checkpointer, "_write", failing_write)
    _train(run, weights, 4)
    run.request_stop()  # applied at the next boundary, step 5, where a save is also due
    with pytest.raises(retune.StopTraining):
        _train(run, weights, 1)
    run.finish("stopped")
    checkpoints = open_store(store).list_checkpoints(run.id)
    assert [(c.reason, c.step) for c in checkpoints] == [("stop", 5)]
    assert ("checkpoint_failed", 5) in _kinds(store, run)
    resumed = retune.init("failed", store=store, resume="latest")
    assert resumed.global_step == 5 and np.array_equal(resumed.state["w"], np.full(50_000, 5.0))
    resumed.finish()


@pytest.mark.parametrize("target", ["latest", " n1@2 ", "c1"])
def test_a_restore_with_no_checkpoint_at_all_is_rejected_at_the_boundary(
    tmp_path: Path, target: str
) -> None:
    """Submitted to a live run with no checkpoint listed yet, a target that could name one is
    accepted (the first may be in flight); the training process resolves it again and, with
    none at all, rejects it with the reason. Nothing changes and training goes on."""
    store = str(tmp_path / "n.db")
    run, weights = _started("none-yet", store, 10, poll_interval=0.01)
    _train(run, weights, 3)
    with retune.connect("none-yet", store=store) as ctl:
        command = ctl.restore(target)
        assert command.status == "pending"
        deadline = time.monotonic() + DEADLINE
        while ctl.store.get_command(command.id).status == "pending":
            assert time.monotonic() < deadline, "the command was never applied"
            _train(run, weights, 1)
        with pytest.raises(retune.CommandRejected, match="no checkpoints yet"):
            ctl.wait(command.id)
    step = run.global_step
    _train(run, weights, 2)
    assert run.global_step == step + 2 and run.node == 1
    assert np.array_equal(run.state["w"], np.full(10, float(step + 2)))
    run.finish()


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("n\u0663", "names no checkpoint"),  # an Arabic-Indic digit: only ASCII digits count
        ("c" + "9" * 30, "too large"),
        ("<\u00e9/x>", "names no checkpoint"),
        ("n1@x", "names no checkpoint"),
        ("n7", "has no node n7"),
    ],
)
def test_a_target_no_checkpoint_could_match_is_refused_at_submission_even_before_the_first(
    tmp_path: Path, target: str, reason: str
) -> None:
    """Only a target that could name the save in flight waits for the boundary: a malformed
    one, or one naming an unknown node, is refused when submitted, recorded as rejected."""
    store = str(tmp_path / "m.db")
    run, weights = _started("malformed", store, 10)
    _train(run, weights, 2)
    with retune.connect("malformed", store=store) as ctl:
        with pytest.raises(retune.CommandRejected, match=reason):
            ctl.restore(target)
        [command] = ctl.store.list_commands(run.id)
        assert command.status == "rejected" and reason in (command.reason or "")
    _train(run, weights, 1)
    assert run.global_step == 3 and run.node == 1
    run.finish()


def _change(run: retune.Run, **values: float) -> CommandRecord:
    from retune.control._commands import submit

    return submit(run.store, run.id, "set", {"values": values}, source="python")


def test_a_change_trains_on_while_its_checkpoint_is_written_and_resolves_once_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint before a change is copied at the boundary and written in the
    background: the change applies at once and training goes on; the command stays
    ``applying`` until that checkpoint is listed, then is ``applied`` naming it, and it holds
    the state from before the change."""
    store = str(tmp_path / "c.db")
    flag = _block(monkeypatch, tmp_path, 3)
    run, weights = _started("change", store, poll_interval=0.01)
    clip = run.tunable("clip", 1.0, bounds=(0, None))
    _train(run, weights, 3)
    command = _change(run, clip=2.0)
    try:
        while not flag.exists():  # the change's save (the first at step >= 3) blocks
            _train(run, weights, 1)
            assert run.global_step < 10_000, "the change was never applied"
        at = json.loads(flag.read_text())["step"]
        assert clip.value == 2.0  # applied at that boundary, before its checkpoint is listed
        trained = run.global_step
        _train(run, weights, 5)  # training goes on meanwhile
        assert run.global_step == trained + 5 and flag.exists()
        assert run.store.get_command(command.id).status == "applying"
        assert run.store.list_checkpoints(run.id) == []  # not listed while being written
        [_, node] = run.store.list_nodes(run.id)
        assert (node.id, node.parent, node.start_step, node.change_kind) == (2, 1, at, "set")
        with (
            retune.connect("change", store=store) as ctl,
            pytest.raises(retune.CommandTimeout, match="still being applied"),
        ):
            ctl.wait(command.id, timeout=0.1)  # says it was taken, not "is the process alive?"
    finally:
        flag.unlink(missing_ok=True)
    run.checkpointer.wait()
    done = run.store.get_command(command.id)
    assert (done.status, done.applied_step, done.node) == ("applied", at, 2)
    assert done.result == {"diff": {"clip": [1.0, 2.0]}, "mode": "rescale", "checkpoint": "c1"}
    [before] = run.store.list_checkpoints(run.id)
    assert (before.label, before.reason, before.node, before.step) == ("c1", "change", 1, at)
    state = run.checkpointer.load(before)  # the copy taken at the boundary, before the change
    assert np.array_equal(state["user"]["w"], np.full(50_000, float(at)))
    assert state["retune"]["tunables"]["knobs"]["clip"] == 1.0
    run.restore("c1")  # "restore to before the change"
    assert clip.value == 1.0 and run.global_step == at
    run.finish()


@pytest.mark.parametrize(
    ("background", "failed_first"),
    [(True, False), (True, True), (False, False)],
    ids=["background", "background-failed-before-the-change", "synchronous"],
)
def test_a_change_whose_checkpoint_fails_says_so(
    tmp_path: Path,
    background: bool,
    failed_first: bool,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Written in the background, the failure comes after the change applied: the command is
    ``applied`` without a checkpoint and says why, next to a ``checkpoint_failed`` event,
    even when the background thread failed before the handler went on (the outcome does not
    depend on which thread is faster). Written at the boundary
    (``checkpoint_in_background=False``), it comes first: the command is rejected and nothing
    changed."""
    store = str(tmp_path / "f.db")
    (tmp_path / "a-file").write_text("not a folder")
    run = retune.init("failing", store=store, objects=str(tmp_path / "a-file" / "objects"),
                      checkpoint_in_background=background)  # fmt: skip
    if failed_first:
        save_later = run.checkpointer.save_later

        def ended_first(reason: str, tag: str | None = None) -> Any:
            pending = save_later(reason, tag)
            pending.wait()  # the background thread has failed before the handler goes on
            return pending

        monkeypatch.setattr(run.checkpointer, "save_later", ended_first)
    clip = run.tunable("clip", 1.0, bounds=(0, None))
    run.step(loss=1.0)
    command = _change(run, clip=2.0)
    run._applier.poll(run)
    run.step(loss=2.0)  # the boundary applies it
    run.checkpointer.wait()
    done = run.store.get_command(command.id)
    events = [e.kind for e in run.store.list_events(run.id)]
    assert "checkpoint_failed" in events
    if background:
        assert (done.status, clip.value, done.applied_step) == ("applied", 2.0, 2)
        assert done.result["checkpoint"] is None
        assert "cannot create the object folder" in done.result["checkpoint_error"]
        from argparse import Namespace

        from retune.cli._control import report

        report(Namespace(json=False), done)  # what `retune set` prints: never silently
        printed = capsys.readouterr().out
        assert "applied set at step 2 (node n2): clip 1 -> 2" in printed
        assert "warning: the checkpoint before this change was not saved" in printed
    else:
        assert (done.status, clip.value) == ("rejected", 1.0)
        assert "the checkpoint before the change failed" in (done.reason or "")
        assert [n.id for n in run.store.list_nodes(run.id)] == [1]
    run.finish()


def test_a_change_with_a_save_in_flight_waits_for_it_even_when_busy_saves_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``checkpoint_when_busy="skip"`` skips scheduled saves only: the checkpoint before a
    change waits for the save in flight, and is taken."""
    store = str(tmp_path / "s.db")
    flag = _block(monkeypatch, tmp_path, 2)
    run, weights = _started("busy", store, checkpoint_every_n_steps=2,
                            checkpoint_when_busy="skip")  # fmt: skip
    clip = run.tunable("clip", 1.0, bounds=(0, None))
    _train(run, weights, 2)
    _until(flag.exists, "the save of step 2 to block")
    command = _change(run, clip=3.0)
    run._applier.poll(run)
    release = threading.Timer(0.5, flag.unlink)  # the change's boundary waits for it
    release.start()
    _train(run, weights, 1)
    release.join()
    run.checkpointer.wait()
    done = run.store.get_command(command.id)
    assert (done.status, done.result["checkpoint"], clip.value) == ("applied", "c2", 3.0)
    assert [(c.reason, c.step) for c in run.store.list_checkpoints(run.id)] == [
        ("schedule", 2),
        ("change", 3),
    ]
    assert "checkpoint_skipped" not in [e.kind for e in run.store.list_events(run.id)]
    run.finish()


CHANGED_THEN_KILLED = """
import sys, time, numpy as np, retune
run = retune.init("change-killed", store=sys.argv[1], poll_interval=0.01, flush_interval=0.05)
weights = np.zeros(50_000)
run.state["w"] = weights
run.tunable("clip", 1.0, bounds=(0, None))
run.step(loss=1.0)
weights.fill(1.0)
run.checkpoint()
for i in range(2, 100_000):
    weights.fill(float(i))
    run.step(loss=float(i))
    time.sleep(0.005)
"""


@pytest.mark.slow
def test_sigkill_while_a_change_s_checkpoint_is_written_leaves_it_unlisted_and_unresolved(
    tmp_path: Path,
) -> None:
    """The process dies with the change applied but its checkpoint not listed: nothing half
    written is listed, the command was never recorded ``applied`` (it named no checkpoint),
    and the process that resumes the run rejects it, saying what happened."""
    from retune.control._commands import submit
    from retune.store import INTERRUPTED_WHILE_APPLYING

    store, flag = str(tmp_path / "k.db"), tmp_path / "blocked.json"
    env = {**os.environ, "RETUNE_TEST_BLOCK_SAVE": f"2:{flag}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHANGED_THEN_KILLED, store], env=env)
    try:
        _until(lambda: Path(store).exists() and _listed(store), "the first checkpoint", proc)
        opened = open_store(store)
        run = opened.get_run("change-killed")
        command = submit(opened, run.id, "set", {"values": {"clip": 2.0}}, source="python")
        _until(flag.exists, "the change's save to block", proc)
        at = json.loads(flag.read_text())["step"]

        def trained_past() -> bool:
            steps = retune.load(run.id, store=store).metric("loss").steps.tolist()
            return bool(steps) and steps[-1] >= at + 5

        _until(trained_past, "training past the change", proc)
        assert opened.get_command(command.id).status == "applying"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert [(c.label, c.step) for c in opened.list_checkpoints(run.id)] == [("c1", 1)]
    assert opened.get_command(command.id).status == "applying"
    [_, node] = opened.list_nodes(run.id)
    assert (node.change_kind, node.start_step) == ("set", at)  # it was applied, then lost
    resumed = retune.init("change-killed", store=store, resume="latest")
    clip = resumed.tunable("clip", 5.0, bounds=(0, None))  # the checkpoint's value wins
    assert resumed.global_step == 1 and clip.value == 1.0
    assert np.array_equal(resumed.state["w"], np.full(50_000, 1.0))
    rejected = resumed.store.get_command(command.id)
    assert (rejected.status, rejected.reason) == ("rejected", INTERRUPTED_WHILE_APPLYING)
    resumed.finish()


def _listed(store: str) -> bool:
    opened = open_store(store)
    try:
        return any(opened.list_checkpoints(r.id) for r in opened.list_runs())
    finally:
        opened.close()


def test_an_applied_change_the_store_refuses_to_record_is_recorded_once_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change is in effect; its ``applied`` record is owed while the store refuses it,
    written after the next flush, and never turned into a rejection by the run's end."""
    store = str(tmp_path / "r.db")
    run, weights = _started("owed", store)
    clip = run.tunable("clip", 1.0, bounds=(0, None))
    _train(run, weights, 2)
    real = run.store.resolve_command
    down = True

    def refusing(command_id: int, **fields: Any) -> CommandRecord:
        if down and fields.get("status") == "applied":
            raise retune.StoreUnavailable("database or disk is full (test)")
        return real(command_id, **fields)

    monkeypatch.setattr(run.store, "resolve_command", refusing)
    first = _change(run, clip=2.0)
    run._applier.poll(run)
    _train(run, weights, 1)  # applied at step 3
    run.checkpointer.wait()
    second = run.set(clip=3.0)  # from the training thread: returned as it stands
    assert clip.value == 3.0 and run._applier.owed == 2
    assert [run.store.get_command(c.id).status for c in (first, second)] == ["applying"] * 2
    down = False  # the store is back: the writer thread's next flush writes what is owed
    run.flush()
    run._after_flush()
    assert run._applier.owed == 0
    recorded = [run.store.get_command(c.id) for c in (first, second)]
    assert [(c.status, c.applied_step, c.node) for c in recorded] == [
        ("applied", 3, 2),
        ("applied", 3, 3),
    ]
    assert [c.result["checkpoint"] for c in recorded] == ["c1", "c2"]
    down = True  # refused again: finish() tries once more, then the end does not reject it
    third = run.set(clip=4.0)
    run.finish()
    assert open_store(store).get_command(third.id).status == "applying"


def test_another_process_ending_the_run_does_not_reject_a_change_being_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a crashed rank of a distributed job writes (the run ``crashed``) while rank 0's
    change is still having its checkpoint written: queued commands are rejected, but the
    one being applied is left to its process, which records it ``applied``."""
    store = str(tmp_path / "k.db")
    flag = _block(monkeypatch, tmp_path, 3)
    run, weights = _started("crash-record", store, poll_interval=0.01)
    run.tunable("clip", 1.0, bounds=(0, None))
    _train(run, weights, 3)
    command = _change(run, clip=2.0)
    try:
        while not flag.exists():
            _train(run, weights, 1)
        queued = _change(run, clip=5.0)  # not taken yet: nothing will apply it
        with open_store(store) as other:
            other.update_run(run.id, status="crashed", ended_at=time.time(),
                             error="rank 1 crashed (test)")  # fmt: skip
            assert other.get_command(command.id).status == "applying"
            assert other.get_command(queued.id).status == "rejected"
    finally:
        flag.unlink(missing_ok=True)
    run.checkpointer.wait()
    done = run.store.get_command(command.id)
    assert (done.status, done.result["checkpoint"]) == ("applied", "c1")
    run.finish("crashed", error="rank 1 crashed (test)")


def test_an_exploration_from_latest_starts_from_a_change_s_checkpoint_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "latest" names the checkpoint before the last change, even while it is being written:
    the exploration waits for it, as a restore does."""
    store = str(tmp_path / "e.db")
    flag = _block(monkeypatch, tmp_path, 3)
    run, weights = _started("explore-latest", store, poll_interval=0.01)
    run.tunable("clip", 1.0, bounds=(0, None))
    _train(run, weights, 1)
    run.checkpoint()  # c1 at step 1
    _train(run, weights, 2)
    _change(run, clip=2.0)
    try:
        while not flag.exists():
            _train(run, weights, 1)
        changed_at = json.loads(flag.read_text())["step"]
        _train(run, weights, 2)
        run.explore(clip=[1.5, 2.5], steps=2, metric="loss", start="latest")
        release = threading.Timer(0.5, flag.unlink)
        release.start()
        _train(run, weights, 1)  # the boundary begins the exploration, after the save
        release.join()
    finally:
        flag.unlink(missing_ok=True)
    from retune.session._explore import Exploration

    exploration = run.exploration
    assert isinstance(exploration, Exploration) and exploration.start is not None
    assert (exploration.start.label, exploration.start.step) == ("c2", changed_at)
    run.finish()


def test_run_set_from_another_thread_times_out_saying_its_change_is_being_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook cell's ``run.set()`` whose command the training thread took, but whose
    checkpoint waits behind one still being written: the timeout says it was taken (not
    "queued"), and the command is applied once the writing ends."""
    store = str(tmp_path / "t.db")
    flag = _block(monkeypatch, tmp_path, 1)
    run, weights = _started("steer", store, poll_interval=0.01)
    clip = run.tunable("clip", 1.0, bounds=(0, None))
    done = threading.Event()

    def train() -> None:
        while not done.is_set():
            _train(run, weights, 1)
            time.sleep(0.002)

    first = _change(run, clip=2.0)
    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        try:
            _until(flag.exists, "the first change's checkpoint to block")
            with pytest.raises(retune.CommandTimeout, match="took it and is still applying it"):
                run.set(clip=3.0, timeout=2.0)
            [second] = [c for c in run.store.list_commands(run.id) if c.id != first.id]
            assert second.status == "applying"
        finally:
            flag.unlink(missing_ok=True)
        _until(lambda: run.store.get_command(second.id).status == "applied", "the second")
    finally:
        done.set()
        trainer.join(DEADLINE)
    assert clip.value == 3.0
    run.finish()
