"""The node agent (router/agent/): its readers against a fake sysfs tree, a real UPS-style
command and a real HTTP metrics server on 127.0.0.1, and the agent end to end, sending to UDP
sockets on loopback, every packet checked with the router's own ``Verifier``."""

from __future__ import annotations

import argparse
import errno
import http.server
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.agent import cli, net, power, probe, rps, rtt
from router.agent.agent import Poller, parse_router
from router.agent.bounded import ReaderLog, ReadError, fetch_url, run_command
from router.health.telemetry import Heartbeat, Verifier

REPO = Path(__file__).resolve().parents[1]
NODE = "tef-mad-1"


# -- fixtures and helpers ----------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def supply(root: Path, name: str, **attributes: str) -> None:
    write_tree(root, {f"class/power_supply/{name}/{k}": v for k, v in attributes.items()})


def interface(root: Path, name: str, operstate: str = "up", carrier: str | None = "1",
              tx_bytes: int = 0, rx_bytes: int = 0) -> None:  # fmt: skip
    files = {
        f"class/net/{name}/operstate": operstate,
        f"class/net/{name}/statistics/tx_bytes": str(tx_bytes),
        f"class/net/{name}/statistics/rx_bytes": str(rx_bytes),
    }
    if carrier is not None:
        files[f"class/net/{name}/carrier"] = carrier
    write_tree(root, files)


def set_counter(root: Path, name: str, tx_bytes: int) -> None:
    # A rename, not a rewrite in place: sysfs is read whole, and a reader must never see the
    # empty file a rewrite leaves for a moment (that read is "not a number", load 0).
    counter = root / f"class/net/{name}/statistics/tx_bytes"
    staged = counter.with_name("tx_bytes.new")
    staged.write_text(f"{tx_bytes}\n")
    staged.replace(counter)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, bytes]:
    key = secrets.token_bytes(32)
    path = tmp_path / "node.key"
    path.write_text(key.hex() + "\n")
    path.chmod(0o600)
    return path, key


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    supply(root, "AC", type="Mains", online="1")
    interface(root, "eth0", tx_bytes=10_000)
    interface(root, "eth1", tx_bytes=20_000)
    return root


@pytest.fixture
def routers() -> Iterator[list[socket.socket]]:
    """Two routers' telemetry sockets on 127.0.0.1."""
    socks = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="router node-agent")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def receive(sock: socket.socket, n: int) -> list[bytes]:
    return [sock.recv(2048) for _ in range(n)]


def nothing_more(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        sock.recv(2048)
    except TimeoutError:
        return True
    return False


@pytest.fixture
def metrics_server() -> Iterator[dict]:
    """A real HTTP server on 127.0.0.1 serving ``state["page"]`` (a str or a callable) at
    /metrics, with ``state["status"]`` and ``state["delay"]``."""
    state: dict = {"page": "", "status": 200, "delay": 0.0, "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state["hits"] += 1
            time.sleep(state["delay"])
            page = state["page"]() if callable(state["page"]) else state["page"]
            body = page.encode()
            self.send_response(state["status"])
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting, as it should

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def full_listener() -> Iterator[tuple[str, int]]:
    """A TCP port on 127.0.0.1 that never answers a SYN: its accept queue is full, so the
    kernel drops new handshakes (a gateway that stopped answering, without leaving loopback)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    addr = listener.getsockname()
    held = []
    for _ in range(3):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(addr)
        held.append(sock)
    time.sleep(0.05)
    assert probe.connect_times([addr], 0.2) == [None], "the kernel answered a full queue"
    yield addr
    for sock in held:
        sock.close()
    listener.close()


@pytest.fixture
def closed_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


# -- power -------------------------------------------------------------------------------------

MAINS_ON = {"type": "Mains", "online": "1"}
MAINS_OFF = {"type": "Mains", "online": "0"}


@pytest.mark.parametrize(
    ("supplies", "expected"),
    [
        ({"AC": MAINS_ON}, "mains"),
        ({"AC": MAINS_ON, "BAT0": {"type": "Battery", "status": "Charging", "capacity": "5"}}, "mains"),
        ({"AC": MAINS_OFF, "BAT0": {"type": "Battery", "status": "Discharging", "capacity": "80"}}, "battery"),
        ({"AC": MAINS_OFF, "BAT0": {"type": "Battery", "status": "Discharging", "capacity": "12"}}, "battery_low"),
        ({"AC": MAINS_OFF, "BAT0": {"type": "Battery", "status": "Discharging", "capacity_level": "Critical"}}, "battery_low"),
        ({"AC": MAINS_OFF, "BAT0": {"type": "Battery", "status": "Discharging", "capacity_level": "Low"}}, "battery_low"),
        ({"AC": MAINS_OFF, "BAT0": {"type": "Battery", "status": "Not charging", "capacity": "90"}}, "battery"),
        ({"BAT0": {"type": "Battery", "status": "Discharging", "capacity": "50"}}, "battery"),
        ({"BAT0": {"type": "Battery", "status": "Full", "capacity": "100"}}, "mains"),
        ({"BAT0": {"type": "Battery", "status": "Charging", "capacity": "3"}}, "mains"),
        ({"ups0": {"type": "UPS", "status": "Discharging", "capacity": "60"}}, "battery"),
        # A wireless mouse's battery is not the machine's.
        ({"AC": MAINS_ON, "hidpp_battery_0": {"type": "Battery", "scope": "Device", "status": "Discharging", "capacity": "4"}}, "mains"),
        ({"hidpp_battery_0": {"type": "Battery", "scope": "Device", "status": "Discharging", "capacity": "4"}}, "mains"),
        # Two feeds: one online is enough.
        ({"AC0": MAINS_OFF, "AC1": MAINS_ON, "BAT0": {"type": "Battery", "status": "Discharging", "capacity": "9"}}, "mains"),
    ],
)  # fmt: skip
def test_sysfs_power(tmp_path: Path, supplies: dict, expected: str) -> None:
    for name, attributes in supplies.items():
        supply(tmp_path, name, **attributes)
    assert power.SysfsPower(tmp_path, low_percent=20).read() == expected


def test_sysfs_power_without_any_supply_is_mains_with_a_note(tmp_path: Path) -> None:
    notes: list[str] = []
    reader = power.SysfsPower(tmp_path, 20, notes.append)
    assert reader.read() == "mains"
    assert "no power supply" in notes[0] and "--ups" in notes[0]


def test_sysfs_power_follows_the_supply_between_reads(tmp_path: Path) -> None:
    supply(tmp_path, "AC", **MAINS_ON)
    supply(tmp_path, "BAT0", type="Battery", status="Charging", capacity="95")
    reader = power.SysfsPower(tmp_path, 20)
    assert reader.read() == "mains"
    supply(tmp_path, "AC", online="0")
    supply(tmp_path, "BAT0", status="Discharging", capacity="40")
    assert reader.read() == "battery"
    supply(tmp_path, "BAT0", capacity="19")
    assert reader.read() == "battery_low"
    supply(tmp_path, "AC", online="1")
    supply(tmp_path, "BAT0", status="Charging")
    assert reader.read() == "mains"


@pytest.mark.parametrize(
    ("status", "charge", "expected"),
    [
        ("OL", "100", "mains"),
        ("OL CHRG", "40", "mains"),
        ("OL CHRG LB", "5", "mains"),  # recharging after an outage: on mains again
        ("BYPASS", None, "mains"),
        ("OB DISCHRG", "80", "battery"),
        ("OB", None, "battery"),
        ("OB DISCHRG", "15", "battery_low"),  # below --battery-low-percent
        ("OB LB", "8", "battery_low"),
        ("OB LB", "60", "battery_low"),  # the UPS says low, whatever the charge says
        ("FSD OB LB", "3", "battery_low"),
        ("FSD OL", "90", "battery_low"),
    ],
)
def test_parse_upsc(status: str, charge: str | None, expected: str) -> None:
    text = "battery.runtime: 1200\n"
    if charge is not None:
        text += f"battery.charge: {charge}\n"
    text += f"device.mfr: APC\nups.status: {status}\nups.load: 23\n"
    assert power.parse_upsc(text, 20) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [("battery.charge: 50\n", "no ups.status"), ("ups.status: CAL\n", "neither OL nor OB")],
)
def test_parse_upsc_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(ReadError, match=message):
        power.parse_upsc(text, 20)


UPSC_OUTPUT = """\
battery.charge: 8
battery.charge.low: 10
battery.runtime: 95
device.model: Smart-UPS 1500
ups.status: OB LB
"""


def fake_upsc(tmp_path: Path, output: str = UPSC_OUTPUT, *, ups: str = "edge@localhost") -> Path:
    """A real executable in upsc's place: prints upsc-format output for ``ups`` only, and
    fails as upsc does for any other UPS (upsc writes its SSL notice to stderr every time)."""
    (tmp_path / "upsc.out").write_text(output)
    return script(
        tmp_path / "upsc",
        'echo "Init SSL without certificate database" >&2\n'
        f'if [ "$1" != "{ups}" ]; then echo "Error: Unknown UPS" >&2; exit 1; fi\n'
        f'cat "{tmp_path / "upsc.out"}"\n',
    )


def test_a_real_upsc_style_command_reads_battery_low(tmp_path: Path) -> None:
    upsc = fake_upsc(tmp_path)
    assert power.UpscPower("edge@localhost", str(upsc), 2.0, 20).read() == "battery_low"
    (tmp_path / "upsc.out").write_text("battery.charge: 100\nups.status: OL\n")
    assert power.UpscPower("edge@localhost", str(upsc), 2.0, 20).read() == "mains"
    with pytest.raises(ReadError, match="exited with status 1: Error: Unknown UPS"):
        power.UpscPower("other@localhost", str(upsc), 2.0, 20).read()


def test_power_command(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = script(tmp_path / "power.sh", f'cat "{state}"\n')
    reader = power.CommandPower([str(command)], 2.0)
    for value in ("mains", "battery", "battery_low", "off", " Battery \n"):
        state.write_text(value)
        assert reader.read() == value.strip().lower()
    state.write_text("on fire")
    with pytest.raises(ReadError, match="not one of mains, battery, battery_low, off"):
        reader.read()


def test_a_command_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "still-running"
    # The shell's child keeps the output pipe open: killing the shell alone would not do.
    command = script(tmp_path / "hang.sh", f'(sleep 1; touch "{marker}") &\nsleep 30\n')
    started = time.monotonic()
    with pytest.raises(ReadError, match="did not finish within 0.3 s"):
        run_command([str(command)], 0.3)
    assert time.monotonic() - started < 2.0
    time.sleep(1.3)
    assert not marker.exists()


def test_a_command_that_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="cannot run"):
        run_command([str(tmp_path / "missing")], 1.0)


# -- uplinks and load --------------------------------------------------------------------------


def test_uplink_states_from_sysfs(tmp_path: Path) -> None:
    interface(tmp_path, "eth0", "up", "1")
    interface(tmp_path, "eth1", "up", "0")
    interface(tmp_path, "eth2", "down", None)  # carrier of a down link: unreadable (EINVAL)
    interface(tmp_path, "tun0", "unknown", "1")
    interface(tmp_path, "eth3", "dormant", "1")
    interface(tmp_path, "eth4", "lowerlayerdown", "0")
    notes: list[str] = []
    links = {"transit": "eth0", "eth1": "eth1", "eth2": "eth2", "tun": "tun0", "eth3": "eth3",
             "eth4": "eth4", "gone": "eth9"}  # fmt: skip
    reader = net.UplinkReader(tmp_path, links, notes.append)
    assert reader.read() == {
        "transit": "up", "eth1": "down", "eth2": "down", "tun": "up", "eth3": "degraded",
        "eth4": "down", "gone": "down",
    }  # fmt: skip
    assert notes == [f"no interface eth9 in {tmp_path / 'class' / 'net'}: reported down"]


def test_uplinks_change_between_reads(tmp_path: Path) -> None:
    interface(tmp_path, "eth0")
    reader = net.UplinkReader(tmp_path, {"wan1": "eth0"})
    assert reader.read() == {"wan1": "up"}
    (tmp_path / "class/net/eth0/carrier").write_text("0\n")
    assert reader.read() == {"wan1": "down"}
    (tmp_path / "class/net/eth0/operstate").write_text("down\n")
    (tmp_path / "class/net/eth0/carrier").unlink()
    assert reader.read() == {"wan1": "down"}
    (tmp_path / "class/net/eth0/operstate").write_text("up\n")
    (tmp_path / "class/net/eth0/carrier").write_text("1\n")
    assert reader.read() == {"wan1": "up"}


def test_load_from_tx_bytes_deltas(tmp_path: Path) -> None:
    interface(tmp_path, "eth0", tx_bytes=1_000_000)
    interface(tmp_path, "eth1", tx_bytes=5_000_000)
    clock = Clock()
    reader = net.LoadReader(tmp_path, ["eth0", "eth1"], clock=clock)
    assert reader.read() is None  # one read is no rate
    clock.now += 2.0
    set_counter(tmp_path, "eth0", 1_000_000 + 250_000_000)  # 1 Gbps over 2 s
    set_counter(tmp_path, "eth1", 5_000_000 + 750_000_000)  # 3 Gbps
    assert reader.read() == pytest.approx(4.0)
    clock.now += 0.5
    set_counter(tmp_path, "eth0", 1_000_000 + 250_000_000 + 12_500_000)  # 0.2 Gbps
    assert reader.read() == pytest.approx(0.2)  # eth1 sent nothing


def test_load_across_a_counter_reset_and_a_vanished_interface(tmp_path: Path) -> None:
    interface(tmp_path, "eth0", tx_bytes=0)
    interface(tmp_path, "eth1", tx_bytes=0)
    clock = Clock()
    notes: list[str] = []
    reader = net.LoadReader(tmp_path, ["eth0", "eth1"], clock=clock, note=notes.append)
    reader.read()
    clock.now += 1.0
    set_counter(tmp_path, "eth0", 125_000_000)  # 1 Gbps
    set_counter(tmp_path, "eth1", 125_000_000)
    assert reader.read() == pytest.approx(2.0)
    clock.now += 1.0
    set_counter(tmp_path, "eth0", 1000)  # the driver reset its counters
    set_counter(tmp_path, "eth1", 250_000_000)
    assert reader.read() == pytest.approx(2.0)  # eth0's last rate stands in for one read
    assert "went backwards" in notes[-1]
    clock.now += 1.0
    set_counter(tmp_path, "eth0", 1000 + 62_500_000)  # 0.5 Gbps
    for path in sorted((tmp_path / "class/net/eth1").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (tmp_path / "class/net/eth1").rmdir()
    assert reader.read() == pytest.approx(0.5)
    assert "no interface eth1" in notes[-1]


def test_load_from_rx_bytes(tmp_path: Path) -> None:
    interface(tmp_path, "eth0", tx_bytes=0, rx_bytes=0)
    clock = Clock()
    reader = net.LoadReader(tmp_path, ["eth0"], counter="rx_bytes", clock=clock)
    reader.read()
    clock.now += 1
    (tmp_path / "class/net/eth0/statistics/rx_bytes").write_text("1250000000\n")
    assert reader.read() == pytest.approx(10.0)


def test_load_counter_unreadable_is_a_read_error(tmp_path: Path) -> None:
    interface(tmp_path, "eth0")
    (tmp_path / "class/net/eth0/statistics/tx_bytes").write_text("lots\n")
    with pytest.raises(ReadError, match="not a number"):
        net.LoadReader(tmp_path, ["eth0"]).read()


# -- probes: gateway and RTT ---------------------------------------------------------------------


def test_connect_times(full_listener: tuple[str, int], closed_port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        started = time.monotonic()
        answered, refused, silent = probe.connect_times(
            [listener.getsockname(), ("127.0.0.1", closed_port), full_listener], 0.4
        )
        elapsed = time.monotonic() - started
    finally:
        listener.close()
    assert answered is not None and 0 <= answered < 400
    assert refused is not None and 0 <= refused < 400  # a reset came back: one round trip
    assert silent is None
    assert 0.35 < elapsed < 1.5  # all at once, within the one timeout


def test_connect_times_over_ipv6() -> None:
    try:
        listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        listener.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    listener.listen(8)
    try:
        assert probe.connect_times([listener.getsockname()[:2]], 1.0)[0] is not None
    finally:
        listener.close()


def test_gateway_check_needs_misses_in_a_row(
    full_listener: tuple[str, int], closed_port: int
) -> None:
    refusing = net.GatewayCheck(("127.0.0.1", closed_port), 0.2, misses=2)
    assert [refusing.read() for _ in range(3)] == [True, True, True]
    silent = net.GatewayCheck(full_listener, 0.1, misses=2)
    assert [silent.read(), silent.read(), silent.read()] == [True, False, False]
    silent.address = ("127.0.0.1", closed_port)  # the gateway answers again
    assert silent.read() is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:179", ("10.0.0.1", 179)),
        ("10.0.0.1", ("10.0.0.1", 179)),
        ("[2001:db8::1]:22", ("2001:db8::1", 22)),
        ("2001:db8::1", ("2001:db8::1", 179)),
        ("[fe80::1]", ("fe80::1", 179)),
    ],
)
def test_parse_ip_port(text: str, expected: tuple[str, int]) -> None:
    assert probe.parse_ip_port(text, "--gateway", 179) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gw.example:179", "not an IP address"),
        ("10.0.0.1:0", "bad port"),
        ("10.0.0.1:http", "bad port"),
        ("[::1]x", "expected"),
    ],
)
def test_parse_ip_port_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        probe.parse_ip_port(text, "--gateway", 179)


def test_rtt_targets_and_rounds(closed_port: int, full_listener: tuple[str, int]) -> None:
    targets = [
        rtt.parse_target(f"83.44.0.0/16=127.0.0.1:{closed_port}"),
        rtt.parse_target(f"2001:db8::/32=[{full_listener[0]}]:{full_listener[1]}"),
    ]
    assert targets[0] == ("83.44.0.0/16", ("127.0.0.1", closed_port))
    prober = rtt.RttProber(targets, 0.2)
    first, second = prober.read(), prober.read()
    assert (first.number, second.number) == (1, 2)
    assert [prefix for prefix, _ in first.samples] == ["83.44.0.0/16"]  # the silent one: none
    assert 0 <= first.samples[0][1] < 200


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("83.44.0.1/16=127.0.0.1:80", "not a client prefix"),  # host bits set
        ("83.44.0.0/16", "PREFIX=ADDR:PORT"),
        ("83.44.0.0/16=127.0.0.1", "a port is needed"),
        ("83.44.0.0/16=probe.example:80", "not an IP address"),
    ],
)
def test_rtt_target_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rtt.parse_target(text)


# -- requests per second -----------------------------------------------------------------------

PAGE = """\
# HELP http_requests_total Requests served.
# TYPE http_requests_total counter
http_requests_total{code="200",method="GET"} %d
http_requests_total{code="404",method="GET"} %d
http_requests_total{code="200",method="HEAD"} 7
# HELP cache_rps Requests per second now.
# TYPE cache_rps gauge
cache_rps 1234.5
weird_metric{path="a \\"quoted\\" } brace, here",x="y"} 3 1796282531000
"""


def test_parse_samples_labels_kind_and_escapes() -> None:
    series, kind = rps.parse_samples(PAGE % (10, 2), "http_requests_total")
    assert kind == "counter" and sum(series.values()) == 19
    series, _ = rps.parse_samples(PAGE % (10, 2), "http_requests_total", (("code", "200"),))
    assert sum(series.values()) == 17
    assert rps.parse_samples(PAGE % (1, 1), "cache_rps") == ({(): 1234.5}, "gauge")
    series, kind = rps.parse_samples(PAGE % (1, 1), "weird_metric")
    assert series == {(("path", 'a "quoted" } brace, here'), ("x", "y")): 3.0}
    assert kind == "gauge"  # untyped, and not named *_total
    with pytest.raises(ReadError, match="no series http_requests_total"):
        rps.parse_samples(PAGE % (1, 1), "http_requests_total", (("code", "500"),))
    with pytest.raises(ReadError, match="no series nope"):
        rps.parse_samples(PAGE % (1, 1), "nope")


def test_parse_metric_spec() -> None:
    assert rps.parse_metric_spec("nginx_http_requests_total") == ("nginx_http_requests_total", ())
    assert rps.parse_metric_spec('varnish_main_client_req{backend="a",b="c"}') == (
        "varnish_main_client_req", (("b", "c"), ("backend", "a")),
    )  # fmt: skip
    for bad in ("9lives", "x{code=200}", 'x{a="b"} trailing'):
        with pytest.raises(ValueError):
            rps.parse_metric_spec(bad)


def test_openmetrics_counter_typed_without_its_total_suffix() -> None:
    page = "# TYPE requests counter\nrequests_total 5\nrequests_created 1.7e9\n"
    assert rps.parse_samples(page, "requests_total")[1] == "counter"


def test_counter_rate_from_a_real_http_server(metrics_server: dict) -> None:
    counts = {"ok": 1000, "missing": 50}
    metrics_server["page"] = lambda: PAGE % (counts["ok"], counts["missing"])
    clock = Clock()
    reader = rps.PrometheusRps(metrics_server["url"], "http_requests_total", 2.0, clock=clock)
    assert reader.read() is None  # a counter needs two reads
    clock.now += 5.0
    counts["ok"] += 4000
    counts["missing"] += 1000
    assert reader.read() == pytest.approx(1000.0)
    clock.now += 2.0
    counts["ok"] = 100  # the cache restarted: counted from 0, as Prometheus's rate() does
    assert reader.read() == pytest.approx(50.0)
    assert metrics_server["hits"] == 3


def test_gauge_and_label_filter_from_a_real_http_server(metrics_server: dict) -> None:
    metrics_server["page"] = PAGE % (10, 20)
    assert rps.PrometheusRps(metrics_server["url"], "cache_rps", 2.0).read() == 1234.5
    clock = Clock()
    reader = rps.PrometheusRps(metrics_server["url"], 'http_requests_total{code="404"}', 2.0,
                               clock=clock)  # fmt: skip
    reader.read()
    clock.now += 1
    metrics_server["page"] = PAGE % (10_000, 120)
    assert reader.read() == pytest.approx(100.0)


def test_http_failures_are_read_errors_within_the_timeout(metrics_server: dict) -> None:
    metrics_server["status"] = 500
    with pytest.raises(ReadError, match="HTTP 500"):
        fetch_url(metrics_server["url"], 1.0)
    metrics_server["status"], metrics_server["delay"] = 200, 3.0
    started = time.monotonic()
    with pytest.raises(ReadError, match="timed out"):
        fetch_url(metrics_server["url"], 0.3)
    assert time.monotonic() - started < 1.5


def test_proxy_settings_are_not_used_for_metrics(
    metrics_server: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9/")
    metrics_server["page"] = "cache_rps 7\n"
    assert rps.PrometheusRps(metrics_server["url"], "cache_rps", 2.0).read() == 7.0


def test_rps_command(tmp_path: Path) -> None:
    out = tmp_path / "out"
    reader = rps.CommandRps([str(script(tmp_path / "rps.sh", f'cat "{out}"\n'))], 2.0)
    out.write_text("4200.5\n")
    assert reader.read() == 4200.5
    for bad in ("", "-3", "nan", "many"):
        out.write_text(bad)
        with pytest.raises(ReadError, match="not a number of requests/s"):
            reader.read()


# -- bounded logging and pollers ---------------------------------------------------------------


def test_reader_log_is_bounded_in_rate(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = ReaderLog(every_s=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="router.agent"):
        for _ in range(100):
            log.failed("power", ReadError("upsc exited with status 1"), "power mains")
            clock.now += 1
        log.ok("power")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "power: upsc exited with status 1; reporting power mains",
        "power: upsc exited with status 1; reporting power mains (59 more failure(s) not logged)",
        "power: reading again after 100 failure(s)",
    ]


def test_a_poller_keeps_the_last_good_value() -> None:
    results: list = ["battery", RuntimeError("boom"), None]

    def read() -> object:
        item = results.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    poller = Poller("power", read, 1.0, ReaderLog())
    for _ in range(3):
        poller.poll()
    assert poller.value == "battery" and poller.reads == 3


# -- key file and options ----------------------------------------------------------------------


def run_agent_cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "router.agent", *argv], capture_output=True, text=True,
        timeout=timeout, cwd=REPO,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (secrets.token_hex(32), 0o644, "mode 0644); a secret must be readable by its owner only: chmod 600"),
        (secrets.token_hex(32), 0o640, "chmod 600"),
        ("not-hex-at-all", 0o600, "is not a hex key: expected one line of hexadecimal digits; write one node's key with `router keys export"),
        ("keys:\n  tef-mad-1: " + secrets.token_hex(32), 0o600, "it looks like a whole keys file"),
        (secrets.token_hex(8), 0o600, "holds a 8-byte key; a key is at least 16 bytes (32 hex digits)"),
        ("", 0o600, "is empty"),
    ],
    ids=["mode-0644", "mode-0640", "not-hex", "a-keys-file", "too-short", "empty"],
)  # fmt: skip
def test_bad_key_files_are_refused(
    tmp_path: Path, routers: list[socket.socket], capsys: pytest.CaptureFixture,
    content: str, mode: int, message: str,
) -> None:  # fmt: skip
    path = tmp_path / "node.key"
    path.write_text(content)
    path.chmod(mode)
    args = parse(["--node", NODE, "--key-file", str(path), "--router", address(routers[0]),
                  "--count", "1"])  # fmt: skip
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"router node-agent: --key-file: {path}") and message in err, err
    assert nothing_more(routers[0])


def test_missing_key_file_from_the_command_line(tmp_path: Path) -> None:
    done = run_agent_cli(
        "--node", NODE, "--key-file", str(tmp_path / "nope"), "--router", "127.0.0.1:9"
    )
    assert done.returncode == 2
    assert "router node-agent: --key-file: cannot read" in done.stderr
    assert "No such file" in done.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--router", "127.0.0.1"], "--router must be HOST:PORT"),
        (["--router", "::1:5300"], "write an IPv6 address in brackets, [::1]:5300"),
        (["--router", "no-such-host.invalid:5300"], "cannot resolve"),
        (["--gateway", "eth7=10.0.0.1"], "'eth7' is not an --uplink"),
        (["--uplink", "wan1=eth0", "--uplink", "wan1=eth1"], "'wan1' named twice"),
        (["--uplink", "x" * 33 + "=eth0"], "1-32 characters"),
        ([x for i in range(17) for x in ("--uplink", f"eth{i}")], "at most 16 uplinks"),
        (["--rps-url", "http://127.0.0.1:9/metrics"], "needs --rps-metric"),
        (["--rps-metric", "x_total"], "goes with --rps-url"),
        (["--rps-url", "ftp://x/metrics", "--rps-metric", "x"], "not an http(s) URL"),
        (["--ups", "edge@localhost", "--upsc", "/nonexistent/upsc"], "apt-get install nut-client"),
        (["--power-command", "/nonexistent/power-state"], "--power-command: no program"),
        (["--rtt-target", "10.0.0.0/8=10.0.0.1"], "a port is needed"),
        ([x for i in range(65) for x in ("--rtt-target", f"10.{i}.0.0/16=127.0.0.1:9")], "at most 64"),
        ([x for i in range(64) for x in ("--rtt-target", f"2001:db8:{i:x}:ffff:ffff:ffff:ff00:0/120=127.0.0.1:9")],
         "do not fit in one 1400-octet heartbeat"),
        (["--sysfs", "/nonexistent/sys"], "is not a directory"),
        (["--node", "x" * 65], "--node must be 1-64 octets"),
    ],
)  # fmt: skip
def test_bad_options_exit_2(
    key_file: tuple[Path, bytes], capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    argv = [
        "--node",
        NODE,
        "--key-file",
        str(key_file[0]),
        "--router",
        "127.0.0.1:9",
        "--count",
        "1",
    ]
    args = parse(argv + extra)
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("router node-agent: ") and message in err, err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("192.0.2.53:5300", ("192.0.2.53", 5300)), ("[2001:db8::53]:5300", ("2001:db8::53", 5300)),
     ("router-a.example:5300", ("router-a.example", 5300))],
)  # fmt: skip
def test_parse_router(text: str, expected: tuple[str, int]) -> None:
    assert parse_router(text) == expected


# -- end to end --------------------------------------------------------------------------------


def agent_argv(key: Path, sysfs: Path, socks: list[socket.socket], *extra: str) -> list[str]:
    argv = ["--node", NODE, "--key-file", str(key)]
    for sock in socks:
        argv += ["--router", address(sock)]
    return argv + ["--sysfs", str(sysfs), "--uplink", "wan1=eth0", "--uplink", "wan2=eth1",
                   "--interval", "0.2", *extra]  # fmt: skip


def verify_all(verifier: Verifier, packets: list[bytes]) -> list[Heartbeat]:
    return [verifier.verify(packet) for packet in packets]


def test_end_to_end_two_routers_and_a_restart(
    tmp_path: Path, key_file: tuple[Path, bytes], sysfs: Path, routers: list[socket.socket],
    metrics_server: dict,
) -> None:  # fmt: skip
    path, key = key_file
    upsc = fake_upsc(tmp_path)
    served = {"n": 0}

    def page() -> str:  # the cache serves 500 requests between two scrapes
        served["n"] += 500
        return PAGE % (served["n"], 0)

    metrics_server["page"] = page
    rtt_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    rtt_listener.bind(("127.0.0.1", 0))
    rtt_listener.listen(16)
    argv = agent_argv(
        path, sysfs, routers, "--count", "4", "--ups", "edge@localhost", "--upsc", str(upsc),
        "--rps-url", metrics_server["url"], "--rps-metric", "http_requests_total",
        "--rps-interval", "0.1", "--rtt-target", f"83.44.0.0/16=127.0.0.1:{rtt_listener.getsockname()[1]}",
        "--rtt-interval", "60",
    )  # fmt: skip
    # Each router checks on its own, as the routers of a service do; both started before.
    verifiers = [Verifier(keys={NODE: (key,)}) for _ in routers]
    try:
        done = run_agent_cli(*argv)
        assert done.returncode == 0, done.stderr
        first = [receive(sock, 4) for sock in routers]
        done = run_agent_cli(*argv)  # a restart
        assert done.returncode == 0, done.stderr
        second = [receive(sock, 4) for sock in routers]
    finally:
        rtt_listener.close()
    assert all(nothing_more(sock) for sock in routers)
    assert first[0] == first[1] and second[0] == second[1]  # the same bytes to every router

    for verifier, packets in zip(verifiers, (first[0] + second[0], first[1] + second[1])):
        beats = verify_all(verifier, packets)
        assert verifier.accepted == 8 and verifier.reboots == 1
        one, two = beats[:4], beats[4:]
        assert [b.seq for b in one] == [0, 1, 2, 3] and [b.seq for b in two] == [0, 1, 2, 3]
        assert len({b.boot for b in one}) == 1 and len({b.boot for b in two}) == 1
        assert one[0].boot != two[0].boot
        assert all(a.ts < b.ts for a, b in zip(beats, beats[1:]))
        for beat in beats:
            assert beat.node == NODE
            assert beat.power == "battery_low"  # upsc: OB LB, battery.charge 8
            assert beat.uplinks == {"wan1": "up", "wan2": "up"}
            assert beat.load_gbps == 0.0  # the counters did not move
            assert beat.rps > 0
        # One RTT round per run (every 60 s), sent in one heartbeat only.
        for run in (one, two):
            assert run[0].rtt and run[0].rtt[0][0] == "83.44.0.0/16" and run[0].rtt[0][1] < 1000
            assert all(b.rtt == () for b in run[1:])
    assert "boot " in done.stderr and "sent 4 heartbeat(s)" in done.stderr


def test_heartbeats_follow_the_host(
    key_file: tuple[Path, bytes], sysfs: Path, routers: list[socket.socket],
    full_listener: tuple[str, int],
) -> None:  # fmt: skip
    """In process: counters, carrier and gateway changing while the agent runs."""
    path, key = key_file
    supply(sysfs, "BAT0", type="Battery", status="Charging", capacity="90")
    args = parse(agent_argv(path, sysfs, routers[:1], "--count", "8",
                            "--gateway", f"eth1={full_listener[0]}:{full_listener[1]}",
                            "--gateway-timeout", "0.05", "--gateway-misses", "2"))  # fmt: skip
    verifier = Verifier(keys={NODE: (key,)})
    stop = threading.Event()

    def host() -> None:  # eth0 sends 100 MB/s (0.8 Gbps) while the agent runs
        sent = 10_000
        while not stop.wait(0.05):
            sent += 5_000_000
            set_counter(sysfs, "eth0", sent)

    thread = threading.Thread(target=host)
    thread.start()
    try:
        assert cli.run(args) == 0
    finally:
        stop.set()
        thread.join()
    beats = verify_all(verifier, receive(routers[0], 8))
    assert [b.seq for b in beats] == list(range(8))
    assert beats[-1].uplinks == {"wan1": "up", "wan2": "degraded"}  # eth1's gateway is silent
    assert all(b.power == "mains" for b in beats)
    assert all(0.2 < b.load_gbps < 2.0 for b in beats), [b.load_gbps for b in beats]

    # Now the carrier drops and the mains goes: the very next heartbeats say so.
    (sysfs / "class/net/eth0/carrier").write_text("0\n")
    (sysfs / "class/power_supply/AC/online").write_text("0\n")
    supply(sysfs, "BAT0", status="Discharging", capacity="50")
    assert cli.run(parse(agent_argv(path, sysfs, routers[:1], "--count", "2"))) == 0
    for beat in verify_all(verifier, receive(routers[0], 2)):
        assert beat.power == "battery" and beat.uplinks == {"wan1": "down", "wan2": "up"}


def test_a_failing_reader_never_stops_the_heartbeats(
    tmp_path: Path, key_file: tuple[Path, bytes], sysfs: Path, routers: list[socket.socket],
    metrics_server: dict, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    path, key = key_file
    hang = script(tmp_path / "power.sh", "sleep 30\n")
    metrics_server["delay"] = 5.0  # the metrics page never comes in time
    args = parse(agent_argv(path, sysfs, routers[:1], "--count", "8", "--power-command", str(hang),
                            "--command-timeout", "1", "--http-timeout", "1",
                            "--rps-url", metrics_server["url"], "--rps-metric", "cache_rps",
                            "--rps-interval", "0.2"))  # fmt: skip
    verifier = Verifier(keys={NODE: (key,)})
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="router.agent"):
        assert cli.run(args) == 0
    elapsed = time.monotonic() - started
    beats = verify_all(verifier, receive(routers[0], 8))
    assert [b.seq for b in beats] == list(range(8))
    assert all(b.power == "mains" and b.rps == 0.0 for b in beats)  # nothing known: defaults
    assert elapsed < 8 * 0.2 + 3.0
    gaps = [b.ts - a.ts for a, b in zip(beats, beats[1:])]
    assert max(gaps) < 0.6, gaps  # a heartbeat waiting on a reader would wait 1 s
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    power_lines = [w for w in warnings if w.startswith("power:")]
    assert power_lines == [f"power: {hang} did not finish within 1 s (killed); reporting power mains"]  # fmt: skip
    assert sum(w.startswith("rps:") for w in warnings) == 1


def drain(sock: socket.socket) -> list[bytes]:
    packets = []
    sock.settimeout(0.3)
    while True:
        try:
            packets.append(sock.recv(2048))
        except TimeoutError:
            return packets


def test_sigterm_with_off_on_exit(
    key_file: tuple[Path, bytes], sysfs: Path, routers: list[socket.socket]
) -> None:
    path, key = key_file
    verifiers = [Verifier(keys={NODE: (key,)}) for _ in routers]
    argv = agent_argv(path, sysfs, routers, "--off-on-exit", "--duration", "30")
    process = subprocess.Popen(
        [sys.executable, "-m", "router.agent", *argv], stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        running = [receive(sock, 3) for sock in routers]
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    packets = [before + drain(sock) for before, sock in zip(running, routers)]
    assert packets[0] == packets[1]
    for verifier, sent in zip(verifiers, packets):
        beats = verify_all(verifier, sent)
        assert [b.power for b in beats] == ["mains"] * (len(beats) - 1) + ["off"]
        assert beats[-1].seq == beats[-2].seq + 1
        assert beats[-1].uplinks == {"wan1": "up", "wan2": "up"}
    assert "SIGTERM: sent a last heartbeat saying power off" in err


def test_ipv6_router_address(key_file: tuple[Path, bytes], sysfs: Path) -> None:
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    sock.settimeout(5)
    path, key = key_file
    verifier = Verifier(keys={NODE: (key,)})
    try:
        assert cli.run(parse(agent_argv(path, sysfs, [sock], "--count", "2"))) == 0
        beats = verify_all(verifier, receive(sock, 2))
    finally:
        sock.close()
    assert [b.seq for b in beats] == [0, 1]


def test_send_errors_are_logged_and_the_other_routers_still_served(
    key_file: tuple[Path, bytes], sysfs: Path, routers: list[socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    path, key = key_file
    # 255.255.255.255 without SO_BROADCAST: sendto fails with EACCES at once, on every beat.
    args = parse(
        agent_argv(path, sysfs, routers[:1], "--count", "3", "--router", "255.255.255.255:9")
    )
    verifier = Verifier(keys={NODE: (key,)})
    with caplog.at_level(logging.INFO, logger="router.agent"):
        assert cli.run(args) == 0
    assert [b.seq for b in verify_all(verifier, receive(routers[0], 3))] == [0, 1, 2]
    failures = [
        r.getMessage() for r in caplog.records if "send to 255.255.255.255:9" in r.getMessage()
    ]
    assert len(failures) == 1 and os.strerror(errno.EACCES) in failures[0]
