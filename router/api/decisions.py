"""What a routing table decides, as plain JSON-ready dicts: the input of ``router plan``.

Two configs number their client groups and nodes differently, so everything here is keyed
by what survives a config change: node ids, policy keys (``"<zone>/<policy name>"``) and
group keys (``group_keys``: ASN, country and location, the identity the client map
importers merge groups by). The running router serves these dicts as ``GET /v1/decisions``
and ``GET /v1/demand``; ``router plan --against DIR`` builds the same dicts offline.

Answers are compact: ``answer_sets`` lists each distinct answer (node indexes into
``node_ids``, the plan's choice first); a policy's ``answers`` has one entry per group (in
``groups`` order): an answer set index, or for a group the capacity plan splits,
``[[answer set, share of the group's clients], ...]``.
"""

from __future__ import annotations

import math
from typing import Any

import dns.name
import dns.zone
import numpy as np

from router.geo.clientmap import UNKNOWN_GROUP, ClientMap
from router.health.state import NodeState
from router.steering.build import WEIGHT_SCALE, RoutingTable
from router.steering.model import SteeringModel

PRIOR = "configured prior"
OBSERVED = "observed"
METRO_RADIUS_KM = 50.0  # a group this close to a site is labelled with the site's metro


def group_keys(client_map: ClientMap) -> list[str]:
    """A key per group that another config's map gives the same clients: ASN/country/lat,lon.

    The importers merge records into one group by exactly these fields. Should two groups
    still share a key (coordinates equal to 4 decimals), the later ones get ``#2``, ``#3``.
    """
    groups = client_map.groups
    keys: list[str] = []
    seen: dict[str, int] = {}
    for g in range(len(groups)):
        if g == UNKNOWN_GROUP:
            key = "unknown"
        else:
            lat, lon = float(groups.lat[g]), float(groups.lon[g])
            where = "-" if math.isnan(lat) or math.isnan(lon) else f"{lat:.4f},{lon:.4f}"
            key = f"AS{int(groups.asn[g])}/{groups.country[g] or '-'}/{where}"
        count = seen.get(key, 0) + 1
        seen[key] = count
        keys.append(key if count == 1 else f"{key}#{count}")
    return keys


def group_labels(client_map: ClientMap, sites: tuple = ()) -> list[str]:
    """``AS3352 ES Madrid (TELEFONICA DE ESPANA)``: the metro of the nearest site within 50 km."""
    groups = client_map.groups
    site_lat = np.radians([s.lat for s in sites]) if sites else np.zeros(0)
    site_lon = np.radians([s.lon for s in sites]) if sites else np.zeros(0)
    labels = []
    for g in range(len(groups)):
        if g == UNKNOWN_GROUP:
            labels.append("unknown (not in the client map)")
            continue
        lat, lon = float(groups.lat[g]), float(groups.lon[g])
        where = ""
        if len(site_lat) and not (math.isnan(lat) or math.isnan(lon)):
            la, lo = math.radians(lat), math.radians(lon)
            cos = np.sin(la) * np.sin(site_lat) + np.cos(la) * np.cos(site_lat) * np.cos(
                site_lon - lo
            )
            km = 6371.0 * np.arccos(np.clip(cos, -1.0, 1.0))
            nearest = int(np.argmin(km))
            where = (
                sites[nearest].metro if km[nearest] <= METRO_RADIUS_KM else f"{lat:.2f},{lon:.2f}"
            )
        asn = int(groups.asn[g])
        parts = [f"AS{asn}" if asn else "", groups.country[g], where]
        label = " ".join(p for p in parts if p) or "unknown network"
        org = groups.org[g] if len(groups.org[g]) <= 32 else groups.org[g][:31] + "…"
        labels.append(f"{label} ({org})" if org else label)
    return labels


def decisions_json(
    model: SteeringModel,
    table: RoutingTable,
    *,
    sites: tuple = (),
    zones: dict[dns.name.Name, dns.zone.Zone] | None = None,
    node_util: np.ndarray | None = None,
    policy_down: np.ndarray | None = None,
    rtt_samples: int = 0,
    overrides: dict[str, tuple[str, str]] | None = None,
    health_states: list[NodeState] | None = None,
) -> dict[str, Any]:
    """Every steered name's policy and every group's answers under ``table``.

    Each node has its ``state`` in the table and, to tell what an admin_state file change
    would do, its ``admin`` override (``{"state", "from": "file"|"api"}`` or null) and
    ``health_state``, its state without the override."""
    overrides = overrides or {}
    keys = group_keys(model.client_map)
    labels = group_labels(model.client_map, sites)
    groups = model.client_map.groups
    util = np.zeros(len(model.node_ids)) if node_util is None else node_util
    down = (
        np.zeros((len(model.policies), len(model.node_ids)), dtype=bool)
        if policy_down is None
        else policy_down
    )
    policies = {}
    for p, compiled in enumerate(model.policies):
        policies[compiled.key] = {
            "zone": compiled.zone.to_text(),
            "name": compiled.name,
            "settings": compiled.policy.model_dump(mode="json"),
            # Every node the policy may answer with (its nodes, or the union of its pools).
            "pool_nodes": [model.node_ids[n] for n in np.flatnonzero(compiled.in_pool)],
            "probe_down": [model.node_ids[n] for n in np.flatnonzero(down[p])],
            "answers": _answers(table, p),
        }
    return {
        "generation": table.generation,
        "node_ids": list(model.node_ids),
        "nodes": {
            node_id: {
                "state": NodeState(int(table.node_state[i])).label,
                "admin": {"state": overrides[node_id][0], "from": overrides[node_id][1]}
                if node_id in overrides
                else None,
                "health_state": (
                    health_states[i]
                    if health_states is not None
                    else NodeState(int(table.node_state[i]))
                ).label,
                "util": float(util[i]),
                "planned_gbps": float(table.node_planned[i]),
                "capacity_gbps": float(model.node_capacity_gbps[i]),
            }
            for i, node_id in enumerate(model.node_ids)
        },
        "groups": [
            {
                "key": keys[g],
                "label": labels[g],
                "asn": int(groups.asn[g]),
                "country": groups.country[g],
                "weight": float(model.group_weight[g]),
            }
            for g in range(len(groups))
        ],  # fmt: skip
        "answer_sets": [[int(n) for n in row if n >= 0] for row in table.set_nodes],
        "policies": policies,
        "names": {name.to_text(): model.policies[p].key for name, p in model.steered},
        "zones": {
            origin.to_text(): zone_records(origin, zone) for origin, zone in (zones or {}).items()
        },
        "rtt_samples": int(rtt_samples),
    }


def _answers(table: RoutingTable, policy: int) -> list:
    row = table.group_set[policy]
    out: list = [int(v) for v in row]
    for g in np.flatnonzero(row < 0):
        split = -int(row[g]) - 1
        entries, previous = [], 0
        for i in range(int(table.split_start[split]), int(table.split_start[split + 1])):
            cum = int(table.split_cum[i])
            entries.append([int(table.split_set[i]), round((cum - previous) / WEIGHT_SCALE, 6)])
            previous = cum
        out[int(g)] = entries
    return out


def zone_records(origin: dns.name.Name, zone: dns.zone.Zone) -> dict[str, dict[str, Any]]:
    """``"owner TYPE"`` -> ``{"ttl": .., "rdata": [sorted text]}`` for every RRset of a zone."""
    out = {}
    for name, rdataset in zone.iterate_rdatasets():
        owner = name.derelativize(origin).to_text()
        kind = dns.rdatatype.to_text(rdataset.rdtype)
        rdata = sorted(r.to_text(origin=origin, relativize=False) for r in rdataset)
        out[f"{owner} {kind}"] = {"ttl": rdataset.ttl, "rdata": rdata}
    return out


def demand_json(
    model: SteeringModel, demand: np.ndarray, source: str, generation: int = 0
) -> dict[str, Any]:
    """Demand per policy and group key (Gbps, nonzero groups only), and where it comes from."""
    keys = group_keys(model.client_map)
    policies = {}
    for p, compiled in enumerate(model.policies):
        row = demand[p]
        policies[compiled.key] = {
            "total_gbps": float(row.sum()),
            "groups": {keys[g]: float(row[g]) for g in np.flatnonzero(row > 0)},
        }
    return {"generation": generation, "source": source, "policies": policies}


def demand_source(model: SteeringModel, demand: np.ndarray) -> str:
    prior = np.array([p.demand_prior for p in model.policies]).reshape(demand.shape)
    return PRIOR if np.array_equal(prior, demand) else OBSERVED


# -- the running router (GET /v1/decisions, GET /v1/demand) ----------------------------
# The only places that read the supervisor's attributes, so a change there is made here.


def running_decisions(supervisor) -> dict[str, Any]:  # noqa: ANN001
    config, table = supervisor.in_service()
    return decisions_json(
        config.model, table, sites=tuple(config.deployment.inventory.sites), zones=config.deployment.zones,
        node_util=config.health.utilization(), policy_down=config.planner.policy_down,
        rtt_samples=len(config.rtt), overrides=config.health.overrides(), health_states=config.health.health_states(),
    )  # fmt: skip


def running_demand(supervisor) -> dict[str, Any]:  # noqa: ANN001
    config, table = supervisor.in_service()
    model, demand = config.model, config.planner.demand.copy()
    return demand_json(model, demand, demand_source(model, demand), table.generation)
