"""Read element ranges of an uncompressed 1-D HDF5 dataset with plain file reads.

h5py holds Python's global lock while HDF5 copies data, so every read of the matrix stalls the
gzip threads for as long as it lasts (on M, 0.1 s a pass, eight passes). The stored values and
column indices of an ``.h5ad`` are usually uncompressed, and then their bytes sit in the file as
they are in memory: one contiguous extent, or chunks at addresses HDF5 reports. Reading those
bytes with ``preadv`` releases the lock and skips HDF5's bookkeeping.

Only the simple, common case is taken: the default file driver, no filters, native byte order,
every chunk written. :func:`raw_layout` returns None for anything else, and the caller keeps
using h5py.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import h5py
import numpy as np

from .errors import InputReadError

__all__ = ["RawLayout", "RawReader", "raw_layout"]

#: Elements compared between h5py and a raw read at each end of a dataset before trusting the raw path.
_CHECK = 64
#: Without HDF5's one-call chunk listing, each chunk's address costs a walk of the chunk index; past
#: this many chunks that is slower than letting h5py read.
_SLOW_LISTING_LIMIT = 256


def _chunk_infos(ds: h5py.Dataset, n_chunks: int) -> list | None:
    infos: list = []
    try:
        ds.id.chunk_iter(infos.append)  # one walk of the index (h5py >= 3.8 with HDF5 >= 1.12.3)
        return infos
    except (AttributeError, NotImplementedError, RuntimeError):
        if n_chunks > _SLOW_LISTING_LIMIT:
            return None
        return [ds.id.get_chunk_info(i) for i in range(n_chunks)]


def _extents(ds: h5py.Dataset) -> tuple[int, np.ndarray] | None:
    """(elements per extent, file address of each extent), or None when the bytes are not plain."""
    if ds.ndim != 1 or ds.file.driver != "sec2" or not ds.dtype.isnative or ds.dtype.kind not in "iuf":
        return None
    dcpl = ds.id.get_create_plist()
    if dcpl.get_nfilters() or dcpl.get_external_count():
        return None
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        return None if offset is None else (max(1, ds.shape[0]), np.array([offset], np.int64))
    if layout != h5py.h5d.CHUNKED:
        return None  # compact or virtual
    per = ds.chunks[0]
    n_chunks = -(-ds.shape[0] // per)
    if ds.id.get_num_chunks() != n_chunks:
        return None  # unwritten chunks hold the fill value, not bytes in the file
    infos = _chunk_infos(ds, n_chunks)
    if infos is None or len(infos) != n_chunks:
        return None
    addrs = np.full(n_chunks, -1, np.int64)
    for info in infos:
        if info.filter_mask or info.byte_offset is None or info.size != per * ds.dtype.itemsize:
            return None
        addrs[info.chunk_offset[0] // per] = info.byte_offset
    return (per, addrs) if (addrs >= 0).all() else None


@dataclass(frozen=True)
class RawLayout:
    """Where a dataset's elements are in its file: ``per`` elements from each of ``addrs``.

    Made once per dataset by :func:`raw_layout`; each reading thread opens its own :class:`RawReader`.
    """

    filename: str
    itemsize: int
    per: int
    addrs: np.ndarray

    def open(self) -> RawReader:
        """A reader with its own file handle."""
        return RawReader(self)


class RawReader:
    """Reads elements ``a:b`` of one dataset into a buffer, straight from the file; a context manager."""

    def __init__(self, layout: RawLayout):
        self._layout = layout
        self._fh = io.FileIO(layout.filename, "r")

    def read(self, a: int, b: int, out: np.ndarray) -> None:
        """Fill ``out[: b - a]`` with elements ``a`` to ``b`` of the dataset."""
        per, item, addrs = self._layout.per, self._layout.itemsize, self._layout.addrs
        view = memoryview(out[: b - a]).cast("B")
        pos = a
        while pos < b:
            extent = pos // per
            stop = min(b, (extent + 1) * per)
            offset = int(addrs[extent]) + (pos - extent * per) * item
            _read_at(self._fh, view[(pos - a) * item : (stop - a) * item], offset)
            pos = stop

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> RawReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def raw_layout(ds) -> RawLayout | None:
    """The :class:`RawLayout` of ``ds``, or None when its bytes cannot be read directly: use h5py then."""
    if not isinstance(ds, h5py.Dataset):
        return None
    extents = _extents(ds)
    if extents is None:
        return None
    layout = RawLayout(ds.file.filename, ds.dtype.itemsize, *extents)
    # Trust the addresses only once the bytes they give match HDF5's at both ends of the dataset.
    n = ds.shape[0]
    try:
        with layout.open() as reader:
            for a, b in ((0, min(n, _CHECK)), (max(0, n - _CHECK), n)):
                got = np.empty(b - a, ds.dtype)
                reader.read(a, b, got)
                if not np.array_equal(got, ds[a:b], equal_nan=ds.dtype.kind == "f"):
                    return None
    except OSError:  # e.g. the file was opened by a relative name and the working folder changed since
        return None
    return layout


def _read_at(fh: io.FileIO, view: memoryview, offset: int) -> None:
    """Fill ``view`` with the file's bytes from ``offset`` on."""
    while view:
        if hasattr(os, "preadv"):
            n = os.preadv(fh.fileno(), [view], offset)
        else:  # pragma: no cover - platforms without preadv
            fh.seek(offset)
            n = fh.readinto(view)
        if not n:
            raise InputReadError(
                f"{fh.name} ended early: the .h5ad file may be truncated (it changed or shrank while being read). "
                "Copy it again and export again."
            )
        view, offset = view[n:], offset + n
