"""Difference hashes (dHash) and greedy near-duplicate selection for 2D patches.

numpy, plus numba for compiled kernels (see "compiled kernels" below; without numba the
numpy implementations are used, with identical results); no bidspack upper-layer imports.

**dHash.** :func:`dhash64` is bit for bit ``imagehash.dhash(PIL.Image.fromarray(patch),
hash_size=8)`` (imagehash 4.3.x, which follows Krawetz, "Kind of like that", 2013): the
patch is resized to 9 x 8 (width x height) with Pillow's ``LANCZOS`` filter and bit
``(r, c)`` is ``small[r, c + 1] > small[r, c]``. The resize reproduces Pillow's
``src/libImaging/Resample.c`` (``precompute_coeffs``, ``normalize_coeffs_8bpc``,
``ImagingResampleHorizontal_8bpc`` / ``Vertical_8bpc``, ``ImagingResampleInner``):
Lanczos-3 weights computed in double precision, normalised to sum 1, rounded to fixed
point with ``PRECISION_BITS = 22``; two separable passes, each ``2**21 + sum(p * k)``
shifted right by 22 bits and clipped to 0..255, the second pass reading the clipped 8-bit
output of the first; a pass is skipped when its size does not change (width 9, height 8).
The order of the passes is horizontal then vertical, except that Pillow 13 runs the
vertical pass first for tall patches (see :func:`vertical_first`); square patches are
hashed identically by Pillow 7-13. The large first pass is a float32 BLAS product over a
block of patches; every sum whose rounding the float32 error bound cannot decide is
recomputed exactly (see :func:`_horizontal`), so the result is exact, not approximate.
Tested bit for bit against imagehash 4.3.2 + Pillow 13.0.0.

**Bit order.** The 64 bits are packed row-major into a ``uint64`` with the first bit
(row 0, column 0) as the most significant bit: ``bit 63 - (8 * r + c)`` is
``small[r, c + 1] > small[r, c]``. ``f"{h:016x}"`` (:func:`to_hex`) is then exactly
``str(imagehash.dhash(...))``, and ``imagehash.hex_to_hash(to_hex(h))`` gives the
``ImageHash`` back; :func:`from_imagehash` packs an ``ImageHash`` (or its 8 x 8 boolean
array) the same way.

**Greedy exemplar deduplication** (:func:`greedy_dedup`), as in the CEM500K curation
(Conrad & Narayan, eLife 2021; ``volume-em/cem-dataset``, ``dataset/deduplicated/
deduplicate.py``): items are taken in a given order; an item is kept as a new exemplar
unless an exemplar kept earlier is within Hamming distance ``<= threshold`` (CEM: 12), and
then it is a duplicate of the *first* such exemplar in kept order. CEM's loop (take the
first remaining hash as reference, remove every remaining hash within the threshold, keep
the reference, repeat) gives exactly this assignment for the same order; see
:func:`greedy_dedup` for the differences (a seeded, recorded order instead of an unseeded
``np.random.permutation``; near-linear instead of quadratic).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DedupResult",
    "dhash64",
    "exact_duplicates",
    "from_imagehash",
    "greedy_dedup",
    "greedy_dedup_bruteforce",
    "hamming",
    "lanczos_coefficients",
    "seeded_order",
    "to_hex",
    "vertical_first",
]

#: Pillow's fixed-point precision for 8-bit resampling (``Resample.c``: ``32 - 8 - 2``).
PRECISION_BITS = 22
#: Lanczos-3 support of Pillow's ``LANCZOS`` filter.
LANCZOS_SUPPORT = 3.0
#: dHash grid: the patch is resized to ``HASH_W x HASH_H`` (width x height).
HASH_W = 9
HASH_H = 8
#: Pixels per block in :func:`dhash64`: the float32 work buffer (1 MiB) stays in cache.
DHASH_BLOCK_PIXELS = 1 << 18

_U64 = np.uint64


# --------------------------------------------------------------------------- dHash


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@functools.lru_cache(maxsize=64)
def lanczos_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point ``LANCZOS`` weights for resampling *in_size* to *out_size*.

    Returns an ``(out_size, in_size)`` int64 matrix ``K`` (zero outside each output's
    window) such that Pillow's 8-bit pass computes output ``j`` of a line ``p`` as
    ``clip((2**21 + K[j] @ p) >> 22, 0, 255)``. Computed in Python double precision with
    ``math.sin`` (the C library's ``sin``, as Pillow's C code uses) in the same operation
    order as ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in Pillow's
    ``src/libImaging/Resample.c`` (box ``(0, in_size)``). Raises ``ValueError`` for sizes
    below 1. The returned array is cached; do not modify it.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got {in_size} -> {out_size}")
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    out = np.zeros((out_size, in_size), dtype=np.int64)
    one = float(1 << PRECISION_BITS)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in weights:
            ww += w
        for x, w in enumerate(weights):
            k = w / ww if ww != 0.0 else w
            out[xx, xmin + x] = int(-0.5 + k * one) if k < 0 else int(0.5 + k * one)
    out.setflags(write=False)
    return out


def _clip_shift(sums: np.ndarray) -> np.ndarray:
    """``clip((2**21 + s) >> 22, 0, 255)`` for exact integer-valued float64 sums."""
    half = float(1 << (PRECISION_BITS - 1))
    return np.clip(np.floor((sums + half) / (1 << PRECISION_BITS)), 0, 255)


@functools.lru_cache(maxsize=64)
def _horizontal_plan(w: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Float32 weights ``(w, 9)``, per-column decision limits ``(9,)`` (None: too wide for
    the float32 pass to pay off) and float64 weights ``(9, w)`` (integers, for exact sums)."""
    k_int = lanczos_coefficients(w, HASH_W)  # (9, w)
    k32 = (k_int.T.astype(np.float64) / (1 << PRECISION_BITS)).astype(np.float32)  # exact
    u = 2.0**-24
    gamma = w * u / (1.0 - w * u)
    # dot-product bound, doubled, plus the rounding of "+ 0.5" in float32 (|y| < 2**10)
    margin = 2.0 * gamma * 255.0 * np.abs(k32.astype(np.float64)).sum(axis=0) + 2.0**-13
    k64 = k_int.astype(np.float64)
    limit = None if margin.max() > 0.05 else (0.5 - margin).astype(np.float32)  # w > ~1300
    for a in (k32, limit, k64):
        if a is not None:
            a.setflags(write=False)
    return k32, limit, k64


def _horizontal(block: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Pillow's horizontal 8-bit LANCZOS pass of ``(b, h, w)`` uint8, as ``(9, b, h)`` float64.

    Float32 matrix-vector products give every ``y = K[j] @ p / 2**22 + 1/2`` with an error of at
    most ``2 gamma_w 255 sum|K[j]| / 2**22 + 2**-13`` (``gamma_w = w u / (1 - w u)``,
    ``u = 2**-24``: the standard bound for a dot product of length ``w`` in any summation
    order, with or without FMA, doubled for margin, plus the rounding of the ``+ 1/2``).
    Pillow's value is ``clip(floor(y), 0, 255)``; wherever ``y`` lies within that margin of
    an integer the sum is recomputed exactly (integer products and sums below ``2**53`` in
    float64; about 1-2 % of the sums at w = 224), so the result is exact. Patches wider
    than about 1300 pixels, where that margin grows, are summed in float64 directly.
    *buf* is a float32 work array of at least ``b * h * w`` elements.
    """
    b, h, w = block.shape
    k32, limit, k64 = _horizontal_plan(w)
    if limit is None:
        rows64 = block.reshape(b * h, w).astype(np.float64)
        return _clip_shift(_matvecs(rows64, k64.T)).reshape(HASH_W, b, h)
    x = buf[: b * h * w].reshape(b * h, w)
    np.copyto(x, block.reshape(b * h, w), casting="unsafe")
    y = _matvecs(x, k32)  # (9, b*h)
    y += np.float32(0.5)
    f = np.floor(y)
    amb_c, amb_r = np.nonzero(np.abs((y - f) - np.float32(0.5)) > limit[:, None])
    out = np.clip(f, 0, 255).astype(np.float64)
    if amb_r.size:
        exact = np.einsum("ij,ij->i", x[amb_r].astype(np.float64), k64[amb_c])
        out[amb_c, amb_r] = _clip_shift(exact)
    return out.reshape(HASH_W, b, h)


def _matvecs(x: np.ndarray, k_t: np.ndarray) -> np.ndarray:
    """``(x @ k_t).T`` as one matrix-vector product per column of *k_t*: ``(c, rows)``.

    A stack of matrix-vector products instead of one skinny ``(rows, w) x (w, 9)`` matrix
    product: about as fast single-threaded in our measurements. Both are BLAS calls, so a
    multi-threaded BLAS pool on busy cores slows them down alike (see :func:`dhash64`).
    """
    return np.matmul(x, k_t.T[:, :, None])[:, :, 0]


def _vertical(small: np.ndarray) -> np.ndarray:
    """Pillow's vertical 8-bit LANCZOS pass of ``(b, h, c)`` (values 0..255) to ``(b, 8, c)``.

    Float64 is exact here: every partial sum is an integer of magnitude below ``2**53``
    (``255 * sum|K| < 2**31``).
    """
    b, h, c = small.shape
    k = lanczos_coefficients(h, HASH_H).astype(np.float64)  # (8, h)
    cols = np.ascontiguousarray(small.transpose(0, 2, 1)).reshape(b * c, h)
    return _clip_shift(_matvecs(cols, k.T).reshape(HASH_H, b, c).transpose(1, 0, 2))


def _vertical_cols(cols: np.ndarray) -> np.ndarray:
    """The vertical pass of the ``(9, b, h)`` output of :func:`_horizontal`: ``(b, 8, 9)``."""
    c, b, h = cols.shape
    k = lanczos_coefficients(h, HASH_H).astype(np.float64)  # (8, h)
    sums = _matvecs(cols.reshape(c * b, h), k.T).reshape(HASH_H, c, b)
    return _clip_shift(sums.transpose(2, 0, 1))


def _horizontal_exact(small: np.ndarray) -> np.ndarray:
    """Pillow's horizontal 8-bit LANCZOS pass of ``(b, r, w)`` (values 0..255) to ``(b, r, 9)``,
    exactly in float64 (used after a vertical-first pass, on 8 rows only)."""
    b, r, w = small.shape
    k = lanczos_coefficients(w, HASH_W).astype(np.float64)  # (9, w)
    sums = _matvecs(small.reshape(b * r, w), k.T).reshape(HASH_W, b, r)
    return _clip_shift(sums.transpose(1, 2, 0))


def vertical_first(h: int, w: int, pillow: int = 13) -> bool:
    """Whether Pillow resizes an ``h x w`` image to 9 x 8 vertical pass first.

    Pillow 13 (python-pillow/Pillow#9549, "if height is scaled down significantly more
    than width, resize vertically first") runs the vertical pass first when both passes
    are needed and ``h - 8 > 2 * (w - 9)`` (with ``h > 8``); measured against Pillow 13.0.0
    on every ``h, w < 60`` and along the boundary up to ``h = 700``. Pillow 7-12 always
    run the horizontal pass first. Square patches are horizontal-first in every version.
    """
    return pillow >= 13 and w != HASH_W and h > HASH_H and (h - HASH_H) > 2 * (w - HASH_W)


def dhash64(
    patches: npt.ArrayLike, *, pillow: int = 13, threads: int = 1, engine: str = "auto"
) -> np.ndarray:
    """64-bit difference hashes of 2D uint8 patches, equal to ``imagehash.dhash``.

    *patches*: ``(n, h, w)`` (or one ``(h, w)`` patch) of dtype ``uint8``, any ``h, w >= 1``.
    Other dtypes are refused with ``ValueError``: the hash of a 16-bit or float image depends
    on how it is brought to 8 bits, so callers convert to uint8 first (and record how).

    Returns ``(n,)`` ``uint64`` (``(1,)`` for one 2D patch), each equal to
    ``imagehash.dhash(PIL.Image.fromarray(patch), hash_size=8)`` (imagehash 4.3) packed as
    in the module docstring: bit ``63 - (8 r + c)`` is ``small[r, c + 1] > small[r, c]``, so
    ``to_hex(h) == str(imagehash.dhash(...))``. Pillow's LANCZOS resize to 9 x 8 is
    reproduced exactly (fixed-point weights, two passes with 8-bit clipping in between).

    *pillow*: the Pillow major version whose pass order to follow. Pillow >= 13 runs the
    vertical pass first for tall patches (:func:`vertical_first`); 7-12 always run the
    horizontal pass first. Square patches (and any with ``h - 8 <= 2 (w - 9)``) hash the
    same under both; checked bit for bit against the installed Pillow in the tests.

    *engine*: ``"auto"`` (numba when importable, else numpy), ``"numba"`` or ``"numpy"``;
    the hashes are identical. *threads*: with numba, hash the patches on up to this many
    threads (``numba.prange``; at most ``NUMBA_NUM_THREADS``). Only calls from the main
    thread run in parallel; others run serially (numba's default ``workqueue`` threading
    layer must not be entered from two threads at once). Default 1: on cores that are
    already busy, parallel workers wait on each other.

    CEM's ``crop_patches.py`` first resizes a short edge patch to the full crop size with
    ``BILINEAR`` before hashing; that step is the caller's (pad, drop or resize edge
    patches, then hash).

    Speed. numba: per patch, each of the 9 (8) outputs of the first pass is a dot product
    over its Lanczos support window only (about 150 of 224 pixels at 224 -> 9); the
    horizontal sums are float32 (vectorised), each checked against the rounding error
    bound of :func:`_horizontal` and recomputed exactly in float64 when the bound cannot
    decide Pillow's rounding (about 1 % of them); the vertical sums are exact float64.
    numpy: one float32 BLAS matrix-vector product per output column over a block of
    patches (``DHASH_BLOCK_PIXELS`` pixels), with the same check. When the cores are busy,
    limit the BLAS thread pool of the numpy engine to one thread
    (``threadpoolctl.threadpool_limits(1, "blas")`` or ``OPENBLAS_NUM_THREADS=1``): a
    spinning BLAS pool made it 5-40x slower in our measurements.

    Raises ``ValueError`` for a wrong dtype or number of dimensions, an empty side, an
    unknown engine (or ``"numba"`` without numba) or ``threads < 1``.
    """
    if engine not in ("auto", "numba", "numpy"):
        raise ValueError(f"unknown engine {engine!r}")
    if engine == "numba" and not HAVE_NUMBA:
        raise ValueError("engine 'numba' needs numba installed")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    arr = np.asarray(patches)
    if arr.dtype != np.uint8:
        raise ValueError(f"dhash64 needs uint8 patches, got {arr.dtype}; convert to uint8 first")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"dhash64 needs (n, h, w) patches, got shape {arr.shape}")
    n, h, w = arr.shape
    if h < 1 or w < 1:
        raise ValueError(f"patches must have h, w >= 1, got {h} x {w}")
    if n and engine != "numpy" and HAVE_NUMBA:
        return _dhash64_compiled(arr, pillow, threads)
    return _dhash64_numpy(arr, pillow)


def _dhash64_numpy(arr: np.ndarray, pillow: int) -> np.ndarray:
    """:func:`dhash64` in numpy, block by block (``arr``: ``(n, h, w)`` uint8)."""
    n, h, w = arr.shape
    out = np.empty(n, dtype=_U64)
    step = max(1, DHASH_BLOCK_PIXELS // (h * w))
    v_first = vertical_first(h, w, pillow)
    buf = np.empty(0 if v_first or w == HASH_W else min(n, step) * h * w, dtype=np.float32)
    for start in range(0, n, step):
        block = arr[start : start + step]
        if v_first:
            small = _horizontal_exact(_vertical(block.astype(np.float64)))
        elif w == HASH_W:
            small = block.astype(np.float64)
            if h != HASH_H:
                small = _vertical(small)
        else:
            cols = _horizontal(block, buf)  # (9, b, h)
            small = _vertical_cols(cols) if h != HASH_H else cols.transpose(1, 2, 0)
        bits = small[:, :, 1:] > small[:, :, :-1]  # (b, 8, 8)
        packed = np.packbits(bits.reshape(len(block), 64), axis=1, bitorder="big")
        out[start : start + len(block)] = np.ascontiguousarray(packed).view(">u8").ravel()
    return out


def to_hex(h: int | np.integer[Any]) -> str:
    """16 lowercase hex digits of a 64-bit dHash: ``str(imagehash.dhash(...))``."""
    return f"{int(h):016x}"


def from_imagehash(h: Any) -> int:
    """Pack an ``imagehash.ImageHash`` (or its 8 x 8 boolean ``.hash`` array, or a hex string)
    into the ``uint64`` bit order of :func:`dhash64` (row-major, first bit most significant).

    Raises ``ValueError`` when it does not hold exactly 64 bits.
    """
    if isinstance(h, str):
        if len(h) != 16:
            raise ValueError(f"expected 16 hex digits, got {h!r}")
        return int(h, 16)
    bits = np.asarray(getattr(h, "hash", h), dtype=bool).ravel()
    if bits.size != 64:
        raise ValueError(f"expected 64 bits, got {bits.size}")
    return int(np.packbits(bits, bitorder="big").view(">u8")[0])


# --------------------------------------------------------------------- Hamming distance

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (uint8 result); ``np.bitwise_count`` where numpy >= 2."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x, dtype=_U64)
    return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _as_hashes(hashes: Any) -> np.ndarray:
    """A 1-D uint64 array from unsigned/signed integers (int64 bit patterns kept) or a
    sequence of Python ints (taken modulo 2**64)."""
    if not isinstance(hashes, np.ndarray):
        seq = list(hashes)
        if all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in seq):
            return np.array([int(x) & 0xFFFFFFFFFFFFFFFF for x in seq], dtype=_U64)
    arr = np.asarray(hashes)
    if arr.dtype.kind not in "ui":
        raise ValueError(f"hashes must be 64-bit integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"hashes must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind == "i" and arr.dtype.itemsize == 8:
        return arr.view(_U64)
    return arr.astype(_U64, copy=False)


def hamming(a: npt.ArrayLike, b: npt.ArrayLike) -> np.ndarray:
    """Hamming distances between 64-bit hashes: ``popcount(a XOR b)``, broadcast.

    *a*, *b*: uint64 (or int64, bit pattern kept) arrays or scalars of broadcastable shapes.
    Returns a uint8 array (values 0..64) of the broadcast shape. Equal to
    ``imagehash.ImageHash.__sub__`` for hashes packed by :func:`dhash64` /
    :func:`from_imagehash`.
    """
    x = np.asarray(a)
    y = np.asarray(b)
    x = x.view(_U64) if x.dtype == np.int64 else x.astype(_U64, copy=False)
    y = y.view(_U64) if y.dtype == np.int64 else y.astype(_U64, copy=False)
    return _popcount64(np.bitwise_xor(x, y))


# ------------------------------------------------------------------ orders and results


def seeded_order(n: int, seed: int) -> np.ndarray:
    """Processing order for :func:`greedy_dedup`: ``np.random.default_rng(seed).permutation(n)``.

    Returns ``(n,)`` int64. The same *n* and *seed* give the same order on every platform
    (numpy's PCG64 stream); the caller records *seed* (and the numpy version) with the
    decisions so that they can be reproduced. CEM used an unseeded ``np.random.permutation``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return np.random.default_rng(seed).permutation(n).astype(np.int64, copy=False)


def _check_order(order: npt.ArrayLike | None, n: int) -> np.ndarray:
    if order is None:
        return np.arange(n, dtype=np.int64)
    o = np.asarray(order)
    if o.ndim != 1 or o.shape[0] != n or (n and o.dtype.kind not in "ui"):
        raise ValueError(f"order must be a permutation of 0..{n - 1} (1-D integers)")
    o = o.astype(np.int64, copy=False)
    if n and (o.min() < 0 or o.max() >= n or np.bincount(o, minlength=n).max() != 1):
        raise ValueError(f"order must be a permutation of 0..{n - 1}")
    return o


def _check_threshold(threshold: int) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int | np.integer):
        raise ValueError(f"threshold must be an integer, got {threshold!r}")
    if not 0 <= int(threshold) <= 64:
        raise ValueError(f"threshold must be in 0..64, got {threshold}")
    return int(threshold)


@dataclass(frozen=True, eq=False)
class DedupResult:
    """Greedy exemplar decisions for ``n`` items (indices are positions in the input).

    - ``exemplar``: ``(n,)`` int64, the index of each item's exemplar (itself when kept).
    - ``distance``: ``(n,)`` int64, the Hamming distance to that exemplar (0 when kept).
    - ``kept``: ``(n,)`` bool, ``exemplar == arange(n)``.
    - ``threshold``: the Hamming threshold used (duplicates are at distance ``<= threshold``).
    """

    exemplar: np.ndarray
    distance: np.ndarray
    kept: np.ndarray
    threshold: int

    @property
    def n_kept(self) -> int:
        """Number of exemplars."""
        return int(np.count_nonzero(self.kept))

    def same_as(self, other: DedupResult) -> bool:
        """Whether both results make identical decisions."""
        return (
            self.threshold == other.threshold
            and np.array_equal(self.exemplar, other.exemplar)
            and np.array_equal(self.distance, other.distance)
            and np.array_equal(self.kept, other.kept)
        )


def _result(exemplar: np.ndarray, distance: np.ndarray, threshold: int) -> DedupResult:
    kept = exemplar == np.arange(exemplar.shape[0], dtype=np.int64)
    for a in (exemplar, distance, kept):
        a.setflags(write=False)
    return DedupResult(exemplar=exemplar, distance=distance, kept=kept, threshold=threshold)


# ------------------------------------------------------------------- exact duplicates


def exact_duplicates(
    pixel_hashes: Sequence[bytes] | npt.ArrayLike, order: npt.ArrayLike | None = None
) -> np.ndarray:
    """Exemplar of each item among exact duplicates by a given hash (e.g. xxh3-128 of pixels).

    *pixel_hashes*: a sequence of ``bytes`` (any lengths), or an array: 1-D of any
    hashable-by-value dtype (``uint64``, ``S16``, ``V16`` ...) or 2-D ``(n, k)`` whose rows
    are the hashes (e.g. ``uint8`` digests). *order*: a permutation of ``0..n-1`` (default
    ``0..n-1``); the first item in that order with a given hash is the exemplar of all
    items with that hash.

    Returns ``(n,)`` int64: the index of each item's exemplar (itself for the first).
    Raises ``ValueError`` for a bad *order* or array shape.
    """
    if isinstance(pixel_hashes, np.ndarray):
        arr = pixel_hashes
    else:
        seq = list(pixel_hashes)  # type: ignore[arg-type]
        o = _check_order(order, len(seq))
        out = np.empty(len(seq), dtype=np.int64)
        first: dict[Any, int] = {}
        for i in o.tolist():
            out[i] = first.setdefault(seq[i], i)
        return out
    n = arr.shape[0] if arr.ndim else 0
    if arr.ndim == 2:
        arr = np.ascontiguousarray(arr)
        arr = arr.view(np.dtype((np.void, arr.dtype.itemsize * arr.shape[1]))).reshape(n)
    elif arr.ndim != 1:
        raise ValueError(f"pixel_hashes must be 1-D or (n, k), got shape {arr.shape}")
    if arr.dtype == object:
        return exact_duplicates(arr.tolist(), order)
    o = _check_order(order, n)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    _, first_pos, inverse = np.unique(arr[o], return_index=True, return_inverse=True)
    out = np.empty(n, dtype=np.int64)
    out[o] = o[first_pos[inverse.ravel()]]
    return out


# -------------------------------------------------------------- greedy deduplication


def greedy_dedup_bruteforce(
    hashes: npt.ArrayLike, threshold: int = 12, order: npt.ArrayLike | None = None
) -> DedupResult:
    """Reference greedy exemplar selection, ``O(n * k)`` (``k`` exemplars), for tests.

    Items are visited in *order*; each is compared (vectorised) with every exemplar kept so
    far, and becomes a duplicate of the first exemplar in kept order within *threshold*,
    else a new exemplar. Same arguments, result and errors as :func:`greedy_dedup`.
    """
    h = _as_hashes(hashes)
    t = _check_threshold(threshold)
    n = h.shape[0]
    o = _check_order(order, n)
    exemplar = np.empty(n, dtype=np.int64)
    distance = np.zeros(n, dtype=np.int64)
    ex_vals = np.empty(n, dtype=_U64)
    ex_ids = np.empty(n, dtype=np.int64)
    k = 0
    for i in o.tolist():
        if k:
            d = _popcount64(ex_vals[:k] ^ h[i])
            j = int(np.argmax(d <= t))
            if d[j] <= t:
                exemplar[i] = ex_ids[j]
                distance[i] = d[j]
                continue
        ex_vals[k] = h[i]
        ex_ids[k] = i
        k += 1
        exemplar[i] = i
    return _result(exemplar, distance, t)


@dataclass(frozen=True)
class _Part:
    shift: int
    bits: int
    radius: int  # probe every key within this Hamming radius (pigeonhole share)


@functools.lru_cache(maxsize=32)
def _ball(bits: int, radius: int) -> np.ndarray:
    """All ``bits``-bit XOR masks of popcount <= radius (int32, read-only, cached)."""
    masks = [0]
    for r in range(1, radius + 1):
        for combo in combinations(range(bits), r):
            masks.append(sum(1 << b for b in combo))
    out = np.array(masks, dtype=np.int32)
    out.setflags(write=False)
    return out


def _ball_size(bits: int, radius: int) -> int:
    return sum(math.comb(bits, r) for r in range(radius + 1))


#: Cost model (relative units per probe, per candidate, per brute-force comparison),
#: measured with ``benchmarks/bench_dedup.py``; only the choice of plan depends on them.
_COST_PROBE = 1.0
_COST_CANDIDATE = 2.0
_COST_BRUTE = 0.6
_COST_TABLE = 0.5
_MAX_KEY_BITS = 22


def _plan(n_index: int, t: int, force: bool = False) -> tuple[_Part, ...] | None:
    """Multi-index plan for an index of *n_index* hashes at radius *t*, or None (brute force).

    The 64 bits are cut into ``m`` disjoint substrings of ``b_i`` bits and radii ``r_i``
    with ``sum(r_i + 1) = t + 1`` (``r_i = -1``: substring not probed). By the
    pigeonhole principle, two hashes within distance ``t`` are within ``r_i`` on some
    substring ``i`` with ``r_i >= 0`` (otherwise the distance would be at least
    ``sum(r_i + 1) > t``), so probing every key within ``r_i`` of the query's substring in
    every probed part finds every hash within ``t``: the search is exact.
    """
    brute = math.inf if force else _COST_BRUTE * max(n_index, 1)
    best: tuple[float, tuple[_Part, ...] | None] = (brute, None)
    for m in range(3, 9):
        base, extra = divmod(64, m)
        widths = [base + (1 if i < extra else 0) for i in range(m)]
        if max(widths) > _MAX_KEY_BITS:
            continue
        shifts = [64 - sum(widths[: i + 1]) for i in range(m)]
        q, rest = divmod(t + 1, m)
        shares_list = {
            tuple([q + 1] * rest + [q] * (m - rest)),
            tuple([q] * (m - rest) + [q + 1] * rest),
        }
        for shares in shares_list:
            cost = 0.0
            for b, s in zip(widths, shares, strict=True):
                if s:
                    cost += _ball_size(b, s - 1) * (
                        _COST_PROBE + _COST_CANDIDATE * n_index / 2.0**b
                    )
                    cost += _COST_TABLE * 2.0**b / max(n_index, 1)  # building, per query
            if cost < best[0]:
                parts = tuple(
                    _Part(sh, b, s - 1)
                    for sh, b, s in zip(shifts, widths, shares, strict=True)
                    if s
                )
                best = (cost, parts)
    return best[1]


class _MultiIndex:
    """Static multi-index over a set of hashes: per probed substring, the hashes sorted by
    substring value, a dense table of bucket offsets and a byte table of occupied keys."""

    def __init__(self, values: np.ndarray, ids: np.ndarray, parts: tuple[_Part, ...], t: int):
        self.t = t
        self.tables: list[tuple[_Part, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
        self.tables = []
        n = values.shape[0]
        for p in parts:
            size = 1 << p.bits
            keys = ((values >> np.uint64(p.shift)) & np.uint64(size - 1)).astype(np.int64)
            srt = np.argsort(keys, kind="stable")
            counts = np.bincount(keys, minlength=size)
            offsets = np.zeros(size + 1, dtype=np.int32 if n < 2**31 else np.int64)
            np.cumsum(counts, out=offsets[1:])
            occupied = (counts > 0).view(np.uint8)
            ball = _ball(p.bits, p.radius)
            self.tables.append((p, offsets, occupied, values[srt], ids[srt], ball))

    def query(self, q: np.ndarray) -> tuple[np.ndarray, ...]:
        """All ``(query row, id, distance)`` with distance ``<= t`` (pairs may repeat)."""
        out_q: list[np.ndarray] = []
        out_id: list[np.ndarray] = []
        out_d: list[np.ndarray] = []
        for p, offsets, occupied, svals, sids, ball in self.tables:
            keys = ((q >> np.uint64(p.shift)) & np.uint64((1 << p.bits) - 1)).astype(np.int32)
            nb = (keys[:, None] ^ ball[None, :]).ravel()
            found = np.flatnonzero(occupied[nb])
            if found.size == 0:
                continue
            key = nb[found]
            pos = offsets[key].astype(np.int64)
            counts = offsets[key + 1] - pos
            rows = found // ball.shape[0]
            multi = np.flatnonzero(counts > 1)
            if multi.size:  # buckets holding several hashes: expand their ranges
                c = counts[multi] - 1
                excl = np.cumsum(c) - c
                extra = np.repeat(pos[multi] + 1 - excl, c) + np.arange(int(c.sum()))
                pos = np.concatenate([pos, extra])
                rows = np.concatenate([rows, np.repeat(rows[multi], c)])
            d = _popcount64(svals[pos] ^ q[rows])
            hit = np.flatnonzero(d <= self.t)
            out_q.append(rows[hit])
            out_id.append(sids[pos[hit]])
            out_d.append(d[hit])
        if not out_q:
            e = np.empty(0, dtype=np.int64)
            return e, e, e
        return (
            np.concatenate(out_q).astype(np.int64),
            np.concatenate(out_id),
            np.concatenate(out_d).astype(np.int64),
        )


class _Brute:
    """Blocked brute force over a set of hashes."""

    def __init__(self, values: np.ndarray, ids: np.ndarray, t: int):
        self.values, self.ids, self.t = values, ids, t

    def query(self, q: np.ndarray, max_work: int = 1 << 23) -> tuple[np.ndarray, ...]:
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        step = max(1, max_work // max(self.values.shape[0], 1))
        for lo in range(0, q.shape[0], step):
            d = _popcount64(q[lo : lo + step, None] ^ self.values[None, :])
            r, c = np.nonzero(d <= self.t)
            out.append((r + lo, self.ids[c], d[r, c].astype(np.int64)))
        if not out:
            e = np.empty(0, dtype=np.int64)
            return e, e, e
        return tuple(np.concatenate(x) for x in zip(*out, strict=True))


def _leader(values: np.ndarray, t: int, method: str, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy exemplars of distinct *values* taken in index order (CEM's leader loop).

    The first remaining item is an exemplar; every remaining item within *t* of it becomes
    its duplicate; repeat. Queries are made for a block of the next remaining items at once
    against a static index of the remaining items, rebuilt when half of it is gone.
    """
    m = values.shape[0]
    exemplar = np.arange(m, dtype=np.int64)
    distance = np.zeros(m, dtype=np.int64)
    remaining = np.ones(m, dtype=bool)
    n_remaining = m
    ptr = 0
    index: _MultiIndex | _Brute | None = None
    indexed = 0
    while n_remaining:
        if index is None or n_remaining * 2 <= indexed:
            ids = np.flatnonzero(remaining)
            parts = _plan(ids.shape[0], t, method == "mih") if method != "blocked" else None
            if parts is None:
                index = _Brute(values[ids], ids, t)
            else:
                index = _MultiIndex(values[ids], ids, parts, t)
            indexed = ids.shape[0]
        # the next `block` remaining items, in order
        window = block
        while True:
            cand = np.flatnonzero(remaining[ptr : ptr + window]) + ptr
            if cand.shape[0] >= block or ptr + window >= m:
                break
            window *= 4
        cand = cand[:block]
        ptr = int(cand[-1]) + 1
        qrow, nid, nd = index.query(values[cand])
        keep = remaining[nid] & (nid != cand[qrow])
        qrow, nid, nd = qrow[keep], nid[keep], nd[keep]
        # A candidate with no remaining neighbour is an exemplar whatever happens to the
        # others: by symmetry no other remaining item has it as a neighbour either.
        has_nb = np.zeros(cand.shape[0], dtype=bool)
        has_nb[qrow] = True
        lone = cand[~has_nb]
        remaining[lone] = False
        n_remaining -= lone.shape[0]
        if qrow.shape[0] == 0:
            continue
        srt = np.argsort(qrow, kind="stable")
        qrow, nid, nd = qrow[srt], nid[srt], nd[srt]
        bounds = np.searchsorted(qrow, np.arange(cand.shape[0] + 1))
        # the others in order: still remaining -> exemplar, and claims its neighbours
        for j in np.flatnonzero(has_nb).tolist():
            c = int(cand[j])
            if not remaining[c]:
                continue
            remaining[c] = False
            n_remaining -= 1
            s, e = bounds[j], bounds[j + 1]
            nb = nid[s:e]
            sel = remaining[nb]
            if not sel.any():
                continue
            nb = nb[sel]
            nb_unique, first = np.unique(nb, return_index=True)
            remaining[nb_unique] = False
            n_remaining -= nb_unique.shape[0]
            exemplar[nb_unique] = c
            distance[nb_unique] = nd[s:e][sel][first]
    return exemplar, distance


def greedy_dedup(
    hashes: npt.ArrayLike,
    threshold: int = 12,
    order: npt.ArrayLike | None = None,
    *,
    method: str = "auto",
    block: int = 256,
) -> DedupResult:
    """Greedy exemplar selection among 64-bit hashes at a Hamming threshold (CEM500K).

    *hashes*: ``(n,)`` uint64 (int64 bit patterns and Python ints accepted), e.g. from
    :func:`dhash64`. *threshold*: 0..64 (CEM: 12); two hashes are near-duplicates when
    ``hamming <= threshold``. *order*: a permutation of ``0..n-1`` (default ``0..n-1``),
    e.g. :func:`seeded_order`; the caller records the seed.

    **Rule.** Items are visited in *order*. An item is kept as a new exemplar unless an
    exemplar kept earlier is within *threshold*; then it is a duplicate of the *first* such
    exemplar in kept order (the earliest in *order*), even when a later exemplar is closer.
    Items with equal hashes are decided together: the first in *order* decides, the others
    follow it at the same distance.

    **CEM.** ``dataset/deduplicated/deduplicate.py`` (and the older
    ``dataset/dedupe_images.py``) shuffle the paths with an unseeded
    ``np.random.permutation``, then loop: the first remaining hash is kept, every remaining
    hash within ``min_distance`` (12) of it (``np.logical_xor(ref, hashes).sum(1) <= 12``)
    is removed as its duplicate. For the same order that loop gives exactly this
    assignment (a remaining item is claimed by the first exemplar within the threshold,
    and an item reaching the front is within the threshold of no earlier exemplar). We
    differ in: a seeded, recorded order (CEM's was not reproducible); every duplicate's
    exemplar and distance is returned (CEM kept only the exemplar paths); the cost is near
    linear in practice instead of quadratic.

    **Method.** Every method works on the distinct hashes (ranked by first occurrence) and
    is exact: the result is identical to :func:`greedy_dedup_bruteforce`; only the speed
    differs. ``"auto"``: ``"numba"`` when numba is importable, else ``"mih"``.

    - ``"numba"``: compiled; ``"numba-scan"`` or ``"numba-mih"`` as chosen by a cost model
      (:func:`_plan_compiled`; threshold 0 needs no search at all).
    - ``"numba-scan"``: the brute-force greedy loop compiled: each hash is compared with
      the exemplars kept so far, in kept order, 128 at a time in a vectorised loop
      (``vpopcntq`` on AVX-512 CPUs), stopping at the first within the threshold.
      ``O(n k)`` comparisons at worst (``k`` exemplars) but about 0.1-0.4 ns each; 1 M
      hashes of ``benchmarks/bench_dedup.py`` (b) in about 10-30 s on one core.
    - ``"numba-mih"``: the same loop with the exemplars in a multi-index (Norouzi,
      Punjani & Fleet, "Fast exact search in Hamming space with multi-index hashing",
      IEEE TPAMI 2014): 64 bits cut into substrings, each exemplar filed under each
      substring; a query probes every key within the substring's pigeonhole radius
      (:func:`_plan`), so no exemplar within the threshold is missed. Fast for small
      thresholds; at 12 about as fast as the scan.
    - ``"mih"`` (numpy): CEM's leader loop, each block of *block* next remaining items
      queried at once against a static multi-index of the remaining hashes (64 bits cut
      into 3-8 substrings with pigeonhole radii, see :func:`_plan`; every candidate
      verified exactly), rebuilt when half of it is gone; falls back to blocked brute force
      where the cost model says that is cheaper (large thresholds, small sets).
    - ``"blocked"`` (numpy): the same loop with blocked brute-force queries.

    Returns a :class:`DedupResult`. Raises ``ValueError`` for hashes that are not 1-D
    64-bit integers, a threshold outside 0..64, an order that is not a permutation, or an
    unknown method (or a ``"numba..."`` method without numba).
    """
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}")
    if method.startswith("numba") and not HAVE_NUMBA:
        raise ValueError(f"method {method!r} needs numba installed")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    h = _as_hashes(hashes)
    t = _check_threshold(threshold)
    n = h.shape[0]
    o = _check_order(order, n)
    if n == 0:
        e = np.empty(0, dtype=np.int64)
        return _result(e, e.copy(), t)
    # distinct values ranked by first occurrence in `order`
    uniq, first_pos, inverse = np.unique(h[o], return_index=True, return_inverse=True)
    by_rank = np.argsort(first_pos, kind="stable")  # rank -> index into uniq
    rank_of = np.empty_like(by_rank)
    rank_of[by_rank] = np.arange(by_rank.shape[0], dtype=by_rank.dtype)
    values = uniq[by_rank]
    if method == "auto":
        method = "numba" if HAVE_NUMBA else "mih"
    if method.startswith("numba"):
        ex_rank, dist_rank = _leader_compiled(values, t, method)
    else:
        ex_rank, dist_rank = _leader(values, t, method, block)
    item_rank = rank_of[inverse.ravel()]  # rank of the item at each position of `order`
    exemplar = np.empty(n, dtype=np.int64)
    distance = np.empty(n, dtype=np.int64)
    first_item = o[first_pos[by_rank]]  # rank -> index of its first item
    exemplar[o] = first_item[ex_rank[item_rank]]
    distance[o] = dist_rank[item_rank]
    return _result(exemplar, distance, t)


# ------------------------------------------------------------ compiled kernels (numba)
#
# Numba (``numba.njit``) versions of the dHash resize and of the greedy leader loop. Each
# kernel is a plain function compiled on first call (``cache=True``: later processes load
# the machine code from ``__pycache__`` or numba's user cache; where no cache directory is
# writable the kernels are compiled in memory, see :func:`_jit`). Without numba the numpy
# implementations above are used. The kernels use only integer arithmetic or float sums
# that are exact (integers below 2**53), except the float32 dot products of
# :func:`_nb_hpass32`, whose rounding is checked against an error bound and redone
# exactly where undecided, so every result equals the numpy path and Pillow bit for bit.

try:
    import numba as _numba
except ImportError:  # pragma: no cover - numba is a dependency; the numpy path remains
    _numba = None  # type: ignore[assignment]

#: Whether the compiled kernels are available (numba importable).
HAVE_NUMBA = _numba is not None
#: Fast-math flags of the float dot-product kernels: reassociation lets LLVM vectorise the
#: sums (exact sums in float64 do not depend on the order; the float32 sums are checked
#: against an order-independent bound). No other kernel uses fast math.
_DOT_FASTMATH = {"reassoc", "contract", "nsz"}


def _jit(*, parallel: bool = False, fastmath: Any = False) -> Any:
    """``numba.njit(cache=True, nogil=True, ...)``; without a writable cache location
    (read-only install and home: numba raises ``RuntimeError`` at decoration) the kernel
    is compiled in memory instead. Identity when numba is missing."""

    def deco(fn: Any) -> Any:
        if _numba is None:  # pragma: no cover
            return fn
        opts = {"nogil": True, "parallel": parallel, "fastmath": fastmath}
        try:
            return _numba.njit(cache=True, **opts)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return _numba.njit(cache=False, **opts)(fn)

    return deco


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)


@_jit()
def _nb_popcount(x: np.uint64) -> np.uint64:
    """Set bits of a uint64 (SWAR; LLVM emits ``popcnt`` / ``vpopcntq`` for it)."""
    x = x - ((x >> np.uint64(1)) & _M1)
    x = (x & _M2) + ((x >> np.uint64(2)) & _M2)
    x = (x + (x >> np.uint64(4))) & _M4
    return (x * _H01) >> np.uint64(56)


# -- dHash ---------------------------------------------------------------------------


@_jit(fastmath=_DOT_FASTMATH)
def _nb_dot32(x: np.ndarray, w: np.ndarray, lo: int, n: int) -> np.float32:
    """``sum(x[lo:lo+n] * w[:n])`` in float32, any summation order (vectorised)."""
    acc = np.float32(0.0)
    seg = x[lo : lo + n]
    for k in range(n):
        acc += seg[k] * w[k]
    return acc


@_jit(fastmath=_DOT_FASTMATH)
def _nb_dot64(x: np.ndarray, w: np.ndarray, lo: int, n: int) -> float:
    """``sum(x[lo:lo+n] * w[:n])`` in float64; exact (any order) for integer-valued
    operands whose products and partial sums stay below 2**53."""
    acc = 0.0
    seg = x[lo : lo + n]
    for k in range(n):
        acc += np.float64(seg[k]) * w[k]
    return acc


@_jit()
def _nb_shift8(s: float) -> float:
    """Pillow's ``clip8((2**21 + s) >> 22)`` of an exact integer-valued sum *s*."""
    v = np.floor((s + 2097152.0) * (1.0 / 4194304.0))
    return min(max(v, 0.0), 255.0)


@_jit()
def _nb_hpass32(
    row: np.ndarray,
    lo: np.ndarray,
    ln: np.ndarray,
    w32: np.ndarray,
    w64: np.ndarray,
    limit: np.ndarray,
    out: np.ndarray,
) -> None:
    """Horizontal pass of one float32 row (integer values 0..255) into ``out[:9]``.

    ``y = sum(p * K / 2**22) + 1/2`` in float32; when ``|frac(y) - 1/2| > limit[j]`` (``y``
    within the error bound of an integer, see :func:`_horizontal`) or ``limit[j] < 0``
    (too wide for the bound), the sum is recomputed exactly in float64."""
    for j in range(HASH_W):
        if limit[j] >= 0.0:
            y = _nb_dot32(row, w32[j], lo[j], ln[j]) + np.float32(0.5)
            f = np.floor(y)
            if abs((y - f) - np.float32(0.5)) <= limit[j]:
                out[j] = min(max(np.float64(f), 0.0), 255.0)
                continue
        out[j] = _nb_shift8(_nb_dot64(row, w64[j], lo[j], ln[j]))


@_jit()
def _nb_dhash_one(
    img: np.ndarray,
    hlo: np.ndarray,
    hln: np.ndarray,
    hw32: np.ndarray,
    hw64: np.ndarray,
    hlim: np.ndarray,
    vlo: np.ndarray,
    vln: np.ndarray,
    vw64: np.ndarray,
    v_first: bool,
) -> np.uint64:
    """dHash of one ``(h, w)`` uint8 image (see :func:`dhash64`): Pillow's two 8-bit passes
    to 9 x 8, then the 64 comparison bits, first bit most significant."""
    h, w = img.shape
    do_h = w != HASH_W
    do_v = h != HASH_H
    small = np.empty((HASH_H, HASH_W))
    if v_first:  # vertical pass (exact, float64) over every column, then horizontal
        mid = np.zeros((HASH_H, w + _PAD))
        acc = np.empty(w)
        for r in range(HASH_H):
            acc[:] = 0.0
            for k in range(vln[r]):
                wk = vw64[r, k]
                src = img[vlo[r] + k]
                for x in range(w):
                    acc[x] += np.float64(src[x]) * wk
            for x in range(w):
                mid[r, x] = _nb_shift8(acc[x])
        for r in range(HASH_H):
            for j in range(HASH_W):
                small[r, j] = _nb_shift8(_nb_dot64(mid[r], hw64[j], hlo[j], hln[j]))
    else:  # horizontal pass (float32, checked) over every row, then vertical (exact)
        tmp = np.empty((h, HASH_W))
        if do_h:
            row = np.zeros(w + _PAD, np.float32)
            for y in range(h):
                src = img[y]
                for x in range(w):
                    row[x] = src[x]
                _nb_hpass32(row, hlo, hln, hw32, hw64, hlim, tmp[y])
        else:
            for y in range(h):
                for x in range(w):
                    tmp[y, x] = img[y, x]
        if do_v:
            for r in range(HASH_H):
                for j in range(HASH_W):
                    s = 0.0
                    for k in range(vln[r]):
                        s += tmp[vlo[r] + k, j] * vw64[r, k]
                    small[r, j] = _nb_shift8(s)
        else:
            small[:, :] = tmp
    bits = np.uint64(0)
    for r in range(HASH_H):
        for c in range(HASH_W - 1):
            bits = (bits << np.uint64(1)) | np.uint64(small[r, c + 1] > small[r, c])
    return bits


@_jit()
def _nb_dhash_serial(
    arr: np.ndarray,
    hlo: np.ndarray,
    hln: np.ndarray,
    hw32: np.ndarray,
    hw64: np.ndarray,
    hlim: np.ndarray,
    vlo: np.ndarray,
    vln: np.ndarray,
    vw64: np.ndarray,
    v_first: bool,
    out: np.ndarray,
) -> None:
    for i in range(arr.shape[0]):
        out[i] = _nb_dhash_one(arr[i], hlo, hln, hw32, hw64, hlim, vlo, vln, vw64, v_first)


@_jit(parallel=True)
def _nb_dhash_parallel(
    arr: np.ndarray,
    hlo: np.ndarray,
    hln: np.ndarray,
    hw32: np.ndarray,
    hw64: np.ndarray,
    hlim: np.ndarray,
    vlo: np.ndarray,
    vln: np.ndarray,
    vw64: np.ndarray,
    v_first: bool,
    out: np.ndarray,
) -> None:
    for i in _numba.prange(arr.shape[0]):
        out[i] = _nb_dhash_one(arr[i], hlo, hln, hw32, hw64, hlim, vlo, vln, vw64, v_first)


#: Dot-product lengths of the dHash kernels are padded to multiples of this (32 float32 =
#: one unrolled step of LLVM's vectorised loop); row buffers carry as many zeros behind.
_PAD = 32


@functools.lru_cache(maxsize=64)
def _windows(in_size: int, out_size: int, pad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Support windows of :func:`lanczos_coefficients`: first index ``(o,)``, length
    ``(o,)`` (first to last nonzero weight; with *pad*, rounded up to a multiple of ``_PAD``
    for rows that carry ``_PAD`` zeros behind) and the
    weights ``(o, max length)`` float64 (zero beyond the support)."""
    k = lanczos_coefficients(in_size, out_size)
    lo = np.zeros(out_size, np.int64)
    ln = np.zeros(out_size, np.int64)
    for j in range(out_size):
        nz = np.flatnonzero(k[j])
        if nz.size:
            lo[j], ln[j] = nz[0], nz[-1] - nz[0] + 1
    if pad:  # whole vectors (zero weights behind the support)
        ln = np.minimum(-(-ln // _PAD) * _PAD, in_size + _PAD - lo)
    wts = np.zeros((out_size, max(1, int(ln.max()))), np.float64)
    for j in range(out_size):
        span = k[j, lo[j] : lo[j] + ln[j]]
        wts[j, : span.shape[0]] = span
    for a in (lo, ln, wts):
        a.setflags(write=False)
    return lo, ln, wts


def _dhash64_compiled(arr: np.ndarray, pillow: int, threads: int) -> np.ndarray:
    """:func:`dhash64` by the numba kernels (``arr``: ``(n, h, w)`` uint8)."""
    n, h, w = arr.shape
    hlo, hln, hw64 = _windows(w, HASH_W, True)
    vlo, vln, vw64 = _windows(h, HASH_H, False)
    _, limit, _ = _horizontal_plan(w)
    hw32 = (hw64 / (1 << PRECISION_BITS)).astype(np.float32)  # exact: |K| < 2**24
    hlim = np.full(HASH_W, -1.0, np.float32) if limit is None else limit
    out = np.empty(n, dtype=_U64)
    args = (np.ascontiguousarray(arr), hlo, hln, hw32, hw64, hlim, vlo, vln, vw64)
    v_first = vertical_first(h, w, pillow)
    if threads > 1 and n > 1 and threading.current_thread() is threading.main_thread():
        prev = _numba.get_num_threads()
        _numba.set_num_threads(min(threads, _numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        try:
            _nb_dhash_parallel(*args, v_first, out)
        finally:
            _numba.set_num_threads(prev)
    else:
        _nb_dhash_serial(*args, v_first, out)
    return out


# -- greedy leader loop ----------------------------------------------------------------

#: Exemplars compared per vectorised step of :func:`_nb_first_within`.
_SCAN_CHUNK = 128


@_jit()
def _nb_first_within(v: np.uint64, ex: np.ndarray, k: int, t: int) -> int:
    """Position of the first of ``ex[:k]`` within Hamming distance *t* of *v*, or -1.

    Chunks of ``_SCAN_CHUNK`` are reduced to their minimum distance (a branch-free loop that
    LLVM vectorises, with ``vpopcntq`` where the CPU has it); the first chunk whose minimum
    is ``<= t`` is then searched in order."""
    tt = np.uint64(t)
    c = 0
    while c < k:
        e = min(c + _SCAN_CHUNK, k)
        blk = ex[c:e]
        mn = np.uint64(64)
        for j in range(e - c):
            mn = min(mn, _nb_popcount(v ^ blk[j]))
        if mn <= tt:
            for j in range(c, e):
                if _nb_popcount(v ^ ex[j]) <= tt:
                    return j
        c = e
    return -1


@_jit()
def _nb_leader_scan(values: np.ndarray, t: int, exemplar: np.ndarray, distance: np.ndarray) -> None:
    """Greedy exemplars of distinct *values* in index order: each value is compared with the
    exemplars kept so far, in kept order, and stops at the first within *t*."""
    m = values.shape[0]
    ex_vals = np.empty(m, np.uint64)
    ex_ids = np.empty(m, np.int64)
    k = 0
    for i in range(m):
        v = values[i]
        j = _nb_first_within(v, ex_vals, k, t)
        if j < 0:
            ex_vals[k] = v
            ex_ids[k] = i
            k += 1
            exemplar[i] = i
            distance[i] = 0
        else:
            exemplar[i] = ex_ids[j]
            distance[i] = np.int64(_nb_popcount(v ^ ex_vals[j]))


@_jit()
def _nb_leader_mih(
    values: np.ndarray,
    t: int,
    shifts: np.ndarray,
    bits: np.ndarray,
    ball: np.ndarray,
    ball_off: np.ndarray,
    exemplar: np.ndarray,
    distance: np.ndarray,
) -> None:
    """The greedy loop of :func:`_nb_leader_scan` with the exemplars in a multi-index.

    Part ``p`` keys an exemplar by ``bits[p]`` bits at ``shifts[p]``; its bucket lists hold
    the exemplars in kept order (capacity laid out in advance from the keys of all
    values). A value probes, in every part, each key within the part's radius (the XOR
    masks ``ball[ball_off[p]:ball_off[p + 1]]``); by the pigeonhole principle (see
    :func:`_plan`) every exemplar within *t* is in a probed bucket. The first exemplar
    within *t* in kept order wins; bucket scans stop at the first hit or at an exemplar
    later than the best so far."""
    m = values.shape[0]
    n_parts = shifts.shape[0]
    size = 1
    for p in range(n_parts):
        size = max(size, 1 << bits[p])
    offs = np.zeros((n_parts, size + 1), np.int64)
    fill = np.zeros((n_parts, size), np.int64)
    keys = np.empty((n_parts, m), np.int64)
    for p in range(n_parts):
        mask = np.uint64((1 << bits[p]) - 1)
        sh = np.uint64(shifts[p])
        for i in range(m):
            key = np.int64((values[i] >> sh) & mask)
            keys[p, i] = key
            offs[p, key + 1] += 1
        for b in range(size):
            offs[p, b + 1] += offs[p, b]
    slot_vals = np.empty((n_parts, m), np.uint64)
    slot_ids = np.empty((n_parts, m), np.int64)
    tt = np.uint64(t)
    for i in range(m):
        v = values[i]
        best = m
        best_d = np.uint64(0)
        for p in range(n_parts):
            key = keys[p, i]
            for b in range(ball_off[p], ball_off[p + 1]):
                kk = key ^ ball[b]
                s = offs[p, kk]
                for q in range(s, s + fill[p, kk]):
                    r = slot_ids[p, q]
                    if r >= best:
                        break
                    d = _nb_popcount(v ^ slot_vals[p, q])
                    if d <= tt:
                        best = r
                        best_d = d
                        break
        if best == m:
            exemplar[i] = i
            distance[i] = 0
            for p in range(n_parts):
                key = keys[p, i]
                q = offs[p, key] + fill[p, key]
                slot_vals[p, q] = v
                slot_ids[p, q] = i
                fill[p, key] += 1
        else:
            exemplar[i] = best
            distance[i] = np.int64(best_d)


_METHODS = ("auto", "numba", "numba-scan", "numba-mih", "mih", "blocked")
#: Cost model of :func:`_plan_compiled` (nanoseconds, measured on the development machine
#: with ``benchmarks/bench_dedup.py``): per exemplar compared by the scan, per probed key,
#: per candidate checked in a probed bucket, per table slot built. Only the choice between
#: the two exact kernels depends on them.
_NS_SCAN = 0.15
_NS_PROBE = 60.0
_NS_CANDIDATE = 2.5
_NS_TABLE = 1.0
#: Widest substring of the compiled multi-index (tables of ``2**bits`` int64 per part).
_MAX_KEY_BITS_COMPILED = 20


def _plan_compiled(m: int, t: int, force: bool = False) -> tuple[_Part, ...] | None:
    """Multi-index parts for :func:`_nb_leader_mih` on *m* distinct hashes at threshold
    *t*, or None when the scan (:func:`_nb_leader_scan`) is expected to be faster.

    Assumes ``m / 4`` exemplars on average (the cost per query of the scan grows with the
    exemplars, that of the multi-index with the probes and the bucket sizes). The parts are
    cut as in :func:`_plan`: ``m_parts`` substrings, radii summing with the parts to
    ``t + 1`` (pigeonhole; exact). *force*: the best multi-index even when the scan is
    expected to be faster."""
    k = max(m / 4.0, 1.0)
    best: tuple[float, tuple[_Part, ...] | None] = (math.inf if force else _NS_SCAN * k, None)
    for n_parts in range(3, 17):
        base, extra = divmod(64, n_parts)
        widths = [base + (1 if i < extra else 0) for i in range(n_parts)]
        if max(widths) > _MAX_KEY_BITS_COMPILED:
            continue
        shifts = [64 - sum(widths[: i + 1]) for i in range(n_parts)]
        q, rest = divmod(t + 1, n_parts)
        shares = [q + 1] * rest + [q] * (n_parts - rest)
        cost = 0.0
        for b, share in zip(widths, shares, strict=True):
            if share:
                cost += _ball_size(b, share - 1) * (_NS_PROBE + _NS_CANDIDATE * k / 2.0**b)
                cost += _NS_TABLE * 2.0**b / max(m, 1)
        if cost < best[0]:
            parts = tuple(
                _Part(sh, b, share - 1)
                for sh, b, share in zip(shifts, widths, shares, strict=True)
                if share
            )
            best = (cost, parts)
    return best[1]


def _leader_compiled(values: np.ndarray, t: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Greedy exemplars (rank) and distances of distinct *values* in index order, compiled."""
    m = values.shape[0]
    exemplar = np.empty(m, dtype=np.int64)
    distance = np.zeros(m, dtype=np.int64)
    if t == 0 and method == "numba":  # distinct values: every one is an exemplar
        exemplar[:] = np.arange(m, dtype=np.int64)
        return exemplar, distance
    parts: tuple[_Part, ...] | None = None
    if method == "numba":
        parts = _plan_compiled(m, t)
    elif method == "numba-mih":
        parts = _plan_compiled(m, t, force=True)
    if parts is None or m == 0:
        _nb_leader_scan(np.ascontiguousarray(values), t, exemplar, distance)
        return exemplar, distance
    balls = [_ball(p.bits, p.radius).astype(np.int64) for p in parts]
    ball_off = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([b.shape[0] for b in balls], out=ball_off[1:])
    _nb_leader_mih(
        np.ascontiguousarray(values),
        t,
        np.array([p.shift for p in parts], dtype=np.int64),
        np.array([p.bits for p in parts], dtype=np.int64),
        np.concatenate(balls),
        ball_off,
        exemplar,
        distance,
    )
    return exemplar, distance
