"""The sparse block that flows from a CSR reader to the quantizer.

A CSR matrix stores cells, so its values reach their genes in cell order. Rather than building a
CSC matrix, the reader hands over the stored values as records (cell, gene, value) together with
each gene's statistics, gathered during the same pass: that is all quantization needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ._kernels import RECORD

__all__ = ["GeneRecords", "SparseStats"]


@dataclass
class SparseStats:
    """Per-gene summary of stored values.

    Attributes
    ----------
    vmin, vmax
        Smallest and largest finite stored value (``+inf``/``-inf`` when there is none).
    n_stored
        Stored entries, whatever their value; fewer than ``n_cells`` means the gene also has zeros.
    n_nan, n_inf
        Stored NaN and +/-Inf values.

    """

    vmin: np.ndarray
    vmax: np.ndarray
    n_stored: np.ndarray
    n_nan: np.ndarray
    n_inf: np.ndarray

    @classmethod
    def empty(cls, n_genes: int) -> SparseStats:
        """Statistics of ``n_genes`` genes before any value is seen."""
        return cls(
            np.full(n_genes, np.inf),
            np.full(n_genes, -np.inf),
            *(np.zeros(n_genes, np.int64) for _ in range(3)),
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays in kernel argument order."""
        return self.vmin, self.vmax, self.n_stored, self.n_nan, self.n_inf

    def __getitem__(self, key: slice) -> SparseStats:
        return SparseStats(*(a[key] for a in self.arrays()))


@dataclass
class GeneRecords:
    """Stored values of a block of genes, as :data:`~cellucid_export._kernels.RECORD` arrays.

    ``parts`` hold genes numbered ``0..`` within the reader's block; this object covers genes
    ``g0 <= gene < g1`` of them (slicing narrows the range without copying).
    """

    n_cells: int
    parts: list[np.ndarray]
    stats: SparseStats
    g0: int
    g1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_cells, n_genes)`` like a matrix block."""
        return self.n_cells, self.g1 - self.g0

    def __getitem__(self, key) -> GeneRecords:
        rows, cols = key
        if rows != slice(None) or not isinstance(cols, slice) or cols.step not in (None, 1):
            raise IndexError("GeneRecords can only be sliced as [:, start:stop]")
        start, stop, _ = cols.indices(self.g1 - self.g0)
        return GeneRecords(
            self.n_cells, self.parts, self.stats[start:stop], self.g0 + start, self.g0 + max(start, stop)
        )

    def tocsc(self) -> sp.csc_matrix:
        """The block as a CSC matrix (for inspection and plots; the export never needs it)."""
        rec = np.concatenate(self.parts) if self.parts else np.empty(0, RECORD)
        keep = (rec["gene"] >= self.g0) & (rec["gene"] < self.g1)
        rec = rec[keep]
        return sp.csc_matrix(
            (rec["val"], (rec["row"], rec["gene"] - self.g0)), shape=self.shape, dtype=np.float32
        )

    def toarray(self) -> np.ndarray:
        """Dense ``(n_cells, n_genes)`` float32 values."""
        return self.tocsc().toarray()
