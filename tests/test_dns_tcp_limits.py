"""TCP per RFC 7766 section 6.2, against ``serve_tcp`` on loopback with small limits (in a
thread, answering with a stub responder: these tests are about connections, not answers),
and once against a real router for the counters it exports."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.message
import dns.query
import numpy as np
import pytest

from router.dns import transport
from router.dns.transport import Counters, serve_tcp
from tests.conftest import recv_exactly, start_router

IDLE_S = 1.0
PARTIAL_S = 0.4


class EchoResponder:
    """Answers each query with its own bytes, QR set (the framing is what is under test)."""

    def respond(self, packet: bytes, source: str, udp: bool, sampled: bool = False) -> bytes:
        return packet[:2] + bytes([packet[2] | 0x80]) + packet[3:]

    def account(self, *args: object) -> None:
        pass


@dataclass
class Server:
    address: tuple[str, int]
    stats: np.ndarray
    stop: threading.Event

    def counter(self, name: str) -> int:
        return int(self.stats[transport.TCP_COUNTER_NAMES.index(name)])


@pytest.fixture
def server() -> Iterator[Server]:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    stats = np.zeros(transport.TCP_COUNTERS, dtype=np.int64)
    stop = threading.Event()
    thread = threading.Thread(target=serve_tcp, args=(listener, EchoResponder(), Counters(), stop, IDLE_S),
                              kwargs={"stats": stats, "max_connections": 4, "max_per_client": 3,
                                      "partial_timeout": PARTIAL_S}, daemon=True)  # fmt: skip
    thread.start()
    yield Server(listener.getsockname(), stats, stop)
    stop.set()
    thread.join(timeout=5)
    listener.close()


def _query(qid: int) -> bytes:
    body = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x03www\x00\x00\x01\x00\x01"
    return struct.pack("!H", len(body)) + body


def _connect(server: Server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(server.address, timeout=3, source_address=(source, 0))
    return sock


def _ask(sock: socket.socket, qid: int) -> int:
    sock.sendall(_query(qid))
    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    reply = recv_exactly(sock, length)
    return struct.unpack_from("!H", reply)[0]


def _closed(sock: socket.socket, within: float) -> bool:
    """True once the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _wait(condition, timeout: float = 3.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_pipelined_queries_are_each_answered(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(b"".join(_query(i) for i in range(1, 21)))
        ids = []
        for _ in range(20):
            (length,) = struct.unpack("!H", recv_exactly(sock, 2))
            ids.append(struct.unpack_from("!H", recv_exactly(sock, length))[0])
    assert sorted(ids) == list(range(1, 21))


def test_trickled_bytes_do_not_keep_a_connection_open(server: Server) -> None:
    """A slow sender that never completes a message is closed after the partial limit, even
    though a byte arrives every 0.1 s (each would have reset the old idle timer)."""
    with _connect(server) as sock:
        message = _query(7)
        started = time.monotonic()
        for byte in message[:-1]:
            sock.send(bytes([byte]))
            time.sleep(0.1)
            if server.counter("closed_partial"):
                break
        assert _closed(sock, 2.0)
        assert PARTIAL_S <= time.monotonic() - started < IDLE_S + 1.0
    assert server.counter("closed_partial") == 1 and server.counter("closed_idle") == 0


def test_idle_runs_from_the_last_complete_query(server: Server) -> None:
    with _connect(server) as sock:
        for qid in range(3):  # kept open by complete queries for longer than IDLE_S
            assert _ask(sock, qid) == qid
            time.sleep(IDLE_S * 0.6)
        started = time.monotonic()
        assert _closed(sock, IDLE_S + 1.0)
        assert time.monotonic() - started < IDLE_S + 0.5
    assert _wait(lambda: server.counter("closed_idle") == 1)


def test_a_full_table_closes_the_longest_idle_for_a_new_client(server: Server) -> None:
    # Four connections (the limit) from four addresses, the first idle longest.
    held = [_connect(server, f"127.0.0.{i}") for i in range(2, 6)]
    try:
        for i, sock in enumerate(held):
            assert _ask(sock, i) == i
            time.sleep(0.05)
        assert _wait(lambda: server.counter("open") == 4)
        with _connect(server, "127.0.0.9") as fresh:
            assert _ask(fresh, 99) == 99  # a new client is served
        assert _closed(held[0], 2.0), "the longest idle connection was not the one closed"
        assert _ask(held[3], 33) == 33  # the others stay
        assert server.counter("evicted") == 1
    finally:
        for sock in held:
            sock.close()


def test_one_address_holds_only_its_share(server: Server) -> None:
    held = [_connect(server, "127.0.0.7") for _ in range(3)]
    try:
        for i, sock in enumerate(held):
            assert _ask(sock, i) == i
        with _connect(server, "127.0.0.7") as over:
            assert _closed(over, 2.0)
        with _connect(server, "127.0.0.8") as other:
            assert _ask(other, 5) == 5
        assert server.counter("refused_per_client") == 1
    finally:
        for sock in held:
            sock.close()


def test_the_router_exports_its_tcp_counters(deployment_dir: Path, tmp_path: Path) -> None:
    router = start_router(deployment_dir, tmp_path / "router.log", "--tcp-idle-timeout", "5",
                          workers=1)  # fmt: skip
    try:
        query = dns.message.make_query("www.cdn.example", "A").to_wire()
        with socket.create_connection((router.host, router.port), timeout=3) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            (length,) = struct.unpack("!H", recv_exactly(sock, 2))
            assert dns.message.from_wire(recv_exactly(sock, length)).rcode() == 0
            with socket.create_connection((router.host, router.port), timeout=3) as slow:
                slow.sendall(struct.pack("!H", len(query)) + query[:5])  # never finished
                started = time.monotonic()
                assert _closed(slow, 4.0)  # the partial limit (2 s), well before the idle one
                assert time.monotonic() - started < 4.0
        # the first one the client closed itself

        def tcp() -> dict:
            with urllib.request.urlopen(f"{router.api}/v1/dns", timeout=5) as response:  # noqa: S310
                return json.loads(response.read())["tcp"]

        assert _wait(lambda: tcp()["closed_partial"] == 1 and tcp()["closed_by_peer"] == 1, 3.0), (
            tcp()
        )
        counts = tcp()
        assert counts["accepted"] == 2 and counts["open"] == 0
        with urllib.request.urlopen(f"{router.api}/metrics", timeout=5) as response:  # noqa: S310
            metrics = response.read().decode()
        assert 'router_tcp_closed_total{reason="partial"} 1.0' in metrics
        assert "router_tcp_accepted_total 2.0" in metrics
    finally:
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()


def test_edns_tcp_keepalive_is_answered_over_tcp_only(router) -> None:  # noqa: ANN001 - conftest's
    """RFC 7828: a TCP query with the option gets the connection's idle timeout (the shared
    router runs with --tcp-idle-timeout 2: 20 units of 100 ms); UDP never gets the option, nor
    does a TCP query without it."""

    def keepalive(reply: dns.message.Message) -> list[bytes]:
        return [o.to_wire() for o in reply.options if o.otype == 11]

    asking = dns.message.make_query("www.cdn.example", "A", use_edns=0,
                                    options=[dns.edns.GenericOption(11, b"")])  # fmt: skip
    tcp = dns.query.tcp(asking, router.host, port=router.port, timeout=3)
    assert tcp.rcode() == 0 and keepalive(tcp) == [struct.pack("!H", 20)]
    udp = dns.query.udp(asking, router.host, port=router.port, timeout=3)
    assert udp.rcode() == 0 and keepalive(udp) == []
    plain = dns.query.tcp(dns.message.make_query("www.cdn.example", "A", use_edns=0), router.host,
                          port=router.port, timeout=3)  # fmt: skip
    assert plain.rcode() == 0 and keepalive(plain) == []
