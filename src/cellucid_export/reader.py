"""Open an export folder and decode its genes (also folders written by the reference writers)."""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import numpy as np

from .codec import gzip_decompress
from .errors import UnknownGeneError
from .plan import plural
from .quantize import STEPS, dequantize
from .resolve import safe_name

__all__ = ["Export", "read_export"]

_DTYPES = {"uint8": np.dtype("<u1"), "uint16": np.dtype("<u2"), "float32": np.dtype("<f4")}


class Export:
    """A Cellucid export folder, read lazily.

    Attributes
    ----------
    path
        The folder.
    manifest
        ``var_manifest.json`` as a dict.
    layout
        ``"name"`` (files named by gene) or ``"index"`` (files numbered).
    gene_ids
        Exported gene ids, in export order.
    n_cells
        Cells per gene vector.

    """

    def __init__(self, path: os.PathLike | str):
        self.path = Path(path)
        mpath = self.path / "var_manifest.json"
        if not mpath.exists():
            raise FileNotFoundError(
                f"{self.path} has no var_manifest.json: it is not a Cellucid export with gene expression."
            )
        self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        schema = self.manifest["_varSchema"]
        self.layout = "index" if "{index}" in schema["pathPattern"] else "name"
        self.n_cells = int(self.manifest["n_points"])
        self.dtype = _DTYPES[schema["dtype"]]
        self.bits = schema.get("quantizationBits") if schema.get("quantized") else None
        self._entries: dict[str, tuple[int, list]] = {}
        for pos, entry in enumerate(self.manifest["fields"]):
            if self.layout == "index":
                idx, gid, *bounds = entry
            else:
                (gid, *bounds), idx = entry, pos
            self._entries[gid] = (int(idx), bounds)
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
        """The payload file of a gene."""
        idx, _ = self._entry(gene_id)
        pattern = self.manifest["_varSchema"]["pathPattern"]
        return self.path / pattern.replace("{index}", str(idx)).replace("{key}", safe_name(gene_id))

    def _entry(self, gene_id: str):
        try:
            return self._entries[gene_id]
        except KeyError:
            raise UnknownGeneError(
                f"{gene_id!r} is not in this export ({len(self.gene_ids):,} genes{self._suggest(gene_id)})."
            ) from None

    def _suggest(self, gene_id) -> str:
        """The closest gene ids (a different case first: 'CD79a' for 'CD79A'), else a few examples."""
        key = str(gene_id)
        same = [g for g in self.gene_ids if g.lower() == key.lower()]
        close = same or difflib.get_close_matches(key, self.gene_ids, n=3, cutoff=0.75)
        if close:
            return f"; did you mean {', '.join(map(repr, close))}?"
        return f", e.g. {', '.join(self.gene_ids[:5])}"

    def raw(self, gene_id: str) -> np.ndarray:
        """The stored payload of a gene: codes (uint8/uint16) or float32 values."""
        f = self.file(gene_id)
        data = f.read_bytes()
        if f.suffix == ".gz":
            data = gzip_decompress(data)
        arr = np.frombuffer(data, dtype=self.dtype)
        if arr.size != self.n_cells:
            raise ValueError(f"{f} holds {arr.size} values, but the export has {self.n_cells} cells.")
        return arr

    def bounds(self, gene_id: str) -> tuple[float, float] | None:
        """``(min, max)`` of a quantized gene, as stored in the manifest."""
        _, b = self._entry(gene_id)
        return (float(b[0]), float(b[1])) if self.bits else None

    def gene(self, gene_id: str) -> np.ndarray:
        """Decoded float32 values of a gene, one per cell; NaN where the missing marker was written."""
        arr = self.raw(gene_id)
        if self.bits is None:
            return arr.astype(np.float32)
        lo, hi = self.bounds(gene_id)
        return dequantize(arr, lo, hi, self.bits)

    def step(self, gene_id: str) -> float:
        """The quantization step ``(max - min) / M`` of a gene (0 for float32)."""
        if self.bits is None:
            return 0.0
        lo, hi = self.bounds(gene_id)
        return (hi - lo) / STEPS[self.bits]

    def to_array(self, genes=None) -> np.ndarray:
        """A dense ``(n_cells, n_genes)`` float32 array of decoded genes (all genes by default)."""
        genes = self.gene_ids if genes is None else list(genes)
        out = np.empty((self.n_cells, len(genes)), np.float32)
        for j, g in enumerate(genes):
            out[:, j] = self.gene(g)
        return out


def read_export(path: os.PathLike | str) -> Export:
    """Open an export folder written by this package or by ``cellucid`` 0.0.9 / 0.9.1.

    Examples
    --------
    >>> ex = read_export("exports/pbmc")  # doctest: +SKIP
    >>> ex.gene("CD79A")  # doctest: +SKIP

    """
    return Export(path)
