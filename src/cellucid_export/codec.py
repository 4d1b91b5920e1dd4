"""Gzip encoding of payloads with a fixed, deterministic header.

Every ``.gz`` file is one gzip member (RFC 1952) whose header carries no file name and
``MTIME = 0``, so the same input always gives the same bytes. The deflate stream comes from
the fastest library available for the requested level; the header and trailer are written
here, so the envelope is identical whichever library compressed the data.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Codec", "get_codec", "gzip_decompress"]

# ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): nothing machine- or time-specific.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


#: When the first pass's output is above this fraction of the input, the data may hold structure that
#: runs miss, and a quick search (level 1) on the first :data:`PROBE_BYTES` checks whether it does.
SEARCH_ABOVE = 0.25
#: Bytes of a vector the quick search probes. On 100k-cell genes dense enough to be probed (15% of M's
#: genes), a quick search over the whole vector never beat the first pass yet took 30% of all encoding
#: time; the probe costs 2% and still sees a pattern that repeats within this many cells.
PROBE_BYTES = 4 * 1024
#: Above this fraction of bytes that differ from the byte before, runs are short and deflate does
#: better coding each byte on its own (``Z_HUFFMAN_ONLY``): on M's genes the two cross near a quarter
#: (an isolated value makes two such changes), and for a gene expressed in every cell Huffman-only is
#: 7% smaller and 25% faster than runs.
DENSE_ABOVE = 0.25
#: ``memLevel`` of the first pass: its largest buffer of symbols means fewer, cheaper blocks. On M's
#: genes: 6% faster and 0.2% smaller than the default 8.
FIRST_MEM_LEVEL = 9


def _runs_first(module, level: int) -> Callable[[bytes], bytes]:
    """Deflate with ``module`` (zlib or zlib-ng): runs only, or a string search when that does better.

    A gene vector is mostly runs of one code (that of 0.0) between single values, and deflate
    restricted to runs (``Z_RLE``) finds exactly that structure: on real and simulated genes it wrote
    smaller streams than every zlib level, 3-10x faster (table in :data:`LEVEL_PLAN`). A gene expressed
    in most cells has few runs, and Huffman coding alone does better on it (:data:`DENSE_ABOVE`). A
    string search rarely beats either; repeats at a distance (a pattern of cells that comes back) are
    what it would find. So a quick level-1 search probes the start of a poorly compressed vector, and
    only where it beats the first pass there (per byte) do the quick and the level's full search run on
    the whole vector. The smallest stream wins.
    """

    def compress(data, lvl: int, strategy: int, mem_level: int = 8) -> bytes:
        c = module.compressobj(lvl, module.DEFLATED, -15, mem_level, strategy)
        return c.compress(data) + c.flush()

    def deflate(data) -> bytes:
        view = memoryview(data).cast("B")
        size = view.nbytes
        arr = np.frombuffer(view, np.uint8)
        dense = np.count_nonzero(arr[1:] != arr[:-1]) > DENSE_ABOVE * size
        out = compress(view, level, module.Z_HUFFMAN_ONLY if dense else module.Z_RLE, FIRST_MEM_LEVEL)
        if len(out) <= SEARCH_ABOVE * size:
            return out
        if size > PROBE_BYTES:
            probe = len(compress(view[:PROBE_BYTES], 1, module.Z_DEFAULT_STRATEGY))
            if probe * size >= len(out) * PROBE_BYTES:
                return out
        quick = compress(view, 1, module.Z_DEFAULT_STRATEGY)
        if len(quick) >= len(out):
            return out
        searched = compress(view, level, module.Z_DEFAULT_STRATEGY) if level > 1 else quick
        return min(quick, searched, key=len)

    return deflate


def _stdlib_deflate(level: int) -> Callable[[bytes], bytes]:
    return _runs_first(zlib, level)


def _zlib_ng_deflate(level: int) -> Callable[[bytes], bytes] | None:
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - zlib-ng is a dependency; stdlib is the safety net
        return None
    return _runs_first(zlib_ng, level)


def _crc32() -> Callable[[bytes], int]:
    try:
        from zlib_ng import zlib_ng

        return zlib_ng.crc32
    except ImportError:  # pragma: no cover
        return zlib.crc32


@dataclass(frozen=True)
class Codec:
    """A gzip encoder for one compression level.

    Attributes
    ----------
    level
        The user-facing level, 1 (fastest) to 9 (smallest).
    library
        Which deflate implementation produces the stream (``"zlib-ng"`` or ``"zlib"``).

    """

    level: int
    library: str
    _deflate: Callable[[bytes], bytes]
    _crc: Callable[[bytes], int]

    def encode(self, data) -> bytes:
        """Return ``data`` (bytes-like) as one deterministic gzip member."""
        body = self._deflate(data)
        size = memoryview(data).nbytes
        trailer = struct.pack("<II", self._crc(data) & 0xFFFFFFFF, size & 0xFFFFFFFF)
        return b"".join((GZIP_HEADER, body, trailer))


#: Bytes (raw deflate streams) and speed per core of each way of compressing real quantized gene
#: vectors: 765 genes of pbmc68k_reduced (raw, 8-bit, 535 KB) and 160 genes spread over a 100k-cell
#: log1p matrix (M of ``benchmarks/``, 16 MB):
#:
#: =========================== ================= ================================
#: method                      pbmc68k_reduced   100k cells
#: =========================== ================= ================================
#: zlib level 1                281,359           2,860,620 at 203 MB/s
#: zlib level 6                272,834           2,464,040 at 47 MB/s
#: zlib level 9                271,501           2,281,434 at 3 MB/s
#: zlib-ng 1                   342,287           3,566,166 at 560 MB/s
#: zlib-ng 5                   266,986           2,304,655 at 155 MB/s
#: zlib-ng 9                   271,494           2,223,512 at 16 MB/s
#: zlib-ng runs only (Z_RLE)   249,455           2,174,038 at 537 MB/s
#: runs or Huffman-only        240,580           2,136,720 at 598 MB/s
#: the codec, level 1 or 6     240,580           2,136,720 at 583 MB/s
#: =========================== ================= ================================
#:
#: Runs-only deflate, or Huffman coding alone for a gene expressed in most cells, is smaller than every
#: level of either library and as fast as the fastest, so every level starts with it (see
#: :func:`_runs_first`); the level sets how hard the full search works on vectors that neither
#: captures (none of these genes). Files stay standard gzip members.
#: ISA-L (python-isal) was measured too but its output changed, rarely, when several threads
#: compressed at once; the export promises the same bytes whatever ``n_jobs``, so it is not used.
#: ``benchmarks/run.py`` re-measures the speed on each benchmark dataset.
LEVEL_PLAN: dict[int, tuple[str, int]] = {level: ("zlib-ng", level) for level in range(1, 10)}


def get_codec(level: int, library: str | None = None) -> Codec:
    """The gzip encoder for a level: runs-only deflate, or the level's full search when smaller.

    See :data:`LEVEL_PLAN` for the measurements behind the choice. Without zlib-ng the
    standard library's zlib does the same, more slowly.

    Parameters
    ----------
    level
        Gzip level 1..9.
    library
        Force one implementation at this level (``"zlib-ng"`` or ``"zlib"``); for benchmarks and tests.

    """
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 9:
        raise ValueError(f"compression must be None or an integer from 1 to 9, got {level!r}.")
    if library is None:
        preferred, internal = LEVEL_PLAN[level]
        candidates = [(preferred, internal), ("zlib", level)]
    else:
        candidates = [(library, level)]
    for name, internal in candidates:
        if name == "zlib-ng":
            deflate = _zlib_ng_deflate(internal)
        elif name == "zlib":
            deflate = _stdlib_deflate(internal)
        else:
            raise ValueError(f"Unknown gzip library {name!r}; use 'zlib-ng' or 'zlib'.")
        if deflate is not None:
            return Codec(level, name, deflate, _crc32())
    raise ImportError(f"The gzip library {library!r} is not installed.")  # pragma: no cover


def gzip_decompress(data: bytes) -> bytes:
    """Decode a gzip file that must hold exactly one member and nothing after it."""
    d = zlib.decompressobj(31)
    out = d.decompress(data) + d.flush()
    if not d.eof:
        raise ValueError("truncated gzip data: the file ends before the gzip member does")
    if d.unused_data:
        raise ValueError(f"{len(d.unused_data)} unexpected bytes after the gzip member")
    return out
