"""The fast path (router/dns/fast_answer.py, numba) against the general path (Responder).

Both answer the same packets from the same book, client map and routing table; every
reply must be byte-identical, or the fast path must hand the query over (PUNT), which
the server then answers with the general path. Tables with split groups are included,
so the sticky per-subnet pick is compared too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.tsig
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.dns import cookies
from router.dns.answers import name_key
from router.dns.engine import Responder, TableView
from router.dns.fast_answer import PUNT, FastResponder, compile_book
from router.dns.query_stats import QueryStats
from router.dns.transport import Counters, WorkerStop, safe_respond, serve_udp
from router.dns.udp_batch import (
    C_ANSWERED,
    C_PUNTED,
    C_RECEIVED,
    CONTROL_RETIRE,
    CONTROL_SWAP,
    CONTROLS,
    COUNTERS,
    serve_udp_batched,
    supported,
    warm_up,
)
from router.steering.build import Planner
from tests.conftest import REPO, load_script, start_router
from tests.test_router_dns_engine import Engine

SOURCES = [
    "127.0.0.1",
    "83.44.10.7",
    "89.7.1.1",
    "2a02:9000::1",
    "::ffff:83.44.10.7",
    "::1",
    "10.0.0.1",
]
ECS_SUBNETS = [None, "83.44.10.0/24", "83.44.10.128/25", "83.0.0.0/8", "89.7.0.0/16", "2a02:9100:1234::/48",
               "2a02:9000::/29", "10.1.0.0/16", "192.168.1.0/24", "2001:db8::/32", "::ffff:83.44.10.0/120",
               "0.0.0.0/0", "::/0", "83.44.10.7/32", "2a02:9100:1234:5678::1/128"]  # fmt: skip


class Pair:
    """The general and the fast responder over one book, client map and table.

    Both count what they answer (router/dns/query_stats.py). As in the server, a query the
    fast path punts is answered, and counted, by a general responder behind it; the fast
    path's counts plus that one's must equal the general path's own."""

    def __init__(self, engine: Engine, view: TableView, nsid: bytes = b"",
                 cookie_secrets: tuple[bytes, ...] = ()) -> None:  # fmt: skip
        self.view = view

        def state() -> np.ndarray:  # each responder its own, as each worker has
            return cookies.state_array(cookie_secrets)

        self.demand_general = np.zeros(
            (len(engine.model.policies), len(engine.model.client_map.groups)), np.int64
        )
        self.demand_fast = np.zeros_like(self.demand_general)
        fast_book = compile_book(engine.book, engine.model.client_map, nsid)
        self.labels = fast_book.labels
        nodes = len(engine.model.node_ids)
        self.stats_general = QueryStats.zeros(len(self.labels.names), nodes)
        self.stats_fast = QueryStats.zeros(len(self.labels.names), nodes)
        self.stats_punted = QueryStats.zeros(len(self.labels.names), nodes)
        self.general = Responder(engine.book, engine.model.client_map, lambda: self.view,
                                 demand_counts=self.demand_general, nsid=nsid, cookie_state=state())  # fmt: skip
        # Counts only what ``check`` sends (tests also use ``general`` on its own).
        self.counting = Responder(
            engine.book,
            engine.model.client_map,
            lambda: self.view,
            stats=self.stats_general,
            nsid=nsid,
            cookie_state=state(),
        )
        self.behind_fast = Responder(engine.book, engine.model.client_map, lambda: self.view, stats=self.stats_punted,
                                     labels=self.labels, nsid=nsid, cookie_state=state())  # fmt: skip
        self.fast = FastResponder(
            fast_book, lambda: self.view, self.demand_fast, self.stats_fast, state()
        )
        self.answered = 0
        self.punted = 0
        self.punted_names: set[str] = set()

    def check(self, packet: bytes, source: str = "127.0.0.1", udp: bool = True) -> None:
        expected = self.general.respond(packet, source, udp)
        assert self.counting.respond(packet, source, udp) == expected
        got = self.fast.respond(packet, source, udp)
        if got == PUNT:
            self.punted += 1
            self.punted_names.add(dns.name.from_wire(packet, 12)[0].to_text().lower())
            got = self.behind_fast.respond(packet, source, udp)
            assert got == expected
            return
        self.answered += 1
        assert got == expected, f"fast path differs for {packet.hex()} from {source} (udp={udp})"

    def assert_counted_alike(self) -> None:
        for general, fast, punted in zip(
            self.stats_general.arrays, self.stats_fast.arrays, self.stats_punted.arrays
        ):
            differs = np.argwhere(general != fast + punted)
            assert not len(differs), f"counts differ at {differs[:5].tolist()}"
        assert self.stats_general.queries.sum() > 0


@pytest.fixture(autouse=True)
def _counted_alike(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used a pair: both paths counted every reply the same way."""
    yield
    for name in ("pair", "split_pair"):
        if name in request.fixturenames:
            request.getfixturevalue(name).assert_counted_alike()


@pytest.fixture(scope="module")
def engine(deployment_dir: Path) -> Engine:
    return Engine(deployment_dir)


@pytest.fixture(scope="module")
def pair(engine: Engine) -> Pair:
    return Pair(engine, engine.view)


@pytest.fixture(scope="module")
def split_pair(engine: Engine) -> Pair:
    """A table planned with demand beyond the nearest nodes, so groups are split."""
    planner = Planner(engine.model)
    groups = len(engine.model.client_map.groups)
    capacity = float(np.sum(engine.model.node_capacity_gbps))
    for p in range(len(engine.model.policies)):
        planner.set_demand(p, np.full(groups, 0.9 * capacity / groups / len(engine.model.policies)))
    table = planner.build(engine.health.states(), None, generation=1)
    assert (table.group_set < 0).any(), "the demand should have split some groups"
    return Pair(engine, TableView(table))


def make_query(name: str, rdtype: str, ecs: str | None, edns: bool, payload: int = 1232, do: bool = False,
               rd: bool = True) -> bytes:  # fmt: skip
    options = []
    if ecs is not None:
        address, prefix = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    message = dns.message.make_query(name, rdtype, use_edns=0 if edns or options else None, options=options,
                                     payload=payload, want_dnssec=do)  # fmt: skip
    if not rd:
        message.flags &= ~dns.flags.RD
    return message.to_wire()


def scramble_case(name: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def every_name(engine: Engine) -> list[str]:
    names = {dns.name.from_wire(key, 0)[0].to_text() for key, _ in engine.book.exact}
    for origin in engine.book.zones:
        origin_text = dns.name.from_wire(origin, 0)[0].to_text()
        names |= {f"nope.{origin_text}", f"a.b.nope.{origin_text}", f"x.wild.{origin_text}", f"b.c.{origin_text}",
                  f"deep.ns.sub.{origin_text}", f"{'q' * 63}.{'r' * 60}.{origin_text}"}  # fmt: skip
    return sorted(names) + ["example.org.", "."]


TYPES = ["A", "AAAA", "ANY", "MX", "TXT", "NS", "SOA", "CNAME", "DS", "SRV", "HINFO", "CAA"]


def test_every_name_type_and_client_gives_the_same_bytes(engine: Engine, pair: Pair) -> None:
    rng = random.Random(7)
    for name in every_name(engine):
        for rdtype in TYPES:
            for ecs in ECS_SUBNETS:
                packet = make_query(scramble_case(name, rng), rdtype, ecs, edns=rng.random() < 0.5)
                pair.check(packet, rng.choice(SOURCES))
    # Only referrals, wildcards and CNAME chains for other types go to the general path.
    cnames = {
        dns.name.from_wire(k, 0)[0].to_text()
        for zone in engine.book.zones.values()
        for k in zone.cnames
    }
    assert pair.punted_names == cnames | {"deep.ns.sub.edge.example.", "x.wild.edge.example."}
    assert pair.answered > 5 * pair.punted
    assert np.array_equal(pair.demand_fast, pair.demand_general) and pair.demand_fast.sum() > 0


def test_truncation_edns_and_flags_give_the_same_bytes(pair: Pair) -> None:
    for name, rdtype in [("big.edge.example.", "TXT"), ("medium.edge.example.", "TXT"), ("edge.example.", "MX"),
                         ("video.cdn.example.", "A"), ("sub.edge.example.", "NS"), ("edge.example.", "ANY")]:  # fmt: skip
        for edns, payload in [
            (False, 512),
            (True, 0),
            (True, 512),
            (True, 600),
            (True, 1232),
            (True, 4096),
        ]:
            for do in (False, True):
                for udp in (True, False):
                    for rd in (True, False):
                        packet = make_query(
                            name, rdtype, "83.44.10.0/24" if edns else None, edns, payload, do, rd
                        )
                        pair.check(packet, "127.0.0.1", udp)


ADDRESSES_PER_SPLIT_RANGE = 8


def test_split_groups_pick_the_same_node_per_subnet(engine: Engine, split_pair: Pair) -> None:
    """Addresses inside the client-map ranges of split groups, as ECS (/24, /32, /20) and as
    the source: the sticky pick and the widened scope must match. Eight addresses per range,
    every split range of both families (about 25,000 queries)."""
    rng = random.Random(11)
    answered, punted = split_pair.answered, split_pair.punted
    cm = engine.model.client_map
    view = split_pair.view
    policy = engine.book.steered[0].policy
    split_v4 = [i for i in range(len(cm.v4_start)) if view.group_set[policy, cm.v4_group[i]] < 0]
    split_v6 = [i for i in range(len(cm.v6_start_hi)) if view.group_set[policy, cm.v6_group[i]] < 0]
    assert split_v4 and split_v6, "the plan should split IPv4 and IPv6 client groups"
    for i in split_v4:
        for _ in range(ADDRESSES_PER_SPLIT_RANGE):
            address = socket.inet_ntoa(
                struct.pack("!I", rng.randint(int(cm.v4_start[i]), int(cm.v4_end[i])))
            )
            for bits in (24, 32, 20):
                split_pair.check(
                    make_query("video.cdn.example.", "A", f"{address}/{bits}", edns=True)
                )
            split_pair.check(make_query("video.cdn.example.", "AAAA", None, edns=False), address)
    for i in split_v6:
        start = (int(cm.v6_start_hi[i]) << 64) | int(cm.v6_start_lo[i])
        end = (int(cm.v6_end_hi[i]) << 64) | int(cm.v6_end_lo[i])
        for _ in range(ADDRESSES_PER_SPLIT_RANGE):
            address = socket.inet_ntop(socket.AF_INET6, rng.randint(start, end).to_bytes(16, "big"))
            for bits in (48, 56, 40):
                split_pair.check(
                    make_query("www.cdn.example.", "AAAA", f"{address}/{bits}", edns=True)
                )
            split_pair.check(make_query("www.cdn.example.", "A", None, edns=False), address)
    checked = 4 * ADDRESSES_PER_SPLIT_RANGE * (len(split_v4) + len(split_v6))
    assert split_pair.punted == punted and split_pair.answered - answered == checked


@pytest.mark.parametrize("nsid", [b"edge-7.fra", b""])
def test_nsid_is_answered_alike_when_asked(engine: Engine, nsid: bytes) -> None:
    pair = Pair(engine, engine.view, nsid)
    cases = [("video.cdn.example.", "A", "83.44.10.0/24"), ("video.cdn.example.", "AAAA", None),
             ("origin.cdn.example.", "A", None), ("nothing.cdn.example.", "A", None),
             ("elsewhere.example.org.", "A", None), ("cdn.example.", "OPT", None)]  # fmt: skip
    for name, rdtype, ecs in cases:
        for ask in (True, False):
            options = [dns.edns.GenericOption(dns.edns.NSID, b"")] if ask else []
            if ecs is not None:
                address, bits = ecs.split("/")
                options.append(dns.edns.ECSOption(address, int(bits)))
            q = dns.message.make_query(name, rdtype, use_edns=0, options=options)
            pair.check(q.to_wire())
            reply = dns.message.from_wire(pair.general.respond(q.to_wire(), "127.0.0.1", True))
            sent = [o for o in reply.options if o.otype == dns.edns.NSID]
            assert sent == ([dns.edns.NSIDOption(nsid)] if ask and nsid else []), (
                name,
                rdtype,
                ask,
            )
        # Without EDNS there is nowhere to put it.
        plain = dns.message.make_query(name, "A")
        assert (
            dns.message.from_wire(pair.general.respond(plain.to_wire(), "127.0.0.1", True)).edns < 0
        )
    assert pair.answered >= 2 * len(cases)


def test_signed_queries_go_to_the_general_path(pair: Pair) -> None:
    key = dns.tsig.Key("k.example.", "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U=", "hmac-sha256")
    for name in ("video.cdn.example.", "nothing.cdn.example."):
        q = dns.message.make_query(name, "A", use_edns=0)
        q.use_tsig(key)
        punted = pair.punted
        pair.check(q.to_wire())
        assert pair.punted == punted + 1  # answered NOTAUTH/BADKEY by Responder, the same bytes


def test_malformed_and_odd_packets_give_the_same_bytes(pair: Pair) -> None:
    base = make_query("video.cdn.example.", "A", "83.44.10.0/24", edns=True)
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    question = b"\x05video\x03cdn\x07example\x00\x00\x01\x00\x01"
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
    ecs = b"\x00\x08\x00\x07\x00\x01\x18\x00\x53\x2c\x0a"
    cases = [
        b"", b"\x12", base[:11], base[:12], base[:20], base[:-1], base + b"\x00",
        base[:2] + b"\x81\x00" + base[4:],  # a response: never answered
        base[:2] + b"\x29\x00" + base[4:],  # opcode UPDATE
        struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + question + question,  # QDCOUNT 2
        struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 0),
        struct.pack("!HHHHHH", 1, 0x2100, 0, 0, 0, 0),  # NOTIFY, header only: NOTIMP
        struct.pack("!HHHHHH", 1, 0x7900, 2, 0, 0, 0) + question + question,  # opcode 15, QDCOUNT 2
        base[:2] + b"\x21\x00" + base[4:],  # NOTIFY with RD: NOTIMP, RD not echoed
        header[:4] + b"\x00\x01\x00\x00\x00\x00\x00\x01" + question + opt + b"\x00\x04" + b"\x00\x08\x00\x00",
        header[:10] + b"\x00\x01" + question + opt + b"\x00\x0b" + ecs,  # well-formed ECS
        header[:10] + b"\x00\x02" + question + opt + b"\x00\x0b" + ecs + opt + b"\x00\x00",  # two OPTs
        header[:10] + b"\x00\x01" + question + opt + b"\x00\x16" + ecs + ecs,  # two ECS options
        header[:10] + b"\x00\x01" + question + b"\x00\x00\x29\x04\xd0\x00\x01\x00\x00\x00\x00",  # EDNS version 1
        header[:10] + b"\x00\x01" + question + opt + b"\x00\x0b" + ecs[:6] + b"\x21" + ecs[7:],  # source > 32
        header[:10] + b"\x00\x01" + question + opt + b"\x00\x0b" + ecs[:7] + b"\x05" + ecs[8:],  # scope set
        header[:10] + b"\x00\x01" + question + opt + b"\x00\x0b" + ecs[:4] + b"\x00\x03" + ecs[6:],  # family 3
        header[:10] + b"\x00\x01" + question + b"\xc0\x0c\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",  # OPT not root
        header[:6] + b"\x00\x01\x00\x00" + question + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04",
        header[:6] + b"\x00\x01\x00\x00" + question + b"\xc0\x30\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x00",  # fwd ptr
        header + b"\xc0\x0c\x00\x01\x00\x01",  # compression in the question
        header + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # label of 64
        header + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # name of 257
        header + question[:-4] + b"\x00\x01\x00\x03",  # class CH
        header + question[:-4] + b"\x00\xfc\x00\x01",  # AXFR
        header + question[:-4] + b"\x00\x29\x00\x01",  # qtype OPT
        header + question[:-4] + b"\x00\x80\x00\x01",  # meta type 128
        header + question[:-2],  # truncated question
    ]  # fmt: skip
    # ECS with one bit set just past SOURCE PREFIX-LENGTH (FORMERR), for every length mod 8.
    for bits in range(17, 24):
        address = bytes([83, 44, 0x80 >> (bits - 16)])
        option = struct.pack("!HHHBB", 8, 7, 1, bits, 0) + address
        cases.append(
            header[:10] + b"\x00\x01" + question + opt + struct.pack("!H", len(option)) + option
        )
    punted = pair.punted
    for packet in cases:
        for source in ("127.0.0.1", "2a02:9000::1"):
            pair.check(packet, source)
    assert pair.punted == punted


query_parts = st.tuples(
    st.sampled_from(
        [
            "video.cdn.example.",
            "www.cdn.example.",
            "cdn.example.",
            "nope.cdn.example.",
            "edge.example.",
            "big.edge.example.",
            "x.wild.edge.example.",
            "example.org.",
        ]
    ),
    st.sampled_from(TYPES),
    st.sampled_from(ECS_SUBNETS),
    st.booleans(),
)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=query_parts, edits=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 400), source=st.sampled_from(SOURCES))  # fmt: skip
def test_mutated_packets_give_the_same_bytes(pair: Pair, parts, edits, cut, source) -> None:  # noqa: ANN001
    name, rdtype, ecs, edns = parts
    packet = bytearray(make_query(name, rdtype, ecs, edns))
    for position, value in edits:
        if position < len(packet):
            packet[position] = value
    pair.check(bytes(packet[: max(cut, 12)] if cut < len(packet) else packet), source)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(packet=st.binary(min_size=0, max_size=120), source=st.sampled_from(SOURCES))
def test_random_bytes_give_the_same_bytes(pair: Pair, packet: bytes, source: str) -> None:
    pair.check(b"\x00\x01\x00\x00\x00\x01" + packet, source)
    pair.check(packet, source)


def test_every_query_of_the_throughput_mix_gives_the_same_bytes(engine: Engine, pair: Pair, split_pair: Pair,
                                                               deployment_dir: Path) -> None:  # fmt: skip
    """The query files of loadtest/bench_throughput.py at their default size (1,000 ECS
    subnets, 20,000 queries with ECS and 20,000 without), through both paths and on both
    tables (whole and split groups), from IPv4 and IPv6 sources, and over TCP."""
    bench = load_script(REPO / "loadtest" / "bench_throughput.py")
    rng = random.Random(5)
    model = engine.model
    origin = model.policies[model.steered[0][1]].zone
    zone_file = deployment_dir / f"{origin.to_text().rstrip('.')}.zone"
    inventory = bench.zone_inventory(zone_file, [(n.to_text(), p) for n, p in model.steered], rng)
    subnets = bench.draw_subnets(model.client_map, rng, 1000)
    mix = bench.build_mix(inventory, subnets, 20_000, rng) + bench.build_mix(
        inventory, None, 20_000, rng
    )
    assert {q.kind for q in mix} == {"steered", "static", "nodata", "nxdomain"}
    before = (pair.answered, pair.punted, split_pair.answered, split_pair.punted)
    for i, query in enumerate(mix):
        source = SOURCES[i % len(SOURCES)]
        pair.check(query.wire, source, udp=i % 10 != 0)
        split_pair.check(query.wire, source)
    # Everything in the mix is answered by the fast path: none of it goes to Python.
    assert (pair.punted, split_pair.punted) == (before[1], before[3])
    assert (pair.answered - before[0], split_pair.answered - before[2]) == (len(mix), len(mix))


def test_negative_templates_of_every_length_equal_a_fresh_encoding(engine: Engine) -> None:
    """The book encodes a zone's negative answer once and moves its compression pointers for
    other question lengths; that must be exactly what encoding at that length gives."""
    book = engine.book
    checked = 0
    for origin_key, index in book.zones.items():
        for rcode in (0, 3):
            for qlen in range(len(origin_key), 256):
                shifted = book._negative(index, rcode, qlen)
                fresh = book._static(None, qlen, index.origin, rcode, True, [], [index.soa], [])
                assert (shifted.main, shifted.flags, shifted.ns) == (
                    fresh.main,
                    fresh.flags,
                    fresh.ns,
                ), (origin_key, qlen)
                checked += 1
    assert checked > 400


def test_the_book_compiles_every_exact_answer(engine: Engine) -> None:
    fast = compile_book(engine.book, engine.model.client_map)
    assert fast.hash_entries >= len(engine.book.exact)
    assert fast.steered_count == len(engine.book.steered) > 0
    assert name_key(dns.name.from_text("video.cdn.example.")) in engine.book.steered_names


@pytest.mark.skipif(not supported, reason="recvmmsg/sendmmsg batching needs 64-bit Linux")
def test_batched_socket_loop_answers_punts_and_swaps_tables(
    engine: Engine, split_pair: Pair
) -> None:
    """The compiled loop over a real loopback socket: fast answers, punted queries through
    the general path, and a table swap seen by the next query. It runs in a thread and is
    stopped by a (punted, wildcard) query that the test's general path answers by raising."""
    views = [engine.view]
    control = np.zeros(CONTROLS, dtype=np.int64)
    counters = np.zeros(COUNTERS, dtype=np.int64)
    general = Responder(engine.book, engine.model.client_map, lambda: views[0])
    fast = compile_book(engine.book, engine.model.client_map)
    stop_packet = make_query("stop.wild.edge.example.", "A", None, edns=False)
    warm_up(fast, engine.view)  # compiled before the clock of the client's timeouts starts

    def general_path(responder, packet, source, udp, c):  # noqa: ANN001, ANN202
        if packet == stop_packet:
            raise WorkerStop
        return safe_respond(responder, packet, source, udp, c)

    def serve() -> None:
        try:
            serve_udp_batched(server, fast, lambda: views[0], general, Counters(), counters, control, None,
                              general_path)  # fmt: skip
        except WorkerStop:
            pass

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    client.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        queries = [make_query("video.cdn.example.", "A", "83.44.10.0/24", True),
                   make_query("x.wild.edge.example.", "A", None, False),  # punted: a wildcard
                   make_query("nope.cdn.example.", "AAAA", None, True)]  # fmt: skip
        for packet in queries:
            client.sendto(packet, server.getsockname())
            assert client.recv(65535) == general.respond(packet, "127.0.0.1", True)
        # A new table: the worker sets the view, then the flag; the next query uses it.
        views[0] = split_pair.view
        control[CONTROL_SWAP] = 1
        for ecs in ("83.44.10.0/24", "89.7.1.0/24", "2a02:9100:1234::/48"):
            packet = make_query("video.cdn.example.", "A", ecs, True)
            client.sendto(packet, server.getsockname())
            assert client.recv(65535) == split_pair.general.respond(packet, "127.0.0.1", True)
        assert control[CONTROL_SWAP] == 0
        assert counters[C_RECEIVED] == 6 and counters[C_ANSWERED] == 5 and counters[C_PUNTED] == 1
    finally:
        client.sendto(stop_packet, server.getsockname())
        thread.join(timeout=10)
        client.close()
        server.close()
    assert not thread.is_alive()


@pytest.mark.skipif(not supported, reason="recvmmsg/sendmmsg batching needs 64-bit Linux")
@pytest.mark.parametrize("path", ["batched", "per-packet"])
def test_a_retiring_loop_answers_every_query_it_took(engine: Engine, path: str) -> None:
    """A reload retires a worker while queries keep coming: its loop returns on its own,
    and every query it received was answered (the rest wait in the socket for the next)."""
    fast = compile_book(engine.book, engine.model.client_map)
    general = Responder(engine.book, engine.model.client_map, lambda: engine.view)
    control = np.zeros(CONTROLS, dtype=np.int64)
    counters = np.zeros(COUNTERS, dtype=np.int64)
    python_counters = Counters()
    retire = threading.Event()
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(5)

    def serve() -> None:
        if path == "batched":
            serve_udp_batched(server, fast, lambda: engine.view, general, python_counters, counters, control, None,
                              safe_respond)  # fmt: skip
        else:
            serve_udp(server, general, python_counters, retire)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    packet = make_query("video.cdn.example.", "A", "83.44.10.0/24", True)
    try:
        for _ in range(20):  # warm: the loop is running
            client.sendto(packet, server.getsockname())
            client.recv(65535)
        for i in range(200):  # a burst the loop is still taking when told to retire
            client.sendto(packet, server.getsockname())
            if i == 100:
                control[CONTROL_RETIRE] = 1
                retire.set()
        thread.join(timeout=5)
        assert not thread.is_alive(), "the retiring loop did not return"
        taken = int(counters[C_RECEIVED]) if path == "batched" else python_counters.udp_queries
        client.settimeout(0.5)
        replies = 0
        try:
            while True:
                client.recv(65535)
                replies += 1
        except TimeoutError:
            pass
        assert 20 <= taken <= 220 and replies == taken - 20, (taken, replies)
        left = 0
        server.setblocking(False)
        try:
            while True:
                server.recv(65535)
                left += 1
        except BlockingIOError:
            pass
        assert left == 220 - taken, "queries not taken must stay queued for the successor"
    finally:
        client.close()
        server.close()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_a_flood_is_counted_as_kernel_drops_and_the_router_keeps_answering(deployment_dir: Path,
                                                                           tmp_path: Path) -> None:  # fmt: skip
    """One worker, stopped (SIGSTOP) while 30,000 queries arrive (bounded, loopback), so it
    surely cannot keep up: the kernel queues what fits in the socket buffer and drops the
    rest, and GET /v1/dns shows the drops; resumed, the worker answers the queue and keeps
    serving. The queue is bounded by the buffer, not by the flood."""
    router = start_router(deployment_dir, tmp_path / "router.log", workers=1)
    worker = None
    try:
        counters = _get_json(f"{router.api}/v1/dns")
        assert counters["udp_path"] == "batched" and counters["totals"]["received"] == 0
        children = (
            Path(f"/proc/{router.process.pid}/task/{router.process.pid}/children")
            .read_text()
            .split()
        )
        assert len(children) == 1
        worker = int(children[0])
        packet = make_query("video.cdn.example.", "A", "83.44.10.0/24", True)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16
        )  # replies may be dropped too
        sender.bind(("127.0.0.1", 0))
        os.kill(worker, signal.SIGSTOP)
        sent = 0
        deadline = time.monotonic() + 20
        while sent < 30_000 and time.monotonic() < deadline:
            for _ in range(1000):
                sender.sendto(packet, (router.host, router.port))
            sent += 1000
        sender.close()
        stalled = _get_json(f"{router.api}/v1/dns")
        os.kill(worker, signal.SIGCONT)
        worker = None
        time.sleep(1.0)  # the worker drains its queue
        after = _get_json(f"{router.api}/v1/dns")
        totals = after["totals"]
        assert stalled["udp_receive_drops"] > 0 and stalled["udp_receive_queue_bytes"] > 0
        assert totals["received"] + after["udp_receive_drops"] == sent
        assert 0 < totals["received"] < sent and totals["answered"] == totals["received"]
        assert after["mean_batch"] >= 1 and after["udp_receive_queue_bytes"] == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            client.sendto(packet, (router.host, router.port))
            reply = dns.message.from_wire(client.recv(65535))
        assert reply.rcode() == 0 and reply.answer and router.process.poll() is None
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGCONT)
        router.stop()
        assert router.process.stdout is not None
        router.process.stdout.close()


_REFCOUNT_CHECK = """
import sys
import numpy as np
from pathlib import Path
from router.dns import udp_batch
from router.dns.fast_answer import compile_book
from router.geo import _lpm
from tests.test_router_dns_engine import Engine

engine = Engine(Path(sys.argv[1]))
udp_batch.warm_up(compile_book(engine.book, engine.model.client_map), engine.view)
engine.model.client_map.lookup_v4(np.array([0x53_2C_0A_01], dtype=np.int64))
for name, kernel in (("loop", udp_batch._serve_batches), ("allocating", _lpm._lookup_v4)):
    ir = "".join(kernel.inspect_llvm(signature) for signature in kernel.signatures)
    print(name, len(kernel.signatures), ir.count("@NRT_incref") + ir.count("@NRT_decref"))
"""


@pytest.mark.skipif(not supported, reason="recvmmsg/sendmmsg batching needs 64-bit Linux")
def test_the_compiled_loop_counts_no_references(deployment_dir: Path, tmp_path: Path) -> None:
    """router/_jit.py's HOT_PATH_OPTIONS compile the loop and everything it calls without
    numba's reference counting (12 % of a worker's CPU when on). Compiled afresh (a cache
    holds no IR) in a process of its own: the loop's IR calls no NRT_incref/NRT_decref,
    while a kernel that allocates (compiled with JIT_OPTIONS) does, so the check can see them."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    done = subprocess.run([sys.executable, "-c", _REFCOUNT_CHECK, str(deployment_dir)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    counts = {name: (int(signatures), int(calls)) for name, signatures, calls in
              (line.split() for line in done.stdout.splitlines())}  # fmt: skip
    assert counts["loop"][0] >= 1 and counts["loop"][1] == 0, counts
    assert counts["allocating"][0] >= 1 and counts["allocating"][1] > 0, counts
