"""Plots that let you see an export: a gene on the exported points, and the size of each option.

``cellucid_export.pl.gene(export_dir, "CD79A", adata=adata)`` draws the cells where the export put
them, coloured by the values the viewer will decode, next to the same gene drawn from the AnnData,
like ``sc.pl.umap(adata, color="CD79A")``. ``cellucid_export.pl.size_plan(adata)`` draws the size of
an export at each bit depth, with and without gzip.

matplotlib is imported when a function is called, not when the package is imported: exporting
does not need it.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._logging import logger, warn
from .codec import gunzip_strict
from .errors import CellucidExportWarning, ExportNotFoundError, ExportReadError, InvalidParameterError
from .export import ExportResult, export_parts
from .inputs import open_h5ad, parts_from_anndata, parts_from_h5ad
from .plan import DEFAULT_MAX_BYTES, ExportPlan, format_bytes, parse_bytes
from .reader import Export, read_export
from .resolve import resolve

if TYPE_CHECKING:  # matplotlib is optional and imported only when drawing
    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap

__all__ = ["gene", "size_plan"]

#: Colour of cells without a value (the missing marker), as scanpy draws them.
NA_COLOR = "lightgray"
#: The three ways a gene can be stored, smallest first.
BIT_DEPTHS = (8, 16, None)


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "cellucid_export.pl draws with matplotlib, which is not installed: pip install matplotlib."
        ) from None
    return plt


def _finish(fig, axes, show: bool | None, own_figure: bool):
    """Show the figure like scanpy does, or hand the axes back to the caller."""
    if show is None:
        show = own_figure
    if show:
        _pyplot().show()
        return None
    return axes


# ----------------------------------------------------------------------------------------- gene


def _layer_of(source: str) -> str:
    """``ExportResult.source`` (``"raw.X"``, ``"layers['log1p']"``) as the ``layer=`` argument."""
    if source == "raw.X":
        return "raw"
    m = re.fullmatch(r"layers\[(.+)\]", source)
    return ast.literal_eval(m.group(1)) if m else source


def read_points(export_dir: os.PathLike | str, dimension: int | None = None) -> np.ndarray:
    """The exported cell positions, ``(n_cells, d)`` float32, as the viewer reads them.

    Parameters
    ----------
    export_dir
        An export folder with a ``dataset_identity.json``.
    dimension
        1, 2 or 3. ``None``: 2 when exported, else the dataset's default dimension.

    Returns
    -------
    numpy.ndarray
        float32 of shape ``(n_cells, dimension)``, one row per cell in the export's order: the
        embedding rescaled to [-1, 1], as the viewer draws it.

    Raises
    ------
    ExportNotFoundError
        The folder has no ``dataset_identity.json`` (it was exported without an embedding).
    InvalidParameterError
        The export has no points of that dimension.
    ExportReadError
        The points file is missing, cut short or damaged.

    """
    path = Path(export_dir)
    ident_path = path / "dataset_identity.json"
    if not ident_path.is_file():
        raise ExportNotFoundError(
            f"{path} has no dataset_identity.json, so it holds no cell positions to draw: it was exported "
            "without an embedding. Export again from an AnnData with an obsm['X_umap']."
        )
    identity = json.loads(ident_path.read_text(encoding="utf-8"))
    emb = identity["embeddings"]
    dims = [int(d) for d in emb["available_dimensions"]]
    if dimension is None:
        dimension = 2 if 2 in dims else int(emb["default_dimension"])
    if dimension not in dims:
        raise InvalidParameterError(
            f"{path} has no {dimension}-D points (it has {', '.join(f'{d}-D' for d in dims)}). "
            f"Pass dimension={dims[0]}."
        )
    f = path / emb["files"][f"{dimension}d"]
    n_cells = identity["stats"]["n_cells"]
    data, problem = (f.read_bytes(), None) if f.is_file() else (b"", "is missing")
    if problem is None and f.suffix == ".gz":
        # The viewer decides by the suffix too: the files are not served with Content-Encoding.
        data, problem = gunzip_strict(data)
    if problem is None and len(data) != n_cells * dimension * 4:
        problem = f"holds {len(data):,} bytes, not {n_cells:,} cells x {dimension} float32 values"
    if problem is not None:
        raise ExportReadError(
            f"The cell positions cannot be read: {f.relative_to(path).as_posix()} {problem}. Copy the folder again "
            f"or export again; `cellucid-export validate {path}` lists every damaged file."
        )
    return np.frombuffer(data, dtype="<f4").reshape(-1, dimension)


def _xy(points: np.ndarray) -> np.ndarray:
    """Two columns to draw: 1-D points on a line, 3-D points seen along their third axis."""
    if points.shape[1] == 1:
        return np.column_stack([points[:, 0], np.zeros(len(points), points.dtype)])
    return points[:, :2]


def _adata_values(parts, gene_id: str, layer: str | None, gene_id_column: str | None):
    """One gene from the AnnData's parts, read from the matrix the export would pick (or ``layer``)."""
    sel = resolve(parts, layer=layer, genes=[gene_id], gene_id_column=gene_id_column, layout="index")
    blocks = sel.source.blocks(sel.gene_idx, 1)
    block = next(iter(blocks))
    with contextlib.suppress(AttributeError):
        blocks.close()
    column = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
    return column.ravel().astype(np.float32), sel.source_name


def _basis_key(parts, basis: str) -> str:
    shapes = parts.obsm_shapes
    key = basis if basis in shapes else f"X_{basis}"
    if key not in shapes:
        raise InvalidParameterError(
            f"basis={basis!r}: adata.obsm has no {key!r} (it has {', '.join(shapes) or 'nothing'})."
        )
    return key


def _draw_order(values: np.ndarray) -> np.ndarray:
    """Cells without a value first, then from low to high: expressing cells are drawn on top (as scanpy)."""
    return np.argsort(np.where(np.isnan(values), -np.inf, values), kind="stable")


def _scatter(ax, xy, values, *, title, vmin, vmax, cmap, size, xlabel, ylabel, colorbar=True):
    import matplotlib as mpl

    order = _draw_order(values)
    cmap = (mpl.colormaps[cmap] if isinstance(cmap, str) else cmap).with_extremes(bad=NA_COLOR)
    sc = ax.scatter(
        xy[order, 0],
        xy[order, 1],
        c=values[order],
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        s=size,
        plotnonfinite=True,
        linewidths=0,
        rasterized=len(values) > 50_000,
    )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        ax.figure.colorbar(sc, ax=ax, fraction=0.05, pad=0.02)
    return sc


def _agreement(
    exported: np.ndarray, source: np.ndarray, ex: Export, gene_id: str
) -> tuple[float, float, bool]:
    """Largest difference between exported and source values, what quantization allows, and whether it fits."""
    both = np.isfinite(exported) & np.isfinite(source)
    diff = float(np.abs(exported[both].astype(np.float64) - source[both]).max()) if both.any() else 0.0
    allowed = ex.step(gene_id) / 2
    # float32 rounding of the decoded value adds up to one ulp of the largest magnitude.
    tol = allowed * (1 + 1e-6) + 4 * float(np.finfo(np.float32).eps) * float(
        np.abs(source[both]).max(initial=1)
    )
    # Quantized exports decode +/-Inf as NaN (missing); float32 ones keep it: compare non-finite cells.
    same_missing = np.array_equal(~np.isfinite(exported), ~np.isfinite(source))
    return diff, allowed, diff <= tol and same_missing


def gene(
    export_dir: os.PathLike | str | ExportResult,
    gene: str,
    *,
    adata: AnnData | os.PathLike | str | None = None,
    basis: str = "umap",
    layer: str | None = None,
    dimension: int | None = None,
    cmap: str | Colormap = "viridis",
    size: float | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
) -> Axes | list[Axes] | None:
    """Draw a gene as the viewer will show it, next to the same gene from the AnnData.

    The left panel is the export: the cells at their exported positions (``points_{d}d.bin``),
    coloured by the values the viewer decodes from the gene's file. With ``adata``, the right panel
    is the same gene drawn from the AnnData on ``obsm["X_<basis>"]``, like
    ``sc.pl.umap(adata, color=gene)``. Both panels share one colour scale, so they should look the
    same: the exported points are the embedding rescaled to [-1, 1], and quantization changes a
    value by at most half a step. If the values differ by more, a warning says so (usually the
    export was made from another matrix: pass ``layer=``).

    Parameters
    ----------
    export_dir
        An export folder, or the :class:`~cellucid_export.ExportResult` returned by the export (then
        the AnnData panel uses the matrix that export used).
    gene
        A gene id of the export, as the viewer lists it.
    adata
        The AnnData the export was made from, or the path of its ``.h5ad`` file (opened backed, reading
        the embedding and the gene only). ``None`` draws the export only.
    basis
        The embedding of the AnnData panel: ``"umap"`` reads ``obsm["X_umap"]``.
    layer
        Matrix of the AnnData panel: ``"X"``, ``"raw"`` or a layer name. ``None``: the matrix of
        the :class:`~cellucid_export.ExportResult` when one is passed, else the matrix the export
        picks automatically (see :doc:`/choosing`).
    dimension
        Which exported points to draw (1, 2 or 3). Default: the dimension of ``obsm["X_<basis>"]``
        when ``adata`` is given, else 2. 3-D points are drawn seen along their third axis, 1-D
        points on a line.
    cmap
        Colour map: a matplotlib name such as ``"viridis"`` or ``"Reds"``, or a Colormap. Cells without
        a value (NaN, the missing marker) are grey.
    size
        Point size; default ``120000 / n_cells`` as scanpy.
    vmin
        The value drawn in the lowest colour of the scale, in both panels; default the smallest
        value of both panels.
    vmax
        The value drawn in the highest colour of the scale, in both panels; default the largest
        value of both panels.
    ax
        A matplotlib Axes to draw the export on, or two Axes (export, AnnData) when ``adata`` is
        given.
    show
        Show the figure. Default: show when the function made the figure (``ax=None``).

    Returns
    -------
    Axes or list of Axes or None
        ``None`` when the figure is shown. Otherwise the Axes of the export, or
        ``[export_axes, adata_axes]`` with ``adata``.

    Examples
    --------
    >>> res = adata.cellucid.export("exports/pbmc", genes=adata.var.highly_variable)  # doctest: +SKIP
    >>> cellucid_export.pl.gene(res, "CD79A", adata=adata)  # doctest: +SKIP

    """
    plt = _pyplot()
    if isinstance(export_dir, ExportResult):
        if layer is None:
            layer = _layer_of(export_dir.source)
        export_dir = export_dir.path
    ex = read_export(export_dir)
    exported = ex.gene(gene)
    n_panels = 1 if adata is None else 2

    if adata is not None:
        # From a file, only the embedding and the one gene are read (not the matrix, nor the layers).
        with contextlib.ExitStack() as stack:
            parts = _open_parts(adata, stack)
            key = _basis_key(parts, basis)
            if parts.n_obs != ex.n_cells:
                raise InvalidParameterError(
                    f"adata has {parts.n_obs:,} cells but the export in {ex.path} has {ex.n_cells:,}. Pass the "
                    "AnnData the export was made from."
                )
            basis_xy = np.asarray(parts.obsm(key), dtype=np.float64)
            source, source_name = _adata_values(parts, gene, layer, ex.manifest.get("var_gene_id_column"))
        if dimension is None:
            dimension = basis_xy.shape[1]
        diff, allowed, ok = _agreement(exported, source, ex, gene)
        if not ok:
            warn(
                f"{gene}: the exported values differ from adata {source_name} by up to {diff:.4g}, more than "
                f"quantization explains ({allowed:.4g}). The export was probably made from another matrix or "
                "another AnnData; pass layer= (or the ExportResult) to compare with the right one."
            )
    points = read_points(ex.path, dimension)

    finite = [exported[np.isfinite(exported)]]
    if adata is not None:
        finite.append(source[np.isfinite(source)])
    allvals = np.concatenate(finite)
    lo = float(allvals.min()) if allvals.size else 0.0
    hi = float(allvals.max()) if allvals.size else 1.0
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    if size is None:
        size = 120_000 / max(1, ex.n_cells)

    own_figure = ax is None
    if own_figure:
        fig, axs = plt.subplots(1, n_panels, figsize=(4.6 * n_panels, 4), squeeze=False, layout="constrained")
        axes = list(axs[0])
    else:
        axes = [ax] if n_panels == 1 and not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != n_panels:
            raise InvalidParameterError(
                f"ax must be {'one Axes' if n_panels == 1 else 'two Axes (export, adata)'}, got {len(axes)}."
            )
        fig = axes[0].figure

    kind = f"{ex.bits}-bit" if ex.bits else "float32"
    title = f"{gene}: export ({kind})"
    if adata is not None:
        title += f"\nlargest difference {diff:.3g} (half a step: {allowed:.3g})"
    seen = f" ({dimension}-D, first two axes)" if dimension == 3 else ""
    common = {"vmin": vmin, "vmax": vmax, "cmap": cmap, "size": size}
    _scatter(
        axes[0], _xy(points), exported, title=title, xlabel=f"exported points{seen}", ylabel="", **common
    )
    if adata is not None:
        name = key.removeprefix("X_").upper()
        _scatter(
            axes[1],
            _xy(basis_xy),
            source,
            title=f"{gene}: adata {source_name}",
            xlabel=f"{name}1",
            ylabel=f"{name}2" if basis_xy.shape[1] > 1 else "",
            **common,
        )
    return _finish(fig, axes if adata is not None else axes[0], show, own_figure)


# ------------------------------------------------------------------------------------ size plan


def _open_parts(data: AnnData | os.PathLike | str, stack: contextlib.ExitStack):
    """AnnData or a path to an .h5ad file -> the parts the export reads."""
    if isinstance(data, str | os.PathLike):
        return parts_from_h5ad(stack.enter_context(open_h5ad(data)))
    return parts_from_anndata(data)


def measure_sizes(
    data: AnnData | os.PathLike | str,
    *,
    layer: str | None = None,
    genes: str | Sequence[str] | Sequence[bool] | np.ndarray | pd.Series | None = None,
    gene_id_column: str | None = None,
    compression: int = 6,
    n_sample_genes: int = 20,
) -> dict:
    """Sizes of an export at 8, 16 and 32 bits, before and after gzip.

    The uncompressed sizes are exact (``n_cells x n_genes x bytes per value``). The gzip sizes are
    measured: up to ``n_sample_genes`` of the selected genes, evenly spaced in export order, are
    exported into a temporary folder at each bit depth, and their mean size on disk is multiplied
    by the number of genes. How well gzip works depends on the data (mostly on how many zeros it
    holds), so a measurement on your genes beats a rule of thumb.

    Parameters
    ----------
    data
        An AnnData, or the path of an ``.h5ad`` file (opened read-only, as by
        :func:`~cellucid_export.export_h5ad`).
    layer
        Which values, as in :meth:`~cellucid_export.CellucidAccessor.export`: ``"X"``, ``"raw"``, a
        layer name, or ``None`` for the automatic choice.
    genes
        Which genes, as in :meth:`~cellucid_export.CellucidAccessor.export`: ``None`` (all), a boolean
        mask, a list of gene ids or the name of a boolean var column.
    gene_id_column
        The var column holding the names the viewer shows, as in
        :meth:`~cellucid_export.CellucidAccessor.export`.
    compression
        The gzip level to measure, 1 to 9 (default 6, the export's default).
    n_sample_genes
        How many of the selected genes to export for the measurement (default 20; all of them when
        fewer are selected). More genes give a steadier estimate and take longer.

    Returns
    -------
    dict
        ``"plan"``: the :class:`~cellucid_export.ExportPlan` of the 8-bit export; ``"sampled_genes"``:
        the ids of the genes measured; ``"bytes"``: ``{(bits, level): bytes}``, the size of all the
        selected genes, with ``bits`` 8, 16 or ``None`` (float32) and ``level`` ``None`` (before compression) or
        ``compression``.

    """
    if not isinstance(n_sample_genes, int) or n_sample_genes < 1:
        raise InvalidParameterError(f"n_sample_genes must be a positive integer, got {n_sample_genes!r}.")
    with contextlib.ExitStack() as stack:
        parts = _open_parts(data, stack)
        sel = resolve(parts, layer=layer, genes=genes, gene_id_column=gene_id_column, layout="index")
        if sel.source is None:
            raise InvalidParameterError("genes=[] selects no gene, so there is no gene file to measure.")
        plan = ExportPlan(sel.n_cells, len(sel.gene_ids), 8, compression, sel.source_name)
        n = len(sel.gene_ids)
        picks = np.unique(np.linspace(0, n - 1, min(n, n_sample_genes)).round().astype(int))
        sample = [sel.gene_ids[i] for i in picks]
        out = {}
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="cellucid-size-plan-"))
        # The sample exports are an implementation detail: keep the log and the notebook quiet.
        level = logger.level
        logger.setLevel(logging.WARNING)
        stack.callback(logger.setLevel, level)
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", CellucidExportWarning)
        for bits in BIT_DEPTHS:
            per_gene = ExportPlan(sel.n_cells, 1, bits, None).payload_bytes
            out[(bits, None)] = per_gene * n
            target = Path(tmp) / f"{bits or 32}bit"
            export_parts(
                parts,
                target,
                layer=_layer_of(sel.source_name),
                genes=sample,
                gene_id_column=gene_id_column,
                var_quantization=bits,
                compression=compression,
                layout="index",
                max_bytes=None,
                progress=False,
                embeddings=False,
            )
            on_disk = sum(p.stat().st_size for p in (target / "var").iterdir())
            out[(bits, compression)] = round(on_disk / len(sample) * n)
    return {"plan": plan, "sampled_genes": sample, "bytes": out}


def size_plan(
    data: AnnData | os.PathLike | str | ExportPlan,
    *,
    layer: str | None = None,
    genes: str | Sequence[str] | Sequence[bool] | np.ndarray | pd.Series | None = None,
    gene_id_column: str | None = None,
    compression: int = 6,
    n_sample_genes: int = 20,
    max_bytes: int | str | None = DEFAULT_MAX_BYTES,
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes | None:
    """Bar plot of the size of an export at each bit depth, with and without gzip.

    Parameters
    ----------
    data
        An AnnData, a path to an ``.h5ad`` file, or an :class:`~cellucid_export.ExportPlan`. With an
        AnnData or a file the gzip sizes are measured on a sample of the genes (see
        :func:`measure_sizes`); an ``ExportPlan`` holds no values, so only the sizes before compression
        are drawn.
    layer
        Which values, as in :meth:`~cellucid_export.CellucidAccessor.estimate`: ``"X"``, ``"raw"``, a
        layer name, or ``None`` for the automatic choice. Ignored for an ``ExportPlan``.
    genes
        Which genes, as in :meth:`~cellucid_export.CellucidAccessor.estimate`: ``None`` (all), a boolean
        mask, a list of gene ids or the name of a boolean var column. Ignored for an ``ExportPlan``.
    gene_id_column
        The var column holding the names the viewer shows, as in
        :meth:`~cellucid_export.CellucidAccessor.estimate`. Ignored for an ``ExportPlan``.
    compression
        The gzip level to measure (default 6, the export's default).
    n_sample_genes
        How many genes are exported (into a temporary folder) to measure the gzip sizes.
    max_bytes
        Draw the size guard (default 8 GB before compression; a number of bytes or a size such as
        ``"20GB"``) when a bar reaches it; ``None``: do not.
    ax
        A matplotlib Axes to draw on.
    show
        Show the figure. Default: show when the function made the figure (``ax=None``).

    Returns
    -------
    Axes or None
        ``None`` when the figure is shown, else the Axes. The bars are grouped by storage (uint8,
        uint16, float32); each bar's height is a number of bytes.

    """
    if compression is None or isinstance(compression, bool) or compression not in range(1, 10):
        raise InvalidParameterError(
            f"compression must be a gzip level from 1 to 9 (the bars without gzip are always drawn), got "
            f"{compression!r}."
        )
    max_bytes = parse_bytes(max_bytes, "max_bytes")
    plt = _pyplot()
    if isinstance(data, ExportResult):
        raise InvalidParameterError(
            "size_plan draws the sizes an export would have, before exporting: pass the AnnData, its .h5ad "
            "path or an ExportPlan (adata.cellucid.estimate()). An ExportResult reports its own size "
            "(res.bytes_written)."
        )
    if isinstance(data, ExportPlan):
        plan = data
        sizes = {
            (bits, None): ExportPlan(plan.n_cells, plan.n_genes, bits, None).payload_bytes
            for bits in BIT_DEPTHS
        }
        note = "gzip sizes need the data: pass the AnnData"
    else:
        measured = measure_sizes(
            data,
            layer=layer,
            genes=genes,
            gene_id_column=gene_id_column,
            compression=compression,
            n_sample_genes=n_sample_genes,
        )
        plan, sizes = measured["plan"], measured["bytes"]
        note = f"gzip measured on {len(measured['sampled_genes'])} of the genes"

    own_figure = ax is None
    if own_figure:
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    fig = ax.figure
    x = np.arange(len(BIT_DEPTHS))
    width = 0.38
    series = [(None, "no compression", -width / 2), (compression, f"gzip level {compression}", width / 2)]
    for level, label, shift in series:
        if (BIT_DEPTHS[0], level) not in sizes:
            continue
        heights = [sizes[(bits, level)] for bits in BIT_DEPTHS]
        bars = ax.bar(x + shift, heights, width, label=label)
        ax.bar_label(bars, labels=[format_bytes(h) for h in heights], fontsize=8, padding=2)
    if max_bytes is not None and max(sizes.values()) >= max_bytes:
        ax.axhline(
            max_bytes,
            color="firebrick",
            linestyle="--",
            linewidth=1,
            label=f"max_bytes ({format_bytes(max_bytes)})",
        )
    ax.set_xticks(x, ["uint8 (8-bit)", "uint16 (16-bit)", "float32"])
    ax.yaxis.set_major_formatter(lambda v, _pos: format_bytes(v))
    ax.set_ylabel("size of the gene files")
    ax.set_title(f"{plan.n_genes:,} genes x {plan.n_cells:,} cells ({note})", fontsize=9)
    ax.margins(y=0.15)
    ax.legend(frameon=False, fontsize=8)
    return _finish(fig, ax, show, own_figure)
