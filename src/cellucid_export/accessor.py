"""``adata.cellucid``: the AnnData namespace. Thin: it describes the AnnData and delegates."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TypedDict

import numpy as np
import pandas as pd
from anndata import AnnData, register_anndata_namespace

from .export import ExportResult, estimate_h5ad, estimate_parts, export_h5ad, export_parts
from .inputs import parts_from_anndata
from .plan import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BUDGET, ExportPlan

GeneSelection = None | str | Sequence[str] | Sequence[bool] | np.ndarray | pd.Series


class EstimateOptions(TypedDict, total=False):
    """The keyword options of :func:`~cellucid_export.estimate_h5ad`: those of :meth:`CellucidAccessor.estimate`.

    Type checkers and editors read ``**kwargs`` through this; at run time the signature is copied
    from the method (see :func:`_signature_with_options`), and a test keeps the two in step.
    """

    layer: str | None
    genes: GeneSelection
    gene_id_column: str | None
    var_quantization: int | None
    compression: int | None
    layout: str
    max_bytes: int | str | None


class ExportOptions(EstimateOptions, total=False):
    """The keyword options of :func:`~cellucid_export.export_h5ad`: those of :meth:`CellucidAccessor.export`."""

    overwrite: bool
    progress: bool
    memory_budget: int | str
    n_jobs: int | None
    dataset_name: str | None
    dataset_id: str | None
    description: str | None
    source: str | Mapping[str, str] | None
    created_at: str | datetime | None
    embeddings: str | Sequence[str] | Mapping[int, str] | bool | None
    obs_keys: str | Sequence[str] | None
    latent_key: str
    connectivities: str | None
    vector_fields: str | Sequence[str] | bool | None
    obs_continuous_quantization: int | None
    obs_categorical_dtype: str
    centroid_outlier_quantile: float
    centroid_min_points: int


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
        dataset_name: str | None = None,
        dataset_id: str | None = None,
        description: str | None = None,
        source: str | Mapping[str, str] | None = None,
        created_at: str | datetime | None = None,
        embeddings: str | Sequence[str] | Mapping[int, str] | bool | None = None,
        obs_keys: str | Sequence[str] | None = None,
        latent_key: str = "X_pca",
        connectivities: str | None = "connectivities",
        vector_fields: str | Sequence[str] | bool | None = None,
        obs_continuous_quantization: int | None = None,
        obs_categorical_dtype: str = "auto",
        centroid_outlier_quantile: float = 0.95,
        centroid_min_points: int = 10,
    ) -> ExportResult:
        """Write a viewer-ready dataset: points, cell metadata, graph, genes and the dataset identity.

        See :doc:`/dataset` for the files it writes and :doc:`/export` for the gene options.

        Parameters
        ----------
        out_dir
            Folder to create. Nothing appears there until the export is complete.
        layer
            Which values to export: ``"X"``, ``"raw"`` (``adata.raw.X``; a layer named ``"raw"`` when there is
            no ``adata.raw``) or the name of a layer. ``None`` (unlike scanpy, where it means X) chooses
            automatically and logs the choice: X when it looks log-normalised, else raw.X when X is scaled
            (the scanpy tutorial case), else a layer named like ``log1p``/``logcounts``; it never silently
            exports raw counts.
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
            Gzip level 1 (fastest) to 9 (smallest), or ``None`` for uncompressed files. Mostly-zero genes
            compress the same way at every level (runs of the zero code; smaller than ``gzip -9``); the level
            sets how hard denser genes are searched for repeats.
        layout
            ``"name"``: files named after genes (``var/CD79A.values.u8.gz``), as the user documentation
            describes. ``"index"``: files numbered ``var/0.values.u8.gz``...; what current viewer
            releases read. See :doc:`/layouts`.
        max_bytes
            Refuse exports whose gene files exceed this many bytes before compression (default 8 GB;
            strings like ``"20GB"`` work). ``None`` turns the check off. Exports larger than the free disk
            space are always refused.
        overwrite
            Replace an existing ``out_dir`` that holds a previous export, or nothing (the old folder is
            removed whole, after the new one is complete). A folder holding anything an export does not
            write (your notebooks, the ``.h5ad``...) and the folder you are working in are never replaced.
        progress
            Show a progress bar.
        memory_budget
            Working memory for gene blocks (default 512 MiB), e.g. ``"2GB"``. Larger budgets mean fewer
            passes over an on-disk matrix.
        n_jobs
            Threads compressing genes in parallel; ``None`` (or -1) uses all cores available to the process,
            not scanpy's ``sc.settings.n_jobs``. The output bytes do not depend on it.
        dataset_name
            The name the viewer shows (default: the name of ``out_dir``).
        dataset_id
            The dataset's id in URLs and ``datasets.json`` (default: derived from ``dataset_name``, e.g.
            ``"pbmc-68k-reduced"``, else the folder name): letters, digits, ``.``, ``_``, ``-``.
        description
            Free text shown with the dataset (default empty).
        source
            Where the data comes from: a name, or ``{"name", "url", "citation"}``.
        created_at
            Timestamp written in the identity (default: now, or ``$SOURCE_DATE_EPOCH`` when set).
        embeddings
            ``obsm`` keys drawn as ``points_{1,2,3}d``. Default: every 1-3 column ``X_*`` entry that is not a
            latent space (``X_umap``, ``X_tsne``, ``X_draw_graph_fa``...); when two share a dimension UMAP
            wins and the other is reported. A list, or ``{2: "X_tsne"}``, chooses; ``False`` writes genes only.
        obs_keys
            Obs columns to export (default: every column the viewer can show; the rest are reported).
        latent_key
            ``obsm`` space in which each cell's distance to its category is measured (``"X_pca"``; without
            it the highest-dimensional embedding is used, and the log says so).
        connectivities
            ``obsp`` graph drawn as edges (default ``"connectivities"`` when present); ``None`` disables.
        vector_fields
            ``obsm`` vectors drawn over an embedding (default: entries like ``velocity_umap`` aligned with an
            exported ``X_umap``); ``False`` disables.
        obs_continuous_quantization
            ``None`` (float32, default), 8 or 16 bits for continuous obs values and outlier quantiles.
        obs_categorical_dtype
            ``"auto"`` (uint8 up to 254 categories, else uint16), ``"uint8"`` or ``"uint16"``.
        centroid_outlier_quantile
            Where each category's label sits: the mean position of the category's cells that lie within
            this quantile of their distances to the category mean (default 0.95: the farthest 5% of the cells
            do not pull the label away).
        centroid_min_points
            Categories with fewer cells than this (default 10) get no label position and no outlier
            quantiles.

        Returns
        -------
        ExportResult
            The folder, counts, bytes written, the matrix used and why, the genes that held NaN/Inf, and
            what else was exported (embeddings, obs fields, graph edges).

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
            dataset_name=dataset_name,
            dataset_id=dataset_id,
            description=description,
            source=source,
            created_at=created_at,
            embeddings=embeddings,
            obs_keys=obs_keys,
            latent_key=latent_key,
            connectivities=connectivities,
            vector_fields=vector_fields,
            obs_continuous_quantization=obs_continuous_quantization,
            obs_categorical_dtype=obs_categorical_dtype,
            centroid_outlier_quantile=centroid_outlier_quantile,
            centroid_min_points=centroid_min_points,
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
        max_bytes: int | str | None = DEFAULT_MAX_BYTES,
    ) -> ExportPlan:
        """The size of an export, without writing anything.

        Takes the same selection arguments as :meth:`export` and validates them the same way, so an
        estimate that succeeds means the export will not fail on its matrix or gene selection. The dataset
        options of :meth:`export` (``embeddings=``, ``obs_keys=``...) are checked by the export itself,
        also before anything is written. See :doc:`/size`.

        Parameters
        ----------
        layer
            Which values to export, as in :meth:`export`: ``"X"``, ``"raw"``, a layer name, or ``None``
            for the automatic choice.
        genes
            Which genes, as in :meth:`export`: ``None`` (all), a boolean mask, a list of gene ids or the name
            of a boolean var column.
        gene_id_column
            The var column holding the names the viewer shows, as in :meth:`export`.
        var_quantization
            ``8``, ``16`` or ``None`` (float32), as in :meth:`export`; the plan lists the other two as well.
        compression
            Gzip level 1-9 or ``None``, as in :meth:`export`. It does not change the estimate, which is the
            size before compression.
        layout
            ``"name"`` or ``"index"``, as in :meth:`export`. It does not change the size, but the name
            layout refuses gene ids that cannot be file names, and the estimate checks them too.
        max_bytes
            The limit :meth:`export` applies, with the same default (8 GB before compression). The plan says
            whether the export stays within it (:attr:`~cellucid_export.ExportPlan.within_max_bytes`).

        Returns
        -------
        ExportPlan
            Cells, genes, bytes per gene, total bytes before compression and number of files. Printed, it
            shows the sizes at each bit depth and whether the export stays within ``max_bytes``.

        """
        return estimate_parts(
            parts_from_anndata(self._adata),
            layer=layer,
            genes=genes,
            gene_id_column=gene_id_column,
            var_quantization=var_quantization,
            compression=compression,
            layout=layout,
            max_bytes=max_bytes,
        )


def _signature_with_options(function, method) -> inspect.Signature:
    """``function``'s own leading parameters followed by the keyword options of ``method``.

    ``export_h5ad`` and ``estimate_h5ad`` hand their options on as ``**kwargs``; with this signature,
    ``help()``, Jupyter's completion and the API page list the options themselves.
    """
    own = [p for p in inspect.signature(function).parameters.values() if p.kind is not p.VAR_KEYWORD]
    options = [p for p in inspect.signature(method).parameters.values() if p.kind is p.KEYWORD_ONLY]
    return inspect.signature(function).replace(parameters=[*own, *options])


export_h5ad.__signature__ = _signature_with_options(export_h5ad, CellucidAccessor.export)
estimate_h5ad.__signature__ = _signature_with_options(estimate_h5ad, CellucidAccessor.estimate)
