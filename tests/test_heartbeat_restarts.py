"""Restarts of either side, end to end: the real router and the real node simulator.

- A node agent killed and started again draws a new boot id and counts from 1: its nodes are
  back in service after the normal hysteresis, without touching the router.
- A heartbeat captured before the restart (a power-off report) and replayed after it is
  refused as replayed, and changes nothing.
- A router restarted with its state file refuses a heartbeat captured before its restart,
  even within the freshness window.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import RunningRouter, start_router
from tests.test_router_failover import (
    Simulator,
    ask,
    fast_deployment,
    nodes,
    start_simulator,
    wait_for,
)

pytestmark = pytest.mark.integration
TEF_MAD_2 = "192.0.2.12"


def simulator(zones: Path, router: RunningRouter, sink: socket.socket) -> Simulator:
    """The simulator sending to the router and to ``sink``, where the test captures packets."""
    return start_simulator(
        zones, router, also=(f"127.0.0.1:{sink.getsockname()[1]}",), duration=120
    )


def latest_packet_of(sink: socket.socket, node: str, wanted: str) -> bytes:
    """The newest captured heartbeat of ``node`` whose payload contains ``wanted``."""
    found = None
    sink.setblocking(False)
    while True:
        try:
            packet = sink.recv(2048)
        except BlockingIOError:
            break
        if node.encode() in packet[:80] and wanted.encode() in packet:
            found = packet
    sink.setblocking(True)
    assert found is not None, f"no captured heartbeat of {node} with {wanted}"
    return found


def telemetry_counters(router: RunningRouter) -> dict:
    with urllib.request.urlopen(f"{router.api}/v1/telemetry", timeout=5) as response:
        return json.loads(response.read())


def stop(router: RunningRouter) -> None:
    router.stop()
    if router.process.stdout is not None:
        router.process.stdout.close()


def replay(router: RunningRouter, packet: bytes, times: int = 5) -> None:
    assert router.telemetry is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(times):
            s.sendto(packet, router.telemetry)


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    zones = fast_deployment(tmp_path)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    # Wide enough that a captured packet is still fresh when replayed: the replay rules,
    # not the clock, must refuse it.
    settings["health"]["replay_window_s"] = 60
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    return zones


def test_a_restarted_agent_is_back_and_its_captured_packets_are_refused(
    deployment: Path, tmp_path: Path
) -> None:
    router = start_router(deployment, tmp_path / "router.log", "--telemetry", "127.0.0.1:0")
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    first = simulator(deployment, router, sink)
    try:
        wait_for(lambda: all(n["state"] == "up" for n in nodes(router).values()), 15, "all up")
        first.send("power tef-mad-2 off")
        wait_for(lambda: TEF_MAD_2 not in ask(router), 3, "tef-mad-2 to leave")
        first.send("restore tef-mad-2")
        wait_for(lambda: TEF_MAD_2 in ask(router), 8, "tef-mad-2 back")
        time.sleep(0.3)
        captured = latest_packet_of(sink, "tef-mad-2", '"power":"off"')
        first.stop()  # the agent dies; it starts again from seq 1 with a new boot id
        second = simulator(deployment, router, sink)
        try:
            wait_for(lambda: telemetry_counters(router)["node_reboots"] >= 18, 5, "18 new boot ids")
            before = telemetry_counters(router)["rejected"]["replayed"]
            replay(router, captured)
            time.sleep(0.3)
            assert telemetry_counters(router)["rejected"]["replayed"] == before + 5
            # The agent was silent while it restarted, so its nodes may have been withdrawn;
            # the new boot's heartbeats bring every one back within the hold-downs (<= 4 s).
            wait_for(
                lambda: all(n["state"] == "up" for n in nodes(router).values()), 10, "all back up"
            )
            time.sleep(1.0)
            assert all(n["state"] == "up" for n in nodes(router).values())
            assert telemetry_counters(router)["rejected"]["replayed"] == before + 5
        finally:
            second.stop()
    finally:
        first.stop()
        stop(router)
        sink.close()


def test_a_restarted_router_refuses_what_was_captured_before(
    deployment: Path, tmp_path: Path
) -> None:
    state = ["--telemetry", "127.0.0.1:0", "--state-file", str(tmp_path / "state.json")]
    router = start_router(deployment, tmp_path / "router.log", *state)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    agent = simulator(deployment, router, sink)
    try:
        wait_for(lambda: all(n["state"] == "up" for n in nodes(router).values()), 15, "all up")
        agent.send("power tef-mad-2 off")
        wait_for(lambda: TEF_MAD_2 not in ask(router), 3, "tef-mad-2 to leave")
        agent.send("restore tef-mad-2")
        time.sleep(0.3)
        captured = latest_packet_of(sink, "tef-mad-2", '"power":"off"')
        agent.stop()
        stop(router)
        saved = json.loads((tmp_path / "state.json").read_text())
        assert saved["replay"]["nodes"]["tef-mad-2"][1] > 0  # boot, seq, ts saved at stop
        router = start_router(deployment, tmp_path / "router2.log", *state)
        replay(router, captured)
        time.sleep(0.3)
        counters = telemetry_counters(router)
        assert counters["accepted"] == 0 and counters["rejected"]["replayed"] == 5
        assert counters["rejected"]["stale"] == 0  # refused by the replay rules, not the clock
    finally:
        agent.stop()
        stop(router)
        sink.close()
