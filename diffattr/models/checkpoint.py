"""Writing safetensors files that are the same bytes in every process, atomically.

Why this exists: safetensors keeps a file's ``__metadata__`` in a Rust ``HashMap``, whose iteration
order is seeded per process, so ``safetensors.torch.save_file`` writes the same tensors and metadata
with the metadata keys in another order in each process (issue 14: a 4-key dict came out in 3
different orders in 3 processes), and two runs of one config gave checkpoints that differ in their
header. :func:`save_safetensors` serialises with ``safetensors.torch.save`` and rewrites the header
canonically (:func:`canonical_header`); the tensor bytes are untouched.

The format (safetensors' spec): an 8-byte little-endian unsigned header length N, N bytes of a JSON
object — ``__metadata__`` (str → str) and, per tensor, ``{"dtype", "shape", "data_offsets"}`` with
offsets relative to the end of the header — then the tensor bytes. Each entry carries its own
offsets, so the order of the header's keys carries no information and may be changed; the header may
end in spaces, which pad N to a multiple of 8 (the alignment safetensors itself writes). Reading needs
nothing from here: ``safetensors.torch.load_file`` and ``safe_open`` read these files, and files
written before this module, as they are.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

import torch

from diffattr.atomic import atomic_path

HEADER_ALIGNMENT = 8
"""The header length is padded (with spaces) to a multiple of this, as safetensors does."""


def canonical_header(header: Mapping) -> bytes:
    """The header JSON with every object's keys sorted (``__metadata__``'s too), compact separators,
    UTF-8, padded with spaces to a multiple of :data:`HEADER_ALIGNMENT` bytes."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return text + b" " * (-len(text) % HEADER_ALIGNMENT)


def canonical_bytes(blob: bytes) -> tuple[bytes, memoryview]:
    """A serialised safetensors file split into its new start — the 8-byte length and
    :func:`canonical_header` of its header — and its tensor bytes, unchanged (a view, not a copy)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = canonical_header(json.loads(blob[8 : 8 + length].decode("utf-8")))
    return struct.pack("<Q", len(header)) + header, memoryview(blob)[8 + length :]


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (CPU, contiguous) and string ``metadata`` to ``path`` as safetensors with a
    canonical header (:func:`canonical_bytes`): the same inputs give the same bytes in any process.
    Written under a temporary name and renamed when complete (:func:`diffattr.atomic.atomic_path`)."""
    from safetensors.torch import save

    start, data = canonical_bytes(save(dict(tensors), metadata=dict(metadata) if metadata is not None else None))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(start)
            f.write(data)
