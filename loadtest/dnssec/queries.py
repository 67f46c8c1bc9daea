"""dnsperf query files for the DNSSEC benchmark: the throughput mix, each query with and
without the DO bit.

The mix is ``loadtest.throughput.queries``'s (its kinds, names, types, case, ECS subnets and
query ids); the DO variant of a query is the same wire with one bit set, the DO flag of its
OPT record (RFC 3225), so a ``*_do`` file and its plain twin offer exactly the same load but
for the signatures asked for: ``qps_do_vs_plain`` compares like with like.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from loadtest.throughput.queries import Query, ZoneInventory, build_mix, frame

HEADER_LEN = 12
OPT_TYPE = 41
DO_BIT = 0x8000  # in the 16 flag bits of the OPT record's TTL field


def with_do(wire: bytes) -> bytes:
    """``wire`` (a query from ``encode_query``: one question, no answer or authority, the OPT
    record alone in the additional section) with the DO bit set, nothing else changed."""
    qdcount, ancount, nscount, arcount = struct.unpack_from("!4H", wire, 4)
    if (qdcount, ancount, nscount, arcount) != (1, 0, 0, 1):
        raise ValueError(f"not a query with one question and an OPT record alone: counts "
                         f"{qdcount}/{ancount}/{nscount}/{arcount}")  # fmt: skip
    at = HEADER_LEN
    while wire[at] != 0:  # the question's name: labels, never compressed in a lone question
        if wire[at] & 0xC0:
            raise ValueError(f"compressed question name at offset {at}")
        at += 1 + wire[at]
    opt = at + 1 + 4  # the root label, QTYPE, QCLASS
    owner, rdtype = wire[opt], struct.unpack_from("!H", wire, opt + 1)[0]
    if owner != 0 or rdtype != OPT_TYPE:
        raise ValueError(f"no OPT record at offset {opt} (owner {owner}, type {rdtype})")
    flags_at = opt + 1 + 2 + 2 + 2  # owner, TYPE, CLASS (payload), extended RCODE and version
    (flags,) = struct.unpack_from("!H", wire, flags_at)
    return wire[:flags_at] + struct.pack("!H", flags | DO_BIT) + wire[flags_at + 2 :]


def mixes(
    inventory: ZoneInventory, subnets: list[str], count: int, rng: random.Random
) -> dict[str, list[Query]]:
    """The throughput bench's two mixes of ``count`` queries: with ECS (``ecs``) and without
    (``plain``), as ``build_mix`` draws them (DO clear)."""
    return {
        "ecs": build_mix(inventory, subnets, count, rng),
        "plain": build_mix(inventory, None, count, rng),
    }


def variant_wires(mix: dict[str, list[Query]]) -> dict[str, list[bytes]]:
    """Each mix as sent with DO=0 (``ecs``, ``plain``) and with DO=1 (``ecs_do``, ``plain_do``),
    query by query the same wire but for the DO bit."""
    out = {}
    for name, queries in mix.items():
        out[name] = [q.wire for q in queries]
        out[f"{name}_do"] = [with_do(q.wire) for q in queries]
    return out


def write_query_files(root: Path, wires: dict[str, list[bytes]]) -> dict[str, Path]:
    """dnsperf ``-B`` files, ``root/queries-VARIANT.bin``, one per variant."""
    files = {}
    for variant, messages in wires.items():
        files[variant] = root / f"queries-{variant}.bin"
        files[variant].write_bytes(frame(messages))
    return files
