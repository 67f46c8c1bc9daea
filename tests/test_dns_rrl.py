"""Response rate limiting (router/dns/rrl.py): the buckets, classes and slip on their own, then
a real router flooded from loopback with the loopback allow-list emptied, over both UDP paths."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import numpy as np
import pytest
import yaml

from router.dns import rrl
from tests.conftest import make_deployment, start_router


def _reply(name: str, rcode: int = 0, answers: bool = True) -> bytes:
    query = dns.message.make_query(name, "A")
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    if answers and rcode == 0:
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.1"))
    if rcode == dns.rcode.NXDOMAIN:
        reply.authority.append(
            dns.rrset.from_text("cdn.example.", 60, "IN", "SOA", "ns1.cdn.example. h.cdn.example. 1 2 3 4 5")
        )  # fmt: skip
    return reply.to_wire()


class Limiter:
    def __init__(self, rate: int = 10, slip: int = 2, allow: tuple[str, ...] = ()) -> None:
        self.state = rrl.RrlState(rrl.RrlSettings(rate=rate, slip=slip, allow=allow))

    def decide(self, wire: bytes, source: str, now_ms: int) -> int:
        value = int(__import__("ipaddress").ip_address(source))
        v6 = ":" in source
        hi, lo = (value >> 64, value & (2**64 - 1)) if v6 else (0, value)
        out = np.frombuffer(wire, dtype=np.uint8).copy()
        s = self.state
        return rrl.decide(out, len(wire), v6, np.uint64(hi), np.uint64(lo), now_ms, s.table, s.params,
                          s.allow_v4, s.allow_v6, s.counters)  # fmt: skip


def test_a_bucket_holds_one_second_and_refills_at_the_rate() -> None:
    limiter = Limiter(rate=10, slip=0)
    wire = _reply("www.cdn.example.")
    assert [limiter.decide(wire, "198.51.100.7", 1000) for _ in range(12)] == [rrl.SEND] * 10 + [
        rrl.DROP
    ] * 2
    assert limiter.decide(wire, "198.51.100.7", 1050) == rrl.DROP  # 0.5 of a token
    assert limiter.decide(wire, "198.51.100.7", 1100) == rrl.SEND  # one token back after 100 ms
    assert int(limiter.state.counters[rrl.CLASS_ANSWER, rrl.C_DROPPED]) == 3


def test_the_key_is_prefix_class_and_name() -> None:
    limiter = Limiter(rate=2, slip=0)
    www, video = _reply("www.cdn.example."), _reply("video.cdn.example.")
    for _ in range(2):
        assert limiter.decide(www, "198.51.100.7", 0) == rrl.SEND
    assert limiter.decide(www, "198.51.100.200", 0) == rrl.DROP  # the same /24
    assert (
        limiter.decide(www.replace(b"\x03www", b"\x03WWW"), "198.51.100.9", 0) == rrl.DROP
    )  # case
    assert limiter.decide(video, "198.51.100.7", 0) == rrl.SEND  # another name
    assert limiter.decide(www, "198.51.101.7", 0) == rrl.SEND  # another /24
    assert limiter.decide(www, "2001:db8:1:200::1", 0) == rrl.SEND
    assert limiter.decide(www, "2001:db8:1:200::1", 0) == rrl.SEND
    assert limiter.decide(www, "2001:db8:1:2ff::9", 0) == rrl.DROP  # the same /56
    assert limiter.decide(www, "2001:db8:1:300::1", 0) == rrl.SEND  # another /56


def test_random_nxdomain_names_share_their_zones_bucket() -> None:
    limiter = Limiter(rate=5, slip=0)
    sent = [
        limiter.decide(_reply(f"r{i}.cdn.example.", dns.rcode.NXDOMAIN), "203.0.113.5", 0)
        for i in range(20)
    ]
    assert sent.count(rrl.SEND) == 5
    assert int(limiter.state.counters[rrl.CLASS_NXDOMAIN, rrl.C_DROPPED]) == 15
    refused = _reply("other.example.", dns.rcode.REFUSED, answers=False)
    assert [limiter.decide(refused, "203.0.113.5", 0) for _ in range(6)].count(rrl.SEND) == 5


def test_slip_truncates_every_kth_limited_reply() -> None:
    limiter = Limiter(rate=1, slip=2)
    wire = _reply("www.cdn.example.")
    actions = [limiter.decide(wire, "198.51.100.7", 0) for _ in range(7)]
    assert actions == [rrl.SEND, rrl.DROP, rrl.SLIP, rrl.DROP, rrl.SLIP, rrl.DROP, rrl.SLIP]
    out = np.frombuffer(wire, dtype=np.uint8).copy()
    short = dns.message.from_wire(out[: rrl.truncate(out, len(wire))].tobytes())
    assert (
        short.flags & dns.flags.TC
        and not short.answer
        and short.question[0].name.to_text() == "www.cdn.example."
    )


def test_the_allow_list_and_rate_zero_are_never_limited() -> None:
    limiter = Limiter(rate=1, slip=0, allow=("198.51.100.0/24", "2001:db8::/32"))
    wire = _reply("www.cdn.example.")
    assert all(limiter.decide(wire, "198.51.100.7", 0) == rrl.SEND for _ in range(5))
    assert all(limiter.decide(wire, "2001:db8::7", 0) == rrl.SEND for _ in range(5))
    assert all(limiter.decide(wire, "::ffff:198.51.100.7", 0) == rrl.SEND for _ in range(5))
    assert Limiter(rate=0).decide(wire, "203.0.113.1", 0) == rrl.SEND


def test_the_table_stays_bounded_under_many_keys() -> None:
    limiter = Limiter(rate=1, slip=0)
    for i in range(3 * rrl.TABLE_SLOTS // 2):
        limiter.decide(_reply(f"n{i}.cdn.example."), "198.51.100.7", i)
    assert limiter.state.table.shape == (rrl.TABLE_SLOTS, 4)
    assert np.count_nonzero(limiter.state.table[:, rrl.T_KEY]) <= rrl.TABLE_SLOTS


def _limited_router(tmp_path: Path, path: str, rate: int = 50):  # noqa: ANN202
    zones = make_deployment(tmp_path)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["rrl"] = {"rate": rate, "slip": 2, "allow": []}  # loopback limited like any client
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    return start_router(zones, tmp_path / "router.log", "--udp-path", path, workers=1)


def _flood(
    host: str, port: int, source: str, count: int, name: str = "www.cdn.example"
) -> tuple[int, int]:
    """``count`` queries as fast as they go, then what came back: (full answers, truncated)."""
    wire = dns.message.make_query(name, "A").to_wire()
    full = truncated = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        for _ in range(count):
            s.sendto(wire, (host, port))
        s.settimeout(0.5)
        try:
            while True:
                reply = dns.message.from_wire(s.recv(65535))
                if reply.flags & dns.flags.TC:
                    truncated += 1
                else:
                    full += 1
        except TimeoutError:
            pass
    return full, truncated


@pytest.mark.parametrize("path", ["batched", "per-packet"])
def test_a_flooding_prefix_is_limited_and_others_are_not(tmp_path: Path, path: str) -> None:
    router = _limited_router(tmp_path, path)
    try:
        started = time.monotonic()
        full, truncated = _flood(router.host, router.port, "127.0.0.1", 2000)
        seconds = time.monotonic() - started
        # One second's burst plus the refill while the flood lasted, and about half of the
        # rest truncated (slip 2): a real client there retries over TCP.
        assert 50 <= full <= 50 + 50 * seconds + 5, (full, seconds)
        limited = 2000 - full
        assert abs(truncated - limited / 2) <= 0.05 * limited + 5, (truncated, limited)
        other_full, _ = _flood(router.host, router.port, "127.0.1.1", 40)  # another /24
        assert other_full == 40
        tcp = dns.query.tcp(dns.message.make_query("www.cdn.example", "A"), router.host, port=router.port,
                            timeout=3, source="127.0.0.1")  # fmt: skip
        assert tcp.answer and not tcp.flags & dns.flags.TC  # TCP is never limited
        with urllib.request.urlopen(f"{router.api}/v1/dns", timeout=5) as response:  # noqa: S310
            counted = json.loads(response.read())["rrl"]
        answer = counted["limited"]["answer"]
        assert counted["rate"] == 50
        assert answer["dropped"] + answer["slipped"] == limited and answer["slipped"] == truncated
    finally:
        router.stop()
        router.process.stdout.close()


def test_the_query_log_marks_limited_responses(tmp_path: Path) -> None:
    zones = make_deployment(tmp_path)
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    settings["rrl"] = {"rate": 5, "slip": 2, "allow": []}
    (zones / "deployment.yaml").write_text(yaml.safe_dump(settings))
    log = tmp_path / "queries.jsonl"
    router = start_router(zones, tmp_path / "router.log", "--query-log", str(log), "--query-log-sample", "1",
                          workers=1)  # fmt: skip
    try:
        full, truncated = _flood(router.host, router.port, "127.0.0.1", 60)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < 60:
            time.sleep(0.1)
        marks = [json.loads(line)["rate_limited"] for line in log.read_text().splitlines()]
    finally:
        router.stop()
        router.process.stdout.close()
    assert len(marks) == 60
    assert marks.count(None) == full and marks.count("slipped") == truncated
    assert marks.count("dropped") == 60 - full - truncated > 0
