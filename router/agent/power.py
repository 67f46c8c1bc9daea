"""Where the node's power comes from: ``mains``, ``battery``, ``battery_low`` (or ``off``).

Three readers, one per source (docs/node-agent.md, "Power"):

- ``SysfsPower``: the kernel's ``/sys/class/power_supply/*``. A ``Mains`` (or ``USB``) supply
  with ``online`` 1 means mains. Otherwise a ``Battery`` (or ``UPS``) supply that is
  ``Discharging``, or any battery when every mains supply says offline, means battery, and
  battery_low when its ``capacity`` is below the threshold or its ``capacity_level`` is
  ``Critical`` or ``Low``. Supplies of ``scope`` ``Device`` (a mouse's battery) are ignored.
  No supply at all (most servers) reads as mains, with a note: the machine is running, so it
  has power, and a UPS is better read through NUT.
- ``UpscPower``: NUT's ``upsc UPS@HOST``; ``ups.status`` ``OB`` is battery, ``OB`` with ``LB``
  (or ``battery.charge`` below the threshold) battery_low, ``FSD`` battery_low, ``OL`` or
  ``BYPASS`` mains.
- ``CommandPower``: any command that prints one of the power states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from router.agent.bounded import ReadError, run_command
from router.health.telemetry import POWER_STATES

MAINS_TYPES = ("Mains", "USB")
BATTERY_TYPES = ("Battery", "UPS")
LOW_LEVELS = ("Critical", "Low")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class SysfsPower:
    def __init__(
        self, root: Path, low_percent: float, note: Callable[[str], None] = lambda _text: None
    ) -> None:
        self.directory = Path(root) / "class" / "power_supply"
        self.low_percent = low_percent
        self.note = note

    def describe(self) -> str:
        return f"sysfs {self.directory}"

    def _battery_low(self, supply: Path) -> bool:
        capacity = _number(_read(supply / "capacity"))
        if capacity is not None and capacity < self.low_percent:
            return True
        return _read(supply / "capacity_level") in LOW_LEVELS

    def read(self) -> str:
        try:
            supplies = sorted(p for p in self.directory.iterdir() if p.is_dir())
        except FileNotFoundError:
            supplies = []
        except OSError as exc:
            raise ReadError(f"cannot list {self.directory}: {exc.strerror or exc}") from None
        mains: list[Path] = []
        batteries: list[Path] = []
        for supply in supplies:
            if _read(supply / "scope") == "Device":
                continue  # a peripheral's battery, not the machine's
            kind = _read(supply / "type")
            if kind in MAINS_TYPES:
                mains.append(supply)
            elif kind in BATTERY_TYPES:
                batteries.append(supply)
        if any(_read(m / "online") == "1" for m in mains):
            return "mains"
        discharging = [b for b in batteries if _read(b / "status") == "Discharging"]
        # Every mains supply offline: the machine runs on whatever battery it has.
        on_battery = discharging or (batteries if mains else [])
        if on_battery:
            return "battery_low" if any(self._battery_low(b) for b in on_battery) else "battery"
        if not mains and not batteries:
            self.note(
                f"no power supply in {self.directory}: reporting mains "
                "(read a UPS with --ups, or use --power-command)"
            )
        elif mains and not batteries:
            self.note(f"every mains supply in {self.directory} says offline, and no battery: "
                      "reporting mains (the machine is running)")  # fmt: skip
        return "mains"  # a battery charging, full or idle: external power


def parse_upsc(text: str, low_percent: float) -> str:
    """The power state in ``upsc UPS`` output (``variable: value`` lines)."""
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            values[name.strip()] = value.strip()
    status = values.get("ups.status")
    if status is None:
        raise ReadError("no ups.status in the output of upsc")
    tokens = set(status.split())
    charge = _number(values.get("battery.charge"))
    low = charge is not None and charge < low_percent
    if "OB" in tokens:
        return "battery_low" if low or tokens & {"LB", "FSD"} else "battery"
    if "FSD" in tokens:  # the UPS has been told to shut down: power goes away soon
        return "battery_low"
    if tokens & {"OL", "BYPASS"}:
        return "mains"  # OL with LB is a battery recharging after an outage: still mains
    if "LB" in tokens:
        return "battery_low"
    raise ReadError(f"ups.status {status!r} says neither OL nor OB")


class UpscPower:
    def __init__(self, ups: str, upsc: str, timeout: float, low_percent: float) -> None:
        self.ups = ups
        self.upsc = upsc
        self.timeout = timeout
        self.low_percent = low_percent

    def describe(self) -> str:
        return f"NUT {self.upsc} {self.ups}"

    def read(self) -> str:
        return parse_upsc(run_command([self.upsc, self.ups], self.timeout), self.low_percent)


class CommandPower:
    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout

    def describe(self) -> str:
        return f"command {' '.join(self.argv)}"

    def read(self) -> str:
        out = run_command(self.argv, self.timeout).strip().lower()
        if out not in POWER_STATES:
            raise ReadError(
                f"{self.argv[0]} printed {out[:40]!r}, not one of {', '.join(POWER_STATES)}"
            )
        return out
