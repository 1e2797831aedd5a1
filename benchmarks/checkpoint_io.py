"""Checkpoint save/restore: Retune vs torch.save/torch.load vs safetensors vs raw file I/O.

Run with ``.venv/bin/python benchmarks/checkpoint_io.py`` (part of ``make bench``). In one
process: save and restore a ~200 MB model + Adam state with each method (every write fsynced),
then the bytes on disk after 20 checkpoints of a fine-tuning run whose parameters are 90% frozen.
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
from _common import machine_line, print_json, table


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


def _time(fn: Callable[[], Any], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def bench_io(folder: Path, repeat: int, width: int, layers: int) -> dict[str, Any]:
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
    results: dict[str, dict[str, float]] = {}

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

    def raw_load() -> None:
        (folder / "raw" / "state.bin").read_bytes()

    def torch_save() -> None:
        path = fresh("torch") / "state.pt"
        torch.save(state, path)
        _fsync_file(path)

    def torch_load() -> None:
        torch.load(folder / "torch" / "state.pt", weights_only=True)

    def st_save() -> None:
        path = fresh("st") / "state.safetensors"
        save_file(flat, str(path))
        _fsync_file(path)

    def st_load() -> None:
        load_file(str(folder / "st" / "state.safetensors"))

    manifest: dict[str, Any] = {}

    def retune_save() -> None:
        objects = ObjectStore(str(fresh("retune")))
        manifest.update(encode_state(state, objects)[0])

    def retune_load() -> None:
        decode_state(manifest, ObjectStore(str(folder / "retune")))

    for name, save, load in [
        ("raw write/read", raw_save, raw_load),
        ("torch.save/load", torch_save, torch_load),
        ("safetensors", st_save, st_load),
        ("retune", retune_save, retune_load),
    ]:
        results[name] = {"save_s": _time(save, repeat), "load_s": _time(load, repeat)}
    return {"bytes": nbytes, "results": results}


def bench_frozen(folder: Path, checkpoints: int, optimizer: str) -> dict[str, int]:
    """Bytes on disk after N checkpoints of a fine-tuning run with 90% of parameters frozen."""
    import torch

    from retune.checkpoint import ObjectStore, encode_state

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
    for i in range(checkpoints):
        model(torch.randn(4, 1024)).sum().backward()
        opt.step()
        opt.zero_grad()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
        encode_state(state, objects)
        torch.save(state, torch_dir / f"{i}.pt")

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    return {"retune": size(folder / f"frozen-retune-{optimizer}"), "torch.save": size(torch_dir)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import safetensors  # noqa: F401
    except ImportError:
        print("safetensors is missing; run `make bench` to install it", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(dir=os.environ.get("RETUNE_BENCH_DIR")) as tmp:
        io = bench_io(Path(tmp), args.repeat, args.width, args.layers)
        frozen = bench_frozen(Path(tmp), args.checkpoints, "adam")
        frozen_sgd = bench_frozen(Path(tmp), args.checkpoints, "sgd")
    machine = machine_line(["torch", "safetensors"])
    results = io["results"]
    raw = results["raw write/read"]
    summary = {
        "save_throughput_vs_raw": raw["save_s"] / results["retune"]["save_s"],
        "restore_speed_vs_torch_load": results["torch.save/load"]["load_s"]
        / results["retune"]["load_s"],
        "frozen_bytes_vs_torch_save": frozen["retune"] / frozen["torch.save"],
        "frozen_sgd_bytes_vs_torch_save": frozen_sgd["retune"] / frozen_sgd["torch.save"],
    }
    if args.json:
        print_json(
            {
                "machine": machine,
                "bytes": io["bytes"],
                "results": results,
                "frozen_adam": frozen,
                "frozen_sgd": frozen_sgd,
                "summary": summary,
            }
        )
        return 0
    mb = io["bytes"] / 1e6
    print(machine)
    print(f"model + Adam state: {mb:.0f} MB; median of {args.repeat}; every save fsynced")
    rows = [
        [name, f"{r['save_s']:.3f}", f"{mb / r['save_s']:.0f}", f"{r['load_s']:.3f}",
         f"{mb / r['load_s']:.0f}"]
        for name, r in results.items()
    ]  # fmt: skip
    print(table(["method", "save s", "save MB/s", "load s", "load MB/s"], rows))
    print(f"retune save throughput / raw write: {summary['save_throughput_vs_raw']:.2f}x")
    print(f"retune restore speed / torch.load: {summary['restore_speed_vs_torch_load']:.2f}x")
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
