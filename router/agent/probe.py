"""TCP connect times, many at once and all within one timeout; no root, no ICMP.

A connect that completes, or is refused (the peer answered with a reset), took one round
trip: both count as an answer. A timeout, or the network or host reported unreachable, is no
answer (``None``). Connections made are reset at once (``SO_LINGER`` 0), so a probe leaves no
``TIME_WAIT`` behind and the far side sees a connection open and close.
"""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import struct
import time

ANSWERED = (0, errno.ECONNREFUSED)
_LINGER_RESET = struct.pack("ii", 1, 0)


def parse_ip_port(text: str, what: str, default_port: int | None = None) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6ADDR]:PORT``; with ``default_port`` also ``ADDR`` and ``V6ADDR``.
    The address must be an IP literal: probes never wait on DNS."""
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]")
        if port and not port.startswith(":"):
            raise ValueError(f"{what}: expected [V6ADDR]:PORT, got {text!r}")
        port = port[1:]
    elif text.count(":") > 1:  # a bare IPv6 address
        addr, port = text, ""
    else:
        addr, sep, port = text.partition(":")
    if not port:
        if default_port is None:
            raise ValueError(f"{what}: a port is needed (ADDR:PORT, IPv6 as [ADDR]:PORT): {text!r}")
        port = str(default_port)
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"{what}: {addr!r} is not an IP address (no names: probes never wait on DNS)") from None  # fmt: skip
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: bad port {port!r} in {text!r}")
    return addr, int(port)


def connect_times(targets: list[tuple[str, int]], timeout: float) -> list[float | None]:
    """For each ``(ip, port)``: milliseconds until the TCP handshake completed or was refused,
    or None. Returns within ``timeout`` s (plus the bookkeeping), whatever the targets do."""
    results: list[float | None] = [None] * len(targets)
    started: dict[int, float] = {}
    pending: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    deadline = time.monotonic() + timeout
    try:
        for i, (addr, port) in enumerate(targets):
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                continue
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            started[i] = time.perf_counter()
            err = sock.connect_ex((addr, port))
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                pending[i] = sock
                selector.register(sock, selectors.EVENT_WRITE, i)
                continue
            if err in ANSWERED:
                results[i] = (time.perf_counter() - started[i]) * 1000.0
            sock.close()
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(remaining):
                i = key.data
                sock = pending.pop(i)
                elapsed = (time.perf_counter() - started[i]) * 1000.0
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in ANSWERED:
                    results[i] = elapsed
                selector.unregister(sock)
                sock.close()
    finally:
        for sock in pending.values():
            sock.close()
        selector.close()
    return results
