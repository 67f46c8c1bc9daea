"""Test hosts in network namespaces, made and removed by the tests that use them.

``service_lab()`` makes two namespaces joined by a veth pair, the shape of an anycast site:

    client  198.51.100.2/24, 2001:db8:1::2/64  --veth--  198.51.100.1/24, 2001:db8:1::1/64  server
                                                          lo: 192.0.2.53/32, 2001:db8:53::53/128

The client routes the service addresses via the server's link address, so a query to
192.0.2.53 arrives on the server's veth while the address lives on its ``lo``, as on a real
anycast node. Every address is a documentation one (RFC 5737, RFC 3849); nothing leaves the
namespaces. Needs root and iproute2; ``missing()`` says why not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

SERVICE_V4 = "192.0.2.53"
SERVICE_V6 = "2001:db8:53::53"
SERVER_LINK_V4 = "198.51.100.1"
CLIENT_LINK_V4 = "198.51.100.2"
SERVER_LINK_V6 = "2001:db8:1::1"
CLIENT_LINK_V6 = "2001:db8:1::2"


def missing() -> str | None:
    if os.geteuid() != 0:
        return "not root: network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass(frozen=True)
class ServiceLab:
    server: str
    client: str

    def command(self, namespace: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``namespace``."""
        return ["ip", "netns", "exec", namespace, *argv]


@contextmanager
def service_lab(tag: str = "") -> Iterator[ServiceLab]:
    base = f"rt{os.getpid() % 100000}{tag}"[:11]
    server, client = f"{base}s", f"{base}c"
    made: list[str] = []
    try:
        for name in (server, client):
            _ip("netns", "add", name)
            made.append(name)
        _ip("link", "add", f"{base}s", "type", "veth", "peer", "name", f"{base}c")
        for name in (server, client):
            _ip("link", "set", name, "netns", name)  # each end into the namespace of its name
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", server, "addr", "add", f"{SERVICE_V4}/32", "dev", "lo")
        _ip("-n", server, "addr", "add", f"{SERVICE_V6}/128", "dev", "lo")
        _ip("-n", server, "addr", "add", f"{SERVER_LINK_V4}/24", "dev", server)
        _ip("-n", server, "addr", "add", f"{SERVER_LINK_V6}/64", "dev", server, "nodad")
        _ip("-n", client, "addr", "add", f"{CLIENT_LINK_V4}/24", "dev", client)
        _ip("-n", client, "addr", "add", f"{CLIENT_LINK_V6}/64", "dev", client, "nodad")
        for name in (server, client):
            _ip("-n", name, "link", "set", name, "up")
        _ip("-n", client, "route", "add", f"{SERVICE_V4}/32", "via", SERVER_LINK_V4)
        _ip("-n", client, "-6", "route", "add", f"{SERVICE_V6}/128", "via", SERVER_LINK_V6)
        yield ServiceLab(server, client)
    finally:
        for name in made:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
