"""The sparse blocks that flow from a CSR reader to the quantizer.

A CSR matrix stores cells, so its values reach their genes in cell order. Rather than building a
CSC matrix, the reader gathers each gene's statistics in a first pass and hands over a block that
can write its values straight into the payload: from records (cell, gene, value) sorted out of the
file in one pass, or by one more pass over the rows when re-reading is cheap. That is all
quantization needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from . import _kernels as kernels
from ._parallel import in_threads

__all__ = ["CSRPass", "GeneRecords", "SparseGenes", "SparseStats"]


@dataclass
class SparseStats:
    """Per-gene summary of stored values.

    Attributes
    ----------
    vmin, vmax
        Smallest and largest finite stored value (``+inf``/``-inf`` when there is none), float32
        like the values: half the memory traffic of float64 in the statistics pass, and exact.
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
            np.full(n_genes, np.inf, np.float32),
            np.full(n_genes, -np.inf, np.float32),
            *(np.zeros(n_genes, np.int64) for _ in range(3)),
        )

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays in kernel argument order."""
        return self.vmin, self.vmax, self.n_stored, self.n_nan, self.n_inf

    def __getitem__(self, key: slice) -> SparseStats:
        return SparseStats(*(a[key] for a in self.arrays()))

    @classmethod
    def merge(cls, parts: list[SparseStats]) -> SparseStats:
        """The statistics of the values of all ``parts`` together (each part covers the same genes)."""
        return cls(
            np.minimum.reduce([p.vmin for p in parts]),
            np.maximum.reduce([p.vmax for p in parts]),
            *(sum(getattr(p, k) for p in parts) for k in ("n_stored", "n_nan", "n_inf")),
        )


@dataclass
class SparseGenes:
    """Stored values of a block of genes, delivered in pieces, plus each gene's statistics.

    The block covers genes ``g0 <= gene < g1`` in the numbering of its pieces; slicing narrows
    that range without touching the values. Subclasses say where the values come from.
    """

    n_cells: int
    stats: SparseStats
    g0: int
    g1: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_cells, n_genes)`` like a matrix block."""
        return self.n_cells, self.g1 - self.g0

    def __getitem__(self, key) -> SparseGenes:
        rows, cols = key
        if rows != slice(None) or not isinstance(cols, slice) or cols.step not in (None, 1):
            raise IndexError("SparseGenes can only be sliced as [:, start:stop]")
        start, stop, _ = cols.indices(self.g1 - self.g0)
        stop = max(start, stop)
        return replace(self, stats=self.stats[start:stop], g0=self.g0 + start, g1=self.g0 + stop)

    def scatter(self, lo, scale, steps: int, marker: int, payload: np.ndarray) -> None:
        """Write every stored value into ``payload[gene, cell]`` (see :mod:`cellucid_export._kernels`)."""
        raise NotImplementedError

    def toarray(self) -> np.ndarray:
        """Dense ``(n_cells, n_genes)`` float32 values (for inspection and plots)."""
        out = np.zeros((self.g1 - self.g0, self.n_cells), np.float32)
        none = np.zeros(self.g1 - self.g0)
        self.scatter(none, none, 0, 0, out)
        return out.T

    def tocsc(self) -> sp.csc_matrix:
        """The block as a CSC matrix (for inspection; the export never builds it)."""
        return sp.csc_matrix(self.toarray())


@dataclass
class GeneRecords(SparseGenes):
    """Values held as :data:`~cellucid_export._kernels.RECORD` arrays (cell, gene, value)."""

    parts: list[np.ndarray]

    def scatter(self, lo, scale, steps, marker, payload):
        """Write the records of this block's genes."""
        for part in self.parts:
            kernels.scatter_records(part, self.g0, self.g1, lo, scale, steps, marker, payload)


@dataclass
class CSRPass(SparseGenes):
    """Values read from a CSR matrix by one more pass over its rows, each time they are needed.

    ``runs`` starts a pass: it yields ``(row0, indptr, indices, data)`` runs of rows; ``pos_of`` and
    ``row_lut`` map file columns to gene positions and file rows to cells (see the kernels).
    """

    runs: Callable[[list], Iterable[tuple]]
    #: Parts of the matrix (row chunks), scanned on a thread each: each cell is written by one part.
    parts: list[list]
    pos_of: np.ndarray
    row_lut: np.ndarray
    #: File column of each export position when rows are sorted and positions follow file order
    #: (then a pass visits only the window of columns of its genes); None otherwise.
    columns: np.ndarray | None = None

    def scatter(self, lo, scale, steps, marker, payload):
        """One pass over the rows, writing the values of this block's genes."""
        if self.columns is not None and self.g1 > self.g0:
            window = int(self.columns[self.g0]), int(self.columns[self.g1 - 1])
        else:
            window = 0, len(self.pos_of)

        def scan(part):
            for r0, ptr, ind, val in self.runs(part):
                kernels.scatter_csr_rows(
                    ptr, ind, val, r0, self.row_lut, self.pos_of, self.g0, self.g1, *window,
                    lo, scale, steps, marker, payload,
                )  # fmt: skip

        in_threads(scan, self.parts)
