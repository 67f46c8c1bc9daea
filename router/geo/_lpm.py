"""Numba longest-prefix match over compiled, disjoint interval arrays.

The client map is flattened at load time into sorted, non-overlapping intervals, each
carrying the group and the ECS scope (the prefix length of the map entry that decided).
A lookup is a binary search. An address in no interval belongs to group 0 (unknown) and
gets the shortest prefix around it that stays inside the gap, so a resolver caching the
answer by that scope never applies it to a mapped client.

IPv6 keys are split into (hi, lo) uint64 halves; every literal is cast to uint64 because
numba promotes uint64 mixed with int64 to float64.
"""

import numpy as np
from numba import njit

from router._jit import HOT_PATH_OPTIONS, JIT_OPTIONS

LANES = 16  # lookups searched side by side in a batch
_U64_ONE = np.uint64(1)
_U64_ZERO = np.uint64(0)
_U64_MAX = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(**HOT_PATH_OPTIONS)
def _gap_scope_v4(x, lo, hi):
    # Shortest prefix p whose block around x lies inside [lo, hi].
    for p in range(33):
        size = np.int64(1) << np.int64(32 - p)
        start = (x // size) * size
        end = start + size - 1
        if start >= lo and end <= hi:
            return p
    return 32


@njit(**HOT_PATH_OPTIONS)
def _count_le(a, x):
    # How many of the sorted a are <= x. Branch-free halving (the comparison becomes a
    # select), so random lookups do not pay a mispredicted branch at every level.
    n = a.shape[0]
    if n == 0:
        return 0
    base = 0
    while n > 1:
        half = n >> 1
        base = base + half if a[base + half] <= x else base
        n -= half
    return base + 1 if a[base] <= x else base


@njit(**JIT_OPTIONS)
def _count_le_batch(a, xs, out):
    # _count_le for many keys, LANES at a time in lockstep: their loads do not depend on
    # each other, so the CPU overlaps the cache misses of a search over a large array.
    m = a.shape[0]
    base = np.zeros(LANES, dtype=np.int64)
    for start in range(0, xs.shape[0], LANES):
        k = min(LANES, xs.shape[0] - start)
        for lane in range(k):
            base[lane] = 0
        n = m
        while n > 1:
            half = n >> 1
            for lane in range(k):
                b = base[lane]
                base[lane] = b + half if a[b + half] <= xs[start + lane] else b
            n -= half
        for lane in range(k):
            b = base[lane]
            out[start + lane] = b + 1 if m > 0 and a[b] <= xs[start + lane] else b


@njit(**JIT_OPTIONS)
def _lookup_v4(starts, ends, groups, scopes, addrs, out_group, out_scope):
    """Look up IPv4 addresses.

    Parameters
    ----------
    starts, ends : int64[M]
        Inclusive interval bounds, sorted, disjoint.
    groups : int32[M]
        Client group of each interval.
    scopes : uint8[M]
        ECS scope (deciding prefix length) of each interval.
    addrs : int64[Q]
        Addresses as integers.
    out_group : int32[Q]
        Output: group per address (0 when unmapped).
    out_scope : uint8[Q]
        Output: ECS scope per address.
    """
    counts = np.empty(addrs.shape[0], dtype=np.int64)
    _count_le_batch(starts, addrs, counts)
    for i in range(addrs.shape[0]):
        out_group[i], out_scope[i] = _resolve_v4(
            starts, ends, groups, scopes, addrs[i], counts[i] - 1
        )


@njit(inline="always", **HOT_PATH_OPTIONS)
def _resolve_v4(starts, ends, groups, scopes, x, j):
    # (group, scope) of x, given j: the last interval starting at or before x (-1: none).
    if j >= 0 and x <= ends[j]:
        return groups[j], scopes[j]
    lo = ends[j] + 1 if j >= 0 else np.int64(0)
    hi = starts[j + 1] - 1 if j + 1 < starts.shape[0] else np.int64(0xFFFFFFFF)
    return np.int32(0), np.uint8(_gap_scope_v4(x, lo, hi))


@njit(**HOT_PATH_OPTIONS)
def _le128(a_hi, a_lo, b_hi, b_lo):
    return a_hi < b_hi or (a_hi == b_hi and a_lo <= b_lo)


@njit(**HOT_PATH_OPTIONS)
def _search_v6(starts_hi, starts_lo, x_hi, x_lo, hi_count):
    # Index of the last interval whose start <= x, or -1. The upper halves were searched
    # first (hi_count of them are <= x_hi: one array, and most intervals differ there);
    # the lower halves are searched within the run of intervals sharing x's upper half.
    j = hi_count - 1
    if j < 0 or starts_hi[j] != x_hi:
        return j
    first = np.searchsorted(starts_hi, x_hi, side="left")
    lo = first
    hi = j + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if starts_lo[mid] <= x_lo:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@njit(**HOT_PATH_OPTIONS)
def _block_v6(x_hi, x_lo, p):
    # The /p block around x, as (start_hi, start_lo, end_hi, end_lo).
    if p == 0:
        return _U64_ZERO, _U64_ZERO, _U64_MAX, _U64_MAX
    if p < 64:
        host = (_U64_ONE << np.uint64(64 - p)) - _U64_ONE
        return x_hi & ~host, _U64_ZERO, x_hi | host, _U64_MAX
    if p == 64:
        return x_hi, _U64_ZERO, x_hi, _U64_MAX
    if p < 128:
        host = (_U64_ONE << np.uint64(128 - p)) - _U64_ONE
        return x_hi, x_lo & ~host, x_hi, x_lo | host
    return x_hi, x_lo, x_hi, x_lo


@njit(**JIT_OPTIONS)
def _lookup_v6(
    starts_hi, starts_lo, ends_hi, ends_lo, groups, scopes, addrs_hi, addrs_lo, out_group, out_scope
):
    """Look up IPv6 addresses.

    Parameters
    ----------
    starts_hi, starts_lo, ends_hi, ends_lo : uint64[M]
        Inclusive interval bounds split in 64-bit halves, sorted, disjoint.
    groups : int32[M]
        Client group of each interval.
    scopes : uint8[M]
        ECS scope (deciding prefix length) of each interval.
    addrs_hi, addrs_lo : uint64[Q]
        Addresses split in 64-bit halves.
    out_group : int32[Q]
        Output: group per address (0 when unmapped).
    out_scope : uint8[Q]
        Output: ECS scope per address.
    """
    hi_counts = np.empty(addrs_hi.shape[0], dtype=np.int64)
    _count_le_batch(starts_hi, addrs_hi, hi_counts)
    for i in range(addrs_hi.shape[0]):
        out_group[i], out_scope[i] = _resolve_v6(
            starts_hi,
            starts_lo,
            ends_hi,
            ends_lo,
            groups,
            scopes,
            addrs_hi[i],
            addrs_lo[i],
            hi_counts[i],
        )


@njit(inline="always", **HOT_PATH_OPTIONS)
def _resolve_v6(starts_hi, starts_lo, ends_hi, ends_lo, groups, scopes, x_hi, x_lo, hi_count):
    # (group, scope) of x, given hi_count: how many intervals start with an upper half <= x's.
    m = starts_hi.shape[0]
    j = _search_v6(starts_hi, starts_lo, x_hi, x_lo, hi_count)
    if j >= 0 and _le128(x_hi, x_lo, ends_hi[j], ends_lo[j]):
        return groups[j], scopes[j]
    # Gap bounds: just after the previous interval, just before the next one. The
    # carries are explicit: no uint64 wraparound (numpy warns on it without the JIT).
    if j < 0:
        gap_lo_hi = _U64_ZERO
        gap_lo_lo = _U64_ZERO
    elif ends_lo[j] == _U64_MAX:
        gap_lo_hi = ends_hi[j] + _U64_ONE  # ends_hi < max: x lies above this interval
        gap_lo_lo = _U64_ZERO
    else:
        gap_lo_hi = ends_hi[j]
        gap_lo_lo = ends_lo[j] + _U64_ONE
    if j + 1 >= m:
        gap_hi_hi = _U64_MAX
        gap_hi_lo = _U64_MAX
    elif starts_lo[j + 1] == _U64_ZERO:
        gap_hi_hi = starts_hi[j + 1] - _U64_ONE  # starts_hi > 0: x lies below this interval
        gap_hi_lo = _U64_MAX
    else:
        gap_hi_hi = starts_hi[j + 1]
        gap_hi_lo = starts_lo[j + 1] - _U64_ONE
    for p in range(129):
        s_hi, s_lo, e_hi, e_lo = _block_v6(x_hi, x_lo, p)
        if _le128(gap_lo_hi, gap_lo_lo, s_hi, s_lo) and _le128(e_hi, e_lo, gap_hi_hi, gap_hi_lo):
            return np.int32(0), np.uint8(p)
    return np.int32(0), np.uint8(128)


@njit(**HOT_PATH_OPTIONS)
def _lookup_v4_one(starts, ends, groups, scopes, x):
    """(group, scope) of one IPv4 address; see ``_lookup_v4``."""
    return _resolve_v4(starts, ends, groups, scopes, x, _count_le(starts, x) - 1)


@njit(**HOT_PATH_OPTIONS)
def _lookup_v6_one(starts_hi, starts_lo, ends_hi, ends_lo, groups, scopes, x_hi, x_lo):
    """(group, scope) of one IPv6 address; see ``_lookup_v6``. Allocates nothing: the DNS
    fast path calls it for every IPv6 client."""
    return _resolve_v6(
        starts_hi,
        starts_lo,
        ends_hi,
        ends_lo,
        groups,
        scopes,
        x_hi,
        x_lo,
        _count_le(starts_hi, x_hi),
    )


KERNELS = (_lookup_v4, _lookup_v6, _lookup_v4_one, _lookup_v6_one)
