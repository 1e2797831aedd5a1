"""Resuming a run in a new process: only when it can happen, only once, never a live run,
never applying commands that were sent while no process was there; and default data order
as reproducible as plain PyTorch."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import retune
from retune.control import submit
from retune.errors import CheckpointNotFound, RetuneError, RunInUse
from retune.session._init import RESUME_FROM_ENV, RESUME_RUN_ENV
from retune.store import STALE_AFTER, open_store


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _trained(store_url: str, name: str, *, checkpoint: bool) -> str:
    model, optimizer = _model()
    with retune.init(name, model=model, optimizer=optimizer, store=store_url) as run:
        for _ in range(3):
            run.step(loss=1.0)
        if checkpoint:
            run.checkpoint()
        run.step(loss=0.5)
    return run.id


def test_resume_latest_without_checkpoints_leaves_the_old_run_alone(store_url: str) -> None:
    run_id = _trained(store_url, "plain", checkpoint=False)
    with open_store(store_url) as store:
        before = store.get_run(run_id)
        events = len(store.list_events(run_id))
    model, optimizer = _model()
    with pytest.raises(CheckpointNotFound) as caught:
        retune.init("plain", model=model, optimizer=optimizer, store=store_url, resume="latest")
    with open_store(store_url) as store:
        after = store.get_run(run_id)
        assert (after.status, after.ended_at, after.error) == ("finished", before.ended_at, None)
        assert after.heartbeat_at == before.heartbeat_at and after.step == before.step
        assert len(store.list_nodes(run_id)) == 1
        assert len(store.list_events(run_id)) == events
        assert len(store.list_runs()) == 1
    assert "no checkpoints yet" in str(caught.value)
    assert "left as it was (finished)" in str(caught.value)


def test_resume_refuses_a_run_that_is_live_and_names_its_process(store_url: str) -> None:
    model, optimizer = _model()
    live = retune.init("live", model=model, optimizer=optimizer, store=store_url)
    live.step(loss=1.0)
    live.checkpoint()
    with pytest.raises(RunInUse) as caught:
        retune.init("live", store=store_url, resume="latest")
    message = str(caught.value)
    assert f"process {os.getpid()} on host {socket.gethostname()}" in message
    assert "running" in message
    live.step(loss=0.5)  # the live run is untouched and goes on
    with open_store(store_url) as store:
        assert [n.change_kind for n in store.list_nodes(live.id)] == ["start"]
    live.finish()
    assert retune.load("live", store=store_url).status == "finished"


def test_the_resume_variables_are_consumed_by_the_first_init(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _trained(store_url, "first", checkpoint=True)
    monkeypatch.setenv(RESUME_RUN_ENV, run_id)
    monkeypatch.setenv(RESUME_FROM_ENV, "latest")
    model, optimizer = _model()
    resumed = retune.init("first", model=model, optimizer=optimizer, store=store_url)
    assert resumed.id == run_id and resumed.global_step == 3
    resumed.finish()
    other = retune.init("second", store=store_url)  # a fresh run, not another resume
    assert other.id != run_id and other.name == "second" and other.global_step == 0
    other.finish()
    assert RESUME_RUN_ENV not in os.environ and RESUME_FROM_ENV not in os.environ
    with open_store(store_url) as store:
        assert [n.change_kind for n in store.list_nodes(run_id)] == ["start", "resume"]
        assert [n.change_kind for n in store.list_nodes(other.id)] == ["start"]


KILLED = """
import os, signal, sys, retune
run = retune.init("dead", store=sys.argv[1])
for _ in range(5):
    run.step(loss=1.0)
run.checkpoint()
run.flush()
print(run.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_run(store_url: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", KILLED, store_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    return done.stdout.split()[0]


def _age(store_url: str, run_id: str) -> None:
    """Time passes: the dead process's last heartbeat becomes older than STALE_AFTER."""
    with open_store(store_url) as store:
        store.update_run(run_id, heartbeat_at=time.time() - STALE_AFTER - 60)


def test_commands_sent_to_a_dead_run_are_rejected_when_it_resumes(store_url: str) -> None:
    run_id = _killed_run(store_url)
    with open_store(store_url) as store:
        assert store.get_run(run_id).status == "running"  # killed: nobody ended it
        stop = submit(store, run_id, "stop", {}, source="cli")  # "is the process alive?"
        pause = submit(store, run_id, "pause", {}, source="cli")
    _age(store_url, run_id)
    run = retune.init("dead", store=store_url, resume="latest")
    for _ in range(20):
        run.step(loss=0.1)  # a stop applied now would raise StopTraining
    run._applier.poll(run)
    run.step(loss=0.1)
    assert not run.should_stop
    with open_store(store_url) as store:
        for command in (stop, pause):
            got = store.get_command(command.id)
            assert got.status == "rejected" and got.applied_step is None
            assert (got.reason or "").startswith("the run was not live")
        fresh = submit(store, run_id, "checkpoint", {}, source="cli")
    run._applier.poll(run)
    run.step(loss=0.1)
    with open_store(store_url) as store:
        assert store.get_command(fresh.id).status == "applied"  # new commands still apply
    run.finish()


def test_two_processes_resuming_at_once_one_wins(store_url: str) -> None:
    run_id = _killed_run(store_url)
    _age(store_url, run_id)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def resume() -> None:
        start.wait()
        try:
            outcomes.append(retune.init("dead", store=store_url, resume="latest"))
        except RetuneError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=resume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runs = [o for o in outcomes if isinstance(o, retune.Run)]
    errors = [o for o in outcomes if isinstance(o, RetuneError)]
    assert len(runs) == 1 and len(errors) == 1, outcomes
    assert isinstance(errors[0], RunInUse) and f"process {os.getpid()}" in str(errors[0])
    runs[0].step(loss=1.0)
    runs[0].finish()
    with open_store(store_url) as store:
        assert [n.change_kind for n in store.list_nodes(run_id)] == ["start", "resume"]


def _order(name: str, store_url: str) -> list[int]:
    data = TensorDataset(torch.arange(32))
    loader = DataLoader(data, batch_size=4, shuffle=True)
    with retune.init(name, store=store_url) as run:
        order = [int(x) for (batch,) in run.batches(loader) for x in batch]
    return order


def test_without_seed_the_data_order_follows_torch_manual_seed(store_url: str) -> None:
    torch.manual_seed(0)
    first = _order("a", store_url)
    torch.manual_seed(0)
    second = _order("b", store_url)
    torch.manual_seed(1)
    third = _order("c", store_url)
    assert sorted(first) == list(range(32))
    assert first == second  # as plain PyTorch: same manual seed, same data order
    assert third != first
    seeds = retune.load("a", store=store_url).run.meta["seeds"]
    assert seeds["seed"] is None and seeds["data_seed_from"] == "torch.initial_seed()"
    assert seeds["data_seed"] == 0  # torch.initial_seed() after torch.manual_seed(0)


def test_seed_derivation_does_not_draw_from_the_scripts_generator(store_url: str) -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    retune.init("quiet", store=store_url).finish()
    assert torch.equal(torch.rand(3), expected)


def test_a_killed_trainer_on_this_host_can_be_resumed_at_once(store_url: str) -> None:
    """Its heartbeat is fresh, but its pid is gone from this host: no 30 s wait."""
    code = (
        "import os, signal, sys, torch, retune\n"
        "model = torch.nn.Linear(2, 1)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "run = retune.init('gone', model=model, optimizer=opt, store=sys.argv[1])\n"
        "run.step(loss=1.0)\n"
        "run.checkpoint()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, store_url], timeout=120, check=False)
    assert done.returncode == -signal.SIGKILL
    with open_store(store_url) as store:
        killed = store.get_run("gone")
    assert killed.status == "running" and time.time() - (killed.heartbeat_at or 0) < 30
    model, optimizer = _model()
    with retune.init("gone", model=model, optimizer=optimizer, store=store_url,
                     resume="latest") as resumed:  # fmt: skip
        assert resumed.id == killed.id and resumed.global_step == 1


def test_knob_values_survive_a_resume_though_the_script_declares_them_after_init(
    store_url: str,
) -> None:
    """A resume loads the checkpoint inside ``retune.init``, before the script declares its
    knobs (and before the guard registers its own): the values it holds wait for their
    declaration. A person's ``clip=5`` and "guard off" were back to the script's defaults."""
    from retune.errors import InvalidArgument

    run = retune.init("knobs", store=store_url, guard=True)
    clip = run.tunable("clip", 1.0, bounds=(0, None))
    run.step(loss=1.0)
    run.set(clip=5.0, guard=False, guard_spike=7)
    run.step(loss=1.0)
    run.checkpoint()
    run.finish()
    resumed = retune.init("knobs", store=store_url, resume="latest", guard=True)
    assert resumed.tunable("clip", 1.0, bounds=(0, None)).value == 5.0
    assert resumed.guard is not None and resumed.guard.enabled is False
    assert resumed.hp.guard_spike == 7.0
    resumed.finish()
    again = retune.init("knobs", store=store_url, resume="latest")
    with pytest.raises(InvalidArgument, match=r"the checkpoint holds 5\.0"):
        again.tunable("clip", 1.0, bounds=(0, 2))  # a declaration that refuses the saved value
    again.finish()
    assert clip.value == 5.0
