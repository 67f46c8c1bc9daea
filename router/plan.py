"""``router plan``: what applying a new deployment directory would do to traffic.

Before: the running router's decisions (``GET /v1/decisions``, ``GET /v1/demand`` of its
API) or a directory planned offline (all nodes up unless a state file says otherwise,
demand = each policy's configured prior). After: the new directory planned with the same
node states, load, policy-probe verdicts and demand, matched by node id and client group
key (``router.api.decisions``). The two are compared name by name and group by group.

Traffic "moves" where a group's clients get another node first in their answer: the
share moved is 1 - sum over nodes of min(before share, after share) of the group's
clients led to that node, times the group's demand. Demand is counted per policy; names
that share a policy share its demand equally here.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from router.api.decisions import PRIOR, decisions_json, demand_json, group_keys
from router.config.deployment import Deployment
from router.health.state import ADMIN_STATES, NodeState, held_by_admin, with_admin_file
from router.service.compiled import compile_deployment

EXIT_NO_CHANGES = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
TOP_GROUPS = 5
_STATES = {"up": NodeState.UP, "draining": NodeState.DRAINING, "down": NodeState.DOWN}


PAGE_LIMIT = 1000  # groups per GET /v1/decisions or /v1/demand page (the router's maximum)


class PlanError(Exception):
    """The plan cannot be made (the API cannot be read, ...)."""


class _TableGone(PlanError):
    """The routing table (or its demand) a page walk started on is no longer kept: start
    again."""


# -- the two sides -----------------------------------------------------------------------


def fetch_running(base_url: str, timeout: float = 30.0) -> tuple[dict, dict]:
    """``GET /v1/decisions`` and ``/v1/demand`` (every page of each) of a running router
    (read-only, no token).

    Read again if a new routing table was published between the two requests, or went out
    of the router's memory while its pages were read.
    """
    for attempt in range(3):
        try:
            decisions = fetch_decisions(base_url, timeout)
            demand = fetch_demand(base_url, timeout)
        except _TableGone:
            if attempt == 2:
                raise
            continue
        if decisions.get("generation") == demand.get("generation"):
            return decisions, demand
    return decisions, demand


def fetch_decisions(base_url: str, timeout: float = 30.0) -> dict:
    """The whole decisions document, joined from its pages (``next`` cursors): the groups in
    order, each policy's answers renumbered into one ``answer_sets``. A router that serves
    the document whole (no ``next``) is read in one request."""
    pages = _pages(base_url, "/v1/decisions", timeout, "the routing table")
    first = next(pages)
    whole = _document_keys(first)
    whole["groups"], whole["answer_sets"] = [], []
    whole["policies"] = {
        key: {**policy, "answers": []} for key, policy in first["policies"].items()
    }
    index: dict[tuple[int, ...], int] = {}
    for page in itertools.chain([first], pages):
        local = []
        for nodes in page["answer_sets"]:
            key = tuple(nodes)
            if key not in index:
                index[key] = len(whole["answer_sets"])
                whole["answer_sets"].append(list(nodes))
            local.append(index[key])
        whole["groups"].extend(page["groups"])
        for key, policy in page["policies"].items():
            whole["policies"][key]["answers"].extend(
                local[value]
                if isinstance(value, int)
                else [[local[s], share] for s, share in value]
                for value in policy["answers"]
            )
    return whole


def fetch_demand(base_url: str, timeout: float = 30.0) -> dict:
    """The whole demand document, joined from its pages: each policy's groups in order (its
    ``total_gbps`` is the whole total on every page). A router that serves the document
    whole (no ``next``) is read in one request."""
    pages = _pages(base_url, "/v1/demand", timeout, "the demand")
    first = next(pages)
    whole = _document_keys(first)
    whole["policies"] = {key: {**policy, "groups": {}} for key, policy in first["policies"].items()}
    for page in itertools.chain([first], pages):
        for key, policy in page["policies"].items():
            whole["policies"][key]["groups"].update(policy["groups"])
    return whole


def _document_keys(page: dict) -> dict:
    """A page's keys that describe the whole document (not the page's place in it)."""
    return {key: value for key, value in page.items() if key not in ("next", "total_groups")}


def _pages(base_url: str, path: str, timeout: float, what: str) -> Iterator[dict]:
    """Every page of ``path`` (``next`` cursors, PAGE_LIMIT groups each), all of the
    generation the first one had; _TableGone when ``what`` changed meanwhile."""
    page = _get_json(base_url, f"{path}?limit={PAGE_LIMIT}", timeout)
    generation = page["generation"]
    while True:
        yield page
        cursor = page.get("next")
        if not cursor:
            return
        query = urllib.parse.urlencode({"limit": PAGE_LIMIT, "cursor": cursor})
        page = _get_json(base_url, f"{path}?{query}", timeout)
        if page["generation"] != generation:
            raise _TableGone(f"{what} changed while its pages were read")


def _get_json(base_url: str, path: str, timeout: float) -> dict:
    url = base_url.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator-given URL
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 410:
            raise _TableGone(f"GET {url}: HTTP 410") from exc
        hint = " (a router older than this command has no such endpoint)" if exc.code == 404 else ""
        raise PlanError(f"GET {url}: HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PlanError(f"GET {url}: {getattr(exc, 'reason', exc)}") from exc


def plan_offline(
    deployment: Deployment,
    before: tuple[dict, dict] | None = None,
    state_file: Path | None = None,
) -> tuple[dict, dict]:
    """Plan ``deployment`` as ``router serve`` would; (decisions, demand) dicts.

    With ``before`` (another side's decisions and demand): its node health, API overrides,
    load and policy-probe verdicts by node id (new nodes up), and its demand by policy and
    group key when it was observed (groups new here, and new policies, get the prior).
    Without: every node up (or as ``state_file`` recorded), demand = the configured prior.
    Either way ``deployment``'s own admin_state file is applied on top, as ``router serve``
    applies it at a reload (what the old file set and the new one does not name is lifted).
    """
    offline = compile_deployment(deployment)
    model, planner = offline.model, offline.planner
    node_ids = model.node_ids
    health = np.zeros(len(node_ids), dtype=np.int8)  # states without admin overrides
    overrides: dict[str, tuple[str, str]] = {}
    util = np.zeros(len(node_ids))
    source = PRIOR
    if before is not None:
        decisions, demand = before
        nodes = decisions["nodes"]
        for i, node_id in enumerate(node_ids):
            if node_id in nodes:
                node = nodes[node_id]
                health[i] = _STATES[node.get("health_state", node["state"])]
                if node.get("admin") is not None:
                    overrides[node_id] = (node["admin"]["state"], node["admin"]["from"])
                util[i] = node.get("util", 0.0)
        index = {node_id: i for i, node_id in enumerate(node_ids)}
        keys = group_keys(model.client_map)
        known = {g["key"] for g in decisions["groups"]}
        for p, compiled in enumerate(model.policies):
            pkey = compiled.key
            old = decisions["policies"].get(pkey)
            for node_id in old["probe_down"] if old else ():
                if node_id in index:
                    planner.policy_down[p, index[node_id]] = True
            observed = demand["policies"].get(pkey)
            if demand["source"] != PRIOR and observed is not None:
                by_key = observed["groups"]
                planner.demand[p] = [
                    by_key.get(key, 0.0) if key in known else compiled.demand_prior[g]
                    for g, key in enumerate(keys)
                ]
                source = f"{demand['source']} (mapped by client group)"
    elif state_file is not None:
        saved, overrides = _saved_states(state_file)
        health = np.array(
            [_STATES[saved.get(node_id, "up")] for node_id in node_ids], dtype=np.int8
        )
    overrides = with_admin_file(overrides, deployment.admin_state)
    states = health.copy()
    for i, node_id in enumerate(node_ids):
        if node_id in overrides:
            states[i] = ADMIN_STATES[overrides[node_id][0]]
    table = offline.plan(states, util, generation=0)
    decisions = decisions_json(
        model, table, sites=tuple(deployment.inventory.sites), zones=deployment.zones, node_util=util,
        policy_down=planner.policy_down, overrides=overrides, health_states=[NodeState(int(s)) for s in health],
    )  # fmt: skip
    return decisions, demand_json(model, planner.demand, source)


def plan_change(
    new: Deployment,
    against: str,
    current: Deployment | None = None,
    state_file: Path | None = None,
    top: int = TOP_GROUPS,
) -> tuple[dict[str, Any], bool]:
    """The report of applying ``new`` over ``against`` (a running router's API URL, or the
    directory ``current`` was loaded from), and whether anything changes."""
    if against.startswith(("http://", "https://")):
        if state_file is not None:
            raise PlanError(
                "--state-file is for --against DIR (a running router has its own states)"
            )
        before = fetch_running(against)
    else:
        assert current is not None
        before = plan_offline(current, state_file=state_file)
    report = compare(before, plan_offline(new, before), top=top)
    return report, has_changes(report)


def _saved_states(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """What ``router serve`` saved (``NodeHealth.save``): node id -> state without admin
    overrides (a node an override held is taken as up: its own state was not saved), and
    the API's overrides (the admin_state file's are the file's to say)."""
    try:
        nodes = json.loads(path.read_text(encoding="utf-8"))["nodes"]
        health, overrides = {}, {}
        for node_id, saved in nodes.items():
            if saved.get("state") in _STATES and not held_by_admin(str(saved.get("reason", ""))):
                health[node_id] = saved["state"]
            if saved.get("admin_state") in ("down", "drain"):
                overrides[node_id] = (saved["admin_state"], "api")
        return health, overrides
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PlanError(f"--state-file {path}: cannot read node states: {exc}") from exc


# -- the comparison ----------------------------------------------------------------------


class _Side:
    """One side's decisions, decoded by node id and group key."""

    def __init__(self, decisions: dict, demand: dict) -> None:
        self.decisions = decisions
        self.demand = demand
        ids = decisions["node_ids"]
        self.sets = [tuple(ids[n] for n in row) for row in decisions["answer_sets"]]
        self.group_index = {g["key"]: i for i, g in enumerate(decisions["groups"])}
        self.names_of: dict[str, list[str]] = {}
        for name, pkey in decisions["names"].items():
            self.names_of.setdefault(pkey, []).append(name)

    def entries(self, pkey: str, group: int) -> tuple[tuple[tuple[str, ...], float], ...]:
        value = self.decisions["policies"][pkey]["answers"][group]
        if isinstance(value, int):
            return ((self.sets[value], 1.0),)
        return tuple((self.sets[s], share) for s, share in value)

    def gbps(self, pkey: str, key: str) -> float:
        policy = self.demand["policies"].get(pkey)
        return policy["groups"].get(key, 0.0) if policy else 0.0

    def total_gbps(self, pkey: str) -> float:
        policy = self.demand["policies"].get(pkey)
        return policy["total_gbps"] if policy else 0.0


def _lead(entries: tuple) -> dict[str, float]:
    out: dict[str, float] = {}
    for nodes, share in entries:
        if nodes:
            out[nodes[0]] = out.get(nodes[0], 0.0) + share
    return out


def _moved(before: tuple, after: tuple) -> float:
    """Share of a group's clients led to another node (0..1)."""
    a, b = _lead(before), _lead(after)
    return max(0.0, 1.0 - sum(min(share, b.get(node, 0.0)) for node, share in a.items()))


def _same(before: tuple, after: tuple) -> bool:
    return [(n, round(s, 3)) for n, s in before] == [(n, round(s, 3)) for n, s in after]


def _answer_text(entries: tuple) -> str:
    if len(entries) == 1:
        return ",".join(entries[0][0]) or "(none)"
    return " | ".join(f"{_percent(share)} {','.join(nodes)}" for nodes, share in entries)


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%" if share >= 0.01 or share == 0 else "<1%"


def compare(
    before: tuple[dict, dict], after: tuple[dict, dict], top: int = TOP_GROUPS
) -> dict[str, Any]:
    """Everything that differs between two sides, as a JSON-ready report."""
    b, a = _Side(*before), _Side(*after)
    b_names, a_names = b.decisions["names"], a.decisions["names"]
    # One basis for every share: Gbps when any demand is known, else the address space.
    by_gbps = any(p["total_gbps"] > 0 for p in b.demand["policies"].values())
    b_groups = b.decisions["groups"]
    common = [
        (key, gi, a.group_index[key]) for key, gi in b.group_index.items() if key in a.group_index
    ]

    names = []
    changed_keys: dict[str, set[str]] = {}  # after-policy key -> group keys whose answers change
    total_weight = moved_weight = 0.0
    for name in sorted(b_names.keys() & a_names.keys()):
        pb, pa = b_names[name], a_names[name]
        share_of_policy = 1.0 / len(b.names_of[pb])
        rows = []
        name_total = name_moved = 0.0
        for key, gi, ai in common:
            weight = b.gbps(pb, key) if by_gbps else b_groups[gi]["weight"]
            weight *= share_of_policy
            name_total += weight
            before_entries, after_entries = b.entries(pb, gi), a.entries(pa, ai)
            if _same(before_entries, after_entries):
                continue
            moved = _moved(before_entries, after_entries) * weight
            name_moved += moved
            rows.append((moved, weight, key, b_groups[gi]["label"], before_entries, after_entries))
        changed_keys.setdefault(pa, set()).update(r[2] for r in rows)
        rows.sort(key=lambda r: (-r[0], -r[1], r[2]))
        settings_b = b.decisions["policies"][pb]["settings"]
        settings_a = a.decisions["policies"][pa]["settings"]
        pool_b = set(b.decisions["policies"][pb]["pool_nodes"])
        pool_a = set(a.decisions["policies"][pa]["pool_nodes"])
        total_weight += name_total
        moved_weight += name_moved
        names.append({
            "name": name, "policy_before": pb, "policy_after": pa,
            "settings_changed": {k: [settings_b.get(k), settings_a.get(k)]
                                 for k in sorted(settings_b.keys() | settings_a.keys())
                                 if settings_b.get(k) != settings_a.get(k)},
            "pool_added": sorted(pool_a - pool_b), "pool_removed": sorted(pool_b - pool_a),
            "groups": len(common), "groups_changed": len(rows),
            "moved": name_moved, "total": name_total,
            "moved_share": name_moved / name_total if name_total > 0 else 0.0,
            "top_groups": [
                {"key": key, "label": label, "before": _answer_text(eb), "after": _answer_text(ea),
                 "moved": moved, "demand": weight}
                for moved, weight, key, label, eb, ea in rows[:top]
            ],
        })  # fmt: skip

    return {
        "demand_before": b.demand["source"],
        "demand_after": a.demand["source"],
        "basis": "gbps" if by_gbps else "address space",
        "names_added": [
            {"name": n, "policy": a_names[n]} for n in sorted(a_names.keys() - b_names.keys())
        ],
        "names_removed": [
            {"name": n, "policy": b_names[n]} for n in sorted(b_names.keys() - a_names.keys())
        ],
        "names": names,
        "groups_added": len(a.group_index.keys() - b.group_index.keys()),
        "groups_removed": len(b.group_index.keys() - a.group_index.keys()),
        "moved": moved_weight,
        "total": total_weight,
        "moved_share": moved_weight / total_weight if total_weight > 0 else 0.0,
        "nodes": _nodes(b.decisions["nodes"], a.decisions["nodes"]),
        "geofence": _geofence(b, a, changed_keys),
        "records": _records(b.decisions.get("zones", {}), a.decisions.get("zones", {})),
        "rtt_samples_before": b.decisions.get("rtt_samples", 0),
        "generation_before": b.decisions.get("generation", 0),  # 0: planned offline
    }


def _nodes(before: dict, after: dict) -> list[dict[str, Any]]:
    out = []
    for node_id in list(before) + [n for n in after if n not in before]:
        nb, na = before.get(node_id), after.get(node_id)
        capacity = (na or nb)["capacity_gbps"]
        planned_b = nb["planned_gbps"] if nb else None
        planned_a = na["planned_gbps"] if na else None
        out.append({
            "node": node_id, "status": "added" if nb is None else "removed" if na is None else "kept",
            "state": (na or nb)["state"], "capacity_gbps": capacity,
            "state_before": nb["state"] if nb else None, "state_after": na["state"] if na else None,
            "admin_after": na.get("admin") if na else None,
            "capacity_before_gbps": nb["capacity_gbps"] if nb else None,
            "planned_before_gbps": planned_b, "planned_after_gbps": planned_a,
            "over_capacity_before": bool(nb and nb["planned_gbps"] > nb["capacity_gbps"] * (1 + 1e-9)),
            "over_capacity_after": bool(na and na["planned_gbps"] > na["capacity_gbps"] * (1 + 1e-9)),
        })  # fmt: skip
    return out


def _rule_key(rule: dict) -> str:
    return ",".join(sorted(rule["clients"]))


def _geofence(b: _Side, a: _Side, changed_keys: dict[str, set[str]]) -> list[dict[str, Any]]:
    out = []
    b_policies, a_policies = b.decisions["policies"], a.decisions["policies"]
    for pkey in sorted(b_policies.keys() | a_policies.keys()):
        rules_b = {
            _rule_key(r): r
            for r in (b_policies.get(pkey) or {"settings": {}})["settings"].get("geofence", [])
        }
        rules_a = {
            _rule_key(r): r
            for r in (a_policies.get(pkey) or {"settings": {}})["settings"].get("geofence", [])
        }
        for clients in sorted(rules_b.keys() | rules_a.keys()):
            rb, ra = rules_b.get(clients), rules_a.get(clients)
            if rb == ra:
                continue
            side = a if ra is not None else b
            countries = set((ra or rb)["clients"])
            keys = [g["key"] for g in side.decisions["groups"] if g["country"] in countries]
            out.append({
                "policy": pkey, "change": "added" if rb is None else "removed" if ra is None else "changed",
                "before": rb, "after": ra, "names": sorted(side.names_of.get(pkey, [])),
                "groups": len(keys), "demand_gbps": sum(b.gbps(pkey, k) for k in keys),
                "groups_changing_answers": len(changed_keys.get(pkey, set()) & set(keys)),
            })  # fmt: skip
    return out


def _records(before: dict, after: dict) -> list[dict[str, Any]]:
    out = []
    for zone in sorted(before.keys() | after.keys()):
        rb, ra = before.get(zone), after.get(zone)
        if rb is None or ra is None:
            out.append(
                {
                    "zone": zone,
                    "change": "zone added" if rb is None else "zone removed",
                    "rrset": None,
                }
            )
            continue
        for rrset in sorted(rb.keys() | ra.keys()):
            if rb.get(rrset) != ra.get(rrset):
                change = "added" if rrset not in rb else "removed" if rrset not in ra else "changed"
                out.append({"zone": zone, "change": change, "rrset": rrset, "before": rb.get(rrset),
                            "after": ra.get(rrset)})  # fmt: skip
    return out


def has_changes(report: dict[str, Any]) -> bool:
    return bool(
        report["names_added"] or report["names_removed"] or report["geofence"] or report["records"]
        or report["groups_added"] or report["groups_removed"]
        or any(n["status"] != "kept" or n["state_before"] != n["state_after"] for n in report["nodes"])
        or any(n["groups_changed"] or n["settings_changed"] or n["policy_before"] != n["policy_after"]
               for n in report["names"])
    )  # fmt: skip


# -- text --------------------------------------------------------------------------------


def _amount(value: float, basis: str) -> str:
    return f"{value:.1f} Gbps" if basis == "gbps" else f"{value * 100:.2f}% of addresses"


def _of(moved: float, total: float, basis: str) -> str:
    if basis == "gbps":
        return f" ({moved:.1f} of {total:.1f} Gbps)"
    return " (by address space)"


def to_text(report: dict[str, Any], new: str, against: str) -> str:
    basis = report["basis"]
    generation = (
        f" (routing table {report['generation_before']} in service)"
        if report["generation_before"]
        else ""
    )
    lines = [f"plan: {new} against {against}{generation}"]
    source = report["demand_before"]
    if source == PRIOR:
        lines.append("demand: configured prior (expected_peak_gbps), not observed")
    else:
        lines.append(f"demand: {source} (the new config: {report['demand_after']})")
    if basis != "gbps":
        lines.append(
            "  no demand known (expected_peak_gbps is 0): shares below are of the client address space"
        )
    if report["rtt_samples_before"]:
        lines.append(f"  note: the running router steers with {report['rtt_samples_before']} fused RTT samples; "
                     "the new plan has only the rtt_samples file")  # fmt: skip
    for entry in report["names_added"]:
        lines.append(f"+ {entry['name']} (policy {entry['policy']}): new steered name")
    for entry in report["names_removed"]:
        lines.append(f"- {entry['name']} (policy {entry['policy']}): no longer steered")
    if report["groups_added"] or report["groups_removed"]:
        lines.append(
            f"client map: {report['groups_added']} new client group(s), {report['groups_removed']} gone"
        )
    for n in report["names"]:
        policy = (
            n["policy_before"]
            if n["policy_before"] == n["policy_after"]
            else f"{n['policy_before']} -> {n['policy_after']}"
        )
        if not (
            n["groups_changed"] or n["settings_changed"] or n["policy_before"] != n["policy_after"]
        ):
            lines.append(f"  {n['name']} (policy {policy}): no change")
            continue
        lines.append(f"~ {n['name']} (policy {policy})")
        for key, (old, new_value) in n["settings_changed"].items():
            if key == "nodes":
                pool = [f"+{x}" for x in n["pool_added"]] + [f"-{x}" for x in n["pool_removed"]]
                lines.append(f"    nodes: {json.dumps(old) if old == 'all' else len(old)} -> "
                             f"{json.dumps(new_value) if new_value == 'all' else len(new_value)} ({' '.join(pool) or 'same nodes'})")  # fmt: skip
                continue
            lines.append(f"    {key}: {json.dumps(old)} -> {json.dumps(new_value)}")
        lines.append(
            f"    {n['groups_changed']} of {n['groups']} client groups change answers; "
            f"{n['moved_share'] * 100:.1f}% of its traffic moves{_of(n['moved'], n['total'], basis)}"
        )
        for g in n["top_groups"]:
            lines.append(
                f"      {g['label']}: {g['before']} -> {g['after']}  ({_amount(g['moved'], basis)} moves)"
            )
        if n["groups_changed"] > len(n["top_groups"]):
            lines.append(f"      ... and {n['groups_changed'] - len(n['top_groups'])} more")
    for rule in report["geofence"]:
        shown = rule["after"] or rule["before"]
        text = f"{{clients: [{', '.join(shown['clients'])}], nodes: [{', '.join(shown['nodes'])}]}}"
        if rule["change"] == "changed":
            text += f" (nodes were [{', '.join(rule['before']['nodes'])}])"
        sign = {"added": "+", "removed": "-", "changed": "~"}[rule["change"]]
        lines.append(
            f"{sign} geofence {rule['policy']}: {text}: {rule['groups']} client groups "
            f"({rule['demand_gbps']:.1f} Gbps), {rule['groups_changing_answers']} of them change answers"
        )
    lines.append(
        f"total: {report['moved_share'] * 100:.1f}% of steered traffic moves{_of(report['moved'], report['total'], basis)}"
    )
    moving = [n for n in report["nodes"] if n["status"] != "kept" or n["over_capacity_after"]
              or n["state_before"] != n["state_after"]
              or abs((n["planned_after_gbps"] or 0) - (n["planned_before_gbps"] or 0)) >= 0.05]  # fmt: skip
    if moving:
        lines.append("nodes (planned Gbps before -> after / capacity):")
        for n in moving:
            before = "-" if n["planned_before_gbps"] is None else f"{n['planned_before_gbps']:.1f}"
            after = "-" if n["planned_after_gbps"] is None else f"{n['planned_after_gbps']:.1f}"
            flag = ""
            if n["over_capacity_after"]:
                flag = "  PAST CAPACITY" + (
                    " (already before)" if n["over_capacity_before"] else ""
                )
            elif n["status"] != "kept":
                flag = f"  ({n['status']})"
            if n["status"] == "kept" and n["state_before"] != n["state_after"]:
                admin = n["admin_after"]
                why = (
                    f", set {admin['state']} by the {'admin_state file' if admin['from'] == 'file' else 'API'}"
                    if admin
                    else ""
                )
                flag += f"  ({n['state_before']} -> {n['state_after']}{why})"
            lines.append(
                f"  {n['node']:<16} {before:>8} -> {after:>8} / {n['capacity_gbps']:.0f}{flag}"
            )
    for r in report["records"]:
        if r["rrset"] is None:
            lines.append(
                f"{'+' if r['change'] == 'zone added' else '-'} zone {r['zone']} ({r['change']})"
            )
            continue
        sign = {"added": "+", "removed": "-", "changed": "~"}[r["change"]]
        detail = ""
        if r["change"] == "changed":
            old, new_value = r["before"], r["after"]
            detail = f": {' '.join(old['rdata'])} (ttl {old['ttl']}) -> {' '.join(new_value['rdata'])} (ttl {new_value['ttl']})"
        elif r["change"] == "added":
            detail = f": {' '.join(r['after']['rdata'])}"
        lines.append(f"{sign} record {r['rrset']}{detail}")
    over = [n["node"] for n in report["nodes"] if n["over_capacity_after"]]
    summary = "changes" if has_changes(report) else "no changes"
    lines.append(
        f"{summary}; {len(over)} node(s) planned past capacity"
        + (f": {', '.join(over)}" if over else "")
    )
    return "\n".join(lines)
