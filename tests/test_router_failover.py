"""Automatic withdrawal end to end: the real router, the node simulator, answers over DNS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.message
import pytest
import yaml

from router.health.telemetry import Heartbeat, encode
from tests.conftest import REPO, RunningRouter, make_deployment, start_router

TEF_CLIENT = "83.44.10.0/24"  # Telefonica de Espana, AS3352
TEF_IPS = {"192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"}
FAST_HEALTH = {"heartbeat_interval_s": 0.2, "missed_heartbeats": 3, "recover_after": 2, "hold_down_s": 1.0,
               "max_hold_down_s": 4.0, "startup_grace_s": 3.0}  # fmt: skip


def fast_deployment(root: Path) -> Path:
    zones = make_deployment(root)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["health"].update(FAST_HEALTH)
    settings["state_file"] = "../var/state.json"
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    return zones


@dataclass
class Simulator:
    process: subprocess.Popen

    def send(self, command: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        ack = self.process.stdout.readline()
        assert ack.startswith("ok "), ack

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def start_simulator(
    zones: Path, router: RunningRouter, also: tuple[str, ...] = (), duration: float = 300
) -> Simulator:
    """The simulator playing the sample's 18 nodes to ``router`` (and to each HOST:PORT of
    ``also``), stopping by itself after ``duration`` seconds."""
    assert router.telemetry is not None
    targets = [f"{router.telemetry[0]}:{router.telemetry[1]}", *also]
    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "simulate-nodes", "--zones", str(zones),
         *[arg for t in targets for arg in ("--target", t)],
         "--keys", str(zones / "node-keys.sample.yaml"), "--duration", str(duration)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().startswith("simulating 18 nodes")
    return Simulator(process)


def ask(
    router: RunningRouter, subnet: str = TEF_CLIENT, name: str = "video.cdn.example."
) -> list[str]:
    address, prefix = subnet.split("/")
    q = dns.message.make_query(
        name, "A", use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))]
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q.to_wire(), (router.host, router.port))
        reply = dns.message.from_wire(s.recv(65535))
    return [rdata.address for rrset in reply.answer for rdata in rrset]


def nodes(router: RunningRouter) -> dict[str, dict]:
    with urllib.request.urlopen(f"{router.api}/v1/nodes", timeout=5) as response:
        return {n["id"]: n for n in json.loads(response.read())["nodes"]}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``condition``; return the seconds it took (bounded by ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def lab(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningRouter, Simulator, Path]]:
    root = tmp_path_factory.mktemp("failover")
    zones = fast_deployment(root)
    router = start_router(zones, root / "router.log", "--telemetry", "127.0.0.1:0")
    simulator = start_simulator(zones, router)
    try:
        wait_for(
            lambda: all("heartbeats good" in n["reason"] for n in nodes(router).values()),
            10,
            "every node reporting",
        )
        # Load reports are republished at most once a second: wait for the even-load table.
        wait_for(
            lambda: ask(router) == ["192.0.2.11", "192.0.2.12"],
            5,
            "the table with every node's load",
        )
        yield router, simulator, zones
    finally:
        simulator.stop()
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()


def test_power_off_withdraws_at_once_and_restore_returns(lab) -> None:
    router, simulator, _ = lab
    assert ask(router) == ["192.0.2.11", "192.0.2.12"]
    simulator.send("power tef-mad-1 off")
    wait_for(lambda: "192.0.2.11" not in ask(router), 2, "tef-mad-1 to leave the answers")
    assert (
        nodes(router)["tef-mad-1"]["state"] == "down"
        and nodes(router)["tef-mad-1"]["reason"] == "power off"
    )
    simulator.send("restore tef-mad-1")
    # Back only after the hold-down (1 s here) and 2 good reports.
    took = wait_for(lambda: "192.0.2.11" in ask(router), 6, "tef-mad-1 to return")
    assert took >= 0.9
    assert nodes(router)["tef-mad-1"]["reason"].startswith("recovered")


def test_uplink_down_and_battery(lab) -> None:
    router, simulator, _ = lab
    simulator.send("uplink tef-mad-2 down")
    wait_for(lambda: "192.0.2.12" not in ask(router), 2, "tef-mad-2 to leave on uplink loss")
    assert nodes(router)["tef-mad-2"]["reason"] == "every uplink down"
    simulator.send("restore tef-mad-2")
    wait_for(lambda: nodes(router)["tef-mad-2"]["state"] == "up", 6, "tef-mad-2 to recover")
    simulator.send("power tef-mad-2 battery")
    wait_for(
        lambda: nodes(router)["tef-mad-2"]["state"] == "draining",
        2,
        "tef-mad-2 to drain on battery",
    )
    wait_for(lambda: "192.0.2.12" not in ask(router), 2, "draining tef-mad-2 to leave the answers")
    simulator.send("restore tef-mad-2")
    wait_for(lambda: "192.0.2.12" in ask(router), 6, "tef-mad-2 to return from battery")


def test_silent_node_is_withdrawn_after_missed_heartbeats(lab) -> None:
    router, simulator, _ = lab
    simulator.send("silence tef-mad-1")
    took = wait_for(lambda: "192.0.2.11" not in ask(router), 3, "silent tef-mad-1 to leave")
    assert took >= 0.4  # not before 3 x 0.2 s of silence (minus the last report's age)
    assert "missed 3 heartbeats" in nodes(router)["tef-mad-1"]["reason"]
    simulator.send("restore tef-mad-1")
    wait_for(lambda: "192.0.2.11" in ask(router), 6, "tef-mad-1 to return after silence")


def test_iberian_blackout_moves_clients_to_the_next_best_nodes(lab) -> None:
    router, simulator, _ = lab
    simulator.send("power asn:3352 off")  # every Telefonica node loses power at once
    wait_for(lambda: not set(ask(router)) & TEF_IPS, 2, "every Telefonica node to leave")
    answer = ask(router)
    assert len(answer) == 2  # never an empty answer
    # Orange's and Vodafone's Madrid nodes are nearer, but on-net only for their own ISPs:
    # the CDN's own IX nodes (Madrid, then Lisbon) take Telefonica's clients.
    assert answer == ["203.0.113.11", "203.0.113.12"]
    simulator.send("power metro:madrid off")  # then all of Madrid
    wait_for(
        lambda: not set(ask(router)) & {"203.0.113.11"},
        2,
        "Madrid to leave",
    )
    assert len(ask(router)) == 2
    simulator.send("restore all")
    wait_for(lambda: ask(router) == ["192.0.2.11", "192.0.2.12"], 8, "Telefonica to return")


def test_whole_pool_down_fails_open(lab) -> None:
    router, simulator, _ = lab
    healthy = ask(router)
    simulator.send("power all off")
    wait_for(
        lambda: all(n["state"] == "down" for n in nodes(router).values()), 3, "every node down"
    )
    time.sleep(0.5)  # the table for the last change is published a moment after the state
    assert ask(router) == healthy  # fail open: the best nodes as if healthy, never empty
    simulator.send("restore all")
    wait_for(lambda: all(n["state"] == "up" for n in nodes(router).values()), 8, "every node back")


def test_forged_and_replayed_heartbeats_change_nothing(lab) -> None:
    router, _, zones = lab
    keys = yaml.safe_load((zones / "node-keys.sample.yaml").read_text())["keys"]
    target = router.telemetry
    forged = encode(
        Heartbeat("tef-mad-1", "f" * 32, 10**9, time.time(), "off", {}, 0.0, 0.0),
        bytes.fromhex(keys["vdf-es-mad-1"]),
    )
    unknown = encode(
        Heartbeat("ghost", "f" * 32, 1, time.time(), "off", {}, 0.0, 0.0),
        bytes.fromhex(keys["tef-mad-1"]),
    )
    stale = encode(
        Heartbeat("tef-mad-1", "f" * 32, 10**9, time.time() - 600, "off", {}, 0.0, 0.0),
        bytes.fromhex(keys["tef-mad-1"]),
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for packet in (forged, unknown, stale, b"garbage"):
            for _ in range(50):
                s.sendto(packet, target)
            time.sleep(0.05)  # a burst at a time, as nodes send: none lost to the buffer
    time.sleep(0.5)
    with urllib.request.urlopen(f"{router.api}/v1/telemetry", timeout=5) as response:
        counters = json.loads(response.read())
    rejected = counters["rejected"]
    assert rejected["bad_signature"] >= 50 and rejected["unknown_node"] >= 50
    assert rejected["stale"] >= 50 and rejected["malformed"] >= 50
    assert nodes(router)["tef-mad-1"]["state"] == "up"
    assert "192.0.2.11" in ask(router)
    log = router.log.read_text()
    assert log.count("rejected heartbeat (bad_signature") <= 2  # logged at a bounded rate


def test_known_down_node_stays_down_across_restart(tmp_path: Path) -> None:
    zones = fast_deployment(tmp_path)
    router = start_router(zones, tmp_path / "first.log", "--telemetry", "127.0.0.1:0")
    simulator = start_simulator(zones, router)
    try:
        wait_for(
            lambda: nodes(router)["meo-lis-1"]["reason"] == "heartbeats good",
            10,
            "meo-lis-1 reporting",
        )
        simulator.send("power meo-lis-1 off")
        wait_for(lambda: nodes(router)["meo-lis-1"]["state"] == "down", 2, "meo-lis-1 down")
    finally:
        simulator.stop()
        router.stop()
        router.process.stdout.close()
    state = json.loads((tmp_path / "var" / "state.json").read_text())
    assert state["nodes"]["meo-lis-1"]["state"] == "down"
    second = start_router(zones, tmp_path / "second.log", "--telemetry", "127.0.0.1:0")
    try:
        # No heartbeat yet: the persisted down state holds from the first answer on.
        assert nodes(second)["meo-lis-1"]["state"] == "down"
        assert "restored" in nodes(second)["meo-lis-1"]["reason"]
        assert "198.51.100.11" not in ask(second, "85.241.20.0/24")
    finally:
        second.stop()
        second.process.stdout.close()
    shutil.rmtree(tmp_path / "var")


def give_nodes_health_urls(zones: Path) -> int:
    """Point every node's health URL at the simulator's (``--health-listen``); returns its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = s.getsockname()[1]
    inventory = yaml.safe_load((zones / "nodes.yaml").read_text())
    for node in inventory["nodes"]:
        node["health_url"] = f"http://127.0.0.1:{health_port}/health/{node['id']}"
    (zones / "nodes.yaml").write_text(yaml.safe_dump(inventory))
    return health_port


def test_failing_probes_withdraw_a_node_whose_heartbeats_look_fine(tmp_path: Path) -> None:
    zones = fast_deployment(tmp_path)
    health_port = give_nodes_health_urls(zones)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["health"].update(
        {"probe_interval_s": 0.2, "probe_timeout_s": 0.5, "probe_failures": 2}
    )
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    router = start_router(zones, tmp_path / "router.log", "--telemetry", "127.0.0.1:0")
    assert router.telemetry is not None
    target = f"{router.telemetry[0]}:{router.telemetry[1]}"
    process = subprocess.Popen(
        [sys.executable, "-m", "router.cli", "simulate-nodes", "--zones", str(zones), "--target", target,
         "--keys", str(zones / "node-keys.sample.yaml"), "--duration", "120",
         "--health-listen", f"127.0.0.1:{health_port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    simulator = Simulator(process)
    try:
        assert process.stdout is not None and process.stdout.readline().startswith("simulating")
        # Probes that ran before the simulator listened count as failures: wait for recovery.
        wait_for(
            lambda: all(n["state"] == "up" for n in nodes(router).values()),
            15,
            "every node up and probed",
        )
        wait_for(lambda: ask(router) == ["192.0.2.11", "192.0.2.12"], 5, "the all-up table")
        simulator.send("health tef-mad-1 fail")  # the service breaks; heartbeats carry on
        wait_for(lambda: "192.0.2.11" not in ask(router), 5, "tef-mad-1 to leave on failed probes")
        reason = nodes(router)["tef-mad-1"]["reason"]
        assert "failed probes (HTTP 503)" in reason, reason
        simulator.send("health tef-mad-1 ok")
        wait_for(lambda: "192.0.2.11" in ask(router), 8, "tef-mad-1 to return once probes pass")
    finally:
        simulator.stop()
        router.stop()
        router.process.stdout.close()


MEO_CLIENT = "2.80.0.0/24"  # MEO, AS3243 (Portugal): no other test here asks for it


def test_rtt_samples_from_nodes_steer_the_measuring_group(lab) -> None:
    router, simulator, _ = lab
    before = ask(router, MEO_CLIENT)
    telefonica = ask(router)
    assert before[0] == "198.51.100.11"  # meo-lis-1 leads on the country table alone
    # meo-opo-1 measures 0.5 ms to these clients: fused into the matrix, it takes the lead.
    simulator.send(f"rtt meo-opo-1 {MEO_CLIENT} 0.5")
    wait_for(lambda: ask(router, MEO_CLIENT)[0] == "198.51.100.12", 10, "the sampled node to lead")
    assert ask(router) == telefonica  # other groups are not moved by MEO's samples
    simulator.send("restore meo-opo-1")


def test_a_policy_probe_takes_a_node_out_of_that_policy_only(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    health_port = give_nodes_health_urls(zones)
    policy_file = zones / "cdn.example.policy.yaml"
    probe = ("    probe: {failures: 2, interval_s: 0.2, recover_after: 2, timeout_s: 0.5,"
             " url: '{health_url}/video'}\n")  # fmt: skip
    text = policy_file.read_text()
    line = next(
        line for line in text.splitlines(keepends=True) if line.startswith("    onnet_bonus_ms: 25")
    )
    policy_file.write_text(text.replace(line, line + probe, 1))
    router = start_router(zones, tmp_path / "router.log")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:  # heartbeats go nowhere here
        sink.bind(("127.0.0.1", 0))
        process = subprocess.Popen(
            [sys.executable, "-m", "router.cli", "simulate-nodes", "--zones", str(zones),
             "--target", f"127.0.0.1:{sink.getsockname()[1]}", "--keys", str(zones / "node-keys.sample.yaml"),
             "--duration", "120", "--health-listen", f"127.0.0.1:{health_port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        )  # fmt: skip
        simulator = Simulator(process)
        try:
            assert process.stdout is not None and process.stdout.readline().startswith("simulating")
            # Probes that ran before the simulator listened failed: wait until every node is back.
            wait_for(lambda: all(n["policies"]["video"]["state"] == "up" for n in nodes(router).values()), 15,
                     "every node in the video policy")  # fmt: skip
            wait_for(
                lambda: ask(router) == ["192.0.2.11", "192.0.2.12"], 5, "the all-up video answer"
            )
            web = ask(router, name="www.cdn.example.")
            assert "192.0.2.11" in web
            simulator.send(
                "health tef-mad-1 fail video"
            )  # the video service breaks; the node does not
            wait_for(
                lambda: "192.0.2.11" not in ask(router), 5, "tef-mad-1 to leave the video answers"
            )
            assert ask(router, name="www.cdn.example.") == web  # the web policy still uses it
            status = nodes(router)["tef-mad-1"]
            assert status["state"] == "up" and status["policies"]["video"]["state"] == "down"
            assert "failed policy probes (HTTP 503)" in status["policies"]["video"]["reason"]
            simulator.send("health tef-mad-1 ok video")
            wait_for(lambda: "192.0.2.11" in ask(router), 5, "tef-mad-1 back in the video answers")
        finally:
            simulator.stop()
            router.stop()
            assert router.process.stdout is not None
            router.process.stdout.close()
