"""The client network map: address -> (client group, ECS scope).

A client group is the unit of steering: clients of one ISP (ASN) in one place. The map
is read from a MaxMind-format database (GeoIP2 field names: ``autonomous_system_number``,
``autonomous_system_organization``, ``country.iso_code``, ``location.latitude/longitude``)
and compiled to sorted interval arrays searched by the numba kernels in ``_lpm``.

Group 0 is reserved for clients the map cannot place.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
import numpy as np

from router.geo import _lpm

UNKNOWN_GROUP = 0

_V4_IN_V6 = ipaddress.IPv6Network("::/96")
# Aliases of the IPv4 tree that MaxMind-format writers may add; the IPv4 view covers them.
_V4_ALIASES = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("2002::/16"))


class ClientMapError(Exception):
    """The client map file cannot be used."""


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
        org = f" {self.org[group]}" if self.org[group] else ""
        return f"AS{int(self.asn[group])}{org}, {self.country[group] or '??'}"


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
        cls, groups: Groups, prefixes: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]
    ) -> ClientMap:
        """Compile (network, group) pairs; where prefixes nest, the longest one wins."""
        v4: list[tuple[int, int, int]] = []
        v6: list[tuple[int, int, int]] = []
        for network, group in prefixes:
            target = v4 if network.version == 4 else v6
            target.append((int(network.network_address), network.prefixlen, group))
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
        group, scope = _lpm._lookup_v4_one(self.v4_start, self.v4_end, self.v4_group, self.v4_scope, value)
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
        _lpm._lookup_v4(self.v4_start, self.v4_end, self.v4_group, self.v4_scope, addrs, out_group, out_scope)
        return out_group, out_scope

    def lookup_v6(self, addrs_hi: np.ndarray, addrs_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        addrs_hi = np.ascontiguousarray(addrs_hi, dtype=np.uint64)
        addrs_lo = np.ascontiguousarray(addrs_lo, dtype=np.uint64)
        out_group = np.empty(addrs_hi.shape[0], dtype=np.int32)
        out_scope = np.empty(addrs_hi.shape[0], dtype=np.uint8)
        _lpm._lookup_v6(
            self.v6_start_hi, self.v6_start_lo, self.v6_end_hi, self.v6_end_lo,
            self.v6_group, self.v6_scope, addrs_hi, addrs_lo, out_group, out_scope,
        )  # fmt: skip
        return out_group, out_scope


def load_mmdb(path: Path) -> ClientMap:
    """Read a MaxMind-format client map; groups are distinct (ASN, country, location)."""
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ClientMapError(f"cannot open MaxMind database {path}: {exc}") from exc
    keys: dict[tuple[int, str, float, float], int] = {}
    asn: list[int] = [0]
    country: list[str] = [""]
    lat: list[float] = [math.nan]
    lon: list[float] = [math.nan]
    org: list[str] = [""]
    prefixes: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]] = []
    try:
        with reader:
            for network, record in reader:
                network = _ipv4_view(network)
                if network is None or not isinstance(record, dict):
                    continue
                fields = _record_fields(record)
                key = fields[:4]
                group = keys.get(key)
                if group is None:
                    group = keys[key] = len(asn)
                    asn.append(fields[0])
                    country.append(fields[1])
                    lat.append(fields[2])
                    lon.append(fields[3])
                    org.append(fields[4])
                prefixes.append((network, group))
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise ClientMapError(f"broken MaxMind database {path}: {exc}") from exc
    groups = Groups(
        asn=np.array(asn, dtype=np.int64),
        country=tuple(country),
        lat=np.array(lat, dtype=np.float64),
        lon=np.array(lon, dtype=np.float64),
        org=tuple(org),
    )
    return ClientMap.from_prefixes(groups, prefixes)


def _ipv4_view(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if network.version == 4:
        return network
    if network.subnet_of(_V4_IN_V6) and network.prefixlen >= 96:  # type: ignore[arg-type]
        return ipaddress.IPv4Network((int(network.network_address), network.prefixlen - 96))
    if any(network.subnet_of(alias) for alias in _V4_ALIASES):  # type: ignore[arg-type]
        return None
    return network


def _record_fields(record: dict[str, Any]) -> tuple[int, str, float, float, str]:
    asn = record.get("autonomous_system_number")
    country = record.get("country") or {}
    location = record.get("location") or {}
    latitude = location.get("latitude")
    longitude = location.get("longitude")
    return (
        int(asn) if isinstance(asn, int) else 0,
        str(country.get("iso_code") or "") if isinstance(country, dict) else "",
        float(latitude) if isinstance(latitude, (int, float)) else math.nan,
        float(longitude) if isinstance(longitude, (int, float)) else math.nan,
        str(record.get("autonomous_system_organization") or ""),
    )


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
        if out.ends and out.ends[-1] + 1 == first and out.groups[-1] == group and out.scopes[-1] == scope:
            out.ends[-1] = block_end
        else:
            out.starts.append(first)
            out.ends.append(block_end)
            out.groups.append(group)
            out.scopes.append(scope)
        first = block_end + 1
