"""``adata.cellucid``: the AnnData namespace. Thin: it describes the AnnData and delegates."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData, register_anndata_namespace

from .export import ExportResult, estimate_parts, export_parts
from .inputs import parts_from_anndata
from .plan import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BUDGET, ExportPlan

GeneSelection = None | str | Sequence[str] | Sequence[bool] | np.ndarray | pd.Series


@register_anndata_namespace("cellucid")
class CellucidAccessor:
    """Export an AnnData to the Cellucid web viewer: ``adata.cellucid.export(...)``.

    Registered when ``cellucid_export`` is imported. Works on in-memory, backed
    (``anndata.read_h5ad(path, backed="r")``) and view AnnData; a backed matrix is streamed in
    blocks, never loaded whole.
    """

    def __init__(self, adata: AnnData):
        self._adata = adata

    def export(
        self,
        out_dir: os.PathLike | str,
        *,
        layer: str | None = None,
        genes: GeneSelection = None,
        gene_id_column: str | None = None,
        var_quantization: int | None = 8,
        compression: int | None = 6,
        layout: str = "name",
        max_bytes: int | str | None = DEFAULT_MAX_BYTES,
        overwrite: bool = False,
        progress: bool = True,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        n_jobs: int | None = None,
    ) -> ExportResult:
        """Write one file per gene plus ``var_manifest.json`` for the Cellucid viewer.

        Parameters
        ----------
        out_dir
            Folder to create. Nothing appears there until the export is complete.
        layer
            Which values to export: ``"X"``, ``"raw"`` (``adata.raw.X``) or the name of a layer. ``None``
            chooses automatically and logs the choice: X when it looks log-normalised, else raw.X when X is
            scaled (the scanpy tutorial case), else a layer named like ``log1p``/``logcounts``; it never
            silently exports raw counts.
        genes
            ``None`` (all genes), a boolean mask (array, or Series aligned by gene name), a list of gene
            ids, or the name of a boolean var column such as ``"highly_variable"``. Exporting fewer genes
            is the main way to keep an export small.
        gene_id_column
            A var column holding the names the viewer should show (e.g. ``"gene_symbols"`` or
            ``"feature_name"`` when var_names are Ensembl ids). ``None`` uses var_names.
        var_quantization
            ``8`` (1 byte per cell and gene), ``16`` (2 bytes) or ``None`` (float32, 4 bytes).
        compression
            Gzip level 1 (fastest) to 9 (smallest), or ``None`` for uncompressed files.
        layout
            ``"name"``: files named after genes (``var/CD79A.values.u8.gz``), as the user documentation
            describes. ``"index"``: files numbered ``var/0.values.u8.gz``...; what current viewer
            releases read.
        max_bytes
            Refuse exports whose gene files exceed this many bytes before compression (default 8 GB;
            strings like ``"20GB"`` work). ``None`` turns the check off. Exports larger than the free disk
            space are always refused.
        overwrite
            Replace an existing ``out_dir`` (the old folder is removed whole, after the new one is complete).
        progress
            Show a progress bar.
        memory_budget
            Working memory for gene blocks (default 512 MiB), e.g. ``"2GB"``. Larger budgets mean fewer
            passes over an on-disk matrix.
        n_jobs
            Threads compressing genes in parallel; ``None`` uses all cores. The output bytes do not depend
            on it.

        Returns
        -------
        :class:`~cellucid_export.ExportResult` with the path, counts, bytes written, the matrix used and
        why, and the genes that held NaN/Inf.

        """
        return export_parts(
            parts_from_anndata(self._adata),
            out_dir,
            layer=layer,
            genes=genes,
            gene_id_column=gene_id_column,
            var_quantization=var_quantization,
            compression=compression,
            layout=layout,
            max_bytes=max_bytes,
            overwrite=overwrite,
            progress=progress,
            memory_budget=memory_budget,
            n_jobs=n_jobs,
        )

    def estimate(
        self,
        *,
        layer: str | None = None,
        genes: GeneSelection = None,
        gene_id_column: str | None = None,
        var_quantization: int | None = 8,
        compression: int | None = 6,
        layout: str = "name",
    ) -> ExportPlan:
        """The size of an export, without writing anything.

        Takes the same selection arguments as :meth:`export` and validates them the same way, so an
        estimate that succeeds means the export will not fail on its inputs.

        Returns
        -------
        :class:`~cellucid_export.ExportPlan`: cells, genes, bytes per gene, total bytes before
        compression and number of files; its repr is a table of the sizes at each bit depth.

        """
        return estimate_parts(
            parts_from_anndata(self._adata),
            layer=layer,
            genes=genes,
            gene_id_column=gene_id_column,
            var_quantization=var_quantization,
            compression=compression,
            layout=layout,
        )
