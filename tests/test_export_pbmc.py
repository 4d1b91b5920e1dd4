"""Round trips on scanpy's pbmc68k_reduced: export, read back, compare with the source."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import cellucid_export
from cellucid_export.quantize import STEPS


def test_auto_picks_raw_and_realigns_hvg_mask(pbmc, tmp_path, caplog):
    assert (pbmc.X < 0).any()  # scaled X: the scanpy tutorial case
    hvg = pbmc.var.highly_variable
    with caplog.at_level(logging.INFO, logger="cellucid_export"):
        logging.getLogger("cellucid_export").propagate = True
        try:
            res = pbmc.cellucid.export(tmp_path / "pbmc", genes=hvg, progress=False)
        finally:
            logging.getLogger("cellucid_export").propagate = False
    assert res.source == "raw.X"
    assert "negative" in res.source_reason and "log-normalised" in res.source_reason
    assert "raw.X" in caplog.text  # the choice is reported to the user
    assert res.n_genes == int(hvg.sum())
    assert res.n_files == sum(1 for p in res.path.rglob("*") if p.is_file())
    # Every file counts, the obs files written while the obs manifest is built included.
    assert res.bytes_written == sum(p.stat().st_size for p in res.path.rglob("*") if p.is_file())
    assert res.viewer_ready and res.embeddings == {2: "X_umap"}

    ex = cellucid_export.read_export(res.path)
    assert ex.gene_ids == list(pbmc.var_names[hvg.to_numpy()])
    raw = pbmc.raw.to_adata()
    for gene in ex.gene_ids:
        src = raw[:, gene].X.toarray().ravel()
        decoded = ex.gene(gene)
        lo, hi = ex.bounds(gene)
        assert lo == float(np.float32(src.min())) and hi == float(np.float32(src.max()))
        assert np.abs(decoded - src).max() <= (hi - lo) / STEPS[8] / 2 * (1 + 1e-5) + 1e-7


def test_float32_is_exact_and_uncompressed(pbmc, tmp_path):
    genes = ["CD79A", "MS4A1", "CST3", "NKG7"]
    res = pbmc.cellucid.export(
        tmp_path / "f32", genes=genes, var_quantization=None, compression=None, progress=False
    )
    ex = cellucid_export.read_export(res.path)
    assert ex.gene_ids == genes  # a list keeps its order
    for g in genes:
        assert ex.file(g).name == f"{g}.values.f32"
        np.testing.assert_array_equal(ex.gene(g), pbmc.raw[:, g].X.toarray().ravel())
    manifest = json.loads((res.path / "var_manifest.json").read_text())
    assert list(manifest) == [
        "_format",
        "n_points",
        "var_gene_id_column",
        "compression",
        "quantization",
        "_varSchema",
        "fields",
    ]
    assert manifest["_varSchema"] == {
        "kind": "continuous",
        "pathPattern": "var/{key}.values.f32",
        "ext": "f32",
        "dtype": "float32",
        "quantized": False,
    }
    assert manifest["fields"] == [[g] for g in genes]
    assert manifest["compression"] is None and manifest["quantization"] is None
    assert not any(p.suffix == ".gz" for p in res.path.rglob("*"))


@pytest.mark.parametrize("bits", [8, 16])
def test_index_layout(pbmc, tmp_path, bits):
    genes = list(pbmc.var_names[:25])
    res = pbmc.cellucid.export(
        tmp_path / "idx", layer="raw", genes=genes, layout="index", var_quantization=bits, progress=False
    )
    manifest = json.loads((res.path / "var_manifest.json").read_text())
    ext = f"u{bits}"
    assert manifest["_varSchema"] == {
        "kind": "continuous",
        "pathPattern": f"var/{{index}}.values.{ext}.gz",
        "ext": ext,
        "dtype": f"uint{bits}",
        "quantized": True,
        "quantizationBits": bits,
    }
    assert [f[:2] for f in manifest["fields"]] == [[i, g] for i, g in enumerate(genes)]
    assert sorted(p.name for p in (res.path / "var").iterdir()) == sorted(
        f"{i}.values.{ext}.gz" for i in range(25)
    )
    ex = cellucid_export.read_export(res.path)
    assert ex.layout == "index"
    src = pbmc.raw[:, genes].X.toarray()
    dec = ex.to_array()
    steps = np.array([ex.step(g) for g in genes])
    assert (np.abs(dec - src) <= steps / 2 * (1 + 1e-5) + 1e-7).all()


def test_estimate_matches_export_and_writes_nothing(pbmc, tmp_path):
    plan = pbmc.cellucid.estimate(genes="highly_variable")
    assert plan.n_cells == 700 and plan.n_genes == int(pbmc.var.highly_variable.sum())
    assert plan.bytes_per_gene == 700 and plan.payload_bytes == 700 * plan.n_genes
    assert plan.n_files == plan.n_genes + 1
    text = repr(plan)
    assert "uint8" in text and "float32" in text and "raw.X" in text
    assert list(tmp_path.iterdir()) == []
    plan16 = pbmc.cellucid.estimate(genes="highly_variable", var_quantization=16)
    assert plan16.payload_bytes == 2 * plan.payload_bytes


def test_estimate_says_whether_max_bytes_lets_the_export_run(pbmc, tmp_path):
    plan = pbmc.cellucid.estimate(genes="highly_variable")  # 309 genes x 700 cells = 216,300 bytes
    assert plan.within_max_bytes and "within max_bytes=8.00 GB" in repr(plan)
    tight = pbmc.cellucid.estimate(genes="highly_variable", max_bytes="200KB")
    assert not tight.within_max_bytes
    assert "above max_bytes=200.00 KB: the export will refuse it" in repr(tight)
    # The export agrees with the estimate, either way.
    with pytest.raises(cellucid_export.errors.ExportTooLargeError):
        pbmc.cellucid.export(tmp_path / "a", genes="highly_variable", max_bytes="200KB", progress=False)
    pbmc.cellucid.export(
        tmp_path / "b", genes="highly_variable", max_bytes=plan.payload_bytes, progress=False
    )
    assert pbmc.cellucid.estimate(genes="highly_variable", max_bytes=plan.payload_bytes).within_max_bytes
    unlimited = pbmc.cellucid.estimate(max_bytes=None)
    assert unlimited.within_max_bytes and "max_bytes" not in repr(unlimited)


def test_gene_id_column(pbmc, tmp_path):
    pbmc.var["symbol_lower"] = [g.lower() + "_sym" for g in pbmc.var_names]
    res = pbmc.cellucid.export(
        tmp_path / "ids",
        layer="X",
        genes=["CD79A", "ms4a1_sym"],
        gene_id_column="symbol_lower",
        progress=False,
    )
    ex = cellucid_export.read_export(res.path)
    assert ex.gene_ids == ["cd79a_sym", "ms4a1_sym"]  # ids resolved through var_names or the column
    assert ex.manifest["var_gene_id_column"] == "symbol_lower"
    np.testing.assert_allclose(
        ex.gene("cd79a_sym"), pbmc[:, "CD79A"].X.ravel(), atol=ex.step("cd79a_sym") / 2 + 1e-6
    )


def test_views_export_their_subset(pbmc, tmp_path):
    view = pbmc[pbmc.obs.bulk_labels == "CD14+ Monocyte", :50]
    assert view.is_view
    res = view.cellucid.export(tmp_path / "view", layer="X", var_quantization=None, progress=False)
    ex = cellucid_export.read_export(res.path)
    assert ex.n_cells == view.n_obs and ex.gene_ids == list(view.var_names)
    np.testing.assert_array_equal(ex.to_array(), view.X)
