"""Hot reload: a real router reloading under a steady hammer of queries loses none, never
answers from a half-built or an older config once a reload returned, keeps the last good
config when a file is bad (with every problem as path:line), and says so in GET /v1/config
and /metrics. Also SIGHUP, the file watcher, and what a reload carries over."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.rdatatype
import numpy as np
import pytest

from router.health.monitor import HealthSettings, NodeMonitor
from router.health.state import NodeHealth, NodeState
from router.service.config_files import ConfigFiles, fingerprint
from tests.conftest import RunningRouter, recv_exactly, start_router

BASE_TTL = 20
HAMMER_SOCKETS = 16
HAMMER_MAX_QUERIES = 400_000  # bounds the load loop; it also stops when the test is done
UDP_TIMEOUT_S = 2.0


def write_version(zones: Path, version: int, *, ttl: int | None = None) -> None:
    """Version ``version`` of the config: a TXT record saying it, and the video TTL 20+version."""
    zone = zones / "cdn.example.zone"
    text = re.sub(r"\nversion .*\n", "\n", zone.read_text())
    text = re.sub(r"\d{10} ; serial", f"{2026112300 + version} ; serial", text)
    zone.write_text(text + f'version     IN TXT   "v{version}"\n')
    policy = zones / "cdn.example.policy.yaml"
    value = BASE_TTL + version if ttl is None else ttl
    policy.write_text(
        re.sub(r"(\n  video:\n(?:    .*\n)*?    ttl: )\S+", rf"\g<1>{value}", policy.read_text())
    )


def txt_query(qid: int) -> bytes:
    message = dns.message.make_query("version.cdn.example.", "TXT")
    message.id = qid
    return message.to_wire()


def video_query(qid: int) -> bytes:
    message = dns.message.make_query(
        "video.cdn.example.", "A", use_edns=0, options=[dns.edns.ECSOption("83.44.10.0", 24)]
    )
    message.id = qid
    return message.to_wire()


def version_of(reply: bytes) -> int:
    """The config version an answer came from: the TXT text, or the video TTL minus 20."""
    message = dns.message.from_wire(reply)
    assert message.rcode() == 0, message
    rrset = message.answer[0]
    if rrset.rdtype == dns.rdatatype.TXT:
        return int(rrset[0].strings[0].decode().removeprefix("v"))
    return rrset.ttl - BASE_TTL


class UdpHammer:
    """Keeps one query in flight on each of HAMMER_SOCKETS sockets; records for every query
    when it was sent and which config version answered. Bounded by count and by ``stop``."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.stop = threading.Event()
        self.sent: dict[
            tuple[int, int], tuple[float, bool]
        ] = {}  # (socket, id) -> (sent at, video?)
        self.answers: list[tuple[float, int]] = []  # (sent at, version)
        self.lost: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        socks = []
        for i in range(HAMMER_SOCKETS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, i)
            socks.append(sock)
        in_flight: dict[int, tuple[int, float]] = {}
        qid = 0
        total = 0

        def send(i: int) -> None:
            nonlocal qid, total
            qid = (qid + 1) & 0xFFFF
            video = qid % 2 == 0
            now = time.monotonic()
            socks[i].sendto(video_query(qid) if video else txt_query(qid), self.address)
            self.sent[(i, qid)] = (now, video)
            in_flight[i] = (qid, now)
            total += 1

        try:
            for i in range(HAMMER_SOCKETS):
                send(i)
            while not self.stop.is_set() and total < HAMMER_MAX_QUERIES:
                for key, _ in selector.select(timeout=0.1):
                    i = key.data
                    reply = socks[i].recv(4096)
                    rid = struct.unpack_from("!H", reply)[0]
                    if i not in in_flight or in_flight[i][0] != rid:
                        continue  # a late reply to a query already counted lost
                    self.answers.append((in_flight.pop(i)[1], version_of(reply)))
                    send(i)
                now = time.monotonic()
                for i, (rid, at) in list(in_flight.items()):
                    if now - at > UDP_TIMEOUT_S:
                        self.lost.append((i, rid))
                        in_flight.pop(i)
                        send(i)
        finally:
            for sock in socks:
                sock.close()


class TcpClient:
    """One TCP connection asking for the version every 50 ms; like any RFC 7766 client it
    opens a new connection and asks again when the server closes one."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)
        self.stop = threading.Event()
        self.versions: list[int] = []
        self.reconnects = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        sock = None
        qid = 0
        deadline = time.monotonic() + 300
        while not self.stop.is_set() and time.monotonic() < deadline:
            qid = (qid + 1) & 0xFFFF
            packet = txt_query(qid)
            for attempt in range(3):
                try:
                    if sock is None:
                        sock = socket.create_connection(self.address, timeout=5)
                    sock.sendall(struct.pack("!H", len(packet)) + packet)
                    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
                    self.versions.append(version_of(recv_exactly(sock, length)))
                    break
                except (ConnectionError, OSError) as exc:
                    if sock is not None:
                        sock.close()
                    sock = None
                    self.reconnects += 1
                    if attempt == 2:
                        self.errors.append(repr(exc))
            time.sleep(0.05)
        if sock is not None:
            sock.close()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _reload(api: str, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{api}/v1/config/reload", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(api: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"{api}/metrics", timeout=30) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name} {labels} not in /metrics"
    return float(match.group(1))


@pytest.fixture
def zones(tmp_path: Path) -> Path:
    from tests.conftest import make_deployment

    directory = make_deployment(tmp_path)
    write_version(directory, 0)
    return directory


def test_reloads_under_load_lose_no_query_and_never_go_back(zones: Path, tmp_path: Path) -> None:
    router = start_router(zones, tmp_path / "router.log", "--watch", "0", workers=2)
    hammer = UdpHammer(router.host, router.port)
    tcp = TcpClient(router.host, router.port)
    try:
        hammer.thread.start()
        tcp.thread.start()
        time.sleep(1.0)
        before = _get(f"{router.api}/v1/config")
        in_service: list[tuple[float, int]] = []  # (monotonic time the reload returned, version)
        last_good = before["version"]
        for version in range(1, 6):
            if version == 3:
                # A bad policy file (beside a good zone saying v99): the router keeps serving
                # version 2, all of it, and says why.
                write_version(zones, 99, ttl="twenty")
                status, attempt = _reload(router.api, router.token)
                assert status == 422 and attempt["result"] == "failed", attempt
                assert any(
                    re.match(r".*cdn\.example\.policy\.yaml:\d+: .*ttl", p)
                    for p in attempt["problems"]
                ), attempt
                config = _get(f"{router.api}/v1/config")
                assert config["version"] == last_good, "a bad file replaced the running config"
                assert config["last_error"]["problems"] == attempt["problems"]
                assert config["last_error"]["version_kept"] == last_good
                assert config["last_attempt"]["result"] == "failed"
                assert _metric(router.api, "router_config_last_reload_successful") == 0.0
                time.sleep(0.5)
            write_version(zones, version)
            status, attempt = _reload(router.api, router.token)
            assert status == 200 and attempt["result"] == "ok", attempt
            in_service.append((time.monotonic(), version))
            last_good = attempt["version"]
            assert _get(f"{router.api}/v1/config")["version"] == last_good
            time.sleep(0.7)
        # Once more through SIGHUP, as an operator would.
        write_version(zones, 6)
        os.kill(router.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        # Done when counted: the old workers have stopped taking queries by then.
        while _get(f"{router.api}/v1/config")["reloads"]["ok"] < 6:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
        in_service.append((time.monotonic(), 6))
        time.sleep(0.7)
    finally:
        hammer.stop.set()
        tcp.stop.set()
        hammer.thread.join(timeout=10)
        tcp.thread.join(timeout=10)
    config = _get(f"{router.api}/v1/config")
    _stop(router)

    assert len(hammer.answers) > 3000, f"only {len(hammer.answers)} answers: the hammer did not run"
    assert hammer.lost == [], f"{len(hammer.lost)} UDP queries got no answer during reloads"
    # Every query sent after a reload returned was answered by that version or a later one.
    for returned_at, version in in_service:
        stale = [(t, v) for t, v in hammer.answers if t > returned_at and v < version]
        assert not stale, (
            f"{len(stale)} answers from a config older than v{version} after its reload returned"
        )
    seen = {v for _, v in hammer.answers}
    assert seen <= set(range(7)) and {0, 2, 5, 6} <= seen, (
        seen
    )  # never v99, the half of a bad config
    assert tcp.errors == [] and len(tcp.versions) > 50 and set(tcp.versions) <= set(range(7)), (
        tcp.versions
    )
    assert tcp.versions == sorted(tcp.versions), "a TCP answer went back to an older config"

    assert config["version"] != before["version"]
    assert config["reloads"] == {"ok": 6, "failed": 1, "unchanged": 0}
    assert (
        config["last_attempt"]["trigger"] == "SIGHUP" and config["last_attempt"]["result"] == "ok"
    )
    expected = ConfigFiles.read(zones)
    assert config["files"] == expected.public_hashes and config["version"] == expected.version
    assert (
        "cdn.example.policy.yaml" in config["files"]
        and "../geodata/country-rtt.csv" in config["files"]
    )
    log = router.log.read_text()
    assert re.search(r"cdn\.example\.policy\.yaml:\d+: .*ttl", log), (
        "the bad file's problem was not logged"
    )


def test_a_changed_file_is_reloaded_and_a_broken_one_is_not(zones: Path, tmp_path: Path) -> None:
    router = start_router(zones, tmp_path / "router.log", "--watch", "0.2", workers=1)
    try:
        first = _get(f"{router.api}/v1/config")

        def wait_for(predicate, what: str) -> dict:  # noqa: ANN001
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                config = _get(f"{router.api}/v1/config")
                if predicate(config):
                    return config
                time.sleep(0.1)
            raise AssertionError(f"{what}; log:\n{router.log.read_text()[-3000:]}")

        write_version(zones, 1)
        second = wait_for(lambda c: c["reloads"]["ok"] == 1, "the changed files were not reloaded")
        assert second["last_attempt"]["trigger"] == "file change"
        assert second["version"] != first["version"]

        nodes = zones / "nodes.yaml"
        good_nodes = nodes.read_text()
        nodes.write_text(good_nodes.replace("capacity_gbps:", "capacity_gbsp:", 1))
        third = wait_for(lambda c: c["reloads"]["failed"] == 1, "the broken file was not tried")
        assert third["version"] == second["version"], "a broken file replaced the good config"
        assert any(p.startswith(f"{nodes}:") for p in third["last_error"]["problems"]), third[
            "last_error"
        ]
        reply = dns.message.from_wire(_udp(router.host, router.port, txt_query(7)))
        assert reply.answer[0][0].strings[0] == b"v1"

        nodes.write_text(good_nodes)  # back as it was: the running version again, nothing to do
        write_version(zones, 2)
        wait_for(lambda c: c["reloads"]["ok"] == 2, "the repaired files were not reloaded")
        reply = dns.message.from_wire(_udp(router.host, router.port, txt_query(8)))
        assert reply.answer[0][0].strings[0] == b"v2"

        # The gdnsd-style admin_state file: its overrides come and go with it.
        (zones / "admin_state").write_text("# maintenance\ntef-mad-1 => DOWN\n")
        wait_for(
            lambda c: c["reloads"]["ok"] == 3 and "admin_state" in c["files"],
            "admin_state was not reloaded",
        )
        nodes_now = {n["id"]: n for n in _get(f"{router.api}/v1/nodes")["nodes"]}
        assert (
            nodes_now["tef-mad-1"]["state"] == "down"
            and nodes_now["tef-mad-1"]["admin_state"] == "down"
        )
        assert "admin_state file" in nodes_now["tef-mad-1"]["reason"]
        (zones / "admin_state").unlink()
        wait_for(lambda c: c["reloads"]["ok"] == 4, "removing admin_state was not reloaded")
        nodes_now = {n["id"]: n for n in _get(f"{router.api}/v1/nodes")["nodes"]}
        assert (
            nodes_now["tef-mad-1"]["state"] == "up"
            and nodes_now["tef-mad-1"]["admin_state"] is None
        )
    finally:
        _stop(router)


def _stop(router: RunningRouter) -> None:
    router.stop()
    assert router.process.stdout is not None
    router.process.stdout.close()


def _udp(host: str, port: int, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, (host, port))
        return sock.recv(65535)


def test_fingerprint_and_version_follow_the_files(zones: Path) -> None:
    files = ConfigFiles.read(zones)
    print_before = fingerprint(zones)
    assert set(files.hashes) >= {"deployment.yaml", "nodes.yaml", "cdn.example.zone", "cdn.example.policy.yaml",
                                 "node-keys.sample.yaml", "../geodata/country-rtt.csv", "../geodata/iberia-clients.mmdb"}  # fmt: skip
    assert ConfigFiles.read(zones).version == files.version
    write_version(zones, 9)
    assert fingerprint(zones) != print_before
    assert ConfigFiles.read(zones).version != files.version
    (zones / "extra.example.zone").write_text((zones / "cdn.example.zone").read_text())
    assert "extra.example.zone" in ConfigFiles.read(zones).hashes
    (zones / ".cdn.example.zone.swp").write_text("editor scratch")
    assert ".cdn.example.zone.swp" not in ConfigFiles.read(zones).hashes


def test_a_reload_carries_node_health_by_node_id() -> None:
    settings = HealthSettings()
    old_monitor = NodeMonitor(("a", "b", "c"), np.array([10.0, 10.0, 10.0]), settings, now=0.0)
    old = NodeHealth(("a", "b", "c"), old_monitor)
    old.set_admin_state("a", "drain")
    old_monitor._set(1, NodeState.DOWN, "missed 3 heartbeats", 5.0)
    old_monitor.load_gbps[2] = 7.5
    old._refresh()
    new_monitor = NodeMonitor(("c", "b", "d"), np.array([20.0, 10.0, 10.0]), settings, now=100.0)
    new = NodeHealth(("c", "b", "d"), new_monitor)
    dropped = new.carry_from(old)
    assert dropped == ["a"]
    states = dict(zip(new.node_ids, new.states()))
    assert states == {"c": NodeState.UP, "b": NodeState.DOWN, "d": NodeState.UP}
    assert new_monitor.load_gbps[0] == 7.5 and new.utilization()[0] == pytest.approx(7.5 / 20)
    assert new_monitor.last_down[1] == 5.0 and new_monitor.started == 0.0
    assert (
        [c.node_id for c in new.recent_changes()] == [c.node_id for c in old.recent_changes()] != []
    )
    assert {s.node_id: s.admin_state for s in new.status()} == {"c": None, "b": None, "d": None}


def test_the_admin_state_file_sets_and_lifts_only_its_own_overrides(tmp_path: Path) -> None:
    health = NodeHealth(("a", "b", "c"))
    health.set_admin_state("c", "down")  # through the API
    assert health.apply_admin_file({"a": "down", "b": "drain"})
    assert list(health.states()) == [NodeState.DOWN, NodeState.DRAINING, NodeState.DOWN]
    health.save(tmp_path / "state.json")
    assert health.apply_admin_file({"b": "drain"})  # a is no longer named: lifted; c stays
    assert list(health.states()) == [NodeState.UP, NodeState.DRAINING, NodeState.DOWN]
    assert health.apply_admin_file({"c": "up"})  # UP in the file clears any override
    assert list(health.states()) == [NodeState.UP, NodeState.UP, NodeState.UP]
    assert not health.apply_admin_file({})
    # The state file keeps the API's override, not the file's (the file keeps those itself).
    restored = NodeHealth(
        ("a", "b", "c"), NodeMonitor(("a", "b", "c"), np.ones(3), HealthSettings(), now=0.0)
    )
    restored.load(tmp_path / "state.json", now=0.0)
    assert {s.node_id: s.admin_state for s in restored.status()} == {
        "a": None,
        "b": None,
        "c": "down",
    }
    assert list(restored.states()) == [NodeState.UP, NodeState.UP, NodeState.DOWN]


def test_the_watcher_parses_deployment_yaml_only_when_it_changed(
    zones: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.service import config_files

    parsed = []
    real = config_files.yaml.safe_load
    monkeypatch.setattr(config_files.yaml, "safe_load", lambda text: parsed.append(1) or real(text))
    config_files._referenced_by_version.cache_clear()
    first = fingerprint(zones)
    for _ in range(5):
        assert fingerprint(zones) == first
    assert len(parsed) == 1
    settings = zones / "deployment.yaml"
    settings.write_text(settings.read_text() + "\n# edited\n")
    assert fingerprint(zones) != first and len(parsed) == 2
