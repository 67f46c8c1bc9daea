"""Generated valid queries for the differential check of the two answer paths.

``generate(harness, count, seed)`` yields ``(packet, source, udp)``: names from the sample
zones (every name the answer book holds, the steered ones and their aliases included, plus
names that do not exist, below wildcards and delegations, and outside every zone), qtypes drawn
from the common ones and at random over 1..65535, ECS subnets from the sample client map
(IPv4 /24 and IPv6 /56 as resolvers send them, and other prefix lengths, /0 and unroutable
ones), random 0x20 case, EDNS or not with payload sizes from 0 to 65535, the DO bit, RD,
sources across the client map, and UDP or TCP. Every packet is a well-formed query (wire
encoding by hand, host bits of the ECS address cleared), so each must be answered.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterator

import dns.name

COMMON_TYPES = [1, 28, 255, 15, 16, 2, 6, 5, 43, 33, 13, 257, 12, 48, 64, 65, 99, 252, 41, 250, 251]
PAYLOADS = [0, 1, 511, 512, 513, 1220, 1232, 1400, 4096, 65535]


def zone_names(book) -> list[bytes]:  # noqa: ANN001 - an AnswerBook
    """Names in wire form (lower case): every name of the book and names around them."""
    names = {key for key, _ in book.exact} | set(book.steered_names)
    for origin in book.zones:
        text = dns.name.from_wire(origin, 0)[0].to_text()
        for extra in (f"nope.{text}", f"a.b.nope.{text}", f"x.wild.{text}", f"deep.ns.sub.{text}",
                      f"{'q' * 63}.{'r' * 60}.{text}", f"_sip._udp.{text}"):  # fmt: skip
            names.add(dns.name.from_text(extra).to_wire())
    names |= {dns.name.from_text(n).to_wire() for n in ("example.org.", ".", "cdn.example.org.")}
    return sorted(names)


def scramble(name: bytes, rng: random.Random) -> bytes:
    return bytes(c ^ 0x20 if 97 <= c <= 122 and rng.random() < 0.5 else c for c in name)


def ecs_option(subnet: str) -> bytes:
    network = ipaddress.ip_network(subnet, strict=False)
    bits = network.prefixlen
    family = 1 if network.version == 4 else 2
    octets = network.network_address.packed[: (bits + 7) // 8]
    return struct.pack("!HHHBB", 8, 4 + len(octets), family, bits, 0) + octets


def client_sources(client_map, rng: random.Random, count: int) -> list[str]:  # noqa: ANN001
    out = ["127.0.0.1", "::1", "10.0.0.1", "::ffff:83.44.10.7", "2001:db8::53"]
    for _ in range(count):
        if rng.random() < 0.7 and len(client_map.v4_start):
            i = rng.randrange(len(client_map.v4_start))
            value = rng.randint(int(client_map.v4_start[i]), int(client_map.v4_end[i]))
            out.append(str(ipaddress.IPv4Address(value)))
        elif len(client_map.v6_start_hi):
            i = rng.randrange(len(client_map.v6_start_hi))
            start = (int(client_map.v6_start_hi[i]) << 64) | int(client_map.v6_start_lo[i])
            end = (int(client_map.v6_end_hi[i]) << 64) | int(client_map.v6_end_lo[i])
            out.append(str(ipaddress.IPv6Address(rng.randint(start, end))))
    return out


def subnets_of(client_map, rng: random.Random, count: int) -> list[str]:  # noqa: ANN001
    """Resolver-style subnets of the map, then other lengths of the same and odd ones."""
    from loadtest.throughput.queries import draw_subnets

    base = draw_subnets(client_map, rng, count)
    odd = []
    for subnet in base[: count // 4]:
        network = ipaddress.ip_network(subnet)
        top = 32 if network.version == 4 else 128
        bits = rng.choice(
            [0, 1, 8, 15, 16, 20, 23, 25, 31, top]
            if top == 32
            else [0, 29, 32, 47, 48, 55, 57, 64, 127, top]
        )
        odd.append(str(ipaddress.ip_network((network.network_address, bits), strict=False)))
    odd += ["0.0.0.0/0", "::/0", "10.1.0.0/16", "192.168.1.0/24", "2001:db8::/32", "127.0.0.0/8",
            "::ffff:83.44.10.0/120", "100.64.0.0/10"]  # fmt: skip
    return base + odd


def generate(harness, count: int, seed: int = 17) -> Iterator[tuple[bytes, str, bool]]:  # noqa: ANN001
    rng = random.Random(seed)
    names = zone_names(harness.book)
    steered = sorted(harness.book.steered_names)
    client_map = harness.model.client_map
    subnets = subnets_of(client_map, rng, 1000)
    sources = client_sources(client_map, rng, 300)
    for _ in range(count):
        name = rng.choice(steered) if rng.random() < 0.4 else rng.choice(names)
        if rng.random() < 0.5:
            name = scramble(name, rng)
        roll = rng.random()
        if roll < 0.7:
            qtype = rng.choice(COMMON_TYPES[:6]) if name in steered else rng.choice(COMMON_TYPES)
        else:
            qtype = rng.randint(1, 65535)
        qclass = 1 if rng.random() < 0.97 else rng.choice([3, 4, 254, 255])
        flags = (0x0100 if rng.random() < 0.3 else 0) | (0x0010 if rng.random() < 0.05 else 0)
        edns = rng.random() < 0.8
        additional = b""
        if edns:
            options = ecs_option(rng.choice(subnets)) if rng.random() < 0.7 else b""
            payload = rng.choice(PAYLOADS) if rng.random() < 0.8 else rng.randint(0, 65535)
            do = 0x8000 if rng.random() < 0.3 else 0
            additional = struct.pack("!BHHBBHH", 0, 41, payload, 0, 0, do, len(options)) + options
        packet = (
            struct.pack("!HHHHHH", rng.randrange(65536), flags, 1, 0, 0, 1 if edns else 0)
            + name
            + struct.pack("!HH", qtype, qclass)
            + additional
        )
        yield packet, rng.choice(sources), rng.random() < 0.9
