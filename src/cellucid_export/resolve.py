"""Resolve the user's inputs: which matrix, which genes, which ids, and check them.

(The cell-data options, embeddings, obs columns and the graph, are checked in :mod:`cellucid_export.dataset`.)

Everything is checked before a single file is written: a bad argument costs the user a message,
never a half-written export.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._logging import warn
from .errors import (
    CellucidExportError,
    DuplicateGeneError,
    GeneIdCollisionError,
    InvalidGeneIdError,
    InvalidParameterError,
    MatrixChoiceError,
    OrientationError,
    UnknownGeneError,
    closest,
)
from .plan import plural
from .sources import GeneBlockSource, open_source

__all__ = ["AnnDataParts", "Selection", "check_options", "resolve", "safe_name"]

#: Layer names that by convention hold log-normalised expression, in order of preference.
LOG_LAYER_NAMES = (
    "log1p",
    "lognorm",
    "log_norm",
    "lognormalized",
    "log_normalized",
    "logcounts",
    "log1p_norm",
    "log_normalised",
    "lognormalised",
    "normalized",
    "normalised",
    "norm",
    "data",
)
#: Cells read to guess what a matrix holds.
SAMPLE_CELLS = 500
_WINDOWS_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(1, 10)),
    *(f"LPT{i}" for i in range(1, 10)),
}
_BARCODE = re.compile(r"[ACGTN]{8,}")


def _show(items: Sequence, n: int = 10) -> str:
    items = list(items)
    shown = ", ".join(repr(str(x)) for x in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


# --------------------------------------------------------------------------------------- options


def _as_int(value):
    """``value`` as a plain int when it is a numpy integer, else as it is.

    numpy integers (``np.int64(8)``, from a loop over an array) then reach the manifests as ints; a float such
    as ``8.0`` stays a float, which the checks refuse.
    """
    return int(value) if isinstance(value, np.integer) else value


def check_bits(value, name: str, why: str = "") -> int | None:
    """Validate a bit depth (``8``, ``16`` or ``None`` for float32) and return it as a plain int."""
    value = _as_int(value)
    if value not in (8, 16, None) or isinstance(value, bool | float):
        raise InvalidParameterError(f"{name} must be 8, 16 or None (float32), got {value!r}.{why}")
    return value


def check_options(var_quantization, compression, layout) -> tuple[int | None, int | None]:
    """Validate the format options (raises :class:`InvalidParameterError`); returns them as plain ints."""
    var_quantization = check_bits(
        var_quantization,
        "var_quantization",
        " 8-bit is the smallest and what the viewer needs for colouring; 16-bit keeps more precision.",
    )
    compression = _as_int(compression)
    if compression is not None and (
        isinstance(compression, bool)
        or not isinstance(compression, int | np.integer)
        or not 1 <= compression <= 9
    ):
        raise InvalidParameterError(
            f"compression must be None (no gzip) or a gzip level from 1 (fastest) to 9 (smallest), "
            f"got {compression!r}. The default, 6, is a good balance."
        )
    if layout not in ("name", "index"):
        raise InvalidParameterError(
            f"layout must be 'name' (files named by gene, var/CD79A.values.u8.gz) or 'index' (files "
            f"numbered, what current Cellucid viewer releases read), got {layout!r}."
        )
    return var_quantization, compression


# ----------------------------------------------------------------------------------- containers


@dataclass
class AnnDataParts:
    """What the resolver needs from an AnnData, or from an .h5ad file opened without loading it.

    Matrices are given as zero-argument callables so that only the chosen one is ever opened.
    """

    obs_names: pd.Index
    var: pd.DataFrame
    X: Callable[[], object] | None
    layers: Mapping[str, Callable[[], object]]
    raw_var: pd.DataFrame | None = None
    raw_X: Callable[[], object] | None = None
    #: Cell subset applied when opening a matrix (backed views); None for all cells.
    obs_idx: object = None
    #: Maps var positions to matrix columns for X and layers (backed views); None for identity.
    var_idx: np.ndarray | None = None
    #: Cell metadata, read one column at a time and only when exported.
    obs_columns: Sequence[str] = ()
    obs_column: Callable[[str], pd.Series] | None = None
    #: Shapes of the obsm entries (cheap), and a reader for one entry (cells of a view already applied).
    obsm_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    obsm: Callable[[str], object] | None = None
    #: Names of the obsp graphs, and a reader for one of them.
    obsp_keys: Sequence[str] = ()
    obsp: Callable[[str], object] | None = None

    @property
    def n_obs(self) -> int:
        """Number of cells."""
        return len(self.obs_names)


@dataclass
class Selection:
    """The resolved export: the reader, the genes (in export order) and their ids.

    ``source`` is None for an export without genes (``genes=[]``): only the cell data is written.
    """

    source: GeneBlockSource | None
    source_name: str
    reason: str
    gene_idx: np.ndarray
    gene_ids: list[str]
    gene_id_column: str | None
    n_cells: int
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- matrix choice


def _describe(sample: np.ndarray) -> tuple[str, str]:
    """Classify a sample of a matrix: (kind, sentence).

    Kind is 'log', 'scaled', 'counts', 'mixed' (some cells counts), 'linear' (normalised, not logged), 'sqrt'
    or 'empty'.
    """
    finite = sample[np.isfinite(sample)]
    if finite.size == 0 or not finite.any():
        return "empty", "holds only zeros or missing values in the cells sampled"
    lo, hi = float(finite.min()), float(finite.max())
    if lo < 0:
        return (
            "scaled",
            f"has negative values (min {lo:.3g}): it looks scaled or centred, e.g. by sc.pp.scale",
        )
    if np.array_equal(finite, np.round(finite)):
        return "counts", f"holds only whole numbers (max {hi:.0f}): it looks like raw counts"
    # sc.pp.normalize_total makes every cell sum to the same total; log1p undoes that. The maximum alone
    # misses it in a small panel, where normalised values stay low (and cells with the median total
    # keep whole numbers).
    clean = np.where(np.isfinite(sample), sample, 0)
    sums = clean.sum(axis=1, dtype=np.float64)
    sums = sums[sums > 0]
    if len(sums) >= 20 and np.ptp(sums) <= 1e-3 * sums.mean():
        return (
            "linear",
            f"is normalised but not log-transformed (every cell sampled sums to {sums.mean():.4g}, as after "
            "sc.pp.normalize_total); sc.pp.log1p would fix that",
        )
    # Cells of counts among non-integer ones: batches concatenated at different stages. A count row holds
    # ones and several distinct whole numbers; a normalised cell with very few counts can be whole numbers
    # too (two counts of 1 become 5000 and 5000), but not those.
    expressed = clean.any(axis=1)
    whole = expressed & (clean == np.round(clean)).all(axis=1) & (clean == 1).any(axis=1)
    whole[whole] = [len(np.unique(row[row != 0])) >= 3 for row in clean[whole]]
    if whole.sum() >= 2:
        return (
            "mixed",
            f"mixes cells of whole numbers ({int(whole.sum())} of {int(expressed.sum())} cells sampled) with "
            "non-integer ones: raw counts in some cells (batches concatenated at different stages?), or "
            "normalised values not log-transformed",
        )
    n, linear, squares = _per_cell_multiples(clean)
    if n >= 20 and linear >= n / 2:
        return (
            "linear",
            f"is normalised but not log-transformed (in {linear} of {n} cells sampled, every value is a whole "
            "multiple of the cell's smallest: counts divided by a per-cell factor); sc.pp.log1p would fix that",
        )
    if n >= 20 and squares >= n / 2:
        return (
            "sqrt",
            f"looks square-root transformed, not log-normalised (in {squares} of {n} cells sampled, the squared "
            "values are whole multiples of the cell's smallest)",
        )
    if hi > 50:
        return (
            "linear",
            f"is not log-transformed (max {hi:.3g}): normalised values need sc.pp.log1p, fractional counts "
            "sc.pp.normalize_total first",
        )
    return "log", f"looks log-normalised (non-negative, non-integer, max {hi:.3g})"


def _scaled_without_centring(sample: np.ndarray, var: pd.DataFrame) -> bool:
    """Whether X was scaled by ``sc.pp.scale(zero_center=False)``, which leaves no negative value.

    scale records each gene's standard deviation before scaling in ``var['std']`` and divides by it. So the
    genes of a scaled X have a standard deviation near 1, while an X left as it was (the scaled copy is a
    layer, ``sc.pp.scale(adata, layer=...)``) keeps the deviations var['std'] recorded. Which of the two the
    sample is nearer to decides; genes whose recorded deviation is itself near 1 cannot tell them apart.
    """
    if not {"mean", "std"} <= set(var.columns) or sample.shape[0] < 20 or sample.shape[1] != len(var):
        return False
    before = pd.to_numeric(var["std"], errors="coerce").to_numpy(np.float64)
    clean = np.where(np.isfinite(sample), sample, 0.0).astype(np.float64)
    now = clean.std(axis=0)
    ok = (
        (now > 0)
        & np.isfinite(before)
        & (before > 0)
        & (np.abs(np.log(np.where(before > 0, before, 1))) > 0.2)
    )
    if ok.sum() < 10:
        return False
    to_unit = np.median(np.abs(np.log(now[ok])))
    to_recorded = np.median(np.abs(np.log(now[ok] / before[ok])))
    return bool(to_unit < to_recorded)


def _per_cell_multiples(clean: np.ndarray) -> tuple[int, int, int]:
    """(cells with 3+ distinct values, cells whose values are whole multiples of their smallest, same for squares).

    Counts divided by a per-cell factor (normalize_total, size factors, cell area) are whole multiples of the
    cell's smallest value (one count); so are the squares of square-rooted ones. log1p values are not.
    """
    n = linear = squares = 0
    for row in clean:
        v = np.unique(row[row > 0]).astype(np.float64)
        if len(v) < 3:
            continue
        n += 1
        r = v / v[0]
        linear += bool(np.all(np.abs(r - np.round(r)) <= 1e-3 * r))
        r2 = r * r
        squares += bool(np.all(np.abs(r2 - np.round(r2)) <= 1e-3 * r2))
    return n, linear, squares


@dataclass
class _Candidate:
    name: str
    open: Callable[[], GeneBlockSource]
    var: pd.DataFrame
    is_raw: bool


def _candidates(parts: AnnDataParts) -> dict[str, _Candidate]:
    out: dict[str, _Candidate] = {}

    def opener(get):
        return lambda: open_source(get(), parts.obs_idx)

    if parts.X is not None:
        out["X"] = _Candidate("X", opener(parts.X), parts.var, False)
    if parts.raw_X is not None:
        out["raw"] = _Candidate("raw.X", opener(parts.raw_X), parts.raw_var, True)
    for name, get in parts.layers.items():
        out[f"layers/{name}"] = _Candidate(f"layers[{name!r}]", opener(get), parts.var, False)
    return out


def _pick_matrix(parts: AnnDataParts, layer: str | None) -> tuple[_Candidate, GeneBlockSource, str]:
    cands = _candidates(parts)
    if not cands:
        raise MatrixChoiceError(
            "This AnnData holds no expression matrix: adata.X is None, and there is no adata.raw and no "
            "layer. Export from the AnnData that holds the expression values, or set adata.X (or a layer) first."
        )
    if layer is not None:
        if not isinstance(layer, str):
            raise InvalidParameterError(
                f"layer must be a string such as 'log1p', 'X' or 'raw', got {layer!r}."
            )
        key = "X" if layer == "X" else "raw" if layer == "raw" else f"layers/{layer}"
        if key not in cands and f"layers/{layer}" in cands:
            key = f"layers/{layer}"  # a layer named 'raw' (or 'X') where there is no adata.raw (or X)
        if key not in cands:
            have = ["'X'"] * ("X" in cands) + ["'raw' (adata.raw)"] * ("raw" in cands)
            if parts.layers:
                have.append(f"the layer{'s' * (len(parts.layers) > 1)} {_show(list(parts.layers))}")
            raise MatrixChoiceError(
                f"There is no {'adata.raw' if key == 'raw' else 'adata.X' if key == 'X' else f'layer {layer!r}'} "
                f"to export. Available: {', '.join(have)}. Pass one of them as layer=."
            )
        c = cands[key]
        return c, c.open(), f"{c.name} was requested (layer={layer!r})"

    opened: dict[str, GeneBlockSource] = {}
    looks: dict[str, tuple[str, str]] = {}
    samples: dict[str, np.ndarray] = {}

    def judge(key: str) -> str:
        if key not in looks:
            try:
                opened[key] = cands[key].open()
                samples[key] = opened[key].sample_rows(SAMPLE_CELLS)
                looks[key] = _describe(samples[key])
            except CellucidExportError:
                raise  # already explained (a closed file, a matrix of another type)
            except (TypeError, ValueError, OSError, KeyError) as e:
                looks[key] = ("unreadable", f"cannot be read ({e})")
        return looks[key][0]

    def chosen(key: str, why: str):
        return cands[key], opened[key], why

    if "X" in cands and judge("X") == "log":
        if not _scaled_without_centring(samples["X"], cands["X"].var):
            return chosen("X", f"X {looks['X'][1]}")
        # sc.pp.scale(zero_center=False) leaves no negative value: X is treated as scaled from here on.
        looks["X"] = (
            "scaled",
            "looks scaled by sc.pp.scale(zero_center=False): var has the 'mean' and 'std' columns it adds, and "
            "X's genes have the unit variance it gives (pass layer='X' to export X anyway)",
        )
    if "X" in cands and "raw" in cands and looks["X"][0] == "scaled" and judge("raw") == "log":
        return chosen("raw", f"X {looks['X'][1]}, while raw.X {looks['raw'][1]}")
    layer_keys = {k.split("/", 1)[1].lower(): k for k in cands if k.startswith("layers/")}
    for conventional in LOG_LAYER_NAMES:
        key = layer_keys.get(conventional)
        if key and judge(key) == "log":
            x_note = f"X {looks['X'][1]}; " if "X" in looks else ""
            return chosen(key, f"{x_note}{cands[key].name} {looks[key][1]}")
    if "raw" in cands and judge("raw") == "log":
        return chosen("raw", f"X {looks.get('X', ('', 'is missing'))[1]}, while raw.X {looks['raw'][1]}")

    for key in cands:
        judge(key)
    problems = "\n".join(f"  - {cands[k].name} {looks[k][1]}" for k in cands)
    logged = [k for k in cands if looks[k][0] == "log"]
    counts = [k for k in cands if looks[k][0] == "counts"]
    if logged:  # a log matrix under a name the automatic choice does not look for
        example = f" (here layer={_layer_arg(logged[0])!r}, which looks log-normalised)"
    elif counts:
        example = f" (e.g. layer={_layer_arg(counts[0])!r} to export those counts anyway)"
    else:
        example = ""
    if any(looks[k][0] == "linear" for k in cands):
        fix = "or log-transform the normalised values first: sc.pp.log1p(adata)."
    else:
        fix = "or normalise first: sc.pp.normalize_total(adata); sc.pp.log1p(adata)."
    raise MatrixChoiceError(
        "Could not choose a log-normalised expression matrix to export automatically:\n"
        f"{problems}\nPass layer= to choose one explicitly{example}, {fix}"
    )


def _layer_arg(key: str) -> str:
    """The ``layer=`` value that picks a candidate ('X', 'raw' or the layer's name)."""
    return key.split("/", 1)[1] if key.startswith("layers/") else key


# ----------------------------------------------------------------------------------- orientation


def _looks_like_barcodes(names: pd.Index) -> float:
    sample = [str(x) for x in names[:200]]
    return sum(bool(_BARCODE.search(s)) for s in sample) / max(1, len(sample))


def _check_orientation(parts: AnnDataParts, cand: _Candidate, source: GeneBlockSource) -> None:
    n_obs, n_var = parts.n_obs, len(cand.var)
    n_rows, n_cols = source.shape
    if (n_rows, n_cols) != (n_obs, n_var):
        flipped = (n_rows, n_cols) == (n_var, n_obs)
        raise OrientationError(
            f"var has {n_var} rows but gene_expression has {n_cols} genes: the expression matrix, {cand.name}, "
            f"is {n_rows} x {n_cols}, but the export needs cells x genes = {n_obs} x {n_var}."
            + (" It looks transposed (genes x cells): store it transposed, cells as rows." if flipped else "")
        )
    if _looks_like_barcodes(cand.var.index) > 0.5 and _looks_like_barcodes(parts.obs_names) < 0.1:
        raise OrientationError(
            "This AnnData looks transposed: its var names look like cell barcodes "
            f"({_show(cand.var.index, 3)}) while its obs names look like genes ({_show(parts.obs_names, 3)}). "
            "AnnData keeps cells as rows (obs) and genes as columns (var); export adata.T instead."
        )


# ----------------------------------------------------------------------------------------- genes


def _as_mask(values, what: str) -> np.ndarray | None:
    """``values`` as a numpy boolean array when they are a mask, or ``None`` when they are not booleans.

    NumPy booleans, pandas' nullable ``"boolean"`` dtype and objects that are all True/False count as a
    mask. A mask with missing values (``pd.NA``, None, NaN) is refused rather than guessed.

    Raises
    ------
    InvalidParameterError
        The values are booleans with some missing.

    """
    dtype = getattr(values, "dtype", None)
    kind = getattr(dtype, "kind", "O")  # "b" for numpy and pandas booleans, "O" for objects and categoricals
    if kind == "b" and isinstance(dtype, np.dtype):
        return np.asarray(values)
    if kind not in "bO":
        return None
    is_boolean_dtype = kind == "b"
    obj = np.asarray(values, dtype=object)
    if obj.ndim != 1:
        return None
    missing = pd.isna(obj)
    if not all(isinstance(x, bool | np.bool_) for x in obj[~missing]):
        return None
    if not is_boolean_dtype and (missing.all() or obj.size == 0):
        return None  # no booleans at all (e.g. an empty list): not a mask
    if missing.any():
        raise InvalidParameterError(
            f"{what} has missing values; fill them (e.g. .fillna(False)) first "
            f"(missing in {int(missing.sum())} of {obj.size} entries)."
        )
    return obj.astype(bool)


def _bool_mask(values, n: int, what: str) -> np.ndarray:
    arr = _as_mask(values, what)
    if arr is None:
        raise InvalidParameterError(f"{what} must be boolean, got values of type {values.dtype}.")
    if arr.shape != (n,):
        raise InvalidParameterError(f"{what} has {arr.size} entries but there are {n} genes.")
    return arr


def _names_where(cand: _Candidate) -> str:
    return "raw.var_names" if cand.is_raw else "var_names"


def _unique_fix(where: str) -> str:
    """How to make the gene ids in ``where`` unique.

    ``where`` is ``"var_names"``, ``"raw.var_names"`` or a column such as ``"var['symbol']"``.
    """
    if where == "var_names":
        return "Make them unique first: adata.var_names_make_unique()."
    if where == "raw.var_names":
        return (
            "Make them unique first: raw = adata.raw.to_adata(); raw.var_names_make_unique(); "
            "adata.raw = raw. Or export another matrix with layer=."
        )
    column = f"adata.{where}"
    return (
        f"Make the column unique, e.g. {column} = anndata.utils.make_index_unique({column}.astype(str)); "
        "or choose another gene_id_column, or leave gene_id_column=None to use var_names."
    )


def _check_unique(ids: pd.Index, where: str) -> None:
    """Refuse duplicated gene ids (missing values aside), before any gene is looked up by them.

    Raises
    ------
    DuplicateGeneError
        Some ids appear more than once.

    """
    ids = pd.Index(ids)
    dup = ids[ids.duplicated() & ~ids.isna()].unique()
    if len(dup):
        raise DuplicateGeneError(
            f"Gene ids in {where} are not unique: {_show(dup)} {'appears' if len(dup) == 1 else 'appear'} more than once. {_unique_fix(where)}"
        )


def _integers(genes, arr: np.ndarray) -> list:
    """The integers among the requested genes (positions, which are not accepted)."""
    if arr.dtype.kind in "iu":
        return arr.tolist()
    items = genes if isinstance(genes, list) else arr.tolist() if arr.dtype == object else []
    return [g for g in items if isinstance(g, int | np.integer) and not isinstance(g, bool | np.bool_)]


def _select(
    genes, cand: _Candidate, base_var: pd.DataFrame, id_lookup: pd.Index, id_where: str | None = None
) -> tuple[np.ndarray, str]:
    """Positions (in the candidate's var) of the requested genes, in export order, and a description.

    ``genes`` is None, the name of a boolean var column, a boolean mask (a Series is aligned by gene name,
    an array is taken in var order) or a list of gene ids. Sets (no order) and integer positions are refused.
    Listed ids are looked up in var_names, then in ``id_lookup`` (the gene_id_column values, found in
    ``id_where``, e.g. ``"var['symbol']"``; None when there is no gene_id_column).
    """
    var_names = cand.var.index
    n = len(var_names)

    def realign(mask: np.ndarray, names: pd.Index, what: str) -> np.ndarray:
        """A mask over ``names`` (usually adata.var) applied to the candidate's genes by name."""
        if len(names) == n and names.equals(var_names):
            return np.flatnonzero(mask)
        _check_unique(names, "var_names")
        wanted = names[mask]
        pos = var_names.get_indexer(wanted)
        missing = wanted[pos < 0]
        if len(missing):
            raise UnknownGeneError(
                f"{what} selects {plural(len(missing), 'gene')} that {cand.name} does not have: {_show(missing)}."
            )
        return np.sort(pos)

    if genes is None:
        return np.arange(n), "all genes"
    if isinstance(genes, str):
        if genes in base_var.columns:
            col = base_var[genes]
            return realign(
                _bool_mask(col, len(base_var), f"var[{genes!r}]"),
                base_var.index,
                f"var[{genes!r}]",
            ), f"genes where var[{genes!r}] is True"
        if cand.is_raw and genes in cand.var.columns:
            return np.flatnonzero(_bool_mask(cand.var[genes], n, f"raw.var[{genes!r}]")), (
                f"genes where raw.var[{genes!r}] is True"
            )
        close = closest(genes, [str(c) for c in base_var.columns])
        meant = f" Did you mean genes={close[0]!r}?" if close else ""
        raise InvalidParameterError(
            f"genes={genes!r} is not a column of var (columns: {_show(base_var.columns) or 'none'}).{meant} Pass the "
            f"name of a boolean var column, a boolean mask, or a list of gene ids (e.g. genes=[{genes!r}])."
        )
    if isinstance(genes, set | frozenset):
        raise InvalidParameterError(
            "genes= is a set, and a set has no order: the order of the exported genes, and so the files "
            "written, would change from one run to the next. genes must be None, a boolean "
            "mask, a var column name or a list of gene ids: pass a list, e.g. genes=sorted(genes)."
        )
    if isinstance(genes, pd.Series):
        label = "The genes mask" + (f" {genes.name!r}" if genes.name is not None else "")
        mask = _as_mask(genes, label)
        if mask is not None:
            index = genes.index
            if index.has_duplicates:
                raise DuplicateGeneError(
                    f"The genes mask has duplicate index entries: {_show(index[index.duplicated()])}."
                )
            ref = base_var.index if index.isin(base_var.index).all() else var_names
            if not index.isin(ref).all():
                raise UnknownGeneError(
                    "The genes mask is indexed by names that are not genes here: "
                    f"{_show(index[~index.isin(ref)])}."
                )
            on_var = len(ref) == len(base_var) and ref.equals(base_var.index)
            _check_unique(ref, "var_names" if on_var else _names_where(cand))
            aligned = pd.Series(mask, index=genes.index).reindex(ref, fill_value=False).to_numpy()
            return realign(aligned, ref, f"the genes mask {genes.name or ''}".strip()), (
                f"genes where {genes.name or 'the mask'} is True"
            )
    if not hasattr(genes, "__array__"):
        try:
            genes = list(genes)
        except TypeError:
            raise InvalidParameterError(
                "genes must be None, a boolean mask, a var column name or a list of gene ids, "
                f"got {type(genes).__name__} {genes!r}."
            ) from None
    mask = _as_mask(genes, "The genes mask")
    if mask is not None:
        if mask.shape == (len(base_var),):
            return realign(mask, base_var.index, "The genes mask"), "genes selected by the mask"
        if mask.shape == (n,):
            return np.flatnonzero(mask), "genes selected by the mask"
        raise InvalidParameterError(
            f"The genes mask has {mask.size} entries but var has {len(base_var)} genes"
            + (f" and {cand.name} has {n}." if n != len(base_var) else ".")
        )
    arr = np.asarray(genes)
    if arr.ndim != 1:
        raise InvalidParameterError(
            "genes must be None, a boolean mask, a var column name or a list of gene ids."
        )
    if arr.size and arr.dtype.kind == "f":  # (an empty list is float to numpy)
        shown = ", ".join(map(str, pd.unique(arr)[:3]))
        raise InvalidParameterError(
            f"genes= holds numbers ({shown}, ...), not gene ids or True/False: a mask must be boolean. If the "
            "numbers mark the genes to export with 1, pass genes=mask.astype(bool)."
        )
    ints = _integers(genes, arr)
    if ints:
        as_text = [str(g) for g in ints]
        shown = ", ".join(as_text[:3]) + (", ..." if len(ints) > 3 else "")
        hint = (
            " If these numbers are gene names, pass them as text: genes=[str(g) for g in genes]."
            if var_names.isin(as_text).any() or id_lookup.isin(as_text).any()
            else ""
        )
        raise InvalidParameterError(
            f"genes= holds integers ({shown}): genes are chosen by id, not by position. genes must be None, "
            "a boolean mask, a var column name or a list of gene ids. To export genes by position, "
            f"pass their ids: genes=adata.{_names_where(cand)}[positions].{hint}"
        )
    ids = pd.Index([str(g) for g in arr])
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise DuplicateGeneError(
            f"These genes are listed more than once in genes=: {_show(dup)}. List each gene once "
            "(list(dict.fromkeys(genes)) keeps the first of each, e.g. for markers of several groups)."
        )
    pos = var_names.get_indexer(ids)
    if id_where is not None:
        # Also accept ids from gene_id_column (e.g. symbols while var_names are Ensembl ids). Genes without
        # an id there (raw genes missing from adata.var) are left out; an id held by several genes is refused.
        known = np.flatnonzero(~pd.isna(id_lookup))
        aliases = pd.Index([str(x) for x in id_lookup[known]])
        shared = aliases.duplicated(keep=False)
        ambiguous = ids[(pos < 0) & ids.isin(aliases[shared])]
        if len(ambiguous):
            raise DuplicateGeneError(
                f"Gene ids in {id_where} are not unique: {_show(ambiguous)} "
                f"{'appears' if len(ambiguous) == 1 else 'appear'} more than once, so genes= cannot tell which "
                f"gene is meant. {_unique_fix(id_where)}"
            )
        hit = aliases[~shared].get_indexer(ids)
        unique_known = known[~shared]
        if unique_known.size:  # (none when no gene of this matrix has an id in the column)
            pos = np.where(pos >= 0, pos, np.where(hit >= 0, unique_known[np.maximum(hit, 0)], -1))
    missing = ids[pos < 0]
    if len(missing):
        raise UnknownGeneError(
            f"{len(missing)} of the requested genes {'is' if len(missing) == 1 else 'are'} not in {cand.name}: "
            f"{_show(missing)}.{_suggest(missing, var_names, id_lookup)} "
            "Check the spelling and whether var_names hold symbols or Ensembl ids (see gene_id_column=)."
        )
    return pos.astype(np.int64), plural(len(ids), "listed gene")


def _suggest(missing: pd.Index, *known: pd.Index) -> str:
    """' Did you mean ...?' for genes that differ from known ones by case (cd79a) or by a letter or two."""
    names = list(pd.Index([str(x) for index in known for x in index if not pd.isna(x)]).unique())
    meant = []
    for gene in missing[:10]:
        close = closest(gene, names, cutoff=0.85)
        if close:
            meant.append(f"{close[0]!r} for {gene!r}")
    return f" Did you mean {', '.join(meant)}?" if meant else ""


def _gene_ids(cand: _Candidate, base_var: pd.DataFrame, gene_id_column: str | None) -> pd.Index:
    """The id of every gene of the candidate matrix (var_names, or a var column)."""
    if gene_id_column is None:
        return pd.Index(cand.var.index)
    if not isinstance(gene_id_column, str):
        raise InvalidParameterError(
            f"gene_id_column must be the name of a var column, got {gene_id_column!r}."
        )
    if gene_id_column in cand.var.columns:
        return pd.Index(cand.var[gene_id_column].to_numpy())
    if gene_id_column in base_var.columns:
        # raw.var lacks the column: take it from adata.var, matching genes by name.
        _check_unique(base_var.index, "var_names")
        _check_unique(cand.var.index, _names_where(cand))
        col = base_var[gene_id_column]
        pos = base_var.index.get_indexer(cand.var.index)
        vals = np.where(pos >= 0, col.to_numpy(dtype=object)[np.maximum(pos, 0)], None)
        return pd.Index(vals, dtype=object)
    raise InvalidParameterError(
        f"gene_id_column={gene_id_column!r} is not a var column. Columns: {_show(base_var.columns) or 'none'}."
    )


def _ids_where(cand: _Candidate, gene_id_column: str | None) -> str:
    """Where the exported ids come from, as the user would write it: var_names, raw.var['x']..."""
    if gene_id_column is None:
        return _names_where(cand)
    in_raw = cand.is_raw and gene_id_column in cand.var.columns
    return f"{'raw.' if in_raw else ''}var[{gene_id_column!r}]"


def _check_ids(ids: Sequence, where: str, names: Sequence | None = None) -> list[str]:
    """The exported ids, checked; ``names`` (the genes' var_names) name the genes whose id is missing."""
    bad = [i for i, x in enumerate(ids) if not isinstance(x, str)]
    if bad:
        missing = names is not None and any(pd.isna(ids[i]) for i in bad)
        gene_s = "the gene" if len(bad) == 1 else "the genes"
        shown = (
            f"{gene_s} {_show([names[i] for i in bad], 3)}" if missing else _show([ids[i] for i in bad], 3)
        )
        raise InvalidGeneIdError(
            f"Gene ids in {where} must be text; {len(bad)} {'is' if len(bad) == 1 else 'are'} not "
            f"(e.g. {shown}). "
            + (
                "Those genes have no value in that column; choose another gene_id_column or fill it. (For "
                "raw.X, a var column gives ids to the raw genes whose names are in var_names.)"
                if any(pd.isna(ids[i]) for i in bad)
                else "Convert them to strings first."
            )
        )
    empty = [x for x in ids if not x.strip()]
    if empty:
        raise InvalidGeneIdError(
            f"{plural(len(empty), 'gene id')} in {where} {'is' if len(empty) == 1 else 'are'} empty. Give every "
            "exported gene a name."
        )
    padded = [x for x in ids if x != x.strip()]
    if padded:
        raise InvalidGeneIdError(
            f"Gene ids in {where} have leading or trailing spaces: {_show(padded)}. Strip them, e.g. "
            "adata.var_names = adata.var_names.str.strip()."
        )
    _check_unique(pd.Index(ids), where)
    return list(ids)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Longest ``safe()`` name the name layout writes: file systems allow 255 bytes, suffixes take up to 16.
MAX_NAME_CHARS = 200


def safe_name(gene_id: str) -> str:
    """The file-name form of a gene id in the name layout (the viewer applies the same function)."""
    return _UNSAFE.sub("_", gene_id).strip("._")


def name_layout_problems(ids: Sequence[str], folder: str = "var", suffix: str = ".values.*") -> list[str]:
    """Why ``ids`` cannot all be file names ``folder/<safe(id)><suffix>`` (empty list when they can)."""
    problems: list[str] = []
    safe = [safe_name(g) for g in ids]
    by_safe: dict[str, list[str]] = {}
    for gid, name in zip(ids, safe, strict=True):
        by_safe.setdefault(name.lower(), []).append(gid)
    for name, group in by_safe.items():
        if len(group) > 1 and name:
            problems.append(f"{_show(group)} all become {folder}/{safe_name(group[0])}{suffix}")
    empty = [g for g, name in zip(ids, safe, strict=True) if not name]
    if empty:
        problems.append(f"{_show(empty)} {_has(empty)} no usable character for a file name")
    device = [g for g, name in zip(ids, safe, strict=True) if name.split(".")[0].upper() in _WINDOWS_DEVICES]
    if device:
        problems.append(
            f"{_show(device)} {'is a reserved file name' if len(device) == 1 else 'are reserved file names'} on Windows"
        )
    # File systems take names of up to 255 bytes, and the longest suffix ('.outliers.u16.gz') needs 16.
    long = [g for g, name in zip(ids, safe, strict=True) if len(name) > MAX_NAME_CHARS]
    if long:
        shown = [g if len(g) <= 40 else f"{g[:37]}..." for g in long]
        problems.append(
            f"{_show(shown)} {'is' if len(long) == 1 else 'are'} too long for a file name (more than "
            f"{MAX_NAME_CHARS} characters)"
        )
    return problems


def _has(items) -> str:
    return "has" if len(items) == 1 else "have"


def check_name_layout(ids: Sequence[str]) -> None:
    """Refuse ids whose file names would collide, be empty, or be reserved on Windows."""
    problems = name_layout_problems(ids)
    if problems:
        raise GeneIdCollisionError(
            "Some gene ids cannot be used as file names in layout='name' (files named after genes; "
            "upper/lower case counts as the same name on macOS and Windows):\n  - "
            + "\n  - ".join(problems)
            + "\nRename those genes, or pass layout='index' (files numbered 0..N-1, ids kept as they are)."
        )


# ----------------------------------------------------------------------------------------- entry


def _no_genes(genes) -> bool:
    """``genes=[]`` (an empty list, tuple or array): export the cell data only, as the format allows."""
    return isinstance(genes, list | tuple | np.ndarray | pd.Index) and len(genes) == 0


def resolve(parts: AnnDataParts, *, layer=None, genes=None, gene_id_column=None, layout="name") -> Selection:
    """Choose the matrix and genes and validate everything, without writing anything."""
    if _no_genes(genes):
        if layer is not None or gene_id_column is not None:
            raise InvalidParameterError(
                "genes=[] exports no gene, so layer= and gene_id_column= have nothing to apply to; leave them out."
            )
        empty = np.zeros(0, np.int64)
        return Selection(
            None,
            "no matrix",
            "genes=[] asks for the cell data only",
            empty,
            [],
            None,
            parts.n_obs,
            ["no genes"],
        )
    cand, source, reason = _pick_matrix(parts, layer)
    if not cand.is_raw and parts.var_idx is not None:
        source = _ColumnSubset(source, parts.var_idx)
    _check_orientation(parts, cand, source)
    all_ids = _gene_ids(cand, parts.var, gene_id_column)
    where = _ids_where(cand, gene_id_column)
    # Duplicated var_names make any selection by name ambiguous (and pandas cannot look names up in them):
    # refuse them whatever is selected. A gene_id_column only needs unique ids among the exported genes.
    if gene_id_column is None or genes is not None:
        _check_unique(cand.var.index, _names_where(cand))
    pos, what = _select(genes, cand, parts.var, all_ids, where if gene_id_column is not None else None)
    if len(pos) == 0:
        raise InvalidParameterError(f"No genes selected ({what}). Select at least one gene to export.")
    ids = _check_ids(list(all_ids[pos]), where, list(cand.var.index[pos]))
    if len(all_ids) > 1 and pd.Index(all_ids).equals(pd.Index([str(i) for i in range(len(all_ids))])):
        # What anndata makes up when a file has no gene names: the viewer's gene search would list numbers.
        warn(
            f"The gene ids in {where} are 0, 1, 2, ... {len(all_ids) - 1}: positions, not gene names, so the "
            "viewer's gene search will list numbers. The gene names are probably missing from var: set them "
            "(adata.var_names = adata.var['gene_symbols'], or whichever column holds them), or pass "
            "gene_id_column= naming that column."
        )
    if layout == "name":
        check_name_layout(ids)
    return Selection(source, cand.name, reason, pos, ids, gene_id_column, parts.n_obs, [what])


class _ColumnSubset(GeneBlockSource):
    """The columns of a backed AnnData view: positions in the view map to columns of the file."""

    def __init__(self, inner: GeneBlockSource, var_idx: np.ndarray):
        self.inner, self.var_idx = inner, np.asarray(var_idx)
        super().__init__((inner.shape[0], len(self.var_idx)), inner.kind, None)

    @property
    def is_sparse(self):
        return self.inner.is_sparse

    def nnz_fraction(self):
        return self.inner.nnz_fraction()

    @property
    def bytes_per_value(self):  # how the inner reader's blocks are sized, passes or records
        return self.inner.bytes_per_value

    def scratch_bytes(self, gene_idx, genes_per_block):
        return self.inner.scratch_bytes(self.var_idx[np.asarray(gene_idx)], genes_per_block)

    def sample_rows(self, n_rows):
        return self.inner.sample_rows(n_rows)[:, self.var_idx]

    def blocks(self, gene_idx, genes_per_block, scratch_dir=None, n_threads=1, lead=None, cancel=None):
        return self.inner.blocks(
            self.var_idx[np.asarray(gene_idx)], genes_per_block, scratch_dir, n_threads, lead, cancel
        )
