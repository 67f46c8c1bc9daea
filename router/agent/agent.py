"""The agent's loop: readers polled in threads of their own, one heartbeat per interval.

Each reader runs in a ``Poller`` thread at its own period and keeps its last good value; the
sending loop only takes those values, so a reader that is slow (bounded by its timeout) or
failing never delays a heartbeat. A reader that fails keeps its last good value in the
heartbeats (until it has one: power ``mains``, load and rps 0, no uplink missing: every
configured uplink is read from sysfs, which does not fail), and the failure is logged at a
bounded rate (``ReaderLog``).

Every heartbeat is one packet (``router.health.telemetry.encode``), sent as it is to every
router; ``seq`` counts from 0 at each start, with a new boot id (``new_boot_id``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.agent.bounded import ReaderLog
from router.agent.rtt import RttRound
from router.config.secrets import SecretFileError, is_sample_key, read_secret_file
from router.health.telemetry import MAX_NODE_ID, Heartbeat, encode, new_boot_id

log = logging.getLogger("router.agent")

MIN_KEY_BYTES = 16
MAX_LOAD_GBPS = 1e6  # the schema's bounds (docs/heartbeat.md)
MAX_RPS = 1e9


def load_key(path: Path) -> bytes:
    """The node's key from ``--key-file`` (one hex line); SecretFileError saying what is wrong."""
    text = read_secret_file(path, "--key-file")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        hint = (
            "it looks like a whole keys file; "
            if "keys:" in text
            else "expected one line of hexadecimal digits; "
        )
        raise SecretFileError(
            f"--key-file: {path} is not a hex key: {hint}write one node's key with "
            "`router keys export --keys KEYS --node ID --out FILE`"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise SecretFileError(
            f"--key-file: {path} holds a {len(key)}-byte key; a key is at least {MIN_KEY_BYTES} "
            f"bytes ({2 * MIN_KEY_BYTES} hex digits): `router keys generate` makes 32"
        )
    if is_sample_key(key):
        log.warning(
            "--key-file: %s is a published sample key: routers accept it on loopback only", path
        )
    return key


def check_node_id(node: str) -> str:
    if not 1 <= len(node.encode()) <= MAX_NODE_ID:
        raise ValueError(f"--node must be 1-{MAX_NODE_ID} octets, as in nodes.yaml: {node!r}")
    return node


def parse_router(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6HOST]:PORT`` (a name is resolved once, at start)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--router must be HOST:PORT (IPv6 as [ADDR]:PORT), got {text!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"--router: unbalanced brackets in {text!r}")
    host = host.removeprefix("[").removesuffix("]")
    if ":" in host and not text.startswith("["):
        raise ValueError(f"--router: write an IPv6 address in brackets, [{host}]:{port}")
    return host, int(port)


@dataclass
class Destination:
    text: str
    family: int
    address: tuple[Any, ...]


def resolve_router(text: str) -> Destination:
    host, port = parse_router(text)
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"--router {text}: cannot resolve {host!r}: {exc}") from None
    return Destination(text, family, address)


class Poller:
    """Calls ``read`` every ``period`` s in a thread; ``value`` is its last good result.

    ``read`` returning None is "nothing yet" (a rate before its second read), not a failure."""

    def __init__(
        self, name: str, read: Callable[[], Any], period: float, log: ReaderLog,
        keeping: Callable[[], str] = lambda: "the last value read",
    ) -> None:  # fmt: skip
        self.name = name
        self._read = read
        self.period = period
        self.log = log
        self.keeping = keeping
        self.value: Any = None
        self.reads = 0  # attempts, good or not
        self._stop = threading.Event()
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"agent-{name}", daemon=True)

    def poll(self) -> None:
        try:
            value = self._read()
        except Exception as exc:  # noqa: BLE001 - a reader must never stop the heartbeats
            self.log.failed(self.name, exc, self.keeping())
        else:
            if value is not None:
                self.value = value
            self.log.ok(self.name)
        finally:
            with self._ready:
                self.reads += 1
                self._ready.notify_all()

    def _loop(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            self.poll()
            due += self.period
            now = time.monotonic()
            if due < now:  # a read took longer than its period: no burst to catch up
                due = now
            self._stop.wait(due - now)

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until there is a value, or two reads gave none (a rate needs two reads)."""
        with self._ready:
            return self._ready.wait_for(lambda: self.value is not None or self.reads >= 2, timeout)

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)


@dataclass
class Sources:
    """The pollers a heartbeat is made of (absent ones report nothing, or the default)."""

    power: Poller | None = None
    uplinks: Poller | None = None
    gateways: dict[str, Poller] = field(default_factory=dict)  # uplink name -> reachable?
    load: Poller | None = None
    rps: Poller | None = None
    rtt: Poller | None = None

    def all(self) -> list[Poller]:
        found = [self.power, self.uplinks, *self.gateways.values(), self.load, self.rps, self.rtt]
        return [p for p in found if p is not None]


class Agent:
    def __init__(
        self, node: str, key: bytes, destinations: list[Destination], sources: Sources,
        interval_s: float, log: ReaderLog | None = None, router_ids: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.node = node
        self.key = key
        self.router_ids = router_ids  # format 3: a MAC for each of these routers
        self.destinations = destinations
        self.sources = sources
        self.interval_s = interval_s
        self.log = log or ReaderLog()
        self.boot = new_boot_id()
        self.seq = -1  # the first heartbeat has seq 0
        self.sent = 0
        self._rtt_sent = 0  # the last RTT round put in a heartbeat
        self._socks: dict[int, socket.socket] = {}
        for family in {d.family for d in destinations}:
            self._socks[family] = socket.socket(family, socket.SOCK_DGRAM)

    def close(self) -> None:
        for poller in self.sources.all():
            poller.stop()
        deadline = time.monotonic() + 1.0  # a poller inside a slow read ends on its own
        for poller in self.sources.all():
            poller.join(max(0.0, deadline - time.monotonic()))
        for sock in self._socks.values():
            sock.close()

    def start(self, first_wait_s: float) -> None:
        """Start every poller; wait up to ``first_wait_s`` for each to have a value (a rate
        has one after its second read), so that the first heartbeat reports what is known."""
        pollers = self.sources.all()
        for poller in pollers:
            poller.start()
        deadline = time.monotonic() + first_wait_s
        for poller in pollers:
            poller.wait_ready(max(0.0, deadline - time.monotonic()))

    def heartbeat(self, power: str | None = None) -> Heartbeat:
        src = self.sources
        uplinks = dict(src.uplinks.value or {}) if src.uplinks else {}
        for name, gateway in src.gateways.items():
            if uplinks.get(name) == "up" and gateway.value is False:
                uplinks[name] = "degraded"
        rtt: tuple[tuple[str, float], ...] = ()
        latest = src.rtt.value if src.rtt else None
        if isinstance(latest, RttRound) and latest.number > self._rtt_sent:
            self._rtt_sent = latest.number
            rtt = latest.samples
        load = src.load.value if src.load and src.load.value is not None else 0.0
        rps = src.rps.value if src.rps and src.rps.value is not None else 0.0
        self.seq += 1
        return Heartbeat(
            node=self.node, boot=self.boot, seq=self.seq, ts=time.time(),
            power=power or (src.power.value if src.power and src.power.value else "mains"),
            uplinks=uplinks, load_gbps=min(float(load), MAX_LOAD_GBPS),
            rps=min(float(rps), MAX_RPS), rtt=rtt,
        )  # fmt: skip

    def send(self, power: str | None = None) -> bytes:
        """Make one heartbeat and send the same packet to every router; return the packet."""
        heartbeat = self.heartbeat(power)
        try:
            packet = encode(heartbeat, self.key, self.router_ids)
        except ValueError as exc:  # cannot happen with what cli.py checks; never stop for it
            self.log.failed("encode", exc, "the heartbeat without RTT samples")
            packet = encode(heartbeat._replace(rtt=()), self.key, self.router_ids)
        for destination in self.destinations:
            try:
                self._socks[destination.family].sendto(packet, destination.address)
            except OSError as exc:
                self.log.failed(f"send to {destination.text}", exc, "to the other routers")
            else:
                self.log.ok(f"send to {destination.text}")
        self.sent += 1
        return packet

    def run(self, stop: threading.Event, count: int | None = None, duration_s: float | None = None) -> None:  # fmt: skip
        """Send one heartbeat per interval until ``stop`` is set, ``count`` were sent or
        ``duration_s`` passed."""
        started = time.monotonic()
        due = started
        while not stop.is_set():
            if count is not None and self.sent >= count:
                return
            self.send()
            due += self.interval_s
            now = time.monotonic()
            if duration_s is not None and due - started > duration_s:
                return
            if due < now:  # the machine stalled: skip the beats missed rather than burst
                due = now + self.interval_s - (now - due) % self.interval_s
            stop.wait(due - now)
