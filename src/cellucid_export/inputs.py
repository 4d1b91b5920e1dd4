"""Adapters from an AnnData object, or an .h5ad file on disk, to :class:`~.resolve.AnnDataParts`.

For a file, only the index of ``obs``, the ``var`` tables and the chosen matrix are read; the
matrix itself is opened lazily. anndata's own backed mode would load every layer into memory.
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.io import read_elem

from .errors import InputNotFoundError, InputReadError, InvalidParameterError
from .resolve import AnnDataParts

__all__ = ["open_h5ad", "parts_from_anndata", "parts_from_h5ad"]


def _index_array(idx, n: int) -> np.ndarray:
    """Positions of a view's subset: anndata keeps a slice, integer positions or a boolean mask."""
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    idx = np.asarray(idx)
    return np.flatnonzero(idx) if idx.dtype == bool else idx


def _shapes(mapping) -> dict[str, tuple[int, ...]]:
    return {str(k): tuple(getattr(v, "shape", ())) for k, v in mapping.items()}


def _metadata_from_anndata(adata: AnnData) -> dict:
    """obs, obsm and obsp getters; AnnData keeps these in memory (views already subset them)."""
    return {
        "obs_columns": list(adata.obs.columns),
        "obs_column": lambda k: adata.obs[k],
        "obsm_shapes": _shapes(adata.obsm),
        "obsm": lambda k: adata.obsm[k],
        "obsp_keys": list(adata.obsp.keys()),
        "obsp": lambda k: adata.obsp[k],
    }


def parts_from_anndata(adata: AnnData) -> AnnDataParts:
    """Describe an in-memory, backed, or view AnnData without reading its matrices."""
    raw = adata.raw
    meta = _metadata_from_anndata(adata)
    if adata.is_view and adata.isbacked:
        # Reading adata.X of a backed view would load the whole subset; read the file instead.
        ref = adata._adata_ref
        oidx = adata._oidx
        var_idx = _index_array(adata._vidx, ref.n_vars)
        ref_raw = ref.raw
        return AnnDataParts(
            obs_names=adata.obs_names,
            var=adata.var,
            X=(lambda: ref.X) if ref.X is not None else None,
            # The whole layer, like X: resolve() picks the view's genes from any matrix of the file's genes.
            layers={k: (lambda k=k: ref.layers[k]) for k in ref.layers},
            raw_var=ref_raw.var if ref_raw is not None else None,
            raw_X=(lambda: ref_raw.X) if ref_raw is not None else None,
            obs_idx=oidx,
            var_idx=var_idx,
            **meta,
        )
    return AnnDataParts(
        obs_names=adata.obs_names,
        var=adata.var,
        X=(lambda: adata.X) if adata.X is not None else None,
        layers={k: (lambda k=k: adata.layers[k]) for k in adata.layers},
        raw_var=raw.var if raw is not None else None,
        raw_X=(lambda: raw.X) if raw is not None else None,
        **meta,
    )


def _read_index(group: h5py.Group) -> pd.Index:
    name = group.attrs.get("_index", "_index")
    return pd.Index(read_elem(group[name]).astype(str) if name in group else [])


def _h5_shape(elem) -> tuple[int, ...]:
    if isinstance(elem, h5py.Dataset):
        return tuple(elem.shape)
    shape = elem.attrs.get("shape")  # sparse matrices
    if shape is not None:
        return tuple(int(x) for x in shape)
    if elem.attrs.get("encoding-type") == "dataframe":  # an obsm DataFrame: its index and its columns
        index = elem.attrs.get("_index", "_index")
        n_rows = elem[index].shape[0] if index in elem else 0
        return (int(n_rows), len(elem.attrs.get("column-order", [])))
    return ()


def _metadata_from_h5ad(f: h5py.File) -> dict:
    """obs, obsm and obsp getters that read one element from the file when asked, and nothing else."""
    obs = f["obs"]
    index_name = obs.attrs.get("_index", "_index")
    order = obs.attrs.get("column-order", [])
    columns = [str(c) for c in (order.tolist() if hasattr(order, "tolist") else order)]
    obsm = f.get("obsm", {})
    obsp = f.get("obsp", {})
    return {
        "obs_columns": [c for c in columns if c != index_name],
        "obs_column": lambda k: pd.Series(read_elem(obs[k]), name=k),
        "obsm_shapes": {k: _h5_shape(obsm[k]) for k in obsm},
        "obsm": lambda k: read_elem(f["obsm"][k]),
        "obsp_keys": list(obsp),
        "obsp": lambda k: read_elem(f["obsp"][k]),
    }


def parts_from_h5ad(f: h5py.File) -> AnnDataParts:
    """Describe an open .h5ad file; matrices stay on disk until an export reads them."""
    if "obs" not in f or "var" not in f:
        raise InvalidParameterError(
            f"{f.filename} is not an .h5ad file written by anndata (it has no obs/var). "
            "Open other formats with anndata or scanpy and use adata.cellucid.export()."
        )
    var = read_elem(f["var"])
    raw_var = read_elem(f["raw/var"]) if "raw/var" in f else None
    layers = f.get("layers", {})
    return AnnDataParts(
        obs_names=_read_index(f["obs"]),
        var=var,
        X=(lambda: f["X"]) if "X" in f else None,
        layers={k: (lambda k=k: f["layers"][k]) for k in layers},
        raw_var=raw_var,
        raw_X=(lambda: f["raw/X"]) if "raw/X" in f else None,
        **_metadata_from_h5ad(f),
    )


def open_h5ad(path: os.PathLike | str) -> h5py.File:
    """Open an ``.h5ad`` file read-only, or explain what is wrong with it.

    A missing, non-HDF5 or cut-short file, or an AnnData passed instead of a path, gets an error that says
    so and how to fix it. Use it as a context manager, like ``h5py.File``.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        hint = (
            " For an AnnData in memory (or opened with backed='r'), use adata.cellucid.export(out_dir, ...)."
            if isinstance(path, AnnData)
            else ""
        )
        raise InvalidParameterError(f"Expected the path of an .h5ad file, got {type(path).__name__}.{hint}")
    if not os.path.exists(path):
        raise InputNotFoundError(f"No such file: {path}. Check the path to your .h5ad file.")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:  # e.g. no permission to read it
        raise InputReadError(
            f"{path} cannot be read ({e.strerror or e}). Check the file's permissions."
        ) from None
    if not is_hdf5:
        raise InvalidParameterError(
            f"{path} is not an .h5ad (HDF5) file. For .zarr, .loom or .csv, read it with anndata or scanpy "
            "and call adata.cellucid.export()."
        )
    try:
        return h5py.File(path, "r")
    except OSError as e:
        # HDF5 compares the file's length with the one it recorded: a cut-short file fails here.
        cut = "truncated" in str(e)
        raise InputReadError(
            f"{path} cannot be opened as an .h5ad file ({e})."
            + (
                " It is shorter than HDF5 recorded: a copy or download that did not finish. Copy it again "
                "(compare its size with the original) and export again."
                if cut
                else " Check that the file is complete and readable: anndata.read_h5ad(path) should open it."
            )
        ) from None
