"""Every wire rule of the DNS engine, table-driven, run twice: against the responder in
process, and against the real server (two workers) over UDP and TCP on loopback.

Replies are decoded with dnspython, which also proves they are well-formed; expected
records are written as presentation-format RRs. Tests that need a client address other
than loopback run in process only (a test cannot send from real ISP addresses).
"""

from __future__ import annotations

import base64
import socket
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dnslib
import pytest

from router.config import load_deployment
from router.dns.engine import Responder, TableView
from router.health import NodeHealth
from router.service.compiled import build_book
from router.steering import build_routing_table, compile_model
from tests.conftest import recv_exactly


class Engine:
    def __init__(self, zones: Path) -> None:
        self.deployment = load_deployment(zones)
        self.model = compile_model(self.deployment)
        self.health = NodeHealth(self.model.node_ids)
        self.book = build_book(self.deployment, self.model)
        self.set_states()

    def set_states(self, **admin: str) -> None:
        self.health = NodeHealth(self.model.node_ids)
        for node, state in admin.items():
            self.health.set_admin_state(node.replace("_", "-"), state)
        table = build_routing_table(self.model, self.health.states(), None, 1)
        self.view = TableView(table)
        self.responder = Responder(self.book, self.model.client_map, lambda: self.view)

    def raw(self, wire: bytes, source: str = "127.0.0.1", udp: bool = True) -> bytes | None:
        return self.responder.respond(wire, source, udp)

    def ask(
        self, query: dns.message.Message, source: str = "127.0.0.1", udp: bool = True
    ) -> dns.message.Message:
        reply = self.raw(query.to_wire(), source, udp)
        assert reply is not None
        return dns.message.from_wire(reply)


class ServerEngine:
    """The same interface, answered by the real router over sockets."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)

    def raw(self, wire: bytes, source: str = "127.0.0.1", udp: bool = True) -> bytes | None:
        assert source == "127.0.0.1", "the real server only sees loopback sources"
        if udp:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(wire, self.address)
                try:
                    return s.recv(65535)
                except TimeoutError:
                    return None
        with socket.create_connection(self.address, timeout=5) as s:
            s.sendall(struct.pack("!H", len(wire)) + wire)
            length = struct.unpack("!H", recv_exactly(s, 2))[0]
            return recv_exactly(s, length)

    def ask(
        self, query: dns.message.Message, source: str = "127.0.0.1", udp: bool = True
    ) -> dns.message.Message:
        reply = self.raw(query.to_wire(), source, udp)
        assert reply is not None
        return dns.message.from_wire(reply)


@pytest.fixture(scope="module")
def local_engine(deployment_dir: Path) -> Engine:
    return Engine(deployment_dir)


@pytest.fixture(scope="module", params=["in-process", "server"])
def engine(request: pytest.FixtureRequest, deployment_dir: Path):
    if request.param == "in-process":
        return request.getfixturevalue("local_engine")
    router = request.getfixturevalue("router")
    return ServerEngine(router.host, router.port)


def query(name: str, rdtype: str = "A", ecs: str | None = None, **kwargs) -> dns.message.Message:
    options = []
    if ecs is not None:
        address, prefix = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    if options:
        kwargs.setdefault("use_edns", 0)
        kwargs["options"] = options
    return dns.message.make_query(name, rdtype, **kwargs)


def rrs(section: list[dns.rrset.RRset]) -> set[str]:
    return {line for rrset in section for line in rrset.to_text().split("\n")}


def ecs_of(reply: dns.message.Message) -> dns.edns.ECSOption | None:
    return next((o for o in reply.options if isinstance(o, dns.edns.ECSOption)), None)


# -- answers from the zone file ------------------------------------------------------------

STATIC_CASES = [
    ("apex SOA", "cdn.example.", "SOA", "NOERROR",
     {"cdn.example. 3600 IN SOA ns1.cdn.example. hostmaster.cdn.example. 2026112201 7200 900 1209600 300"}),
    ("apex NS", "cdn.example.", "NS", "NOERROR", {"cdn.example. 3600 IN NS ns1.cdn.example.", "cdn.example. 3600 IN NS ns2.cdn.example."}),
    ("static A", "origin.cdn.example.", "A", "NOERROR", {"origin.cdn.example. 3600 IN A 203.0.113.80"}),
    ("static AAAA", "origin.cdn.example.", "AAAA", "NOERROR", {"origin.cdn.example. 3600 IN AAAA 2001:db8:80::1"}),
    ("MX", "cdn.example.", "MX", "NOERROR", {"cdn.example. 3600 IN MX 10 mail.cdn.example."}),
    ("TXT", "cdn.example.", "TXT", "NOERROR", {'cdn.example. 3600 IN TXT "v=spf1 mx -all"'}),
    ("CNAME to a steered name: only the CNAME (RFC 7871 7.2.1)", "images.cdn.example.", "A", "NOERROR",
     {"images.cdn.example. 3600 IN CNAME www.cdn.example."}),
    ("CNAME chain followed inside the zone", "chain.edge.example.", "A", "NOERROR",
     {"chain.edge.example. 600 IN CNAME alias.edge.example.", "alias.edge.example. 600 IN CNAME target.edge.example.",
      "target.edge.example. 600 IN A 203.0.113.5"}),
    ("CNAME asked for itself", "alias.edge.example.", "CNAME", "NOERROR", {"alias.edge.example. 600 IN CNAME target.edge.example."}),
    ("CNAME to a missing name: NXDOMAIN (RFC 6604)", "dangling.edge.example.", "A", "NXDOMAIN",
     {"dangling.edge.example. 600 IN CNAME nothere.edge.example."}),
    ("wildcard synthesis", "anything.wild.edge.example.", "A", "NOERROR", {"anything.wild.edge.example. 600 IN A 203.0.113.9"}),
    ("deeper wildcard match", "x.y.wild.edge.example.", "A", "NOERROR", {"x.y.wild.edge.example. 600 IN A 203.0.113.9"}),
    ("ANY answered minimally (RFC 8482)", "cdn.example.", "ANY", "NOERROR", {'cdn.example. 3600 IN HINFO "RFC8482" ""'}),
    ("ANY at a steered name", "www.cdn.example.", "ANY", "NOERROR", {'www.cdn.example. 3600 IN HINFO "RFC8482" ""'}),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, rdtype, rcode, expected", [c[1:] for c in STATIC_CASES], ids=[c[0] for c in STATIC_CASES]
)
def test_static_answers(
    engine: Engine, name: str, rdtype: str, rcode: str, expected: set[str]
) -> None:
    reply = engine.ask(query(name, rdtype))
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert rrs(reply.answer) == expected
    assert reply.flags & dns.flags.AA


def test_additional_section_carries_glue_for_ns_and_mx(engine: Engine) -> None:
    ns = engine.ask(query("cdn.example.", "NS"))
    assert rrs(ns.additional) == {
        "ns1.cdn.example. 3600 IN A 192.0.2.53", "ns1.cdn.example. 3600 IN AAAA 2001:db8:53::1",
        "ns2.cdn.example. 3600 IN A 198.51.100.53", "ns2.cdn.example. 3600 IN AAAA 2001:db8:53::2",
    }  # fmt: skip
    mx = engine.ask(query("edge.example.", "MX"))
    assert rrs(mx.additional) == {"mail.edge.example. 600 IN A 203.0.113.25"}


NEGATIVE_CASES = [
    ("NXDOMAIN", "nope.cdn.example.", "A", "NXDOMAIN", "cdn.example. 300 IN SOA"),
    (
        "NODATA: name exists, type does not",
        "origin.cdn.example.",
        "MX",
        "NOERROR",
        "cdn.example. 300 IN SOA",
    ),
    ("NODATA at a steered name", "www.cdn.example.", "TXT", "NOERROR", "cdn.example. 300 IN SOA"),
    (
        "NODATA at an empty non-terminal",
        "b.c.edge.example.",
        "A",
        "NOERROR",
        "edge.example. 120 IN SOA",
    ),
    (
        "NXDOMAIN below an existing name",
        "x.origin.cdn.example.",
        "A",
        "NXDOMAIN",
        "cdn.example. 300 IN SOA",
    ),
    ("wildcard NODATA", "foo.wild.edge.example.", "MX", "NOERROR", "edge.example. 120 IN SOA"),
]


@pytest.mark.parametrize(
    "name, rdtype, rcode, soa", [c[1:] for c in NEGATIVE_CASES], ids=[c[0] for c in NEGATIVE_CASES]
)
def test_negative_answers_carry_soa_with_negative_ttl(
    engine: Engine, name: str, rdtype: str, rcode: str, soa: str
) -> None:
    # RFC 2308 section 3: the SOA's TTL in a negative answer is min(SOA TTL, SOA MINIMUM).
    reply = engine.ask(query(name, rdtype))
    assert dns.rcode.to_text(reply.rcode()) == rcode
    assert reply.answer == []
    assert len(reply.authority) == 1
    assert reply.authority[0].to_text().startswith(soa)
    assert reply.flags & dns.flags.AA


def test_negative_templates_serve_names_of_every_length(engine: Engine) -> None:
    # Negative bodies are cached per question length; different names of one length
    # must each get a correct, decodable reply.
    for label in ("aaaa", "bbbb", "ns1x", "CDN1"):
        reply = engine.ask(query(f"{label}.cdn.example.", "A"))
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.question[0].name == dns.name.from_text(f"{label}.cdn.example.")
        assert reply.authority[0].name == dns.name.from_text("cdn.example.")


def test_referral_for_delegated_name(engine: Engine) -> None:
    reply = engine.ask(query("host.sub.edge.example.", "A"))
    assert reply.rcode() == dns.rcode.NOERROR
    assert not reply.flags & dns.flags.AA
    assert reply.answer == []
    assert rrs(reply.authority) == {"sub.edge.example. 600 IN NS ns.sub.edge.example."}
    assert rrs(reply.additional) == {"ns.sub.edge.example. 600 IN A 203.0.113.53"}


def test_refused_outside_served_zones(engine: Engine) -> None:
    reply = engine.ask(query("example.com.", "A"))
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.AA


def test_refused_for_other_classes_and_transfers(engine: Engine) -> None:
    assert engine.ask(query("cdn.example.", "TXT", rdclass="CH")).rcode() == dns.rcode.REFUSED
    assert engine.ask(query("cdn.example.", "AXFR")).rcode() == dns.rcode.REFUSED


# -- header rules ------------------------------------------------------------------------


def test_question_echoed_exactly_as_cased_with_id_and_rd(engine: Engine) -> None:
    q = query("OrIgIn.CdN.ExAmPlE.", "A")
    q.id = 0xBEEF
    q.flags |= dns.flags.RD
    wire = q.to_wire()
    reply = engine.raw(wire)
    assert reply is not None
    assert reply[:2] == b"\xbe\xef"
    assert (
        reply[12 : 12 + len(b"\x06OrIgIn\x03CdN\x07ExAmPlE\x00")]
        == b"\x06OrIgIn\x03CdN\x07ExAmPlE\x00"
    )
    parsed = dns.message.from_wire(reply)
    assert (
        parsed.flags & dns.flags.RD and parsed.flags & dns.flags.QR and parsed.flags & dns.flags.AA
    )
    assert not parsed.flags & dns.flags.RA
    q.flags &= ~dns.flags.RD
    assert not dns.message.from_wire(engine.raw(q.to_wire())).flags & dns.flags.RD


def test_responses_are_never_answered(engine: Engine) -> None:
    q = query("cdn.example.", "SOA")
    q.flags |= dns.flags.QR
    assert engine.raw(q.to_wire()) is None


def _header(qdcount: int, flags: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 0x1234, flags, qdcount, 0, 0, 0)


FORMERR_PACKETS = [
    ("no question", _header(0)),
    ("two questions", _header(2) + b"\x03cdn\x07example\x00\x00\x01\x00\x01" * 2),
    ("truncated question", _header(1) + b"\x03cdn\x07exa"),
    ("missing type and class", _header(1) + b"\x03cdn\x07example\x00\x00"),
    ("label longer than 63", _header(1) + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"),
    ("compression pointer in the question", _header(1) + b"\xc0\x0c\x00\x01\x00\x01"),
    ("name longer than 255", _header(1) + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 4 + b"\x00\x00\x01\x00\x01"),
    ("trailing garbage", _header(1) + b"\x03cdn\x07example\x00\x00\x01\x00\x01junk"),
    ("additional count past the end", struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 1) + b"\x03cdn\x07example\x00\x00\x01\x00\x01"),
]  # fmt: skip


@pytest.mark.parametrize(
    "packet", [p for _, p in FORMERR_PACKETS], ids=[n for n, _ in FORMERR_PACKETS]
)
def test_formerr_for_malformed_queries(engine: Engine, packet: bytes) -> None:
    reply = engine.raw(packet)
    assert reply is not None
    qid, flags = struct.unpack_from("!HH", reply)
    assert qid == 0x1234
    assert flags & 0x8000
    assert flags & 0xF == dns.rcode.FORMERR
    dns.message.from_wire(reply)  # well-formed


def test_too_short_to_answer_is_dropped(engine: Engine) -> None:
    assert engine.raw(b"\x12\x34\x00") is None
    assert engine.raw(b"") is None


@pytest.mark.parametrize(
    "opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE]
)
def test_notimp_for_other_opcodes(engine: Engine, opcode: int) -> None:
    q = query("cdn.example.", "SOA")
    q.set_opcode(opcode)
    q.flags |= dns.flags.RD
    reply = dns.message.from_wire(engine.raw(q.to_wire()))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == opcode
    assert not reply.flags & dns.flags.RD  # RD is defined for QUERY only


@pytest.mark.parametrize("qdcount", [0, 2])
@pytest.mark.parametrize("opcode", [dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE, 15])
def test_opcode_is_judged_before_the_question_count(
    engine: Engine, opcode: int, qdcount: int
) -> None:
    # A header-only packet (or two questions) with an opcode we do not implement is NOTIMP,
    # not FORMERR: the opcode decides what the rest of the message may be.
    question = b"\x03cdn\x07example\x00\x00\x06\x00\x01" * qdcount
    packet = struct.pack("!HHHHHH", 0xBEEF, (opcode << 11) | 0x0100, qdcount, 0, 0, 0) + question
    reply = engine.raw(packet)
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", reply)
    assert (qid, qd, an, ns, ar) == (0xBEEF, 0, 0, 0, 0)
    assert flags == 0x8000 | (opcode << 11) | dns.rcode.NOTIMP  # QR, the opcode, no RD


UNKNOWN_KEY = dns.tsig.Key(
    "transfer-key.example.", base64.b64encode(b"k" * 32).decode(), "hmac-sha256"
)


@pytest.mark.parametrize("use_edns", [False, True])
def test_a_query_signed_with_an_unknown_key_gets_notauth_badkey(
    engine: Engine, use_edns: bool
) -> None:
    q = query("origin.cdn.example.", "A", use_edns=0 if use_edns else None)
    q.use_tsig(UNKNOWN_KEY)
    reply = engine.raw(q.to_wire())
    assert reply[3] & 0xF == dns.rcode.NOTAUTH
    with pytest.raises(dns.tsig.PeerBadKey):  # dnspython reads the TSIG error: BADKEY
        dns.message.from_wire(reply, keyring={UNKNOWN_KEY.name: UNKNOWN_KEY}, request_mac=q.mac)
    unsigned = dns.message.from_wire(reply, ignore_trailing=False, keyring=False)
    assert unsigned.answer == [] and unsigned.id == q.id
    assert (unsigned.edns == 0) == use_edns
    tsig = unsigned.tsig[0]
    assert (tsig.error, tsig.mac, tsig.original_id) == (dns.rcode.BADKEY, b"", q.id)
    assert unsigned.keyname == UNKNOWN_KEY.name


def test_a_tsig_record_that_is_not_last_is_formerr(engine: Engine) -> None:
    q = query("origin.cdn.example.", "A")
    q.use_tsig(UNKNOWN_KEY)
    signed = q.to_wire()
    # One more additional record after the TSIG: RFC 8945 5.2 says FORMERR.
    extra = b"\x00\x00\x01\x00\x01\x00\x00\x00\x00\x00\x04\x01\x02\x03\x04"
    arcount = struct.unpack_from("!H", signed, 10)[0] + 1
    packet = signed[:10] + struct.pack("!H", arcount) + signed[12:] + extra
    assert engine.raw(packet)[3] & 0xF == dns.rcode.FORMERR


def test_rd_is_echoed_on_query(engine: Engine) -> None:
    q = query("origin.cdn.example.", "A")
    assert engine.ask(q).flags & dns.flags.RD
    q.flags &= ~dns.flags.RD
    assert not engine.ask(q).flags & dns.flags.RD
    header_only = struct.pack("!HHHHHH", 7, 0x0100, 0, 0, 0, 0)
    assert (
        struct.unpack_from("!H", engine.raw(header_only), 2)[0]
        == 0x8000 | 0x0100 | dns.rcode.FORMERR
    )


# -- EDNS(0) ----------------------------------------------------------------------------


def test_opt_only_in_replies_to_opt_queries(engine: Engine) -> None:
    with_edns = engine.ask(query("origin.cdn.example.", "A", use_edns=0, want_dnssec=True))
    assert with_edns.edns == 0
    assert with_edns.payload == 1232
    assert with_edns.ednsflags & dns.flags.DO  # RFC 3225: DO is copied
    without = engine.ask(query("origin.cdn.example.", "A"))
    assert without.edns == -1


def test_badvers_for_edns_version_above_zero(engine: Engine) -> None:
    reply = engine.ask(query("origin.cdn.example.", "A", use_edns=1))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert reply.answer == []


def test_two_opt_records_is_formerr(engine: Engine) -> None:
    wire = bytearray(query("cdn.example.", "SOA", use_edns=0).to_wire())
    opt = bytes(wire[-11:])
    wire[10:12] = struct.pack("!H", 2)
    reply = engine.raw(bytes(wire) + opt)
    assert reply is not None and reply[3] & 0xF == dns.rcode.FORMERR


TRUNCATION_CASES = [
    # (name, edns payload or None, udp?, truncated?)
    ("big.edge.example.", None, True, True),
    ("big.edge.example.", 4096, True, True),  # over 1232: never sent unfragmentable over UDP
    ("big.edge.example.", 4096, False, False),
    ("medium.edge.example.", None, True, True),
    ("medium.edge.example.", 1232, True, False),
    ("medium.edge.example.", None, False, False),
]


@pytest.mark.parametrize("name, payload, udp, truncated", TRUNCATION_CASES)
def test_truncation(
    engine: Engine, name: str, payload: int | None, udp: bool, truncated: bool
) -> None:
    q = query(name, "TXT", use_edns=0 if payload else False, payload=payload or 512)
    reply_wire = engine.raw(q.to_wire(), udp=udp)
    assert reply_wire is not None
    limit = (min(payload, 1232) if payload else 512) if udp else 65535
    assert len(reply_wire) <= limit
    reply = dns.message.from_wire(reply_wire)
    assert bool(reply.flags & dns.flags.TC) == truncated
    expected = 12 if name.startswith("big") else 4
    if truncated:
        assert reply.answer == [] and reply.question[0].name == dns.name.from_text(name)
    else:
        assert len(reply.answer[0]) == expected
    assert (reply.edns == 0) == bool(payload)


# -- EDNS Client Subnet -------------------------------------------------------------------


def test_ecs_steers_by_subnet_and_scopes_to_the_map_entry(engine: Engine) -> None:
    # 83.44.10.1 lies in 83.32.0.0/11, Telefonica de Espana (AS3352) in the sample map.
    reply = engine.ask(query("video.cdn.example.", "A", ecs="83.44.10.0/24"))
    option = ecs_of(reply)
    assert option is not None
    assert (option.address, option.srclen, option.scopelen) == ("83.44.10.0", 24, 11)
    assert rrs(reply.answer) == {
        "video.cdn.example. 20 IN A 192.0.2.11",
        "video.cdn.example. 20 IN A 192.0.2.12",
    }


def test_ecs_ipv6_and_aaaa(engine: Engine) -> None:
    reply = engine.ask(query("www.cdn.example.", "AAAA", ecs="2a02:9100:1234::/48"))
    option = ecs_of(reply)
    assert (option.family, option.srclen, option.scopelen) == (2, 48, 24)
    assert rrs(reply.answer) == {
        "www.cdn.example. 30 IN AAAA 2001:db8:11::1",
        "www.cdn.example. 30 IN AAAA 2001:db8:12::1",
    }


def test_ecs_scope_zero_for_names_that_are_not_steered(engine: Engine) -> None:
    for name, rdtype in (
        ("origin.cdn.example.", "A"),
        ("nope.cdn.example.", "A"),
        ("images.cdn.example.", "A"),
    ):
        option = ecs_of(engine.ask(query(name, rdtype, ecs="83.44.10.0/24")))
        assert option is not None and option.scopelen == 0 and option.srclen == 24


def test_no_ecs_in_replies_to_queries_without_it(engine: Engine) -> None:
    assert ecs_of(engine.ask(query("video.cdn.example.", "A", use_edns=0))) is None


def test_ecs_uses_no_more_bits_than_the_source_prefix(engine: Engine) -> None:
    # /8 of 83.x: the decision may only see 83.0.0.0, whatever the client's full address.
    wide = engine.ask(query("video.cdn.example.", "A", ecs="83.0.0.0/8"))
    exact = engine.ask(query("video.cdn.example.", "A", ecs="83.0.0.0/32"))
    assert rrs(wide.answer) == rrs(exact.answer)
    assert ecs_of(wide).scopelen == ecs_of(exact).scopelen


def _ecs_wire(family: int, source: int, scope: int, address: bytes) -> bytes:
    q = query("video.cdn.example.", "A", use_edns=0)
    wire = bytearray(q.to_wire())
    option = struct.pack("!HHHBB", 8, 4 + len(address), family, source, scope) + address
    wire[-2:] = struct.pack("!H", len(option))
    return bytes(wire) + option


MALFORMED_ECS = [
    ("unknown family", _ecs_wire(3, 24, 0, b"\x53\x2c\x0a")),
    ("source prefix too long for IPv4", _ecs_wire(1, 33, 0, b"\x53\x2c\x0a\x00\x00")),
    ("non-zero scope in a query", _ecs_wire(1, 24, 8, b"\x53\x2c\x0a")),
    ("too many address octets", _ecs_wire(1, 16, 0, b"\x53\x2c\x0a")),
    ("too few address octets", _ecs_wire(1, 24, 0, b"\x53\x2c")),
    ("bits set beyond the source prefix", _ecs_wire(1, 20, 0, b"\x53\x2c\x0f")),
    ("option shorter than its header", _ecs_wire(1, 24, 0, b"")[:-6] + b"\x00\x08\x00\x02\x00\x01"),
]


@pytest.mark.parametrize("wire", [w for _, w in MALFORMED_ECS], ids=[n for n, _ in MALFORMED_ECS])
def test_formerr_for_malformed_ecs(engine: Engine, wire: bytes) -> None:
    reply = engine.raw(wire)
    assert reply is not None
    assert reply[3] & 0xF == dns.rcode.FORMERR


def test_private_and_loopback_ecs_fall_back_to_the_source_address(local_engine: Engine) -> None:
    # The resolver sits in Telefonica space; its clients' ECS says 10.x or 127.x.
    via_source = local_engine.ask(query("video.cdn.example.", "A", ecs="83.44.10.0/24"))
    for subnet, scope in (
        ("10.1.2.0/24", 8),
        ("127.0.0.0/24", 8),
        ("192.168.1.0/24", 16),
        ("fd00::/56", 7),
    ):
        reply = local_engine.ask(query("video.cdn.example.", "A", ecs=subnet), source="83.44.10.7")
        assert rrs(reply.answer) == rrs(via_source.answer), subnet
        assert ecs_of(reply).scopelen == scope  # covers the whole special block (RFC 7871 10)


def test_ecs_zero_prefix_uses_the_source_address_with_scope_zero(local_engine: Engine) -> None:
    reply = local_engine.ask(
        query("video.cdn.example.", "A", ecs="0.0.0.0/0"), source="85.241.20.30"
    )
    assert ecs_of(reply).scopelen == 0
    assert rrs(reply.answer) == {
        "video.cdn.example. 20 IN A 198.51.100.11",
        "video.cdn.example. 20 IN A 198.51.100.12",
    }


def test_source_address_used_without_ecs(local_engine: Engine) -> None:
    reply = local_engine.ask(query("video.cdn.example.", "A"), source="89.153.10.20")  # NOS
    assert rrs(reply.answer) == {
        "video.cdn.example. 20 IN A 198.51.100.21",
        "video.cdn.example. 20 IN A 198.51.100.22",
    }


def test_loopback_source_without_ecs_is_an_unknown_client(engine) -> None:
    # Loopback resolvers are not in the client map: they get the default site's answer,
    # scoped to the whole loopback-free gap of the map (no ECS in the query: no option).
    # The embedded nodes serve their own ISP's clients only: the IX nodes of Madrid and Lisbon.
    reply = engine.ask(query("video.cdn.example.", "A", use_edns=0))
    assert ecs_of(reply) is None
    assert rrs(reply.answer) == {
        "video.cdn.example. 20 IN A 203.0.113.11",
        "video.cdn.example. 20 IN A 203.0.113.12",
    }
    private = engine.ask(query("video.cdn.example.", "A", ecs="10.9.8.0/24"))
    assert rrs(private.answer) == rrs(reply.answer)
    assert ecs_of(private).scopelen == 8


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "tcp"])
def test_same_answer_over_udp_and_tcp(engine, udp: bool) -> None:
    reply = engine.ask(query("www.cdn.example.", "A", ecs="85.48.0.0/16"), udp=udp)
    assert rrs(reply.answer) == {
        "www.cdn.example. 30 IN A 192.0.2.31",
        "www.cdn.example. 30 IN A 192.0.2.33",
    }
    assert ecs_of(reply).scopelen == 12


CROSS_CHECK = [
    ("video.cdn.example.", "A", "83.44.10.0/24"),
    ("www.cdn.example.", "AAAA", "2a02:9100:1234::/48"),
    ("cdn.example.", "NS", None),
    ("nope.cdn.example.", "A", None),
    ("chain.edge.example.", "A", None),
    ("host.sub.edge.example.", "A", None),
    ("big.edge.example.", "TXT", None),
]


@pytest.mark.parametrize("name, rdtype, ecs", CROSS_CHECK)
def test_replies_decode_identically_with_dnslib(
    engine, name: str, rdtype: str, ecs: str | None
) -> None:
    # A second, independent decoder: both must read the same records from our bytes.
    reply_wire = engine.raw(query(name, rdtype, ecs=ecs).to_wire(), udp=False)
    assert reply_wire is not None
    ours = dns.message.from_wire(reply_wire)
    theirs = dnslib.DNSRecord.parse(reply_wire)
    assert theirs.header.id == ours.id
    assert theirs.header.rcode == ours.rcode() & 0xF
    for dnslib_section, dnspython_section in (
        (theirs.rr, ours.answer),
        (theirs.auth, ours.authority),
    ):
        expected = sorted(
            (str(rrset.name).lower(), rrset.rdtype, rrset.ttl)
            for rrset in dnspython_section
            for _ in rrset
        )
        decoded = sorted((str(rr.rname).lower(), rr.rtype, rr.ttl) for rr in dnslib_section)
        assert decoded == expected
    assert str(theirs.q.qname).lower() == name
