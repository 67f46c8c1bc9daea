"""Heartbeat format 3 (routers sharing a bus): a MAC per router, made with the node's key for
that router, so that a router holding only its own keys (``router keys derive``) can check its
MAC and forge none of the others'. Checked here with the standard library alone where it
matters, as another implementation would (docs/heartbeat.md, "Format 3")."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from router.config import node_keys
from router.config.deployment import load_node_keys
from router.config.node_keys import ROUTER_KEY_LABEL, derive, router_key
from router.health.telemetry import (
    MAGIC_ROUTERS,
    Heartbeat,
    PreparedKeys,
    Rejected,
    ReplayGuard,
    Verifier,
    encode,
    parse_router_ids,
)
from tests.conftest import make_deployment

REPO = Path(__file__).resolve().parent.parent
KEY = bytes(range(32))
ROUTERS = ("r1", "r2", "r3")
NOW = 1_800_000_000.0


def beat(seq: int = 1, power: str = "mains") -> Heartbeat:
    return Heartbeat("a", "1" * 32, seq, NOW, power, {"u1": "up"}, 1.0, 2.0, ())


def router_verifier(router: str, keys_router: str | None = None) -> Verifier:
    """A router of a bus holding only its own keys of the nodes."""
    mine = {"a": (router_key(KEY, keys_router or router),)}
    verifier = Verifier({}, router_keys=mine, keys_router=keys_router or router,
                        guard=ReplayGuard(floor_ts=0.0))  # fmt: skip
    verifier.for_router(router)
    return verifier


def forged_by(router: str, heartbeat: Heartbeat) -> bytes:
    """What a compromised ``router`` can make: a packet whose MAC for itself is right (it holds
    that key) and whose MACs for the others are its best guess."""
    packet = bytearray(encode(heartbeat, b"\0" * 32, ROUTERS))  # the others' MACs: wrong
    mine = router_key(KEY, router)
    head_end = 4 + 1 + 1 + sum(1 + len(r) for r in ROUTERS)
    macs_end = head_end + 16 * len(ROUTERS)
    signed = bytes(packet[:head_end]) + bytes(packet[macs_end:])
    at = head_end + 16 * ROUTERS.index(router)
    packet[at : at + 16] = hmac.new(mine, signed, hashlib.sha256).digest()[:16]
    return bytes(packet)


def test_every_router_named_accepts_the_nodes_packet() -> None:
    packet = encode(beat(), KEY, ROUTERS)
    assert packet.startswith(MAGIC_ROUTERS)
    for router in ROUTERS:
        assert router_verifier(router).verify(packet, now=NOW) == beat()


def test_a_compromised_router_cannot_forge_node_state_at_the_others() -> None:
    forged = forged_by("r1", beat(seq=9, power="off"))
    assert router_verifier("r1").verify(forged, now=NOW).power == "off"  # its own key: yes
    for router in ("r2", "r3"):
        with pytest.raises(Rejected) as info:
            router_verifier(router).verify(forged, now=NOW)
        assert info.value.reason == "bad_signature"


def test_changing_the_routers_named_breaks_every_mac() -> None:
    packet = bytearray(encode(beat(), KEY, ROUTERS))
    at = packet.index(b"r3")
    packet[at : at + 2] = b"r4"  # a router dropped from the list, another put in
    for router in ("r1", "r2"):
        with pytest.raises(Rejected) as info:
            router_verifier(router).verify(bytes(packet), now=NOW)
        assert info.value.reason == "bad_signature"


def test_a_router_the_node_did_not_sign_for_says_whom_it_did() -> None:
    with pytest.raises(Rejected) as info:
        router_verifier("r9").verify(encode(beat(), KEY, ROUTERS), now=NOW)
    assert info.value.reason == "bad_signature"
    assert "signed for routers r1, r2, r3, not for router r9" in info.value.detail


def test_format_2_needs_the_nodes_own_key_which_a_router_of_a_bus_does_not_hold() -> None:
    with pytest.raises(Rejected) as info:
        router_verifier("r1").verify(encode(beat(), KEY), now=NOW)
    assert info.value.reason == "unknown_node" and "RH3" in info.value.detail


def test_a_router_given_the_nodes_own_keys_takes_both_formats() -> None:
    verifier = Verifier({"a": (KEY,)}, guard=ReplayGuard(floor_ts=0.0))
    verifier.for_router("r2")
    assert verifier.verify(encode(beat(1), KEY), now=NOW).seq == 1
    assert verifier.verify(encode(beat(2), KEY, ROUTERS), now=NOW).seq == 2


def test_the_keys_made_on_the_fly_are_the_derived_ones() -> None:
    made = PreparedKeys({"a": (KEY, b"n" * 32)}, derive_for="r2")
    derived = derive({"a": {"current": KEY.hex(), "next": (b"n" * 32).hex()}}, "r2")
    given = PreparedKeys({"a": tuple(bytes.fromhex(derived["a"][k]) for k in ("current", "next"))})
    for on_the_fly, from_file in zip(made["a"], given["a"], strict=True):
        assert on_the_fly.copy().digest() == from_file.copy().digest()  # keyed alike
    # The derivation, by the standard library alone (docs/heartbeat.md).
    r2 = hmac.new(KEY, b"router heartbeat key\x00r2", hashlib.sha256).digest()
    assert made["a"][0].copy().digest() == hmac.new(r2, b"", hashlib.sha256).digest()
    assert ROUTER_KEY_LABEL == b"router heartbeat key\x00"


def test_keys_derived_for_another_router_are_refused() -> None:
    verifier = Verifier({}, router_keys={"a": (router_key(KEY, "r1"),)}, keys_router="r1")
    with pytest.raises(ValueError, match="derived for router r1, and this router is r2"):
        verifier.for_router("r2")


def test_the_format_3_mac_by_the_standard_library_alone() -> None:
    packet = encode(beat(), KEY, ("r1", "r2"))
    head = b"RH3" + bytes([1]) + b"a" + bytes([2]) + b"\x02r1\x02r2"
    assert packet.startswith(head)
    payload = packet[len(head) + 32 :]
    assert json.loads(payload)["node"] == "a"
    for i, router in enumerate(("r1", "r2")):
        key = hmac.new(KEY, b"router heartbeat key\x00" + router.encode(), hashlib.sha256).digest()
        mac = hmac.new(key, head + payload, hashlib.sha256).digest()[:16]
        assert packet[len(head) + 16 * i : len(head) + 16 * (i + 1)] == mac


@pytest.mark.parametrize("text", ["r1,r1", "r 1", "a.b", ",".join(f"r{i}" for i in range(33))])
def test_bad_router_ids_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_router_ids(text)


def test_router_keys_derive_writes_one_routers_keys(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    own = tmp_path / "own.yaml"
    cli = [sys.executable, "-m", "router.cli", "keys"]
    run = lambda *args: subprocess.run(  # noqa: E731
        [*cli, *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert run("generate", "--zones", str(zones), "--out", str(own)).returncode == 0
    out = tmp_path / "r2.yaml"
    done = run("derive", "--keys", str(own), "--router-id", "r2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = yaml.safe_load(out.read_text())
    assert doc["router"] == "r2" and node_keys.read_router(out) == "r2"
    entries = node_keys.read_entries(own)
    node = next(iter(entries))
    assert doc["keys"][node] == router_key(bytes.fromhex(entries[node]["current"]), "r2").hex()
    keys, problems = load_node_keys(out, str(out), None)
    assert problems == [] and len(keys) == len(entries)
    # A derived file is no source for another router's keys, and sample keys are public.
    again = run("derive", "--keys", str(out), "--router-id", "r3", "--out", str(tmp_path / "x"))
    assert again.returncode == 2 and "derived for a router already" in again.stderr
    sample = run("derive", "--keys", str(zones / "node-keys.sample.yaml"), "--router-id", "r1",
                 "--out", str(tmp_path / "y"))  # fmt: skip
    assert sample.returncode == 2 and "published sample keys" in sample.stderr


def test_nodes_naming_other_router_lists_are_each_read_right() -> None:
    """The router list last seen is remembered (most nodes name the same): one that differs is
    parsed again, never read as the remembered one."""
    verifier = router_verifier("r1")
    assert verifier.verify(encode(beat(1), KEY, ROUTERS), now=NOW).seq == 1
    assert verifier.verify(encode(beat(2), KEY, ("r2", "r1")), now=NOW).seq == 2
    assert verifier.verify(encode(beat(3), KEY, ("r1", "r2", "r3", "r4")), now=NOW).seq == 3
    with pytest.raises(Rejected) as info:
        verifier.verify(encode(beat(4), KEY, ("r2", "r3")), now=NOW)
    assert info.value.reason == "bad_signature"
    assert verifier.verify(encode(beat(5), KEY, ROUTERS), now=NOW).seq == 5
