"""Everything a viewer-ready dataset holds besides genes: points, cell metadata, graph, vectors, identity.

:func:`resolve_dataset` reads the obs columns, obsm embeddings and obsp graph the export needs,
validates all of it and computes every payload (they are one value or a few per cell, small next to
the genes) before anything is written; :func:`write_dataset` then writes them into the staging
folder. The files are described in the documentation's "A viewer-ready dataset" page.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._logging import logger
from .codec import get_codec
from .errors import CellucidExportError, InvalidParameterError
from .plan import plural
from .quantize import MARKER, PAYLOAD_KINDS, quantize_block
from .resolve import AnnDataParts, _show, check_bits, name_layout_problems, safe_name
from .writer import values_schema, write_json

__all__ = [
    "DatasetError",
    "DatasetPlan",
    "default_dataset_id",
    "identity",
    "resolve_dataset",
    "write_dataset",
]

#: The ``obsm`` name prefixes of latent spaces: never drawn as an embedding even with 1-3 columns.
LATENT_PREFIXES = (
    "X_pca",
    "X_diffmap",
    "X_scvi",
    "X_scanvi",
    "X_totalvi",
    "X_multivi",
    "X_peakvi",
    "X_harmony",
    "X_pca_harmony",
    "X_lsi",
    "X_ica",
    "X_nmf",
    "X_mofa",
    "X_latent",
    "X_emb",
)
#: Largest number of categories per codes dtype (the next code is the missing marker).
MAX_CATEGORIES = {"uint8": 254, "uint16": 65534}
DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
CREATED_AT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
#: ``cellucid_data_version`` written in the identity: the format generation this package writes.
DATA_VERSION = {"name": "0.0.9", "index": "0.9.1"}


class DatasetError(CellucidExportError, ValueError):
    """Embeddings, cell metadata or the graph cannot be exported as they are."""


# ------------------------------------------------------------------------------------------ plan


@dataclass
class ObsField:
    """One exported obs column, ready to be written."""

    key: str
    kind: str  # "continuous" or "category"
    index: int  # position in the one index space shared by obs fields (index layout)
    values: np.ndarray | None = None  # float32 (continuous)
    codes: np.ndarray | None = None  # uint8/uint16 with the missing marker (categorical)
    categories: list = field(default_factory=list)
    outliers: np.ndarray | None = None  # float32 in (0, 1] or NaN
    centroids: dict[str, list] = field(default_factory=dict)


@dataclass
class DatasetPlan:
    """A validated dataset, every payload computed; nothing written yet."""

    n_cells: int
    embeddings: dict[int, str]  # dimension -> obsm key
    points: dict[int, np.ndarray]  # dimension -> float32 (n_cells, d), normalised
    obs_fields: list[ObsField]
    skipped_obs: dict[str, str]
    categorical_dtype: str  # "auto", "uint8" or "uint16" as written in export_settings
    latent_key: str | None
    edges: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # src, dst, float64 weights
    max_neighbors: int
    connectivity_key: str | None
    vectors: dict[str, dict[int, np.ndarray]]  # field id -> dimension -> float32
    vector_basis: dict[str, str]
    default_vector_field: str | None
    dataset_id: str
    dataset_name: str
    description: str
    source: dict | None
    created_at: str
    obs_continuous_quantization: int | None
    centroid_outlier_quantile: float
    notes: list[str] = field(default_factory=list)

    @property
    def viewer_ready(self) -> bool:
        """True when there is at least one embedding (the viewer has something to draw)."""
        return bool(self.points)

    @property
    def n_edges(self) -> int | None:
        """Undirected edges exported, or None without a graph."""
        return None if self.edges is None else len(self.edges[0])


# ---------------------------------------------------------------------------------- identity text


def default_dataset_id(name: str) -> str:
    """A portable id from a dataset name: ``"PBMC 68k (reduced)"`` -> ``"pbmc-68k-reduced"``."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name).strip().lower())
    text = re.sub(r"^[^A-Za-z0-9]+", "", text).rstrip(".-_")
    return text or "dataset"


def _valid_id(text) -> bool:
    return isinstance(text, str) and bool(DATASET_ID.fullmatch(text)) and not text.endswith(".")


def _check_dataset_id(dataset_id) -> str:
    if not _valid_id(dataset_id):
        raise InvalidParameterError(
            f"dataset_id={dataset_id!r} cannot be used: the viewer puts it in URLs and folder names, so it must "
            "start with a letter or digit, hold only letters, digits, '.', '_' and '-', and not end in '.'. "
            f"For example dataset_id={default_dataset_id(str(dataset_id))!r}, or leave it out to derive it "
            "from dataset_name."
        )
    return dataset_id


def _created_at(value) -> str:
    if value is None:
        # Reproducible builds: honour SOURCE_DATE_EPOCH like other packaging tools do.
        epoch = os.environ.get("SOURCE_DATE_EPOCH")
        when = (
            _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
            if epoch
            else _dt.datetime.now(_dt.timezone.utc)
        )
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.timezone.utc)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, str) and CREATED_AT.fullmatch(value):
        return value
    raise InvalidParameterError(
        f"created_at must be a datetime or a UTC time written 'YYYY-MM-DDTHH:MM:SSZ', got {value!r}."
    )


def _source(source) -> dict | None:
    if source is None:
        return None
    if isinstance(source, str):
        source = {"name": source}
    if (
        not isinstance(source, Mapping)
        or not set(source) <= {"name", "url", "citation"}
        or "name" not in source
    ):
        raise InvalidParameterError(
            "source must be the name of the data source or a dict with 'name' and optionally 'url' and "
            f"'citation', got {source!r}."
        )
    return {k: str(source[k]) for k in ("name", "url", "citation") if source.get(k) is not None}


# ------------------------------------------------------------------------------------ embeddings


def _is_latent(key: str) -> bool:
    low = key.lower()
    return any(low == p.lower() or low.startswith(p.lower() + "_") for p in LATENT_PREFIXES)


def _embedding_dim(shape: tuple[int, ...], n_cells: int) -> int | None:
    if len(shape) == 2 and shape[0] == n_cells and shape[1] in (1, 2, 3):
        return int(shape[1])
    return None


def drawable_keys(parts: AnnDataParts) -> list[str]:
    """The obsm entries that could be drawn (1-3 columns, a row per cell), whether chosen automatically or not."""
    return [k for k, shape in parts.obsm_shapes.items() if _embedding_dim(shape, parts.n_obs)]


def _umap_rank(key: str, dim: int) -> int:
    """Lower is preferred when two embeddings share a dimension: UMAP is scanpy's default plot."""
    if key == f"X_umap_{dim}d":
        return 0
    if key == "X_umap":
        return 1
    return 2 if key.lower().startswith("x_umap") else 3


def choose_embeddings(parts: AnnDataParts, embeddings) -> tuple[dict[int, str], list[str]]:
    """Which ``obsm`` entry becomes ``points_{d}d``; returns (dimension -> key, notes for the log)."""
    shapes, n = parts.obsm_shapes, parts.n_obs
    notes: list[str] = []
    if embeddings is None:
        by_dim: dict[int, list[str]] = {}
        for key, shape in shapes.items():
            dim = _embedding_dim(shape, n)
            if key.startswith("X_") and not _is_latent(key) and dim:
                by_dim.setdefault(dim, []).append(key)
        chosen: dict[int, str] = {}
        for dim, keys in sorted(by_dim.items()):
            keys = sorted(keys, key=lambda k: (_umap_rank(k, dim), k))
            if len(keys) > 1 and _umap_rank(keys[0], dim) == _umap_rank(keys[1], dim):
                raise InvalidParameterError(
                    f"obsm has several {dim}-D embeddings ({_show(keys)}) and the viewer shows one per "
                    f"dimension. Choose with embeddings=, e.g. embeddings=[{keys[0]!r}]."
                )
            chosen[dim] = keys[0]
            if len(keys) > 1:
                notes.append(
                    f"{dim}-D: exporting obsm[{keys[0]!r}]; not {_show(keys[1:])} (one embedding per "
                    f"dimension; pass embeddings=[{keys[1]!r}] to export that one instead)"
                )
        return chosen, notes
    if embeddings is False:
        return {}, notes
    if isinstance(embeddings, str):
        embeddings = [embeddings]
    if isinstance(embeddings, Mapping):
        items = list(embeddings.items())
        keys = [k for _, k in items]
    else:
        keys = list(embeddings)
        items = [(None, k) for k in keys]
    missing = [k for k in keys if k not in shapes]
    if missing:
        raise InvalidParameterError(
            f"embeddings= names {_show(missing)}, not in obsm (obsm has {_show(shapes) or 'nothing'})."
        )
    chosen = {}
    for want, key in items:
        dim = _embedding_dim(shapes[key], n)
        if dim is None:
            raise InvalidParameterError(
                f"obsm[{key!r}] has shape {shapes[key]}; an embedding the viewer can draw has {n} rows and "
                "1, 2 or 3 columns."
            )
        if want is not None and str(want).rstrip("dD") != str(dim):
            raise InvalidParameterError(
                f"embeddings= maps {want!r} to obsm[{key!r}], which has {dim} columns."
            )
        if dim in chosen:
            raise InvalidParameterError(
                f"embeddings= lists two {dim}-D embeddings, obsm[{chosen[dim]!r}] and obsm[{key!r}]; the viewer "
                "shows one per dimension (1-D, 2-D, 3-D). Keep one of them."
            )
        chosen[dim] = key
    return dict(sorted(chosen.items())), notes


def _finite_matrix(x, what: str, fix: str) -> np.ndarray:
    arr = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DatasetError(
            f"{what} has non-finite coordinates (NaN or Inf) in {plural(int(bad.sum()), 'cell')} (rows {', '.join(map(str, rows[:5]))}{' ...' if len(rows) > 5 else ''}). "
            f"{fix}"
        )
    return arr


def normalise_points(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre each axis on its mid-range and scale by the largest range to [-1, 1].

    Returns (normalised float64, centre, scale). Computed in float64 and cast to float32 only when
    written, so that centroids are measured on the unrounded coordinates.
    """
    lo, hi = x.min(axis=0), x.max(axis=0)
    with np.errstate(over="ignore"):
        r = float((hi - lo).max())
        centre_overflows = not np.isfinite(lo + hi).all()
    if not np.isfinite(r) or centre_overflows:
        # Coordinates near the float64 limit (a range or a sum of bounds above 1.8e308): the format's formula
        # overflows, so the same result is computed in halves, which cannot.
        center = lo / 2 + hi / 2
        scale = 1.0 / float((hi / 2 - lo / 2).max())
        return np.clip(x * scale - center * scale, -1.0, 1.0), center, scale  # (1 ulp over, from the halving)
    if r < 1e-8:  # every cell at one point: keep them there rather than divide by ~0
        r = 1.0
    center = (lo + hi) / 2
    scale = 2.0 / r
    return (x - center) * scale, center, scale


# ------------------------------------------------------------------------------------- obs fields


def _obs_kind(s: pd.Series) -> str | None:
    if isinstance(s.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(s):
        return "category"
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_complex_dtype(s):
        return "continuous"
    if pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s):
        return "category"
    return None


def _labels(cats: pd.Index, key: str, layout: str) -> list:
    """Category labels as JSON values: text in the name layout (as cellucid 0.0.9), scalars in the index layout."""
    out = []
    for c in cats:
        v = c.item() if isinstance(c, np.generic) else c
        if layout == "name" or not isinstance(v, bool | int | float | str):
            v = str(v)
        elif isinstance(v, float) and not np.isfinite(v):
            raise DatasetError(
                f"obs[{key!r}] has a category {v!r}; categories must be finite numbers or text."
            )
        out.append(v)
    text = [repr(v) if not isinstance(v, str) else v for v in out]
    if len(set(map(str, out))) != len(out) and layout == "name":
        dup = pd.Index(text)[pd.Index(text).duplicated()]
        raise DatasetError(
            f"obs[{key!r}] has categories that read the same as text: {_show(dup)}. Rename them first."
        )
    return out


def _categorical(s: pd.Series, key: str, layout: str) -> tuple[list, np.ndarray]:
    cat = s if isinstance(s.dtype, pd.CategoricalDtype) else s.astype("category")
    return _labels(cat.cat.categories, key, layout), cat.cat.codes.to_numpy().astype(np.int64)


def resolve_obs(
    parts: AnnDataParts, obs_keys, layout: str, categorical_dtype: str
) -> tuple[list[ObsField], dict[str, str], dict[str, tuple[list, np.ndarray]], str]:
    """Choose and read the obs columns; returns fields, skipped columns (with why), categoricals, dtype."""
    explicit = obs_keys is not None
    if isinstance(obs_keys, str):
        obs_keys = [obs_keys]
    keys = list(parts.obs_columns) if obs_keys is None else list(obs_keys)
    if explicit:
        missing = [k for k in keys if k not in parts.obs_columns]
        if missing:
            raise InvalidParameterError(
                f"obs_keys= names {_show(missing)}, not columns of obs (obs has {_show(parts.obs_columns) or 'no columns'})."
            )
        dup = pd.Index(keys)[pd.Index(keys).duplicated()]
        if len(dup):
            raise InvalidParameterError(f"obs_keys= lists {_show(dup)} more than once.")
    skipped: dict[str, str] = {}
    fields: list[ObsField] = []
    cats: dict[str, tuple[list, np.ndarray]] = {}
    limit = 65534 if categorical_dtype != "uint8" else 254

    def refuse(key: str, why: str, fix: str) -> None:
        if explicit:
            raise DatasetError(f"obs[{key!r}] cannot be exported: {why}. {fix}")
        skipped[key] = why

    for key in keys:
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            refuse(str(key), "its column name is not a plain text name", "Rename the column.")
            continue
        s = parts.obs_column(key)
        if not explicit and len(s) and s.isna().all():
            skipped[key] = "every value is missing"  # nothing to colour by; asked for by name, it is exported
            continue
        kind = _obs_kind(s)
        if kind is None:
            refuse(
                key, f"its values ({s.dtype}) are neither numbers nor categories", "Convert the column first."
            )
            continue
        if kind == "continuous":
            values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            fields.append(ObsField(key, kind, len(fields), values=values.astype(np.float32)))
            continue
        labels, codes = _categorical(s, key, layout)
        if len(labels) > limit:
            refuse(
                key,
                f"it has {len(labels):,} categories, more than the {limit:,} the viewer's "
                f"{'uint8' if limit == 254 else 'uint16'} codes can hold",
                "Group rare categories (e.g. into 'other') or leave the column out of obs_keys."
                + (" obs_categorical_dtype='uint16' holds up to 65,534." if limit == 254 else ""),
            )
            continue
        cats[key] = (labels, codes)
        fields.append(ObsField(key, "category", len(fields), categories=labels))
    if categorical_dtype == "auto" and layout == "index":
        # The index layout declares one codes dtype for every field.
        categorical_dtype = "uint16" if any(len(c[0]) > 254 for c in cats.values()) else "uint8"
    for f in fields:
        if f.kind == "category":
            labels, codes = cats[f.key]
            dtype = categorical_dtype
            if dtype == "auto":
                dtype = "uint8" if len(labels) <= 254 else "uint16"
            out = np.full(len(codes), MARKER[8 if dtype == "uint8" else 16], dtype=np.dtype(dtype))
            out[codes >= 0] = codes[codes >= 0]
            f.codes = out
    return fields, skipped, cats, categorical_dtype


# --------------------------------------------------------------------------- per-category statistics


def _grouped(codes: np.ndarray, values: np.ndarray, n_groups: int):
    """Cells of valid codes sorted by (code, value); returns order, sorted codes, group starts and sizes."""
    valid = np.flatnonzero(codes >= 0)
    order = valid[np.lexsort((values[valid], codes[valid]))]
    sizes = np.bincount(codes[valid], minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return order, codes[order], starts, sizes


def _group_means(x: np.ndarray, codes: np.ndarray, sizes: np.ndarray, weights=None) -> np.ndarray:
    valid = codes >= 0
    c = codes[valid]
    w = np.ones(c.size) if weights is None else weights[valid].astype(np.float64)
    n = np.bincount(c, weights=w, minlength=len(sizes))
    sums = np.stack(
        [np.bincount(c, weights=x[valid, j] * w, minlength=len(sizes)) for j in range(x.shape[1])], 1
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / n[:, None]


def _distances(x: np.ndarray, codes: np.ndarray, means: np.ndarray) -> np.ndarray:
    d = np.full(len(codes), np.nan)
    valid = codes >= 0
    diff = x[valid] - means[codes[valid]]
    d[valid] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return d


def outlier_quantiles(
    latent: np.ndarray, codes: np.ndarray, n_categories: int, min_points: int
) -> np.ndarray:
    """Per cell: rank of its distance to its category's mean / category size (ties take the highest rank).

    NaN for missing codes and for categories with fewer than ``min_points`` cells.
    """
    sizes = np.bincount(codes[codes >= 0], minlength=n_categories)
    dist = _distances(latent, codes, _group_means(latent, codes, sizes))
    order, sc, starts, sizes = _grouped(codes, dist, n_categories)
    sd = dist[order]
    # The last position of each run of equal (code, distance) is the highest rank of those ties.
    last = np.ones(len(order), bool)
    last[:-1] = (sc[1:] != sc[:-1]) | (sd[1:] != sd[:-1])
    ends = np.flatnonzero(last)
    run_end = ends[np.searchsorted(ends, np.arange(len(order)))]
    rank = run_end - starts[sc] + 1
    out = np.full(len(codes), np.nan, np.float32)
    big = sizes[sc] >= min_points
    out[order[big]] = (rank[big] / sizes[sc[big]]).astype(np.float32)
    return out


def _group_quantile(sorted_values: np.ndarray, starts: np.ndarray, sizes: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(group, q)`` (linear method) of every non-empty group of a sorted array, vectorised."""
    n = sizes.astype(np.float64)
    # numpy's own arithmetic for its linear method, so that a distance equal to the threshold is treated the
    # same way (n * q - q is one ulp off (n - 1) * q for some sizes, and drops the cell at the threshold).
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    gamma = virtual - prev
    prev_i = np.clip(prev.astype(np.int64), 0, sizes - 1)
    next_i = np.clip(prev_i + 1, 0, sizes - 1)
    a = sorted_values[starts + prev_i]
    b = sorted_values[starts + next_i]
    diff = b - a
    return np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def centroids(
    points: np.ndarray, codes: np.ndarray, categories: list, quantile: float, min_points: int
) -> list[dict]:
    """Label positions: category mean, then the mean of the cells within the ``quantile`` distance of it."""
    k = len(categories)
    if k == 0:  # a column whose values are all missing has no category to label
        return []
    sizes = np.bincount(codes[codes >= 0], minlength=k)
    means = _group_means(points, codes, sizes)
    dist = _distances(points, codes, means)
    order, _, starts, sizes = _grouped(codes, dist, k)
    has = np.flatnonzero(sizes >= min_points)
    thr = np.full(k, np.inf)
    if has.size:
        thr[has] = _group_quantile(dist[order], starts[has], sizes[has], quantile)
    inlier = (codes >= 0) & (dist <= thr[np.maximum(codes, 0)])
    inlier_means = _group_means(points, codes, sizes, weights=inlier)
    n_in = np.bincount(codes[inlier], minlength=k)
    use_in = (sizes > min_points) & (n_in >= min_points)
    out = []
    for c in has:  # one JSON entry per category with enough cells
        pos = inlier_means[c] if use_in[c] else means[c]
        out.append(
            {
                "category": categories[c],
                "position": [float(v) for v in pos],
                "n_points": int(n_in[c] if use_in[c] else sizes[c]),
            }
        )
    return out


# ----------------------------------------------------------------------------------- connectivity


def edge_pairs(matrix, n_cells: int, key: str) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """Undirected edges of a graph: symmetrised (max weight), no self-loops, src < dst, sorted."""
    if getattr(matrix, "shape", None) != (n_cells, n_cells):
        raise DatasetError(
            f"obsp[{key!r}] has shape {getattr(matrix, 'shape', None)}, but a cell graph is {n_cells} x {n_cells}."
        )
    # A copy: sum_duplicates and eliminate_zeros work in place, and scipy shares a float64 CSR's arrays.
    a = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    a.sum_duplicates()
    if not np.isfinite(a.data).all() or (a.data < 0).any():
        raise DatasetError(
            f"obsp[{key!r}] has negative or non-finite weights; the viewer draws edges with weights above 0. "
            "Pass connectivities= another graph (e.g. the one sc.pp.neighbors writes) or connectivities=None."
        )
    a.eliminate_zeros()
    # A kNN graph is directed; the viewer draws each undirected edge once, with the stronger weight.
    upper = sp.triu(a.maximum(a.T), k=1).tocoo()
    order = np.lexsort((upper.col, upper.row))
    src, dst, w = upper.row[order].astype(np.int64), upper.col[order].astype(np.int64), upper.data[order]
    degree = np.bincount(src, minlength=n_cells) + np.bincount(dst, minlength=n_cells)
    return (src, dst, w.astype("<f8")), int(degree.max()) if len(src) else 0


def index_dtype(n_cells: int) -> np.dtype:
    """uint16 while every cell index fits, then uint32, then uint64."""
    if n_cells <= 65535:
        return np.dtype("<u2")
    return np.dtype("<u4") if n_cells <= 2**32 - 1 else np.dtype("<u8")


# ---------------------------------------------------------------------------------- vector fields


def _vector_candidates(parts: AnnDataParts, embeddings: dict[int, str]) -> dict[str, tuple[str, int, str]]:
    """Obsm keys such as ``velocity_umap`` aligned with an exported ``X_umap``: key -> (field id, dim, basis)."""
    out = {}
    for dim, ekey in embeddings.items():
        basis = ekey.removeprefix("X_")  # scanpy's X_umap; squidpy's spatial has no prefix
        base = re.sub(r"_[123]d$", "", basis)
        for key, shape in parts.obsm_shapes.items():
            if key.startswith("X_") or _embedding_dim(shape, parts.n_obs) != dim:
                continue
            for b in {basis, base}:
                if key.endswith("_" + b) or key.endswith(f"_{b}_{dim}d"):
                    out[key] = (re.sub(r"_[123]d$", "", key), dim, base)
    return out


def resolve_vectors(parts: AnnDataParts, vector_fields, embeddings: dict[int, str], scales: dict[int, float]):
    """Vector fields scaled like their embedding's points; returns (fields, basis, skipped notes)."""
    if vector_fields is False or not embeddings:
        if vector_fields not in (None, False, [], ()):
            raise InvalidParameterError(
                "vector_fields= needs an exported embedding to align with; there is none."
            )
        return {}, {}, []
    cands = _vector_candidates(parts, embeddings)
    explicit = vector_fields is not None
    keys = (
        sorted(cands)
        if not explicit
        else ([vector_fields] if isinstance(vector_fields, str) else list(vector_fields))
    )
    notes: list[str] = []
    fields: dict[str, dict[int, np.ndarray]] = {}
    basis: dict[str, str] = {}
    for key in keys:
        if key not in parts.obsm_shapes:
            raise InvalidParameterError(
                f"vector_fields= names obsm[{key!r}], which does not exist (obsm has "
                f"{_show(parts.obsm_shapes) or 'nothing'}). Candidates: {_show(cands) or 'none'}."
            )
        if key not in cands:
            raise InvalidParameterError(
                f"vector_fields= names obsm[{key!r}], which is not a vector field aligned with an exported "
                f"embedding ({', '.join(f'{d}-D: {k}' for d, k in embeddings.items())}); it must be named like "
                "'velocity_umap' and have as many columns as that embedding. Candidates: "
                f"{_show(cands) or 'none'}."
            )
        fid, dim, b = cands[key]
        arr = np.asarray(parts.obsm(key))
        arr = np.asarray(arr.toarray() if sp.issparse(arr) else arr, dtype=np.float64).reshape(
            parts.n_obs, dim
        )
        if not np.isfinite(arr).all():
            why = f"obsm[{key!r}] has NaN or Inf in {plural(int((~np.isfinite(arr)).any(1).sum()), 'cell')}"
            if explicit:
                raise DatasetError(
                    f"{why}; the viewer needs a finite vector for every cell. Fill them (e.g. with 0)."
                )
            notes.append(f"{why}: vector field not exported")
            continue
        if dim in fields.get(fid, {}):
            raise InvalidParameterError(
                f"Two obsm entries give the {dim}-D vectors of {fid!r}; choose one with vector_fields=."
            )
        fields.setdefault(fid, {})[dim] = (arr * scales[dim]).astype("<f4")
        basis[fid] = b
    return dict(sorted(fields.items())), basis, notes


# ----------------------------------------------------------------------------------------- entry


def _check_quantile(q, min_points) -> None:
    if isinstance(q, bool) or not isinstance(q, float | int) or not 0.5 < q < 1:
        raise InvalidParameterError(
            f"centroid_outlier_quantile must be a number strictly between 0.5 and 1 (default 0.95), got {q!r}."
        )
    if isinstance(min_points, bool) or not isinstance(min_points, int | np.integer) or min_points < 1:
        raise InvalidParameterError(
            f"centroid_min_points must be a positive integer (default 10), got {min_points!r}."
        )


def resolve_dataset(
    parts: AnnDataParts,
    *,
    layout: str,
    target: Path,
    dataset_name=None,
    dataset_id=None,
    description=None,
    source=None,
    created_at=None,
    embeddings=None,
    obs_keys=None,
    latent_key="X_pca",
    connectivities="connectivities",
    vector_fields=None,
    obs_continuous_quantization=None,
    obs_categorical_dtype="auto",
    centroid_outlier_quantile=0.95,
    centroid_min_points=10,
) -> DatasetPlan:
    """Validate and compute everything but the genes; raises before anything is written."""
    obs_continuous_quantization = check_bits(obs_continuous_quantization, "obs_continuous_quantization")
    if obs_categorical_dtype not in ("auto", "uint8", "uint16"):
        raise InvalidParameterError(
            f"obs_categorical_dtype must be 'auto', 'uint8' or 'uint16', got {obs_categorical_dtype!r}."
        )
    _check_quantile(centroid_outlier_quantile, centroid_min_points)
    name = target.name if dataset_name is None else dataset_name
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterError(f"dataset_name must be non-empty text, got {dataset_name!r}.")
    name = name.strip()
    if dataset_id is None:
        # The viewer finds a dataset in the folder named like its id: a folder name that is a valid id is kept
        # as it is (case included), so the folder fits a catalog as exported.
        folder_fits = dataset_name is None and _valid_id(name)
        dataset_id = name if folder_fits else default_dataset_id(name)
    dataset_id = _check_dataset_id(dataset_id)
    if description is not None and not isinstance(description, str):
        raise InvalidParameterError(f"description must be text, got {description!r}.")
    n = parts.n_obs

    # True reads as "yes, the usual ones": the automatic choice.
    embeddings = None if embeddings is True else embeddings
    vector_fields = None if vector_fields is True else vector_fields
    chosen, notes = choose_embeddings(parts, embeddings)
    points: dict[int, np.ndarray] = {}
    normalised: dict[int, np.ndarray] = {}
    scales: dict[int, float] = {}
    for dim, key in chosen.items():
        x = _finite_matrix(
            parts.obsm(key),
            f"obsm[{key!r}]",
            "The viewer needs a position for every cell: recompute the embedding, drop those cells "
            f"(adata = adata[np.isfinite(adata.obsm[{key!r}]).all(1)]), or choose another with embeddings=.",
        )
        normalised[dim], _, scales[dim] = normalise_points(x)
        points[dim] = normalised[dim].astype("<f4")

    if not chosen:
        # Without points there is nothing to draw: only genes are written, and the cell options have nothing
        # to apply to. Turning the embedding off while setting them is a contradiction worth naming.
        ignored = [
            name
            for name, value, default in (
                ("obs_keys", obs_keys, None),
                ("vector_fields", vector_fields, None),
                ("connectivities", connectivities, "connectivities"),
                ("latent_key", latent_key, "X_pca"),
            )
            # None, False or an empty list turns an option off, which agrees with exporting genes only.
            if value is not None and value is not False and value != [] and value != default
        ]
        if embeddings is False and ignored:
            raise InvalidParameterError(
                f"embeddings=False exports genes only, so {', '.join(f'{k}=' for k in ignored)} would be ignored. "
                "Leave out embeddings=False to export a viewer-ready dataset, or leave out "
                f"{', '.join(f'{k}=' for k in ignored)} to export genes only."
            )
        return DatasetPlan(
            n, {}, {}, [], {}, obs_categorical_dtype, None, None, 0, None, {}, {}, None, dataset_id, name,
            description or "", _source(source), _created_at(created_at), obs_continuous_quantization,
            float(centroid_outlier_quantile), notes,
        )  # fmt: skip

    fields, skipped, cats, cat_dtype = resolve_obs(parts, obs_keys, layout, obs_categorical_dtype)
    if layout == "name":
        problems = name_layout_problems([f.key for f in fields], "obs", ".*")
        if problems:
            raise DatasetError(
                "Some obs columns cannot be used as file names in layout='name':\n  - "
                + "\n  - ".join(problems)
                + "\nRename those columns, leave them out with obs_keys=, or pass layout='index'."
            )

    latent_used = None
    if cats:
        if latent_key in parts.obsm_shapes:
            latent_used = latent_key
        elif latent_key == "X_pca":
            latent_used = chosen[max(chosen)]
            notes.append(
                f"obsm['X_pca'] not found: outlier quantiles are measured in obsm[{latent_used!r}] instead "
                "(pass latent_key= to choose another space)"
            )
        else:
            raise InvalidParameterError(
                f"latent_key={latent_key!r} is not in obsm (obsm has {_show(parts.obsm_shapes)}). It is the space "
                "in which each cell's distance to its category is measured; 'X_pca' is the usual one."
            )
        latent = _finite_matrix(
            parts.obsm(latent_used),
            f"obsm[{latent_used!r}]",
            "Fill or drop those cells, or pass latent_key= another space (e.g. 'X_umap'), or obs_keys= without "
            "categorical columns.",
        )
        if latent.shape[0] != n:
            raise DatasetError(f"obsm[{latent_used!r}] has {latent.shape[0]} rows but there are {n} cells.")
        for f in fields:
            if f.kind == "category":
                labels, codes = cats[f.key]
                f.outliers = outlier_quantiles(latent, codes, len(labels), centroid_min_points)
                f.centroids = {
                    str(d): centroids(
                        normalised[d], codes, labels, centroid_outlier_quantile, centroid_min_points
                    )
                    for d in sorted(normalised)
                }

    edges, max_neighbors, graph_key = None, 0, None
    if connectivities not in (None, False):
        if not isinstance(connectivities, str):
            raise InvalidParameterError(
                f"connectivities must be the name of an obsp graph or None, got {connectivities!r}."
            )
        if connectivities in parts.obsp_keys:
            graph_key = connectivities
            edges, max_neighbors = edge_pairs(parts.obsp(connectivities), n, connectivities)
        elif connectivities != "connectivities":
            raise InvalidParameterError(
                f"connectivities={connectivities!r} is not in obsp (obsp has {_show(parts.obsp_keys) or 'nothing'})."
            )

    vectors, vector_basis, vnotes = resolve_vectors(parts, vector_fields, chosen, scales)
    notes += vnotes
    default_vector = None
    if vectors:
        default_vector = next((f for f in vectors if f.startswith("velocity")), next(iter(vectors)))
        if layout == "name":
            problems = name_layout_problems(list(vectors), "vectors", "_*d.bin")
            if problems:
                raise DatasetError(
                    "Vector field names collide as file names:\n  - "
                    + "\n  - ".join(problems)
                    + "\nRename one of those obsm entries, or pass layout='index' (files numbered)."
                )
    return DatasetPlan(
        n_cells=n,
        embeddings=chosen,
        points=points,
        obs_fields=fields,
        skipped_obs=skipped,
        categorical_dtype=cat_dtype,
        latent_key=latent_used,
        edges=edges,
        max_neighbors=max_neighbors,
        connectivity_key=graph_key,
        vectors=vectors,
        vector_basis=vector_basis,
        default_vector_field=default_vector,
        dataset_id=dataset_id,
        dataset_name=name,
        description=description or "",
        source=_source(source),
        created_at=_created_at(created_at),
        obs_continuous_quantization=obs_continuous_quantization,
        centroid_outlier_quantile=float(centroid_outlier_quantile),
        notes=notes,
    )


# ------------------------------------------------------------------------------------------ write


class _Writer:
    """Writes little-endian payloads, gzip-compressed when asked, and counts the bytes."""

    def __init__(self, folder: Path, compression: int | None):
        self.folder, self.compression = folder, compression
        self.codec = get_codec(int(compression)) if compression else None
        self.bytes = 0

    def path(self, rel: str) -> str:
        """``rel`` with ``.gz`` when compressing (the viewer decides by the suffix)."""
        return rel + (".gz" if self.compression else "")

    def array(self, rel: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        data = memoryview(arr).cast("B")
        out = self.codec.encode(data) if self.codec else data
        rel = self.path(rel)
        dest = self.folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(out)
        self.bytes += len(out) if self.codec else data.nbytes
        return rel


def _quantized(values: np.ndarray, bits: int | None, layout: str):
    """(payload, bounds) of one continuous vector, quantized like a gene."""
    if bits is None:
        return values.astype("<f4"), []
    qb = quantize_block(values[:, None], bits, constant_plus_one=layout == "name")
    return qb.payload[0], [float(qb.lo[0]), float(qb.hi[0])]


def obs_manifest(plan: DatasetPlan, w: _Writer, layout: str) -> dict:
    """Write ``obs/`` and return ``obs_manifest.json`` (continuous fields first, then categorical)."""
    bits = plan.obs_continuous_quantization
    ext, dtype = PAYLOAD_KINDS[bits]
    key = "{key}" if layout == "name" else "{index}"
    gz = ".gz" if w.compression else ""
    cont, cat = [], []
    for f in plan.obs_fields:
        stem = f"obs/{safe_name(f.key) if layout == 'name' else f.index}"
        prefix = [f.key] if layout == "name" else [f.index, f.key]
        if f.kind == "continuous":
            payload, bounds = _quantized(f.values, bits, layout)
            w.array(f"{stem}.values.{ext}", payload)
            cont.append(prefix + bounds)
        else:
            codes_ext = "u8" if f.codes.dtype == np.uint8 else "u16"
            w.array(f"{stem}.codes.{codes_ext}", f.codes)
            payload, bounds = _quantized(f.outliers, bits, layout)
            w.array(f"{stem}.outliers.{ext}", payload)
            marker = MARKER[8 if codes_ext == "u8" else 16]
            cat.append([*prefix, f.categories, str(f.codes.dtype), marker, f.centroids, *bounds])
    schemas: dict = {}
    if cont:
        schemas["continuous"] = values_schema("obs", key, bits, w.compression, with_kind=False)
    if cat:
        # Keys as the reference writers name them; the viewer substitutes {ext} per field.
        schemas["categorical"] = {
            "codesPathPattern": f"obs/{key}.codes.{{ext}}{gz}",
            "outlierPathPattern": f"obs/{key}.outliers.{ext}{gz}",
            "outlierExt": ext,
            "outlierDtype": dtype,
            "outlierQuantized": bits is not None,
        }
    return {
        "_format": "compact_v1",
        "n_points": plan.n_cells,
        "centroid_outlier_quantile": plan.centroid_outlier_quantile,
        "latent_key": "latent_space",
        "compression": w.compression,
        "_obsSchemas": schemas,
        "_continuousFields": cont,
        "_categoricalFields": cat,
    }


def identity(plan: DatasetPlan, *, layout, n_genes, compression, var_quantization, vector_files) -> dict:
    """``dataset_identity.json``: the keys and order the format specifies."""
    ordered = [f for f in plan.obs_fields if f.kind == "continuous"] + [
        f for f in plan.obs_fields if f.kind == "category"
    ]
    obs_fields = [
        {"key": f.key, "kind": f.kind} | ({"n_categories": len(f.categories)} if f.kind == "category" else {})
        for f in ordered
    ]
    dims = sorted(plan.points)
    out = {
        "version": 2,
        "id": plan.dataset_id,
        "name": plan.dataset_name,
        "description": plan.description,
        "created_at": plan.created_at,
        "cellucid_data_version": DATA_VERSION[layout],
        "stats": {
            "n_cells": plan.n_cells,
            "n_genes": n_genes,
            "n_obs_fields": len(ordered),
            "n_categorical_fields": sum(f.kind == "category" for f in ordered),
            "n_continuous_fields": sum(f.kind == "continuous" for f in ordered),
            "has_connectivity": plan.edges is not None,
            "n_edges": plan.n_edges,
        },
        "embeddings": {
            "available_dimensions": dims,
            "default_dimension": max(dims),
            "files": {f"{d}d": f"points_{d}d.bin" + (".gz" if compression else "") for d in dims},
        },
        "obs_fields": obs_fields,
        "export_settings": {
            "compression": compression,
            "var_quantization": var_quantization,
            "obs_continuous_quantization": plan.obs_continuous_quantization,
            "obs_categorical_dtype": plan.categorical_dtype,
        },
    }
    if plan.source:
        out["source"] = plan.source
    if vector_files:
        out["vector_fields"] = {
            "default_field": plan.default_vector_field,
            "fields": {
                fid: {
                    "label": fid,
                    "available_dimensions": sorted(files_by_dim),
                    "default_dimension": max(files_by_dim),
                    "files": {f"{d}d": p for d, p in sorted(files_by_dim.items())},
                    "basis": plan.vector_basis[fid],
                }
                for fid, files_by_dim in vector_files.items()
            },
        }
    return out


def file_sizes(plan: DatasetPlan) -> list[int]:
    """Bytes of each file :func:`write_dataset` writes, before compression (manifests approximated).

    For the disk check: cell data grows with the cells and the obs columns, and with many columns or a
    large graph it can outweigh a small gene export.
    """
    if not plan.viewer_ready:
        return []
    n = plan.n_cells
    value_bytes = np.dtype(PAYLOAD_KINDS[plan.obs_continuous_quantization][1]).itemsize * n
    sizes = [pts.nbytes for pts in plan.points.values()]
    manifest = 4096
    for f in plan.obs_fields:
        sizes += [value_bytes] if f.kind == "continuous" else [f.codes.nbytes, value_bytes]
        manifest += (
            256 + len(json.dumps(f.categories, default=str)) + len(json.dumps(f.centroids, default=str))
        )
    if plan.edges is not None:
        n_edges = len(plan.edges[0])
        sizes += [n_edges * index_dtype(n).itemsize] * 2 + [n_edges * 8, 4096]
    sizes += [v.nbytes for by_dim in plan.vectors.values() for v in by_dim.values()]
    return [*sizes, manifest, 4096]  # obs_manifest.json, dataset_identity.json


def write_dataset(
    folder: Path, plan: DatasetPlan, *, layout: str, n_genes: int, compression, var_quantization
) -> tuple[int, dict | None]:
    """Write points, obs, connectivity, vectors and the identity into ``folder``; returns (bytes, identity)."""
    if not plan.viewer_ready:
        return 0, None
    w = _Writer(folder, compression)
    (folder / "obs").mkdir(exist_ok=True)
    for dim, pts in plan.points.items():
        w.array(f"points_{dim}d.bin", pts)
    # obs_manifest() writes the obs files and counts them in w.bytes: call it before adding to w.bytes
    # (``w.bytes += write_json(..., obs_manifest(...))`` would read w.bytes first and drop them).
    manifest = obs_manifest(plan, w, layout)
    w.bytes += write_json(folder / "obs_manifest.json", manifest)
    if plan.edges is not None:
        src, dst, weights = plan.edges
        idx = index_dtype(plan.n_cells)
        manifest = {
            "format": "edge_pairs",
            "n_cells": plan.n_cells,
            "n_edges": len(src),
            "max_neighbors": plan.max_neighbors,
            "index_bytes": idx.itemsize,
            "index_dtype": idx.name,
            "sourcesPath": w.array("connectivity/edges.src.bin", src.astype(idx)),
            "destinationsPath": w.array("connectivity/edges.dst.bin", dst.astype(idx)),
            "compression": compression,
            "weightsPath": w.array("connectivity/edges.weights.f64.bin", weights),
            "weight_dtype": "float64",
            "weight_bytes": 8,
        }
        w.bytes += write_json(folder / "connectivity_manifest.json", manifest)
    vector_files: dict[str, dict[int, str]] = {}
    for i, (fid, by_dim) in enumerate(plan.vectors.items()):
        stem = safe_name(fid) if layout == "name" else str(i)
        vector_files[fid] = {d: w.array(f"vectors/{stem}_{d}d.bin", v) for d, v in by_dim.items()}
    ident = identity(
        plan,
        layout=layout,
        n_genes=n_genes,
        compression=compression,
        var_quantization=var_quantization,
        vector_files=vector_files,
    )
    w.bytes += write_json(folder / "dataset_identity.json", ident, indent=2)
    return w.bytes, ident


def log_plan(plan: DatasetPlan) -> None:
    """Tell the user what the dataset holds, what was left out and why."""
    if not plan.viewer_ready:
        return
    emb = ", ".join(f"{d}-D obsm[{k!r}]" for d, k in plan.embeddings.items())
    cont = sum(f.kind == "continuous" for f in plan.obs_fields)
    logger.info(
        f"dataset {plan.dataset_id!r}: {emb}; {len(plan.obs_fields)} obs fields ({cont} continuous, "
        f"{len(plan.obs_fields) - cont} categorical"
        # The categories' outlier scores are distances in this space: say which, as it can be chosen.
        + (
            f", outliers in obsm[{plan.latent_key!r}]"
            if plan.latent_key and cont < len(plan.obs_fields)
            else ""
        )
        + ")"
        + (
            f"; {plan.n_edges:,} graph edges from obsp[{plan.connectivity_key!r}]"
            if plan.edges is not None
            else ""
        )
        + (f"; vector fields {', '.join(plan.vectors)}" if plan.vectors else "")
        + "."
    )
    for key, why in plan.skipped_obs.items():
        logger.info(f"obs[{key!r}] not exported: {why} (pass obs_keys= to choose the columns).")
    for note in plan.notes:
        logger.info(note + ".")
