"""A restored checkpoint is data: it may only fill in what the live objects have, within the
run's declared bounds. A state that does not fit is refused whole and nothing changes."""

from __future__ import annotations

import contextlib
import copy
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retune
from retune.errors import CheckpointCorrupt, CommandRejected
from retune.session._state import apply_state, check_state
from retune.store import CheckpointRecord

Edit = Callable[[dict[str, Any]], None]


def _trained_run(store: str) -> tuple[retune.Run, torch.nn.Module, Any, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    run = retune.init("trust", model=model, optimizer=opt, scheduler=sched, store=store)
    run.tunable("dropout", 0.1, bounds=(0.0, 1.0))
    return run, model, opt, sched


def _train(run: retune.Run, model: torch.nn.Module, opt: Any, sched: Any, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        run.step(loss=loss.item())


@pytest.fixture
def live(store_url: str) -> Iterator[tuple[retune.Run, torch.nn.Module, Any, Any]]:
    run, model, opt, sched = _trained_run(store_url)
    with run:
        _train(run, model, opt, sched, 4)
        yield run, model, opt, sched


def _set_lr(state: dict[str, Any]) -> None:
    state["optimizer"]["param_groups"][0]["lr"] = -5.0


def _set_momentum(state: dict[str, Any]) -> None:
    state["optimizer"]["param_groups"][0]["momentum"] = 3.0


def _extra_group_key(state: dict[str, Any]) -> None:
    state["optimizer"]["param_groups"][0]["step_hook"] = "os.system"


def _get_lr(state: dict[str, Any]) -> None:
    state["scheduler"]["get_lr"] = "replaced"


def _private(state: dict[str, Any]) -> None:
    state["scheduler"]["_optimizer"] = {"evil": 1}


def _base_lrs(state: dict[str, Any]) -> None:
    state["scheduler"]["base_lrs"] = [-5.0]


def _kind(state: dict[str, Any]) -> None:
    state["scheduler"]["last_epoch"] = "soon"


def _pin(state: dict[str, Any]) -> None:
    state["retune"]["tunables"]["scheduler"] = {"pins": [[0, "lr", -5.0]]}


def _knob(state: dict[str, Any]) -> None:
    state["retune"]["tunables"]["knobs"]["dropout"] = 7.0


def _shape(state: dict[str, Any]) -> None:
    state["model"]["weight"] = torch.zeros(3, 3)


def _loop(state: dict[str, Any]) -> None:
    state["loop"]["step"] = -1


def _rng(state: dict[str, Any]) -> None:
    state["rng"]["torch"] = torch.zeros(3, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set_lr, r"param group 0's lr: lr must be >= 0, got -5"),
        (_set_momentum, r"momentum must be"),
        (_extra_group_key, r"unknown entry 'step_hook'"),
        (_get_lr, r"the scheduler state has the unknown entry 'get_lr'"),
        (_private, r"unknown entry '_optimizer'"),
        (_base_lrs, r"the scheduler's base_lrs: lr must be >= 0"),
        (_kind, r"last_epoch is 'soon', where a int belongs"),
        (_pin, r"the pin of group 0's lr: lr must be >= 0"),
        (_knob, r"knob dropout: dropout must be >= 0 and <= 1, got 7"),
        (_shape, r"weight is \(3, 3\), the model has \(2, 4\)"),
        (_loop, r"step is -1"),
        (_rng, r"the RNG state is not valid"),
    ],
)
def test_a_state_that_does_not_fit_is_refused_and_changes_nothing(
    live: tuple[retune.Run, torch.nn.Module, Any, Any], edit: Edit, reason: str
) -> None:
    run, model, opt, sched = live
    record = run.checkpoint()
    _train(run, model, opt, sched, 2)  # so that applying the checkpoint would show
    state = run.checkpointer.load(record)
    edit(state)
    with pytest.raises(CheckpointCorrupt, match=f"does not fit this run: .*{reason}"):
        check_state(run, state)
    weights = copy.deepcopy(model.state_dict())
    before = (run.global_step, opt.param_groups[0]["lr"], sched.last_epoch, run.hp.dropout)
    random_state = torch.get_rng_state()
    with pytest.raises(CheckpointCorrupt):
        apply_state(run, state)
    assert (run.global_step, opt.param_groups[0]["lr"], sched.last_epoch, run.hp.dropout) == before
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), random_state)
    assert callable(sched.get_lr) and "get_lr" not in vars(sched)


def _edit_manifest(store_url: str, checkpoint: int, edit: Callable[[Any], None]) -> None:
    """Change a stored manifest by hand, as someone with write access to the database could."""
    import json

    path = store_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        (text,) = db.execute(
            "SELECT manifest FROM checkpoints WHERE id = ?", (checkpoint,)
        ).fetchone()
        manifest = json.loads(text)
        edit(manifest)
        db.execute(
            "UPDATE checkpoints SET manifest = ? WHERE id = ?", (json.dumps(manifest), checkpoint)
        )


def _item(node: dict[str, Any], key: str) -> Any:
    """The entry stored under ``key`` in a manifest's dict entry."""
    (value,) = [pair[1] for pair in node["items"] if pair[0] == key]
    return value


def _lr_minus_5(manifest: dict[str, Any]) -> None:
    group = _item(_item(manifest["root"], "optimizer"), "param_groups")["items"][0]
    for pair in group["items"]:
        if pair[0] == "lr":
            pair[1] = -5.0


def test_a_hand_edited_lr_of_minus_5_is_refused_and_the_trained_model_is_untouched(
    store_url: str,
) -> None:
    run, model, opt, sched = _trained_run(store_url)
    with run:
        _train(run, model, opt, sched, 4)
        record = run.checkpoint()
        _train(run, model, opt, sched, 4)  # the live weights now differ from the checkpoint's
        saved = run.checkpointer.load(record)["model"]
        assert not torch.equal(
            saved["weight"], model.state_dict()["weight"]
        )  # a restore would be visible
        _edit_manifest(store_url, record.id, _lr_minus_5)
        weights = copy.deepcopy(model.state_dict())
        momentum = copy.deepcopy(opt.state_dict()["state"])
        lr, step, get_lr = opt.param_groups[0]["lr"], run.global_step, sched.get_lr
        with pytest.raises(CommandRejected, match="lr must be >= 0, got -5"):
            run.restore(record.label)
        assert run.global_step == step and opt.param_groups[0]["lr"] == lr
        assert sched.get_lr == get_lr
        for key, value in model.state_dict().items():
            assert torch.equal(value, weights[key])
        for index, buffers in opt.state_dict()["state"].items():
            assert torch.equal(buffers["momentum_buffer"], momentum[index]["momentum_buffer"])
        _train(run, model, opt, sched, 1)  # training goes on


def test_a_recorded_object_location_outside_the_store_is_refused_and_not_created(
    store_url: str, tmp_path: Path
) -> None:
    run, model, opt, sched = _trained_run(store_url)
    elsewhere = tmp_path / "elsewhere" / "objects"
    with run:
        _train(run, model, opt, sched, 2)
        record = run.checkpoint()
        _edit_manifest(store_url, record.id, lambda m: m.__setitem__("objects", str(elsewhere)))
        with pytest.raises(CommandRejected, match="not an object location of this store"):
            run.restore(record.label)
        assert not elsewhere.parent.exists()
        _edit_manifest(store_url, record.id, lambda m: m.__setitem__("objects", ["x"]))
        with pytest.raises(CommandRejected, match="is not a URL"):
            run.restore(record.label)
        _train(run, model, opt, sched, 1)


# -- fuzzing: any change to a decoded state is applied whole or refused as CheckpointCorrupt --

_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.floats(),
    st.sampled_from(["", "get_lr", "os.system", "cpu"]),
    st.builds(torch.zeros, st.integers(0, 5)),
    st.lists(st.floats(-10, 10), max_size=3),
    st.dictionaries(st.sampled_from(["lr", "get_lr", "params", "_x"]), st.floats(-5, 5)),
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


@pytest.fixture(scope="module")
def fuzzed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[retune.Run, CheckpointRecord]]:
    store = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'retune.db'}"
    run, model, opt, sched = _trained_run(store)
    with run:
        _train(run, model, opt, sched, 3)
        yield run, run.checkpoint()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzzed_states_are_applied_or_refused_as_corrupt(
    fuzzed_run: tuple[retune.Run, CheckpointRecord], data: st.DataObject
) -> None:
    run, record = fuzzed_run
    state = run.checkpointer.load(record)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(state)))
        parent: Any = state
        for part in path[:-1]:
            parent = parent[part]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_LEAVES)
    with contextlib.suppress(CheckpointCorrupt):  # any other error fails the test
        apply_state(run, state)
    scheduler, optimizer = run.scheduler, run.optimizer
    assert scheduler is not None and optimizer is not None
    assert callable(scheduler.get_lr) and "get_lr" not in vars(scheduler)
    assert all(g["lr"] >= 0 for g in optimizer.param_groups)


def test_a_schedule_that_reaches_lr_0_leaves_restorable_checkpoints(tmp_path: Path) -> None:
    """Cosine to eta_min=0 and linear warmup from 0 are common: lr 0 is a valid value."""
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3, eta_min=0.0)
    with retune.init("zero", model=model, optimizer=opt, scheduler=sched,
                     store=str(tmp_path / "z.db")) as run:  # fmt: skip
        for _ in range(3):
            opt.step()
            sched.step()
            run.step(loss=1.0)
        assert opt.param_groups[0]["lr"] == 0.0
        record = run.checkpoint()
        run.step(loss=1.0)
        run.restore(record.label)
        assert opt.param_groups[0]["lr"] == 0.0
