"""Steering policies, ``<zone>.policy.yaml``: which names are steered, and how.

Example (keys must be sorted so that diffs stay reviewable)::

    names:                     # owner name (relative to the zone, or absolute) -> policy
      video: video
      www: web
    policies:
      video:
        answer_count: 2        # node addresses per answer
        default_site: mad-ix   # clients the map cannot place are steered as if here
        expected_peak_gbps: 0  # demand before any is observed (spread by address space)
        geofence:              # optional data residency rules, never crossed
          - {clients: [DE], nodes: [DE]}   # clients in DE only to nodes in DE
        headroom: 0.8          # fill nodes to 80% of capacity before spilling further
        load_penalty_ms: 40    # score added at 100% load (grows with load squared)
        nodes: all             # or a list of node ids
        onnet_bonus_ms: 15     # score taken off nodes inside the client's own ISP
        probe:                 # optional: this policy's own probe of each node in its pool
          url: "{health_url}/video"   # template; see router.health.policy_probes
        ttl: 20
        when_all_down: fail_open   # answer the best nodes as if healthy; never empty

A fenced group fails open inside its fence: if every node its fence allows is down, it
is answered with those nodes as if healthy, never with a node outside the fence.
"""

from __future__ import annotations

import string
from typing import Annotated, Literal

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from router.config._validate import validate_item
from router.config._yaml import LocatedYaml, unsorted_keys
from router.config.nodes import Inventory
from router.config.problems import Problem
from router.config.zones import record_line_index


class GeofenceRule(BaseModel):
    """Clients in these countries may only be answered with nodes in those countries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clients: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")], ...] = Field(
        min_length=1
    )
    nodes: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")], ...] = Field(
        min_length=1
    )


class PolicyProbe(BaseModel):
    """This policy's own check of each node (``router.health.policy_probes``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: int = Field(default=3, ge=1, le=100)  # failed probes in a row: out of this policy
    interval_s: float = Field(default=2.0, gt=0, le=600)
    recover_after: int = Field(default=2, ge=1, le=100)  # good probes in a row: back
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    # A template: {health_url} {ipv4} {ipv6} {id} are the node's; http(s):// or tcp://.
    url: str = Field(pattern=r"^((https?|tcp)://|\{health_url\})")


class Policy(BaseModel):
    """How one steered name picks nodes for a client group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer_count: int = Field(ge=1, le=8)
    default_site: str
    expected_peak_gbps: float = Field(default=0.0, ge=0, le=1e7)
    geofence: tuple[GeofenceRule, ...] = ()
    headroom: float = Field(default=0.8, gt=0, le=1)
    load_penalty_ms: float = Field(default=0.0, ge=0, le=10_000)
    nodes: Literal["all"] | tuple[str, ...]
    onnet_bonus_ms: float = Field(default=0.0, ge=0, le=10_000)
    probe: PolicyProbe | None = None
    ttl: int = Field(ge=1, le=86_400)
    when_all_down: Literal["fail_open"]


class SteeredName(BaseModel):
    """A name in a zone whose A and AAAA answers come from the steering core."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: dns.name.Name
    zone: dns.name.Name
    policy: str
    source: str
    line: int


def parse_policies(
    doc: LocatedYaml,
    zone: dns.zone.Zone | None,
    zone_display: str,
    zone_text: str,
    inventory: Inventory | None,
) -> tuple[dict[str, Policy], list[SteeredName], list[Problem]]:
    """Validate a policy file against its zone and the node inventory."""
    problems = unsorted_keys(doc)
    data = doc.data
    if not isinstance(data, dict):
        return (
            {},
            [],
            problems + [doc.problem((), "must be a mapping with keys names and policies")],
        )
    for key in data:
        if key not in ("names", "policies"):
            problems.append(
                doc.problem((key,), f'unknown top-level key "{key}" (valid: names, policies)')
            )

    policies: dict[str, Policy] = {}
    raw_policies = data.get("policies")
    if not isinstance(raw_policies, dict) or not raw_policies:
        problems.append(
            doc.problem(("policies",), '"policies" must be a non-empty mapping of name -> policy')
        )
        raw_policies = {}
    node_ids = {n.id for n in inventory.nodes} if inventory else set()
    site_ids = {s.id for s in inventory.sites} if inventory else set()
    for name, raw in raw_policies.items():
        label = f'policy "{name}"'
        policy, errors = validate_item(Policy, raw, doc, ("policies", name), label)
        problems += errors
        if not isinstance(policy, Policy):
            continue
        if inventory is not None:
            if policy.default_site not in site_ids:
                problems.append(
                    doc.problem(
                        ("policies", name, "default_site"),
                        f'{label}: default_site "{policy.default_site}" is not a site in nodes.yaml '
                        f"(sites: {', '.join(sorted(site_ids))})",
                    )
                )
            if policy.nodes != "all":
                for i, node_id in enumerate(policy.nodes):
                    if node_id not in node_ids:
                        problems.append(
                            doc.problem(
                                ("policies", name, "nodes", i),
                                f'{label}: unknown node "{node_id}" in nodes (not in nodes.yaml)',
                            )
                        )
                if len(set(policy.nodes)) != len(policy.nodes):
                    problems.append(
                        doc.problem(
                            ("policies", name, "nodes"), f"{label}: nodes lists a node twice"
                        )
                    )
            problems += _check_geofence(doc, name, label, policy, inventory)
            problems += _check_probe(doc, name, label, policy, inventory)
        policies[str(name)] = policy

    steered: list[SteeredName] = []
    raw_names = data.get("names")
    if not isinstance(raw_names, dict) or not raw_names:
        problems.append(
            doc.problem(("names",), '"names" must be a non-empty mapping of owner name -> policy')
        )
        raw_names = {}
    origin = zone.origin if zone is not None else None
    static_lines = record_line_index(zone_text, origin) if origin is not None else {}
    for owner, policy_name in raw_names.items():
        where = ("names", owner)
        if not isinstance(policy_name, str) or policy_name not in raw_policies:
            defined = ", ".join(sorted(map(str, raw_policies))) or "none"
            problems.append(
                doc.problem(
                    where,
                    f'undefined policy "{policy_name}" for name "{owner}" (defined: {defined})',
                )
            )
            continue
        if origin is None:
            continue
        try:
            name = origin if owner == "@" else dns.name.from_text(str(owner), origin)
        except dns.exception.DNSException as exc:
            problems.append(doc.problem(where, f'bad owner name "{owner}": {exc}'))
            continue
        if not name.is_subdomain(origin):
            problems.append(doc.problem(where, f"name {name} is not inside zone {origin}"))
            continue
        if any(s.name == name for s in steered):
            problems.append(doc.problem(where, f"name {name} is steered twice"))
            continue
        node = zone.get_node(name) if zone is not None else None
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME):
            if node is not None and node.get_rdataset(dns.rdataclass.IN, rdtype) is not None:
                problems.append(
                    doc.problem(
                        where,
                        f'name {name} is steered by policy "{policy_name}" but {zone_display} line '
                        f"{static_lines.get((name, rdtype), 1)} also gives it static {dns.rdatatype.to_text(rdtype)} records",
                    )
                )
        steered.append(
            SteeredName(
                name=name, zone=origin, policy=policy_name, source=doc.file, line=doc.line(where)
            )
        )
    return policies, steered, problems


def _check_geofence(
    doc: LocatedYaml, name: str, label: str, policy: Policy, inventory: Inventory
) -> list[Problem]:
    """A client country in one rule at most; every rule must leave its clients a node."""
    problems: list[Problem] = []
    site_country = {s.id: s.country for s in inventory.sites}
    pool = [n for n in inventory.nodes if policy.nodes == "all" or n.id in policy.nodes]
    pool_countries = {site_country.get(n.site) for n in pool}
    seen: dict[str, int] = {}
    for i, rule in enumerate(policy.geofence):
        where = ("policies", name, "geofence", i)
        for country in rule.clients:
            if country in seen:
                problems.append(doc.problem(where, f"{label}: clients in {country} are fenced by rules {seen[country]} "
                                                   f"and {i}; a country may be in one rule only"))  # fmt: skip
            seen.setdefault(country, i)
        if not pool_countries & set(rule.nodes):
            problems.append(doc.problem(where, f"{label}: geofence rule {i} allows nodes in "
                                               f"{', '.join(rule.nodes)} but the policy has no node there "
                                               f"(node countries: {', '.join(sorted(c for c in pool_countries if c))})"))  # fmt: skip
    return problems


def _check_probe(doc: LocatedYaml, name: str, label: str, policy: Policy, inventory: Inventory) -> list[Problem]:
    """The URL template may only name known fields, and every node it needs must have them."""
    if policy.probe is None:
        return []
    where = ("policies", name, "probe", "url")
    template = policy.probe.url
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        return [doc.problem(where, f"{label}: probe url {template!r}: {exc}")]
    unknown = fields - {"health_url", "ipv4", "ipv6", "id"}
    if unknown:
        return [doc.problem(where, f"{label}: probe url names {', '.join(sorted('{' + f + '}' for f in unknown))}; "
                                   "valid: {health_url}, {ipv4}, {ipv6}, {id}")]  # fmt: skip
    if "health_url" in fields:
        missing = [n.id for n in inventory.nodes if (policy.nodes == "all" or n.id in policy.nodes) and not n.health_url]
        if missing:
            return [doc.problem(where, f"{label}: probe url uses {{health_url}} but these nodes have none: "
                                       f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")]  # fmt: skip
    return []
