"""Training stall per checkpoint: Retune's two-phase save vs torch.save vs DCP's async_save.

Run with ``.venv/bin/python benchmarks/checkpoint_stall.py`` (part of ``make bench``). In one
process, a ~200 MB state (16 x Linear(1024, 1024) + Adam: parameters and both moments) and a
training loop of fixed steps (matrix products calibrated to ``--step-ms``, default 20 ms; each
step also writes its number into the first layer's bias, so a checkpoint must hold the state
of its own step, not a later one). Every round runs each contender once, round-robin, in a
fresh temporary folder:

* ``none``: the loop without a checkpoint (the reference time);
* ``torch.save``: ``torch.save({"model": ..., "optimizer": ...}, path)`` at the boundary
  (synchronous; no fsync: the most favourable baseline), and ``torch.save + fsync``;
* ``dcp.async_save``: ``torch.distributed.checkpoint.async_save(..., no_dist=True)``, one
  process and no process group (torch supports that with ``no_dist``); it stages a CPU copy at
  the call and writes on a thread; its future is awaited at the end of the loop;
* ``retune (sync)``: ``run.checkpoint()``: both phases before it returns;
* ``retune (async)``: the scheduled save ``run.checkpointer.save_async("schedule")``: a copy
  in memory at the boundary, then hashing, writing, fsync and listing on a background thread;
  awaited (``checkpointer.wait()``) at the end of the loop;
* ``retune (change)``: a ``set`` command (sent beforehand, untimed, and picked up by the run's
  poller) applied at the boundary: its claim, the copy, the new value, the new node; the
  checkpoint before it is written in the background and the command is resolved once it is
  listed (awaited at the end of the loop, then checked: ``applied``, naming it).

The checkpoint is taken after step ``--save-at``; the loop runs ``--steps`` steps. A
contender's **stall** is its loop time (including the final wait for the save to be durable)
minus the reference loop time of the same round: everything the checkpoint cost training,
whether spent blocking at the boundary or slowing the steps that ran while it was written.
Also reported: the time the save call blocked the training thread. Medians over the rounds.
After each Retune round (outside the timing), its listed checkpoint is decoded and compared
bit for bit with the state of the step it was taken at; ``torch.save``'s file likewise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    MAKE_BENCH_HINT,
    add_output_arguments,
    bitwise_difference,
    machine_line,
    missing_modules,
    print_json,
    table,
    write_results,
)

CONTENDERS = (
    "none",
    "torch.save",
    "torch.save + fsync",
    "dcp.async_save",
    "retune (sync)",
    "retune (async)",
    "retune (change)",
)
TARGET = 0.25
"""Retune's async stall, as a fraction of a synchronous torch.save's, at most."""

Finish = Callable[[], object]
"""Waits until the save is durable (the end of the loop)."""
Done = Callable[[], bool]
"""Whether the save's background work has ended."""


class Trainer:
    """The model, optimizer and a fixed-cost step."""

    def __init__(self, width: int, layers: int, step_ms: float) -> None:
        import torch

        torch.set_num_threads(1)  # the step on one core; oversubscribed OpenMP threads spin
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
        self.optimizer = torch.optim.Adam(self.model.parameters())
        self.model(torch.randn(2, width)).sum().backward()
        self.optimizer.step()  # Adam's moments exist: the state is ~3x the parameters
        self.bias: Any = self.model[0].bias
        self.a = torch.randn(256, 256)
        self.repeats = 1
        self.repeats = max(1, round(step_ms / 1e3 / self._time_one()))

    @property
    def nbytes(self) -> int:
        import torch

        total = 0
        for tensor in self._tensors(self.state_dict()):
            assert isinstance(tensor, torch.Tensor)
            total += tensor.numel() * tensor.element_size()
        return total

    def _tensors(self, tree: Any) -> list[Any]:
        if isinstance(tree, dict):
            return [t for v in tree.values() for t in self._tensors(v)]
        if isinstance(tree, (list, tuple)):
            return [t for v in tree for t in self._tensors(v)]
        return [tree] if hasattr(tree, "numel") else []

    def _time_one(self) -> float:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            self.step(0)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def step(self, number: int) -> None:
        import torch

        with torch.no_grad():
            x = self.a
            for _ in range(self.repeats):
                x = torch.tanh(x @ self.a)
            self.bias.fill_(float(number))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}


def _never_running() -> bool:
    return True


def _saver(
    name: str, trainer: Trainer, folder: Path
) -> tuple[Callable[[], tuple[Finish, Done]], Any, Callable[[], object]]:
    """``(save, run, prepare)``: ``save()`` is called at the boundary and returns
    ``(finish, done)``; ``run`` is the Retune run (or None); ``prepare()`` runs right before
    the save, untimed (what another process does: sending a command)."""
    import torch

    if name == "torch.save" or name == "torch.save + fsync":

        def save_torch() -> tuple[Finish, Done]:
            path = folder / "state.pt"
            torch.save(trainer.state_dict(), path)
            if name.endswith("fsync"):
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
            return (lambda: None), _never_running

        return save_torch, None, _nothing
    if name == "dcp.async_save":
        from torch.distributed.checkpoint.state_dict_saver import async_save

        def save_dcp() -> tuple[Finish, Done]:
            future: Any = async_save(
                trainer.state_dict(), checkpoint_id=str(folder / "dcp"), no_dist=True
            )
            upload = getattr(future, "upload_completion", future)
            return upload.result, upload.done

        return save_dcp, None, _nothing
    if name.startswith("retune"):
        import retune

        run = retune.init(
            "stall",
            model=trainer.model,
            optimizer=trainer.optimizer,
            store=f"sqlite:///{folder / 'retune.db'}",
        )
        if name == "retune (sync)":

            def save_sync() -> tuple[Finish, Done]:
                run.checkpoint()
                return (lambda: None), _never_running

            return save_sync, run, _nothing
        if name == "retune (change)":
            return _changer(run)

        def save_async() -> tuple[Finish, Done]:
            pending = run.checkpointer.save_async("schedule")
            assert pending is not None
            return run.checkpointer.wait, lambda: pending.done

        return save_async, run, _nothing
    return (lambda: ((lambda: None), _never_running)), None, _nothing


def _nothing() -> None:
    return None


def _changer(run: Any) -> tuple[Callable[[], tuple[Finish, Done]], Any, Callable[[], object]]:
    """A ``set`` sent before the boundary, applied there as the run's step boundary does."""
    from retune.control._commands import submit

    run.tunable("clip", 1.0, bounds=(0, None))

    def send() -> None:
        submit(run.store, run.id, "set", {"values": {"clip": 2.0}}, source="python")
        while not run._applier.inbox:  # the run's own poller picks it up
            time.sleep(0.001)

    def change() -> tuple[Finish, Done]:
        run._applier.apply_pending(run)
        return run.checkpointer.wait, lambda: run.checkpointer.in_flight is None

    return change, run, send


def one_round(name: str, trainer: Trainer, steps: int, save_at: int) -> dict[str, float]:
    """Seconds: the stall, the loop (with the final wait), the save call, the final wait, the
    reference step and how many steps ran beside a background save.

    stall = save call + final wait + the extra time of every step that ran while a background
    save was still being written, over the median of this loop's other steps (step 1 left
    out: warm-up). The reference is the same loop's own steps, so a change of the machine's
    load between rounds does not count as stall.
    """
    with tempfile.TemporaryDirectory(prefix="retune-stall-") as tmp:
        folder = Path(tmp)
        save, run, prepare = _saver(name, trainer, folder)
        finish: Finish = lambda: None  # noqa: E731
        done: Done = _never_running
        blocked = 0.0
        durations: list[tuple[float, bool]] = []
        start = time.perf_counter()
        for number in range(1, steps + 1):
            beside = not done()  # a background save is being written during this step
            began = time.perf_counter()
            trainer.step(number)
            if run is not None:
                run.step()
            durations.append((time.perf_counter() - began, beside))
            if number == save_at and name != "none":
                prepare()
                called = time.perf_counter()
                finish, done = save()
                blocked = time.perf_counter() - called
        looped = time.perf_counter()
        finish()
        end = time.perf_counter()
        if run is not None:
            _verify_retune(run, trainer, save_at)
            run.finish()
        elif name.startswith("torch.save"):
            _verify_torch(folder / "state.pt", trainer, save_at)
    alone = [d for d, beside in durations[1:] if not beside]
    reference = statistics.median(alone)
    slowed = sum(d - reference for d, beside in durations if beside)
    final_wait = end - looped
    return {
        "stall": blocked + final_wait + slowed,
        "loop": end - start,
        "blocked": blocked,
        "final_wait": final_wait,
        "slowed": slowed,
        "step": reference,
        "beside": float(sum(beside for _, beside in durations)),
    }


def _expected(trainer: Trainer, save_at: int) -> dict[str, Any]:
    """The state at step ``save_at``: today's, with the bias as it was then."""
    import torch

    state = trainer.state_dict()
    state["model"] = dict(state["model"])
    bias = state["model"]["0.bias"]
    state["model"]["0.bias"] = torch.full_like(bias, float(save_at))
    return state


def _same(got: Any, want: Any, where: str) -> None:
    difference = bitwise_difference(want, got, where)
    if difference:
        path, _, why = difference.partition(": ")
        raise SystemExit(f"checkpoint_stall: {path} differs ({why})")


def _verify_retune(run: Any, trainer: Trainer, save_at: int) -> None:
    [record] = run.store.list_checkpoints(run.id)
    commands = run.store.list_commands(run.id)
    for command in commands:  # the change: applied at its boundary, naming the checkpoint
        outcome = (command.status, command.applied_step, command.result.get("checkpoint"))
        if outcome != ("applied", save_at, record.label):
            raise SystemExit(f"checkpoint_stall: the change ended {outcome}")
    state = run.checkpointer.load(record)
    if record.step != save_at:
        raise SystemExit(f"checkpoint_stall: Retune listed step {record.step}, not {save_at}")
    _same({"model": state["model"], "optimizer": state["optimizer"]},
          _expected(trainer, save_at), "retune")  # fmt: skip


def _verify_torch(path: Path, trainer: Trainer, save_at: int) -> None:
    import torch

    _same(torch.load(path, weights_only=True), _expected(trainer, save_at), "torch.save")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--width", type=int, default=1024, help="Linear width (1024)")
    parser.add_argument("--layers", type=int, default=16, help="Linear layers (16: ~200 MB)")
    parser.add_argument("--step-ms", type=float, default=20.0, help="step time (20 ms)")
    parser.add_argument("--steps", type=int, default=100, help="steps per loop (100)")
    parser.add_argument("--save-at", type=int, default=5, help="checkpoint after step (5)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians (5)")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.layers, args.steps, args.repeat = 4, 40, 2
    if min(args.width, args.layers, args.steps, args.repeat) < 1 or args.step_ms <= 0:
        parser.error("sizes, steps, repeat and step time must be positive")
    if not 1 <= args.save_at <= args.steps:
        parser.error("--save-at must be within the steps")
    missing = missing_modules(["torch"])
    if missing:
        print(f"checkpoint_stall: missing {', '.join(missing)}; {MAKE_BENCH_HINT}", file=sys.stderr)
        return 2
    import logging
    import warnings

    warnings.filterwarnings("ignore")  # DCP warns that it runs without a process group
    logging.getLogger("torch.distributed").setLevel(logging.ERROR)

    trainer = Trainer(args.width, args.layers, args.step_ms)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(args.repeat):
        for name in CONTENDERS:
            rounds[name].append(one_round(name, trainer, args.steps, args.save_at))

    def medians(field: str) -> dict[str, float]:
        return {name: statistics.median(r[field] for r in runs) for name, runs in rounds.items()}

    stall = {name: [r["stall"] for r in runs] for name, runs in rounds.items()}
    median, blocked, final_wait = medians("stall"), medians("blocked"), medians("final_wait")
    loop, slowed, beside = medians("loop"), medians("slowed"), medians("beside")
    step_s = statistics.median(r["step"] for runs in rounds.values() for r in runs)
    reference = median["torch.save"]
    ratios = {name: median[name] / reference for name in CONTENDERS if name != "none"}
    blocked_ratios = {
        name: blocked[name] / blocked["torch.save"] for name in CONTENDERS if name != "none"
    }
    met = ratios["retune (async)"] <= TARGET
    machine = machine_line(["retune", "torch", "numpy"])
    step_ms = step_s * 1e3
    settings = {
        "width": args.width,
        "layers": args.layers,
        "steps": args.steps,
        "save_at": args.save_at,
        "repeat": args.repeat,
        "step_ms": step_ms,
    }
    result = {
        "machine": machine,
        "settings": settings,
        "bytes": trainer.nbytes,
        "stall_s": stall,
        "median_stall_s": median,
        "blocked_s": blocked,
        "final_wait_s": final_wait,
        "slowed_s": slowed,
        "steps_beside_save": beside,
        "loop_s": loop,
        "ratio_to_torch_save": ratios,
        "blocked_ratio_to_torch_save": blocked_ratios,
        "target": TARGET,
        "target_met": met,
        "verified_checkpoints": 5 * args.repeat,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    out = sys.stderr if args.json else sys.stdout
    print(machine, file=out)
    print(
        f"{trainer.nbytes / 1e6:,.0f} MB state; {args.steps} steps of {step_ms:.1f} ms, one "
        f"checkpoint after step {args.save_at}; median of {args.repeat} rounds",
        file=out,
    )
    rows = [
        [
            name,
            f"{loop[name]:.3f}",
            f"{median[name] * 1e3:,.0f}",
            f"{blocked[name] * 1e3:,.0f}",
            f"{slowed[name] * 1e3:,.0f} ({beside[name]:.0f})",
            f"{final_wait[name] * 1e3:,.0f}",
            "" if name == "none" else f"{ratios[name]:.2f}",
        ]
        for name in CONTENDERS
    ]
    headers = ["contender", "loop s", "stall ms", "blocked ms", "slowed ms (steps)"]
    headers += ["final wait ms", "/ torch.save"]
    print(table(headers, rows), file=out)
    print(
        f"retune (async) stall: {ratios['retune (async)']:.2f}x a synchronous torch.save; "
        f"target <= {TARGET}: {'met' if met else 'NOT met'}; blocked at the boundary: "
        f"{blocked_ratios['retune (async)']:.2f}x",
        file=out,
    )
    write_results(args.out, "checkpoint_stall", args.quick, result)
    if args.json:
        print_json({"benchmark": "checkpoint_stall", **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
