"""UDP replies from the address the query was sent to, on a socket bound to the wildcard.

An anycast node binds 0.0.0.0 or :: and holds the service address on ``lo``. Left to itself,
the kernel gives a UDP reply the source address of the route back to the client (the uplink's
address), and resolvers drop it: a reply must come from the address they asked. With
``IP_PKTINFO`` / ``IPV6_RECVPKTINFO`` on, each received datagram carries its destination
address as ancillary data; the reply is sent with that address as its source (RFC 1122
4.1.3.5; NSD, Knot and Unbound do the same). The interface is left to routing (index 0), so an
anycast reply may leave by another link than the query came in on; only an IPv6 link-local
destination keeps the interface it arrived on, since it means nothing elsewhere.

Linux only. The cmsg layouts (64-bit): ``struct cmsghdr`` is 16 octets (size_t len, int level,
int type), then ``struct in_pktinfo`` (int ifindex, in_addr spec_dst, in_addr addr; 12) or
``struct in6_pktinfo`` (in6_addr addr, unsigned ifindex; 20).
"""

from __future__ import annotations

import socket
import struct

import numpy as np
from numba import njit

from router._jit import HOT_PATH_OPTIONS

IPPROTO_IP = socket.IPPROTO_IP
IPPROTO_IPV6 = socket.IPPROTO_IPV6
IP_PKTINFO = 8  # Linux <netinet/in.h>; Python's socket module has no name for it before 3.14
IPV6_RECVPKTINFO = socket.IPV6_RECVPKTINFO
IPV6_PKTINFO = socket.IPV6_PKTINFO

CMSG_HEADER = 16
V4_DATA = 12
V6_DATA = 20
CONTROL_SIZE = 64  # room for one pktinfo cmsg of either family (CMSG_SPACE: 32 or 40)
ANCILLARY_SPACE = socket.CMSG_SPACE(V6_DATA)


def enable(sock: socket.socket) -> bool:
    """Ask for the destination address of each datagram when ``sock`` is bound to the
    wildcard (a socket bound to one address already replies from it); True if now on."""
    host = sock.getsockname()[0]
    if sock.family == socket.AF_INET and host == "0.0.0.0":  # noqa: S104 - the wildcard is the point
        sock.setsockopt(IPPROTO_IP, IP_PKTINFO, 1)
        return True
    if sock.family == socket.AF_INET6 and host == "::":
        sock.setsockopt(IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        return True
    return False


def is_enabled(sock: socket.socket) -> bool:
    if sock.family == socket.AF_INET:
        return bool(sock.getsockopt(IPPROTO_IP, IP_PKTINFO))
    if sock.family == socket.AF_INET6:
        return bool(sock.getsockopt(IPPROTO_IPV6, IPV6_RECVPKTINFO))
    return False


def reply_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """The ``sendmsg`` ancillary data that sends a reply from the address a datagram with
    ``ancdata`` (as ``recvmsg`` gave it) was sent to; [] when it carries none."""
    for level, kind, data in ancdata:
        if level == IPPROTO_IP and kind == IP_PKTINFO and len(data) >= V4_DATA:
            destination = data[8:12]
            return [(IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, destination, bytes(4)))]
        if level == IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= V6_DATA:
            destination = data[:16]
            link_local = destination[0] == 0xFE and destination[1] & 0xC0 == 0x80
            index = struct.unpack_from("=I", data, 16)[0] if link_local else 0
            return [(IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16sI", destination, index))]
    return []


def parse_control(raw: bytes) -> list[tuple[int, int, bytes]]:
    """A raw msg_control buffer (as recvmmsg filled it) as ``recvmsg``-style ancillary data."""
    out = []
    at = 0
    while at + CMSG_HEADER <= len(raw):
        length, level, kind = struct.unpack_from("=Qii", raw, at)
        if length < CMSG_HEADER or at + length > len(raw):
            break
        out.append((level, kind, raw[at + CMSG_HEADER : at + length]))
        at += (length + 7) & ~7
    return out


@njit(**HOT_PATH_OPTIONS)
def reply_control(rx: np.ndarray, rx_len: int, tx: np.ndarray) -> int:
    """The compiled form of ``reply_ancillary`` over raw buffers: writes into ``tx`` the
    control message that sends the reply to a datagram received with control ``rx[:rx_len]``
    from its destination address; returns its length, CMSG_SPACE of the data (0: none)."""
    at = 0
    while at + CMSG_HEADER <= rx_len:
        length = 0
        for k in range(8):
            length |= np.int64(rx[at + k]) << (8 * k)
        if length < CMSG_HEADER or at + length > rx_len:
            return 0
        level = np.int64(rx[at + 8]) | (np.int64(rx[at + 9]) << 8)
        kind = np.int64(rx[at + 12]) | (np.int64(rx[at + 13]) << 8)
        data = at + CMSG_HEADER
        if level == IPPROTO_IP and kind == IP_PKTINFO and length >= CMSG_HEADER + V4_DATA:
            for k in range(CMSG_HEADER + V4_DATA):
                tx[k] = rx[at + k]  # the header as received: same level, type and length
            for k in range(4):
                tx[CMSG_HEADER + k] = 0  # ifindex: routing decides
                tx[CMSG_HEADER + 4 + k] = rx[data + 8 + k]  # spec_dst = the query's destination
                tx[CMSG_HEADER + 8 + k] = 0
                tx[CMSG_HEADER + V4_DATA + k] = 0  # padding to CMSG_SPACE
            return CMSG_HEADER + V4_DATA + 4
        if level == IPPROTO_IPV6 and kind == IPV6_PKTINFO and length >= CMSG_HEADER + V6_DATA:
            for k in range(CMSG_HEADER + V6_DATA):
                tx[k] = rx[at + k]
            link_local = rx[data] == 0xFE and (rx[data + 1] & 0xC0) == 0x80
            for k in range(4):
                if not link_local:
                    tx[CMSG_HEADER + 16 + k] = 0
                tx[CMSG_HEADER + V6_DATA + k] = 0  # padding to CMSG_SPACE
            return CMSG_HEADER + V6_DATA + 4
        at += (length + 7) & ~7
    return 0
