"""Seeded random projection φ(x) = Pᵀ g(x) ∈ R^k (docs/methods.md §0 "Projection", §2.10, §7.3).

P (p × k) is never stored: entry P[i, j] is a pure function of (seed, i, j) through a 32-bit
integer hash, so any block of rows can be generated on any device, in any order, and the same seed
gives the same matrix on CPU and CUDA:

- ``key_i = h(h(seed ⊕ C₁) + i)`` per parameter row i, ``col_j = h(j ⊕ C₂)`` per column j;
- ``gaussian``: ``P[i, j] = Φ⁻¹(u)`` with ``u = (2·(h(key_i ⊕ col_j) >> 9) + 1) / 2²⁴``, an odd
  multiple of 2⁻²⁴ (exact in float32), so N(0, 1) up to the 24-bit quantisation of u;
- ``rademacher``: ``P[i, j] = ±1`` from bit (j mod 32) of ``h(key_i ⊕ col_{⌊j/32⌋})``, one hash per
  32 entries.

- ``sketch`` (for models too large to regenerate a p × k matrix per batch, e.g. the 36 M-parameter
  CIFAR UNet on CPU): ``P = S·G``, a CountSketch S (p × m, ``m = sketch_dim``: row i has the single
  entry ``s_i = ±1`` in column ``b_i``, with ``b_i = h(key_i ⊕ C₃) mod m`` and ``s_i`` the top bit of
  ``h(key_i ⊕ C₄)``) followed by the ``gaussian`` matrix G (m × k, same seed). Sᵀg costs O(p) per
  sample instead of O(p·k) generated entries, G is small enough to build once. CountSketch is
  unbiased, E[SSᵀ] = I, so E[φ(x)ᵀφ(x')] = k·g(x)ᵀg(x') as for ``gaussian``; its extra relative
  variance is about 1/m against the Gaussian step's 1/k, i.e. negligible for m ≫ k. Truncation to
  k' columns holds at a fixed m.

``h`` is the "lowbias32" mixer (xor-shift-multiply). There is **no 1/√k scaling**, as in the TRAK
library (§0), so E[φ(x)ᵀφ(x')] = k·g(x)ᵀg(x'). Projecting to the first k' < k columns equals a
k'-dimensional projection with the same seed (§7.3 "truncation").

Two interchangeable generators compute the same integers: numpy (fast on CPU, used there) and
torch integer ops (used on CUDA; the same code runs on CPU in the tests, as the CUDA path's twin).
The CPU path builds the matrix once per process (generation, not the matmul, is the CPU
bottleneck); the CUDA path regenerates blocks on the device when the matrix does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_C_SEED = 0x9E3779B9
_C_COL = 0x85EBCA6B
_C_BUCKET = 0xC2B2AE35
_C_SIGN = 0x27D4EB2F
PROJECTION_TYPES = ("gaussian", "rademacher", "sketch")
DENSE_TYPES = ("gaussian", "rademacher")
_SIGNS = np.asarray([-1.0, 1.0], dtype=np.float32)
"""±1 of a Rademacher entry's bit (0 → −1, 1 → +1), as :func:`_signs_from_words` maps it."""


def _h32_np(x: np.ndarray) -> np.ndarray:
    """lowbias32 on a fresh uint32 array, in place."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(_M1)
    x ^= x >> np.uint32(15)
    x *= np.uint32(_M2)
    x ^= x >> np.uint32(16)
    return x


def _signed(v: int) -> int:
    return v - (1 << 32) if v >= 1 << 31 else v


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int32 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (32 - s)) - 1)


def _h32_torch(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shr(x, 16)
    x = x * _signed(_M1)
    x = x ^ _shr(x, 15)
    x = x * _signed(_M2)
    return x ^ _shr(x, 16)


def _seed_key(seed: int) -> np.uint32:
    return _h32_np(np.asarray([(seed ^ _C_SEED) & 0xFFFFFFFF], dtype=np.uint32))[0]


def _row_keys_np(seed: int, start: int, stop: int) -> np.ndarray:
    return _h32_np(np.arange(start, stop, dtype=np.uint64).astype(np.uint32) + _seed_key(seed))


def _col_keys_np(n: int) -> np.ndarray:
    return _h32_np(np.arange(n, dtype=np.uint32) ^ np.uint32(_C_COL))


def _gaussian_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹ of the odd multiple of 2⁻²⁴ given by the top 23 bits (float32, any device)."""
    top = _shr(bits, 9) if bits.dtype == torch.int32 else bits >> 9
    u = (top.to(torch.float32) * 2 + 1) * 2.0**-24
    return torch.special.ndtri(u)


def _signs_from_words(words: torch.Tensor, k: int) -> torch.Tensor:
    """Expand (rows, ⌈k/32⌉) hash words into (rows, k) ±1 float32."""
    shifts = torch.arange(32, device=words.device, dtype=torch.int64)
    bits = (words.to(torch.int64).unsqueeze(-1) >> shifts) & 1
    return (bits.reshape(words.shape[0], -1)[:, :k].to(torch.float32) * 2 - 1)


def block_numpy(kind: str, seed: int, start: int, stop: int, k: int, chunk_rows: int = 64) -> torch.Tensor:
    """Rows [start, stop) of P as a float32 CPU tensor, hashed with numpy in cache-sized row chunks
    (≈2× faster than whole-block passes; generation is the CPU path's bottleneck)."""
    if kind not in DENSE_TYPES:
        raise ValueError(f"unknown dense projection type {kind!r}; choose one of {DENSE_TYPES}")
    rows = _row_keys_np(seed, start, stop)[:, None]
    out = torch.empty(stop - start, k, dtype=torch.float32)
    cols = _col_keys_np(k if kind == "gaussian" else (k + 31) // 32)[None, :]
    for a in range(0, stop - start, chunk_rows):
        bits = _h32_np(rows[a : a + chunk_rows] ^ cols)
        if kind == "gaussian":
            bits >>= np.uint32(9)
            bits <<= np.uint32(1)
            bits |= np.uint32(1)
            torch.special.ndtri(torch.from_numpy(bits.astype(np.float32)).mul_(2.0**-24), out=out[a : a + chunk_rows])
        else:  # bit j of word w is bit j % 8 of its byte j // 8 (little-endian): unpackbits, no int64 shifts
            signs = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :k]
            out[a : a + chunk_rows] = torch.from_numpy(_SIGNS[signs])
    return out


def block_torch(kind: str, seed: int, start: int, stop: int, k: int, device: str | torch.device) -> torch.Tensor:
    """Rows [start, stop) of P as float32 on ``device``, hashed with torch int32 ops (the CUDA path)."""
    seed_key = int(_seed_key(seed).astype(np.int64))
    rows = _h32_torch(torch.arange(start, stop, device=device, dtype=torch.int64).to(torch.int32) + _signed(seed_key))
    n_cols = k if kind == "gaussian" else (k + 31) // 32
    cols = _h32_torch(torch.arange(n_cols, device=device, dtype=torch.int32) ^ _signed(_C_COL))
    bits = _h32_torch(rows[:, None] ^ cols[None, :])
    if kind == "gaussian":
        return _gaussian_from_bits(bits)
    if kind == "rademacher":
        return _signs_from_words(bits.to(torch.int64) & 0xFFFFFFFF, k)
    raise ValueError(f"unknown dense projection type {kind!r}; choose one of {DENSE_TYPES}")


def sketch_numpy(seed: int, start: int, stop: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CountSketch rows [start, stop): bucket b_i ∈ [0, m) (int64) and sign s_i = ±1 (float32), numpy hash."""
    keys = _row_keys_np(seed, start, stop)
    buckets = _h32_np(keys ^ np.uint32(_C_BUCKET)) % np.uint32(m)
    signs = _SIGNS[_h32_np(keys ^ np.uint32(_C_SIGN)) >> np.uint32(31)]
    return torch.from_numpy(buckets.astype(np.int64)), torch.from_numpy(signs)


def sketch_torch(seed: int, start: int, stop: int, m: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sketch_numpy`'s twin with torch int32 ops on ``device`` (the CUDA path)."""
    seed_key = int(_seed_key(seed).astype(np.int64))
    keys = _h32_torch(torch.arange(start, stop, device=device, dtype=torch.int64).to(torch.int32) + _signed(seed_key))
    buckets = (_h32_torch(keys ^ _signed(_C_BUCKET)).to(torch.int64) & 0xFFFFFFFF) % m
    signs = _shr(_h32_torch(keys ^ _signed(_C_SIGN)), 31).to(torch.float32) * 2 - 1
    return buckets, signs


def fast_matmul(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``device`` multiplies ``dtype`` natively: always for float32 and on CUDA; on the CPU,
    bf16 / fp16 only where oneDNN reports the instructions (AVX-512 BF16 / FP16, AMX)."""
    if dtype == torch.float32 or device.type != "cpu":
        return True
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


@dataclass(frozen=True)
class ProjectionConfig:
    """A feature spec's ``projection`` block; ``dim: null`` means no projection (exact gradients)."""

    type: str = "gaussian"
    dim: int | None = 2048
    seed: int = 42
    dtype: str = "float32"
    block_rows: int = 16384
    sketch_dim: int = 131072
    """m of the ``sketch`` type: the CountSketch width before the Gaussian step (ignored otherwise)."""


class Projector:
    """Applies Pᵀ to batches of flattened gradients (B, p) → (B, k) float32.

    The matrix is materialised once (in ``dtype``) when it fits in ``max_cached_bytes`` — the CPU
    path; otherwise row blocks are regenerated on the device for every batch — the CUDA path for
    large models. Both give the same numbers up to float rounding. The ``sketch`` type sums the
    signed gradient entries into m buckets (row chunks of ``sketch_rows``, hashed on the fly) and
    hands the (B, m) result to a ``gaussian`` Projector over m "parameters".
    """

    sketch_rows = 1 << 20

    def __init__(self, config: ProjectionConfig, n_params: int, device: str = "cpu",
                 max_cached_bytes: int = 4 << 30) -> None:
        if config.type not in PROJECTION_TYPES:
            raise ValueError(f"unknown projection type {config.type!r}; choose one of {PROJECTION_TYPES}")
        self.config = config
        self.n_params = n_params
        self.device = torch.device(device)
        self.dtype = getattr(torch, config.dtype)
        self.matrix: torch.Tensor | None = None
        self.inner: Projector | None = None
        if config.type == "sketch" and config.dim is not None:
            inner = ProjectionConfig("gaussian", config.dim, config.seed, config.dtype, config.block_rows)
            self.inner = Projector(inner, config.sketch_dim, device, max_cached_bytes)
            return
        if config.dim is not None and n_params * config.dim * self.dtype.itemsize <= max_cached_bytes:
            # a CPU without a native low-precision product keeps the dtype-rounded entries in float32
            # when they fit (the same numbers, a fast product), else in dtype, upcast per block
            store = self.dtype
            if not fast_matmul(self.device, self.dtype) and n_params * config.dim * 4 <= max_cached_bytes:
                store = torch.float32
            self.matrix = torch.empty(n_params, config.dim, dtype=store, device=self.device)
            for start, stop in self._blocks():
                self.matrix[start:stop] = self._block(start, stop).to(self.dtype)

    def _blocks(self) -> list[tuple[int, int]]:
        step = self.config.block_rows
        return [(a, min(a + step, self.n_params)) for a in range(0, self.n_params, step)]

    def _block(self, start: int, stop: int) -> torch.Tensor:
        c = self.config
        if self.device.type == "cpu":
            return block_numpy(c.type, c.seed, start, stop, c.dim)
        return block_torch(c.type, c.seed, start, stop, c.dim, self.device)

    @property
    def dim(self) -> int:
        return self.n_params if self.config.dim is None else self.config.dim

    def __call__(self, grads: torch.Tensor) -> torch.Tensor:
        if grads.shape[-1] != self.n_params:
            raise ValueError(f"gradients have {grads.shape[-1]} entries, the projection expects {self.n_params}")
        if self.config.dim is None:
            return grads.to(torch.float32)
        if self.inner is not None:
            return self.inner(self.count_sketch(grads))
        if self.matrix is not None:
            if self.matrix.dtype == torch.float32 and self.dtype != torch.float32:
                return grads.to(self.dtype).to(torch.float32) @ self.matrix
            if not fast_matmul(self.device, self.dtype):
                return self._upcast_matmul(grads)
            return (grads.to(self.dtype) @ self.matrix).to(torch.float32)
        out = torch.zeros(grads.shape[0], self.config.dim, device=grads.device, dtype=torch.float32)
        compute = self.dtype if fast_matmul(self.device, self.dtype) else torch.float32
        for start, stop in self._blocks():
            block = self._block(start, stop).to(self.dtype).to(compute)
            out += (grads[:, start:stop].to(self.dtype).to(compute) @ block).to(torch.float32)
        return out

    def _upcast_matmul(self, grads: torch.Tensor) -> torch.Tensor:
        """grads (rounded to ``dtype``, as the native product would) times the stored matrix, in float32
        row block by row block: for a CPU without native bf16/fp16 matmul, whose low-precision product
        is 10–100× slower than float32 (measured: 79 s against 0.63 s for 16 × 131 072 · 131 072 × 2 048)."""
        x = grads.to(self.dtype)
        out = torch.zeros(grads.shape[0], self.config.dim, device=grads.device, dtype=torch.float32)
        for start, stop in self._blocks():
            out += x[:, start:stop].to(torch.float32) @ self.matrix[start:stop].to(torch.float32)
        return out

    def count_sketch(self, grads: torch.Tensor) -> torch.Tensor:
        """Sᵀg for each row of ``grads``: (B, p) → (B, m) float32, the buckets hashed chunk by chunk."""
        c = self.config
        out = torch.zeros(grads.shape[0], c.sketch_dim, device=grads.device, dtype=torch.float32)
        for start in range(0, self.n_params, self.sketch_rows):
            stop = min(start + self.sketch_rows, self.n_params)
            if self.device.type == "cpu":
                buckets, signs = sketch_numpy(c.seed, start, stop, c.sketch_dim)
            else:
                buckets, signs = sketch_torch(c.seed, start, stop, c.sketch_dim, self.device)
            out.index_add_(1, buckets, grads[:, start:stop].to(torch.float32) * signs)
        return out
