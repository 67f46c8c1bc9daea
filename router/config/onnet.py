"""On-net only nodes (nodes.yaml ``serves: on-net``): every client group must keep a node.

A node that serves only its ISP's clients is a hard limit like the geofence: a client group
whose every candidate node (the policy's nodes, or its rule's pool chain, inside its geofence)
is on-net only for other networks would have nothing to be answered with. ``router check``
reports such groups as errors, and a config with them is never loaded.
"""

from __future__ import annotations

from router.config._yaml import LocatedYaml
from router.config.nodes import Inventory
from router.config.policy import Policy, fallback_chain, policy_node_ids, pool_members
from router.config.problems import Problem
from router.geo.clientmap import Groups

# Groups without a node named per policy: enough to act on, short enough to read.
MAX_LISTED = 5


def check_onnet_reach(
    doc: LocatedYaml, name: str, label: str, policy: Policy, inventory: Inventory, groups: Groups
) -> list[Problem]:
    served = inventory.served
    if all(asns is None for asns in served.values()):
        return []
    site_country = {s.id: s.country for s in inventory.sites}
    node_country = {n.id: site_country[n.site] for n in inventory.nodes}
    default_country = site_country.get(policy.default_site, "")
    members = pool_members(policy, inventory) if policy.pools else {}
    everyone = policy_node_ids(policy, inventory)

    # Groups of one (country, ASN) have the same candidates: judge each pair once.
    pairs: dict[tuple[str, int], list[int]] = {}
    for g in range(len(groups)):
        # Clients of no known country are placed in the default site's country (as the
        # steering model does), so they meet that country's geofence and rules.
        country = groups.country[g] or default_country
        pairs.setdefault((country, int(groups.asn[g])), []).append(g)

    stranded: list[str] = []
    count = 0
    # Listed: clients of unknown networks first (every resolver without ECS is one), then
    # the pairs with the most groups.
    for (country, asn), group_ids in sorted(
        pairs.items(), key=lambda kv: (kv[0][1] != 0, -len(kv[1]), kv[0])
    ):
        where = "the policy's nodes"
        candidates = everyone
        if policy.pools:
            rule = next(r for r in policy.rules if r.matches(country, asn))
            chain = fallback_chain(policy, rule.pool)
            candidates = frozenset(n for pool in chain for n in members[pool])
            where = f"pool {' then '.join(chain)}"
        fence = next((f for f in policy.geofence if country in f.clients), None)
        if fence is not None:
            candidates = frozenset(n for n in candidates if node_country[n] in fence.nodes)
            where += f" inside the geofence ({', '.join(fence.nodes)})"
        if any(served[n] is None or asn in served[n] for n in candidates):
            continue
        count += len(group_ids)
        who = f"AS{asn}" if asn else "clients of unknown networks (private addresses, no ECS)"
        stranded.append(f"{who} in {country or '??'} ({len(group_ids)} group(s), e.g. "
                        f"{groups.describe(group_ids[0])}): every node of {where} is on-net only "
                        "for other networks")  # fmt: skip
    if not stranded:
        return []
    listed = "; ".join(stranded[:MAX_LISTED])
    if len(stranded) > MAX_LISTED:
        listed += f"; and {len(stranded) - MAX_LISTED} more (country, ASN) pairs"
    return [doc.problem(("policies", name), (
        f"{label}: {count} client group(s) have no node that may answer them: {listed}. Give them "
        "a node that serves any client (serves: any, the default), or list their ASN in an on-net "
        "node's serves_asns"))]  # fmt: skip
