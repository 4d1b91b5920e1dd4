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


def _isal_deflate(level: int) -> Callable[[bytes], bytes] | None:
    try:
        from isal import isal_zlib
    except ImportError:  # pragma: no cover
        return None
    return lambda data: isal_zlib.compress(data, level, -15)


def _crc32() -> Callable[[bytes], int]:
    try:
        from isal import isal_zlib

        return isal_zlib.crc32
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
        Which deflate implementation produces the stream (``"isal"``, ``"zlib-ng"`` or ``"zlib"``).

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


def get_codec(level: int, library: str | None = None) -> Codec:
    """Pick the deflate implementation for a gzip level.

    Level 1 is served by ISA-L (several times faster than zlib at a similar or better ratio);
    levels 2-9 by zlib-ng, which at every level we measured is both faster and no larger
    than the standard library's zlib. Without either library the standard library is used.

    Parameters
    ----------
    level
        Gzip level 1..9.
    library
        Force one implementation (``"isal"``, ``"zlib-ng"`` or ``"zlib"``); mainly for benchmarks
        and tests.

    """
    if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= 9:
        raise ValueError(f"compression must be None or an integer from 1 to 9, got {level!r}.")
    order = [library] if library else (["isal", "zlib-ng", "zlib"] if level == 1 else ["zlib-ng", "zlib"])
    for name in order:
        if name == "isal":
            # ISA-L's own levels are 0..3; 1 is its best speed/size balance.
            deflate = _isal_deflate(1)
        elif name == "zlib-ng":
            deflate = _zlib_ng_deflate(level)
        elif name == "zlib":
            deflate = _stdlib_deflate(level)
        else:
            raise ValueError(f"Unknown gzip library {name!r}; use 'isal', 'zlib-ng' or 'zlib'.")
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
