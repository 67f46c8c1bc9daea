"""``router explain``: run the real lookup for one name and client, and show why.

The query goes through the same responder the server uses (ECS option for a subnet,
source address for a bare IP), so what is printed is what a resolver would get.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import numpy as np

from router.config.deployment import Deployment
from router.health.state import NodeState
from router.service.compiled import compile_deployment, last_known_health
from router.steering.rank import group_components

# Indexed by the kernels' latency source codes (ESTIMATED, COUNTRY_TABLE, NODE_SAMPLES).
LATENCY_SOURCES = ("estimated", "measured", "node samples")

# A bare client IP is explained as a query sent from that address (no ECS); a subnet as
# an ECS query from a resolver on loopback.
EXPLAIN_RESOLVER = "127.0.0.1"


@dataclass
class Candidate:
    node: str
    state: str
    reason: str
    latency_ms: float
    latency_source: str
    distance_km: float
    onnet: bool
    onnet_bonus_ms: float
    load_penalty_ms: float
    score: float
    chosen: int | None  # position in the answer, 1-based
    planned_gbps: float = 0.0  # what the capacity plan puts on the node (all policies)
    capacity_gbps: float = 0.0


@dataclass
class Explanation:
    name: str
    qtype: str
    client: str
    steered: bool
    policy: str | None = None
    group: int | None = None
    group_label: str | None = None
    located_by: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    rcode: str = ""
    answer: list[str] = field(default_factory=list)
    ttl: int | None = None
    ecs_scope: int | None = None
    # The group's answers under the capacity plan: node ids and the share of its clients.
    split: list[dict] = field(default_factory=list)
    # Policies with pools: the rule that matched, its pool chain, the pool that answered.
    rule: str | None = None
    pool_chain: list[str] = field(default_factory=list)
    pool: str | None = None
    fallback_taken: bool = False
    failed_open: bool = False
    # Nodes a hard constraint keeps from this client: {"node", "constraint"}, in node order.
    excluded: list[dict] = field(default_factory=list)

    def to_text(self) -> str:
        lines = [f"name:    {self.name} {self.qtype}"]
        lines.append(f"client:  {self.client}")
        if not self.steered:
            lines.append("policy:  none (static answer from the zone file)")
        else:
            lines.append(f"policy:  {self.policy}")
            lines.append(
                f"group:   {self.group} = {self.group_label} (located by {self.located_by})"
            )
            if self.rule is not None:
                lines.append(f"rule:    {self.rule}")
                how = "first pool"
                if self.failed_open:
                    how = "every pool of the chain is down: failing open in the first pool"
                elif self.fallback_taken:
                    how = f"fallback taken: {', '.join(self.pool_chain[: self.pool_chain.index(self.pool)])} had no node up"
                lines.append(f"pool:    {self.pool} (chain {' -> '.join(self.pool_chain)}; {how})")
            lines.append("candidates (best first; score = latency - on-net bonus + load penalty):")
            lines.append(f"  {'rank':>4}  {'node':<14} {'health':<9} {'latency_ms':>10} {'source':<9} "
                         f"{'km':>6} {'on-net':<6} {'bonus_ms':>8} {'load_ms':>7} {'score':>8} {'planned/capacity Gbps':>22}")  # fmt: skip
            for c in self.candidates:
                rank = str(c.chosen) if c.chosen else "-"
                lines.append(
                    f"  {rank:>4}  {c.node:<14} {c.state:<9} {c.latency_ms:>10.1f} {c.latency_source:<9} "
                    f"{c.distance_km:>6.0f} {'yes' if c.onnet else 'no':<6} {(-c.onnet_bonus_ms if c.onnet else 0.0):>8.1f} "
                    f"{c.load_penalty_ms:>7.1f} {c.score:>8.1f} {c.planned_gbps:>14.1f}/{c.capacity_gbps:<7.0f}"
                    + ("" if c.state == "up" else f"  ({c.reason})")
                )
            if self.excluded:
                lines.append("excluded (hard constraints, never answered to this client):")
                lines += [f"  {e['node']:<14} {e['constraint']}" for e in self.excluded]
            if len(self.split) > 1:
                lines.append("capacity plan: the group is split by client /24 (IPv6 /48):")
                for entry in self.split:
                    lines.append(f"  {entry['share'] * 100:5.1f}%  {', '.join(entry['nodes'])}")
        scope = "none (no ECS in the query)" if self.ecs_scope is None else f"/{self.ecs_scope}"
        ttl = "-" if self.ttl is None else str(self.ttl)
        lines.append(f"answer:  {self.rcode}, TTL {ttl}, ECS scope {scope}")
        lines += [f"  {rr}" for rr in self.answer]
        return "\n".join(lines)


def explain(deployment: Deployment, name: str, client: str, qtype: str = "A") -> Explanation:
    compiled = compile_deployment(deployment)
    model, planner = compiled.model, compiled.planner
    health = last_known_health(deployment, model)
    table = compiled.plan(health.states())
    responder = compiled.responder(table, record_decisions=True)

    qname = dns.name.from_text(name)
    rdtype = dns.rdatatype.from_text(qtype)
    if "/" in client:
        network = ipaddress.ip_network(client, strict=False)
        option = dns.edns.ECSOption(str(network.network_address), network.prefixlen)
        query = dns.message.make_query(qname, rdtype, use_edns=0, options=[option])
        source = EXPLAIN_RESOLVER
    else:
        address = ipaddress.ip_address(client)
        query = dns.message.make_query(qname, rdtype, use_edns=0)
        source = str(address)
    reply_wire = responder.respond(query.to_wire(), source, udp=False)
    assert reply_wire is not None
    reply = dns.message.from_wire(reply_wire)

    result = Explanation(
        name=qname.to_text(), qtype=dns.rdatatype.to_text(rdtype), client=client, steered=False
    )
    result.rcode = dns.rcode.to_text(reply.rcode())
    result.answer = [rr for rrset in reply.answer for rr in rrset.to_text().split("\n")]
    result.answer += [
        f"(authority) {rr}" for rrset in reply.authority for rr in rrset.to_text().split("\n")
    ]
    ttls = [rrset.ttl for rrset in reply.answer]
    result.ttl = min(ttls) if ttls else None
    for option in reply.options:
        if isinstance(option, dns.edns.ECSOption):
            result.ecs_scope = option.scopelen

    policy_index = next((p for n, p in model.steered if n == qname), None)
    decision = responder.last_decision
    if (
        policy_index is None
        or decision is None
        or rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA)
    ):
        return result
    compiled = model.policies[policy_index]
    result.steered = True
    result.policy = compiled.label
    result.group = decision.group
    result.group_label = model.client_map.groups.describe(decision.group)
    result.located_by = decision.source
    inputs = model.rank_inputs(
        policy_index, table.node_state, np.zeros(len(model.node_ids)), planner.samples
    )
    parts = group_components(inputs, decision.group)
    # The answer this client got (a split group answers by client subnet).
    chosen = [int(n) for n in table.set_nodes[decision.answer_set] if n >= 0]
    result.split = [
        {"nodes": [model.node_ids[n] for n in nodes], "share": share}
        for nodes, share in table.entries(policy_index, decision.group)
    ]
    k = int(compiled.group_fence[decision.group])
    allowed = compiled.in_pool & compiled.fence_allowed[k]
    pool_nodes = compiled.in_pool
    pool_label = "the policy's nodes"
    if compiled.routing is not None:
        routing = compiled.routing
        chain = routing.chain(k)
        resolved = int(planner.resolved[policy_index][k])
        rule = int(routing.group_rule[decision.group])
        result.rule = f"{rule + 1} ({routing.rule_labels[rule]} -> pool {routing.pool_names[int(routing.rule_pool[rule])]})"
        result.pool_chain = [routing.pool_names[q] for q in chain]
        result.pool = routing.pool_names[resolved]
        result.fallback_taken = bool(chain) and resolved != chain[0]
        state = planner.inputs[policy_index].rank.node_state  # type: ignore[union-attr]
        fenced_pool = routing.pool_nodes[resolved] & routing.class_fence[k]
        result.failed_open = not result.fallback_taken and bool((state[fenced_pool] == 2).all())
        allowed = planner.inputs[policy_index].rank.fence_allowed[k]  # type: ignore[union-attr]
        pool_nodes = routing.pool_nodes[resolved]
        pool_label = f"pool {result.pool}"
    result.excluded = _excluded(model, compiled, decision.group, pool_nodes, pool_label)
    reasons = [status.reason for status in health.status()]
    order = np.lexsort(
        (np.arange(len(model.node_ids)), parts.distance_km, parts.score, table.node_state)
    )
    for n in order:
        if not allowed[n]:
            continue
        result.candidates.append(
            Candidate(
                node=model.node_ids[n],
                state=NodeState(int(table.node_state[n])).label,
                reason=reasons[n],
                latency_ms=float(parts.latency_ms[n]),
                latency_source=LATENCY_SOURCES[int(parts.latency_source[n])],
                distance_km=float(parts.distance_km[n]),
                onnet=bool(parts.onnet[n]),
                onnet_bonus_ms=compiled.policy.onnet_bonus_ms if parts.onnet[n] else 0.0,
                load_penalty_ms=float(parts.load_penalty_ms[n]),
                score=float(parts.score[n]),
                chosen=chosen.index(int(n)) + 1 if int(n) in chosen else None,
                planned_gbps=float(table.node_planned[n]),
                capacity_gbps=float(model.node_capacity_gbps[n]),
            )
        )
    return result


def _excluded(model, compiled, group: int, pool_nodes: np.ndarray, pool_label: str) -> list[dict]:  # noqa: ANN001
    """Which hard constraint keeps each other node from ``group``: the policy's nodes or the
    answering pool, the geofence, the on-net limits of nodes.yaml (the first that applies)."""
    geofence = int(compiled.group_geofence[group])
    rule = compiled.policy.geofence[geofence - 1] if geofence else None
    onnet = model.onnet_allowed[model.group_onnet[group]]
    asn = int(model.client_map.groups.asn[group])
    out = []
    for n, node in enumerate(model.node_ids):
        country = model.countries[int(model.node_country[n])]
        if not pool_nodes[n]:
            constraint = f"not in {pool_label}"
        elif rule is not None and country not in rule.nodes:
            constraint = (f"geofence rule {geofence - 1}: clients in {', '.join(rule.clients)} only to nodes "
                          f"in {', '.join(rule.nodes)} (the node is in {country})")  # fmt: skip
        elif not onnet[n]:
            served = model.node_onnet_asns[n] or ()
            client = f"AS{asn}" if asn else "an unknown network"
            constraint = (f"on-net only for {', '.join(f'AS{a}' for a in sorted(served))} (nodes.yaml serves), "
                          f"the client is in {client}")  # fmt: skip
        else:
            continue
        out.append({"node": node, "constraint": constraint})
    return out
