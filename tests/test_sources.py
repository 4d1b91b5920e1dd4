"""Every kind of source gives byte-identical exports; on-disk sources are streamed, not loaded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.conftest import folder_digest, make_scrna

import cellucid_export
from cellucid_export import errors, sources
from cellucid_export.quantize import payload_row_bytes

OPTS = {"layer": "X", "progress": False, "dataset_name": "scrna"}  # the default name is the folder's


@pytest.fixture(scope="module")
def adata():
    a = make_scrna(n_cells=500, n_genes=80, seed=7)
    x = a.X.tolil()
    x[3, 5] = np.nan  # stored NaN: marker in 8-bit
    x[4, 6] = -0.5  # negative stored value
    a.X = sp.csr_matrix(x)
    return a


@pytest.fixture(scope="module")
def h5ads(adata, tmp_path_factory):
    d = tmp_path_factory.mktemp("h5ad")
    out = {}
    for kind, conv in {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": lambda m: m.toarray()}.items():
        b = adata.copy()
        b.X = conv(adata.X)
        del b.layers["log1p"]
        b.write_h5ad(d / f"{kind}.h5ad")
        out[kind] = d / f"{kind}.h5ad"
        # Compressed inside the file: a CSR matrix is then read once, its values sorted into records.
        b.write_h5ad(d / f"{kind}-gzip.h5ad", compression="gzip")
        out[f"{kind}-gzip"] = d / f"{kind}-gzip.h5ad"
    return out


GENES = ["G70", "G3", "G5", "G6", "G40", "G41", "G42", "G0"]  # unsorted, with a run of adjacent genes


@pytest.mark.parametrize("bits", [8, None])
def test_all_sources_byte_identical(adata, h5ads, tmp_path, bits):
    import dask.array as da

    kw = {**OPTS, "genes": GENES, "var_quantization": bits}
    reference = folder_digest(adata.cellucid.export(tmp_path / "mem-csr", **kw).path)
    variants = {
        "mem-csc": lambda p: ad.AnnData(
            sp.csc_matrix(adata.X), obs=adata.obs, var=adata.var, obsm=adata.obsm
        ).cellucid.export(p, **kw),
        "mem-csr-array": lambda p: ad.AnnData(
            sp.csr_array(adata.X), obs=adata.obs, var=adata.var, obsm=adata.obsm
        ).cellucid.export(p, **kw),
        "mem-dense": lambda p: ad.AnnData(
            adata.X.toarray(), obs=adata.obs, var=adata.var, obsm=adata.obsm
        ).cellucid.export(p, **kw),
        "dask-dense": lambda p: ad.AnnData(
            da.from_array(adata.X.toarray(), chunks=(128, 32)), obs=adata.obs, var=adata.var, obsm=adata.obsm
        ).cellucid.export(p, **kw),
        "dask-sparse": lambda p: ad.AnnData(
            da.from_array(adata.X, chunks=(128, 80), asarray=False),
            obs=adata.obs,
            var=adata.var,
            obsm=adata.obsm,
        ).cellucid.export(p, **kw),
    }
    for kind, path in h5ads.items():
        variants[f"backed-{kind}"] = lambda p, path=path: ad.read_h5ad(path, backed="r").cellucid.export(
            p, **kw
        )
        variants[f"h5ad-{kind}"] = lambda p, path=path: cellucid_export.export_h5ad(path, p, **kw)
    for name, run in variants.items():
        res = run(tmp_path / name)
        assert folder_digest(res.path) == reference, name


def _with_repeats(x: sp.csr_matrix, rng) -> sp.csr_matrix:
    """``x`` stored with each row's entries shuffled and about a third of them split in two parts."""
    rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
    split = rng.random(x.nnz) < 0.3
    part = np.where(split, rng.random(x.nnz).astype(np.float32), 1.0).astype(np.float32)
    r = np.concatenate([rows, rows[split]])
    c = np.concatenate([x.indices, x.indices[split]])
    v = np.concatenate([x.data * part, x.data[split] * (1 - part[split])])
    order = np.lexsort((rng.random(len(r)), r))  # rows in order, entries within a row shuffled
    counts = np.bincount(r, minlength=x.shape[0])
    m = sp.csr_matrix((v[order], c[order], np.concatenate([[0], np.cumsum(counts)])), shape=x.shape)
    assert not m.has_canonical_format
    return m


@pytest.mark.parametrize("storage", ["csr", "csr-gzip", "csc"])
def test_repeated_entries_add_up_in_every_source(adata, tmp_path, storage):
    """A cell and gene stored twice means their sum (scipy's and anndata's reading), on disk as in memory."""
    rng = np.random.default_rng(11)
    x = _with_repeats(adata.X, rng)
    np.testing.assert_allclose(x.toarray(), adata.X.toarray(), rtol=1e-5, atol=1e-6)
    b = ad.AnnData(
        x if storage.startswith("csr") else x.tocsc(), obs=adata.obs, var=adata.var, obsm=adata.obsm
    )
    if storage == "csc":
        b.X.indices[: b.X.indptr[2]] = b.X.indices[: b.X.indptr[2]][::-1].copy()  # repeats and disorder
        b.X.has_canonical_format = False
    path = tmp_path / "x.h5ad"
    b.write_h5ad(path, compression="gzip" if storage.endswith("gzip") else None)
    expected = b.X.toarray()  # scipy adds the repeats up
    kw = {**OPTS, "var_quantization": None, "embeddings": False}
    for name, run in {
        "memory": lambda p: b.cellucid.export(p, **kw),
        "h5ad": lambda p: cellucid_export.export_h5ad(path, p, **kw),
        "backed": lambda p: ad.read_h5ad(path, backed="r").cellucid.export(p, **kw),
    }.items():
        ex = cellucid_export.read_export(run(tmp_path / name).path)
        got = np.stack([ex.gene(g) for g in ex.gene_ids], axis=1)
        np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=name)
        if name == "h5ad":
            q = cellucid_export.export_h5ad(path, tmp_path / "q8", **{**kw, "var_quantization": 8}).path
            ref = b.copy()
            ref.X = sp.csr_matrix(expected)
            mem = ref.cellucid.export(tmp_path / "q8-canonical", **{**kw, "var_quantization": 8}).path
            assert folder_digest(q) == folder_digest(mem)


def test_coo_is_read_like_csr(adata):
    idx = np.array([70, 3, 5])
    for x in (sp.coo_matrix(adata.X), sp.coo_array(adata.X)):
        (block,) = sources.open_source(x).blocks(idx, 10)
        np.testing.assert_array_equal(block.toarray(), adata.X[:, idx].toarray())


def test_backed_sources_are_streamed(adata, h5ads):
    with h5py.File(h5ads["csr"]) as f:
        assert isinstance(sources.open_source(f["X"]), sources.StreamedCSR)
    with h5py.File(h5ads["csc"]) as f:
        assert isinstance(sources.open_source(f["X"]), sources.OnDiskCSC)
    with h5py.File(h5ads["dense"]) as f:
        assert isinstance(sources.open_source(f["X"]), sources.OnDiskDense)
    backed = ad.read_h5ad(h5ads["csr"], backed="r")
    assert isinstance(sources.open_source(backed.X), sources.StreamedCSR)


@pytest.mark.parametrize("rereads", [True, False], ids=["passes", "scratch-files"])
def test_budget_and_threads_do_not_change_bytes(h5ads, tmp_path, monkeypatch, rereads):
    kw = {**OPTS, "genes": None}
    ref = folder_digest(cellucid_export.export_h5ad(h5ads["csr"], tmp_path / "ref", **kw).path)
    # A tiny read chunk and budget force many row chunks and many gene blocks.
    monkeypatch.setattr(sources, "READ_CHUNK_NNZ", 97)
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 4096)
    monkeypatch.setattr(sources, "_cheap_to_reread", lambda *arrays: rereads)
    passes = []
    real_runs = sources.StreamedCSR._row_runs

    def counting_runs(self, chunks, cancel=None):
        if chunks and chunks[0][0] == 0:  # a pass starts at the first row, whatever its threads
            passes.append(1)
        return real_runs(self, chunks, cancel)

    monkeypatch.setattr(sources.StreamedCSR, "_row_runs", counting_runs)
    for kind in ("csr", "csc", "dense"):
        for n_jobs in (1, 3):
            with h5py.File(h5ads[kind]) as f:
                src = sources.open_source(f["X"])
                n_blocks = sum(1 for _ in src.blocks(np.arange(80), 7))
            assert n_blocks == 12
            passes.clear()
            res = cellucid_export.export_h5ad(
                h5ads[kind], tmp_path / f"{kind}-{n_jobs}", memory_budget=20_000, n_jobs=n_jobs, **kw
            )
            assert folder_digest(res.path) == ref, (kind, n_jobs)
            if kind == "csr" and rereads:
                # One pass for the statistics, which also keeps the first payload's values, then one per
                # other payload of 20_000 // 2 // 576 = 17 genes (500 cells: rows padded to 9 cache lines).
                assert payload_row_bytes(500, 1) == 576
                assert len(passes) == 1 + -(-80 // 17) - 1
            elif kind == "csr":
                assert len(passes) == 1  # however many blocks: through scratch files
            else:
                assert passes == []


@pytest.mark.parametrize(
    "order", ["file", "shuffled", "unsorted-rows"], ids=["file-order", "shuffled-genes", "unsorted-rows"]
)
def test_lead_block_comes_from_the_statistics_pass(adata, order):
    """The first genes as records kept by the statistics pass: the same payloads as passes give them."""
    from cellucid_export.blocks import CSRPass, GeneRecords
    from cellucid_export.quantize import quantize_block

    x = sp.csr_matrix(adata.X)
    idx = np.arange(80)
    if order == "shuffled":
        idx = np.random.default_rng(1).permutation(80)
    if order == "unsorted-rows":  # same matrix, each row's entries stored back to front
        x = sp.csr_matrix((x.data, x.indices, x.indptr), shape=x.shape)
        for r in range(x.shape[0]):
            a, b = x.indptr[r], x.indptr[r + 1]
            x.indices[a:b], x.data[a:b] = x.indices[a:b][::-1].copy(), x.data[a:b][::-1].copy()
        x.has_sorted_indices = False

    def payloads(blocks):
        out = []
        for block in blocks:
            for s in range(0, block.shape[1], 20):
                out.append(quantize_block(block[:, s : s + 20], 8, constant_plus_one=True).payload)
        return np.vstack(out)

    src = sources.open_source(x)
    expected = payloads(src.blocks(idx, 2**62, n_threads=2))
    led = list(src.blocks(idx, 2**62, n_threads=2, lead=(7, 10**9)))
    assert isinstance(led[0], GeneRecords) and led[0].shape == (500, 7)
    assert isinstance(led[1], CSRPass) and led[1].shape == (500, 73)
    np.testing.assert_array_equal(payloads(led), expected)
    # Records that would not fit: the lead genes are read by a pass like the others.
    (capped,) = src.blocks(idx, 2**62, n_threads=2, lead=(7, 10))
    assert isinstance(capped, CSRPass) and capped.shape == (500, 80)


@pytest.mark.parametrize(
    ("kind", "chunk_nnz"), [("csr", sources.READ_CHUNK_NNZ), ("csr", 97), ("dense", 0), ("csc", 0)],
    ids=["csr-one-part", "csr-parts-on-threads", "dense", "csc"],
)  # fmt: skip
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_backed_view(h5ads, adata, tmp_path, monkeypatch, kind, chunk_nnz, order):
    # Small read chunks split each pass over the threads: each part maps its own file rows to cells.
    monkeypatch.setattr(sources, "READ_CHUNK_NNZ", chunk_nnz or sources.READ_CHUNK_NNZ)
    monkeypatch.setattr(sources, "READ_CHUNK_BYTES", 4096)  # dense files: many slabs, most without a cell
    backed = ad.read_h5ad(h5ads[kind], backed="r")
    cells = np.flatnonzero(np.arange(backed.n_obs) % 3 == 0)
    if order == "shuffled":
        cells = np.random.default_rng(0).permutation(cells)[:100]
    view = backed[cells, 10:30]
    assert view.is_view and view.isbacked
    res = view.cellucid.export(tmp_path / "bv", var_quantization=None, n_jobs=3, **OPTS)
    ex = cellucid_export.read_export(res.path)
    assert ex.gene_ids == list(adata.var_names[10:30])
    np.testing.assert_array_equal(ex.to_array(), adata.X[cells][:, 10:30].toarray())


@pytest.mark.parametrize(
    "genes",
    [np.array([40, 3, 70, 5, 6]), np.arange(80) % 7 == 2, slice(70, 10, -3)],
    ids=["positions-out-of-order", "boolean-mask", "reversed-slice"],
)
@pytest.mark.parametrize("layer", ["X", "log1p"])
def test_backed_view_of_genes_exports_their_own_values(adata, tmp_path, genes, layer):
    """A backed view's genes, however anndata keeps them (positions, mask, slice), from X or a layer
    (which anndata loads whole in backed mode): every gene gets its own values."""
    b = adata.copy()
    b.layers["log1p"] = b.X.copy() * 2
    b.write_h5ad(tmp_path / "layers.h5ad")
    backed = ad.read_h5ad(tmp_path / "layers.h5ad", backed="r")
    view = backed[5:400, genes]
    assert view.is_view and view.isbacked
    res = view.cellucid.export(tmp_path / "bv", var_quantization=None, **{**OPTS, "layer": layer})
    ex = cellucid_export.read_export(res.path)
    assert ex.gene_ids == list(b.var_names[genes])
    source = b.X if layer == "X" else b.layers["log1p"]
    np.testing.assert_array_equal(ex.to_array(), source[5:400][:, genes].toarray())
    if layer == "X":  # read from the file by passes, sized like the file's own reader (no block memory)
        from cellucid_export.inputs import parts_from_anndata
        from cellucid_export.resolve import resolve

        assert resolve(parts_from_anndata(view), layer="X").source.bytes_per_value == 0


def test_h5ad_reads_only_the_chosen_layer(adata, tmp_path, monkeypatch):
    b = adata.copy()
    b.layers["huge"] = sp.random(b.n_obs, b.n_vars, density=0.5, format="csr", dtype=np.float32)
    b.write_h5ad(tmp_path / "layers.h5ad")
    opened = []
    orig = sources.open_source
    monkeypatch.setattr(
        "cellucid_export.resolve.open_source", lambda x, *a: opened.append(x.name) or orig(x, *a)
    )
    res = cellucid_export.export_h5ad(
        tmp_path / "layers.h5ad", tmp_path / "out", layer="log1p", genes=["G1"], progress=False
    )
    assert res.source == "layers['log1p']"
    assert opened == ["/layers/log1p"]


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_repeated_entries_add_up(fmt, tmp_path):
    """A matrix holding one cell and gene twice means their sum, as in scipy; the input is not changed."""
    rng = np.random.default_rng(2)
    base = sp.random(120, 30, density=0.2, format="coo", dtype=np.float32, random_state=rng)
    twice = sp.coo_matrix(
        (np.r_[base.data, base.data[:40]], (np.r_[base.row, base.row[:40]], np.r_[base.col, base.col[:40]])),
        shape=base.shape,
    )
    raw = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    # Compressed by hand (scipy would sum the repeats on conversion): the first 40 entries twice.
    order = np.argsort(twice.row if fmt == "csr" else twice.col, kind="stable")
    major = (twice.row if fmt == "csr" else twice.col)[order]
    minor = (twice.col if fmt == "csr" else twice.row)[order]
    indptr = np.searchsorted(major, np.arange(base.shape[0 if fmt == "csr" else 1] + 1))
    messy = raw((twice.data[order], minor, indptr), shape=base.shape)
    assert not messy.has_canonical_format
    before = messy.data.copy()
    summed = twice.toarray()
    umap = rng.random((120, 2), dtype=np.float32)
    for name, x in (("messy", messy), ("summed", summed)):
        a = ad.AnnData(x, obsm={"X_umap": umap}, var=pd.DataFrame(index=[f"G{i}" for i in range(x.shape[1])]))
        a.cellucid.export(tmp_path / name, compression=None, progress=False)
    genes = [
        {k: v for k, v in folder_digest(tmp_path / n).items() if k.startswith("var")}
        for n in ("messy", "summed")
    ]
    assert len(genes[0]) == 31 and genes[0] == genes[1]  # 30 genes and the manifest
    np.testing.assert_array_equal(messy.data, before)


@pytest.mark.parametrize("key", ["indices", "data", "indptr"])
def test_big_endian_arrays_in_a_file(adata, h5ads, tmp_path, key):
    """Files written on big-endian machines (or by other tools) store arrays in that byte order."""
    path = tmp_path / "be.h5ad"
    path.write_bytes(h5ads["csr"].read_bytes())
    with h5py.File(path, "r+") as f:
        values = f["X"][key][...]
        del f["X"][key]
        f["X"].create_dataset(key, data=values.astype(values.dtype.newbyteorder(">")))
        assert not f["X"][key].dtype.isnative
    kw = {**OPTS, "genes": GENES}
    got = cellucid_export.export_h5ad(path, tmp_path / "be", **kw).path
    assert folder_digest(got) == folder_digest(adata.cellucid.export(tmp_path / "mem", **kw).path)


def test_only_repeated_entries_cost_the_sorted_reading(adata, tmp_path):
    """Rows out of order are read as they are; only a file that stores a cell and gene twice is re-sorted."""
    from cellucid_export import _kernels

    rng = np.random.default_rng(5)
    shuffled = adata.X.copy()
    for r in range(shuffled.shape[0]):  # each row's entries in another order, none repeated
        a, b = shuffled.indptr[r], shuffled.indptr[r + 1]
        perm = a + rng.permutation(b - a)
        shuffled.indices[a:b], shuffled.data[a:b] = shuffled.indices[perm], shuffled.data[perm]
    repeated = _with_repeats(adata.X, rng)
    assert not _kernels.rows_repeat(shuffled.indptr, shuffled.indices, shuffled.shape[1])
    assert _kernels.rows_repeat(repeated.indptr, repeated.indices, repeated.shape[1])
    for x, resorted in ((shuffled, False), (repeated, True)):
        path = tmp_path / f"{resorted}.h5ad"
        with h5py.File(path, "w") as f:
            g = f.create_group("X")
            for k in ("data", "indices", "indptr"):
                g[k] = getattr(x, k)
            g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": x.shape})
        with h5py.File(path) as f:
            src = sources.open_source(f["X"])
            (block,) = src.blocks(np.arange(80), 80)
            np.testing.assert_allclose(block.toarray(), adata.X.toarray(), rtol=1e-6, atol=1e-6)
            assert src._canonicalise is resorted


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_a_matrix_of_a_closed_file_is_explained(adata, h5ads, kind):
    from anndata.io import sparse_dataset

    f = h5py.File(h5ads[kind], "r")
    x = sparse_dataset(f["X"]) if kind == "csr" else f["X"]
    a = ad.AnnData(x, obs=adata.obs, var=adata.var, obsm=adata.obsm)
    f.close()
    with pytest.raises(cellucid_export.errors.InputReadError, match="file holding this matrix was closed"):
        a.cellucid.estimate(layer="X")
    with pytest.raises(cellucid_export.errors.InputReadError, match="was closed"):
        a.cellucid.estimate()  # the automatic choice says so too, rather than 'cannot be read'


def test_scratch_files_need_one_file_handle_whatever_the_number_of_blocks(h5ads, tmp_path):
    """A compressed CSR file sorted into many blocks (here 80, one gene each) under a limit of 40 open files."""
    with h5py.File(h5ads["csr-gzip"]) as f:
        assert not sources.open_source(f["X"]).rereads  # compressed: sorted into scratch files, not re-read
    script = textwrap.dedent(f"""
        import resource, sys
        import cellucid_export
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
        res = cellucid_export.export_h5ad({str(h5ads["csr-gzip"])!r}, {str(tmp_path / "out")!r}, layer="X",
            memory_budget=1000, n_jobs=1, progress=False, embeddings=False)
        print(res.n_genes)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "80"
    ref = cellucid_export.export_h5ad(
        h5ads["csr"], tmp_path / "ref", layer="X", progress=False, embeddings=False
    )
    assert folder_digest(ref.path) == folder_digest(tmp_path / "out")


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_repeated_float64_entries_add_up_before_rounding_to_float32(fmt, tmp_path):
    """As adata.X in memory: 1e8 + 1 and -1e8 stored for one cell and gene are 1.0, not 0.0 (each rounded
    to float32 first)."""
    data = np.array([1e8 + 1, -1e8, 2.0, 3.0])
    if fmt == "csr":
        x = sp.csr_matrix((data, np.array([0, 0, 0, 1]), np.array([0, 2, 3, 4])), shape=(3, 2))
    else:
        x = sp.csc_matrix((data, np.array([0, 0, 1, 2]), np.array([0, 3, 4])), shape=(3, 2))
    a = ad.AnnData(x)
    a.var_names = ["G0", "G1"]
    a.write_h5ad(tmp_path / "x.h5ad")
    kw = dict(layer="X", var_quantization=None, embeddings=False, progress=False)
    res = cellucid_export.export_h5ad(tmp_path / "x.h5ad", tmp_path / "out", **kw)
    np.testing.assert_array_equal(cellucid_export.read_export(res.path).gene("G0"), [1.0, 2.0, 0.0])


@pytest.mark.filterwarnings("ignore:Observation names are not unique")  # anndata's, on the repeated cells
def test_a_backed_view_repeating_cells_is_refused_before_writing(h5ads, tmp_path):
    backed = ad.read_h5ad(h5ads["csr"], backed="r")
    with pytest.raises(errors.UnsupportedMatrixError, match=r"lists 1 cell more than once .*to_memory\(\)"):
        backed[[2, 0, 2]].cellucid.export(tmp_path / "out", **OPTS)
    assert not (tmp_path / "out").exists()
    # In memory, and from a CSC or dense file (read by gene), a view repeating cells exports each copy.
    expected = ad.read_h5ad(h5ads["csr"]).X[[2, 0, 2]].toarray()
    for name, view in {
        "mem": backed[[2, 0, 2]].to_memory(),
        "csc": ad.read_h5ad(h5ads["csc"], backed="r")[[2, 0, 2]],
        "dense": ad.read_h5ad(h5ads["dense"], backed="r")[[2, 0, 2]],
    }.items():
        res = view.cellucid.export(tmp_path / name, var_quantization=None, **OPTS)
        np.testing.assert_array_equal(
            cellucid_export.read_export(res.path).to_array(), expected, err_msg=name
        )


@pytest.mark.parametrize(
    ("values", "said"), [(np.complex64(1 + 2j), "complex numbers"), ("1", "not a numeric type")]
)
def test_matrices_of_other_than_real_numbers_are_refused(tmp_path, values, said):
    a = ad.AnnData(np.full((5, 2), values, dtype=object if isinstance(values, str) else None))
    with pytest.raises(errors.UnsupportedMatrixError, match=f"holds values of type .*{said}.*real numbers"):
        a.cellucid.export(tmp_path / "out", layer="X", embeddings=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_scratch_estimate_follows_the_selected_genes_density(tmp_path):
    """Highly variable genes are denser than the average gene: the scratch files are estimated from a sample of
    cells, not from the genes' share of the columns (which here would be 3.5 times too small)."""
    rng = np.random.default_rng(5)
    dense = sp.random(3000, 50, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    sparse = sp.random(3000, 450, density=0.02, format="csr", random_state=rng, dtype=np.float32)
    x = sp.hstack([dense, sparse]).tocsr()
    a = ad.AnnData(x)
    a.write_h5ad(tmp_path / "x.h5ad", compression="gzip")  # compressed: sorted into scratch files
    with h5py.File(tmp_path / "x.h5ad") as f:
        src = sources.open_source(f["X"])
        estimate = src.scratch_bytes(np.arange(50), genes_per_block=10)
    actual = dense.nnz * 12
    assert 0.8 * actual < estimate < 1.25 * actual


@pytest.mark.parametrize("kind", ["csr", "csc", "dense"])
def test_sample_rows_of_a_view_are_its_cells(h5ads, adata, kind):
    """The sample the matrix choice looks at: cells spread over the view, in the view's order, repeats kept."""
    cells = np.random.default_rng(1).permutation(adata.n_obs)[:300]
    cells = np.r_[cells, cells[:5]] if kind != "csr" else cells  # (CSR views refuse repeated cells)
    with h5py.File(h5ads[kind]) as f:
        src = sources.open_source(f["X"], cells)
        got = src.sample_rows(120)
    want = adata.X[cells][sources.sample_positions(len(cells), 120)].toarray()
    if kind == "csc":  # a CSC file is sampled by columns: only those are filled
        filled = got.any(axis=0)
        np.testing.assert_array_equal(got[:, filled], want[:, filled])
    else:
        np.testing.assert_array_equal(got, want)
