"""Viewer-ready datasets: points, obs, graph, vectors and identity, in both layouts."""

from __future__ import annotations

import json
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.conftest import folder_digest, make_scrna

import cellucid_export
from cellucid_export import dataset, errors
from cellucid_export.codec import gzip_decompress
from cellucid_export.quantize import dequantize

GENES = ["CD79A", "MS4A1", "CST3", "NKG7", "LYZ", "GNLY"]


def read(folder, rel, dtype):
    data = (folder / rel).read_bytes()
    return np.frombuffer(gzip_decompress(data) if rel.endswith(".gz") else data, dtype=dtype)


def export(a, path, **kw):
    kw.setdefault("progress", False)
    return a.cellucid.export(path, **kw)


@pytest.fixture(scope="module")
def pbmc_exports(pbmc_master, tmp_path_factory):
    d = tmp_path_factory.mktemp("pbmc")
    return {
        layout: export(
            pbmc_master,
            d / layout,
            genes=GENES,
            layout=layout,
            dataset_name="PBMC 68k (reduced)",
            created_at="2023-11-14T22:13:20Z",
        )
        for layout in ("name", "index")
    }


@pytest.mark.parametrize("layout", ["name", "index"])
def test_pbmc_dataset_end_to_end(pbmc_master, pbmc_exports, layout):
    a, res = pbmc_master, pbmc_exports[layout]
    out = res.path
    assert cellucid_export.validate(out) == []
    assert res.viewer_ready and res.dataset_id == "pbmc-68k-reduced" and res.n_edges == 4996
    ident = json.loads((out / "dataset_identity.json").read_text())
    assert list(ident) == [
        "version", "id", "name", "description", "created_at", "cellucid_data_version", "stats",
        "embeddings", "obs_fields", "export_settings",
    ]  # fmt: skip
    assert ident["created_at"] == "2023-11-14T22:13:20Z"
    assert ident["stats"] == {
        "n_cells": 700, "n_genes": 6, "n_obs_fields": 8, "n_categorical_fields": 3,
        "n_continuous_fields": 5, "has_connectivity": True, "n_edges": 4996,
    }  # fmt: skip
    # Continuous fields first, then categorical, in column order within each kind.
    assert [f["key"] for f in ident["obs_fields"]] == [
        "n_genes", "percent_mito", "n_counts", "S_score", "G2M_score", "bulk_labels", "phase", "louvain",
    ]  # fmt: skip
    assert ident["export_settings"]["obs_categorical_dtype"] == ("auto" if layout == "name" else "uint8")
    # Points: float32 of (x - center) * 2 / R computed in float64.
    x = a.obsm["X_umap"].astype(np.float64)
    lo, hi = x.min(0), x.max(0)
    expect = ((x - (lo + hi) / 2) * (2.0 / (hi - lo).max())).astype(np.float32)
    np.testing.assert_array_equal(read(out, "points_2d.bin.gz", "<f4").reshape(-1, 2), expect)
    m = json.loads((out / "obs_manifest.json").read_text())
    cats = {e[1 if layout == "index" else 0]: e for e in m["_categoricalFields"]}
    cont = {e[1 if layout == "index" else 0]: e for e in m["_continuousFields"]}
    if layout == "index":
        # One index space shared by all obs fields, numbered in column order (as cellucid 0.9.1 does).
        assert {k: e[0] for k, e in {**cats, **cont}.items()} == {k: i for i, k in enumerate(a.obs.columns)}
    stem = lambda k: str(list(a.obs.columns).index(k)) if layout == "index" else k  # noqa: E731
    codes = read(out, f"obs/{stem('louvain')}.codes.u8.gz", "u1")
    np.testing.assert_array_equal(codes, a.obs["louvain"].cat.codes.to_numpy())
    assert cats["louvain"][-4:-1] == [list(a.obs["louvain"].cat.categories), "uint8", 255]
    np.testing.assert_array_equal(
        read(out, f"obs/{stem('n_counts')}.values.f32.gz", "<f4"), a.obs["n_counts"].to_numpy(np.float32)
    )
    outl = read(out, f"obs/{stem('bulk_labels')}.outliers.f32.gz", "<f4")
    assert np.nanmin(outl) > 0 and np.nanmax(outl) == 1
    # The graph: each undirected edge once, src < dst, sorted; float64 weights.
    g = json.loads((out / "connectivity_manifest.json").read_text())
    src = read(out, g["sourcesPath"], "<u2").astype(int)
    dst = read(out, g["destinationsPath"], "<u2").astype(int)
    w = read(out, g["weightsPath"], "<f8")
    c = sp.triu(a.obsp["connectivities"], k=1).tocoo()
    assert set(zip(src, dst, strict=True)) == set(zip(c.row, c.col, strict=True))
    assert (src < dst).all() and (np.diff(src * 700 + dst) > 0).all()
    np.testing.assert_array_equal(w, a.obsp["connectivities"][src, dst].A1)


def test_backed_and_h5ad_are_byte_identical(pbmc_master, tmp_path):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc_master.write_h5ad(h5ad)
    kw = {"genes": GENES, "layout": "index", "obs_continuous_quantization": 8, "progress": False}
    ref = folder_digest(pbmc_master.cellucid.export(tmp_path / "a" / "pbmc", **kw).path)
    backed = ad.read_h5ad(h5ad, backed="r")
    assert folder_digest(backed.cellucid.export(tmp_path / "b" / "pbmc", **kw).path) == ref
    assert folder_digest(cellucid_export.export_h5ad(h5ad, tmp_path / "c" / "pbmc", **kw).path) == ref


def test_h5ad_reads_only_needed_metadata(pbmc_master, tmp_path, monkeypatch):
    h5ad = tmp_path / "pbmc.h5ad"
    pbmc_master.write_h5ad(h5ad)
    read_names = []
    real = cellucid_export.inputs.read_elem
    monkeypatch.setattr(cellucid_export.inputs, "read_elem", lambda e: read_names.append(e.name) or real(e))
    cellucid_export.export_h5ad(h5ad, tmp_path / "o", genes=GENES, obs_keys=["louvain"], progress=False)
    assert "/obsp/distances" not in read_names and "/obs/n_counts" not in read_names
    assert {"/obs/louvain", "/obsm/X_umap", "/obsm/X_pca", "/obsp/connectivities"} <= set(read_names)


def test_embeddings_1d_2d_3d_and_choice(tmp_path):
    a = make_scrna(n_cells=120, n_genes=10)
    rng = np.random.default_rng(1)
    a.obsm["X_umap_3d"] = rng.normal(size=(120, 3))
    a.obsm["X_dpt"] = rng.normal(size=(120, 1))
    a.obsm["X_pca"] = rng.normal(size=(120, 3))  # a latent space, never drawn
    a.obsm["X_tsne"] = rng.normal(size=(120, 2))
    res = export(a, tmp_path / "e")
    assert res.embeddings == {1: "X_dpt", 2: "X_umap", 3: "X_umap_3d"}  # UMAP wins the shared 2-D slot
    ident = json.loads((res.path / "dataset_identity.json").read_text())
    assert ident["embeddings"]["available_dimensions"] == [1, 2, 3]
    assert ident["embeddings"]["default_dimension"] == 3
    assert cellucid_export.validate(res.path) == []
    assert export(a, tmp_path / "t", embeddings=["X_tsne"]).embeddings == {2: "X_tsne"}
    with pytest.raises(errors.InvalidParameterError, match=r"two 2-D embeddings.*Keep one"):
        export(a, tmp_path / "x", embeddings=["X_tsne", "X_umap"])
    del a.obsm["X_umap"]
    a.obsm["X_draw_graph_fa"] = rng.normal(size=(120, 2))
    with pytest.raises(errors.InvalidParameterError, match=r"several 2-D embeddings.*embeddings="):
        export(a, tmp_path / "y")
    with pytest.raises(errors.InvalidParameterError, match=r"not in obsm"):
        export(a, tmp_path / "z", embeddings="X_nope")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_nonfinite_coordinates_are_refused(tmp_path):
    a = make_scrna(n_cells=50, n_genes=5)
    a.obsm["X_umap"][[3, 7]] = np.nan
    with pytest.raises(
        cellucid_export.DatasetError, match=r"obsm\['X_umap'\] has non-finite coordinates.*2 cells.*3, 7"
    ):
        export(a, tmp_path / "o")
    assert list(tmp_path.iterdir()) == []


def test_no_embedding_writes_genes_only(tmp_path):
    a = make_scrna(n_cells=50, n_genes=5)
    del a.obsm["X_umap"]
    with pytest.warns(cellucid_export.CellucidExportWarning, match="not viewer-openable"):
        res = export(a, tmp_path / "o")
    assert not res.viewer_ready and "not viewer-openable" in repr(res)
    assert sorted(p.name for p in res.path.iterdir()) == ["var", "var_manifest.json"]
    assert cellucid_export.validate(res.path, genes_only=True) == []
    assert "cannot open it" in cellucid_export.validate(res.path)[0]


def test_embeddings_false_exports_genes_quietly_and_refuses_cell_options(pbmc_master, tmp_path, recwarn):
    res = export(pbmc_master, tmp_path / "genes", genes=["CD79A"], embeddings=False)
    assert not res.viewer_ready and not [
        w for w in recwarn if w.category is cellucid_export.CellucidExportWarning
    ]
    for opt in ({"obs_keys": ["louvain"]}, {"vector_fields": ["velocity_umap"]}, {"connectivities": "nope"}):
        with pytest.raises(
            errors.InvalidParameterError, match=f"embeddings=False exports genes only, so {next(iter(opt))}="
        ):
            export(pbmc_master, tmp_path / "x", genes=["CD79A"], embeddings=False, **opt)
    assert not (tmp_path / "x").exists()
    # Turning the extras off as well is no contradiction.
    export(
        pbmc_master,
        tmp_path / "y",
        genes=["CD79A"],
        embeddings=False,
        vector_fields=False,
        connectivities=None,
    )
    export(pbmc_master, tmp_path / "z", genes=["CD79A"], embeddings=False, obs_keys=[], vector_fields=[])


def test_true_means_the_automatic_choice(pbmc_master, tmp_path):
    auto = export(pbmc_master, tmp_path / "auto", genes=["CD79A"], created_at="2024-01-01T00:00:00Z")
    yes = export(
        pbmc_master,
        tmp_path / "yes",
        genes=["CD79A"],
        embeddings=True,
        vector_fields=True,
        created_at="2024-01-01T00:00:00Z",
        dataset_name="auto",
    )
    assert folder_digest(yes.path) == folder_digest(auto.path)


def test_warnings_point_at_the_users_line(tmp_path):
    a = make_scrna(n_cells=40, n_genes=4)
    del a.obsm["X_umap"]
    a.write_h5ad(tmp_path / "a.h5ad")
    for run in (
        lambda: a.cellucid.export(tmp_path / "m", progress=False),
        lambda: cellucid_export.export_h5ad(tmp_path / "a.h5ad", tmp_path / "h", progress=False),
    ):
        with pytest.warns(cellucid_export.CellucidExportWarning, match="not viewer-openable") as got:
            run()
        assert [w.filename for w in got] == [__file__]


def test_categories_missing_values_and_dtypes(tmp_path):
    n = 70_000
    rng = np.random.default_rng(0)
    x = sp.random(n, 2, density=0.1, format="csr", dtype=np.float32, random_state=0)
    a = ad.AnnData(x, obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]), var=pd.DataFrame(index=["A", "B"]))
    a.obsm["X_umap"] = rng.normal(size=(n, 2)).astype(np.float32)
    a.obs["many"] = pd.Categorical([f"k{i % 300}" for i in range(n)])
    a.obs["few"] = pd.Categorical(np.where(np.arange(n) % 5 == 0, None, "x"))  # missing values
    a.obs["flag"] = np.arange(n) % 2 == 0
    a.obs["score"] = np.where(np.arange(n) % 4 == 0, np.nan, rng.normal(size=n))
    a.obs["barcode"] = [f"b{i}" for i in range(n)]  # 70,000 categories: too many for the viewer
    res = export(a, tmp_path / "o", layer="X", obs_continuous_quantization=8)
    assert res.skipped_obs == {
        "barcode": "it has 70,000 categories, more than the 65,534 the viewer's uint16 codes can hold"
    }
    m = json.loads((res.path / "obs_manifest.json").read_text())
    fields = {e[0]: e for e in m["_categoricalFields"]}
    assert fields["many"][2] == "uint16" and fields["many"][3] == 65535
    assert fields["few"][2] == "uint8" and fields["flag"][1] == ["False", "True"]
    codes = read(res.path, "obs/few.codes.u8.gz", "u1")
    assert (codes[::5] == 255).all() and (np.delete(codes, np.s_[::5]) == 0).all()
    outl = read(res.path, "obs/few.outliers.u8.gz", "u1")
    assert (outl[::5] == 255).all()  # missing code: no outlier quantile
    (_, lo, hi) = m["_continuousFields"][0]
    score = dequantize(read(res.path, "obs/score.values.u8.gz", "u1"), lo, hi, 8)
    src = a.obs["score"].to_numpy()
    assert np.isnan(score[::4]).all()
    ok = ~np.isnan(src)
    assert np.abs(score[ok] - src[ok]).max() <= (hi - lo) / 254 / 2 * (1 + 1e-5)
    assert cellucid_export.validate(res.path) == []
    with pytest.raises(cellucid_export.DatasetError, match=r"obs\['barcode'\].*70,000 categories"):
        export(a, tmp_path / "x", layer="X", obs_keys=["barcode"])
    with pytest.raises(cellucid_export.DatasetError, match=r"300 categories.*obs_categorical_dtype='uint16'"):
        export(a, tmp_path / "y", layer="X", obs_keys=["many"], obs_categorical_dtype="uint8")
    # The index layout declares one codes dtype for all fields.
    res = export(a, tmp_path / "i", layer="X", layout="index", obs_keys=["few", "many"])
    m = json.loads((res.path / "obs_manifest.json").read_text())
    assert [e[3] for e in m["_categoricalFields"]] == ["uint16", "uint16"]
    assert cellucid_export.validate(res.path) == []


@pytest.mark.parametrize("layout", ["name", "index"])
def test_obs_columns_with_every_value_missing(pbmc_master, tmp_path, layout):
    """An empty annotation column is left out by default, and exported (no category, no label) when asked for."""
    a = pbmc_master.copy()
    a.obs["note"] = pd.Series([None] * a.n_obs, index=a.obs_names, dtype=object)
    a.obs["unused"] = pd.Categorical([np.nan] * a.n_obs, categories=["x", "y"])
    a.obs["nothing"] = np.nan
    res = export(a, tmp_path / "default", genes=["CD79A"], layout=layout)
    assert {k: v for k, v in res.skipped_obs.items() if k in ("note", "unused", "nothing")} == dict.fromkeys(
        ("note", "unused", "nothing"), "every value is missing"
    )
    assert cellucid_export.validate(res.path) == []
    res = export(
        a, tmp_path / "asked", genes=["CD79A"], layout=layout, obs_keys=["note", "unused", "nothing"]
    )
    assert cellucid_export.validate(res.path) == []
    m = json.loads((res.path / "obs_manifest.json").read_text())
    cats = {e[-5]: e[-4:] for e in m["_categoricalFields"]}
    assert cats["note"][0] == [] and cats["unused"][0] == ["x", "y"]
    assert cats["note"][3] == {"2": []} and cats["unused"][3] == {"2": []}  # no centroid without cells
    i = 0 if layout == "name" else 1
    note = read(res.path, f"obs/{'note' if layout == 'name' else 0}.codes.u8.gz", "u1")
    assert (note == 255).all() and m["_categoricalFields"][0][i] == "note"


def naive_outliers(latent, codes, k, min_points):
    out = np.full(len(codes), np.nan, np.float32)
    for c in range(k):
        idx = np.flatnonzero(codes == c)
        if idx.size < min_points:
            continue
        d = np.linalg.norm(latent[idx] - latent[idx].mean(0), axis=1)
        out[idx] = np.searchsorted(np.sort(d), d, side="right") / idx.size
    return out


def naive_centroids(pts, codes, labels, q, min_points):
    res = []
    for c, label in enumerate(labels):
        p = pts[codes == c]
        if len(p) < min_points:
            continue
        center, used = p.mean(0), len(p)
        if len(p) > min_points:
            d = np.linalg.norm(p - center, axis=1)
            keep = d <= np.quantile(d, q)
            if keep.sum() >= min_points:
                center, used = p[keep].mean(0), int(keep.sum())
        res.append((label, center, used))
    return res


def test_outliers_and_centroids_match_the_definition():
    rng = np.random.default_rng(3)
    n, k = 2000, 7
    codes = rng.integers(-1, k, n)
    codes[codes == 6] = 5  # category 6 empty
    codes[np.flatnonzero(codes == 4)[9:]] = 3  # category 4 has 9 cells: too few
    latent = rng.normal(size=(n, 5)).round(1)  # rounding makes ties
    got = dataset.outlier_quantiles(latent, codes, k, 10)
    np.testing.assert_allclose(got, naive_outliers(latent, codes, k, 10), rtol=1e-6)
    assert np.isnan(got[codes == -1]).all() and np.isnan(got[codes == 4]).all()
    # Ties take the highest rank: two cells at the same distance both get 2/2 in a category of 2.
    two = dataset.outlier_quantiles(np.array([[0.0], [2.0]]), np.array([0, 0]), 1, 1)
    np.testing.assert_array_equal(two, [1.0, 1.0])
    pts = rng.normal(size=(n, 2))
    labels = [f"c{i}" for i in range(k)]
    got = dataset.centroids(pts, codes, labels, 0.9, 10)
    want = naive_centroids(pts, codes, labels, 0.9, 10)
    assert [g["category"] for g in got] == [w[0] for w in want] == ["c0", "c1", "c2", "c3", "c5"]
    for g, (_, center, used) in zip(got, want, strict=True):
        np.testing.assert_allclose(g["position"], center, rtol=1e-12)
        assert g["n_points"] == used


def test_group_quantiles_are_numpys():
    """The centroid threshold is np.quantile's (linear), bit for bit: a cell exactly at it is kept."""
    for n in range(1, 700):
        v = np.sort(np.random.default_rng(n).random(n))
        for q in (0.0, 0.5, 0.9, 0.95, 1.0):
            assert dataset._group_quantile(v, np.array([0]), np.array([n]), q)[0] == np.quantile(v, q), (n, q)


def test_graph_edge_rules():
    m = sp.csr_matrix(
        np.array(
            [
                [0.5, 0.2, 0.0, 0.0],  # self-loop dropped
                [0.0, 0.0, 0.7, 0.0],
                [0.0, 0.9, 0.0, 0.0],  # 1-2 both ways: kept once with the larger weight
                [0.3, 0.0, 0.0, 0.0],  # 3->0 only: kept as 0-3
            ]
        )
    )
    m = sp.csr_matrix((np.append(m.data, 0.0), (*np.append(np.array(m.nonzero()), [[1], [3]], 1),)), (4, 4))
    assert m.nnz == 6  # a stored zero is no edge
    m = sp.csr_matrix((np.r_[m.data, 0.1], np.r_[m.indices, 1], np.r_[m.indptr[:-1], m.nnz + 1]), (4, 4))
    before = [a.copy() for a in (m.data, m.indices, m.indptr)]  # with a repeated 3->1 entry of 0.1 as well
    (src, dst, w), max_nb = dataset.edge_pairs(m, 4, "g")
    # The user's graph is read, never changed (scipy shares a float64 CSR's arrays with a new matrix).
    assert all(np.array_equal(a, b) for a, b in zip((m.data, m.indices, m.indptr), before, strict=True))
    assert src.tolist() == [0, 0, 1, 1] and dst.tolist() == [1, 3, 2, 3]
    assert w.tolist() == [0.2, 0.3, 0.9, 0.1] and w.dtype == np.dtype("<f8") and max_nb == 3
    with pytest.raises(cellucid_export.DatasetError, match="negative or non-finite"):
        dataset.edge_pairs(sp.csr_matrix(-m.toarray()), 4, "g")
    with pytest.raises(cellucid_export.DatasetError, match="4 x 4"):
        dataset.edge_pairs(m[:3], 4, "g")
    assert [dataset.index_dtype(n).name for n in (65535, 65536, 2**32 - 1, 2**32)] == [
        "uint16", "uint32", "uint32", "uint64",
    ]  # fmt: skip


def test_graph_and_vectors_in_an_export(tmp_path):
    a = make_scrna(n_cells=200, n_genes=10)
    rng = np.random.default_rng(2)
    a.obs["cluster"] = pd.Categorical(rng.choice(["a", "b", "c"], 200))
    a.obsp["connectivities"] = sp.random(200, 200, density=0.05, format="csr", random_state=1)
    a.obsm["velocity_umap"] = rng.normal(size=(200, 2))
    res = export(a, tmp_path / "v", layout="index", compression=None)
    assert res.vector_fields == ["velocity_umap"] and res.n_edges > 0
    ident = json.loads((res.path / "dataset_identity.json").read_text())
    assert ident["vector_fields"] == {
        "default_field": "velocity_umap",
        "fields": {
            "velocity_umap": {
                "label": "velocity_umap",
                "available_dimensions": [2],
                "default_dimension": 2,
                "files": {"2d": "vectors/0_2d.bin"},
                "basis": "umap",
            }
        },
    }
    x = a.obsm["X_umap"].astype(np.float64)
    scale = 2.0 / (x.max(0) - x.min(0)).max()
    np.testing.assert_array_equal(
        read(res.path, "vectors/0_2d.bin", "<f4").reshape(-1, 2),
        (a.obsm["velocity_umap"] * scale).astype(np.float32),
    )
    assert cellucid_export.validate(res.path) == []
    res = export(a, tmp_path / "n", connectivities=None, vector_fields=False)
    assert res.n_edges is None and res.vector_fields == []
    assert not (res.path / "connectivity_manifest.json").exists() and not (res.path / "vectors").exists()


def test_vector_fields_of_an_embedding_without_the_x_prefix(tmp_path):
    """squidpy keeps coordinates in obsm['spatial'] (no X_): its velocity_spatial is found all the same."""
    a = make_scrna(n_cells=120, n_genes=4)
    rng = np.random.default_rng(3)
    a.obsm["spatial"] = rng.normal(size=(120, 2))
    a.obsm["velocity_spatial"] = rng.normal(size=(120, 2))
    res = export(a, tmp_path / "s", embeddings="spatial", layout="index")
    assert res.embeddings == {2: "spatial"} and res.vector_fields == ["velocity_spatial"]
    ident = json.loads((res.path / "dataset_identity.json").read_text())
    assert ident["vector_fields"]["fields"]["velocity_spatial"]["basis"] == "spatial"
    assert cellucid_export.validate(res.path) == []


def test_identity_options(tmp_path):
    a = make_scrna(n_cells=40, n_genes=4)
    with pytest.raises(errors.InvalidParameterError, match=r"dataset_id='my data!'.*'my-data'"):
        export(a, tmp_path / "x", dataset_id="my data!")
    with pytest.raises(errors.InvalidParameterError, match="created_at"):
        export(a, tmp_path / "x", created_at="yesterday")
    res = export(
        a, tmp_path / "my export", description="test", source={"name": "lab", "url": "https://x"},
        created_at="2024-01-02T03:04:05Z",
    )  # fmt: skip
    ident = json.loads((res.path / "dataset_identity.json").read_text())
    assert ident["id"] == "my-export" and ident["name"] == "my export" and ident["description"] == "test"
    assert (
        ident["source"] == {"name": "lab", "url": "https://x"}
        and ident["created_at"] == "2024-01-02T03:04:05Z"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cellucid_export.validate(res.path) == []


def test_obs_name_collisions_in_name_layout(tmp_path):
    a = make_scrna(n_cells=40, n_genes=4)
    a.obs["n counts"] = 1.0
    a.obs["n_counts"] = 2.0
    with pytest.raises(cellucid_export.DatasetError, match=r"'n counts', 'n_counts' all become obs/n_counts"):
        export(a, tmp_path / "x")
    assert cellucid_export.validate(export(a, tmp_path / "i", layout="index").path) == []


def test_h5ad_obs_columns_follow_column_order(tmp_path):
    a = make_scrna(n_cells=40, n_genes=4)
    a.obs["b"] = 1.0
    a.obs["a"] = pd.Categorical(["x"] * 40)
    a.write_h5ad(tmp_path / "f.h5ad")
    with h5py.File(tmp_path / "f.h5ad") as f:
        parts = cellucid_export.inputs.parts_from_h5ad(f)
        assert list(parts.obs_columns) == ["b", "a"] and parts.obsm_shapes == {"X_umap": (40, 2)}


def test_an_obsm_dataframe_is_drawn_from_a_file_too(tmp_path):
    """anndata stores a DataFrame in obsm as a dataframe group without a shape: export_h5ad sees it too."""
    a = make_scrna(n_cells=60, n_genes=3)
    a.obsm["X_umap"] = pd.DataFrame(a.obsm["X_umap"], index=a.obs_names, columns=["u1", "u2"])
    a.write_h5ad(tmp_path / "df.h5ad")
    kw = dict(layout="index", compression=None)
    mem = export(a, tmp_path / "mem", **kw)
    disk = cellucid_export.export_h5ad(tmp_path / "df.h5ad", tmp_path / "disk", progress=False, **kw)
    assert mem.embeddings == disk.embeddings == {2: "X_umap"}
    assert (mem.path / "points_2d.bin").read_bytes() == (disk.path / "points_2d.bin").read_bytes()


def test_messages_name_what_is_there(tmp_path):
    """A genes-only export names a drawable obsm entry; a missing vector field is said to be missing; NaN in
    the latent space does not suggest the same space."""
    a = make_scrna(n_cells=40, n_genes=3)
    a.obsm["spatial"] = a.obsm.pop("X_umap")
    with pytest.warns(
        cellucid_export.CellucidExportWarning, match=r"obsm has 'spatial' .*embeddings='spatial'"
    ):
        export(a, tmp_path / "s")
    a.obsm["X_umap"] = a.obsm["spatial"]
    with pytest.raises(errors.InvalidParameterError, match=r"obsm\['velocity_umap'\], which does not exist"):
        export(a, tmp_path / "v", vector_fields="velocity_umap")
    a.obs["cluster"] = pd.Categorical(np.arange(40) % 3)
    a.obsm["X_pca"] = np.random.default_rng(0).normal(size=(40, 5))
    a.obsm["X_pca"][3, 2] = np.nan
    with pytest.raises(
        cellucid_export.DatasetError,
        match=r"obsm\['X_pca'\] has non-finite.*latent_key= another space \(e\.g\. 'X_umap'\)",
    ):
        export(a, tmp_path / "p")
    assert not any((tmp_path / n).exists() for n in ("v", "p"))


def test_no_genes_exports_the_cell_data_only(pbmc_master, tmp_path):
    """genes=[]: the format's export without genes (no var/, no var_manifest.json, stats.n_genes 0)."""
    plan = pbmc_master.cellucid.estimate(genes=[])
    assert plan.n_genes == 0 and plan.payload_bytes == 0
    res = pbmc_master.cellucid.export(tmp_path / "cells", genes=[], layout="index", progress=False)
    assert res.n_genes == 0 and res.viewer_ready
    assert not (res.path / "var").exists() and not (res.path / "var_manifest.json").exists()
    ident = json.loads((res.path / "dataset_identity.json").read_text())
    assert ident["stats"]["n_genes"] == 0 and ident["stats"]["n_cells"] == pbmc_master.n_obs
    assert cellucid_export.validate(res.path) == []
    with pytest.raises(errors.ExportNotFoundError, match="exported without genes"):
        cellucid_export.read_export(res.path)
    # Nothing at all to export, or options that would apply to no gene: refused before writing.
    with pytest.raises(errors.InvalidParameterError, match="there would be nothing to export"):
        pbmc_master.cellucid.export(tmp_path / "none", genes=[], embeddings=False, progress=False)
    with pytest.raises(errors.InvalidParameterError, match="genes=\\[\\] exports no gene, so layer="):
        pbmc_master.cellucid.export(tmp_path / "none", genes=[], layer="X", progress=False)
    assert not (tmp_path / "none").exists()


def test_points_near_the_float64_limit_are_normalised():
    """A range above 1.8e308 overflows the format's formula; the points still land in [-1, 1]."""
    x = np.array([[1.5e308, 0.0], [-1.5e308, 1.0], [0.0, 2.0]])
    pts = dataset.normalise_points(x)[0]
    assert np.isfinite(pts).all() and np.abs(pts).max() == 1.0
    np.testing.assert_array_equal(pts[:, 0], [1.0, -1.0, 0.0])
    one_sided = dataset.normalise_points(np.array([[1.0e308], [1.7e308], [1.2e308]]))[0]  # lo + hi overflows
    assert np.isfinite(one_sided).all() and one_sided.min() == -1.0 and one_sided.max() == 1.0
    # Ordinary points keep the format's formula, bit for bit.
    y = np.random.default_rng(0).normal(size=(50, 2)) * 7
    lo, hi = y.min(0), y.max(0)
    np.testing.assert_array_equal(
        dataset.normalise_points(y)[0], (y - (lo + hi) / 2) * (2.0 / (hi - lo).max())
    )
