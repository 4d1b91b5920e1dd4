"""Compiled loops over the stored values of a sparse matrix (numba).

Exporting a sparse matrix is O(nnz) work: find each stored value's gene, keep each gene's minimum
and maximum, then write each value's code into that gene's payload. In numpy every one of those
steps is a separate pass with its own temporary arrays; here each is one loop, and every kernel
releases the GIL so it runs beside the gzip threads. Compiled code is cached on disk, so only the
first export on a machine pays for compilation.

CSR kernels take a run of rows: ``indptr`` relative to ``indices``/``data`` (which hold only that
run), the run's first file row ``row0``, ``row_lut`` mapping file rows to output cells (-1: not
exported; empty: identity) and ``pos_of`` mapping file columns to export positions (-1: not
exported).

The per-gene statistics loop is written out in each kernel that needs it: a helper taking the
arrays would cost a reference count per stored value, ten times the work itself, and one taking and
returning scalars (tried) made the statistics pass a third slower on M (0.44 -> 0.57 s).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "RECORD",
    "bucket_csr_rows",
    "csc_stats",
    "csr_stats",
    "fill_rows",
    "lead_records",
    "rows_repeat",
    "scatter_csc",
    "scatter_csr_rows",
    "scatter_records",
]

#: One stored value on its way to its gene: output cell, gene position in its block, value.
RECORD = np.dtype([("row", "<i4"), ("gene", "<i4"), ("val", "<f4")])

_jit = numba.njit(nogil=True, cache=True)


@numba.njit(nogil=True, cache=True, inline="always")
def _encode(v, lo, scale, steps, marker):
    """What a payload holds for value ``v``.

    That is the value itself for a float32 export (``steps == 0``), else its round-half-even code,
    computed in float64 like :func:`cellucid_export.quantize._codes`.
    """
    if steps == 0:
        return np.float64(v)
    if not np.isfinite(v):
        return np.float64(marker)
    c = np.rint((np.float64(v) - lo) * scale)
    return min(max(c, 0.0), np.float64(steps))


@_jit
def csr_stats(indptr, indices, data, row0, row_lut, pos_of, vmin, vmax, n_stored, n_nan, n_inf):
    """Add a run of CSR rows to the per-gene statistics (arrays indexed by export position).

    Returns whether every row's column indices are strictly increasing (canonical CSR). That check
    rides along in the loop over a row's values: a separate loop over the indices made this pass a
    third slower on M. Finite values are tested first (``v - v`` is NaN for NaN and +/-Inf alone),
    as they are almost all of them.
    """
    has_lut = row_lut.size > 0
    ordered = True
    for r in range(len(indptr) - 1):
        a, b = indptr[r], indptr[r + 1]
        if has_lut and row_lut[row0 + r] < 0:
            for k in range(a + 1, b):
                ordered &= indices[k] > indices[k - 1]
            continue
        prev = -1
        for k in range(a, b):
            c = indices[k]
            ordered &= c > prev
            prev = c
            p = pos_of[c]
            if p < 0:
                continue
            v = data[k]
            n_stored[p] += 1
            if v - v == 0:
                vmin[p] = min(vmin[p], v)
                vmax[p] = max(vmax[p], v)
            elif np.isnan(v):
                n_nan[p] += 1
            else:
                n_inf[p] += 1
    return ordered


@_jit
def rows_repeat(indptr, indices, n_cols):
    """Whether a row stores one column twice (a cell and gene entered twice, which scipy adds up).

    Rows in increasing order are passed over after one look; a row out of order marks each column it
    visits with the row's number, so a repeat is found in one pass over it (sorting the row took 15
    times longer than the statistics themselves).
    """
    seen = np.full(n_cols, -1, np.int64)
    for r in range(len(indptr) - 1):
        a, b = indptr[r], indptr[r + 1]
        increasing = True
        for k in range(a + 1, b):
            if indices[k] <= indices[k - 1]:
                increasing = False
                break
        if increasing:
            continue
        for k in range(a, b):
            c = indices[k]
            if 0 <= c < n_cols:
                if seen[c] == r:
                    return True
                seen[c] = r
    return False


@_jit
def csc_stats(indptr, data, vmin, vmax, n_stored, n_nan, n_inf):
    """Per-gene statistics of a CSC block (arrays indexed by the block's columns)."""
    for p in range(len(indptr) - 1):
        for k in range(indptr[p], indptr[p + 1]):
            v = data[k]
            n_stored[p] += 1
            if v - v == 0:
                vmin[p] = min(vmin[p], v)
                vmax[p] = max(vmax[p], v)
            elif np.isnan(v):
                n_nan[p] += 1
            else:
                n_inf[p] += 1


@_jit
def bucket_csr_rows(indptr, indices, data, row0, row_lut, pos_of, genes_per_block, n_blocks):
    """Sort a run of CSR rows into records, grouped by block of exported genes.

    Returns the records and the block bounds; within a block, records keep the file's order and
    ``gene`` is the position within the block.
    """
    has_lut = row_lut.size > 0
    counts = np.zeros(n_blocks + 1, np.int64)
    for r in range(len(indptr) - 1):
        if has_lut and row_lut[row0 + r] < 0:
            continue
        for k in range(indptr[r], indptr[r + 1]):
            p = pos_of[indices[k]]
            if p >= 0:
                counts[p // genes_per_block + 1] += 1
    bounds = np.cumsum(counts)
    out = np.empty(bounds[-1], RECORD)
    fill = bounds[:-1].copy()
    for r in range(len(indptr) - 1):
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
def lead_records(indptr, indices, data, row0, row_lut, pos_of, lead, c_last, ordered, out, start):
    """Write the records of export positions below ``lead`` in a run of CSR rows into ``out[start:]``.

    ``gene`` is the position. Returns where the records end, or -1 when they do not fit in ``out``
    (what was written then is not to be used). With ``ordered`` (every row's columns increasing,
    and positions in file-column order), a row is read only up to column ``c_last``, the file column
    of position ``lead - 1``: the lead genes' values come first in every row, so this costs their
    values, not the matrix's.
    """
    has_lut = row_lut.size > 0
    i = start
    for r in range(len(indptr) - 1):
        out_r = row_lut[row0 + r] if has_lut else row0 + r
        if out_r < 0:
            continue
        for k in range(indptr[r], indptr[r + 1]):
            c = indices[k]
            if ordered and c > c_last:
                break
            p = pos_of[c]
            if 0 <= p < lead:
                if i >= len(out):
                    return -1
                out[i].row = out_r
                out[i].gene = p
                out[i].val = data[k]
                i += 1
    return i


@_jit
def scatter_records(records, g0, g1, lo, scale, steps, marker, payload):
    """Write the records of genes ``g0 <= gene < g1`` into ``payload[gene - g0, row]``.

    ``lo``/``scale`` are indexed like the payload rows; see :func:`_encode` for ``steps``.
    """
    for i in range(len(records)):
        g = records[i].gene
        if g0 <= g < g1:
            g -= g0
            payload[g, records[i].row] = _encode(records[i].val, lo[g], scale[g], steps, marker)


@_jit
def scatter_csr_rows(
    indptr, indices, data, row0, row_lut, pos_of, g0, g1, c0, c1, lo, scale, steps, marker, payload
):
    """Write a run of CSR rows' values of export positions ``g0 <= p < g1`` into ``payload[p - g0, cell]``.

    When each row's columns are sorted and those genes are the file columns ``c0..c1`` in file
    order, only that window of each row is visited (found by binary search): a pass for one slice of
    genes then costs its own values, not the whole matrix's. ``c0 = 0, c1 = n_columns`` visits every
    value, which any row order allows.
    """
    has_lut = row_lut.size > 0
    for r in range(len(indptr) - 1):
        out_r = row_lut[row0 + r] if has_lut else row0 + r
        if out_r < 0:
            continue
        a, b = indptr[r], indptr[r + 1]
        row = indices[a:b]
        for k in range(a + np.searchsorted(row, c0), a + np.searchsorted(row, c1, side="right")):
            p = pos_of[indices[k]]
            if g0 <= p < g1:
                p -= g0
                payload[p, out_r] = _encode(data[k], lo[p], scale[p], steps, marker)


@_jit
def scatter_csc(indptr, indices, data, lo, scale, steps, marker, payload):
    """Write a CSC block's values into ``payload[gene, row]``."""
    for g in range(len(indptr) - 1):
        for k in range(indptr[g], indptr[g + 1]):
            payload[g, indices[k]] = _encode(data[k], lo[g], scale[g], steps, marker)


@_jit
def fill_rows(payload, values):
    """Set every element of ``payload[g]`` to ``values[g]`` (the code of 0.0 of each gene), GIL released."""
    for g in range(payload.shape[0]):
        payload[g, :] = values[g]
