"""Node heartbeats on the wire: a signed JSON report in one UDP datagram (docs/heartbeat.md).

Packet (format 2)::

    "RH2" | node id length (1 octet) | node id | HMAC-SHA256 (32 octets) | payload (JSON)

The MAC covers every octet of the packet but its own 32. The node id stands in clear before
the MAC so that the key is found without parsing anything the sender controls beyond one
length octet: a packet is size-checked, then authenticated over its raw bytes, and only then
parsed and held to a strict schema (every field required, unknown fields rejected).

Packet (format 3, for routers that share a bus: docs/cluster.md, "Node keys")::

    "RH3" | node id length | node id | router count k (1 octet)
          | k x (router id length (1 octet) | router id) | k x MAC (16 octets) | payload (JSON)

One MAC per router, each HMAC-SHA256 (cut to 16 octets) over every octet but the MACs, made
with the node's key *for that router*: ``router_key(node key, router id)``. A router holds
only its own keys of the nodes (``router keys derive``), so it can check its MAC and no other:
the signed bytes it passes on over the bus are checked by every other router with a key it
does not have, and one compromised router cannot forge a node's state anywhere else.

Replay protection survives restarts of either side. Each agent start draws a random boot id;
within a boot the sequence must grow. A new boot id is taken only when its packet is fresh and
stamped later than anything accepted from that node, so a captured packet of an older boot
can never come back. The router accepts nothing stamped before it started (or before what it
last saved), so its own restart reopens no window either.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from router.config.node_keys import router_key

MAGIC = b"RH2"
MAGIC_ROUTERS = b"RH3"  # format 3: one MAC per router
FORMAT_VERSION = 2
MAX_PACKET = 1400
MAX_NODE_ID = 64
MAC_SIZE = 32
ROUTER_MAC_SIZE = 16  # HMAC-SHA256 cut to 128 bits (RFC 2104, section 5)
MAX_ROUTERS = 32  # MACs in one format-3 packet
MAX_ROUTER_ID = 64
POWER_STATES = ("mains", "battery", "battery_low", "off")
UPLINK_STATES = ("up", "degraded", "down")
REJECT_REASONS = ("malformed", "unknown_node", "bad_signature", "replayed", "stale")
BOOT_ID_HEX = 32  # 128 random bits


def new_boot_id() -> str:
    """A fresh boot id: draw one each time an agent starts."""
    return secrets.token_hex(BOOT_ID_HEX // 2)


class Heartbeat(NamedTuple):
    # A named tuple, not a frozen dataclass: every router makes one per heartbeat of every
    # node (20,000 a second on a bus), and a frozen dataclass's __init__ cost a fifth of
    # decoding.
    node: str
    boot: str
    seq: int
    ts: float
    power: str
    uplinks: dict[str, str]
    load_gbps: float
    rps: float
    rtt: tuple[tuple[str, float], ...] = ()


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AlreadyHeard(Exception):
    """The very heartbeat accepted last from its node, again: with routers sharing a bus, the
    copy another router passed on (or the node's own, sent to both). Not counted as rejected."""


# -- the schema --------------------------------------------------------------------------------

_Finite = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_UplinkName = Annotated[str, StringConstraints(min_length=1, max_length=32)]


class _Payload(BaseModel):
    """The JSON payload, format 2: every field required, nothing else allowed."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    v: Literal[2]
    node: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NODE_ID)]
    boot: Annotated[str, StringConstraints(pattern=f"^[0-9a-f]{{{BOOT_ID_HEX}}}$")]
    seq: Annotated[int, Field(ge=0, lt=2**63)]
    ts: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    power: Literal["mains", "battery", "battery_low", "off"]
    uplinks: Annotated[dict[_UplinkName, Literal["up", "degraded", "down"]], Field(max_length=16)]
    load_gbps: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
    rps: Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
    rtt: Annotated[
        list[tuple[Annotated[str, StringConstraints(max_length=64)], _Finite]],
        Field(max_length=64),
    ]


# The model's own validator, called without model_validate_json's wrapper (a fifth of its
# cost, on every heartbeat of every node).
_PAYLOAD = _Payload.__pydantic_validator__


def _schema_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "payload"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


# -- encoding ----------------------------------------------------------------------------------


_ROUTER_ID = re.compile(f"^[A-Za-z0-9_-]{{1,{MAX_ROUTER_ID}}}$")  # as --router-id takes


def parse_router_ids(text: str) -> tuple[str, ...]:
    """``r1,r2,...`` (an agent's or the simulator's --router-ids) -> the ids; ValueError."""
    ids = tuple(part.strip() for part in text.split(",") if part.strip())
    for router in ids:
        if not _ROUTER_ID.match(router):
            raise ValueError(
                f"{router!r}: a router id is 1 to {MAX_ROUTER_ID} letters, digits, - or _"
            )
    if len(set(ids)) != len(ids) or len(ids) > MAX_ROUTERS:
        raise ValueError(f"{text!r}: at most {MAX_ROUTERS} routers, each once")
    return ids


def encode(heartbeat: Heartbeat, key: bytes, routers: Sequence[str] = ()) -> bytes:
    """The packet for ``heartbeat``, signed with the node's ``key`` (the simulator and the
    agent use this): format 2, or with ``routers`` format 3, a MAC for each of them."""
    node = heartbeat.node.encode()
    if not 1 <= len(node) <= MAX_NODE_ID:
        raise ValueError(f"node id must be 1-{MAX_NODE_ID} octets: {heartbeat.node!r}")
    body = _Payload(
        v=FORMAT_VERSION, node=heartbeat.node, boot=heartbeat.boot, seq=heartbeat.seq,
        ts=heartbeat.ts, power=heartbeat.power, uplinks=heartbeat.uplinks,  # type: ignore[arg-type]
        load_gbps=heartbeat.load_gbps, rps=heartbeat.rps, rtt=list(heartbeat.rtt),
    )  # fmt: skip
    payload = body.model_dump_json().encode()
    if routers:
        ids = [r.encode() for r in routers]
        if len(ids) > MAX_ROUTERS or len(set(ids)) != len(ids):
            raise ValueError(f"1-{MAX_ROUTERS} distinct routers to sign for: {list(routers)}")
        if not all(1 <= len(r) <= MAX_ROUTER_ID for r in ids):
            raise ValueError(f"router ids must be 1-{MAX_ROUTER_ID} octets: {list(routers)}")
        head = b"".join(
            [MAGIC_ROUTERS, bytes([len(node)]), node, bytes([len(ids)])]
            + [bytes([len(r)]) + r for r in ids]
        )
        signed = head + payload
        macs = b"".join(
            hmac.digest(router_key(key, r), signed, "sha256")[:ROUTER_MAC_SIZE] for r in routers
        )
        packet = head + macs + payload
    else:
        head = MAGIC + bytes([len(node)]) + node
        packet = head + hmac.new(key, head + payload, hashlib.sha256).digest() + payload
    if len(packet) > MAX_PACKET:
        raise ValueError(f"heartbeat of {len(packet)} octets is over {MAX_PACKET}: send fewer rtt")
    return packet


def decode(
    packet: bytes,
    keys: Mapping[str, tuple[bytes, ...]],
    router_id: str = "",
    router_keys: Mapping[str, tuple[bytes | hmac.HMAC, ...]] | None = None,
) -> Heartbeat:
    """Size, then signature over the raw bytes, then parse and schema. Raises Rejected.

    ``keys``: the nodes' own keys (format 2); ``router_keys``: the nodes' keys for
    ``router_id`` (format 3; a router of a bus may hold these alone)."""
    if len(packet) > MAX_PACKET:
        raise Rejected("malformed", f"{len(packet)} octets, over {MAX_PACKET}")
    magic = packet[:3]
    if magic != MAGIC and magic != MAGIC_ROUTERS:
        if packet[:2] == b"RH":
            raise Rejected(
                "malformed",
                f"format {magic!r} is not {MAGIC!r} or {MAGIC_ROUTERS!r} (docs/heartbeat.md)",
            )
        raise Rejected("malformed", "not a heartbeat packet")
    if len(packet) < 4:
        raise Rejected("malformed", "truncated before the node id")
    id_len = packet[3]
    head_end = 4 + id_len
    if not 1 <= id_len <= MAX_NODE_ID or len(packet) < head_end + 2:
        raise Rejected("malformed", "truncated, or a node id length out of range")
    try:
        node = packet[4:head_end].decode()
    except UnicodeDecodeError:
        raise Rejected("malformed", "node id is not UTF-8") from None
    if magic == MAGIC:
        mac_end = head_end + MAC_SIZE
        if len(packet) < mac_end + 2:
            raise Rejected("malformed", "truncated in the MAC")
        node_keys = keys.get(node)
        if not node_keys:
            if router_keys is not None and not keys:
                raise Rejected(
                    "unknown_node",
                    f"node {node}: format {MAGIC!r} needs the node's own key, and this router "
                    f"holds only its keys for router {router_id}: the node must sign "
                    f"{MAGIC_ROUTERS!r} for the routers (docs/cluster.md)",
                )
            raise Rejected("unknown_node", f"no key for node {node!r}")
        mac = packet[head_end:mac_end]
        signed = packet[:head_end] + packet[mac_end:]
        payload_at = mac_end
    else:
        mac, signed, payload_at = _router_mac(packet, head_end, node, router_id)
        node_keys = router_keys.get(node) if router_keys is not None else None
        if not node_keys:
            raise Rejected("unknown_node", f"no key of node {node!r} for router {router_id}")
    # A node in key rotation has two keys: its current one and the next. A key is its bytes,
    # or an HMAC already keyed with them (a router of a bus: ``PreparedKeys``).
    for key in node_keys:
        if isinstance(key, bytes):
            digest = hmac.digest(key, signed, "sha256")  # one C call
        else:
            keyed = key.copy()
            keyed.update(signed)
            digest = keyed.digest()
        if hmac.compare_digest(mac, digest[: len(mac)]):
            break
    else:
        raise Rejected("bad_signature", f"bad signature for node {node}")
    try:
        body = _PAYLOAD.validate_json(packet[payload_at:])
    except ValidationError as exc:
        raise Rejected("malformed", f"node {node}: {_schema_error(exc)}") from None
    if body.node != node:
        raise Rejected("malformed", f"payload node {body.node!r} is not the header's {node!r}")
    # The model is dropped here, so its uplinks dict and rtt tuples are handed on, not copied.
    return Heartbeat(node, body.boot, body.seq, body.ts, body.power, body.uplinks,
                     body.load_gbps, body.rps, tuple(body.rtt))  # fmt: skip


# The router list of the last format-3 packet that named this router, and this router's place
# in it: every node of a service names the same routers, so the list is compared in one C
# call instead of parsed (10 routers: most of a format-3 header's cost). Only the intake
# thread decodes; the tuple is replaced whole.
_known_list: tuple[bytes, str, int, int] = (b"", "", 0, 0)  # (octets, router id, index, count)


def _router_mac(packet: bytes, at: int, node: str, router_id: str) -> tuple[bytes, bytes, int]:
    """Format 3 past the node id: (this router's MAC, the signed octets, where the payload
    starts). Raises Rejected."""
    global _known_list
    listed, known_for, index, count = _known_list
    if listed and known_for == router_id and packet.startswith(listed, at):
        at += len(listed)
    else:
        start = at
        index, count, at = _parse_router_list(packet, at, node, router_id)
        _known_list = (packet[start:at], router_id, index, count)
    macs_end = at + count * ROUTER_MAC_SIZE
    if len(packet) < macs_end + 2:
        raise Rejected("malformed", f"node {node}: truncated in the MACs")
    mac_at = at + index * ROUTER_MAC_SIZE
    return packet[mac_at : mac_at + ROUTER_MAC_SIZE], packet[:at] + packet[macs_end:], macs_end


def _parse_router_list(packet: bytes, at: int, node: str, router_id: str) -> tuple[int, int, int]:
    """(this router's index, the router count, where the MACs start); Rejected if the list is
    malformed or does not name this router."""
    count = packet[at]
    if not 1 <= count <= MAX_ROUTERS:
        raise Rejected("malformed", f"node {node}: {count} routers, not 1-{MAX_ROUTERS}")
    at += 1
    mine = router_id.encode()
    index = -1
    names = []
    for i in range(count):
        if at >= len(packet):
            raise Rejected("malformed", f"node {node}: truncated in the router ids")
        size = packet[at]
        name = packet[at + 1 : at + 1 + size]
        if not 1 <= size <= MAX_ROUTER_ID or len(name) != size:
            raise Rejected("malformed", f"node {node}: a router id length out of range")
        if name == mine:
            index = i
        names.append(name)
        at += 1 + size
    if index < 0:
        signed_for = ", ".join(n.decode(errors="replace") for n in names)
        raise Rejected(
            "bad_signature",
            f"node {node}: signed for routers {signed_for}, not for router {router_id or '(none)'}",
        )
    return index, count, at


class PreparedKeys(Mapping[str, tuple["hmac.HMAC", ...]]):
    """The nodes' keys for one router as HMACs already keyed, made when a node is first heard
    (keying is half the cost of a MAC over a heartbeat, paid once per node, not per packet):
    from the router's keys of the nodes, or with ``derive_for`` from the nodes' own keys."""

    def __init__(
        self, source: Mapping[str, tuple[bytes, ...]], derive_for: str | None = None
    ) -> None:
        self._source = source
        self._derive_for = derive_for
        self._made: dict[str, tuple[hmac.HMAC, ...]] = {}

    def __getitem__(self, node: str) -> tuple[hmac.HMAC, ...]:
        made = self._made.get(node)
        if made is None:
            keys = self._source[node]
            if self._derive_for is not None:
                keys = tuple(router_key(k, self._derive_for) for k in keys)
            made = tuple(hmac.new(k, digestmod=hashlib.sha256) for k in keys)
            self._made[node] = made
        return made

    def get(self, node: str, default=None):  # noqa: ANN001, ANN201 - Mapping.get's
        try:
            return self[node]
        except KeyError:
            return default

    def __iter__(self):  # noqa: ANN204
        return iter(self._source)

    def __len__(self) -> int:
        return len(self._source)


# -- replay protection -------------------------------------------------------------------------


class NodeReplay(NamedTuple):
    """The newest heartbeat accepted from one node (a tuple: replaced whole, never changed in
    place, so the state saver's copy never sees half of one)."""

    boot: str
    seq: int
    ts: float


@dataclass
class ReplayGuard:
    """What replay protection remembers; it outlives config reloads, and its ``snapshot`` goes
    into the state file so that a restarted router remembers it too.

    ``floor_ts``: nothing stamped earlier is accepted, from any node. It is the router's start
    time (or the newest timestamp it had saved, if later): a packet captured before a restart
    was stamped before it, whatever the router forgot in the crash."""

    floor_ts: float = field(default_factory=time.time)
    nodes: dict[str, NodeReplay] = field(default_factory=dict)
    retired_boots: dict[str, int] = field(default_factory=dict)  # node -> boots replaced

    def check(self, heartbeat: Heartbeat) -> None:
        node = heartbeat.node
        if heartbeat.ts <= self.floor_ts:
            raise Rejected(
                "replayed",
                f"node {node}: stamped {self.floor_ts - heartbeat.ts:.1f} s before this router's "
                "start or its newest saved heartbeat",
            )
        last = self.nodes.get(node)
        if last is None:
            return
        if heartbeat.boot == last.boot:
            if heartbeat.seq <= last.seq:
                raise Rejected(
                    "replayed", f"node {node}: sequence {heartbeat.seq} not after {last.seq}"
                )
        elif heartbeat.ts <= last.ts:
            raise Rejected(
                "replayed",
                f"node {node}: boot {heartbeat.boot[:8]}... is older than the boot in service "
                f"({last.boot[:8]}...): stamped {last.ts - heartbeat.ts:.3f} s earlier",
            )

    def commit(self, heartbeat: Heartbeat) -> bool:
        """Remember ``heartbeat``; True if it started a new boot of a node already known."""
        last = self.nodes.get(heartbeat.node)
        rebooted = last is not None and last.boot != heartbeat.boot
        if rebooted:
            self.retired_boots[heartbeat.node] = self.retired_boots.get(heartbeat.node, 0) + 1
        self.nodes[heartbeat.node] = NodeReplay(heartbeat.boot, heartbeat.seq, heartbeat.ts)
        return rebooted

    def snapshot(self) -> dict[str, object]:
        # A copy first (one step under the GIL): the publisher thread saves the state while
        # the intake thread verifies, and a node's first heartbeat adds to the dict.
        nodes = dict(self.nodes)
        return {
            "floor_ts": max([self.floor_ts] + [n.ts for n in nodes.values()]),
            "nodes": {k: [n.boot, n.seq, n.ts] for k, n in nodes.items()},
        }

    def restore(self, saved: object) -> str | None:
        """Take back a ``snapshot``; a warning if it is unreadable (then only the start floor)."""
        try:
            assert isinstance(saved, dict)
            floor = float(saved["floor_ts"])
            nodes = {
                str(k): NodeReplay(str(b), int(s), float(t))
                for k, (b, s, t) in saved["nodes"].items()
            }
            assert math.isfinite(floor)
        except (AssertionError, KeyError, TypeError, ValueError) as exc:
            return f"ignoring the saved replay state: {exc!r}"
        self.floor_ts = max(self.floor_ts, floor)
        self.nodes = nodes
        return None


@dataclass
class Verifier:
    """Checks packets against node keys (a node may have two: current and next) and the
    replay guard, counting what it accepts and rejects."""

    keys: Mapping[str, tuple[bytes, ...]]
    replay_window_s: float = 5.0
    guard: ReplayGuard = field(default_factory=ReplayGuard)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    accepted: int = 0
    reboots: int = 0  # new boot ids accepted from nodes already heard from
    # Several routers on a bus: the latest heartbeat of a node arriving again is a copy, not
    # a replay (``AlreadyHeard``). Off for a lone router, where it can only be a replay.
    copies_expected: bool = False
    copies: int = 0
    # Format 3 (routers on a bus): this router's id, and the nodes' keys for it: given
    # (``router keys derive``: then ``keys`` is empty, the nodes' own keys are not here), or
    # made from ``keys`` by ``for_router``.
    router_id: str = ""
    router_keys: Mapping[str, tuple[bytes, ...]] | None = None
    keys_router: str | None = None  # the router ``router_keys`` were derived for, if given
    _prepared: PreparedKeys | None = None

    def for_router(self, router_id: str) -> None:
        """Take format 3 for ``router_id``; ValueError if the keys were derived for another."""
        if self.keys_router is not None and self.keys_router != router_id:
            raise ValueError(
                f"the node keys were derived for router {self.keys_router}, "
                f"and this router is {router_id}: `router keys derive --router-id {router_id}`"
            )
        self.router_id = router_id
        if self.router_keys is not None:
            self._prepared = PreparedKeys(self.router_keys)
        else:
            self._prepared = PreparedKeys(self.keys, derive_for=router_id)

    def verify(self, packet: bytes, now: float | None = None) -> Heartbeat:
        """The heartbeat in ``packet``; raise Rejected (and count it) otherwise."""
        try:
            heartbeat = decode(packet, self.keys, self.router_id, self._prepared)
            now = time.time() if now is None else now
            if abs(heartbeat.ts - now) > self.replay_window_s:
                raise Rejected(
                    "stale",
                    f"node {heartbeat.node}: timestamp {heartbeat.ts:.3f} is "
                    f"{heartbeat.ts - now:+.1f} s off",
                )
            if self.copies_expected:
                last = self.guard.nodes.get(heartbeat.node)
                if last is not None and (last.boot, last.seq) == (heartbeat.boot, heartbeat.seq):
                    self.copies += 1
                    raise AlreadyHeard(heartbeat.node)
            self.guard.check(heartbeat)
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            raise
        if self.guard.commit(heartbeat):
            self.reboots += 1
        self.accepted += 1
        return heartbeat
