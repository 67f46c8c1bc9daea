"""Replies leave from the address the query was sent to: the router bound to the wildcard in a
network namespace whose ``lo`` holds the anycast service addresses (tests/netns.py), queried
from another namespace through a veth pair, on both UDP paths and both address families.
Resolvers drop a UDP reply from any other source (a connected socket never even sees it)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from router.dns import pktinfo
from tests import netns
from tests.conftest import RunningRouter, start_router

needs_namespaces = pytest.mark.skipif(netns.missing() is not None, reason=str(netns.missing()))

# Run in the client namespace: one query from an unconnected socket (to see the reply's source)
# and one from a connected socket, as resolvers send (the kernel drops a reply from elsewhere).
CLIENT = r"""
import json, socket, sys
import dns.message
family, address, port = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, sys.argv[1], int(sys.argv[2])
query = dns.message.make_query("www.cdn.example", "A").to_wire()
out = {}
with socket.socket(family, socket.SOCK_DGRAM) as s:
    s.settimeout(3)
    s.sendto(query, (address, port))
    data, source = s.recvfrom(65535)
    out["source"] = source[0]
    out["rcode"] = dns.message.from_wire(data).rcode()
with socket.socket(family, socket.SOCK_DGRAM) as s:
    s.settimeout(3)
    s.connect((address, port))
    s.send(query)
    try:
        out["connected_answered"] = len(s.recv(65535)) > 0
    except TimeoutError:
        out["connected_answered"] = False
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.ServiceLab]:
    with netns.service_lab() as made:
        yield made


def _start(
    lab: netns.ServiceLab, deployment_dir: Path, log: Path, listen: str, path: str
) -> RunningRouter:
    extra = ["--udp-path", path]
    if path == "batched-punted":
        # Every query sampled for the query log: the batched loop hands each to Python.
        extra = ["--udp-path", "batched", "--query-log", str(log.with_suffix(".queries")),
                 "--query-log-sample", "1"]  # fmt: skip
    return start_router(deployment_dir, log, *extra, workers=1, listen=[listen],
                        prefix=["ip", "netns", "exec", lab.server])  # fmt: skip


def _ask(lab: netns.ServiceLab, address: str, port: int) -> dict:
    result = subprocess.run(lab.command(lab.client, [sys.executable, "-c", CLIENT, address, str(port)]),
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_namespaces
@pytest.mark.parametrize("path", ["batched", "batched-punted", "per-packet"])
@pytest.mark.parametrize(
    ("listen", "service"),
    [("0.0.0.0:0", netns.SERVICE_V4), ("[::]:0", netns.SERVICE_V6)],
    ids=["v4", "v6"],
)
def test_udp_reply_comes_from_the_service_address(lab: netns.ServiceLab, deployment_dir: Path,
                                                  tmp_path: Path, listen: str, service: str, path: str) -> None:  # fmt: skip
    router = _start(lab, deployment_dir, tmp_path / "router.log", listen, path)
    try:
        reply = _ask(lab, service, router.port)
    finally:
        router.stop()
        router.process.stdout.close()
    assert reply["rcode"] == 0
    assert reply["source"] == service, f"reply to {service} came from {reply['source']}"
    assert reply["connected_answered"], "a connected client (a resolver) got no answer"


def _cmsg(level: int, kind: int, data: bytes) -> bytes:
    length = pktinfo.CMSG_HEADER + len(data)
    raw = struct.pack("=Qii", length, level, kind) + data
    return raw + bytes(-len(raw) % 8)


@pytest.mark.parametrize(
    "received",
    [
        # in_pktinfo as received: ifindex 7, spec_dst (the local address routed to), addr.
        [(pktinfo.IPPROTO_IP, pktinfo.IP_PKTINFO, struct.pack("=i4s4s", 7, bytes([192, 0, 2, 53]), bytes([192, 0, 2, 53])))],
        [(pktinfo.IPPROTO_IPV6, pktinfo.IPV6_PKTINFO, struct.pack("=16sI", bytes.fromhex("20010db8005300000000000000000053"), 3))],
        [(pktinfo.IPPROTO_IPV6, pktinfo.IPV6_PKTINFO, struct.pack("=16sI", bytes.fromhex("fe800000000000000000000000000001"), 3))],
        [(1, 29, struct.pack("=I", 5)),  # an SO_RXQ_OVFL count before it
         (pktinfo.IPPROTO_IP, pktinfo.IP_PKTINFO, struct.pack("=i4s4s", 2, bytes([10, 0, 0, 1]), bytes([192, 0, 2, 53])))],
        [],
    ],
    ids=["v4", "v6", "v6-link-local", "v4-after-another", "none"],
)  # fmt: skip
def test_compiled_and_python_replies_carry_the_same_source(received: list) -> None:
    """The batched loop's control message (numba) is the one the Python paths send."""
    expected = pktinfo.reply_ancillary(received)
    raw = b"".join(_cmsg(*c) for c in received)
    rx = np.zeros(pktinfo.CONTROL_SIZE, dtype=np.uint8)
    rx[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    tx = np.full(pktinfo.CONTROL_SIZE, 0xAA, dtype=np.uint8)
    used = pktinfo.reply_control(rx, len(raw), tx)
    assert pktinfo.parse_control(raw) == received
    if not expected:
        assert used == 0
        return
    assert tx[:used].tobytes() == _cmsg(*expected[0])
    level, kind, data = expected[0]
    if kind == pktinfo.IP_PKTINFO:
        assert data[4:8] == received[-1][2][8:12] and data[:4] == bytes(
            4
        )  # from the query's destination, any link
    else:
        link_local = received[0][2][0] == 0xFE
        assert data[:16] == received[0][2][:16]
        assert struct.unpack("=I", data[16:])[0] == (3 if link_local else 0)


@needs_namespaces
def test_one_process_serves_v4_and_v6(lab: netns.ServiceLab, deployment_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    """Two --listen flags: both are served (IPV6_V6ONLY lets [::]:53 and 0.0.0.0:53 coexist),
    READY lists both, and each family's replies come from its service address."""
    router = start_router(deployment_dir, tmp_path / "router.log", workers=1,
                          listen=["0.0.0.0:53", "[::]:53"], prefix=["ip", "netns", "exec", lab.server])  # fmt: skip
    try:
        assert router.listeners == ("0.0.0.0:53", "[::]:53")
        for service in (netns.SERVICE_V4, netns.SERVICE_V6):
            reply = _ask(lab, service, 53)
            assert (
                reply["rcode"] == 0 and reply["source"] == service and reply["connected_answered"]
            )
        workers = Path(f"/proc/{router.process.pid}/task/{router.process.pid}/children").read_text()
        assert len(workers.split()) == 2  # one worker per listener
    finally:
        router.stop()
        router.process.stdout.close()
