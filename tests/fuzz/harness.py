"""One fuzz input through the wire parser and both answer paths, with every check.

``Harness(zones).one_input(data)`` is what atheris calls for each input (and what the replay
test calls for each file under ``crashes/``). The first octet of ``data`` says how the rest is
sent (``decode_input``): over UDP or TCP, from which client address, and for TCP whether the
rest is one message or a stream of length-prefixed ones cut the way ``serve_tcp`` cuts them.
Each message goes to the Python responder (``router.dns.engine.Responder``) and to the
compiled one (``router.dns.fast_answer.answer_query`` through ``FastResponder``):

- neither may raise (the Python path has no handled exception of its own: ``respond`` turns
  every malformed query into FORMERR or no reply; ``safe_respond`` in the server catches a
  bug, which here is a crash);
- every reply parses with dnspython and is a reply: QR set, the query's ID, at most the UDP
  size the query allows (512 without EDNS, its payload with, never under 512);
- where the compiled path answers (anything but ``PUNT``), its bytes equal the Python path's,
  and so does "no reply".

A failed check raises ``FuzzFinding`` (an ``AssertionError``), which atheris reports as a
crash and keeps as a file.
"""

from __future__ import annotations

import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message

# Sources the fuzzer picks from (the low bits of the first octet): the client-map lookup by
# source address, v4, v6, v4-mapped, unmapped, loopback.
SOURCES = (
    "127.0.0.1",
    "83.44.10.7",
    "89.7.1.1",
    "2a02:9000::1",
    "::ffff:83.44.10.7",
    "::1",
    "10.0.0.1",
    "2001:db8::53",
)
UPDATE_OPCODE = 5
MODE_TCP = 0x08
MODE_STREAM = 0x10
MAX_STREAM_MESSAGES = 8


class FuzzFinding(AssertionError):
    """A check failed: a raise, a malformed reply, or the two paths answering differently."""


@dataclass
class Message:
    packet: bytes
    source: str
    udp: bool


def decode_input(data: bytes) -> list[Message]:
    """The messages an input stands for. Octet 0: bits 0-2 the source, bit 3 TCP, bit 4 (with
    TCP) a stream of two-octet length prefixes; the rest is the packet or the stream. A stream
    is cut as ``serve_tcp`` cuts it (a length, that many octets, again; a partial message at
    the end is never answered), at most MAX_STREAM_MESSAGES messages."""
    if not data:
        return []
    mode, body = data[0], data[1:]
    source = SOURCES[mode & 0x07]
    udp = not mode & MODE_TCP
    if udp or not mode & MODE_STREAM:
        return [Message(body, source, udp)]
    out, at = [], 0
    while at + 2 <= len(body) and len(out) < MAX_STREAM_MESSAGES:
        (length,) = struct.unpack_from("!H", body, at)
        if at + 2 + length > len(body):
            break
        out.append(Message(body[at + 2 : at + 2 + length], source, False))
        at += 2 + length
    return out


def encode_input(packet: bytes, source: int = 0, udp: bool = True) -> bytes:
    """The input that sends ``packet`` alone (the inverse of ``decode_input``)."""
    return bytes([(source & 0x07) | (0 if udp else MODE_TCP)]) + packet


def encode_stream(packets: list[bytes], source: int = 0) -> bytes:
    return bytes([(source & 0x07) | MODE_TCP | MODE_STREAM]) + b"".join(
        struct.pack("!H", len(p)) + p for p in packets
    )


def udp_limit(packet: bytes) -> int | None:
    """The largest UDP reply the query allows, or None if it does not parse as a query."""
    from router.dns import wire

    try:
        q = wire.parse_query(packet)
    except (wire.FormatError, IndexError, struct.error):
        return None
    return max(512, q.payload) if q.edns else 512


def check_reply(packet: bytes, reply: bytes, udp: bool, parse: bool = True) -> None:
    """Raise FuzzFinding unless ``reply`` is a well-formed reply to ``packet`` (``parse=False``:
    the header and size only, without dnspython)."""
    if len(reply) < 12:
        raise FuzzFinding(f"reply shorter than a header: {reply.hex()}")
    if reply[:2] != packet[:2]:
        raise FuzzFinding(f"ID not echoed: query {packet[:2].hex()}, reply {reply[:2].hex()}")
    if not reply[2] & 0x80:
        raise FuzzFinding(f"QR clear in the reply {reply.hex()}")
    if udp:
        limit = udp_limit(packet)
        if limit is not None and len(reply) > limit:
            raise FuzzFinding(f"UDP reply of {len(reply)} octets over the query's {limit}")
    if not parse:
        return
    wire = reply
    if (reply[2] >> 3) & 0x0F == UPDATE_OPCODE:
        # dnspython reads an UPDATE as RFC 2136 sections (a zone of type SOA); the reply to an
        # UPDATE (NOTIMP, echoing the question) is checked as the plain message it is.
        wire = reply[:2] + bytes([reply[2] & 0x87]) + reply[3:]
    try:
        dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError, IndexError, struct.error) as exc:
        raise FuzzFinding(
            f"reply does not parse ({type(exc).__name__}: {exc}): query {packet.hex()} reply {reply.hex()}"
        ) from exc


class Harness:
    """The Python and the compiled responder over the sample deployment (zones/ and geodata/,
    plus the protocol-test zone of tests/fixtures), one routing table with every node up; with
    ``split``, planned with demand beyond the nearest nodes, so client groups are split and the
    sticky per-subnet pick is exercised too."""

    def __init__(self, zones: Path | None = None, split: bool = False) -> None:
        from router.config import load_deployment
        from router.dns.engine import Responder, TableView
        from router.dns.fast_answer import PUNT, FastResponder, compile_book
        from router.health import NodeHealth
        from router.service.compiled import build_book
        from router.steering import build_routing_table, compile_model

        if zones is None:
            from tests.conftest import make_deployment

            self._tmp = tempfile.TemporaryDirectory(prefix="fuzz-deployment-")
            zones = make_deployment(Path(self._tmp.name))
        self.zones = zones
        self.deployment = load_deployment(zones)
        self.model = compile_model(self.deployment)
        self.book = build_book(self.deployment, self.model)
        health = NodeHealth(self.model.node_ids)
        if split:
            import numpy as np

            from router.steering.build import Planner

            planner = Planner(self.model)
            groups = len(self.model.client_map.groups)
            policies = len(self.model.policies)
            capacity = float(np.sum(self.model.node_capacity_gbps))
            for p in range(policies):
                planner.set_demand(p, np.full(groups, 0.9 * capacity / groups / policies))
            self.view = TableView(planner.build(health.states(), None, generation=1))
        else:
            self.view = TableView(build_routing_table(self.model, health.states(), None, 1))
        self.python = Responder(self.book, self.model.client_map, lambda: self.view)
        self.fast_book = compile_book(self.book, self.model.client_map)
        self.fast = FastResponder(self.fast_book, lambda: self.view)
        self.punt = PUNT
        self.inputs = 0
        self.messages = 0
        self.answered_fast = 0
        self.punted = 0

    def check(self, packet: bytes, source: str, udp: bool, parse: bool = True) -> bytes | None:
        """One message through both paths with every check; the Python path's reply.
        ``parse=False`` leaves out dnspython's decoding (for the bulk of the differential check)."""
        self.messages += 1
        try:
            expected = self.python.respond(packet, source, udp)
        except Exception as exc:
            raise FuzzFinding(
                f"Responder.respond raised {type(exc).__name__}: {exc} on {packet.hex()} "
                f"from {source} (udp={udp})"
            ) from exc
        if expected is not None:
            check_reply(packet, expected, udp, parse)
        try:
            got = self.fast.respond(packet, source, udp)
        except Exception as exc:
            raise FuzzFinding(
                f"answer_query raised {type(exc).__name__}: {exc} on {packet.hex()} "
                f"from {source} (udp={udp})"
            ) from exc
        if isinstance(got, int) and got == self.punt:
            self.punted += 1
            return expected
        self.answered_fast += 1
        if got != expected:
            raise FuzzFinding(
                f"the compiled path differs on {packet.hex()} from {source} (udp={udp}): "
                f"python {None if expected is None else expected.hex()}, "
                f"compiled {None if got is None else got.hex()}"
            )
        return expected

    def one_input(self, data: bytes) -> None:
        self.inputs += 1
        for message in decode_input(data):
            self.check(message.packet, message.source, message.udp)
