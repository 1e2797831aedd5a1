"""Checkpoint save/restore: Retune vs torch.save/torch.load vs safetensors vs raw file I/O.

Run with ``.venv/bin/python benchmarks/checkpoint_io.py`` (part of ``make bench``). In one
process: save and restore a ~200 MB model + Adam state with each method (every write fsynced),
then the bytes on disk after 20 checkpoints of a fine-tuning run whose parameters are 90% frozen.

Like with like: Retune's restore maps its blobs (``mmap``), so the baseline is
``torch.load(mmap=True, weights_only=True)``; ``torch.load`` without ``mmap`` and safetensors'
``load_file`` (which maps too) are further rows. A mapped load may read nothing until the
tensors are used, so each restore is timed twice: until the call returns, and until every
tensor has also been copied into a preallocated model-sized destination (what
``load_state_dict`` does). After every timed restore, outside the timing, the decoded state is
compared with the saved one bit for bit; any difference aborts the benchmark.
"""

from __future__ import annotations

import argparse
import os
import shutil
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

RESTORES = ("retune", "torch.load mmap", "torch.load", "safetensors", "raw read")


def _model_and_adam(width: int, layers: int) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, width)).sum().backward()
    opt.step()
    return model, opt


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _tensors(state: dict[str, Any]) -> dict[str, Any]:
    """Model and optimizer tensors flattened to name -> tensor (for safetensors and raw I/O)."""
    import torch

    flat = {f"model.{k}": v for k, v in state["model"].items()}
    for index, buffers in state["optimizer"]["state"].items():
        for name, value in buffers.items():
            if isinstance(value, torch.Tensor):
                flat[f"opt.{index}.{name}"] = value.reshape(-1) if value.dim() == 0 else value
    return flat


class Verified:
    """Restores checked against the saved state after each timing; counts what was checked."""

    def __init__(self) -> None:
        self.checked: dict[str, int] = {}

    def check(self, name: str, expected: Any, restored: Any) -> None:
        difference = bitwise_difference(expected, restored)
        if difference is not None:
            raise SystemExit(f"checkpoint_io: {name} restored a different state: {difference}")
        self.checked[name] = self.checked.get(name, 0) + 1


def bench_io(folder: Path, repeat: int, width: int, layers: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    from retune.checkpoint import ObjectStore, decode_state, encode_state

    model, opt = _model_and_adam(width, layers)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    flat = _tensors(state)
    nbytes = sum(t.numel() * t.element_size() for t in flat.values())
    blob = b"".join(
        bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy()) for t in flat.values()
    )
    # Where a restore's tensors are copied to (a model and optimizer already built).
    destinations = {name: torch.empty_like(t) for name, t in flat.items()}
    raw_destination = torch.empty(len(blob), dtype=torch.uint8)
    manifest: dict[str, Any] = {}

    def fresh(name: str) -> Path:
        path = folder / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def raw_save() -> None:
        path = fresh("raw") / "state.bin"
        with open(path, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())

    def torch_save() -> None:
        path = fresh("torch") / "state.pt"
        torch.save(state, path)
        _fsync_file(path)

    def st_save() -> None:
        path = fresh("st") / "state.safetensors"
        save_file(flat, str(path))
        _fsync_file(path)

    def retune_save() -> None:
        objects = ObjectStore(str(fresh("retune")))
        manifest.update(encode_state(state, objects)[0])

    saves = {"raw write": raw_save, "torch.save": torch_save, "safetensors": st_save,
             "retune": retune_save}  # fmt: skip
    save_runs: dict[str, list[float]] = {name: [] for name in saves}
    for _ in range(repeat):  # round-robin, so drift hits every method alike
        for name, save in saves.items():
            start = time.perf_counter()
            save()
            save_runs[name].append(time.perf_counter() - start)

    def copy_tree(restored: Any) -> None:
        for name, tensor in _tensors(restored).items():
            destinations[name].copy_(tensor)

    def copy_flat(restored: dict[str, Any]) -> None:
        for name, tensor in restored.items():
            destinations[name].copy_(tensor)

    def copy_raw(restored: bytes) -> None:
        raw_destination.numpy()[:] = np.frombuffer(restored, dtype=np.uint8)

    pt, st = folder / "torch" / "state.pt", str(folder / "st" / "state.safetensors")
    restores: dict[str, tuple[Callable[[], Any], Callable[[Any], None], Any]] = {
        "retune": (lambda: decode_state(manifest, ObjectStore(str(folder / "retune"))),
                   copy_tree, state),
        "torch.load mmap": (lambda: torch.load(pt, mmap=True, weights_only=True), copy_tree,
                            state),
        "torch.load": (lambda: torch.load(pt, weights_only=True), copy_tree, state),
        "safetensors": (lambda: load_file(st), copy_flat, flat),
        "raw read": ((folder / "raw" / "state.bin").read_bytes, copy_raw, blob),
    }  # fmt: skip
    restore_runs: dict[str, list[float]] = {name: [] for name in restores}
    ready_runs: dict[str, list[float]] = {name: [] for name in restores}
    verified = Verified()
    for _ in range(repeat):
        for name, (load, copy, expected) in restores.items():
            start = time.perf_counter()
            restored = load()
            returned = time.perf_counter()
            copy(restored)
            ready = time.perf_counter()
            restore_runs[name].append(returned - start)
            ready_runs[name].append(ready - start)
            if name == "safetensors" and set(restored) == set(flat):  # it sorts the names
                restored = {key: restored[key] for key in flat}
            verified.check(name, expected, restored)  # outside the timing
            del restored
    results = {
        "save_s": {name: statistics.median(runs) for name, runs in save_runs.items()},
        "restore_s": {name: statistics.median(runs) for name, runs in restore_runs.items()},
        "ready_s": {name: statistics.median(runs) for name, runs in ready_runs.items()},
        "save_runs_s": save_runs,
        "restore_runs_s": restore_runs,
        "ready_runs_s": ready_runs,
    }
    return {"bytes": nbytes, "verified_restores": verified.checked, **results}


def bench_frozen(folder: Path, checkpoints: int, optimizer: str) -> dict[str, int]:
    """Bytes on disk after N checkpoints of a fine-tuning run with 90% of parameters frozen.

    The last checkpoint is decoded and compared with the state it saved, bit for bit.
    """
    import torch

    from retune.checkpoint import ObjectStore, decode_state, encode_state

    torch.manual_seed(0)
    backbone = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(9)])
    head = torch.nn.Linear(1024, 1024)
    for p in backbone.parameters():
        p.requires_grad_(False)
    model = torch.nn.Sequential(backbone, head)
    opt: Any = (
        torch.optim.Adam(head.parameters())
        if optimizer == "adam"
        else torch.optim.SGD(head.parameters(), lr=0.01)
    )
    objects = ObjectStore(str(folder / f"frozen-retune-{optimizer}"))
    torch_dir = folder / f"frozen-torch-{optimizer}"
    torch_dir.mkdir(exist_ok=True)
    manifest: dict[str, Any] = {}
    state: dict[str, Any] = {}
    for i in range(checkpoints):
        model(torch.randn(4, 1024)).sum().backward()
        opt.step()
        opt.zero_grad()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        manifest = encode_state(state, objects)[0]
        torch.save(state, torch_dir / f"{i}.pt")
    Verified().check(f"frozen {optimizer}", state, decode_state(manifest, objects))

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    return {"retune": size(folder / f"frozen-retune-{optimizer}"), "torch.save": size(torch_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.width, args.layers, args.checkpoints = 2, 1024, 2, 4
    if min(args.repeat, args.width, args.layers, args.checkpoints) < 1:
        parser.error("--repeat, --width, --layers and --checkpoints must be at least 1")
    missing = missing_modules(["safetensors"])
    if missing:
        print(f"checkpoint_io: missing {', '.join(missing)}; {MAKE_BENCH_HINT}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("RETUNE_BENCH_DIR")) as tmp:
        io = bench_io(Path(tmp), args.repeat, args.width, args.layers)
        frozen = bench_frozen(Path(tmp), args.checkpoints, "adam")
        frozen_sgd = bench_frozen(Path(tmp), args.checkpoints, "sgd")
    save, restore, ready = io["save_s"], io["restore_s"], io["ready_s"]
    summary = {
        "save_throughput_vs_raw": save["raw write"] / save["retune"],
        "restore_vs_torch_load_mmap": restore["torch.load mmap"] / restore["retune"],
        "ready_vs_torch_load_mmap": ready["torch.load mmap"] / ready["retune"],
        "ready_vs_torch_load": ready["torch.load"] / ready["retune"],
        "frozen_bytes_vs_torch_save": frozen["retune"] / frozen["torch.save"],
        "frozen_sgd_bytes_vs_torch_save": frozen_sgd["retune"] / frozen_sgd["torch.save"],
    }
    result = {
        "machine": machine_line(["torch", "safetensors"]),
        "settings": {
            "repeat": args.repeat,
            "width": args.width,
            "layers": args.layers,
            "checkpoints": args.checkpoints,
        },
        **io,
        "frozen_adam": frozen,
        "frozen_sgd": frozen_sgd,
        "summary": summary,
    }
    write_results(args.out, "checkpoint_io", args.quick, result)
    if args.json:
        print_json(result)
        return 0
    mb = io["bytes"] / 1e6
    print(result["machine"])
    print(f"model + Adam state: {mb:.0f} MB; median of {args.repeat}; every save fsynced; "
          f"every restore verified bit for bit ({sum(io['verified_restores'].values())} "
          "restores)")  # fmt: skip
    print(table(["save", "s", "MB/s"],
                [[n, f"{s:.3f}", f"{mb / s:,.0f}"] for n, s in save.items()]))  # fmt: skip
    rows = [[n, f"{restore[n]:.3f}", f"{ready[n]:.3f}", f"{mb / ready[n]:,.0f}"] for n in RESTORES]
    print(table(["restore", "call returns s", "+ copied into model s", "MB/s"], rows))
    print(f"retune save throughput / raw write: {summary['save_throughput_vs_raw']:.2f}x")
    print(f"retune restore (state in the model) vs torch.load mmap: "
          f"{summary['ready_vs_torch_load_mmap']:.2f}x as fast")  # fmt: skip
    for label, sizes in (("Adam", frozen), ("plain SGD", frozen_sgd)):
        ratio = sizes["retune"] / sizes["torch.save"]
        print(
            f"{args.checkpoints} checkpoints, 90% frozen, {label}: retune "
            f"{sizes['retune'] / 1e6:.0f} MB, torch.save {sizes['torch.save'] / 1e6:.0f} MB "
            f"({ratio:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
