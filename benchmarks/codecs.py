"""Compare ways of gzip-compressing real quantized gene vectors: size, and speed on one core.

The table behind ``cellucid_export.codec.LEVEL_PLAN``. Vectors: every gene of scanpy's
pbmc68k_reduced (``raw``, 8-bit) and, when ``benchmarks/data/M.h5ad`` exists, 160 genes spread over
its 100,000 cells. Each vector is compressed on its own, as an export does; best of three runs.

    python benchmarks/codecs.py [--data benchmarks/data/M.h5ad]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from zlib_ng import zlib_ng

from cellucid_export.codec import _encode_runs, get_codec


def pbmc_vectors() -> list[np.ndarray]:
    import scanpy as sc

    import cellucid_export  # noqa: F401  (registers adata.cellucid)

    adata = sc.datasets.pbmc68k_reduced()
    with tempfile.TemporaryDirectory() as tmp:
        res = adata.cellucid.export(Path(tmp) / "x", layer="raw", compression=None, progress=False)
        return [np.fromfile(p, np.uint8) for p in sorted((res.path / "var").iterdir())]


def h5ad_vectors(path: Path, n: int = 160) -> list[np.ndarray]:
    import h5py

    from cellucid_export.quantize import quantize_block
    from cellucid_export.sources import open_source

    with h5py.File(path, "r") as f:
        src = open_source(f["X"])
        idx = np.unique(np.linspace(0, src.shape[1] - 1, n).astype(np.int64))
        qb = quantize_block(next(src.blocks(idx, len(idx))), 8, constant_plus_one=True)
    return [np.ascontiguousarray(row) for row in qb.payload]


def library(module, level: int, strategy: int, mem_level: int = 8):
    def deflate(v):
        c = module.compressobj(level, module.DEFLATED, -15, mem_level, strategy)
        return c.compress(v) + c.flush()

    return deflate


METHODS = {
    "zlib level 1": library(zlib, 1, zlib.Z_DEFAULT_STRATEGY),
    "zlib level 6": library(zlib, 6, zlib.Z_DEFAULT_STRATEGY),
    "zlib level 9": library(zlib, 9, zlib.Z_DEFAULT_STRATEGY),
    "zlib-ng level 1": library(zlib_ng, 1, zlib_ng.Z_DEFAULT_STRATEGY),
    "zlib-ng level 6": library(zlib_ng, 6, zlib_ng.Z_DEFAULT_STRATEGY),
    "zlib-ng level 9": library(zlib_ng, 9, zlib_ng.Z_DEFAULT_STRATEGY),
    "zlib-ng runs only (Z_RLE)": library(zlib_ng, 6, zlib_ng.Z_RLE, 9),
    "zlib-ng Huffman only": library(zlib_ng, 6, zlib_ng.Z_HUFFMAN_ONLY, 9),
    "run encoder (_deflate)": _encode_runs,
    "the codec, level 1": get_codec(1).encode,
    "the codec, level 6": get_codec(6).encode,
    "the codec, level 9": get_codec(9).encode,
}


def measure(fn, vectors) -> tuple[int, float]:
    fn(vectors[0])  # compile / warm up
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        size = sum(len(fn(v)) for v in vectors)
        best = min(best, time.perf_counter() - t0)
    raw = sum(v.nbytes for v in vectors)
    return size, raw / best / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "M.h5ad")
    args = ap.parse_args()
    sets = {"pbmc68k_reduced": pbmc_vectors()}
    if args.data.exists():
        sets[args.data.stem] = h5ad_vectors(args.data)
    header = ["method"] + [f"{k} ({sum(v.nbytes for v in vs) / 1e6:.1f} MB)" for k, vs in sets.items()]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, fn in METHODS.items():
        cells = [name]
        for vectors in sets.values():
            size, speed = measure(fn, vectors)
            cells.append(f"{size:,} B at {speed:,.0f} MB/s")
        print("| " + " | ".join(cells) + " |")
    print("\nGzip members (the codec) carry 18 bytes of header and trailer more than raw deflate streams.")


if __name__ == "__main__":
    main()
