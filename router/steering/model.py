"""The compiled steering model: a deployment turned into arrays, once per config load."""

from __future__ import annotations

from dataclasses import dataclass

import dns.name
import numpy as np

from router.config.deployment import Deployment
from router.config.nodes import Inventory
from router.config.policy import Policy, pool_members
from router.geo.clientmap import ClientMap
from router.steering.capacity import Topology
from router.steering.rank import RankInputs


def policy_key(zone: dns.name.Name | str, name: str) -> str:
    """A policy's key in ``GET /v1/decisions``, ``router plan`` and the query log."""
    return f"{zone}/{name}"


@dataclass(frozen=True)
class CompiledPolicy:
    zone: dns.name.Name
    name: str
    policy: Policy
    in_pool: np.ndarray  # bool[N]
    group_lat: np.ndarray  # float64[G], unplaceable groups moved to default_site
    group_lon: np.ndarray
    group_country: np.ndarray  # int32[G]
    # int32[G]: each group's row of fence_allowed, the nodes its geofence rule and the on-net
    # limits leave it (0: every node, unrestricted).
    group_fence: np.ndarray
    fence_allowed: np.ndarray  # bool[F, N]
    group_geofence: np.ndarray  # int32[G]: 0 none, else 1 + the policy's geofence rule index
    demand_prior: np.ndarray  # float64[G]: expected_peak_gbps spread by address space
    topology: Topology
    # Pools and rules; None for a ``nodes:`` policy (one pool, group_fence = geofence).
    routing: PoolRouting | None = None

    @property
    def label(self) -> str:
        return f'"{self.name}" ({self.zone})'

    @property
    def key(self) -> str:
        """``<zone>/<policy name>``: the policy's identity across config changes."""
        return policy_key(self.zone, self.name)

    def resolve(self, node_state: np.ndarray) -> np.ndarray:
        """int32[K]: the pool each class answers from (empty without pools)."""
        if self.routing is None:
            return np.zeros(0, dtype=np.int32)
        return self.routing.resolve(node_state)

    def allowed(self, resolved: np.ndarray) -> np.ndarray:
        """bool[K, N]: fence_allowed under a resolution of the classes' pools."""
        return self.fence_allowed if self.routing is None else self.routing.allowed(resolved)

    def group_allowed(self, group: int, node_state: np.ndarray) -> np.ndarray:
        """bool[N]: the nodes ``group`` may be answered with under ``node_state``."""
        k = int(self.group_fence[group])
        return self.in_pool & self.allowed(self.resolve(node_state))[k]


@dataclass(frozen=True)
class PoolRouting:
    """A policy's pools and rules as arrays.

    The policy's group_fence then holds each group's class, one per (rule, fence) pair in
    use (a fence: the geofence and on-net limits together); a class's row of fence_allowed
    is its fence intersected with the pool its rule's fallback chain resolves to under the
    current node states (``resolve``).
    """

    pool_names: tuple[str, ...]
    pool_nodes: np.ndarray  # bool[Q, N]
    pool_fallback: np.ndarray  # int32[Q]: next pool, -1 none
    rule_pool: np.ndarray  # int32[R]
    rule_labels: tuple[str, ...]
    group_rule: np.ndarray  # int32[G]: each group's first matching rule
    class_rule: np.ndarray  # int32[K]
    class_fence: np.ndarray  # bool[K, N]: the class's fence (all nodes when unfenced)

    def chain(self, k: int) -> list[int]:
        """Class ``k``'s pools in fallback order, those with no node inside its fence left out."""
        out: list[int] = []
        seen: set[int] = set()
        q = int(self.rule_pool[self.class_rule[k]])
        while q >= 0 and q not in seen:
            seen.add(q)
            if (self.pool_nodes[q] & self.class_fence[k]).any():
                out.append(q)
            q = int(self.pool_fallback[q])
        return out

    def resolve(self, node_state: np.ndarray) -> np.ndarray:
        """int32[K]: the pool each class answers from under ``node_state`` (-1: none).

        The first pool of the chain with an up node inside the fence; else the first with a
        draining one; else (the whole chain down) the first pool, failing open inside it.
        """
        out = np.full(len(self.class_rule), -1, dtype=np.int32)
        for k in range(len(out)):
            chain = self.chain(k)
            if not chain:
                continue
            out[k] = chain[0]
            for tier in (0, 1):
                usable = (node_state <= tier) & self.class_fence[k]
                alive = [q for q in chain if (usable & self.pool_nodes[q]).any()]
                if alive:
                    out[k] = alive[0]
                    break
        return out

    def allowed(self, resolved: np.ndarray) -> np.ndarray:
        """bool[K, N]: each class's fence intersected with its resolved pool."""
        rows = self.class_fence.copy()
        for k, q in enumerate(resolved):
            if q >= 0:
                rows[k] &= self.pool_nodes[q]
        return rows


@dataclass(frozen=True)
class SteeringModel:
    node_ids: tuple[str, ...]
    node_lat: np.ndarray
    node_lon: np.ndarray
    node_country: np.ndarray
    node_asn: np.ndarray
    # On-net only (nodes.yaml ``serves``): the client ASNs each node may serve (None: any);
    # group_onnet int32[G] indexes onnet_allowed bool[E, N], the nodes that may answer the
    # group's clients by their ASN (row 0: every node).
    node_onnet_asns: tuple[frozenset[int] | None, ...]
    onnet_allowed: np.ndarray
    group_onnet: np.ndarray
    node_capacity_gbps: np.ndarray
    node_ipv4: tuple[bytes, ...]
    node_ipv6: tuple[bytes, ...]
    countries: tuple[str, ...]
    country_rtt: np.ndarray  # float64[C, C], NaN where not measured
    client_map: ClientMap
    policies: tuple[CompiledPolicy, ...]
    steered: tuple[tuple[dns.name.Name, int], ...]  # (name, policy index)
    group_weight: np.ndarray  # float64[G]: share of the client address space (sums to 1)

    @property
    def node_onnet_only(self) -> np.ndarray:
        """bool[N]: the nodes that serve only the ASNs they list (nodes.yaml ``serves: on-net``)."""
        return np.array([asns is not None for asns in self.node_onnet_asns], dtype=np.bool_)

    def rank_inputs(
        self,
        policy: int,
        node_state: np.ndarray,
        node_util: np.ndarray,
        samples: tuple | None = None,
        fence_allowed: np.ndarray | None = None,
    ) -> RankInputs:
        """``samples``: (meas_start, meas_node, meas_rtt) fused RTT samples, CSR by group.
        ``fence_allowed``: the pools each class resolved to; by default resolved here from
        ``node_state`` (a policy with pools), so every caller sees the planner's pools."""
        compiled = self.policies[policy]
        if fence_allowed is None and compiled.routing is not None:
            fence_allowed = compiled.allowed(compiled.resolve(node_state))
        extra = {}
        if samples is not None:
            extra = dict(meas_start=samples[0], meas_node=samples[1], meas_rtt=samples[2])
        return RankInputs.create(
            group_lat=compiled.group_lat, group_lon=compiled.group_lon,
            group_country=compiled.group_country, group_asn=self.client_map.groups.asn,
            node_lat=self.node_lat, node_lon=self.node_lon, node_country=self.node_country,
            node_asn=self.node_asn, node_state=node_state, node_util=node_util,
            node_in_pool=compiled.in_pool, country_rtt=self.country_rtt,
            onnet_bonus_ms=compiled.policy.onnet_bonus_ms, load_penalty_ms=compiled.policy.load_penalty_ms,
            group_fence=compiled.group_fence,
            fence_allowed=compiled.fence_allowed if fence_allowed is None else fence_allowed, **extra,
        )  # fmt: skip


def compile_model(deployment: Deployment) -> SteeringModel:
    inventory = deployment.inventory
    nodes = inventory.nodes
    sites = {s.id: s for s in inventory.sites}
    groups = deployment.client_map.groups
    countries = sorted(
        {c for c in groups.country if c}
        | {sites[n.site].country for n in nodes}
        | {c for pair in deployment.country_rtt for c in pair}
        | {s.country for s in inventory.sites}
    )
    country_index = {c: i for i, c in enumerate(countries)}
    rtt = np.full((len(countries), len(countries)), np.nan)
    for (a, b), ms in deployment.country_rtt.items():
        rtt[country_index[a], country_index[b]] = ms
        rtt[country_index[b], country_index[a]] = ms
    group_country = np.array([country_index.get(c, -1) for c in groups.country], dtype=np.int32)
    node_ids = tuple(n.id for n in nodes)
    node_countries = [sites[n.site].country for n in nodes]
    node_lat = np.array([n.lat for n in nodes])
    node_lon = np.array([n.lon for n in nodes])
    node_country = np.array([country_index[c] for c in node_countries], dtype=np.int32)
    node_asn = np.array([n.asn for n in nodes], dtype=np.int64)
    weight = group_address_weight(deployment.client_map)
    unplaced = ~(np.isfinite(groups.lat) & np.isfinite(groups.lon))
    node_onnet_asns = tuple(inventory.onnet_asns(n) for n in nodes)
    onnet_allowed, group_onnet = onnet_eligibility(node_onnet_asns, groups.asn)

    policies: list[CompiledPolicy] = []
    policy_index: dict[tuple[dns.name.Name, str], int] = {}
    for (zone, name), policy in sorted(
        deployment.policies.items(), key=lambda kv: (kv[0][0].to_text(), kv[0][1])
    ):
        site = sites[policy.default_site]
        lat = np.where(unplaced, site.lat, groups.lat)
        lon = np.where(unplaced, site.lon, groups.lon)
        # Clients with no country at all are treated as if in the default site's country.
        country = np.where(group_country < 0, country_index[site.country], group_country).astype(
            np.int32
        )
        in_pool = (
            np.ones(len(nodes), dtype=np.bool_)
            if not isinstance(policy.nodes, tuple)  # "all", or pools (replaced below)
            else np.array([n.id in policy.nodes for n in nodes], dtype=np.bool_)
        )
        fence = np.zeros(len(groups), dtype=np.int32)
        allowed = [np.ones(len(nodes), dtype=np.bool_)]
        for i, rule in enumerate(policy.geofence):
            fenced = np.array([c in rule.clients for c in countries], dtype=np.bool_)
            fence[(country >= 0) & fenced[np.maximum(country, 0)]] = i + 1
            allowed.append(np.array([c in rule.nodes for c in node_countries], dtype=np.bool_))
        geofence = fence
        fence, fence_allowed = combine_fences(fence, np.array(allowed), group_onnet, onnet_allowed)
        routing = None
        if policy.pools:
            pools = _compile_pools(
                policy, inventory, countries, country, groups.asn, fence, fence_allowed
            )
            routing, in_pool, fence, fence_allowed = (pools["routing"], pools["in_pool"], pools["group_fence"],
                                                      pools["fence_allowed"])  # fmt: skip
        static = RankInputs.create(
            group_lat=lat, group_lon=lon, group_country=country, group_asn=groups.asn,
            node_lat=node_lat, node_lon=node_lon, node_country=node_country, node_asn=node_asn,
            node_state=np.zeros(len(nodes)), node_util=np.zeros(len(nodes)), node_in_pool=in_pool,
            country_rtt=rtt, onnet_bonus_ms=0.0, load_penalty_ms=0.0, group_fence=fence, fence_allowed=fence_allowed,
        )  # fmt: skip
        policy_index[(zone, name)] = len(policies)
        policies.append(CompiledPolicy(
            zone, name, policy, in_pool, lat, lon, country, fence, fence_allowed, geofence,
            policy.expected_peak_gbps * weight, Topology.create(static), routing,
        ))  # fmt: skip

    return SteeringModel(
        node_ids=node_ids,
        node_lat=node_lat,
        node_lon=node_lon,
        node_country=node_country,
        node_asn=node_asn,
        node_onnet_asns=node_onnet_asns,
        onnet_allowed=onnet_allowed,
        group_onnet=group_onnet,
        node_capacity_gbps=np.array([n.capacity_gbps for n in nodes]),
        node_ipv4=tuple(n.ipv4.packed for n in nodes),
        node_ipv6=tuple(n.ipv6.packed for n in nodes),
        countries=tuple(countries),
        country_rtt=rtt,
        client_map=deployment.client_map,
        policies=tuple(policies),
        steered=tuple((s.name, policy_index[(s.zone, s.policy)]) for s in deployment.steered),
        group_weight=weight,
    )


def onnet_eligibility(
    served: tuple[frozenset[int] | None, ...], group_asn: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(allowed bool[E, N], group_row int32[G]): which nodes may answer each client group
    under the on-net limits (``served``: each node's client ASNs, None for any client). Row 0
    allows every node; groups share a row when the same nodes accept their ASN, and rows are
    numbered in the order of the first (lowest) ASN that uses them."""
    every = np.ones(len(served), dtype=np.bool_)
    unlimited = np.array([asns is None for asns in served], dtype=np.bool_)
    # Only the on-net-only nodes differ between ASNs: index them by the ASNs they accept,
    # so the work is the size of the serves lists, not ASNs x nodes.
    accepting: dict[int, list[int]] = {}
    for j, asns in enumerate(served):
        for asn in asns or ():
            accepting.setdefault(asn, []).append(j)
    rows = [every]
    row_of: dict[bytes, int] = {every.tobytes(): 0}
    by_nodes: dict[tuple[int, ...], int] = {}
    asns, inverse = np.unique(group_asn, return_inverse=True)
    asn_row = np.zeros(len(asns), dtype=np.int32)
    for i, asn in enumerate(asns.tolist()):
        nodes = tuple(accepting.get(asn, ()))
        row_index = by_nodes.get(nodes)
        if row_index is None:
            row = unlimited.copy()
            row[list(nodes)] = True
            row_index = row_of.setdefault(row.tobytes(), len(rows))
            if row_index == len(rows):
                rows.append(row)
            by_nodes[nodes] = row_index
        asn_row[i] = row_index
    return np.array(rows), asn_row[inverse.reshape(-1)].astype(np.int32)


def combine_fences(
    group_geofence: np.ndarray,
    geofence_allowed: np.ndarray,
    group_onnet: np.ndarray,
    onnet_allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One fence per (geofence rule, on-net row) pair in use: each group's row of the nodes
    both leave it; row 0 stays every node (unrestricted), as the kernels expect."""
    every = np.ones(geofence_allowed.shape[1], dtype=np.bool_)
    rows = [every]
    row_of: dict[bytes, int] = {every.tobytes(): 0}
    pair_row: dict[tuple[int, int], int] = {}
    fence = np.empty(len(group_geofence), dtype=np.int32)
    for g, pair in enumerate(zip(group_geofence.tolist(), group_onnet.tolist())):
        row = pair_row.get(pair)
        if row is None:
            allowed = geofence_allowed[pair[0]] & onnet_allowed[pair[1]]
            row = row_of.setdefault(allowed.tobytes(), len(rows))
            if row == len(rows):
                rows.append(allowed)
            pair_row[pair] = row
        fence[g] = row
    return fence, np.array(rows)


def group_address_weight(client_map: ClientMap) -> np.ndarray:
    """Each group's share of the mapped address space: the demand prior's shape.

    IPv4 addresses count one each; an IPv6 /48 (a site) counts as one IPv4 address, so
    IPv6-only networks are not weightless. Group 0 (unknown) gets no prior demand.
    """
    g = len(client_map.groups)
    v4 = (client_map.v4_end - client_map.v4_start + 1).astype(np.float64)
    weight = np.bincount(client_map.v4_group, weights=v4, minlength=g)
    # /48s spanned: the upper 64 bits of an interval, in units of 2^16 (smaller: a fraction).
    sites = ((client_map.v6_end_hi - client_map.v6_start_hi).astype(np.float64) + 1.0) / 65536.0
    weight += np.bincount(client_map.v6_group, weights=sites, minlength=g)
    weight[0] = 0.0
    total = weight.sum()
    return weight / total if total > 0 else weight


def _compile_pools(
    policy: Policy,
    inventory: Inventory,
    countries: list[str],
    group_country: np.ndarray,
    group_asn: np.ndarray,
    group_geofence: np.ndarray,
    geofence_allowed: np.ndarray,
) -> dict:
    """Pools and rules as arrays: each group's first matching rule, and its (rule, fence) class."""
    node_ids = [n.id for n in inventory.nodes]
    members = pool_members(policy, inventory)
    names = tuple(policy.pools)
    index = {name: i for i, name in enumerate(names)}
    pool_nodes = np.array(
        [[n in members[name] for n in node_ids] for name in names], dtype=np.bool_
    )
    fallback = np.array(
        [index.get(policy.pools[name].fallback or "", -1) for name in names], dtype=np.int32
    )
    rule_pool = np.array([index[rule.pool] for rule in policy.rules], dtype=np.int32)
    n_groups = len(group_country)
    group_rule = np.full(
        n_groups, len(policy.rules) - 1, dtype=np.int32
    )  # check requires a catch-all
    unmatched = np.ones(n_groups, dtype=np.bool_)
    for r, rule in enumerate(policy.rules):
        match = unmatched.copy()
        wanted = rule.countries()
        if wanted is not None:
            in_rule = np.array([c in wanted for c in countries] + [False], dtype=np.bool_)
            match &= in_rule[group_country]  # -1 (no country) reads the trailing False
        if rule.asns is not None:
            match &= np.isin(group_asn, np.array(rule.asns, dtype=np.int64))
        group_rule[match] = r
        unmatched &= ~match
    # Class 0 is the unfenced catch-all (plan.py places classes other than 0 first).
    pairs = {(len(policy.rules) - 1, 0): 0}
    group_class = np.empty(n_groups, dtype=np.int32)
    for g, key in enumerate(zip(group_rule.tolist(), group_geofence.tolist())):
        group_class[g] = pairs.setdefault(key, len(pairs))
    routing = PoolRouting(
        pool_names=names, pool_nodes=pool_nodes, pool_fallback=fallback, rule_pool=rule_pool,
        rule_labels=tuple(rule.clients for rule in policy.rules), group_rule=group_rule,
        class_rule=np.array([r for r, _ in pairs], dtype=np.int32),
        class_fence=np.array([geofence_allowed[f] for _, f in pairs], dtype=np.bool_),
    )  # fmt: skip
    healthy = np.zeros(len(node_ids), dtype=np.int8)
    return dict(
        routing=routing,
        in_pool=pool_nodes.any(axis=0),
        group_fence=group_class,
        fence_allowed=routing.allowed(routing.resolve(healthy)),
    )
