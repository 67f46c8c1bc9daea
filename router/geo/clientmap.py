"""The client network map: address -> (client group, ECS scope).

A client group is the unit of steering: clients of one ISP (ASN) in one place. The map
is built from operator sources by ``router.geo.importers`` (MaxMind-format databases,
Traffic Control coverage zone files, CSV prefix lists) and compiled to sorted interval
arrays searched by the numba kernels in ``_lpm``.

Group 0 is reserved for clients the map cannot place.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from router.geo import _lpm

UNKNOWN_GROUP = 0


@dataclass(frozen=True)
class SourceProblem:
    """One thing wrong with one client-map source file."""

    path: str  # the file, as the operator would name it
    line: int  # 1-based; 0 when the problem is not tied to a line
    message: str  # names the entry (line, zone and index, ...) and says what is wrong

    def __str__(self) -> str:
        return (
            f"{self.path}:{self.line}: {self.message}"
            if self.line
            else f"{self.path}: {self.message}"
        )


class ClientMapError(Exception):
    """The client map cannot be built; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[SourceProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Groups:
    """Columns describing each client group; row 0 is the unknown group."""

    asn: np.ndarray  # int64[G], 0 when unknown
    country: tuple[str, ...]  # ISO code, "" when unknown
    lat: np.ndarray  # float64[G], NaN when unknown
    lon: np.ndarray  # float64[G]
    org: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.country)

    def describe(self, group: int) -> str:
        if group == UNKNOWN_GROUP:
            return "unknown (not in the client map)"
        asn = int(self.asn[group])
        who = " ".join(part for part in (f"AS{asn}" if asn else "", self.org[group]) if part)
        lat, lon = float(self.lat[group]), float(self.lon[group])
        where = self.country[group] or (
            "??" if math.isnan(lat) or math.isnan(lon) else f"{lat:.2f},{lon:.2f}"
        )
        return f"{who or 'unknown network'}, {where}"


@dataclass(frozen=True)
class _Intervals:
    starts: list[int]
    ends: list[int]
    groups: list[int]
    scopes: list[int]


@dataclass(frozen=True)
class ClientMap:
    groups: Groups
    v4_start: np.ndarray  # int64[M4]
    v4_end: np.ndarray
    v4_group: np.ndarray  # int32[M4]
    v4_scope: np.ndarray  # uint8[M4]
    v6_start_hi: np.ndarray  # uint64[M6]
    v6_start_lo: np.ndarray
    v6_end_hi: np.ndarray
    v6_end_lo: np.ndarray
    v6_group: np.ndarray  # int32[M6]
    v6_scope: np.ndarray  # uint8[M6]

    @classmethod
    def from_prefixes(
        cls,
        groups: Groups,
        prefixes: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]],
    ) -> ClientMap:
        """Compile (network, group) pairs; where prefixes nest, the longest one wins."""
        v4: list[tuple[int, int, int]] = []
        v6: list[tuple[int, int, int]] = []
        for network, group in prefixes:
            target = v4 if network.version == 4 else v6
            target.append((int(network.network_address), network.prefixlen, group))
        return cls.from_int_prefixes(groups, v4, v6)

    @classmethod
    def from_int_prefixes(
        cls, groups: Groups, v4: list[tuple[int, int, int]], v6: list[tuple[int, int, int]]
    ) -> ClientMap:
        """Like ``from_prefixes``, with (network address as int, prefix length, group) per family."""
        i4 = _flatten(v4, 32)
        i6 = _flatten(v6, 128)
        mask = (1 << 64) - 1
        return cls(
            groups=groups,
            v4_start=np.array(i4.starts, dtype=np.int64),
            v4_end=np.array(i4.ends, dtype=np.int64),
            v4_group=np.array(i4.groups, dtype=np.int32),
            v4_scope=np.array(i4.scopes, dtype=np.uint8),
            v6_start_hi=np.array([s >> 64 for s in i6.starts], dtype=np.uint64),
            v6_start_lo=np.array([s & mask for s in i6.starts], dtype=np.uint64),
            v6_end_hi=np.array([e >> 64 for e in i6.ends], dtype=np.uint64),
            v6_end_lo=np.array([e & mask for e in i6.ends], dtype=np.uint64),
            v6_group=np.array(i6.groups, dtype=np.int32),
            v6_scope=np.array(i6.scopes, dtype=np.uint8),
        )

    def lookup(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
        """Group and ECS scope for one address."""
        if address.version == 4:
            return self.lookup_v4_int(int(address))
        value = int(address)
        return self.lookup_v6_int(value >> 64, value & 0xFFFFFFFFFFFFFFFF)

    def lookup_v4_int(self, value: int) -> tuple[int, int]:
        group, scope = _lpm._lookup_v4_one(
            self.v4_start, self.v4_end, self.v4_group, self.v4_scope, value
        )
        return int(group), int(scope)

    def lookup_v6_int(self, hi: int, lo: int) -> tuple[int, int]:
        group, scope = _lpm._lookup_v6_one(
            self.v6_start_hi, self.v6_start_lo, self.v6_end_hi, self.v6_end_lo,
            self.v6_group, self.v6_scope, np.uint64(hi), np.uint64(lo),
        )  # fmt: skip
        return int(group), int(scope)

    def lookup_v4(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        addrs = np.ascontiguousarray(addrs, dtype=np.int64)
        out_group = np.empty(addrs.shape[0], dtype=np.int32)
        out_scope = np.empty(addrs.shape[0], dtype=np.uint8)
        _lpm._lookup_v4(
            self.v4_start, self.v4_end, self.v4_group, self.v4_scope, addrs, out_group, out_scope
        )
        return out_group, out_scope

    def lookup_v6(
        self, addrs_hi: np.ndarray, addrs_lo: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        addrs_hi = np.ascontiguousarray(addrs_hi, dtype=np.uint64)
        addrs_lo = np.ascontiguousarray(addrs_lo, dtype=np.uint64)
        out_group = np.empty(addrs_hi.shape[0], dtype=np.int32)
        out_scope = np.empty(addrs_hi.shape[0], dtype=np.uint8)
        _lpm._lookup_v6(
            self.v6_start_hi, self.v6_start_lo, self.v6_end_hi, self.v6_end_lo,
            self.v6_group, self.v6_scope, addrs_hi, addrs_lo, out_group, out_scope,
        )  # fmt: skip
        return out_group, out_scope


def _flatten(entries: list[tuple[int, int, int]], bits: int) -> _Intervals:
    """Nested prefixes -> disjoint intervals; a more specific prefix cuts its parent.

    What is left of a cut parent is split into CIDR blocks, each scoped to its own
    length: a resolver may then cache the parent's answer per block without ever
    covering the more specific prefix. Neighbouring intervals with the same group
    and scope are merged.
    """
    entries = sorted(entries, key=lambda e: (e[0], e[1]))
    out = _Intervals([], [], [], [])
    stack: list[list[int]] = []  # [start, end, group, cursor]

    def close_top() -> None:
        start, end, group, cursor = stack.pop()
        _emit(out, cursor, end, group, bits)
        if stack:
            stack[-1][3] = end + 1

    for start, plen, group in entries:
        end = start + (1 << (bits - plen)) - 1
        while stack and stack[-1][1] < start:
            close_top()
        if stack:
            parent = stack[-1]
            if parent[3] <= start - 1:
                _emit(out, parent[3], start - 1, parent[2], bits)
            parent[3] = start
        stack.append([start, end, group, start])
    while stack:
        close_top()
    return out


def _emit(out: _Intervals, first: int, last: int, group: int, bits: int) -> None:
    while first <= last:
        size = (first & -first) if first else 1 << bits
        while first + size - 1 > last:
            size >>= 1
        scope = bits - (size.bit_length() - 1)
        block_end = first + size - 1
        if (
            out.ends
            and out.ends[-1] + 1 == first
            and out.groups[-1] == group
            and out.scopes[-1] == scope
        ):
            out.ends[-1] = block_end
        else:
            out.starts.append(first)
            out.ends.append(block_end)
            out.groups.append(group)
            out.scopes.append(scope)
        first = block_end + 1
