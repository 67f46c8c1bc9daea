"""Pools, rules and fallbacks in policy files; the admin_state file; the policy format doc.

A policy with ``pools:`` and ``rules:`` (octoDNS dynamic-record style) answers each client
group from the pool of its first matching rule, down the pool's fallback chain while every
node of a pool is down, and fails open in the first pool when the whole chain is down. These
tests load real policy files over a copy of the sample deployment and plan with the real
planner; one starts the real router and asks it over the wire.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import dns.edns
import dns.message
import numpy as np
import pytest

from loadtest.analyze import Oracle
from router.config import ConfigError, load_deployment
from router.config.admin_state import parse_admin_state
from router.config.policy import GeofenceRule, Policy, PolicyProbe, Pool, Rule
from router.explain import explain
from router.health import NodeHealth
from router.steering import compile_model
from router.steering.build import Planner
from tests.conftest import make_deployment, start_router
from tests.test_router_server import answer_ips, api

REPO = Path(__file__).resolve().parents[1]

VIDEO = """\
  video:
    answer_count: 2
    default_site: mad-espanix
    nodes: all
    ttl: 20
    when_all_down: fail_open
"""

# MEO's clients to MEO's nodes, then any Portuguese node, then Paris; other Portuguese
# clients to Portugal, then Paris; everyone else to Spain, then Paris.
POOLED = """\
names:
  video: video
  www: web
policies:
{video}  web:
    answer_count: 2
    default_site: mad-espanix
{geofence}    pools:
      es:
        fallback: paris
        nodes: [country:ES]
      meo:
        fallback: pt
        nodes: [asn:3243]
      paris:
        nodes: [site:par-pop]
      pt:
        fallback: paris
        nodes: [country:PT]
    rules:
      - {{asns: [3243], geos: [EU-PT], pool: meo}}
      - {{geos: [EU-PT], pool: pt}}
      - pool: es
    ttl: 30
    when_all_down: fail_open
"""

MEO = ["meo-lis-1", "meo-opo-1"]
PT = MEO + ["nos-lis-1", "nos-opo-1", "vdf-pt-lis-1", "ix-lis-1"]
PARIS = ["pop-par-1"]


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deployment(tmp_path_factory.mktemp("pools"))


def write(zones: Path, text: str, name: str = "cdn.example.policy.yaml") -> None:
    (zones / name).write_text(text)


def compiled(zones: Path, text: str):  # noqa: ANN201
    write(zones, text)
    deployment = load_deployment(zones)
    return deployment, compile_model(deployment)


def problems(zones: Path, text: str, name: str = "cdn.example.policy.yaml") -> list[str]:
    write(zones, text, name)
    try:
        load_deployment(zones)
    except ConfigError as exc:
        return [f"{p.line}: {p.message}" for p in exc.problems]
    finally:
        (zones / name).unlink()
        shutil.copy(REPO / "zones" / "cdn.example.policy.yaml", zones / "cdn.example.policy.yaml")
    return []


def group_of(model, country: str, asn: int) -> int:  # noqa: ANN001
    groups = model.client_map.groups
    found = [g for g in range(len(groups)) if groups.country[g] == country and groups.asn[g] == asn]
    assert found, (country, asn)
    return max(found, key=lambda g: model.group_weight[g])


def states(model, down: list[str]) -> np.ndarray:  # noqa: ANN001
    health = NodeHealth(model.node_ids)
    for node in down:
        health.set_admin_state(node, "down")
    return health.states()


def answered(model, table, policy: int, group: int) -> set[str]:  # noqa: ANN001
    return {model.node_ids[n] for nodes, _ in table.entries(policy, group) for n in nodes}


def web(model) -> int:  # noqa: ANN001
    return next(i for i, p in enumerate(model.policies) if p.name == "web")


# -- steering --------------------------------------------------------------------------


def test_first_matching_rule_picks_the_pool(zones: Path) -> None:
    _, model = compiled(zones, POOLED.format(video=VIDEO, geofence=""))
    p = web(model)
    routing = model.policies[p].routing
    meo, nos, tef = (
        group_of(model, "PT", 3243),
        group_of(model, "PT", 2860),
        group_of(model, "ES", 3352),
    )
    assert [int(routing.group_rule[g]) for g in (meo, nos, tef)] == [0, 1, 2]
    table = Planner(model).build(states(model, []), None, generation=1)
    assert answered(model, table, p, meo) <= set(MEO)
    assert answered(model, table, p, nos) <= set(PT)
    assert not answered(model, table, p, tef) & set(PT + PARIS)
    # The video policy (nodes: all) still answers MEO's clients as before: on-net first.
    video = next(i for i, q in enumerate(model.policies) if q.name == "video")
    assert model.policies[video].routing is None
    assert answered(model, table, video, meo) & set(MEO)


def test_fallback_when_every_node_of_a_pool_is_down(zones: Path) -> None:
    _, model = compiled(zones, POOLED.format(video=VIDEO, geofence=""))
    p, meo = web(model), group_of(model, "PT", 3243)
    planner = Planner(model)
    table = planner.build(states(model, MEO), None, generation=1)
    got = answered(model, table, p, meo)
    assert got and got <= set(PT) - set(MEO)  # meo -> pt
    table = planner.build(states(model, PT), None, generation=2)
    assert answered(model, table, p, meo) == set(PARIS)  # meo -> pt -> paris
    # One MEO node left: still the MEO pool (a pool is down only when all of it is).
    table = planner.build(states(model, ["meo-lis-1"]), None, generation=3)
    assert answered(model, table, p, meo) == {"meo-opo-1"}


def test_drained_pool_falls_back_while_the_fallback_has_a_node_up(zones: Path) -> None:
    _, model = compiled(zones, POOLED.format(video=VIDEO, geofence=""))
    p, meo = web(model), group_of(model, "PT", 3243)
    health = NodeHealth(model.node_ids)
    for node in MEO:
        health.set_admin_state(node, "drain")
    table = Planner(model).build(health.states(), None, generation=1)
    assert answered(model, table, p, meo) <= set(PT) - set(MEO)


def test_whole_chain_down_fails_open_in_the_first_pool(zones: Path) -> None:
    _, model = compiled(zones, POOLED.format(video=VIDEO, geofence=""))
    p = web(model)
    meo, nos = group_of(model, "PT", 3243), group_of(model, "PT", 2860)
    table = Planner(model).build(states(model, PT + PARIS), None, generation=1)
    # Spain is up, but no pool of their chains is in Spain: answered as if healthy, never empty.
    assert answered(model, table, p, meo) == set(MEO)
    assert answered(model, table, p, nos) and answered(model, table, p, nos) <= set(PT)


def test_geofence_intersects_the_pools_and_is_never_crossed(zones: Path) -> None:
    fence = "    geofence:\n      - {clients: [PT], nodes: [PT]}\n"
    text = POOLED.format(video=VIDEO, geofence=fence).replace(
        "      - pool: es\n", "      - pool: es\n", 1
    )
    _, model = compiled(zones, text)
    p, meo = web(model), group_of(model, "PT", 3243)
    planner = Planner(model)
    # meo -> pt -> paris, but Paris is outside the fence: with Portugal down, fail open in MEO.
    table = planner.build(states(model, PT), None, generation=1)
    assert answered(model, table, p, meo) == set(MEO)
    # A rule sending fenced clients to a pool with no node inside the fence skips that pool.
    text = (
        "names:\n  www: web\npolicies:\n  web:\n    answer_count: 2\n    default_site: mad-espanix\n"
        f"{fence}    pools:\n      es:\n        fallback: pt\n        nodes: [country:ES]\n"
        "      pt:\n        nodes: [country:PT]\n    rules:\n      - pool: es\n    ttl: 30\n    when_all_down: fail_open\n"
    )
    _, model = compiled(zones, text)
    p = web(model)
    table = Planner(model).build(states(model, []), None, generation=1)
    assert answered(model, table, p, meo) <= set(PT)  # es (no PT node) -> pt
    assert not answered(model, table, p, group_of(model, "ES", 3352)) & set(PT)


def test_a_node_down_that_empties_a_pool_plans_afresh_and_matches_a_fresh_build(
    zones: Path,
) -> None:
    _, model = compiled(zones, POOLED.format(video=VIDEO, geofence=""))
    p = web(model)
    demand = model.group_weight * 400.0

    def planner() -> Planner:
        made = Planner(model)
        made.set_demand(p, demand)
        return made

    incremental = planner()
    incremental.build(states(model, []), None, generation=1)
    incremental.node_down(
        model.node_ids.index("meo-lis-1"), states(model, ["meo-lis-1"]), None, generation=2
    )
    assert incremental.last_kind == "incremental"  # the MEO pool still has a node: a repair
    after = incremental.node_down(
        model.node_ids.index("meo-opo-1"), states(model, MEO), None, generation=3
    )
    assert incremental.last_kind == "full"  # the MEO pool emptied: its clients move pools
    fresh = planner().build(states(model, MEO), None, generation=3)
    for q in range(len(model.policies)):
        for g in range(len(model.group_weight)):
            assert after.entries(q, g) == fresh.entries(q, g)
    assert answered(model, after, p, group_of(model, "PT", 3243)) <= set(PT) - set(MEO)


def test_loadtest_oracle_agrees_with_the_router_on_pools_and_fences(zones: Path) -> None:
    fence = "    geofence:\n      - {clients: [PT], nodes: [PT]}\n"
    _, model = compiled(zones, POOLED.format(video=VIDEO, geofence=fence))
    oracle = Oracle(model, {}, {}, {})
    rng = np.random.default_rng(7)
    n = len(model.node_ids)
    cases = [np.ones(n, bool), ~np.isin(model.node_ids, MEO), ~np.isin(model.node_ids, PT),
             ~np.isin(model.node_ids, PT + PARIS)] + [rng.random(n) < 0.5 for _ in range(6)]  # fmt: skip
    for available in cases:
        state = np.where(available, 0, 2).astype(np.int8)
        for p, policy in enumerate(model.policies):
            for g in range(0, len(model.group_weight), 7):
                assert (oracle.allowed(p, g, available) == policy.group_allowed(g, state)).all(), (
                    p,
                    g,
                )


def test_pools_keep_portuguese_and_french_clients_at_home(zones: Path) -> None:
    # The sample's own web policy: FR and PT pools.
    _, model = compiled(zones, (REPO / "zones" / "cdn.example.policy.yaml").read_text())
    p = web(model)
    table = Planner(model).build(states(model, []), None, generation=1)
    assert answered(model, table, p, group_of(model, "PT", 2860)) <= set(PT)
    french = [
        g for g in range(len(model.group_weight)) if model.client_map.groups.country[g] == "FR"
    ]
    assert french and all(
        table.nodes_for(p, g)[0] == model.node_ids.index("pop-par-1") for g in french
    )
    assert all(
        answered(model, table, p, g) == {"pop-par-1", "ix-mad-1"} for g in french
    )  # answer_count 2


# -- router check ----------------------------------------------------------------------

BROKEN = """\
names:
  video: video
  www: web
policies:
  video:
    answer_count: 2
    default_site: mad-espanix
    geofence:
      - {clients: [PT], nodes: [PT]}
    pools:
      es:
        nodes: [country:ES]
    rules:
      - pool: es
    ttl: 20
    when_all_down: fail_open
  web:
    answer_count: 2
    default_site: mad-espanix
    nodes: all
    pools:
      a:
        fallback: b
        nodes: [tef-mad1, site:nowhere, metro:Lisboa, planet:mars]
      b:
        fallback: c
        nodes: [asn:3352, asn:3352]
      c:
        fallback: a
        nodes: []
      d:
        fallback: zz
        nodes: [all]
    rules:
      - {geos: [EU], pool: a}
      - {geos: [EU-ES, EU-PT], pool: b}
      - {geos: [EU-ES], pool: d}
      - {asns: [3352], geos: [ES, NA-US-CA, EU-US], pool: c}
      - pool: a
      - {asns: [], pool: nope}
    ttl: 30
    when_all_down: fail_open
"""


def test_check_reports_every_pool_and_rule_problem_with_its_line(zones: Path) -> None:
    video, web_ = 'policy "video": ', 'policy "web": '
    assert problems(zones, BROKEN) == sorted([
        f"14: {video}rule 1 sends clients in PT to pool es, but geofence rule 0 allows them only nodes in PT "
        "and none of these pools has a node there (pool countries: ES)",
        f"20: {web_}give either nodes (one pool for every client) or pools and rules, not both",
        f"23: {web_}fallback loop: a -> b -> c -> a (a chain of fallbacks must end in a pool without one)",
        f'24: {web_}pool "a": "metro:Lisboa" matches no node (did you mean "Lisbon"?)',
        f'24: {web_}pool "a": "site:nowhere" matches no node (valid site values: lis-gigapix, mad-espanix, meo-lis, '
        "meo-opo, nos-lis, nos-opo, ora-es-bcn, ora-es-bio, ora-es-mad, par-pop, tef-bcn, tef-mad ...)",
        f'24: {web_}pool "a": unknown node "tef-mad1" (did you mean "tef-mad-1"?)',
        f'24: {web_}pool "a": unknown selector "planet:" in "planet:mars" (valid: a node id, all, site:, metro:, country:, asn:)',
        f'27: {web_}pool "b" lists "asn:3352" twice',
        f'30: {web_}pool "c" has no nodes (give node ids or selectors: site:ID, metro:NAME, country:CC, asn:N)',
        f'32: {web_}pool "d": fallback to undefined pool "zz" (defined: a, b, c, d)',
        f"36: {web_}rule 2 (geos EU-ES, EU-PT -> pool b) never matches: every client it matches is taken first "
        "by rule 1 at line 35 (geos EU -> pool a)",
        f"37: {web_}rule 3 (geos EU-ES -> pool d) never matches: every client it matches is taken first by rule 1 "
        "at line 35 (geos EU -> pool a)",
        f'38: {web_}rule 4: geo "ES": geos start with the continent: write EU-ES',
        f'38: {web_}rule 4: geo "EU-US": US is in North America: write NA-US',
        f'38: {web_}rule 4: geo "NA-US-CA": subdivisions are not supported (the client map places clients by '
        "country only): write NA-US",
        f"39: {web_}rule 5 is a catch-all (no geos, no asns) but not the last rule: the rules after it never match; "
        "move it to the end",
        f"40: {web_}rule 6: asns is empty, so the rule matches no client (leave asns out to match any)",
        f'40: {web_}rule 6: undefined pool "nope" (defined: a, b, c, d)',
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("    pools:\n      a:\n        nodes: [all]\n      b:\n        nodes: [all]\n    rules:\n      - {geos: [EU-PT], pool: a}\n",
         ['10: policy "web": pool "b" is never used: no rule names it and it is not the fallback of a pool a rule uses',
          '12: policy "web": no catch-all rule: clients no rule matches would have no pool; end the rules with one '
          'without geos and asns, e.g. "- pool: a"']),
        ("    pools:\n      a:\n        nodes: [all]\n    rules:\n      - {geos: [EU-ES], pool: a}\n"
         "      - {geos: [EU-PT], pool: a}\n      - {geos: [EU-PT, EU-ES], pool: a}\n      - pool: a\n",
         ['13: policy "web": rule 3 (geos EU-PT, EU-ES -> pool a) never matches: rules 1 (line 11), 2 (line 12) '
          "take all its countries first"]),
        ("    pools:\n      a:\n        nodes: [all]\n    rules:\n      - {asns: [3352, 12430], pool: a}\n"
         "      - {asns: [3352], geos: [EU-ES], pool: a}\n      - {geos: [EU-ES], pool: a}\n      - pool: a\n",
         ['12: policy "web": rule 2 (geos EU-ES and asns 3352 -> pool a) never matches: every client it matches is '
          "taken first by rule 1 at line 11 (asns 3352, 12430 -> pool a)"]),
        ("    pools:\n      a:\n        nodes: [all]\n    rules:\n      - {asns: [3352], pool: a}\n"
         "      - {asns: [12479], geos: [EU-ES, EU-FR], pool: a}\n      - {asns: [3352, 12479], geos: [EU-ES, EU-FR], pool: a}\n"
         "      - {asns: [3352, 12479], geos: [EU-ES, EU-PT], pool: a}\n      - pool: a\n",
         ['13: policy "web": rule 3 (geos EU-ES, EU-FR and asns 3352, 12479 -> pool a) never matches: rules 1 (line 11), '
          "2 (line 12) take all its clients (every country and ASN it matches) first"]),
        ("    pools:\n      a:\n        nodes: [all]\n    rules:\n      - {asns: [3352], geos: [EU-ES], pool: a}\n"
         "      - {asns: [3352], geos: [EU-PT], pool: a}\n      - {asns: [3352], geos: [EU-ES, EU-PT], pool: a}\n"
         "      - {asns: [3352, 12479], geos: [EU-PT], pool: a}\n      - pool: a\n",
         ['13: policy "web": rule 3 (geos EU-ES, EU-PT and asns 3352 -> pool a) never matches: rules 1 (line 11), '
          "2 (line 12) take all its clients (every country and ASN it matches) first"]),
        ("    rules:\n      - pool: a\n",
         ['7: policy "web": rules need "pools": name -> {nodes: [...], fallback: POOL}',
          '8: policy "web": rule 1: undefined pool "a" (defined: none)']),
        ("", ['4: policy "web": missing required field "nodes" (all, or a list of node ids), or "pools" and "rules"']),
    ],
    ids=["no-catch-all-and-unused-pool", "shadowed-by-several-geo-rules", "shadowed-by-asns",
         "shadowed-by-an-asn-rule-and-a-geo-rule", "shadowed-by-two-rules-of-one-asn", "rules-without-pools",
         "neither-nodes-nor-pools"],
)  # fmt: skip
def test_check_pool_mistakes(zones: Path, policy: str, expected: list[str]) -> None:
    text = f"names:\n  www: web\npolicies:\n  web:\n    answer_count: 2\n    default_site: mad-espanix\n{policy}    ttl: 30\n    when_all_down: fail_open\n"
    assert problems(zones, text) == expected


def test_a_pooled_sample_is_reported_ok_by_router_check(zones: Path) -> None:
    assert problems(zones, POOLED.format(video=VIDEO, geofence="")) == []


# -- the admin_state file -------------------------------------------------------------------


def test_admin_state_file_is_parsed_onto_the_deployment(zones: Path) -> None:
    (zones / "admin_state").write_text(
        '# maintenance CHG-1\ntef-mad-2 => DOWN\n  meo-lis-1=>drain   # gently\n"nos-lis-1" => UP\n'
    )
    try:
        deployment = load_deployment(zones)
    finally:
        (zones / "admin_state").unlink()
    assert deployment.admin_state == {"tef-mad-2": "down", "meo-lis-1": "drain", "nos-lis-1": "up"}
    assert load_deployment(zones).admin_state == {}


def test_admin_state_file_problems_are_all_reported_with_lines(zones: Path) -> None:
    (zones / "admin_state").write_text(
        "tef-mad-1 => DOWN\ntef-mad1 => DOWN\ntef-mad-1 => UP\nnos-lis-1 => SICK\nnos-lis-1/web => DOWN\n"
        "just words\nnos-opo-1 => DOWN/60\nzzzzzz => DOWN\n"
    )
    try:
        with pytest.raises(ConfigError) as raised:
            load_deployment(zones)
    finally:
        (zones / "admin_state").unlink()
    got = [f"{Path(p.path).name}:{p.line}: {p.message}" for p in raised.value.problems]
    assert got == [
        'admin_state:2: unknown node "tef-mad1" (not in nodes.yaml; did you mean "tef-mad-1"?)',
        'admin_state:3: node "tef-mad-1" is listed twice (first at line 1)',
        'admin_state:4: node "nos-lis-1": unknown state "SICK" (valid: UP, DOWN, DRAIN)',
        'admin_state:5: "nos-lis-1/web": per-policy entries (node/policy) are not supported: name the node alone '
        '("nos-lis-1 => DOWN")',
        "admin_state:6: expected NODE => STATE (UP, DOWN or DRAIN), got 'just words'",
        'admin_state:7: node "nos-opo-1": unknown state "DOWN/60" (valid: UP, DOWN, DRAIN) (forced-state TTLs such '
        "as DOWN/60 are not supported)",
        'admin_state:8: unknown node "zzzzzz" (not in nodes.yaml; nodes: ix-lis-1, ix-mad-1, meo-lis-1, meo-opo-1, '
        "nos-lis-1, nos-opo-1, ora-es-bcn-1, ora-es-bio-1, ora-es-mad-1, pop-par-1, tef-bcn-1, tef-mad-1 ...)",
    ]  # fmt: skip


def test_parse_admin_state_without_an_inventory_checks_the_syntax_only(tmp_path: Path) -> None:
    path = tmp_path / "admin_state"
    path.write_text("any-node => down\n")
    assert parse_admin_state(path, "admin_state", None) == ({"any-node": "down"}, [])


def test_explain_honours_the_admin_state_file_and_shows_the_fallback(zones: Path) -> None:
    write(zones, POOLED.format(video=VIDEO, geofence=""))
    (zones / "admin_state").write_text("".join(f"{node} => DOWN\n" for node in MEO))
    try:
        deployment = load_deployment(zones)
        subnet = meo_subnet(compile_model(deployment))
        result = explain(deployment, "www.cdn.example.", subnet)
    finally:
        (zones / "admin_state").unlink()
        shutil.copy(REPO / "zones" / "cdn.example.policy.yaml", zones / "cdn.example.policy.yaml")
    assert result.rule == "1 (geos EU-PT and asns 3243 -> pool meo)"
    assert (result.pool, result.pool_chain, result.fallback_taken) == (
        "pt",
        ["meo", "pt", "paris"],
        True,
    )
    text = result.to_text()
    assert "pool:    pt (chain meo -> pt -> paris; fallback taken: meo had no node up)" in text
    # The pt pool's other ISP nodes are on-net only for NOS and Vodafone: excluded, and why.
    assert {c.node for c in result.candidates} == {"meo-lis-1", "meo-opo-1", "ix-lis-1"}
    excluded = {e["node"]: e["constraint"] for e in result.excluded}
    for node in set(PT) - {"meo-lis-1", "meo-opo-1", "ix-lis-1"}:
        assert excluded[node].startswith("on-net only for AS") and excluded[node].endswith(
            "in AS3243"
        )
    assert not any(
        ip in " ".join(result.answer) for ip in ("198.51.100.11", "198.51.100.12")
    )  # MEO's nodes


def meo_subnet(model) -> str:  # noqa: ANN001
    cm = model.client_map
    g = group_of(model, "PT", 3243)
    start = int(cm.v4_start[np.flatnonzero(cm.v4_group == g)[0]])
    return f"{socket.inet_ntoa(start.to_bytes(4, 'big'))}/24"


# -- the documentation ----------------------------------------------------------------------


def test_every_policy_field_is_documented_with_an_example() -> None:
    doc = (REPO / "docs" / "policy-format.md").read_text()
    for model in (Policy, Pool, Rule, GeofenceRule, PolicyProbe):
        for field in model.model_fields:
            heading = re.search(rf"^#+ .*`{field}`", doc, re.MULTILINE)
            assert heading, f"docs/policy-format.md has no heading for {model.__name__}.{field}"
            section = doc[heading.end() :].split("\n#", 1)[0]
            assert "```yaml" in section, f"the section on {field} has no example"
    for word in ("admin_state", "UP", "DOWN", "DRAIN", "site:", "metro:", "country:", "asn:"):
        assert word in doc
    assert "docs/policy-format.md" in (REPO / "README.md").read_text()
    assert "policy-format.md" in (REPO / "router" / "config" / "README.md").read_text()


# -- the real router ------------------------------------------------------------------------


def test_real_router_sends_meo_clients_to_the_fallback_pool_when_meo_is_admin_down(
    tmp_path: Path,
) -> None:
    zones = make_deployment(tmp_path)
    write(zones, POOLED.format(video=VIDEO, geofence=""))
    model = compile_model(load_deployment(zones))
    subnet = meo_subnet(model)
    addresses = {n.id: str(n.ipv4) for n in load_deployment(zones).inventory.nodes}
    query_log = tmp_path / "queries.jsonl"
    running = start_router(
        zones, tmp_path / "router.log", "--query-log", str(query_log), "--query-log-sample", "1"
    )
    try:

        def ask() -> set[str]:
            query = dns.message.make_query("www.cdn.example.", "A", use_edns=0,
                                           options=[dns.edns.ECSOption(subnet.split("/")[0], 24)])  # fmt: skip
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(2)
                sock.sendto(query.to_wire(), (running.host, running.port))
                return set(answer_ips(dns.message.from_wire(sock.recv(4096))))

        assert ask() <= {addresses[n] for n in MEO}
        for node in MEO:
            status, _ = api(
                running, "PUT", f"/v1/nodes/{node}/admin-state", {"state": "down"}, running.token
            )
            assert status == 200
        fallback = {addresses[n] for n in set(PT) - set(MEO)}
        deadline = time.monotonic() + 10
        while not (got := ask()) <= fallback and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got and got <= fallback
        # The query log says which rule matched and which pool answered, and why.
        logged = [json.loads(line) for line in query_log.read_text().splitlines()]
        first, last = logged[0], logged[-1]
        assert (first["qname"], first["rule"], first["pool"]) == (
            "www.cdn.example.",
            "1: geos EU-PT and asns 3243",
            "meo",
        )
        assert "rule 1: geos EU-PT and asns 3243 -> pool meo" in first["reason"]
        assert last["pool"] == "pt" and "pool pt (fallback: meo had no node up)" in last["reason"]
        assert set(last["nodes"]) <= set(PT) - set(MEO)
    finally:
        running.stop()
        assert running.process.stdout is not None
        running.process.stdout.close()
