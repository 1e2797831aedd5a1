"""A command is applied only after the training process claims it, exactly once.

Races that once let rejected commands through: an invalid command inserted ``pending`` then
rejected in a second transaction (a fast poller fetched it in between), an applier that never
claimed, and a poller whose id watermark skipped commands committed out of id order.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import create_engine, insert

import retune
from retune.control import connect, submit
from retune.errors import CommandRejected
from retune.store import open_store
from retune.store._schema import commands
from tests._postgres import fresh_postgres
from tests.control.test_end_to_end import Trainer


@pytest.mark.slow
def test_invalid_commands_racing_a_fast_poller_are_never_applied(store_url: str) -> None:
    trainer = Trainer(store_url, "race", poll_interval=0.001, delay=0.0005)
    try:
        ctl = connect("race", store=store_url)
        refused: list[str] = []

        def send() -> None:
            for _ in range(200):
                try:
                    ctl.scale(weight_decay=0)
                except CommandRejected as e:
                    refused.append(str(e))

        sender = threading.Thread(target=send)
        sender.start()
        sender.join()
        assert len(refused) == 200
        assert all("weight_decay must be finite and > 0" in reason for reason in refused)
        ctl.stop(wait=True)
        groups = trainer.finish()
    finally:
        trainer.kill()
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4]  # the optimizer's own groups
    snap = retune.load("race", store=store_url)
    assert [n.change_kind for n in snap.nodes] == ["start"]  # no node opened
    scales = [c for c in ctl.history() if c.kind == "scale"]
    assert len(scales) == 200
    assert {(c.status, c.applied_step) for c in scales} == {("rejected", None)}
    ctl.close()


def test_a_command_claimed_elsewhere_is_not_applied(store_url: str) -> None:
    """Only the claim's winner applies: a command another process claimed is left alone."""
    run = retune.init("claimed", store=store_url, poll_interval=0.005)
    knob = run.tunable("clip", 1.0, bounds=(0, None))
    with open_store(store_url) as other:
        taken = submit(other, run.id, "set", {"values": {"clip": 2.0}}, source="cli")
        assert other.claim_command(taken.id) is not None  # another process won the claim
        free = submit(other, run.id, "set", {"values": {"clip": 3.0}}, source="cli")
        run.step(loss=1.0)
        run._applier.poll(run)  # what the writer thread does every poll_interval
        run.step(loss=1.0)
        run.checkpointer.wait()  # a change is resolved once its checkpoint is listed
        assert knob.value == 3.0
        assert other.get_command(taken.id).status == "applying"
        assert other.get_command(free.id).status == "applied"
        assert [n.diff for n in other.list_nodes(run.id)][1:] == [{"clip": [1.0, 3.0]}]
    run.finish()


def test_a_command_committed_after_a_higher_id_is_still_applied() -> None:
    """PostgreSQL hands out ids at insert but commits in any order: polling all pending
    commands (deduplicated by id) never skips the one that commits late."""
    url = fresh_postgres()
    engine = create_engine(url)
    run = retune.init("order", store=url, poll_interval=3600, flush_interval=3600)
    knob = run.tunable("clip", 1.0, bounds=(0, None))
    row = {
        "run_id": run.id,
        "payload": {"values": {"clip": 2.0}, "group": None, "mode": "rescale"},
        "status": "pending",
        "source": "cli",
        "user": None,
        "created_at": 0.0,
        "result": {},
    }
    try:
        with engine.connect() as slow:
            tx = slow.begin()
            inserted = slow.execute(insert(commands).values(kind="set", **row))
            low = int(inserted.inserted_primary_key[0])  # type: ignore[index]
            high = submit(run.store, run.id, "checkpoint", {}, source="cli")  # commits first
            assert high.id > low
            run._applier.poll(run)  # sees only the higher id
            assert [c.id for c in run._applier.inbox] == [high.id]
            tx.commit()
        run._applier.poll(run)
        run.step(loss=1.0)
        run.checkpointer.wait()  # a change is resolved once its checkpoint is listed
        assert run.store.get_command(high.id).status == "applied"
        assert run.store.get_command(low).status == "applied"
        assert knob.value == 2.0
    finally:
        run.finish()
        engine.dispose()


def test_resume_is_stored_as_continue(store_url: str) -> None:
    run = retune.init("alias", store=store_url)
    with open_store(store_url) as store:
        sent = submit(store, run.id, "resume", {}, source="cli")
        assert sent.kind == "continue"
        with pytest.raises(CommandRejected, match="resume is accepted for continue"):
            submit(store, run.id, "unpause", {}, source="cli")
    run.step(loss=1.0)
    run._applier.poll(run)
    run.step(loss=1.0)
    with open_store(store_url) as store:
        assert store.get_command(sent.id).reason == "the run is not paused"
    run.finish()


def _open_files(path: Path) -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            if os.readlink(fd).startswith(str(path)):
                count += 1
        except OSError:
            continue
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc to count files")
def test_connect_as_a_context_manager_releases_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'retune.db'}"
    retune.init("held", store=url).finish()  # closes its own connections
    baseline = _open_files(tmp_path)
    for _ in range(20):
        with connect("held", store=url) as ctl:
            assert ctl.run.name == "held"
    assert _open_files(tmp_path) == baseline
    ctl = connect("held", store=url)
    ctl.values()
    ctl.close()
    ctl.close()  # idempotent
    assert _open_files(tmp_path) == baseline


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"factors": {"lr": 10**400}}, "scale factor for lr is too large"),
        ({"factors": {"lr": 0.5}, "mode": "sideways"}, "mode must be one of"),
    ],
)
def test_scale_refuses_huge_factors_and_unknown_modes_with_a_reason(
    store_url: str, payload: dict[str, Any], reason: str
) -> None:
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init("scale", model=model, optimizer=optimizer, store=store_url) as run:
        with open_store(store_url) as store, pytest.raises(CommandRejected, match=reason):
            submit(store, run.id, "scale", payload, source="python")
        run.step(loss=1.0)
        assert optimizer.param_groups[0]["lr"] == 0.1
