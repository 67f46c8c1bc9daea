"""Anycast announcements: the announcer's decisions against a fake API and a fake DNS
server (exact ExaBGP command lines, no BGP), then the real thing: router + ExaBGP + BIRD 2
on loopback, reading BIRD's table."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from router.anycast.announcer import (
    Announcer,
    Observation,
    Route,
    RouterProbe,
    changes,
    wanted_routes,
)
from tests.anycast_lab import AnycastLab, LabUnavailable, parse_birdc_routes
from tests.conftest import REPO, RunningRouter, make_deployment, start_router

SERVICE = "192.0.2.53/32"
SERVICE6 = "2001:db8:53::/48"
NODE_PREFIX = "203.0.113.128/25"
NODE_PREFIX6 = "2001:db8:ff80::/48"
NODE_ID = "ix-mad-1"
NODE_IPV4 = "203.0.113.11"
NODE_IPV6 = "2001:db8:71::1"


# -- fakes: the router's API and its DNS ---------------------------------------------------


class FakeDns:
    """Answers SOA queries on 127.0.0.1 per ``mode``: ok, servfail, noaa or silent."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "silent":
                continue
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            if self.mode == "servfail":
                reply.set_rcode(dns.rcode.SERVFAIL)
            else:
                if self.mode == "ok":
                    reply.flags |= dns.flags.AA
                reply.answer.append(
                    dns.rrset.from_text(
                        query.question[0].name,
                        300,
                        "IN",
                        "SOA",
                        "ns1.cdn.example. hostmaster.cdn.example. 1 7200 900 1209600 60",
                    )
                )
            self.sock.sendto(reply.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


class FakeApi:
    """``GET /v1/status`` and ``GET /v1/nodes`` from mutable dicts."""

    def __init__(self, dns_address: str) -> None:
        self.status: dict[str, object] = {
            "state": "serving",
            "generation": 1,
            "dns": dns_address,
            "zones": ["cdn.example."],
        }
        self.nodes: list[dict[str, object]] = [
            {"id": NODE_ID, "state": "up", "ipv4": NODE_IPV4, "ipv6": "2001:db8:71::1",
             "anycast_prefixes": [NODE_PREFIX, "2001:db8:ff::/48"]},
            {"id": "tef-mad-1", "state": "up", "ipv4": "192.0.2.11", "ipv6": "2001:db8:11::1", "anycast_prefixes": []},
        ]  # fmt: skip
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/v1/status":
                    body = api.status
                elif self.path == "/v1/nodes":
                    body = {"generation": 1, "nodes": api.nodes}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.running = True

    def close(self) -> None:
        if self.running:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(timeout=5)
            self.running = False


@pytest.fixture
def fake_dns() -> Iterator[FakeDns]:
    server = FakeDns()
    yield server
    server.close()


@pytest.fixture
def fake_api(fake_dns: FakeDns) -> Iterator[FakeApi]:
    api = FakeApi(fake_dns.address)
    yield api
    api.close()


# -- the announcer's decisions, without BGP ------------------------------------------------


def test_transitions_print_exact_commands(fake_api: FakeApi, fake_dns: FakeDns) -> None:
    out = io.StringIO()
    announcer = Announcer([SERVICE], RouterProbe(fake_api.url, timeout=0.3).observe, out)

    def step() -> list[str]:
        before = len(out.getvalue())
        lines = announcer.step()
        assert out.getvalue()[before:] == "".join(line + "\n" for line in lines)
        return lines

    assert step() == [
        "announce route 192.0.2.53/32 next-hop self",
        "announce route 2001:db8:ff::/48 next-hop 2001:db8:71::1",
        "announce route 203.0.113.128/25 next-hop 203.0.113.11",
    ]
    assert step() == []  # nothing changed: nothing printed

    fake_api.status["state"] = "draining"
    assert step() == ["withdraw route 192.0.2.53/32 next-hop self"]
    assert step() == []
    fake_api.status["state"] = "serving"
    assert step() == ["announce route 192.0.2.53/32 next-hop self"]

    for failure in ("servfail", "noaa", "silent"):
        fake_dns.mode = failure
        assert step() == ["withdraw route 192.0.2.53/32 next-hop self"], failure
        fake_dns.mode = "ok"
        assert step() == ["announce route 192.0.2.53/32 next-hop self"], failure

    fake_api.nodes[0]["state"] = "down"
    assert step() == [
        "withdraw route 2001:db8:ff::/48 next-hop 2001:db8:71::1",
        "withdraw route 203.0.113.128/25 next-hop 203.0.113.11",
    ]
    fake_api.nodes[0]["state"] = "up"
    assert len(step()) == 2
    fake_api.nodes[0]["state"] = "draining"
    assert len(step()) == 2 and not announcer.announced - {Route(SERVICE, "self")}
    fake_api.nodes[0]["state"] = "up"
    assert len(step()) == 2
    fake_api.nodes[0]["ipv4"] = "203.0.113.99"  # a new next hop replaces the old route
    assert step() == [
        "withdraw route 203.0.113.128/25 next-hop 203.0.113.11",
        "announce route 203.0.113.128/25 next-hop 203.0.113.99",
    ]
    gone = fake_api.nodes.pop(0)
    assert step() == [
        "withdraw route 2001:db8:ff::/48 next-hop 2001:db8:71::1",
        "withdraw route 203.0.113.128/25 next-hop 203.0.113.99",
    ]
    fake_api.nodes.insert(0, {**gone, "ipv4": NODE_IPV4})
    assert len(step()) == 2

    fake_api.close()  # the router is gone: withdraw everything
    assert step() == [
        "withdraw route 192.0.2.53/32 next-hop self",
        "withdraw route 2001:db8:ff::/48 next-hop 2001:db8:71::1",
        "withdraw route 203.0.113.128/25 next-hop 203.0.113.11",
    ]
    assert step() == [] and announcer.announced == set()


def test_self_check_asks_soa_of_first_zone(fake_api: FakeApi, fake_dns: FakeDns) -> None:
    probe = RouterProbe(fake_api.url, timeout=0.3)
    assert probe.observe().can_serve
    fake_api.status["zones"] = []
    obs = probe.observe()
    assert not obs.can_serve and "no zones" in obs.reason
    fake_api.status["zones"] = ["cdn.example."]
    fake_api.status["dns"] = "127.0.0.1:1"  # nothing there
    obs = probe.observe()
    assert not obs.can_serve and "self-check" in obs.reason
    assert (
        obs.nodes is not None and len(obs.nodes) == 2
    )  # node routes do not depend on the self-check


def test_wanted_routes_and_changes() -> None:
    nodes: list[dict[str, object]] = [
        {"id": "a", "state": "up", "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "anycast_prefixes": ["198.51.100.0/24", "not-a-prefix"]},
        {"id": "b", "state": "draining", "ipv4": "192.0.2.2", "ipv6": "2001:db8::2", "anycast_prefixes": ["198.51.100.0/24"]},
    ]  # fmt: skip
    wanted = wanted_routes([SERVICE], Observation(True, "ok", nodes))
    assert wanted == {Route(SERVICE, "self"), Route("198.51.100.0/24", "192.0.2.1")}
    assert wanted_routes([SERVICE], Observation(False, "down", None)) == set()
    assert changes(wanted, wanted) == []
    assert changes(set(), {Route("10.0.0.0/8", "self")}) == [
        "announce route 10.0.0.0/8 next-hop self"
    ]


def _announcer_process(api: str, fake_dns: FakeDns | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "router.anycast.announcer", "--api", api, "--service-prefix", SERVICE,
            "--interval", "0.2", "--timeout", "0.3"]  # fmt: skip
    return subprocess.Popen(
        args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _read_lines(process: subprocess.Popen, count: int) -> list[str]:
    assert process.stdout is not None
    return [process.stdout.readline().rstrip("\n") for _ in range(count)]


def test_process_withdraws_everything_on_sigterm(fake_api: FakeApi) -> None:
    process = _announcer_process(fake_api.url)
    try:
        assert _read_lines(process, 3) == [
            "announce route 192.0.2.53/32 next-hop self",
            "announce route 2001:db8:ff::/48 next-hop 2001:db8:71::1",
            "announce route 203.0.113.128/25 next-hop 203.0.113.11",
        ]
        os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.splitlines() == [
        "withdraw route 192.0.2.53/32 next-hop self",
        "withdraw route 2001:db8:ff::/48 next-hop 2001:db8:71::1",
        "withdraw route 203.0.113.128/25 next-hop 203.0.113.11",
    ]


@pytest.mark.parametrize("how", ["eof", "shutdown"])
def test_process_stops_when_exabgp_goes(fake_api: FakeApi, how: str) -> None:
    process = _announcer_process(fake_api.url)
    try:
        assert len(_read_lines(process, 3)) == 3
        assert process.stdin is not None
        started = time.monotonic()
        out, err = process.communicate(input="shutdown\n" if how == "shutdown" else "", timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == ""  # ExaBGP is gone or going: it drops the routes itself
    assert time.monotonic() - started < 5


# -- the real thing: router + ExaBGP + BIRD 2 on loopback ---------------------------------


def _put(router: RunningRouter, path: str, body: dict[str, str]) -> dict[str, object]:
    assert router.api is not None
    request = urllib.request.Request(router.api + path, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Authorization": f"Bearer {router.token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def anycast_router(tmp_path: Path) -> Iterator[RunningRouter]:
    zones = make_deployment(tmp_path / "deployment")
    nodes = zones / "nodes.yaml"
    marker = f"id: {NODE_ID}, "
    text = nodes.read_text()
    line = next(x for x in text.splitlines() if marker in x)
    nodes.write_text(
        text.replace(
            line,
            line.replace(
                " capacity_gbps:",
                f' anycast_prefixes: ["{NODE_PREFIX}", "{NODE_PREFIX6}"], capacity_gbps:',
            ),
        )
    )
    running = start_router(zones, tmp_path / "router.log", "--drain-grace", "2", workers=2)
    yield running
    running.stop()
    assert running.process.stdout is not None
    running.process.stdout.close()


@pytest.fixture
def lab(anycast_router: RunningRouter, tmp_path: Path) -> Iterator[AnycastLab]:
    assert anycast_router.api is not None
    argv = [sys.executable, "-m", "router.anycast.announcer", "--api", anycast_router.api,
            "--service-prefix", SERVICE, "--service-prefix", SERVICE6, "--interval", "0.25",
            "--timeout", "0.5"]  # fmt: skip
    try:
        running = AnycastLab(tmp_path / "lab", argv)  # installs bird2 / exabgp if it can
    except LabUnavailable as exc:
        pytest.skip(f"no BGP lab here: {exc}")
    try:
        try:
            running.start()
        except LabUnavailable as exc:
            pytest.skip(f"BIRD cannot start here: {exc}")
        yield running
    finally:
        running.stop()


@pytest.mark.integration
def test_bird_learns_and_loses_routes(anycast_router: RunningRouter, lab: AnycastLab) -> None:
    def until(what: str, check: Callable[[dict[str, str]], bool]) -> dict[str, str]:
        lab.wait_for(lambda: check(lab.routes()), 15, what)
        return lab.routes()

    routes = until(
        "every prefix", lambda r: {SERVICE, SERVICE6, NODE_PREFIX, NODE_PREFIX6} <= r.keys()
    )
    assert routes[NODE_PREFIX] == NODE_IPV4
    assert routes[NODE_PREFIX6] == NODE_IPV6  # the node's IPv6 address as next hop
    assert routes[SERVICE] == lab.exabgp_address  # next-hop self
    assert routes[SERVICE6] == "::1"  # next-hop self on the IPv6 session

    _put(anycast_router, f"/v1/nodes/{NODE_ID}/admin-state", {"state": "down"})
    until(
        "node prefixes withdrawn",
        lambda r: NODE_PREFIX not in r and NODE_PREFIX6 not in r and SERVICE in r,
    )
    _put(anycast_router, f"/v1/nodes/{NODE_ID}/admin-state", {"state": "up"})
    until(
        "node prefixes back",
        lambda r: r.get(NODE_PREFIX) == NODE_IPV4 and r.get(NODE_PREFIX6) == NODE_IPV6,
    )

    _put(anycast_router, "/v1/status", {"state": "draining"})
    until(
        "service prefixes withdrawn",
        lambda r: SERVICE not in r and SERVICE6 not in r and NODE_PREFIX in r,
    )
    _put(anycast_router, "/v1/status", {"state": "serving"})
    until("service prefixes back", lambda r: SERVICE in r and SERVICE6 in r)

    # SIGTERM with --drain-grace 2: the route goes first, answers go on for the grace.
    os.kill(anycast_router.process.pid, signal.SIGTERM)
    until("service prefixes withdrawn on SIGTERM", lambda r: SERVICE not in r and SERVICE6 not in r)
    assert anycast_router.process.poll() is None, "the router should still be in its drain grace"
    reply = dns.query.udp(dns.message.make_query("cdn.example.", "SOA"), anycast_router.host,
                          port=anycast_router.port, timeout=2)  # fmt: skip
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
    anycast_router.process.wait(timeout=15)
    assert anycast_router.process.returncode == 0
    # Gone for good: the API is unreachable, so nothing stays announced.
    until("every route withdrawn after exit", lambda r: r == {})
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert SERVICE not in lab.routes()
        time.sleep(0.25)
    assert lab.established()


def test_parse_birdc_routes() -> None:
    text = """BIRD 2.0.12 ready.
Table master4:
203.0.113.128/25     unreachable [exabgp 04:30:52.056 from 127.0.0.2] * (100) [AS64513i]
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.next_hop: 203.0.113.11
192.0.2.53/32        unreachable [exabgp 04:30:52.056 from 127.0.0.2] * (100) [AS64513i]
\tType: BGP univ
\tBGP.next_hop: 127.0.0.2
"""
    assert parse_birdc_routes(text) == {
        "203.0.113.128/25": "203.0.113.11",
        "192.0.2.53/32": "127.0.0.2",
    }
