"""cellucid_export.pl draws what was exported: checked on the plotted arrays, not on pixels."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tests.conftest import make_scrna

import cellucid_export
from cellucid_export import pl
from cellucid_export.errors import CellucidExportWarning, InvalidParameterError


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _normalise(xy: np.ndarray) -> np.ndarray:
    """The spec's points normalisation, written out independently of the package."""
    xy = xy.astype(np.float64)
    center = (xy.min(0) + xy.max(0)) / 2
    r = (xy.max(0) - xy.min(0)).max()
    return ((xy - center) * (2 / r)).astype(np.float32)


def _panel(ax):
    coll = ax.collections[0]
    return np.asarray(coll.get_offsets()), np.ma.filled(coll.get_array().astype(np.float64), np.nan), coll


def _sorted_rows(xy, c):
    """Rows (x, y, value) in a canonical order, so draw order does not matter for the comparison."""
    rows = np.column_stack([xy, c])
    return rows[np.lexsort(rows.T[::-1])]


def test_gene_draws_exported_points_and_decoded_values_beside_adata(pbmc, tmp_path):
    res = pbmc.cellucid.export(tmp_path / "pbmc", genes=pbmc.var.highly_variable, progress=False)
    ax_export, ax_adata = pl.gene(res, "CD79A", adata=pbmc, show=False)

    xy, c, coll = _panel(ax_export)
    decoded = cellucid_export.read_export(res.path).gene("CD79A")
    points = _normalise(pbmc.obsm["X_umap"])
    np.testing.assert_array_equal(_sorted_rows(xy, c), _sorted_rows(points, decoded))
    # Cells are drawn from low to high, so expressing cells sit on top, as in sc.pl.umap.
    assert np.all(np.diff(c) >= 0)

    xy2, c2, coll2 = _panel(ax_adata)
    source = pbmc.raw[:, "CD79A"].X.toarray().ravel()  # the matrix the export chose (raw.X)
    np.testing.assert_array_equal(
        _sorted_rows(xy2, c2), _sorted_rows(pbmc.obsm["X_umap"].astype(np.float64), source)
    )
    # One colour scale for both panels: the same colour means the same value.
    assert coll.norm.vmin == coll2.norm.vmin == pytest.approx(0.0)
    assert coll.norm.vmax == coll2.norm.vmax == pytest.approx(max(decoded.max(), source.max()))
    assert "raw.X" in ax_adata.get_title()
    assert np.abs(decoded - source).max() <= cellucid_export.read_export(res.path).step("CD79A") / 2 + 1e-6


def test_gene_takes_the_h5ad_path_of_the_anndata(pbmc, tmp_path):
    res = pbmc.cellucid.export(tmp_path / "pbmc", genes=["CD79A"], progress=False)
    pbmc.write_h5ad(tmp_path / "pbmc.h5ad")
    _, from_memory = pl.gene(res.path, "CD79A", adata=pbmc, show=False)
    _, from_file = pl.gene(res.path, "CD79A", adata=tmp_path / "pbmc.h5ad", show=False)
    for a, b in zip(_panel(from_memory)[:2], _panel(from_file)[:2], strict=True):
        np.testing.assert_array_equal(a, b)
    assert from_file.get_title() == from_memory.get_title()


def test_gene_from_a_folder_finds_the_same_matrix_and_follows_gene_id_column(tmp_path):
    a = make_scrna(n_cells=80, n_genes=12)
    a.cellucid.export(
        tmp_path / "s", gene_id_column="gene_symbols", layout="index", compression=None, progress=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", CellucidExportWarning)
        ax_export, ax_adata = pl.gene(tmp_path / "s", "SYM3", adata=a, show=False)
    _, c, _ = _panel(ax_export)
    _, c2, _ = _panel(ax_adata)
    expected = a.X[:, 3].toarray().ravel()
    np.testing.assert_allclose(np.sort(c2), np.sort(expected))
    np.testing.assert_allclose(np.sort(c), np.sort(expected), atol=(expected.max() - expected.min()) / 254)


def test_gene_warns_when_compared_with_another_matrix(pbmc, tmp_path):
    res = pbmc.cellucid.export(tmp_path / "pbmc", genes=["CD79A"], progress=False)
    with pytest.warns(CellucidExportWarning, match="more than quantization explains"):
        pl.gene(res.path, "CD79A", adata=pbmc, layer="X", show=False)  # X is scaled, the export is raw.X


def test_gene_export_only_missing_values_are_grey_and_drawn_first(tmp_path):
    a = make_scrna(n_cells=60, n_genes=3)
    x = a.X.toarray()
    x[:5, 1] = np.nan
    a.X = x
    a.cellucid.export(tmp_path / "n", progress=False)
    ax = pl.gene(tmp_path / "n", "G1", show=False)
    assert not isinstance(ax, list)
    _, c, coll = _panel(ax)
    assert np.isnan(c[:5]).all() and np.isfinite(c[5:]).all()
    assert coll.get_cmap().get_bad().tolist() == list(matplotlib.colors.to_rgba(pl.NA_COLOR))


def test_gene_reads_uncompressed_and_3d_points(tmp_path):
    a = make_scrna(n_cells=40, n_genes=2)
    a.obsm["X_umap"] = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    a.cellucid.export(tmp_path / "u", compression=None, progress=False)
    assert (tmp_path / "u" / "points_3d.bin").is_file()
    ax = pl.gene(tmp_path / "u", "G0", show=False)
    xy, _, _ = _panel(ax)
    assert np.isclose(
        _sorted_rows(xy, np.zeros(40)), _sorted_rows(_normalise(a.obsm["X_umap"])[:, :2], np.zeros(40))
    ).all()


def test_gene_errors(pbmc, tmp_path):
    res = pbmc.cellucid.export(tmp_path / "pbmc", genes=["CD79A"], progress=False)
    with pytest.raises(InvalidParameterError, match="cells but the export"):
        pl.gene(res, "CD79A", adata=pbmc[:10], show=False)
    with pytest.raises(InvalidParameterError, match="basis='tsne'"):
        pl.gene(res, "CD79A", adata=pbmc, basis="tsne", show=False)
    with pytest.raises(KeyError, match="is not in this export"):
        pl.gene(res, "MS4A1", show=False)
    with pytest.raises(InvalidParameterError, match="ax must be"):
        pl.gene(res, "CD79A", adata=pbmc, ax=plt.subplots()[1], show=False)
    with pytest.raises(InvalidParameterError, match="has no 3-D points"):
        pl.gene(res, "CD79A", dimension=3, show=False)
    genes_only = make_scrna(n_cells=20, n_genes=2)
    del genes_only.obsm["X_umap"]
    with pytest.warns(CellucidExportWarning):
        genes_only.cellucid.export(tmp_path / "g", progress=False)
    with pytest.raises(FileNotFoundError, match="no dataset_identity.json"):
        pl.gene(tmp_path / "g", "G0", show=False)


def test_gene_draws_on_given_axes(pbmc, tmp_path):
    res = pbmc.cellucid.export(tmp_path / "pbmc", genes=["CD79A"], progress=False)
    _fig, axs = plt.subplots(1, 2)
    out = pl.gene(res, "CD79A", adata=pbmc, ax=axs)
    assert out == list(axs)  # show defaults to False when the caller owns the figure
    assert len(axs[0].collections) == len(axs[1].collections) == 1


def _bars(ax):
    return {
        (ax.get_xticklabels()[round(p.get_x() + p.get_width() / 2)].get_text(), c.get_label()): p.get_height()
        for c in ax.containers
        for p in c.patches
    }


def test_size_plan_from_a_plan_is_exact_and_uncompressed_only():
    plan = cellucid_export.ExportPlan(100_000, 20_000, 8, 6)
    ax = pl.size_plan(plan, show=False)
    bars = _bars(ax)
    assert bars == {
        ("uint8 (8-bit)", "no compression"): 2e9,
        ("uint16 (16-bit)", "no compression"): 4e9,
        ("float32", "no compression"): 8e9,
    }
    # The float32 bar reaches the default guard, which is drawn.
    assert any(line.get_ydata()[0] == cellucid_export.DEFAULT_MAX_BYTES for line in ax.get_lines())
    # A size is taken as everywhere else, and a level is needed for the gzip bars.
    ax = pl.size_plan(plan, max_bytes="3GB", show=False)
    assert any(line.get_ydata()[0] == 3e9 for line in ax.get_lines())
    with pytest.raises(InvalidParameterError, match="compression must be a gzip level from 1 to 9"):
        pl.size_plan(plan, compression=None, show=False)


def test_size_plan_measures_gzip_on_sampled_genes(tmp_path):
    a = make_scrna(n_cells=200, n_genes=30)
    ax = pl.size_plan(a, genes="highly_variable", n_sample_genes=100, show=False)
    n_genes = int(a.var.highly_variable.sum())
    bars = _bars(ax)
    assert bars[("uint8 (8-bit)", "no compression")] == 200 * n_genes
    assert bars[("float32", "no compression")] == 4 * 200 * n_genes
    # With every gene sampled, the gzip bar is the size of a real export's gene files.
    for bits, label in [(8, "uint8 (8-bit)"), (16, "uint16 (16-bit)"), (None, "float32")]:
        res = a.cellucid.export(
            tmp_path / str(bits), genes="highly_variable", var_quantization=bits, progress=False
        )
        on_disk = sum(p.stat().st_size for p in (res.path / "var").iterdir())
        assert bars[(label, "gzip level 6")] == on_disk
    assert not any(ax.get_lines())  # far below the guard: not drawn


def test_size_plan_reads_h5ad_files(tmp_path):
    a = make_scrna(n_cells=100, n_genes=20)
    a.write_h5ad(tmp_path / "a.h5ad")
    measured = pl.measure_sizes(tmp_path / "a.h5ad", n_sample_genes=5)
    assert len(measured["sampled_genes"]) == 5
    assert measured["sampled_genes"][0] == "G0" and measured["sampled_genes"][-1] == "G19"
    assert measured["bytes"][(16, None)] == 2 * 100 * 20
    # An estimate from 5 genes: sparse 8-bit codes shrink under gzip.
    assert 0 < measured["bytes"][(8, 6)] < 100 * 20
    with pytest.raises(InvalidParameterError, match="n_sample_genes"):
        pl.measure_sizes(a, n_sample_genes=0)


def test_damaged_points_file_is_named(pbmc, tmp_path):
    res = pbmc.cellucid.export(tmp_path / "pbmc", genes=["CD79A"], progress=False)
    points = res.path / "points_2d.bin.gz"
    points.write_bytes(points.read_bytes()[:100])
    with pytest.raises(
        cellucid_export.errors.ExportReadError, match="points_2d.bin.gz is a truncated gzip file"
    ):
        pl.read_points(res.path)


def test_gene_does_not_warn_when_float32_keeps_inf_as_the_source(tmp_path, recwarn):
    a = make_scrna(n_cells=60, n_genes=4)
    x = a.X.toarray()
    x[0, 1] = np.inf
    a.X = x
    res = a.cellucid.export(tmp_path / "f32", layer="X", var_quantization=None, progress=False)
    pl.gene(res, "G1", adata=a, show=False)
    assert not [w for w in recwarn if "more than quantization explains" in str(w.message)]


def test_size_plan_explains_an_export_result(tmp_path):
    res = make_scrna(n_cells=60, n_genes=4).cellucid.export(tmp_path / "o", progress=False)
    with pytest.raises(InvalidParameterError, match=r"before exporting.*res\.bytes_written"):
        pl.size_plan(res, show=False)
