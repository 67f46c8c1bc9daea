"""The common record stream every importer produces, and the checks they share.

An importer turns one file into a list of ``Entry``: a network (kept as integers, since a
world-sized prefix list has half a million of them) and a ``ClientRecord``. Problems are
collected per file, each naming the file and the entry, and raised together.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from typing import NamedTuple

from router.geo.clientmap import ClientMapError, SourceProblem

MAX_ASN = 0xFFFFFFFF
MAX_PROBLEMS = 100  # per file: past this, one line says how many more there are


class ClientRecord(NamedTuple):
    """What the map knows about a network; every field may be unknown.

    Unknown coordinates are both ``math.nan``, that very object (``check_location`` and
    the readers make sure), so records with them still compare and hash equal.
    """

    asn: int = 0  # 0 when unknown
    country: str = ""  # ISO 3166-1 alpha-2, "" when unknown
    lat: float = math.nan  # NaN when unknown (latitude and longitude go together)
    lon: float = math.nan
    org: str = ""  # shown by `router explain`: AS or ISP name, coverage zone name

    @property
    def has_location(self) -> bool:
        return not (math.isnan(self.lat) or math.isnan(self.lon))

    @property
    def is_empty(self) -> bool:
        return not (self.asn or self.country or self.org or self.has_location)


EMPTY = ClientRecord()


class Entry(NamedTuple):
    """One network of one source: ``entry.network`` and ``entry.record`` are the stream."""

    version: int  # 4 or 6
    start: int  # the network address as an integer
    prefixlen: int
    record: ClientRecord

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        if self.version == 4:
            return ipaddress.IPv4Network((self.start, self.prefixlen))
        return ipaddress.IPv6Network((self.start, self.prefixlen))

    @classmethod
    def of(
        cls, network: ipaddress.IPv4Network | ipaddress.IPv6Network, record: ClientRecord
    ) -> Entry:
        return cls(network.version, int(network.network_address), network.prefixlen, record)


def parse_prefix(text: str, version: int | None = None) -> tuple[int, int, int]:
    """``"192.0.2.0/24"`` -> (4, address as int, 24); a bare address is a /32 or /128.

    Raises ValueError with an operator-readable reason (wrong family, host bits set, ...).
    Uses inet_pton rather than ``ipaddress`` because it is several times faster.
    """
    address, slash, length = text.partition("/")
    found = 6 if ":" in address else 4
    family, bits = (socket.AF_INET6, 128) if found == 6 else (socket.AF_INET, 32)
    try:
        value = int.from_bytes(socket.inet_pton(family, address), "big")
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IP prefix") from None
    if not slash:
        plen = bits
    elif length.isascii() and length.isdigit() and int(length) <= bits:
        plen = int(length)
    else:
        raise ValueError(f"{text!r}: prefix length must be 0 to {bits}")
    if version is not None and found != version:
        raise ValueError(f"{text!r} is not an IPv{version} prefix")
    if value & ((1 << (bits - plen)) - 1):
        network = ipaddress.ip_network(text, strict=False)
        raise ValueError(f"{text!r} has host bits set (the network is {network})")
    return found, value, plen


def check_country(text: str) -> str:
    """An ISO 3166-1 alpha-2 code, upper-cased, or "" for unknown."""
    if text and not (len(text) == 2 and text.isascii() and text.isalpha()):
        raise ValueError(f"country must be a two-letter ISO code, got {text!r}")
    return text.upper()


def check_location(lat: object, lon: object) -> tuple[float, float]:
    """Latitude and longitude in degrees, both given or both None (unknown)."""
    if lat is None and lon is None:
        return math.nan, math.nan
    if lat is None or lon is None:
        raise ValueError("latitude and longitude go together: give both or neither")
    values = []
    for name, value, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not -limit <= number <= limit:  # also rejects NaN
            raise ValueError(f"{name} must be between {-limit:g} and {limit:g}, got {value!r}")
        values.append(number)
    return values[0], values[1]


def check_asn(value: object) -> int:
    text = str(value)
    if isinstance(value, bool) or not (
        isinstance(value, int) or (text.isascii() and text.isdigit())
    ):
        raise ValueError(f"asn must be a whole number, got {value!r}")
    asn = int(text)
    if asn > MAX_ASN:
        raise ValueError(f"asn must be at most {MAX_ASN}, got {value!r}")
    return asn


class Problems:
    """Problems found in one file; ``raise_if_any`` raises them all as a ClientMapError."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.found: list[SourceProblem] = []
        self.more = 0

    def add(self, line: int, message: str) -> None:
        if len(self.found) < MAX_PROBLEMS:
            self.found.append(SourceProblem(self.path, line, message))
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.found)

    def all(self) -> list[SourceProblem]:
        if self.more:
            return self.found + [
                SourceProblem(self.path, 0, f"{self.more} more problems not shown")
            ]
        return list(self.found)

    def raise_if_any(self) -> None:
        if self.found:
            raise ClientMapError(self.all())
