"""A deflate encoder (RFC 1951) for vectors made of runs of repeated bytes (numba).

A quantized gene is a run of one code (that of 0.0) broken by single values. zlib's run-length
strategy finds exactly that structure, but spends most of its time on generic machinery: the
sliding window, a symbol buffer that closes a block every 32k symbols, per-block tree building.
Here the whole vector is parsed once into literals and length/distance-1 copies (the same parse as
``Z_RLE``), four ways of coding it are priced from the symbol counts (runs or, as
``Z_HUFFMAN_ONLY`` does, every byte a literal, each with its own Huffman codes; runs with the
fixed codes; the bytes stored as they are) and the cheapest is written, as a single block. The output is a raw
deflate stream any inflater reads; :mod:`cellucid_export.codec` wraps it in a gzip member.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["deflate_runs"]

_jit = numba.njit(nogil=True, cache=True)
_inline = numba.njit(nogil=True, cache=True, inline="always")

#: Length symbols 257..285: the first length of each and its number of extra bits (RFC 1951 3.2.5).
_LEN_BASE = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258], dtype=np.int64)  # fmt: skip
_LEN_EXTRA = np.array(
    [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0], dtype=np.int64
)


def _length_symbols() -> np.ndarray:
    """Length symbol (257..285) of every copy length 0..258 (entries below 3 unused).

    Symbol 284 covers 227..257: 258 is symbol 285 only (284 with extra bits 31 is invalid).
    """
    sym = np.zeros(259, dtype=np.int64)
    for code in range(len(_LEN_BASE)):
        top = _LEN_BASE[code + 1] if code + 1 < len(_LEN_BASE) else 259
        sym[_LEN_BASE[code] : top] = 257 + code
    return sym


_LEN_SYM = _length_symbols()
#: A copy of each length 3..258 as :func:`_parse` stores it: symbol, and from bit 9 its extra bits.
_PACKED = np.array(
    [0, 0, 0] + [_LEN_SYM[m] | ((m - _LEN_BASE[_LEN_SYM[m] - 257]) << 9) for m in range(3, 259)],
    dtype=np.int64,
)
#: Order in which the code-length code's lengths are sent (RFC 1951 3.2.7).
_CL_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], dtype=np.int64)
#: Lengths of the fixed literal/length code (RFC 1951 3.2.6).
_FIXED_LL = np.concatenate([np.full(144, 8), np.full(112, 9), np.full(24, 7), np.full(8, 8)]).astype(np.int64)

MAX_COPY = 258
#: Price coding every byte as a literal when runs average fewer bytes than this (see deflate_runs).
LITERALS_BELOW = 8
_NEVER = np.int64(2**62)
_ZERO = np.uint64(0)


@_jit
def _run_starts(a, starts):
    """Write where each run of equal bytes starts into ``starts``; return the run count.

    ``starts`` needs room for ``a.size + 1`` entries: a position is written at every step and kept
    only where the byte changes, which costs no branch and so no misprediction at run ends (a
    branch per byte was half of all encoding time). After the last run comes ``a.size``.
    """
    n = a.size
    if n == 0:
        starts[0] = 0
        return 0
    starts[0] = 0
    k = 1
    for i in range(1, n):
        starts[k] = i
        k += a[i] != a[i - 1]
    starts[k] = n
    return k


@_jit
def _parse(a, starts, n_runs, syms, ll_freq, byte_freq):
    """Turn runs into deflate symbols; count them (``ll_freq``) and every byte (``byte_freq``).

    Each run is its first byte as a literal, then copies at distance 1 of the byte before when at
    least three more follow (deflate's shortest copy), else those bytes as literals too: the parse
    of zlib's ``Z_RLE``. A symbol goes into ``syms`` as its number (0..285) plus, from bit 9, the
    value of a copy length's extra bits. ``byte_freq`` prices coding every byte as a literal.
    Returns the symbol count, end of block included.
    """
    k = 0
    for r in range(n_runs):
        b = a[starts[r]]
        length = starts[r + 1] - starts[r]
        byte_freq[b] += length
        syms[k] = b
        k += 1
        ll_freq[b] += 1
        left = length - 1
        while left >= MAX_COPY:
            syms[k] = _PACKED[MAX_COPY]
            k += 1
            ll_freq[_LEN_SYM[MAX_COPY]] += 1
            left -= MAX_COPY
        # The rest: one or two literals, or a copy (as zlib does). Branch-free, as run lengths are
        # data and mispredicted branches on them took most of this loop's time: two literals and a
        # copy are always written, and only what applies is kept.
        n_lit = left if left < 3 else 0
        syms[k] = b
        syms[k + 1] = b
        k += n_lit
        ll_freq[b] += n_lit
        left -= n_lit
        packed = _PACKED[left]
        used = 1 if left > 0 else 0
        syms[k] = packed
        k += used
        ll_freq[packed & 511] += used
    syms[k] = 256
    ll_freq[256] += 1
    byte_freq[256] += 1
    return k + 1


@_jit
def _sort(keys):
    """Sort ``keys`` in place.

    A shell sort: for a few hundred keys it is faster than numpy's sorts under numba, and it compiles
    in a fraction of their time (compiling this module went from 7.9 to 4.5 s).
    """
    n = keys.size
    for gap in (701, 301, 132, 57, 23, 10, 4, 1):
        for i in range(gap, n):
            k = keys[i]
            j = i
            while j >= gap and keys[j - gap] > k:
                keys[j] = keys[j - gap]
                j -= gap
            keys[j] = k


@_jit
def _code_lengths(freq, limit):
    """Huffman code lengths for ``freq`` with no code longer than ``limit`` bits.

    Codes come from the two-queue construction over symbols sorted by count (ties by symbol, so
    the result is deterministic). When a code would be too long, the counts are halved (rounded up,
    so no used symbol drops out) and the code rebuilt: flatter counts give a shallower tree, and
    such long codes belong to symbols too rare for the loss to matter. At least two symbols get a
    code, as inflaters expect of every code in a dynamic block.
    """
    n = freq.size
    f = np.empty(n, dtype=np.int64)
    for s in range(n):
        f[s] = freq[s]
    used = 0
    for s in range(n):
        if f[s] > 0:
            used += 1
    s = 0
    while used < 2 and s < n:
        if f[s] == 0:
            f[s] = 1
            used += 1
        s += 1
    lengths = np.zeros(n, dtype=np.int64)
    while True:
        # Used symbols by count, then by symbol: one key each (symbols < 1024), shell-sorted.
        order = np.empty(used, dtype=np.int64)
        m = 0
        for s in range(n):
            if f[s] > 0:
                order[m] = (f[s] << 10) | s
                m += 1
        _sort(order)
        for j in range(m):
            order[j] &= 1023
        nodes = 2 * m - 1
        weight = np.empty(nodes, dtype=np.int64)
        parent = np.empty(nodes, dtype=np.int64)
        for j in range(m):
            weight[j] = f[order[j]]
        leaf = 0
        inner = m
        for node in range(m, nodes):
            # Join the two lightest of the next leaf and the next inner node (leaves first on ties).
            weight[node] = 0
            for _ in range(2):
                if leaf < m and (inner >= node or weight[leaf] <= weight[inner]):
                    child = leaf
                    leaf += 1
                else:
                    child = inner
                    inner += 1
                weight[node] += weight[child]
                parent[child] = node
        depth = np.zeros(nodes, dtype=np.int64)
        longest = 0
        for node in range(nodes - 2, -1, -1):
            depth[node] = depth[parent[node]] + 1
        for j in range(m):
            lengths[order[j]] = depth[j]
            if depth[j] > longest:
                longest = depth[j]
        if longest <= limit:
            return lengths
        if m > (1 << limit):
            raise ValueError("more symbols than codes of that length")
        for s in range(n):
            if f[s] > 0:
                f[s] = (f[s] + 1) >> 1


@_jit
def _codes(lengths):
    """Canonical codes for ``lengths`` (RFC 1951 3.2.2), bit-reversed for an LSB-first stream."""
    n = lengths.size
    count = np.zeros(16, dtype=np.int64)
    for s in range(n):
        count[lengths[s]] += 1
    count[0] = 0
    next_code = np.zeros(16, dtype=np.int64)
    code = 0
    for bits in range(1, 16):
        code = (code + count[bits - 1]) << 1
        next_code[bits] = code
    codes = np.zeros(n, dtype=np.int64)
    for s in range(n):
        ln = lengths[s]
        if ln:
            c = next_code[ln]
            next_code[ln] += 1
            r = 0
            for _ in range(ln):
                r = (r << 1) | (c & 1)
                c >>= 1
            codes[s] = r
    return codes


@_jit
def _repeats(cl_sym, cl_extra, k, run, sym, shortest, longest):
    """Code ``run`` repeats with ``sym`` (``shortest``..``longest`` each) while at least ``shortest`` are left.

    Returns the new symbol count and the repeats left over.
    """
    while run >= shortest:
        m = min(run, longest)
        cl_sym[k] = sym
        cl_extra[k] = m - shortest
        k += 1
        run -= m
    return k, run


@_jit
def _length_runs(lens, cl_sym, cl_extra):
    """Run-length code a sequence of code lengths with symbols 0..18. Returns the symbol count."""
    n = lens.size
    k = 0
    i = 0
    while i < n:
        v = lens[i]
        j = i + 1
        while j < n and lens[j] == v:
            j += 1
        run = j - i
        if v == 0:  # zeros: 11..138 at a time, then 3..10
            k, run = _repeats(cl_sym, cl_extra, k, run, 18, 11, 138)
            k, run = _repeats(cl_sym, cl_extra, k, run, 17, 3, 10)
        else:  # a length once, then 3..6 copies of it at a time
            cl_sym[k] = v
            k += 1
            k, run = _repeats(cl_sym, cl_extra, k, run - 1, 16, 3, 6)
        for _ in range(run):
            cl_sym[k] = v
            k += 1
        i = j
    return k


@_jit
def _dynamic_header(ll_freq, d_freq):
    """Codes and header of a dynamic block for these counts, and the header's size in bits."""
    ll_len = _code_lengths(ll_freq, 15)
    d_len = _code_lengths(d_freq, 15)
    n_ll = 286
    while n_ll > 257 and ll_len[n_ll - 1] == 0:
        n_ll -= 1
    n_d = 30
    while n_d > 1 and d_len[n_d - 1] == 0:
        n_d -= 1
    lens = np.empty(n_ll + n_d, dtype=np.int64)
    for s in range(n_ll):
        lens[s] = ll_len[s]
    for s in range(n_d):
        lens[n_ll + s] = d_len[s]
    cl_sym = np.empty(lens.size, dtype=np.int64)
    cl_extra = np.zeros(lens.size, dtype=np.int64)
    n_cl = _length_runs(lens, cl_sym, cl_extra)
    cl_freq = np.zeros(19, dtype=np.int64)
    for j in range(n_cl):
        cl_freq[cl_sym[j]] += 1
    cl_len = _code_lengths(cl_freq, 7)
    n_clen = 19
    while n_clen > 4 and cl_len[_CL_ORDER[n_clen - 1]] == 0:
        n_clen -= 1
    bits = 3 + 5 + 5 + 4 + 3 * n_clen
    for j in range(n_cl):
        s = cl_sym[j]
        bits += cl_len[s] + (2 if s == 16 else 3 if s == 17 else 7 if s == 18 else 0)
    return ll_len, d_len, n_ll, n_d, cl_sym[:n_cl], cl_extra[:n_cl], cl_len, n_clen, bits


@_inline
def _put(out, pos, acc, nacc, value, nbits):
    """Append ``nbits`` (<= 32) bits of ``value``, LSB first; the state is (pos, acc, nacc).

    Bits gather in a 64-bit accumulator whose whole bytes are written at once (:func:`_put_bytes`),
    so it holds at most 7 bits between calls. Unsigned arithmetic throughout: numba's shifts of signed
    integers are checked, which made every call ten times slower.
    """
    acc |= np.uint64(value) << nacc
    return _put_bytes(out, pos, acc, nacc + np.uint64(nbits))


@_jit
def _flush(out, pos, acc, nacc):
    """Write the accumulator's bits, padding the last byte with zeros. Returns the new ``pos``."""
    while nacc > 0:
        out[pos] = acc & 0xFF
        pos += 1
        acc >>= np.uint64(8)
        nacc -= min(nacc, np.uint64(8))
    return pos


@_jit
def _cost(freq, lengths):
    bits = 0
    for s in range(freq.size):
        bits += freq[s] * lengths[s]
    return bits


@_jit
def _put_symbols(syms, n_syms, ll_code, ll_len, copy_bits, out, pos, acc, nacc):
    """Write ``syms[:n_syms]`` (as :func:`_parse` packs them) with the given literal/length code.

    A copy's distance code is all zeros (distance 1 is symbol 0, the first canonical code), so
    only its length, ``copy_bits``, is needed. The bit writing is inlined (:func:`_put_bytes`, which
    numba copies in at compile time): as an ordinary call it cost a reference count on ``out`` per
    symbol, 15 times the work itself. No branch per symbol: a literal's extra bits are zero.

    Symbols go two at a time: the loop is bound by the chain of shifts through the accumulator, and
    a pair (at most 2 x 25 bits) takes one trip down it instead of two. For that room every whole byte
    is written after each pair, leaving at most 7 bits behind (8 bytes are stored, and only the
    whole ones kept). The bits are the same as one symbol at a time (17.7-20 against 21.6-23 µs a
    gene of M).
    """
    total = np.empty(286, dtype=np.uint64)
    for s in range(286):
        total[s] = ll_len[s] + (_LEN_EXTRA[s - 257] + copy_bits if s > 256 else 0)
    low9 = np.uint64(511)
    pos, acc, nacc = _put_bytes(out, pos, acc, nacc)
    j = 0
    while j < n_syms:
        x1 = np.uint64(syms[j])
        s1 = x1 & low9
        bits = np.uint64(ll_code[s1]) | ((x1 >> np.uint64(9)) << np.uint64(ll_len[s1]))
        width = total[s1]
        if j + 1 < n_syms:
            x2 = np.uint64(syms[j + 1])
            s2 = x2 & low9
            bits |= (np.uint64(ll_code[s2]) | ((x2 >> np.uint64(9)) << np.uint64(ll_len[s2]))) << width
            width += total[s2]
        acc |= bits << nacc
        nacc += width
        pos, acc, nacc = _put_bytes(out, pos, acc, nacc)
        j += 2
    return pos, acc, nacc


@_inline
def _put_bytes(out, pos, acc, nacc):
    """Write the accumulator's whole bytes (8 bytes stored, ``nacc // 8`` kept), leaving at most 7 bits."""
    out[pos] = acc & 0xFF
    out[pos + 1] = (acc >> np.uint64(8)) & 0xFF
    out[pos + 2] = (acc >> np.uint64(16)) & 0xFF
    out[pos + 3] = (acc >> np.uint64(24)) & 0xFF
    out[pos + 4] = (acc >> np.uint64(32)) & 0xFF
    out[pos + 5] = (acc >> np.uint64(40)) & 0xFF
    out[pos + 6] = (acc >> np.uint64(48)) & 0xFF
    out[pos + 7] = (acc >> np.uint64(56)) & 0xFF
    whole = nacc >> np.uint64(3)
    return pos + np.int64(whole), acc >> (whole << np.uint64(3)), nacc & np.uint64(7)


@_jit
def _put_header(hdr, out, pos, acc, nacc):
    """Write a dynamic block's header (from :func:`_dynamic_header`) as the final block."""
    n_ll, n_d, cl_sym, cl_extra, cl_len, n_clen = hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7]
    pos, acc, nacc = _put(out, pos, acc, nacc, 0b101, 3)  # last block, dynamic codes
    pos, acc, nacc = _put(out, pos, acc, nacc, n_ll - 257, 5)
    pos, acc, nacc = _put(out, pos, acc, nacc, n_d - 1, 5)
    pos, acc, nacc = _put(out, pos, acc, nacc, n_clen - 4, 4)
    for j in range(n_clen):
        pos, acc, nacc = _put(out, pos, acc, nacc, cl_len[_CL_ORDER[j]], 3)
    cl_code = _codes(cl_len)
    for j in range(cl_sym.size):
        s = cl_sym[j]
        pos, acc, nacc = _put(out, pos, acc, nacc, cl_code[s], cl_len[s])
        if s >= 16:
            pos, acc, nacc = _put(out, pos, acc, nacc, cl_extra[j], 2 if s == 16 else 3 if s == 17 else 7)
    return pos, acc, nacc


@_jit
def _put_stored(a, out):
    """``a`` as stored (uncompressed) blocks of at most 65,535 bytes. Returns the byte count."""
    n = a.size
    pos = 0
    start = 0
    while True:
        size = min(65535, n - start)
        out[pos] = 1 if start + size == n else 0  # last block?, type 00, padding to the byte
        out[pos + 1] = size & 0xFF
        out[pos + 2] = size >> 8
        out[pos + 3] = (size & 0xFF) ^ 0xFF
        out[pos + 4] = (size >> 8) ^ 0xFF
        pos += 5
        for i in range(size):
            out[pos + i] = a[start + i]
        pos += size
        start += size
        if start == n:
            return pos


@_jit
def deflate_runs(a, starts, syms):
    """Raw deflate stream of the bytes ``a`` (1-D uint8), as a new uint8 array.

    ``starts`` (int32) and ``syms`` (uint16) are scratch space of at least ``a.size + 3`` entries,
    reused between calls: a fresh array per call means fresh pages and their faults. The stream
    is one block, whichever of these is smallest (first on ties): the run parse with its own
    codes, every byte a literal with its own codes, the run parse with deflate's fixed codes, or
    the bytes stored as they are. A dynamic block may be as long as its data, so one per vector
    is allowed; zlib instead closes a block every 16-64k symbols, for its buffer's sake.
    """
    n = a.size
    n_runs = _run_starts(a, starts)
    ll_freq = np.zeros(286, dtype=np.int64)
    byte_freq = np.zeros(286, dtype=np.int64)
    n_syms = _parse(a, starts, n_runs, syms, ll_freq, byte_freq)

    n_copies = 0
    extra_bits = 0
    for s in range(257, 286):
        n_copies += ll_freq[s]
        extra_bits += ll_freq[s] * _LEN_EXTRA[s - 257]
    d_freq = np.zeros(30, dtype=np.int64)
    d_freq[0] = n_copies
    no_copy = np.zeros(30, dtype=np.int64)

    run_hdr = _dynamic_header(ll_freq, d_freq)
    run_bits = run_hdr[8] + _cost(ll_freq, run_hdr[0]) + n_copies * run_hdr[1][0] + extra_bits
    # Every byte a literal only pays when runs are short; pricing it costs a tenth of encoding a
    # sparse gene, so it is priced only where runs average under LITERALS_BELOW bytes.
    lit_bits = _NEVER
    if n_runs * LITERALS_BELOW > n:
        lit_len = _dynamic_header(byte_freq, no_copy)
        lit_bits = lit_len[8] + _cost(byte_freq, lit_len[0])
    fixed_bits = 3 + _cost(ll_freq, _FIXED_LL) + n_copies * 5 + extra_bits
    stored_bits = 8 * (n + 5 * max(1, (n + 65534) // 65535))
    best = min(run_bits, lit_bits, fixed_bits, stored_bits)

    out = np.empty((best + 7) // 8 + 8, dtype=np.uint8)
    if best == stored_bits and best < min(run_bits, lit_bits, fixed_bits):
        return out[: _put_stored(a, out)]
    if best == run_bits:
        pos, acc, nacc = _put_header(run_hdr, out, 0, _ZERO, _ZERO)
        pos, acc, nacc = _put_symbols(
            syms, n_syms, _codes(run_hdr[0]), run_hdr[0], run_hdr[1][0], out, pos, acc, nacc
        )
    elif best == lit_bits:
        lit_hdr = _dynamic_header(byte_freq, no_copy)
        pos, acc, nacc = _put_header(lit_hdr, out, 0, _ZERO, _ZERO)
        for i in range(n):  # the run parse is not needed any more; one compiled writer serves both
            syms[i] = a[i]
        syms[n] = 256
        pos, acc, nacc = _put_symbols(syms, n + 1, _codes(lit_hdr[0]), lit_hdr[0], 0, out, pos, acc, nacc)
    else:
        pos, acc, nacc = _put(out, 0, _ZERO, _ZERO, 0b011, 3)  # last block, fixed codes
        pos, acc, nacc = _put_symbols(syms, n_syms, _codes(_FIXED_LL), _FIXED_LL, 5, out, pos, acc, nacc)
    size = _flush(out, pos, acc, nacc)
    if size != (best + 7) // 8:  # the pricing and the writing disagree: a bug, never data
        raise AssertionError("deflate_runs wrote a stream of another size than it priced")
    return out[:size]
