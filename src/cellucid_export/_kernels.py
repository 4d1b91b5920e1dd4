"""Compiled loops over the stored values of a sparse matrix (numba).

Exporting a sparse matrix is O(nnz) work: sort each stored value to its gene, keep each gene's
minimum and maximum, then write each value's code into that gene's payload. In numpy every one of
those steps is a separate pass with its own temporary arrays; here each is one loop, and every
kernel releases the GIL so it runs beside the gzip threads. Compiled code is cached on disk, so
only the first export on a machine pays for compilation.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "RECORD",
    "bucket_csr_rows",
    "csc_stats",
    "scatter_csc",
    "scatter_csc_values",
    "scatter_record_values",
    "scatter_records",
]

#: One stored value on its way to its gene: output cell, gene position in its block, value.
RECORD = np.dtype([("row", "<i4"), ("gene", "<i4"), ("val", "<f4")])

_jit = numba.njit(nogil=True, cache=True)


@numba.njit(nogil=True, cache=True, inline="always")
def _code(v, lo, scale, steps, marker):
    """Round-half-even code of one value, computed in float64 like :func:`quantize._codes`."""
    if not np.isfinite(v):
        return marker
    c = np.rint((np.float64(v) - lo) * scale)
    if c < 0.0:
        return 0
    if c > steps:
        return steps
    return int(c)


@numba.njit(nogil=True, cache=True, inline="always")
def _add_stat(p, v, vmin, vmax, n_stored, n_nan, n_inf):
    n_stored[p] += 1
    if np.isnan(v):
        n_nan[p] += 1
    elif np.isinf(v):
        n_inf[p] += 1
    else:
        if v < vmin[p]:
            vmin[p] = v
        if v > vmax[p]:
            vmax[p] = v


@_jit
def bucket_csr_rows(
    indptr,
    indices,
    data,
    row0,
    row_lut,
    pos_of,
    genes_per_block,
    n_blocks,
    vmin,
    vmax,
    n_stored,
    n_nan,
    n_inf,
):
    """Sort the stored values of a run of CSR rows into blocks of exported genes.

    ``indptr`` holds the run's row pointers, relative to ``indices``/``data`` (which hold only this
    run). ``pos_of`` maps a file column to its export position (-1: not exported); ``row_lut`` maps
    file rows to output cells (-1: not exported; empty: identity). Updates the per-gene statistics
    (indexed by export position) and returns the records grouped by block, with the block bounds.
    Within a block, records keep the file's order.
    """
    n_rows = len(indptr) - 1
    has_lut = row_lut.size > 0
    counts = np.zeros(n_blocks + 1, np.int64)
    for r in range(n_rows):
        out_r = row_lut[row0 + r] if has_lut else row0 + r
        if out_r < 0:
            continue
        for k in range(indptr[r], indptr[r + 1]):
            p = pos_of[indices[k]]
            if p < 0:
                continue
            counts[p // genes_per_block + 1] += 1
            _add_stat(p, data[k], vmin, vmax, n_stored, n_nan, n_inf)
    bounds = np.cumsum(counts)
    out = np.empty(bounds[-1], RECORD)
    fill = bounds[:-1].copy()
    for r in range(n_rows):
        out_r = row_lut[row0 + r] if has_lut else row0 + r
        if out_r < 0:
            continue
        for k in range(indptr[r], indptr[r + 1]):
            p = pos_of[indices[k]]
            if p < 0:
                continue
            b = p // genes_per_block
            i = fill[b]
            out[i].row = out_r
            out[i].gene = p - b * genes_per_block
            out[i].val = data[k]
            fill[b] = i + 1
    return out, bounds


@_jit
def csc_stats(indptr, data, vmin, vmax, n_stored, n_nan, n_inf):
    """Per-gene statistics of a CSC block (arrays indexed by the block's columns)."""
    for g in range(len(indptr) - 1):
        for k in range(indptr[g], indptr[g + 1]):
            _add_stat(g, data[k], vmin, vmax, n_stored, n_nan, n_inf)


@_jit
def scatter_records(records, g0, g1, lo, scale, steps, marker, payload):
    """Write the codes of the records of genes ``g0 <= gene < g1`` into ``payload[gene - g0, row]``."""
    for i in range(len(records)):
        g = records[i].gene
        if g0 <= g < g1:
            g -= g0
            payload[g, records[i].row] = _code(records[i].val, lo[g], scale[g], steps, marker)


@_jit
def scatter_record_values(records, g0, g1, payload):
    """Float32 exports: write the values themselves."""
    for i in range(len(records)):
        g = records[i].gene
        if g0 <= g < g1:
            payload[g - g0, records[i].row] = records[i].val


@_jit
def scatter_csc(indptr, indices, data, lo, scale, steps, marker, payload):
    """Write the codes of a CSC block's stored values into ``payload[gene, row]`` (see above)."""
    for g in range(len(indptr) - 1):
        for k in range(indptr[g], indptr[g + 1]):
            payload[g, indices[k]] = _code(data[k], lo[g], scale[g], steps, marker)


@_jit
def scatter_csc_values(indptr, indices, data, payload):
    """Float32 exports: write the values themselves."""
    for g in range(len(indptr) - 1):
        for k in range(indptr[g], indptr[g + 1]):
            payload[g, indices[k]] = data[k]
