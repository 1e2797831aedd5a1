"""Garbage collection of blobs: only what no checkpoint of any store needs, never a live save."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import retune
from retune.checkpoint import ObjectStore, collect_garbage, decode_state, manifest_blobs
from retune.errors import InvalidArgument
from retune.store import open_store

ROOT = Path(__file__).parents[2]


def _train(
    store: str, name: str, steps: int, objects: str | None = None, offset: float = 0.0
) -> None:
    """A tiny run whose weights equal the step (plus ``offset``); checkpoints every 5 steps,
    keeps the last 1."""
    model = torch.nn.Linear(200, 200)  # 160 kB of weights: a blob of their own
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with retune.init(name, model=model, optimizer=opt, store=store, objects=objects,
                     checkpoint_every_n_steps=5, keep_last=1) as run:  # fmt: skip
        for i in range(steps):
            with torch.no_grad():
                model.weight.fill_(float(i + 1) + offset)
            run.step(loss=float(i))


def _restores(store: str, objects: ObjectStore, offset: float = 0.0) -> int:
    opened = open_store(store)
    count = 0
    for run in opened.list_runs():
        for checkpoint in opened.list_checkpoints(run.id):
            state = decode_state(checkpoint.manifest, objects)
            assert torch.all(state["model"]["weight"] == float(checkpoint.step) + offset)
            count += 1
    return count


def test_unreferenced_blobs_go_and_referenced_ones_stay(tmp_path: Path) -> None:
    store = str(tmp_path / "a.db")
    _train(store, "a", 20)
    objects = ObjectStore(str(tmp_path / "objects"))
    before = set(objects.keys())
    report = collect_garbage(open_store(store), objects, grace_seconds=0, dry_run=True)
    assert report.deleted == 3 and report.dry_run and set(objects.keys()) == before
    report = collect_garbage(open_store(store), objects, grace_seconds=0)
    assert (report.deleted, report.kept, report.busy) == (3, len(before) - 3, False)
    assert report.freed_bytes >= 3 * 160_000
    assert _restores(store, objects) == 1  # the kept checkpoint restores bit for bit
    assert collect_garbage(open_store(store), objects, grace_seconds=0).deleted == 0


def test_young_blobs_are_kept_for_the_grace_period(tmp_path: Path) -> None:
    store = str(tmp_path / "a.db")
    _train(store, "a", 20)
    objects = ObjectStore(str(tmp_path / "objects"))
    before = set(objects.keys())
    report = collect_garbage(open_store(store), objects)  # default grace: one hour
    assert (report.deleted, report.young) == (0, 3) and set(objects.keys()) == before
    with pytest.raises(InvalidArgument, match="grace_seconds"):
        collect_garbage(open_store(store), objects, grace_seconds=-1)


def test_blobs_of_another_store_sharing_the_location_are_kept(tmp_path: Path) -> None:
    shared = str(tmp_path / "shared")
    a, b = str(tmp_path / "a" / "a.db"), str(tmp_path / "b" / "b.db")
    _train(a, "a", 10, objects=shared)
    _train(b, "b", 10, objects=shared)
    objects = ObjectStore(shared)
    report = collect_garbage(open_store(a), objects, grace_seconds=0)
    assert report.other_stores >= 2 and report.stores == (f"sqlite:///{b}",)
    assert _restores(b, objects) == 1  # b's checkpoint is whole
    assert _restores(a, objects) == 1
    # b collects its own garbage (a's pruned checkpoint is a's business, its live one stays)
    collect_garbage(open_store(b), objects, grace_seconds=0)
    assert _restores(a, objects) == 1 and _restores(b, objects) == 1


def test_a_location_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    store = str(tmp_path / "a.db")
    _train(store, "a", 5)
    missing = tmp_path / "typo" / "objects"
    report = collect_garbage(open_store(store), str(missing), grace_seconds=0)
    assert report.deleted == 0 and not missing.parent.exists()


def test_interrupted_writes_are_counted_and_removed(tmp_path: Path) -> None:
    store = str(tmp_path / "a.db")
    _train(store, "a", 5)
    objects = ObjectStore(str(tmp_path / "objects"))
    key = next(iter(objects.keys()))
    partial = tmp_path / "objects" / key[:2] / f"{key[2:]}.tmp-0123abcd"
    partial.write_bytes(b"half a blob")
    report = collect_garbage(open_store(store), objects, dry_run=True)
    assert (report.temporaries, report.temporaries_bytes) == (1, 11) and partial.exists()
    report = collect_garbage(open_store(store), objects)  # the lock proves no save runs
    assert report.temporaries == 1 and not partial.exists()
    assert _restores(store, objects) == 1


BLOCKED = """
import sys, torch, retune
store = sys.argv[1]
model = torch.nn.Linear(200, 200)
torch.nn.init.zeros_(model.weight)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
run = retune.init("blocked", model=model, optimizer=opt, store=store,
                  checkpoint_every_n_steps=5, keep_last=1)
for i in range(1000):
    with torch.no_grad():
        model.weight.fill_(float(i + 1))
    run.step(loss=float(i))
"""


@pytest.mark.slow
def test_gc_never_races_a_save_in_progress(tmp_path: Path) -> None:
    store = str(tmp_path / "k.db")
    flag = tmp_path / "blocked.json"
    env = {**os.environ, "RETUNE_TEST_BLOCK_SAVE": f"15:{flag}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED, store], env=env)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():  # the trainer is now inside its save at step 15
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        assert json.loads(flag.read_text())["step"] == 15
        objects = ObjectStore(str(tmp_path / "objects"))
        opened = open_store(store)
        referenced: set[str] = set()
        for manifest in opened.all_manifests():
            referenced |= manifest_blobs(manifest)
        in_flight = set(objects.keys()) - referenced
        assert in_flight  # the blocked save wrote blobs no manifest refers to yet
        report = collect_garbage(opened, objects, grace_seconds=0, wait_seconds=0.3)
        assert report.busy and report.deleted == 0
        assert in_flight <= set(objects.keys())
        flag.unlink()  # let the save finish: its checkpoint must restore
        while not (tmp_path / "blocked.released").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        run = opened.get_run("blocked")
        # keep_last=1: the released save is listed, then pruned once step 20's is saved, which
        # may happen between two polls; any checkpoint from step 15 on shows the save finished
        while not any(c.step >= 15 for c in opened.list_checkpoints(run.id)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    objects = ObjectStore(str(tmp_path / "objects"))
    collect_garbage(open_store(store), objects, grace_seconds=0)
    assert _restores(store, objects) >= 1


def test_a_remote_location_has_ledgers_and_relies_on_the_grace_period(tmp_path: Path) -> None:
    url = f"memory://{tmp_path.name}/objects"
    a, b = str(tmp_path / "a" / "a.db"), str(tmp_path / "b" / "b.db")
    _train(a, "a", 20, objects=url)
    _train(b, "b", 10, objects=url, offset=100.0)  # blobs of its own
    objects = ObjectStore(url)
    assert not objects.has_lock
    young = collect_garbage(open_store(a), objects)
    assert (young.deleted, young.young) == (0, 3)
    report = collect_garbage(open_store(a), objects, grace_seconds=0)
    assert report.deleted == 3 and report.other_stores >= 2  # b's live and pruned weights
    assert _restores(a, objects) == 1 and _restores(b, objects, offset=100.0) == 1


def test_a_store_is_named_in_ledgers_without_its_password() -> None:
    from retune.checkpoint._gc import store_identity

    ident, label = store_identity("postgresql+psycopg://mia:s3cret@db:5432/retune")
    assert label == "postgresql+psycopg://mia:***@db:5432/retune" and "s3cret" not in ident
    assert store_identity("sqlite:///a/../b.db")[1] == f"sqlite:///{Path('b.db').resolve()}"
