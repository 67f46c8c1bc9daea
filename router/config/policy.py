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

Instead of ``nodes``, octoDNS-style pools and rules (see docs/policy-format.md)::

        pools:
          everywhere: {nodes: [all]}
          pt: {fallback: everywhere, nodes: [country:PT]}   # ids or site: metro: country: asn:
        rules:                                              # first match wins
          - {geos: [EU-PT], pool: pt}                       # also asns: [3243]
          - pool: everywhere                                # the catch-all, last

A fenced group fails open inside its fence: if every node its fence allows is down, it
is answered with those nodes as if healthy, never with a node outside the fence.
"""

from __future__ import annotations

import difflib
import string
from typing import Annotated, Literal

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.zone
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from router.config._validate import validate_item
from router.config._yaml import LocatedYaml, YamlPath, unsorted_keys
from router.config.geos import geo_countries, parse_geo
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


class Pool(BaseModel):
    """A named set of nodes (octoDNS dynamic-record pools), and the pool to use when it is down."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fallback: str | None = None
    nodes: tuple[str, ...]  # node ids and selectors: site:ID metro:NAME country:CC asn:N all


class Rule(BaseModel):
    """Clients a pool is for (octoDNS dynamic-record rules); no geos and no asns: everyone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    asns: tuple[Annotated[int, Field(ge=0, le=4_294_967_295)], ...] | None = None
    geos: tuple[str, ...] | None = None  # EU (a continent) or EU-ES (a country)
    pool: str

    @property
    def catch_all(self) -> bool:
        return self.asns is None and self.geos is None

    @property
    def clients(self) -> str:
        """Whom the rule matches, in words: ``geos EU-PT and asns 3243``, or ``catch-all``."""
        parts = []
        if self.geos is not None:
            parts.append(f"geos {', '.join(self.geos)}")
        if self.asns is not None:
            parts.append(f"asns {', '.join(map(str, self.asns))}")
        return " and ".join(parts) or "catch-all"

    def matches(self, country: str, asn: int) -> bool:
        """Whether a client in ``country`` (ISO code) and ``asn`` is one this rule is for."""
        countries = self.countries()
        if countries is not None and country not in countries:
            return False
        return self.asns is None or asn in self.asns

    def countries(self) -> frozenset[str] | None:
        """The client countries this rule matches; None: any country."""
        if self.geos is None:
            return None
        out: set[str] = set()
        for code in self.geos:
            parsed = parse_geo(code)
            if isinstance(parsed, tuple):
                out |= geo_countries(*parsed)
        return frozenset(out)


class Policy(BaseModel):
    """How one steered name picks nodes for a client group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    answer_count: int = Field(ge=1, le=8)
    default_site: str
    expected_peak_gbps: float = Field(default=0.0, ge=0, le=1e7)
    geofence: tuple[GeofenceRule, ...] = ()
    headroom: float = Field(default=0.8, gt=0, le=1)
    load_penalty_ms: float = Field(default=0.0, ge=0, le=10_000)
    nodes: Literal["all"] | tuple[str, ...] | None = None  # one pool for every client
    onnet_bonus_ms: float = Field(default=0.0, ge=0, le=10_000)
    pools: dict[str, Pool] = Field(default_factory=dict)  # or named pools, chosen by rules
    probe: PolicyProbe | None = None
    rules: tuple[Rule, ...] = ()
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
            if isinstance(policy.nodes, tuple):
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
            pool_problems = _check_pools(doc, name, label, policy, inventory)
            problems += pool_problems
            if pool_problems:
                policies[str(name)] = policy
                continue
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
    members = policy_node_ids(policy, inventory)
    pool = [n for n in inventory.nodes if n.id in members]
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


def _check_probe(
    doc: LocatedYaml, name: str, label: str, policy: Policy, inventory: Inventory
) -> list[Problem]:
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
        members = policy_node_ids(policy, inventory)
        missing = [n.id for n in inventory.nodes if n.id in members and not n.health_url]
        if missing:
            return [doc.problem(where, f"{label}: probe url uses {{health_url}} but these nodes have none: "
                                       f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")]  # fmt: skip
    return []


SELECTORS = ("site", "metro", "country", "asn")


def select_nodes(entry: str, inventory: Inventory) -> tuple[str, ...] | str:
    """The node ids one pool entry names, or the operator's error message.

    An entry is a node id, ``all``, or a selector: ``site:ID``, ``metro:NAME``,
    ``country:CC`` (the node's site's country) or ``asn:N`` (the ISP the node sits in).
    """
    nodes = inventory.nodes
    if entry == "all":
        return tuple(n.id for n in nodes)
    kind, sep, value = entry.partition(":")
    if not sep:
        if any(n.id == entry for n in nodes):
            return (entry,)
        return f'unknown node "{entry}"{_close(entry, [n.id for n in nodes], "node ids")}'
    sites = {s.id: s for s in inventory.sites}
    if kind == "site":
        choices = sorted(sites)
        picked = tuple(n.id for n in nodes if n.site == value)
    elif kind == "metro":
        choices = sorted({s.metro for s in inventory.sites})
        picked = tuple(n.id for n in nodes if sites[n.site].metro == value)
    elif kind == "country":
        choices = sorted({s.country for s in inventory.sites})
        picked = tuple(n.id for n in nodes if sites[n.site].country == value)
    elif kind == "asn":
        choices = sorted({str(n.asn) for n in nodes}, key=int)
        picked = tuple(n.id for n in nodes if str(n.asn) == value.removeprefix("AS"))
    else:
        return f'unknown selector "{kind}:" in "{entry}" (valid: a node id, all, {", ".join(k + ":" for k in SELECTORS)})'
    if not picked:
        return f'"{entry}" matches no node{_close(value, choices, kind + " values")}'
    return picked


def _close(value: str, choices: list[str], what: str) -> str:
    near = difflib.get_close_matches(value, choices, n=1)
    if near:
        return f' (did you mean "{near[0]}"?)'
    shown = ", ".join(choices[:12]) + (" ..." if len(choices) > 12 else "")
    return f" (valid {what}: {shown})"


def pool_members(policy: Policy, inventory: Inventory) -> dict[str, frozenset[str]]:
    """Each pool's node ids (entries that name nothing are left out: check reports them)."""
    out: dict[str, frozenset[str]] = {}
    for pool_name, pool in policy.pools.items():
        ids: set[str] = set()
        for entry in pool.nodes:
            picked = select_nodes(str(entry), inventory)
            if isinstance(picked, tuple):
                ids.update(picked)
        out[pool_name] = frozenset(ids)
    return out


def policy_node_ids(policy: Policy, inventory: Inventory) -> frozenset[str]:
    """Every node the policy may answer with (the union of its pools)."""
    if policy.nodes == "all":
        return frozenset(n.id for n in inventory.nodes)
    if isinstance(policy.nodes, tuple):
        return frozenset(policy.nodes)
    return frozenset().union(*pool_members(policy, inventory).values())


def fallback_chain(policy: Policy, first: str) -> list[str]:
    """``first`` and its fallbacks in order (stops before a pool would repeat)."""
    chain: list[str] = []
    pool: str | None = first
    while pool is not None and pool in policy.pools and pool not in chain:
        chain.append(pool)
        pool = policy.pools[pool].fallback
    return chain


def _covers(earlier: Rule, later: Rule) -> bool:
    """Every client ``later`` matches is matched by ``earlier`` too."""
    a, b = earlier.countries(), later.countries()
    if a is not None and (b is None or not b <= a):
        return False
    if earlier.asns is not None and (
        later.asns is None or not set(later.asns) <= set(earlier.asns)
    ):
        return False
    return True


def _covered_together(
    rules: tuple[Rule, ...] | list[Rule], i: int, earlier: list[int]
) -> list[int]:
    """The ``earlier`` rules that between them match every client rule ``i`` matches (a
    client is a country and an ASN), or [] when some client of rule ``i`` gets through.

    Per ASN of rule ``i`` (or, for a rule of any ASN, per ASN no rule names: only rules of
    any ASN match those), the countries the earlier rules matching that ASN take must hold
    all of rule ``i``'s countries."""
    rule = rules[i]
    mine = rule.countries()  # None: every country
    used: set[int] = set()
    for asn in rule.asns if rule.asns is not None else (None,):
        matching = [
            k
            for k in earlier
            if rules[k].asns is None or (asn is not None and asn in rules[k].asns)
        ]
        anywhere = [k for k in matching if rules[k].countries() is None]
        if anywhere:
            used.add(anywhere[0])
            continue
        covered = frozenset().union(*(rules[k].countries() or frozenset() for k in matching))
        if mine is None or not mine <= covered:
            return []
        used.update(k for k in matching if (rules[k].countries() or frozenset()) & mine)
    return sorted(used)


def _describe_rule(rule: Rule) -> str:
    return f"{rule.clients} -> pool {rule.pool}"


def _check_pools(
    doc: LocatedYaml, name: str, label: str, policy: Policy, inventory: Inventory
) -> list[Problem]:
    """Pools, rules and fallbacks: every problem, located, saying what would be valid."""
    base = ("policies", name)
    problems: list[Problem] = []

    def add(path: YamlPath, message: str) -> None:
        problems.append(doc.problem(base + path, f"{label}: {message}"))

    if policy.nodes is not None:
        if not policy.pools and not policy.rules:
            return problems
        add(
            ("nodes",), "give either nodes (one pool for every client) or pools and rules, not both"
        )
    if not policy.pools and not policy.rules:
        add(
            (),
            'missing required field "nodes" (all, or a list of node ids), or "pools" and "rules"',
        )
        return problems
    if not policy.pools:
        add(("rules",), 'rules need "pools": name -> {nodes: [...], fallback: POOL}')
    if not policy.rules:
        add(
            ("pools",),
            'pools need "rules": an ordered list of {geos, asns, pool}, the last one a catch-all',
        )
    defined = ", ".join(policy.pools) or "none"
    for pool_name, pool in policy.pools.items():
        where = ("pools", pool_name)
        if not pool.nodes:
            add(
                where + ("nodes",),
                f'pool "{pool_name}" has no nodes (give node ids or selectors: site:ID, metro:NAME, country:CC, asn:N)',
            )
        seen: set[str] = set()
        for i, entry in enumerate(pool.nodes):
            picked = select_nodes(str(entry), inventory)
            if isinstance(picked, str):
                add(where + ("nodes", i), f'pool "{pool_name}": {picked}')
            if entry in seen:
                add(where + ("nodes", i), f'pool "{pool_name}" lists "{entry}" twice')
            seen.add(entry)
        if pool.fallback is not None and pool.fallback not in policy.pools:
            add(
                where + ("fallback",),
                f'pool "{pool_name}": fallback to undefined pool "{pool.fallback}" (defined: {defined})',
            )
    # Fallback loops: each cycle once, at the fallback of its first pool in file order.
    reported: set[frozenset[str]] = set()
    for pool_name in policy.pools:
        path: list[str] = []
        current: str | None = pool_name
        while current is not None and current in policy.pools and current not in path:
            path.append(current)
            current = policy.pools[current].fallback
        if current is None or current not in path:
            continue
        cycle = path[path.index(current) :]
        if frozenset(cycle) in reported:
            continue
        reported.add(frozenset(cycle))
        first = min(cycle, key=list(policy.pools).index)
        ring = cycle[cycle.index(first) :] + cycle[: cycle.index(first)] + [first]
        add(
            ("pools", first, "fallback"),
            f"fallback loop: {' -> '.join(ring)} (a chain of fallbacks must end in a pool without one)",
        )

    catch_all_at: int | None = None
    valid: list[int] = []  # rules whose geos and asns could be read, in order
    for i, rule in enumerate(policy.rules):
        where = ("rules", i)
        number = f"rule {i + 1}"
        if rule.pool not in policy.pools:
            add(where + ("pool",), f'{number}: undefined pool "{rule.pool}" (defined: {defined})')
        bad_geo = False
        for key in ("geos", "asns"):
            if getattr(rule, key) == ():
                add(
                    where + (key,),
                    f"{number}: {key} is empty, so the rule matches no client (leave {key} out to match any)",
                )
                bad_geo = True
        for j, code in enumerate(rule.geos or ()):
            parsed = parse_geo(code)
            if isinstance(parsed, str):
                add(where + ("geos", j), f"{number}: {parsed}")
                bad_geo = True
        if bad_geo:
            continue  # what it matches is unknown: no shadowing verdict
        if catch_all_at is not None:
            add(where, f"{number} ({_describe_rule(rule)}) never matches: the catch-all rule {catch_all_at + 1} "
                       f"at line {doc.line(base + ('rules', catch_all_at))} takes every client first")  # fmt: skip
            continue
        for k in range(i):
            if _covers(policy.rules[k], rule):
                add(where, f"{number} ({_describe_rule(rule)}) never matches: every client it matches is taken "
                           f"first by rule {k + 1} at line {doc.line(base + ('rules', k))} ({_describe_rule(policy.rules[k])})")  # fmt: skip
                break
        else:
            together = _covered_together(policy.rules, i, valid)
            if together:
                lines = ", ".join(
                    f"{k + 1} (line {doc.line(base + ('rules', k))})" for k in together
                )
                what = (
                    "countries"
                    if rule.asns is None
                    else "clients (every country and ASN it matches)"
                )
                add(
                    where,
                    f"{number} ({_describe_rule(rule)}) never matches: rules {lines} take all its {what} first",
                )
        valid.append(i)
        if rule.catch_all:
            if i != len(policy.rules) - 1:
                add(
                    where,
                    f"{number} is a catch-all (no geos, no asns) but not the last rule: the rules after it never match; move it to the end",
                )
            catch_all_at = i
    if policy.rules and catch_all_at is None:
        last = policy.rules[-1]
        add(("rules",), "no catch-all rule: clients no rule matches would have no pool; end the rules with one "
                        f'without geos and asns, e.g. "- pool: {last.pool}"')  # fmt: skip

    used = {pool for rule in policy.rules for pool in fallback_chain(policy, rule.pool)}
    for pool_name in policy.pools:
        if pool_name not in used:
            add(
                ("pools", pool_name),
                f'pool "{pool_name}" is never used: no rule names it and it is not the fallback of a pool a rule uses',
            )
    if not problems:
        problems += _check_rule_fences(doc, base, label, policy, inventory)
    return problems


def _check_rule_fences(
    doc: LocatedYaml, base: YamlPath, label: str, policy: Policy, inventory: Inventory
) -> list[Problem]:
    """A fenced client must find a node inside its fence somewhere along its rule's chain."""
    problems: list[Problem] = []
    site_country = {s.id: s.country for s in inventory.sites}
    country_of = {n.id: site_country[n.site] for n in inventory.nodes}
    members = pool_members(policy, inventory)
    taken: set[str] = set()  # countries earlier rules take whole (geos only, no asns)
    for i, rule in enumerate(policy.rules):
        chain = fallback_chain(policy, rule.pool)
        reach = {country_of[n] for pool in chain for n in members[pool]}
        countries = rule.countries()
        for f, fence in enumerate(policy.geofence):
            clients = set(fence.clients) if countries is None else set(fence.clients) & countries
            clients -= taken
            if clients and not reach & set(fence.nodes):
                problems.append(doc.problem(base + ("rules", i), (
                    f"{label}: rule {i + 1} sends clients in {', '.join(sorted(clients))} to pool "
                    f"{' then '.join(chain)}, but geofence rule {f} allows them only nodes in {', '.join(fence.nodes)} "
                    f"and none of these pools has a node there (pool countries: {', '.join(sorted(reach))})")))  # fmt: skip
        if rule.asns is None and countries is not None:
            taken |= countries
    return problems
