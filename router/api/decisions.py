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

``GET /v1/decisions`` serves the same document a page of groups at a time
(``DecisionPages``): filtered by steered name, group key or node, at most ``PAGE_MAX``
groups per request, and an opaque cursor for the next page, so one request costs
O(policies x groups) in numpy plus O(page) in Python, whatever the size of the client map.
A page's ``answer_sets`` are the sets its own groups use (its answers index into them);
``router plan`` joins the pages back into the whole document (``router/plan.py``).
``GET /v1/demand`` is paged the same way (``DemandPages``, filtered by steered name or group
key), over a copy of the demand taken when a walk's routing table was first asked for: the
planner's changes every few seconds, and a walk's pages must add up to one document.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
from collections import OrderedDict
from typing import Any

import dns.exception
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


def group_labels(client_map: ClientMap, sites: tuple = (), which=None) -> list[str]:  # noqa: ANN001
    """``AS3352 ES Madrid (TELEFONICA DE ESPANA)``: the metro of the nearest site within 50 km.

    ``which``: the group indexes to label (default: every group), in that order."""
    groups = client_map.groups
    site_lat = np.radians([s.lat for s in sites]) if sites else np.zeros(0)
    site_lon = np.radians([s.lon for s in sites]) if sites else np.zeros(0)
    labels = []
    for g in range(len(groups)) if which is None else (int(g) for g in which):
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
    keys = group_keys(model.client_map)
    labels = group_labels(model.client_map, sites)
    policies = {
        compiled.key: _policy_json(model, p, policy_down, _answers(table, p))
        for p, compiled in enumerate(model.policies)
    }
    return {
        "generation": table.generation,
        "node_ids": list(model.node_ids),
        "nodes": _nodes_json(model, table, node_util, overrides, health_states),
        "groups": [_group_json(model, g, keys[g], labels[g]) for g in range(len(keys))],
        "answer_sets": [[int(n) for n in row if n >= 0] for row in table.set_nodes],
        "policies": policies,
        "names": {name.to_text(): model.policies[p].key for name, p in model.steered},
        "zones": {
            origin.to_text(): zone_records(origin, zone) for origin, zone in (zones or {}).items()
        },
        "rtt_samples": int(rtt_samples),
    }


def _nodes_json(
    model: SteeringModel,
    table: RoutingTable,
    node_util: np.ndarray | None,
    overrides: dict[str, tuple[str, str]] | None,
    health_states: list[NodeState] | None,
) -> dict[str, Any]:
    overrides = overrides or {}
    util = np.zeros(len(model.node_ids)) if node_util is None else node_util
    return {
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
    }


def _policy_json(
    model: SteeringModel, p: int, policy_down: np.ndarray | None, answers: list
) -> dict[str, Any]:
    compiled = model.policies[p]
    down = policy_down[p] if policy_down is not None else np.zeros(len(model.node_ids), bool)
    return {
        "zone": compiled.zone.to_text(),
        "name": compiled.name,
        "settings": compiled.policy.model_dump(mode="json"),
        # Every node the policy may answer with (its nodes, or the union of its pools).
        "pool_nodes": [model.node_ids[n] for n in np.flatnonzero(compiled.in_pool)],
        "probe_down": [model.node_ids[n] for n in np.flatnonzero(down)],
        "answers": answers,
    }


def _group_json(model: SteeringModel, g: int, key: str, label: str) -> dict[str, Any]:
    groups = model.client_map.groups
    return {
        "key": key,
        "label": label,
        "asn": int(groups.asn[g]),
        "country": groups.country[g],
        "weight": float(model.group_weight[g]),
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


# -- the running router (GET /v1/decisions) ----------------------------------------------
# The only places that read the supervisor's attributes, so a change there is made here.


def running_decisions(supervisor) -> dict[str, Any]:  # noqa: ANN001
    config, table = supervisor.in_service()
    return decisions_json(
        config.model, table, sites=tuple(config.deployment.inventory.sites), zones=config.deployment.zones,
        node_util=config.health.utilization(), policy_down=config.planner.policy_down,
        rtt_samples=len(config.rtt), overrides=config.health.overrides(), health_states=config.health.health_states(),
    )  # fmt: skip


# -- GET /v1/decisions and GET /v1/demand a page at a time ---------------------------------

PAGE_DEFAULT = 100  # groups per page unless ``limit`` says otherwise
PAGE_MAX = 1000
KEPT_TABLES = 8  # the snapshots (by routing table) a cursor may still name, per endpoint


class PageError(Exception):
    """A request for a page that cannot be answered: ``status`` and the reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def groups_answering(table: RoutingTable, policies: list[int], node: int) -> np.ndarray:
    """bool[G]: the groups whose answers include ``node`` in any of ``policies`` (split
    groups included when any of their answer sets does)."""
    in_set = (table.set_nodes == node).any(axis=1)
    split_entries = table.split_set.astype(np.int64)
    starts = table.split_start[:-1].astype(np.int64)
    if len(split_entries) and len(starts):
        split_has = np.logical_or.reduceat(in_set[split_entries], starts)
        split_has &= table.split_start[1:] > table.split_start[:-1]  # an empty row has nothing
    else:
        split_has = np.zeros(len(starts), dtype=bool)
    mask = np.zeros(table.group_set.shape[1], dtype=bool)
    for p in policies:
        row = table.group_set[p].astype(np.int64)
        whole = row >= 0
        mask[whole] |= in_set[row[whole]]
        mask[~whole] |= split_has[-row[~whole] - 1]
    return mask


def _filters_id(*filters: str | None) -> str:
    return hashlib.sha256(json.dumps(list(filters)).encode()).hexdigest()[:12]


def encode_cursor(generation: int, after: int, filters: str) -> str:
    raw = json.dumps({"g": generation, "a": after, "f": filters}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, int, str]:
    """(generation, last group index served, filters id); PageError 400 for anything else."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        generation, after, filters = raw["g"], raw["a"], raw["f"]
        if not (type(generation) is int and type(after) is int and isinstance(filters, str)):
            raise TypeError
        if generation < 0 or after < 0:
            raise ValueError
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PageError(
            400, 'cursor: not a cursor this router gave (pass the reply\'s "next" unchanged)'
        ) from exc
    return generation, after, filters


def steered_policies(model: SteeringModel, name: str | None) -> tuple[list, list[int]]:
    """(the steered (name, policy) pairs, their policy indexes), all or only ``name``'s;
    PageError 400 for a name that is not a domain name, 404 for one not steered."""
    if name is None:
        return list(model.steered), list(range(len(model.policies)))
    try:
        wanted = dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise PageError(400, f"name: not a domain name: {exc}") from exc
    steered = [(n, p) for n, p in model.steered if n == wanted]
    if not steered:
        known = ", ".join(n.to_text() for n, _ in model.steered)
        raise PageError(404, f'name: "{name}" is not a steered name (steered: {known})')
    return steered, sorted({p for _, p in steered})


def _page_of(mask: np.ndarray, after: int, limit: int) -> tuple[int, np.ndarray, bool]:
    """(how many groups ``mask`` selects, the page's: up to ``limit`` after the group
    ``after``, whether more follow)."""
    matching = np.flatnonzero(mask)
    rest = matching[matching > after]
    return len(matching), rest[:limit], len(rest) > limit


class _Walks:
    """What paging a document by client group needs, whatever the document: the snapshot a
    walk reads, kept by routing table generation, and the cursors.

    A walk's first page (no cursor) takes the snapshot of the routing table in service
    (``snapshot``), unless one was taken for that table already; its cursor names the
    table's generation, and the following pages read the same snapshot while it is one of
    the last ``kept`` this object took and of the config in service (410 after that, or
    after a reload: start again). So the pages of one walk read one snapshot and cover every
    matching group exactly once, however the router moves on meanwhile."""

    what = "routing table"  # what a generation names, for the 410 message
    filter_names = ""  # the filters a cursor is bound to, for the 400 message

    def __init__(self, kept: int = KEPT_TABLES) -> None:
        self.kept = kept
        self._lock = threading.Lock()
        self._snapshots: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._keys: tuple[Any, list[str], dict[str, int]] | None = None

    def snapshot(self, config: Any, table: RoutingTable) -> Any:  # noqa: ANN401
        """What the pages of a walk starting on ``table`` read."""
        raise NotImplementedError

    def _start(
        self,
        supervisor: Any,  # noqa: ANN401
        limit: int,
        cursor: str | None,
        filters: str,
    ) -> tuple[Any, Any, int, int]:
        """(config, snapshot, its generation, last group index served or -1) of a page."""
        if not 1 <= limit <= PAGE_MAX:
            raise PageError(400, f"limit: must be 1 to {PAGE_MAX}, got {limit}")
        config, table = supervisor.in_service()
        with self._lock:
            # Snapshots of an older config are forgotten (a walk across a reload starts
            # again), so nothing keeps a replaced config in memory.
            for generation in [g for g, (c, _) in self._snapshots.items() if c is not config]:
                del self._snapshots[generation]
            kept = self._snapshots.get(table.generation)
        if cursor is None:
            if kept is None:
                kept = (config, self.snapshot(config, table))
            with self._lock:
                self._snapshots[table.generation] = kept
                self._snapshots.move_to_end(table.generation)
                while len(self._snapshots) > self.kept:
                    self._snapshots.popitem(last=False)
            return kept[0], kept[1], table.generation, -1
        generation, after, given = decode_cursor(cursor)
        if given != filters:
            raise PageError(
                400,
                "cursor: it was given for other filters: repeat the first request's "
                f"{self.filter_names} with it",
            )
        with self._lock:
            kept = self._snapshots.get(generation)
        if kept is None:
            raise PageError(
                410,
                f"cursor: the {self.what} {generation} is no longer kept (routing table "
                f"{table.generation} is in service): start again without a cursor",
            )
        if after >= len(kept[0].model.client_map.groups):
            raise PageError(400, "cursor: not a cursor this router gave (past the last group)")
        return kept[0], kept[1], generation, after

    def _group_keys(self, client_map: ClientMap) -> tuple[list[str], dict[str, int]]:
        """The group keys of a client map, worked out once per config (O(groups))."""
        with self._lock:
            cached = self._keys
        if cached is not None and cached[0] is client_map:
            return cached[1], cached[2]
        keys = group_keys(client_map)
        index = {key: g for g, key in enumerate(keys)}
        with self._lock:
            self._keys = (client_map, keys, index)
        return keys, index

    def _group_mask(self, client_map: ClientMap, group: str | None) -> np.ndarray:
        """bool[G]: every group, or only the one keyed ``group`` (404 if none is)."""
        keys, key_index = self._group_keys(client_map)
        mask = np.ones(len(keys), dtype=bool)
        if group is not None:
            g = key_index.get(group)
            if g is None:
                raise PageError(404, f'group: no client group has the key "{group}"')
            mask[:] = False
            mask[g] = True
        return mask


class DecisionPages(_Walks):
    """``GET /v1/decisions``: the decisions document a page of client groups at a time, of
    one routing table per walk (the snapshot is the table itself)."""

    filter_names = "name, group and node"

    def snapshot(self, config: Any, table: RoutingTable) -> RoutingTable:  # noqa: ANN401
        return table

    def page(
        self,
        supervisor: Any,  # noqa: ANN401
        *,
        name: str | None = None,
        group: str | None = None,
        node: str | None = None,
        limit: int = PAGE_DEFAULT,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        filters = _filters_id(name, group, node)
        config, table, _, after = self._start(supervisor, limit, cursor, filters)
        model = config.model
        keys, _ = self._group_keys(model.client_map)
        steered, policies = steered_policies(model, name)
        mask = self._group_mask(model.client_map, group)
        if node is not None:
            n = config.node_index.get(node)
            if n is None:
                raise PageError(404, f'node: no node "{node}" in the config in service')
            mask &= groups_answering(table, policies, n)
        total, chosen, more = _page_of(mask, after, limit)

        sets: dict[int, int] = {}  # the table's answer set -> its index in this page

        def local(s: int) -> int:
            return sets.setdefault(s, len(sets))

        policy_docs = {}
        for p in policies:
            answers: list = []
            row = table.group_set[p]
            for g in chosen:
                value = int(row[g])
                if value >= 0:
                    answers.append(local(value))
                    continue
                split, entries, previous = -value - 1, [], 0
                for i in range(int(table.split_start[split]), int(table.split_start[split + 1])):
                    cum = int(table.split_cum[i])
                    share = round((cum - previous) / WEIGHT_SCALE, 6)
                    entries.append([local(int(table.split_set[i])), share])
                    previous = cum
                answers.append(entries)
            policy_docs[model.policies[p].key] = _policy_json(
                model, p, config.planner.policy_down, answers
            )
        labels = group_labels(model.client_map, tuple(config.deployment.inventory.sites), chosen)
        zones = {}
        if cursor is None:  # the records once per walk, on its first page
            origins = {model.policies[p].zone for p in policies}
            zones = {
                origin.to_text(): zone_records(origin, zone)
                for origin, zone in config.deployment.zones.items()
                if name is None or origin in origins
            }
        return {
            "generation": table.generation,
            "node_ids": list(model.node_ids),
            "nodes": _nodes_json(
                model,
                table,
                config.health.utilization(),
                config.health.overrides(),
                config.health.health_states(),
            ),  # fmt: skip
            "groups": [
                _group_json(model, int(g), keys[g], label) for g, label in zip(chosen, labels)
            ],
            "answer_sets": [[int(n) for n in table.set_nodes[s] if n >= 0] for s in sets],
            "policies": policy_docs,
            "names": {n.to_text(): model.policies[p].key for n, p in steered},
            "zones": zones,
            "rtt_samples": len(config.rtt),
            "total_groups": total,
            "next": encode_cursor(table.generation, int(chosen[-1]), filters) if more else None,
        }


class DemandSnapshot:
    """The demand the plan used when a routing table was in service (a copy: the planner's
    changes every few seconds), with what every page of a walk repeats."""

    def __init__(self, model: SteeringModel, demand: np.ndarray) -> None:
        self.demand = demand
        self.source = demand_source(model, demand)
        self.totals = [float(row.sum()) for row in demand]


class DemandPages(_Walks):
    """``GET /v1/demand``: the demand document a page of client groups at a time (the groups
    with demand in a policy shown), of one demand snapshot per walk.

    A page has the whole document's keys, each policy's ``total_gbps`` its whole total and
    ``groups`` this page's groups with demand in it; joined in page order, the pages are
    ``demand_json`` of the snapshot, key for key and in the same order."""

    what = "demand of routing table"
    filter_names = "name and group"

    def snapshot(self, config: Any, table: RoutingTable) -> DemandSnapshot:  # noqa: ANN401
        return DemandSnapshot(config.model, config.planner.demand.copy())

    def page(
        self,
        supervisor: Any,  # noqa: ANN401
        *,
        name: str | None = None,
        group: str | None = None,
        limit: int = PAGE_DEFAULT,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        # "demand" first: a decisions cursor is not one of these, whatever its filters.
        filters = _filters_id("demand", name, group)
        config, snap, generation, after = self._start(supervisor, limit, cursor, filters)
        model = config.model
        keys, _ = self._group_keys(model.client_map)
        _, policies = steered_policies(model, name)
        mask = self._group_mask(model.client_map, group)
        mask &= (snap.demand[policies] > 0).any(axis=0)
        total, chosen, more = _page_of(mask, after, limit)
        policy_docs = {}
        for p in policies:
            values = snap.demand[p][chosen]
            policy_docs[model.policies[p].key] = {
                "total_gbps": snap.totals[p],
                "groups": {
                    keys[g]: float(v) for g, v in zip(chosen.tolist(), values.tolist()) if v > 0
                },
            }
        return {
            "generation": generation,
            "source": snap.source,
            "policies": policy_docs,
            "total_groups": total,
            "next": encode_cursor(generation, int(chosen[-1]), filters) if more else None,
        }
