"""What each answered query is counted as: its name, type, rcode and transport, the nodes a
steered answer listed, and how the client was located (ECS or the resolver's address).

Both responders count the same way: the compiled one (router/dns/fast_answer.py) into the
arrays of ``QueryStats``, the general one (router/dns/engine.py) through ``QueryStats.count``.
A query's name label is one of the names the zones hold, so random names cannot grow
the label set: a name that is not in the zone it falls in counts as that zone's
``(other in <zone>)``, a name in no zone as ``(no zone)``, a query that could not be
parsed as ``(unparsed)``. The label of a name is decided exactly like the compiled path
decides it (``QueryLabels.name_label``): an exact answer's name, else a name the deepest
enclosing zone holds (existing, empty non-terminal or delegation point), else the zone's
other names.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.name
import numpy as np

from router.dns import wire
from router.dns.answers import AnswerBook, suffixes

# Types with their own label; every other type is "other", an unparsed query's is "none".
NAMED_TYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
    35: "NAPTR", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 99: "SPF", 257: "CAA", 255: "ANY",
}  # fmt: skip
TYPE_LABELS = (*NAMED_TYPES.values(), "other", "none")
TYPE_OTHER = len(NAMED_TYPES)
TYPE_NONE = TYPE_OTHER + 1

RCODE_LABELS = (
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "BADVERS",
    "other",
)
RCODE_BADVERS = 6
RCODE_OTHER = 7

TRANSPORT_LABELS = ("udp", "tcp")
UDP, TCP = 0, 1

# How a steered query's client was located (RFC 7871): by the ECS subnet, or by the
# resolver's address because there was no ECS option, its address says nothing about
# where the client is (a private or documentation block), or its SOURCE PREFIX-LENGTH was 0.
LOCATED_LABELS = ("ecs", "source", "source_ecs_not_routable", "source_ecs_prefix_0")
LOCATED_ECS, LOCATED_SOURCE, LOCATED_ECS_NOT_ROUTABLE, LOCATED_ECS_PREFIX_0 = range(4)
# The general responder's Decision.source -> LOCATED_*
LOCATED_BY = {
    "ecs": LOCATED_ECS,
    "source": LOCATED_SOURCE,
    "source (ECS address is not routable)": LOCATED_ECS_NOT_ROUTABLE,
    "source (ECS /0)": LOCATED_ECS_PREFIX_0,
}

# Beyond this many names, a zone's further names count as its other names: the metric's
# series stay bounded for zones with very many names.
MAX_NAME_LABELS = 10_000

NAME_NO_ZONE = 0
NAME_UNPARSED = 1


def _type_buckets() -> np.ndarray:
    buckets = np.full(65536, TYPE_OTHER, dtype=np.int8)
    for position, qtype in enumerate(NAMED_TYPES):
        buckets[qtype] = position
    return buckets


TYPE_BUCKET = _type_buckets()


def rcode_bucket(rcode: int) -> int:
    """``rcode``: the full (extended) rcode, 16 for BADVERS."""
    if rcode == wire.BADVERS:
        return RCODE_BADVERS
    return rcode if 0 <= rcode <= 5 else RCODE_OTHER


@dataclass(frozen=True)
class QueryLabels:
    """The name labels of one answer book: ``names[i]`` is label ``i``."""

    names: tuple[str, ...]
    name_ids: dict[bytes, int]  # wire name (lower case) -> label
    zone_other: dict[bytes, int]  # zone origin (wire) -> label of its other names
    zone_names: dict[bytes, frozenset[bytes]]  # origin -> the names that zone labels as themselves

    @classmethod
    def from_book(cls, book: AnswerBook) -> QueryLabels:
        names = ["(no zone)", "(unparsed)"]
        name_ids: dict[bytes, int] = {}
        zone_other: dict[bytes, int] = {}
        zone_names: dict[bytes, frozenset[bytes]] = {}

        def label(key: bytes) -> None:
            if key not in name_ids and len(name_ids) < MAX_NAME_LABELS:
                name_ids[key] = len(names)
                names.append(dns.name.from_wire(key, 0)[0].to_text())

        for origin_key, index in sorted(book.zones.items()):
            zone_other[origin_key] = len(names)
            names.append(f"(other in {index.origin.to_text()})")
            own = set(index.names) | set(index.empty_non_terminals) | set(index.cuts) | {origin_key}
            for key in sorted(own):
                label(key)
            zone_names[origin_key] = frozenset(key for key in own if key in name_ids)
        for key, _qtype in book.exact:
            label(key)
        return cls(tuple(names), name_ids, zone_other, zone_names)

    def name_label(self, key: bytes, qtype: int, exact: dict) -> int:  # noqa: ANN001
        """The label of question name ``key`` (wire, lower case); ``exact``: the book's."""
        if (key, qtype) in exact and key in self.name_ids:
            return self.name_ids[key]
        for suffix in suffixes(key):
            other = self.zone_other.get(suffix)
            if other is not None:
                return self.name_ids[key] if key in self.zone_names[suffix] else other
        return NAME_NO_ZONE


class QueryStats:
    """One worker's counters: int64 arrays, written by one thread per transport.

    ``queries[name, transport, rcode, type]``, ``node_answers[transport, node]`` (steered
    answers that listed the node), ``located[transport, how]`` (steered queries by how
    the client was located). The compiled path takes ``arrays`` as one tuple.
    """

    def __init__(self, queries: np.ndarray, node_answers: np.ndarray, located: np.ndarray) -> None:
        self.queries = queries
        self.node_answers = node_answers
        self.located = located

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.queries, self.node_answers, self.located)

    @classmethod
    def zeros(cls, names: int, nodes: int) -> QueryStats:
        return cls(*stats_shapes_zeros(names, nodes))

    def count(self, name: int, transport: int, rcode: int, qtype: int | None) -> None:
        bucket = TYPE_NONE if qtype is None else int(TYPE_BUCKET[qtype])
        self.queries[name, transport, rcode_bucket(rcode), bucket] += 1

    def count_steered(self, transport: int, nodes: list[int], located: int) -> None:
        for node in nodes:
            self.node_answers[transport, node] += 1
        self.located[transport, located] += 1


def stats_shapes(names: int, nodes: int) -> tuple[tuple[int, ...], ...]:
    return (
        (names, len(TRANSPORT_LABELS), len(RCODE_LABELS), len(TYPE_LABELS)),
        (len(TRANSPORT_LABELS), max(nodes, 1)),
        (len(TRANSPORT_LABELS), len(LOCATED_LABELS)),
    )


def stats_shapes_zeros(names: int, nodes: int) -> tuple[np.ndarray, ...]:
    return tuple(np.zeros(shape, dtype=np.int64) for shape in stats_shapes(names, nodes))
