"""Node heartbeats on the wire: a signed JSON report in one UDP datagram.

Packet: ``MAGIC`` (3 octets) | HMAC-SHA256 over MAGIC + payload (32 octets) | payload, where
the payload is UTF-8 JSON::

    {"node": "tef-mad-1", "seq": 1042, "ts": 1795319837.96,
     "power": "mains",                       # mains | battery | battery_low | off
     "uplinks": {"up1": "up", "up2": "down"}, # up | degraded | down, per uplink
     "load_gbps": 41.5, "rps": 5200,
     "rtt": [["83.44.0.0/16", 8.2]]}          # optional samples to client prefixes

Each node signs with its own key from the secrets file. A report is accepted only if it is
well-formed, from a known node, correctly signed, newer than the last accepted one from that
node (sequence number) and stamped within the replay window of our clock. Anything else is
rejected with a reason and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import time
from dataclasses import dataclass, field

MAGIC = b"RH1"
MAX_PACKET = 1400
POWER_STATES = ("mains", "battery", "battery_low", "off")
UPLINK_STATES = ("up", "degraded", "down")
REJECT_REASONS = ("malformed", "unknown_node", "bad_signature", "replayed", "stale")


@dataclass(frozen=True)
class Heartbeat:
    node: str
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


def encode(heartbeat: Heartbeat, key: bytes) -> bytes:
    body = {
        "node": heartbeat.node, "seq": heartbeat.seq, "ts": heartbeat.ts, "power": heartbeat.power,
        "uplinks": heartbeat.uplinks, "load_gbps": heartbeat.load_gbps, "rps": heartbeat.rps,
    }  # fmt: skip
    if heartbeat.rtt:
        body["rtt"] = [list(sample) for sample in heartbeat.rtt]
    payload = json.dumps(body, separators=(",", ":")).encode()
    return MAGIC + hmac.new(key, MAGIC + payload, hashlib.sha256).digest() + payload


@dataclass
class Verifier:
    """Checks packets against node keys and remembers the last sequence per node."""

    keys: dict[str, bytes]
    replay_window_s: float = 5.0
    last_seq: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    accepted: int = 0

    def verify(self, packet: bytes, now: float | None = None) -> Heartbeat:
        """The heartbeat in ``packet``; raise Rejected (and count it) otherwise."""
        try:
            heartbeat = self._verify(packet, time.time() if now is None else now)
        except Rejected as exc:
            self.rejected[exc.reason] += 1
            raise
        self.accepted += 1
        return heartbeat

    def _verify(self, packet: bytes, now: float) -> Heartbeat:
        if (
            len(packet) > MAX_PACKET
            or len(packet) < len(MAGIC) + 32 + 2
            or not packet.startswith(MAGIC)
        ):
            raise Rejected("malformed", "not a heartbeat packet")
        mac = packet[3:35]
        payload = packet[35:]
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Rejected("malformed", f"payload is not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("node"), str):
            raise Rejected("malformed", "payload has no node id")
        node = body["node"]
        key = self.keys.get(node)
        if key is None:
            raise Rejected("unknown_node", f"no key for node {node[:64]!r}")
        expected = hmac.new(key, MAGIC + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise Rejected("bad_signature", f"bad signature for node {node}")
        heartbeat = _fields(body)
        if heartbeat.seq <= self.last_seq.get(node, -1):
            raise Rejected(
                "replayed", f"node {node}: sequence {heartbeat.seq} not after {self.last_seq[node]}"
            )
        if abs(heartbeat.ts - now) > self.replay_window_s:
            raise Rejected(
                "stale",
                f"node {node}: timestamp {heartbeat.ts:.3f} is {heartbeat.ts - now:+.1f} s off",
            )
        self.last_seq[node] = heartbeat.seq
        return heartbeat


def _fields(body: dict) -> Heartbeat:
    def number(name: str, default: float | None = None) -> float:
        value = body.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise Rejected("malformed", f"{name} must be a non-negative number")
        return float(value)

    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise Rejected("malformed", "seq must be a non-negative integer")
    power = body.get("power")
    if power not in POWER_STATES:
        raise Rejected("malformed", f"power must be one of {', '.join(POWER_STATES)}")
    uplinks = body.get("uplinks", {})
    if not isinstance(uplinks, dict) or not all(
        isinstance(k, str) and v in UPLINK_STATES for k, v in uplinks.items()
    ):
        raise Rejected("malformed", f"uplinks must map names to {', '.join(UPLINK_STATES)}")
    rtt = body.get("rtt", [])
    if not isinstance(rtt, list) or not all(
        isinstance(s, list)
        and len(s) == 2
        and isinstance(s[0], str)
        and isinstance(s[1], (int, float))
        for s in rtt
    ):
        raise Rejected("malformed", "rtt must be a list of [prefix, ms] pairs")
    return Heartbeat(
        node=body["node"], seq=seq, ts=number("ts"), power=power, uplinks=dict(uplinks),
        load_gbps=number("load_gbps", 0.0), rps=number("rps", 0.0),
        rtt=tuple((str(p), float(ms)) for p, ms in rtt),
    )  # fmt: skip
