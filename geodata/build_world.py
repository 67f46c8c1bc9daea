#!/usr/bin/env python3
"""Build a real-scale world deployment (every client range, 20,000 nodes) from public data.

Run from the repository root (these are also the defaults)::

    python geodata/build_world.py --shared ../shared/data --out var/world

The output directory is a complete deployment directory (``router check var/world``,
``router serve --zones var/world``); it is not committed (``/var/`` is ignored).

Inputs (read-only; see ``<shared>/*/SOURCE.md`` for provenance and licences):

* ``ip-location-db-asn/asn-ipv{4,6}.csv.gz``: range -> ASN + organisation (CC BY 4.0).
* ``ip-location-db-geo-whois-asn-country/geo-whois-asn-country-ipv{4,6}.csv.gz``: range -> country.
* ``ripe-atlas-country-rtt/country_rtt_stat.csv.gz`` (and ``intra_rtt_stat.csv.gz``, recorded only).
* Committed next to this script: ``world-country-locations.csv`` (a point for every country code,
  see ``make_world_locations.py``), ``world-metros.csv`` (extra metros for node sites) and
  ``asn-locations.csv`` (home metros of regional ISPs).

Outputs (in ``--out``):

* ``clients.csv``: ``prefix,asn,country,latitude,longitude,org``: every range of the ASN table,
  joined with its country, as CIDR prefixes (IPv4 then IPv6, in address order).
* ``country-rtt.csv``: ``country_a,country_b,rtt_ms,samples``: every RIPE Atlas pair among the
  countries present with at least 100 samples, same-country pairs included.
* ``nodes.yaml``: 20,000 nodes inside the largest access ISPs of 38 countries (``--nodes``;
  ``--footprint-2196`` builds the earlier 2,196-node footprint, byte-identical to it).

The 20,000 nodes extend the 2,196-node footprint by one rule: the same countries and ISPs, the
same proportional allocation (each ISP's nodes in proportion to its IPv4 space), so a larger ISP
gets more nodes per site in the same metros; the total capacity grows with the node count
(``NODE_CAPACITY_GBPS`` per node on average).
* ``deployment.yaml``, ``world.example.zone``, ``world.example.policy.yaml``.
* ``world.json``: a summary (counts, the chosen countries and ISPs, input SHA-256s, build time).
* ``LICENSES/``: upstream licence files and a note of our modifications.

The rules (how countries, ISPs, node counts, capacities and locations are chosen) are in
geodata/README.md, section "World deployment". The build is deterministic: a rebuild from the
same inputs gives byte-identical files, except ``build_seconds`` in ``world.json``.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import gzip
import hashlib
import json
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

GEODATA_DIR = Path(__file__).resolve().parent
if str(GEODATA_DIR) not in sys.path:  # run as a script, or imported by the tests
    sys.path.insert(0, str(GEODATA_DIR))

import build_sample as sample  # noqa: E402
from build_sample import Location, Piece, Span  # noqa: E402

# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

DEFAULT_OUT = Path("var/world")

NODE_COUNT = 20_000
#: Capacity of all nodes together, shared out in proportion to the ISPs' IPv4 address space:
#: this many Gbps per node on average (an embedded cache appliance is 100 Gbps class).
NODE_CAPACITY_GBPS = 100
#: The first footprint (kept so its figures can be reproduced): 2,196 nodes, 400 Tbps in all.
FOOTPRINT_2196 = (2196, 400_000)
COUNTRY_COUNT = 38
#: At most this many ISPs (ASNs) per chosen country get nodes ...
ISPS_PER_COUNTRY = 5
#: ... and only those with at least this share of the country's IPv4 address space.
MIN_ISP_SHARE = 0.01
#: Autonomous systems that are not access ISPs although they hold much address space in a chosen
#: country: clouds, hosting and CDNs, government and military networks, research and education
#: networks, transit-only carriers and enterprises. Checked by reading the top ASNs by IPv4 space
#: of each chosen country (ip-location-db npm 2.3.2026061719); every ASN here was seen there.
EXCLUDED_ASNS: dict[int, str] = {
    # clouds, hosting, CDNs, content
    714: "Apple",
    8075: "Microsoft",
    14061: "DigitalOcean",
    14618: "Amazon",
    15169: "Google",
    16276: "OVH",
    16509: "Amazon",
    24940: "Hetzner",
    32934: "Facebook",
    37963: "Alibaba",
    45090: "Tencent",
    45102: "Alibaba",
    132203: "Tencent",
    134963: "Alibaba Cloud",
    150436: "BytePlus",
    396982: "Google Cloud",
    # government and military
    721: "US DoD Network Information Center",
    749: "US Department of Defense",
    37937: "China eGovNet",
    203665: "UK Ministry of Defence",
    # research and education networks, universities
    137: "GARR (IT)",
    224: "Sikt (NO)",
    376: "RISQ (CA)",
    513: "CERN",
    553: "Universitaet Stuttgart",
    559: "SWITCH (CH)",
    680: "DFN (DE)",
    766: "Red.es / RedIRIS (ES)",
    786: "Jisc (GB)",
    1101: "SURF (NL)",
    1103: "SURF (NL)",
    1213: "HEAnet (IE)",
    1659: "TANet (TW)",
    1741: "CSC (FI)",
    1853: "ACOnet (AT)",
    1926: "Tampere University",
    2018: "TENET (ZA)",
    2200: "Renater (FR)",
    2611: "Belnet (BE)",
    2907: "SINET (JP)",
    4538: "CERNET (CN)",
    7575: "AARNet (AU)",
    8517: "ULAKBIM (TR)",
    # transit and enterprise carriers, enterprises
    174: "Cogent (transit)",
    521: "Ford Motor Company",
    702: "Verizon Business EMEA (enterprise)",
    1234: "Fortum (energy)",
    3257: "GTT (transit)",
    3356: "Level 3 / Lumen (transit)",
    5619: "Tietoevry (IT services)",
    6878: "T-Systems (IT services)",
    8729: "Credit Suisse",
    8803: "Migros (retail)",
    8883: "UBS",
    20868: "ABB",
    31399: "Mercedes-Benz",
    41701: "Capgemini",
    51964: "Orange Business Services",
    209502: "Electricite de France",
}

# Synthetic node addresses: benchmarking space (RFC 2544) and the IPv6 documentation prefix.
NODE_IPV4_BASE = IPv4Address("198.18.0.0")  # 198.18.0.0/15: 131,072 addresses
NODE_IPV4_LIMIT = 1 << 17
NODE_IPV6_BASE = IPv6Address("2001:db8::")  # node i gets 2001:db8:0:<i+1>::1 (one /64 each)

ZONE = "world.example"
ZONE_SERIAL = 2026061701  # the data snapshot (ip-location-db 2.3.2026061719), not the clock
CLIENTS_NAME = "clients.csv"
CLIENTS_HEADER = ["prefix", "asn", "country", "latitude", "longitude", "org"]
RTT_NAME = "country-rtt.csv"
RTT_HEADER = ["country_a", "country_b", "rtt_ms", "samples"]
NODES_NAME = "nodes.yaml"
DEPLOYMENT_NAME = "deployment.yaml"
STATE_NAME = "node-state.json"
SUMMARY_NAME = "world.json"
INTRA_RTT_CSV = "ripe-atlas-country-rtt/intra_rtt_stat.csv.gz"
COUNTRY_LOCATIONS_NAME = "world-country-locations.csv"
METROS_NAME = "world-metros.csv"
ASN_LOCATIONS_NAME = sample.ASN_LOCATIONS_NAME

OUR_MODIFICATIONS = """\
Modifications made by this project (geodata/build_world.py) to the ip-location-db data
======================================================================================

Inputs: ip-location-db "asn" (IPv4/IPv6 range -> ASN + organisation; CC BY 4.0, RouteViews,
DB-IP, NRO; see ROUTEVIEWS-LICENSE, DBIP-LICENSE, NRO_LICENSE and the upstream MODIFICATIONS
file) and ip-location-db "geo-whois-asn-country" (range -> country; credit NRO, nro.net),
npm version 2.3.2026061719.

1. Overlaps: where a table lists a range inside another one, the inner (more specific) range
   wins for the addresses it covers.
2. Joining: each ASN range is intersected with the country ranges, so it is split wherever the
   country changes; the country is added to each piece. Pieces of ASN ranges that the country
   table does not cover get the country where that ASN has most of its address space, else the
   country of the nearest preceding range of the country table.
3. Nothing is filtered out: every range of the ASN table is kept.
4. Merging and CIDR conversion: adjacent pieces with the same ASN, organisation and country
   are merged, and every inclusive range is converted to the minimal list of CIDR blocks.
5. Enrichment: each row gets a representative latitude/longitude (world-country-locations.csv,
   from the tz database and hand-entered points, and asn-locations.csv); these are not from the
   upstream data.
6. Format: written as a CSV prefix list (clients.csv).
"""


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metro:
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Isp:
    country: str
    asn: int
    org: str
    ipv4_addresses: int


@dataclass(frozen=True)
class Site:
    id: str
    metro: str
    country: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class Node:
    id: str
    asn: int
    site: str
    latitude: float
    longitude: float
    ipv4: str
    ipv6: str
    capacity_gbps: float


@dataclass
class Family:
    """One address family after the join: pieces in address order plus what it took."""

    version: int
    asn_rows: int
    country_rows: int
    pieces: list[Piece]
    filled: Counter[str]  # uncovered pieces by the rule that gave them a country


# --------------------------------------------------------------------------------------------
# Joining (reuses build_sample's readers and interval operations)
# --------------------------------------------------------------------------------------------


def complement(spans: Sequence[Span], bits: int) -> list[Span]:
    """The gaps between sorted, disjoint spans within [0, 2**bits), with value ""."""
    gaps: list[Span] = []
    cursor = 0
    for span in spans:
        if span.start > cursor:
            gaps.append(Span(cursor, span.start - 1, ""))
        cursor = span.end + 1
    if cursor < 1 << bits:
        gaps.append(Span(cursor, (1 << bits) - 1, ""))
    return gaps


def space(piece: Piece, version: int) -> int:
    """Addresses in a piece; IPv6 counted in /64s so that sums stay comparable and small."""
    size = piece.end - piece.start + 1
    return size if version == 4 else max(1, size >> 64)


def dominant_countries(pieces: Iterable[Piece], version: int) -> dict[int, str]:
    """ASN -> the country holding most of its address space (ties: lowest code)."""
    per_asn: dict[int, Counter[str]] = {}
    for piece in pieces:
        per_asn.setdefault(piece.asn, Counter())[piece.country] += space(piece, version)
    return {
        asn: min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
        for asn, counts in per_asn.items()
    }


def join_all(shared: Path, version: int) -> tuple[Family, list[Piece], list[Span]]:
    """Join one family's ASN table with its country table, keeping every ASN range.

    Returns the family with the covered pieces, the uncovered pieces (country "") and the
    flattened country table (needed to fill the uncovered pieces).
    """
    country_rows = sample.read_country_table(shared / sample.COUNTRY_CSV[version], version)
    countries = sample.flatten(country_rows)
    asn_rows = sample.read_asn_table(shared / sample.ASN_CSV[version], version)
    asns = sample.flatten(asn_rows)
    covered = sample.intersect(asns, countries)
    uncovered = sample.intersect(asns, complement(countries, 32 if version == 4 else 128))
    family = Family(version, len(asn_rows), len(country_rows), covered, Counter())
    return family, uncovered, countries


def fill_uncovered(
    family: Family,
    uncovered: Sequence[Piece],
    countries: Sequence[Span],
    own: dict[int, str],
    other: dict[int, str],
) -> None:
    """Give every uncovered piece a country, then merge it into ``family.pieces``.

    The ASN's dominant country in this family, else in the other family; an ASN seen nowhere
    else gets the country of the nearest preceding range of the country table (ranges are
    handed out in blocks per registry, so the neighbour is usually in the same region).
    """
    starts = [span.start for span in countries]
    filled: list[Piece] = []
    for piece in uncovered:
        if piece.asn in own:
            country, rule = own[piece.asn], "asn_country"
        elif piece.asn in other:
            country, rule = other[piece.asn], "asn_country_other_family"
        else:
            index = max(0, bisect.bisect_left(starts, piece.start) - 1)
            country, rule = str(countries[index].value), "neighbour_range"
        family.filled[rule] += 1
        filled.append(piece._replace(country=country))
    merged = sorted(family.pieces + filled, key=lambda piece: piece.start)
    family.pieces[:] = sample.merge_adjacent(merged)


# --------------------------------------------------------------------------------------------
# Client map
# --------------------------------------------------------------------------------------------


def range_to_prefixes(start: int, end: int, bits: int) -> list[tuple[int, int]]:
    """Minimal CIDR cover of the inclusive range [start, end] as (network, prefix length).

    Same result as netaddr's iprange_to_cidrs, on plain integers (about 20 times faster).
    """
    prefixes: list[tuple[int, int]] = []
    while start <= end:
        aligned = (start & -start).bit_length() - 1 if start else bits
        fits = (end - start + 1).bit_length() - 1
        size = min(aligned, fits)
        prefixes.append((start, bits - size))
        start += 1 << size
    return prefixes


def format_address(value: int, version: int) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


def coordinates(location: Location) -> tuple[str, str]:
    return f"{location.latitude:.4f}", f"{location.longitude:.4f}"


def client_locator(
    countries: dict[str, Location], asn_locations: dict[int, Location], home: dict[int, str]
) -> Callable[[int, str], tuple[str, str]]:
    """(asn, country) -> (latitude, longitude) text.

    A regional ISP of asn-locations.csv is placed at its home metro, but only in its home
    country (where it has most of its address space); everyone else at the country's point.
    """
    by_country = {code: coordinates(location) for code, location in countries.items()}
    regional = {
        (asn, home[asn]): coordinates(location)
        for asn, location in asn_locations.items()
        if asn in home
    }

    def locate(asn: int, country: str) -> tuple[str, str]:
        return regional.get((asn, country)) or by_country[country]

    return locate


def write_clients(
    path: Path, families: Sequence[Family], locate: Callable[[int, str], tuple[str, str]]
) -> dict[int, int]:
    """Write clients.csv; returns the number of prefixes per address family."""
    counts: dict[int, int] = {}
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle, lineterminator="\n")
        out.writerow(CLIENTS_HEADER)
        for family in families:
            version, bits, written = family.version, 32 if family.version == 4 else 128, 0
            for piece in family.pieces:
                latitude, longitude = locate(piece.asn, piece.country)
                rows = [
                    (
                        f"{format_address(network, version)}/{length}",
                        piece.asn,
                        piece.country,
                        latitude,
                        longitude,
                        piece.org,
                    )
                    for network, length in range_to_prefixes(piece.start, piece.end, bits)
                ]
                out.writerows(rows)
                written += len(rows)
            counts[version] = written
    tmp.replace(path)
    return counts


# --------------------------------------------------------------------------------------------
# Countries and ISPs
# --------------------------------------------------------------------------------------------


def read_rtt_table(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def measured_in_country(rows: Iterable[dict[str, str]]) -> set[str]:
    """Countries with a same-country RTT row of at least RTT_MIN_SAMPLES samples."""
    return {
        row["cty1"]
        for row in rows
        if row["cty1"] == row["cty2"] and int(row["rtt_cnt"]) >= sample.RTT_MIN_SAMPLES
    }


def ipv4_space(pieces_v4: Iterable[Piece]) -> dict[str, Counter[int]]:
    """Country -> ASN -> IPv4 addresses."""
    per_country: dict[str, Counter[int]] = {}
    for piece in pieces_v4:
        per_country.setdefault(piece.country, Counter())[piece.asn] += piece.end - piece.start + 1
    return per_country


def select_countries(country_space: dict[str, int], measured: set[str], count: int) -> list[str]:
    """The ``count`` countries with the most IPv4 space among those with in-country RTT data."""
    ranked = sorted(country_space.items(), key=lambda item: (-item[1], item[0]))
    chosen = [country for country, _ in ranked if country in measured][:count]
    if len(chosen) < count:
        raise ValueError(f"only {len(chosen)} countries have in-country RTT data")
    return chosen


def select_isps(
    asn_space: Counter[int],
    country: str,
    home: dict[int, str],
    orgs: dict[int, str],
    excluded: dict[int, str] | None = None,
    per_country: int = ISPS_PER_COUNTRY,
    min_share: float = MIN_ISP_SHARE,
) -> list[Isp]:
    """The largest access ISPs of a country by IPv4 space.

    An ASN qualifies if it is not in ``excluded`` (not an access network), has most of its IPv4
    space in this country (it is a domestic ISP here, not a foreign network with a branch) and
    holds at least ``min_share`` of the country's IPv4 space. At least one ISP is always kept.
    """
    excluded = EXCLUDED_ASNS if excluded is None else excluded
    total = sum(asn_space.values())
    isps: list[Isp] = []
    for asn, addresses in sorted(asn_space.items(), key=lambda item: (-item[1], item[0])):
        if len(isps) == per_country:
            break
        if asn in excluded or home.get(asn) != country:
            continue
        if isps and addresses < min_share * total:
            break
        isps.append(Isp(country, asn, orgs.get(asn, ""), addresses))
    if not isps:
        raise ValueError(f"{country}: no access ISP found")
    return isps


def allocate(weights: Sequence[int], total: int, minimum: int = 1) -> list[int]:
    """Split ``total`` seats in proportion to ``weights``, each getting at least ``minimum``.

    Largest-remainder (Hamilton) method in exact integer arithmetic: every share starts at
    max(minimum, floor(quota)); leftover seats go to the largest remainders, and if the minimum
    pushed the sum over ``total``, seats are taken back from the shares furthest above their
    quota (never below the minimum). Ties go to the earlier weight. Deterministic.
    """
    if not weights or any(weight <= 0 for weight in weights):
        raise ValueError("weights must be positive")
    if len(weights) * minimum > total:
        raise ValueError(f"{total} seats cannot give {len(weights)} shares {minimum} each")
    whole = sum(weights)
    # Quota of share i is total * w_i / whole; (total * w_i - seats_i * whole) is its remainder
    # times ``whole``, so comparisons stay exact integers.
    seats = [max(minimum, total * weight // whole) for weight in weights]

    def remainder(i: int) -> int:
        return total * weights[i] - seats[i] * whole

    missing = total - sum(seats)
    if missing > 0:
        for i in sorted(range(len(seats)), key=lambda i: (-remainder(i), i))[:missing]:
            seats[i] += 1
    while missing < 0:
        i = min(
            (i for i in range(len(seats)) if seats[i] > minimum), key=lambda i: (remainder(i), i)
        )
        seats[i] -= 1
        missing += 1
    return seats


# --------------------------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------------------------


def read_metros(path: Path) -> dict[str, list[Metro]]:
    metros: dict[str, list[Metro]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        sample._check_header(path, reader.fieldnames, ["country", "metro", "latitude", "longitude"])
        for row in reader:
            location = sample._location(path, {**row, "place": row["metro"]})
            metros.setdefault(row["country"], []).append(
                Metro(row["metro"], location.latitude, location.longitude)
            )
    return metros


def country_metro(location: Location) -> Metro:
    """The country's representative point (its largest city), the first metro of its nodes."""
    return Metro(location.place, location.latitude, location.longitude)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def jitter(node_id: str) -> tuple[float, float]:
    """A deterministic offset of up to 0.05 degrees (a few km), so nodes of a site differ."""
    digest = hashlib.sha256(node_id.encode()).digest()
    a, b = int.from_bytes(digest[:4], "big"), int.from_bytes(digest[4:8], "big")
    return (a / 0xFFFFFFFF - 0.5) / 10, (b / 0xFFFFFFFF - 0.5) / 10


def node_addresses(index: int) -> tuple[str, str]:
    if index + 1 >= NODE_IPV4_LIMIT:
        raise ValueError("more nodes than 198.18.0.0/15 has addresses")
    return str(NODE_IPV4_BASE + index + 1), str(NODE_IPV6_BASE + ((index + 1) << 64) + 1)


def place_nodes(
    isps: Sequence[Isp],
    seats: Sequence[int],
    metros: dict[str, list[Metro]],
    total_capacity_gbps: float,
) -> tuple[list[Site], list[Node]]:
    """Nodes of each ISP, spread round-robin over its country's metros (first metro first).

    Each ISP gets one site per metro it uses. Capacity: the ISP's share of the total capacity
    is its share of the chosen ISPs' IPv4 space, split evenly over its nodes.
    """
    whole = sum(isp.ipv4_addresses for isp in isps)
    sites: dict[str, Site] = {}
    nodes: list[Node] = []
    for isp, count in zip(isps, seats):
        per_node = round(total_capacity_gbps * isp.ipv4_addresses / whole / count, 1)
        if per_node <= 0:
            raise ValueError(f"AS{isp.asn}: capacity rounds to 0; raise the total capacity")
        used: Counter[str] = Counter()
        for k in range(count):
            metro = metros[isp.country][k % len(metros[isp.country])]
            site_id = f"{isp.country.lower()}-as{isp.asn}-{slug(metro.name)}"
            sites.setdefault(
                site_id, Site(site_id, metro.name, isp.country, metro.latitude, metro.longitude)
            )
            used[site_id] += 1
            node_id = f"{site_id}-{used[site_id]}"
            d_lat, d_lon = jitter(node_id)
            ipv4, ipv6 = node_addresses(len(nodes))
            nodes.append(
                Node(
                    node_id,
                    isp.asn,
                    site_id,
                    round(max(-90.0, min(90.0, metro.latitude + d_lat)), 4),
                    round(((metro.longitude + d_lon + 180) % 360) - 180, 4),
                    ipv4,
                    ipv6,
                    per_node,
                )
            )
    return list(sites.values()), nodes


def write_nodes_yaml(
    path: Path, isps: Sequence[Isp], sites: Sequence[Site], nodes: Sequence[Node]
) -> None:
    names = {isp.asn: f"{isp.org} ({isp.country})" for isp in isps}
    lines = [
        "# World deployment: nodes inside the largest access ISPs of the chosen countries.",
        "# Generated by geodata/build_world.py; do not edit (rebuild instead).",
        "# ASNs are the real ones of each ISP; addresses are synthetic (198.18.0.0/15, 2001:db8::/32).",
        "sites:",
    ]
    for site in sites:
        lines.append(
            # Quoted: YAML 1.1 reads a bare NO (Norway) as false.
            f'  - {{id: {site.id}, metro: {json.dumps(site.metro)}, country: "{site.country}", '
            f"kind: isp, lat: {site.latitude:.4f}, lon: {site.longitude:.4f}}}"
        )
    lines.append("")
    lines.append("nodes:")
    last_asn = None
    for node in nodes:
        if node.asn != last_asn:
            lines.append(f"  # AS{node.asn} {names.get(node.asn, '')}".rstrip())
            last_asn = node.asn
        lines.append(
            f"  - {{id: {node.id}, asn: {node.asn}, site: {node.site}, lat: {node.latitude:.4f}, "
            f'lon: {node.longitude:.4f}, ipv4: {node.ipv4}, ipv6: "{node.ipv6}", '
            f"capacity_gbps: {node.capacity_gbps:g}}}"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Zone, policy, deployment
# --------------------------------------------------------------------------------------------


def zone_text() -> str:
    return f"""\
; {ZONE}. -- the world-scale deployment built by geodata/build_world.py (origin = file name).
; video and www are steered: see {ZONE}.policy.yaml.
$TTL 3600
@           IN SOA   ns1.{ZONE}. hostmaster.{ZONE}. (
                     {ZONE_SERIAL} ; serial (the data snapshot)
                     7200       ; refresh
                     900        ; retry
                     1209600    ; expire
                     300 )      ; negative-caching TTL (RFC 2308)
            IN NS    ns1
            IN NS    ns2

; Name servers (glue): the router's own service addresses (documentation prefixes).
ns1         IN A     192.0.2.53
ns1         IN AAAA  2001:db8:53::1
ns2         IN A     198.51.100.53
ns2         IN AAAA  2001:db8:53::2

; The origin behind the edge nodes: never steered.
origin      IN A     203.0.113.80
origin      IN AAAA  2001:db8:80::1

; Aliases of steered names.
images      IN CNAME www
live        IN CNAME video
"""


# Demand before any is observed: video fills half the footprint at peak, web a tenth.
VIDEO_PEAK_SHARE = 0.5
WEB_PEAK_SHARE = 0.1
# A data-residency example: German clients only ever reach German nodes.
GEOFENCED = "DE"


def policy_text(default_site: str, total_capacity_gbps: float, node_countries: set[str]) -> str:
    fence = (
        f"    geofence:\n      - {{clients: [{GEOFENCED}], nodes: [{GEOFENCED}]}}   # data residency\n"
        if GEOFENCED in node_countries
        else ""
    )
    return f"""\
# Steering policies for zone {ZONE}. (generated by geodata/build_world.py). Keys are sorted.
# default_site: the site with the most nodes (clients the map cannot place are steered from it).
names:
  video: video
  www: web
policies:
  video:
    answer_count: 2
    default_site: {default_site}
    expected_peak_gbps: {total_capacity_gbps * VIDEO_PEAK_SHARE:.0f}
{fence}    headroom: 0.8
    load_penalty_ms: 60
    nodes: all
    onnet_bonus_ms: 25       # on-net discount: a node inside the client's own ASN
    ttl: 20
    when_all_down: fail_open
  web:
    answer_count: 2
    default_site: {default_site}
    expected_peak_gbps: {total_capacity_gbps * WEB_PEAK_SHARE:.0f}
    headroom: 0.8
    load_penalty_ms: 30
    nodes: all
    onnet_bonus_ms: 10
    ttl: 30
    when_all_down: fail_open
"""


DEPLOYMENT_TEXT = f"""\
# World-scale deployment built by geodata/build_world.py. Paths are relative to this file.
client_map: {CLIENTS_NAME}        # prefix,asn,country,latitude,longitude,org (every range)
latency: {RTT_NAME}          # RIPE Atlas country-to-country RTT; missing pairs: by distance
state_file: {STATE_NAME}     # node states and overrides kept across restarts
cache_dir: cache             # the compiled client map, so the router starts in seconds
"""


def busiest_site(nodes: Sequence[Node]) -> str:
    counts = Counter(node.site for node in nodes)
    return min(counts.items(), key=lambda item: (-item[1], item[0]))[0]


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = sample.folder_parser(__doc__.split("\n\n")[0], DEFAULT_OUT)
    parser.add_argument("--nodes", type=int, default=NODE_COUNT, help="number of nodes")
    parser.add_argument("--countries", type=int, default=COUNTRY_COUNT, help="countries with nodes")
    parser.add_argument(
        "--capacity-gbps",
        type=float,
        default=None,
        help=f"capacity of all nodes together (default: {NODE_CAPACITY_GBPS} per node)",
    )
    parser.add_argument(
        "--footprint-2196",
        action="store_true",
        help="the earlier footprint: 2,196 nodes, 400 Tbps (overrides --nodes, --capacity-gbps)",
    )
    args = sample.resolve_folders(parser.parse_args(argv), DEFAULT_OUT)
    if args.footprint_2196:
        args.nodes, args.capacity_gbps = FOOTPRINT_2196
    if args.nodes < 1:
        parser.error(f"--nodes must be at least 1, got {args.nodes}")
    if args.capacity_gbps is None:
        args.capacity_gbps = NODE_CAPACITY_GBPS * args.nodes
    if args.capacity_gbps <= 0:
        parser.error(f"--capacity-gbps must be positive, got {args.capacity_gbps}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    shared: Path = args.shared
    out: Path = args.out
    began = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - began:5.1f} s] {message}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    locations = sample.read_country_locations(GEODATA_DIR / COUNTRY_LOCATIONS_NAME)
    asn_locations = sample.read_asn_locations(GEODATA_DIR / ASN_LOCATIONS_NAME)
    extra_metros = read_metros(GEODATA_DIR / METROS_NAME)

    # 1. Join: every ASN range, with its country.
    joined = {}
    for version in (4, 6):
        joined[version] = join_all(shared, version)
        family = joined[version][0]
        progress(
            f"IPv{version}: read {family.asn_rows:,} ASN ranges and {family.country_rows:,} "
            f"country ranges; {len(joined[version][1]):,} pieces without a country"
        )
    dominant = {
        version: dominant_countries(joined[version][0].pieces, version) for version in (4, 6)
    }
    for version, other in ((4, 6), (6, 4)):
        family, uncovered, countries = joined[version]
        fill_uncovered(family, uncovered, countries, dominant[version], dominant[other])
    families = [joined[4][0], joined[6][0]]
    home = {**dominant[6], **dominant[4]}  # an ASN's home: its IPv4 country, else its IPv6 one
    present = sorted({piece.country for family in families for piece in family.pieces})
    missing = sorted(set(present) - locations.keys())
    if missing:
        raise ValueError(f"{COUNTRY_LOCATIONS_NAME} has no point for {missing}")

    # 2. Client map.
    locate = client_locator(locations, asn_locations, home)
    prefix_counts = write_clients(out / CLIENTS_NAME, families, locate)
    progress(
        f"wrote {CLIENTS_NAME}: {prefix_counts[4]:,} IPv4 + {prefix_counts[6]:,} IPv6 prefixes"
    )

    # 3. Latency.
    rtt_rows = read_rtt_table(shared / sample.RTT_CSV)
    rtt = sample.build_rtt_rows(shared / sample.RTT_CSV, present)
    sample.write_csv(out / RTT_NAME, RTT_HEADER, rtt)
    measured = measured_in_country(rtt_rows)

    # 4. Countries, ISPs, nodes.
    per_country = ipv4_space(families[0].pieces)
    country_space = {country: sum(asns.values()) for country, asns in per_country.items()}
    chosen = select_countries(country_space, measured, args.countries)
    orgs = {piece.asn: piece.org for family in families for piece in family.pieces}
    isps = [
        isp for country in chosen for isp in select_isps(per_country[country], country, home, orgs)
    ]
    seats = allocate([isp.ipv4_addresses for isp in isps], args.nodes)
    metros = {
        country: [country_metro(locations[country]), *extra_metros.get(country, [])]
        for country in chosen
    }
    sites, nodes = place_nodes(isps, seats, metros, args.capacity_gbps)
    write_nodes_yaml(out / NODES_NAME, isps, sites, nodes)
    progress(f"wrote {NODES_NAME}: {len(nodes):,} nodes at {len(sites):,} sites, {len(isps)} ISPs")

    # 5. Zone, policy, deployment settings, licences.
    (out / f"{ZONE}.zone").write_text(zone_text(), encoding="utf-8")
    site_country = {site.id: site.country for site in sites}
    policy = policy_text(
        busiest_site(nodes),
        sum(node.capacity_gbps for node in nodes),
        {site_country[node.site] for node in nodes},
    )
    (out / f"{ZONE}.policy.yaml").write_text(policy, encoding="utf-8")
    (out / DEPLOYMENT_NAME).write_text(DEPLOYMENT_TEXT, encoding="utf-8")
    sample.write_licenses(shared, out, OUR_MODIFICATIONS)

    # 6. Summary.
    summary = summarise(
        shared, families, prefix_counts, rtt, rtt_rows, chosen, isps, seats, nodes, sites
    )
    summary["build_seconds"] = round(time.perf_counter() - began, 1)
    (out / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    progress(
        f"done: {summary['prefixes']['total']:,} prefixes, {summary['groups']:,} groups, "
        f"{summary['countries']} countries, {summary['nodes']:,} nodes, "
        f"{summary['capacity_gbps']:,} Gbps -> {out}"
    )
    return 0


def summarise(
    shared: Path,
    families: Sequence[Family],
    prefix_counts: dict[int, int],
    rtt: Sequence[tuple[str, str, str, int]],
    rtt_rows: Sequence[dict[str, str]],
    chosen: Sequence[str],
    isps: Sequence[Isp],
    seats: Sequence[int],
    nodes: Sequence[Node],
    sites: Sequence[Site],
) -> dict[str, object]:
    groups = {(piece.asn, piece.country) for family in families for piece in family.pieces}
    same_country = [row for row in rtt_rows if row["cty1"] == row["cty2"]]
    samples = sum(int(row["rtt_cnt"]) for row in same_country)
    with gzip.open(shared / INTRA_RTT_CSV, "rt", encoding="utf-8", newline="") as handle:
        intra = next(csv.DictReader(handle))
    capacity = {node.id: node.capacity_gbps for node in nodes}
    by_country: dict[str, list[dict[str, object]]] = {country: [] for country in chosen}
    seats_of: dict[str, list[int]] = {country: [] for country in chosen}
    for isp, count in zip(isps, seats):
        seats_of[isp.country].append(count)
    for isp, count in zip(isps, seats):
        per_node = next(node.capacity_gbps for node in nodes if node.asn == isp.asn)
        by_country[isp.country].append(
            {
                "asn": isp.asn,
                "org": isp.org,
                "ipv4_addresses": isp.ipv4_addresses,
                "nodes": count,
                "capacity_gbps_per_node": per_node,
            }
        )
    names = [*sample.ASN_CSV.values(), *sample.COUNTRY_CSV.values(), sample.RTT_CSV, INTRA_RTT_CSV]
    inputs = [{"path": name, "sha256": sha256(shared / name)} for name in names]
    for name in (COUNTRY_LOCATIONS_NAME, METROS_NAME, ASN_LOCATIONS_NAME):
        inputs.append({"path": f"geodata/{name}", "sha256": sha256(GEODATA_DIR / name)})
    same_country_avg = sum(int(r["rtt_cnt"]) * float(r["rtt_avg"]) for r in same_country) / samples
    return {
        "generator": "geodata/build_world.py",
        "ranges_read": {f"ipv{f.version}": f.asn_rows for f in families},
        "country_ranges_read": {f"ipv{f.version}": f.country_rows for f in families},
        "pieces_without_country": {
            f"ipv{f.version}": dict(sorted(f.filled.items())) for f in families
        },
        "ranges_written": {f"ipv{f.version}": len(f.pieces) for f in families},
        "prefixes": {
            "ipv4": prefix_counts[4],
            "ipv6": prefix_counts[6],
            "total": prefix_counts[4] + prefix_counts[6],
        },
        "asns": len({asn for asn, _ in groups}),
        "groups": len(groups),
        "countries": len({country for _, country in groups}),
        "rtt_pairs": len(rtt),
        "rtt_same_country_pairs": sum(1 for a, b, _, _ in rtt if a == b),
        # intra_rtt_stat.csv.gz is one row: the pooled same-country figure. It equals the
        # sample-weighted mean of the table's same-country rows, which is why those rows (one per
        # country) are what country-rtt.csv uses; both are recorded here as a cross-check.
        "intra_rtt_stat": {
            "samples": int(intra["rtt_cnt"]),
            "rtt_avg_ms": round(float(intra["rtt_avg"]), 2),
            "same_country_rows_samples": samples,
            "same_country_rows_weighted_avg_ms": round(same_country_avg, 2),
        },
        "nodes": len(nodes),
        "sites": len(sites),
        "isps": len(isps),
        "capacity_gbps": round(sum(capacity.values()), 1),
        "node_countries": [
            {"country": country, "nodes": sum(seats_of[country]), "isps": entries}
            for country, entries in by_country.items()
        ],
        "inputs": inputs,
    }


if __name__ == "__main__":
    sys.exit(main())
