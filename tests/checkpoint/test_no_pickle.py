"""Checkpoints never pickle: a full save and restore runs with every pickler made to raise.

A source scan (the test this replaces) only sees the spellings it looks for; here every entry
point into pickle (``pickle``/``_pickle`` load(s)/dump(s)/Pickler/Unpickler, ``torch.load`` /
``torch.save``, numpy's pickle path goes through ``pickle`` too) raises ``AssertionError`` while
a real run with a model, an optimizer, a scheduler, RNG states and ``run.state`` is
checkpointed, trained further, restored in the process, and resumed into fresh objects. Each
restore must give back the saved state bit for bit. If any code path pickled, the run would
fail (the error is re-raised from wherever it is caught: the guard records every call).
"""

from __future__ import annotations

import _pickle
import copy
import io
import pickle
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import retune

_GUARDED = {
    pickle: ("load", "loads", "dump", "dumps", "Pickler", "Unpickler"),
    _pickle: ("load", "loads", "dump", "dumps", "Pickler", "Unpickler"),
    torch: ("load", "save"),
    torch.serialization: ("load", "save"),
}


def _object_array() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)  # pickles
    return buffer.getvalue()


_OBJECT_ARRAY = _object_array()  # made at import, before any guard is installed


class PickleGuard:
    """Replaces every pickle entry point with one that records the call and raises."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def forbid(self, original: Any, name: str) -> Any:
        """A raising stand-in; for a class, a subclass (libraries subclass Pickler at import)
        whose instantiation raises."""
        calls = self.calls

        def forbidden(*_args: Any, **_kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} was called: checkpoints must never pickle")

        if isinstance(original, type):
            return type(original.__name__, (original,), {"__init__": forbidden})
        return forbidden


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> Iterator[PickleGuard]:
    guard = PickleGuard()
    for module, names in _GUARDED.items():
        for name in names:
            original = getattr(module, name)
            monkeypatch.setattr(module, name, guard.forbid(original, f"{module.__name__}.{name}"))
    yield guard
    # Calls swallowed by an except clause somewhere still fail the test.
    assert guard.calls == []


def _build(seed: int) -> tuple[Any, Any, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3)
    )
    model.register_buffer("counter", torch.zeros((), dtype=torch.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    return model, optimizer, scheduler


def _train(run: retune.Run, model: Any, optimizer: Any, scheduler: Any, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(8, 6)
        y = torch.randint(0, 3, (8,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
        model.counter += 1
        run.state["seen"] = run.state.get("seen", 0) + 8
        run.state["noise"] = np.random.rand(3)
        run.state["last"] = {"x": x[0].clone(), "tag": ("step", random.random())}
        run.step(loss=loss.item())


def _state(run: retune.Run, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Everything a checkpoint must bring back, copied (no tensor shares the live memory)."""
    return copy.deepcopy(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "user": dict(run.state),
            "step": run.global_step,
        }
    )


def assert_bitwise_equal(saved: Any, restored: Any, path: str = "state") -> None:
    """Same types, same structure, tensors and arrays equal byte for byte (NaN == NaN)."""
    assert type(saved) is type(restored), f"{path}: {type(saved)} != {type(restored)}"
    if isinstance(saved, torch.Tensor):
        assert (saved.dtype, saved.shape) == (restored.dtype, restored.shape), path
        a, b = (
            t.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for t in (saved, restored)
        )
        assert torch.equal(a, b), f"{path}: tensor bytes differ"
    elif isinstance(saved, np.ndarray):
        assert (saved.dtype, saved.shape) == (restored.dtype, restored.shape), path
        assert saved.tobytes() == restored.tobytes(), f"{path}: array bytes differ"
    elif isinstance(saved, dict):
        assert list(saved) == list(restored), f"{path}: keys {list(saved)} != {list(restored)}"
        for key in saved:
            assert_bitwise_equal(saved[key], restored[key], f"{path}[{key!r}]")
    elif isinstance(saved, list | tuple):
        assert len(saved) == len(restored), f"{path}: length {len(saved)} != {len(restored)}"
        for i, (a, b) in enumerate(zip(saved, restored, strict=True)):
            assert_bitwise_equal(a, b, f"{path}[{i}]")
    elif isinstance(saved, float):
        assert saved.hex() == restored.hex(), f"{path}: {saved!r} != {restored!r}"
    else:
        assert saved == restored, f"{path}: {saved!r} != {restored!r}"


def test_save_restore_and_resume_never_pickle(store_url: str, no_pickle: PickleGuard) -> None:
    model, optimizer, scheduler = _build(0)
    with retune.init("np", model=model, optimizer=optimizer, scheduler=scheduler, seed=3,
                     store=store_url) as run:  # fmt: skip
        _train(run, model, optimizer, scheduler, 6)
        saved = _state(run, model, optimizer, scheduler)
        checkpoint = run.checkpoint(tag="guarded")
        _train(run, model, optimizer, scheduler, 5)
        moved = _state(run, model, optimizer, scheduler)
        with pytest.raises(AssertionError):  # the training went on: the state really moved
            assert_bitwise_equal(saved, moved)

        run.restore(checkpoint.label)
        assert_bitwise_equal(saved, _state(run, model, optimizer, scheduler))
        _train(run, model, optimizer, scheduler, 2)

    fresh_model, fresh_optimizer, fresh_scheduler = _build(99)  # different weights
    with retune.init("np", model=fresh_model, optimizer=fresh_optimizer,
                     scheduler=fresh_scheduler, store=store_url,
                     resume=checkpoint.label) as resumed:  # fmt: skip
        assert_bitwise_equal(saved, _state(resumed, fresh_model, fresh_optimizer, fresh_scheduler))
    snapshot = retune.load("np", store=store_url)
    assert [n.change_kind for n in snapshot.nodes][-1] == "resume"
    assert no_pickle.calls == []


def test_the_guard_catches_every_way_in(no_pickle: PickleGuard) -> None:
    """The guard is real: each entry point that could unpickle or pickle raises and is recorded."""
    state = {"w": torch.ones(2)}
    attempts: list[Callable[[], Any]] = [
        lambda: torch.save(state, io.BytesIO()),
        lambda: torch.load(io.BytesIO(b"x"), weights_only=True),
        lambda: torch.serialization.load(io.BytesIO(b"x")),
        lambda: pickle.dumps(state),
        lambda: pickle.loads(b"x"),
        lambda: pickle.Unpickler(io.BytesIO(b"x")).load(),
        lambda: pickle.Pickler(io.BytesIO()).dump(state),
        lambda: _pickle.loads(b"x"),
        lambda: np.load(io.BytesIO(_OBJECT_ARRAY), allow_pickle=True),
    ]
    for attempt in attempts:
        with pytest.raises(AssertionError, match="must never pickle"):
            attempt()
    assert len(no_pickle.calls) == len(attempts)
    no_pickle.calls.clear()  # expected here; the fixture checks nothing else pickled
