"""The router's signed answers through a real validating resolver: Unbound (ECS on) with the
zone's trust anchor returns AD=1 for steered answers from several client subnets and for
denials, and SERVFAIL once a signature is broken on the way (a proxy in this test flips a
bit of every RRSIG; nothing in the router can corrupt its own signatures)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from router.config import dnssec_keys
from router.config.deployment import load_deployment
from router.service.compiled import compile_deployment, last_known_health
from tests.conftest import make_deployment, start_router

unbound = pytest.importorskip("tests.unbound")

ZONE = "cdn.example."
# Client subnets of different groups of the sample map (Spain, Portugal, two ISPs each).
SUBNETS = ["81.0.0.0/24", "213.0.0.0/24", "193.136.0.0/24", "2a02:9000::/56"]


class BreakingProxy:
    """UDP from Unbound to the router and back; with ``broken`` set, every RRSIG of a reply
    has one bit of its signature flipped (test-only corruption)."""

    def __init__(self, router_port: int) -> None:
        self.router = ("127.0.0.1", router_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.broken = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.settimeout(2.0)
        while not self.stop.is_set():
            try:
                query, client = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            upstream.sendto(query, self.router)
            try:
                reply = upstream.recv(65535)
            except TimeoutError:
                continue
            if self.broken:
                reply = self._break(reply)
            self.sock.sendto(reply, client)
        upstream.close()

    @staticmethod
    def _break(wire: bytes) -> bytes:
        message = dns.message.from_wire(wire)
        for section in (message.answer, message.authority):
            for rrset in section:
                if rrset.rdtype == dns.rdatatype.RRSIG:
                    broken = [
                        r.replace(signature=bytes([r.signature[0] ^ 1]) + r.signature[1:])
                        for r in rrset
                    ]
                    rrset.clear()
                    for rdata in broken:
                        rrset.add(rdata)
        return message.to_wire()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=3)
        self.sock.close()


@pytest.fixture(scope="module")
def signed_router(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dnssec-unbound")
    zones = make_deployment(root)
    dnssec_keys.keygen(zones)
    running = start_router(zones, root / "router.log", api=False, workers=1)
    try:
        yield zones, running
    finally:
        running.stop()
        running.process.stdout.close()


@pytest.mark.integration
def test_unbound_validates_steered_answers_and_denials(signed_router, tmp_path: Path) -> None:
    zones, running = signed_router
    anchor = [line for line in dnssec_keys.trust_anchor_text(zones).splitlines() if line.startswith(f"{ZONE} ")
              and " DS " in line]  # fmt: skip
    deployment = load_deployment(zones)
    compiled = compile_deployment(deployment)
    table = compiled.plan(last_known_health(deployment, compiled.model).states())
    responder = compiled.responder(table)
    try:
        resolver = unbound.Unbound(ZONE, running.port, anchor, tmp_path)
    except unbound.UnboundUnavailable as exc:
        pytest.skip(str(exc))
    with resolver:
        answers = set()
        for subnet in SUBNETS:
            for rdtype in ("A", "AAAA"):
                reply = resolver.query("www.cdn.example.", rdtype, ecs=subnet)
                assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AD, (
                    resolver.log_tail()
                )
                got = sorted(r.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                             for r in rrset)  # fmt: skip
                # What the router answers that subnet directly (ECS reached it through Unbound).
                query = dns.message.make_query("www.cdn.example.", rdtype, use_edns=0)
                network = subnet.split("/")
                query.use_edns(
                    0, 0, 1232, options=[dns.edns.ECSOption(network[0], int(network[1]))]
                )
                direct = dns.message.from_wire(
                    responder.respond(query.to_wire(), "127.0.0.1", True)
                )
                assert got == sorted(r.to_text() for rrset in direct.answer for r in rrset), subnet
                answers.add(tuple(got))
        assert len(answers) > 2  # the subnets were steered apart
        nxdomain = resolver.query("no-such-name.cdn.example.", "A")
        assert nxdomain.rcode() == dns.rcode.NXDOMAIN and nxdomain.flags & dns.flags.AD, (
            resolver.log_tail()
        )
        nodata = resolver.query("origin.cdn.example.", "TXT")
        assert (
            nodata.rcode() == dns.rcode.NOERROR
            and not nodata.answer
            and nodata.flags & dns.flags.AD
        )
        static = resolver.query("cdn.example.", "MX")
        assert static.answer and static.flags & dns.flags.AD


@pytest.mark.integration
def test_unbound_rejects_a_broken_signature(signed_router, tmp_path: Path) -> None:
    zones, running = signed_router
    anchor = [line for line in dnssec_keys.trust_anchor_text(zones).splitlines() if line.startswith(f"{ZONE} ")
              and " DS " in line]  # fmt: skip
    proxy = BreakingProxy(running.port)
    try:
        try:
            resolver = unbound.Unbound(ZONE, proxy.port, anchor, tmp_path)
        except unbound.UnboundUnavailable as exc:
            pytest.skip(str(exc))
        with resolver:
            good = resolver.query("www.cdn.example.", "A", ecs=SUBNETS[0])
            assert good.flags & dns.flags.AD, resolver.log_tail()
            proxy.broken = True
            resolver.flush()
            bad = resolver.query("video.cdn.example.", "A", ecs=SUBNETS[1])
            assert bad.rcode() == dns.rcode.SERVFAIL, bad
            assert resolver.validation_failures(), resolver.log_tail()
    finally:
        proxy.close()
