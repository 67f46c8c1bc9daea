"""Rate limiting, DNS cookies and the TCP limits as the internet meets them: routers in a network
namespace on the anycast service addresses (tests/netns.py), clients in another one with
addresses in several prefixes (documentation ranges only), over IPv4 and IPv6, through the
compiled UDP loop."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.conftest import RunningRouter, make_deployment, start_router

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(netns.missing() is not None, reason=str(netns.missing()))]  # fmt: skip

# Client addresses beyond the lab's link addresses, in prefixes of their own (RRL keys on /24
# and /56), routed back from the server namespace through the veth pair.
LEGIT_V4 = "203.0.113.10"
LEGIT_V6 = "2001:db8:2::10"
EXTRA_V4 = [f"203.0.113.{i}" for i in range(10, 16)] + ["203.0.113.20"]
RATE = 20
SECRET = "5f4dcc3b5aa765d61d8327deb882cf99"

CLIENT = r"""
import json, os, socket, struct, sys, time
import dns.edns, dns.message, dns.query, dns.flags

args = json.loads(sys.argv[1])

def family(a):
    return socket.AF_INET6 if ":" in a else socket.AF_INET

def query(name, cookie=None, qid=0):
    options = [dns.edns.GenericOption(dns.edns.COOKIE, cookie)] if cookie is not None else []
    q = dns.message.make_query(name, "A", use_edns=0, options=options)
    q.id = qid
    return q.to_wire()

def cookie_of(reply):
    for o in reply.options:
        if o.otype == dns.edns.COOKIE:
            return (o.client + o.server).hex()
    return None

def flood(source, service, port, count, name, cookie):
    # Every query first, then every reply for a second: a dropped one costs no timeout.
    full = truncated = 0
    cookies = set()
    with socket.socket(family(source), socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind((source, 0))
        started = time.monotonic()
        for i in range(count):
            s.sendto(query(name, cookie, i), (service, port))
        sent_s = time.monotonic() - started
        s.settimeout(1.0)
        while True:
            try:
                data = s.recv(65535)
            except TimeoutError:
                break
            reply = dns.message.from_wire(data)
            if reply.flags & dns.flags.TC:
                truncated += 1
            elif reply.answer:
                full += 1
            c = cookie_of(reply)
            if c:
                cookies.add(c)
    return {"full": full, "truncated": truncated, "sent_s": sent_s, "cookies": sorted(cookies)}

def one(source, service, port, name, cookie, tcp):
    q = dns.message.make_query(name, "A", use_edns=0,
                               options=[dns.edns.GenericOption(dns.edns.COOKIE, cookie)] if cookie else [])
    ask = dns.query.tcp if tcp else dns.query.udp
    reply = ask(q, service, port=port, timeout=3, source=source)
    return {"rcode": reply.rcode(), "answers": len(reply.answer), "cookie": cookie_of(reply),
            "tc": bool(reply.flags & dns.flags.TC)}

out = []
for step in args:
    kind = step.pop("kind")
    if "cookie" in step and step["cookie"] is not None:
        step["cookie"] = bytes.fromhex(step["cookie"])
    out.append(flood(**step) if kind == "flood" else one(**step))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.ServiceLab]:
    with netns.service_lab("h") as made:
        for address in EXTRA_V4:
            netns._ip("-n", made.client, "addr", "add", f"{address}/32", "dev", made.client)
        netns._ip("-n", made.client, "addr", "add", f"{LEGIT_V6}/128", "dev", made.client, "nodad")
        netns._ip("-n", made.server, "route", "add", "203.0.113.0/24", "via", netns.CLIENT_LINK_V4)
        netns._ip(
            "-n", made.server, "-6", "route", "add", "2001:db8:2::/64", "via", netns.CLIENT_LINK_V6
        )
        yield made


@pytest.fixture(scope="module")
def shared_secret_zones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample deployment with a cookie secret file, as every instance of a service has."""
    zones = make_deployment(tmp_path_factory.mktemp("cookies"))
    secret = zones / "cookie-secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    settings = zones / "deployment.yaml"
    settings.write_text(settings.read_text() + "cookies:\n  secret_file: cookie-secret\n")
    return zones


@pytest.fixture(scope="module")
def service_router(
    lab: netns.ServiceLab, shared_secret_zones: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningRouter]:
    """One router of the service (v4 and v6, the shared cookie secret), for the tests below."""
    router = _router(lab, shared_secret_zones, tmp_path_factory.mktemp("service") / "router.log")
    yield router
    _stop(router)


def _router(lab: netns.ServiceLab, zones: Path, log: Path, *extra: str) -> RunningRouter:
    return start_router(zones, log, "--rrl-rate", str(RATE), "--rrl-slip", "2", *extra, api=False, workers=1,
                        listen=["0.0.0.0:0", "[::]:0"], prefix=["ip", "netns", "exec", lab.server])  # fmt: skip


def _ports(router: RunningRouter) -> tuple[int, int]:
    v4, v6 = router.listeners
    return int(v4.rpartition(":")[2]), int(v6.rpartition(":")[2])


def _stop(*routers: RunningRouter) -> None:
    for router in routers:
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()


def _client(lab: netns.ServiceLab, steps: list[dict]) -> list[dict]:
    result = subprocess.run(lab.command(lab.client, [sys.executable, "-c", CLIENT, json.dumps(steps)]),
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("attacker", "legit", "service"),
    [(netns.CLIENT_LINK_V4, LEGIT_V4, netns.SERVICE_V4), (netns.CLIENT_LINK_V6, LEGIT_V6, netns.SERVICE_V6)],
    ids=["v4", "v6"],
)  # fmt: skip
def test_a_flooding_prefix_is_limited_and_others_and_cookies_are_not(
    lab: netns.ServiceLab, service_router: RunningRouter, attacker: str, legit: str, service: str
) -> None:
    router = service_router  # the flood's buckets are this family's prefixes only
    port = _ports(router)[0 if ":" not in service else 1]
    client = "00112233445566ff"
    flood, legit_run, over_tcp, fetched = _client(lab, [
        {"kind": "flood", "source": attacker, "service": service, "port": port, "count": 400,
         "name": "video.cdn.example", "cookie": None},
        {"kind": "flood", "source": legit, "service": service, "port": port, "count": RATE // 2,
         "name": "video.cdn.example", "cookie": None},
        {"kind": "one", "source": attacker, "service": service, "port": port, "name": "video.cdn.example",
         "cookie": None, "tcp": True},
        {"kind": "one", "source": attacker, "service": service, "port": port, "name": "www.cdn.example",
         "cookie": client, "tcp": False},
    ])  # fmt: skip
    # The flooded name's bucket is empty now; a client proving its address is still answered.
    with_cookie = _client(lab, [
        {"kind": "flood", "source": attacker, "service": service, "port": port, "count": 400,
         "name": "video.cdn.example", "cookie": fetched["cookie"]},
    ])[0]  # fmt: skip
    bound = RATE + RATE * (
        flood["sent_s"] + 1.0
    )  # a full bucket, then its refill while replies came
    assert 0 < flood["full"] <= bound, flood
    assert flood["truncated"] >= (400 - bound) / 2 - 5, flood  # slip 2: every other limited reply
    assert legit_run["full"] == RATE // 2, legit_run  # another prefix: its own buckets
    assert over_tcp["rcode"] == 0 and over_tcp["answers"] > 0  # TCP is never limited
    assert fetched["cookie"] is not None and fetched["cookie"].startswith(client)
    assert with_cookie["full"] == 400 and with_cookie["truncated"] == 0, with_cookie
    assert with_cookie["cookies"] == [fetched["cookie"]]  # echoed: valid and young


def test_every_instance_with_the_shared_secret_accepts_the_cookie(
    lab: netns.ServiceLab,
    service_router: RunningRouter,
    shared_secret_zones: Path,
    deployment_dir: Path,
    tmp_path: Path,
) -> None:
    first = service_router
    second = _router(lab, shared_secret_zones, tmp_path / "second.log")
    alone = _router(lab, deployment_dir, tmp_path / "alone.log")  # no secret file: its own
    try:
        client = "a0a1a2a3a4a5a6a7"
        source, service = netns.CLIENT_LINK_V4, netns.SERVICE_V4

        def ask(router: RunningRouter, cookie: str, tcp: bool = False) -> dict:
            return {"kind": "one", "source": source, "service": service, "port": _ports(router)[0],
                    "name": "www.cdn.example", "cookie": cookie, "tcp": tcp}  # fmt: skip

        (issued,) = _client(lab, [ask(first, client)])
        cookie = issued["cookie"]
        at_second, at_second_tcp, at_alone, malformed = _client(
            lab,
            [
                ask(second, cookie),
                ask(second, cookie, tcp=True),
                ask(alone, cookie),
                ask(first, client[:14]),
            ],
        )
    finally:
        _stop(second, alone)
    assert cookie is not None and len(cookie) == 48 and cookie.startswith(client)
    assert (
        at_second["cookie"] == cookie and at_second_tcp["cookie"] == cookie
    )  # valid there: echoed
    assert at_alone["rcode"] == 0 and at_alone["answers"] > 0  # a normal answer...
    assert at_alone["cookie"] != cookie and at_alone["cookie"].startswith(
        client
    )  # ...with a fresh cookie
    assert malformed["rcode"] == 1 and malformed["cookie"] is None  # FORMERR


TCP_CLIENT = r"""
import json, socket, struct, sys, time
import dns.message

service, port, extra = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
query = dns.message.make_query("video.cdn.example", "A").to_wire()
framed = struct.pack("!H", len(query)) + query

def connect(source):
    s = socket.create_connection((service, port), timeout=3, source_address=(source, 0))
    return s

def alive(s):
    # A closed connection reads EOF (or a reset); a held one has nothing to say.
    s.settimeout(0.3)
    try:
        return s.recv(1) != b""
    except TimeoutError:
        return True
    except OSError:
        return False

def answered(s):
    s.settimeout(3)
    s.sendall(framed)
    head = s.recv(2)
    return len(head) == 2

out = {}
first = [connect(extra["attacker"]) for _ in range(6)]
time.sleep(0.3)
out["one_address_held"] = sum(alive(s) for s in first)
later = []
for source in extra["others"]:
    for _ in range(extra["per_client"]):
        later.append(connect(source))
        time.sleep(0.01)
time.sleep(0.3)
out["first_held_after_others"] = sum(alive(s) for s in first)
out["others_held"] = sum(alive(s) for s in later)
fresh = connect(extra["fresh"])
started = time.monotonic()
out["fresh_answered"] = answered(fresh)
out["fresh_ms"] = (time.monotonic() - started) * 1000
trickle = connect(extra["fresh"])
started = time.monotonic()
closed_after = None
for byte in framed:  # one octet every 0.2 s: active, but no message ever completes in time
    try:
        trickle.sendall(bytes([byte]))
    except OSError:
        closed_after = time.monotonic() - started
        break
    if not alive(trickle):
        closed_after = time.monotonic() - started
        break
    time.sleep(0.2)
out["trickle_closed_after_s"] = closed_after
print(json.dumps(out))
"""


def test_tcp_limits_hold_against_many_addresses(
    lab: netns.ServiceLab, deployment_dir: Path, tmp_path: Path
) -> None:
    router = start_router(deployment_dir, tmp_path / "router.log", "--tcp-max-connections", "16",
                          "--tcp-max-per-client", "4", "--tcp-partial-timeout", "1", "--tcp-idle-timeout", "30",
                          api=False, workers=1, listen=["0.0.0.0:0"], prefix=["ip", "netns", "exec", lab.server])  # fmt: skip
    others = EXTRA_V4[:4]  # 4 addresses x 4 connections: the table's 16
    extra = {
        "attacker": netns.CLIENT_LINK_V4,
        "others": others,
        "per_client": 4,
        "fresh": EXTRA_V4[-1],
    }
    try:
        result = subprocess.run(
            lab.command(lab.client, [sys.executable, "-c", TCP_CLIENT, netns.SERVICE_V4, str(router.port),
                                     json.dumps(extra)]),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        _stop(router)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["one_address_held"] == 4  # --tcp-max-per-client 4: the 5th and 6th closed at once
    assert got["first_held_after_others"] == 0  # the longest idle made room for 16 newer ones
    assert got["others_held"] == 16
    assert got["fresh_answered"] and got["fresh_ms"] < 1000  # a new client is always served
    # --tcp-partial-timeout 1: closed although it kept sending, before the message could finish.
    assert got["trickle_closed_after_s"] is not None and 0.8 <= got["trickle_closed_after_s"] <= 3.0
