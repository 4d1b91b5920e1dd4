from __future__ import annotations

import hashlib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import cellucid_export  # noqa: F401  (registers adata.cellucid)


@pytest.fixture(autouse=True)
def _fixed_created_at(monkeypatch):
    # dataset_identity.json records when it was written; a fixed time keeps exports byte-comparable.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


@pytest.fixture(scope="session")
def pbmc_master():
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


@pytest.fixture
def pbmc(pbmc_master):
    return pbmc_master.copy()


def make_scrna(n_cells=300, n_genes=120, density=0.08, seed=0, gene_prefix="G") -> ad.AnnData:
    """A small AnnData shaped like scRNA-seq: sparse log1p counts (about 8% non-zero), counts in a layer."""
    rng = np.random.default_rng(seed)
    nnz_mask = rng.random((n_cells, n_genes)) < density
    counts = np.zeros((n_cells, n_genes), np.float32)
    counts[nnz_mask] = rng.negative_binomial(2, 0.3, nnz_mask.sum()) + 1
    size = counts.sum(1, keepdims=True)
    size[size == 0] = 1
    lognorm = np.log1p(counts / size * 1e4).astype(np.float32)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n_cells)]
    genes = [f"{gene_prefix}{i}" for i in range(n_genes)]
    a = ad.AnnData(
        X=sp.csr_matrix(lognorm),
        obs=pd.DataFrame(index=barcodes),
        var=pd.DataFrame(
            {
                "highly_variable": rng.random(n_genes) < 0.3,
                "gene_symbols": [f"SYM{i}" for i in range(n_genes)],
            },
            index=genes,
        ),
    )
    a.layers["counts"] = sp.csr_matrix(counts)
    a.layers["log1p"] = sp.csr_matrix(lognorm)
    a.obsm["X_umap"] = rng.normal(size=(n_cells, 2)).astype(np.float32)
    return a


@pytest.fixture
def scrna():
    return make_scrna()


def folder_digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``path``."""
    path = Path(path)
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    """Staging or backup folders left beside exports."""
    return sorted(p.name for p in Path(parent).iterdir() if ".staging-" in p.name or ".old-" in p.name)
