"""Compare our exports with the reference writers, cellucid 0.0.9 (name layout) and 0.9.1 (index layout).

Usage (the reference writers live in throwaway virtualenvs; their code never runs in ours)::

    python tests/reference/compare_reference.py /path/to/v009/bin/python /path/to/v091/bin/python [WORKDIR]

Inputs: scanpy's pbmc68k_reduced (UMAP, PCA, graph, all obs columns, the 309 highly variable genes of
raw.X) and a synthetic dataset with a NaN, a constant gene and obs column, values on exact quantization
steps (where truncating and rounding disagree) and gene ids that need safe file names. Each is exported
quantized + gzip and float32 + uncompressed. Printed: every difference found that is not one of the
deliberate differences documented in docs/dataset.md; exit status 1 when there is one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import cellucid_export
from cellucid_export.codec import gzip_decompress
from cellucid_export.quantize import STEPS, dequantize

CREATED_AT = "2024-01-01T00:00:00Z"
VARIANTS = {"q8_gzip": (8, 6), "f32_raw": (None, None)}

# Run by the reference interpreter: reads the input .h5ad and calls cellucid.prepare.
DRIVER = textwrap.dedent(
    """
    import json, sys
    import anndata, cellucid
    h5ad, out, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    a = anndata.read_h5ad(h5ad)
    kw = dict(
        latent_space=a.obsm["X_pca"], obs=a.obs, var=a.var, gene_expression=a.X,
        connectivities=a.obsp["connectivities"] if "connectivities" in a.obsp else None,
        out_dir=out, force=True, X_umap_2d=a.obsm["X_umap"], **opts,
    )
    if cellucid.__version__.startswith("0.0."):
        kw["var_gene_id_column"] = "index"
    else:
        kw["created_at"] = sys.argv[4]
    cellucid.prepare(**kw)
    """
)


def pbmc_input() -> ad.AnnData:
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    hvg = a.var_names[a.var.highly_variable.to_numpy()]
    x = a.raw[:, hvg].X
    out = ad.AnnData(sp.csr_matrix(x, dtype=np.float32), obs=a.obs.copy(), var=pd.DataFrame(index=hvg))
    out.obsm["X_umap"] = a.obsm["X_umap"]
    out.obsm["X_pca"] = a.obsm["X_pca"]
    out.obsp["connectivities"] = a.obsp["connectivities"]
    return out


def synthetic_input(nan_gene: bool) -> ad.AnnData:
    rng = np.random.default_rng(11)
    n = 240
    genes = ["CD79A", "HLA.DRA", "MT CO1", "ZERO.CONST", "STEPS", "NEG-GENE"] + ["NAN_GENE"] * nan_gene
    x = np.zeros((n, len(genes)), np.float32)
    x[:, 0] = np.where(rng.random(n) < 0.3, rng.gamma(2, 1, n), 0)
    x[:, 1] = rng.normal(2, 1, n)
    x[:, 2] = np.log1p(rng.poisson(3, n))
    x[:, 4] = (rng.integers(0, 255, n) / 254).astype(
        np.float32
    )  # exact 8-bit steps: truncation is off by one
    x[:, 5] = rng.normal(0, 1, n)
    if nan_gene:
        x[:, 6] = rng.random(n)
        x[5, 6] = np.nan
    groups = rng.choice(["B cell", "T cell", "NK", "rare"], n, p=[0.4, 0.35, 0.22, 0.03])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(groups, categories=["B cell", "T cell", "NK", "rare"]),
            "batch": pd.Categorical(
                np.where(np.arange(n) % 7 == 0, None, np.where(np.arange(n) % 2, "b1", "b2"))
            ),
            "n_counts": rng.gamma(5, 200, n).astype(np.float32),
            "constant": np.full(n, 3.5, np.float32),
            "steps": (rng.integers(0, 255, n) / 254).astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n)],
    )
    a = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=genes))
    centers = {"B cell": (-4, 1), "T cell": (3, 2), "NK": (0, -3), "rare": (5, 5)}
    a.obsm["X_umap"] = (np.array([centers[g] for g in groups]) + rng.normal(0, 0.8, (n, 2))).astype(
        np.float32
    )
    a.obsm["X_pca"] = rng.normal(size=(n, 6)).astype(np.float32)
    knn = sp.random(n, n, density=0.03, random_state=3, format="csr")
    knn.setdiag(0)
    knn.eliminate_zeros()
    a.obsp["connectivities"] = knn.maximum(knn.T).tocsr()  # symmetric, as sc.pp.neighbors writes it
    return a


def run_reference(python: str, h5ad: Path, out: Path, opts: dict) -> None:
    script = out.parent / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run(
        [python, str(script), str(h5ad), str(out), json.dumps(opts), CREATED_AT],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{python} failed:\n{proc.stderr[-3000:]}")


def load(folder: Path, rel: str, dtype) -> np.ndarray:
    data = (folder / rel).read_bytes()
    return np.frombuffer(gzip_decompress(data) if rel.endswith(".gz") else data, dtype=dtype)


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def js(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def compare(ours: Path, theirs: Path, a: ad.AnnData, version: str, bits) -> list[str]:
    """Differences between our export and the reference's that are not documented as deliberate."""
    diffs: list[str] = []
    old = version == "0.0.9"
    fo, ft = files(ours), files(theirs)
    if old:  # deliberate: we write the graph weights in both layouts
        fo -= {p for p in fo if "edges.weights" in p}
    if fo != ft:
        diffs.append(f"file sets differ: ours only {sorted(fo - ft)[:5]}, theirs only {sorted(ft - fo)[:5]}")

    # Identity: deliberate differences are created_at (0.0.9 cannot fix it) and 0.0.9's column-order obs_fields.
    io, it = js(ours, "dataset_identity.json"), js(theirs, "dataset_identity.json")
    for d in (io, it):
        d.pop("created_at")
    if old:
        io.pop("obs_fields")
        it.pop("obs_fields")
    if io != it:
        diffs.append(f"dataset_identity.json differs: ours {io} theirs {it}")

    # var manifest: 0.0.9 writes var_gene_id_column "index" (the spec says null for var_names).
    vo, vt = js(ours, "var_manifest.json"), js(theirs, "var_manifest.json")
    vo.pop("var_gene_id_column"), vt.pop("var_gene_id_column")
    if vo != vt:
        diffs.append("var_manifest.json differs (bounds, schema or order)")
    eo, et = cellucid_export.read_export(ours), cellucid_export.read_export(theirs)
    x = a.X.toarray()
    for j, g in enumerate(eo.gene_ids):
        src = x[:, j]
        ok = np.isfinite(src)
        if bits is None:
            if not np.array_equal(eo.raw(g), et.raw(g), equal_nan=True):
                diffs.append(f"gene {g}: float32 values differ")
            continue
        half = eo.step(g) / 2 * (1 + 1e-5) + 1e-7
        if np.abs(eo.gene(g)[ok] - src[ok]).max(initial=0) > half:
            diffs.append(f"gene {g}: decoded value further than half a step from the source")
        if not np.array_equal(np.isnan(eo.gene(g)), ~ok):
            diffs.append(f"gene {g}: missing values differ")

    # Points: 0.9.1 normalises in float64 as we do (identical); 0.0.9 in float32 (1-ulp differences).
    suffix = ".gz" if bits else ""
    po, pt = load(ours, f"points_2d.bin{suffix}", "<f4"), load(theirs, f"points_2d.bin{suffix}", "<f4")
    if old:
        if np.abs(po - pt).max() > 2 * np.finfo(np.float32).eps:
            diffs.append("points differ by more than float32 rounding")
    elif not np.array_equal(po, pt):
        diffs.append(f"points differ in {(po != pt).sum()} coordinates")

    # obs: schemas and field lists equal; codes identical; values and outliers close.
    oo, ot = js(ours, "obs_manifest.json"), js(theirs, "obs_manifest.json")
    for k in oo:
        if k not in ("_continuousFields", "_categoricalFields") and oo[k] != ot.get(k):
            diffs.append(f"obs_manifest.json {k} differs: {oo[k]} vs {ot.get(k)}")
    pre = 0 if old else 1
    if [e[: pre + 1] for e in oo["_continuousFields"]] != [e[: pre + 1] for e in ot["_continuousFields"]]:
        diffs.append("continuous obs fields differ")
    for e_o, e_t in zip(oo["_continuousFields"], ot["_continuousFields"], strict=False):
        if e_o[pre + 1 :] != e_t[pre + 1 :]:
            diffs.append(f"obs {e_o[pre]}: bounds differ {e_o[pre + 1 :]} vs {e_t[pre + 1 :]}")
        stem = e_o[pre] if old else str(e_o[0])
        rel = oo["_obsSchemas"]["continuous"]["pathPattern"].replace("{key}", stem).replace("{index}", stem)
        src = a.obs[e_o[pre]].to_numpy(np.float32)
        if bits is None:
            if not np.array_equal(load(ours, rel, "<f4"), load(theirs, rel, "<f4")):
                diffs.append(f"obs {e_o[pre]}: float32 values differ")
        else:
            lo, hi = e_o[pre + 1 :]
            dec = dequantize(load(ours, rel, f"<u{bits // 8}"), lo, hi, bits)
            if np.abs(dec - src).max() > (hi - lo) / STEPS[bits] / 2 * (1 + 1e-5) + 1e-7:
                diffs.append(f"obs {e_o[pre]}: decoded value further than half a step")
    for e_o, e_t in zip(oo["_categoricalFields"], ot["_categoricalFields"], strict=True):
        key = e_o[pre]
        if e_o[pre : pre + 4] != e_t[pre : pre + 4]:
            diffs.append(f"obs {key}: categories, dtype or marker differ")
        for dim, cents in e_o[pre + 4].items():
            other = e_t[pre + 4][dim]
            if [c["category"] for c in cents] != [c["category"] for c in other]:
                diffs.append(f"obs {key}: centroids are given for other categories")
                continue
            for c, d in zip(cents, other, strict=True):
                if c["n_points"] == d["n_points"]:
                    ok = np.allclose(c["position"], d["position"], rtol=0, atol=1e-6)
                else:
                    # 0.0.9 trims on float32 coordinates: a cell at the quantile threshold may fall either side.
                    ok = old and abs(c["n_points"] - d["n_points"]) == 1
                if not ok:
                    diffs.append(f"obs {key}: centroid of {c['category']!r} differs: {c} vs {d}")
        stem = key if old else str(e_o[0])
        cat = oo["_obsSchemas"]["categorical"]
        ext = "u8" if e_o[pre + 2] == "uint8" else "u16"
        rel = cat["codesPathPattern"].replace("{key}", stem).replace("{index}", stem).replace("{ext}", ext)
        cdt = {"u8": "<u1", "u16": "<u2"}[ext]
        if not np.array_equal(load(ours, rel, cdt), load(theirs, rel, cdt)):
            diffs.append(f"obs {key}: codes differ")
        rel = cat["outlierPathPattern"].replace("{key}", stem).replace("{index}", stem)
        if bits is None:
            qo, qt = load(ours, rel, "<f4"), load(theirs, rel, "<f4")
        else:
            dt = f"<u{bits // 8}"
            qo = dequantize(load(ours, rel, dt), *e_o[pre + 5 :], bits)
            qt = dequantize(load(theirs, rel, dt), *e_t[pre + 5 :], bits)
        # Same ranks (float64 vs float32 distances can only reorder exact near-ties); truncation vs rounding.
        tol = 0 if bits is None else 1.0 / STEPS[bits] * 1.01
        mismatch = ~np.isclose(qo, qt, rtol=0, atol=tol, equal_nan=True)
        if mismatch.mean() > 0.005:
            diffs.append(f"obs {key}: outlier quantiles differ in {mismatch.sum()} cells")

    if "connectivities" in a.obsp:
        co, ct = js(ours, "connectivity_manifest.json"), js(theirs, "connectivity_manifest.json")
        if old:  # 0.0.9 omits the weights; strict name-era viewers need them
            co = {k: v for k, v in co.items() if not k.startswith("weight")}
        if co != ct:
            diffs.append(f"connectivity_manifest.json differs: {co} vs {ct}")
        for k in ("sourcesPath", "destinationsPath") + (() if old else ("weightsPath",)):
            if (ours / co[k]).read_bytes() != (theirs / ct[k]).read_bytes() and not np.array_equal(
                load(ours, co[k], "<u1"), load(theirs, ct[k], "<u1")
            ):
                diffs.append(f"{co[k]} differs")
    return diffs


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    pythons = {"0.0.9": argv[1], "0.9.1": argv[2]}
    work = Path(argv[3]) if len(argv) > 3 else Path(tempfile.mkdtemp(prefix="cellucid-ref-"))
    all_diffs: list[str] = []
    for dataset in ("pbmc", "synthetic"):
        for version, python in pythons.items():
            layout = "name" if version == "0.0.9" else "index"
            # 0.9.1 refuses any non-finite gene value, so it gets the synthetic data without the NaN gene.
            a = pbmc_input() if dataset == "pbmc" else synthetic_input(nan_gene=version == "0.0.9")
            d = work / dataset / version
            d.mkdir(parents=True, exist_ok=True)
            h5ad = d / "input.h5ad"
            a.write_h5ad(h5ad)
            for variant, (bits, comp) in VARIANTS.items():
                opts = {
                    "var_quantization": bits,
                    "obs_continuous_quantization": bits,
                    "compression": comp,
                    "obs_categorical_dtype": "auto" if version == "0.0.9" else "uint8",
                    "dataset_name": dataset,
                    "dataset_id": dataset,
                }
                theirs = d / f"theirs-{variant}" / dataset
                theirs.parent.mkdir(exist_ok=True)
                run_reference(python, h5ad, theirs, opts)
                ours = cellucid_export.export_h5ad(
                    h5ad,
                    d / f"ours-{variant}" / dataset,
                    layer="X",
                    layout=layout,
                    var_quantization=bits,
                    obs_continuous_quantization=bits,
                    compression=comp,
                    created_at=CREATED_AT,
                    overwrite=True,
                    progress=False,
                    max_bytes=None,
                ).path
                diffs = [
                    f"{dataset} {version} {variant}: {x}" for x in compare(ours, theirs, a, version, bits)
                ]
                print(
                    f"{dataset:9} cellucid {version} {variant}: {'same' if not diffs else f'{len(diffs)} differences'}"
                )
                all_diffs += diffs
    for x in all_diffs:
        print("  " + x)
    return 1 if all_diffs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
