"""Checkpoints: the full training state as raw tensor blobs plus a JSON manifest, no pickle.

* :class:`ObjectStore` — content-addressed blobs at a folder or any fsspec URL.
* :func:`encode_state` / :func:`decode_state` — state tree <-> manifest + blobs
  (:func:`encode_in_memory` + :meth:`EncodedState.write`: the same in two phases);
  :func:`manifest_hashes` — the blobs a manifest refers to.
* :func:`collect_garbage` — delete blobs no checkpoint needs (``retune gc``), safely.
* :func:`iterate_batches` / :func:`num_batches` / :func:`epoch_seed` — the seeded per-epoch
  data order that lets a restore jump to any (epoch, batch).
* :func:`resolve_checkpoint` — what ``c3``, ``latest``, ``n3`` and ``n3@1200`` name.

Importing this package never imports torch.
"""

from __future__ import annotations

from retune.checkpoint._codec import (
    FORMAT_VERSION,
    WRITERS,
    EncodedState,
    Staging,
    decode_state,
    encode_in_memory,
    encode_state,
    manifest_blobs,
    manifest_hashes,
)
from retune.checkpoint._gc import DEFAULT_GRACE_SECONDS, GcReport, collect_garbage
from retune.checkpoint._loop import epoch_seed, iterate_batches, num_batches
from retune.checkpoint._objects import ObjectStore, digest
from retune.checkpoint._targets import NamedTarget, check_target, resolve_checkpoint

__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "FORMAT_VERSION",
    "WRITERS",
    "EncodedState",
    "GcReport",
    "NamedTarget",
    "ObjectStore",
    "Staging",
    "check_target",
    "collect_garbage",
    "decode_state",
    "digest",
    "encode_in_memory",
    "encode_state",
    "epoch_seed",
    "iterate_batches",
    "manifest_blobs",
    "manifest_hashes",
    "num_batches",
    "resolve_checkpoint",
]
