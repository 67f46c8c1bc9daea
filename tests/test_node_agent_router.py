"""The node agent against the real router: `router node-agent` reading a fake sysfs tree
takes its node up, a power cut on that tree takes it down, and the agent's restart needs
nothing from the router."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, start_router
from tests.test_node_agent import interface, supply
from tests.test_router_failover import ask, fast_deployment, nodes, wait_for

pytestmark = pytest.mark.integration


def agent(key: Path, sysfs: Path, telemetry: tuple[str, int], seconds: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "router.cli", "node-agent", "--node", "tef-mad-1", "--key-file", str(key),
         "--router", f"{telemetry[0]}:{telemetry[1]}", "--interval", "0.2", "--sysfs", str(sysfs),
         "--uplink", "wan1=eth0", "--uplink", "wan2=eth1", "--load-interface", "eth0",
         "--power-interval", "0.1", "--duration", str(seconds)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_the_agent_brings_its_node_in_and_a_power_cut_takes_it_out(tmp_path: Path) -> None:
    zones = fast_deployment(tmp_path)
    key = tmp_path / "tef-mad-1.key"
    exported = subprocess.run(
        [sys.executable, "-m", "router.cli", "keys", "export", "--keys",
         str(zones / "node-keys.sample.yaml"), "--node", "tef-mad-1", "--out", str(key)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    sysfs = tmp_path / "sys"
    supply(sysfs, "AC", type="Mains", online="1")
    supply(sysfs, "BAT0", type="Battery", status="Full", capacity="100")
    interface(sysfs, "eth0")
    interface(sysfs, "eth1")
    router = start_router(zones, tmp_path / "router.log", "--telemetry", "127.0.0.1:0")
    assert router.telemetry is not None
    first = agent(key, sysfs, router.telemetry, 60)
    second = None
    try:
        # Only tef-mad-1 reports: once the start-up grace is over it alone is up in Madrid.
        wait_for(lambda: nodes(router)["tef-mad-2"]["state"] == "down", 8, "silent nodes down")
        node = nodes(router)["tef-mad-1"]
        assert node["state"] == "up" and node["reason"] == "heartbeats good", node
        wait_for(lambda: ask(router) == ["192.0.2.11"], 2, "the table with tef-mad-1 alone")

        # Mains lost: the battery takes over, then runs low.
        (sysfs / "class/power_supply/AC/online").write_text("0\n")
        (sysfs / "class/power_supply/BAT0/status").write_text("Discharging\n")
        wait_for(lambda: nodes(router)["tef-mad-1"]["state"] == "draining", 3, "on battery")
        (sysfs / "class/power_supply/BAT0/capacity").write_text("4\n")
        wait_for(lambda: nodes(router)["tef-mad-1"]["state"] == "down", 3, "battery low -> down")
        assert "power battery_low" in nodes(router)["tef-mad-1"]["reason"]
        # (Every node is down now, so DNS fails open: no answer to check here.)

        # Power back, and the agent restarts (a new boot id, seq from 0): back in service.
        (sysfs / "class/power_supply/AC/online").write_text("1\n")
        (sysfs / "class/power_supply/BAT0/status").write_text("Charging\n")
        first.terminate()
        first.wait(timeout=10)
        second = agent(key, sysfs, router.telemetry, 60)
        wait_for(lambda: nodes(router)["tef-mad-1"]["state"] == "up", 10, "back up after restart")
        wait_for(lambda: ask(router) == ["192.0.2.11"], 2, "the table with tef-mad-1 alone")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
            if process is not None and process.stderr is not None:
                process.stderr.close()
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()
