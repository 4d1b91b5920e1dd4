"""Per-gene quantization, vectorised over a block of genes.

A block is ``(n_cells, n_genes)``: dense, CSC, or gene records from a CSR reader. The result is
gene-major (one contiguous row per gene, ready to be written as that gene's file) plus each gene's
bounds. For a sparse block only the stored values are quantized; every other cell gets the code of
0.0, so the work is O(nnz) plus one byte fill per cell and gene, never a float pass over the dense
matrix.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import _kernels as kernels
from .blocks import SparseGenes, SparseStats

__all__ = [
    "MARKER",
    "STEPS",
    "QuantizedBlock",
    "dequantize",
    "payload_buffer",
    "payload_row_bytes",
    "quantize_block",
]

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
        ``(n_genes, n_cells)``, each gene's row contiguous (a sparse block's rows are padded apart, see
        :func:`payload_row_bytes`): codes (``uint8``/``uint16``) or ``float32`` values.
    lo, hi
        Per-gene bounds (quantized only; ``None`` for float32): ``lo`` float32, ``hi`` float64 (float32
        values, except a constant gene's ``lo + 1`` in the name layout, see :func:`_bounds`).
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
        # Name-layout viewers divide by (hi - lo); the +1 keeps that finite. From 2**53 on, +1 is lost
        # in float64 rounding, and the next double above lo does the same job.
        lo64 = lo.astype(np.float64)
        plus_one = np.where(lo64 + 1.0 > lo64, lo64 + 1.0, np.nextafter(lo64, np.inf))
        hi = np.where(any_valid & (lo == hi), plus_one, hi)
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


def _sparse_scale(stats: SparseStats, n_cells: int, bits: int, constant_plus_one: bool):
    """Bounds and float64 scale of sparse genes, whose cells without a stored value hold 0.0."""
    has_zero = stats.n_stored < n_cells  # implicit zeros are ordinary values
    vmin = np.where(has_zero, np.minimum(stats.vmin, 0.0), stats.vmin)
    vmax = np.where(has_zero, np.maximum(stats.vmax, 0.0), stats.vmax)
    any_valid = np.isfinite(vmin)
    lo, hi = _bounds(vmin, vmax, any_valid, constant_plus_one)
    scale = _scale(lo, np.where(any_valid, vmax, 0).astype(np.float32), bits)
    return lo, hi, scale


def payload_row_bytes(n_cells: int, itemsize: int) -> int:
    """Bytes from one gene's row to the next in a sparse block's payload: the codes, padded.

    A sparse block's values reach the payload cell by cell, each cell's values spread over the rows
    of the genes. When rows lie a multiple of 4 KB apart (``n_cells`` a multiple of 4,096 at 8 bits:
    65,536, 98,304 or 131,072 cells), the rows' current cache lines compete for the same few slots
    of the processor's cache and keep evicting one another: on the benchmark machine writing the codes
    took twice as long (10 against 5 ns a value). An odd number of 64-byte cache lines per row spreads
    them over every slot. Each row gets at most 127 bytes of padding, which no file holds.
    """
    lines = -(-n_cells * itemsize // 64)
    return 64 * (lines + 1 - lines % 2)


def payload_buffer(nbytes: int, populate: bool = True) -> np.ndarray:
    """A 1-D ``uint8`` buffer of ``nbytes`` for payloads (or records), mapped from the system.

    Touching fresh memory page by page costs a fault per 4 KB page; asking the system to map the whole
    buffer up front (``populate``, Linux ``MAP_POPULATE``) was 3-6x cheaper for a 250 MB payload on the
    benchmark machine. Without ``populate`` only the pages written become memory, so a buffer can be
    sized for the most it may hold. Either way the memory goes back to the system as soon as the
    array is freed, which the allocator's pool does not promise. Small buffers come from that pool.
    """
    if nbytes < 2**24 or not hasattr(mmap, "MAP_PRIVATE"):  # small, or not a POSIX system
        return np.empty(max(0, nbytes), np.uint8)
    flags = mmap.MAP_PRIVATE | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
    # The array keeps the mapping alive; it is unmapped when the array is freed.
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), np.uint8)


def _quantize_sparse(
    block, stats: SparseStats, bits: int | None, constant_plus_one: bool, out: np.ndarray | None
) -> QuantizedBlock:
    """Payload of a CSC block or of gene records: the code of 0.0 everywhere, then each stored value."""
    n_cells, n_genes = block.shape
    dtype = _DTYPES[bits]
    row = payload_row_bytes(n_cells, dtype.itemsize)
    nbytes = n_genes * row
    if out is None:
        out = payload_buffer(nbytes)
    # The kernels write into the padded rows; the block hands on each row's codes alone.
    payload = out[:nbytes].view(dtype).reshape(n_genes, row // dtype.itemsize)
    if bits is None:
        lo = hi = None
        zero_code = np.zeros(n_genes, dtype)
        args = (np.zeros(n_genes), np.zeros(n_genes), 0, 0, payload)  # steps 0: values as they are
    else:
        lo, hi, scale = _sparse_scale(stats, n_cells, bits, constant_plus_one)
        lo64 = lo.astype(np.float64)
        zero_code = _codes(np.zeros(n_genes, np.float32), lo64, scale, bits)
        args = (lo64, scale, STEPS[bits], MARKER[bits], payload)
    # Filling hundreds of MB is memory-bound: done in compiled code, it leaves the GIL to the gzip threads.
    kernels.fill_rows(payload, zero_code)
    if isinstance(block, SparseGenes):
        block.scatter(*args)
    else:
        kernels.scatter_csc(block.indptr, block.indices, block.data, *args)
    return QuantizedBlock(payload[:, :n_cells], lo, hi, stats.n_nan, stats.n_inf)


def _csc_stats(block: sp.csc_matrix) -> SparseStats:
    stats = SparseStats.empty(block.shape[1])
    kernels.csc_stats(block.indptr, block.data, *stats.arrays())
    return stats


def quantize_block(
    block, bits: int | None, *, constant_plus_one: bool, out: np.ndarray | None = None
) -> QuantizedBlock:
    """Quantize a block of genes.

    Parameters
    ----------
    block
        ``(n_cells, n_genes)`` dense array, sparse matrix (CSC is used as is) or
        :class:`~cellucid_export.blocks.SparseGenes` of float32 values.
    bits
        8, 16, or ``None`` to keep float32 values unchanged.
    constant_plus_one
        Write ``hi = lo + 1`` for a constant gene (name layout) instead of ``hi = lo`` (index layout).
    out
        Optional 1-D ``uint8`` buffer, large enough, to hold a sparse block's payload: reusing memory
        spares the operating system from handing out (and zeroing) fresh pages for every block.

    Returns
    -------
    The gene-major payload and per-gene bounds. Codes are
    ``round_half_even((v - lo) * M / (hi - lo))`` in float64, clipped to ``0..M``; invalid values
    (NaN, +/-Inf) get the marker; a gene with no valid value has bounds ``(0, 1)``.

    """
    if isinstance(block, SparseGenes):
        return _quantize_sparse(block, block.stats, bits, constant_plus_one, out)
    if sp.issparse(block):
        block = sp.csc_matrix(block)
        if block.dtype != np.float32:
            block = block.astype(np.float32)
        return _quantize_sparse(block, _csc_stats(block), bits, constant_plus_one, out)
    return _quantize_dense(block, bits, constant_plus_one)


def dequantize(codes: np.ndarray, lo: float, hi: float, bits: int) -> np.ndarray:
    """Decode codes the way the viewer does: ``lo + code * (hi - lo) / M``; the marker becomes NaN."""
    codes = np.asarray(codes)
    out = (lo + codes.astype(np.float64) * ((hi - lo) / STEPS[bits])).astype(np.float32)
    out[codes == MARKER[bits]] = np.nan
    return out
