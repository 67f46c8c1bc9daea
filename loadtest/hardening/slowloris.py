"""Slow TCP clients: many connections from many loopback addresses, each trickling a query
one octet at a time, reopened when the server closes them, while a sampler counts how many
are open at once (ours, and the router's own count from /v1/dns).
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.message

TICK_S = 0.05
SAMPLE_EVERY_S = 0.5


def source_addresses(count: int) -> list[str]:
    """127.0.1.1 and up (250 per /24): never 127.0.0.x, where the bench's other clients are."""
    return [f"127.0.{1 + k // 250}.{1 + k % 250}" for k in range(count)]


@dataclass
class _Slow:
    sock: socket.socket
    message: bytes
    at: int = 0
    next_send: float = 0.0
    established: bool = False


@dataclass
class HoldResult:
    opened: int = 0
    closed_by_server: int = 0
    connect_failures: int = 0
    bytes_trickled: int = 0
    client_open_max: int = 0
    router_open_max: int | None = None
    ready_after_s: float | None = None  # when all were connected (or the ramp ran out)
    samples: list = field(default_factory=list)  # (seconds, ours open, router's open)


def hold(port: int, count: int, addresses: list[str], seconds: float, trickle_s: float, ramp_s: float,
         ready: Callable[[], None], stop: Callable[[], bool], router_open: Callable[[], int | None],
         max_opens: int) -> HoldResult:  # fmt: skip
    """Keep ``count`` slow connections going for at most ``seconds`` (or until ``stop()``);
    ``ready()`` is called once, when all ``count`` are connected or after ``ramp_s``."""
    wire = dns.message.make_query("www.cdn.example.", "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    selector = selectors.DefaultSelector()
    conns: dict[int, _Slow] = {}
    result = HoldResult()
    started = time.monotonic()
    deadline = started + seconds
    k = 0

    def open_one(now: float) -> None:
        nonlocal k
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((addresses[k % len(addresses)], 0))
        except OSError:
            result.connect_failures += 1
            sock.close()
            return
        k += 1
        sock.connect_ex(("127.0.0.1", port))
        conn = _Slow(sock, framed, next_send=now + trickle_s)
        conns[sock.fileno()] = conn
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        result.opened += 1

    def drop(conn: _Slow, by_server: bool) -> None:
        selector.unregister(conn.sock)
        conns.pop(conn.sock.fileno(), None)
        conn.sock.close()
        if by_server:
            result.closed_by_server += 1

    last_sample = 0.0
    try:
        while time.monotonic() < deadline and not stop():
            now = time.monotonic()
            while len(conns) < count and result.opened < max_opens:
                open_one(now)
            for key, events in selector.select(TICK_S):
                conn = key.data
                if events & selectors.EVENT_WRITE and not conn.established:
                    error = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        result.connect_failures += 1
                        drop(conn, False)
                        continue
                    conn.established = True
                    selector.modify(conn.sock, selectors.EVENT_READ, conn)
                if events & selectors.EVENT_READ:
                    try:
                        data = conn.sock.recv(65535)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        drop(conn, conn.established)
            now = time.monotonic()
            for conn in list(conns.values()):
                if conn.established and now >= conn.next_send:
                    try:
                        conn.sock.send(conn.message[conn.at : conn.at + 1])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        drop(conn, True)
                        continue
                    result.bytes_trickled += 1
                    conn.at = (conn.at + 1) % len(conn.message)
                    conn.next_send = now + trickle_s
            ours = sum(1 for c in conns.values() if c.established)
            if result.ready_after_s is None and (ours >= count or now - started > ramp_s):
                result.ready_after_s = round(now - started, 2)
                ready()
            if now - last_sample >= SAMPLE_EVERY_S:
                last_sample = now
                theirs = router_open()
                result.samples.append((round(now - started, 2), ours, theirs))
                result.client_open_max = max(result.client_open_max, ours)
                if theirs is not None:
                    result.router_open_max = max(result.router_open_max or 0, theirs)
    finally:
        for conn in list(conns.values()):
            drop(conn, False)
        selector.close()
    return result
