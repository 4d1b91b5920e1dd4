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

__all__ = ["Codec", "get_codec", "gzip_decompress"]

# ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown): nothing machine- or time-specific.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def _stdlib_deflate(level: int) -> Callable[[bytes], bytes]:
    def deflate(data) -> bytes:
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()

    return deflate


def _zlib_ng_deflate(level: int) -> Callable[[bytes], bytes] | None:
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - zlib-ng is a dependency; stdlib is the safety net
        return None
    return lambda data: zlib_ng.compress(data, level, -15)


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


#: For each gzip level, the fastest deflate setting whose output was no larger than the standard
#: library's at that level on real quantized gene vectors (150 genes of a 100k-cell log1p export):
#:
#: ====== ============= ============== ============================
#: level  stdlib bytes  chosen          bytes, speed per core
#: ====== ============= ============== ============================
#: 1      2,577,870      zlib-ng 2      2,286,038, 373 MB/s
#: 2      2,517,092      zlib-ng 2      2,286,038
#: 3      2,419,265      zlib-ng 2      2,286,038
#: 4      2,261,366      zlib-ng 3      2,229,704, 283 MB/s
#: 5      2,237,601      zlib-ng 5      2,072,600, 169 MB/s
#: 6      2,215,543      zlib-ng 5      2,072,600 (stdlib: 50 MB/s)
#: 7      2,200,032      zlib-ng 5      2,072,600
#: 8      2,127,977      zlib-ng 6      2,066,342, 104 MB/s
#: 9      2,051,142      zlib-ng 9      1,993,869, 15 MB/s
#: ====== ============= ============== ============================
#:
#: So a level keeps its meaning (at least as small as ``gzip -N``) and runs 2-3x faster.
#: ISA-L (python-isal) was faster still at levels 1-3 (980 MB/s), but its output was measured to
#: change, rarely, when several threads compress at once (same data, different deflate stream):
#: the export promises the same bytes whatever ``n_jobs``, so it is not used.
#: ``benchmarks/run.py`` re-measures the sizes on each benchmark dataset.
LEVEL_PLAN: dict[int, tuple[str, int]] = {
    1: ("zlib-ng", 2),
    2: ("zlib-ng", 2),
    3: ("zlib-ng", 2),
    4: ("zlib-ng", 3),
    5: ("zlib-ng", 5),
    6: ("zlib-ng", 5),
    7: ("zlib-ng", 5),
    8: ("zlib-ng", 6),
    9: ("zlib-ng", 9),
}


def get_codec(level: int, library: str | None = None) -> Codec:
    """The gzip encoder for a level: the fastest library setting at least as small as zlib's.

    See :data:`LEVEL_PLAN` for the measurements behind the choice. Without zlib-ng the
    standard library's zlib is used at the same level.

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
