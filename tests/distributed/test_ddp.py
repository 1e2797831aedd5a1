"""Two real ranks (gloo on CPU, torchrun's environment) training one Retune run (issue 11).

Every job is two subprocesses of ``ddp_trainer.py``; each module-scoped fixture runs one job
(or one resume chain) and several tests assert on what it left: the per-rank logs, the exit
codes and the store.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DistributedSampler, TensorDataset

import retune
from retune.checkpoint import ObjectStore, decode_state
from retune.errors import CommandRejected
from retune.store import objects_url_for, open_store

TRAINER = Path(__file__).with_name("ddp_trainer.py")
DEADLINE = 90.0  # seconds any wait below may take before the test fails (never a sleep)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Job:
    procs: list[subprocess.Popen[str]]
    logdir: Path

    def lines(self, rank: int) -> list[dict[str, Any]]:
        path = self.logdir / f"rank{rank}.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def steps(self, rank: int) -> list[dict[str, Any]]:
        return [line for line in self.lines(rank) if "step" in line]

    def end(self, rank: int) -> dict[str, Any]:
        return [line for line in self.lines(rank) if "end" in line][-1]

    def wait(self) -> list[tuple[int, str]]:
        """(exit code, stderr) of each rank; fails the test past the deadline."""
        out = []
        for proc in self.procs:
            try:
                _, err = proc.communicate(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                for p in self.procs:
                    p.kill()
                pytest.fail(f"a rank did not end within {DEADLINE:g}s")
            out.append((proc.returncode, err))
        return out


def torchrun_env(rank: int, port: str, world_size: int = 2) -> dict[str, str]:
    """This process's environment plus what torchrun sets for ``rank`` (env:// rendezvous
    on 127.0.0.1:``port``), one OpenMP thread per rank."""
    return {
        **os.environ,
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
        "OMP_NUM_THREADS": "1",
    }


def launch(
    logdir: Path, store: str, *extra: str, env: dict[str, str] | None = None, cwd: Path
) -> Job:
    """Two ranks with torchrun's environment variables (env:// rendezvous on 127.0.0.1)."""
    logdir.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        rank_env = {**torchrun_env(rank, port), **(env or {})}
        procs.append(
            subprocess.Popen(
                [sys.executable, str(TRAINER), store, str(logdir), *extra],
                env=rank_env,
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return Job(procs, logdir)


def launch_held(tmp_path: Path, at: int, *extra: str) -> tuple[Job, str, Path]:
    """Two ranks on a fresh store whose rank 0 holds its first save of a step >= ``at`` in
    the middle of its write (``RETUNE_TEST_BLOCK_SAVE``) until the returned flag file is
    removed; returns the job, the store URL and the flag."""
    store = f"sqlite:///{tmp_path / 'retune.db'}"
    flag = tmp_path / "blocked.json"
    job = launch(tmp_path / "logs", store, *extra,
                 env={"RETUNE_TEST_BLOCK_SAVE": f"{at}:{flag}"}, cwd=tmp_path)  # fmt: skip
    return job, store, flag


def until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    delay = 0.01
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)
    pytest.fail(f"timed out waiting for {what}")


# -- a controlled job: lr set from another process, a rejected command, pause, stop ---------


@dataclass
class Controlled:
    job: Job
    exits: list[tuple[int, str]]
    store: str
    set_command: Any
    checkpoint_command: Any
    rejected: CommandRejected
    restore_command: Any
    stop_command: Any


@pytest.fixture(scope="module")
def controlled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controlled]:
    """One 2-rank job driven from this process: set lr, checkpoint, a command rank 0 rejects,
    pause and continue, restore to the checkpoint, then stop."""
    root = tmp_path_factory.mktemp("controlled")
    store = f"sqlite:///{root / 'retune.db'}"
    job = launch(root / "logs", store, "--epochs", "1000", "--pace", "0.01", "--per-rank",
                 "--checkpoint-at", "2", cwd=root)  # fmt: skip
    try:
        until(lambda: len(job.steps(1)) >= 3, "three steps on rank 1")
        with retune.connect("ddp", store=store) as ctl:
            set_command = ctl.set(lr=0.01, wait=True, timeout=DEADLINE)
            checkpoint_command = ctl.checkpoint(wait=True, timeout=DEADLINE)
            with pytest.raises(CommandRejected) as rejected:
                ctl.continue_(wait=True, timeout=DEADLINE)  # not paused: rank 0 rejects it
            ctl.pause(wait=True, timeout=DEADLINE)
            ctl.continue_(wait=True, timeout=DEADLINE)
            seen = len(job.steps(1))
            until(lambda: len(job.steps(1)) >= seen + 2, "two more steps on rank 1")
            label = checkpoint_command.result["checkpoint"]
            restore_command = ctl.restore(label, wait=True, timeout=DEADLINE)
            seen = len(job.steps(1))
            until(lambda: len(job.steps(1)) >= seen + 2, "two steps after the restore")
            stop_command = ctl.stop(wait=True, timeout=DEADLINE)
        exits = job.wait()
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()
    yield Controlled(
        job, exits, store, set_command, checkpoint_command, rejected.value, restore_command,
        stop_command,
    )  # fmt: skip


def _split_at_restore(lines: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The lines before the restore and the steps trained after it. The step whose boundary
    applied the restore returns the restored step number: that line is in neither."""
    for i in range(1, len(lines)):
        if lines[i]["step"] <= lines[i - 1]["step"]:
            return lines[:i], lines[i + 1 :]
    pytest.fail("no restore in the log")


def test_lr_set_from_another_process_applies_at_the_same_recorded_step_on_both_ranks(
    controlled: Controlled,
) -> None:
    applied = controlled.set_command.applied_step
    assert applied is not None and applied >= 3
    for rank in range(2):
        before, _ = _split_at_restore(controlled.job.steps(rank))
        # the lr a step trained with: the old one up to the boundary it was applied at
        assert [line["step"] for line in before] == list(range(1, len(before) + 1))
        assert [line["lr"] for line in before] == [0.05] * applied + [0.01] * (
            len(before) - applied
        ), rank


def test_parameters_stay_identical_across_ranks(controlled: Controlled) -> None:
    zero, one = controlled.job.steps(0), controlled.job.steps(1)
    assert [line["step"] for line in zero] == [line["step"] for line in one]
    assert [line["p"] for line in zero] == [line["p"] for line in one]
    assert controlled.job.end(0)["p"] == controlled.job.end(1)["p"]


def test_a_restore_brings_every_rank_back_bit_for_bit(controlled: Controlled) -> None:
    """After the restore each rank replays its own steps: same losses (rank 1's dropout
    draws included, so rank 1's RNG came back from the checkpoint too), same parameters."""
    at = controlled.checkpoint_command.result["step"]
    assert controlled.restore_command.status == "applied"
    for rank in range(2):
        before, after = _split_at_restore(controlled.job.steps(rank))
        assert after[0]["step"] == at + 1, rank  # the step after the checkpoint's
        original = {line["step"]: line for line in before}
        replayed = [line for line in after if line["step"] in original]
        assert replayed, rank
        for line in replayed:
            assert line["loss"] == original[line["step"]]["loss"], (rank, line["step"])
            assert line["p"] == original[line["step"]]["p"], (rank, line["step"])


def test_a_rejected_command_changes_nothing_on_any_rank(controlled: Controlled) -> None:
    assert "not paused" in str(controlled.rejected)
    for rank in range(2):
        before, _ = _split_at_restore(controlled.job.steps(rank))
        lrs = [line["lr"] for line in before]
        changes = sum(1 for a, b in itertools.pairwise(lrs) if a != b)
        assert changes == 1, rank  # only the set; pause/continue/rejected changed no value
    snapshot = retune.load("ddp", store=controlled.store)
    assert [node.change_kind for node in snapshot.tree()] == ["start", "set", "restore"]


def test_stop_ends_both_ranks_cleanly_with_one_run_and_one_tree(controlled: Controlled) -> None:
    assert [code for code, _ in controlled.exits] == [0, 0], controlled.exits
    assert controlled.job.end(0)["end"] == controlled.job.end(1)["end"] == "stopped"
    stop_step = controlled.stop_command.applied_step
    assert controlled.job.steps(0)[-1]["step"] == controlled.job.steps(1)[-1]["step"] == stop_step
    with open_store(controlled.store, create=False) as store:
        runs = store.list_runs()
        assert len(runs) == 1
        assert runs[0].status == "stopped"
        assert runs[0].meta["distributed"] == {"world_size": 2, "backend": "gloo"}
        listed = store.list_checkpoints(runs[0].id)
        # one per change, command and stop, written once (by rank 0)
        assert [c.reason for c in listed] == ["user", "change", "command", "change", "stop"]
        assert listed[-1].step == stop_step
    tree = retune.load("ddp", store=controlled.store).tree()
    assert len(tree) == 3 and tree[1].start_step == controlled.set_command.applied_step
    assert (
        tree[2].parent == tree[1].id
        and tree[2].start_step == controlled.checkpoint_command.result["step"]
    )


def test_run_checkpoint_is_collective_and_saved_once(controlled: Controlled) -> None:
    """``run.checkpoint()`` on every rank: rank 0 writes one checkpoint (its tag), and every
    rank gets its record back."""
    got = [[line for line in controlled.job.lines(r) if "checkpoint" in line] for r in range(2)]
    assert got[0] == got[1] == [{"checkpoint": got[0][0]["checkpoint"], "tag": "from rank 0",
                                 "at": 2}]  # fmt: skip


def test_per_rank_metrics_are_tagged_with_the_rank(controlled: Controlled) -> None:
    snapshot = retune.load("ddp", store=controlled.store)
    assert {"loss", "rank1/loss"} <= set(snapshot.keys)
    for key, rank in (("loss", 0), ("rank1/loss", 1)):
        stored = snapshot.metric(key)  # the current branch: up to the restore, then after it
        _, after = _split_at_restore(controlled.job.steps(rank))
        steps = [int(s) for s in stored.steps]
        assert steps[-len(after) :] == [line["step"] for line in after]
        assert [float(v).hex() for v in stored.values][-len(after) :] == [
            line["loss"] for line in after
        ]


# -- stop and resume in new processes == uninterrupted, bit for bit -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("every", [None, 1], ids=["stop-checkpoint", "scheduled-at-every-step"])
def test_two_rank_stop_and_resume_gives_the_uninterrupted_losses_bit_for_bit(
    tmp_path: Path, every: int | None
) -> None:
    """The stop is a SIGTERM to rank 1 alone, after its step 5: the next agreement carries
    it, and every rank stops at the agreement after that, at one step ``S`` (rank 0
    checkpoints, the run is ``stopped``); the steps are paced to 50 ms so that agreements come
    every two steps or so and ``S`` falls inside the 12 steps. With a scheduled checkpoint
    at every step, the stop relies on the one of step ``S`` (written in the background; rank
    0 waits until it is listed) instead of taking its own. Also: every rank's data comes in
    DistributedSampler's documented order."""
    reference = launch(tmp_path / "ref", f"sqlite:///{tmp_path / 'ref.db'}", "--epochs", "3",
                       cwd=tmp_path)  # fmt: skip
    store = f"sqlite:///{tmp_path / 'resumed.db'}"
    scheduled = ["--every", str(every)] if every else []
    first = launch(tmp_path / "first", store, "--epochs", "3", "--term-at", "5",
                   "--pace", "0.05", *scheduled, cwd=tmp_path)  # fmt: skip
    assert [code for code, _ in reference.wait()] == [0, 0]
    assert [code for code, _ in first.wait()] == [0, 143]  # rank 1 exits as SIGTERM asks
    assert first.end(0)["end"] == "stopped"
    with open_store(store, create=False) as opened:
        (run,) = opened.list_runs()
        assert run.status == "stopped"
        listed = [(c.reason, c.step) for c in opened.list_checkpoints(run.id)]
    reason, stopped_at = listed[-1]
    assert reason == ("schedule" if every else "stop") and 6 <= stopped_at < 12
    if every:  # the last five kept, one per step, and no stop checkpoint
        assert listed == [("schedule", step) for step in range(stopped_at - 4, stopped_at + 1)]
    else:
        assert len(listed) == 1
    second = launch(tmp_path / "second", store, "--epochs", "3", "--resume", "latest",
                    cwd=tmp_path)  # fmt: skip
    assert [code for code, _ in second.wait()] == [0, 0]
    for rank in range(2):
        expected = {line["step"]: line for line in reference.steps(rank)}
        assert sorted(expected) == list(range(1, 13))  # 22 items, 2 ranks, batches of 3
        stopped = first.steps(rank)
        # every rank stopped at the same step (rank 1 raised before logging it)
        assert stopped[-1]["step"] == (stopped_at if rank == 0 else stopped_at - 1)
        combined = stopped + second.steps(rank)
        assert [line["step"] for line in second.steps(rank)] == list(range(stopped_at + 1, 13))
        for line in combined:
            assert line["loss"] == expected[line["step"]]["loss"], (rank, line["step"])
            assert line["p"] == expected[line["step"]]["p"], (rank, line["step"])
        # DistributedSampler's order after set_epoch(epoch), as docs/distributed.md promises
        sampler: DistributedSampler[Any] = DistributedSampler(
            TensorDataset(torch.arange(22)), num_replicas=2, rank=rank, shuffle=True, seed=5
        )
        for epoch in range(3):
            sampler.set_epoch(epoch)
            got = [i for line in expected.values() if line["epoch"] == epoch for i in line["idx"]]
            assert got == list(sampler), (rank, epoch)
    with open_store(store, create=False) as opened:
        assert len(opened.list_runs()) == 1
    tree = retune.load("ddp", store=store).tree()
    assert [node.change_kind for node in tree] == ["start", "resume"]


@pytest.mark.slow
def test_no_rank_leaves_a_stop_before_its_checkpoint_is_listed(tmp_path: Path) -> None:
    """A SIGTERM to rank 1 alone stops every rank; rank 1 then exits with SIGTERM's status,
    which makes a launcher such as torchrun kill the others. So no rank leaves the stop
    before rank 0's stop checkpoint is listed: while it is held in the middle of its write,
    rank 1 is still there; released, both end and the checkpoint is listed."""
    job, store, flag = launch_held(tmp_path, 1, "--epochs", "1000", "--term-at", "5",
                                   "--pace", "0.02")  # fmt: skip
    try:
        until(flag.exists, "rank 0 in the middle of the stop checkpoint")
        with pytest.raises(subprocess.TimeoutExpired):  # before: rank 1 exited at once
            job.procs[1].wait(timeout=3)
        flag.unlink()
        exits = job.wait()
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()
    assert [code for code, _ in exits] == [0, 143], exits
    with open_store(store, create=False) as opened:
        (run,) = opened.list_runs()
        assert run.status == "stopped"
        ((reason, step),) = [(c.reason, c.step) for c in opened.list_checkpoints(run.id)]
    assert reason == "stop" and step == job.steps(0)[-1]["step"]


@pytest.mark.slow
def test_a_set_trains_on_every_rank_while_rank_0_writes_its_checkpoint(tmp_path: Path) -> None:
    """A ``set`` from another process: rank 0 copies the state at an agreement boundary and
    writes the checkpoint before the change in the background (held here); every rank
    trains on with the new lr from the same step, parameters identical; the command is
    ``applying`` until that checkpoint is listed, then ``applied`` naming it; a stop then
    ends both ranks cleanly."""
    job, store, flag = launch_held(tmp_path, 1, "--epochs", "1000", "--pace", "0.01",
                                   "--timeout", "60")  # fmt: skip
    try:
        until(lambda: all(len(job.steps(rank)) >= 3 for rank in range(2)), "three steps")
        with retune.connect("ddp", store=store) as ctl:
            command = ctl.set(lr=0.01)  # not waited for: the boundary applies it
            until(flag.exists, "rank 0 holding the change's checkpoint")
            at = json.loads(flag.read_text())["step"]
            until(lambda: all(len(job.steps(r)) >= at + 5 for r in range(2)), "training on")
            assert ctl.store.get_command(command.id).status == "applying"
            assert ctl.store.list_checkpoints(ctl.run.id) == []
            flag.unlink()
            done = ctl.wait(command.id, timeout=DEADLINE)
            assert (done.status, done.applied_step, done.result["checkpoint"]) == (
                "applied",
                at,
                "c1",
            )
            ctl.stop(wait=True, timeout=DEADLINE)
        codes = [proc.wait(timeout=DEADLINE) for proc in job.procs]
    finally:
        flag.unlink(missing_ok=True)
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()
    assert codes == [0, 0] and [job.end(rank)["end"] for rank in range(2)] == ["stopped"] * 2
    steps = [job.steps(rank) for rank in range(2)]
    assert [line["step"] for line in steps[0]] == [line["step"] for line in steps[1]]
    for rank in range(2):  # the new lr from the step after the boundary, on both ranks
        assert all(line["lr"] == (0.05 if line["step"] <= at else 0.01) for line in steps[rank])
    assert [line["p"] for line in steps[0]] == [line["p"] for line in steps[1]]
    with open_store(store, create=False) as opened:
        (run,) = opened.list_runs()
        listed = opened.list_checkpoints(run.id)
        first, *rest = listed
        assert (first.reason, first.step) == ("change", at)
        assert [c.reason for c in rest] == ["stop"]
        _every_listed_checkpoint_restores(opened, listed)


# -- a rank killed mid-training -------------------------------------------------------------


@pytest.mark.slow
def test_killing_one_rank_ends_the_other_with_a_clear_error_and_a_crashed_run(
    tmp_path: Path,
) -> None:
    """Rank 0's scheduled checkpoint of step 6 is held in the middle of its write (on its
    background thread): both ranks train on beside it, up to step 8's boundary, where the
    next scheduled save waits for it (``when_busy="wait"``) and rank 1 waits for rank 0.
    Rank 1 is then killed; rank 0 ends with a clear error, the run is crashed, and every
    listed checkpoint restores."""

    def rank_0_reported(step: int) -> bool:
        with open_store(store, create=False) as opened:
            return any(run.step >= step for run in opened.list_runs())

    job, store, flag = launch_held(
        tmp_path, 6,
        "--epochs", "1000", "--every", "2", "--pace", "0.01", "--timeout", "60", "--set-at", "3",
    )  # fmt: skip
    try:
        until(flag.exists, "rank 0 blocked in the middle of the checkpoint at step 6")
        # training goes on while it is written: both ranks train steps 7 and 8, and rank 0
        # reports step 8 (so it is at that boundary, past the step's gradient all_reduce)
        until(lambda: all(len(job.steps(rank)) >= 7 for rank in range(2)), "step 7 on both")
        until(lambda: rank_0_reported(8), "rank 0 at step 8's boundary")
        job.procs[1].send_signal(signal.SIGKILL)
        job.procs[1].wait(timeout=DEADLINE)
        flag.unlink()  # rank 0 finishes the save and meets the dead rank
        code, err = job.procs[0].wait(timeout=DEADLINE), job.procs[0].stderr
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()
    assert code == 3, err.read() if err else ""
    # step 8's boundary waited for the save in flight: no rank got past it
    assert [line["step"] for line in job.steps(0)] == list(range(1, 8))
    assert err is not None and "another rank has died" in err.read()
    # run.set(lr=0.02) called on every rank at step 3: one command, applied at once on both
    sets = [[line for line in job.lines(rank) if "set" in line] for rank in range(2)]
    assert sets[0] == sets[1] == [{"set": sets[0][0]["set"], "at": 3, "status": "applied"}]
    for rank in range(2):
        lrs = [(line["step"], line["lr"]) for line in job.steps(rank)]
        assert all(lr == (0.05 if step <= 3 else 0.02) for step, lr in lrs), rank
    end = job.end(0)["end"]
    assert end.startswith("DistributedError: rank 0 of 2:"), end
    with open_store(store, create=False) as opened:
        (run,) = opened.list_runs()
        assert run.status == "crashed"
        assert "DistributedError" in (run.error or "")
        listed = opened.list_checkpoints(run.id)
        # the held one too (it completed), and the one before run.set() at step 3; step
        # 8's when rank 1 died after the RNG gather of that boundary (rank 0 then saved it
        # before its broadcast failed), not when it died before
        got = [(c.reason, c.step) for c in listed]
        assert got[:4] == [("schedule", 2), ("change", 3), ("schedule", 4), ("schedule", 6)]
        assert got[4:] in ([], [("schedule", 8)])
        _every_listed_checkpoint_restores(opened, listed)


def _every_listed_checkpoint_restores(opened: Any, listed: list[Any]) -> None:
    """Each checkpoint decodes (every blob verified against its hash), loads into the
    trainer's model, holds rank 1's RNG and the loop at its own step."""
    objects = ObjectStore(objects_url_for(opened.url), create=False)
    for record in listed:
        state = decode_state(record.manifest, objects, label=record.label)  # verified
        module = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1)
        )
        module.load_state_dict(state["model"])
        assert set(state["parts"]["retune.ranks"]) == {"1"}  # rank 1's RNG
        assert state["loop"]["step"] == record.step


@pytest.mark.slow
def test_killing_rank_0_ends_the_others_with_a_clear_error_and_they_mark_the_run_crashed(
    tmp_path: Path,
) -> None:
    """Rank 0 owns the run, so when it is the one SIGKILLed (its agreement in flight, as
    nearly always) nobody would record the end: rank 1 ends at once with a clear error and
    records the crash itself. Rank 0 dies in the middle of writing step 8's checkpoint on its
    background thread (held there): that one is not listed, and every listed one restores."""
    job, store, flag = launch_held(tmp_path, 8, "--epochs", "1000", "--every", "4",
                                   "--pace", "0.01", "--timeout", "60")  # fmt: skip
    try:
        until(flag.exists, "rank 0 in the middle of the checkpoint at step 8")
        until(lambda: len(job.steps(1)) >= 10, "ten steps on rank 1")
        job.procs[0].send_signal(signal.SIGKILL)
        job.procs[0].wait(timeout=DEADLINE)
        code, err = job.procs[1].wait(timeout=DEADLINE), job.procs[1].stderr
    finally:
        for proc in job.procs:
            if proc.poll() is None:
                proc.kill()
    # where rank 1 was decides who notices: Retune's agreement (DistributedError, exit 3)
    # or DDP's own all_reduce in backward (torch's RuntimeError, exit 1); both say why
    assert err is not None
    text = err.read()
    if code == 3:
        assert "another rank has died" in text and "DistributedError" in job.end(1)["end"]
    else:
        assert code == 1 and "remote worker" in text, (code, text[-2000:])
    with open_store(store, create=False) as opened:
        (run,) = opened.list_runs()
        assert run.status == "crashed" and run.ended_at is not None
        error = run.error or ""
        assert error.startswith("rank 1 crashed: ")
        assert ("DistributedError" if code == 3 else "RuntimeError") in error
        [event] = [e for e in opened.list_events(run.id) if e.kind == "crashed"]
        assert event.payload["rank"] == 1
        # the node is closed at the step rank 1 reached, the run's step with it
        [node] = opened.list_nodes(run.id)
        assert node.end_step == run.step == event.step and run.step >= 10
        listed = opened.list_checkpoints(run.id)
        # step 12's save waited for step 8's, which was never finished
        assert [(c.reason, c.step) for c in listed] == [("schedule", 4)]
        _every_listed_checkpoint_restores(opened, listed)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("waiting", "first"),
    [("0", "crashed"), ("1", "finished")],
    ids=["rank-1-crash-recorded-first", "rank-0-end-recorded-first"],
)
def test_a_crash_on_another_rank_after_training_leaves_the_run_crashed_whoever_ends_first(
    tmp_path: Path, waiting: str, first: str
) -> None:
    """Rank 1 raises after its last step, when no collective is left for rank 0 to notice
    it: rank 0 ends normally. The job failed, so the run is ``crashed`` with rank 1's
    reason whichever rank's end reaches the store first (the other waits until it has)."""
    store = f"sqlite:///{tmp_path / 'retune.db'}"
    job = launch(tmp_path / "logs", store, "--epochs", "1", "--rank1-fails",
                 "--await-status", waiting, first, cwd=tmp_path)  # fmt: skip
    (code0, err0), (code1, err1) = job.wait()
    assert code0 == 0 and job.end(0)["end"] == "finished", err0[-2000:]
    assert code1 == 1 and "rank 1 failed after training" in err1, err1[-2000:]
    with open_store(store, create=False) as opened:
        (run,) = opened.list_runs()
        assert run.status == "crashed" and run.ended_at is not None
        error = run.error or ""
        assert error.startswith("rank 1 crashed: ")  # the traceback follows
        assert "RuntimeError: rank 1 failed after training" in error
        [event] = [e for e in opened.list_events(run.id) if e.kind == "crashed"]
        assert event.payload["rank"] == 1


# -- the guard: a NaN on rank 1 only is agreed, and every rank recovers the same way --------


def test_guard_trigger_on_one_rank_rolls_every_rank_back_alike(tmp_path: Path) -> None:
    """Rank 1's loss is NaN at step 6 (rank 0's is not; the gradient all-reduce makes every
    rank's weights NaN): the trigger joins the step agreement, rank 0 restores a last-good
    checkpoint, halves lr and skips the batches, and rank 1 replays exactly that."""
    store = f"sqlite:///{tmp_path / 'retune.db'}"
    job = launch(tmp_path / "logs", store, "--epochs", "3", "--guard", "--nan-at", "6",
                 cwd=tmp_path)  # fmt: skip
    exits = job.wait()
    assert [code for code, _ in exits] == [0, 0], exits
    assert job.end(0)["end"] == job.end(1)["end"] == "finished"
    assert job.end(0)["p"] == job.end(1)["p"]  # the same weights on both ranks
    with open_store(store) as opened:
        run = opened.get_run("ddp")
        (node,) = [n for n in opened.list_nodes(run.id) if n.change_kind == "guard"]
    info = node.info["guard"]
    assert info["reason"] == "loss tripped the guard on another rank at step 6"
    assert node.diff == {"lr": [0.05, 0.025]} and info["skipped"]["count"] > 0
    steps0, steps1 = job.steps(0), job.steps(1)
    after = [s for s in steps0 if s["lr"] == 0.025]
    assert after and [s["step"] for s in steps0] == [s["step"] for s in steps1]
    for line0, line1 in zip(steps0, steps1, strict=True):
        assert line0["p"] == line1["p"] and line0["lr"] == line1["lr"]
    assert all(s["loss"] != "nan" for s in after)
