"""The export pipeline: resolve inputs -> read gene blocks -> quantize -> encode -> write -> publish."""

from __future__ import annotations

import contextlib
import difflib
import functools
import gc
import inspect
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ._kernels import RECORD
from ._logging import logger, warn
from .codec import get_codec
from .dataset import DatasetPlan, drawable_keys, log_plan, resolve_dataset, write_dataset
from .dataset import file_sizes as dataset_file_sizes
from .errors import CellucidExportError, InvalidParameterError
from .inputs import open_h5ad, parts_from_h5ad
from .plan import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MEMORY_BUDGET,
    DiskNeed,
    ExportPlan,
    block_sizes,
    check_disk,
    check_plan,
    format_bytes,
    full_disk_advice,
    parse_bytes,
    plural,
)
from .quantize import PAYLOAD_KINDS, QuantizedBlock, payload_buffer, payload_row_bytes, quantize_block
from .resolve import AnnDataParts, Selection, _show, check_options, resolve, safe_name
from .writer import (
    Prefetch,
    StagingFolder,
    check_target,
    payload_suffix,
    run_pool,
    values_schema,
    write_json,
    write_payloads,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .accessor import EstimateOptions, ExportOptions

__all__ = ["ExportResult", "estimate_parts", "export_h5ad", "export_parts"]


@dataclass
class ExportResult:
    """What an export wrote.

    Attributes
    ----------
    path
        The export folder.
    n_genes
        Genes exported.
    n_files
        Every file the export wrote: gene files and their manifest, and for a viewer-ready export the
        points, cell metadata, graph and dataset identity too.
    bytes_written
        Bytes of all those files on disk, after compression.
    source
        The matrix that was read (``"X"``, ``"raw.X"``, ``"layers['log1p']"``).
    source_reason
        Why that matrix was chosen.
    layout
        How the gene files are named: ``"name"`` (after the genes) or ``"index"`` (numbered).
    var_quantization
        How the gene values are stored: 8 or 16 bits, or ``None`` (float32).
    compression
        The gzip level of the files, or ``None`` (not compressed).
    nonfinite_genes
        Genes that held NaN or +/-Inf, with counts (written as the missing marker when quantized).
    plan
        The size plan made before writing.
    seconds
        Wall time.
    viewer_ready
        True when the folder opens in the viewer (it has an embedding, the identity and the obs manifest).
    dataset_id
        The id written in ``dataset_identity.json`` (None when only genes were written).
    embeddings
        Dimension -> the ``obsm`` key exported as ``points_{d}d.bin``.
    obs_fields
        Exported obs columns, in the order the viewer lists them (continuous first, then categorical).
    skipped_obs
        Obs columns left out, with the reason.
    n_edges
        Undirected graph edges exported (None without a graph).
    vector_fields
        Exported vector fields (e.g. ``velocity_umap``).

    """

    path: Path
    n_genes: int
    n_files: int
    bytes_written: int
    source: str
    source_reason: str
    layout: str
    var_quantization: int | None
    compression: int | None
    nonfinite_genes: dict[str, str] = field(default_factory=dict)
    plan: ExportPlan | None = field(default=None, repr=False)
    seconds: float = 0.0
    viewer_ready: bool = False
    dataset_id: str | None = None
    embeddings: dict[int, str] = field(default_factory=dict)
    obs_fields: list[str] = field(default_factory=list)
    skipped_obs: dict[str, str] = field(default_factory=dict)
    n_edges: int | None = None
    vector_fields: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        lines = [
            f"ExportResult: {plural(self.n_genes, 'gene')} -> {self.path}",
            f"  source: {self.source} ({self.source_reason})",
            f"  {self.n_files:,} files, {format_bytes(self.bytes_written)} on disk, layout={self.layout!r}, "
            f"var_quantization={self.var_quantization}, compression={self.compression}, {self.seconds:.1f} s",
        ]
        if self.viewer_ready:
            emb = ", ".join(f"{d}-D {k}" for d, k in self.embeddings.items())
            lines.append(
                f"  dataset {self.dataset_id!r}: {emb}; {len(self.obs_fields)} obs fields"
                + (f"; {self.n_edges:,} graph edges" if self.n_edges is not None else "")
                + (f"; vectors {', '.join(self.vector_fields)}" if self.vector_fields else "")
            )
        else:
            lines.append("  genes only: not viewer-openable (no embedding)")
        if self.nonfinite_genes:
            lines.append(
                f"  genes with NaN/Inf: {', '.join(list(self.nonfinite_genes)[:10])}"
                + (" ..." if len(self.nonfinite_genes) > 10 else "")
            )
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(repr(self))


#: Threads reading a sparse matrix at most, whatever ``n_jobs``: each holds read buffers of about 16 MB, and
#: past a few threads a pass is bound by memory bandwidth, not by the threads.
MAX_READ_THREADS = 8


def _n_jobs(n_jobs: int | None) -> int:
    if n_jobs is None or n_jobs == -1:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1:
        raise InvalidParameterError(
            f"n_jobs must be a positive integer, -1 or None (all cores), got {n_jobs!r}."
        )
    return n_jobs


def _plan(sel: Selection, var_quantization, compression, max_bytes=None) -> ExportPlan:
    return ExportPlan(
        sel.n_cells, len(sel.gene_ids), var_quantization, compression, sel.source_name, max_bytes
    )


def estimate_parts(
    parts: AnnDataParts,
    *,
    layer=None,
    genes=None,
    gene_id_column=None,
    var_quantization=8,
    compression=6,
    layout="name",
    max_bytes=DEFAULT_MAX_BYTES,
) -> ExportPlan:
    """Resolve the selection and return the size plan; writes nothing."""
    var_quantization, compression = check_options(var_quantization, compression, layout)
    max_bytes = parse_bytes(max_bytes, "max_bytes")
    sel = resolve(parts, layer=layer, genes=genes, gene_id_column=gene_id_column, layout=layout)
    return _plan(sel, var_quantization, compression, max_bytes)


def var_manifest(sel: Selection, layout: str, var_quantization, compression, lo, hi) -> dict:
    """``var_manifest.json`` as the format specifies (keys in this order)."""
    key = "{key}" if layout == "name" else "{index}"
    schema = values_schema("var", key, var_quantization, compression, with_kind=True)
    fields = []
    for i, gid in enumerate(sel.gene_ids):
        entry = [gid] if layout == "name" else [i, gid]
        if var_quantization is not None:
            entry += [float(lo[i]), float(hi[i])]
        fields.append(entry)
    return {
        "_format": "compact_v1",
        "n_points": sel.n_cells,
        "var_gene_id_column": sel.gene_id_column,
        "compression": compression,
        "quantization": var_quantization,
        "_varSchema": schema,
        "fields": fields,
    }


def _block_sizes(sel: Selection, var_quantization, memory_budget: int) -> tuple[int, int]:
    """Genes per read block and per payload block for this selection (see :func:`~cellucid_export.plan.block_sizes`)."""
    return block_sizes(
        sel.n_cells,
        sel.source.nnz_fraction(),
        sel.source.is_sparse,
        var_quantization,
        memory_budget,
        sel.source.bytes_per_value,
    )


#: Genes the disk check compresses when the export fits the disk only after gzip (see check_disk).
GZIP_SAMPLE_GENES = 64


def _gzip_sample(sel: Selection, var_quantization, layout, compression, n_jobs: int) -> list[int]:
    """Gzip sizes of up to :data:`GZIP_SAMPLE_GENES` genes spread over the selection, encoded as exported."""
    n = len(sel.gene_ids)
    picks = np.unique(np.linspace(0, n - 1, min(n, GZIP_SAMPLE_GENES)).round().astype(int))
    sample = replace(sel, gene_idx=sel.gene_idx[picks], gene_ids=[sel.gene_ids[i] for i in picks])
    codec = get_codec(int(compression))
    sizes: list[int] = []
    budget = 64 * 2**20
    with read_genes(
        sample,
        var_quantization=var_quantization,
        layout=layout,
        memory_budget=budget,
        n_jobs=n_jobs,
        scratch_dir=None,
    ) as blocks:
        for qb in blocks:
            sizes += [
                len(codec.encode(memoryview(np.ascontiguousarray(row)).cast("B"))) for row in qb.payload
            ]
    return sizes


def read_genes(
    sel: Selection,
    *,
    var_quantization,
    layout,
    memory_budget: int,
    n_jobs: int,
    scratch_dir: Path | None,
) -> Prefetch:
    """Start reading and quantizing the selected genes on a background thread; returns the blocks.

    Scratch files (a CSR file too large to read twice) go in ``scratch_dir``. Closing the result
    stops the reader within a read chunk, so a failure or Ctrl-C does not wait for a whole pass.
    """
    read_block, payload_genes = _block_sizes(sel, var_quantization, memory_budget)
    n = len(sel.gene_ids)
    stop = threading.Event()

    def quantized_blocks():
        # Two payload buffers, used in turn: Prefetch keeps at most two blocks alive, so the buffer of
        # block k is free again when block k + 2 is made.
        buffers: list[np.ndarray] = []
        size = min(payload_genes, n) * payload_row_bytes(
            sel.n_cells, np.dtype(PAYLOAD_KINDS[var_quantization][1]).itemsize
        )
        # The last, partial payload goes first, from values the statistics pass keeps (12 bytes each, at
        # most a payload's worth): a CSR file read by passes then needs one pass fewer.
        lead = (n - (-(-n // payload_genes) - 1) * payload_genes, size // RECORD.itemsize)
        for block in sel.source.blocks(
            sel.gene_idx,
            read_block,
            scratch_dir=scratch_dir,
            n_threads=min(n_jobs, MAX_READ_THREADS),
            lead=lead,
            cancel=stop,
        ):
            # Dense payloads take more room than a sparse block: they are made a slice at a time.
            for s in range(0, block.shape[1], payload_genes):
                part = block[:, s : s + payload_genes]
                if sel.source.is_sparse:  # dense blocks make their own payload
                    if len(buffers) < 2:
                        buffers.append(payload_buffer(size))
                    buffers.reverse()
                out = buffers[0] if buffers else None
                yield quantize_block(part, var_quantization, constant_plus_one=layout == "name", out=out)

    return Prefetch(quantized_blocks(), stop)


def write_genes(
    folder: Path,
    sel: Selection,
    blocks: Iterable[QuantizedBlock],
    *,
    var_quantization,
    compression,
    layout,
    n_jobs: int,
    progress: bool,
) -> tuple[int, dict, dict[str, str]]:
    """Write the quantized ``blocks`` as ``var/`` into ``folder``; returns (bytes, manifest, genes with NaN/Inf)."""
    var_dir = folder / "var"
    var_dir.mkdir()
    ext, _ = PAYLOAD_KINDS[var_quantization]
    suffix = ".values" + payload_suffix(ext, compression)
    names = [(safe_name(g) if layout == "name" else str(i)) + suffix for i, g in enumerate(sel.gene_ids)]
    codec = get_codec(int(compression)) if compression else None
    n = len(sel.gene_ids)
    lo = np.zeros(n, np.float32)
    hi = np.zeros(n, np.float64)
    nonfinite: dict[str, str] = {}
    written = 0
    bar = tqdm(total=n, unit="gene", desc="cellucid-export", disable=not progress, leave=False)
    start = 0
    with run_pool(n_jobs) as pool, bar:
        for qb in blocks:
            b = qb.payload.shape[0]
            written += write_payloads(var_dir, names[start : start + b], qb, codec, pool)
            if qb.lo is not None:
                lo[start : start + b], hi[start : start + b] = qb.lo, qb.hi
            for j in np.flatnonzero((qb.n_nan > 0) | (qb.n_inf > 0)):
                parts = [f"{qb.n_nan[j]} NaN"] * bool(qb.n_nan[j]) + [f"{qb.n_inf[j]} Inf"] * bool(
                    qb.n_inf[j]
                )
                nonfinite[sel.gene_ids[start + j]] = ", ".join(parts) + f" of {sel.n_cells} cells"
            start += b
            bar.update(b)
    manifest = var_manifest(sel, layout, var_quantization, compression, lo, hi)
    written += write_json(folder / "var_manifest.json", manifest)
    return written, manifest, nonfinite


def _warn_nonfinite(nonfinite: dict[str, str], var_quantization, n_cells: int) -> None:
    if not nonfinite:
        return
    shown = "; ".join(f"{g} ({what})" for g, what in list(nonfinite.items())[:10])
    more = f" and {len(nonfinite) - 10} more" if len(nonfinite) > 10 else ""
    if var_quantization is None:
        bad = {g: w for g, w in nonfinite.items() if "Inf" in w or w.startswith(f"{n_cells} NaN")}
        if bad:
            warn(
                f"{plural(len(bad), 'gene')} with +/-Inf or only NaN, written as-is in float32; the viewer "
                f"cannot colour cells by them: {'; '.join(f'{g} ({w})' for g, w in list(bad.items())[:10])}. Replace "
                "them before export (e.g. np.nan_to_num) or use var_quantization=8, which marks them as missing."
            )
        logger.info(f"{plural(len(nonfinite), 'gene')} with NaN/Inf, written as-is (float32): {shown}{more}")
    else:
        logger.info(f"{plural(len(nonfinite), 'gene')} with NaN/Inf, written as missing: {shown}{more}")


def _cycle_collector_paused(fn):
    """Run ``fn`` with Python's cycle collector paused, as it was before afterwards.

    A full collection walks every object of the session (a scanpy session holds millions) while
    holding the GIL, stalling every export thread; building and checking the manifests of 20,000
    genes triggered two of them (50 and 80 ms) on the benchmark. The export itself leaves almost no
    cyclic garbage (a dozen objects on M), so nothing piles up meanwhile.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


@_cycle_collector_paused
def export_parts(
    parts: AnnDataParts,
    out_dir: os.PathLike | str,
    *,
    layer=None,
    genes=None,
    gene_id_column=None,
    var_quantization=8,
    compression=6,
    layout="name",
    max_bytes=DEFAULT_MAX_BYTES,
    overwrite=False,
    progress=True,
    memory_budget=DEFAULT_MEMORY_BUDGET,
    n_jobs=None,
    **dataset_options,
) -> ExportResult:
    """Export a dataset from resolved AnnData parts (see :meth:`CellucidAccessor.export`).

    ``dataset_options`` are the keyword arguments of :func:`~cellucid_export.dataset.resolve_dataset`
    (``dataset_name``, ``embeddings``, ``obs_keys``, ``connectivities``...).
    """
    t0 = time.perf_counter()
    var_quantization, compression = check_options(var_quantization, compression, layout)
    max_bytes = parse_bytes(max_bytes, "max_bytes")
    memory_budget = parse_bytes(memory_budget, "memory_budget")
    if memory_budget is None:
        raise InvalidParameterError("memory_budget cannot be None; pass a size such as '512MB'.")
    jobs = _n_jobs(n_jobs)
    target = Path(out_dir)
    check_target(target.absolute(), overwrite)
    sel = resolve(parts, layer=layer, genes=genes, gene_id_column=gene_id_column, layout=layout)
    dataset = resolve_dataset(parts, layout=layout, target=target.absolute(), **dataset_options)
    has_genes = sel.source is not None
    if not has_genes and not dataset.viewer_ready:
        raise InvalidParameterError(
            "genes=[] exports the cell data only, but there is no embedding to draw, so there would be nothing "
            "to export. Select genes, or name an obsm embedding with embeddings=."
        )
    plan = _plan(sel, var_quantization, compression, max_bytes)
    check_plan(plan, max_bytes)
    scratch = 0
    if has_genes:
        scratch = sel.source.scratch_bytes(
            sel.gene_idx, _block_sizes(sel, var_quantization, memory_budget)[0]
        )
    need = DiskNeed(plan, tuple(dataset_file_sizes(dataset)), scratch)
    measure = (
        functools.partial(_gzip_sample, sel, var_quantization, layout, compression, jobs)
        if compression and has_genes
        else None
    )
    check_disk(need, target, measure)
    if has_genes:
        logger.info(f"exporting {sel.source_name}: {sel.reason}.")
        logger.info(
            f"{plural(len(sel.gene_ids), 'gene')} ({sel.notes[0]}) x {sel.n_cells:,} cells, "
            f"{format_bytes(plan.payload_bytes)} before compression."
        )
    else:
        logger.info("no genes (genes=[]): exporting the cell data only.")
    if layout == "name":
        logger.info(
            "layout='name' (files named after genes) opens in viewers of the name era; current viewer "
            "releases need layout='index'."
        )
    log_plan(dataset)
    # The reader stops (within a read chunk) before the staging folder, which holds its scratch files, goes.
    with (
        StagingFolder(
            target, overwrite=overwrite, full_disk_advice=full_disk_advice(need, compression)
        ) as stage,
        read_genes(
            sel,
            var_quantization=var_quantization,
            layout=layout,
            memory_budget=memory_budget,
            n_jobs=jobs,
            scratch_dir=stage.path,
        )
        if has_genes
        else contextlib.nullcontext(()) as blocks,
    ):
        written, nonfinite = 0, {}
        if has_genes:  # with no genes, the format wants neither var/ nor var_manifest.json
            written, _manifest, nonfinite = write_genes(
                stage.path,
                sel,
                blocks,
                var_quantization=var_quantization,
                compression=compression,
                layout=layout,
                n_jobs=jobs,
                progress=progress,
            )
        more, _identity = write_dataset(
            stage.path,
            dataset,
            layout=layout,
            n_genes=len(sel.gene_ids),
            compression=compression,
            var_quantization=var_quantization,
        )
        written += more
        _guard(stage.path, dataset)
        n_files = sum(len(files) for _, _, files in os.walk(stage.path))
        stage.publish()
    _warn_nonfinite(nonfinite, var_quantization, sel.n_cells)
    if not dataset.viewer_ready and dataset_options.get("embeddings") is False:
        logger.info(
            f"{target} holds gene expression only (embeddings=False): the viewer cannot open it alone."
        )
    elif not dataset.viewer_ready:
        drawable = drawable_keys(parts)
        hint = (
            f" obsm has {_show(drawable)} with 1-3 columns, not drawn unless named: pass embeddings={drawable[0]!r} "
            "to draw it."
            if drawable
            else ""
        )
        warn(
            f"{target} holds gene expression only and is not viewer-openable: the AnnData has no embedding "
            f"to draw (an obsm entry such as 'X_umap' with 1, 2 or 3 columns).{hint} Compute one "
            "(sc.pp.neighbors(adata); sc.tl.umap(adata)) or name it with embeddings=, then export again."
        )
    return ExportResult(
        path=target,
        n_genes=len(sel.gene_ids),
        n_files=n_files,
        bytes_written=written,
        source=sel.source_name,
        source_reason=sel.reason,
        layout=layout,
        var_quantization=var_quantization,
        compression=compression,
        nonfinite_genes=nonfinite,
        plan=plan,
        seconds=time.perf_counter() - t0,
        viewer_ready=dataset.viewer_ready,
        dataset_id=dataset.dataset_id if dataset.viewer_ready else None,
        embeddings=dict(dataset.embeddings),
        obs_fields=[f.key for f in dataset.obs_fields if f.kind == "continuous"]
        + [f.key for f in dataset.obs_fields if f.kind == "category"],
        skipped_obs=dict(dataset.skipped_obs),
        n_edges=dataset.n_edges,
        vector_fields=list(dataset.vectors),
    )


def _guard(folder: Path, dataset: DatasetPlan) -> None:
    """Check the staged folder against the format before publishing it: a failure here is a bug of ours."""
    from .validate import validate

    problems = validate(folder, genes_only=not dataset.viewer_ready, decode_genes=False)
    if problems:
        raise CellucidExportError(
            "The export did not pass its own check, so nothing was published (this is a bug in "
            "cellucid-export; please report it with these lines):\n  - " + "\n  - ".join(problems)
        )


def _check_keywords(kwargs: dict, call: str, *functions) -> None:
    """Refuse keyword arguments that none of ``functions`` takes, naming the user's call, not ours.

    ``export_h5ad(**kwargs)`` hands its options on; Python's own error would name an internal function.
    """
    known = {
        name
        for fn in functions
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    } - {"target"}  # resolve_dataset's, set by the export itself
    unknown = sorted(set(kwargs) - known)
    if unknown:
        close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        hints = "".join(f" Did you mean {close[k][0]}= for {k}=?" for k in unknown if close[k])
        raise InvalidParameterError(
            f"{call}() got unknown keyword arguments: {', '.join(unknown)}.{hints} The options are those of "
            f"adata.cellucid.{'estimate' if 'estimate' in call else 'export'}() (help(cellucid_export.{call}))."
        )


def export_h5ad(
    path: os.PathLike | str, out_dir: os.PathLike | str, **kwargs: Unpack[ExportOptions]
) -> ExportResult:
    """Export straight from an ``.h5ad`` file, reading only what the export needs.

    The file is opened read-only. The cell names and the ``var`` tables are read, then only the
    exported parts: the chosen ``obs`` columns, ``obsm`` entries (embeddings, the latent space,
    vector fields) and the ``obsp`` graph. The expression matrix (``X``, ``layers/<name>`` or
    ``raw/X``) is streamed in blocks, so memory stays within ``memory_budget`` whatever the file
    size. Other layers are never loaded (anndata's backed mode would load them all). See
    :doc:`/large-data`.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    out_dir
        The export folder to create. Nothing appears there until the export is complete.
    **kwargs
        Every option of :meth:`CellucidAccessor.export <cellucid_export.CellucidAccessor.export>`,
        with the same meaning and defaults (the signature above lists them; editors and type checkers
        see them too). A misspelt name is refused before anything is read, naming the option meant.

    Returns
    -------
    ExportResult
        What was written, as returned by :meth:`CellucidAccessor.export
        <cellucid_export.CellucidAccessor.export>`.

    """
    with open_h5ad(path) as f:
        _check_keywords(kwargs, "export_h5ad", export_parts, resolve_dataset)
        return export_parts(parts_from_h5ad(f), out_dir, **kwargs)


def estimate_h5ad(path: os.PathLike | str, **kwargs: Unpack[EstimateOptions]) -> ExportPlan:
    """The size of an export from an ``.h5ad`` file (see :func:`export_h5ad`), without writing anything.

    Reads the cell names, the ``var`` tables and, when ``layer=None``, a sample of cells from the
    matrices it chooses between; never a whole matrix.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    **kwargs
        The options of :meth:`CellucidAccessor.estimate <cellucid_export.CellucidAccessor.estimate>`,
        with the same meaning and defaults (the signature above lists them; editors and type checkers
        see them too). A misspelt name is refused, naming the option meant.

    Returns
    -------
    ExportPlan
        Cells, genes, bytes before compression and number of files, and whether the export stays
        within ``max_bytes``.

    """
    with open_h5ad(path) as f:
        _check_keywords(kwargs, "estimate_h5ad", estimate_parts)
        return estimate_parts(parts_from_h5ad(f), **kwargs)
