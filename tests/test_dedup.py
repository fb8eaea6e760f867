"""dHash (bit for bit against imagehash/Pillow) and greedy near-duplicate selection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import imagehash
import numpy as np
import PIL.Image as PIL_Image
import pytest
import tifffile

from bidspack.ops.derive.dedup import (
    HAVE_NUMBA,
    DedupResult,
    dhash64,
    exact_duplicates,
    from_imagehash,
    greedy_dedup,
    greedy_dedup_bruteforce,
    hamming,
    lanczos_coefficients,
    seeded_order,
    to_hex,
    vertical_first,
)
from conftest import REALDATA

SLICES = REALDATA / "stp_mouse_brain" / "slices"
PILLOW_MAJOR = int(PIL_Image.__version__.split(".")[0])


def reference(patches: np.ndarray) -> np.ndarray:
    """imagehash.dhash per patch (CEM's loop), packed by its hex string."""
    return np.array(
        [int(str(imagehash.dhash(PIL_Image.fromarray(p), hash_size=8)), 16) for p in patches],
        dtype=np.uint64,
    )


def to_uint8(a: np.ndarray) -> np.ndarray:
    """Percentile (1-99 %) rescale of a uint16 slice to uint8."""
    a = a.astype(np.float64)
    lo, hi = np.percentile(a, [1, 99])
    return np.clip((a - lo) / (hi - lo) * 255 + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def slices() -> list[np.ndarray]:
    files = sorted(SLICES.glob("*.tif"))
    assert files, f"real data not found under {SLICES} (set BIDSPACK_REALDATA)"
    return [to_uint8(tifffile.imread(files[i])) for i in range(60, len(files), 35)]


# ------------------------------------------------------------------------------ dHash


def test_dhash_equals_imagehash_on_real_patches(slices: list[np.ndarray]) -> None:
    for img in slices:  # 193 x 271 slices
        h, w = img.shape
        for size_y, size_x, step in ((64, 64, 23), (17, 33, 41), (h, 224, 47), (96, 128, 37)):
            tiles = np.stack(
                [
                    img[y : y + size_y, x : x + size_x]
                    for y in range(0, h - size_y + 1, step)
                    for x in range(0, w - size_x + 1, step)
                ]
            )
            assert np.array_equal(dhash64(tiles, pillow=PILLOW_MAJOR), reference(tiles)), (
                size_y,
                size_x,
            )


def test_dhash_equals_imagehash_on_224_mosaic(slices: list[np.ndarray]) -> None:
    mosaic = np.concatenate(slices[:3], axis=0)  # 579 x 271 real pixels
    tiles = np.stack([mosaic[y : y + 224, x : x + 224] for y in (0, 100, 355) for x in (0, 47)])
    assert np.array_equal(dhash64(tiles), reference(tiles))


@pytest.mark.parametrize(
    "shape",
    [(224, 224), (64, 64), (17, 33), (8, 9), (9, 8), (1, 1), (3, 200), (20, 9), (8, 30),
     (100, 20), (224, 17), (40, 24), (40, 25), (300, 7), (5, 5), (12, 1500)],
)  # fmt: skip
def test_dhash_equals_imagehash_synthetic(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    checker = ((np.indices(shape).sum(axis=0) % 2) * 255).astype(np.uint8)
    patches = np.concatenate(
        [
            rng.integers(0, 256, (12, h, w), dtype=np.uint8),  # random
            (rng.integers(0, 2, (6, h, w)) * 255).astype(np.uint8),  # black/white: clipping
            np.full((2, h, w), 0, np.uint8),
            np.full((2, h, w), 255, np.uint8),
            np.full((1, h, w), 77, np.uint8),  # constant
            checker[None],
            np.broadcast_to(np.arange(w, dtype=np.uint8) * 7, (1, h, w)),  # ramp
        ]
    )
    expect = reference(patches)
    assert np.array_equal(dhash64(patches, pillow=PILLOW_MAJOR), expect)
    assert np.array_equal(dhash64(patches, pillow=PILLOW_MAJOR, engine="numpy"), expect)
    if HAVE_NUMBA:
        got = dhash64(patches, pillow=PILLOW_MAJOR, engine="numba", threads=2)
        assert np.array_equal(got, expect)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_dhash_numba_equals_numpy_engine_on_many_shapes() -> None:
    """The compiled and numpy engines agree (both Pillow orders, both thread settings) on
    random, clipping-heavy and smooth patches of shapes around the padding/window edges."""
    rng = np.random.default_rng(13)
    shapes = [(224, 224), (256, 256), (9, 9), (8, 8), (1, 9), (8, 1), (2, 2), (33, 31),
              (31, 33), (64, 40), (200, 60), (60, 200), (48, 2000), (150, 1), (1, 150)]  # fmt: skip
    for h, w in shapes:
        smooth = np.cumsum(rng.integers(0, 3, (4, h, w)), axis=2).clip(0, 255).astype(np.uint8)
        patches = np.concatenate(
            [
                rng.integers(0, 256, (8, h, w), dtype=np.uint8),
                (rng.integers(0, 2, (4, h, w)) * 255).astype(np.uint8),
                smooth,
            ]
        )
        for pillow in (12, 13):
            expect = dhash64(patches, pillow=pillow, engine="numpy")
            for threads in (1, 2):
                got = dhash64(patches, pillow=pillow, engine="numba", threads=threads)
                assert np.array_equal(got, expect), (h, w, pillow, threads)
            assert np.array_equal(dhash64(patches[3], pillow=pillow), expect[3:4])


def test_dhash_from_a_worker_thread_runs_serially_and_equal(slices: list[np.ndarray]) -> None:
    import threading

    tiles = np.stack([slices[2][y : y + 96, x : x + 96] for y in (0, 90) for x in (0, 80, 170)])
    expect = reference(tiles)
    got: list[np.ndarray] = []
    workers = [
        threading.Thread(target=lambda: got.append(dhash64(tiles, threads=2))) for _ in range(3)
    ]
    for th in workers:
        th.start()
    for th in workers:
        th.join()
    assert len(got) == 3 and all(np.array_equal(g, expect) for g in got)


def test_constant_patch_hash_is_zero() -> None:
    assert dhash64(np.full((3, 224, 224), 9, np.uint8)).tolist() == [0, 0, 0]


def test_vertical_first_rule() -> None:
    assert not vertical_first(224, 224)
    assert vertical_first(224, 116) and not vertical_first(224, 117)
    assert not vertical_first(224, 116, pillow=12)
    assert not vertical_first(224, 9) and not vertical_first(8, 3)


def test_bit_order_hex_and_imagehash_round_trip(slices: list[np.ndarray]) -> None:
    tiles = np.stack([slices[0][y : y + 64, x : x + 64] for y in (0, 64, 128) for x in (0, 100)])
    ours = dhash64(tiles)
    for tile, h in zip(tiles, ours, strict=True):
        ref = imagehash.dhash(PIL_Image.fromarray(tile))
        assert to_hex(h) == str(ref)
        assert from_imagehash(ref) == int(h) == from_imagehash(str(ref))
        assert from_imagehash(ref.hash) == int(h)
        # bit 63 - (8 r + c) is row r, column c of imagehash's boolean array
        bits = [(int(h) >> (63 - i)) & 1 for i in range(64)]
        assert bits == ref.hash.ravel().astype(int).tolist()
    refs = [imagehash.dhash(PIL_Image.fromarray(t)) for t in tiles]
    d = hamming(ours[:, None], ours[None, :])
    assert d.tolist() == [[a - b for b in refs] for a in refs]


def test_dhash_refuses_other_dtypes_and_shapes() -> None:
    with pytest.raises(ValueError, match="uint8"):
        dhash64(np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="uint8"):
        dhash64(np.zeros((2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(n, h, w\)"):
        dhash64(np.zeros((2, 2, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        dhash64(np.zeros((2, 0, 8), np.uint8))
    assert dhash64(np.zeros((0, 8, 8), np.uint8)).shape == (0,)
    assert dhash64(np.zeros((8, 8), np.uint8)).shape == (1,)
    with pytest.raises(ValueError, match="engine"):
        dhash64(np.zeros((2, 8, 8), np.uint8), engine="cuda")
    with pytest.raises(ValueError, match="threads"):
        dhash64(np.zeros((2, 8, 8), np.uint8), threads=0)


def test_lanczos_coefficients_sum_to_one_in_fixed_point() -> None:
    k = lanczos_coefficients(224, 9)
    assert k.shape == (9, 224)
    assert np.all(np.abs(k.sum(axis=1) - (1 << 22)) <= 224)


def test_hamming_int64_and_fallback_agree() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**64, 1000, dtype=np.uint64)
    b = rng.integers(0, 2**64, 1000, dtype=np.uint64)
    expect = [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b, strict=True)]
    assert hamming(a, b).tolist() == expect
    assert hamming(a.view(np.int64), b.view(np.int64)).tolist() == expect


# --------------------------------------------------------- duplicates on real patches


def test_exact_and_near_duplicates_on_real_patches(slices: list[np.ndarray]) -> None:
    img = slices[1]
    size = 96
    rng = np.random.default_rng(0)
    base = [(40, 60), (60, 150)]
    patches: list[np.ndarray] = []
    kind: list[str] = []
    for y, x in base:
        patches.append(img[y : y + size, x : x + size])
        kind.append("base")
    for y, x in base:
        for dy, dx in ((1, 0), (0, 1), (1, 1), (2, 0), (-2, 1)):
            patches.append(img[y + dy : y + dy + size, x + dx : x + dx + size])
            kind.append("shift")
        noisy = patches[base.index((y, x))] + rng.normal(0, 5, (size, size))
        patches.append(np.clip(noisy, 0, 255).astype(np.uint8))
        kind.append("noise")
        patches.append(patches[base.index((y, x))].copy())
        kind.append("exact")
    p = np.stack(patches)
    owner = [0, 1] + [0] * 7 + [1] * 7  # which base each patch copies
    digests = [hashlib.blake2b(t.tobytes(), digest_size=16).digest() for t in p]
    ex = exact_duplicates(digests)
    assert ex.tolist() == [i if kind[i] != "exact" else owner[i] for i in range(len(p))]
    h = dhash64(p)
    d = hamming(h, h[np.array(owner)])
    assert np.all(d <= 12), d  # every shifted, noised or exact copy within 12 bits
    res = greedy_dedup(h, 12)
    assert res.kept.tolist() == [True, True] + [False] * (len(p) - 2)
    assert res.exemplar.tolist() == owner
    assert np.array_equal(res.distance, d)

    # different tissue regions are not duplicates of each other
    others = np.stack([img[y : y + size, x : x + size] for y in (0, 48, 96) for x in (0, 80, 175)])
    ho = dhash64(np.concatenate([p[:2], others]))
    dist = hamming(ho[:, None], ho[None, :])
    off_diagonal = dist[~np.eye(len(ho), dtype=bool)]
    assert off_diagonal.min() > 12, dist
    assert greedy_dedup(ho, 12).kept.all()


# ----------------------------------------------------------- greedy: fast == brute force


def planted(n: int, seed: int) -> np.ndarray:
    """20 % random codes and clusters of near-copies (0-6 flipped bits), shuffled, with
    some exact repeats."""
    rng = np.random.default_rng(seed)
    n_unique = n // 5
    n_clustered = n - n_unique
    centers = rng.integers(0, 2**64, max(1, n_clustered // 8), dtype=np.uint64)
    members = centers[rng.integers(0, centers.shape[0], n_clustered)]
    flips = rng.integers(0, 7, n_clustered)
    for f in range(6):
        bit = np.uint64(1) << rng.integers(0, 64, n_clustered).astype(np.uint64)
        members = np.where(flips > f, members ^ bit, members)
    h = np.concatenate([rng.integers(0, 2**64, n_unique, dtype=np.uint64), members])
    h[rng.integers(0, n, n // 20)] = h[rng.integers(0, n, n // 20)]  # exact repeats
    rng.shuffle(h)
    return h


@pytest.mark.parametrize("n", [0, 1, 2, 37, 600, 4000])
@pytest.mark.parametrize("threshold", [0, 5, 12])
def test_fast_greedy_equals_bruteforce(n: int, threshold: int) -> None:
    h = planted(n, seed=n + threshold)
    for seed in (0, 1):
        order = seeded_order(n, seed)
        ref = greedy_dedup_bruteforce(h, threshold, order)
        for method, block in (("auto", 256), ("mih", 1), ("mih", 50), ("blocked", 64)) + (
            (("numba", 256), ("numba-scan", 256), ("numba-mih", 256)) if HAVE_NUMBA else ()
        ):
            got = greedy_dedup(h, threshold, order, method=method, block=block)
            assert got.same_as(ref), (method, block, seed)
    assert greedy_dedup(h, threshold).same_as(greedy_dedup_bruteforce(h, threshold))


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("threshold", [0, 1, 2, 4, 7, 12, 16, 24, 40, 63, 64])
def test_compiled_greedy_equals_bruteforce_random_and_clustered(threshold: int) -> None:
    rng = np.random.default_rng(threshold)
    uniform = rng.integers(0, 2**64, 3000, dtype=np.uint64)
    # tight clusters: 30 centres, members 0-4 bits away, some exact repeats
    centres = rng.integers(0, 2**64, 30, dtype=np.uint64)
    members = centres[rng.integers(0, 30, 3000)]
    for _ in range(4):
        flip = np.uint64(1) << rng.integers(0, 64, 3000).astype(np.uint64)
        members = np.where(rng.random(3000) < 0.5, members ^ flip, members)
    low_weight = (np.uint64(1) << rng.integers(0, 64, 500).astype(np.uint64)) | np.uint64(0)
    for h in (uniform, members, np.concatenate([members, uniform, low_weight])):
        order = seeded_order(h.shape[0], threshold)
        ref = greedy_dedup_bruteforce(h, threshold, order)
        for method in ("numba", "numba-scan", "numba-mih"):
            assert greedy_dedup(h, threshold, order, method=method).same_as(ref), method


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
def test_compiled_greedy_empty_single_and_constant() -> None:
    for method in ("numba", "numba-scan", "numba-mih"):
        for t in (0, 12, 64):
            empty = greedy_dedup(np.zeros(0, np.uint64), t, method=method)
            assert empty.exemplar.shape == (0,) and empty.n_kept == 0
            one = greedy_dedup([2**64 - 1], t, method=method)
            assert one.exemplar.tolist() == [0] and one.distance.tolist() == [0]
            same = greedy_dedup(np.full(20, 5, np.uint64), t, seeded_order(20, 1), method=method)
            assert set(same.exemplar.tolist()) == {int(seeded_order(20, 1)[0])}
        # threshold 64: everything is a duplicate of the first item in the order
        h = np.random.default_rng(1).integers(0, 2**64, 300, dtype=np.uint64)
        res = greedy_dedup(h, 64, seeded_order(300, 2), method=method)
        assert res.n_kept == 1 and res.kept[int(seeded_order(300, 2)[0])]


def test_numba_cache_unwritable_still_works(tmp_path: Path) -> None:
    """With no writable cache location the kernels compile in memory (subprocess)."""
    import os
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")  # no cache folder can be made below it, even as root
    code = (
        "import numpy as np\n"
        "from bidspack.ops.derive.dedup import dhash64, greedy_dedup, HAVE_NUMBA\n"
        "p = np.arange(2 * 30 * 40, dtype=np.uint8).reshape(2, 30, 40)\n"
        "assert np.array_equal(dhash64(p), dhash64(p, engine='numpy'))\n"
        "assert greedy_dedup([0, 1, 2**64 - 1], 3).exemplar.tolist() == [0, 0, 2]\n"
        "print('ok', HAVE_NUMBA)\n"
    )
    # only the NUMBA_CACHE_DIR locator, and it cannot work: numba would raise at decoration
    env = dict(
        os.environ,
        NUMBA_CACHE_DIR=str(blocker / "cache"),
        NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator",
    )
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_greedy_larger_thresholds_and_constant_hashes() -> None:
    h = planted(500, seed=9)
    for t in (1, 3, 20, 64):
        assert greedy_dedup(h, t, seeded_order(500, t)).same_as(
            greedy_dedup_bruteforce(h, t, seeded_order(500, t))
        )
    res = greedy_dedup(np.full(50, 7, np.uint64), 0, seeded_order(50, 4))
    first = int(seeded_order(50, 4)[0])
    assert res.n_kept == 1 and set(res.exemplar.tolist()) == {first}


def test_first_exemplar_in_kept_order_wins() -> None:
    a = 0
    b = (1 << 12) - 1  # 12 bits from a
    c = (1 << 6) - 1  # 6 bits from a and from b
    far = (1 << 64) - 1
    # order a, far, b, c: a kept, far kept, b (12 from a) duplicate of a, c -> a (first)
    res = greedy_dedup([a, far, b, c], 12)
    assert res.exemplar.tolist() == [0, 1, 0, 0]
    assert res.distance.tolist() == [0, 0, 12, 6]
    # with threshold 11, b is an exemplar; c is within 6 of both a and b and goes to a
    res = greedy_dedup([a, far, b, c], 11)
    assert res.exemplar.tolist() == [0, 1, 2, 0]
    res = greedy_dedup([a, far, b, c], 11, order=[2, 1, 0, 3])
    assert res.exemplar.tolist() == [0, 1, 2, 2]


def cem_loop(hashes: np.ndarray, order: np.ndarray, min_distance: int) -> list[int]:
    """CEM's deduplicate.py loop on boolean hash arrays, in a given order (exemplars)."""
    bits = ((hashes[:, None] >> np.arange(63, -1, -1, dtype=np.uint64)) & np.uint64(1)) == 1
    hs = bits[order]
    paths = order.copy()
    exemplars = []
    while len(hs) > 0:
        matches = np.where(np.logical_xor(hs[0], hs).sum(1) <= min_distance)[0]
        exemplars.append(int(paths[matches[0]]))
        hs = np.delete(hs, matches, axis=0)
        paths = np.delete(paths, matches, axis=0)
    return exemplars


def test_same_exemplars_as_cem_loop() -> None:
    h = planted(800, seed=5)
    order = seeded_order(800, 11)
    res = greedy_dedup(h, 12, order)
    kept_in_order = [int(i) for i in order if res.kept[i]]
    assert kept_in_order == cem_loop(h, order, 12)


def test_determinism_and_seeded_order() -> None:
    h = planted(3000, seed=2)
    o1, o2 = seeded_order(3000, 42), seeded_order(3000, 42)
    assert np.array_equal(o1, o2)
    assert np.array_equal(o1, np.random.default_rng(42).permutation(3000))
    r1, r2 = greedy_dedup(h, 12, o1), greedy_dedup(h, 12, o2)
    assert r1.exemplar.tobytes() == r2.exemplar.tobytes()
    assert r1.distance.tobytes() == r2.distance.tobytes()
    assert not np.array_equal(greedy_dedup(h, 12, seeded_order(3000, 43)).kept, r1.kept)
    assert isinstance(r1, DedupResult) and r1.exemplar.dtype == np.int64


def test_result_invariants() -> None:
    h = planted(2000, seed=8)
    order = seeded_order(2000, 1)
    res = greedy_dedup(h, 12, order)
    pos = np.empty(2000, np.int64)
    pos[order] = np.arange(2000)
    assert np.array_equal(res.kept, res.exemplar == np.arange(2000))
    assert np.all(res.kept[res.exemplar])  # exemplars are kept
    assert np.all(pos[res.exemplar] <= pos)  # an exemplar comes first
    assert np.array_equal(res.distance, hamming(h, h[res.exemplar]))
    assert res.distance.max() <= 12
    ex = h[res.kept]
    d = hamming(ex[:, None], ex[None, :])
    assert (d[~np.eye(len(ex), dtype=bool)] > 12).all()  # exemplars are mutually far


def test_exact_duplicates_forms_and_order() -> None:
    seq = [b"a", b"b", b"a", b"c", b"b", b"ab", b"a\x00"]
    assert exact_duplicates(seq).tolist() == [0, 1, 0, 3, 1, 5, 6]
    assert exact_duplicates(seq, order=[6, 5, 4, 3, 2, 1, 0]).tolist() == [2, 4, 2, 3, 4, 5, 6]
    arr = np.array([5, 6, 5, 7, 6], np.uint64)
    assert exact_duplicates(arr).tolist() == [0, 1, 0, 3, 1]
    assert exact_duplicates(arr, [4, 3, 2, 1, 0]).tolist() == [2, 4, 2, 3, 4]
    rows = np.array([[1, 2], [3, 4], [1, 2]], np.uint8)
    assert exact_duplicates(rows).tolist() == [0, 1, 0]
    assert exact_duplicates([]).tolist() == []


def test_argument_errors() -> None:
    h = np.arange(5, dtype=np.uint64)
    with pytest.raises(ValueError, match="permutation"):
        greedy_dedup(h, 12, order=[0, 1, 2, 3, 3])
    with pytest.raises(ValueError, match="permutation"):
        greedy_dedup(h, 12, order=[0, 1, 2])
    with pytest.raises(ValueError, match="threshold"):
        greedy_dedup(h, 65)
    with pytest.raises(ValueError, match="threshold"):
        greedy_dedup_bruteforce(h, -1)
    with pytest.raises(ValueError, match="64-bit"):
        greedy_dedup(np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="method"):
        greedy_dedup(h, method="faiss")
    with pytest.raises(ValueError, match="block"):
        greedy_dedup(h, block=0)
    with pytest.raises(ValueError):
        seeded_order(-1, 0)
