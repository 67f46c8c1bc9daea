"""Routing tables from capacity-aware plans, on the sample deployment.

A group whose demand does not fit its best nodes is split over several; the DNS answer
leads with one of them per client /24, in proportion to the plan, and says so in the ECS
scope. A node going down is repaired incrementally. Geofences hold through the config.
"""

from __future__ import annotations

import collections
import ipaddress
import shutil
from pathlib import Path

import dns.edns
import dns.message
import numpy as np
import pytest

from router.config import load_deployment
from router.config.problems import ConfigError
from router.dns.engine import Responder, TableView
from router.health import NodeHealth
from router.service.compiled import build_book
from router.steering import compile_model
from router.steering.build import WEIGHT_SCALE, Planner


@pytest.fixture(scope="module")
def sample(deployment_dir: Path):
    deployment = load_deployment(deployment_dir)
    return deployment, compile_model(deployment)


def biggest_group(model, asn: int) -> int:
    groups = np.flatnonzero(model.client_map.groups.asn == asn)
    return int(groups[np.argmax(model.group_weight[groups])])


def subnets_of(model, group: int, count: int) -> list[ipaddress.IPv4Network]:
    cm = model.client_map
    out = []
    for start, end in zip(cm.v4_start[cm.v4_group == group], cm.v4_end[cm.v4_group == group]):
        for value in range(int(start) & ~0xFF, int(end) + 1, 256):
            out.append(ipaddress.IPv4Network((value, 24)))
            if len(out) == count:
                return out
    return out


def test_a_group_too_big_for_its_best_node_is_split_by_client_subnet(sample) -> None:
    deployment, model = sample
    policy = next(i for i, p in enumerate(model.policies) if p.name == "video")
    tef = biggest_group(model, 3352)
    planner = Planner(model)
    demand = np.zeros(len(model.group_weight))
    demand[tef] = 700.0  # Gbps: more than tef-mad-1 (400 * 0.8) takes
    planner.set_demand(policy, demand)
    health = NodeHealth(model.node_ids)
    table = planner.build(health.states(), None, generation=1)

    shares = planner.plans[policy].shares(tef)
    assert len(shares) >= 2 and abs(sum(a for _, a in shares) - 700.0) < 1e-6
    capacity = dict(zip(range(len(model.node_ids)), model.node_capacity_gbps))
    assert all(amount <= capacity[n] * 0.8 + 1e-6 for n, amount in shares)
    entries = table.entries(policy, tef)
    assert [nodes[0] for nodes, _ in entries] == [n for n, _ in shares]
    for (nodes, weight), (_, amount) in zip(entries, shares):
        assert abs(weight - amount / 700.0) <= 2 / WEIGHT_SCALE
        assert len(nodes) == 2 and len(set(nodes)) == 2

    view = TableView(table)
    responder = Responder(build_book(deployment, model), model.client_map, lambda: view)
    qname = "video.cdn.example."
    seen: collections.Counter[str] = collections.Counter()
    subnets = subnets_of(model, tef, 3000)
    assert len(subnets) == 3000
    for net in subnets:
        first = None
        for host in (1, 77, 254):  # every client of one /24 gets the same lead node
            address = net.network_address + host
            q = dns.message.make_query(
                qname, "A", use_edns=0, options=[dns.edns.ECSOption(str(address), 32)]
            )
            reply = dns.message.from_wire(responder.respond(q.to_wire(), "127.0.0.1", udp=True))
            lead = reply.answer[0][0].address
            assert first in (None, lead)
            first = lead
            (ecs,) = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
            assert ecs.scopelen >= 24
        seen[first] += 1
    addresses = {model.node_ipv4[n]: n for n in range(len(model.node_ids))}
    by_node = {
        addresses[ipaddress.IPv4Address(a).packed]: c / len(subnets) for a, c in seen.items()
    }
    for node, amount in shares:
        assert abs(by_node.get(node, 0.0) - amount / 700.0) < 0.05, (by_node, shares)


def test_a_failed_node_is_repaired_not_replanned(sample) -> None:
    _, model = sample
    policy = next(i for i, p in enumerate(model.policies) if p.name == "video")
    planner = Planner(model)
    planner.set_demand(policy, model.group_weight * 600.0)
    health = NodeHealth(model.node_ids)
    planner.build(health.states(), None, generation=1)
    busiest = int(np.argmax(planner.plans[policy].load))
    health.set_admin_state(model.node_ids[busiest], "down")
    table = planner.node_down(busiest, health.states(), None, generation=2)
    assert planner.last_kind == "incremental"
    for p in range(len(model.policies)):
        for g in range(len(model.group_weight)):
            for nodes, _ in table.entries(p, g):
                assert busiest not in nodes
    total = sum(plan.load for plan in planner.plans)
    assert (total <= model.node_capacity_gbps + 1e-6).all()
    assert abs(planner.plans[policy].load.sum() - 600.0) < 1e-6


def write_policy(zones: Path, geofence: str) -> None:
    path = zones / "cdn.example.policy.yaml"
    text = path.read_text()
    path.write_text(
        text.replace(
            "    default_site: mad-espanix\n", f"    default_site: mad-espanix\n{geofence}", 1
        )
    )


def test_geofence_from_the_policy_file_holds_when_its_nodes_are_down(
    tmp_path: Path, deployment_dir: Path
) -> None:
    zones = tmp_path / "zones"
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    write_policy(zones, "    geofence:\n      - {clients: [PT], nodes: [PT]}\n")
    model = compile_model(load_deployment(zones))
    policy = next(i for i, p in enumerate(model.policies) if p.name == "video")
    site_country = {
        n: model.countries[c] for n, c in zip(range(len(model.node_ids)), model.node_country)
    }
    pt_groups = [g for g, c in enumerate(model.client_map.groups.country) if c == "PT"]
    assert pt_groups
    health = NodeHealth(model.node_ids)
    for n, country in site_country.items():
        if country == "PT":
            health.set_admin_state(model.node_ids[n], "down")
    table = Planner(model).build(health.states(), None, generation=1)
    for g in pt_groups:
        for nodes, _ in table.entries(policy, g):
            assert nodes and all(site_country[n] == "PT" for n in nodes)
    # Everyone else may still use Portuguese nodes only if they were up; they are not.
    es = next(g for g, c in enumerate(model.client_map.groups.country) if c == "ES")
    assert all(site_country[n] != "PT" for nodes, _ in table.entries(policy, es) for n in nodes)


@pytest.mark.parametrize(
    ("geofence", "message"),
    [
        (
            "    geofence:\n      - {clients: [PT], nodes: [DE]}\n",
            "geofence rule 0 allows nodes in DE but the policy has no node there",
        ),
        (
            "    geofence:\n      - {clients: [PT], nodes: [PT]}\n      - {clients: [PT, ES], nodes: [ES]}\n",
            "clients in PT are fenced by rules 0 and 1",
        ),
        ("    geofence:\n      - {clients: [pt], nodes: [PT]}\n", "String should match pattern"),
    ],
    ids=["no_node", "twice", "lowercase"],
)
def test_bad_geofence_is_reported_with_its_line(
    tmp_path: Path, deployment_dir: Path, geofence: str, message: str
) -> None:
    zones = tmp_path / "zones"
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    write_policy(zones, geofence)
    with pytest.raises(ConfigError) as caught:
        load_deployment(zones)
    text = str(caught.value)
    assert message in text
    assert "cdn.example.policy.yaml:" in text


def test_iberian_blackout_plans_no_remaining_node_past_capacity(sample) -> None:
    """Every Telefonica node loses power: its clients move, and nobody is overfilled."""
    _, model = sample
    planner = Planner(model)
    capacity = model.node_capacity_gbps
    for p in range(len(model.policies)):  # 60% of the whole footprint, spread by address space
        planner.set_demand(p, model.group_weight * capacity.sum() * 0.6 / len(model.policies))
    health = NodeHealth(model.node_ids)
    before = planner.build(health.states(), None, generation=1)
    tef = [i for i, node in enumerate(model.node_ids) if node.startswith("tef-")]
    assert before.node_planned[tef].sum() > 0
    for i in tef:
        health.set_admin_state(model.node_ids[i], "down")
    after = planner.build(health.states(), None, generation=2)
    assert (after.node_planned[tef] == 0).all()
    assert (after.node_planned <= capacity + 1e-6).all()
    assert abs(after.node_planned.sum() - capacity.sum() * 0.6) < 1e-6  # all demand still placed
    # Headroom first: the reserve is touched only because the survivors cannot take it all below it.
    survivors = [i for i in range(len(model.node_ids)) if i not in tef]
    assert (
        after.node_planned[survivors].sum() > 0.8 * capacity[survivors].sum() - 1e-6
        or (after.node_planned <= 0.8 * capacity + 1e-6).all()
    )
