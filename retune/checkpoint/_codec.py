"""Training state <-> a JSON manifest plus raw tensor blobs. Never pickle.

A *state tree* is nested dicts (str or int keys), lists and tuples of: None, bool, int, float
(NaN and inf included), str, bytes, ``torch.Tensor``, ``numpy.ndarray``, numpy scalars,
``torch.dtype`` and ``torch.device``. Anything else is refused with the path to it.

Tensors become raw little-endian bytes. Each tensor of at least ``pack_below`` bytes is one blob
keyed by its hash (identical tensors are stored once, across checkpoints and runs); smaller ones
are packed together into one blob per checkpoint. Blobs are hashed and written by a small thread
pool (hashing and file writes release the GIL).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from retune.checkpoint._objects import ObjectStore, digest
from retune.errors import CheckpointCorrupt, InvalidArgument

__all__ = ["FORMAT_VERSION", "decode_state", "encode_state", "manifest_blobs"]

FORMAT_VERSION = 1
PACK_BELOW = 64 * 1024
_WORKERS = 4


def _torch() -> Any:
    return sys.modules.get("torch")


class _Encoder:
    def __init__(self, objects: ObjectStore, pack_below: int) -> None:
        self.objects = objects
        self.pack_below = pack_below
        self.big: list[tuple[dict[str, Any], memoryview]] = []
        self.small: list[tuple[dict[str, Any], memoryview]] = []
        self.nbytes = 0

    def array_bytes(self, node: dict[str, Any], data: memoryview) -> dict[str, Any]:
        self.nbytes += data.nbytes
        (self.small if data.nbytes < self.pack_below else self.big).append((node, data))
        return node

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"t": "float", "v": repr(value)}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise InvalidArgument(f"state key {key!r} at {path} must be a str or int")
                items.append([key, self.encode(item, f"{path}[{key!r}]")])
            return {"t": "dict", "items": items}
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return {"t": "list" if isinstance(value, list) else "tuple", "items": items}
        if isinstance(value, bytes):
            return self.array_bytes({"t": "bytes"}, memoryview(value))
        if isinstance(value, (np.ndarray, np.generic)):
            array = np.asarray(value, order="C")  # keeps 0-d shapes, unlike ascontiguousarray
            if array.dtype.hasobject:
                raise InvalidArgument(f"numpy object arrays cannot be checkpointed ({path})")
            little_endian = array.dtype.newbyteorder("<")
            node = {
                "t": "ndarray" if isinstance(value, np.ndarray) else "npscalar",
                "dtype": little_endian.str,
                "shape": list(array.shape),
            }
            raw: Any = array.astype(little_endian, copy=False).reshape(-1).view(np.uint8)
            return self.array_bytes(node, memoryview(raw))
        torch = _torch()
        if torch is not None:
            if isinstance(value, torch.Tensor):
                return self.tensor(value, path)
            if isinstance(value, torch.dtype):
                return {"t": "dtype", "v": str(value).removeprefix("torch.")}
            if isinstance(value, torch.device):
                return {"t": "device", "v": str(value)}
        raise InvalidArgument(
            f"cannot checkpoint {type(value).__name__} at {path}: state may hold tensors, "
            "arrays, numbers, strings, bytes, and lists/tuples/dicts of them"
        )

    def tensor(self, tensor: Any, path: str) -> dict[str, Any]:
        if tensor.is_sparse or tensor.is_quantized:
            raise InvalidArgument(f"sparse and quantized tensors cannot be checkpointed ({path})")
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        node = {
            "t": "tensor",
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "device": str(tensor.device),
            "requires_grad": bool(tensor.requires_grad),
        }
        raw = flat.view(_torch().uint8) if flat.numel() else flat.new_empty(0).view(_torch().uint8)
        return self.array_bytes(node, memoryview(raw.numpy()))

    def write(self) -> None:
        """Hash and store the big blobs in parallel, then one pack for the small ones."""

        def store(data: memoryview) -> str:
            return self.objects.put(data, digest(data))

        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            keys = list(pool.map(store, [data for _, data in self.big]))
        for (node, data), key in zip(self.big, keys, strict=True):
            node.update(blob=key, nbytes=data.nbytes)
        if self.small:
            pack = bytearray()
            for node, data in self.small:
                node.update(offset=len(pack), nbytes=data.nbytes)
                pack += data
            key = self.objects.put(memoryview(pack))
            for node, _ in self.small:
                node["pack"] = key
        self.objects.sync()


def encode_state(
    tree: Any, objects: ObjectStore, *, pack_below: int = PACK_BELOW
) -> tuple[dict[str, Any], int]:
    """Write the tree's arrays as blobs; return ``(manifest, bytes of array data)``."""
    encoder = _Encoder(objects, pack_below)
    root = encoder.encode(tree, "state")
    encoder.write()
    return {"format": FORMAT_VERSION, "root": root}, encoder.nbytes


class _Decoder:
    def __init__(self, objects: ObjectStore, label: str, map_location: str | None) -> None:
        self.objects = objects
        self.label = label
        self.map_location = map_location
        self.packs: dict[str, bytes] = {}
        self.preloaded: dict[str, Any] = {}

    def preload(self, root: Any) -> None:
        """Read every big tensor blob straight into a new tensor's memory, several at once."""
        torch = _require_torch()
        wanted: dict[str, int] = {}

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if node.get("t") == "tensor" and "blob" in node and node["nbytes"]:
                    wanted[node["blob"]] = node["nbytes"]
                for item in node.get("items", []):
                    walk(item[1] if node.get("t") == "dict" else item)

        walk(root)

        def load(key: str) -> tuple[str, Any]:
            mapped = self.objects.map(key)
            if mapped is not None and mapped.nbytes == wanted[key]:
                return key, torch.frombuffer(mapped, dtype=torch.uint8)
            buffer = torch.empty(wanted[key], dtype=torch.uint8)
            self.objects.read_into(key, memoryview(buffer.numpy()))
            return key, buffer

        try:
            with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
                self.preloaded = dict(pool.map(load, wanted))
        except CheckpointCorrupt as e:
            raise CheckpointCorrupt(f"checkpoint {self.label} cannot be restored: {e}") from e

    def raw(self, node: dict[str, Any]) -> bytes | memoryview:
        try:
            if "pack" in node:
                key = node["pack"]
                if key not in self.packs:
                    self.packs[key] = self.objects.get(key)
                start = node["offset"]
                return memoryview(self.packs[key])[start : start + node["nbytes"]]
            return self.objects.get(node["blob"])
        except CheckpointCorrupt as e:
            raise CheckpointCorrupt(f"checkpoint {self.label} cannot be restored: {e}") from e

    def decode(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        kind = node["t"]
        decoders: dict[str, Callable[[dict[str, Any]], Any]] = {
            "float": lambda n: float(n["v"]),
            "dict": lambda n: {k: self.decode(v) for k, v in n["items"]},
            "list": lambda n: [self.decode(v) for v in n["items"]],
            "tuple": lambda n: tuple(self.decode(v) for v in n["items"]),
            "bytes": lambda n: bytes(self.raw(n)),
            "ndarray": self.ndarray,
            "npscalar": lambda n: self.ndarray(n)[()],
            "tensor": self.tensor,
            "dtype": lambda n: getattr(_require_torch(), n["v"]),
            "device": lambda n: _require_torch().device(n["v"]),
        }
        if kind not in decoders:
            raise CheckpointCorrupt(f"checkpoint {self.label}: unknown entry kind {kind!r}")
        return decoders[kind](node)

    def ndarray(self, node: dict[str, Any]) -> np.ndarray:
        flat = np.frombuffer(self.raw(node), dtype=np.dtype(node["dtype"])).copy()
        return flat.reshape(node["shape"])

    def tensor(self, node: dict[str, Any]) -> Any:
        torch = _require_torch()
        dtype = getattr(torch, node["dtype"])
        if node.get("blob") in self.preloaded:
            tensor = self.preloaded.pop(node["blob"]).view(dtype).reshape(node["shape"])
        elif node["nbytes"] == 0:
            tensor = torch.empty(node["shape"], dtype=dtype)
        else:
            data = self.raw(node)
            tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            tensor = tensor.view(dtype).reshape(node["shape"])
        device = self.map_location or node.get("device", "cpu")
        if device != "cpu":
            tensor = tensor.to(device)
        return tensor


def _require_torch() -> Any:
    import torch

    return torch


def decode_state(
    manifest: dict[str, Any],
    objects: ObjectStore,
    *,
    label: str = "?",
    map_location: str | None = "cpu",
) -> Any:
    """Rebuild the tree; every blob is verified. ``CheckpointCorrupt`` names ``label``."""
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointCorrupt(
            f"checkpoint {label} has format {manifest.get('format')!r}; this Retune reads "
            f"format {FORMAT_VERSION}"
        )
    decoder = _Decoder(objects, label, map_location)
    if _torch() is not None or _has_tensors(manifest["root"]):
        decoder.preload(manifest["root"])
    return decoder.decode(manifest["root"])


def _has_tensors(root: Any) -> bool:
    return '"t": "tensor"' in json.dumps(root)


def manifest_blobs(manifest: dict[str, Any]) -> set[str]:
    """Every blob key a manifest refers to (for garbage collection)."""
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for field in ("blob", "pack"):
                if field in node:
                    keys.add(node[field])
            for item in node.get("items", []):
                walk(item[1] if node.get("t") == "dict" else item)

    walk(manifest.get("root"))
    return keys
