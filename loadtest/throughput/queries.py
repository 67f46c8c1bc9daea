"""The query mix and dnsperf's query files: what every server under test is asked.

Mostly steered names (A and AAAA), static names of the zone, NXDOMAIN and NODATA, a little
0x20 case mixing; each query a resolver's (RD clear, EDNS(0) with a 1,232-byte payload),
with an ECS option from one of many client subnets of the sample client map (the ECS
variant) or without (the plain variant). dnsperf reads them with ``-B``: length-prefixed
wire messages, so each query carries its own ECS option.
"""

from __future__ import annotations

import ipaddress
import random
import string
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.zone

MIX = {"steered": 0.75, "static": 0.12, "nxdomain": 0.08, "nodata": 0.05}
STEERED_AAAA_SHARE = 0.4
CASE_SHARE = 0.10  # queries whose name is sent in random 0x20 case
V4_ECS_BITS = 24  # what public resolvers send
V6_ECS_BITS = 56
V6_SUBNET_SHARE = 0.2
EDNS_PAYLOAD = 1232


@dataclass(frozen=True)
class Query:
    kind: str  # steered, static, nxdomain, nodata
    name: str  # as sent (0x20 case included), absolute
    qtype: str
    ecs: str | None  # "ADDRESS/BITS", or None for a query without ECS
    wire: bytes


@dataclass
class ZoneInventory:
    origin: dns.name.Name
    steered: list[tuple[str, int]]  # (absolute name, policy index)
    static: list[tuple[str, str]]  # (name, type) with data in the zone
    nodata: list[tuple[str, str]]  # existing name, a type it has no data for
    nxdomain: list[str]  # names that do not exist


def random_case(name: str, rng: random.Random) -> str:
    """The name with each letter's case drawn at random (0x20), at least one letter changed."""
    letters = [i for i, c in enumerate(name) if c.isalpha()]
    chars = list(name.lower())
    for i in letters:
        if rng.random() < 0.5:
            chars[i] = chars[i].upper()
    if letters and "".join(chars) == name.lower():
        chars[letters[0]] = chars[letters[0]].upper()
    return "".join(chars)


def steered_zone(zones: Path, model) -> tuple[Path, list[tuple[str, int]]]:  # noqa: ANN001 - a SteeringModel
    """The zone file of the first steered name's zone in ``zones`` and its steered names
    (text, policy): what ``zone_inventory`` draws the mix from."""
    origin = model.policies[model.steered[0][1]].zone
    zone_file = zones / f"{origin.to_text().rstrip('.')}.zone"
    return zone_file, [(n.to_text(), p) for n, p in model.steered if n.is_subdomain(origin)]


def zone_inventory(
    zone_file: Path, steered: list[tuple[str, int]], rng: random.Random
) -> ZoneInventory:
    """What the mix asks for: the zone's records, absent types of existing names, absent names."""
    origin = dns.name.from_text(zone_file.name.removesuffix(".zone"))
    zone = dns.zone.from_file(str(zone_file), origin=origin, relativize=False)
    steered_names = {dns.name.from_text(n) for n, _ in steered}
    static: list[tuple[str, str]] = []
    nodata: list[tuple[str, str]] = []
    for name, node in sorted(zone.nodes.items()):
        types = {r.rdtype for r in node.rdatasets}
        if name != origin and dns.rdatatype.NS in types:
            continue  # a delegation: referrals are not what this mix measures
        for rdtype in sorted(types):
            static.append((name.to_text(), dns.rdatatype.to_text(rdtype)))
        if dns.rdatatype.CNAME in types or name in steered_names:
            continue
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.MX, dns.rdatatype.TXT):
            if rdtype not in types:
                nodata.append((name.to_text(), dns.rdatatype.to_text(rdtype)))
    for name in sorted(steered_names):
        types = {r.rdtype for r in zone.nodes[name].rdatasets} if name in zone.nodes else set()
        for rdtype in (dns.rdatatype.TXT, dns.rdatatype.MX):
            if rdtype not in types:
                nodata.append((name.to_text(), dns.rdatatype.to_text(rdtype)))
    existing = set(zone.nodes) | steered_names
    labels = sorted({n.relativize(origin).to_text() for n in existing if n != origin})
    nxdomain: set[str] = set()
    attempts = 0
    while len(nxdomain) < 64 and attempts < 10_000:
        attempts += 1
        if rng.random() < 0.5 and labels:  # a typo of a real label
            label = list(rng.choice(labels).split(".")[0])
            if len(label) > 1:
                i = rng.randrange(len(label) - 1)
                label[i], label[i + 1] = label[i + 1], label[i]
            label.insert(rng.randrange(len(label) + 1), rng.choice(string.ascii_lowercase))
            label = "".join(label)
        else:  # a random label, as scanners and broken clients send
            label = "".join(
                rng.choice(string.ascii_lowercase + string.digits)
                for _ in range(rng.randint(5, 12))
            )
        candidate = dns.name.from_text(label, origin)
        if not any(candidate == n or n.is_subdomain(candidate) for n in existing):
            nxdomain.add(candidate.to_text())
    return ZoneInventory(origin, list(steered), static, nodata, sorted(nxdomain))


def draw_subnets(
    client_map, rng: random.Random, count: int, v6_share: float = V6_SUBNET_SHARE
) -> list[str]:  # noqa: ANN001
    """``count`` distinct client subnets (IPv4 /24, IPv6 /56) that the map places in a client group.

    Each is drawn from a random interval of the compiled map (every mapped prefix equally
    likely, not every address), at a random place inside it; a subnet whose address (the one
    the router looks up: host bits cleared) falls outside every mapped prefix is drawn again.
    """
    v4 = [i for i in range(len(client_map.v4_start)) if client_map.v4_group[i] != 0]
    v6 = [i for i in range(len(client_map.v6_start_hi)) if client_map.v6_group[i] != 0]
    want6 = round(count * v6_share) if v6 else 0
    want4 = count - want6 if v4 else 0
    out: set[str] = set()
    attempts = 0
    while len(out) < want4 and attempts < 50 * count:
        attempts += 1
        i = rng.choice(v4)
        network = ipaddress.ip_network((rng.randint(int(client_map.v4_start[i]), int(client_map.v4_end[i])), V4_ECS_BITS),
                                       strict=False)  # fmt: skip
        if client_map.lookup(network.network_address)[0] != 0:
            out.add(str(network))
    got6: set[str] = set()
    attempts = 0
    while len(got6) < want6 and attempts < 50 * count:
        attempts += 1
        i = rng.choice(v6)
        start = (int(client_map.v6_start_hi[i]) << 64) | int(client_map.v6_start_lo[i])
        end = (int(client_map.v6_end_hi[i]) << 64) | int(client_map.v6_end_lo[i])
        network = ipaddress.ip_network((rng.randint(start, end), V6_ECS_BITS), strict=False)
        if client_map.lookup(network.network_address)[0] != 0:
            got6.add(str(network))
    return sorted(out) + sorted(got6)


def encode_query(name: str, qtype: str, ecs: str | None, qid: int = 0) -> bytes:
    """A resolver's query to an authoritative server: RD clear, EDNS(0) 1232, ECS if given."""
    options = []
    if ecs is not None:
        network = ipaddress.ip_network(ecs)
        options.append(dns.edns.ECSOption(str(network.network_address), network.prefixlen))
    query = dns.message.make_query(dns.name.from_text(name), qtype, use_edns=0, payload=EDNS_PAYLOAD,
                                   options=options, id=qid)  # fmt: skip
    query.flags &= ~dns.flags.RD
    return query.to_wire()


def build_mix(inventory: ZoneInventory, subnets: list[str] | None, count: int, rng: random.Random,
              mix: dict[str, float] = MIX) -> list[Query]:  # fmt: skip
    """``count`` queries in the given proportions; every query gets an ECS subnet if ``subnets``."""
    kinds = list(mix)
    weights = [mix[k] for k in kinds]
    out = []
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        if kind == "steered":
            name = rng.choice(inventory.steered)[0]
            qtype = "AAAA" if rng.random() < STEERED_AAAA_SHARE else "A"
        elif kind == "static":
            name, qtype = rng.choice(inventory.static)
        elif kind == "nodata":
            name, qtype = rng.choice(inventory.nodata)
        else:
            name, qtype = rng.choice(inventory.nxdomain), rng.choice(["A", "AAAA"])
        if rng.random() < CASE_SHARE:
            name = random_case(name, rng)
        ecs = rng.choice(subnets) if subnets else None
        out.append(
            Query(kind, name, qtype, ecs, encode_query(name, qtype, ecs, rng.randrange(65536)))
        )
    return out


def frame(wires: list[bytes]) -> bytes:
    """dnsperf ``-B`` input: each message preceded by its length (two octets, as over TCP)."""
    return b"".join(struct.pack("!H", len(w)) + w for w in wires)


def unframe(data: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError(f"truncated length prefix at offset {at}")
        (length,) = struct.unpack_from("!H", data, at)
        if at + 2 + length > len(data):
            raise ValueError(f"truncated message at offset {at}")
        out.append(data[at + 2 : at + 2 + length])
        at += 2 + length
    return out


def mix_composition(queries: list[Query]) -> dict:
    kinds = Counter(q.kind for q in queries)
    return {
        "queries": len(queries),
        "kinds": {k: round(v / len(queries), 4) for k, v in sorted(kinds.items())},
        "types": dict(sorted(Counter(q.qtype for q in queries).items())),
        "case_mixed": round(sum(q.name != q.name.lower() for q in queries) / len(queries), 4),
        "with_ecs": round(sum(q.ecs is not None for q in queries) / len(queries), 4),
        "distinct_subnets": len({q.ecs for q in queries if q.ecs}),
    }
