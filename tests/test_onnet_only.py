"""On-net only nodes (nodes.yaml ``serves: on-net``, ``serves_asns``): a hard limit like the
geofence, in the config, the model, the plan and routing table, the DNS answers, ``router
explain`` and ``router check``. The sample marks its ISP-embedded sites on-net only."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import dns.edns
import dns.message
import numpy as np
import pytest

from router.config import load_deployment
from router.config.problems import ConfigError
from router.explain import explain
from router.health import NodeHealth
from router.steering import build_routing_table, compile_model
from router.steering.build import Planner
from tests.test_router_dns_engine import Engine

NODES = "nodes.yaml"


@pytest.fixture(scope="module")
def sample(deployment_dir: Path):
    deployment = load_deployment(deployment_dir)
    return deployment, compile_model(deployment)


def _copy(deployment_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(deployment_dir.parent, tmp_path / "d")
    return tmp_path / "d" / "zones"


def _edit(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert text.count(old) >= count, old
    path.write_text(text.replace(old, new, count))


def _served(deployment) -> list[frozenset[int] | None]:  # noqa: ANN001
    return [deployment.inventory.onnet_asns(n) for n in deployment.inventory.nodes]


def test_the_sample_serves_isp_sites_on_net_only(sample) -> None:  # noqa: ANN001
    deployment, model = sample
    served = _served(deployment)
    for node, asns in zip(deployment.inventory.nodes, served):
        kind = deployment.inventory.site_of(node).kind
        assert (asns is None) == (kind != "isp"), node.id
        assert asns is None or asns == {node.asn}
    assert model.node_onnet_only.tolist() == [asns is not None for asns in served]


def test_every_answer_of_every_group_keeps_the_on_net_limits(sample) -> None:  # noqa: ANN001
    """Over the whole sample map, both policies, with and without a capacity plan that
    splits groups: an on-net-only node is only ever in the answers of its own ASN's clients,
    and every group still gets an answer."""
    deployment, model = sample
    served = _served(deployment)
    asn = model.client_map.groups.asn
    groups = len(model.client_map.groups)
    planner = Planner(model)
    capacity = float(np.sum(model.node_capacity_gbps))
    for p in range(len(model.policies)):
        planner.set_demand(p, np.full(groups, 0.9 * capacity / groups / len(model.policies)))
    health = NodeHealth(model.node_ids)
    tables = (
        build_routing_table(model, health.states(), None, 1),
        planner.build(health.states(), None, 2),
    )
    offnet_groups = 0
    for table in tables:
        for p in range(len(model.policies)):
            for g in range(groups):
                entries = table.entries(p, g)
                assert entries, (p, g)
                for nodes, _share in entries:
                    assert nodes
                    for node in nodes:
                        allowed = served[node]
                        assert allowed is None or int(asn[g]) in allowed, (p, g, node, int(asn[g]))
                offnet_groups += all(served[n] is None for n in entries[0][0])
    assert offnet_groups > 0


def test_off_net_clients_private_addresses_and_no_ecs_get_ix_and_pop_nodes(
    deployment_dir: Path,
) -> None:
    engine = Engine(deployment_dir)
    offnet = {"203.0.113.11", "203.0.113.12", "203.0.113.13"}  # ix-mad-1, ix-lis-1, pop-par-1

    def answer(subnet: str | None, source: str = "127.0.0.1") -> set[str]:
        options = [] if subnet is None else [dns.edns.ECSOption.from_text(subnet)]
        query = dns.message.make_query("video.cdn.example.", "A", use_edns=0, options=options)
        reply = engine.ask(query, source)
        return {rdata.address for rrset in reply.answer for rdata in rrset}

    assert answer(None) <= offnet  # a resolver sending no ECS, on loopback
    assert answer(None, "10.1.2.3") <= offnet  # a private address
    google = answer("8.8.8.0/24")  # outside the sample map: an unknown network
    assert google and google <= offnet
    assert answer("10.0.0.0/24") <= offnet  # a private subnet by ECS
    movistar = answer("83.44.10.0/24")  # AS3352's own clients still get its embedded nodes
    assert movistar & {"192.0.2.11", "192.0.2.12"}


def test_explain_names_the_constraint_that_removed_each_node(deployment_dir: Path) -> None:
    deployment = load_deployment(deployment_dir)
    result = explain(deployment, "video.cdn.example.", "83.44.10.0/24")
    excluded = {e["node"]: e["constraint"] for e in result.excluded}
    assert "tef-mad-1" not in excluded and "ix-mad-1" not in excluded
    assert (
        excluded["vdf-es-mad-1"]
        == "on-net only for AS12430 (nodes.yaml serves), the client is in AS3352"
    )
    assert {c.node for c in result.candidates}.isdisjoint(excluded)
    assert "excluded (hard constraints" in result.to_text()
    web = explain(deployment, "www.cdn.example.", "10.0.0.0/24")
    constraints = {e["node"]: e["constraint"] for e in web.excluded}
    assert constraints["tef-mad-1"].endswith("the client is in an unknown network")


def test_serves_asns_extends_a_node_to_other_networks(deployment_dir: Path, tmp_path: Path) -> None:
    zones = _copy(deployment_dir, tmp_path)
    _edit(
        zones / NODES,
        "{id: tef-mad-1, asn: 3352,",
        "{id: tef-mad-1, asn: 3352, serves_asns: [12430],",
    )
    deployment = load_deployment(zones)
    model = compile_model(deployment)
    tef = model.node_ids.index("tef-mad-1")
    vodafone = np.flatnonzero(model.client_map.groups.asn == 12430)
    assert vodafone.size
    rows = model.onnet_allowed[model.group_onnet[vodafone]]
    assert rows[:, tef].all() and not rows[:, model.node_ids.index("tef-mad-2")].any()
    result = explain(deployment, "video.cdn.example.", "83.44.10.0/24")
    assert "tef-mad-1" not in {e["node"] for e in result.excluded}
    # A node may override its site: serves any, so every client may get it.
    _edit(zones / NODES, "{id: tef-mad-2, asn: 3352,", "{id: tef-mad-2, asn: 3352, serves: any,")
    model = compile_model(load_deployment(zones))
    assert not model.node_onnet_only[model.node_ids.index("tef-mad-2")]
    assert model.onnet_allowed[:, model.node_ids.index("tef-mad-2")].all()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("kind: isp, lat: 40.4168, lon: -3.7038, serves: on-net}", "kind: isp, lat: 40.4168, lon: -3.7038, serves: any, serves_asns: [1]}",
         r"nodes\.yaml:\d+: .*serves_asns is for on-net-only nodes: it needs serves: on-net, not any"),
        ("{id: ix-mad-1, asn: 64500,", "{id: ix-mad-1, asn: 64500, serves_asns: [3352],",
         r'nodes\.yaml:\d+: node "ix-mad-1": serves_asns is for on-net-only nodes, but neither the node nor its site "mad-espanix" says serves: on-net'),
        ("serves: on-net}", "serves: offnet}", r"nodes\.yaml:\d+: .*serves"),
        ("{id: tef-mad-1, asn: 3352,", "{id: tef-mad-1, asn: 3352, serves_asns: [0],", r"nodes\.yaml:\d+: .*serves_asns"),
    ],
    ids=["asns-with-any", "asns-on-a-serve-any-node", "unknown-value", "asn-0"],
)  # fmt: skip
def test_bad_serves_settings_are_named_by_file_and_line(deployment_dir: Path, tmp_path: Path, old: str, new: str,
                                                         message: str) -> None:  # fmt: skip
    zones = _copy(deployment_dir, tmp_path)
    _edit(zones / NODES, old, new)
    with pytest.raises(ConfigError) as caught:
        load_deployment(zones)
    assert re.search(message, caught.value.report(zones)), caught.value.report(zones)


def test_check_refuses_a_policy_that_leaves_clients_no_node(
    deployment_dir: Path, tmp_path: Path
) -> None:
    """Only on-net nodes in a policy: clients of other networks (and of unknown ones) would
    have nothing to be answered with; so would clients fenced to a country whose only nodes
    are on-net. Both are errors that name the policy file, the policy and the clients."""
    zones = _copy(deployment_dir, tmp_path)
    policy_file = zones / "cdn.example.policy.yaml"
    _edit(policy_file, "    nodes: all               # one pool: every node, for every client",
          "    nodes: [tef-mad-1, tef-mad-2]")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_deployment(zones)
    report = caught.value.report(zones)
    assert re.search(r'cdn\.example\.policy\.yaml:\d+: policy "video": \d+ client group\(s\) have no node '
                     r"that may answer them: clients of unknown networks .*; AS\d+ in ", report), report  # fmt: skip
    assert (
        "clients of unknown networks" in report
        and "every node of the policy's nodes is on-net only" in report
    )
    assert "and " in report and "more (country, ASN) pairs" in report

    zones = _copy(deployment_dir, tmp_path / "second")
    _edit(zones / "cdn.example.policy.yaml",
          "        fallback: everywhere # Portuguese clients: Portugal's nodes, then any node\n"
          "        nodes: [country:PT, ix-mad-1]   # and the Madrid IX, so off-net clients get two nodes too",
          "        nodes: [country:PT]")  # fmt: skip
    _edit(zones / NODES, "{id: ix-lis-1, asn: 64500,", "{id: ix-lis-1, asn: 64500, serves: on-net,")
    with pytest.raises(ConfigError) as caught:
        load_deployment(zones)
    report = caught.value.report(zones)
    assert re.search(r'policy "web": \d+ client group\(s\) have no node that may answer them: .* in PT .*'
                     r"every node of pool pt is on-net only", report), report  # fmt: skip
