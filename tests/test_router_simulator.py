"""The node simulator on its own: heartbeats to one or several routers, commands, muting."""

from __future__ import annotations

import socket

import pytest

from router.config.deployment import load_deployment
from router.health.telemetry import ReplayGuard, Verifier
from router.simulator import Simulator
from tests.conftest import REPO


@pytest.fixture(scope="module")
def deployment():  # noqa: ANN201
    return load_deployment(REPO / "zones")


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def test_every_heartbeat_goes_to_every_router_and_verifies(deployment) -> None:  # noqa: ANN001
    a, b = _listener(), _listener()
    simulator = Simulator(
        deployment.inventory, deployment.node_keys, a.getsockname(), 1.0, also=(b.getsockname(),)
    )
    try:
        simulator.command("power meo-lis-1 off")  # a changed node reports at once
        got_a, got_b = a.recv(2048), b.recv(2048)
        assert got_a == got_b
        # A router that started before these packets were sent (its floor is its start).
        guard = ReplayGuard(floor_ts=0.0)
        verifier = Verifier(deployment.node_keys, deployment.health.replay_window_s, guard)
        beat = verifier.verify(got_a, now=None)
        assert (beat.node, beat.power) == ("meo-lis-1", "off")
        assert simulator.sent == 1
    finally:
        simulator.close()
        a.close()
        b.close()


def test_a_muted_simulator_applies_commands_and_sends_nothing(deployment) -> None:  # noqa: ANN001
    a = _listener()
    a.settimeout(0.3)
    simulator = Simulator(deployment.inventory, deployment.node_keys, a.getsockname(), 1.0)
    simulator.muted = True
    try:
        assert simulator.command("silence asn:2860").startswith("ok 2 node(s)")
        assert all(n.silent == (n.node.asn == 2860) for n in simulator.nodes.values())
        simulator.beat_due(0.0)  # tef-mad-1 is due and not silent: only muting keeps it quiet
        with pytest.raises(TimeoutError):
            a.recv(2048)
        assert simulator.sent == 0
    finally:
        simulator.close()
        a.close()
