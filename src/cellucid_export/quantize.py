"""Per-gene quantization, vectorised over a block of genes.

A block is ``(n_cells, n_genes)``, dense or CSC. The result is gene-major (one contiguous row per
gene, ready to be written as that gene's file) plus each gene's bounds. For a sparse block only the
stored values are quantized; every other cell gets the code of 0.0, so the work is O(nnz) plus one
byte fill per cell and gene, never a float pass over the dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

__all__ = ["MARKER", "STEPS", "QuantizedBlock", "dequantize", "quantize_block"]

#: Highest code of a valid value, per bit depth.
STEPS = {8: 254, 16: 65534}
#: Code reserved for NaN / +Inf / -Inf.
MARKER = {8: 255, 16: 65535}
#: File extension and dtype of a payload, by bit depth (``None``: float32 values).
PAYLOAD_KINDS = {8: ("u8", "uint8"), 16: ("u16", "uint16"), None: ("f32", "float32")}
_DTYPES = {bits: np.dtype(dtype).newbyteorder("<") for bits, (_, dtype) in PAYLOAD_KINDS.items()}


@dataclass
class QuantizedBlock:
    """Payloads and bounds of a block of genes.

    Attributes
    ----------
    payload
        ``(n_genes, n_cells)`` C-contiguous: codes (``uint8``/``uint16``) or ``float32`` values.
    lo, hi
        Per-gene bounds as float32 (quantized only; ``None`` for float32).
    n_nan, n_inf
        Per-gene counts of NaN and of +/-Inf values.

    """

    payload: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    n_nan: np.ndarray
    n_inf: np.ndarray


def _bounds(vmin, vmax, any_valid, constant_plus_one: bool):
    """Final float32 bounds following the rules for empty and constant genes."""
    lo = np.where(any_valid, vmin, 0.0).astype(np.float32)
    hi = np.where(any_valid, vmax, 1.0).astype(np.float32)
    if constant_plus_one:
        # Name-layout viewers divide by (hi - lo); the +1 keeps that finite.
        hi = np.where(any_valid & (lo == hi), lo.astype(np.float64) + 1.0, hi)
    else:
        hi = hi.astype(np.float64)
    return lo, hi


def _codes(values: np.ndarray, lo64: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """Round-half-even codes of finite ``values`` in float64, clipped to 0..M."""
    c = np.rint((values.astype(np.float64) - lo64) * scale)
    np.clip(c, 0, STEPS[bits], out=c)
    return c.astype(_DTYPES[bits])


def _scale(lo: np.ndarray, vmax: np.ndarray, bits: int) -> np.ndarray:
    span = vmax.astype(np.float64) - lo.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 0, STEPS[bits] / span, 0.0)


def _quantize_dense(block: np.ndarray, bits: int | None, constant_plus_one: bool) -> QuantizedBlock:
    vals = np.ascontiguousarray(np.asarray(block, dtype=np.float32).T)  # gene-major
    nan = np.isnan(vals)
    valid = np.isfinite(vals)
    n_nan = nan.sum(axis=1)
    n_inf = (~valid).sum(axis=1) - n_nan
    if bits is None:
        return QuantizedBlock(vals, None, None, n_nan, n_inf)
    any_valid = valid.any(axis=1)
    vmin = np.where(valid, vals, np.inf).min(axis=1, initial=np.inf)
    vmax = np.where(valid, vals, -np.inf).max(axis=1, initial=-np.inf)
    lo, hi = _bounds(vmin, vmax, any_valid, constant_plus_one)
    scale = _scale(lo, np.where(any_valid, vmax, 0).astype(np.float32), bits)
    filled = np.where(valid, vals, lo[:, None])
    codes = _codes(filled, lo.astype(np.float64)[:, None], scale[:, None], bits)
    codes[~valid] = MARKER[bits]
    return QuantizedBlock(codes, lo, hi, n_nan, n_inf)


def _segment_reduce(ufunc, data, indptr, counts, empty):
    """``ufunc`` over each column's stored values; ``empty`` for columns without any."""
    out = np.full(len(counts), empty, dtype=np.float64)
    nonempty = counts > 0
    if nonempty.any():
        out[nonempty] = ufunc.reduceat(data, indptr[:-1][nonempty])
    return out


#: Stored values quantized at a time: bounds the float64 temporaries (about 40 bytes per value).
QUANTIZE_CHUNK_NNZ = 1_000_000


def _gene_ranges(indptr: np.ndarray, max_nnz: int):
    """Consecutive gene ranges holding at most ``max_nnz`` stored values each (at least one gene)."""
    n, g0 = len(indptr) - 1, 0
    while g0 < n:
        g1 = int(np.searchsorted(indptr, indptr[g0] + max_nnz, side="right")) - 1
        g1 = min(n, max(g1, g0 + 1))
        yield g0, g1
        g0 = g1


def _quantize_csc(block: sp.csc_matrix, bits: int | None, constant_plus_one: bool) -> QuantizedBlock:
    n_cells, n_genes = block.shape
    block.sort_indices()
    indptr = block.indptr.astype(np.int64)
    dtype = _DTYPES[bits]
    # Zero-filled memory comes free from the OS; most genes (log1p) have the code 0 for a 0 anyway.
    payload = np.zeros((n_genes, n_cells), dtype)
    n_nan = np.zeros(n_genes, np.int64)
    n_inf = np.zeros(n_genes, np.int64)
    lo = np.zeros(n_genes, np.float32)
    hi = np.zeros(n_genes, np.float64)
    for g0, g1 in _gene_ranges(indptr, QUANTIZE_CHUNK_NNZ):
        a, b = indptr[g0], indptr[g1]
        data = block.data[a:b].astype(np.float32, copy=False)
        rows = block.indices[a:b]
        counts = np.diff(indptr[g0 : g1 + 1])
        k = g1 - g0
        gene_of = np.repeat(np.arange(k), counts)
        nan = np.isnan(data)
        valid = np.isfinite(data)
        n_nan[g0:g1] = np.bincount(gene_of[nan], minlength=k)
        n_inf[g0:g1] = np.bincount(gene_of[~valid], minlength=k) - n_nan[g0:g1]
        if bits is None:
            payload[g0 + gene_of, rows] = data
            continue
        has_zero = counts < n_cells  # implicit zeros are ordinary values
        local_ptr = indptr[g0 : g1 + 1] - a
        vmin = _segment_reduce(np.minimum, np.where(valid, data, np.inf), local_ptr, counts, np.inf)
        vmax = _segment_reduce(np.maximum, np.where(valid, data, -np.inf), local_ptr, counts, -np.inf)
        vmin = np.where(has_zero, np.minimum(vmin, 0.0), vmin)
        vmax = np.where(has_zero, np.maximum(vmax, 0.0), vmax)
        any_valid = np.isfinite(vmin)
        glo, ghi = _bounds(vmin, vmax, any_valid, constant_plus_one)
        lo[g0:g1], hi[g0:g1] = glo, ghi
        scale = _scale(glo, np.where(any_valid, vmax, 0).astype(np.float32), bits)
        lo64 = glo.astype(np.float64)
        zero_code = _codes(np.zeros(k, np.float32), lo64, scale, bits)
        for g in np.flatnonzero(zero_code):
            payload[g0 + g] = zero_code[g]
        filled = np.where(valid, data, glo[gene_of])
        nz = _codes(filled, lo64[gene_of], scale[gene_of], bits)
        nz[~valid] = MARKER[bits]
        payload[g0 + gene_of, rows] = nz
    if bits is None:
        return QuantizedBlock(payload, None, None, n_nan, n_inf)
    return QuantizedBlock(payload, lo, hi, n_nan, n_inf)


def quantize_block(block, bits: int | None, *, constant_plus_one: bool) -> QuantizedBlock:
    """Quantize a block of genes.

    Parameters
    ----------
    block
        ``(n_cells, n_genes)`` dense array or CSC matrix of float32 values.
    bits
        8, 16, or ``None`` to keep float32 values unchanged.
    constant_plus_one
        Write ``hi = lo + 1`` for a constant gene (name layout) instead of ``hi = lo`` (index layout).

    Returns
    -------
    The gene-major payload and per-gene bounds. Codes are
    ``round_half_even((v - lo) * M / (hi - lo))`` in float64, clipped to ``0..M``; invalid values
    (NaN, +/-Inf) get the marker; a gene with no valid value has bounds ``(0, 1)``.

    """
    if sp.issparse(block):
        return _quantize_csc(sp.csc_matrix(block), bits, constant_plus_one)
    return _quantize_dense(block, bits, constant_plus_one)


def dequantize(codes: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Decode codes the way the viewer does: ``lo + code * (hi - lo) / M``; the marker becomes NaN."""
    codes = np.asarray(codes)
    out = (lo + codes.astype(np.float64) * ((hi - lo) / STEPS[bits])).astype(np.float32)
    out[codes == MARKER[bits]] = np.nan
    return out
