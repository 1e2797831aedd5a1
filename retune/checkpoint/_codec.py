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
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from retune.checkpoint._objects import ObjectStore, digest
from retune.errors import CheckpointCorrupt, InvalidArgument

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT_VERSION",
    "EncodedState",
    "decode_state",
    "encode_in_memory",
    "encode_state",
    "manifest_blobs",
    "manifest_hashes",
]

FORMAT_VERSION = 1
PACK_BELOW = 64 * 1024
WRITERS = 4
"""Threads that hash and write the blobs of a save by default (and copy them, at most)."""
PARALLEL_COPY_BYTES = 16 * 1024 * 1024
"""Below this many bytes to copy, a save's copies run on the calling thread alone."""

# What a manifest may name. Anything else is a corrupt checkpoint: a name is never looked up
# as an attribute of a module, so a manifest cannot reach ``torch.load`` or ``os``.
_TORCH_DTYPES = frozenset(
    ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
     "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
     "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu"]
)  # fmt: skip
_NUMPY_DTYPE = re.compile(r"[<|]?(b1|[iu][1248]|f(2|4|8|12|16)|c(8|16|24|32)|[US][0-9]{1,9})")
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|meta|privateuseone)(:[0-9]{1,4})?")
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_MAX_DIMS = 64


def _loaded_torch() -> Any:
    """torch if something already imported it (then tensors may be in the tree), else None."""
    return sys.modules.get("torch")


def _import_torch() -> Any:
    import torch

    return torch


# -- encoding ------------------------------------------------------------------------------


class Staging:
    """CPU buffers that consecutive copying encodes reuse (phase 1 of background saves).

    Copying into memory already in use is a plain memcpy; copying into fresh memory first
    takes a page fault per 4 KB page, which made phase 1 of a 202 MB state about twice as long
    in a training loop (docs/benchmarks.md, "Checkpoint stall"). Buffers match by kind, dtype
    and element count. An :class:`EncodedState` built with this takes its buffers here and
    gives them all back with :meth:`EncodedState.release`, once its bytes are written or
    abandoned; buffers an encode did not take (an array whose size changed) are freed then.
    So between saves this holds one copy of the last save's arrays, no more.

    Not thread-safe: one encode or release at a time (a checkpointer has one save in flight).
    """

    def __init__(self) -> None:
        self._free: dict[tuple[str, str, int], list[Any]] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held for the next save."""
        return sum(_nbytes(b) for buffers in self._free.values() for b in buffers)

    def tensor_like(self, source: torch.Tensor) -> torch.Tensor:
        """A CPU tensor of ``source``'s dtype and element count (1-D), contents undefined."""
        buffer: torch.Tensor | None = self._take(source)
        return _import_torch().empty_like(source) if buffer is None else buffer

    def array_like(self, source: np.ndarray) -> np.ndarray:
        """A 1-D array of ``source``'s dtype and size, contents undefined."""
        buffer: np.ndarray | None = self._take(source)
        return np.empty_like(source) if buffer is None else buffer

    def _take(self, source: Any) -> Any:
        """A held buffer matching ``source``, or None."""
        pool = self._free.get(_key(source))
        return pool.pop() if pool else None

    def clear(self) -> None:
        """Free every buffer held (the next encode allocates fresh ones)."""
        self._free.clear()

    def give_back(self, buffers: list[Any]) -> None:
        for buffer in buffers:
            self._free.setdefault(_key(buffer), []).append(buffer)


def _key(buffer: Any) -> tuple[str, str, int]:
    """What a staging buffer must match: kind, dtype and element count."""
    if isinstance(buffer, np.ndarray):
        return ("ndarray", buffer.dtype.str, buffer.size)
    return ("tensor", str(buffer.dtype), buffer.numel())


def _nbytes(buffer: Any) -> int:
    if isinstance(buffer, np.ndarray):
        return int(buffer.nbytes)
    return int(buffer.numel() * buffer.element_size())


class EncodedState:
    """A state tree encoded in memory (phase 1 of a save): the manifest's nodes, and the bytes
    of every array, not yet hashed or stored. :meth:`write` stores them (phase 2).

    Built with ``copy=True`` it holds its own copy of every array (tensors cloned to CPU
    memory: fresh, or ``staging``'s buffers, given back by :meth:`release`), so the live
    objects may change while :meth:`write` runs on another thread.
    """

    def __init__(self, pack_below: int, copy: bool, staging: Staging | None = None) -> None:
        self.pack_below = pack_below
        self.copy = copy
        self.root: Any = None
        self.big: list[tuple[dict[str, Any], memoryview]] = []
        self.small: list[tuple[dict[str, Any], memoryview]] = []
        self.nbytes = 0
        self._copies: list[tuple[Callable[[], object], int]] = []  # (copy, bytes), not yet run
        self._staging = staging
        self._staged: list[Any] = []  # staging's buffers this state's bytes live in

    def release(self) -> None:
        """Give the staging buffers back for the next save. Call it once the bytes are
        written (or will not be): this state must not be used afterwards."""
        staged, self._staged = self._staged, []
        self.big, self.small, self._copies = [], [], []
        if self._staging is not None:
            self._staging.give_back(staged)

    def _copy_later(self, copy: Callable[[], object], nbytes: int) -> None:
        self._copies.append((copy, nbytes))

    def finish_copies(self) -> None:
        """Run the copies the walk queued: the large ones on several threads (torch and numpy
        release the GIL while they copy), since training waits for them either way."""
        copies, self._copies = self._copies, []
        total = sum(nbytes for _, nbytes in copies)
        if len(copies) < 2 or total < PARALLEL_COPY_BYTES:
            for copy, _ in copies:
                copy()
            return
        copies.sort(key=lambda item: -item[1])  # the largest first: the threads end together
        with ThreadPoolExecutor(max_workers=min(WRITERS, os.cpu_count() or 1)) as pool:
            for future in [pool.submit(copy) for copy, _ in copies]:
                future.result()

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
                name = str(value).removeprefix("torch.")
                if name not in _TORCH_DTYPES:
                    raise InvalidArgument(f"cannot checkpoint the dtype {value} at {path}")
                return {"t": "dtype", "v": name}
            if isinstance(value, torch.device):
                return {"t": "device", "v": str(value)}
        raise InvalidArgument(
            f"cannot checkpoint {type(value).__name__} at {path}: state may hold tensors, "
            "arrays, numbers, strings, bytes, dtypes, devices, and lists/tuples/dicts of them"
        )

    def ndarray(self, value: np.ndarray | np.generic, path: str) -> dict[str, Any]:
        array = np.asarray(value, order="C")  # keeps 0-d shapes, unlike ascontiguousarray
        little = array.dtype.newbyteorder("<")
        if not _NUMPY_DTYPE.fullmatch(little.str) or little.hasobject or little.fields:
            raise InvalidArgument(
                f"cannot checkpoint the numpy {array.dtype} array at {path}: only bool, "
                "integer, float, complex and fixed-width string dtypes are supported"
            )
        node = {
            "t": "ndarray" if isinstance(value, np.ndarray) else "npscalar",
            "dtype": little.str,
            "shape": list(array.shape),
        }
        raw: Any = array.astype(little, copy=False).reshape(-1).view(np.uint8)
        if self.copy:
            if self._staging is None:
                source, raw = raw, np.empty_like(raw)
            else:
                source, raw = raw, self._staging.array_like(raw)
                self._staged.append(raw)
            self._copy_later(lambda: np.copyto(raw, source), raw.nbytes)
        return self.data(node, memoryview(raw))

    def tensor(self, tensor: torch.Tensor, path: str) -> dict[str, Any]:
        torch = _import_torch()
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_meta:
            raise InvalidArgument(
                f"cannot checkpoint the {tensor.layout} tensor at {path}: only dense tensors "
                "with data are supported (convert it with .to_dense() first)"
            )
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _TORCH_DTYPES:
            raise InvalidArgument(f"cannot checkpoint the {tensor.dtype} tensor at {path}")
        flat = tensor.detach().resolve_conj().resolve_neg().to("cpu").contiguous().reshape(-1)
        node = {
            "t": "tensor",
            "dtype": dtype,
            "shape": list(tensor.shape),
            "device": str(tensor.device),
            "requires_grad": bool(tensor.requires_grad),
        }
        if self.copy and flat.numel() and _shares_memory(flat, tensor):
            if self._staging is None:
                source, flat = flat, torch.empty_like(flat)
            else:
                source, flat = flat, self._staging.tensor_like(flat)
                self._staged.append(flat)
            self._copy_later(lambda: flat.copy_(source), flat.numel() * flat.element_size())
        raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
        buffer: Any = raw.numpy()
        return self.data(node, memoryview(buffer))

    def write(self, objects: ObjectStore, *, workers: int = WRITERS) -> tuple[dict[str, Any], int]:
        """Hash and store the big blobs, ``workers`` at a time, then one pack for the small
        ones; returns ``(manifest, array bytes)``. The blobs are durable when this returns.
        Call it once.

        Several workers finish sooner when nothing else needs the CPU (a synchronous save:
        training waits for it); one worker (``workers=1``, in the calling thread) takes the
        least CPU from a training that goes on beside it (a background save).
        """
        if workers < 1:
            raise InvalidArgument(f"workers must be at least 1, got {workers}")

        def store(data: memoryview) -> str:
            return objects.put(data, digest(data), sync=False)

        blobs = [data for _, data in self.big]
        if workers == 1 or len(blobs) < 2:
            keys = [store(data) for data in blobs]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                keys = list(pool.map(store, blobs))
        for (node, data), key in zip(self.big, keys, strict=True):
            node.update(blob=key, nbytes=data.nbytes)
        if self.small:
            pack = bytearray()
            for node, data in self.small:
                node.update(offset=len(pack), nbytes=data.nbytes)
                pack += data
            key = objects.put(memoryview(pack), sync=False)
            for node, _ in self.small:
                node["pack"] = key
        objects.sync()
        self.big, self.small = [], []  # the copies are no longer needed
        return {"format": FORMAT_VERSION, "root": self.root}, self.nbytes


def _shares_memory(flat: torch.Tensor, tensor: torch.Tensor) -> bool:
    """Whether ``flat`` (the bytes about to be kept) still lives in ``tensor``'s storage."""
    return bool(flat.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr())


def encode_in_memory(
    tree: Any, *, copy: bool = True, pack_below: int = PACK_BELOW, staging: Staging | None = None
) -> EncodedState:
    """Phase 1 of a save: walk ``tree`` and keep its structure and array bytes in memory.

    With ``copy`` (the default) every array's bytes are copied (tensors on other devices are
    copied to the CPU, as :func:`encode_state` does), so the result does not change when the
    live tensors do. Unsupported values raise :class:`InvalidArgument` naming their path.
    Nothing is written: :meth:`EncodedState.write` does that.
    """
    if pack_below < 0:
        raise InvalidArgument(f"pack_below must be >= 0, got {pack_below}")
    encoded = EncodedState(pack_below, copy, staging if copy else None)
    try:
        encoded.root = encoded.encode(tree, "state")
        encoded.finish_copies()
    except BaseException:
        encoded.release()  # the buffers taken so far serve the next save
        raise
    if staging is not None and copy:
        staging.clear()  # what this save did not take matches nothing any more: sizes changed
    return encoded


def encode_state(
    tree: Any, objects: ObjectStore, *, pack_below: int = PACK_BELOW
) -> tuple[dict[str, Any], int]:
    """Store the tree's arrays as blobs in ``objects``; return ``(manifest, array bytes)``.

    The manifest is JSON-serializable (strict JSON: no NaN literals) and refers to blobs that
    are durable when this returns. Tensors are copied to the CPU when they live elsewhere; the
    original device is recorded. Unsupported values raise :class:`InvalidArgument` naming
    their path, e.g. ``state['user']['best'][2]``, before anything is written.
    """
    return encode_in_memory(tree, copy=False, pack_below=pack_below).write(objects)


# -- decoding ------------------------------------------------------------------------------


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every tagged node of a manifest tree, depth first."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            children = item.get("items", ())
            if not isinstance(children, list):
                continue
            if item.get("t") == "dict":
                children = [p[1] for p in children if isinstance(p, list) and len(p) == 2]
            stack.extend(children)


def _corrupt(message: str) -> CheckpointCorrupt:
    return CheckpointCorrupt(message)


def _count(node: dict[str, Any], field: str) -> int:
    """A non-negative int field of a manifest entry."""
    value = node.get(field)
    if type(value) is not int or value < 0:
        raise _corrupt(f"an entry's {field} is {value!r}, not an int >= 0")
    return value


def _shape(node: dict[str, Any]) -> tuple[int, ...]:
    shape = node.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise _corrupt(f"an entry's shape is {shape!r}, not a list of at most {_MAX_DIMS} ints")
    for size in shape:
        if type(size) is not int or size < 0:
            raise _corrupt(f"an entry's shape {shape!r} has a size that is not an int >= 0")
    return tuple(shape)


def _torch_dtype(name: Any) -> Any:
    if not isinstance(name, str) or name not in _TORCH_DTYPES:
        raise _corrupt(f"{name!r} is not a torch dtype a checkpoint may hold")
    dtype = getattr(_import_torch(), name, None)
    if dtype is None:
        raise _corrupt(f"this torch has no dtype {name!r}")
    return dtype


def _numpy_dtype(name: Any) -> np.dtype[Any]:
    if not isinstance(name, str) or not _NUMPY_DTYPE.fullmatch(name):
        raise _corrupt(f"{name!r} is not a numpy dtype a checkpoint may hold")
    return np.dtype(name)


def _expected_nbytes(node: dict[str, Any], shape: tuple[int, ...], itemsize: int) -> int:
    """The entry's ``nbytes``, checked against its shape and dtype before anything is read."""
    nbytes = _count(node, "nbytes")
    expected = math.prod(shape) * itemsize
    if nbytes != expected:
        raise _corrupt(
            f"a {node.get('dtype')} entry of shape {list(shape)} needs {expected} bytes, "
            f"the manifest says {nbytes}: it does not fit"
        )
    return nbytes


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
        wanted: dict[str, int] = {}
        for n in _walk(root):
            if n.get("t") == "tensor" and "blob" in n:
                key, nbytes = n["blob"], _count(n, "nbytes")
                if not isinstance(key, str):
                    raise _corrupt(f"an entry's blob is {key!r}, not a key")
                if nbytes and wanted.setdefault(key, nbytes) != nbytes:
                    raise _corrupt(f"entries disagree on the size of blob {key}")
        for key, nbytes in wanted.items():  # before allocating: a size the blob cannot back
            actual = self.objects.size(key)
            if actual != nbytes:
                raise _corrupt(f"blob {key} has {actual} bytes, the manifest says {nbytes}")

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

        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            self.preloaded = dict(pool.map(load, wanted))

    def raw(self, node: dict[str, Any]) -> bytes | memoryview:
        nbytes = _count(node, "nbytes")
        key = node.get("pack", node.get("blob"))
        if not isinstance(key, str):
            raise _corrupt(f"an entry's blob is {key!r}, not a key")
        if "pack" in node:
            if key not in self.packs:
                self.packs[key] = self.objects.get(key)
            start = _count(node, "offset")
            if start + nbytes > len(self.packs[key]):
                raise _corrupt(
                    f"an entry at bytes {start}..{start + nbytes} lies outside its "
                    f"{len(self.packs[key])}-byte pack"
                )
            data: bytes | memoryview = memoryview(self.packs[key])[start : start + nbytes]
        else:
            actual = self.objects.size(key)  # before reading it: the size must agree
            if actual != nbytes:
                raise _corrupt(f"blob {key} has {actual} bytes, the manifest says {nbytes}")
            data = self.objects.get(key)
        if len(data) != nbytes:
            raise _corrupt(f"an entry has {len(data)} bytes, the manifest says {nbytes}")
        return data

    def decode(self, node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        decoders: dict[str, Callable[[dict[str, Any]], Any]] = {
            "float": self.non_finite,
            "dict": self.mapping,
            "list": lambda n: [self.decode(v) for v in self.items(n)],
            "tuple": lambda n: tuple(self.decode(v) for v in self.items(n)),
            "bytes": lambda n: bytes(self.raw(n)),
            "ndarray": self.ndarray,
            "npscalar": lambda n: self.ndarray(n)[()],
            "tensor": self.tensor,
            "dtype": lambda n: _torch_dtype(n.get("v")),
            "device": lambda n: _import_torch().device(self.device(n.get("v"))),
        }
        kind = node.get("t")
        if not isinstance(kind, str) or kind not in decoders:
            raise _corrupt(f"unknown entry kind {kind!r}")
        return decoders[kind](node)

    @staticmethod
    def items(node: dict[str, Any]) -> list[Any]:
        items = node.get("items")
        if not isinstance(items, list):
            raise _corrupt(f"a {node.get('t')} entry has no list of items")
        return items

    def mapping(self, node: dict[str, Any]) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        for pair in self.items(node):
            if not isinstance(pair, list) or len(pair) != 2:
                raise _corrupt("a dict entry's item is not a [key, value] pair")
            key = pair[0]
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise _corrupt(f"a dict key is {key!r}: keys are str or int")
            result[key] = self.decode(pair[1])
        return result

    @staticmethod
    def non_finite(node: dict[str, Any]) -> float:
        value = node.get("v")
        if not isinstance(value, str) or value not in _NON_FINITE:
            raise _corrupt(f"a float entry holds {value!r}, not nan, inf or -inf")
        return _NON_FINITE[value]

    @staticmethod
    def device(value: Any) -> str:
        if not isinstance(value, str) or not _DEVICE.fullmatch(value):
            raise _corrupt(f"{value!r} is not a device")
        return value

    def ndarray(self, node: dict[str, Any]) -> np.ndarray:
        dtype, shape = _numpy_dtype(node.get("dtype")), _shape(node)
        _expected_nbytes(node, shape, dtype.itemsize)
        flat = np.frombuffer(self.raw(node), dtype=dtype).copy()  # writable
        return flat.reshape(shape)

    def tensor(self, node: dict[str, Any]) -> Any:
        torch = _import_torch()
        dtype, shape = _torch_dtype(node.get("dtype")), _shape(node)
        itemsize = torch.empty((), dtype=dtype).element_size()
        nbytes = _expected_nbytes(node, shape, itemsize)
        key = node.get("blob")
        if isinstance(key, str) and key in self.preloaded:
            raw = self.preloaded.pop(key)
        elif nbytes == 0:
            raw = torch.empty(0, dtype=torch.uint8)
        else:
            raw = torch.frombuffer(bytearray(self.raw(node)), dtype=torch.uint8)  # one copy
        try:
            tensor = raw.view(dtype).reshape(shape)
        except RuntimeError as e:
            raise _corrupt(
                f"a {node['dtype']} tensor of shape {list(shape)} does not fit its "
                f"{raw.numel()} bytes"
            ) from e
        recorded = self.device(node.get("device", "cpu"))  # checked even when not used
        device = self.map_location or recorded
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
    except (
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        OverflowError,
        RuntimeError,  # includes RecursionError: a manifest nested absurdly deep
        MemoryError,
    ) as e:
        raise CheckpointCorrupt(
            f"checkpoint {label} cannot be restored: its manifest is malformed ({e!r})"
        ) from e


def manifest_hashes(manifest: Any) -> set[str]:
    """Every blob key a manifest refers to (what garbage collection must keep); tolerant of
    malformed manifests (the keys it can find are returned, never an error)."""
    keys: set[str] = set()
    if not isinstance(manifest, dict):
        return keys
    for node in _walk(manifest.get("root")):
        for field in ("blob", "pack"):
            if isinstance(node.get(field), str):
                keys.add(node[field])
    return keys


manifest_blobs = manifest_hashes  # the name the session and the CLI use
