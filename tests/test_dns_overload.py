"""Past saturation: big receive buffers, the kernel's drops counted, and UDP shed before TCP
stalls (a TCP query is answered while a UDP flood overruns the only worker). Loopback only;
the flood is bounded in count and time."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query

from router.service.sockets import UDP_RCVBUF, grow_receive_buffer, short_buffer_advice
from tests.conftest import start_router

FLOOD_PACKETS = 400_000
FLOOD_SECONDS = 6.0


def test_receive_buffers_are_grown_or_the_shortfall_is_named() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        default = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        granted = grow_receive_buffer(sock)
    assert granted > default
    if os.geteuid() == 0:  # SO_RCVBUFFORCE is not capped by net.core.rmem_max
        assert granted >= 2 * UDP_RCVBUF and short_buffer_advice(granted) is None
    advice = short_buffer_advice(212_992)
    assert advice is not None and "net.core.rmem_max=4194304" in advice and "106496" in advice


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def test_tcp_is_answered_while_udp_floods_the_only_worker(deployment_dir: Path, tmp_path: Path) -> None:  # fmt: skip
    router = start_router(deployment_dir, tmp_path / "router.log", workers=1)
    query = dns.message.make_query("www.cdn.example", "A")
    wire = query.to_wire()
    stop = threading.Event()
    sent = [0, 0]  # per flooder thread

    def flood(me: int) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # replies may drop
            while (
                sent[me] < FLOOD_PACKETS // 2 and time.monotonic() < deadline and not stop.is_set()
            ):
                for _ in range(500):
                    sender.sendto(wire, (router.host, router.port))
                sent[me] += 500

    flooders = [threading.Thread(target=flood, args=(i,)) for i in range(2)]
    try:
        before = _get_json(f"{router.api}/v1/dns")
        assert before["udp_receive_buffer_bytes"] >= 2 * UDP_RCVBUF or os.geteuid() != 0
        for t in flooders:
            t.start()
        time.sleep(0.5)
        answered = 0
        while any(t.is_alive() for t in flooders) and answered < 50:
            reply = dns.query.tcp(query, router.host, port=router.port, timeout=2)
            assert reply.rcode() == 0 and reply.answer
            answered += 1
        assert answered >= 5, "too few TCP queries went in during the flood to tell"
        stop.set()
        for t in flooders:
            t.join(timeout=10)
        deadline = time.monotonic() + 10
        after = _get_json(f"{router.api}/v1/dns")
        while after["udp_receive_queue_bytes"] and time.monotonic() < deadline:
            time.sleep(0.2)  # the worker answers what the kernel queued
            after = _get_json(f"{router.api}/v1/dns")
        # Every flood packet was either read by the worker or counted as dropped by the kernel.
        received = after["totals"]["received"] - before["totals"]["received"]
        dropped = after["udp_receive_drops"] - before["udp_receive_drops"]
        assert received + dropped == sum(sent)
        assert dropped > 0, f"the flood ({sum(sent)} queries) did not overrun the worker"
        assert received > 0 and router.process.poll() is None
    finally:
        stop.set()
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()
