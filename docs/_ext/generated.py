"""Numbers the documentation shows, computed from the package instead of typed by hand.

``conf.py`` writes them into ``docs/_generated/`` at every build, and ``tests/test_docs.py``
recomputes them, so the pages cannot drift from the code. Run by hand to see the tables::

    python docs/_ext/generated.py
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from cellucid_export import CellucidExportWarning, ExportPlan, read_export
from cellucid_export.plan import DEFAULT_MAX_BYTES, format_bytes

#: The storage options of a gene file.
DTYPES = [(8, "uint8 (`var_quantization=8`)"), (16, "uint16 (`16`)"), (None, "float32 (`None`)")]
#: Gzip levels measured: none, the fastest, the default, the smallest.
LEVELS = [None, 1, 6, 9]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown (MyST) table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def size_tables() -> str:
    """The user documentation's size table (bytes per cell, per gene at 100k cells) and whole exports."""
    per_gene = []
    for bits, name in DTYPES:
        plan = ExportPlan(100_000, 1, bits, None)
        per_gene.append([name, str(plan.bytes_per_gene // plan.n_cells), format_bytes(plan.bytes_per_gene)])
    out = "Per gene, before compression:\n\n"
    out += md_table(["stored as", "bytes per cell", "per gene at 100k cells"], per_gene)
    out += (
        "\nWhole exports, before compression (**bold**: refused by the default guard, "
        f"`max_bytes` = {format_bytes(DEFAULT_MAX_BYTES)}):\n\n"
    )
    rows = []
    for n_cells in (100_000, 1_000_000):
        for n_genes in (2_000, 20_000):
            row = [f"{n_cells:,}", f"{n_genes:,}"]
            for bits, _ in DTYPES:
                b = ExportPlan(n_cells, n_genes, bits, None).payload_bytes
                row.append(f"**{format_bytes(b)}**" if b > DEFAULT_MAX_BYTES else format_bytes(b))
            rows.append(row)
    out += md_table(["cells", "genes", "uint8", "uint16", "float32"], rows)
    return out


def plan_repr() -> str:
    """What ``estimate()`` prints for 20,000 genes x 100,000 cells."""
    return (
        "```text\n>>> cellucid_export.ExportPlan(100_000, 20_000, 8, 6, source='X', max_bytes=8 * 10**9)\n"
        + repr(ExportPlan(100_000, 20_000, 8, 6, source="X", max_bytes=8 * 10**9))
        + "\n```\n"
    )


@contextlib.contextmanager
def _quiet():
    """The measurement exports are not news: no log lines, no 'not viewer-openable' warnings."""
    log = logging.getLogger("cellucid_export")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CellucidExportWarning)
            yield
    finally:
        log.setLevel(level)


def measure_tradeoffs() -> dict:
    """Export all genes of pbmc68k_reduced's ``raw.X`` at each bit depth and gzip level.

    Errors compare the decoded export with the source values; bytes are the gene files on disk. No
    timings: on 700 cells they are fixed costs and noise.
    """
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    source = adata.raw.X.toarray().astype(np.float64)
    gene_range = source.max(0) - source.min(0)
    n_cells, n_genes = source.shape
    out = {"n_cells": n_cells, "n_genes": n_genes, "errors": {}, "sizes": {}}
    out["nonzero"] = float((source != 0).mean())
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        for bits, _ in DTYPES:
            for level in LEVELS:
                target = Path(tmp) / f"{bits}-{level}"
                adata.cellucid.export(
                    target,
                    layer="raw",
                    var_quantization=bits,
                    compression=level,
                    embeddings=False,
                    progress=False,
                )
                out["sizes"][(bits, level)] = sum(p.stat().st_size for p in (target / "var").iterdir())
            decoded = read_export(target).to_array().astype(np.float64)
            err = np.abs(decoded - source)
            rel = np.divide(err.max(0), gene_range, out=np.zeros(n_genes), where=gene_range > 0)
            out["errors"][bits] = {
                "max": float(err.max()),
                "mean": float(err.mean()),
                "max_rel": float(rel.max()),
            }
    return out


def tradeoff_tables(m: dict) -> str:
    """The measurements as two tables: error per bit depth, then bytes per option."""
    n_cells, n_genes = m["n_cells"], m["n_genes"]
    out = (
        f"Measured on `pbmc68k_reduced` `raw.X` ({n_cells:,} cells x {n_genes:,} genes, log-normalised, "
        f"{m['nonzero']:.0%} of the values non-zero), every gene exported.\n\n"
    )
    rows = []
    for bits, name in DTYPES:
        e = m["errors"][bits]
        bound = "0 (exact)" if bits is None else f"1/{2 * (2**bits - 2):,} = {1 / (2 * (2**bits - 2)):.2e}"
        rows.append([name, f"{e['max']:.2e}", f"{e['mean']:.2e}", f"{e['max_rel']:.2e}", bound])
    out += md_table(
        [
            "stored as",
            "largest error",
            "mean error",
            "largest error / gene range",
            "guaranteed bound / range",
        ],
        rows,
    )
    out += "\n"
    rows = []
    for bits, name in DTYPES:
        raw = m["sizes"][(bits, None)]
        for level in LEVELS:
            size = m["sizes"][(bits, level)]
            rows.append(
                [
                    name if level is None else "",
                    "none" if level is None else f"gzip {level}",
                    format_bytes(size / n_genes),
                    f"{size / n_genes / n_cells:.2f}",
                    f"{raw / size:.1f}x",
                ]
            )
    out += md_table(["stored as", "compression", "bytes per gene", "bytes per cell", "smaller by"], rows)
    return out


def write_all(folder: Path) -> list[Path]:
    """Write every generated snippet into ``folder`` (the docs include them)."""
    folder.mkdir(parents=True, exist_ok=True)
    pages = {
        "size-tables.md": size_tables(),
        "plan-repr.md": plan_repr(),
        "tradeoffs.md": tradeoff_tables(measure_tradeoffs()),
    }
    written = []
    for name, text in pages.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for snippet in (size_tables(), plan_repr(), tradeoff_tables(measure_tradeoffs())):
        sys.stdout.write(snippet + "\n")
