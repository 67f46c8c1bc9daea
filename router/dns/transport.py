"""Sockets: the UDP receive loop and a TCP server per RFC 7766, both feeding a Responder.

TCP: two-octet length prefix, any number of (pipelined) queries per connection, each answered
as it completes; an idle timeout that only complete queries reset and a shorter one for a
message left half-sent (so trickling bytes holds nothing open), a cap on open connections that
closes the longest idle to make room, and a cap per client address. What it does is counted
(TCP_COUNTER_NAMES) for /v1/dns and /metrics.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import select
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from router.dns import pktinfo, wire
from router.dns.engine import Responder

log = logging.getLogger("router.dns")

UDP_RECV_SIZE = 65535
_NO_ANCILLARY: list = []
# A client that pipelines queries but never reads its replies is cut off here, so it
# cannot make the worker buffer without bound.
MAX_TCP_PENDING_OUTPUT = 1 << 20
# A retiring worker (a reload started its successor on the same sockets) stops accepting
# and closes each TCP connection once it is quiet; a busy one is closed after this long.
RETIRE_QUIET_S = 0.2
RETIRE_GRACE_S = 5.0
_LENGTH = struct.Struct("!H")


class Counters:
    """Per-worker packet counters (exposed through the supervisor later)."""

    def __init__(self) -> None:
        self.udp_queries = 0
        self.tcp_queries = 0
        self.errors = 0
        self.tcp_refused = 0


def safe_respond(
    responder: Responder,
    packet: bytes,
    source: str,
    udp: bool,
    counters: Counters,
    sampled: bool = False,
) -> bytes | None:
    try:
        return responder.respond(packet, source, udp, sampled)
    except Exception:  # a bug must cost one query, never the worker
        counters.errors += 1
        if counters.errors <= 10 or counters.errors % 1000 == 0:
            log.exception(
                "internal error answering a query from %s (%d so far)", source, counters.errors
            )
        if len(packet) >= 12 and not packet[2] & 0x80:
            qid, flags = struct.unpack_from("!HH", packet)
            reply = struct.pack(
                "!HHHHHH",
                qid,
                0x8000 | (flags & wire.echoed_flags((flags >> 11) & 0xF)) | 2,
                0,
                0,
                0,
                0,
            )  # SERVFAIL
            with contextlib.suppress(Exception):  # counted if it can be; answered either way
                responder.account(reply, source, udp, sampled)
            return reply
        return None


class WorkerStop(BaseException):
    """Raised by the worker's signal handler to leave the blocking receive loop.

    A BaseException, so that no `except Exception` on the way swallows it.
    """


def serve_udp(
    sock: socket.socket,
    responder: Responder,
    counters: Counters,
    retire: threading.Event | None = None,
) -> None:
    """Answer until WorkerStop, or until ``retire`` is set (every query taken is answered).

    Receives without blocking (MSG_DONTWAIT: the socket's own flags are shared with the
    worker that follows this one on a reload) and waits in poll() only when nothing is
    queued, so a busy socket costs one system call per packet."""
    if pktinfo.is_enabled(sock):
        # A wildcard bind: each reply goes from the address its query was sent to.
        def receive() -> tuple[bytes, tuple, list]:
            packet, ancdata, _flags, address = sock.recvmsg(
                UDP_RECV_SIZE, pktinfo.ANCILLARY_SPACE, socket.MSG_DONTWAIT
            )
            return packet, address, ancdata

        def send(reply: bytes, address: tuple, ancdata: list) -> None:
            sock.sendmsg([reply], pktinfo.reply_ancillary(ancdata), 0, address)

    else:
        recvfrom = sock.recvfrom
        sendto = sock.sendto

        def receive() -> tuple[bytes, tuple, list]:
            packet, address = recvfrom(UDP_RECV_SIZE, socket.MSG_DONTWAIT)
            return packet, address, _NO_ANCILLARY

        def send(reply: bytes, address: tuple, ancdata: list) -> None:
            sendto(reply, address)

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while retire is None or not retire.is_set():
        try:
            packet, address, ancdata = receive()
        except BlockingIOError:
            try:
                poller.poll(500)
            except WorkerStop:
                return
            continue
        except WorkerStop:
            return
        except OSError as exc:
            log.warning("UDP receive failed: %s", exc)
            continue
        counters.udp_queries += 1
        reply = safe_respond(responder, packet, address[0], True, counters)
        if reply is not None:
            try:
                send(reply, address, ancdata)
            except OSError as exc:
                log.debug("UDP send to %s failed: %s", address[0], exc)


# TCP (RFC 7766 section 6.2). Limits per worker; each worker has its own listening socket.
MAX_TCP_CONNECTIONS = 1024
MAX_TCP_PER_CLIENT = 32  # connections from one address at once (one resolver needs a few)
TCP_PARTIAL_TIMEOUT_S = 2.0  # a message begun must be complete within this
SWEEP_EVERY_S = 0.1
FILES_BESIDE_TCP = 256  # open files a worker needs beyond its TCP connections


@dataclass(frozen=True)
class TcpLimits:
    """``router serve --tcp-max-connections / --tcp-max-per-client / --tcp-partial-timeout``:
    per worker process (each has its own listening socket and connection table)."""

    max_connections: int = MAX_TCP_CONNECTIONS
    max_per_client: int = MAX_TCP_PER_CLIENT
    partial_timeout: float = TCP_PARTIAL_TIMEOUT_S

    def open_files(self) -> int:
        """The open-file limit a worker needs to hold ``max_connections``."""
        return self.max_connections + FILES_BESIDE_TCP


# What serve_tcp counts (an int64 array shared with the supervisor, one row per worker).
TCP_OPEN, TCP_ACCEPTED, TCP_CLOSED_IDLE, TCP_CLOSED_PARTIAL, TCP_EVICTED, TCP_REFUSED_CLIENT, \
    TCP_CLOSED_OUTPUT, TCP_CLOSED_PEER = range(8)  # fmt: skip
TCP_COUNTER_NAMES = ("open", "accepted", "closed_idle", "closed_partial", "evicted",
                     "refused_per_client", "closed_unread_output", "closed_by_peer")  # fmt: skip
TCP_COUNTERS = len(TCP_COUNTER_NAMES)


class _Connection:
    __slots__ = ("sock", "peer", "inbuf", "outbuf", "last_complete", "partial_since")

    def __init__(self, sock: socket.socket, peer: str, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last_complete = now  # accepted, or the last whole query read
        self.partial_since: float | None = None  # when the message now in inbuf began


def serve_tcp(
    listener: socket.socket,
    responder: Responder,
    counters: Counters,
    stop: threading.Event,
    idle_timeout: float,
    retire: threading.Event | None = None,
    stats: np.ndarray | None = None,
    max_connections: int = MAX_TCP_CONNECTIONS,
    max_per_client: int = MAX_TCP_PER_CLIENT,
    partial_timeout: float = TCP_PARTIAL_TIMEOUT_S,
) -> None:
    """Serve until ``stop``; once ``retire`` is set, accept no more connections and return
    when the open ones are done (quiet for RETIRE_QUIET_S) or after RETIRE_GRACE_S.

    RFC 7766: queries may be pipelined (each is answered as it completes); a connection is
    closed ``idle_timeout`` seconds after its last complete query (bytes that never make a
    message do not keep it open) or ``partial_timeout`` after a message began without ending;
    when ``max_connections`` are open, the one idle longest is closed to make room, so a new
    client is always served; one address holds at most ``max_per_client``. ``stats``: the
    TCP_* counters."""
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    # In order of their last complete query, oldest first: the eviction and idle order.
    connections: OrderedDict[int, _Connection] = OrderedDict()
    partial: dict[int, _Connection] = {}  # those with part of a message read
    per_client: dict[str, int] = {}
    tally = stats if stats is not None else np.zeros(TCP_COUNTERS, dtype=np.int64)

    def close(conn: _Connection, reason: int) -> None:
        fd = conn.sock.fileno()
        connections.pop(fd, None)
        partial.pop(fd, None)
        left = per_client.get(conn.peer, 1) - 1
        if left > 0:
            per_client[conn.peer] = left
        else:
            per_client.pop(conn.peer, None)
        try:
            selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        tally[reason] += 1
        tally[TCP_OPEN] = len(connections)

    def flush(conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(conn, TCP_CLOSED_PEER)
            return
        del conn.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        selector.modify(conn.sock, events, conn)

    def accept(now: float) -> None:
        try:
            sock, address = listener.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE) and connections:
                # Out of descriptors before max_connections (a low open-file limit): the
                # longest idle makes room, so the next accept serves the waiting client.
                close(next(iter(connections.values())), TCP_EVICTED)
            return
        peer = address[0]
        if per_client.get(peer, 0) >= max_per_client:
            counters.tcp_refused += 1
            tally[TCP_REFUSED_CLIENT] += 1
            sock.close()
            return
        if len(connections) >= max_connections:
            # The one whose last complete query is oldest makes room (RFC 7766 6.2.3).
            close(next(iter(connections.values())), TCP_EVICTED)
        sock.setblocking(False)
        conn = _Connection(sock, peer, now)
        connections[sock.fileno()] = conn
        per_client[peer] = per_client.get(peer, 0) + 1
        selector.register(sock, selectors.EVENT_READ, conn)
        tally[TCP_ACCEPTED] += 1
        tally[TCP_OPEN] = len(connections)

    def read(conn: _Connection, now: float) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            close(conn, TCP_CLOSED_PEER)
            return
        if not data:
            close(conn, TCP_CLOSED_PEER)
            return
        fd = conn.sock.fileno()
        conn.inbuf += data
        while len(conn.inbuf) >= 2:
            (length,) = _LENGTH.unpack_from(conn.inbuf)
            if len(conn.inbuf) < 2 + length:
                break
            packet = bytes(conn.inbuf[2 : 2 + length])
            del conn.inbuf[: 2 + length]
            conn.last_complete = now
            conn.partial_since = None
            connections.move_to_end(fd)
            counters.tcp_queries += 1
            reply = safe_respond(responder, packet, conn.peer, False, counters)
            if reply is not None:
                conn.outbuf += _LENGTH.pack(len(reply)) + reply
        if conn.inbuf:
            if conn.partial_since is None:
                conn.partial_since = now
                partial[fd] = conn
        else:
            partial.pop(fd, None)
        if len(conn.outbuf) > MAX_TCP_PENDING_OUTPUT:
            log.info("closing TCP connection from %s: %d bytes of replies unread", conn.peer,
                     len(conn.outbuf))  # fmt: skip
            close(conn, TCP_CLOSED_OUTPUT)
        elif conn.outbuf:
            flush(conn)

    def sweep(now: float) -> None:
        for conn in list(connections.values()):  # oldest first: stop at the first fresh one
            if now - conn.last_complete <= idle_timeout:
                break
            close(conn, TCP_CLOSED_IDLE)
        for conn in [c for c in partial.values() if now - c.partial_since > partial_timeout]:
            close(conn, TCP_CLOSED_PARTIAL)

    retiring_since: float | None = None
    last_sweep = time.monotonic()
    while not stop.is_set():
        if retire is not None and retire.is_set() and retiring_since is None:
            retiring_since = time.monotonic()
            selector.unregister(listener)
        ready = selector.select(timeout=0.05 if retiring_since is not None else SWEEP_EVERY_S)
        now = time.monotonic()
        for key, events in ready:
            if key.data is None:
                accept(now)
                continue
            conn = key.data
            if events & selectors.EVENT_WRITE:
                flush(conn)
                if conn.sock.fileno() < 0:
                    continue
            if events & selectors.EVENT_READ:
                read(conn, now)
        if now - last_sweep >= SWEEP_EVERY_S:
            last_sweep = now
            sweep(now)
        if retiring_since is not None:
            for conn in [c for c in connections.values()
                         if now - c.last_complete > RETIRE_QUIET_S and not c.outbuf]:  # fmt: skip
                close(conn, TCP_CLOSED_IDLE)
            if not connections or now - retiring_since > RETIRE_GRACE_S:
                break
    for conn in list(connections.values()):
        close(conn, TCP_CLOSED_IDLE)
    selector.close()
