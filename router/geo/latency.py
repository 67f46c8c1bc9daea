"""Measured latency between countries: ``country_a,country_b,rtt_ms,samples`` CSV.

Pairs are symmetric; a missing pair is estimated from distance by the steering core.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from router.config.problems import Problem

HEADER = ["country_a", "country_b", "rtt_ms", "samples"]


def load_country_rtt(path: Path, display: str) -> tuple[dict[tuple[str, str], float], list[Problem]]:
    """Read the table; every bad row is reported with its line."""
    table: dict[tuple[str, str], float] = {}
    problems: list[Problem] = []
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        return {}, [Problem(display, 1, f"cannot read latency table: {exc}")]
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != HEADER:
            return {}, [Problem(display, 1, f"header must be {','.join(HEADER)}, got {','.join(header or [])}")]
        for row in reader:
            line = reader.line_num
            if len(row) != len(HEADER):
                problems.append(Problem(display, line, f"expected {len(HEADER)} fields, got {len(row)}"))
                continue
            a, b, rtt_text, _samples = row
            if not (len(a) == 2 and a.isupper() and len(b) == 2 and b.isupper()):
                problems.append(Problem(display, line, f"country codes must be ISO 3166 alpha-2, got {a!r}, {b!r}"))
                continue
            try:
                rtt = float(rtt_text)
            except ValueError:
                problems.append(Problem(display, line, f"rtt_ms must be a number, got {rtt_text!r}"))
                continue
            if not math.isfinite(rtt) or rtt < 0:
                problems.append(Problem(display, line, f"rtt_ms must be a non-negative number, got {rtt_text!r}"))
                continue
            key = (min(a, b), max(a, b))
            if key in table:
                problems.append(Problem(display, line, f"pair {key[0]},{key[1]} is listed twice"))
                continue
            table[key] = rtt
    return table, problems
