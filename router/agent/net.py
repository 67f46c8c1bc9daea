"""Uplinks and load from the kernel's network interfaces (``/sys/class/net/IF``).

An uplink is ``up`` when its ``operstate`` is ``up`` (or ``unknown``, which drivers without
operstate report) and its ``carrier`` is 1; ``degraded`` when the operstate is ``dormant`` or
``testing``, or when it is up but its gateway stopped answering (``GatewayCheck``); ``down``
otherwise, and when the interface does not exist. Load is the growth of the interfaces'
``statistics/tx_bytes`` (or ``rx_bytes``) counters over time, summed, in Gbps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

from router.agent.bounded import ReadError
from router.agent.probe import connect_times

UP_OPERSTATES = ("up", "unknown")
DEGRADED_OPERSTATES = ("dormant", "testing")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # carrier of an interface that is administratively down: EINVAL
        return None


def link_state(net: Path, interface: str) -> str | None:
    """``up``, ``degraded`` or ``down`` from sysfs; None if there is no such interface."""
    directory = net / interface
    if not directory.is_dir():
        return None
    operstate = _read(directory / "operstate")
    if operstate in UP_OPERSTATES:
        return "up" if _read(directory / "carrier") == "1" else "down"
    if operstate in DEGRADED_OPERSTATES:
        return "degraded"
    return "down"


class UplinkReader:
    """Every uplink's state; ``links`` maps the name reported to the interface read."""

    def __init__(
        self, root: Path, links: Mapping[str, str], note: Callable[[str], None] = lambda _t: None
    ) -> None:
        self.net = Path(root) / "class" / "net"
        self.links = dict(links)
        self.note = note

    def read(self) -> dict[str, str]:
        states = {}
        missing = []
        for name, interface in self.links.items():
            state = link_state(self.net, interface)
            if state is None:
                missing.append(interface)
                state = "down"
            states[name] = state
        if missing:
            self.note(f"no interface {', '.join(missing)} in {self.net}: reported down")
        return states


class GatewayCheck:
    """Whether a gateway answers a TCP connect (a refusal is an answer); unreachable only after
    ``misses`` probes in a row went unanswered, so one lost packet does not drain the node."""

    def __init__(self, address: tuple[str, int], timeout: float, misses: int) -> None:
        self.address = address
        self.timeout = timeout
        self.misses = misses
        self.missed = 0

    def read(self) -> bool:
        answered = connect_times([self.address], self.timeout)[0] is not None
        self.missed = 0 if answered else self.missed + 1
        return self.missed < self.misses


class LoadReader:
    """Gbps over the last two reads of each interface's byte counter, summed.

    The first read of an interface gives no rate (None until every interface has one). A
    counter that went backwards (a driver reset, or a 32-bit counter wrapping) gives no rate
    for that read; the interface's previous rate stands in. A vanished interface carries
    nothing."""

    def __init__(
        self, root: Path, interfaces: list[str], counter: str = "tx_bytes",
        clock: Callable[[], float] = time.monotonic, note: Callable[[str], None] = lambda _t: None,
    ) -> None:  # fmt: skip
        self.net = Path(root) / "class" / "net"
        self.interfaces = list(interfaces)
        self.counter = counter
        self.clock = clock
        self.note = note
        self._last: dict[str, tuple[float, int]] = {}
        self._rate: dict[str, float] = {}  # bits per second

    def read(self) -> float | None:
        now = self.clock()
        problems = []
        for interface in self.interfaces:
            path = self.net / interface / "statistics" / self.counter
            text = _read(path)
            if text is None:
                if not (self.net / interface).is_dir():
                    problems.append(f"no interface {interface}: it carries nothing")
                    self._last.pop(interface, None)
                    self._rate[interface] = 0.0
                    continue
                raise ReadError(f"cannot read {path}")
            try:
                octets = int(text)
            except ValueError:
                raise ReadError(f"{path}: not a number: {text[:40]!r}") from None
            previous = self._last.get(interface)
            self._last[interface] = (now, octets)
            if previous is None or now <= previous[0]:
                continue
            if octets < previous[1]:
                problems.append(f"{path} went backwards (counter reset): one read skipped")
                continue
            self._rate[interface] = (octets - previous[1]) * 8 / (now - previous[0])
        if problems:
            self.note("; ".join(problems))
        if any(interface not in self._rate for interface in self.interfaces):
            return None
        return round(sum(self._rate[i] for i in self.interfaces) / 1e9, 6)
