"""What the kernel says about UDP sockets: bytes queued and datagrams dropped (Linux).

Read from /proc/net/udp and /proc/net/udp6, one row per socket: a socket in an
SO_REUSEPORT group has its own row, its own queue and its own drop counter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROC_NET_UDP = ("/proc/net/udp", "/proc/net/udp6")


@dataclass(frozen=True)
class UdpSocketStats:
    port: int  # local port
    inode: int  # the socket's inode (os.fstat(fd).st_ino)
    queued_bytes: int  # receive queue
    drops: int  # datagrams dropped since the socket was opened (receive buffer full)


def parse_proc_net_udp(text: str) -> list[UdpSocketStats]:
    """The rows of one /proc/net/udp or udp6 table (the header line is skipped)."""
    rows = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 13:
            continue
        rows.append(UdpSocketStats(port=int(fields[1].rsplit(":", 1)[1], 16), inode=int(fields[9]),
                                   queued_bytes=int(fields[4].split(":")[1], 16), drops=int(fields[12])))  # fmt: skip
    return rows


def udp_socket_stats() -> list[UdpSocketStats]:
    """Every UDP socket of this network namespace, IPv4 and IPv6; empty off Linux."""
    rows = []
    for table in PROC_NET_UDP:
        try:
            rows += parse_proc_net_udp(Path(table).read_text())
        except OSError:
            continue
    return rows
