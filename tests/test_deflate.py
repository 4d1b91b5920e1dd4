"""The run encoder (``_deflate``): every stream must inflate, with zlib, to exactly its input."""

from __future__ import annotations

import threading
import zlib

import numpy as np
import pytest

from cellucid_export import _deflate
from cellucid_export.codec import _encode_runs


def deflate(a: np.ndarray) -> bytes:
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return _deflate.deflate_runs(a, np.empty(a.size + 3, np.int32), np.empty(a.size + 3, np.uint16)).tobytes()


def roundtrip(a) -> bytes:
    a = np.asarray(a, dtype=np.uint8)
    out = deflate(a)
    assert zlib.decompress(out, -15) == a.tobytes()
    return out


def block_type(stream: bytes) -> int:
    """BTYPE of the first block: 0 stored, 1 fixed codes, 2 own codes."""
    return (stream[0] >> 1) & 0b11


def sparse_gene(n, density, seed, zero=0):
    rng = np.random.default_rng(seed)
    a = np.full(n, zero, np.uint8)
    hit = rng.random(n) < density
    a[hit] = rng.integers(0, 256, hit.sum())
    return a


@pytest.mark.parametrize(
    "n", [0, 1, 2, 3, 4, 5, 257, 258, 259, 260, 261, 262, 515, 516, 517, 518, 65535, 65536, 140_000]
)
def test_roundtrip_lengths_around_copy_and_block_limits(n):
    rng = np.random.default_rng(n)
    for fill in (0, 7, 255):
        roundtrip(np.full(n, fill))
    roundtrip(rng.integers(0, 256, n))
    roundtrip(rng.integers(0, 3, n))
    roundtrip(sparse_gene(n, 0.07, n, zero=12))


def test_roundtrip_every_run_length():
    """Runs of 1..800 equal bytes, each between two other bytes: every split of a run into copies."""
    pieces = []
    for length in range(1, 801):
        pieces += [np.full(length, length % 5 + 1), [0, 9]]
    roundtrip(np.concatenate(pieces))


def test_roundtrip_gene_like_vectors():
    for seed, density in enumerate([0.0005, 0.01, 0.07, 0.3, 0.9, 1.0]):
        roundtrip(sparse_gene(100_000, density, seed, zero=seed * 40))


def test_roundtrip_skewed_counts_need_length_limits():
    """Counts falling off geometrically would give Huffman codes over 15 bits without the limit."""
    rng = np.random.default_rng(1)
    p = 2.0 ** -np.arange(256)
    p /= p.sum()
    for _ in range(50):
        roundtrip(rng.choice(256, int(rng.integers(1, 20_000)), p=p))


def fibonacci_counts(k, used=40):
    """Fibonacci counts for the first ``used`` symbols (the worst case for code lengths), then 1s."""
    f = [1, 1]
    while len(f) < min(k, used):
        f.append(f[-1] + f[-2])
    return np.array(f + [1] * (k - len(f)), dtype=np.int64)


@pytest.mark.parametrize("limit", [7, 15])
def test_code_lengths_are_complete_prefix_codes_within_the_limit(limit):
    rng = np.random.default_rng(2)
    size = 19 if limit == 7 else 286  # the code-length code, the literal/length code
    cases = [fibonacci_counts(size), np.r_[fibonacci_counts(size - 5), np.zeros(5, np.int64)]]
    cases += [rng.integers(0, 1000, size), np.array([0, 0, 3, 0]), np.zeros(size, np.int64)]
    for freq in cases:
        lengths = _deflate._code_lengths(freq.astype(np.int64), limit)
        assert lengths.max() <= limit
        assert (lengths[freq > 0] > 0).all()  # every used symbol has a code
        assert (lengths > 0).sum() >= 2  # inflaters expect at least two codes
        assert sum(2.0 ** -int(x) for x in lengths if x) == 1.0  # Kraft: complete, no code wasted
    # Without the limit, Fibonacci counts make an 18-bit code: the limit did work here.
    assert _deflate._code_lengths(fibonacci_counts(19), 64).max() == 18
    with pytest.raises(ValueError, match="more symbols"):
        _deflate._code_lengths(np.ones(300, np.int64), 8)


def test_each_way_of_coding_is_chosen_where_it_is_smallest():
    rng = np.random.default_rng(5)
    sparse = sparse_gene(100_000, 0.05, 5)
    assert block_type(roundtrip(sparse)) == 2  # own codes, runs as copies
    noise = rng.integers(0, 256, 10_000)
    assert block_type(roundtrip(noise)) == 0  # incompressible: stored
    assert len(deflate(noise)) == noise.size + 5
    assert block_type(roundtrip([4, 4, 4, 4, 4, 1])) == 1  # too short to pay for a code table
    # Half the cells expressed at varied levels: runs are short and every byte a literal is smaller.
    dense = np.where(rng.random(50_000) < 0.5, np.clip(rng.normal(120, 30, 50_000), 1, 254), 0)
    out = roundtrip(dense)
    runs_only = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    assert len(out) < len(runs_only.compress(dense.astype(np.uint8).tobytes()) + runs_only.flush())


def test_no_larger_than_zlib_runs_on_gene_like_vectors():
    for seed, density in enumerate([0.001, 0.02, 0.08, 0.2]):
        a = sparse_gene(100_000, density, seed).tobytes()
        c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
        assert len(deflate(np.frombuffer(a, np.uint8))) <= len(c.compress(a) + c.flush())


def test_thread_scratch_grows_and_threads_agree():
    """Scratch arrays are per thread and grow on demand; the bytes never depend on the thread."""
    vectors = [sparse_gene(n, 0.08, n) for n in (10, 100_000, 7, 250_000, 3)]
    expected = [deflate(v) for v in vectors]
    results = {}

    def work(k):
        results[k] = [_encode_runs(v) for v in vectors[k:] + vectors[:k]]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, got in results.items():
        assert got == expected[k:] + expected[:k]
