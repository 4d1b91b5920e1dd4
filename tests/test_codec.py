from __future__ import annotations

import gzip
import struct
import zlib

import numpy as np
import pytest

from cellucid_export.codec import get_codec, gzip_decompress


def gene_like_bytes(n=50_000, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    v = np.zeros(n, np.uint8)
    nz = rng.random(n) < 0.08
    v[nz] = rng.integers(1, 255, nz.sum())
    return v.tobytes()


@pytest.mark.parametrize("library", ["zlib-ng", "zlib"])
@pytest.mark.parametrize("level", [1, 6, 9])
def test_single_deterministic_member(library, level):
    data = gene_like_bytes()
    codec = get_codec(level, library)
    out = codec.encode(data)
    assert out == codec.encode(data)  # deterministic
    # Header: magic, deflate, no flags, MTIME 0.
    assert out[:4] == b"\x1f\x8b\x08\x00" and out[4:8] == b"\x00\x00\x00\x00"
    crc, isize = struct.unpack("<II", out[-8:])
    assert isize == len(data) and crc == zlib.crc32(data)
    assert gzip.decompress(out) == data
    assert gzip_decompress(out) == data  # exactly one member, nothing after it


def test_default_level6_no_larger_than_stdlib():
    data = gene_like_bytes(200_000, seed=4)
    ours = get_codec(6).encode(data)
    stdlib = gzip.compress(data, compresslevel=6, mtime=0)
    assert len(ours) <= len(stdlib)


def test_decompress_refuses_trailing_bytes_and_truncation():
    good = get_codec(6).encode(b"abc" * 100)
    with pytest.raises(ValueError, match="bytes after its gzip member"):
        gzip_decompress(good + b"\x00")
    with pytest.raises(ValueError, match="truncated"):
        gzip_decompress(good[:-4])


@pytest.mark.parametrize("bad", [0, 10, -1, 2.5, True, "6"])
def test_bad_levels(bad):
    with pytest.raises(ValueError, match="compression must be None or an integer from 1 to 9"):
        get_codec(bad)


def real_gene_payloads(pbmc, tmp_path):
    """Quantized gene vectors as the exporter writes them (pbmc68k_reduced, all genes, 8-bit)."""
    res = pbmc.cellucid.export(tmp_path / "genes", layer="raw", compression=None, progress=False)
    return [p.read_bytes() for p in sorted((res.path / "var").iterdir())]


def test_every_level_no_larger_than_stdlib_on_real_genes(pbmc, tmp_path):
    payloads = real_gene_payloads(pbmc, tmp_path)
    for level in range(1, 10):
        ours = sum(len(get_codec(level).encode(p)) for p in payloads)
        stdlib = sum(len(gzip.compress(p, compresslevel=level, mtime=0)) for p in payloads)
        assert ours <= stdlib, level


def test_without_fast_libraries_the_standard_library_is_used(monkeypatch):
    from cellucid_export import codec

    monkeypatch.setattr(codec, "_zlib_ng_deflate", lambda level: None)
    data = gene_like_bytes()
    for level in (1, 6):
        c = codec.get_codec(level)
        assert c.library == "zlib"
        assert gzip.decompress(c.encode(data)) == data


@pytest.mark.parametrize("level", [1, 6, 9])
def test_repeats_that_runs_miss_get_the_full_search(level):
    """Runs-only deflate cannot see a repeating pattern; the level's full search then takes over."""
    rng = np.random.default_rng(3)
    data = np.tile(rng.integers(0, 255, 300, dtype=np.uint8), 200).tobytes()
    ours = get_codec(level).encode(data)
    runs_only = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    assert len(runs_only.compress(data) + runs_only.flush()) > len(data) / 2
    assert len(ours) < len(data) / 50  # the search found the period
    assert gzip_decompress(ours) == data


def _runs_only(data: bytes, level: int) -> int:
    c = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
    return len(c.compress(data) + c.flush())


@pytest.mark.parametrize("level", [1, 6])
def test_sparse_gene_expressed_in_the_first_cell_still_gets_runs(level):
    """How runs-friendly a gene is does not depend on its first cell."""
    x = np.zeros(100_000, np.uint8)
    x[::50] = 3  # 2% of cells, the first one among them
    ours = get_codec(level).encode(x.tobytes())
    assert len(ours) <= _runs_only(x.tobytes(), level) + 18  # + gzip header and trailer
    assert gzip_decompress(ours) == x.tobytes()


@pytest.mark.parametrize("level", [1, 6])
def test_gene_expressed_everywhere_is_coded_byte_by_byte(level):
    """Few runs: Huffman coding alone beats runs, and the codec keeps the smaller stream."""
    rng = np.random.default_rng(4)
    expressed = rng.random(100_000) < 0.5  # half the cells, with varied levels: runs are short
    x = np.where(expressed, np.clip(rng.normal(120, 30, 100_000), 1, 254), 0).astype(np.uint8).tobytes()
    huffman = zlib.compressobj(level, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    huffman_only = len(huffman.compress(x) + huffman.flush())
    assert huffman_only < _runs_only(x, level)
    ours = get_codec(level).encode(x)
    assert len(ours) <= huffman_only + 18
    assert gzip_decompress(ours) == x


def test_inputs_above_the_run_encoder_limit_use_the_library_and_no_scratch(monkeypatch):
    """Coordinates of millions of cells must not make each thread keep 6 bytes of scratch per byte."""
    import threading

    from cellucid_export import codec

    monkeypatch.setattr(codec, "RUNS_MAX_BYTES", 20_000)
    small, large = gene_like_bytes(10_000, seed=1), gene_like_bytes(100_000, seed=2)
    result = {}

    def work():  # a fresh thread: fresh scratch
        c = get_codec(6)
        result["small"], result["large"] = c.encode(small), c.encode(large)
        result["scratch"] = codec._scratch.starts.size

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert gzip_decompress(result["small"]) == small
    assert gzip_decompress(result["large"]) == large
    assert result["scratch"] == 10_000 + 3  # sized for the small vector only
    runs_only = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    assert len(result["large"]) <= len(runs_only.compress(large) + runs_only.flush()) + 18
