"""The responder: one query in, one reply out. Transport-free and allocation-light.

Per query it parses the header and question by hand, finds a pre-encoded answer, and for
steered names looks the client up in the client map (ECS subnet or source address) and
reads the node list from the current routing table. It never scores anything.
"""

from __future__ import annotations

import ipaddress
import struct
from bisect import bisect_right
from collections.abc import Callable

import numpy as np

from router.dns import cookies, query_stats, wire
from router.dns.answers import AnswerBook, StaticAnswer, SteeredAnswer
from router.dns.dnssec import TableSignatures
from router.dns.query_log import QueryLog
from router.dns.query_stats import QueryLabels, QueryStats
from router.dns.rrl import RrlState
from router.dns.wire import FormatError, Query
from router.geo.clientmap import ClientMap

# RFC 6891 and DNS Flag Day 2020: never send UDP replies larger than this, whatever the
# client offers, so they are not fragmented on the way back.
MAX_UDP_PAYLOAD = 1232
NO_EDNS_UDP_PAYLOAD = 512

_HEADER = struct.Struct("!HHHHHH")
_OPT_FIXED = struct.Struct("!BHHBBHH")  # root, type, payload, ext-rcode, version, flags, rdlen
_ECS_HEADER = struct.Struct("!HHHBB")  # option code, length, family, source, scope
_OPTION = struct.Struct("!HH")  # option code, length
_KEEPALIVE = struct.Struct("!HHH")  # option code, length, TIMEOUT in 100 ms units

# RFC 7871 section 10 / RFC 6890: ECS addresses in these blocks say nothing about where
# the client is, so the answer falls back to the resolver's address and the scope covers
# the whole special block.
SPECIAL_V4 = [ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
)]  # fmt: skip
SPECIAL_V6 = [ipaddress.IPv6Network(n) for n in (
    "::/127", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "ff00::/8",
)]  # fmt: skip

_META_REFUSED = {249, 251, 252}  # TKEY, IXFR, AXFR: no transfers or key exchange here
_META_FORMERR = {wire.OPT_TYPE, 250}  # OPT and TSIG are not questions


# A group split over several nodes is split by client subnet: every client of one /24
# (IPv4) or /48 (IPv6) gets the same node, so caches and connections stay warm.
STICKY_V4_BITS = 24
STICKY_V6_BITS = 48
_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads neighbouring subnets evenly
_MASK64 = (1 << 64) - 1


def sticky_point(key: int) -> int:
    """Where a client subnet falls in [0, 65536) of a split group's cumulative weights."""
    return ((key * _GOLDEN) & _MASK64) >> 48


class TableView:
    """One routing table generation plus the answer bodies encoded from it.

    Swapped as a single reference, so a query never mixes two generations.
    """

    __slots__ = (
        "generation",
        "group_set",
        "set_nodes",
        "split_start",
        "split_set",
        "split_cum",
        "node_state",
        "policy_pool",
        "bodies",
        "splits",
        "signatures",
    )

    def __init__(self, table, signatures: TableSignatures | None = None) -> None:  # noqa: ANN001 - a RoutingTable (kept import-free of steering)
        """``signatures``: the RRSIGs of the table's steered answers (signed zones)."""
        self.generation = table.generation
        self.signatures = signatures if signatures is not None else TableSignatures.empty()
        self.group_set = table.group_set  # int32[P, G]
        self.set_nodes = table.set_nodes  # int32[S, K]
        self.split_start = table.split_start
        self.split_set = table.split_set
        self.split_cum = table.split_cum
        self.node_state = table.node_state  # int8[N]: NodeState the table was built from
        self.policy_pool = table.policy_pool  # int32[P, K]: pool of each class (pools policies)
        self.bodies: dict[tuple[int, int], tuple[bytes, list[int]]] = {}  # (answer, its nodes)
        self.splits: dict[int, tuple[list[int], list[int]]] = {}

    def pick(self, row: int, key: int) -> int:
        """The answer set of split ``row`` for the client subnet ``key``."""
        split = self.splits.get(row)
        if split is None:
            lo, hi = int(self.split_start[row]), int(self.split_start[row + 1])
            split = (
                [int(c) for c in self.split_cum[lo:hi]],
                [int(s) for s in self.split_set[lo:hi]],
            )
            self.splits[row] = split
        cum, sets = split
        return sets[min(bisect_right(cum, sticky_point(key)), len(sets) - 1)]


class Decision:
    """What a steered answer was based on (for explain, the query log and tests)."""

    __slots__ = ("policy", "group", "scope", "answer_set", "source", "split_row")

    def __init__(
        self, policy: int, group: int, scope: int, answer_set: int, source: str, split_row: int
    ) -> None:
        self.policy = policy
        self.group = group
        self.scope = scope
        self.answer_set = answer_set
        self.source = source
        self.split_row = split_row  # the capacity split row the answer was picked from, or -1


class Responder:
    """Answers queries from an answer book, a client map and the current routing table."""

    def __init__(
        self,
        book: AnswerBook,
        client_map: ClientMap,
        view: Callable[[], TableView],
        record_decisions: bool = False,
        demand_counts=None,  # noqa: ANN001 - int64[P, G]: steered queries per policy and group
        stats: QueryStats | None = None,
        labels: QueryLabels | None = None,
        query_log: QueryLog | None = None,
        tcp_keepalive: int | None = None,
        limiter: RrlState | None = None,
        nsid: bytes = b"",
        cookie_state: np.ndarray | None = None,
    ) -> None:
        """``tcp_keepalive``: the TCP idle timeout in units of 100 ms, told to clients that
        send edns-tcp-keepalive over TCP (RFC 7828); None: not told. ``limiter``: response
        rate limiting for UDP replies (router/dns/rrl.py), the worker's table. ``nsid``: this
        instance's name server identifier (RFC 5001), sent to clients that ask (b"": none).
        ``cookie_state``: DNS cookies (router/dns/cookies.py, its state array; None: off)."""
        self.nsid = nsid
        self.cookie_state = (
            cookie_state if cookie_state is not None and cookie_state[cookies.S_ON] else None
        )
        self.cookie_verdict = cookies.NONE  # of the last query
        self._cookie_option = b""  # the COOKIE option data of the reply being built
        self.tcp_keepalive = tcp_keepalive
        self.limiter = limiter
        self.book = book
        self.client_map = client_map
        self.view = view
        # Only ``router explain`` and the query log want to see why; the server keeps
        # this path lean otherwise.
        self.record_decisions = record_decisions or query_log is not None
        self.demand_counts = demand_counts
        self.stats = stats
        if stats is not None and labels is None:
            labels = QueryLabels.from_book(book)
        self.labels = labels
        self.query_log = query_log
        self.last_decision: Decision | None = None
        self.last_query: Query | None = None  # the last query parsed (None: malformed)

    def respond(self, packet: bytes, source: str, udp: bool, sampled: bool = False) -> bytes | None:
        """Reply to ``packet`` from address ``source``; None means send nothing.

        The reply is counted (``stats``) and, once in ``query_log.every`` queries or when
        ``sampled`` (the compiled path picked it), written to the query log."""
        self.last_query = None
        self.last_decision = None
        self.cookie_verdict = cookies.NONE
        self._cookie_option = b""
        reply = self._respond(packet, source, udp)
        if reply is None:
            return None
        sent, limited = reply, None
        # A valid server cookie proves the source address: never rate limited (RFC 7873 1).
        if udp and self.limiter is not None and self.cookie_verdict < cookies.VALID:
            sent, limited = self.limiter.apply(reply, source)
        self.account(reply, source, udp, sampled, limited)
        return sent

    def account(self, reply: bytes, source: str, udp: bool, sampled: bool = False,
                limited: str | None = None) -> None:  # fmt: skip
        """Count ``reply`` to the last query (and log it if it is sampled, with what rate
        limiting did to it: ``limited``)."""
        q = self.last_query
        rcode = reply[3] & 0xF if q is None else reply_rcode(reply, q)
        if self.stats is not None:
            assert self.labels is not None
            transport = query_stats.UDP if udp else query_stats.TCP
            if q is None or not q.question:
                self.stats.count(query_stats.NAME_UNPARSED, transport, rcode, None)
            else:
                name = self.labels.name_label(q.qname.lower(), q.qtype, self.book.exact)
                self.stats.count(name, transport, rcode, q.qtype)
        if self.query_log is not None and (sampled or self.query_log.due()):
            self.query_log.write(self, q, self.last_decision, source, udp, reply, rcode, limited)

    def _respond(self, packet: bytes, source: str, udp: bool) -> bytes | None:
        if len(packet) < 12 or packet[2] & 0x80:
            return None  # no header to answer, or a response: never reply (reflection loops)
        try:
            q = wire.parse_query(packet)
        except (FormatError, IndexError, struct.error):
            return self._unparsed(packet)
        if not q.question and (q.cookie is None or self.cookie_state is None):
            return self._unparsed(packet)  # no question, and not a query for a cookie alone
        self.last_query = q
        if q.tsig is not None:
            return self._bad_key(packet, q, udp)
        if q.edns and q.version != 0:
            return self._reply(q, wire.BADVERS, 0, 0, 0, b"", udp, ecs_scope=None)
        if self.cookie_state is not None:
            if q.cookie_error:
                return self._reply(q, wire.FORMERR, 0, 0, 0, b"", udp, ecs_scope=None)
            if q.cookie is not None:
                at, length = q.cookie
                self.cookie_verdict, self._cookie_option = cookies.reply_option(
                    packet, at, length, source, self.cookie_state
                )
        if q.opcode != 0:
            return self._reply(q, wire.NOTIMP, 0, 0, 0, b"", udp, ecs_scope=None)
        if q.ecs_error:
            return self._reply(q, wire.FORMERR, 0, 0, 0, b"", udp, ecs_scope=None)
        if not q.question:
            # RFC 7873 5.4: a query for a server cookie alone: NOERROR, no question, no
            # records, the COOKIE option (with a fresh server cookie unless it held a valid one).
            return self._reply(q, wire.NOERROR, 0, 0, 0, b"", udp, ecs_scope=None)
        qtype = q.qtype
        if qtype in _META_FORMERR:
            return self._reply(q, wire.FORMERR, 0, 0, 0, b"", udp, ecs_scope=None)
        if q.qclass != wire.CLASS_IN or qtype in _META_REFUSED:
            return self._reply(q, wire.REFUSED, 0, 0, 0, b"", udp, ecs_scope=None)
        if 128 <= qtype <= 254:
            return self._reply(q, wire.NOTIMP, 0, 0, 0, b"", udp, ecs_scope=None)
        qname = q.qname.lower()
        entry = self.book.exact.get((qname, qtype))
        if entry is None:
            entry = self.book.resolve(qname, qtype, q.do)
            if entry is None:
                return self._reply(q, wire.REFUSED, 0, 0, 0, b"", udp, ecs_scope=None)
        if type(entry) is SteeredAnswer:
            return self._steered(q, entry, source, udp, qname)
        assert type(entry) is StaticAnswer
        if q.do and entry.signed is not None:
            entry = entry.signed
        return self._static(q, entry, udp)

    # -- answer kinds -----------------------------------------------------------------

    def _static(self, q: Query, entry: StaticAnswer, udp: bool) -> bytes:
        return self._reply(q, entry.flags, entry.an, entry.ns, entry.ar, entry.main, udp, 0,
                           entry.extra, entry.extra_required)  # fmt: skip

    def _steered(
        self, q: Query, entry: SteeredAnswer, source: str, udp: bool, qname: bytes
    ) -> bytes:
        group, scope, origin, client_key = self._locate(q, source)
        if self.demand_counts is not None:
            self.demand_counts[entry.policy, group] += 1
        view = self.view()
        answer_set = int(view.group_set[entry.policy, group])
        split_row = -1
        if answer_set < 0:
            split_row = -answer_set - 1
            answer_set = view.pick(split_row, client_key)
            # The answer now depends on the client's /24 (or /48): say so in the scope.
            if scope is not None and scope > 0:
                scope = max(scope, STICKY_V4_BITS if client_key >> 63 == 0 else STICKY_V6_BITS)
        key = (entry.index, answer_set)
        cached = view.bodies.get(key)
        if cached is None:
            nodes = [int(n) for n in view.set_nodes[answer_set] if n >= 0]
            cached = (entry.encode(nodes), nodes)
            view.bodies[key] = cached
        body, nodes = cached
        if self.record_decisions:
            self.last_decision = Decision(entry.policy, group, scope, answer_set, origin, split_row)
        if self.stats is not None:
            self.stats.count_steered(
                query_stats.UDP if udp else query_stats.TCP, nodes, query_stats.LOCATED_BY[origin]
            )
        an, ns = len(nodes), 0
        if q.do and self.book.signed_steered(entry):
            signed = view.signatures.records(entry.index, answer_set)
            if signed is None:
                # Every set a table can answer with is signed when it is written: only a
                # table written without its signatures gets here. Never unsigned from a
                # signed zone (a validator would call that bogus): SERVFAIL.
                return self._reply(q, wire.SERVFAIL, 0, 0, 0, b"", udp, ecs_scope=None)
            body += signed[0]
            an += signed[1]
            if qname != entry.owner:  # synthesised from a steered wildcard: prove no closer name
                proof, proof_count = self.book.wildcard_proof(qname)
                body += proof
                ns += proof_count
        return self._reply(q, wire.AA, an, ns, 0, body, udp, scope)

    def _locate(self, q: Query, source: str) -> tuple[int, int, str, int]:
        """(group, ECS scope, what decided, sticky client key) for a steered query."""
        ecs = q.ecs
        if ecs is not None:
            family, bits, octets = ecs
            if bits > 0:
                if family == 1:
                    value = int.from_bytes(octets + b"\0" * (4 - len(octets)), "big")
                    special = _special_scope(ipaddress.IPv4Address(value), SPECIAL_V4)
                    if special is None:
                        group, scope = self.client_map.lookup_v4_int(value)
                        return group, scope, "ecs", _v4_key(value, bits)
                else:
                    value = int.from_bytes(octets + b"\0" * (16 - len(octets)), "big")
                    special = _special_scope(ipaddress.IPv6Address(value), SPECIAL_V6)
                    if special is None:
                        group, scope = self.client_map.lookup_v6_int(
                            value >> 64, value & 0xFFFFFFFFFFFFFFFF
                        )
                        return group, scope, "ecs", _v6_key(value, bits)
                group, _, key = self._by_source(source)
                return group, min(special, bits), "source (ECS address is not routable)", key
            # SOURCE PREFIX-LENGTH 0: the client asks not to be located by its subnet.
            group, _, key = self._by_source(source)
            return group, 0, "source (ECS /0)", key
        group, scope, key = self._by_source(source)
        return group, scope, "source", key

    def _by_source(self, source: str) -> tuple[int, int, int]:
        address = ipaddress.ip_address(source.split("%", 1)[0])
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        group, scope = self.client_map.lookup(address)
        value = int(address)
        return group, scope, _v4_key(value, 32) if address.version == 4 else _v6_key(value, 128)

    # -- encoding ----------------------------------------------------------------------

    def _bad_key(self, packet: bytes, q: Query, udp: bool) -> bytes:
        """RFC 8945 5.2: a signed query whose key this server does not know (it knows none)
        gets NOTAUTH with TSIG error BADKEY, unsigned, its TSIG record last."""
        try:
            record = wire.tsig_error_record(packet, q.tsig, wire.BADKEY)
        except (FormatError, IndexError):
            self.last_query = None
            return self._unparsed(packet)
        reply = self._reply(q, wire.NOTAUTH, 0, 0, 0, b"", udp, ecs_scope=None)
        arcount = struct.unpack_from("!H", reply, 10)[0] + 1
        return reply[:10] + struct.pack("!H", arcount) + reply[12:] + record

    def _unparsed(self, packet: bytes) -> bytes:
        """The header-only reply to a query that could not be parsed: NOTIMP for an opcode
        other than QUERY (the opcode is judged before the counts and question, so a
        header-only NOTIFY or STATUS is not called malformed), FORMERR otherwise."""
        qid, flags = struct.unpack_from("!HH", packet)
        opcode = flags & wire.OPCODE_MASK
        if opcode:
            return _HEADER.pack(qid, wire.QR | opcode | wire.NOTIMP, 0, 0, 0, 0)
        return _HEADER.pack(qid, wire.QR | (flags & wire.RD) | wire.FORMERR, 0, 0, 0, 0)

    def _reply(
        self,
        q: Query,
        rcode_flags: int,
        an: int,
        ns: int,
        ar: int,
        main: bytes,
        udp: bool,
        ecs_scope: int | None,
        extra: bytes = b"",
        extra_required: bool = False,
    ) -> bytes:
        """Assemble header, the client's own question, sections and OPT; truncate for UDP."""
        extended = rcode_flags == wire.BADVERS
        flags = wire.QR | (q.flags & wire.echoed_flags(q.opcode)) | (0 if extended else rcode_flags)
        opt = b""
        if q.edns:
            options = b""
            if q.ecs is not None and ecs_scope is not None and not extended:
                family, bits, octets = q.ecs
                options = (
                    _ECS_HEADER.pack(wire.ECS_OPTION, 4 + len(octets), family, bits, ecs_scope)
                    + octets
                )
            if q.nsid and self.nsid and not extended:
                options += _OPTION.pack(wire.NSID_OPTION, len(self.nsid)) + self.nsid
            if self._cookie_option and not extended:
                options += (
                    _OPTION.pack(wire.COOKIE_OPTION, len(self._cookie_option)) + self._cookie_option
                )
            if q.keepalive and not udp and self.tcp_keepalive is not None:
                # RFC 7828 3.3.1: over TCP only, with the timeout this connection has. A TIMEOUT
                # a client wrongly sent is ignored; over UDP the option is never sent.
                options += _KEEPALIVE.pack(wire.TCP_KEEPALIVE_OPTION, 2, self.tcp_keepalive)
            ext_rcode = 1 if extended else 0
            opt = (
                _OPT_FIXED.pack(
                    0,
                    wire.OPT_TYPE,
                    MAX_UDP_PAYLOAD,
                    ext_rcode,
                    0,
                    0x8000 if q.do else 0,
                    len(options),
                )
                + options
            )
        opt_count = 1 if opt else 0
        qdcount = 1 if q.question else 0  # 0: a query for a cookie alone (RFC 7873 5.4)
        reply = (
            _HEADER.pack(q.id, flags, qdcount, an, ns, ar + opt_count)
            + q.question
            + main
            + extra
            + opt
        )
        if not udp:
            return reply
        limit = min(q.payload, MAX_UDP_PAYLOAD) if q.edns else NO_EDNS_UDP_PAYLOAD
        if len(reply) <= limit:
            return reply
        if extra and not extra_required:
            # RFC 2181 9: dropping additional data does not call for TC.
            reply = _HEADER.pack(q.id, flags, qdcount, an, ns, opt_count) + q.question + main + opt
            if len(reply) <= limit:
                return reply
        return _HEADER.pack(q.id, flags | wire.TC, qdcount, 0, 0, opt_count) + q.question + opt


def reply_rcode(reply: bytes, q: Query) -> int:
    """The full rcode of a reply to ``q`` (16, BADVERS, lives in the OPT record)."""
    if q.edns and q.version != 0:
        return wire.BADVERS
    return reply[3] & 0xF


def _v4_key(value: int, bits: int) -> int:
    """The client's sticky subnet: its /24, or fewer bits if that is all the client gave."""
    keep = min(bits, STICKY_V4_BITS)
    return value & ~((1 << (32 - keep)) - 1) & 0xFFFFFFFF


def _v6_key(value: int, bits: int) -> int:
    keep = min(bits, STICKY_V6_BITS)
    top = value >> (128 - STICKY_V6_BITS)
    return (1 << 63) | (top & ~((1 << (STICKY_V6_BITS - keep)) - 1))


def _special_scope(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, blocks: list
) -> int | None:  # noqa: ANN001
    for block in blocks:
        if address in block:
            return block.prefixlen
    return None
