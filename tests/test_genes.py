"""Choosing genes: boolean masks of every kind, duplicated ids, sets and positions.

Each refusal names the problem and the fix, and comes before anything is written.
"""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
from tests.conftest import make_scrna

import cellucid_export
from cellucid_export import errors

N_HVG = 309  # highly variable genes in pbmc68k_reduced


def assert_nothing_written(tmp_path):
    assert [p.name for p in tmp_path.iterdir()] == []


def with_first_name_twice(names) -> list[str]:
    names = list(names)
    names[1] = names[0]
    return names


# ------------------------------------------------------------------------------------ boolean masks


@pytest.mark.parametrize("dtype", ["boolean", object])
def test_reordered_boolean_series_selects_exactly_the_hvgs(pbmc, tmp_path, dtype):
    # pandas' nullable "boolean" dtype, or objects that are all True/False, in reversed order:
    # the Series is applied by gene name, not by position.
    hv = pbmc.var.highly_variable
    mask = hv.astype(dtype).iloc[::-1]
    res = pbmc.cellucid.export(tmp_path / "x", genes=mask, progress=False)
    expected = [g for g in pbmc.raw.var_names if hv[g]]
    assert len(expected) == N_HVG
    assert cellucid_export.read_export(res.path).gene_ids == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda hv: pd.array(hv, dtype="boolean"),
        lambda hv: hv.to_numpy(dtype=object),
        lambda hv: hv.to_numpy(),
        lambda hv: hv.tolist(),
    ],
    ids=["pandas-boolean-array", "object-array", "numpy-bool", "list"],
)
def test_boolean_arrays_are_masks_in_var_order(pbmc_master, make):
    plan = pbmc_master.cellucid.estimate(genes=make(pbmc_master.var.highly_variable))
    assert plan.n_genes == N_HVG


@pytest.mark.parametrize(
    "make",
    [
        lambda hv: hv.astype("boolean"),
        lambda hv: hv,
        lambda hv: pd.array(hv, dtype="boolean"),
        lambda hv: hv.tolist(),
    ],
    ids=["boolean-series", "object-series", "boolean-array", "list"],
)
def test_boolean_mask_with_missing_values_is_refused(pbmc, tmp_path, make):
    hv = pbmc.var.highly_variable.astype(object)
    hv.iloc[3] = None
    with pytest.raises(
        errors.InvalidParameterError,
        match=r"mask.* has missing values; fill them \(e\.g\. \.fillna\(False\)\) first \(missing in 1 of",
    ):
        pbmc.cellucid.export(tmp_path / "x", genes=make(hv))
    assert_nothing_written(tmp_path)


def test_nullable_boolean_var_column(pbmc):
    pbmc.var["hv"] = pbmc.var.highly_variable.astype("boolean")
    assert pbmc.cellucid.estimate(genes="hv").n_genes == N_HVG
    pbmc.var.loc[pbmc.var_names[0], "hv"] = pd.NA
    with pytest.raises(errors.InvalidParameterError, match=r"var\['hv'\] has missing values; fill them"):
        pbmc.cellucid.estimate(genes="hv")


# ------------------------------------------------------------------------------------ duplicated ids


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_var_names_with_a_gene_list_or_mask(pbmc, tmp_path):
    pbmc.var_names = with_first_name_twice(pbmc.var_names)
    dup, wanted = pbmc.var_names[0], pbmc.var_names[5]
    message = rf"var_names are not unique: '{dup}' appears more than once.*adata\.var_names_make_unique\(\)"
    for call in (
        lambda: pbmc.cellucid.export(tmp_path / "a", layer="X", genes=[wanted]),
        lambda: pbmc.cellucid.estimate(layer="X", genes=[wanted]),
        lambda: pbmc.cellucid.estimate(layer="X", genes=pbmc.var.highly_variable),
        lambda: pbmc.cellucid.estimate(layer="X", genes=pbmc.var.highly_variable.to_numpy()),
    ):
        with pytest.raises(errors.DuplicateGeneError, match=message):
            call()
    assert_nothing_written(tmp_path)
    # The fix the message gives works.
    pbmc.var_names_make_unique()
    assert pbmc.cellucid.estimate(layer="X", genes=[wanted]).n_genes == 1


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_raw_var_names_with_a_mask(pbmc):
    raw = pbmc.raw.to_adata()
    raw.var_names = with_first_name_twice(raw.var_names)
    pbmc.raw = raw
    message = (
        rf"raw\.var_names are not unique: '{raw.var_names[0]}' appears more than once.*"
        r"raw\.var_names_make_unique\(\)"
    )
    with pytest.raises(errors.DuplicateGeneError, match=message):
        pbmc.cellucid.estimate(genes=pbmc.var.highly_variable)
    with pytest.raises(errors.DuplicateGeneError, match=message):
        pbmc.cellucid.estimate(genes=["CD3E"])
    raw = pbmc.raw.to_adata()
    raw.var_names_make_unique()
    pbmc.raw = raw
    assert pbmc.cellucid.estimate(genes=["CD3E"]).n_genes == 1


def test_duplicated_gene_id_column(pbmc, tmp_path):
    pbmc.var["symbol"] = [f"S{i % 400}" for i in range(pbmc.n_vars)]  # S0..S364 appear twice
    fix = (
        r"adata\.var\['symbol'\] = anndata\.utils\.make_index_unique\(adata\.var\['symbol'\]\.astype\(str\)\)"
    )
    # Asking for a symbol two genes share: ambiguous, not "not found".
    with pytest.raises(
        errors.DuplicateGeneError,
        match=rf"var\['symbol'\] are not unique: 'S150' appears more than once, so genes= cannot tell.*{fix}",
    ):
        pbmc.cellucid.export(tmp_path / "f", gene_id_column="symbol", genes=["S150"])
    assert_nothing_written(tmp_path)
    # Exporting genes that share a symbol: the fix is for the column, not var_names.
    with pytest.raises(errors.DuplicateGeneError, match=rf"var\['symbol'\] are not unique: .*{fix}") as info:
        pbmc.cellucid.estimate(gene_id_column="symbol", genes="highly_variable")
    assert "var_names_make_unique" not in str(info.value)
    # Symbols held by one gene, and genes picked by var_names, are fine.
    assert pbmc.cellucid.estimate(gene_id_column="symbol", genes=["S399", pbmc.var_names[150]]).n_genes == 2
    # The fix the message gives works.
    pbmc.var["symbol"] = anndata.utils.make_index_unique(pbmc.var["symbol"].astype(str))
    assert pbmc.cellucid.estimate(gene_id_column="symbol", genes=["S150", "S150-1"]).n_genes == 2
    assert pbmc.cellucid.estimate(gene_id_column="symbol", genes="highly_variable").n_genes == N_HVG


# ----------------------------------------------------------------------------------- sets, positions


@pytest.mark.parametrize("kind", [set, frozenset])
def test_a_set_of_genes_is_refused(pbmc_master, tmp_path, kind):
    # A set's order depends on hash randomisation: the export would differ from run to run.
    with pytest.raises(
        errors.InvalidParameterError, match=r"genes= is a set, and a set has no order.*genes=sorted\(genes\)"
    ):
        pbmc_master.cellucid.export(tmp_path / "s", genes=kind(["CD3E", "LYZ", "MS4A1"]))
    assert_nothing_written(tmp_path)
    assert pbmc_master.cellucid.estimate(genes=sorted({"CD3E", "LYZ", "MS4A1"})).n_genes == 3


@pytest.mark.parametrize(
    "genes",
    [[0, 1, 2], np.arange(3), np.arange(3, dtype=np.uint16), pd.Series([0, 1, 2]), ["CD3E", 5]],
    ids=["list", "int64", "uint16", "series", "mixed"],
)
def test_integer_positions_are_refused_with_the_fix(pbmc_master, tmp_path, genes):
    with pytest.raises(
        errors.InvalidParameterError,
        match=r"genes= holds integers \(.*\): genes are chosen by id, not by position.*"
        r"genes=adata\.raw\.var_names\[positions\]",
    ):
        pbmc_master.cellucid.export(tmp_path / "p", genes=genes)
    assert_nothing_written(tmp_path)
    assert pbmc_master.cellucid.estimate(genes=pbmc_master.raw.var_names[[0, 1, 2]]).n_genes == 3


def test_integers_that_are_also_gene_names():
    adata = make_scrna(n_cells=50, n_genes=20, gene_prefix="")  # var_names "0", "1", ...
    with pytest.raises(
        errors.InvalidParameterError,
        match=r"genes=adata\.var_names\[positions\]\. If these numbers are gene names, pass them as text",
    ):
        adata.cellucid.estimate(genes=[0, 1])
    with pytest.warns(cellucid_export.CellucidExportWarning, match="positions, not gene names"):
        assert adata.cellucid.estimate(genes=["0", "1"]).n_genes == 2


def test_positions_as_gene_ids_are_warned_about(pbmc, tmp_path):
    """An AnnData without gene names gets 0, 1, 2, ... as var_names: the viewer would list numbers."""
    names = pbmc.raw.var_names.copy()
    raw = pbmc.raw.to_adata()
    raw.var_names = [str(i) for i in range(raw.n_vars)]
    raw.var["symbol"] = list(names)
    pbmc.raw = raw
    with pytest.warns(
        cellucid_export.CellucidExportWarning, match=r"0, 1, 2, \.\.\. 764: positions, not gene"
    ):
        pbmc.cellucid.estimate(genes=["0", "1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = pbmc.cellucid.estimate(gene_id_column="symbol", genes=["CD79A"])  # the fix: no warning
    assert plan.n_genes == 1


def test_a_mask_of_numbers_is_not_a_list_of_gene_ids(pbmc):
    ones = pbmc.var.highly_variable.astype(float)
    for genes in (ones, ones.to_numpy()):
        with pytest.raises(errors.InvalidParameterError, match=r"holds numbers \(.*mask\.astype\(bool\)"):
            pbmc.cellucid.estimate(genes=genes)
    assert pbmc.cellucid.estimate(genes=ones.astype(bool)).n_genes == N_HVG
