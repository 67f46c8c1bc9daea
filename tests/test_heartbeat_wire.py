"""Heartbeat format 2 on the wire: the order of checks, the strict schema, boot ids and
replays across restarts of either side, key rotation, and the test vector of
docs/heartbeat.md (checked here with the standard library alone, as another implementation
would)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest

from router.health import telemetry
from router.health.telemetry import (
    MAGIC,
    Heartbeat,
    Rejected,
    ReplayGuard,
    Verifier,
    decode,
    encode,
    new_boot_id,
)

REPO = Path(__file__).resolve().parent.parent
KEY_A, KEY_B = b"k" * 32, b"j" * 32
KEYS = {"a": (KEY_A,), "b": (KEY_B,)}
NOW = 1_800_000_000.0
BOOT1, BOOT2 = "1" * 32, "2" * 32


def beat(node="a", boot=BOOT1, seq=1, ts=NOW, power="mains", **over) -> Heartbeat:
    fields = {"uplinks": {"u1": "up"}, "load_gbps": 10.0, "rps": 100.0, "rtt": ()} | over
    return Heartbeat(node, boot, seq, ts, power, **fields)


def verifier() -> Verifier:
    return Verifier(dict(KEYS), guard=ReplayGuard(floor_ts=0.0))


def signed(body: dict | bytes, key: bytes = KEY_A, node: str = "a") -> bytes:
    """A packet with any payload, correctly signed: what a buggy or hostile node could send."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    head = MAGIC + bytes([len(node)]) + node.encode()
    return head + hmac.new(key, head + payload, hashlib.sha256).digest() + payload


def body(**over) -> dict:
    good = {"v": 2, "node": "a", "boot": BOOT1, "seq": 1, "ts": NOW, "power": "mains",
            "uplinks": {"u1": "up"}, "load_gbps": 1.0, "rps": 2.0, "rtt": []}  # fmt: skip
    return {k: v for k, v in (good | over).items() if v is not ...}


def test_round_trip() -> None:
    hb = beat(rtt=(("83.44.0.0/16", 8.25),))
    assert verifier().verify(encode(hb, KEY_A), now=NOW) == hb


SCHEMA = [
    ("missing uplinks", body(uplinks=...), "uplinks"),
    ("missing load", body(load_gbps=...), "load_gbps"),
    ("missing boot", body(boot=...), "boot"),
    ("unknown field", body(extra=1), "extra"),
    ("old version", body(v=1), "v"),
    ("negative seq", body(seq=-1), "seq"),
    ("float seq", body(seq=1.0), "seq"),
    ("bool ts", body(ts=True), "ts"),
    ("string load", body(load_gbps="1"), "load_gbps"),
    ("nan load", b'{"v":2,"node":"a","boot":"' + BOOT1.encode() + b'","seq":1,"ts":1.8e9,'
     b'"power":"mains","uplinks":{},"load_gbps":NaN,"rps":0,"rtt":[]}', "load_gbps"),
    ("bad power", body(power="nuclear"), "power"),
    ("bad uplink", body(uplinks={"u": "flaky"}), "uplinks"),
    ("too many uplinks", body(uplinks={f"u{i}": "up" for i in range(17)}), "uplinks"),
    ("bad boot", body(boot="not-hex"), "boot"),
    ("rtt not pairs", body(rtt=[["83.44.0.0/16"]]), "rtt"),
    ("not an object", [1, 2], "payload"),
    ("not JSON", b"{not json", "payload"),
    ("other node in payload", body(node="b"), "header"),
]  # fmt: skip


@pytest.mark.parametrize("case, payload, named", SCHEMA, ids=[c for c, _, _ in SCHEMA])
def test_signed_but_off_schema_is_malformed_and_names_the_field(case, payload, named) -> None:
    v = verifier()
    with pytest.raises(Rejected) as info:
        v.verify(signed(payload), now=NOW)
    assert info.value.reason == "malformed"
    assert named in info.value.detail or named == "payload", info.value.detail
    assert v.rejected["malformed"] == 1 and v.accepted == 0 and v.guard.nodes == {}


def test_the_signature_is_checked_before_anything_is_parsed(monkeypatch) -> None:
    """A packet with a bad MAC never reaches the JSON parser, whatever its payload."""
    parsed = []
    real = telemetry._PAYLOAD

    class Spy:
        @staticmethod
        def validate_json(data):  # noqa: ANN001, ANN205
            parsed.append(data)
            return real.validate_json(data)

    monkeypatch.setattr(telemetry, "_PAYLOAD", Spy)
    forged = bytearray(signed(body()))
    forged[-2] ^= 1
    with pytest.raises(Rejected) as info:
        decode(bytes(forged), KEYS)
    assert info.value.reason == "bad_signature" and parsed == []
    with pytest.raises(Rejected) as info:
        decode(signed(b"{" * 1000, node="zz"), KEYS)
    assert info.value.reason == "unknown_node" and parsed == []
    decode(signed(body()), KEYS)
    assert len(parsed) == 1


FRAMING = [
    ("empty", b""),
    ("no magic", b"hello world" * 5),
    ("format 1", b"RH1" + b"\0" * 40),
    ("zero-length id", MAGIC + b"\0" + b"\0" * 40),
    ("id longer than packet", MAGIC + b"\x40a"),
    ("over size", signed(body()) + b" " * 1400),
    ("id not UTF-8", MAGIC + b"\x02\xff\xfe" + b"\0" * 40),
]


@pytest.mark.parametrize("case, packet", FRAMING, ids=[c for c, _ in FRAMING])
def test_framing_errors_are_malformed(case, packet) -> None:
    with pytest.raises(Rejected) as info:
        verifier().verify(packet, now=NOW)
    assert info.value.reason == "malformed"


def test_other_rejections() -> None:
    for reason, packet in [
        ("unknown_node", encode(beat(node="zz"), KEY_A)),
        ("bad_signature", encode(beat(), KEY_B)),
        ("stale", encode(beat(ts=NOW - 60), KEY_A)),
        ("stale", encode(beat(ts=NOW + 60), KEY_A)),
    ]:
        v = verifier()
        with pytest.raises(Rejected) as info:
            v.verify(packet, now=NOW)
        assert info.value.reason == reason and v.rejected[reason] == 1


def test_sequence_within_a_boot_must_grow() -> None:
    v = verifier()
    packet = encode(beat(seq=5), KEY_A)
    v.verify(packet, now=NOW)
    for replay in (packet, encode(beat(seq=4, ts=NOW + 1), KEY_A)):
        with pytest.raises(Rejected) as info:
            v.verify(replay, now=NOW + 1)
        assert info.value.reason == "replayed"
    v.verify(encode(beat(seq=6, ts=NOW + 1), KEY_A), now=NOW + 1)


def test_a_restarted_agent_is_accepted_at_once_and_its_old_boot_never_again() -> None:
    v = verifier()
    old_boot = [encode(beat(seq=1000 + i, ts=NOW + i), KEY_A) for i in range(3)]
    for i, packet in enumerate(old_boot):
        v.verify(packet, now=NOW + i)
    # The agent restarts: a new boot id, counting from 1 again.
    v.verify(encode(beat(boot=BOOT2, seq=1, ts=NOW + 3), KEY_A), now=NOW + 3)
    assert v.reboots == 1 and v.guard.nodes["a"].boot == BOOT2
    for packet in old_boot:  # captured before the restart, replayed within the window
        with pytest.raises(Rejected) as info:
            v.verify(packet, now=NOW + 3.5)
        assert info.value.reason == "replayed" and "older than the boot" in info.value.detail
    v.verify(encode(beat(boot=BOOT2, seq=2, ts=NOW + 4), KEY_A), now=NOW + 4)


def test_a_restarted_router_accepts_nothing_stamped_before_it_started() -> None:
    before = verifier()
    captured = encode(beat(seq=7, ts=NOW), KEY_A)
    before.verify(captured, now=NOW)
    # The router restarts 2 s later and has forgotten everything (no state file).
    after = Verifier(dict(KEYS), guard=ReplayGuard(floor_ts=NOW + 2))
    with pytest.raises(Rejected) as info:
        after.verify(captured, now=NOW + 2.5)  # still inside the 5 s freshness window
    assert info.value.reason == "replayed" and "before this router's start" in info.value.detail
    # The node, which never restarted, goes on: same boot, next sequence.
    after.verify(encode(beat(seq=8, ts=NOW + 3), KEY_A), now=NOW + 3)


def test_the_replay_memory_survives_a_router_restart_through_its_snapshot() -> None:
    first = verifier()
    first.verify(encode(beat(seq=9, ts=NOW), KEY_A), now=NOW)
    saved = json.loads(json.dumps(first.guard.snapshot()))
    guard = ReplayGuard(floor_ts=NOW - 100)  # a router clock stepped back at restart
    assert guard.restore(saved) is None
    assert guard.floor_ts == NOW and guard.nodes["a"].seq == 9
    second = Verifier(dict(KEYS), guard=guard)
    with pytest.raises(Rejected):
        second.verify(encode(beat(seq=9, ts=NOW), KEY_A), now=NOW)
    assert ReplayGuard().restore({"nodes": 3}) is not None  # unreadable: a warning, no crash


def test_a_node_in_key_rotation_signs_with_either_key() -> None:
    v = Verifier({"a": (KEY_A, KEY_B)}, guard=ReplayGuard(floor_ts=0.0))
    v.verify(encode(beat(seq=1), KEY_A), now=NOW)
    v.verify(encode(beat(seq=2), KEY_B), now=NOW)
    with pytest.raises(Rejected):
        v.verify(encode(beat(seq=3), b"x" * 32), now=NOW)


def test_boot_ids_are_random_and_well_formed() -> None:
    ids = {new_boot_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)


def test_the_encoder_refuses_what_the_router_would_reject() -> None:
    with pytest.raises(ValueError):
        encode(beat(node="n" * 65), KEY_A)
    with pytest.raises(ValueError):  # too many RTT samples for one datagram
        encode(beat(rtt=tuple((f"10.{i}.0.0/16", 1.0) for i in range(64))), KEY_A)


# -- the test vector of docs/heartbeat.md ---------------------------------------------------


def _vector() -> dict[str, str]:
    text = (REPO / "docs" / "heartbeat.md").read_text(encoding="utf-8")
    section = text.split("## Test vector", 1)[1]
    found = dict(re.findall(r"^- `(\w+)`: `([^`]*)`", section, re.M))
    assert {"key", "header", "payload", "mac", "packet"} <= set(found), found
    return found


def test_the_documented_vector_verifies_with_the_standard_library_and_the_router() -> None:
    vector = _vector()
    key = bytes.fromhex(vector["key"])
    header, payload = bytes.fromhex(vector["header"]), vector["payload"].encode()
    mac = hmac.new(key, header + payload, hashlib.sha256).hexdigest()
    assert mac == vector["mac"]
    packet = bytes.fromhex(vector["packet"])
    assert packet == header + bytes.fromhex(mac) + payload
    heartbeat = decode(packet, {"tef-mad-1": (key,)})
    assert (heartbeat.node, heartbeat.seq, heartbeat.power) == ("tef-mad-1", 42, "mains")
    assert heartbeat.uplinks == {"wan1": "up", "wan2": "down"}
    # And the router's encoder writes exactly these bytes for these fields.
    assert encode(heartbeat, key) == packet


def test_the_intake_verifies_without_holding_the_health_lock() -> None:
    """A flood of forged packets must never hold up the lock that table work needs."""
    import threading
    from types import SimpleNamespace

    from router.service.intake import TelemetryIntake

    lock = threading.Lock()
    held_while_verifying = []

    class Spy(Verifier):
        def verify(self, packet: bytes, now: float | None = None) -> Heartbeat:
            held_while_verifying.append(lock.locked())
            return super().verify(packet, now)

    spy = Spy(dict(KEYS), guard=ReplayGuard(floor_ts=0.0))
    service = SimpleNamespace(
        health_lock=lock, config=SimpleNamespace(verifier=spy), publisher=SimpleNamespace()
    )
    intake = TelemetryIntake(service)  # type: ignore[arg-type]
    for _ in range(3):
        intake.on_heartbeat(encode(beat(), KEY_B))  # forged: rejected before any lock
    assert held_while_verifying == [False, False, False]
    assert spy.rejected["bad_signature"] == 3


def test_any_bytes_are_either_a_heartbeat_or_a_counted_rejection() -> None:
    """Random and mutated packets: never an exception other than Rejected."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    valid = encode(beat(), KEY_A)

    @settings(max_examples=400, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=1500),
            st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
                lambda m: valid[: m[0]] + bytes([m[1]]) + valid[m[0] + 1 :]
            ),
            st.integers(0, len(valid)).map(lambda n: valid[:n]),
        )
    )
    def check(packet: bytes) -> None:
        v = verifier()
        try:
            v.verify(packet, now=NOW)
        except Rejected as exc:
            assert exc.reason in telemetry.REJECT_REASONS
            assert sum(v.rejected.values()) == 1
        else:
            assert packet == valid  # only the untouched packet can pass

    check()
