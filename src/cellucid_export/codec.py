"""Gzip encoding of payloads with a fixed, deterministic header.

Every ``.gz`` file is one gzip member (RFC 1952) whose header carries no file name and
``MTIME = 0``, so the same input always gives the same bytes. The deflate stream comes from
this package's run encoder (:mod:`cellucid_export._deflate`) or, for data it does not suit, from
the fastest library available for the requested level; the header and trailer are written here,
so the envelope is identical whichever produced the stream.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._deflate import deflate_runs

__all__ = ["Codec", "get_codec", "gunzip_strict", "gzip_decompress"]

# ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): nothing machine- or time-specific.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


#: When the first pass's output is above this fraction of the input, the data may hold structure that
#: runs miss, and a quick search (level 1) on the first :data:`PROBE_BYTES` checks whether it does.
SEARCH_ABOVE = 0.25
#: Bytes of a vector the quick search probes. On 100k-cell genes dense enough to be probed (15% of M's
#: genes), a quick search over the whole vector never beat the first pass yet took 30% of all encoding
#: time; the probe costs 2% and still sees a pattern that repeats within this many cells.
PROBE_BYTES = 4 * 1024
#: Inputs up to this size go through the run encoder, whose scratch space is 6 bytes per input byte;
#: each thread keeps its scratch for the next vector. Genes are far smaller (a million cells: 1 MB at 8
#: bits); a larger input (the coordinates of millions of cells) goes to the library's own run-only
#: strategy instead, which needs no scratch, so memory stays bounded whatever the input.
RUNS_MAX_BYTES = 16 * 2**20

_scratch = threading.local()


def _encode_runs(arr: np.ndarray) -> bytes:
    """:func:`cellucid_export._deflate.deflate_runs` with this thread's scratch arrays."""
    n = arr.size
    starts = getattr(_scratch, "starts", None)
    if starts is None or starts.size < n + 3:
        _scratch.starts = starts = np.empty(n + 3, dtype=np.int32)
        _scratch.syms = np.empty(n + 3, dtype=np.uint16)
    return deflate_runs(arr, starts, _scratch.syms).tobytes()


def _runs_first(module, level: int) -> Callable[[bytes], bytes]:
    """Deflate as runs of repeated bytes (our encoder), or a string search (``module``) when smaller.

    A gene vector is mostly runs of one code (that of 0.0) between single values. The first pass,
    :func:`cellucid_export._deflate.deflate_runs`, codes exactly that structure: runs as copies of
    the byte before, or for a gene expressed in most cells every byte as a literal, whichever is
    smaller. On real and simulated genes it wrote smaller streams than every zlib level, and faster
    than the fastest (table in :data:`LEVEL_PLAN`). A string search rarely beats it; repeats at a
    distance (a pattern of cells that comes back) are what it would find. So a quick level-1 search
    probes the start of a poorly compressed vector, and only where it beats the first pass there
    (per byte) do the quick and the level's full search run on the whole vector. The smallest
    stream wins.
    """

    def compress(data, lvl: int, strategy: int = module.Z_DEFAULT_STRATEGY) -> bytes:
        c = module.compressobj(lvl, module.DEFLATED, -15, 8, strategy)
        return c.compress(data) + c.flush()

    def deflate(data) -> bytes:
        view = memoryview(data).cast("B")
        size = view.nbytes
        if size <= RUNS_MAX_BYTES:
            out = _encode_runs(np.frombuffer(view, np.uint8))
        else:
            out = compress(view, level, module.Z_RLE)
        if len(out) <= SEARCH_ABOVE * size:
            return out
        if size > PROBE_BYTES:
            probe = len(compress(view[:PROBE_BYTES], 1))
            if probe * size >= len(out) * PROBE_BYTES:
                return out
        quick = compress(view, 1)
        if len(quick) >= len(out):
            return out
        searched = compress(view, level) if level > 1 else quick
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
        Which library searches the vectors the run encoder does not suit (``"zlib-ng"`` or
        ``"zlib"``).

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


#: Bytes and speed per core of each way of compressing real quantized gene vectors, each on its own:
#: 765 genes of pbmc68k_reduced (raw, 8-bit, 535 KB, vectors of 700 bytes) and 160 genes spread over
#: a 100k-cell log1p matrix (M of ``benchmarks/``, 16 MB). Raw deflate streams, except the codec's
#: gzip members (18 bytes more each). From ``python benchmarks/codecs.py``:
#:
#: ========================== ====================== ============================
#: method                     pbmc68k_reduced        100k cells
#: ========================== ====================== ============================
#: zlib level 1               281,359                2,860,620 at 216 MB/s
#: zlib level 6               272,834                2,464,040 at 49 MB/s
#: zlib level 9               271,501                2,281,434 at 3 MB/s
#: zlib-ng level 1            343,215                3,566,366 at 601 MB/s
#: zlib-ng level 6            266,177                2,299,125 at 127 MB/s
#: zlib-ng level 9            271,494                2,223,512 at 16 MB/s
#: zlib-ng runs only (Z_RLE)  249,455                2,168,927 at 552 MB/s
#: zlib-ng Huffman only       246,136                3,165,598 at 326 MB/s
#: run encoder (_deflate)     240,414                2,132,404 at 764 MB/s
#: the codec, levels 1-9      254,184 (240,414)      2,135,284 (2,132,404) at 730 MB/s
#: ========================== ====================== ============================
#:
#: The run encoder (:func:`cellucid_export._deflate.deflate_runs`) is smaller than every level of
#: either library and faster than the fastest, so every level starts with it (see
#: :func:`_runs_first`); the level sets how hard the full search works on vectors it does not
#: capture (none of these genes). Files stay standard gzip members.
#: ISA-L (python-isal) was measured too but its output changed, rarely, when several threads
#: compressed at once; the export promises the same bytes whatever ``n_jobs``, so it is not used.
#: ``benchmarks/run.py`` re-measures the speed on each benchmark dataset.
LEVEL_PLAN: dict[int, tuple[str, int]] = {level: ("zlib-ng", level) for level in range(1, 10)}


def get_codec(level: int, library: str | None = None) -> Codec:
    """The gzip encoder for a level: the run encoder, or the level's full search when smaller.

    See :data:`LEVEL_PLAN` for the measurements behind the choice. Without zlib-ng the
    standard library's zlib does the search, more slowly.

    Parameters
    ----------
    level
        Gzip level 1..9.
    library
        Force one library for the search (``"zlib-ng"`` or ``"zlib"``); for benchmarks and tests.

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


def gunzip_strict(data: bytes) -> tuple[bytes | None, str | None]:
    """Decode one gzip member as the viewer requires it; returns (bytes, None) or (None, problem)."""
    if len(data) < 18 or data[:3] != b"\x1f\x8b\x08":
        return None, "is not a gzip file although its name ends in .gz"
    if data[3] & 0xE0:
        return None, "has reserved gzip header flag bits set"
    d = zlib.decompressobj(31)
    try:
        out = d.decompress(data) + d.flush()
    except zlib.error as e:
        return None, f"is a corrupt gzip file ({e})"
    if not d.eof:
        return None, "is a truncated gzip file"
    if d.unused_data:
        second = " (a second gzip member)" if d.unused_data[:2] == b"\x1f\x8b" else ""
        return (
            None,
            f"has {len(d.unused_data)} bytes after its gzip member{second}; the viewer reads one member only",
        )
    if struct.unpack("<I", data[-4:])[0] != len(out) & 0xFFFFFFFF:
        return None, "has a wrong gzip ISIZE"
    return out, None


def gzip_decompress(data: bytes) -> bytes:
    """Decode a gzip file that must hold exactly one member and nothing after it (see :func:`gunzip_strict`)."""
    out, problem = gunzip_strict(data)
    if problem is not None:
        raise ValueError(f"The data {problem}.")
    return out
