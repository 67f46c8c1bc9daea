"""Sockets: the UDP receive loop and a TCP server per RFC 7766, both feeding a Responder.

TCP: two-octet length prefix, any number of (pipelined) queries per connection, replies
in order, an idle timeout, and a cap on open connections so a flood cannot exhaust fds.
"""

from __future__ import annotations

import contextlib
import logging
import select
import selectors
import socket
import struct
import threading
import time

from router.dns import pktinfo
from router.dns.engine import Responder

log = logging.getLogger("router.dns")

UDP_RECV_SIZE = 65535
_NO_ANCILLARY: list = []
MAX_TCP_CONNECTIONS = 1024
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
                "!HHHHHH", qid, 0x8000 | (flags & 0x7900) | 2, 0, 0, 0, 0
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


class _Connection:
    __slots__ = ("sock", "peer", "inbuf", "outbuf", "last_active")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last_active = time.monotonic()


def serve_tcp(
    listener: socket.socket,
    responder: Responder,
    counters: Counters,
    stop: threading.Event,
    idle_timeout: float,
    retire: threading.Event | None = None,
) -> None:
    """Serve until ``stop``; once ``retire`` is set, accept no more connections and return
    when the open ones are done (quiet for RETIRE_QUIET_S) or after RETIRE_GRACE_S."""
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    connections: dict[int, _Connection] = {}

    def close(conn: _Connection) -> None:
        connections.pop(conn.sock.fileno(), None)
        try:
            selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def flush(conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            close(conn)
            return
        del conn.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        selector.modify(conn.sock, events, conn)

    retiring_since: float | None = None
    while not stop.is_set():
        if retire is not None and retire.is_set() and retiring_since is None:
            retiring_since = time.monotonic()
            selector.unregister(listener)
        for key, events in selector.select(timeout=0.05 if retiring_since is not None else 0.5):
            if key.data is None:
                try:
                    sock, address = listener.accept()
                except (BlockingIOError, OSError):
                    continue
                if len(connections) >= MAX_TCP_CONNECTIONS:
                    counters.tcp_refused += 1
                    sock.close()
                    continue
                sock.setblocking(False)
                conn = _Connection(sock, address[0])
                connections[sock.fileno()] = conn
                selector.register(sock, selectors.EVENT_READ, conn)
                continue
            conn = key.data
            if events & selectors.EVENT_WRITE:
                flush(conn)
                if conn.sock.fileno() < 0:
                    continue
            if not events & selectors.EVENT_READ:
                continue
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                close(conn)
                continue
            if not data:
                close(conn)
                continue
            conn.last_active = time.monotonic()
            conn.inbuf += data
            while len(conn.inbuf) >= 2:
                (length,) = _LENGTH.unpack_from(conn.inbuf)
                if len(conn.inbuf) < 2 + length:
                    break
                packet = bytes(conn.inbuf[2 : 2 + length])
                del conn.inbuf[: 2 + length]
                counters.tcp_queries += 1
                reply = safe_respond(responder, packet, conn.peer, False, counters)
                if reply is not None:
                    conn.outbuf += _LENGTH.pack(len(reply)) + reply
            if len(conn.outbuf) > MAX_TCP_PENDING_OUTPUT:
                log.info(
                    "closing TCP connection from %s: %d bytes of replies unread",
                    conn.peer,
                    len(conn.outbuf),
                )
                close(conn)
            elif conn.outbuf:
                flush(conn)
        now = time.monotonic()
        for conn in [c for c in connections.values() if now - c.last_active > idle_timeout]:
            close(conn)
        if retiring_since is not None:
            for conn in [
                c
                for c in connections.values()
                if now - c.last_active > RETIRE_QUIET_S and not c.outbuf
            ]:
                close(conn)
            if not connections or now - retiring_since > RETIRE_GRACE_S:
                break
    for conn in list(connections.values()):
        close(conn)
    selector.close()
