"""The real server: TCP framing, pipelining and idle timeout (RFC 7766), dig and kdig as
clients, the admin-state API, steering of real ISP prefixes, fail-open, robustness."""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import RunningRouter, recv_exactly, start_router


def udp_ask(
    router: RunningRouter, q: dns.message.Message, timeout: float = 2.0
) -> dns.message.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q.to_wire(), (router.host, router.port))
        return dns.message.from_wire(s.recv(65535))


def answer_ips(reply: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in reply.answer for rdata in rrset if rrset.rdtype in (1, 28)]


def ecs_query(name: str, subnet: str, rdtype: str = "A") -> dns.message.Message:
    address, prefix = subnet.split("/")
    return dns.message.make_query(
        name, rdtype, use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))]
    )


# -- TCP (RFC 7766) ----------------------------------------------------------------------


def test_tcp_pipelined_queries_on_one_connection(router: RunningRouter) -> None:
    names = [
        "origin.cdn.example.",
        "www.cdn.example.",
        "nope.cdn.example.",
        "cdn.example.",
        "big.edge.example.",
    ]
    queries = [dns.message.make_query(n, "TXT" if n.startswith("big") else "A") for n in names]
    for i, q in enumerate(queries):
        q.id = 1000 + i
    # All queries in a single write: the server must frame them apart and answer each.
    blob = b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries))
    with socket.create_connection((router.host, router.port), timeout=5) as s:
        s.sendall(blob)
        replies = []
        for _ in queries:
            (length,) = struct.unpack("!H", recv_exactly(s, 2))
            replies.append(dns.message.from_wire(recv_exactly(s, length)))
    assert [r.id for r in replies] == [1000 + i for i in range(len(queries))]
    assert [dns.rcode.to_text(r.rcode()) for r in replies] == [
        "NOERROR",
        "NOERROR",
        "NXDOMAIN",
        "NOERROR",
        "NOERROR",
    ]
    assert len(replies[-1].answer[0]) == 12  # the whole large TXT set over TCP
    assert len(replies[-1].to_wire()) > 1232


def test_tcp_query_split_across_segments(router: RunningRouter) -> None:
    wire = dns.message.make_query("origin.cdn.example.", "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with socket.create_connection((router.host, router.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(framed)):
            s.sendall(framed[i : i + 1])
            time.sleep(0.001)
        (length,) = struct.unpack("!H", recv_exactly(s, 2))
        reply = dns.message.from_wire(recv_exactly(s, length))
    assert answer_ips(reply) == ["203.0.113.80"]


def test_tcp_idle_connection_is_closed(router: RunningRouter) -> None:
    # The fixture runs with --tcp-idle-timeout 2.
    with socket.create_connection((router.host, router.port), timeout=10) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # orderly close by the server
        elapsed = time.monotonic() - started
    assert 1.5 <= elapsed <= 6


# -- dig and kdig --------------------------------------------------------------------------

DIG_CASES = [
    # (tool, args, regexes that must all match the output)
    ("dig", ["video.cdn.example", "+subnet=83.44.10.0/24"],
     [r"status: NOERROR", r"flags: qr aa;", r"CLIENT-SUBNET: 83\.44\.10\.0/24/11", r"video\.cdn\.example\.\s+20\s+IN\s+A\s+192\.0\.2\.11"]),
    ("dig", ["ViDeO.CdN.eXaMpLe", "+subnet=85.241.20.0/24"], [r";ViDeO\.CdN\.eXaMpLe\.\s+IN\s+A", r"198\.51\.100\.11"]),
    ("dig", ["nope.cdn.example"], [r"status: NXDOMAIN", r"cdn\.example\.\s+300\s+IN\s+SOA"]),
    ("dig", ["origin.cdn.example", "MX"], [r"status: NOERROR", r"ANSWER: 0", r"cdn\.example\.\s+300\s+IN\s+SOA"]),
    ("dig", ["example.com"], [r"status: REFUSED"]),
    ("dig", ["cdn.example", "+opcode=status"], [r"status: NOTIMP"]),
    ("dig", ["cdn.example", "SOA", "+edns=1", "+noednsneg"], [r"status: BADVERS"]),
    ("dig", ["cdn.example", "NS"], [r"flags: qr aa;", r"ns1\.cdn\.example\.\s+3600\s+IN\s+A\s+192\.0\.2\.53"]),
    ("dig", ["cdn.example", "ANY"], [r'HINFO\s+"RFC8482" ""']),
    ("dig", ["images.cdn.example"], [r"images\.cdn\.example\.\s+3600\s+IN\s+CNAME\s+www\.cdn\.example\."]),
    ("dig", ["big.edge.example", "TXT", "+noedns", "+ignore"], [r"flags: qr aa tc;", r"ANSWER: 0"]),
    ("dig", ["big.edge.example", "TXT", "+tcp"], [r"ANSWER: 12,", r"\(TCP\)"]),
    ("dig", ["origin.cdn.example", "+edns=0"], [r"EDNS: version: 0, flags:; udp: 1232"]),
    ("kdig", ["video.cdn.example", "+subnet=2a02:9100:1234::/48", "AAAA"],
     [r"NOERROR", r"2001:db8:11::1", r"CLIENT-SUBNET: 2a02:9100:1234::/48/24"]),
    ("kdig", ["www.cdn.example", "+tcp", "+subnet=89.153.10.0/24"], [r"TCP", r"198\.51\.100\.21"]),
    ("kdig", ["nope.cdn.example"], [r"NXDOMAIN", r"cdn\.example\.\s+300\s+IN\s+SOA"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "tool, args, patterns", DIG_CASES, ids=[f"{c[0]} {' '.join(c[1])}" for c in DIG_CASES]
)
def test_with_dig_and_kdig(
    router: RunningRouter, tool: str, args: list[str], patterns: list[str]
) -> None:
    # Ask as a resolver asks an authoritative server: no recursion desired.
    if tool == "dig":
        options = ["+norec", "+tries=1", "+time=3"]
    else:
        options = ["+norecurse", "+retry=0", "+timeout=3"]
    command = [tool, f"@{router.host}", "-p", str(router.port), *options, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    for pattern in patterns:
        assert re.search(pattern, result.stdout), (
            f"{pattern!r} not in output of {' '.join(command)}:\n{result.stdout}"
        )


# -- steering with real ISP prefixes (sample map) ---------------------------------------

# Prefixes from geodata/iberia-clients.mmdb; expected nodes from zones/nodes.yaml.
ONNET_CASES = [
    (
        "Telefonica de Espana AS3352",
        "83.44.10.0/24",
        {"192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"},
    ),
    ("Vodafone Spain AS12430", "47.60.1.0/24", {"192.0.2.21", "192.0.2.22", "192.0.2.23"}),
    ("Orange Spain AS12479", "85.48.1.0/24", {"192.0.2.31", "192.0.2.32", "192.0.2.33"}),
    ("MEO AS3243", "85.241.20.0/24", {"198.51.100.11", "198.51.100.12"}),
    ("NOS AS2860", "89.153.10.0/24", {"198.51.100.21", "198.51.100.22"}),
    ("Vodafone Portugal AS12353", "94.60.1.0/24", {"198.51.100.31"}),
]


@pytest.mark.parametrize(
    "subnet, isp_nodes", [c[1:] for c in ONNET_CASES], ids=[c[0] for c in ONNET_CASES]
)
def test_client_of_each_isp_gets_that_isps_nodes(
    router: RunningRouter, subnet: str, isp_nodes: set[str]
) -> None:
    for name in ("www.cdn.example.", "video.cdn.example."):
        ips = answer_ips(udp_ask(router, ecs_query(name, subnet)))
        assert len(ips) == 2
        # Every on-net node ranks before any off-net one: the ISP fills the answer first.
        expected_onnet = min(2, len(isp_nodes))
        assert set(ips[:expected_onnet]) <= isp_nodes, (name, ips)
        assert not set(ips[expected_onnet:]) & isp_nodes


def test_client_of_isp_without_node_gets_nearest_by_latency(router: RunningRouter) -> None:
    # Orange France (AS3215) has no node: FR-FR measured RTT (36.8 ms) beats ES-FR (42.3):
    # the Paris PoP first.
    assert (
        answer_ips(udp_ask(router, ecs_query("www.cdn.example.", "90.10.20.0/24")))[0]
        == "203.0.113.13"
    )
    # Maroc Telecom (AS6713): ES-MA is the best measured pair; the embedded Spanish nodes
    # are on-net only for their ISPs, so the Madrid IX node answers.
    assert (
        answer_ips(udp_ask(router, ecs_query("www.cdn.example.", "105.145.1.0/24")))[0]
        == "203.0.113.11"
    )
    # Euskaltel (AS12338, Bilbao): all Spanish nodes measure the same, and Orange's Bilbao
    # node is nearest, but it is on-net only for Orange: the Madrid IX node answers.
    assert (
        answer_ips(udp_ask(router, ecs_query("www.cdn.example.", "83.213.10.0/24")))[0]
        == "203.0.113.11"
    )


# -- the admin-state API ----------------------------------------------------------------


def api(
    router: RunningRouter, method: str, path: str, body: object = None, token: str | None = None
):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{router.api}{path}", data=data, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def own_router(deployment_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A router of its own for tests that change node state."""
    running = start_router(deployment_dir, tmp_path_factory.mktemp("api") / "router.log")
    yield running
    running.stop()
    assert running.process.stdout is not None
    running.process.stdout.close()


def test_get_nodes_lists_state_and_reason(own_router: RunningRouter) -> None:
    status, body = api(own_router, "GET", "/v1/nodes")
    assert status == 200
    nodes = {n["id"]: n for n in body["nodes"]}
    assert len(nodes) == 18
    assert nodes["tef-mad-1"]["state"] == "up"
    assert nodes["tef-mad-1"]["reason"]
    assert nodes["tef-mad-1"]["ipv4"] == "192.0.2.11"


@pytest.mark.parametrize("token", [None, "wrong", ""], ids=["missing", "wrong", "empty"])
def test_wrong_or_missing_token_gets_401_and_changes_nothing(
    own_router: RunningRouter, token: str | None
) -> None:
    before = answer_ips(udp_ask(own_router, ecs_query("video.cdn.example.", "83.44.10.0/24")))
    status, _ = api(
        own_router, "PUT", "/v1/nodes/tef-mad-1/admin-state", {"state": "down"}, token=token
    )
    assert status == 401
    assert api(own_router, "GET", "/v1/nodes")[1]["nodes"][0]["state"] == "up"
    assert (
        answer_ips(udp_ask(own_router, ecs_query("video.cdn.example.", "83.44.10.0/24"))) == before
    )


def test_bad_requests_are_rejected(own_router: RunningRouter) -> None:
    token = own_router.token
    assert (
        api(own_router, "PUT", "/v1/nodes/no-such-node/admin-state", {"state": "down"}, token)[0]
        == 404
    )
    status, body = api(
        own_router, "PUT", "/v1/nodes/tef-mad-1/admin-state", {"state": "sideways"}, token
    )
    assert status == 400 and "up" in body["error"]


def test_node_set_down_leaves_the_next_answer_and_returns_when_up(
    own_router: RunningRouter,
) -> None:
    q = ecs_query("video.cdn.example.", "83.44.10.0/24")
    assert answer_ips(udp_ask(own_router, q)) == ["192.0.2.11", "192.0.2.12"]
    status, body = api(
        own_router, "PUT", "/v1/nodes/tef-mad-1/admin-state", {"state": "down"}, own_router.token
    )
    assert status == 200 and body["state"] == "down" and "admin" in body["reason"]
    # Ask several times: with two workers, both must already serve the new table.
    for _ in range(20):
        ips = answer_ips(udp_ask(own_router, q))
        assert "192.0.2.11" not in ips and len(ips) == 2
    listed = {n["id"]: n for n in api(own_router, "GET", "/v1/nodes")[1]["nodes"]}
    assert listed["tef-mad-1"]["state"] == "down" and listed["tef-mad-1"]["admin_state"] == "down"
    assert (
        api(
            own_router, "PUT", "/v1/nodes/tef-mad-1/admin-state", {"state": "up"}, own_router.token
        )[0]
        == 200
    )
    for _ in range(20):
        assert answer_ips(udp_ask(own_router, q)) == ["192.0.2.11", "192.0.2.12"]


def test_drained_node_only_when_nothing_else_is_left(own_router: RunningRouter) -> None:
    q = ecs_query("www.cdn.example.", "94.60.1.0/24")  # Vodafone Portugal: one on-net node
    token = own_router.token
    assert answer_ips(udp_ask(own_router, q))[0] == "198.51.100.31"
    assert (
        api(own_router, "PUT", "/v1/nodes/vdf-pt-lis-1/admin-state", {"state": "drain"}, token)[0]
        == 200
    )
    assert "198.51.100.31" not in answer_ips(udp_ask(own_router, q))
    api(own_router, "PUT", "/v1/nodes/vdf-pt-lis-1/admin-state", {"state": "up"}, token)
    assert answer_ips(udp_ask(own_router, q))[0] == "198.51.100.31"


def test_every_node_down_fails_open(own_router: RunningRouter) -> None:
    q = ecs_query("video.cdn.example.", "83.44.10.0/24")
    healthy = answer_ips(udp_ask(own_router, q))
    _, body = api(own_router, "GET", "/v1/nodes")
    ids = [n["id"] for n in body["nodes"]]
    try:
        for node_id in ids[:-1]:
            api(
                own_router,
                "PUT",
                f"/v1/nodes/{node_id}/admin-state",
                {"state": "down"},
                own_router.token,
            )
        # One node left: it is the whole answer.
        assert answer_ips(udp_ask(own_router, q)) == ["203.0.113.13"]
        api(
            own_router,
            "PUT",
            f"/v1/nodes/{ids[-1]}/admin-state",
            {"state": "down"},
            own_router.token,
        )
        reply = udp_ask(own_router, q)
        # Every node down: fail open, as if all were up. Never an empty NOERROR.
        assert reply.rcode() == dns.rcode.NOERROR
        assert answer_ips(reply) == healthy
    finally:
        for node_id in ids:
            api(
                own_router,
                "PUT",
                f"/v1/nodes/{node_id}/admin-state",
                {"state": "up"},
                own_router.token,
            )
    assert answer_ips(udp_ask(own_router, q)) == healthy


# -- robustness ---------------------------------------------------------------------------


def test_survives_random_and_mutated_packets(router: RunningRouter) -> None:
    rng = random.Random(7)
    seeds = [dns.message.make_query("www.cdn.example.", "A", use_edns=0,
                                    options=[dns.edns.ECSOption("83.44.10.0", 24)]).to_wire(),
             dns.message.make_query("big.edge.example.", "TXT").to_wire()]  # fmt: skip
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3000):
            if i % 3 == 0:
                packet = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
            else:
                packet = bytearray(rng.choice(seeds))
                for _ in range(rng.randrange(1, 6)):
                    packet[rng.randrange(len(packet))] = rng.randrange(256)
                packet = bytes(packet[: rng.randrange(1, len(packet) + 1)])
            s.sendto(packet, (router.host, router.port))
    # Still alive and answering on every worker.
    for _ in range(10):
        assert answer_ips(udp_ask(router, ecs_query("www.cdn.example.", "83.44.10.0/24")))
    assert router.process.poll() is None
    assert "internal error" not in router.log.read_text()


def test_workers_replaced_if_one_dies(deployment_dir: Path, tmp_path: Path) -> None:
    running = start_router(deployment_dir, tmp_path / "router.log", api=False, workers=2)
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(running.process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2
        subprocess.run(["kill", "-9", children[0]], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            now = subprocess.run(
                ["pgrep", "-P", str(running.process.pid)], capture_output=True, text=True
            ).stdout.split()
            if len(now) == 2 and children[0] not in now:
                break
            time.sleep(0.2)
        else:
            pytest.fail("dead worker was not replaced")
        for _ in range(10):
            assert answer_ips(udp_ask(running, ecs_query("www.cdn.example.", "83.44.10.0/24")))
        assert (
            "worker 0 exited" in running.log.read_text()
            or "worker 1 exited" in running.log.read_text()
        )
    finally:
        running.stop()
        assert running.process.stdout is not None
        running.process.stdout.close()


def test_tcp_client_that_never_reads_is_cut_off(router: RunningRouter) -> None:
    # 2,000 pipelined queries for a 2.6 kB answer: far more than socket buffers plus the
    # server's 1 MiB cap on unread replies. The server must close rather than buffer it all.
    wire = dns.message.make_query("big.edge.example.", "TXT").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect((router.host, router.port))
        try:
            s.sendall(framed * 2000)
        except (BrokenPipeError, ConnectionResetError):
            pass  # already cut off while still sending
        time.sleep(1.0)
        received = 0
        try:
            while chunk := s.recv(65536):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert received < 2000 * 2600
    # And the server still serves everyone else.
    assert answer_ips(udp_ask(router, ecs_query("www.cdn.example.", "83.44.10.0/24")))


def test_service_status_and_drain(own_router: RunningRouter) -> None:
    status, body = api(own_router, "GET", "/v1/status")
    assert (
        status == 200 and body["state"] == "serving" and body["dns"].endswith(str(own_router.port))
    )
    assert api(own_router, "PUT", "/v1/status", {"state": "draining"}, token="wrong")[0] == 401
    assert api(own_router, "GET", "/v1/status")[1]["state"] == "serving"
    assert (
        api(own_router, "PUT", "/v1/status", {"state": "draining"}, own_router.token)[1]["state"]
        == "draining"
    )
    # Draining withdraws anycast routes but keeps answering.
    assert answer_ips(udp_ask(own_router, ecs_query("www.cdn.example.", "83.44.10.0/24")))
    assert (
        api(own_router, "PUT", "/v1/status", {"state": "serving"}, own_router.token)[1]["state"]
        == "serving"
    )
