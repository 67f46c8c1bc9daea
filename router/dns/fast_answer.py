"""The fast path: the responder's per-query work in numba, on numpy arrays.

The answer book is compiled once into flat arrays (a hash table of names, the encoded
bytes of every static answer and steered record, the negative templates of every zone for
every question length) and ``answer_query`` answers one packet from them without touching
the interpreter. It mirrors ``Responder.respond`` (router/dns/engine.py) byte for byte; the
property tests run both on the same packets. What it does not know how to answer (CNAME
chains reached by other types, wildcards, referrals) it hands back as ``PUNT`` and the
general path answers it: those names are rare and their answers are built on demand.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from router._jit import HOT_PATH_OPTIONS
from router.dns import cookies, query_stats, wire
from router.dns.answers import AnswerBook, StaticAnswer, SteeredAnswer, name_key
from router.dns.dnssec import canonical_key
from router.dns.engine import (
    MAX_UDP_PAYLOAD,
    NO_EDNS_UDP_PAYLOAD,
    SPECIAL_V4,
    SPECIAL_V6,
    STICKY_V4_BITS,
    STICKY_V6_BITS,
)
from router.dns.query_stats import QueryLabels, QueryStats, stats_shapes_zeros
from router.geo import _lpm
from router.geo.clientmap import ClientMap

PUNT = -1  # answer_query's "ask the general path"
NO_REPLY = 0
NO_STATS = stats_shapes_zeros(1, 1)  # answer_query's stats when it does not count

# Hash-table tags: a query type (0..65535) for exact answers, or one of these.
TAG_APEX = 1 << 30  # value: zone id
TAG_ZONE_NAME = 1 << 29  # + zone id; value: F_* flags of the name in that zone

F_NAME = 1  # an existing (non-occluded) name
F_ENT = 2  # an empty non-terminal
F_CUT = 4  # a delegation point
F_CNAME = 8  # owns a CNAME
F_WILDCARD = 16  # has a wildcard child (*.name)

MAX_QUESTION_LABELS = 128  # 255 octets hold at most 127 labels plus the root
BODY_SCRATCH = 65536
QUERY_FIELDS = 26

# Fields of the parsed query in the int64 scratch array.
Q_ID, Q_FLAGS, Q_QEND, Q_QTYPE, Q_QCLASS, Q_EDNS, Q_PAYLOAD, Q_VERSION = range(8)
Q_DO, Q_ECS, Q_ECS_ERR, Q_ECS_FAMILY, Q_ECS_BITS, Q_ECS_ADDR, Q_ECS_ALEN, Q_OPCODE = range(8, 16)
# What the reply is counted as (router/dns/query_stats.py): the name label (-1: not
# known yet) and the rcode label.
Q_NAME, Q_RCODE = 16, 17
Q_TSIG = 18  # the query is signed (TSIG, the last record): the general path answers it
Q_NSID = 19  # the query asks for the NSID (RFC 5001)
# DNS cookies (router/dns/cookies.py): where the first COOKIE option's data is (0: none), its
# length, whether that length is malformed, the verdict, and the fresh cookie's time and hash.
Q_COOKIE, Q_COOKIE_LEN, Q_COOKIE_ERR, Q_COOKIE_VERDICT, Q_COOKIE_TS, Q_COOKIE_HASH = range(20, 26)

# Positions in FastBook.arrays (numba indexes a tuple of mixed arrays by constant).
(
    B_KEYS,
    B_KEY_OFF,
    B_KEY_TAG,
    B_KEY_VAL,
    B_SLOTS,
    B_ST_HEAD,
    B_ST_OFF,
    B_ST_MAIN_LEN,
    B_ST_EXTRA_LEN,
    B_ST_BYTES,
    B_SA_POLICY,
    B_NODE_COUNT,
    B_REC_OFF,
    B_REC_BYTES,
    B_ORIGIN_LEN,
    B_NEGATIVE,
    B_SP4_NET,
    B_SP4_LEN,
    B_SP6_HI,
    B_SP6_LO,
    B_SP6_LEN,
    B_V4_START,
    B_V4_END,
    B_V4_GROUP,
    B_V4_SCOPE,
    B_V6_START_HI,
    B_V6_START_LO,
    B_V6_END_HI,
    B_V6_END_LO,
    B_V6_GROUP,
    B_V6_SCOPE,
    B_KEY_NAME,
    B_ZONE_OTHER,
    B_TYPE_BUCKET,
    B_NSID,
    B_ST_SIGNED,
    B_SA_SIGNED,
    B_ZONE_SIGNED,
    B_KEY_NSEC,
    B_KEY_WILD_NSEC,
    B_NSEC_START,
    B_NSEC_KEY,
    B_NSEC_KEY_OFF,
    B_DENIAL_OFF,
    B_DENIAL_BYTES,
    B_DENIAL_COUNT,
) = range(46)
# Scratch space in the body buffer (past any reply body) for the question name's canonical
# key when a signed NXDOMAIN looks up its NSEC record.
KEY_SCRATCH = 65536 - 512

_TYPE_DS = 43
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U64_16 = np.uint64(16)
_U64_29 = np.uint64(29)
_U64_48 = np.uint64(48)
_U64_63 = np.uint64(63)
_U64_80_MASK = np.uint64(0xFFFFFFFFFFFF)  # 48 bits
_MAPPED_HI = np.uint64(0)
_MAPPED_LO_TOP = np.uint64(0xFFFF)


# --- compiling the book ------------------------------------------------------------------


@dataclass(frozen=True)
class FastBook:
    """The answer book and client map as the arrays ``answer_query`` reads (see ``arrays``)."""

    arrays: tuple
    steered_count: int
    static_count: int
    hash_entries: int
    labels: QueryLabels  # what the queries are counted as


class _Builder:
    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self.tags: list[int] = []
        self.values: list[int] = []
        self.statics: list[StaticAnswer] = []
        self.static_index: dict[int, int] = {}

    def add(self, key: bytes, tag: int, value: int) -> None:
        self.keys.append(key.lower())
        self.tags.append(tag)
        self.values.append(value)

    def static(self, answer: StaticAnswer) -> int:
        index = self.static_index.get(id(answer))
        if index is None:
            index = len(self.statics)
            self.statics.append(answer)
            self.static_index[id(answer)] = index
        return index


def compile_book(book: AnswerBook, client_map: ClientMap, nsid: bytes = b"") -> FastBook:
    """Flatten ``book`` (and the client map's arrays) for ``answer_query``; ``nsid``: this
    instance's NSID (RFC 5001; b"": none), as ``Responder`` sends it."""
    b = _Builder()
    labels = QueryLabels.from_book(book)
    key_name: list[int] = []  # each hash entry's name label (QueryLabels.name_label, precomputed)
    for (key, qtype), entry in book.exact.items():
        if type(entry) is SteeredAnswer:
            b.add(key, qtype, -(entry.index + 1))
        else:
            b.add(key, qtype, b.static(entry))
        key_name.append(labels.name_label(key, qtype, book.exact))
    zone_ids: dict[bytes, int] = {}
    origin_lens: list[int] = []
    for origin_key, index in book.zones.items():
        z = len(origin_lens)
        zone_ids[origin_key] = z
        origin_lens.append(len(origin_key))
        b.add(origin_key, TAG_APEX, z)
        key_name.append(labels.zone_other[origin_key])  # not read: apex entries only find zones
        flags: dict[bytes, int] = {}
        for names, flag in ((index.names, F_NAME), (index.empty_non_terminals, F_ENT),
                            (index.cuts, F_CUT), (index.cnames, F_CNAME), (index.wildcards, F_WILDCARD)):  # fmt: skip
            for key in names:
                flags[key] = flags.get(key, 0) | flag
        for key, value in flags.items():
            b.add(key, TAG_ZONE_NAME + z, value)
            own = key in labels.zone_names[origin_key]
            key_name.append(labels.name_ids[key] if own else labels.zone_other[origin_key])
    # Negative answers depend on the zone and the question's length only: every length a
    # name in the zone can have is encoded now, so random names never reach Python.
    negative = np.full((max(len(origin_lens), 1), 2, 256), -1, dtype=np.int32)
    for origin_key, index in book.zones.items():
        z = zone_ids[origin_key]
        for qlen in range(len(origin_key), 256):
            for slot, rcode in ((0, wire.NOERROR), (1, wire.NXDOMAIN)):
                negative[z, slot, qlen] = b.static(book._negative(index, rcode, qlen))

    # DNSSEC: every static answer's signed twin, and the NSEC chains (router/dns/dnssec.py)
    # with the signed denial pieces the compiled path puts together for DO=1 queries.
    signed_of = [-1] * len(b.statics)
    for i, answer in enumerate(list(b.statics)):
        if answer.signed is not None:
            signed_of[i] = b.static(answer.signed)
    signed_of += [-1] * (len(b.statics) - len(signed_of))
    chains = _chain_arrays(book, zone_ids, b)

    keys_flat = np.frombuffer(b"".join(b.keys), dtype=np.uint8).copy()
    key_off = np.zeros(len(b.keys) + 1, dtype=np.int64)
    key_off[1:] = np.cumsum([len(k) for k in b.keys])
    key_tag = np.array(b.tags, dtype=np.int64)
    key_val = np.array(b.values, dtype=np.int64)
    capacity = 16
    while capacity < 2 * len(b.keys):
        capacity *= 2
    slots = np.full(capacity, -1, dtype=np.int64)
    _fill_slots(keys_flat, key_off, key_tag, slots)

    st = b.statics
    st_bytes = np.frombuffer(b"".join(a.main + a.extra for a in st), dtype=np.uint8).copy()
    st_main_len = np.array([len(a.main) for a in st], dtype=np.int64)
    st_extra_len = np.array([len(a.extra) for a in st], dtype=np.int64)
    st_off = np.zeros(len(st) + 1, dtype=np.int64)
    st_off[1:] = np.cumsum(st_main_len + st_extra_len)
    st_head = np.array([[a.flags, a.an, a.ns, a.ar, int(a.extra_required)] for a in st] or np.zeros((0, 5)),
                       dtype=np.int64).reshape(len(st), 5)  # fmt: skip

    steered = book.steered
    node_count = len(steered[0].records) if steered else 0
    records = [r for entry in steered for r in entry.records]
    rec_bytes = np.frombuffer(b"".join(records), dtype=np.uint8).copy()
    rec_off = np.zeros(len(records) + 1, dtype=np.int64)
    rec_off[1:] = np.cumsum([len(r) for r in records])
    sa_policy = np.array([entry.policy for entry in steered], dtype=np.int64)

    sp4_net = np.array([int(n.network_address) for n in SPECIAL_V4], dtype=np.int64)
    sp4_len = np.array([n.prefixlen for n in SPECIAL_V4], dtype=np.int64)
    sp6_hi = np.array([int(n.network_address) >> 64 for n in SPECIAL_V6], dtype=np.uint64)
    sp6_lo = np.array(
        [int(n.network_address) & 0xFFFFFFFFFFFFFFFF for n in SPECIAL_V6], dtype=np.uint64
    )
    sp6_len = np.array([n.prefixlen for n in SPECIAL_V6], dtype=np.int64)

    cm = client_map
    arrays = (
        keys_flat, key_off, key_tag, key_val, slots,
        st_head, st_off, st_main_len, st_extra_len, st_bytes,
        sa_policy, np.int64(node_count), rec_off, rec_bytes,
        np.array(origin_lens, dtype=np.int64), negative,
        sp4_net, sp4_len, sp6_hi, sp6_lo, sp6_len,
        cm.v4_start, cm.v4_end, cm.v4_group, cm.v4_scope,
        cm.v6_start_hi, cm.v6_start_lo, cm.v6_end_hi, cm.v6_end_lo, cm.v6_group, cm.v6_scope,
        np.array(key_name, dtype=np.int64),
        np.array([labels.zone_other[k] for k in book.zones] or [query_stats.NAME_NO_ZONE], dtype=np.int64),
        query_stats.TYPE_BUCKET,
        np.frombuffer(nsid, dtype=np.uint8).copy(),
        np.array(signed_of, dtype=np.int64),
        np.array([int(s is not None) for s in book.steered_signers], dtype=np.int64),
        *chains,
    )  # fmt: skip
    return FastBook(arrays, len(steered), len(st), len(b.keys), labels)


def nsec_sort_key(name_wire: bytes) -> bytes:
    """A name's canonical sort key (RFC 4034 6.1) as the compiled search compares it: the
    labels right to left, each lower-cased and led by its length."""
    return b"".join(bytes([len(label)]) + label for label in canonical_key(name_wire))


def _chain_arrays(book: AnswerBook, zone_ids: dict[bytes, int], b: _Builder) -> tuple:
    """The arrays B_ZONE_SIGNED .. B_DENIAL_COUNT (see compile_book)."""
    zone_signed = np.zeros(max(len(zone_ids), 1), dtype=np.int64)
    key_nsec = np.full(len(b.keys), -1, dtype=np.int64)
    key_wild = np.full(len(b.keys), -1, dtype=np.int64)
    nsec_start = np.zeros(max(len(zone_ids), 1) + 1, dtype=np.int64)
    sort_keys: list[bytes] = []
    pieces: list[tuple[bytes, int]] = []
    soa_pieces: list[tuple[bytes, int]] = []
    # Each name entry by (key, tag); keys are stored lower-cased. Only signed zones need it.
    signed = any(index.chain is not None for index in book.zones.values())
    where = {(k, t): e for e, (k, t) in enumerate(zip(b.keys, b.tags))} if signed else {}
    for origin_key, index in book.zones.items():
        z = zone_ids[origin_key]
        nsec_start[z + 1] = nsec_start[z]
        if index.chain is None:
            soa_pieces.append((b"", 0))
            continue
        zone_signed[z] = 1
        base = len(sort_keys)
        for i, name in enumerate(index.chain.names):
            sort_keys.append(nsec_sort_key(name_key(name)))
            pieces.append(book.denial_piece(index, i))
        nsec_start[z + 1] = len(sort_keys)
        soa_pieces.append(book.denial_piece(index, -1))
        tag = TAG_ZONE_NAME + z
        for key in index.names | index.empty_non_terminals | set(index.cuts):
            e = where.get((key, tag))
            if e is not None:
                key_nsec[e] = base + index.chain.index_of(key)
                key_wild[e] = base + index.chain.index_of(b"\x01*" + key)
    # The SOA piece of zone z is piece len(sort_keys) + z.
    pieces += soa_pieces
    key_off = np.zeros(len(sort_keys) + 1, dtype=np.int64)
    key_off[1:] = np.cumsum([len(k) for k in sort_keys])
    off = np.zeros(len(pieces) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(p) for p, _ in pieces])
    return (
        zone_signed, key_nsec, key_wild, nsec_start,
        np.frombuffer(b"".join(sort_keys), dtype=np.uint8).copy(), key_off, off,
        np.frombuffer(b"".join(p for p, _ in pieces), dtype=np.uint8).copy(),
        np.array([c for _, c in pieces], dtype=np.int64),
    )  # fmt: skip


@njit(**HOT_PATH_OPTIONS)
def _fill_slots(keys, key_off, key_tag, slots):
    mask = slots.shape[0] - 1
    for e in range(key_off.shape[0] - 1):
        i = np.int64(
            _name_hash(keys, key_off[e], key_off[e + 1] - key_off[e], key_tag[e]) & np.uint64(mask)
        )
        while slots[i] >= 0:
            i = (i + 1) & mask
        slots[i] = e


# --- the hash table -----------------------------------------------------------------------


@njit(**HOT_PATH_OPTIONS)
def _lower(octet):
    return octet + 32 if 65 <= octet <= 90 else octet


@njit(**HOT_PATH_OPTIONS)
def _name_hash(buf, start, length, tag):
    # FNV-1a over the lower-cased name, then the tag.
    h = _FNV_OFFSET
    for i in range(length):
        h = (h ^ np.uint64(_lower(np.int64(buf[start + i])))) * _FNV_PRIME
    h = (h ^ np.uint64(tag)) * _FNV_PRIME
    return h ^ (h >> _U64_29)


@njit(**HOT_PATH_OPTIONS)
def _find(keys, key_off, key_tag, slots, buf, start, length, tag):
    """Index of the entry for (name at buf[start:start+length], tag), or -1."""
    mask = slots.shape[0] - 1
    i = np.int64(_name_hash(buf, start, length, tag) & np.uint64(mask))
    while True:
        e = slots[i]
        if e < 0:
            return -1
        k0 = key_off[e]
        if key_tag[e] == tag and key_off[e + 1] - k0 == length:
            same = True
            for j in range(length):
                if keys[k0 + j] != _lower(np.int64(buf[start + j])):
                    same = False
                    break
            if same:
                return e
        i = (i + 1) & mask


# --- parsing (router/dns/wire.py, mirrored) ------------------------------------------------


@njit(**HOT_PATH_OPTIONS)
def _u16(pkt, pos):
    return (np.int64(pkt[pos]) << 8) | np.int64(pkt[pos + 1])


@njit(**HOT_PATH_OPTIONS)
def _read_name(pkt, n, pos):
    """Offset after a (possibly compressed) name, or -1 where wire.read_name raises."""
    jumped_to = -1
    hops = 0
    length = 0
    while True:
        if pos >= n:
            return -1
        label = np.int64(pkt[pos])
        if label == 0:
            pos += 1
            break
        kind = label & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                return -1
            target = ((label & 0x3F) << 8) | np.int64(pkt[pos + 1])
            if jumped_to < 0:
                jumped_to = pos + 2
            hops += 1
            if hops > 127 or target >= pos:
                return -1
            pos = target
            continue
        if kind:
            return -1
        length += label + 1
        if length > 254:
            return -1
        pos += label + 1
    return jumped_to if jumped_to >= 0 else pos


@njit(**HOT_PATH_OPTIONS)
def _skip_rr(pkt, n, pos):
    pos = _read_name(pkt, n, pos)
    if pos < 0 or pos + 10 > n:
        return -1
    pos += 10 + _u16(pkt, pos + 8)
    return -1 if pos > n else pos


@njit(**HOT_PATH_OPTIONS)
def _parse_ecs(pkt, pos, length, q):
    """RFC 7871 section 6; False when malformed."""
    if length < 4:
        return False
    family = _u16(pkt, pos)
    source = np.int64(pkt[pos + 2])
    scope = np.int64(pkt[pos + 3])
    alen = length - 4
    if family == 1:
        max_bits = 32
    elif family == 2:
        max_bits = 128
    else:
        return False
    if source > max_bits or scope != 0:
        return False
    if alen != (source + 7) // 8:
        return False
    if source % 8 and np.int64(pkt[pos + 4 + alen - 1]) & (0xFF >> (source % 8)):
        return False
    q[Q_ECS] = 1
    q[Q_ECS_FAMILY] = family
    q[Q_ECS_BITS] = source
    q[Q_ECS_ADDR] = pos + 4
    q[Q_ECS_ALEN] = alen
    return True


@njit(**HOT_PATH_OPTIONS)
def _parse_opt(pkt, n, pos, q):
    # pos is just after the root owner name.
    if pos + 10 > n:
        return -1
    payload = _u16(pkt, pos + 2)
    ttl = (_u16(pkt, pos + 4) << 16) | _u16(pkt, pos + 6)
    rdlength = _u16(pkt, pos + 8)
    pos += 10
    rdend = pos + rdlength
    if rdend > n:
        return -1
    q[Q_EDNS] = 1
    q[Q_PAYLOAD] = max(payload, 512)
    q[Q_VERSION] = (ttl >> 16) & 0xFF
    q[Q_DO] = 1 if ttl & 0x8000 else 0
    while pos < rdend:
        if pos + 4 > rdend:
            return -1
        code = _u16(pkt, pos)
        length = _u16(pkt, pos + 2)
        pos += 4
        if pos + length > rdend:
            return -1
        if code == wire.NSID_OPTION:
            q[Q_NSID] = 1
        elif code == wire.COOKIE_OPTION:
            if q[Q_COOKIE] == 0 and not q[Q_COOKIE_ERR]:  # the first counts (RFC 7873 5.2)
                if length == 8 or 16 <= length <= 40:
                    q[Q_COOKIE] = pos
                    q[Q_COOKIE_LEN] = length
                else:
                    q[Q_COOKIE_ERR] = 1
        elif code == wire.ECS_OPTION:
            if q[Q_ECS] or q[Q_ECS_ERR]:
                q[Q_ECS_ERR] = 1  # RFC 7871: at most one ECS option
            elif not _parse_ecs(pkt, pos, length, q):
                q[Q_ECS_ERR] = 1
        pos += length
    return rdend


@njit(**HOT_PATH_OPTIONS)
def _parse_query(pkt, n, q):
    """Fill ``q``; False where wire.parse_query raises FormatError."""
    for i in range(QUERY_FIELDS):
        q[i] = 0
    q[Q_PAYLOAD] = 512
    q[Q_NAME] = -1
    q[Q_ID] = _u16(pkt, 0)
    flags = _u16(pkt, 2)
    q[Q_FLAGS] = flags
    q[Q_OPCODE] = (flags >> 11) & 0xF
    if _u16(pkt, 4) != 1:
        return False
    rr_count = _u16(pkt, 6) + _u16(pkt, 8)
    arcount = _u16(pkt, 10)
    pos = 12
    while True:
        if pos >= n:
            return False
        label = np.int64(pkt[pos])
        if label == 0:
            pos += 1
            break
        if label > 63:
            return False
        pos += label + 1
        if pos - 12 > 254:
            return False
    if pos + 4 > n:
        return False
    q[Q_QEND] = pos
    q[Q_QTYPE] = _u16(pkt, pos)
    q[Q_QCLASS] = _u16(pkt, pos + 2)
    pos += 4
    for _ in range(rr_count):
        pos = _skip_rr(pkt, n, pos)
        if pos < 0:
            return False
    seen_opt = False
    for _ in range(arcount):
        if q[Q_TSIG]:
            return False  # TSIG is not the last record
        if (
            pos < n
            and pkt[pos] == 0
            and pos + 3 <= n
            and pkt[pos + 1] == 0
            and pkt[pos + 2] == wire.OPT_TYPE
        ):
            if seen_opt:
                return False
            seen_opt = True
            pos = _parse_opt(pkt, n, pos + 1, q)
            if pos < 0:
                return False
        else:
            start = pos
            pos = _skip_rr(pkt, n, pos)
            if pos < 0:
                return False
            at = _read_name(pkt, n, start)
            kind = _u16(pkt, at)
            if kind == wire.OPT_TYPE:
                return False  # OPT not owned by the root
            if kind == wire.TSIG_TYPE:
                q[Q_TSIG] = 1
    return pos == n


# --- encoding (Responder._reply, mirrored) -------------------------------------------------


@njit(**HOT_PATH_OPTIONS)
def _copy(dst, at, src, start, length):
    # A plain loop: numba's slice assignment checks for overlap and may copy through a
    # temporary array, which cost more than the whole rest of an answer.
    for i in range(length):
        dst[at + i] = src[start + i]


@njit(**HOT_PATH_OPTIONS)
def _put16(out, pos, value):
    out[pos] = (value >> 8) & 0xFF
    out[pos + 1] = value & 0xFF


@njit(**HOT_PATH_OPTIONS)
def _reply(
    pkt,
    q,
    out,
    rcode_flags,
    an,
    ns,
    ar,
    body,
    main_off,
    main_len,
    extra_len,
    extra_required,
    udp,
    ecs_scope,
    nsid,
):
    """Header, the client's question, sections and OPT, truncated for UDP; returns the length.

    ``body[main_off:]`` holds the answer and authority sections then the additional one;
    ``ecs_scope`` < 0 means no ECS option in the reply; ``nsid``: the NSID sent if asked.
    """
    extended = rcode_flags == wire.BADVERS
    echoed = wire.OPCODE_MASK | wire.CD | (wire.RD if q[Q_OPCODE] == 0 else 0)  # wire.echoed_flags
    flags = wire.QR | (q[Q_FLAGS] & echoed) | (0 if extended else rcode_flags)
    q[Q_RCODE] = query_stats.RCODE_BADVERS if extended else rcode_flags & 0xF
    qend = q[Q_QEND] + 4
    with_ecs = q[Q_ECS] == 1 and ecs_scope >= 0 and not extended
    with_nsid = q[Q_NSID] == 1 and nsid.shape[0] > 0 and not extended
    with_cookie = q[Q_COOKIE_VERDICT] != cookies.NONE and not extended
    opt_len = 0
    if q[Q_EDNS]:
        opt_len = (
            11
            + (8 + q[Q_ECS_ALEN] if with_ecs else 0)
            + (4 + nsid.shape[0] if with_nsid else 0)
            + (4 + cookies.REPLY_LEN if with_cookie else 0)
        )
    opt_count = 1 if opt_len else 0
    size = qend + main_len + extra_len + opt_len
    use_main = True
    use_extra = True
    if udp:
        limit = min(q[Q_PAYLOAD], MAX_UDP_PAYLOAD) if q[Q_EDNS] else NO_EDNS_UDP_PAYLOAD
        if size > limit:
            use_extra = False
            ar = 0
            if extra_len == 0 or extra_required or qend + main_len + opt_len > limit:
                # RFC 2181 9: dropping additional data alone does not call for TC.
                use_main = False
                an = 0
                ns = 0
                flags |= wire.TC
    _put16(out, 0, q[Q_ID])
    _put16(out, 2, flags)
    _put16(out, 4, 1)
    _put16(out, 6, an)
    _put16(out, 8, ns)
    _put16(out, 10, ar + opt_count)
    _copy(out, 12, pkt, 12, qend - 12)
    pos = qend
    if use_main:
        _copy(out, pos, body, main_off, main_len)
        pos += main_len
        if use_extra:
            _copy(out, pos, body, main_off + main_len, extra_len)
            pos += extra_len
    if opt_len:
        out[pos] = 0
        _put16(out, pos + 1, wire.OPT_TYPE)
        _put16(out, pos + 3, MAX_UDP_PAYLOAD)
        out[pos + 5] = 1 if extended else 0
        out[pos + 6] = 0
        _put16(out, pos + 7, 0x8000 if q[Q_DO] else 0)
        _put16(out, pos + 9, opt_len - 11)
        pos += 11
        if with_ecs:
            alen = q[Q_ECS_ALEN]
            _put16(out, pos, wire.ECS_OPTION)
            _put16(out, pos + 2, 4 + alen)
            _put16(out, pos + 4, q[Q_ECS_FAMILY])
            out[pos + 6] = q[Q_ECS_BITS]
            out[pos + 7] = ecs_scope
            a = q[Q_ECS_ADDR]
            _copy(out, pos + 8, pkt, a, alen)
            pos += 8 + alen
        if with_nsid:
            _put16(out, pos, wire.NSID_OPTION)
            _put16(out, pos + 2, nsid.shape[0])
            _copy(out, pos + 4, nsid, 0, nsid.shape[0])
            pos += 4 + nsid.shape[0]
        if with_cookie:
            _put16(out, pos, wire.COOKIE_OPTION)
            _put16(out, pos + 2, cookies.REPLY_LEN)
            if q[Q_COOKIE_VERDICT] == cookies.VALID:  # echoed as sent
                _copy(out, pos + 4, pkt, q[Q_COOKIE], cookies.REPLY_LEN)
            else:
                _copy(out, pos + 4, pkt, q[Q_COOKIE], cookies.CLIENT_LEN)
                at = pos + 4 + cookies.CLIENT_LEN
                out[at] = cookies.VERSION
                out[at + 1] = 0
                out[at + 2] = 0
                out[at + 3] = 0
                stamp = q[Q_COOKIE_TS]
                for j in range(4):
                    out[at + 4 + j] = (stamp >> (24 - 8 * j)) & 0xFF
                digest = q[Q_COOKIE_HASH]
                for j in range(8):
                    out[at + 8 + j] = (digest >> (8 * j)) & 0xFF
            pos += 4 + cookies.REPLY_LEN
    return pos


@njit(**HOT_PATH_OPTIONS)
def _empty_reply(pkt, q, out, rcode, book, body, udp):
    return _reply(pkt, q, out, rcode, 0, 0, 0, body, 0, 0, 0, False, udp, -1, book[B_NSID])


# --- locating the client (Responder._locate, mirrored) -------------------------------------


@njit(**HOT_PATH_OPTIONS)
def _v4_key(value, bits):
    keep = min(bits, STICKY_V4_BITS)
    return np.uint64(value & ~((np.int64(1) << (32 - keep)) - 1) & 0xFFFFFFFF)


@njit(**HOT_PATH_OPTIONS)
def _v6_key(hi, bits):
    keep = min(bits, STICKY_V6_BITS)
    top = (hi >> _U64_16) & _U64_80_MASK
    keep_mask = ~((np.uint64(1) << np.uint64(STICKY_V6_BITS - keep)) - np.uint64(1))
    return (np.uint64(1) << _U64_63) | (top & keep_mask)


@njit(**HOT_PATH_OPTIONS)
def _special_v4(value, nets, lens):
    for i in range(nets.shape[0]):
        shift = 32 - lens[i]
        if (value >> shift) == (nets[i] >> shift):
            return lens[i]
    return -1


@njit(**HOT_PATH_OPTIONS)
def _in_v6(hi, lo, net_hi, net_lo, bits):
    if bits == 0:
        return True
    if bits <= 64:
        shift = np.uint64(64 - bits)
        return (hi >> shift) == (net_hi >> shift) if bits < 64 else hi == net_hi
    if hi != net_hi:
        return False
    shift = np.uint64(128 - bits)
    return (lo >> shift) == (net_lo >> shift) if bits < 128 else lo == net_lo


@njit(**HOT_PATH_OPTIONS)
def _special_v6(hi, lo, nets_hi, nets_lo, lens):
    for i in range(nets_hi.shape[0]):
        if _in_v6(hi, lo, nets_hi[i], nets_lo[i], lens[i]):
            return lens[i]
    return -1


@njit(inline="always", **HOT_PATH_OPTIONS)
def _lookup_v6(book, hi, lo):
    group, scope = _lpm._lookup_v6_one(
        book[B_V6_START_HI],
        book[B_V6_START_LO],
        book[B_V6_END_HI],
        book[B_V6_END_LO],
        book[B_V6_GROUP],
        book[B_V6_SCOPE],
        hi,
        lo,
    )
    return np.int64(group), np.int64(scope)


@njit(inline="always", **HOT_PATH_OPTIONS)
def _by_source(book, src_v6, src_hi, src_lo):
    """(group, scope, sticky key) from the packet's source address."""
    if src_v6 and not (src_hi == _MAPPED_HI and (src_lo >> np.uint64(32)) == _MAPPED_LO_TOP):
        group, scope = _lookup_v6(book, src_hi, src_lo)
        return group, scope, _v6_key(src_hi, 128)
    value = np.int64(src_lo & np.uint64(0xFFFFFFFF))
    group, scope = _lpm._lookup_v4_one(
        book[B_V4_START], book[B_V4_END], book[B_V4_GROUP], book[B_V4_SCOPE], value
    )
    return np.int64(group), np.int64(scope), _v4_key(value, 32)


@njit(inline="always", **HOT_PATH_OPTIONS)
def _locate(pkt, q, book, src_v6, src_hi, src_lo):
    """(group, ECS scope, sticky client key, query_stats.LOCATED_*)."""
    if q[Q_ECS]:
        bits = q[Q_ECS_BITS]
        if bits > 0:
            a = q[Q_ECS_ADDR]
            alen = q[Q_ECS_ALEN]
            if q[Q_ECS_FAMILY] == 1:
                value = np.int64(0)
                for i in range(4):
                    value = (value << 8) | (np.int64(pkt[a + i]) if i < alen else 0)
                special = _special_v4(value, book[B_SP4_NET], book[B_SP4_LEN])
                if special < 0:
                    group, scope = _lpm._lookup_v4_one(
                        book[B_V4_START], book[B_V4_END], book[B_V4_GROUP], book[B_V4_SCOPE], value
                    )
                    return (
                        np.int64(group),
                        np.int64(scope),
                        _v4_key(value, bits),
                        query_stats.LOCATED_ECS,
                    )
            else:
                hi = np.uint64(0)
                lo = np.uint64(0)
                for i in range(8):
                    hi = (hi << np.uint64(8)) | np.uint64(pkt[a + i] if i < alen else 0)
                for i in range(8, 16):
                    lo = (lo << np.uint64(8)) | np.uint64(pkt[a + i] if i < alen else 0)
                special = _special_v6(hi, lo, book[B_SP6_HI], book[B_SP6_LO], book[B_SP6_LEN])
                if special < 0:
                    group, scope = _lookup_v6(book, hi, lo)
                    return group, scope, _v6_key(hi, bits), query_stats.LOCATED_ECS
            group, _, key = _by_source(book, src_v6, src_hi, src_lo)
            return group, min(special, bits), key, query_stats.LOCATED_ECS_NOT_ROUTABLE
        # SOURCE PREFIX-LENGTH 0: the client asks not to be located by its subnet.
        group, _, key = _by_source(book, src_v6, src_hi, src_lo)
        return group, np.int64(0), key, query_stats.LOCATED_ECS_PREFIX_0
    group, scope, key = _by_source(book, src_v6, src_hi, src_lo)
    return group, scope, key, query_stats.LOCATED_SOURCE


@njit(**HOT_PATH_OPTIONS)
def _pick(view, row, key):
    """TableView.pick: the answer set of split ``row`` for the client subnet ``key``."""
    split_start, split_set, split_cum = view[2], view[3], view[4]
    lo = np.int64(split_start[row])
    hi = np.int64(split_start[row + 1])
    point = np.int64((key * _GOLDEN) >> _U64_48)
    i = lo
    while i < hi and split_cum[i] <= point:  # bisect_right
        i += 1
    return np.int64(split_set[min(i, hi - 1)])


# --- the responder --------------------------------------------------------------------------


@njit(inline="always", **HOT_PATH_OPTIONS)
def answer_query(pkt, n, src_v6, src_hi, src_lo, udp, book, view, demand, count_demand, stats, count_stats,
                 q, labels, body, out, cookie_state):  # fmt: skip
    """Reply to ``pkt[:n]`` into ``out``: its length, NO_REPLY, or PUNT (see Responder.respond).

    ``src_v6``/``src_hi``/``src_lo``: the source address (IPv4 in ``src_lo``). ``view`` is
    (group_set, set_nodes, split_start, split_set, split_cum) of the current routing table;
    ``demand[policy, group]`` counts steered queries when ``count_demand``; ``stats``
    (QueryStats.arrays) counts every reply when ``count_stats`` (a punted query is
    counted by the general path that answers it). ``cookie_state``: DNS cookies
    (router/dns/cookies.py; its S_NOW is the time now).
    """
    length = _answer(pkt, n, src_v6, src_hi, src_lo, udp, book, view, demand, count_demand, stats, count_stats,
                     q, labels, body, out, cookie_state)  # fmt: skip
    if count_stats and length > 0:
        name = q[Q_NAME]
        if name < 0:
            name = _name_label(pkt, q, book, labels)
        qtype = q[Q_QTYPE]
        bucket = query_stats.TYPE_NONE if qtype < 0 else np.int64(book[B_TYPE_BUCKET][qtype])
        stats[0][name, query_stats.UDP if udp else query_stats.TCP, q[Q_RCODE], bucket] += 1
    return length


@njit(inline="always", **HOT_PATH_OPTIONS)
def _answer(pkt, n, src_v6, src_hi, src_lo, udp, book, view, demand, count_demand, stats, count_stats,
            q, labels, body, out, cookie_state):  # fmt: skip
    if n < 12 or pkt[2] & 0x80:
        return NO_REPLY  # no header to answer, or a response: never reply (reflection loops)
    cookie_probe = _u16(pkt, 4) == 0 and _u16(pkt, 10) != 0 and not pkt[2] & 0x78
    if cookie_probe and cookie_state[cookies.S_ON]:
        # A QUERY with no question may ask for a cookie alone (RFC 7873 5.4): Responder decides.
        return PUNT
    if not _parse_query(pkt, n, q):
        # Responder._unparsed: NOTIMP for another opcode (judged before the question),
        # else FORMERR; the header only.
        q[Q_NAME] = query_stats.NAME_UNPARSED
        q[Q_QTYPE] = -1
        flags = _u16(pkt, 2)
        if flags & wire.OPCODE_MASK:
            q[Q_RCODE] = wire.NOTIMP
            _put16(out, 2, wire.QR | (flags & wire.OPCODE_MASK) | wire.NOTIMP)
        else:
            q[Q_RCODE] = wire.FORMERR
            _put16(out, 2, wire.QR | (flags & wire.RD) | wire.FORMERR)
        out[0] = pkt[0]
        out[1] = pkt[1]
        for i in range(4, 12):
            out[i] = 0
        return 12
    if q[Q_TSIG]:
        return PUNT  # signed: NOTAUTH/BADKEY from Responder._bad_key (rare; no key is known)
    if q[Q_EDNS] and q[Q_VERSION] != 0:
        return _empty_reply(pkt, q, out, wire.BADVERS, book, body, udp)
    if cookie_state[cookies.S_ON]:
        if q[Q_COOKIE_ERR]:
            return _empty_reply(pkt, q, out, wire.FORMERR, book, body, udp)
        if q[Q_COOKIE]:
            verdict, stamp, digest = cookies.judge(pkt, q[Q_COOKIE], q[Q_COOKIE_LEN], src_v6, src_hi, src_lo,
                                                   cookie_state)  # fmt: skip
            q[Q_COOKIE_VERDICT] = verdict
            q[Q_COOKIE_TS] = np.int64(stamp)
            q[Q_COOKIE_HASH] = np.int64(digest)
    if q[Q_OPCODE] != 0:
        return _empty_reply(pkt, q, out, wire.NOTIMP, book, body, udp)
    if q[Q_ECS_ERR]:
        return _empty_reply(pkt, q, out, wire.FORMERR, book, body, udp)
    qtype = q[Q_QTYPE]
    if qtype == wire.OPT_TYPE or qtype == 250:
        return _empty_reply(pkt, q, out, wire.FORMERR, book, body, udp)
    if q[Q_QCLASS] != wire.CLASS_IN or qtype == 249 or qtype == 251 or qtype == 252:
        return _empty_reply(pkt, q, out, wire.REFUSED, book, body, udp)
    if 128 <= qtype <= 254:
        return _empty_reply(pkt, q, out, wire.NOTIMP, book, body, udp)

    keys, key_off, key_tag, key_val, slots = (
        book[B_KEYS],
        book[B_KEY_OFF],
        book[B_KEY_TAG],
        book[B_KEY_VAL],
        book[B_SLOTS],
    )
    qend = q[Q_QEND]
    qlen = qend - 12
    e = _find(keys, key_off, key_tag, slots, pkt, 12, qlen, qtype)
    if e >= 0:
        q[Q_NAME] = book[B_KEY_NAME][e]
        value = key_val[e]
        if value >= 0:
            return _static(pkt, q, out, book, value, udp)
        return _steered(pkt, q, out, book, view, demand, count_demand, stats, count_stats, body, -value - 1, udp,
                        src_v6, src_hi, src_lo)  # fmt: skip
    # AnswerBook.resolve for the cases that need no encoding: REFUSED, NODATA, NXDOMAIN.
    z, count = _zone_of(pkt, qend, book, labels)
    if z < 0:
        q[Q_NAME] = query_stats.NAME_NO_ZONE
        return _empty_reply(pkt, q, out, wire.REFUSED, book, body, udp)
    origin_len = book[B_ORIGIN_LEN][z]
    tag = TAG_ZONE_NAME + z
    for k in range(count):
        if qend - labels[k] <= origin_len:
            break
        if _flags(book, pkt, labels[k], qend, tag) & F_CUT and not (k == 0 and qtype == _TYPE_DS):
            return PUNT  # referral
    own_entry = _find(keys, key_off, key_tag, slots, pkt, 12, qlen, tag)
    own = key_val[own_entry] if own_entry >= 0 else 0
    q[Q_NAME] = book[B_KEY_NAME][own_entry] if own_entry >= 0 else book[B_ZONE_OTHER][z]
    if own & F_CNAME:
        return PUNT  # a chain for this type
    signed = q[Q_DO] == 1 and book[B_ZONE_SIGNED][z] == 1
    if own & (F_NAME | F_ENT | F_CUT):
        if qtype == wire.TYPE_ANY and own & F_NAME:
            return PUNT
        if signed:  # the NSEC record of the name (or covering the empty non-terminal)
            return _signed_denial(
                pkt, q, out, book, body, z, wire.NOERROR, book[B_KEY_NSEC][own_entry], -1, udp
            )
        return _negative(pkt, q, out, book, z, 0, qlen, udp)
    encloser = -1
    for k in range(1, count):
        encloser = _find(keys, key_off, key_tag, slots, pkt, labels[k], qend - labels[k], tag)
        fk = key_val[encloser] if encloser >= 0 else 0
        if fk & (F_NAME | F_ENT) or qend - labels[k] <= origin_len:
            if fk & F_WILDCARD:
                return PUNT  # synthesised from a wildcard
            break
    if signed:
        # RFC 4035 3.1.3.2: the NSEC covering the name, and the one covering the wildcard
        # of its closest encloser.
        cover = _nsec_cover(pkt, labels, count, book, z, body)
        wild = book[B_KEY_WILD_NSEC][encloser] if encloser >= 0 else np.int64(-1)
        if cover < 0 or wild < 0:
            return PUNT
        return _signed_denial(pkt, q, out, book, body, z, wire.NXDOMAIN, cover, wild, udp)
    return _negative(pkt, q, out, book, z, 1, qlen, udp)


@njit(inline="always", **HOT_PATH_OPTIONS)
def _zone_of(pkt, qend, book, labels):
    """(zone id or -1, label count): the deepest zone the question name is in; fills
    ``labels`` with the offset of each suffix of the name, longest first."""
    count = 0
    pos = 12
    while True:
        labels[count] = pos
        count += 1
        if pkt[pos] == 0:
            break
        pos += np.int64(pkt[pos]) + 1
    for k in range(count):
        e = _find(
            book[B_KEYS],
            book[B_KEY_OFF],
            book[B_KEY_TAG],
            book[B_SLOTS],
            pkt,
            labels[k],
            qend - labels[k],
            TAG_APEX,
        )
        if e >= 0:
            return book[B_KEY_VAL][e], count
    return -1, count


@njit(**HOT_PATH_OPTIONS)
def _name_label(pkt, q, book, labels):
    """QueryLabels.name_label for a parsed question (replies that did not look the name up)."""
    qend = q[Q_QEND]
    e = _find(
        book[B_KEYS],
        book[B_KEY_OFF],
        book[B_KEY_TAG],
        book[B_SLOTS],
        pkt,
        12,
        qend - 12,
        q[Q_QTYPE],
    )
    if e >= 0:
        return book[B_KEY_NAME][e]
    z, _ = _zone_of(pkt, qend, book, labels)
    if z < 0:
        return np.int64(query_stats.NAME_NO_ZONE)
    e = _find(
        book[B_KEYS],
        book[B_KEY_OFF],
        book[B_KEY_TAG],
        book[B_SLOTS],
        pkt,
        12,
        qend - 12,
        TAG_ZONE_NAME + z,
    )
    return book[B_KEY_NAME][e] if e >= 0 else book[B_ZONE_OTHER][z]


@njit(inline="always", **HOT_PATH_OPTIONS)
def _flags(book, pkt, start, qend, tag):
    e = _find(
        book[B_KEYS], book[B_KEY_OFF], book[B_KEY_TAG], book[B_SLOTS], pkt, start, qend - start, tag
    )
    return book[B_KEY_VAL][e] if e >= 0 else 0


@njit(**HOT_PATH_OPTIONS)
def _compare_keys(a, a_start, a_end, b, b_start, b_end):
    """-1, 0 or 1: the order of two canonical keys (nsec_sort_key), label by label."""
    i = a_start
    j = b_start
    while i < a_end and j < b_end:
        la = np.int64(a[i])
        lb = np.int64(b[j])
        for m in range(min(la, lb)):
            x = np.int64(a[i + 1 + m])
            y = np.int64(b[j + 1 + m])
            if x != y:
                return -1 if x < y else 1
        if la != lb:
            return -1 if la < lb else 1
        i += la + 1
        j += lb + 1
    if i < a_end:
        return 1
    if j < b_end:
        return -1
    return 0


@njit(**HOT_PATH_OPTIONS)
def _nsec_cover(pkt, labels, count, book, z, body):
    """The NSEC record (global index) owning or covering the question name in zone ``z``:
    its key is built in ``body[KEY_SCRATCH:]``, then a binary search of the zone's chain."""
    at = KEY_SCRATCH
    for k in range(count - 2, -1, -1):  # labels right to left (the last offset is the root)
        start = labels[k]
        length = np.int64(pkt[start])
        body[at] = length
        for m in range(length):
            body[at + 1 + m] = _lower(np.int64(pkt[start + 1 + m]))
        at += length + 1
    keys, key_off = book[B_NSEC_KEY], book[B_NSEC_KEY_OFF]
    lo = book[B_NSEC_START][z]
    hi = book[B_NSEC_START][z + 1]
    if lo == hi:
        return np.int64(-1)
    # The largest chain entry <= the name; the apex is first and every name is below it.
    first = lo
    while lo < hi:
        mid = (lo + hi) // 2
        if _compare_keys(keys, key_off[mid], key_off[mid + 1], body, KEY_SCRATCH, at) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return max(lo - 1, first)


@njit(**HOT_PATH_OPTIONS)
def _signed_denial(pkt, q, out, book, body, z, rcode, first, second, udp):
    """AnswerBook.signed_denial from its pieces: the zone's signed SOA, the NSEC record
    ``first`` and, if another, ``second``, each with its RRSIGs."""
    off, data, counts = book[B_DENIAL_OFF], book[B_DENIAL_BYTES], book[B_DENIAL_COUNT]
    soa = book[B_NSEC_KEY_OFF].shape[0] - 1 + z
    size = 0
    ns = 0
    for i, piece in enumerate((soa, first, second)):
        if piece < 0 or (i == 2 and second == first):
            continue
        length = off[piece + 1] - off[piece]
        _copy(body, size, data, off[piece], length)
        size += length
        ns += counts[piece]
    return _reply(
        pkt, q, out, wire.AA | rcode, 0, ns, 0, body, 0, size, 0, False, udp, 0, book[B_NSID]
    )


@njit(inline="always", **HOT_PATH_OPTIONS)
def _negative(pkt, q, out, book, z, slot, qlen, udp):
    index = book[B_NEGATIVE][z, slot, qlen]
    if index < 0:
        return PUNT
    return _static(pkt, q, out, book, index, udp)


@njit(inline="always", **HOT_PATH_OPTIONS)
def _static(pkt, q, out, book, index, udp):
    if q[Q_DO]:
        signed = book[B_ST_SIGNED][index]
        if signed >= 0:
            index = signed
    head = book[B_ST_HEAD]
    return _reply(pkt, q, out, head[index, 0], head[index, 1], head[index, 2], head[index, 3], book[B_ST_BYTES],
                  book[B_ST_OFF][index], book[B_ST_MAIN_LEN][index], book[B_ST_EXTRA_LEN][index], head[index, 4] != 0, udp, 0, book[B_NSID])  # fmt: skip


@njit(inline="always", **HOT_PATH_OPTIONS)
def _steered(
    pkt,
    q,
    out,
    book,
    view,
    demand,
    count_demand,
    stats,
    count_stats,
    body,
    s,
    udp,
    src_v6,
    src_hi,
    src_lo,
):
    group, scope, key, located = _locate(pkt, q, book, src_v6, src_hi, src_lo)
    policy = book[B_SA_POLICY][s]
    if count_demand:
        demand[policy, group] += 1
    answer_set = np.int64(view[0][policy, group])
    if answer_set < 0:
        answer_set = _pick(view, -answer_set - 1, key)
        # The answer now depends on the client's /24 (or /48): say so in the scope.
        if scope > 0:
            scope = max(
                scope, STICKY_V4_BITS if (key >> _U64_63) == np.uint64(0) else STICKY_V6_BITS
            )
    node_count = book[B_NODE_COUNT]
    rec_off, rec_bytes = book[B_REC_OFF], book[B_REC_BYTES]
    set_nodes = view[1]
    transport = query_stats.UDP if udp else query_stats.TCP
    if count_stats:
        stats[2][transport, located] += 1
    size = 0
    count = 0
    for j in range(set_nodes.shape[1]):
        node = set_nodes[answer_set, j]
        if node < 0:
            continue
        if count_stats:
            stats[1][transport, node] += 1
        r = s * node_count + node
        length = rec_off[r + 1] - rec_off[r]
        _copy(body, size, rec_bytes, rec_off[r], length)
        size += length
        count += 1
    if q[Q_DO] and book[B_SA_SIGNED][s]:
        # The set's RRSIGs, made when the table was written (router/dns/dnssec.py).
        sig_slot, sig_off, sig_data, sig_count = view[5], view[6], view[7], view[8]
        slot = np.int64(-1)
        if s < sig_slot.shape[0] and answer_set < sig_slot.shape[1]:
            slot = np.int64(sig_slot[s, answer_set])
        if slot < 0:
            return PUNT
        length = sig_off[slot + 1] - sig_off[slot]
        _copy(body, size, sig_data, sig_off[slot], length)
        size += length
        count += sig_count[slot]
    return _reply(
        pkt, q, out, wire.AA, count, 0, 0, body, 0, size, 0, False, udp, scope, book[B_NSID]
    )


# --- a Python entry point (tests, TCP) -------------------------------------------------------


class FastResponder:
    """``answer_query`` for one packet at a time, with the same inputs as Responder.respond."""

    def __init__(self, fast: FastBook, view, demand_counts: np.ndarray | None = None,  # noqa: ANN001
                 stats: QueryStats | None = None, cookie_state: np.ndarray | None = None) -> None:  # fmt: skip
        self.fast = fast
        self.cookie_state = cookie_state if cookie_state is not None else cookies.state_array(())
        self.view = view  # callable returning the current TableView
        self.demand = (
            demand_counts if demand_counts is not None else np.zeros((1, 1), dtype=np.int64)
        )
        self.count_demand = demand_counts is not None
        self.stats = stats.arrays if stats is not None else NO_STATS
        self.count_stats = stats is not None
        self.q = np.zeros(QUERY_FIELDS, dtype=np.int64)
        self.labels = np.zeros(MAX_QUESTION_LABELS, dtype=np.int64)
        self.body = np.zeros(BODY_SCRATCH, dtype=np.uint8)
        self.out = np.zeros(1 << 17, dtype=np.uint8)

    def respond(self, packet: bytes, source: str, udp: bool) -> bytes | None | int:
        """The reply, None for no reply, or PUNT."""
        src_v6, hi, lo = source_address(source)
        pkt = np.frombuffer(packet, dtype=np.uint8)
        self.cookie_state[cookies.S_NOW] = int(time.time())
        length = answer_query(pkt, len(packet), src_v6, hi, lo, udp, self.fast.arrays, table_arrays(self.view()),
                              self.demand, self.count_demand, self.stats, self.count_stats, self.q, self.labels, self.body,
                              self.out, self.cookie_state)  # fmt: skip
        if length == PUNT:
            return PUNT
        if length == NO_REPLY:
            return None
        return self.out[:length].tobytes()


def table_arrays(view) -> tuple:  # noqa: ANN001 - a TableView
    sig = view.signatures
    return (view.group_set, view.set_nodes, view.split_start, view.split_set, view.split_cum,
            sig.slot, sig.off, sig.data, sig.count)  # fmt: skip


def source_address(source: str) -> tuple[bool, np.uint64, np.uint64]:
    address = ipaddress.ip_address(source.split("%", 1)[0])
    value = int(address)
    if address.version == 4:
        return False, np.uint64(0), np.uint64(value)
    return True, np.uint64(value >> 64), np.uint64(value & 0xFFFFFFFFFFFFFFFF)
