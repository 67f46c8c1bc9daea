#!/usr/bin/env python3
"""Build the sample client network map for an Iberian deployment from real public data.

Run from the repository root (these are also the defaults)::

    python geodata/build_sample.py --shared ../shared/data --out geodata

Inputs (read-only, see ``<shared>/*/SOURCE.md`` for provenance and licences):

* ``ip-location-db-asn/asn-ipv{4,6}.csv.gz``: inclusive IP range -> ASN + organisation (CC BY 4.0).
* ``ip-location-db-geo-whois-asn-country/geo-whois-asn-country-ipv{4,6}.csv.gz``: range -> country.
* ``ripe-atlas-country-rtt/country_rtt_stat.csv.gz``: country x country RTT statistics.
* ``iptoasn/ip2asn-v6.tsv.gz``: IPv6 range -> the ASN announcing it in BGP (PDDL 1.0).
* ``geodata/country-locations.csv`` and ``geodata/asn-locations.csv``: hand-entered facts that live
  next to this script (they are inputs, not outputs; they are validated and copied to ``--out``
  when that is another directory, so an output directory is always a complete set).

Outputs (in ``--out``):

* ``iberia-clients.mmdb``: MaxMind DB (IPv6 tree with IPv4 in ``::/96``) whose records use GeoIP2
  field names: ``autonomous_system_number``, ``autonomous_system_organization``,
  ``country.iso_code``, ``location.latitude/longitude``.
* ``iberia-announced.csv``: the prefixes the sample's ASNs announce (``prefix,asn,org``), which
  ``router check --coverage zones`` checks the map against.
* ``country-rtt.csv``: RIPE Atlas average RTT between the countries of country-locations.csv.
* ``LICENSES/``: upstream licence files plus a note of this project's modifications.

Selection: every ASN range whose geolocated country is ES, PT, AD or GI, plus, for FR and MA, the
ranges of the three ASNs with the most IPv4 address space in that country. The ASN table and the
country table are joined by interval intersection, so a range is split where its country changes.
Then every prefix that one of the sample's ASNs (the ISPs with nodes and those neighbours)
announces is placed in that ASN, wherever it is used (country from the country table), so the
map has no gap in the networks the sample deployment steers by ASN.

The build is deterministic: inputs are sorted, ties are broken explicitly, and the MMDB's
``build_epoch`` is pinned to the data snapshot instead of the wall clock, so a rebuild from the same
inputs gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import shutil
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import numpy as np
from mmdb_writer import MMDBWriter
from netaddr import IPAddress, IPNetwork, IPSet, iprange_to_cidrs

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

GEODATA_DIR = Path(__file__).resolve().parent
REPO_ROOT = GEODATA_DIR.parent
DEFAULT_SHARED = Path("../shared/data")
DEFAULT_OUT = Path("geodata")

#: Countries whose every range is kept: the deployment's footprint.
CORE_COUNTRIES: tuple[str, ...] = ("AD", "ES", "GI", "PT")
#: Neighbour countries of which only the biggest ISPs are kept, so that the sample has clients of
#: ISPs without an Iberian node (the router must steer them to a neighbouring site).
NEIGHBOUR_COUNTRIES: tuple[str, ...] = ("FR", "MA")
NEIGHBOUR_TOP_N = 3
SELECTED_COUNTRIES = frozenset(CORE_COUNTRIES + NEIGHBOUR_COUNTRIES)

#: The ISPs zones/nodes.yaml puts nodes in (tests/test_map_coverage.py holds the two equal):
#: Telefonica de Espana, Vodafone Spain, Orange Spain, MEO, NOS, Vodafone Portugal.
NODE_ASNS: tuple[int, ...] = (3352, 12430, 12479, 3243, 2860, 12353)

#: The country locations file must cover at least these (the router's tests rely on them).
REQUIRED_LOCATION_COUNTRIES = frozenset(
    {"ES", "PT", "AD", "GI", "FR", "MA", "DE", "GB", "NL", "IT", "US"}
)

#: Pairs with fewer RIPE Atlas samples are too noisy; the router estimates them from distance.
RTT_MIN_SAMPLES = 100

MMDB_NAME = "iberia-clients.mmdb"
ANNOUNCED_NAME = "iberia-announced.csv"
WORLD_LOCATIONS_NAME = "world-country-locations.csv"
RTT_NAME = "country-rtt.csv"
COUNTRY_LOCATIONS_NAME = "country-locations.csv"
ASN_LOCATIONS_NAME = "asn-locations.csv"
LICENSES_DIR = "LICENSES"

DATABASE_TYPE = "Router-Client-Map"
ATTRIBUTION = (
    "IP to ASN data: ip-location-db (sapics) built from RouteViews (routeviews.org), "
    "DB-IP (https://db-ip.com) and NRO (nro.net), CC BY 4.0; "
    "country data: ip-location-db geo-whois-asn-country (NRO, nro.net); "
    "IPv6 BGP origin ASNs: iptoasn.com (PDDL 1.0)"
)
DESCRIPTION = (
    "Sample client network map for an Iberian CDN deployment: ranges of ES, PT, AD, GI and of "
    "the top-3 IPv4 ASNs of FR and MA, and every prefix those ASNs and the sample's ISPs "
    "announce. " + ATTRIBUTION
)

#: ip-location-db npm version 2.3.2026061719 = data built 2026-06-17 19:00 UTC. The MMDB's
#: build_epoch is pinned to it (mmdb_writer would use the wall clock), so rebuilds are
#: byte-identical and the epoch says how old the data is rather than when someone ran the script.
DATA_SNAPSHOT_EPOCH = int(datetime(2026, 6, 17, 19, tzinfo=UTC).timestamp())

# Shared-data paths, relative to --shared.
ASN_CSV = {4: "ip-location-db-asn/asn-ipv4.csv.gz", 6: "ip-location-db-asn/asn-ipv6.csv.gz"}
COUNTRY_CSV = {
    4: "ip-location-db-geo-whois-asn-country/geo-whois-asn-country-ipv4.csv.gz",
    6: "ip-location-db-geo-whois-asn-country/geo-whois-asn-country-ipv6.csv.gz",
}
RTT_CSV = "ripe-atlas-country-rtt/country_rtt_stat.csv.gz"
#: iptoasn's IPv6 table is built from BGP dumps (the ASN that announces each range), unlike
#: ip-location-db's IPv6, which is registry data: e.g. it gives Orange France's announced
#: 2a01:cb00::/32 to AS5511, the registry holder. ip-location-db's IPv4 is RouteViews
#: (announcements) first, so it serves as the IPv4 announced table.
ANNOUNCED_V6_TSV = "iptoasn/ip2asn-v6.tsv.gz"
#: Licence files shipped with the ip-location-db asn package, copied verbatim to LICENSES/.
LICENSE_FILES = ("ROUTEVIEWS-LICENSE", "DBIP-LICENSE", "NRO_LICENSE", "MODIFICATIONS")
LICENSE_SOURCE_DIR = "ip-location-db-asn"
#: The country package ships its own NRO_LICENSE; it must match the one we copy.
COUNTRY_NRO_LICENSE = "ip-location-db-geo-whois-asn-country/NRO_LICENSE"
OUR_MODIFICATIONS_NAME = "MODIFICATIONS-router.txt"
IPTOASN_NOTICE_NAME = "IPTOASN-NOTICE"
IPTOASN_NOTICE = """\
IPv6 announced prefixes (origin ASN of each range, used for iberia-announced.csv and for the
ASN of the sample ASNs' IPv6 ranges in iberia-clients.mmdb) come from IPtoASN,
https://iptoasn.com/, file ip2asn-v6.tsv.gz as downloaded on 2025-10-28, published under the
Open Data Commons Public Domain Dedication and License (PDDL) v1.0,
https://opendatacommons.org/licenses/pddl/1-0/. No attribution is required; it is given here.
"""
OUR_MODIFICATIONS = """\
Modifications made by this project (geodata/build_sample.py) to the ip-location-db data
=======================================================================================

Inputs: ip-location-db "asn" (IPv4/IPv6 range -> ASN + organisation; CC BY 4.0, RouteViews,
DB-IP, NRO; see ROUTEVIEWS-LICENSE, DBIP-LICENSE, NRO_LICENSE and the upstream MODIFICATIONS
file) and ip-location-db "geo-whois-asn-country" (range -> country; credit NRO, nro.net),
npm version 2.3.2026061719.

1. Overlaps: where a table lists a range inside another one, the inner (more specific) range
   wins for the addresses it covers.
2. Joining: each ASN range is intersected with the country ranges, so it is split wherever the
   country changes; the country is added to each piece.
3. Filtering: only pieces in ES, PT, AD and GI are kept, plus the pieces in FR and MA of the
   three ASNs with the most IPv4 address space in each of those two countries.
4. Announced prefixes: every range announced by one of the sample's ASNs (the six ISPs with
   nodes and those neighbour ASNs) is kept with the announcing ASN, in whatever country it is
   (countries outside the selection get the point of world-country-locations.csv; a range with
   no country gets the one where that ASN has most of its addresses): IPv4 from
   the "asn" package (RouteViews first), IPv6 from iptoasn.com's ip2asn-v6 table (BGP origin
   ASN, PDDL 1.0, 2025-10-28). Where the "asn" package names another ASN for such a range, the
   announcing ASN wins. These ranges are also written, as CIDR blocks, to
   iberia-announced.csv (prefix,asn,org), with one organisation name per ASN.
5. Merging and CIDR conversion: adjacent pieces with the same ASN, organisation and country
   are merged, and every inclusive range is converted to the minimal list of CIDR blocks.
6. Enrichment: each record gets a representative latitude/longitude (hand-entered, see
   country-locations.csv and asn-locations.csv); these are not from the upstream data.
7. Format: written as a MaxMind DB (iberia-clients.mmdb) with GeoIP2-style field names.

iptoasn.com data (https://iptoasn.com/) is published under the Open Data Commons Public
Domain Dedication and License (PDDL) 1.0; no attribution is required, it is credited here.
"""


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


class Span(NamedTuple):
    """An inclusive address range [start, end] carrying a value (country code or AsnInfo)."""

    start: int
    end: int
    value: object


class AsnInfo(NamedTuple):
    asn: int
    org: str


class Piece(NamedTuple):
    """A joined, disjoint range: ASN info plus geolocated country."""

    start: int
    end: int
    asn: int
    org: str
    country: str


@dataclass(frozen=True, slots=True)
class Location:
    latitude: float
    longitude: float
    place: str


class CountryField(TypedDict):
    iso_code: str


class LocationField(TypedDict):
    latitude: float
    longitude: float


class ClientRecord(TypedDict):
    """One MMDB record. Field names are GeoIP2's, so GeoLite2/GeoIP2 code can read it too."""

    autonomous_system_number: int
    autonomous_system_organization: str
    country: CountryField
    location: LocationField


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def ip_to_int(text: str, version: int) -> int:
    """Parse an address; inet_pton is several times faster than ipaddress for ~1M addresses."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return int.from_bytes(socket.inet_pton(family, text), "big")


def read_country_table(path: Path, version: int) -> list[Span]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [
            Span(ip_to_int(start, version), ip_to_int(end, version), country)
            for start, end, country in csv.reader(handle)
        ]


def read_asn_table(path: Path, version: int) -> list[Span]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return [
            Span(ip_to_int(start, version), ip_to_int(end, version), AsnInfo(int(asn), org))
            for start, end, asn, org in csv.reader(handle)
        ]


def read_country_locations(path: Path) -> dict[str, Location]:
    locations: dict[str, Location] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        _check_header(path, reader.fieldnames, ["country", "latitude", "longitude", "place"])
        for row in reader:
            code = row["country"]
            if len(code) != 2 or not code.isupper() or code in locations:
                raise ValueError(f"{path}: bad or duplicate country code {code!r}")
            locations[code] = _location(path, row)
    missing = REQUIRED_LOCATION_COUNTRIES - locations.keys()
    if missing:
        raise ValueError(f"{path}: missing countries {sorted(missing)}")
    return locations


def read_asn_locations(path: Path) -> dict[int, Location]:
    locations: dict[int, Location] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        _check_header(path, reader.fieldnames, ["asn", "latitude", "longitude", "place", "note"])
        for row in reader:
            asn = int(row["asn"])
            if asn <= 0 or asn in locations:
                raise ValueError(f"{path}: bad or duplicate ASN {asn}")
            locations[asn] = _location(path, row)
    return locations


def _check_header(path: Path, found: Sequence[str] | None, expected: list[str]) -> None:
    if list(found or []) != expected:
        raise ValueError(f"{path}: header {found} != {expected}")


def _location(path: Path, row: dict[str, str]) -> Location:
    latitude, longitude = float(row["latitude"]), float(row["longitude"])
    # A swapped or mistyped coordinate would silently mis-steer clients, so fail loudly instead.
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180) or not row["place"]:
        raise ValueError(f"{path}: bad location row {row}")
    return Location(latitude, longitude, row["place"])


# --------------------------------------------------------------------------------------------
# Interval operations
# --------------------------------------------------------------------------------------------


def flatten(spans: Iterable[Span]) -> list[Span]:
    """Make possibly nested/overlapping ranges disjoint; sorted output.

    The upstream tables are "mostly" disjoint but list some more-specific ranges inside broader
    ones (e.g. a geofeed /29 in another country inside a WHOIS /22). As in longest-prefix
    matching, the more specific range wins where it applies and the enclosing one resumes after
    it. For the rare partial overlap, the range that starts later wins while it lasts. Ties
    (identical ranges) go to the row that comes later in the file.
    """
    ordered = sorted(enumerate(spans), key=lambda item: (item[1].start, -item[1].end, item[0]))
    out: list[Span] = []
    stack: list[Span] = []  # open ranges, innermost last
    cursor = 0  # first address not yet emitted

    def emit(start: int, end: int, value: object) -> None:
        if start > end:
            return
        if out and out[-1].end + 1 == start and out[-1].value == value:
            out[-1] = Span(out[-1].start, end, value)
        else:
            out.append(Span(start, end, value))

    def close_until(limit: int) -> None:
        """Emit and pop open ranges that end before ``limit``."""
        nonlocal cursor
        while stack and stack[-1].end < limit:
            top = stack.pop()
            if top.end >= cursor:  # else it was entirely shadowed by later ranges
                emit(cursor, top.end, top.value)
                cursor = top.end + 1

    for _, span in ordered:
        close_until(span.start)
        if stack:
            emit(cursor, span.start - 1, stack[-1].value)
        cursor = max(cursor, span.start)
        stack.append(span)
    close_until(1 << 128)
    return out


def numpy_keys(values: Sequence[int], version: int) -> np.ndarray:
    """Sortable uint64 keys for numpy: the address itself (IPv4) or its top 64 bits (IPv6).

    IPv6 addresses do not fit a numpy integer, but the upper half is order-preserving
    (non-decreasing), which is all a conservative candidate search needs.
    """
    shift = 0 if version == 4 else 64
    return np.fromiter((value >> shift for value in values), dtype=np.uint64, count=len(values))


def candidate_rows(asn_rows: Sequence[Span], selected: Sequence[Span], version: int) -> list[Span]:
    """Keep only ASN rows that may intersect a selected-country range (vectorised pre-filter).

    ``selected`` is sorted and disjoint, so row [s, e] intersects selected ranges
    lo..hi-1 with lo = first range ending at/after s and hi = first range starting after e.
    With the 64-bit IPv6 keys this is a superset; the exact intersection happens afterwards.
    This discards ~96% of the 412k IPv4 rows (15k remain) before any per-row Python work.
    """
    if not asn_rows or not selected:
        return []
    row_start = numpy_keys([row.start for row in asn_rows], version)
    row_end = numpy_keys([row.end for row in asn_rows], version)
    sel_start = numpy_keys([span.start for span in selected], version)
    sel_end = numpy_keys([span.end for span in selected], version)
    lo = np.searchsorted(sel_end, row_start, side="left")
    hi = np.searchsorted(sel_start, row_end, side="right")
    return [asn_rows[index] for index in np.flatnonzero(hi > lo).tolist()]


def intersect(asn_spans: Sequence[Span], country_spans: Sequence[Span]) -> list[Piece]:
    """Two-pointer intersection of two sorted, disjoint range lists."""
    pieces: list[Piece] = []
    i = j = 0
    while i < len(asn_spans) and j < len(country_spans):
        a, c = asn_spans[i], country_spans[j]
        start, end = max(a.start, c.start), min(a.end, c.end)
        if start <= end:
            info = a.value
            assert isinstance(info, AsnInfo) and isinstance(c.value, str)
            pieces.append(Piece(start, end, info.asn, info.org, c.value))
        # Advance whichever range finishes first; the other may still meet the next one.
        if a.end < c.end:
            i += 1
        else:
            j += 1
    return pieces


def merge_adjacent(pieces: Iterable[Piece]) -> list[Piece]:
    """Merge touching pieces with identical attributes: fewer, larger CIDRs, same lookups."""
    out: list[Piece] = []
    for piece in pieces:
        last = out[-1] if out else None
        if (
            last is not None
            and last.end + 1 == piece.start
            and (last.asn, last.org, last.country) == (piece.asn, piece.org, piece.country)
        ):
            out[-1] = last._replace(end=piece.end)
        else:
            out.append(piece)
    return out


def to_cidrs(piece: Piece, version: int) -> list[IPNetwork]:
    return iprange_to_cidrs(IPAddress(piece.start, version), IPAddress(piece.end, version))


# --------------------------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------------------------


def read_countries(shared: Path, version: int) -> list[Span]:
    """The whole country table of one family, disjoint (more specific ranges win)."""
    return flatten(read_country_table(shared / COUNTRY_CSV[version], version))


def join_family(shared: Path, version: int, countries: list[Span] | None = None) -> list[Piece]:
    """ASN ranges of one address family joined with their country, selected countries only.

    ``countries``: the result of ``read_countries`` if the caller has it already."""
    # Flatten the full country table first: a selected range can contain a more-specific range
    # of another country (which must punch a hole), so filtering before flattening would be wrong.
    if countries is None:
        countries = read_countries(shared, version)
    selected = [span for span in countries if span.value in SELECTED_COUNTRIES]
    # ASN rows that miss the selected space cannot affect it, so filter before flattening.
    asn_rows = flatten(
        candidate_rows(read_asn_table(shared / ASN_CSV[version], version), selected, version)
    )
    pieces = intersect(asn_rows, selected)
    if version == 6 and pieces and pieces[0].start < 1 << 32:
        # ::/96 holds the IPv4 tree in an ipv4_compatible MMDB; IPv6 data there would collide.
        raise ValueError(f"IPv6 range inside ::/96: {pieces[0]}")
    return pieces


def top_asns_by_ipv4_space(pieces_v4: Iterable[Piece], country: str, n: int) -> list[int]:
    space: Counter[int] = Counter()
    for piece in pieces_v4:
        if piece.country == country:
            space[piece.asn] += piece.end - piece.start + 1
    # Ties broken by ASN number so the choice never depends on dict order.
    ranked = sorted(space.items(), key=lambda item: (-item[1], item[0]))
    return [asn for asn, _ in ranked[:n]]


def select(pieces: Iterable[Piece], neighbour_asns: dict[str, frozenset[int]]) -> list[Piece]:
    kept = [
        piece
        for piece in pieces
        if piece.country in CORE_COUNTRIES
        or piece.asn in neighbour_asns.get(piece.country, frozenset())
    ]
    return merge_adjacent(kept)


def read_announced_v6(path: Path) -> list[Span]:
    """iptoasn's IPv6 table: the announced rows (ASN 0 marks unrouted space), AsnInfo values."""
    spans: list[Span] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for line in handle:
            start, end, asn, _country, description = line.rstrip("\n").split("\t")
            if asn != "0":
                spans.append(
                    Span(ip_to_int(start, 6), ip_to_int(end, 6), AsnInfo(int(asn), description))
                )
    return spans


def announced_spans(shared: Path, version: int, asns: frozenset[int]) -> list[Span]:
    """What each of ``asns`` announces, disjoint and sorted (values: AsnInfo).

    The whole table is flattened before filtering, so a more specific range that another
    network announces inside one of theirs stays out of it (it is not theirs to place)."""
    if version == 4:
        rows = read_asn_table(shared / ASN_CSV[4], 4)
    else:
        rows = read_announced_v6(shared / ANNOUNCED_V6_TSV)
    spans = []
    for span in flatten(rows):
        info = span.value
        assert isinstance(info, AsnInfo)
        if info.asn in asns:
            spans.append(span)
    return spans


def cut(pieces: Sequence[Piece], holes: Sequence[Span]) -> list[Piece]:
    """The parts of ``pieces`` outside ``holes`` (both sorted and disjoint)."""
    out: list[Piece] = []
    j = 0
    for piece in pieces:
        start = piece.start
        while j < len(holes) and holes[j].end < start:
            j += 1
        k = j
        while k < len(holes) and holes[k].start <= piece.end:
            if holes[k].start > start:
                out.append(piece._replace(start=start, end=holes[k].start - 1))
            start = max(start, holes[k].end + 1)
            k += 1
        if start <= piece.end:
            out.append(piece._replace(start=start))
    return out


def place_announced(
    pieces: list[Piece],
    announced: list[Span],
    countries: list[Span],
    names: dict[int, str],
) -> list[Piece]:
    """``pieces`` with every announced range in its announcing ASN (named from ``names``).

    The country is the country table's, as for every other piece; a part the table has no
    country for gets the country where that ASN has most of ``pieces``' addresses."""
    own: list[Span] = []
    unplaced: list[Piece] = []  # the same ranges as pieces, to find those without a country
    for span in announced:
        info = span.value
        assert isinstance(info, AsnInfo)
        own.append(Span(span.start, span.end, AsnInfo(info.asn, names[info.asn])))
        unplaced.append(Piece(span.start, span.end, info.asn, names[info.asn], ""))
    placed = intersect(own, countries)
    homeless = cut(unplaced, countries)
    if homeless:
        space: dict[int, Counter[str]] = {}
        for piece in pieces:
            space.setdefault(piece.asn, Counter())[piece.country] += piece.end - piece.start + 1
        for piece in homeless:
            ranked = sorted(space.get(piece.asn, Counter()).items(), key=lambda kv: (-kv[1], kv[0]))
            if not ranked:
                raise ValueError(
                    f"AS{piece.asn}: announced range with no country anywhere: {piece}"
                )
            placed.append(piece._replace(country=ranked[0][0]))
    return merge_adjacent(sorted(cut(pieces, announced) + placed))


def asn_names(families: dict[int, list[Piece]], announced: dict[int, list[Span]]) -> dict[int, str]:
    """One organisation name per ASN: the map's (ip-location-db, IPv4 first), else iptoasn's."""
    names: dict[int, str] = {}
    for version in sorted(families):
        for piece in families[version]:
            names.setdefault(piece.asn, piece.org)
    for version in sorted(announced):
        for span in announced[version]:
            info = span.value
            assert isinstance(info, AsnInfo)
            names.setdefault(info.asn, info.org)
    return names


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class PinnedEpochWriter(MMDBWriter):
    """MMDBWriter whose metadata build_epoch is fixed instead of ``time.time()``."""

    def __init__(self, *, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pinned_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta = super()._build_meta()
        meta["build_epoch"] = self._pinned_epoch
        return meta


def make_record(
    piece: Piece, countries: dict[str, Location], asns: dict[int, Location]
) -> ClientRecord:
    # A regional ISP's clients are near its home metro, not the capital; everyone else gets the
    # country's representative point (national ISPs are spread over the whole country).
    where = asns.get(piece.asn) or countries[piece.country]
    return {
        "autonomous_system_number": piece.asn,
        "autonomous_system_organization": piece.org,
        "country": {"iso_code": piece.country},
        "location": {"latitude": where.latitude, "longitude": where.longitude},
    }


def write_mmdb(
    path: Path,
    families: dict[int, list[Piece]],
    countries: dict[str, Location],
    asns: dict[int, Location],
) -> dict[int, int]:
    """Write the MMDB; returns the number of CIDR networks per address family."""
    writer = PinnedEpochWriter(
        build_epoch=DATA_SNAPSHOT_EPOCH,
        ip_version=6,
        ipv4_compatible=True,  # IPv4 goes into ::/96, where readers look up IPv4 addresses
        database_type=DATABASE_TYPE,
        languages=[],  # no localised names in the records
        description={"en": DESCRIPTION},
        int_type="u32",  # GeoLite2-ASN stores autonomous_system_number as uint32
        float_type="f64",  # GeoIP2 stores latitude/longitude as double
    )
    counts: dict[int, int] = {}
    for version in sorted(families):  # IPv4 then IPv6, each in address order
        counts[version] = 0
        for piece in families[version]:
            cidrs = to_cidrs(piece, version)
            counts[version] += len(cidrs)
            writer.insert_network(IPSet(cidrs), make_record(piece, countries, asns))
    # Write next to the target and rename, so an interrupted build never leaves a torn file.
    tmp = path.with_name(path.name + ".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(path)
    return counts


def write_announced(path: Path, announced: dict[int, list[Span]], names: dict[int, str]) -> int:
    """The announced ranges as CIDR blocks, ``prefix,asn,org``; returns the number of rows."""
    rows: list[tuple[str, int, str]] = []
    for version in sorted(announced):
        for span in announced[version]:
            info = span.value
            assert isinstance(info, AsnInfo)
            piece = Piece(span.start, span.end, info.asn, names[info.asn], "")
            rows += [(str(cidr), info.asn, piece.org) for cidr in to_cidrs(piece, version)]
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write(
            "# generated by geodata/build_sample.py, do not edit: the prefixes the sample's ASNs\n"
            "# announce (IPv4: ip-location-db asn, RouteViews first, CC BY 4.0; IPv6: iptoasn.com\n"
            "# ip2asn-v6 2025-10-28, PDDL 1.0). router check --coverage zones reads it.\n"
        )
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(["prefix", "asn", "org"])
        out.writerows(rows)
    return len(rows)


def build_rtt_rows(path: Path, countries: Iterable[str]) -> list[tuple[str, str, str, int]]:
    wanted = frozenset(countries)
    rows: list[tuple[str, str, str, int]] = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            a, b, samples = row["cty1"], row["cty2"], int(row["rtt_cnt"])
            if a in wanted and b in wanted and samples >= RTT_MIN_SAMPLES:
                if a > b:
                    raise ValueError(f"{path}: expected cty1 <= cty2, got {a},{b}")
                rows.append((a, b, f"{round(float(row['rtt_avg']), 1):.1f}", samples))
    return sorted(rows)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    # "\n" line endings regardless of platform, so committed files are stable across machines.
    with path.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)


def copy_if_elsewhere(source: Path, target: Path) -> None:
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)


def write_licenses(shared: Path, out: Path, modifications: str = OUR_MODIFICATIONS) -> None:
    """Copy the upstream licence files to ``out/LICENSES`` with a note of our modifications."""
    licenses = out / LICENSES_DIR
    licenses.mkdir(parents=True, exist_ok=True)
    for name in LICENSE_FILES:
        shutil.copyfile(shared / LICENSE_SOURCE_DIR / name, licenses / name)
    # One NRO_LICENSE copy covers both packages only if their texts really are the same.
    if (shared / COUNTRY_NRO_LICENSE).read_bytes() != (licenses / "NRO_LICENSE").read_bytes():
        raise ValueError("the two packages' NRO_LICENSE files differ; ship both")
    (licenses / OUR_MODIFICATIONS_NAME).write_text(modifications, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def folder_parser(description: str, default_out: Path) -> argparse.ArgumentParser:
    """The --shared and --out options every geodata builder takes (see resolve_folders)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--shared",
        type=Path,
        default=None,
        help=f"shared data folder (default: {DEFAULT_SHARED} relative to the repository root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default: {default_out} relative to the repository root)",
    )
    return parser


def resolve_folders(args: argparse.Namespace, default_out: Path) -> argparse.Namespace:
    # Defaults are anchored at the repo root so the script works from any working directory;
    # explicit paths follow the usual convention (relative to the current directory).
    args.shared = (args.shared or REPO_ROOT / DEFAULT_SHARED).resolve()
    args.out = (args.out or REPO_ROOT / default_out).resolve()
    return args


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = folder_parser(__doc__.split("\n\n")[0], DEFAULT_OUT)
    return resolve_folders(parser.parse_args(argv), DEFAULT_OUT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shared: Path = args.shared
    out: Path = args.out
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)

    country_locations = read_country_locations(GEODATA_DIR / COUNTRY_LOCATIONS_NAME)
    asn_locations = read_asn_locations(GEODATA_DIR / ASN_LOCATIONS_NAME)
    if not SELECTED_COUNTRIES <= country_locations.keys():
        raise ValueError("every selected country needs a row in country-locations.csv")

    countries = {version: read_countries(shared, version) for version in (4, 6)}
    joined = {version: join_family(shared, version, countries[version]) for version in (4, 6)}
    # IPv4 address space is a usable proxy for an ISP's subscriber base; IPv6 space is not
    # (allocation sizes say little about subscribers), so the ranking uses IPv4 only.
    neighbour_asns = {
        country: frozenset(top_asns_by_ipv4_space(joined[4], country, NEIGHBOUR_TOP_N))
        for country in NEIGHBOUR_COUNTRIES
    }
    families = {version: select(pieces, neighbour_asns) for version, pieces in joined.items()}
    # The networks the sample steers by ASN: their every announced prefix must be placed.
    sample_asns = frozenset(NODE_ASNS).union(*neighbour_asns.values())
    announced = {version: announced_spans(shared, version, sample_asns) for version in (4, 6)}
    names = asn_names(families, announced)
    families = {
        version: place_announced(families[version], announced[version], countries[version], names)
        for version in (4, 6)
    }
    if families[6] and families[6][0].start < 1 << 32:
        raise ValueError(f"IPv6 range inside ::/96: {families[6][0]}")
    check_regional_asns(families, asn_locations)

    # Announced prefixes used outside the selection need a point too; the world's table has
    # every country, and the sample's own rows win where both have one.
    locations = {**read_country_locations(GEODATA_DIR / WORLD_LOCATIONS_NAME), **country_locations}
    network_counts = write_mmdb(out / MMDB_NAME, families, locations, asn_locations)
    announced_rows = write_announced(out / ANNOUNCED_NAME, announced, names)
    write_csv(
        out / RTT_NAME,
        ["country_a", "country_b", "rtt_ms", "samples"],
        build_rtt_rows(shared / RTT_CSV, country_locations),
    )
    for name in (COUNTRY_LOCATIONS_NAME, ASN_LOCATIONS_NAME):
        copy_if_elsewhere(GEODATA_DIR / name, out / name)
    write_licenses(shared, out)
    (out / LICENSES_DIR / IPTOASN_NOTICE_NAME).write_text(IPTOASN_NOTICE, encoding="utf-8")

    report(out, families, network_counts, neighbour_asns, time.perf_counter() - began)
    print(f"wrote {out / ANNOUNCED_NAME}: {announced_rows:,} prefixes of {len(sample_asns)} ASNs "
          f"{sorted(sample_asns)}")  # fmt: skip
    return 0


def check_regional_asns(families: dict[int, list[Piece]], asns: dict[int, Location]) -> None:
    """Fail if asn-locations.csv no longer matches the data.

    The file only lists ISPs whose footprint is one region, so all their ranges must be in one
    country; otherwise clients abroad would be labelled with the home metro. A listed ASN with
    no range at all means the list is stale.
    """
    countries: dict[int, set[str]] = {asn: set() for asn in asns}
    for pieces in families.values():
        for piece in pieces:
            if piece.asn in countries:
                countries[piece.asn].add(piece.country)
    for asn, found in sorted(countries.items()):
        if len(found) != 1:
            where = sorted(found) or "no country"
            raise ValueError(f"asn-locations.csv: AS{asn} has ranges in {where}")


def report(
    out: Path,
    families: dict[int, list[Piece]],
    network_counts: dict[int, int],
    neighbour_asns: dict[str, frozenset[int]],
    seconds: float,
) -> None:
    """Print a short summary; useful when reviewing a data refresh."""
    size = (out / MMDB_NAME).stat().st_size
    print(f"wrote {out / MMDB_NAME} ({size:,} bytes) in {seconds:.1f} s")
    for version, pieces in families.items():
        per_country: dict[str, set[int]] = {}
        for piece in pieces:
            per_country.setdefault(piece.country, set()).add(piece.asn)
        summary = ", ".join(f"{c}={len(a)}" for c, a in sorted(per_country.items()))
        print(
            f"IPv{version}: {len(pieces):,} ranges -> {network_counts[version]:,} networks; "
            f"distinct ASNs per country: {summary}"
        )
    for country, asns in sorted(neighbour_asns.items()):
        print(f"top-{NEIGHBOUR_TOP_N} IPv4 ASNs kept for {country}: {sorted(asns)}")


if __name__ == "__main__":
    sys.exit(main())
