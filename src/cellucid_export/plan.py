"""Size estimate, the size guard and block sizing.

The exported size is ``n_cells * n_genes * bytes_per_value`` before compression, whatever the
sparsity of the source: each gene file is a dense vector. The guard refuses, before anything is
written, an export above ``max_bytes`` or larger than the free space at the target.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ._logging import warn
from .errors import ExportTooLargeError, InvalidParameterError
from .quantize import PAYLOAD_KINDS, payload_row_bytes
from .writer import nearest_existing

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MEMORY_BUDGET",
    "DiskNeed",
    "ExportPlan",
    "check_disk",
    "check_plan",
    "parse_bytes",
]

#: Default ``max_bytes`` (8 GB): exports whose gene files exceed this before compression are refused.
DEFAULT_MAX_BYTES = 8 * 10**9
#: Default ``memory_budget`` (512 MiB): working memory for gene blocks (read buffers, codes, payloads).
DEFAULT_MEMORY_BUDGET = 512 * 2**20

_DTYPE = {bits: dtype for bits, (_, dtype) in PAYLOAD_KINDS.items()}
_ITEMSIZE = {bits: np.dtype(dtype).itemsize for bits, dtype in _DTYPE.items()}
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(value, name: str) -> int | None:
    """Accept ``None``, a number of bytes, or a string such as ``"8GB"`` / ``"512MiB"``."""
    if value is None:
        return None
    n = None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        n = float(min(int(value), 2**62))  # any size of integer is a size, however large
    elif isinstance(value, float | np.floating):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n is None or not np.isfinite(n):
        raise InvalidParameterError(
            f"{name}={value!r} is not a size. Pass a number of bytes or a string like '8GB' or '512MiB'"
            + (", or None to turn the check off." if name == "max_bytes" else ".")
        )
    if n < 1:
        raise InvalidParameterError(
            f"{name} must be positive (at least 1 byte), got {value!r}. Pass a number of bytes or a string "
            "like '8GB' or '512MiB'" + (", or None to turn the check off." if name == "max_bytes" else ".")
        )
    return int(n)


def plural(n: int, word: str) -> str:
    """``"1 gene"``, ``"2 genes"``, ``"1,000 genes"``: a count as the messages write it."""
    return f"{n:,} {word}{'s' * (n != 1)}"


def format_bytes(n: float) -> str:
    """Human-readable decimal size (``1.2 GB``), as the user documentation writes sizes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


@dataclass(frozen=True)
class ExportPlan:
    """What an export will write, computed before writing anything.

    Attributes
    ----------
    n_cells
        Cells: each gene file holds one value per cell.
    n_genes
        Genes to export.
    var_quantization
        8, 16 or ``None`` (float32).
    compression
        Gzip level 1-9 or ``None``.
    bytes_per_gene : int
        Bytes of one gene file before compression (``n_cells`` x bytes per value).
    payload_bytes : int
        Bytes of all gene files before compression: what ``max_bytes`` limits. Gzip shrinks them
        about 5 times when genes are expressed in 10% of the cells, more when fewer, hardly at all for
        dense data (see :doc:`/size`).
    n_files : int
        Files the gene export writes (one per gene plus ``var_manifest.json``).
    source
        Which matrix is read, e.g. ``"raw.X"``.
    max_bytes
        The size limit the export will apply (``None``: no limit); see :attr:`within_max_bytes`.

    """

    n_cells: int
    n_genes: int
    var_quantization: int | None
    compression: int | None
    source: str = ""
    max_bytes: int | None = None

    @property
    def within_max_bytes(self) -> bool:
        """Whether an export with these settings passes the ``max_bytes`` check.

        True when ``payload_bytes`` is at most ``max_bytes``, or when there is no limit. The export
        also refuses to write more than the free disk space, which is checked only when it runs.
        """
        return self.max_bytes is None or self.payload_bytes <= self.max_bytes

    @property
    def dtype(self) -> str:
        """How each value is stored in the gene files (``"uint8"``, ``"uint16"`` or ``"float32"``)."""
        return _DTYPE[self.var_quantization]

    @property
    def bytes_per_gene(self) -> int:
        """Uncompressed bytes per gene file."""
        return self.n_cells * _ITEMSIZE[self.var_quantization]

    @property
    def payload_bytes(self) -> int:
        """Bytes of all gene files before compression (how much gzip saves depends on the data, see :doc:`/size`)."""
        return self.bytes_per_gene * self.n_genes

    @property
    def n_files(self) -> int:
        """Gene files plus the manifest."""
        return self.n_genes + (1 if self.n_genes else 0)

    def table(self) -> str:
        """The size of this export next to the same export at the other bit depths.

        Returns
        -------
        str
            A text table with one row per storage (uint8, uint16, float32): bytes per cell, per gene
            and for all genes, before compression. The row of this export is marked.

        """
        rows = [f"{'dtype':<8} {'bytes/cell':>10} {'per gene':>11} {'all genes':>11}"]
        for bits in (8, 16, None):
            per = self.n_cells * _ITEMSIZE[bits]
            mark = "  <- this export" if bits == self.var_quantization else ""
            rows.append(
                f"{_DTYPE[bits]:<8} {_ITEMSIZE[bits]:>10} {format_bytes(per):>11} "
                f"{format_bytes(per * self.n_genes):>11}{mark}"
            )
        return "\n".join(rows)

    def __repr__(self) -> str:
        comp = f"gzip level {self.compression}" if self.compression else "no compression"
        src = f" from {self.source}" if self.source else ""
        return (
            f"ExportPlan: {plural(self.n_genes, 'gene')} x {self.n_cells:,} cells{src}, "
            f"{self.dtype}, {comp}\n"
            # The plan covers the genes; a viewer-ready export adds a few files of cell data.
            f"  {format_bytes(self.payload_bytes)} of gene files before compression, {self.n_files:,} files "
            "(genes and their manifest)\n"
            + "\n".join("  " + line for line in self.table().splitlines())
            + self._verdict()
        )

    def _verdict(self) -> str:
        if self.max_bytes is None:
            return ""
        if self.within_max_bytes:
            return f"\n  within max_bytes={format_bytes(self.max_bytes)}"
        return (
            f"\n  above max_bytes={format_bytes(self.max_bytes)}: the export will refuse it. Export fewer "
            "genes, or pass a larger max_bytes= (or max_bytes=None to turn the check off)."
        )

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(repr(self))


def _smaller_gene_files(plan: ExportPlan) -> list[str]:
    """What makes the gene files smaller before compression, among what this export does not do already."""
    ways = [
        "export fewer genes (genes= a boolean var column such as highly_variable, a marker list or a panel)"
    ]
    if plan.var_quantization != 8:
        ways.append("use 8-bit quantization (var_quantization=8)")
    return ways


def _shown(plan: ExportPlan) -> str:
    """The plan as an error shows it: the error says itself what is wrong, so without the verdict line."""
    return repr(replace(plan, max_bytes=None))


def check_plan(plan: ExportPlan, max_bytes: int | None) -> None:
    """Refuse an export whose gene files are above ``max_bytes`` before compression, before writing."""
    if max_bytes is not None and plan.payload_bytes > max_bytes:
        raise ExportTooLargeError(
            f"This export would write {format_bytes(plan.payload_bytes)} of gene files before compression, "
            f"above max_bytes={format_bytes(max_bytes)}.\n{_shown(plan)}\nTo make it smaller: "
            f"{', '.join(_smaller_gene_files(plan))}, or pass "
            "max_bytes=None (or a larger value) if you really want all of it."
        )


#: How much larger than measured on a sample of genes the gzip sizes may turn out (see check_disk).
GZIP_MARGIN = 1.5


@dataclass(frozen=True)
class DiskNeed:
    """The files an export puts on the target's disk, before compression, and its scratch files.

    Attributes
    ----------
    plan
        The gene files.
    other_files
        Bytes of each other file: cell data (points, obs, graph, vectors) and their manifests.
    scratch_bytes
        Temporary files a large CSR matrix is sorted into, on the same disk, removed at the end.

    """

    plan: ExportPlan
    other_files: tuple[int, ...] = ()
    scratch_bytes: int = 0

    @property
    def n_files(self) -> int:
        """Files in the finished export (folders not counted)."""
        return self.plan.n_files + len(self.other_files)

    def on_disk(self, block: int, gene_sizes: list[float] | None = None) -> int:
        """Bytes taken on a disk that allocates ``block`` bytes at a time (every file takes whole blocks).

        ``gene_sizes``: sizes of a sample of gene files (e.g. measured with gzip), to count every gene
        file as their mean on disk instead of its size before compression.
        """
        if gene_sizes is None:
            genes = self.plan.n_genes * _whole_blocks(self.plan.bytes_per_gene, block)
        else:
            genes = int(self.plan.n_genes * np.mean([_whole_blocks(b, block) for b in gene_sizes]))
        return genes + self.cell_data(block) + self.scratch_bytes

    def cell_data(self, block: int) -> int:
        """Bytes on disk of everything but the gene files and the scratch files."""
        var_manifest = self.plan.n_genes * 80 + 1024  # an id and two bounds per gene
        return sum(_whole_blocks(b, block) for b in (var_manifest, *self.other_files))


def full_disk_advice(need: DiskNeed, compression: int | None) -> str:
    """What to tell a user whose disk is too small for this export: only levers not already in use."""
    ways = ["free some space or write to another disk", *_smaller_gene_files(need.plan)]
    if not compression:
        ways.append("compress the files (compression=6)")
    if need.scratch_bytes:
        ways.append(
            f"give it memory_budget='{format_bytes(2 * need.scratch_bytes).replace(' ', '')}' or more, so the "
            f"matrix is sorted in memory instead of {format_bytes(need.scratch_bytes)} of temporary files "
            "(if the computer has that much)"
        )
    if len(need.other_files) > 20:
        ways.append("export fewer obs columns (obs_keys=)")
    return "To make it fit: " + "; ".join(ways) + "."


def _whole_blocks(n: float, block: int) -> int:
    return int(-(-int(np.ceil(n)) // block) * block)


#: The largest allocation unit counted per file. Some filesystems report a far larger block (ZFS reports its
#: record size, 128 KiB or 1 MiB) but store small files in smaller pieces.
MAX_BLOCK = 4096
_HAS_STATVFS = hasattr(os, "statvfs")


def _disk_stats(path: Path) -> tuple[int, int, int | None]:
    """(free bytes, allocation unit, files that can still be created or None) of the disk holding ``path``.

    ``os.statvfs`` where there is one; elsewhere (Windows) the free space alone, from shutil.
    """
    if not _HAS_STATVFS:
        return shutil.disk_usage(path).free, MAX_BLOCK, None
    st = os.statvfs(path)
    unit = st.f_frsize or st.f_bsize or MAX_BLOCK
    # f_files is 0 where the filesystem has no fixed number of files (btrfs, some network filesystems).
    return st.f_bavail * unit, max(512, min(unit, MAX_BLOCK)), st.f_favail if st.f_files else None


def check_disk(
    need: DiskNeed, target: os.PathLike, measure_gzip: Callable[[], list[int]] | None = None
) -> None:
    """Refuse an export that cannot fit on the target's disk, before writing anything.

    Counts the files' sizes before compression, each rounded up to the disk's blocks, the cell data and
    the scratch files, and the number of files against the disk's limit (its free inodes). When that does
    not fit and the export is compressed, ``measure_gzip`` compresses a sample of genes and returns their
    sizes: if the export fits with those sizes (plus a margin of :data:`GZIP_MARGIN`), it goes ahead with
    a warning. Running out of space anyway stops the export with nothing left
    behind (:class:`~cellucid_export.errors.DiskFullError`).
    """
    where = nearest_existing(Path(target).absolute().parent)
    free, block, files_left = _disk_stats(where)
    plan = need.plan
    if files_left is not None and need.n_files + 16 > files_left:  # 16: the folders
        raise ExportTooLargeError(
            f"This export writes {need.n_files:,} files, but the disk of {where} has room for only "
            f"{files_left:,} more (its limit on the number of files, although {format_bytes(free)} is "
            f"free).\n{_shown(plan)}\nExport fewer genes, or write to another disk."
        )
    raw = need.on_disk(block)
    if raw <= free:
        return None
    parts = [
        f"{format_bytes(raw - need.cell_data(block) - need.scratch_bytes)} of gene files before compression"
    ]
    if need.other_files:
        parts.append(f"{format_bytes(need.cell_data(block))} of cell data and manifests")
    if need.scratch_bytes:
        parts.append(f"{format_bytes(need.scratch_bytes)} of temporary files")
    measured = ""
    if measure_gzip is not None:
        sizes = measure_gzip()
        packed = need.on_disk(block, [GZIP_MARGIN * b for b in sizes])
        if packed <= free:
            warn(
                f"The export needs up to {format_bytes(raw)} before compression and {format_bytes(free)} is "
                f"free on the disk of {where}; gzip brings the gene files to about "
                f"{format_bytes(plan.n_genes * float(np.mean(sizes)))} (measured on "
                f"{plural(len(sizes), 'gene')}), so it goes ahead. If the disk fills up anyway, the export "
                "stops and leaves nothing behind."
            )
            return
        measured = (
            f" With gzip, measured on {plural(len(sizes), 'gene')}, it would still need about "
            f"{format_bytes(packed)}."
        )
    raise ExportTooLargeError(
        f"This export needs up to {format_bytes(raw)} on disk ({', '.join(parts)}) but only "
        f"{format_bytes(free)} is free on the disk of {where}.{measured}\n{_shown(plan)}\n"
        + full_disk_advice(need, plan.compression)
    )


def block_sizes(
    n_cells: int, nnz_fraction: float, sparse: bool, bits: int | None, budget: int, bytes_per_value: int = 32
) -> tuple[int, int]:
    """Genes per read block and per payload block within ``budget`` bytes of working memory.

    A sparse read block costs ``bytes_per_value`` per stored value while it is assembled (rows, columns and
    values, then the CSC copy; the reader says how much it needs) and gets half the budget. Payload blocks
    (``n_cells`` codes per gene) are cut from it; two are alive at once (one queued, one being written),
    each with an eighth (the rest is headroom for the encoders' buffers). A sparse reader that needs
    no block memory (``bytes_per_value == 0``: it writes each payload by a pass over the matrix) reads
    everything as one block, and its payloads, two alive at once (one being filled, one being
    written), get half each: fewer, larger payloads mean fewer passes. A dense block holds
    the float32 values, the float64 temporaries of quantization and the payload, three blocks at a
    time. Read chunks are bounded separately (about 16 MB per reading thread).
    """
    if not sparse:
        per = int(max(1, budget // 3 // max(1, n_cells * (22 + _ITEMSIZE[bits]))))
        return per, per
    out = payload_row_bytes(n_cells, _ITEMSIZE[bits])  # a sparse block's payload rows are padded
    if bytes_per_value == 0:
        return 2**62, int(max(1, budget // 2 // max(1, out)))
    read = budget // 2 // max(1.0, n_cells * nnz_fraction * bytes_per_value)
    payload = budget // 8 // max(1, out)
    return int(max(1, read)), int(max(1, payload))
