"""The live flood: mutated packets at a running router over UDP and TCP, every reply checked.

A reply is well formed when it is at least a header, has QR set, carries the ID of a packet
the server was sent (on UDP: of the bursts in flight, each packet of a burst with its own ID;
on TCP: of the messages the server cut from that connection's stream) and parses with
dnspython (a reply to an UPDATE is parsed as the plain message it is: dnspython would read
RFC 2136 sections into it). Parse results are cached by the reply's bytes after the ID, so
the same FORMERR is decoded once.
"""

from __future__ import annotations

import collections
import random
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message

from loadtest.hardening.mutate import Mutator, server_cut, tcp_stream

UDP_BURST = 256
UDP_DRAIN_S = 0.002
LATE_BURSTS = 16
TCP_CONCURRENT = 40
TCP_IDLE_S = 0.25  # a connection with no reply for this long is done
TCP_MAX_S = 3.0  # and one is never kept longer than this
EXAMPLES = 10


@dataclass
class Tally:
    sent: int = 0
    replies: int = 0
    malformed: int = 0
    examples: list = field(default_factory=list)
    parse_cache: dict = field(default_factory=dict)

    def check(self, reply: bytes, ids: set[bytes] | dict, query_of=None) -> None:  # noqa: ANN001
        self.replies += 1
        problem = None
        if len(reply) < 12:
            problem = "shorter than a header"
        elif not reply[2] & 0x80:
            problem = "QR clear"
        elif reply[:2] not in ids:
            problem = "ID of no packet sent"
        else:
            problem = self.parse(reply)
        if problem is not None:
            self.malformed += 1
            if len(self.examples) < EXAMPLES:
                query = query_of(reply[:2]) if query_of else None
                self.examples.append({"problem": problem, "reply": reply.hex(),
                                      "query": None if query is None else query.hex()})  # fmt: skip

    def parse(self, reply: bytes) -> str | None:
        key = reply[2:]
        if key in self.parse_cache:
            return self.parse_cache[key]
        wire = reply
        if (reply[2] >> 3) & 0x0F == 5:
            wire = reply[:2] + bytes([reply[2] & 0x87]) + reply[3:]
        try:
            dns.message.from_wire(wire)
            result = None
        except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
            result = f"does not parse: {type(exc).__name__}: {exc}"
        if len(self.parse_cache) > 200_000:
            self.parse_cache.clear()
        self.parse_cache[key] = result
        return result


def udp_flood(port: int, mutator: Mutator, count: int, deadline: float, every=None) -> Tally:  # noqa: ANN001
    """Send ``count`` mutated packets (or until ``deadline``) in bursts; check every reply.
    ``every(sent)``: called between bursts (the worker watch)."""
    tally = Tally()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    address = ("127.0.0.1", port)
    # The packets of the last LATE_BURSTS bursts by ID: a reply that comes a few bursts late
    # (a busy machine) still answers a packet we sent; 16 x 256 IDs never wrap (65,536).
    window: dict[bytes, bytes] = {}
    bursts: collections.deque[list[bytes]] = collections.deque()
    counter = 0
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    try:
        while tally.sent < count and time.monotonic() < deadline:
            burst: dict[bytes, bytes] = {}
            for _ in range(min(UDP_BURST, count - tally.sent)):
                packet = mutator.packet()
                if len(packet) >= 2:
                    qid = struct.pack("!H", counter & 0xFFFF)
                    counter += 1
                    packet = qid + packet[2:]
                    burst[qid] = packet
                try:
                    sock.sendto(packet, address)
                except (BlockingIOError, OSError):
                    pass  # our own send buffer full: still sent as far as the count goes
                tally.sent += 1
            window.update(burst)
            bursts.append(list(burst))
            if len(bursts) > LATE_BURSTS:
                for qid in bursts.popleft():
                    if window.get(qid) is not None and qid not in burst:
                        del window[qid]
            while selector.select(UDP_DRAIN_S):
                try:
                    while True:
                        reply = sock.recv(65535)
                        tally.check(reply, window, window.get)
                except BlockingIOError:
                    pass
            if every is not None:
                every(tally.sent)
        end = time.monotonic() + 0.2
        while time.monotonic() < end and selector.select(0.05):
            try:
                while True:
                    tally.check(sock.recv(65535), window, window.get)
            except BlockingIOError:
                pass
    finally:
        selector.close()
        sock.close()
    return tally


@dataclass
class _Conn:
    sock: socket.socket
    out: bytes
    ids: dict
    started: float
    last: float
    inbuf: bytearray = field(default_factory=bytearray)


def tcp_flood(port: int, mutator: Mutator, count: int, deadline: float, rng: random.Random,
              bad_share: float = 0.15) -> tuple[Tally, dict]:  # fmt: skip
    """Connections of 1..40 mutated messages each, ``bad_share`` of them with one wrong length
    prefix, TCP_CONCURRENT at a time, until ``count`` messages went out (or ``deadline``)."""
    tally = Tally()
    stats = {
        "connections": 0,
        "bad_prefix_connections": 0,
        "closed_by_server": 0,
        "connect_errors": 0,
    }
    selector = selectors.DefaultSelector()
    open_conns: dict[int, _Conn] = {}

    def start() -> None:
        n = min(rng.randint(1, 40), count - tally.sent)
        packets = [mutator.packet() for _ in range(n)]
        bad = rng.random() < bad_share
        stream = tcp_stream(packets, rng, bad)
        ids = {m[:2]: m for m in server_cut(stream) if len(m) >= 12}
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        now = time.monotonic()
        conn = _Conn(sock, stream, ids, now, now)
        open_conns[sock.fileno()] = conn
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        tally.sent += n
        stats["connections"] += 1
        stats["bad_prefix_connections"] += bad

    def finish(conn: _Conn) -> None:
        selector.unregister(conn.sock)
        open_conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    try:
        while (tally.sent < count and time.monotonic() < deadline) or open_conns:
            while (
                len(open_conns) < TCP_CONCURRENT
                and tally.sent < count
                and time.monotonic() < deadline
            ):
                start()
            now = time.monotonic()
            for key, events in selector.select(0.02):
                conn = key.data
                if events & selectors.EVENT_WRITE and conn.out:
                    try:
                        sent = conn.sock.send(conn.out)
                        conn.out = conn.out[sent:]
                    except BlockingIOError:
                        pass
                    except OSError:
                        stats["connect_errors"] += 1
                        finish(conn)
                        continue
                    if not conn.out:
                        selector.modify(conn.sock, selectors.EVENT_READ, conn)
                if events & selectors.EVENT_READ:
                    try:
                        data = conn.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        stats["closed_by_server"] += 1
                        finish(conn)
                        continue
                    conn.last = now
                    conn.inbuf += data
                    for reply in server_cut(bytes(conn.inbuf)):
                        tally.check(reply, conn.ids, conn.ids.get)
                        del conn.inbuf[: 2 + len(reply)]
            for conn in list(open_conns.values()):
                if (
                    not conn.out and now - conn.last > TCP_IDLE_S
                ) or now - conn.started > TCP_MAX_S:
                    finish(conn)
    finally:
        for conn in list(open_conns.values()):
            finish(conn)
        selector.close()
    return tally, stats
