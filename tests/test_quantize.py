"""Quantization against the format's formula, written out independently per value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from cellucid_export.quantize import MARKER, STEPS, dequantize, payload_row_bytes, quantize_block


def reference_codes(v: np.ndarray, bits: int, constant_plus_one: bool):
    """The spec's per-gene rules, one value at a time in plain Python."""
    m, marker = STEPS[bits], MARKER[bits]
    vals = [float(np.float32(x)) for x in v]
    valid = [x for x in vals if math.isfinite(x)]
    if not valid:
        return [marker] * len(vals), 0.0, 1.0
    lo, hi = min(valid), max(valid)
    if lo == hi:
        return [0 if math.isfinite(x) else marker for x in vals], lo, (lo + 1.0 if constant_plus_one else hi)
    scale = m / (hi - lo)
    codes = []
    for x in vals:
        if not math.isfinite(x):
            codes.append(marker)
        else:
            codes.append(min(m, max(0, round((x - lo) * scale))))  # Python round() is half-to-even
    return codes, lo, hi


def test_codes_match_formula_dense_and_sparse():
    rng = np.random.default_rng(1)
    n_cells, n_genes = 400, 12
    dense = np.where(rng.random((n_cells, n_genes)) < 0.1, rng.gamma(2, 1.5, (n_cells, n_genes)), 0).astype(
        np.float32
    )
    dense[:, 0] = 0  # all zero (constant)
    dense[:, 1] = 3.5  # constant, non-zero
    dense[5, 2] = np.nan
    dense[6, 2] = np.inf
    dense[:, 3] = np.nan  # only missing
    dense[7, 4] = -np.inf
    dense[:, 5] -= 1.25  # negative values
    dense[::2, 6] = np.nan  # half missing
    for bits in (8, 16):
        for plus_one in (True, False):
            qd = quantize_block(dense, bits, constant_plus_one=plus_one)
            qs = quantize_block(sp.csc_matrix(dense), bits, constant_plus_one=plus_one)
            for j in range(n_genes):
                codes, lo, hi = reference_codes(dense[:, j], bits, plus_one)
                for q in (qd, qs):
                    np.testing.assert_array_equal(q.payload[j], codes, err_msg=f"gene {j}, {bits} bits")
                    assert float(q.lo[j]) == lo
                    assert float(q.hi[j]) == hi
            assert qd.payload.dtype == qs.payload.dtype == np.dtype(f"uint{bits}")
            # Each gene's codes are one contiguous row, ready to be written as its file.
            assert all(q.payload[j].flags.c_contiguous for q in (qd, qs) for j in range(n_genes))


@pytest.mark.parametrize("itemsize", [1, 2, 4])
def test_payload_rows_are_an_odd_number_of_cache_lines(itemsize):
    for n_cells in [0, 1, 63, 64, 700, 4096, 65536, 98304, 100000, 131072, 1_000_000]:
        row = payload_row_bytes(n_cells, itemsize)
        assert n_cells * itemsize <= row < n_cells * itemsize + 128
        assert row % 64 == 0 and (row // 64) % 2 == 1


@pytest.mark.parametrize("bits", [8, 16, None])
def test_sparse_payload_with_padded_rows_matches_dense(bits):
    # 4,096 cells: rows a multiple of 4 KB apart unless padded (the case the padding is for).
    rng = np.random.default_rng(3)
    n_cells, n_genes = 4096, 9
    x = sp.random(n_cells, n_genes, density=0.07, format="csc", dtype=np.float32, random_state=rng)
    x.data = np.log1p(x.data * 20).astype(np.float32)
    dense = quantize_block(x.toarray(), bits, constant_plus_one=True).payload
    out = np.full(n_genes * payload_row_bytes(n_cells, 4) + 100, 77, np.uint8)  # stale bytes around
    sparse = quantize_block(x, bits, constant_plus_one=True, out=out).payload
    assert sparse.shape == dense.shape == (n_genes, n_cells)
    assert (
        sparse.strides[0] == payload_row_bytes(n_cells, sparse.itemsize) > sparse.shape[1] * sparse.itemsize
    )
    np.testing.assert_array_equal(sparse, dense)


def test_sparse_block_with_only_explicit_values_and_no_implicit_zero():
    # Every cell stored: the minimum must not include an implicit 0.
    x = sp.csc_matrix(np.array([[2.0], [3.0], [4.0]], np.float32))
    q = quantize_block(x, 8, constant_plus_one=True)
    assert q.lo[0] == 2.0 and q.hi[0] == 4.0
    np.testing.assert_array_equal(q.payload[0], [0, 127, 254])


def test_rounding_is_to_nearest_and_maximum_reaches_top_code():
    v = np.linspace(0, 1, 1001, dtype=np.float32)[:, None]
    q = quantize_block(v, 8, constant_plus_one=True)
    assert q.payload[0].max() == 254 and q.payload[0].min() == 0
    decoded = dequantize(q.payload[0], float(q.lo[0]), float(q.hi[0]), 8)
    half_step = (q.hi[0] - q.lo[0]) / 254 / 2
    assert np.abs(decoded - v[:, 0]).max() <= half_step * (1 + 1e-6)
    # Truncation would bias low: with rounding the mean error is close to zero.
    assert abs(float(np.mean(decoded - v[:, 0]))) < half_step / 10


def test_valid_values_never_get_the_marker():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(10_000, 3)).astype(np.float32)
    for bits in (8, 16):
        q = quantize_block(v, bits, constant_plus_one=False)
        assert not (q.payload == MARKER[bits]).any()


def test_nonfinite_counts():
    v = np.array([[np.nan, 1], [np.inf, 2], [-np.inf, 3], [1.0, np.nan]], np.float32)
    for block in (v, sp.csc_matrix(v)):
        q = quantize_block(block, None, constant_plus_one=True)
        assert q.n_nan.tolist() == [1, 1]
        assert q.n_inf.tolist() == [2, 0]
        np.testing.assert_array_equal(q.payload, v.T)  # float32 written unchanged


@pytest.mark.parametrize("bits", [8, 16])
def test_dequantize_marks_missing(bits):
    codes = np.array([0, STEPS[bits], MARKER[bits]], dtype=f"uint{bits}")
    out = dequantize(codes, -1.0, 1.0, bits)
    assert out[0] == -1.0 and out[1] == 1.0 and np.isnan(out[2])


@pytest.mark.parametrize("bits", [8, 16, None])
def test_every_block_kind_quantizes_alike(bits):
    """Dense, CSC and CSR records (split into parts, in shuffled order) give the same payload."""
    from cellucid_export._kernels import RECORD
    from cellucid_export.blocks import CSRPass, GeneRecords, SparseStats

    rng = np.random.default_rng(5)
    x = sp.random(300, 50, density=0.1, format="csc", dtype=np.float32, random_state=rng)
    x.data = (np.log1p(x.data * 10) - 0.5 * (np.arange(x.nnz) % 7 == 0)).astype(np.float32)
    x.data[::17] = np.nan
    x.data[5::41] = np.inf
    x = sp.csc_matrix(sp.hstack([x[:, :3], np.full((300, 1), 2.5, np.float32), x[:, 4:]]))  # constant gene
    dense = quantize_block(x.toarray(), bits, constant_plus_one=True)
    csc = quantize_block(x, bits, constant_plus_one=True)
    coo = x.tocoo()
    rec = np.empty(coo.nnz, RECORD)
    rec["row"], rec["gene"], rec["val"] = coo.row, coo.col + 10, coo.data  # genes 10.. of a larger block
    rec = rec[rng.permutation(coo.nnz)]
    stats = SparseStats.empty(60)
    for g in range(50):
        col = x[:, g].data
        ok = col[np.isfinite(col)]
        stats.vmin[10 + g] = ok.min() if ok.size else np.inf
        stats.vmax[10 + g] = ok.max() if ok.size else -np.inf
        stats.n_stored[10 + g], stats.n_nan[10 + g] = col.size, np.isnan(col).sum()
        stats.n_inf[10 + g] = np.isinf(col).sum()
    records = GeneRecords(300, stats, 0, 60, np.array_split(rec, 4))[:, 10:60]
    from_records = quantize_block(records, bits, constant_plus_one=True)
    np.testing.assert_array_equal(records.toarray(), x.toarray())
    # The same genes read from CSR rows (three runs in two parts, on two threads), file columns reversed.
    csr = sp.csr_matrix(x[:, ::-1])
    pos_of = np.arange(49, -1, -1, dtype=np.int32) + 10

    def runs(part):
        for r0, r1 in part:
            a, b = csr.indptr[r0], csr.indptr[r1]
            yield r0, csr.indptr[r0 : r1 + 1] - a, csr.indices[a:b], csr.data[a:b]

    parts = [[(0, 100)], [(100, 101), (101, 300)]]
    passes = CSRPass(300, stats, 0, 60, runs, parts, pos_of, np.empty(0, np.int32))[:, 10:60]
    from_passes = quantize_block(passes, bits, constant_plus_one=True)
    # Genes in file order (every other column of a wider file, sorted rows): passes visit column windows,
    # here of 25 genes each.
    wide = sp.csr_matrix(
        sp.hstack([x, sp.random(300, 50, density=0.3, format="csc", random_state=rng)])[
            :, np.argsort(np.r_[np.arange(0, 100, 2), np.arange(1, 100, 2)])
        ]
    )
    wide_pos = np.full(100, -1, np.int32)
    wide_pos[::2] = np.arange(10, 60)
    columns = np.r_[np.zeros(10, np.int64), np.arange(0, 100, 2)]

    def wide_runs(part):
        yield 0, wide.indptr, wide.indices, wide.data.astype(np.float32)

    windowed = CSRPass(300, stats, 0, 60, wide_runs, [[(0, 300)]], wide_pos, np.empty(0, np.int32), columns)
    from_windows = [quantize_block(windowed[:, a : a + 25], bits, constant_plus_one=True) for a in (10, 35)]
    np.testing.assert_array_equal(np.vstack([q.payload for q in from_windows]), dense.payload)
    for q in (csc, from_records, from_passes):
        np.testing.assert_array_equal(q.payload, dense.payload)
        np.testing.assert_array_equal(q.n_nan, dense.n_nan)
        np.testing.assert_array_equal(q.n_inf, dense.n_inf)
        if bits is not None:
            np.testing.assert_array_equal(q.lo, dense.lo)
            np.testing.assert_array_equal(q.hi, dense.hi)


def test_large_payload_buffers_are_writable_and_exact():
    """Buffers past the allocator's pool are mapped in by the system; a payload in one is the same."""
    from cellucid_export.quantize import payload_buffer

    nbytes = 4_190 * payload_row_bytes(4_000, 1) + 5  # 16.9 MB of codes in padded rows
    assert nbytes > 2**24
    buf = payload_buffer(nbytes)
    assert buf.shape == (nbytes,) and buf.dtype == np.uint8 and buf.flags.writeable
    x = sp.random(4_000, 4_190, density=0.05, format="csc", dtype=np.float32, random_state=2)
    np.testing.assert_array_equal(
        quantize_block(x, 8, constant_plus_one=True, out=buf).payload,
        quantize_block(x.toarray(), 8, constant_plus_one=True).payload,
    )


@pytest.mark.parametrize("layout", ["name", "index"])
def test_constant_genes_of_any_magnitude_export(tmp_path, layout):
    """The name layout writes max = min + 1 for a constant gene; where +1 is lost to rounding (|min| >= 2**53)
    it still needs some max above min, or the export would fail its own check."""
    import json

    import anndata as ad
    import pandas as pd

    import cellucid_export

    consts = [0.0, 3.5, 1e10, 2.0**53, 1e16, -3.5e20, 3e38, float(np.finfo(np.float32).max)]
    x = np.tile(np.array(consts, np.float32), (30, 1))
    a = ad.AnnData(x, var=pd.DataFrame(index=[f"g{i}" for i in range(len(consts))]))
    a.obs_names = [f"c{i}" for i in range(30)]
    out = tmp_path / layout
    a.cellucid.export(out, layer="X", layout=layout, embeddings=False, progress=False)
    fields = json.loads((out / "var_manifest.json").read_text())["fields"]
    ex = cellucid_export.read_export(out)
    for entry, c in zip(fields, consts, strict=True):
        lo, hi = entry[-2:]
        assert lo == float(np.float32(c))
        if layout == "index":
            assert hi == lo
        else:
            assert hi == (lo + 1.0 if lo + 1.0 > lo else np.nextafter(lo, np.inf)) and math.isfinite(hi)
        np.testing.assert_array_equal(ex.gene(entry[-3]), np.float32(c))
    assert cellucid_export.validate(out, genes_only=True) == []
