"""Training state <-> a JSON manifest plus raw tensor blobs. Never pickle.

A *state tree* is nested dicts (str or int keys), lists and tuples of: None, bool, int, float
(NaN and inf included), str, bytes, ``torch.Tensor``, ``numpy.ndarray``, numpy scalars,
``torch.dtype`` and ``torch.device``. Anything else is refused with its path in the tree.

Manifest (plain JSON, no NaN literals)::

    {"format": 1, "root": NODE}

    NODE = null | true | 1 | 2.5 | "text"                      # JSON scalars as themselves
         | {"t": "float", "v": "nan" | "inf" | "-inf"}          # non-finite floats
         | {"t": "dict", "items": [[KEY, NODE], ...]}           # KEY: str or int, order kept
         | {"t": "list" | "tuple", "items": [NODE, ...]}
         | {"t": "dtype", "v": "bfloat16"} | {"t": "device", "v": "cuda:0"}
         | {"t": "tensor", "dtype": "float32", "shape": [2, 3], "device": "cpu",
            "requires_grad": false, DATA}
         | {"t": "ndarray" | "npscalar", "dtype": "<f4", "shape": [2, 3], DATA}
         | {"t": "bytes", DATA}

    DATA = "blob": KEY, "nbytes": N                          # one blob of its own
         | "pack": KEY, "offset": O, "nbytes": N             # a slice of the pack blob

Array bytes are raw and little-endian, C order. Each array of at least ``pack_below`` bytes is
one blob keyed by its sha256, so identical tensors are stored once across checkpoints and runs;
smaller ones are concatenated into one pack blob per checkpoint. Big blobs are hashed and
written by a small thread pool (hashing and file I/O release the GIL), from the tensor's own
memory. torch is only imported when the tree (or manifest) holds torch objects.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from retune.checkpoint._objects import ObjectStore, digest
from retune.errors import CheckpointCorrupt, InvalidArgument

if TYPE_CHECKING:
    import torch

__all__ = ["FORMAT_VERSION", "decode_state", "encode_state", "manifest_blobs", "manifest_hashes"]

FORMAT_VERSION = 1
PACK_BELOW = 64 * 1024
_WORKERS = 4


def _loaded_torch() -> Any:
    """torch if something already imported it (then tensors may be in the tree), else None."""
    return sys.modules.get("torch")


def _import_torch() -> Any:
    import torch

    return torch


# -- encoding ------------------------------------------------------------------------------


class _Encoder:
    def __init__(self, objects: ObjectStore, pack_below: int) -> None:
        self.objects = objects
        self.pack_below = pack_below
        self.big: list[tuple[dict[str, Any], memoryview]] = []
        self.small: list[tuple[dict[str, Any], memoryview]] = []
        self.nbytes = 0

    def data(self, node: dict[str, Any], data: memoryview) -> dict[str, Any]:
        self.nbytes += data.nbytes
        (self.small if data.nbytes < self.pack_below else self.big).append((node, data))
        return node

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (np.ndarray, np.generic)):  # before float: np.float64 is a float
            return self.ndarray(value, path)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else {"t": "float", "v": repr(value)}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if not isinstance(key, (str, int)) or isinstance(key, bool):
                    raise InvalidArgument(
                        f"cannot checkpoint the key {key!r} at {path}: dict keys must be str or int"
                    )
                items.append([key, self.encode(item, f"{path}[{key!r}]")])
            return {"t": "dict", "items": items}
        if isinstance(value, (list, tuple)):
            items = [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
            return {"t": "list" if isinstance(value, list) else "tuple", "items": items}
        if isinstance(value, (bytes, bytearray)):
            return self.data({"t": "bytes"}, memoryview(bytes(value)))
        torch = _loaded_torch()
        if torch is not None:
            if isinstance(value, torch.Tensor):
                return self.tensor(value, path)
            if isinstance(value, torch.dtype):
                return {"t": "dtype", "v": str(value).removeprefix("torch.")}
            if isinstance(value, torch.device):
                return {"t": "device", "v": str(value)}
        raise InvalidArgument(
            f"cannot checkpoint {type(value).__name__} at {path}: state may hold tensors, "
            "arrays, numbers, strings, bytes, dtypes, devices, and lists/tuples/dicts of them"
        )

    def ndarray(self, value: np.ndarray | np.generic, path: str) -> dict[str, Any]:
        array = np.asarray(value, order="C")  # keeps 0-d shapes, unlike ascontiguousarray
        if array.dtype.hasobject or array.dtype.fields is not None:
            raise InvalidArgument(
                f"cannot checkpoint the numpy {array.dtype} array at {path}: object and "
                "structured dtypes are not supported"
            )
        little = array.dtype.newbyteorder("<")
        node = {
            "t": "ndarray" if isinstance(value, np.ndarray) else "npscalar",
            "dtype": little.str,
            "shape": list(array.shape),
        }
        raw: Any = array.astype(little, copy=False).reshape(-1).view(np.uint8)
        return self.data(node, memoryview(raw))

    def tensor(self, tensor: torch.Tensor, path: str) -> dict[str, Any]:
        torch = _import_torch()
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
            raise InvalidArgument(
                f"cannot checkpoint the {tensor.layout} tensor at {path}: only dense tensors "
                "with data are supported (convert it with .to_dense() first)"
            )
        flat = tensor.detach().resolve_conj().resolve_neg().to("cpu").contiguous().reshape(-1)
        node = {
            "t": "tensor",
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
            "device": str(tensor.device),
            "requires_grad": bool(tensor.requires_grad),
        }
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        buffer: Any = raw.numpy()
        return self.data(node, memoryview(buffer))

    def write(self) -> None:
        """Hash and store the big blobs in parallel, then one pack for the small ones."""

        def store(data: memoryview) -> str:
            return self.objects.put(data, digest(data), sync=False)

        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            keys = list(pool.map(store, [data for _, data in self.big]))
        for (node, data), key in zip(self.big, keys, strict=True):
            node.update(blob=key, nbytes=data.nbytes)
        if self.small:
            pack = bytearray()
            for node, data in self.small:
                node.update(offset=len(pack), nbytes=data.nbytes)
                pack += data
            key = self.objects.put(memoryview(pack), sync=False)
            for node, _ in self.small:
                node["pack"] = key
        self.objects.sync()


def encode_state(
    tree: Any, objects: ObjectStore, *, pack_below: int = PACK_BELOW
) -> tuple[dict[str, Any], int]:
    """Store the tree's arrays as blobs in ``objects``; return ``(manifest, array bytes)``.

    The manifest is JSON-serializable (strict JSON: no NaN literals) and refers to blobs that
    are durable when this returns. Tensors are copied to the CPU when they live elsewhere; the
    original device is recorded. Unsupported values raise :class:`InvalidArgument` naming
    their path, e.g. ``state['user']['best'][2]``, before anything is written.
    """
    if pack_below < 0:
        raise InvalidArgument(f"pack_below must be >= 0, got {pack_below}")
    encoder = _Encoder(objects, pack_below)
    root = encoder.encode(tree, "state")
    encoder.write()
    return {"format": FORMAT_VERSION, "root": root}, encoder.nbytes


# -- decoding ------------------------------------------------------------------------------


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every tagged node of a manifest tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            children = item.get("items", ())
            if item.get("t") == "dict":
                children = [pair[1] for pair in children]
            stack.extend(children)


class _Decoder:
    def __init__(self, objects: ObjectStore, label: str, map_location: str | None) -> None:
        self.objects = objects
        self.label = label
        self.map_location = map_location
        self.packs: dict[str, bytes] = {}
        self.preloaded: dict[str, Any] = {}

    def preload(self, root: Any) -> None:
        """Read every big tensor blob straight into a new tensor's memory, several at once."""
        torch = _import_torch()
        wanted = {
            n["blob"]: int(n["nbytes"])
            for n in _walk(root)
            if n.get("t") == "tensor" and "blob" in n and n["nbytes"]
        }

        def load(key: str) -> tuple[str, Any]:
            mapped = self.objects.map(key)
            if mapped is not None:
                if mapped.nbytes != wanted[key]:
                    raise CheckpointCorrupt(
                        f"blob {key} has {mapped.nbytes} bytes, the manifest says {wanted[key]}"
                    )
                return key, torch.frombuffer(mapped, dtype=torch.uint8)
            buffer = torch.empty(wanted[key], dtype=torch.uint8)
            self.objects.read_into(key, memoryview(buffer.numpy()))
            return key, buffer

        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            self.preloaded = dict(pool.map(load, wanted))

    def raw(self, node: dict[str, Any]) -> bytes | memoryview:
        nbytes = int(node["nbytes"])
        if "pack" in node:
            key = node["pack"]
            if key not in self.packs:
                self.packs[key] = self.objects.get(key)
            start = int(node["offset"])
            data: bytes | memoryview = memoryview(self.packs[key])[start : start + nbytes]
        else:
            data = self.objects.get(node["blob"])
        if len(data) != nbytes:
            raise CheckpointCorrupt(f"an entry has {len(data)} bytes, the manifest says {nbytes}")
        return data

    def decode(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        decoders: dict[str, Callable[[dict[str, Any]], Any]] = {
            "float": lambda n: float(n["v"]),
            "dict": lambda n: {k: self.decode(v) for k, v in n["items"]},
            "list": lambda n: [self.decode(v) for v in n["items"]],
            "tuple": lambda n: tuple(self.decode(v) for v in n["items"]),
            "bytes": lambda n: bytes(self.raw(n)),
            "ndarray": self.ndarray,
            "npscalar": lambda n: self.ndarray(n)[()],
            "tensor": self.tensor,
            "dtype": self.dtype,
            "device": lambda n: _import_torch().device(n["v"]),
        }
        kind = node.get("t")
        if kind not in decoders:
            raise CheckpointCorrupt(f"unknown entry kind {kind!r}")
        return decoders[kind](node)

    def ndarray(self, node: dict[str, Any]) -> np.ndarray:
        flat = np.frombuffer(self.raw(node), dtype=np.dtype(node["dtype"])).copy()  # writable
        return flat.reshape(node["shape"])

    def dtype(self, node: dict[str, Any]) -> Any:
        dtype = getattr(_import_torch(), node["v"], None)
        if dtype is None:
            raise CheckpointCorrupt(f"this torch has no dtype {node['v']!r}")
        return dtype

    def tensor(self, node: dict[str, Any]) -> Any:
        torch = _import_torch()
        dtype = self.dtype({"v": node["dtype"]})
        key = node.get("blob")
        if key in self.preloaded:
            raw = self.preloaded.pop(key)
        elif int(node["nbytes"]) == 0:
            raw = torch.empty(0, dtype=torch.uint8)
        else:
            raw = torch.frombuffer(bytearray(self.raw(node)), dtype=torch.uint8)  # one copy
        try:
            tensor = raw.view(dtype).reshape(node["shape"])
        except RuntimeError as e:
            raise CheckpointCorrupt(
                f"a {node['dtype']} tensor of shape {node['shape']} does not fit its "
                f"{raw.numel()} bytes"
            ) from e
        device = self.map_location or node.get("device", "cpu")
        if device != "cpu":
            tensor = tensor.to(device)
        if node.get("requires_grad") and (tensor.is_floating_point() or tensor.is_complex()):
            tensor.requires_grad_(True)
        return tensor


def decode_state(
    manifest: dict[str, Any],
    objects: ObjectStore,
    *,
    label: str = "?",
    map_location: str | None = "cpu",
) -> Any:
    """Rebuild the tree a manifest describes, verifying every blob it reads.

    Returns equal values of the original types (tuples stay tuples, int keys stay ints,
    tensors are bitwise equal, writable, on ``map_location``; ``None`` keeps the recorded
    device). Raises :class:`CheckpointCorrupt` naming ``label`` (say ``"c3 of run r1"``) when a
    blob is missing or altered, the manifest is malformed, or its format is unknown.
    """
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise CheckpointCorrupt(
            f"checkpoint {label} has format {version!r}; this Retune reads format "
            f"{FORMAT_VERSION}" + (" (upgrade Retune to restore it)" if newer else "")
        )
    root = manifest.get("root")
    decoder = _Decoder(objects, label, map_location)
    try:
        if any(n.get("t") == "tensor" for n in _walk(root)):
            decoder.preload(root)
        return decoder.decode(root)
    except CheckpointCorrupt as e:
        raise CheckpointCorrupt(f"checkpoint {label} cannot be restored: {e}") from e
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointCorrupt(
            f"checkpoint {label} cannot be restored: its manifest is malformed ({e!r})"
        ) from e


def manifest_hashes(manifest: dict[str, Any]) -> set[str]:
    """Every blob key a manifest refers to (what garbage collection must keep)."""
    keys: set[str] = set()
    for node in _walk(manifest.get("root")):
        for field in ("blob", "pack"):
            if field in node:
                keys.add(node[field])
    return keys


manifest_blobs = manifest_hashes  # the name the session and the CLI use
