"""Gene-block readers: turn any supported matrix into blocks of selected genes.

Every reader yields, for consecutive runs of the requested genes (in export order), a block of
shape ``(n_cells, n_block_genes)``: a dense ``float32`` array for dense sources, a ``float32``
CSC matrix for CSC and other sparse ones, and :class:`~cellucid_export.blocks.GeneRecords` for
CSR. Quantization can then work on the stored values of a sparse block only.

Readers never loop ``X[:, j]`` over an on-disk matrix: a CSR matrix is streamed in row chunks (once for
the statistics, then once per payload when re-reading is cheap, else its values are sorted into records in
that first pass), a CSC file is sliced through its ``indptr``, and a dense dataset is read in row slabs.
Memory is bounded by the block size (chosen by :mod:`cellucid_export.plan`) plus one read chunk.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from . import _kernels as kernels
from ._kernels import RECORD
from ._parallel import in_threads
from .blocks import CSRPass, GeneRecords, SparseGenes, SparseStats
from .errors import InputReadError, UnsupportedMatrixError
from .h5raw import raw_layout
from .plan import plural
from .quantize import payload_buffer

__all__ = ["GeneBlockSource", "open_source"]

#: Stored values read from disk per chunk when streaming a CSR file (about 16 MB of values and indices).
READ_CHUNK_NNZ = 2_000_000
#: Bytes of a dense on-disk row slab.
READ_CHUNK_BYTES = 64 * 2**20

Block = np.ndarray | sp.csc_matrix | SparseGenes


def _as_index(idx, n: int) -> np.ndarray | None:
    """Normalise an obs subset (slice, mask or integers) to integer positions in its order, or None for all."""
    if idx is None:
        return None
    if isinstance(idx, slice):
        if idx == slice(None):
            return None
        return np.arange(n)[idx]
    idx = np.asarray(idx)
    if idx.dtype == bool:
        return np.flatnonzero(idx)
    return idx.astype(np.int64)


@dataclass
class GeneBlockSource:
    """Base class of the gene-block readers.

    Attributes
    ----------
    shape
        ``(n_cells, n_genes)`` of the source matrix after any cell subset.
    kind
        A short description for messages, e.g. ``"on-disk CSR"``.

    """

    shape: tuple[int, int]
    kind: str
    obs_idx: np.ndarray | None = field(default=None, repr=False)
    #: Working bytes per stored value while a sparse block is assembled (sizes the blocks); 0 for a
    #: reader that needs no block memory beyond the payload.
    bytes_per_value = 32

    @property
    def is_sparse(self) -> bool:
        """Whether blocks come as sparse matrices (quantized from their stored values only)."""
        return False

    def nnz_fraction(self) -> float:
        """Fraction of stored entries (1.0 for dense sources); used to size blocks."""
        return 1.0

    def sample_rows(self, n_rows: int) -> np.ndarray:
        """A dense float32 sample of up to ``n_rows`` cells and all genes, read cheaply."""
        raise NotImplementedError

    def scratch_bytes(self, gene_idx: np.ndarray, genes_per_block: int) -> int:
        """About how many bytes of scratch files :meth:`blocks` writes for these genes (0: none)."""
        return 0

    def blocks(
        self,
        gene_idx: np.ndarray,
        genes_per_block: int,
        scratch_dir=None,
        n_threads: int = 1,
        lead=None,
        cancel: threading.Event | None = None,
    ) -> Iterator[Block]:
        """Yield blocks of the genes ``gene_idx`` (in that order), ``genes_per_block`` at a time.

        ``scratch_dir`` is where a source may keep temporary files, ``n_threads`` how many threads a
        pass over the matrix may use, ``lead`` a first block of its own, and ``cancel`` an event that
        stops a long pass between read chunks (all only used by CSR).
        """
        gene_idx = np.asarray(gene_idx, dtype=np.int64)
        for start in range(0, len(gene_idx), max(1, genes_per_block)):
            yield self._read_genes(gene_idx[start : start + genes_per_block])

    def _read_genes(self, idx: np.ndarray) -> Block:
        raise NotImplementedError


#: A matrix is sampled in this many windows of consecutive cells spread over it, not at its start alone:
#: concatenated batches can differ (one normalised, the next still counts). With 500 cells, windows of
#: 10: a batch of 140 cells among 5,000 falls into one (with 10 windows of 50, it could fall between).
SAMPLE_WINDOWS = 50
#: Cells sampled to estimate the scratch files (see StreamedCSR.scratch_bytes).
SAMPLE_ROWS = 500


def sample_positions(n: int, n_rows: int) -> np.ndarray:
    """Up to ``n_rows`` of ``n`` cells: :data:`SAMPLE_WINDOWS` windows of consecutive cells, evenly spread."""
    if n <= n_rows:
        return np.arange(n)
    per = max(1, n_rows // SAMPLE_WINDOWS)
    starts = np.linspace(0, n - per, num=SAMPLE_WINDOWS).astype(np.int64)
    return np.unique((starts[:, None] + np.arange(per)[None, :]).ravel())


def _row_slices(rows: np.ndarray, max_gap: int = 64) -> list[tuple[int, int]]:
    """Cover sorted file ``rows`` with few contiguous slices, none reading more than ``max_gap`` unused rows."""
    if len(rows) == 0:
        return []
    cuts = np.flatnonzero(np.diff(rows) > max_gap) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(rows, cuts)]


def _gather_rows(
    rows: np.ndarray, n_cols: int, read: Callable[[int, int, np.ndarray], np.ndarray]
) -> np.ndarray:
    """Dense float32 file ``rows`` (any order, repeats allowed), read a few slices of the file at a time.

    ``read(lo, hi, wanted)`` returns the rows ``lo + wanted`` (dense) from the slice of rows ``lo:hi``.
    """
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    out = np.zeros((len(rows), n_cols), np.float32)
    for lo, hi in _row_slices(sorted_rows):
        a, b = np.searchsorted(sorted_rows, [lo, hi])
        out[order[a:b]] = read(lo, hi, sorted_rows[a:b] - lo)
    return out


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _csc_f32(m) -> sp.csc_matrix:
    m = sp.csc_matrix(m)
    if m.dtype != np.float32:
        m = m.astype(np.float32)
    return m


class InMemoryDense(GeneBlockSource):
    """A numpy array (or anything ``np.asarray`` accepts) held in memory."""

    def __init__(self, x, obs_idx=None):
        self.x = x
        obs_idx = _as_index(obs_idx, x.shape[0])
        n = x.shape[0] if obs_idx is None else len(obs_idx)
        super().__init__((n, x.shape[1]), "in-memory dense array", obs_idx)

    def sample_rows(self, n_rows):
        rows = sample_positions(self.shape[0], n_rows)
        if self.obs_idx is not None:
            rows = self.obs_idx[rows]
        return _f32(self.x[rows])

    def _read_genes(self, idx):
        block = self.x[:, idx]
        if self.obs_idx is not None:
            block = block[self.obs_idx]
        return np.ascontiguousarray(_f32(block))


class InMemorySparse(GeneBlockSource):
    """A CSC (or other non-CSR) scipy sparse matrix or array in memory; COO etc. become CSC once."""

    def __init__(self, x, obs_idx=None):
        if x.format not in ("csr", "csc"):
            x = sp.csc_matrix(x)
        obs_idx = _as_index(obs_idx, x.shape[0])
        if obs_idx is not None:
            x = x[obs_idx]
        self.x = x
        super().__init__(x.shape, f"in-memory sparse {x.format.upper()}", None)

    @property
    def is_sparse(self):
        return True

    def nnz_fraction(self):
        return self.x.nnz / max(1, self.shape[0] * self.shape[1])

    def sample_rows(self, n_rows):
        return _f32(self.x[sample_positions(self.shape[0], n_rows)].toarray())

    def _read_genes(self, idx):
        return _csc_f32(self.x[:, idx])


class DaskArray(GeneBlockSource):
    """A dask array (dense or sparse chunks); each block is computed on its own."""

    def __init__(self, x, obs_idx=None):
        obs_idx = _as_index(obs_idx, x.shape[0])
        if obs_idx is not None:
            x = x[obs_idx]
        self.x = x
        super().__init__(tuple(int(s) for s in x.shape), "dask array", None)

    @property
    def is_sparse(self):
        return sp.issparse(getattr(self.x, "_meta", None))

    def nnz_fraction(self):
        return 0.1 if self.is_sparse else 1.0

    def sample_rows(self, n_rows):
        s = self.x[sample_positions(self.shape[0], n_rows)].compute()
        return _f32(s.toarray() if sp.issparse(s) else s)

    def _read_genes(self, idx):
        # dask wants increasing column indices for efficient slicing; restore the order after.
        order = np.argsort(idx, kind="stable")
        b = self.x[:, idx[order]].compute()
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        if sp.issparse(b):
            return _csc_f32(_csc_f32(b)[:, inv])
        return np.ascontiguousarray(_f32(b)[:, inv])


class Cancelled(Exception):
    """A pass over the matrix stopped early because the export was stopped (raised in the reader only)."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled


def _row_lut(obs_idx: np.ndarray | None, n_rows: int) -> np.ndarray | None:
    """Map file rows to output rows (-1 for cells outside the subset)."""
    if obs_idx is None:
        return None
    repeated = np.flatnonzero(np.bincount(obs_idx, minlength=n_rows) > 1)
    if len(repeated):
        # A row of the file feeds one cell of the export: a view listing a cell twice would lose one copy.
        raise UnsupportedMatrixError(
            f"This view of a file lists {plural(len(repeated), 'cell')} more than once (e.g. row "
            f"{int(repeated[0])} of the file). Exporting reads each cell of a CSR matrix once; remove the "
            "repeats, or load the view into memory first (adata[...].to_memory())."
        )
    lut = np.full(n_rows, -1, dtype=np.int32)
    lut[obs_idx] = np.arange(len(obs_idx))
    return lut


def _available_memory() -> int | None:
    """Memory the system can give without swapping (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cheap_to_reread(*arrays) -> bool:
    """In memory, or uncompressed on disk and at most half the available memory."""
    datasets = [a for a in arrays if isinstance(a, h5py.Dataset)]
    if not datasets:
        return True
    if any(d.compression is not None for d in datasets):
        return False  # every pass would decompress the whole matrix again
    available = _available_memory()
    return available is not None and sum(d.id.get_storage_size() for d in datasets) <= available // 2


class StreamedCSR(GeneBlockSource):
    """A CSR matrix streamed in row chunks: an HDF5 group on disk, or the arrays of one in memory.

    ``group`` is anything holding ``data``, ``indices`` and ``indptr`` that slices like an array.
    A CSR matrix stores cells, not genes, so reading a gene means scanning every cell: a first pass
    gathers the statistics of every exported gene, then each block of genes needs either one more
    pass (when that is cheap) or records sorted out of the first pass (see :meth:`blocks`).
    """

    def __init__(self, group, shape, obs_idx=None, kind: str = "on-disk CSR"):
        self.group = group
        self.indptr = group["indptr"][...].astype(np.int64)
        obs_idx = _as_index(obs_idx, shape[0])
        # The kernels take an empty table for "every row, in order".
        lut = _row_lut(obs_idx, shape[0])
        self.row_lut = np.empty(0, np.int32) if lut is None else lut
        n = shape[0] if obs_idx is None else len(obs_idx)
        super().__init__((n, shape[1]), kind, obs_idx)
        self._file_rows = shape[0]
        #: Whether another pass over the matrix costs little: it is in memory, or an uncompressed file
        #: small enough to stay in the operating system's file cache after the first pass. Then blocks
        #: are read by one pass each instead of going through scratch files.
        self.rereads = _cheap_to_reread(group["data"], group["indices"])
        # Where the stored values and indices sit in the file, found once (None: read through h5py).
        self._raw = {key: raw_layout(group[key]) for key in ("data", "indices")}
        # Blocks read by passes need no memory beyond the payload; records take 12 bytes a value.
        self.bytes_per_value = 0 if self.rereads else RECORD.itemsize
        # Set once a row is found to store a column twice: from then on such runs of rows are sorted and
        # their repeated entries of a cell and gene added up, as scipy and anndata read them.
        self._canonicalise = False

    @property
    def is_sparse(self):
        return True

    def nnz_fraction(self):
        return float(self.indptr[-1]) / max(1, self._file_rows * self.shape[1])

    def scratch_bytes(self, gene_idx, genes_per_block):
        # Records of every stored value of the exported genes and cells, spilled when there are several
        # blocks and the matrix is not re-read (see blocks). The genes' share of the stored values is measured
        # on a sample of cells: selected genes (highly variable ones) are often far denser than the average.
        if self.rereads or len(gene_idx) <= max(1, genes_per_block):
            return 0
        sample = self.sample_rows(SAMPLE_ROWS) != 0
        stored = sample.sum()
        share = sample[:, gene_idx].sum() / stored if stored else len(gene_idx) / self.shape[1]
        return int(self.nnz_fraction() * self.shape[0] * self.shape[1] * share * RECORD.itemsize)

    def sample_rows(self, n_rows):
        rows = sample_positions(self.shape[0], n_rows)
        if self.obs_idx is not None:
            rows = self.obs_idx[rows]

        def read(lo, hi, wanted):
            a, b = int(self.indptr[lo]), int(self.indptr[hi])
            m = sp.csr_matrix(
                (self.group["data"][a:b], self.group["indices"][a:b], self.indptr[lo : hi + 1] - a),
                shape=(hi - lo, self.shape[1]),
            )
            return m[wanted].toarray()

        return _gather_rows(rows, self.shape[1], read)

    def _parts(self, n: int) -> list[list[tuple[int, int]]]:
        """The matrix as up to ``n`` consecutive parts, each a list of row chunks of about READ_CHUNK_NNZ values."""
        nnz = int(self.indptr[-1])
        targets = np.arange(READ_CHUNK_NNZ, nnz, READ_CHUNK_NNZ)
        bounds = np.unique(np.concatenate([[0], np.searchsorted(self.indptr, targets), [self._file_rows]]))
        chunks = list(itertools.pairwise(bounds.tolist()))
        cuts = np.linspace(0, len(chunks), max(1, min(n, len(chunks))) + 1).astype(int)
        return [chunks[a:b] for a, b in itertools.pairwise(cuts)]

    def _row_runs(
        self, chunks: list[tuple[int, int]], cancel: threading.Event | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first row, row pointers, column indices, float32 values) of each of the row ``chunks``.

        Arrays in memory are sliced without copying; a file is read into buffers reused from chunk
        to chunk, so reading allocates nothing per chunk. Each call has its own buffers and file
        handles: calls for different chunks can run on different threads.
        """
        for r0, ptr, ind, val in self._raw_row_runs(chunks, cancel):
            if not self._canonicalise or not kernels.rows_repeat(ptr, ind, self.shape[1]):
                yield r0, ptr, ind, _f32(val)
            else:
                # Added up in the file's own precision, then rounded once to float32, as adata.X in memory.
                m = sp.csr_matrix((val, ind, ptr), shape=(len(ptr) - 1, self.shape[1]))
                m.sum_duplicates()  # sorts each row, adding up repeated entries
                yield r0, m.indptr.astype(np.int64), m.indices, _f32(m.data)

    def _raw_row_runs(
        self, chunks: list[tuple[int, int]], cancel: threading.Event | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        data_ds, ind_ds = self.group["data"], self.group["indices"]
        if not isinstance(data_ds, h5py.Dataset):
            for r0, r1 in chunks:
                _check(cancel)
                a, b = int(self.indptr[r0]), int(self.indptr[r1])
                if a < b:
                    yield r0, self.indptr[r0 : r1 + 1] - a, ind_ds[a:b], data_ds[a:b]
            return
        longest = max((int(self.indptr[r1] - self.indptr[r0]) for r0, r1 in chunks), default=0)
        # Native byte order: h5py converts other orders while reading, and the compiled loops need it.
        ind_buf = np.empty(longest, ind_ds.dtype.newbyteorder("="))
        val_buf = np.empty(longest, data_ds.dtype.newbyteorder("="))
        with contextlib.ExitStack() as stack:
            readers = []
            for ds, layout in ((ind_ds, self._raw["indices"]), (data_ds, self._raw["data"])):
                if layout is None:
                    readers.append(lambda a, b, out, ds=ds: ds.read_direct(out, np.s_[a:b], np.s_[0 : b - a]))
                else:
                    readers.append(stack.enter_context(layout.open()).read)
            read_ind, read_val = readers
            for r0, r1 in chunks:
                _check(cancel)
                a, b = int(self.indptr[r0]), int(self.indptr[r1])
                if a == b:
                    continue
                ind, val = ind_buf[: b - a], val_buf[: b - a]
                read_ind(a, b, ind)
                read_val(a, b, val)
                yield r0, self.indptr[r0 : r1 + 1] - a, ind, val

    def _stats_pass(
        self,
        pos_of,
        n_genes: int,
        n_threads: int,
        lead: int = 0,
        c_last: int = -1,
        max_records: int = 0,
        cancel: threading.Event | None = None,
    ) -> tuple[SparseStats, bool, bool, list[np.ndarray] | None]:
        """Every exported gene's statistics, whether rows are sorted and repeat columns, and lead records.

        Repeated columns (a cell and gene stored twice) are looked for only in rows out of order.

        Parts of the matrix go to ``n_threads`` threads, each with statistics of its own, merged after.
        With ``lead``, the pass also keeps the values of export positions below it as records (see
        :func:`~cellucid_export._kernels.lead_records`; ``c_last >= 0`` when positions follow file
        columns), unless they grow past ``max_records``: then the records are None.
        """
        parts = self._parts(n_threads)
        room = [max_records]  # records the threads may still keep, together
        lock = threading.Lock()

        def scan(chunks):
            stats, rows_sorted, repeats = SparseStats.empty(n_genes), True, False
            # Sized for the most one thread may keep; only the pages written become memory, and all of it
            # goes back to the system when the lead block is done.
            out = payload_buffer(max_records * RECORD.itemsize, populate=False).view(RECORD) if lead else None
            end = 0
            for r0, ptr, ind, val in self._row_runs(chunks, cancel):
                ok = kernels.csr_stats(ptr, ind, val, r0, self.row_lut, pos_of, *stats.arrays())
                rows_sorted &= ok
                if not ok and not repeats:
                    repeats = kernels.rows_repeat(ptr, ind, self.shape[1])
                if out is not None:
                    new_end = kernels.lead_records(
                        ptr, ind, val, r0, self.row_lut, pos_of, lead, c_last, ok and c_last >= 0, out, end
                    )
                    with lock:
                        room[0] -= new_end - end if new_end >= 0 else max_records + 1
                        fits = room[0] >= 0
                    # Past the limit (this depends on the total only), the lead block gets a pass instead.
                    out, end = (out, new_end) if fits else (None, 0)
            return stats, rows_sorted, repeats, None if out is None else out[:end]

        results = in_threads(scan, parts)
        stats = SparseStats.merge([r[0] for r in results])
        records = None if not lead or any(r[3] is None for r in results) else [r[3] for r in results]
        return stats, all(r[1] for r in results), any(r[2] for r in results), records

    def _records_pass(self, pos_of, stats, on_records, genes_per_block, n_blocks, cancel=None) -> None:
        """One pass adding to ``stats`` and handing each run's records, grouped by block, to ``on_records``.

        Records keep the file's order, so this pass runs on one thread. Every run of rows is checked for
        repeated entries, which are added up (the pass is the only one: there is no first pass to ask).
        """
        self._canonicalise = True
        for r0, ptr, ind, val in self._row_runs(self._parts(1)[0], cancel):
            kernels.csr_stats(ptr, ind, val, r0, self.row_lut, pos_of, *stats.arrays())
            on_records(
                *kernels.bucket_csr_rows(ptr, ind, val, r0, self.row_lut, pos_of, genes_per_block, n_blocks)
            )

    def blocks(self, gene_idx, genes_per_block, scratch_dir=None, n_threads=1, lead=None, cancel=None):
        """Blocks of genes as :class:`~cellucid_export.blocks.SparseGenes`.

        A first pass gathers every gene's statistics. Then, when re-reading the matrix is cheap (see
        :attr:`rereads`), each block writes its values by one more pass, both kinds of pass split over
        ``n_threads`` threads by rows; otherwise the first pass also sorts the values into records (12
        bytes per stored value), kept in memory for a single block or in scratch files in
        ``scratch_dir`` (or the system temporary folder) for several.

        ``lead = (n, max_values)`` asks, on the first path, for the first ``n`` genes as a block of their
        own, taken from records the first pass keeps (at most ``max_values``): one pass fewer, and the
        first block is ready as soon as the statistics are.
        """
        gene_idx = np.asarray(gene_idx, dtype=np.int64)
        n_genes = len(gene_idx)
        per = max(1, genes_per_block)
        n_blocks = max(1, -(-n_genes // per))
        pos_of = np.full(self.shape[1], -1, dtype=np.int32)
        pos_of[gene_idx] = np.arange(n_genes, dtype=np.int32)
        n_cells = self.shape[0]
        if self.rereads:
            in_file_order = bool(np.all(np.diff(gene_idx) > 0))
            n_lead, max_records = lead if lead is not None and 0 < lead[0] < n_genes else (0, 0)
            c_last = int(gene_idx[n_lead - 1]) if n_lead and in_file_order else -1
            stats, rows_sorted, repeats, records = self._stats_pass(
                pos_of, n_genes, n_threads, n_lead, c_last, max_records, cancel
            )
            if repeats and not self._canonicalise:
                # A cell and gene stored twice mean their sum: the statistics (and lead records) of the
                # single entries are wrong, so read again, adding repeated entries up from now on.
                self._canonicalise = True
                stats, rows_sorted, _, records = self._stats_pass(
                    pos_of, n_genes, n_threads, n_lead, c_last, max_records, cancel
                )
            # Genes in file order over sorted rows: each pass visits only its genes' window of columns.
            columns = gene_idx if rows_sorted and in_file_order else None
            start = 0
            if records is not None:
                yield GeneRecords(n_cells, stats[:n_lead], 0, n_lead, records)
                del records
                start = n_lead
            parts = self._parts(n_threads)
            runs = functools.partial(self._row_runs, cancel=cancel)
            for g0 in range(start, n_genes, per):
                g1 = min(n_genes, g0 + per)
                yield CSRPass(n_cells, stats[g0:g1], g0, g1, runs, parts, pos_of, self.row_lut, columns)
            return
        stats = SparseStats.empty(n_genes)
        if n_blocks == 1:
            parts: list[np.ndarray] = []
            self._records_pass(pos_of, stats, lambda rec, bounds: parts.append(rec), per, 1, cancel)
            yield GeneRecords(n_cells, stats, 0, n_genes, parts)
            return
        with tempfile.TemporaryDirectory(prefix="cellucid-export-", dir=scratch_dir) as tmp:
            # One scratch file, whatever the number of blocks (a file per block could run out of file
            # handles): each read chunk appends its records block by block, and each block remembers
            # where its pieces are.
            path = Path(tmp) / "records.bin"
            pieces: list[list[tuple[int, int]]] = [[] for _ in range(n_blocks)]
            with open(path, "wb") as fh:

                def spill(rec, bounds):
                    raw = rec.view(np.uint8).reshape(-1, RECORD.itemsize)
                    for b in np.flatnonzero(np.diff(bounds)):
                        pieces[b].append((fh.tell(), int(bounds[b + 1] - bounds[b])))
                        fh.write(raw[bounds[b] : bounds[b + 1]])

                self._records_pass(pos_of, stats, spill, per, n_blocks, cancel)
            with open(path, "rb") as fh:
                for b in range(n_blocks):
                    rec = np.empty(sum(n for _, n in pieces[b]), dtype=RECORD)
                    view, at = rec.view(np.uint8), 0
                    for offset, n in pieces[b]:
                        fh.seek(offset)
                        fh.readinto(view[at : at + n * RECORD.itemsize])
                        at += n * RECORD.itemsize
                    g0, g1 = b * per, min(n_genes, (b + 1) * per)
                    yield GeneRecords(n_cells, stats[g0:g1], 0, g1 - g0, [rec])
                    del rec


class OnDiskCSC(GeneBlockSource):
    """A CSC matrix in an HDF5 group, read gene by gene through ``indptr`` (adjacent genes together)."""

    def __init__(self, group: h5py.Group, shape, obs_idx=None):
        self.group = group
        self.indptr = group["indptr"][...].astype(np.int64)
        obs_idx = _as_index(obs_idx, shape[0])  # cells are picked from each gene's column: repeats are fine
        n = shape[0] if obs_idx is None else len(obs_idx)
        super().__init__((n, shape[1]), "on-disk CSC", obs_idx)
        self._file_rows = shape[0]

    @property
    def is_sparse(self):
        return True

    def nnz_fraction(self):
        return float(self.indptr[-1]) / max(1, self._file_rows * self.shape[1])

    def sample_rows(self, n_rows):
        # A handful of genes' columns is cheap; a CSC file has no cheap row sample, so sample
        # columns spread across the matrix and read their cells.
        cols = np.unique(np.linspace(0, self.shape[1] - 1, num=min(self.shape[1], 64)).astype(np.int64))
        block = self._read_genes(cols).toarray()
        rows = sample_positions(self.shape[0], n_rows)
        out = np.zeros((len(rows), self.shape[1]), np.float32)
        out[:, cols] = block[rows]
        return out

    def _read_genes(self, idx):
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        # Runs of adjacent genes are read with one slice each.
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        data_parts, ind_parts, counts = [], [], np.zeros(len(idx), np.int64)
        data_ds, ind_ds = self.group["data"], self.group["indices"]
        for run in np.split(np.arange(len(sorted_idx)), breaks):
            g0, g1 = int(sorted_idx[run[0]]), int(sorted_idx[run[-1]]) + 1
            a, b = int(self.indptr[g0]), int(self.indptr[g1])
            data_parts.append(data_ds[a:b])  # float32 only after repeats are added up, as in memory
            ind_parts.append(ind_ds[a:b].astype(np.int64, copy=False))
            counts[run] = np.diff(self.indptr[g0 : g1 + 1])
        data = np.concatenate(data_parts) if data_parts else np.zeros(0, data_ds.dtype)
        ind = np.concatenate(ind_parts) if ind_parts else np.zeros(0, np.int64)
        ptr = np.concatenate([[0], np.cumsum(counts)])
        m = sp.csc_matrix((data, ind, ptr), shape=(self._file_rows, len(idx)))
        m.sum_duplicates()  # repeated entries of a cell and gene add up, as scipy and anndata read them
        inv = np.empty_like(order)
        inv[order] = np.arange(len(order))
        m = m[:, inv]
        if self.obs_idx is not None:
            m = m[self.obs_idx]
        return _csc_f32(m)


class OnDiskDense(GeneBlockSource):
    """A dense 2-D HDF5 dataset (cells x genes), read in row slabs."""

    def __init__(self, ds: h5py.Dataset, obs_idx=None):
        self.ds = ds
        obs_idx = _as_index(obs_idx, ds.shape[0])
        n = ds.shape[0] if obs_idx is None else len(obs_idx)
        super().__init__((n, ds.shape[1]), "on-disk dense", obs_idx)

    def sample_rows(self, n_rows):
        rows = sample_positions(self.shape[0], n_rows)
        if self.obs_idx is not None:
            rows = self.obs_idx[rows]
        return _gather_rows(rows, self.shape[1], lambda lo, hi, wanted: self.ds[lo:hi][wanted])

    def _read_genes(self, idx):
        n_file_rows = self.ds.shape[0]
        g0, g1 = int(idx.min()), int(idx.max()) + 1
        rows_per_slab = max(1, READ_CHUNK_BYTES // max(1, (g1 - g0) * self.ds.dtype.itemsize))
        # Only the exported cells get room (the block was sized for them), and slabs without any are skipped.
        rows = np.arange(n_file_rows) if self.obs_idx is None else self.obs_idx
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        out = np.empty((len(rows), len(idx)), np.float32)
        for r0 in range(0, n_file_rows, rows_per_slab):
            r1 = min(n_file_rows, r0 + rows_per_slab)
            a, b = np.searchsorted(sorted_rows, [r0, r1])
            if a < b:
                out[order[a:b]] = self.ds[r0:r1, g0:g1][sorted_rows[a:b] - r0][:, idx - g0]
        return out


def _h5_group_shape(group: h5py.Group) -> tuple[int, int]:
    shape = group.attrs.get("shape", group.attrs.get("h5sparse_shape"))
    return int(shape[0]), int(shape[1])


def _h5_group_format(group: h5py.Group) -> str:
    fmt = group.attrs.get("encoding-type", group.attrs.get("h5sparse_format", ""))
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    return "csc" if "csc" in fmt else "csr"


def open_source(x, obs_idx=None) -> GeneBlockSource:
    """Wrap a matrix in the gene-block reader that suits it.

    Parameters
    ----------
    x
        numpy array, scipy sparse matrix/array, dask array, h5py dataset or group, or anndata's
        backed sparse dataset.
    obs_idx
        Optional subset of cells (slice, boolean mask or integer indices), for AnnData views.

    """
    if isinstance(x, GeneBlockSource):
        return x
    group = getattr(x, "group", None)  # anndata's backed CSR/CSC datasets
    if any(isinstance(o, h5py.Group | h5py.Dataset) and not o.id.valid for o in (x, group)):
        raise InputReadError(
            "The .h5ad file holding this matrix was closed, so it cannot be read. Open it again, e.g. "
            "adata = anndata.read_h5ad(path, backed='r'), and export from that AnnData."
        )
    if isinstance(group, h5py.Group):
        x = group
    dtype = np.dtype(getattr(x["data"] if isinstance(x, h5py.Group) else x, "dtype", np.float32))
    if dtype.kind not in "biuf":
        # Complex values would lose their imaginary part, and text would be parsed as numbers, silently.
        raise UnsupportedMatrixError(
            f"The expression matrix holds values of type {dtype} ({'complex numbers' if dtype.kind == 'c' else 'not a numeric type'}); "
            "the export needs real numbers. Convert it first, e.g. adata.X = adata.X.astype('float32') "
            "(for complex values, decide which part to keep: np.abs(x) or x.real)."
        )
    if isinstance(x, h5py.Group):
        shape = _h5_group_shape(x)
        cls = OnDiskCSC if _h5_group_format(x) == "csc" else StreamedCSR
        return cls(x, shape, obs_idx)
    if isinstance(x, h5py.Dataset):
        return OnDiskDense(x, obs_idx)
    if sp.issparse(x) and x.format in ("csr", "csc") and not x.has_canonical_format:
        # Repeated entries of one cell and gene add up (scipy's meaning); values are written one by one, so
        # add them up first, on a copy: the user's matrix is left as it was.
        x = x.copy()
        x.sum_duplicates()
    if sp.issparse(x) and x.format == "csr":
        # Streamed like a file: selecting columns of a CSR matrix costs a full scan per block otherwise.
        arrays = {"data": x.data, "indices": x.indices, "indptr": x.indptr}
        return StreamedCSR(arrays, x.shape, obs_idx, kind="in-memory sparse CSR")
    if sp.issparse(x):
        return InMemorySparse(x, obs_idx)
    if type(x).__module__.startswith("dask"):
        return DaskArray(x, obs_idx)
    if hasattr(x, "shape") and len(x.shape) == 2:
        return InMemoryDense(np.asarray(x), obs_idx)
    raise UnsupportedMatrixError(
        f"Cannot read gene expression from a {type(x).__name__}. Supported: numpy arrays, scipy sparse "
        "matrices, dask arrays and matrices stored in an .h5ad file."
    )
