"""Generate small reference exports with a public ``cellucid`` release.

Run it with the interpreter of a throwaway virtualenv that has one of the
reference writers installed (never with the project's own environment):

    /work/refenv/v009/bin/python make_reference_fixtures.py OUTDIR
    /work/refenv/v091/bin/python make_reference_fixtures.py OUTDIR

It writes

    OUTDIR/input.npz                    the exact input (dense float32 X, gene_ids, ...)
    OUTDIR/v<version>/q8_gzip/          var_quantization=8, obs quantization 8, gzip level 6
    OUTDIR/v<version>/f32_raw/          float32 everywhere, no compression

The synthetic dataset is fully determined by SEED, so both releases see the
same numbers.  Gene roles (column order of X):

    0 CD79A, 1 MS4A1, 2 GENE-3, 3 HLA.DRA, 4 "MT CO1" (name layout file: MT_CO1)
    5 ZERO.CONST   all zeros (constant gene)
    6 NEG-GENE     contains one negative value
    7 NAN_GENE     contains one NaN (stored explicitly in the CSR matrix)

cellucid 0.9.1 refuses non-finite gene values outright (both quantized and
float32), so for that release the NaN gene is left out via gene_identifiers
(it is the last column, so export index i == input column i for i < 7).  The
refusal message is printed and stored in OUTDIR/v0.9.1/nan_gene_refusal.txt.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import cellucid
import numpy as np
import pandas as pd
from scipy import sparse

SEED = 20240611
N_CELLS = 60
GENE_IDS = [
    "CD79A",
    "MS4A1",
    "GENE-3",
    "HLA.DRA",
    "MT CO1",
    "ZERO.CONST",
    "NEG-GENE",
    "NAN_GENE",
]
CONST_GENE = 5
NEG_GENE = 6
NAN_GENE = 7
DATASET_ID = "reference-fixture"
CREATED_AT = "2024-01-01T00:00:00Z"


def build_inputs():
    rng = np.random.default_rng(SEED)
    n_genes = len(GENE_IDS)

    # ~10% nonzeros overall, log1p of Poisson-ish counts, float32.
    dense = np.zeros((N_CELLS, n_genes), dtype=np.float32)
    for j in range(n_genes):
        if j == CONST_GENE:
            continue
        rows = rng.choice(N_CELLS, size=7, replace=False)
        counts = rng.integers(1, 40, size=rows.size)
        dense[rows, j] = np.log1p(counts.astype(np.float64)).astype(np.float32)
    # One negative value (e.g. a scaled/corrected entry).
    neg_row = int(np.flatnonzero(dense[:, NEG_GENE] == 0)[0])
    dense[neg_row, NEG_GENE] = np.float32(-0.75)
    # One NaN, stored as an explicit element of the sparse matrix.
    nan_row = int(np.flatnonzero(dense[:, NAN_GENE] != 0)[0])
    dense[nan_row, NAN_GENE] = np.nan

    # Build CSR from the explicit nonzero pattern (NaN != 0, so it is kept).
    mask = dense != 0
    rr, cc = np.nonzero(mask)
    X = sparse.csr_matrix((dense[rr, cc], (rr, cc)), shape=dense.shape, dtype=np.float32)
    X.sort_indices()

    # Embedding (2D), latent space (5D), obs: one categorical, one continuous.
    groups = np.repeat(np.array(["B cell", "T cell", "NK"]), [25, 20, 15])
    centers = {"B cell": (-4.0, 1.0), "T cell": (3.0, 2.5), "NK": (0.5, -3.0)}
    umap = np.stack([centers[g] for g in groups]).astype(np.float64)
    umap += rng.normal(scale=0.8, size=umap.shape)
    umap = umap.astype(np.float32)
    latent = rng.normal(size=(N_CELLS, 5)).astype(np.float32)
    latent[:, 0] += np.array([{"B cell": 0, "T cell": 3, "NK": -3}[g] for g in groups])
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(groups, categories=["B cell", "T cell", "NK"]),
            "n_counts": rng.gamma(5.0, 200.0, size=N_CELLS).astype(np.float32),
        },
        index=[f"cell{i:02d}" for i in range(N_CELLS)],
    )
    var = pd.DataFrame(index=pd.Index(GENE_IDS, dtype=object))
    return dense, X, umap, latent, obs, var


def export(version, out_dir, *, quantized, X, umap, latent, obs, var, genes=None):
    kwargs = dict(
        latent_space=latent,
        obs=obs,
        var=var,
        gene_expression=X,
        out_dir=str(out_dir),
        var_quantization=8 if quantized else None,
        obs_continuous_quantization=8 if quantized else None,
        compression=6 if quantized else None,
        obs_categorical_dtype="uint8",
        dataset_name="Reference fixture",
        dataset_id=DATASET_ID,
        X_umap_2d=umap,
        force=True,
    )
    if genes is not None:
        kwargs["gene_identifiers"] = genes
    if version.startswith("0.0."):
        # Generation-1 writer: no created_at argument, var_gene_id_column
        # defaults to the string "index".
        pass
    else:
        kwargs["created_at"] = CREATED_AT
    cellucid.prepare(**kwargs)


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    root = Path(argv[1]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    version = cellucid.__version__
    dense, X, umap, latent, obs, var = build_inputs()

    np.savez(
        root / "input.npz",
        X=dense,
        gene_ids=np.array(GENE_IDS, dtype=str),
        X_umap_2d=umap,
        latent_space=latent,
        cell_type_codes=obs["cell_type"].cat.codes.to_numpy().astype(np.int8),
        n_counts=obs["n_counts"].to_numpy(),
    )

    vdir = root / f"v{version}"
    if vdir.exists():
        shutil.rmtree(vdir)
    vdir.mkdir(parents=True)

    genes = None
    if not version.startswith("0.0."):
        # Show (and record) that this release refuses the NaN gene.
        with tempfile.TemporaryDirectory() as tmp:
            try:
                export(
                    version,
                    Path(tmp) / "probe",
                    quantized=True,
                    X=X,
                    umap=umap,
                    latent=latent,
                    obs=obs,
                    var=var,
                )
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                print("NaN gene refused:", msg)
                (vdir / "nan_gene_refusal.txt").write_text(msg + "\n", encoding="utf-8")
                genes = [g for i, g in enumerate(GENE_IDS) if i != NAN_GENE]
            else:
                print("NaN gene accepted by this release")

    for name, quantized in (("q8_gzip", True), ("f32_raw", False)):
        export(
            version,
            vdir / name,
            quantized=quantized,
            X=X,
            umap=umap,
            latent=latent,
            obs=obs,
            var=var,
            genes=genes,
        )
        # 0.9.1 leaves an empty writer lock file beside the export folder;
        # it is not part of the export, so do not keep it in the fixtures.
        lock = vdir / f".{name}.cellucid.lock"
        if lock.exists():
            lock.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
