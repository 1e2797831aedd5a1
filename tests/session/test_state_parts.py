"""run.add_state: extra named state in every checkpoint, put back by restore and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import retune
from retune.errors import CheckpointCorrupt, CommandRejected, InvalidArgument


class Counter:
    """Stands in for a framework's loop progress: plain data plus a tensor."""

    def __init__(self) -> None:
        self.seen = 0
        self.tensor = torch.zeros(3)
        self.loaded: list[int] = []

    def capture(self) -> dict[str, Any]:
        return {"seen": self.seen, "tensor": self.tensor.clone()}

    def load(self, value: dict[str, Any]) -> None:
        self.seen = int(value["seen"])
        self.tensor = value["tensor"]
        self.loaded.append(self.seen)


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def test_restore_puts_a_part_back_as_it_was_at_the_checkpoint(tmp_path: Path) -> None:
    model, opt = _model()
    counter = Counter()
    with retune.init("parts", model=model, optimizer=opt, store=str(tmp_path / "s.db")) as run:
        run.add_state("counter", counter.capture, counter.load)
        for _ in range(5):
            counter.seen += 1
            counter.tensor += 1
            run.step(loss=1.0)
        run.checkpoint("five")
        for _ in range(4):
            counter.seen += 1
            counter.tensor += 1
            run.step(loss=1.0)
        run.restore("latest")
        assert counter.loaded == [5]
        assert (counter.seen, counter.tensor.tolist()) == (5, [5.0, 5.0, 5.0])


def test_resume_in_a_new_handle_loads_the_part(tmp_path: Path) -> None:
    store = str(tmp_path / "s.db")
    model, opt = _model()
    counter = Counter()
    with retune.init("parts", model=model, optimizer=opt, store=store) as run:
        run.add_state("counter", counter.capture, counter.load)
        counter.seen = 7
        run.step(loss=1.0)
        run.checkpoint()
    model, opt = _model()
    fresh = Counter()
    # a resume loads its checkpoint inside init, before add_state can be called
    with retune.init("parts", model=model, optimizer=opt, store=store, resume="latest") as run:
        run.add_state("counter", fresh.capture, fresh.load)
        assert fresh.loaded == [7]


def test_a_failing_load_rejects_the_restore_and_changes_nothing(tmp_path: Path) -> None:
    model, opt = _model()
    calls: list[Any] = []

    def bad_load(value: Any) -> None:
        calls.append(value)
        if len(calls) == 1:
            raise ValueError("cannot rewind")

    with retune.init("parts", model=model, optimizer=opt, store=str(tmp_path / "s.db")) as run:
        run.add_state("x", lambda: {"n": run.global_step}, bad_load)
        run.step(loss=1.0)
        run.checkpoint()
        run.step(loss=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        node = run.node
        with pytest.raises(CommandRejected, match="cannot rewind"):
            run.restore("latest")
        assert run.node == node and run.global_step == 2
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_checkpoint_whose_part_holds_an_object_is_corrupt(tmp_path: Path) -> None:
    from retune.session._state import capture_state, check_state

    model, opt = _model()
    with retune.init("parts", model=model, optimizer=opt, store=str(tmp_path / "s.db")) as run:
        run.add_state("x", lambda: {"n": 1}, lambda v: None)
        state = capture_state(run)
        check_state(run, state)
        state["parts"]["x"] = {"n": print}
        with pytest.raises(CheckpointCorrupt, match="not data"):
            check_state(run, state)


def test_bad_parts_are_refused(tmp_path: Path) -> None:
    with retune.init("parts", store=str(tmp_path / "s.db")) as run:
        with pytest.raises(InvalidArgument):
            run.add_state("", dict, print)
        with pytest.raises(InvalidArgument):
            run.add_state("x", None, print)  # type: ignore[arg-type]
