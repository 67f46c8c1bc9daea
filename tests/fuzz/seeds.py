"""The seed corpus: real queries as resolvers send them, in the harness's input format.

A and AAAA for the steered names, with and without EDNS, with ECS (IPv4 and IPv6 subnets of
the sample client map, /0, a scope set), the DO bit, small and large payloads, static names
and types (MX, TXT, NS, SOA, ANY, CNAME), NXDOMAIN and other zones, a few malformed ones the
parser must refuse, and TCP: single messages and pipelined streams.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message

from tests.fuzz.harness import encode_input, encode_stream

NAMES = [
    ("video.cdn.example.", "A"),
    ("video.cdn.example.", "AAAA"),
    ("www.cdn.example.", "A"),
    ("www.cdn.example.", "AAAA"),
    ("VIDEO.cdn.Example.", "A"),
    ("cdn.example.", "SOA"),
    ("cdn.example.", "NS"),
    ("cdn.example.", "MX"),
    ("cdn.example.", "ANY"),
    ("nope.cdn.example.", "A"),
    ("edge.example.", "TXT"),
    ("big.edge.example.", "TXT"),
    ("x.wild.edge.example.", "A"),
    ("deep.ns.sub.edge.example.", "A"),
    ("example.org.", "A"),
]
ECS = [None, "83.44.10.0/24", "2a02:9100:1234::/56", "89.7.0.0/16", "0.0.0.0/0", "10.1.0.0/16"]


def query(name: str, rdtype: str, ecs: str | None, edns: bool, payload: int = 1232, do: bool = False,
          rd: bool = False, qid: int = 0x1234) -> bytes:  # fmt: skip
    options = []
    if ecs is not None:
        address, bits = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(bits)))
    message = dns.message.make_query(name, rdtype, use_edns=0 if edns or options else None,
                                     options=options, payload=payload, want_dnssec=do, id=qid)  # fmt: skip
    if not rd:
        message.flags &= ~dns.flags.RD
    return message.to_wire()


def seed_inputs() -> list[bytes]:
    out = []
    for i, (name, rdtype) in enumerate(NAMES):
        for j, ecs in enumerate(ECS):
            edns = ecs is not None or j % 2 == 0
            out.append(encode_input(query(name, rdtype, ecs, edns, do=j == 1), source=i + j))
        out.append(encode_input(query(name, rdtype, None, False, rd=True), source=i, udp=False))
        out.append(encode_input(query(name, rdtype, "83.44.10.0/24", True, payload=512), source=i))
    base = query("video.cdn.example.", "A", "83.44.10.0/24", True)
    out += [
        encode_input(
            query("video.cdn.example.", "A", "83.44.10.0/24", True, payload=4096, do=True)
        ),
        encode_input(query("video.cdn.example.", "A", None, True, payload=0)),
        encode_input(base[:12]),
        encode_input(base[:-3]),
        encode_input(base[:2] + b"\x29\x00" + base[4:]),  # opcode UPDATE
        encode_input(struct.pack("!HHHHHH", 7, 0, 0, 0, 0, 0)),  # no question
        encode_input(struct.pack("!HHHHHH", 7, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"),
        encode_stream([base, query("www.cdn.example.", "AAAA", None, True), base[:20]], source=1),
        encode_stream([query("cdn.example.", "SOA", None, False)] * 3, source=3),
    ]
    return out


def write_corpus(directory: Path) -> int:
    """Write the seeds into ``directory`` (one file each, named by content); how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seed_inputs()
    for data in seeds:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(seeds)
