"""The cluster lab (loadtest/cluster_lab.py), with real processes: a NATS cluster whose
JetStream takes a stream with three replicas, a server's crash and return, the relays'
partition and heal (a nats-py client through a relay), and three routers on the bus answering
DNS, seeing each other, and r1 cut off and back (skipped while ``router serve`` has no
``--bus``)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.rdatatype
import nats
import pytest
from nats.js.api import StreamConfig

from loadtest.cluster_lab import ClusterLab, router_supports_bus
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: the lab waits for its children, so this is rare.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def nats_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    """Three NATS servers and no routers."""
    lab = ClusterLab(REPO / "zones", tmp_path_factory.mktemp("cluster-lab"), routers=0)
    with lab:
        yield lab
    assert not any(alive(s.pid) for s in lab.nats)


async def publish_r3(url: str, stream: str, timeout: float = 15.0) -> int:
    """Make (or find) a stream of three replicas through ``url`` and publish to it; the
    message's sequence number. Retries while the stream or its leader is being elected."""
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=2)
    try:
        js = nc.jetstream(timeout=3)
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await js.add_stream(
                    StreamConfig(name=stream, subjects=[f"{stream}.>"], num_replicas=3)
                )
                assert info.config.num_replicas == 3
                ack = await js.publish(f"{stream}.hello", b"hello", timeout=3)
                assert ack.stream == stream
                return ack.seq
            except nats.errors.Error:  # no leader yet, no responders, a timeout
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


def test_three_servers_form_a_jetstream_cluster(nats_lab: ClusterLab) -> None:
    assert [s.name for s in nats_lab.nats] == ["nats-1", "nats-2", "nats-3"]
    ports = {p for s in nats_lab.nats for p in (s.client_port, s.cluster_port, s.monitor_port)}
    assert len(ports) == 9
    status, jsz = nats_lab.nats[1].monitor("/jsz")
    assert status == 200 and jsz["meta_cluster"]["cluster_size"] == 3, jsz
    assert asyncio.run(publish_r3(nats_lab.nats[0].client_url, "LAB1")) == 1
    # Every server holds a replica of it.
    for server in nats_lab.nats:
        _, jsz = server.monitor("/jsz?streams=true")
        assert jsz.get("streams", 0) >= 1, (server.name, jsz)
    text = nats_lab.nats[0].config_path.read_text()
    assert "no_advertise: true" in text and "0.0.0.0" not in text


def test_a_crashed_server_leaves_the_cluster_working_and_comes_back(nats_lab: ClusterLab) -> None:
    asyncio.run(publish_r3(nats_lab.nats[0].client_url, "LAB2"))
    pid = nats_lab.nats[0].pid
    nats_lab.kill_nats(0)
    assert not nats_lab.nats[0].running and not alive(pid)
    # Two of three still make a quorum: the stream takes the message through server 2.
    assert asyncio.run(publish_r3(nats_lab.nats[2].client_url, "LAB2")) == 2
    nats_lab.start_nats(0)
    assert nats_lab.nats[0].running and nats_lab.nats[0].pid != pid
    assert nats_lab.nats[0].monitor("/healthz") == (200, {"status": "ok"})
    assert asyncio.run(publish_r3(nats_lab.nats[0].client_url, "LAB2")) == 3


def test_a_partition_cuts_a_client_off_and_heal_lets_it_back(nats_lab: ClusterLab) -> None:
    url = nats_lab.add_relay(0, 1)  # group 0, as router r1's relays are, to nats-2
    assert url.startswith("nats://127.0.0.1:")

    async def run() -> None:
        disconnected, reconnected = asyncio.Event(), asyncio.Event()
        errors: list[str] = []

        async def on_disconnect() -> None:
            disconnected.set()

        async def on_reconnect() -> None:
            reconnected.set()

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(url, reconnect_time_wait=0.2, max_reconnect_attempts=-1,
                                connect_timeout=1, disconnected_cb=on_disconnect,
                                reconnected_cb=on_reconnect, error_cb=on_error)  # fmt: skip
        try:
            port = int(url.rsplit(":", 1)[1])
            assert nc.connected_url is not None and nc.connected_url.port == port
            await nc.flush(timeout=2)
            assert nats_lab.bus_connections(0) == 1
            nats_lab.partition(0)
            await asyncio.wait_for(disconnected.wait(), 5)
            await asyncio.sleep(1.0)  # it keeps trying, and every try is refused
            assert not nc.is_connected and not reconnected.is_set()
            assert nats_lab.bus_connections(0) == 0
            assert any("Connect call failed" in e for e in errors), errors  # refused
            # No way round the relay: the server told the client of no other address.
            assert nc.discovered_servers == [] and [u.port for u in nc.servers] == [port]
            nats_lab.heal(0)
            await asyncio.wait_for(reconnected.wait(), 5)
            await nc.flush(timeout=2)
            assert nc.connected_url is not None and nc.connected_url.port == port
            assert nats_lab.bus_connections(0) == 1
        finally:
            await nc.close()

    asyncio.run(run())


def dns_a(address: tuple[str, int], name: str) -> list[str]:
    query = dns.message.make_query(name, "A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query.to_wire(), address)
        reply = dns.message.from_wire(s.recv(65535))
    return [r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for r in rrset]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.skipif(
    not router_supports_bus(),
    reason="router serve has no --bus yet (router/cli.py): the multi-router mode is not in",
)
def test_three_routers_on_the_bus_answer_dns(tmp_path: Path) -> None:
    lab = ClusterLab(REPO / "zones", tmp_path / "lab")

    def cluster(i: int) -> dict:
        status, body = lab.api(i, "GET", "/v1/cluster")
        assert status == 200, body
        return body

    try:
        lab.start(timeout=150)  # a first start compiles (numba); a busy machine is slower
        assert [r.router_id for r in lab.routers] == ["r1", "r2", "r3"]
        for router in lab.routers:
            assert router.running
            assert dns_a(router.dns, "www.cdn.example."), router.router_id
        assert re.fullmatch(r"ok \d+ node\(s\): load all 5", lab.simulator_command("load all 5"))
        wait_for(
            lambda: all(cluster(i)["live_peers"] == 2 for i in range(3)), 20, "3 routers on the bus"
        )
        assert [cluster(i)["router_id"] for i in range(3)] == ["r1", "r2", "r3"]
        # Cut off, r1 serves on and knows it is alone; its peers stop counting it.
        lab.partition(0)
        wait_for(lambda: cluster(0)["isolated"], 10, "r1 isolated")
        assert dns_a(lab.routers[0].dns, "www.cdn.example.")
        wait_for(lambda: cluster(1)["live_peers"] == 1, 10, "r2 to stop counting r1")
        lab.heal(0)
        wait_for(
            lambda: not cluster(0)["isolated"] and cluster(1)["live_peers"] == 2, 15, "r1 back"
        )
        pids = [r.pid for r in lab.routers] + [s.pid for s in lab.nats]
    finally:
        lab.stop()
    assert not any(alive(pid) for pid in pids)
