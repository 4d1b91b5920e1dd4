"""Plain file reads of HDF5 datasets: the same values as h5py, or no reader at all."""

from __future__ import annotations

import os
import shutil

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp

from cellucid_export import h5raw
from cellucid_export.h5raw import raw_layout


@pytest.fixture
def h5(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(10_007).astype(np.float32)
    path = tmp_path / "arrays.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("contiguous", data=values)
        f.create_dataset("chunked", data=values, chunks=(613,), maxshape=(None,))  # anndata's way
        f.create_dataset("gzip", data=values, chunks=(613,), compression="gzip")
        f.create_dataset("shuffled", data=values, chunks=(613,), shuffle=True)
        f.create_dataset("big_endian", data=values.astype(">f4"))
        f.create_dataset("int64", data=np.arange(10_007, dtype=np.int64) * 3)
        partial = f.create_dataset("partial", shape=(10_007,), dtype="f4", chunks=(613,))
        partial[:613] = values[:613]  # the other chunks are never written
        f.create_dataset("empty", shape=(0,), dtype="f4")
    return path, values


@pytest.mark.parametrize("name", ["contiguous", "chunked", "int64"])
def test_any_range_reads_like_h5py(h5, name):
    path, _ = h5
    with h5py.File(path) as f:
        ds = f[name]
        with raw_layout(ds).open() as reader:
            # Ranges inside one chunk, across chunk boundaries, at both ends, the whole dataset.
            for a, b in [(0, 1), (5, 600), (600, 1300), (612, 614), (9_000, 10_007), (0, 10_007), (7, 7)]:
                out = np.full(b - a + 3, -1, ds.dtype)
                reader.read(a, b, out)
                np.testing.assert_array_equal(out[: b - a], ds[a:b])
                assert (out[b - a :] == -1).all()  # nothing written past the range


@pytest.mark.parametrize("name", ["gzip", "shuffled", "big_endian", "partial", "empty"])
def test_datasets_whose_bytes_are_not_plain_are_left_to_h5py(h5, name):
    path, _ = h5
    with h5py.File(path) as f:
        assert raw_layout(f[name]) is None


def test_in_memory_arrays_have_no_raw_layout():
    assert raw_layout(np.zeros(10, np.float32)) is None


def test_anndata_written_matrix_reads_like_h5py(tmp_path):
    """The stored values and indices of an .h5ad written by anndata (chunked, uncompressed)."""
    x = sp.random(2_000, 300, density=0.08, format="csr", dtype=np.float32, random_state=1)
    ad.AnnData(x).write_h5ad(tmp_path / "a.h5ad")
    with h5py.File(tmp_path / "a.h5ad") as f:
        for key in ("data", "indices"):
            ds = f["X"][key]
            assert ds.chunks is not None and ds.compression is None
            with raw_layout(ds).open() as reader:
                out = np.empty(ds.shape[0] - 11, ds.dtype)
                reader.read(10, ds.shape[0] - 1, out)
                np.testing.assert_array_equal(out, ds[10:-1])


def test_truncated_file_is_reported(h5, tmp_path):
    path, _ = h5
    cut = tmp_path / "cut.h5"
    shutil.copy(path, cut)
    with h5py.File(cut) as f, raw_layout(f["contiguous"]).open() as reader:
        ds = f["contiguous"]
        os.truncate(cut, ds.id.get_offset() + ds.nbytes - 8)  # the dataset's last bytes are lost
        with pytest.raises(OSError, match="ended early"):
            reader.read(0, ds.shape[0], np.empty(ds.shape[0], np.float32))


def test_chunk_addresses_without_the_one_call_listing():
    """Older HDF5 lists chunks one call at a time: fine for a few chunks, too slow (so refused) for many."""

    class Info:
        def __init__(self, i):
            self.chunk_offset, self.filter_mask, self.byte_offset, self.size = (i * 10,), 0, 1000 + 40 * i, 40

    class Id:
        def chunk_iter(self, callback):
            raise NotImplementedError

        def get_chunk_info(self, i):
            return Info(i)

    class Dataset:
        id = Id()

    few = h5raw._chunk_infos(Dataset(), 5)
    assert [i.byte_offset for i in few] == [1000, 1040, 1080, 1120, 1160]
    assert h5raw._chunk_infos(Dataset(), h5raw._SLOW_LISTING_LIMIT + 1) is None


def test_a_file_that_cannot_be_reopened_is_left_to_h5py(h5, tmp_path, monkeypatch):
    path, _ = h5
    monkeypatch.chdir(path.parent)
    with h5py.File(path.name) as f:  # opened by a relative name...
        monkeypatch.chdir(tmp_path.parent)  # ...that no longer points at it
        assert raw_layout(f["contiguous"]) is None
