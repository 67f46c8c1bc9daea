"""The compiled steering model: a deployment turned into arrays, once per config load."""

from __future__ import annotations

from dataclasses import dataclass

import dns.name
import numpy as np

from router.config.deployment import Deployment
from router.config.policy import Policy
from router.geo.clientmap import ClientMap
from router.steering.plan import Topology
from router.steering.rank import RankInputs


@dataclass(frozen=True)
class CompiledPolicy:
    zone: dns.name.Name
    name: str
    policy: Policy
    in_pool: np.ndarray  # bool[N]
    group_lat: np.ndarray  # float64[G], unplaceable groups moved to default_site
    group_lon: np.ndarray
    group_country: np.ndarray  # int32[G]
    group_fence: np.ndarray  # int32[G]: 0 unfenced, else 1 + geofence rule index
    fence_allowed: np.ndarray  # bool[F, N]
    demand_prior: np.ndarray  # float64[G]: expected_peak_gbps spread by address space
    topology: Topology

    @property
    def label(self) -> str:
        return f'"{self.name}" ({self.zone})'


@dataclass(frozen=True)
class SteeringModel:
    node_ids: tuple[str, ...]
    node_lat: np.ndarray
    node_lon: np.ndarray
    node_country: np.ndarray
    node_asn: np.ndarray
    node_capacity_gbps: np.ndarray
    node_ipv4: tuple[bytes, ...]
    node_ipv6: tuple[bytes, ...]
    countries: tuple[str, ...]
    country_rtt: np.ndarray  # float64[C, C], NaN where not measured
    client_map: ClientMap
    policies: tuple[CompiledPolicy, ...]
    steered: tuple[tuple[dns.name.Name, int], ...]  # (name, policy index)
    group_weight: np.ndarray  # float64[G]: share of the client address space (sums to 1)

    def rank_inputs(
        self,
        policy: int,
        node_state: np.ndarray,
        node_util: np.ndarray,
        samples: tuple | None = None,
    ) -> RankInputs:
        """``samples``: (meas_start, meas_node, meas_rtt) fused RTT samples, CSR by group."""
        compiled = self.policies[policy]
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
            group_fence=compiled.group_fence, fence_allowed=compiled.fence_allowed, **extra,
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
            if policy.nodes == "all"
            else np.array([n.id in policy.nodes for n in nodes], dtype=np.bool_)
        )
        fence = np.zeros(len(groups), dtype=np.int32)
        allowed = [np.ones(len(nodes), dtype=np.bool_)]
        for i, rule in enumerate(policy.geofence):
            fenced = np.array([c in rule.clients for c in countries], dtype=np.bool_)
            fence[(country >= 0) & fenced[np.maximum(country, 0)]] = i + 1
            allowed.append(np.array([c in rule.nodes for c in node_countries], dtype=np.bool_))
        fence_allowed = np.array(allowed)
        static = RankInputs.create(
            group_lat=lat, group_lon=lon, group_country=country, group_asn=groups.asn,
            node_lat=node_lat, node_lon=node_lon, node_country=node_country, node_asn=node_asn,
            node_state=np.zeros(len(nodes)), node_util=np.zeros(len(nodes)), node_in_pool=in_pool,
            country_rtt=rtt, onnet_bonus_ms=0.0, load_penalty_ms=0.0, group_fence=fence, fence_allowed=fence_allowed,
        )  # fmt: skip
        policy_index[(zone, name)] = len(policies)
        policies.append(CompiledPolicy(
            zone, name, policy, in_pool, lat, lon, country, fence, fence_allowed,
            policy.expected_peak_gbps * weight, Topology.create(static),
        ))  # fmt: skip

    return SteeringModel(
        node_ids=node_ids,
        node_lat=node_lat,
        node_lon=node_lon,
        node_country=node_country,
        node_asn=node_asn,
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
