"""Who asks what: the synthetic resolvers, their clients' subnets, and the name catalogue.

Everything is drawn from the deployment under test: the names from its zones and policies,
the clients from its own client map (each ISP's real prefixes), so a scenario runs against
any deployment directory without a separate list to keep in step.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from dataclasses import dataclass

import dns.name
import dns.rdatatype
import numpy as np

from loadtest.scenario import Names, Resolvers
from router.config.deployment import Deployment
from router.steering.model import SteeringModel

KIND_STEERED, KIND_STATIC, KIND_TYPO = 0, 1, 2
KINDS = ("steered", "static", "typo")
# Resolvers sit at 127.64.0.1 and up: away from 127.0.0.1, where the router itself listens.
RESOLVER_BASE = int(ipaddress.IPv4Address("127.64.0.1"))
ECS_V4_BITS, ECS_V6_BITS = 24, 56  # what resolvers send (RFC 7871 section 11.1)


@dataclass(frozen=True)
class Question:
    name: str  # lower case, absolute
    qtype: int
    kind: int  # KIND_*
    policy: int  # steered: the policy index; else -1
    wire: bytes  # the question section: name, type, class IN


@dataclass(frozen=True)
class Catalogue:
    questions: tuple[Question, ...]
    # Per kind: the questions drawn (steered names and typos by their A question, which
    # becomes the AAAA one for aaaa_share of clients; static names by every record type),
    # most popular first, and their cumulative Zipf weights.
    picks: tuple[list[int], ...]
    pick_cum: tuple[list[float], ...]
    aaaa_twin: dict[int, int]  # A question -> the AAAA question of the same name
    kind_cum: list[float]  # cumulative share of the kinds


def _wire_name(name: str) -> bytes:
    return dns.name.from_text(name).to_wire()


def _question(name: str, qtype: int, kind: int, policy: int) -> Question:
    return Question(
        name, qtype, kind, policy, _wire_name(name) + qtype.to_bytes(2, "big") + b"\x00\x01"
    )


def _typo(name: str, rng: random.Random) -> str:
    label, _, rest = name.partition(".")
    i = rng.randrange(len(label))
    edit = rng.randrange(3)
    if edit == 0 and len(label) > 1:
        label = label[:i] + label[i + 1 :]  # a dropped letter
    elif edit == 1:
        label = label[:i] + label[i] + label[i:]  # a doubled letter
    else:
        label = label[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz") + label[i + 1 :]
    return f"{label}.{rest}"


def build_catalogue(
    deployment: Deployment, model: SteeringModel, names: Names, seed: int
) -> Catalogue:
    rng = random.Random(seed)
    steered_policy = {n.to_text().lower(): p for n, p in model.steered}
    existing: set[str] = set()
    aliases: dict[str, int] = {}  # CNAME owner -> policy of a steered target
    static: list[tuple[str, int]] = []
    for origin, zone in deployment.zones.items():
        for rel, node in zone.nodes.items():
            owner = rel.derelativize(origin).to_text().lower()
            existing.add(owner)
            for rdataset in node.rdatasets:
                if rdataset.rdtype == dns.rdatatype.CNAME:
                    target = rdataset[0].target.derelativize(origin).to_text().lower()
                    if target in steered_policy:
                        aliases[owner] = steered_policy[target]
                elif rdataset.rdtype in (
                    dns.rdatatype.A,
                    dns.rdatatype.AAAA,
                    dns.rdatatype.MX,
                    dns.rdatatype.TXT,
                ):
                    if owner not in steered_policy:
                        static.append((owner, int(rdataset.rdtype)))
    questions: list[Question] = []
    by_kind: list[list[int]] = [[], [], []]
    steered = list(steered_policy.items()) + list(aliases.items())
    for name, policy in steered:
        for qtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            by_kind[KIND_STEERED].append(len(questions))
            questions.append(_question(name, int(qtype), KIND_STEERED, policy))
    for name, qtype in sorted(static):
        by_kind[KIND_STATIC].append(len(questions))
        questions.append(_question(name, qtype, KIND_STATIC, -1))
    apexes = {origin.to_text().lower() for origin in deployment.zones}
    # Typos below the apex stay in the zone (NXDOMAIN); a misspelt zone name would be REFUSED.
    sources = [
        name for name in [n for n, _ in steered] + [n for n, _ in static] if name not in apexes
    ]
    typos: set[str] = set()
    for _ in range(names.typos * 20):
        if len(typos) >= names.typos or not sources:
            break
        typo = _typo(rng.choice(sources), rng)
        if typo not in existing:
            typos.add(typo)
    for name in sorted(typos):
        by_kind[KIND_TYPO].append(len(questions))
        questions.append(_question(name, int(dns.rdatatype.A), KIND_TYPO, -1))
    aaaa_twin = {}
    for i, q in enumerate(questions):
        if q.qtype == dns.rdatatype.AAAA and q.kind != KIND_STATIC:
            aaaa_twin[i - 1] = i  # steered names are laid out as A then AAAA
    picks = []
    for k in range(3):
        drawn = [
            i for i in by_kind[k] if k == KIND_STATIC or questions[i].qtype != dns.rdatatype.AAAA
        ]
        rng.shuffle(drawn)  # popularity rank: a fixed random order per seed
        picks.append(drawn)
    shares = [names.steered, names.static, names.nxdomain]
    shares = [
        share if picks[k] else 0.0 for k, share in enumerate(shares)
    ]  # no such names: none asked
    if sum(shares) <= 0:
        raise ValueError("the deployment has no name to ask for")
    pick_cum = []
    for k in range(3):
        weight = np.arange(1, len(picks[k]) + 1, dtype=np.float64) ** -names.zipf_s
        pick_cum.append((np.cumsum(weight) / (weight.sum() or 1.0)).tolist())
    return Catalogue(
        questions=tuple(questions),
        picks=tuple(picks),
        pick_cum=tuple(pick_cum),
        aaaa_twin=aaaa_twin,
        kind_cum=np.cumsum(np.array(shares) / sum(shares)).tolist(),
    )


@dataclass
class AddressPool:
    """An ISP's client address space: intervals to draw client addresses from, by size."""

    starts: list[int]
    sizes: list[int]
    cum: list[float]

    @classmethod
    def of(cls, starts: list[int], sizes: list[int]) -> AddressPool:
        cum = np.cumsum(np.array(sizes, dtype=np.float64))
        return cls(starts, sizes, (cum / cum[-1]).tolist())

    def draw(self, rng: random.Random) -> int:
        i = min(bisect.bisect_right(self.cum, rng.random()), len(self.cum) - 1)
        return self.starts[i] + rng.randrange(self.sizes[i])


@dataclass(frozen=True)
class Resolver:
    index: int
    address: str  # loopback source address
    asn: int
    ecs: bool
    subnets: tuple[tuple[int, int], ...]  # its clients: (4 or 6, network address as int)


def build_resolvers(model: SteeringModel, resolvers: Resolvers, seed: int) -> tuple[Resolver, ...]:
    """The resolvers, each in an ISP, with its clients' subnets drawn from that ISP's prefixes."""
    cm = model.client_map
    asn_of_group = cm.groups.asn
    node_countries = {model.countries[int(c)] for c in model.node_country}
    v4_parts: dict[int, tuple[list[int], list[int]]] = {}
    for start, end, group in zip(cm.v4_start.tolist(), cm.v4_end.tolist(), cm.v4_group.tolist()):
        asn = int(asn_of_group[group])
        if asn:
            starts, sizes = v4_parts.setdefault(asn, ([], []))
            starts.append(start)
            sizes.append(end - start + 1)
    v6_parts: dict[int, tuple[list[int], list[int]]] = {}
    for shi, slo, ehi, elo, group in zip(
        cm.v6_start_hi.tolist(),
        cm.v6_start_lo.tolist(),
        cm.v6_end_hi.tolist(),
        cm.v6_end_lo.tolist(),
        cm.v6_group.tolist(),
    ):
        asn = int(asn_of_group[group])
        if asn:
            starts, sizes = v6_parts.setdefault(asn, ([], []))
            start, end = (shi << 64) | slo, (ehi << 64) | elo
            starts.append(start)
            sizes.append(end - start + 1)
    v4 = {asn: AddressPool.of(*parts) for asn, parts in v4_parts.items()}
    v6 = {asn: AddressPool.of(*parts) for asn, parts in v6_parts.items()}
    if resolvers.isps is not None:
        unknown = sorted(a for a in resolvers.isps if a not in v4)
        if unknown:
            raise ValueError(
                f"resolvers.isps: AS{unknown[0]} has no IPv4 prefix in the deployment's client map"
            )
        weights = {a: w for a, w in resolvers.isps.items() if w > 0}
    else:
        # By address space, among the ISPs of the countries the deployment has nodes in.
        country_of_asn: dict[int, str] = {}
        for group, asn in enumerate(asn_of_group.tolist()):
            if asn and cm.groups.country[group]:
                country_of_asn.setdefault(int(asn), cm.groups.country[group])
        weights = {
            a: float(sum(p[1]))
            for a, p in v4_parts.items()
            if country_of_asn.get(a) in node_countries
        } or {a: float(sum(p[1])) for a, p in v4_parts.items()}
    if not weights:
        raise ValueError("the deployment's client map names no ISP (no ASN) to place resolvers in")
    rng = random.Random(seed)
    asns = sorted(weights)
    cum = np.cumsum([weights[a] for a in asns]) / sum(weights.values())
    out = []
    for i in range(resolvers.count):
        asn = asns[min(int(np.searchsorted(cum, rng.random(), side="right")), len(asns) - 1)]
        address = str(ipaddress.IPv4Address(RESOLVER_BASE + i + (i // 254) * 2))  # skip .0 and .255
        subnets = []
        for _ in range(resolvers.subnets_per_resolver):
            if asn in v6 and rng.random() < resolvers.ipv6_client_share:
                subnets.append((6, v6[asn].draw(rng) >> (128 - ECS_V6_BITS) << (128 - ECS_V6_BITS)))
            else:
                subnets.append((4, v4[asn].draw(rng) >> (32 - ECS_V4_BITS) << (32 - ECS_V4_BITS)))
        out.append(Resolver(i, address, asn, rng.random() < resolvers.ecs_share, tuple(subnets)))
    return tuple(out)
