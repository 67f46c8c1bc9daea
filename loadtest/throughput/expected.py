"""The expected answer to a query of the mix, computed apart from the router's serving code.

``wrong_answers`` is judged against this, not against the router's own lookup (that is the
same code as the server, so it would only compare two paths of one program).

What is independent of the router:

- the DNS content: the zone file parsed with dnspython (``dns.zone``), and the reply made here
  from it (NXDOMAIN and NODATA with the SOA, TTL the SOA's minimum as RFC 2308 says; CNAMEs
  not chased; A/AAAA of in-zone MX and NS targets as additional data), not ``router.dns``;
- the client's group and ECS scope: a plain ``bisect`` over the compiled client map's
  intervals (and, for an address in no interval, the shortest prefix around it that stays in
  the gap), not the numba LPM of ``router.geo``;
- the ranking: ``tests/reference.py`` (``score_matrix``, ``eligibility``,
  ``ranked_candidates``: the plain-Python reference the steering kernels are tested
  against), for the one group asked about, not ``router.steering``'s kernels or planner;
- the answer built from the ranking (lead node, then the next candidates), written here.

What is shared, because it is the input and not the answer: the config loader
(``router.config.load_deployment``: nodes, policies, the compiled client map), the arrays the
steering model makes from it (``SteeringModel.rank_inputs``: group locations, fences and pools
resolved), the node states the router starts from (the state and admin-state files,
``last_known_health``) and the RTT sample file fused as the router fuses it.

The capacity plan: with no demand for any policy (the sample deployment: no
``expected_peak_gbps``), every group's answer leads with its best candidate, so the
expected answer is exact and ordered: the reference's first ``answer_count`` nodes. With
demand (var/world), the plan fills nodes over every group at once (and may split a group),
which the reference takes hours to replay in Python at world scale; the check then stays
exact where the plan leaves no freedom: the lead node must be one the group may use (the
reference's eligible nodes for its fence, pool and health tier), and the rest of the answer
must be the group's reference candidates in order, without the lead; the ECS scope is the
client-map entry's, or (a group the plan split, answered per client /24 or /48) at least
that long. ``mode`` says which
check was made; ``lead_not_best`` counts answers that did not lead with the reference's best
(capacity spill-over, expected at world scale, impossible in exact mode).
"""

from __future__ import annotations

import bisect
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
import numpy as np

from loadtest.throughput.queries import Query
from tests import reference

CANDIDATES = 16  # answer rows follow this many ranked candidates (router.steering.capacity)
# A split group's clients are answered by their /24 (IPv4) or /48 (IPv6), and the ECS scope
# says so (RFC 7871 section 7.2.1: the scope covers what the answer depended on).
STICKY_BITS = {4: 24, 6: 48}


class _OneGroup:
    """The rank inputs seen as if group ``g`` were the only group: the reference then scores
    one row (G x N in pure Python is too slow at world scale) with exactly its own code."""

    def __init__(self, inputs, g: int) -> None:  # noqa: ANN001
        self._inputs = inputs
        lo, hi = int(inputs.meas_start[g]), int(inputs.meas_start[g + 1])
        self.meas_start = np.array([0, hi - lo])
        self.meas_node = inputs.meas_node[lo:hi]
        self.meas_rtt = inputs.meas_rtt[lo:hi]
        for name in ("group_lat", "group_lon", "group_country", "group_asn", "group_fence"):
            setattr(self, name, getattr(inputs, name)[g : g + 1])

    def __getattr__(self, name: str):  # noqa: ANN204 - everything per node or per policy
        return getattr(self._inputs, name)


@dataclass(frozen=True)
class Expected:
    """What one query must get. ``steered``: what a steered answer may be (``steered_problem``)."""

    rcode: str
    question: str  # as sent (0x20 case kept)
    answer: tuple[str, ...]  # static records (lower case, sorted); empty for a steered answer
    authority: tuple[str, ...]
    additional: tuple[str, ...]
    ecs_scope: int | None
    steered: tuple | None = None  # (ttl, rdtype, address of node, ranked, eligible, k, exact)
    split_scope: int | None = None  # the scope if the plan split the group (demand planned only)

    def steered_problem(self, lines: list[str], ordered: bool) -> str | None:
        """None when ``lines`` (the reply's answer records) are an allowed steered answer."""
        ttl, rdtype, address, ranked, eligible, k, exact = self.steered
        parsed = []
        for line in lines:
            parts = line.split()
            if len(parts) != 5 or parts[0].lower() != self.question.split()[0].lower():
                return f"answer: unexpected record {line!r}"
            if parts[1] != str(ttl) or parts[3] != rdtype:
                return f"answer: expected TTL {ttl} {rdtype}, got {line!r}"
            parsed.append(parts[4].lower())
        by_address = {address[n]: n for n in eligible}
        nodes = [by_address.get(a) for a in parsed]
        if None in nodes:
            return f"answer: {parsed} names a node the group may not use (expected {self._want()})"
        if len(set(nodes)) != len(nodes):
            return f"answer: a node twice: {parsed}"
        leads = [nodes[0]] if ordered else nodes
        for lead in leads:
            if exact and lead != ranked[0]:
                continue
            want = [lead] + [n for n in ranked[:CANDIDATES] if n != lead][: k - 1]
            if (nodes if ordered else sorted(nodes)) == (want if ordered else sorted(want)):
                return None
        return f"answer: expected {self._want()}, got {parsed}"

    def _want(self) -> str:
        _ttl, _rdtype, address, ranked, _eligible, k, exact = self.steered
        best = [address[n] for n in ranked[:k]]
        return str(best) if exact else f"a usable lead, then the reference order (best {best})"

    def lead_is_best(self, lines: list[str]) -> bool:
        _ttl, _rdtype, address, ranked, *_ = self.steered
        return bool(lines) and lines[0].split()[-1].lower() == address[ranked[0]]


class ZoneTruth:
    """Static answers from the zone file, parsed with dnspython."""

    def __init__(self, zone_file: Path, origin: dns.name.Name, steered: set[dns.name.Name]) -> None:
        self.origin = origin
        self.zone = dns.zone.from_file(str(zone_file), origin=origin, relativize=False)
        self.steered = steered
        soa = self.zone.find_rdataset(origin, dns.rdatatype.SOA)
        self.negative_ttl = min(soa.ttl, soa[0].minimum)
        self.soa_line = f"{origin} {self.negative_ttl} IN SOA {soa[0].to_text()}".lower()
        if any(n.labels and n.labels[0] == b"*" for n in self.zone.nodes):
            raise ValueError(f"{zone_file}: wildcards are not modelled by the expected answers")

    def exists(self, name: dns.name.Name) -> bool:
        """The name has data, is steered, or has names below it (an empty non-terminal)."""
        return (
            name in self.zone.nodes
            or name in self.steered
            or any(n.is_subdomain(name) for n in (*self.zone.nodes, *self.steered))
        )

    def rrset_lines(self, name: dns.name.Name, rdtype: int, owner: str | None = None) -> list[str]:
        node = self.zone.get_node(name)
        rdataset = None if node is None else node.get_rdataset(dns.rdataclass.IN, rdtype)
        if rdataset is None:
            return []
        owner = owner or name.to_text()
        kind = dns.rdatatype.to_text(rdtype)
        return [f"{owner} {rdataset.ttl} IN {kind} {r.to_text()}".lower() for r in rdataset]

    def static(
        self, name: dns.name.Name, rdtype: int
    ) -> tuple[str, list[str], list[str], list[str]]:
        """(rcode, answer, authority, additional) for a name that is not steered (or a
        steered name asked for a type other than A/AAAA)."""
        if not name.is_subdomain(self.origin):
            raise ValueError(f"{name} is outside {self.origin}")
        if not self.exists(name):
            return "NXDOMAIN", [], [self.soa_line], []
        cname = self.rrset_lines(name, dns.rdatatype.CNAME)
        if cname and rdtype != dns.rdatatype.CNAME:
            return "NOERROR", cname, [], []
        answer = self.rrset_lines(name, rdtype)
        if not answer:
            return "NOERROR", [], [self.soa_line], []
        additional = []
        if rdtype in (dns.rdatatype.MX, dns.rdatatype.NS):
            node = self.zone.get_node(name)
            for rdata in node.get_rdataset(dns.rdataclass.IN, rdtype):
                target = rdata.exchange if rdtype == dns.rdatatype.MX else rdata.target
                if target.is_subdomain(self.origin):
                    for glue in (dns.rdatatype.A, dns.rdatatype.AAAA):
                        additional += self.rrset_lines(target, glue)
        return "NOERROR", answer, [], additional


class ClientLocator:
    """Group and ECS scope of an address: bisect over the compiled map's intervals."""

    def __init__(self, client_map) -> None:  # noqa: ANN001 - router.geo.ClientMap (the input)
        cm = client_map
        self.v4 = (
            cm.v4_start.tolist(),
            cm.v4_end.tolist(),
            cm.v4_group.tolist(),
            cm.v4_scope.tolist(),
        )
        hi_s, lo_s = cm.v6_start_hi.tolist(), cm.v6_start_lo.tolist()
        hi_e, lo_e = cm.v6_end_hi.tolist(), cm.v6_end_lo.tolist()
        self.v6 = ([(h << 64) | lo for h, lo in zip(hi_s, lo_s)], [(h << 64) | lo for h, lo in zip(hi_e, lo_e)],
                   cm.v6_group.tolist(), cm.v6_scope.tolist())  # fmt: skip

    def locate(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
        starts, ends, groups, scopes = self.v4 if address.version == 4 else self.v6
        bits = 32 if address.version == 4 else 128
        x = int(address)
        j = bisect.bisect_right(starts, x) - 1
        if j >= 0 and x <= ends[j]:
            return groups[j], scopes[j]
        lo = ends[j] + 1 if j >= 0 else 0
        hi = starts[j + 1] - 1 if j + 1 < len(starts) else (1 << bits) - 1
        for plen in range(bits + 1):  # the unknown group: the widest block around x in the gap
            size = 1 << (bits - plen)
            start = x - x % size
            if start >= lo and start + size - 1 <= hi:
                return 0, plen
        return 0, bits


class ExpectedAnswers:
    """Expected replies for queries of the mix on one deployment (see the module docstring)."""

    def __init__(self, zones: Path, zone_file: Path, loaded: tuple | None = None) -> None:
        """``loaded``: (deployment, model) already loaded from ``zones`` (the input, shared;
        loading the world deployment takes most of a minute)."""
        from router.config import load_deployment
        from router.service.compiled import last_known_health
        from router.steering.model import compile_model
        from router.steering.samples import seeded_samples

        if loaded is None:
            deployment = load_deployment(zones)
            loaded = (deployment, compile_model(deployment))
        deployment, model = loaded
        self.model = model
        origin = dns.name.from_text(zone_file.name.removesuffix(".zone"))
        self.steered = {name: p for name, p in model.steered if name.is_subdomain(origin)}
        self.zone = ZoneTruth(zone_file, origin, set(self.steered))
        self.locator = ClientLocator(model.client_map)
        state = last_known_health(deployment, model).states()
        samples = None
        if deployment.rtt_samples:
            import time

            rtt, _ = seeded_samples(deployment.rtt_samples, model.client_map, model.node_ids)
            samples = rtt.csr(time.monotonic())
        util = np.zeros(len(model.node_ids))
        self.inputs = [
            model.rank_inputs(p, state, util, samples) for p in range(len(model.policies))
        ]
        self.eligible = [reference.eligibility(i) for i in self.inputs]
        self.exact = all(float(np.sum(p.demand_prior)) == 0.0 for p in model.policies)
        self.mode = (
            "exact: no demand, every answer is the reference's best nodes in order"
            if self.exact
            else "demand planned: lead among the group's usable nodes, the rest in reference order"
        )
        self.address = {
            "A": [str(ipaddress.IPv4Address(a)) for a in model.node_ipv4],
            "AAAA": [str(ipaddress.IPv6Address(a)) for a in model.node_ipv6],
        }
        self._ranked: dict[tuple[int, int], tuple[list[int], frozenset[int]]] = {}

    def ranked(self, policy: int, group: int) -> tuple[list[int], frozenset[int]]:
        """(the group's nodes best first, the nodes it may use), by tests/reference.py."""
        key = (policy, group)
        if key not in self._ranked:
            inputs = self.inputs[policy]
            one = _OneGroup(inputs, group)
            score, dist = reference.score_matrix(one)
            eligible = self.eligible[policy]
            order = reference.ranked_candidates(one, score, dist, 0, eligible)
            usable = frozenset(int(n) for n in np.flatnonzero(eligible[inputs.group_fence[group]]))
            self._ranked[key] = ([int(n) for n in order], usable)
        return self._ranked[key]

    def expect(self, query: Query, source: str = "127.0.0.1") -> Expected:
        name = dns.name.from_text(query.name)
        lower = dns.name.from_text(query.name.lower())
        rdtype = dns.rdatatype.from_text(query.qtype)
        question = f"{query.name} IN {query.qtype}"
        policy = self.steered.get(lower)
        if policy is not None and rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            subnet = ipaddress.ip_network(query.ecs or f"{source}/32", strict=False)
            group, scope = self.locator.locate(subnet.network_address)
            ranked, usable = self.ranked(policy, group)
            compiled = self.model.policies[policy]
            kind = query.qtype
            steered = (compiled.policy.ttl, kind, self.address[kind], ranked, usable,
                       compiled.policy.answer_count, self.exact)  # fmt: skip
            split_scope = None
            if query.ecs and not self.exact and scope > 0:
                split_scope = max(scope, STICKY_BITS[subnet.version])
            return Expected("NOERROR", question, (), (), (), scope if query.ecs else None, steered,
                            split_scope)  # fmt: skip
        rcode, answer, authority, additional = self.zone.static(name, rdtype)
        return Expected(rcode, question, tuple(sorted(answer)), tuple(sorted(authority)),
                        tuple(sorted(additional)), 0 if query.ecs else None)  # fmt: skip


def lower_lines(lines: list[str]) -> list[str]:
    return [line.lower() for line in lines]


def router_problem(expected: Expected, got: dict, ordered: bool) -> str | None:
    """The first way the router's reply (``answers.summarize``) differs from ``expected``.

    Every field: rcode, AA, TC, the question as cased, each section, the ECS scope. Record
    names are compared without case (the question's case is checked apart)."""
    if got["rcode"] != expected.rcode:
        return f"rcode: expected {expected.rcode}, got {got['rcode']}"
    if not got["aa"] or got["tc"]:
        return f"flags: expected AA and not TC, got aa={got['aa']} tc={got['tc']}"
    if got["question"] != [expected.question]:
        return f"question: expected {[expected.question]!r}, got {got['question']!r}"
    for section in ("authority", "additional"):
        if sorted(lower_lines(got[section])) != list(getattr(expected, section)):
            return f"{section}: expected {list(getattr(expected, section))}, got {got[section]}"
    if got["ecs_scope"] not in (expected.ecs_scope, expected.split_scope):
        also = (
            f" (or {expected.split_scope}, a split group)"
            if expected.split_scope is not None
            else ""
        )
        return f"ecs_scope: expected {expected.ecs_scope}{also}, got {got['ecs_scope']}"
    if expected.steered is not None:
        return expected.steered_problem(got["answer"], ordered)
    if sorted(lower_lines(got["answer"])) != list(expected.answer):
        return f"answer: expected {list(expected.answer)}, got {got['answer']}"
    return None


def owner_lines(lines: list[str], qname: str) -> list[str]:
    return [line for line in lines if line.split()[0].lower() == qname.lower()]


def peer_problem(expected: Expected, got: dict, qname: str) -> str | None:
    """A peer: rcode, and the query name's records (any order; TTLs of static records and what
    follows a CNAME are not compared: PowerDNS chases CNAMEs inside the zone)."""
    if got["rcode"] != expected.rcode:
        return f"rcode: expected {expected.rcode}, got {got['rcode']}"
    mine = owner_lines(got["answer"], qname)
    if expected.steered is not None:
        return expected.steered_problem(mine, ordered=False)

    def no_ttl(lines: list[str] | tuple[str, ...]) -> list[str]:
        return sorted(
            " ".join(p for i, p in enumerate(line.lower().split()) if i != 1) for line in lines
        )

    if no_ttl(mine) != no_ttl(owner_lines(list(expected.answer), qname)):
        return f"answer: expected {list(expected.answer)}, got {mine}"
    return None
