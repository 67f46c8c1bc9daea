"""Measured latency: between countries, and from nodes to client prefixes.

``country_a,country_b,rtt_ms,samples``: country-to-country RTT. Pairs are symmetric; a
missing pair is estimated from distance by the steering core.

``prefix,node,rtt_ms,measured_at``: RTT a node measured to a client prefix (measured_at:
Unix seconds or ISO 8601 with a zone). Fused like the samples in node heartbeats and
aged out the same way (``router.steering.samples``).
"""

from __future__ import annotations

import csv
import datetime as dt
import ipaddress
import math
from dataclasses import dataclass
from pathlib import Path

from router.config.problems import Problem

HEADER = ["country_a", "country_b", "rtt_ms", "samples"]


def load_country_rtt(
    path: Path, display: str
) -> tuple[dict[tuple[str, str], float], list[Problem]]:
    """Read the table; every bad row is reported with its line."""
    table: dict[tuple[str, str], float] = {}
    rows, problems = _csv_rows(path, display, HEADER, "latency table")
    for line, row in rows:
        a, b, rtt_text, _samples = row
        if not (len(a) == 2 and a.isupper() and len(b) == 2 and b.isupper()):
            problems.append(
                Problem(display, line, f"country codes must be ISO 3166 alpha-2, got {a!r}, {b!r}")
            )
            continue
        try:
            rtt = float(rtt_text)
        except ValueError:
            problems.append(Problem(display, line, f"rtt_ms must be a number, got {rtt_text!r}"))
            continue
        if not math.isfinite(rtt) or rtt < 0:
            problems.append(
                Problem(display, line, f"rtt_ms must be a non-negative number, got {rtt_text!r}")
            )
            continue
        key = (min(a, b), max(a, b))
        if key in table:
            problems.append(Problem(display, line, f"pair {key[0]},{key[1]} is listed twice"))
            continue
        table[key] = rtt
    return table, sorted(problems, key=lambda problem: problem.line)  # file order


SAMPLES_HEADER = ["prefix", "node", "rtt_ms", "measured_at"]


@dataclass(frozen=True)
class RttSample:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    node: str
    rtt_ms: float
    measured_at: float  # Unix seconds


def load_rtt_samples(
    path: Path, display: str, node_ids: set[str]
) -> tuple[list[RttSample], list[Problem]]:
    """Read a node-to-prefix RTT file; every bad row is reported with its line."""
    samples: list[RttSample] = []
    rows, problems = _csv_rows(path, display, SAMPLES_HEADER, "RTT samples")
    for line, row in rows:
        prefix, node, rtt_text, when = row
        try:
            network = ipaddress.ip_network(prefix, strict=True)
        except ValueError as exc:
            problems.append(Problem(display, line, f"prefix: {exc}"))
            continue
        if node not in node_ids:
            problems.append(Problem(display, line, f'unknown node "{node}" (not in nodes.yaml)'))
            continue
        try:
            rtt = float(rtt_text)
        except ValueError:
            rtt = math.nan
        if not math.isfinite(rtt) or not 0 <= rtt <= 10_000:
            problems.append(
                Problem(display, line, f"rtt_ms must be a number from 0 to 10000, got {rtt_text!r}")
            )
            continue
        measured_at = _timestamp(when)
        if measured_at is None:
            problems.append(
                Problem(
                    display,
                    line,
                    f"measured_at must be Unix seconds or ISO 8601 with a zone, got {when!r}",
                )
            )
            continue
        samples.append(RttSample(network, node, rtt, measured_at))
    return samples, sorted(problems, key=lambda problem: problem.line)  # file order


def _timestamp(text: str) -> float | None:
    try:
        value = float(text)
        return value if math.isfinite(value) else None
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _csv_rows(
    path: Path, display: str, header: list[str], what: str
) -> tuple[list[tuple[int, list[str]]], list[Problem]]:
    """(line, fields) of every row with the header's field count, and problems for the rest.

    An unreadable file or a wrong header is one problem and no rows.
    """
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        return [], [Problem(display, 1, f"cannot read {what}: {exc}")]
    rows: list[tuple[int, list[str]]] = []
    problems: list[Problem] = []
    with handle:
        reader = csv.reader(handle)
        found = next(reader, None)
        if found != header:
            return [], [
                Problem(
                    display, 1, f"header must be {','.join(header)}, got {','.join(found or [])}"
                )
            ]
        for row in reader:
            if len(row) != len(header):
                problems.append(
                    Problem(
                        display, reader.line_num, f"expected {len(header)} fields, got {len(row)}"
                    )
                )
            else:
                rows.append((reader.line_num, row))
    return rows, problems
