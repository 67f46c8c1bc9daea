"""Apache Traffic Control coverage zone files: CZF (``coverageZones``) and deep CZF
(``deepCoverageZones``), as Traffic Router reads them::

    {"revision": "...", "customerName": "...",
     "coverageZones": {
       "mad-centro": {"network": ["192.0.2.0/24"], "network6": ["2001:db8::/48"],
                      "coordinates": {"latitude": 40.42, "longitude": -3.70}}}}

A deep zone has the same fields plus ``caches`` (edge cache host names), which is checked
but not used: here nodes.yaml says where nodes are, and a zone only places its clients.
Each zone becomes client records with the zone's coordinates, its name as ``org`` (so
``router explain`` shows it) and ASN 0 / no country unless the operator gives ``asn`` and
``country`` for the whole file in deployment.yaml (a CZF is usually one ISP's).
``network`` holds IPv4 prefixes and ``network6`` IPv6 ones; both and ``coordinates`` are
optional, as in Traffic Router. Unlike Traffic Router, which logs and skips, every bad
entry is an error naming the zone and the index, and so is a prefix listed in two zones.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from router.geo.clientmap import ClientMapError, SourceProblem
from router.geo.importers.records import (
    ClientRecord,
    Entry,
    Problems,
    check_location,
    parse_prefix,
)

ZONES_KEY = {"czf": "coverageZones", "dczf": "deepCoverageZones"}
_NETWORK_KEYS = (("network", 4), ("network6", 6))


def coverage_kind(path: Path, label: str) -> str:
    """``"czf"`` or ``"dczf"``, from the file's top-level key."""
    data, _, _ = _load(path, label)
    found = [kind for kind, key in ZONES_KEY.items() if isinstance(data, dict) and key in data]
    if len(found) != 1:
        what = "both" if found else "neither"
        raise ClientMapError([SourceProblem(
            label, 0,
            f'has {what} "coverageZones" and "deepCoverageZones" at the top level: '
            "name it with czf: or dczf: in deployment.yaml",
        )])  # fmt: skip
    return found[0]


def read_coverage_zones(
    path: Path, label: str, kind: str, asn: int = 0, country: str = ""
) -> list[Entry]:
    """Every network of every zone; raises ClientMapError listing every problem."""
    data, text, duplicates = _load(path, label)
    key = ZONES_KEY[kind]
    other = ZONES_KEY["dczf" if kind == "czf" else "czf"]
    problems = Problems(label)
    where = _Locator(text)
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        hint = (
            f' (this file has "{other}": name it with {"dczf" if kind == "czf" else "czf"}:)'
            if isinstance(data, dict) and other in data
            else ""
        )
        raise ClientMapError([SourceProblem(label, 1, f'no "{key}" object at the top level{hint}')])
    for name in duplicates:
        problems.add(
            where.key(name, nth=2), f'"{name}" is defined twice (a JSON object keeps only the last)'
        )
    allowed = ("network", "network6", "coordinates") + (("caches",) if kind == "dczf" else ())
    entries: list[Entry] = []
    first_zone: dict[tuple[int, int, int], str] = {}
    for name, zone in data[key].items():
        line = where.key(name)
        label_zone = f'zone "{name}"'
        if not isinstance(zone, dict):
            problems.add(line, f"{label_zone}: must be an object with {', '.join(allowed)}")
            continue
        for field in zone:
            if field not in allowed:
                problems.add(
                    where.key(field, after=line),
                    f'{label_zone}: unknown field "{field}" (valid: {", ".join(allowed)})',
                )
        lat, lon = _coordinates(zone.get("coordinates"), label_zone, line, where, problems)
        if "caches" in zone and not (
            isinstance(zone["caches"], list) and all(isinstance(c, str) for c in zone["caches"])
        ):
            problems.add(
                where.key("caches", after=line),
                f"{label_zone}: caches must be a list of cache host names",
            )
        record = ClientRecord(asn=asn, country=country, lat=lat, lon=lon, org=str(name))
        for field, version in _NETWORK_KEYS:
            networks = zone.get(field, [])
            if not isinstance(networks, list):
                problems.add(
                    where.key(field, after=line),
                    f"{label_zone}: {field} must be a list of IPv{version} prefixes",
                )
                continue
            for index, item in enumerate(networks):
                what = f"{label_zone} {field}[{index}]"
                try:
                    if not isinstance(item, str):
                        raise ValueError(f"must be a prefix in quotes, got {item!r}")
                    prefix = parse_prefix(item.strip(), version)
                except ValueError as exc:
                    problems.add(where.value(item, after=line), f"{what}: {exc}")
                    continue
                owner = first_zone.setdefault(prefix, str(name))
                if owner != name:
                    problems.add(
                        where.value(item, after=line), f'{what}: {item} is also in zone "{owner}"'
                    )
                    continue
                entries.append(Entry(*prefix, record))
    problems.raise_if_any()
    return entries


def _coordinates(
    value: Any, label_zone: str, line: int, where: _Locator, problems: Problems
) -> tuple[float, float]:
    if value is None:
        return math.nan, math.nan
    at = where.key("coordinates", after=line)
    if not isinstance(value, dict) or set(value) - {"latitude", "longitude"}:
        problems.add(at, f"{label_zone}: coordinates must be an object with latitude and longitude")
        return math.nan, math.nan
    try:
        return check_location(value.get("latitude"), value.get("longitude"))
    except ValueError as exc:
        problems.add(at, f"{label_zone}: coordinates: {exc}")
        return math.nan, math.nan


def _load(path: Path, label: str) -> tuple[Any, str, list[str]]:
    """The parsed JSON, its text, and the keys some object repeats."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                duplicates.append(key)
            seen[key] = value
        return seen

    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientMapError(
            [SourceProblem(label, 0, f"cannot read coverage zone file: {exc}")]
        ) from exc
    try:
        return json.loads(text, object_pairs_hook=pairs), text, duplicates
    except json.JSONDecodeError as exc:
        raise ClientMapError(
            [SourceProblem(label, exc.lineno, f"not valid JSON: {exc.msg} (column {exc.colno})")]
        ) from exc


class _Locator:
    """Finds the line of a key or a string in the JSON text, so problems can point at it.

    A plain text search, good enough for the files operators write: a key is its quoted
    name followed by a colon. Returns 0 (no line) when the text is not found.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def _line(self, offset: int) -> int:
        lo, hi = 0, len(self.line_starts)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid
        return lo + 1

    def _offset(self, line: int) -> int:
        return self.line_starts[line - 1] if line > 0 else 0

    def key(self, name: str, after: int = 0, nth: int = 1) -> int:
        pattern = re.compile(re.escape(json.dumps(name)) + r"\s*:")
        matches = pattern.finditer(self.text, self._offset(after))
        for count, match in enumerate(matches, start=1):
            if count == nth:
                return self._line(match.start())
        return after

    def value(self, value: Any, after: int = 0) -> int:
        offset = self.text.find(json.dumps(value), self._offset(after))
        return self._line(offset) if offset >= 0 else after
