"""Open an export folder and decode its genes (also folders written by the reference writers)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .codec import gunzip_strict
from .errors import ExportNotFoundError, ExportReadError, UnknownGeneError, closest
from .plan import plural
from .quantize import STEPS, dequantize
from .resolve import safe_name
from .validate import _inside, _is_int, _json_type

__all__ = ["Export", "read_export"]

_DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "float32": np.dtype("<f4")}
_CODE_DTYPES = {8: "uint8", 16: "uint16"}


def _parse_manifest(m) -> tuple[dict | None, str | None]:
    """What the reader needs from ``var_manifest.json``: ``(facts, None)``, or ``(None, why it cannot be read)``.

    Only what decoding genes depends on is checked here; :func:`~cellucid_export.validate` checks the rest.
    """
    if not isinstance(m, dict):
        return None, f"it holds {_json_type(m)}, not a JSON object"
    missing = [k for k in ("n_points", "_varSchema", "fields") if k not in m]
    if missing:
        return None, f"it has no {', '.join(missing)}"
    schema, fields, n_cells = m["_varSchema"], m["fields"], m["n_points"]
    if not isinstance(schema, dict) or not isinstance(fields, list):
        return None, "_varSchema must be an object and fields a list"
    if not _is_int(n_cells) or n_cells < 1:
        return None, f"n_points (the number of cells) is {n_cells!r}, not a positive whole number"
    pattern = schema.get("pathPattern")
    if not isinstance(pattern, str) or ("{index}" in pattern) == ("{key}" in pattern) or not _inside(pattern):
        return (
            None,
            f"_varSchema.pathPattern is {pattern!r}, not a file name inside the folder with {{key}} or {{index}}",
        )
    layout = "index" if "{index}" in pattern else "name"
    dtype = schema.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return None, f"_varSchema.dtype is {dtype!r}, not uint8, uint16 or float32"
    bits = schema.get("quantizationBits") if schema.get("quantized") else None
    if bits is not None and (not _is_int(bits) or _CODE_DTYPES.get(bits) != dtype):
        return None, f"_varSchema.quantizationBits is {bits!r}; {dtype} codes need {_bits_of(dtype)}"
    if bits is None and dtype != "float32":
        return None, f"_varSchema.dtype is {dtype} but the genes are not quantized (values must be float32)"
    width = (2 if layout == "index" else 1) + (2 if bits else 0)
    entries: dict[str, tuple[int, list]] = {}
    for pos, entry in enumerate(fields):
        if not isinstance(entry, list) or len(entry) != width:
            shape = ("[index, id" if layout == "index" else "[id") + (", min, max]" if bits else "]")
            return None, f"fields[{pos}] is {json.dumps(entry)[:60]}, not {shape}"
        idx, gid, bounds = (
            (entry[0], entry[1], entry[2:]) if layout == "index" else (pos, entry[0], entry[1:])
        )
        if not isinstance(gid, str) or not gid:
            return None, f"fields[{pos}] has the gene id {gid!r}, not text"
        if not _is_int(idx) or idx < 0:
            return None, f"gene {gid!r} has the file number {idx!r}, not a whole number from 0"
        if bits and not (all(_finite(b) for b in bounds) and bounds[0] <= bounds[1]):
            return None, f"gene {gid!r} has the range {bounds}, not two finite numbers min <= max"
        if gid in entries:
            return None, f"gene {gid!r} is listed twice"
        entries[gid] = (idx, bounds)
    return {
        "layout": layout,
        "n_cells": n_cells,
        "dtype": _DTYPES[dtype],
        "bits": bits,
        "entries": entries,
    }, None


def _stamp(path: Path) -> tuple[int, int, int]:
    """What identifies one version of a file: replaced or rewritten, one of these changes."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _bits_of(dtype: str) -> str:
    return {"uint8": "8", "uint16": "16"}.get(dtype, "no quantizationBits")


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class Export:
    """A Cellucid export folder, read lazily.

    Attributes
    ----------
    path : pathlib.Path
        The folder.
    manifest : dict
        ``var_manifest.json`` as a dict.
    layout : str
        ``"name"`` (files named by gene) or ``"index"`` (files numbered).
    gene_ids : list of str
        Exported gene ids, in export order.
    n_cells : int
        Cells per gene vector.
    bits : int or None
        8 or 16 when the values are stored as whole-number codes, ``None`` for float32 values.
    dtype : numpy.dtype
        How each value is stored in the gene files: uint8, uint16 or float32.

    """

    def __init__(self, path: os.PathLike | str):
        # Absolute: genes are read when asked for, perhaps after the working folder has changed.
        self.path = Path(path).absolute()
        if not self.path.exists():
            raise ExportNotFoundError(
                f"The export folder {self.path} does not exist. Check the path; a relative path starts from "
                f"the folder you are working in ({Path.cwd()})."
            )
        if not self.path.is_dir():
            raise ExportNotFoundError(
                f"{self.path} is a file, not an export folder. Pass the folder the export wrote (it holds "
                "var_manifest.json)."
            )
        mpath = self.path / "var_manifest.json"
        if not mpath.is_file():
            # A folder with an identity but no genes is a real export, made without genes.
            genes_hint = (
                " (it holds dataset_identity.json, so it was exported without genes: export again with genes=)"
                if (self.path / "dataset_identity.json").is_file()
                else "; pass the folder the export wrote"
            )
            raise ExportNotFoundError(
                f"{self.path} has no var_manifest.json: it is not a Cellucid export with gene expression"
                f"{genes_hint}."
            )
        try:
            self._stamp = _stamp(mpath)
            self.manifest = json.loads(mpath.read_bytes().decode("utf-8"))
        except OSError as e:
            facts, why = None, f"the file cannot be opened ({e.strerror or e})"
        except (ValueError, RecursionError) as e:
            # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError: brackets nested
            # deeper than the parser goes, which only a damaged file holds.
            facts, why = None, f"it is not valid JSON ({e})"
        else:
            facts, why = _parse_manifest(self.manifest)
        if facts is None:
            raise ExportReadError(
                f"var_manifest.json in {self.path} cannot be read: {why}. The export is damaged (an interrupted "
                "copy, or a file edited by hand) or was not written by a Cellucid exporter: export again or copy "
                f"the folder again; `cellucid-export validate {self.path}` lists every problem."
            )
        self.layout: str = facts["layout"]
        self.n_cells: int = facts["n_cells"]
        self.dtype: np.dtype = facts["dtype"]
        self.bits: int | None = facts["bits"]
        self._entries: dict[str, tuple[int, list]] = facts["entries"]
        self.gene_ids = list(self._entries)

    def __repr__(self) -> str:
        kind = f"{self.bits}-bit" if self.bits else "float32"
        return (
            f"Export({str(self.path)!r}: {plural(len(self.gene_ids), 'gene')} x {self.n_cells:,} cells, {kind}, "
            f"layout={self.layout!r})"
        )

    def __contains__(self, gene_id: str) -> bool:
        return gene_id in self._entries

    def file(self, gene_id: str) -> Path:
        """The file that holds a gene's values.

        Parameters
        ----------
        gene_id
            A gene id of the export, as the viewer lists it (one of :attr:`gene_ids`).

        Returns
        -------
        pathlib.Path
            The file's path inside the export folder (it may be missing; :meth:`raw` checks).

        Raises
        ------
        UnknownGeneError
            The gene was not exported (the message names the closest exported ids).

        """
        idx, _ = self._entry(gene_id)
        pattern = self.manifest["_varSchema"]["pathPattern"]
        return self.path / pattern.replace("{index}", str(idx)).replace("{key}", safe_name(gene_id))

    def _entry(self, gene_id: str):
        try:
            return self._entries[gene_id]
        except (KeyError, TypeError):  # TypeError: an unhashable "id" such as a list
            raise UnknownGeneError(
                f"{gene_id!r} is not in this export ({len(self.gene_ids):,} genes{self._suggest(gene_id)})."
            ) from None

    def _suggest(self, gene_id) -> str:
        """The closest gene ids (a different case first: 'CD79a' for 'CD79A'), else a few examples."""
        close = closest(str(gene_id), self.gene_ids, n=3)
        if close:
            return f"; did you mean {', '.join(map(repr, close))}?"
        return f", e.g. {', '.join(self.gene_ids[:5])}"

    def raw(self, gene_id: str) -> np.ndarray:
        """The values of a gene exactly as stored: whole-number codes (8 or 16 bits) or float32 values.

        Parameters
        ----------
        gene_id
            A gene id of the export (one of :attr:`gene_ids`).

        Returns
        -------
        numpy.ndarray
            One value per cell: uint8 or uint16 codes when the export is quantized (the largest code
            marks a missing value), else float32 values. :meth:`gene` decodes them.

        Raises
        ------
        UnknownGeneError
            The gene was not exported.
        ExportNotFoundError
            The gene's file is not in the folder.
        ExportReadError
            The gene's file is cut short, corrupt or of the wrong length.

        """
        f = self.file(gene_id)
        rel = f.relative_to(self.path).as_posix()
        try:
            changed = _stamp(self.path / "var_manifest.json") != self._stamp
        except OSError:
            changed = True
        if changed:
            # The genes' minima and maxima were read at opening; new codes with old ranges would be wrong values.
            raise ExportReadError(
                f"{self.path} changed since it was opened (exported again, e.g. with overwrite=True): open it "
                "again with read_export() to read the new export."
            )
        if not f.exists():
            raise ExportNotFoundError(
                f"Gene {gene_id!r} cannot be read: {rel} is missing from {self.path}, although var_manifest.json "
                f"lists the gene. Copy the folder again or export again; `cellucid-export validate {self.path}` "
                "lists every missing or damaged file."
            )
        problem = None
        try:
            data = f.read_bytes()
        except OSError as e:
            data, problem = b"", f"cannot be opened ({e.strerror or e})"
        if problem is None and f.suffix == ".gz":
            # The viewer's rules: one gzip member, nothing after it, a matching length trailer.
            data, problem = gunzip_strict(data)
        expected = self.n_cells * self.dtype.itemsize
        if problem is None and len(data) != expected:
            problem = (
                f"holds {len(data):,} bytes, but {self.n_cells:,} values of {self.dtype.name} (one per cell) "
                f"are {expected:,} bytes"
            )
        if problem is not None:
            raise ExportReadError(
                f"Gene {gene_id!r} cannot be read: {rel} {problem}. The file was damaged, e.g. by an "
                "interrupted copy or upload, or comes from another export: copy the folder again or export "
                f"again; `cellucid-export validate {self.path}` lists every damaged file."
            )
        return np.frombuffer(data, dtype=self.dtype)

    def bounds(self, gene_id: str) -> tuple[float, float] | None:
        """The range a quantized gene's codes span, as stored in ``var_manifest.json``.

        Parameters
        ----------
        gene_id
            A gene id of the export (one of :attr:`gene_ids`).

        Returns
        -------
        tuple of float or None
            ``(min, max)`` of the gene's finite values: code 0 decodes to ``min`` and code ``M`` (254 at
            8 bits, 65,534 at 16 bits) to ``max``. ``None`` when the export stores float32 values.

        """
        _, b = self._entry(gene_id)
        return (float(b[0]), float(b[1])) if self.bits else None

    def gene(self, gene_id: str) -> np.ndarray:
        """The values of a gene as the viewer decodes them.

        Parameters
        ----------
        gene_id
            A gene id of the export (one of :attr:`gene_ids`).

        Returns
        -------
        numpy.ndarray
            float32, one value per cell; NaN where the missing marker was written (the source held NaN
            or +/-Inf). Quantized values are within half a :meth:`step` of the exported ones.

        Raises
        ------
        UnknownGeneError
            The gene was not exported (the message names the closest exported ids).
        ExportNotFoundError
            The gene's file is not in the folder.
        ExportReadError
            The gene's file is cut short, corrupt or of the wrong length.

        """
        arr = self.raw(gene_id)
        if self.bits is None:
            return arr.astype(np.float32)
        lo, hi = self.bounds(gene_id)
        return dequantize(arr, lo, hi, self.bits)

    def step(self, gene_id: str) -> float:
        """The difference between two neighbouring codes of a gene, in the gene's units.

        Parameters
        ----------
        gene_id
            A gene id of the export (one of :attr:`gene_ids`).

        Returns
        -------
        float
            ``(max - min) / M`` with ``M`` = 254 (8-bit) or 65,534 (16-bit): a decoded value differs
            from the exported one by at most half of it. 0 for float32 exports.

        """
        if self.bits is None:
            return 0.0
        lo, hi = self.bounds(gene_id)
        return (hi - lo) / STEPS[self.bits]

    def to_array(self, genes: Iterable[str] | None = None) -> np.ndarray:
        """Several decoded genes as one dense array, cells x genes.

        Parameters
        ----------
        genes
            Gene ids of the export, in the column order wanted. ``None``: all genes, in export order
            (:attr:`gene_ids`). The array holds one float32 per cell and gene, so a large export may not
            fit in memory: pick the genes you need.

        Returns
        -------
        numpy.ndarray
            float32 of shape ``(n_cells, len(genes))``, decoded as by :meth:`gene`.

        Raises
        ------
        UnknownGeneError
            A gene was not exported.
        ExportNotFoundError
            A gene's file is not in the folder.
        ExportReadError
            A gene's file is cut short, corrupt or of the wrong length.

        """
        genes = self.gene_ids if genes is None else list(genes)
        out = np.empty((self.n_cells, len(genes)), np.float32)
        for j, g in enumerate(genes):
            out[:, j] = self.gene(g)
        return out


def read_export(path: os.PathLike | str) -> Export:
    """Open an export folder written by this package or by ``cellucid`` 0.0.9 / 0.9.1.

    Only ``var_manifest.json`` is read here; gene files are read (and checked) when a gene is asked for.

    Parameters
    ----------
    path
        The export folder (the one holding ``var_manifest.json``), in either layout.

    Returns
    -------
    Export
        The folder, ready to decode genes: :meth:`Export.gene <cellucid_export.Export.gene>` for one,
        :meth:`Export.to_array <cellucid_export.Export.to_array>` for several.

    Raises
    ------
    ExportNotFoundError
        The folder does not exist or holds no ``var_manifest.json``.
    ExportReadError
        ``var_manifest.json`` is damaged or not in the format.

    Examples
    --------
    >>> ex = read_export("exports/pbmc")  # doctest: +SKIP
    >>> ex.gene("CD79A")  # doctest: +SKIP

    """
    return Export(path)
