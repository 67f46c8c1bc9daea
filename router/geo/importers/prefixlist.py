"""CSV prefix lists: the operator's own prefixes, and the world builder's output.

The column contract (``geodata/build_world.py`` writes exactly this)::

    # comment lines start with "#"; blank lines are skipped
    prefix,asn,country,latitude,longitude,org
    83.32.0.0/11,3352,ES,40.4168,-3.7038,Telefonica de Espana
    2a02:9000::/23,3352,ES,,,
    192.0.2.0/24,,,,,

``prefix`` is required (IPv4 or IPv6, no host bits set; a bare address is a /32 or /128);
every other column may be empty (unknown). ``asn`` is a whole number, ``country`` an ISO
3166-1 alpha-2 code (upper-cased on reading), ``latitude``/``longitude`` degrees, both or
neither. The header may leave columns out or change their order but may not add others.
A prefix may appear once per file. Problems carry the CSV line number.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from operator import itemgetter
from pathlib import Path
from typing import TextIO

from router.geo.clientmap import ClientMapError, SourceProblem
from router.geo.importers.records import (
    ClientRecord,
    Entry,
    Problems,
    check_asn,
    check_country,
    check_location,
    parse_prefix,
)

CSV_COLUMNS = ("prefix", "asn", "country", "latitude", "longitude", "org")


def read_prefix_list(path: Path, label: str) -> list[Entry]:
    """Every row of the file; raises ClientMapError listing every problem (with lines)."""
    try:
        with path.open(encoding="utf-8", newline="") as stream:
            return _read(stream, label)
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientMapError([SourceProblem(label, 0, f"cannot read prefix list: {exc}")]) from exc


def _read(stream: TextIO, label: str) -> list[Entry]:
    problems = Problems(label)
    lines = stream.readlines()
    numbers = [n for n, line in enumerate(lines, start=1) if not line.lstrip().startswith("#")]
    rows = csv.reader([lines[n - 1] for n in numbers])
    header = next(rows, None)
    if header is None:
        raise ClientMapError(
            [
                SourceProblem(
                    label,
                    0,
                    f"empty file: the first line must be the header {','.join(CSV_COLUMNS)}",
                )
            ]
        )
    columns = [name.strip() for name in header]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if unknown or "prefix" not in columns or len(set(columns)) != len(columns):
        raise ClientMapError([SourceProblem(
            label, numbers[rows.line_num - 1],
            f"header must name the columns {','.join(CSV_COLUMNS)} (prefix required, each once), got {','.join(header)}",
        )])  # fmt: skip
    width = len(columns)
    # Missing columns read the "" appended to every row of such a file.
    fields_of = itemgetter(
        *(columns.index(name) if name in columns else width for name in CSV_COLUMNS[1:])
    )
    i_prefix = columns.index("prefix")
    pad = width < len(CSV_COLUMNS)
    entries: list[Entry] = []
    first_line: dict[tuple[int, int, int], int] = {}
    records: dict[tuple[str, ...], ClientRecord] = {}  # rows with the same fields share a record
    for row in rows:
        if not row:
            continue
        line = numbers[rows.line_num - 1]
        if len(row) != width:
            problems.add(line, f"expected {width} fields ({','.join(columns)}), got {len(row)}")
            continue
        text = row[i_prefix].strip()
        try:
            prefix = parse_prefix(text)
        except ValueError as exc:
            problems.add(line, f"prefix: {exc}")
            continue
        first = first_line.setdefault(prefix, line)
        if first != line:
            problems.add(line, f"prefix {text} is already listed at line {first}")
            continue
        if pad:
            row.append("")
        fields = fields_of(row)
        record = records.get(fields)
        if record is None:
            try:
                record = records[fields] = _record(*(field.strip() for field in fields))
            except ValueError as exc:
                problems.add(line, f"{text}: {exc}")
                continue
        entries.append(Entry(prefix[0], prefix[1], prefix[2], record))
    problems.raise_if_any()
    return entries


def _record(asn: str, country: str, lat: str, lon: str, org: str) -> ClientRecord:
    latitude, longitude = check_location(lat or None, lon or None)
    return ClientRecord(
        asn=check_asn(asn) if asn else 0,
        country=check_country(country),
        lat=latitude,
        lon=longitude,
        org=org,
    )


def format_prefix_list(entries: Iterable[Entry]) -> str:
    """The CSV text of ``entries`` (header included), as ``read_prefix_list`` reads it."""
    out = io.StringIO()
    write_prefix_list(out, entries)
    return out.getvalue()


def write_prefix_list(stream: TextIO, entries: Iterable[Entry]) -> None:
    """Write the header and one row per entry; unknown fields are left empty."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        r = entry.record
        placed = not (math.isnan(r.lat) or math.isnan(r.lon))
        writer.writerow((
            str(entry.network), r.asn or "", r.country,
            repr(r.lat) if placed else "", repr(r.lon) if placed else "", r.org,
        ))  # fmt: skip
