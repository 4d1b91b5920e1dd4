"""The compiled statistics loop over CSR rows, checked against numpy on scRNA-like matrices."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import cellucid_export
from cellucid_export import _kernels as kernels
from cellucid_export.blocks import SparseStats


def _matrix(seed: int = 0, n_cells: int = 400, n_genes: int = 60) -> sp.csr_matrix:
    """log1p counts, about 8% non-zero, with NaN, +Inf and -Inf stored in a few places."""
    rng = np.random.default_rng(seed)
    x = sp.random(n_cells, n_genes, density=0.08, format="csr", dtype=np.float32, random_state=rng)
    x.data = np.log1p(rng.poisson(3.0, x.nnz) + 1).astype(np.float32)
    x.data[rng.choice(x.nnz, 6, replace=False)] = [np.nan, np.nan, np.inf, -np.inf, np.nan, np.inf]
    return x


def _expected(dense: np.ndarray, stored: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene statistics of the stored values, by numpy, from a dense copy and a stored-entry mask."""
    finite = stored & np.isfinite(dense)
    with np.errstate(invalid="ignore"):
        vmin = np.where(finite, dense, np.inf).min(axis=0)
        vmax = np.where(finite, dense, -np.inf).max(axis=0)
    return {
        "vmin": vmin,
        "vmax": vmax,
        "n_stored": stored.sum(axis=0),
        "n_nan": (stored & np.isnan(dense)).sum(axis=0),
        "n_inf": (stored & np.isinf(dense)).sum(axis=0),
    }


def _stats(x: sp.csr_matrix, row_lut=None, pos_of=None) -> tuple[SparseStats, bool]:
    n_genes = x.shape[1] if pos_of is None else int(pos_of.max()) + 1
    stats = SparseStats.empty(n_genes)
    lut = np.empty(0, np.int32) if row_lut is None else row_lut
    pos = np.arange(x.shape[1], dtype=np.int32) if pos_of is None else pos_of
    ordered = kernels.csr_stats(
        x.indptr.astype(np.int64), x.indices, x.data, 0, lut, pos, *stats.arrays()
    )  # fmt: skip
    return stats, ordered


def _assert_stats(stats: SparseStats, expected: dict[str, np.ndarray]) -> None:
    for key, want in expected.items():
        np.testing.assert_array_equal(getattr(stats, key), want, err_msg=key)


def test_statistics_match_numpy():
    x = _matrix()
    stored = x.copy()
    stored.data = np.ones_like(stored.data)
    stats, ordered = _stats(x)
    assert ordered
    _assert_stats(stats, _expected(x.toarray(), stored.toarray() > 0))
    assert stats.n_nan.sum() == 3 and stats.n_inf.sum() == 3


def test_statistics_of_a_cell_and_gene_subset():
    x = _matrix(1)
    rng = np.random.default_rng(2)
    cells = np.sort(rng.choice(x.shape[0], 150, replace=False))
    genes = rng.permutation(x.shape[1])[:25]
    row_lut = np.full(x.shape[0], -1, np.int32)
    row_lut[cells] = np.arange(len(cells))
    pos_of = np.full(x.shape[1], -1, np.int32)
    pos_of[genes] = np.arange(len(genes))
    stats, ordered = _stats(x, row_lut, pos_of)
    assert ordered
    sub = x[cells][:, genes]
    stored = sub.copy()
    stored.data = np.ones_like(stored.data)
    _assert_stats(stats, _expected(sub.toarray(), stored.toarray() > 0))


@pytest.mark.parametrize("skipped", [False, True], ids=["exported-row", "row-outside-the-subset"])
@pytest.mark.parametrize("fault", ["reversed", "duplicate"])
def test_unsorted_or_repeated_columns_are_reported(skipped, fault):
    """One row out of order is enough, even a row the export skips (the pass then reads every column)."""
    x = _matrix(3)
    r = next(i for i in range(x.shape[0]) if x.indptr[i + 1] - x.indptr[i] >= 3)
    a, b = x.indptr[r], x.indptr[r + 1]
    if fault == "reversed":
        x.indices[a:b] = x.indices[a:b][::-1].copy()
    else:
        x.indices[a + 1] = x.indices[a]
    row_lut = None
    if skipped:
        row_lut = np.arange(x.shape[0], dtype=np.int32)
        row_lut[r] = -1
    _, ordered = _stats(x, row_lut)
    assert not ordered


def test_export_of_rows_with_unsorted_columns_reads_back_the_source(tmp_path):
    """Rows stored back to front (allowed in CSR) export the same values as canonical rows.

    A 20 kB memory budget splits the 60 genes into payloads of 25: three passes over the rows.
    """
    x = _matrix(4)
    x.data[~np.isfinite(x.data)] = 1.0
    unsorted = x.copy()
    for r in range(x.shape[0]):
        a, b = x.indptr[r], x.indptr[r + 1]
        unsorted.indices[a:b] = x.indices[a:b][::-1].copy()
        unsorted.data[a:b] = x.data[a:b][::-1].copy()
    unsorted.has_sorted_indices = False
    adata = ad.AnnData(unsorted)
    adata.var_names = [f"G{i}" for i in range(x.shape[1])]
    with pytest.warns(cellucid_export.CellucidExportWarning, match="not viewer-openable"):  # no embedding
        res = adata.cellucid.export(
            tmp_path / "u", var_quantization=None, compression=None, progress=False, memory_budget=20_000
        )
    got = cellucid_export.read_export(res.path).to_array()
    np.testing.assert_array_equal(got, x.toarray())
