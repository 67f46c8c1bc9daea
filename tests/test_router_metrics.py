"""Prometheus /metrics of the real router: node states and reasons, telemetry, tables, packets."""

from __future__ import annotations

import socket
import time
import urllib.request

import dns.message
import dns.query
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.api.metrics import reason_kind
from router.config.deployment import load_deployment
from router.simulator import Simulator
from tests.conftest import make_deployment, start_router


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("admin: set down by operator", "admin"),
        ("power off", "power"),
        ("on battery", "power"),
        ("every uplink down", "uplink"),
        ("missed 3 heartbeats (3.1 s silent); recovering, held down 4.2 s more", "silence"),
        ("no heartbeat since start-up (10.2 s)", "silence"),
        ("load 93% of capacity (high-water 90%)", "load"),
        ("3 failed probes (HTTP 503)", "probe"),
        ("heartbeats good", "ok"),
        ("something new", "other"),
    ],
)
def test_reasons_become_a_few_stable_kinds(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def _scrape(api: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.mark.integration
def test_metrics_follow_what_the_router_sees(tmp_path_factory: pytest.TempPathFactory) -> None:
    zones = make_deployment(tmp_path_factory.mktemp("metrics"))
    root = zones.parent
    router = start_router(
        zones,
        root / "router.log",
        "--telemetry",
        "127.0.0.1:0",
        "--state-file",
        str(root / "state.json"),
    )
    deployment = load_deployment(zones)
    simulator = Simulator(deployment.inventory, deployment.node_keys, router.telemetry, 1.0)
    try:
        for node in simulator.nodes.values():
            simulator.send(node)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            junk.sendto(b"not a heartbeat", router.telemetry)
        simulator.command("power meo-lis-1 off")
        for _ in range(20):
            dns.query.udp(
                dns.message.make_query("www.cdn.example.", "A"),
                router.host,
                port=router.port,
                timeout=5,
            )
        deadline = time.monotonic() + 10
        while True:
            m = _scrape(router.api)
            # The junk is counted at once; the table without meo-lis-1 is published a moment later.
            if (m.get(("router_telemetry_heartbeats_rejected_total", (("reason", "malformed"),))) == 1.0
                    and m[("router_routing_table_generation", ())] >= 2):  # fmt: skip
                break
            assert time.monotonic() < deadline, (
                "the junk heartbeat was not counted or no new table was published"
            )
            time.sleep(0.1)
        node = lambda name, **labels: m[(name, tuple(sorted(labels.items())))]  # noqa: E731
        assert node("router_node_state", node="meo-lis-1", state="down") == 1.0
        assert node("router_node_state", node="meo-lis-1", state="up") == 0.0
        assert node("router_node_state", node="tef-mad-1", state="up") == 1.0
        assert node("router_node_state_reason", node="meo-lis-1", reason="power") == 1.0
        assert node("router_node_load_gbps", node="tef-mad-1") == pytest.approx(80.0)
        assert node("router_node_capacity_gbps", node="tef-mad-1") == 400.0
        assert m[("router_telemetry_heartbeats_accepted_total", ())] == simulator.sent
        assert m[("router_service_serving", ())] == 1.0
        assert m[("router_routing_table_generation", ())] >= 2
        builds = sum(
            v for (name, _), v in m.items() if name == "router_routing_table_build_seconds_count"
        )
        assert builds >= 1
        received = sum(
            v
            for (name, labels), v in m.items()
            if name == "router_udp_packets_total" and ("kind", "received") in labels
        )
        answered = sum(
            v
            for (name, labels), v in m.items()
            if name == "router_udp_packets_total" and ("kind", "answered") in labels
        )
        assert received >= 20 and answered >= 20
        assert ("router_udp_receive_drops_total", ()) in m
        assert ("router_demand_qps", (("policy", "web"), ("zone", "cdn.example."))) in m
    finally:
        simulator.close()
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()
