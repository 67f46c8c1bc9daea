"""Throughput: the router against gdnsd and PowerDNS, all three steering the same sample zone.

    python loadtest/bench_throughput.py --json FILE [--quick] [--repetitions N] [--seconds S]

Everything runs on loopback (127.0.0.1), dnsperf pinned to core 0 and the server under test to
core 1 (``taskset -c``):

- the router (``router serve --workers 1``) on the sample deployment (zones/, geodata/);
- gdnsd 3 with its geoip plugin: a ``nets`` map made from the router's whole client map, each
  prefix sent to the node pair the router's own routing table gives its client group;
- PowerDNS 4 (bind backend, ``enable-lua-records``, ``edns-subnet-processing``) with LUA
  A/AAAA records choosing the same node pair with ``netmask()`` for every block the query mix
  touches.

Query files (dnsperf ``-B``: length-prefixed wire messages built here, so each query carries
its own ECS option): mostly steered names (A and AAAA), static names, NXDOMAIN and NODATA, a
little 0x20 case mixing; an ECS variant (every query with an ECS option from one of many
client subnets of the sample client map) and a plain variant (EDNS(0), no ECS).

Each server in turn with the same dnsperf arguments, several repetitions, the order rotating
between repetitions; qps, average latency, lost queries and server CPU per query (utime +
stime of the server's whole process tree from /proc, before and after the run, over the
queries answered). Then p99 latency at half of each server's measured maximum (dnsperf
``-Q`` and ``-v``: one latency line per query), an overload run against the router (two
dnsperf threads on both cores), and the router with two workers (on both cores). A sample of replies is decoded during the router's runs and compared with what the
router's own lookup (``router explain``'s code path) answers for that query; the peers'
replies are checked the same way (rcode and answer records).

Bounded: every dnsperf run has ``-l`` seconds and a subprocess timeout; every wait has a
deadline; every process started here is stopped by its PID in ``finally``.
"""

from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import platform
import queue
import random
import re
import resource
import shutil
import socket
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from router.config import load_deployment  # noqa: E402
from router.service.socket_stats import parse_proc_net_udp, udp_socket_stats  # noqa: E402
from tests.conftest import make_deployment  # noqa: E402

LOAD_CORE = "0"  # dnsperf (and this script, mostly idle)
SERVER_CORE = "1"  # the server under test
# Same for every server and run. -c 4 source ports, one sending thread, at most 100 queries
# outstanding (a closed loop: the server's rate sets the pace), 2 s before a query is lost.
DNSPERF_ARGS = ["-c", "4", "-T", "1", "-q", "100", "-t", "2"]
# Overload: far more outstanding queries than the server's socket buffer holds, from two
# sending threads on both cores (one dnsperf thread on one core cannot outpace a server that
# answers in a few microseconds; on the server's core it also takes CPU from the server).
OVERLOAD_ARGS = ["-c", "20", "-T", "2", "-q", "30000", "-t", "1"]
OVERLOAD_CORES = "0-1"
MIX = {"steered": 0.75, "static": 0.12, "nxdomain": 0.08, "nodata": 0.05}
STEERED_AAAA_SHARE = 0.4
CASE_SHARE = 0.10  # queries whose name is sent in random 0x20 case
V4_ECS_BITS = 24  # what public resolvers send
V6_ECS_BITS = 56
V6_SUBNET_SHARE = 0.2
EDNS_PAYLOAD = 1232
CHECK_SAMPLE = 200  # replies checked against the router's own lookup, per checked run
QUERY_LOG_SAMPLE = 100  # the query log run: 1 query in this many is logged
CHECK_TIMEOUT_S = 1.0
# p99 at the maximum rate: a probe client sends one query of the mix every PROBE_INTERVAL_S
# while dnsperf runs (dnsperf -v would slow dnsperf itself), and times each reply.
PROBE_INTERVAL_S = 0.005
PROBE_QUERIES = 500
RUN_SLACK_S = 30.0  # dnsperf's subprocess timeout beyond its own -l
START_TIMEOUT_S = 120.0
# gdnsd's nets may not name the IPv4-like subspaces of IPv6 (gdnsd-plugin-geoip(8)).
GDNSD_V6_REFUSED = [ipaddress.IPv6Network(n) for n in (
    "::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "2001::/32", "2002::/16",
)]  # fmt: skip
INTERFERENCE_WARN = 0.05  # other busy time on the server's core, share of a run, worth a warning
RETRY_SHARE = 0.10  # a run with more than this is run once more (the first one is kept aside)
QUIET_SHARE = 0.10  # before a run, wait until no core is busier than this with something else
TARGETS = {"qps_vs_gdnsd": (">=", 0.8), "cpu_vs_gdnsd": ("<=", 1.5), "qps_vs_pdns": (">=", 2.0),
           "p99_half_load_ms": ("<", 1.0)}  # fmt: skip


# --- the query mix ---------------------------------------------------------------------------


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


def zone_inventory(zone_file: Path, steered: list[tuple[str, int]], rng: random.Random) -> ZoneInventory:
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
            label = "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(5, 12)))
        candidate = dns.name.from_text(label, origin)
        if not any(candidate == n or n.is_subdomain(candidate) for n in existing):
            nxdomain.add(candidate.to_text())
    return ZoneInventory(origin, list(steered), static, nodata, sorted(nxdomain))


def draw_subnets(client_map, rng: random.Random, count: int, v6_share: float = V6_SUBNET_SHARE) -> list[str]:  # noqa: ANN001
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
        out.append(Query(kind, name, qtype, ecs, encode_query(name, qtype, ecs, rng.randrange(65536))))
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


# --- dnsperf output --------------------------------------------------------------------------


def parse_dnsperf(text: str) -> dict:
    """The statistics block of a dnsperf 2.x run."""

    def number(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    rcodes = {}
    match = re.search(r"Response codes:\s+(.*)", text)
    if match:
        for code, n in re.findall(r"([A-Z]+) (\d+) \(", match.group(1)):
            rcodes[code] = int(n)
    sent = number(r"Queries sent:\s+(\d+)")
    if sent is None:
        raise ValueError("no statistics in dnsperf output:\n" + text[-2000:])
    return {
        "sent": int(sent),
        "completed": int(number(r"Queries completed:\s+(\d+)") or 0),
        "lost": int(number(r"Queries lost:\s+(\d+)") or 0),
        "qps": number(r"Queries per second:\s+([\d.]+)"),
        "avg_latency_ms": None if (v := number(r"Average Latency \(s\):\s+([\d.]+)")) is None else v * 1000,
        "max_latency_ms": None if (v := number(r"Average Latency \(s\):.*max ([\d.]+)\)")) is None else v * 1000,
        "run_time_s": number(r"Run time \(s\):\s+([\d.]+)"),
        "rcodes": rcodes,
    }


def parse_latencies(text: str) -> list[float]:
    """Per-query latencies (ms) from dnsperf ``-v`` lines: ``> NOERROR binary input 0.000123``."""
    out = []
    for line in text.splitlines():
        if line.startswith("> "):
            try:
                out.append(float(line.rsplit(None, 1)[1]) * 1000.0)
            except (ValueError, IndexError):
                continue  # a timeout line carries no latency
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100)
    return ordered[int(rank) - 1]


def udp_drops(proc_net_udp: str, port: int) -> int:
    """Datagrams the kernel dropped on sockets bound to ``port`` in one /proc/net/udp table."""
    return sum(row.drops for row in parse_proc_net_udp(proc_net_udp) if row.port == port)


def kernel_drops(port: int) -> int:
    """The same over IPv4 and IPv6 sockets, read now."""
    return sum(row.drops for row in udp_socket_stats() if row.port == port)


# --- answers and their checks ----------------------------------------------------------------


def summarize(message: dns.message.Message) -> dict:
    """What a reply says: rcode, AA/TC, the question as cased, the sections, the ECS scope."""
    scope = None
    for option in message.options:
        if isinstance(option, dns.edns.ECSOption):
            scope = option.scopelen
    return {
        "rcode": dns.rcode.to_text(message.rcode()),
        "aa": bool(message.flags & dns.flags.AA),
        "tc": bool(message.flags & dns.flags.TC),
        "question": [q.to_text() for q in message.question],
        "answer": [line for rrset in message.answer for line in rrset.to_text().split("\n")],
        "authority": [line for rrset in message.authority for line in rrset.to_text().split("\n")],
        "additional": [line for rrset in message.additional for line in rrset.to_text().split("\n")],
        "ecs_scope": scope,
    }


def router_mismatch(expected: dict, got: dict, ordered: bool = False) -> str | None:
    """The first field where the router's reply differs from its own lookup, else None.

    Records are compared as sets (an RRset has no order), except the answer of a steered
    name when ``ordered``: its order is the plan's preference (best node first).
    """
    for key in ("rcode", "aa", "tc", "question", "answer", "authority", "additional", "ecs_scope"):
        want, have = expected.get(key), got.get(key)
        if key in ("answer", "authority", "additional") and not (ordered and key == "answer"):
            want, have = sorted(want or []), sorted(have or [])
        if want != have:
            return f"{key}: expected {expected.get(key)!r}, got {got.get(key)!r}"
    return None


def owner_records(summary: dict, qname: str) -> set[tuple[str, str]]:
    """(type, rdata) of the answer records owned by the query name (case-insensitive, TTL dropped)."""
    out = set()
    owner = qname.lower()
    for line in summary["answer"]:
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].lower() == owner:
            out.add((parts[3], parts[4].lower()))
    return out


def peer_mismatch(expected: dict, got: dict, qname: str) -> str | None:
    """A peer is right when its rcode and its records for the query name match the router's.

    Answer order (gdnsd rotates), TTLs, scopes and what follows a CNAME (PowerDNS chases it
    inside the zone, the router leaves that to the resolver) are not compared.
    """
    if expected["rcode"] != got["rcode"]:
        return f"rcode: expected {expected['rcode']}, got {got['rcode']}"
    want, have = owner_records(expected, qname), owner_records(got, qname)
    if want != have:
        return f"answer: expected {sorted(want)}, got {sorted(have)}"
    return None


def explanation_summary(explanation) -> dict:  # noqa: ANN001 - router.explain.Explanation
    return {
        "rcode": explanation.rcode,
        "answer": [line.lower() for line in explanation.answer if not line.startswith("(authority)")],
        "authority": [line.removeprefix("(authority) ").lower() for line in explanation.answer
                      if line.startswith("(authority)")],  # fmt: skip
        "ecs_scope": explanation.ecs_scope,
    }


class Oracle:
    """The router's own answer to a query, computed in process the way ``router explain`` does.

    ``router.explain.explain`` recompiles the deployment for every call (about half a second);
    this builds the same objects once (model, answer book, last known node states, routing
    table, responder) and answers many queries. ``crosscheck`` holds it equal to ``explain``.
    """

    def __init__(self, zones: Path) -> None:
        from router.service.compiled import compile_deployment, last_known_health

        self.zones = zones
        self.deployment = load_deployment(zones)
        compiled = compile_deployment(self.deployment)
        self.model, self.planner = compiled.model, compiled.planner
        self.table = compiled.plan(last_known_health(self.deployment, self.model).states())
        self.responder = compiled.responder(self.table)

    def reply(self, wire: bytes, source: str = "127.0.0.1") -> dns.message.Message:
        answer = self.responder.respond(wire, source, udp=True)
        assert answer is not None
        return dns.message.from_wire(answer)

    def node_addresses(self, nodes: list[int]) -> tuple[list[str], list[str]]:
        v4 = [str(ipaddress.ip_address(self.model.node_ipv4[n])) for n in nodes]
        v6 = [str(ipaddress.ip_address(self.model.node_ipv6[n])) for n in nodes]
        return v4, v6

    def answer_set(self, policy: int, group: int) -> int:
        value = int(self.table.group_set[policy, group])
        if value >= 0:
            return value
        # A group the capacity plan split: not with zero demand (the sample); its main answer.
        row = -value - 1
        lo, hi = int(self.table.split_start[row]), int(self.table.split_start[row + 1])
        shares = [int(self.table.split_cum[i]) - (int(self.table.split_cum[i - 1]) if i > lo else 0) for i in range(lo, hi)]
        return int(self.table.split_set[lo + shares.index(max(shares))])

    def set_nodes(self, answer_set: int) -> list[int]:
        return [int(n) for n in self.table.set_nodes[answer_set] if n >= 0]

    def split_groups(self) -> int:
        return int((self.table.group_set < 0).sum())

    def crosscheck(self, queries: list[Query], limit: int) -> dict:
        """Compare this oracle with ``router.explain.explain`` itself on a few distinct queries."""
        from router.explain import explain

        seen, checked, differences = set(), 0, []
        for q in queries:
            key = (q.name.lower(), q.qtype, q.ecs)
            if key in seen or checked >= limit:
                continue
            seen.add(key)
            ours = summarize(self.reply(encode_query(q.name.lower(), q.qtype, q.ecs)))
            ours = {"rcode": ours["rcode"], "answer": [x.lower() for x in ours["answer"]],
                    "authority": [x.lower() for x in ours["authority"]], "ecs_scope": ours["ecs_scope"]}  # fmt: skip
            theirs = explanation_summary(explain(self.deployment, q.name.lower(), q.ecs or "127.0.0.1", q.qtype))
            checked += 1
            if ours != theirs:
                differences.append({"query": f"{q.name} {q.qtype} {q.ecs}", "oracle": ours, "explain": theirs})
        return {"explain_crosschecked": checked, "explain_differences": differences}


# --- peer configurations ---------------------------------------------------------------------


def interval_cidrs(start: int, end: int, scope: int, bits: int) -> list[tuple[int, int]]:
    """A compiled-map interval as the aligned blocks of length ``scope`` it is made of."""
    size = 1 << (bits - scope)
    if start % size or (end + 1 - start) % size:
        raise ValueError(f"interval {start}-{end} is not made of /{scope} blocks")
    return [(a, scope) for a in range(start, end + 1, size)]


def map_blocks(client_map) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]:  # noqa: ANN001
    """Every mapped block of the compiled client map as (network, client group)."""
    out = []
    for i in range(len(client_map.v4_start)):
        for address, plen in interval_cidrs(int(client_map.v4_start[i]), int(client_map.v4_end[i]),
                                            int(client_map.v4_scope[i]), 32):  # fmt: skip
            out.append((ipaddress.IPv4Network((address, plen)), int(client_map.v4_group[i])))
    for i in range(len(client_map.v6_start_hi)):
        start = (int(client_map.v6_start_hi[i]) << 64) | int(client_map.v6_start_lo[i])
        end = (int(client_map.v6_end_hi[i]) << 64) | int(client_map.v6_end_lo[i])
        for address, plen in interval_cidrs(start, end, int(client_map.v6_scope[i]), 128):
            out.append((ipaddress.IPv6Network((address, plen)), int(client_map.v6_group[i])))
    return out


def deciding_block(client_map, subnet: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]:  # noqa: ANN001
    """The client-map block (and its group) that decides for an ECS subnet: the block of length
    SCOPE holding the subnet's address, as the router looks it up."""
    network = ipaddress.ip_network(subnet)
    group, scope = client_map.lookup(network.network_address)
    return ipaddress.ip_network((network.network_address, scope), strict=False), group


@dataclass
class SteeredName:
    label: str  # relative to the zone
    policy: int
    ttl: int


def gdnsd_nets(blocks: list[tuple[ipaddress._BaseNetwork, int]], dc_of_set: dict[int, str],
               set_of_group) -> tuple[list[str], int]:  # noqa: ANN001 # fmt: skip
    """``nets`` file lines (``NET => DC``); blocks in IPv6 subspaces gdnsd refuses are skipped."""
    lines, skipped = [], 0
    for network, group in blocks:
        if network.version == 6 and any(network.subnet_of(r) or r.subnet_of(network) for r in GDNSD_V6_REFUSED):
            skipped += 1
            continue
        lines.append(f"{network} => {dc_of_set[set_of_group(group)]}")
    return lines, skipped


def gdnsd_config_text(port: int, run_dir: Path, maps: dict[str, dict]) -> str:
    """gdnsd 3 config: one geoip map + resource per steered policy.

    ``maps``: resource name -> {"nets": path, "datacenters": [dc, ...] (default first),
    "dcmap": {dc: (v4 list, v6 list)}}. ``service_types => up``: no health checks (they would
    probe the documentation-prefix node addresses); every datacenter is up.
    """
    map_lines, resource_lines = [], []
    for name, spec in maps.items():
        dcs = ", ".join(spec["datacenters"])
        map_lines.append(f"      {name}_map => {{ datacenters => [ {dcs} ], nets => {spec['nets']} }}")
        entries = []
        for dc, (v4, v6) in spec["dcmap"].items():
            entries.append(f"          {dc} => {{ addrs_v4 => [ {', '.join(v4)} ], addrs_v6 => [ {', '.join(v6)} ] }}")
        resource_lines.append(f"      {name} => {{\n        map => {name}_map\n        dcmap => {{\n"
                              + "\n".join(entries) + "\n        }\n      }")  # fmt: skip
    return f"""options => {{
  listen => [ 127.0.0.1 ]
  dns_port => {port}
  udp_threads => 1
  tcp_threads => 1
  run_dir => {run_dir / "run"}
  state_dir => {run_dir / "state"}
}}
plugins => {{
  geoip => {{
    service_types => up
    maps => {{
{chr(10).join(map_lines)}
    }}
    resources => {{
{chr(10).join(resource_lines)}
    }}
  }}
}}
"""


def lua_list(items: list[str]) -> str:
    return "{" + ",".join(f"'{i}'" for i in items) + "}"


def pdns_lua(rules: list[tuple[list[str], list[str]]], default: list[str]) -> str:
    """A LUA record body: the first rule whose netmasks hold the client (``bestwho``, i.e. the
    ECS address when there is one) returns its addresses, else ``default``."""
    parts = []
    for i, (nets, addresses) in enumerate(rules):
        parts.append(f"{'if' if i == 0 else 'elseif'} netmask({lua_list(nets)}) then return {lua_list(addresses)}")
    body = " ".join(parts) + (" end " if parts else "")
    return f";{body}return {lua_list(default)}"


def peer_zone_text(zone_text: str, steered: list[SteeredName], records: dict[str, list[str]]) -> str:
    """The router's zone file plus one line per steered record (``records[label]``)."""
    lines = [zone_text.rstrip("\n"), "", "; steered names (generated by loadtest/bench_throughput.py)"]
    for s in steered:
        lines += records[s.label]
    return "\n".join(lines) + "\n"


# --- processes -------------------------------------------------------------------------------


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for children in glob.glob(f"/proc/{current}/task/*/children"):
            try:
                todo += [int(c) for c in Path(children).read_text().split()]
            except OSError:
                pass
    return out


def process_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """utime + stime of the process and every descendant (all their threads)."""
    return sum(process_cpu_s(p) for p in tree_pids(pid))


def tree_rss_mb(pid: int) -> float:
    total = 0
    for p in tree_pids(pid):
        try:
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
        except OSError:
            continue
        if match:
            total += int(match.group(1))
    return round(total / 1024.0, 1)


def core_busy_s() -> dict[str, float]:
    """Busy time of each core (user nice system irq softirq steal), from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if re.match(r"cpu\d+ ", line):
            values = [int(v) for v in line.split()[1:]]
            out[line.split()[0][3:]] = (sum(values[:3]) + sum(values[5:8])) / os.sysconf("SC_CLK_TCK")
    return out


def wait_quiet(max_wait_s: float, cores: list[str] | None = None, window_s: float = 0.5) -> tuple[float, float]:
    """Wait (at most ``max_wait_s``) until no core is busier than QUIET_SHARE over ``window_s``:
    another process busy on this machine would disturb the next run. Our own servers are idle
    between runs. Returns (seconds waited, busiest core's share in the last window)."""
    started = time.monotonic()
    while True:
        before = core_busy_s()
        time.sleep(window_s)
        after = core_busy_s()
        share = max(((after[c] - before.get(c, 0.0)) / window_s for c in after if cores is None or c in cores),
                    default=0.0)  # fmt: skip
        if share <= QUIET_SHARE or time.monotonic() - started >= max_wait_s:
            return round(time.monotonic() - started - window_s, 1), round(share, 2)


def other_busy_s(before: dict[str, float], after: dict[str, float], cores: str | None, own: float) -> float | None:
    """Busy time on ``cores`` ("1" or "0-1") not accounted to ``own``: other processes, interrupts."""
    if cores is None:
        return None
    lo, _, hi = cores.partition("-")
    chosen = [str(c) for c in range(int(lo), int(hi or lo) + 1)]
    return round(max(0.0, sum(after.get(c, 0.0) - before.get(c, 0.0) for c in chosen) - own), 3)


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (checked, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


def soa_answers(port: int, zone: str, timeout: float = 0.5) -> bool:
    try:
        reply = dns.query.udp(dns.message.make_query(zone, "SOA"), "127.0.0.1", port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


@dataclass
class Server:
    key: str  # router, router2, gdnsd, pdns
    label: str
    process: subprocess.Popen
    port: int
    log: Path
    version: str = ""
    extra: dict = field(default_factory=dict)
    cores: str | None = None  # what it is pinned to (taskset -c)
    _drain: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL; then any descendant left over (by PID)."""
        children = [p for p in tree_pids(self.process.pid) if p != self.process.pid]
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        deadline = time.monotonic() + 5
        for pid in children:
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._drain is not None:
            self._drain.join(timeout=2)


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return (["taskset", "-c", cpus] if cpus else []) + argv


def start_router(zones: Path, root: Path, workers: int, cpus: str | None, key: str, extra: tuple[str, ...] = ()) -> Server:
    """``router serve`` on 127.0.0.1, port 0; returns once it prints READY (its stdout is then
    drained by a thread until it exits)."""
    log = root / f"{key}.log"
    argv = pinned(cpus, [sys.executable, "-m", "router.cli", "serve", "--zones", str(zones), "--listen",
                         "127.0.0.1:0", "--workers", str(workers), "--log-level", "WARNING", *extra])  # fmt: skip
    with log.open("w") as handle:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, text=True, cwd=REPO)
    lines: queue.Queue[str | None] = queue.Queue()

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, name=f"{key}-stdout", daemon=True)
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    seen = ""
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen += line
        match = re.match(r"READY dns=(\S+):(\d+)", line)
        if match:
            label = f"router ({workers} worker{'s' if workers > 1 else ''})"
            return Server(key, label, process, int(match.group(2)), log, cores=cpus, _drain=reader)
    Server(key, "router", process, 0, log, _drain=reader).stop()
    raise RuntimeError(f"router did not start; output:\n{seen}\nlog:\n{log.read_text()[-3000:]}")


def wait_answering(process: subprocess.Popen, port: int, zone: str, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode}); log:\n{log.read_text()[-3000:]}")
        if soa_answers(port, zone):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {START_TIMEOUT_S:g} s; log:\n{log.read_text()[-3000:]}")


# --- packages --------------------------------------------------------------------------------

PACKAGES = {
    "dnsperf": lambda: shutil.which("dnsperf"),
    "gdnsd": lambda: shutil.which("gdnsd") or _exists("/usr/sbin/gdnsd"),
    "pdns-server": lambda: shutil.which("pdns_server") or _exists("/usr/sbin/pdns_server"),
    "pdns-backend-bind": lambda: next(iter(glob.glob("/usr/lib/*/pdns/libbindbackend.so")), None),
}


def _exists(path: str) -> str | None:
    return path if Path(path).exists() else None


def ensure_packages() -> dict[str, str]:
    """Install (Debian) whatever of dnsperf, gdnsd and PowerDNS is missing: one ``apt-get
    update``, one ``apt-get install``. Returns a note per package still missing."""
    missing = [name for name, find in PACKAGES.items() if not find()]
    if not missing:
        return {}
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return {name: f"{name} not installed, and not root with apt-get" for name in missing}
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
    detail = ""
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300, check=False)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env,
                              capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
        detail = done.stderr.strip()[-300:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        detail = str(exc)
    return {name: f"apt-get install {name} failed: {detail}" for name in missing if not PACKAGES[name]()}


def tool_version(argv: list[str], pattern: str) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else None


# --- the peers -------------------------------------------------------------------------------


class Peers:
    """Configuration of gdnsd and PowerDNS equivalent to the router's steering."""

    def __init__(self, oracle: Oracle, subnets: list[str], zone_file: Path) -> None:
        self.oracle = oracle
        model = oracle.model
        origin = dns.name.from_text(zone_file.name.removesuffix(".zone"))
        self.zone = origin.to_text()
        self.zone_text = zone_file.read_text()
        self.steered = [SteeredName(name.relativize(origin).to_text(), policy, model.policies[policy].policy.ttl)
                        for name, policy in model.steered if name.is_subdomain(origin)]  # fmt: skip
        self.subnets = subnets
        self.default_set = {s.policy: oracle.answer_set(s.policy, 0) for s in self.steered}

    def _addresses(self, answer_set: int) -> tuple[list[str], list[str]]:
        return self.oracle.node_addresses(self.oracle.set_nodes(answer_set))

    def write_gdnsd(self, cfg: Path, port: int) -> dict:
        (cfg / "zones").mkdir(parents=True)
        blocks = map_blocks(self.oracle.model.client_map)
        maps, records, figures = {}, {}, {"gdnsd_nets_per_map": len(blocks), "gdnsd_nets_skipped": 0}
        for s in self.steered:
            policy = s.policy
            used = sorted({self.oracle.answer_set(policy, g) for _, g in blocks} | {self.default_set[policy]})
            order = [self.default_set[policy]] + [a for a in used if a != self.default_set[policy]]
            dc_of_set = {a: f"s{a}" for a in order}
            lines, skipped = gdnsd_nets(blocks, dc_of_set, lambda g, p=policy: self.oracle.answer_set(p, g))
            figures["gdnsd_nets_skipped"] += skipped
            nets = cfg / f"{s.label}.nets"
            nets.write_text("\n".join(lines) + "\n")
            maps[s.label] = {"nets": str(nets), "datacenters": [dc_of_set[a] for a in order],
                             "dcmap": {dc_of_set[a]: self._addresses(a) for a in order}}  # fmt: skip
            records[s.label] = [f"{s.label} {s.ttl} DYNA geoip!{s.label}"]
        (cfg / "config").write_text(gdnsd_config_text(port, cfg, maps))
        (cfg / "zones" / self.zone.rstrip(".")).write_text(peer_zone_text(self.zone_text, self.steered, records))
        return figures

    def pdns_rules(self, policy: int) -> list[tuple[int, list[str]]]:
        """(answer set, netmasks) for every block our subnets fall in, the default set left out."""
        by_set: dict[int, set] = {}
        for subnet in self.subnets:
            block, group = deciding_block(self.oracle.model.client_map, subnet)
            answer_set = self.oracle.answer_set(policy, group)
            if answer_set != self.default_set[policy]:
                by_set.setdefault(answer_set, set()).add(block)
        out = []
        for answer_set in sorted(by_set):
            v4 = ipaddress.collapse_addresses(n for n in by_set[answer_set] if n.version == 4)
            v6 = ipaddress.collapse_addresses(n for n in by_set[answer_set] if n.version == 6)
            out.append((answer_set, [str(n) for n in [*v4, *v6]]))
        return out

    def write_pdns(self, cfg: Path, port: int, lua_mode: str = "yes") -> dict:
        cfg.mkdir(parents=True)
        records, netmasks = {}, 0
        for s in self.steered:
            rules = self.pdns_rules(s.policy)
            netmasks = max(netmasks, sum(len(n) for _, n in rules))
            lines = []
            for family, qtype in ((0, "A"), (1, "AAAA")):
                code = pdns_lua([(nets, self._addresses(a)[family]) for a, nets in rules],
                                self._addresses(self.default_set[s.policy])[family])  # fmt: skip
                lines.append(f'{s.label} {s.ttl} IN LUA {qtype} "{code}"')
            records[s.label] = lines
        zone_path = cfg / f"{self.zone.rstrip('.')}.zone"
        zone_path.write_text(peer_zone_text(self.zone_text, self.steered, records))
        (cfg / "named.conf").write_text(
            f'options {{ directory "{cfg}"; }};\nzone "{self.zone.rstrip(".")}" {{ type master; file "{zone_path}"; }};\n'
        )
        (cfg / "pdns.conf").write_text("\n".join([
            "launch=bind", f"bind-config={cfg / 'named.conf'}", "local-address=127.0.0.1", f"local-port={port}",
            f"socket-dir={cfg}", f"enable-lua-records={lua_mode}", "edns-subnet-processing=yes", "daemon=no", "guardian=no",
            "disable-syslog=yes", "webserver=no", "api=no", "primary=no", "secondary=no", "disable-axfr=yes",
            "security-poll-suffix=", "loglevel=4", "",
        ]))  # fmt: skip
        return {"pdns_netmasks_per_record": netmasks}


def start_peer(key: str, label: str, argv: list[str], port: int, log: Path, cpus: str | None, extra: dict,
               zone: str) -> Server:  # fmt: skip
    """Start a peer server in the foreground (pinned) and wait until it answers ``zone``'s SOA."""
    with log.open("w") as handle:
        process = subprocess.Popen(pinned(cpus, argv), stdout=handle, stderr=subprocess.STDOUT)
    server = Server(key, label, process, port, log, extra=extra, cores=cpus)
    try:
        wait_answering(process, port, zone, Path(argv[0]).name, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_gdnsd(peers: Peers, root: Path, binary: str, cpus: str | None) -> Server:
    cfg = root / "gdnsd"
    port = free_port()
    figures = peers.write_gdnsd(cfg, port)
    return start_peer("gdnsd", "gdnsd", [binary, "-c", str(cfg), "start"], port, root / "gdnsd.log", cpus,
                      figures, peers.zone)  # fmt: skip


def start_pdns(peers: Peers, root: Path, binary: str, cpus: str | None, lua_mode: str = "yes") -> Server:
    key = "pdns" if lua_mode == "yes" else f"pdns_{lua_mode}"
    cfg = root / key
    port = free_port()
    figures = peers.write_pdns(cfg, port, lua_mode)
    label = "PowerDNS" if lua_mode == "yes" else f"PowerDNS (lua {lua_mode})"
    return start_peer(key, label, [binary, f"--config-dir={cfg}"], port, root / f"{key}.log", cpus,
                      {**figures, "config_dir": str(cfg)}, peers.zone)  # fmt: skip


def pdns_stats(server: Server) -> dict:
    cfg = server.extra["config_dir"]
    try:
        done = subprocess.run(["pdns_control", f"--socket-dir={cfg}", f"--config-dir={cfg}", "show", "*"],
                              capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    stats = {}
    for item in done.stdout.strip().split(","):
        name, _, value = item.partition("=")
        if value.strip().lstrip("-").isdigit():
            stats[name.strip()] = int(value)
    return stats


# --- running dnsperf -------------------------------------------------------------------------


@dataclass
class Run:
    server: str
    variant: str
    repetition: int
    qps: float | None
    completed: int
    sent: int
    lost: int
    avg_latency_ms: float | None
    cpu_s: float
    cpu_us_per_query: float | None
    kernel_drops: int
    dnsperf_cpu_s: float
    server_core_other_s: float | None  # busy time on the server's core that was not the server
    load_core_other_s: float | None  # busy time on dnsperf's core that was not dnsperf
    rcodes: dict
    seconds: float
    p99_ms: float | None = None
    p99_max_rate_ms: float | None = None  # the probe client's, during a maximum-rate run
    probe_samples: int = 0
    rate_limit: float | None = None
    checked: int = 0
    wrong: int = 0
    check_timeouts: int = 0
    waited_s: float = 0.0  # waiting for the machine to be quiet before the run
    busy_before: float = 0.0  # busiest core's share just before the run
    retry_of_disturbed: bool = False  # the first attempt had other load on the server's core


def disturbed(run: Run) -> bool:
    return run.server_core_other_s is not None and run.server_core_other_s > RETRY_SHARE * run.seconds


def run_dnsperf(server: Server, datafile: Path, seconds: float, variant: str, repetition: int,
                cpus: str | None = LOAD_CORE, extra: list[str] | None = None, qps_limit: float | None = None,
                verbose: bool = False, during=None, probe: list[bytes] | None = None) -> Run:  # noqa: ANN001 # fmt: skip
    """One dnsperf run against ``server``, with the server's CPU and the kernel's drops around it;
    with ``probe``, a LatencyProbe sends those queries alongside and times them."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", str(datafile), "-B",
            *(extra if extra is not None else DNSPERF_ARGS), "-l", f"{seconds:g}"]  # fmt: skip
    if qps_limit:
        argv += ["-Q", str(int(qps_limit))]
    if verbose:
        argv.append("-v")
    out_path = datafile.with_suffix(f".{server.key}.out")
    drops_before = kernel_drops(server.port)
    cpu_before = tree_cpu_s(server.pid)
    busy_before = core_busy_s()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    latency_probe = LatencyProbe(server.port, probe, seconds) if probe else None
    with out_path.open("w") as out:
        process = subprocess.Popen(pinned(cpus, argv), stdout=out, stderr=subprocess.STDOUT)
        try:
            if latency_probe is not None:
                latency_probe.start()
            if during is not None:
                during()
            process.wait(timeout=seconds + RUN_SLACK_S)
            if latency_probe is not None:
                latency_probe.join()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    cpu = tree_cpu_s(server.pid) - cpu_before
    busy_after = core_busy_s()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    dnsperf_cpu = (children_after.ru_utime - children_before.ru_utime) + (children_after.ru_stime - children_before.ru_stime)
    drops = kernel_drops(server.port) - drops_before
    server_cores = server.cores
    shared_core = bool(cpus and server_cores and cpus in server_cores)  # router2: dnsperf's core is one of its own
    text = out_path.read_text(errors="replace")
    stats = parse_dnsperf(text)
    p99 = percentile(parse_latencies(text), 99) if verbose else None
    if not verbose:
        out_path.unlink()
    completed = stats["completed"]
    return Run(
        server=server.key, variant=variant, repetition=repetition, qps=stats["qps"], completed=completed,
        sent=stats["sent"], lost=stats["lost"], avg_latency_ms=stats["avg_latency_ms"], cpu_s=round(cpu, 3),
        cpu_us_per_query=round(cpu * 1e6 / completed, 2) if completed else None, kernel_drops=drops,
        dnsperf_cpu_s=round(dnsperf_cpu, 3),
        server_core_other_s=other_busy_s(busy_before, busy_after, server_cores if cpus else None,
                                         cpu + (dnsperf_cpu if shared_core else 0.0)),
        load_core_other_s=other_busy_s(busy_before, busy_after, None if shared_core else cpus, dnsperf_cpu),
        rcodes=stats["rcodes"], seconds=seconds, p99_ms=None if p99 is None else round(p99, 3), rate_limit=qps_limit,
        p99_max_rate_ms=latency_probe.p99_ms() if latency_probe else None,
        probe_samples=len(latency_probe.rtts_ms) if latency_probe else 0,
    )  # fmt: skip


class LatencyProbe:
    """One query at a time, every PROBE_INTERVAL_S, from 0.3 s after the start of a run until
    0.5 s before its end; the round-trip time of each (a query unanswered in 1 s counts as 1 s).

    It runs in the bench process, on dnsperf's core: its times include waiting for that core,
    as dnsperf's own latencies do."""

    def __init__(self, port: int, wires: list[bytes], seconds: float) -> None:
        self.port = port
        self.wires = wires
        self.seconds = seconds
        self.rtts_ms: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=self.seconds + 5)

    def p99_ms(self) -> float | None:
        value = percentile(self.rtts_ms, 99)
        return None if value is None else round(value, 3)

    def _run(self) -> None:
        start = time.monotonic()
        stop_at = start + self.seconds - 0.5
        time.sleep(0.3)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            i = 0
            while time.monotonic() < stop_at and i < 100_000:
                qid = (i * 40503 + 7) & 0xFFFF
                wire = struct.pack("!H", qid) + self.wires[i % len(self.wires)][2:]
                sent = time.perf_counter()
                sock.sendto(wire, ("127.0.0.1", self.port))
                deadline = sent + 1.0
                while True:
                    sock.settimeout(max(0.001, deadline - time.perf_counter()))
                    try:
                        data = sock.recv(65535)
                    except TimeoutError:
                        self.rtts_ms.append(1000.0)
                        break
                    if len(data) >= 2 and struct.unpack_from("!H", data)[0] == qid:
                        self.rtts_ms.append((time.perf_counter() - sent) * 1000)
                        break
                i += 1
                time.sleep(PROBE_INTERVAL_S)


class Checker:
    """Sends a sample of the mix during a run and compares each reply with the expected one."""

    def __init__(self, port: int, sample: list[tuple[Query, dict]], peer: bool) -> None:
        self.port = port
        self.sample = sample
        self.peer = peer
        self.checked = 0
        self.wrong: list[str] = []
        self.timeouts = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=CHECK_TIMEOUT_S * 3 * len(self.sample) + 10)

    def _run(self) -> None:
        time.sleep(0.3)  # let dnsperf get going: these replies are checked under load
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for i, (query, expected) in enumerate(self.sample):
                qid = (i * 7919 + 1) & 0xFFFF
                wire = struct.pack("!H", qid) + query.wire[2:]
                got = None
                for _attempt in range(3):
                    sock.sendto(wire, ("127.0.0.1", self.port))
                    deadline = time.monotonic() + CHECK_TIMEOUT_S
                    while got is None and time.monotonic() < deadline:
                        sock.settimeout(max(0.01, deadline - time.monotonic()))
                        try:
                            data = sock.recv(65535)
                        except TimeoutError:
                            break
                        if len(data) >= 2 and struct.unpack_from("!H", data)[0] == qid:
                            got = data
                    if got is not None:
                        break
                if got is None:
                    self.timeouts += 1
                    continue
                self.checked += 1
                try:
                    summary = summarize(dns.message.from_wire(got))
                except dns.exception.DNSException as exc:
                    self.wrong.append(f"{query.name} {query.qtype} ecs={query.ecs}: undecodable reply: {exc}")
                    continue
                problem = (peer_mismatch(expected, summary, query.name) if self.peer
                           else router_mismatch(expected, summary, ordered=query.kind == "steered"))  # fmt: skip
                if problem:
                    self.wrong.append(f"{query.name} {query.qtype} ecs={query.ecs}: {problem}")


# --- the benchmark ---------------------------------------------------------------------------


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(ours: float | None, theirs: float | None, digits: int = 3) -> float | None:
    return None if ours is None or not theirs else round(ours / theirs, digits)


def interference(runs: list[dict]) -> dict:
    """How busy the cores were with something other than the server and dnsperf, per measured run."""
    measured = [r for r in runs if r["repetition"] >= 0 and r["rate_limit"] is None]
    server = [r["server_core_other_s"] / r["seconds"] for r in measured if r["server_core_other_s"] is not None]
    load = [r["load_core_other_s"] / r["seconds"] for r in measured if r["load_core_other_s"] is not None]
    return {
        "server_core_other_share_max": round(max(server), 3) if server else None,
        "server_core_other_share_median": round(statistics.median(server), 3) if server else None,
        "load_core_other_share_max": round(max(load), 3) if load else None,
    }


def target_table(figures: dict) -> dict:
    out = {}
    for key, (op, bound) in TARGETS.items():
        value = figures.get(key)
        passed = None if value is None else (value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound)
        out[key] = {"target": f"{op} {bound:g}", "value": value, "pass": passed}
    return out


def summarize_runs(runs: list[Run], server: str, variant: str) -> dict:
    """Medians over the maximum-rate runs of one server and variant: over the undisturbed ones
    (other load on the server's core at most RETRY_SHARE of the run) when there are any."""
    every = [r for r in runs if r.server == server and r.variant == variant and r.rate_limit is None and r.repetition >= 0]
    clean = [r for r in every if not disturbed(r)]
    chosen = clean or every
    return {
        "qps": None if (v := median([r.qps for r in chosen])) is None else round(v, 1),
        "avg_latency_ms": None if (v := median([r.avg_latency_ms for r in chosen])) is None else round(v, 3),
        "p99_max_rate_ms": None if (v := median([r.p99_max_rate_ms for r in chosen])) is None else round(v, 3),
        "lost": None if not chosen else int(median([r.lost for r in chosen])),
        "cpu_us_per_query": None if (v := median([r.cpu_us_per_query for r in chosen])) is None else round(v, 2),
        "runs": len(chosen),
        "disturbed_runs_left_out": len(every) - len(chosen),
        "only_disturbed_runs": not clean and bool(every),
        "qps_all": [None if r.qps is None else round(r.qps, 1) for r in every],
        "cpu_us_all": [r.cpu_us_per_query for r in every],
        "disturbed_all": [disturbed(r) for r in every],
    }


def fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(figures: dict) -> str:
    lines = []
    labels = figures["labels"]
    for variant, title in (("ecs", "ECS variant: every query with an ECS option"),
                           ("plain", "plain variant: EDNS(0), no ECS (all from 127.0.0.1)")):  # fmt: skip
        lines.append(f"{title}; median of {figures['repetitions']} runs of {figures['seconds']:g} s "
                     f"(* = disturbed by other load on the server's core, left out when a clean run exists), "
                     f"dnsperf {' '.join(DNSPERF_ARGS)}")  # fmt: skip
        head = ("server", "qps", "avg ms", "p99 ms", "p99 ms @ half load", "lost", "CPU us/query", "qps per run")
        rows = [head]
        for key in ("router", "gdnsd", "pdns", "pdns_shared"):
            if key == "pdns_shared" and key not in figures["servers"]:
                continue
            s = figures["servers"].get(key, {}).get(variant)
            if s is None:
                rows.append((labels.get(key, key), "not measured", "", "", "", "", "", ""))
                continue
            p99 = figures["servers"][key].get("p99_half_load_ms") if variant == "ecs" else None
            p99_text = fmt(p99, ".3f") + ("*" if p99 is not None and figures["servers"][key]["half_load"]["disturbed"] else "")
            per_run = " ".join(fmt(q, ".0f") + ("*" if d else "") for q, d in zip(s["qps_all"], s["disturbed_all"]))
            rows.append((labels.get(key, key), fmt(s["qps"], ",.0f"), fmt(s["avg_latency_ms"], ".3f"),
                         fmt(s.get("p99_max_rate_ms"), ".3f"), p99_text,
                         fmt(s["lost"], "d"), fmt(s["cpu_us_per_query"], ".1f"), per_run))  # fmt: skip
        suffix = "" if variant == "ecs" else "_plain"
        rows.append(("router / gdnsd", fmt(figures.get(f"qps_vs_gdnsd{suffix}"), ".3f") + "x", "", "", "", "",
                     fmt(figures.get(f"cpu_vs_gdnsd{suffix}"), ".2f") + "x", ""))  # fmt: skip
        rows.append(("router / PowerDNS", fmt(figures.get(f"qps_vs_pdns{suffix}"), ".2f") + "x", "", "", "", "",
                     fmt(figures.get(f"cpu_vs_pdns{suffix}"), ".2f") + "x", ""))  # fmt: skip
        if figures.get(f"qps_vs_pdns_shared{suffix}") is not None:
            rows.append(("router / PowerDNS (lua shared)", fmt(figures.get(f"qps_vs_pdns_shared{suffix}"), ".2f") + "x",
                         "", "", "", "", "", ""))  # fmt: skip
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
        for row in rows:
            lines.append("  " + "  ".join(str(c).ljust(w) if i in (0, 7) else str(c).rjust(w)
                                          for i, (c, w) in enumerate(zip(row, widths))))  # fmt: skip
        lines.append("")
    w2 = figures.get("router2_qps")
    lines.append(f"router, 2 workers (pinned to cores 0-1, core 0 shared with dnsperf), ECS: "
                 f"{fmt(w2, ',.0f')} qps, {fmt(figures.get('router2_cpu_us_per_query'), '.1f')} us CPU/query; "
                 f"vs 1 worker: {fmt(figures.get('workers2_vs_workers1_qps'), '.2f')}x qps")  # fmt: skip
    if figures.get("router_query_log_qps") is not None:
        lines.append(f"router, 1 worker, query log on (1 in {figures['query_log_sample']}), ECS: "
                     f"{fmt(figures['router_query_log_qps'], ',.0f')} qps, "
                     f"{fmt(figures.get('router_query_log_cpu_us_per_query'), '.1f')} us CPU/query, "
                     f"{figures.get('router_query_log_lines')} lines written; vs without the log: "
                     f"{fmt(figures.get('query_log_vs_router_qps'), '.3f')}x qps")  # fmt: skip
    lines.append(f"overload (router, 1 worker, dnsperf {' '.join(OVERLOAD_ARGS)} on cores {OVERLOAD_CORES}): "
                 f"{fmt(figures.get('overload_qps'), ',.0f')} qps answered, {fmt(figures.get('overload_lost'), 'd')} "
                 f"lost by dnsperf, {fmt(figures.get('overload_kernel_drops'), 'd')} dropped by the kernel "
                 f"(socket buffer full), router alive and answering after: {figures.get('overload_router_alive')}, "
                 f"RSS {figures.get('overload_rss_mb_before')} -> {figures.get('overload_rss_mb_after')} MB")  # fmt: skip
    lines.append(f"router log lines with ERROR/Traceback: {figures.get('router_log_problems')}")
    lines.append(f"lost at half load: router {figures.get('router_lost_half_load')}, gdnsd "
                 f"{figures.get('gdnsd_lost_half_load')}, PowerDNS {figures.get('pdns_lost_half_load')}")  # fmt: skip
    lines.append(f"answers checked against the router's own lookup: {figures['answers_checked']}, wrong "
                 f"{figures['wrong_answers']} (gdnsd wrong {figures.get('gdnsd_wrong_answers')}, "
                 f"PowerDNS wrong {figures.get('pdns_wrong_answers')} of {figures.get('peer_answers_checked')})")  # fmt: skip
    lines.append("")
    lines.append("targets:")
    for key, t in figures["targets"].items():
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        lines.append(f"  {key:<18} {t['target']:<7} {fmt(t['value'], '.3f'):>8}  {verdict}")
    for note_key in ("gdnsd_note", "pdns_note", "router2_note", "router_query_log_note", "notes"):
        if figures.get(note_key):
            lines.append(f"note ({note_key}): {figures[note_key]}")
    return "\n".join(lines)


def expected_sample(oracle: Oracle, queries: list[Query], rng: random.Random, size: int) -> list[tuple[Query, dict]]:
    chosen = rng.sample(queries, min(size, len(queries)))
    return [(q, summarize(oracle.reply(q.wire))) for q in chosen]


def measure(args: argparse.Namespace, root: Path) -> dict:
    rng = random.Random(args.seed)
    started = time.time()
    notes: list[str] = []
    figures: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))}
    cpus = args.cpus_at_start
    pin = int(LOAD_CORE) in cpus and int(SERVER_CORE) in cpus
    if not pin:
        notes.append(f"cores {LOAD_CORE} and {SERVER_CORE} not both usable ({cpus}): nothing pinned")
    server_core = SERVER_CORE if pin else None
    load_core = LOAD_CORE if pin else None
    figures["pinning"] = {"dnsperf": load_core, "server": server_core, "router2": "0-1" if pin else None}

    missing = ensure_packages()
    if "dnsperf" in missing:
        raise SystemExit(f"dnsperf is needed: {missing['dnsperf']}")

    zones = make_deployment(root / "sample")
    oracle = Oracle(zones)
    if oracle.split_groups():
        notes.append(f"{oracle.split_groups()} groups split by the capacity plan: peers answer their main share")
    model = oracle.model
    zone_origin = model.policies[model.steered[0][1]].zone
    zone_file = zones / f"{zone_origin.to_text().rstrip('.')}.zone"
    steered = [(n.to_text(), p) for n, p in model.steered if n.is_subdomain(zone_origin)]
    inventory = zone_inventory(zone_file, steered, rng)
    subnets = draw_subnets(model.client_map, rng, args.subnets)
    variants = {
        "ecs": build_mix(inventory, subnets, args.queries, rng),
        "plain": build_mix(inventory, None, args.queries, rng),
    }
    files = {}
    for variant, queries in variants.items():
        files[variant] = root / f"queries-{variant}.bin"
        files[variant].write_bytes(frame([q.wire for q in queries]))
    probes = {variant: unframe(path.read_bytes())[:PROBE_QUERIES] for variant, path in files.items()}
    figures["mix"] = {v: mix_composition(q) for v, q in variants.items()}
    figures["mix"]["target_shares"] = MIX
    figures["mix"]["subnets"] = {"drawn": len(subnets), "v4_bits": V4_ECS_BITS, "v6_bits": V6_ECS_BITS,
                                 "v6": sum(":" in s for s in subnets)}  # fmt: skip
    expected_kinds = Counter()
    for q in variants["ecs"][:2000]:
        rcode = oracle.reply(q.wire).rcode()
        expected_kinds[(q.kind, dns.rcode.to_text(rcode))] += 1
    figures["mix"]["kind_rcodes_first_2000"] = {f"{k}:{r}": n for (k, r), n in sorted(expected_kinds.items())}
    crosscheck = oracle.crosscheck([q for q in variants["ecs"] if q.kind == "steered"] + variants["plain"][:50],
                                   2 if args.quick else 5)  # fmt: skip
    figures.update(crosscheck)
    samples = {v: expected_sample(oracle, q, rng, CHECK_SAMPLE) for v, q in variants.items()}

    peers = Peers(oracle, subnets, zone_file)
    servers: dict[str, Server] = {}
    figures["labels"] = {}
    try:
        servers["router"] = start_router(zones, root, 1, server_core, "router")
        figures["router_version"] = tool_version([sys.executable, "-c", "import router; print(router.__version__)"], r"(\S+)")
        gdnsd_bin = PACKAGES["gdnsd"]()
        if gdnsd_bin:
            try:
                servers["gdnsd"] = start_gdnsd(peers, root, gdnsd_bin, server_core)
                servers["gdnsd"].version = tool_version([gdnsd_bin], r"gdnsd version (\S+)") or ""
                figures.update(servers["gdnsd"].extra)
            except (RuntimeError, OSError) as exc:
                figures["gdnsd_note"] = f"gdnsd did not start: {str(exc)[:500]}"
        else:
            figures["gdnsd_note"] = missing.get("gdnsd", "gdnsd not found")
        pdns_bin = PACKAGES["pdns-server"]()
        if pdns_bin and PACKAGES["pdns-backend-bind"]():
            try:
                version = tool_version([pdns_bin, "--version"], r"Authoritative Server (\S+)") or ""
                servers["pdns"] = start_pdns(peers, root, pdns_bin, server_core)
                servers["pdns"].version = version
                figures["pdns_netmasks_per_record"] = servers["pdns"].extra["pdns_netmasks_per_record"]
                if args.pdns_shared:
                    servers["pdns_shared"] = start_pdns(peers, root, pdns_bin, server_core, "shared")
                    servers["pdns_shared"].version = version
            except (RuntimeError, OSError) as exc:
                figures["pdns_note"] = f"pdns_server did not start: {str(exc)[:500]}"
        else:
            figures["pdns_note"] = missing.get("pdns-server") or missing.get("pdns-backend-bind") or "pdns_server not found"
        for key, server in servers.items():
            figures["labels"][key] = f"{server.label} {server.version}".strip()
        figures["versions"] = {"dnsperf": tool_version(["dnsperf", "-h"], r"Version (\S+)"),
                               **{k: s.version for k, s in servers.items() if k != "router"}}  # fmt: skip

        runs: list[Run] = []
        checks: dict[str, dict] = {}

        quiet_cores = None if load_core is None else [LOAD_CORE, SERVER_CORE]
        discarded: list[Run] = []
        quiet_spent = [0.0]  # seconds waited for quiet so far, against --quiet-budget

        def attempt(key: str, make_run) -> Run:  # noqa: ANN001
            """A run after the machine is quiet; run once more if something else used the server's core."""
            for retry in (False, True):
                waited, busy = wait_quiet(min(args.quiet_wait, max(0.0, args.quiet_budget - quiet_spent[0])), quiet_cores)
                quiet_spent[0] += waited
                run = make_run(retry)
                run.waited_s, run.busy_before, run.retry_of_disturbed = waited, busy, retry
                if not retry and disturbed(run):
                    print(f"    ({figures['labels'][key]}: {run.server_core_other_s:.2f} s of other load on its core; "
                          "run again)", flush=True)  # fmt: skip
                    discarded.append(run)
                    continue
                return run
            raise AssertionError("unreachable")

        def one(key: str, variant: str, rep: int) -> Run:
            server = servers[key]
            checker = None
            if (key, variant) not in checks:
                checker = Checker(server.port, samples[variant], peer=not key.startswith("router"))

            def during() -> None:
                if checker is not None and not checker.thread.is_alive() and not checker.checked + checker.timeouts:
                    checker.start()

            run = attempt(key, lambda retry: run_dnsperf(server, files[variant], args.seconds, variant, rep, load_core,
                                                         during=during, probe=probes[variant]))  # fmt: skip
            if checker is not None:
                checker.join()
                checks[(key, variant)] = {"checked": checker.checked, "wrong": checker.wrong, "timeouts": checker.timeouts}
                run.checked, run.wrong, run.check_timeouts = checker.checked, len(checker.wrong), checker.timeouts
            if not server.alive():
                if key.startswith("router"):
                    raise RuntimeError(f"{server.label} exited during a run; log:\n{server.log.read_text()[-3000:]}")
                notes.append(f"{server.label} exited during a run; its later runs are missing")
                server.stop()
                del servers[key]
            print(f"  {variant:5} rep {rep + 1}  {figures['labels'][key]:<28} {fmt(run.qps, ',.0f'):>9} qps  "
                  f"avg {fmt(run.avg_latency_ms, '.3f')} ms  lost {run.lost}  cpu {fmt(run.cpu_us_per_query, '.1f')} us/q"
                  + (f"  checked {run.checked}, wrong {run.wrong}" if checker is not None else "")
                  + (f"  [other load on the server's core: {run.server_core_other_s:.2f} s]"
                     if (run.server_core_other_s or 0) > 0.05 * args.seconds else ""),
                  flush=True)  # fmt: skip
            runs.append(run)
            return run

        print(f"warm-up ({args.warmup:g} s per server and variant, not counted)", flush=True)
        for key in servers:
            for variant in files:
                run_dnsperf(servers[key], files[variant], args.warmup, variant, -1, load_core)
        order = list(servers)
        print(f"maximum rate: {args.repetitions} repetition(s) of {args.seconds:g} s, servers alternating", flush=True)
        for rep in range(args.repetitions):
            for variant in ("ecs", "plain"):
                rotated = order[rep % len(order):] + order[: rep % len(order)]
                for key in rotated:
                    if key in servers:
                        one(key, variant, rep)

        figures["servers"] = {}
        for key in order:
            figures["servers"][key] = {v: summarize_runs(runs, key, v) for v in ("ecs", "plain")}

        print("p99 at half of each server's maximum (ECS variant, dnsperf -Q and -v)", flush=True)
        for key, server in servers.items():
            top = figures["servers"][key]["ecs"]["qps"]
            if not top:
                continue
            run = attempt(key, lambda retry, server=server, top=top: run_dnsperf(
                server, files["ecs"], args.seconds, "ecs", 0, load_core, qps_limit=top / 2, verbose=True))
            runs.append(run)
            figures["servers"][key]["p99_half_load_ms"] = run.p99_ms
            figures["servers"][key]["half_load"] = {"rate": round(top / 2), "qps": run.qps, "lost": run.lost,
                                                     "kernel_drops": run.kernel_drops, "avg_latency_ms": run.avg_latency_ms,
                                                     "cpu_us_per_query": run.cpu_us_per_query, "disturbed": disturbed(run),
                                                     "server_core_other_s": run.server_core_other_s}  # fmt: skip
            figures[f"{key}_lost_half_load"] = run.lost
            print(f"  {figures['labels'][key]:<28} at {top / 2:,.0f} qps: p99 {fmt(run.p99_ms, '.3f')} ms, "
                  f"avg {fmt(run.avg_latency_ms, '.3f')} ms, lost {run.lost}", flush=True)

        for key in ("pdns", "pdns_shared"):
            if key in servers:
                figures[f"{key}_stats"] = {k: v for k, v in pdns_stats(servers[key]).items()
                                           if k in ("packetcache-hit", "packetcache-miss", "query-cache-hit", "query-cache-miss",
                                                    "udp-queries", "overload-drops", "servfail-packets", "latency")}  # fmt: skip

        print("overload: the router (1 worker) against far more outstanding queries than its socket holds", flush=True)
        router = servers["router"]
        rss_before = tree_rss_mb(router.pid)
        overload_s = max(2.0, min(args.seconds, 5.0))
        run = run_dnsperf(router, files["ecs"], overload_s, "ecs", 0, OVERLOAD_CORES if pin else None, extra=OVERLOAD_ARGS)
        time.sleep(0.5)
        alive = router.alive() and soa_answers(router.port, peers.zone, timeout=2.0)
        figures.update({"overload_qps": None if run.qps is None else round(run.qps, 1), "overload_sent": run.sent,
                        "overload_lost": run.lost, "overload_kernel_drops": run.kernel_drops,
                        "overload_router_alive": alive, "overload_rss_mb_before": rss_before,
                        "overload_rss_mb_after": tree_rss_mb(router.pid), "overload_seconds": overload_s})  # fmt: skip
        print(f"  {fmt(run.qps, ',.0f')} qps answered, {run.lost} lost, {run.kernel_drops} kernel drops, "
              f"alive {alive}", flush=True)

        # Two workers on both cores (shared with dnsperf on core 0).
        router.stop()
        del servers["router"]
        print("router with 2 workers (cores 0-1)", flush=True)
        try:
            servers["router2"] = start_router(zones, root, 2, "0-1" if pin else None, "router2")
            figures["labels"]["router2"] = servers["router2"].label
            run_dnsperf(servers["router2"], files["ecs"], args.warmup, "ecs", -1, load_core)
            for rep in range(args.repetitions):
                one("router2", "ecs", rep)
            two = summarize_runs(runs, "router2", "ecs")
            figures["router2_qps"] = two["qps"]
            figures["router2_cpu_us_per_query"] = two["cpu_us_per_query"]
            figures["router2_lost"] = two["lost"]
        except (RuntimeError, OSError) as exc:
            figures["router2_note"] = str(exc)[:500]
        if "router2" in servers:
            servers.pop("router2").stop()

        # The query log on (1 in QUERY_LOG_SAMPLE queries through the general responder and
        # into the file): same core and query file as the 1-worker runs above.
        print(f"router with the query log (1 in {QUERY_LOG_SAMPLE})", flush=True)
        query_log = root / "queries.jsonl"
        try:
            servers["router_qlog"] = start_router(zones, root, 1, server_core, "router_qlog",
                                                  ("--query-log", str(query_log), "--query-log-sample", str(QUERY_LOG_SAMPLE)))  # fmt: skip
            figures["labels"]["router_qlog"] = f"router (1 worker, query log 1 in {QUERY_LOG_SAMPLE})"
            run_dnsperf(servers["router_qlog"], files["ecs"], args.warmup, "ecs", -1, load_core)
            for rep in range(args.repetitions):
                one("router_qlog", "ecs", rep)
            logged = summarize_runs(runs, "router_qlog", "ecs")
            without = summarize_runs(runs, "router", "ecs")
            figures["query_log_sample"] = QUERY_LOG_SAMPLE
            figures["router_query_log_qps"] = logged["qps"]
            figures["router_query_log_cpu_us_per_query"] = logged["cpu_us_per_query"]
            figures["router_query_log_lost"] = logged["lost"]
            figures["router_query_log_lines"] = len(query_log.read_text().splitlines()) if query_log.exists() else 0
            if logged["qps"] and without["qps"]:
                figures["query_log_vs_router_qps"] = round(logged["qps"] / without["qps"], 3)
        except (RuntimeError, OSError) as exc:
            figures["router_query_log_note"] = str(exc)[:500]
    finally:
        for server in servers.values():
            server.stop()

    problems = {path.stem: [line for line in path.read_text(errors="replace").splitlines()
                            if "ERROR" in line or "Traceback" in line or "CRITICAL" in line]
                for path in (root / "router.log", root / "router2.log", root / "router_qlog.log") if path.exists()}  # fmt: skip
    figures["router_log_problems"] = {name: len(lines) for name, lines in problems.items()}
    figures["router_log_problem_lines"] = {name: lines[:5] for name, lines in problems.items() if lines}
    figures["runs"] = [r.__dict__ for r in runs]
    figures["quiet_wait_s"] = round(quiet_spent[0], 1)
    figures["discarded_runs"] = [r.__dict__ for r in discarded]
    router_checks = [c for (k, _), c in checks.items() if k.startswith("router")]
    figures["answers_checked"] = sum(c["checked"] for c in router_checks)
    figures["wrong_answers"] = sum(len(c["wrong"]) for c in router_checks)
    figures["check_timeouts"] = sum(c["timeouts"] for c in router_checks)
    figures["wrong_answer_examples"] = [w for c in router_checks for w in c["wrong"]][:10]
    figures["peer_answers_checked"] = sum(c["checked"] for (k, _), c in checks.items() if not k.startswith("router"))
    for peer in ("gdnsd", "pdns", "pdns_shared"):
        peer_checks = [c for (k, _), c in checks.items() if k == peer]
        if peer_checks:
            figures[f"{peer}_wrong_answers"] = sum(len(c["wrong"]) for c in peer_checks)
            figures[f"{peer}_wrong_answer_examples"] = [w for c in peer_checks for w in c["wrong"]][:5]
    return finish(figures, args, notes, started)


def finish(figures: dict, args: argparse.Namespace, notes: list[str], started: float) -> dict:
    s = figures.get("servers", {})

    def get(key: str, variant: str, what: str) -> float | None:
        return s.get(key, {}).get(variant, {}).get(what)

    for variant, suffix in (("ecs", ""), ("plain", "_plain")):
        for key in ("router", "gdnsd", "pdns", "pdns_shared"):
            figures[f"{key}_qps{suffix}"] = get(key, variant, "qps")
            figures[f"{key}_cpu_us_per_query{suffix}"] = get(key, variant, "cpu_us_per_query")
            figures[f"{key}_avg_latency_ms{suffix}"] = get(key, variant, "avg_latency_ms")
            figures[f"{key}_p99_max_rate_ms{suffix}"] = get(key, variant, "p99_max_rate_ms")
            figures[f"{key}_lost{suffix}"] = get(key, variant, "lost")
        figures[f"qps_vs_gdnsd{suffix}"] = ratio(figures[f"router_qps{suffix}"], figures[f"gdnsd_qps{suffix}"])
        figures[f"cpu_vs_gdnsd{suffix}"] = ratio(figures[f"router_cpu_us_per_query{suffix}"],
                                                 figures[f"gdnsd_cpu_us_per_query{suffix}"])  # fmt: skip
        figures[f"qps_vs_pdns{suffix}"] = ratio(figures[f"router_qps{suffix}"], figures[f"pdns_qps{suffix}"])
        figures[f"cpu_vs_pdns{suffix}"] = ratio(figures[f"router_cpu_us_per_query{suffix}"],
                                                figures[f"pdns_cpu_us_per_query{suffix}"])  # fmt: skip
        figures[f"qps_vs_pdns_shared{suffix}"] = ratio(figures[f"router_qps{suffix}"], figures[f"pdns_shared_qps{suffix}"])
    for key in ("router", "gdnsd", "pdns", "pdns_shared"):
        figures[f"{key}_p99_half_load_ms"] = s.get(key, {}).get("p99_half_load_ms")
    figures["p99_half_load_ms"] = figures["router_p99_half_load_ms"]
    figures["workers2_vs_workers1_qps"] = ratio(figures.get("router2_qps"), figures.get("router_qps"))
    figures["workers2_vs_workers1_cpu"] = ratio(figures.get("router2_cpu_us_per_query"), figures.get("router_cpu_us_per_query"))
    for peer in ("gdnsd", "pdns"):
        if figures.get(f"{peer}_qps") is None and not figures.get(f"{peer}_note"):
            figures[f"{peer}_note"] = f"{peer} not measured"
    figures["targets"] = target_table(figures)
    figures["interference"] = interference(figures.get("runs", []))
    worst = figures["interference"]["server_core_other_share_max"]
    if worst is not None and worst > INTERFERENCE_WARN:
        notes.append(f"other processes were busy on the server's core for up to {worst:.0%} of a run "
                     "(server_core_other_s in runs)"
                     + (f"; runs above {RETRY_SHARE:.0%} are marked * and left out of the medians where an "
                        "undisturbed run exists" if worst > RETRY_SHARE else ""))  # fmt: skip
    figures["notes"] = "; ".join(notes)
    figures["repetitions"] = args.repetitions
    figures["seconds"] = args.seconds
    figures["dnsperf_args"] = DNSPERF_ARGS
    figures["machine"] = {"cpu_count": os.cpu_count(), "cpus_allowed": args.cpus_at_start,
                          "platform": platform.platform(), "python": platform.python_version(),
                          "loadavg_at_end": os.getloadavg()}  # fmt: skip
    figures["source"] = source_state()
    figures["command"] = "python loadtest/bench_throughput.py " + " ".join(args.argv)
    figures["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    figures["duration_s"] = round(time.time() - started, 1)
    return figures


def source_state() -> dict:
    """The commit measured and the router files changed on top of it (read-only git calls)."""
    def git(*argv: str) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", *argv], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    changed = git("status", "--porcelain", "--", "router")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "router_changes": None if changed is None else [line[3:] for line in changed.splitlines()]}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here (and the table next to it, .txt)")
    parser.add_argument("--quick", action="store_true", help="short runs, one repetition (a smoke test, about a minute)")
    parser.add_argument("--repetitions", type=int, help="runs per server and variant (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, help="length of each dnsperf run (default 10; --quick 3)")
    parser.add_argument("--subnets", type=int, default=1000, help="distinct ECS client subnets in the mix")
    parser.add_argument("--queries", type=int, help="queries per query file (default 20000; --quick 5000)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--quiet-wait", type=float,
                        help="before each run, wait at most this long for other processes to leave the cores idle "
                             "(default 20; --quick 5)")
    parser.add_argument("--quiet-budget", type=float,
                        help="at most this long waiting for quiet in the whole bench (default 120; --quick 30)")
    parser.add_argument("--no-pdns-shared", dest="pdns_shared", action="store_false",
                        help="skip the second PowerDNS (enable-lua-records=shared, one Lua state per thread)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.repetitions is None:
        args.repetitions = 1 if args.quick else 3
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.queries is None:
        args.queries = 5000 if args.quick else 20000
    args.warmup = 1.0 if args.quick else 2.0
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 20.0
    if args.quiet_budget is None:
        args.quiet_budget = 30.0 if args.quick else 120.0
    if args.repetitions < 1 or not 1 <= args.seconds <= 120 or args.queries < 100 or args.subnets < 1:
        parser.error("--repetitions >= 1, 1 <= --seconds <= 120, --queries >= 100, --subnets >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        previous = os.sched_getaffinity(0)
        args.cpus_at_start = sorted(previous)
        if int(LOAD_CORE) in previous and int(SERVER_CORE) in previous:
            os.sched_setaffinity(0, {int(LOAD_CORE)})  # this script stays off the server's core
        try:
            figures = measure(args, root)
        finally:
            os.sched_setaffinity(0, previous)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = format_table(figures)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        args.json.with_suffix(".txt").write_text(table + "\n")
        print(f"\nwrote {args.json} and {args.json.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
