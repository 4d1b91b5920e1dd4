"""Bad input gets a clear error naming the problem and the fix, before anything is written."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from tests.conftest import make_scrna

import cellucid_export
from cellucid_export import errors


def export(a, tmp_path, **kw):
    kw.setdefault("progress", False)
    return a.cellucid.export(tmp_path / "out", **kw)


def assert_nothing_written(tmp_path):
    assert [p.name for p in tmp_path.iterdir()] == []


def test_missing_layer_lists_what_exists(scrna, tmp_path):
    with pytest.raises(
        errors.MatrixChoiceError, match=r"no layer 'lognorm'.*'X', the layers 'counts', 'log1p'"
    ):
        export(scrna, tmp_path, layer="lognorm")
    with pytest.raises(errors.MatrixChoiceError, match="no adata.raw"):
        export(scrna, tmp_path, layer="raw")
    assert_nothing_written(tmp_path)


def test_an_anndata_without_any_matrix_is_explained(tmp_path):
    a = ad.AnnData(obs=pd.DataFrame(index=[f"c{i}" for i in range(5)]), var=pd.DataFrame(index=["g1", "g2"]))
    for layer in (None, "X"):
        with pytest.raises(errors.MatrixChoiceError, match="holds no expression matrix: adata.X is None"):
            export(a, tmp_path, layer=layer)
    assert_nothing_written(tmp_path)


def test_auto_never_exports_counts_silently(tmp_path):
    a = make_scrna()
    a.X = a.layers["counts"].copy()
    del a.layers["log1p"]
    with pytest.raises(errors.MatrixChoiceError) as e:
        export(a, tmp_path)
    msg = str(e.value)
    assert "X holds only whole numbers" in msg and "raw counts" in msg
    assert "layer='X' to export those counts anyway" in msg and "sc.pp.log1p" in msg
    assert_nothing_written(tmp_path)
    # An explicit choice is respected.
    assert export(a, tmp_path, layer="counts").source == "layers['counts']"


def test_a_layer_named_raw_or_x_is_found_when_there_is_no_such_matrix(scrna, tmp_path):
    scrna.layers["raw"] = scrna.layers["counts"]
    assert scrna.raw is None
    assert export(scrna, tmp_path, layer="raw").source == "layers['raw']"
    scrna.raw = scrna  # now 'raw' is adata.raw, as in scanpy
    assert scrna.cellucid.estimate(layer="raw").source == "raw.X"


def test_auto_prefers_conventional_layer_over_counts_in_x(tmp_path):
    a = make_scrna()
    a.X = a.layers["counts"].copy()
    res = export(a, tmp_path)
    assert res.source == "layers['log1p']"
    assert "whole numbers" in res.source_reason


def test_auto_uses_log_x(scrna, tmp_path):
    res = export(scrna, tmp_path, genes=["G1"])
    assert res.source == "X" and "log-normalised" in res.source_reason


def test_auto_refuses_normalised_but_not_logged(tmp_path):
    a = make_scrna()
    a.X = a.layers["counts"].multiply(1e4 / (a.layers["counts"].sum(1) + 1)).tocsr().astype(np.float32)
    a.layers.clear()
    with pytest.raises(errors.MatrixChoiceError, match="not log-transformed"):
        export(a, tmp_path)


def test_auto_refuses_a_small_panel_normalised_but_not_logged(tmp_path):
    """A low-depth panel after sc.pp.normalize_total stays below the "looks linear" maximum: the equal cell
    totals give it away, and the advice is to log-transform (it is normalised already)."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.5, 1.0, 300) / 2, (600, 300)).astype(np.float32)
    a = ad.AnnData(sp.csr_matrix(counts))
    a.var_names = [f"G{i}" for i in range(300)]
    sc.pp.normalize_total(a)
    assert a.X.max() < 50
    with pytest.raises(errors.MatrixChoiceError, match=r"every cell sampled sums to .*normalize_total") as e:
        export(a, tmp_path)
    assert "log-transform the normalised values first: sc.pp.log1p(adata)" in str(e.value)
    assert "normalize_total(adata);" not in str(e.value)
    sc.pp.log1p(a)
    assert export(a, tmp_path, embeddings=False).source == "X"


def test_auto_sees_a_scaled_x_without_negative_values(pbmc_master, tmp_path):
    """sc.pp.scale(zero_center=False) leaves X non-negative; its var columns say it was scaled."""
    a = pbmc_master.copy()
    a.X = a.raw[:, a.var_names].X.toarray()
    sc.pp.scale(a, zero_center=False)
    assert a.X.min() >= 0 and {"mean", "std"} <= set(a.var.columns)
    res = export(a, tmp_path, genes=["CD79A"])
    assert res.source == "raw.X" and "sc.pp.scale(zero_center=False)" in res.source_reason
    assert export(a, tmp_path / "x", genes=["CD79A"], layer="X").source == "X"
    # Without raw, a log layer is taken, and without either the scaled X is refused, not exported.
    b = a.copy()
    b.raw = None
    b.layers["log1p"] = pbmc_master.raw[:, b.var_names].X.copy()
    assert b.cellucid.estimate().source == "layers['log1p']"
    del b.layers["log1p"]
    with pytest.raises(
        errors.MatrixChoiceError, match=r"X looks scaled by sc\.pp\.scale\(zero_center=False\)"
    ):
        b.cellucid.estimate()
    # sc.pp.scale(adata, layer=...) adds the same var columns but leaves X as it was: X is kept.
    c = pbmc_master.copy()
    c.X = c.raw[:, c.var_names].X.toarray()
    c.layers["scaled"] = c.X.copy()
    sc.pp.scale(c, zero_center=False, layer="scaled")
    assert {"mean", "std"} <= set(c.var.columns) and c.cellucid.estimate().source == "X"


@pytest.mark.parametrize("transform", ["size factors", "sqrt"])
def test_auto_refuses_a_low_count_panel_not_log_transformed(tmp_path, transform):
    """Counts divided by a per-cell factor (or their square roots) stay below the 'linear' maximum in a
    low-count panel, and their cell totals differ: the values of each cell give them away."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.gamma(0.6, 1.0, 300) / 6, (1500, 300)).astype(np.float64)
    counts = counts[counts.sum(1) >= 10]
    x = counts / rng.uniform(0.5, 2.0, (len(counts), 1))
    x = np.sqrt(x) if transform == "sqrt" else x
    a = ad.AnnData(sp.csr_matrix(x.astype(np.float32)))
    a.var_names = [f"G{i}" for i in range(a.n_vars)]
    assert a.X.max() < 50
    said = "square-root transformed" if transform == "sqrt" else "whole multiple of the cell's smallest"
    with pytest.raises(errors.MatrixChoiceError, match=said):
        a.cellucid.estimate()
    a.X = sp.csr_matrix(np.log1p(x).astype(np.float32))  # the same cells, log-transformed: accepted
    assert a.cellucid.estimate().source == "X"


def test_auto_samples_cells_across_the_matrix(tmp_path):
    """Concatenated batches, the first log-normalised and the second still counts: the second is seen."""
    a = make_scrna(n_cells=1200)
    x = a.X.toarray()
    x[600:] = a.layers["counts"].toarray()[600:]
    a.X = sp.csr_matrix(x)
    a.layers.clear()
    with pytest.raises(
        errors.MatrixChoiceError, match=r"X mixes cells of whole numbers \(\d+ of \d+ cells sampled"
    ):
        export(a, tmp_path)
    assert_nothing_written(tmp_path)
    # A small batch in the middle of a larger matrix is seen too (with 10 runs of 50 cells it fell between).
    b = make_scrna(n_cells=5000)
    x = b.X.toarray()
    x[2260:2400] = b.layers["counts"].toarray()[2260:2400]
    b.X = sp.csr_matrix(x)
    b.layers.clear()
    with pytest.raises(errors.MatrixChoiceError, match=r"X mixes cells of whole numbers"):
        b.cellucid.estimate()


@pytest.mark.parametrize(
    ("genes", "error", "pattern"),
    [
        (
            ["G1", "NOPE", "ALSO_NOPE"],
            errors.UnknownGeneError,
            r"2 of the requested genes .* 'NOPE', 'ALSO_NOPE'",
        ),
        (["G1", "g2", "G10O"], errors.UnknownGeneError, r"Did you mean 'G2' for 'g2', 'G10' for 'G10O'\?"),
        (
            ["G1", "G2", "G1"],
            errors.DuplicateGeneError,
            r"more than once.*'G1'.*list\(dict\.fromkeys\(genes\)\)",
        ),
        ("not_a_column", errors.InvalidParameterError, r"not a column of var.*genes=\['not_a_column'\]"),
        ("highly_varible", errors.InvalidParameterError, r"Did you mean genes='highly_variable'\?"),
        ("gene_symbols", errors.InvalidParameterError, r"var\['gene_symbols'\] must be boolean"),
        (np.ones(7, bool), errors.InvalidParameterError, "mask has 7 entries but var has 120 genes"),
        (np.zeros(120, bool), errors.InvalidParameterError, "No genes selected"),
    ],
)
def test_bad_gene_selection(scrna, tmp_path, genes, error, pattern):
    with pytest.raises(error, match=pattern):
        export(scrna, tmp_path, genes=genes)
    assert_nothing_written(tmp_path)


def test_gene_id_column_that_gives_raw_genes_no_id_is_explained(pbmc_master, tmp_path):
    """Ensembl var_names, symbols in a var column, and raw.X (symbols as names): the column holds no id for
    the raw genes, and the message says why instead of an IndexError."""
    a = pbmc_master.copy()
    a.var["gene_symbols"] = a.var_names
    a.var_names = [f"ENSG{i:011d}" for i in range(a.n_vars)]
    with pytest.raises(
        errors.InvalidGeneIdError,
        match=r"1 is not \(e\.g\. the gene 'CD79A'\).*a var column gives ids to the raw genes",
    ):
        a.cellucid.estimate(genes=["CD79A"], gene_id_column="gene_symbols")


def test_unknown_gene_is_a_keyerror_with_a_readable_message(scrna, tmp_path):
    with pytest.raises(KeyError) as e:
        export(scrna, tmp_path, genes=["NOPE"])
    assert str(e.value).startswith("1 of the requested genes")


def test_series_mask_aligns_by_name(scrna, tmp_path):
    mask = pd.Series(False, index=scrna.var_names[::-1])  # reversed order
    mask[["G5", "G2"]] = True
    res = export(scrna, tmp_path, genes=mask)
    assert cellucid_export.read_export(res.path).gene_ids == ["G2", "G5"]


def test_duplicate_var_names_are_refused_by_name(scrna, tmp_path):
    names = list(scrna.var_names)
    names[3] = names[1]
    scrna.var_names = names
    with pytest.raises(
        errors.DuplicateGeneError, match=r"'G1' appears more than once.*var_names_make_unique"
    ):
        export(scrna, tmp_path)
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("ids", "pattern"),
    [
        ({0: " G0"}, "leading or trailing spaces"),
        ({0: ""}, "empty"),
        ({0: None}, "no value in that column"),
    ],
)
def test_bad_gene_id_column_values(scrna, tmp_path, ids, pattern):
    col = scrna.var["gene_symbols"].astype(object).copy()
    for i, v in ids.items():
        col.iloc[i] = v
    scrna.var["gene_symbols"] = col
    with pytest.raises(errors.InvalidGeneIdError, match=pattern):
        export(scrna, tmp_path, gene_id_column="gene_symbols")
    assert_nothing_written(tmp_path)


def test_duplicate_ids_in_gene_id_column(scrna, tmp_path):
    scrna.var["gene_symbols"] = ["A", "A", *scrna.var["gene_symbols"][2:]]
    with pytest.raises(errors.DuplicateGeneError, match=r"var\['gene_symbols'\].*'A'"):
        export(scrna, tmp_path, gene_id_column="gene_symbols")
    # Exporting a subset without the duplicates is fine.
    export(scrna, tmp_path, gene_id_column="gene_symbols", genes=["G0", "G5"])


def test_unknown_gene_id_column(scrna, tmp_path):
    with pytest.raises(
        errors.InvalidParameterError, match="gene_id_column='feature_name' is not a var column"
    ):
        export(scrna, tmp_path, gene_id_column="feature_name")


def test_gene_ids_too_long_for_a_file_name(scrna, tmp_path):
    scrna.var_names = ["G" * 300, *scrna.var_names[1:]]
    with pytest.raises(errors.GeneIdCollisionError, match=r"'G{37}\.\.\.' is too long for a file name"):
        export(scrna, tmp_path, layer="X")
    assert_nothing_written(tmp_path)
    res = export(scrna, tmp_path, layer="X", layout="index")  # the index layout keeps any id
    assert cellucid_export.read_export(res.path).gene_ids[0] == "G" * 300


def test_name_layout_collisions(scrna, tmp_path):
    names = list(scrna.var_names)
    names[:7] = ["MT CO1", "MT_CO1", "hla-a", "HLA-A", "CON", "...", ".."]
    scrna.var_names = names
    with pytest.raises(errors.GeneIdCollisionError) as e:
        export(scrna, tmp_path)
    msg = str(e.value)
    assert "'MT CO1', 'MT_CO1'" in msg and "'hla-a', 'HLA-A'" in msg
    assert "'CON' is a reserved file name on Windows" in msg
    # Ids with nothing left of them are named once, as such (not also as a collision of empty names).
    assert msg.count("'...'") == 1 and "'...', '..' have no usable character" in msg
    assert "layout='index'" in msg
    assert_nothing_written(tmp_path)
    res = export(scrna, tmp_path, layout="index")  # the suggested fix works
    assert cellucid_export.read_export(res.path).gene_ids[:7] == names[:7]


def test_transposed_anndata_is_detected(scrna, tmp_path):
    t = ad.AnnData(
        sp.csr_matrix(scrna.X.T),
        obs=pd.DataFrame(index=scrna.var_names),
        var=pd.DataFrame(index=scrna.obs_names),
    )
    with pytest.raises(errors.OrientationError, match=r"looks transposed.*adata\.T"):
        export(t, tmp_path, layer="X")
    assert_nothing_written(tmp_path)


def test_shape_mismatch_in_file(scrna, tmp_path):
    # anndata refuses such objects in memory, but a hand-made file can hold a genes x cells layer.
    path = tmp_path / "bad.h5ad"
    scrna.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        del f["layers/log1p"]
        f.create_dataset("layers/log1p", data=scrna.layers["log1p"].T.toarray())
    with pytest.raises(errors.OrientationError, match="var has 120 rows but gene_expression has 300 genes"):
        cellucid_export.export_h5ad(path, tmp_path / "out", layer="log1p", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"var_quantization": 4}, "var_quantization must be 8, 16 or None"),
        ({"var_quantization": True}, "var_quantization must be 8, 16 or None"),
        ({"compression": 0}, "compression must be None"),
        ({"compression": 11}, "compression must be None"),
        ({"layout": "names"}, "layout must be 'name'"),
        ({"max_bytes": "lots"}, "max_bytes='lots' is not a size"),
        ({"memory_budget": -5}, "memory_budget must be positive"),
        ({"memory_budget": "-1GB"}, r"memory_budget must be positive \(at least 1 byte\), got '-1GB'"),
        ({"max_bytes": "0GB"}, "max_bytes must be positive"),
        ({"max_bytes": float("nan")}, "max_bytes=nan is not a size"),
        ({"n_jobs": 0}, "n_jobs must be a positive integer"),
        ({"layer": 3}, "layer must be a string"),
    ],
)
def test_bad_options(scrna, tmp_path, kw, pattern):
    with pytest.raises(errors.InvalidParameterError, match=pattern):
        export(scrna, tmp_path, **kw)
    assert_nothing_written(tmp_path)


def test_not_an_h5ad(tmp_path):
    (tmp_path / "x.h5ad").write_text("hello")
    with pytest.raises(errors.InvalidParameterError, match="not an .h5ad"):
        cellucid_export.export_h5ad(tmp_path / "x.h5ad", tmp_path / "out")
    with pytest.raises(errors.InputNotFoundError, match="No such file"):
        cellucid_export.export_h5ad(tmp_path / "missing.h5ad", tmp_path / "out")


def test_a_cut_short_h5ad_is_explained(scrna, tmp_path):
    full = tmp_path / "full.h5ad"
    scrna.write_h5ad(full)
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 9 // 10])
    for call in (cellucid_export.export_h5ad, cellucid_export.estimate_h5ad):
        args = (cut, tmp_path / "out") if call is cellucid_export.export_h5ad else (cut,)
        with pytest.raises(errors.InputReadError, match="a copy or download that did not finish"):
            call(*args)
    assert not (tmp_path / "out").exists()
    from cellucid_export.cli import main

    assert main(["export", str(cut), str(tmp_path / "out"), "--genes", "highly_variable"]) == 2


def test_a_matrix_of_another_type_is_explained():
    from cellucid_export.sources import open_source

    with pytest.raises(errors.UnsupportedMatrixError, match="Cannot read gene expression from a list") as e:
        open_source([[1.0, 2.0], [3.0, 4.0]])
    assert isinstance(e.value, TypeError)


def test_h5ad_functions_explain_a_wrong_first_argument_and_unknown_options(scrna, tmp_path):
    h5ad = tmp_path / "in.h5ad"
    scrna.write_h5ad(h5ad)
    out = tmp_path / "out"
    with pytest.raises(
        errors.InvalidParameterError, match=r"got AnnData\. .*adata\.cellucid\.export\(out_dir"
    ):
        cellucid_export.export_h5ad(scrna, out)
    # A typo in an option names the user's call and the option meant, not an internal function.
    with pytest.raises(
        errors.InvalidParameterError, match=r"export_h5ad\(\) .* layers\. Did you mean layer= "
    ):
        cellucid_export.export_h5ad(h5ad, out, layers="log1p")
    with pytest.raises(
        errors.InvalidParameterError, match=r"estimate_h5ad\(\) got unknown keyword arguments: n_jobs"
    ):
        cellucid_export.estimate_h5ad(h5ad, n_jobs=2)
    # An argument of an internal step is not an option either.
    with pytest.raises(
        errors.InvalidParameterError, match=r"export_h5ad\(\) got unknown keyword arguments: target"
    ):
        cellucid_export.export_h5ad(h5ad, out, target="elsewhere")
    assert not out.exists()
    # Every option of the accessor is accepted by export_h5ad.
    res = cellucid_export.export_h5ad(h5ad, out, layer="log1p", genes=["G1"], obs_keys=[], progress=False)
    assert res.path == out


def test_h5ad_functions_show_the_options_in_their_signature():
    """help(), Jupyter's completion and the API page list export_h5ad's options, as the accessor's."""
    import inspect

    from cellucid_export import CellucidAccessor

    for function, method, leading in (
        (cellucid_export.export_h5ad, CellucidAccessor.export, ["path", "out_dir"]),
        (cellucid_export.estimate_h5ad, CellucidAccessor.estimate, ["path"]),
    ):
        params = list(inspect.signature(function).parameters)
        options = [p for p in inspect.signature(method).parameters if p != "self"][len(leading) - 1 :]
        assert params == leading + options


def test_h5ad_functions_give_type_checkers_the_options_of_the_accessor():
    """``**kwargs: Unpack[ExportOptions]`` lets editors and mypy check export_h5ad's options: the same
    names and the same types as the accessor's, so a new option cannot be forgotten in one place."""
    import inspect

    from cellucid_export import CellucidAccessor
    from cellucid_export.accessor import EstimateOptions, ExportOptions

    for options, method in (
        (ExportOptions, CellucidAccessor.export),
        (EstimateOptions, CellucidAccessor.estimate),
    ):
        keyword = {
            name: p.annotation
            for name, p in inspect.signature(method).parameters.items()
            if p.kind is p.KEYWORD_ONLY
        }
        # Annotations are postponed in both (TypedDict keeps them as forward references): compared as written.
        assert {k: ref.__forward_arg__ for k, ref in options.__annotations__.items()} == keyword
    for function, options in (
        (cellucid_export.export_h5ad, "ExportOptions"),
        (cellucid_export.estimate_h5ad, "EstimateOptions"),
    ):
        assert function.__annotations__["kwargs"] == f"Unpack[{options}]"


def test_numpy_integers_are_options_like_ints_and_floats_are_not(scrna, tmp_path):
    """np.int64(16) (from a loop over an array) works and is written as 16; 8.0 is refused like 6.0."""
    import json

    res = export(
        scrna, tmp_path, genes=["G1"], var_quantization=np.int64(16), compression=np.int64(6),
        obs_continuous_quantization=np.int64(8),
    )  # fmt: skip
    settings = json.loads((res.path / "dataset_identity.json").read_text())["export_settings"]
    assert settings["var_quantization"] == 16 and type(settings["var_quantization"]) is int
    assert settings["obs_continuous_quantization"] == 8 and settings["compression"] == 6
    for option in ("var_quantization", "obs_continuous_quantization"):
        with pytest.raises(errors.InvalidParameterError, match=f"{option} must be 8, 16 or None"):
            export(scrna, tmp_path / "float", genes=["G1"], **{option: 8.0})
    assert not (tmp_path / "float").exists()
