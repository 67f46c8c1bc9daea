"""The DNS listening sockets and the ``HOST:PORT`` addresses they are given as."""

from __future__ import annotations

import socket

from router.dns import pktinfo

UDP_RCVBUF = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; not in Python's socket module


class ServiceError(Exception):
    """The service cannot start or keep running."""


def grow_receive_buffer(sock: socket.socket, wanted: int = UDP_RCVBUF) -> int:
    """Give a UDP socket a receive buffer of ``wanted`` bytes, so bursts queue instead of
    being dropped (the kernel's default, about 208 KiB, holds some 1,500 queries). SO_RCVBUF is
    capped at net.core.rmem_max; SO_RCVBUFFORCE, with CAP_NET_ADMIN, is not. Returns the size
    the kernel gives (it reports twice what was asked, the rest being its bookkeeping)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        except OSError:
            pass
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def short_buffer_advice(granted: int, wanted: int = UDP_RCVBUF) -> str | None:
    """What to do when the kernel gave less than asked (None: it gave enough)."""
    if granted >= wanted:  # the kernel reports double what it was given
        return None
    return (f"UDP receive buffer is {granted // 2} bytes, not the {wanted} asked: bursts will be "
            f"dropped; raise the cap (sysctl -w net.core.rmem_max={wanted}) or run with "
            f"CAP_NET_ADMIN")  # fmt: skip


def parse_endpoint(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ServiceError(f"{what} must be HOST:PORT (IPv6 as [::1]:PORT), got {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    value = int(port)
    if value > 65535:
        raise ServiceError(f"{what}: port {value} is out of range")
    return host, value


def format_endpoint(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(host: str, port: int) -> None:
    """Fail at once if the DNS port cannot be had (taken, or privileged), before the slow
    compile that comes before binding. A TCP socket bound without ``listen`` takes nothing:
    no query can reach it, even when it shares the port with a running router."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ServiceError(f"cannot resolve listen address {host!r}: {exc}") from exc
    made: list[socket.socket] = []
    try:
        _socket(family, socket.SOCK_STREAM, made).bind((host, port))
    except OSError as exc:
        raise ServiceError(f"cannot listen on {format_endpoint(host, port)}: {exc}") from exc
    finally:
        for s in made:
            s.close()


def bind_dns_sockets(
    host: str, port: int, count: int
) -> tuple[list[socket.socket], list[socket.socket], int]:
    """``count`` UDP and TCP sockets in one SO_REUSEPORT group each, on one port."""
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]
    except socket.gaierror as exc:
        raise ServiceError(f"cannot resolve listen address {host!r}: {exc}") from exc
    last_error: OSError | None = None
    for _ in range(20 if port == 0 else 1):
        made: list[socket.socket] = []
        try:
            udp, tcp = [], []
            actual = port
            for _ in range(count):
                s = _socket(family, socket.SOCK_DGRAM, made)
                grow_receive_buffer(s)
                s.bind((host, actual))
                pktinfo.enable(s)  # on a wildcard bind, reply from the address asked
                actual = s.getsockname()[1]
                udp.append(s)
            for _ in range(count):
                s = _socket(family, socket.SOCK_STREAM, made)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, actual))
                s.listen(1024)
                tcp.append(s)
            return udp, tcp, actual
        except OSError as exc:
            last_error = exc
            for s in made:
                s.close()
    raise ServiceError(f"cannot listen on {host}:{port}: {last_error}")


def _socket(family: int, kind: int, made: list[socket.socket]) -> socket.socket:
    s = socket.socket(family, kind)
    made.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s
