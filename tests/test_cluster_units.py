"""The cluster's pure parts: peer messages and their checks, the probe quorum, the demand
sum, agreement, and the --bus flags (no NATS server: tests/test_cluster.py has those)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from router.cluster.bus import BusError, parse_servers
from router.cluster.messages import (
    MessageError,
    admin_key,
    decode_admin,
    decode_demand,
    decode_state,
    encode_admin,
    encode_demand,
    encode_state,
    node_of_key,
)
from router.cluster.peers import (
    PEER_TIMEOUT_S,
    DemandReport,
    Peer,
    PeerTable,
    RouterState,
    majority,
    probe_quorum,
)
from router.health.telemetry import AlreadyHeard, Heartbeat, Rejected, Verifier, encode


def state(rid: str, digest: str = "d1", failing: dict[str, str] | None = None,
          probing: bool = True, version: str = "v1") -> RouterState:  # fmt: skip
    return RouterState(rid, version, 7, digest, False, probing, failing or {}, 1.0)


def test_state_round_trip_and_a_forged_sender_is_refused() -> None:
    s = state("r2", failing={"n1": "x" * 500})
    back = decode_state(encode_state(s), "r2")
    assert back.router_id == "r2" and back.table_digest == "d1"
    assert back.probes_failing == {"n1": "x" * 120}  # reasons are bounded
    with pytest.raises(MessageError, match="sent as 'r3'"):
        decode_state(encode_state(s), "r3")  # on another router's subject


@pytest.mark.parametrize(
    "data, says",
    [
        (b"not json", "state message"),
        (b'{"v": 1}', "router_id"),
        (
            json.dumps(
                {
                    "v": 1,
                    "router_id": "r2",
                    "config_version": "v",
                    "table_generation": -1,
                    "table_digest": "d",
                    "isolated": False,
                    "probing": True,
                    "probes_failing": {},
                    "sent_at": 1.0,
                }
            ).encode(),
            "table_generation",
        ),  # fmt: skip
        (b"x" * (2 << 20), "bytes"),
    ],
)
def test_bad_state_messages_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(MessageError, match=says):
        decode_state(data, "r2")


def test_demand_round_trip_sparse_and_checked() -> None:
    qps = np.zeros((2, 5))
    qps[0, 1], qps[1, 4] = 3.5, 120.25
    data = encode_demand("r2", "v1", 99, qps, 12.5)
    assert decode_demand(data, "r2", (2, 5))[3] == 12.5
    version, epoch, back, _ = decode_demand(data, "r2", (2, 5))
    assert (version, epoch) == ("v1", 99) and np.allclose(back, qps)
    _, _, other, _ = decode_demand(data, "r2", (3, 5))  # another config's groups
    assert other.size == 0
    with pytest.raises(MessageError, match="sent as"):
        decode_demand(data, "r9", (2, 5))
    with pytest.raises(MessageError, match="bytes for"):
        decode_demand(data[:-3], "r2", (2, 5))
    bad = bytearray(data)
    bad[-4:] = np.array([-1.0], dtype="<f4").tobytes()
    with pytest.raises(MessageError, match="negative"):
        decode_demand(bytes(bad), "r2", (2, 5))


def test_admin_entries_and_keys() -> None:
    assert decode_admin(encode_admin("drain", "r1")) == ("drain", "r1")
    with pytest.raises(MessageError, match="up, down or drain"):
        decode_admin(b'{"state": "off", "router_id": "r1"}')
    for node in ("tef-mad-1", "odd node/é", "b64.trick"):
        key = admin_key(node)
        assert node_of_key(key) == node
    assert admin_key("tef-mad-1") == "tef-mad-1"


def test_probe_quorum_is_a_majority_of_the_probing_routers() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    peers = [Peer(state("r2"), 0.0), Peer(state("r3"), 0.0)]
    # One router of three fails the node: not withdrawn.
    assert probe_quorum("r1", True, {"n1": "timeout"}, peers) == {}
    # Two of three: withdrawn, saying who.
    peers[0] = Peer(state("r2", failing={"n1": "refused"}), 0.0)
    routers, probers, need, why = probe_quorum("r1", True, {"n1": "timeout"}, peers)["n1"]
    assert (routers, probers, need, why) == (["r1", "r2"], 3, 2, "timeout")
    # A router that does not probe neither counts nor votes.
    quiet = [Peer(state("r2", failing={"n1": "x"}, probing=False), 0.0)]
    assert probe_quorum("r1", True, {}, quiet) == {}
    # Cut off the bus (no peers): this router's own probes decide alone.
    assert "n1" in probe_quorum("r1", True, {"n1": "t"}, [])
    # A share instead of a majority: one of three with 0.3.
    assert "n1" in probe_quorum(
        "r1", True, {"n1": "t"}, [Peer(state("r2"), 0), Peer(state("r3"), 0)], 0.3
    )


def test_demand_is_the_sum_of_the_latest_epoch_every_live_router_reported() -> None:
    table = PeerTable("r1")
    table.observe(state("r2"), 10.0)
    table.observe(state("r3"), 10.0)
    table.observe(state("r9", version="v0"), 10.0)  # on another config: never waited for

    def report(
        rid: str, epoch: int, row: list[float], gbps: float = 0.0, version: str = "v1"
    ) -> None:
        table.observe_demand(DemandReport(rid, version, epoch, np.array([row]), 10.0, gbps))

    report("r1", 100, [1.0, 0.0, 2.0], gbps=40.0)
    report("r2", 100, [0.0, 5.0, 1.0], gbps=41.0)
    report("r3", 100, [1.0, 1.0, 1.0], gbps=39.0)
    report("r9", 100, [9.0, 9.0, 9.0], version="v0")
    report("r1", 101, [2.0, 0.0, 0.0])
    report("r2", 101, [2.0, 0.0, 0.0])  # r3 has not reported 101 yet: 100 is the latest complete
    assert table.complete_epochs("v1", 10.5, None) == [100]  # r3 has not reported 101 yet
    total, gbps = table.epoch_demand(100, "v1", 10.5)
    assert total.tolist() == [[2.0, 6.0, 4.0]]
    assert gbps == 40.0  # the lowest router id's view of the load: one number for all
    report("r3", 101, [0.0, 0.0, 1.0])
    assert table.complete_epochs("v1", 10.5, 100) == [101]
    total, _ = table.epoch_demand(101, "v1", 10.5)
    assert total.tolist() == [[4.0, 0.0, 1.0]]
    # Peers gone quiet are not waited for: this router's own epoch alone.
    later = 10.0 + PEER_TIMEOUT_S + 0.5
    report("r1", 102, [7.0, 0.0, 0.0])
    assert table.expire(later)
    assert table.complete_epochs("v1", later, 101) == [102]
    assert table.epoch_demand(102, "v1", later)[0].tolist() == [[7.0, 0.0, 0.0]]
    assert PeerTable("r1").epoch_demand(5, "v1", 0.0) is None  # nothing reported yet


def test_agreement_compares_config_and_table_of_live_peers() -> None:
    table = PeerTable("r1")
    assert table.observe(state("r2"), 10.0)
    assert not table.observe(state("r2"), 10.5)  # nothing new for the quorum
    assert not table.observe(state("r1"), 10.5)  # our own echo is not a peer
    agree, rows = table.agreement(state("r1"), 11.0)
    assert agree and rows[0]["agrees"] and rows[0]["live"]
    table.observe(state("r3", digest="other"), 11.0)
    agree, rows = table.agreement(state("r1"), 11.0)
    assert not agree and [r["agrees"] for r in rows] == [True, False]
    # A peer gone quiet no longer counts against agreement, and is listed as not live.
    agree, rows = table.agreement(state("r1"), 11.0 + PEER_TIMEOUT_S + 1)
    assert agree and not any(r["live"] for r in rows)


def test_a_copy_of_the_last_heartbeat_is_already_heard_only_with_copies_expected() -> None:
    key = b"k" * 32
    stamped = time.time() + 1.0  # after the verifiers' start floor
    hb = Heartbeat("n1", "b" * 32, 5, stamped, "mains", {"uplink1": "up"}, 1.0, 10.0)
    packet = encode(hb, key)
    lone = Verifier({"n1": (key,)})
    lone.verify(packet)
    with pytest.raises(Rejected, match="replayed"):
        lone.verify(packet)  # a lone router: the same packet again is a replay
    shared = Verifier({"n1": (key,)}, copies_expected=True)
    shared.verify(packet)
    with pytest.raises(AlreadyHeard):
        shared.verify(packet)
    assert shared.copies == 1 and shared.rejected["replayed"] == 0
    older = encode(Heartbeat("n1", "b" * 32, 4, stamped, "mains", {}, 1.0, 1.0), key)
    with pytest.raises(Rejected, match="replayed"):
        shared.verify(older)  # an older one is still a replay


def test_bus_servers_are_parsed_with_clear_errors() -> None:
    assert parse_servers("nats://127.0.0.1:4222,127.0.0.1:4223") == (
        "nats://127.0.0.1:4222", "nats://127.0.0.1:4223",
    )  # fmt: skip
    for text, says in (("nats://h", "HOST:PORT"), ("http://h:1", "scheme"), ("a:1,,b:2", "item 2"),
                       ("nats://u:p@h:1", "no credentials"), ("nats://h:x", "not a number")):  # fmt: skip
        with pytest.raises(BusError, match=says):
            parse_servers(text)


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--bus", "nats://127.0.0.1:4222"], "needs --router-id"),
        (["--router-id", "r1"], "--router-id needs --bus"),
        (["--bus", "nats://127.0.0.1:4222", "--router-id", "r.1"], "letters, digits"),
        (["--bus", "nats://192.0.2.1:4222", "--router-id", "r1"], "off loopback"),
        (["--bus", "nats://127.0.0.1:4222", "--router-id", "r1", "--probe-quorum", "0"], "above 0"),
        (
            ["--bus", "nats://127.0.0.1:4222", "--router-id", "r1", "--bus-creds", "/nonexistent"],
            "not a readable file",
        ),  # fmt: skip
    ],
)
def test_bad_bus_flags_are_refused_before_anything_starts(flags: list[str], says: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "serve", "--zones", "zones", "--listen", "127.0.0.1:0",
         *flags],  # fmt: skip
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert says in done.stderr


def test_the_bus_servers_off_loopback_are_named() -> None:
    from router.service.exposure import bus_servers_off_loopback

    servers = ("nats://127.0.0.1:4222", "nats://[::1]:4222", "nats://localhost:4222",
               "nats://[2001:db8::1]:4222", "nats://nats-1:4222", "nats://192.0.2.1:4222")  # fmt: skip
    assert bus_servers_off_loopback(servers) == list(servers[3:])
