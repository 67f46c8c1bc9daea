"""The status page (GET /status) in a real headless Chromium against the real router: every node
on the map and in the table, and a node set down turns red without reloading the page."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config.deployment import load_deployment
from router.simulator import Simulator
from tests.chromium import LiveBrowser, chromium_binary
from tests.conftest import RunningRouter, make_deployment, start_router

RED = "#d32f2f"
GREEN = "#2e7d32"


def _get(router: RunningRouter, path: str) -> dict:
    with urllib.request.urlopen(f"{router.api}{path}", timeout=10) as response:
        return json.load(response)


def _put_admin(router: RunningRouter, node: str, state: str) -> None:
    request = urllib.request.Request(
        f"{router.api}/v1/nodes/{node}/admin-state", data=json.dumps({"state": state}).encode(), method="PUT",
        headers={"Authorization": f"Bearer {router.token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def monitored(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningRouter, tuple[str, ...]]]:
    zones = make_deployment(tmp_path_factory.mktemp("status"))
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
    assert router.telemetry is not None and deployment.node_keys
    simulator = Simulator(deployment.inventory, deployment.node_keys, router.telemetry, 1.0)
    try:
        for node in simulator.nodes.values():  # one report each: load 20 % of capacity
            simulator.send(node)
        deadline = time.monotonic() + 10
        while any(n["load_gbps"] is None for n in _get(router, "/v1/nodes")["nodes"]):
            assert time.monotonic() < deadline, "the router did not take the heartbeats"
            time.sleep(0.05)
        yield router, tuple(n.id for n in deployment.inventory.nodes)
    finally:
        simulator.close()
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()


@pytest.mark.integration
def test_nodes_carry_place_and_load_and_changes_are_listed(monitored) -> None:  # noqa: ANN001
    router, node_ids = monitored
    nodes = {n["id"]: n for n in _get(router, "/v1/nodes")["nodes"]}
    assert set(nodes) == set(node_ids)
    madrid = nodes["tef-mad-1"]
    assert (madrid["lat"], madrid["lon"], madrid["metro"]) == (40.4168, -3.7038, "Madrid")
    assert madrid["load_gbps"] == pytest.approx(0.2 * madrid["capacity_gbps"])
    _put_admin(router, "vdf-es-vlc-1", "drain")
    _put_admin(router, "vdf-es-vlc-1", "up")
    changes = _get(router, "/v1/changes")["changes"]
    mine = [c for c in changes if c["node"] == "vdf-es-vlc-1"]
    assert [(c["from"], c["to"]) for c in mine[:2]] == [
        ("draining", "up"),
        ("up", "draining"),
    ]  # newest first
    assert (
        mine[1]["reason"] == "admin: set drain by operator" and mine[0]["time"] >= mine[1]["time"]
    )


@pytest.mark.integration
def test_status_page_shows_every_node_and_turns_a_downed_node_red(
    monitored, tmp_path: Path
) -> None:  # noqa: ANN001
    if chromium_binary() is None:
        pytest.skip(
            "no Chromium on this machine (script/bootstrap --test installs Debian's chromium)"
        )
    router, node_ids = monitored
    with LiveBrowser(tmp_path / "profile") as browser:
        browser.navigate(f"{router.api}/status?refresh=0.5")
        browser.wait_for(
            f"document.querySelectorAll('#map circle[data-node]').length === {len(node_ids)}"
        )
        circles = browser.evaluate(
            "Array.from(document.querySelectorAll('#map circle[data-node]')).map(c => [c.dataset.node, c.dataset.state, c.getAttribute('fill')])"
        )
        assert sorted(c[0] for c in circles) == sorted(node_ids)
        assert {(state, fill) for _, state, fill in circles} == {("up", GREEN)}
        assert (
            browser.evaluate("document.querySelectorAll('#countries path').length") > 0
        )  # the map behind them
        rows = browser.evaluate(
            "Array.from(document.querySelectorAll('#nodes tbody tr')).map(r => r.innerText)"
        )
        assert len(rows) == len(node_ids)
        assert any(row.startswith("tef-mad-1") and "80 / 400 Gbps (20%)" in row for row in rows), (
            rows
        )
        refreshes = int(browser.evaluate("document.body.dataset.refreshes"))

        _put_admin(router, "tef-mad-1", "down")
        # No reload: the page's own refresh must pick the change up.
        browser.wait_for(
            "document.querySelector('#map circle[data-node=\"tef-mad-1\"]').dataset.state === 'down'"
        )
        assert (
            browser.evaluate(
                "document.querySelector('#map circle[data-node=\"tef-mad-1\"]').getAttribute('fill')"
            )
            == RED
        )
        others = browser.evaluate(
            "Array.from(document.querySelectorAll('#map circle[data-node]')).filter(c => c.dataset.node !== 'tef-mad-1').map(c => c.getAttribute('fill'))"
        )
        assert set(others) == {GREEN}
        assert int(browser.evaluate("document.body.dataset.refreshes")) > refreshes
        change = browser.evaluate(
            "document.querySelector('#changes tbody tr[data-node=\"tef-mad-1\"]').innerText"
        )
        assert "up \u2192 down" in change and "admin: set down by operator" in change
        assert browser.evaluate("document.getElementById('error').style.display") != "block"

        _put_admin(router, "tef-mad-1", "up")
        browser.wait_for(
            "document.querySelector('#map circle[data-node=\"tef-mad-1\"]').getAttribute('fill') === '#2e7d32'"
        )
