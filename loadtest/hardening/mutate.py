"""Mutated DNS packets for the live flood: what a hostile or broken client sends.

``Mutator(bases, seed).packet()`` returns one packet made from a valid query (``bases``:
wire messages of the throughput mix) by one of the mutations in ``KINDS``, drawn with their
weights; ``tcp_stream`` frames a list of packets for TCP, some with wrong length prefixes.
"""

from __future__ import annotations

import random
import struct

HEADER = struct.Struct("!HHHHHH")
QUESTION = b"\x05video\x03cdn\x07example\x00\x00\x01\x00\x01"


def _qend(packet: bytes) -> int:
    """End of the question of a well-formed base query."""
    pos = 12
    while pos < len(packet) and packet[pos]:
        pos += packet[pos] + 1
    return min(len(packet), pos + 5)


class Mutator:
    def __init__(self, bases: list[bytes], seed: int) -> None:
        self.bases = bases
        self.rng = random.Random(seed)
        self.kinds = [(name, weight, getattr(self, f"_{name}")) for name, weight in KINDS]
        self.names = [k[0] for k in self.kinds]
        self.weights = [k[1] for k in self.kinds]
        self.counts = dict.fromkeys(self.names, 0)

    def packet(self) -> bytes:
        i = self.rng.choices(range(len(self.kinds)), self.weights)[0]
        name = self.names[i]
        self.counts[name] += 1
        return self.kinds[i][2](self.rng.choice(self.bases))

    # -- the mutations ------------------------------------------------------------------------

    def _truncated_header(self, base: bytes) -> bytes:
        return base[: self.rng.randrange(0, 12)]

    def _truncated(self, base: bytes) -> bytes:
        return base[: self.rng.randrange(12, len(base))]

    def _bit_flips(self, base: bytes) -> bytes:
        out = bytearray(base)
        for _ in range(self.rng.choice((1, 1, 2, 3, 5, 8))):
            bit = self.rng.randrange(8 * len(out))
            out[bit >> 3] ^= 0x80 >> (bit & 7)
        return bytes(out)

    def _byte_edits(self, base: bytes) -> bytes:
        out = bytearray(base)
        for _ in range(self.rng.randint(1, 4)):
            out[self.rng.randrange(len(out))] = self.rng.randrange(256)
        if self.rng.random() < 0.3:
            out += self.rng.randbytes(self.rng.randint(1, 40))
        return bytes(out)

    def _huge_counts(self, base: bytes) -> bytes:
        counts = list(HEADER.unpack_from(base))
        for field in self.rng.sample(range(2, 6), self.rng.randint(1, 4)):
            counts[field] = self.rng.choice((0xFFFF, 0x8000, 0x0100, self.rng.randrange(65536)))
        return HEADER.pack(*counts) + base[12:]

    def _compression_loop(self, base: bytes) -> bytes:
        qid = base[:2]
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:  # the question's name points at itself
            return qid + b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
        if choice == 1:  # two labels, then a pointer back to the first
            return (
                qid + b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x01b\xc0\x0c\x00\x01\x00\x01"
            )
        if choice == 2:  # an answer record whose owner points at itself
            at = 12 + len(QUESTION)
            return (qid + b"\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00" + QUESTION
                    + struct.pack("!H", 0xC000 | at) + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01\x02\x03\x04")  # fmt: skip
        # two additional records pointing at each other
        at = 12 + len(QUESTION)
        return (qid + b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x02" + QUESTION
                + struct.pack("!H", 0xC000 | (at + 12)) + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00"
                + struct.pack("!H", 0xC000 | at) + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00")  # fmt: skip

    def _forward_pointer(self, base: bytes) -> bytes:
        qid = base[:2]
        target = self.rng.choice((0x30, 0x3FFF, 12 + len(QUESTION) + 2, 200))
        if self.rng.random() < 0.5:  # in the question
            return (qid + b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00" + struct.pack("!H", 0xC000 | target)
                    + b"\x00\x01\x00\x01" + self.rng.randbytes(self.rng.randint(0, 60)))  # fmt: skip
        return (qid + b"\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00" + QUESTION + struct.pack("!H", 0xC000 | target)
                + b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x00")  # fmt: skip

    def _bad_edns(self, base: bytes) -> bytes:
        rng = self.rng
        head = base[:10] + b"\x00\x01" + base[12 : _qend(base)]
        options = [
            struct.pack("!HH", 8, 7) + b"\x00\x01\x18\x00\x53\x2c\x0a",  # well-formed ECS
            struct.pack("!HHHBB", 8, 7, 1, 33, 0) + b"\x53\x2c\x0a",  # source prefix > 32
            struct.pack("!HHHBB", 8, 8, 1, 24, 0) + b"\x53\x2c\x0a\x01",  # address too long
            struct.pack("!HHHBB", 8, 5, 1, 24, 0) + b"\x53",  # address too short
            struct.pack("!HHHBB", 8, 7, 3, 24, 0) + b"\x53\x2c\x0a",  # family 3
            struct.pack("!HHHBB", 8, 7, 1, 24, 9) + b"\x53\x2c\x0a",  # scope set
            struct.pack("!HHHBB", 8, 7, 1, 17, 0) + b"\x53\x2c\xff",  # bits past the prefix
            struct.pack("!HH", 8, 2) + b"\x00\x01",  # ECS cut short
            struct.pack("!HH", 10, rng.randint(0, 40)) + rng.randbytes(rng.randint(0, 40)),  # COOKIE
            struct.pack("!HH", 11, 3) + b"\x00\x01\x02",  # keepalive, odd length
            struct.pack("!HH", 12, 600) + b"\x00" * 600,  # padding, long
            struct.pack("!HH", rng.randrange(65536), rng.randint(0, 20)) + rng.randbytes(rng.randint(0, 20)),
            struct.pack("!HH", 8, 0xFFFF),  # option longer than the record
        ]  # fmt: skip
        data = b"".join(rng.choice(options) for _ in range(rng.randint(1, 3)))
        rdlen = len(data)
        if rng.random() < 0.25:
            rdlen = rng.choice(
                (rdlen + rng.randint(1, 10), max(0, rdlen - rng.randint(1, 5)), 0xFFFF)
            )
        version = 0 if rng.random() < 0.8 else rng.randrange(1, 256)
        owner = b"\x00" if rng.random() < 0.9 else b"\xc0\x0c"
        opt = (
            owner
            + struct.pack(
                "!HHBBHH", 41, rng.choice((0, 1, 512, 1232, 65535)), 0, version, 0x8000, rdlen
            )
            + data
        )
        if rng.random() < 0.15:  # two OPT records
            head = head[:10] + b"\x00\x02" + head[12:]
            opt += opt
        return head + opt

    def _random_body(self, base: bytes) -> bytes:
        return base[:12] + self.rng.randbytes(self.rng.randint(0, 300))

    def _random(self, base: bytes) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, 600))

    def _valid(self, base: bytes) -> bytes:
        return base


# What the flood sends, by weight: mostly valid queries made invalid a little, some wholly.
KINDS = [
    ("bit_flips", 30),
    ("byte_edits", 10),
    ("truncated_header", 6),
    ("truncated", 10),
    ("huge_counts", 8),
    ("compression_loop", 6),
    ("forward_pointer", 6),
    ("bad_edns", 14),
    ("random_body", 4),
    ("random", 2),
    ("valid", 4),
]


def server_cut(stream: bytes) -> list[bytes]:
    """The messages a DNS-over-TCP server reads from ``stream`` (RFC 1035 4.2.2 framing, the
    way serve_tcp cuts it: a partial message at the end is never read)."""
    out, at = [], 0
    while at + 2 <= len(stream):
        (length,) = struct.unpack_from("!H", stream, at)
        if at + 2 + length > len(stream):
            break
        out.append(stream[at + 2 : at + 2 + length])
        at += 2 + length
    return out


def tcp_stream(packets: list[bytes], rng: random.Random, bad_prefix: bool) -> bytes:
    """Frame ``packets``; with ``bad_prefix`` one of them gets a length prefix that is too large
    (the server waits for bytes that never come, or reads the next messages as its tail) or too
    small (the rest of it is read as the next length prefix and message)."""
    bad = rng.randrange(len(packets)) if bad_prefix else -1
    out = bytearray()
    for i, packet in enumerate(packets):
        length = len(packet)
        if i == bad:
            length = rng.choice(
                (min(65535, length + rng.randint(1, 400)), 65535, rng.randrange(0, max(1, length)))
            )
        out += struct.pack("!H", length) + packet
    return bytes(out)
