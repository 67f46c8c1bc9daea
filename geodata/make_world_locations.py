#!/usr/bin/env python3
"""Derive ``world-country-locations.csv``: one representative point for every country code.

Run from the repository root (these are the defaults)::

    python geodata/make_world_locations.py --zone-tab /usr/share/zoneinfo/zone.tab

The output is committed; ``build_world.py`` only reads it, so this script is needed only to
refresh the table. Sources, in order of precedence:

1. ``country-locations.csv`` (hand-entered largest cities of the sample's countries), so both
   deployments place those countries identically.
2. ``HAND_ENTERED`` below: codes that appear in the IP data but have no time zone of their own.
3. The tz database's ``zone.tab`` (public domain): the coordinates of the city that names the
   country's time zone. The tz project names a zone after its most populous city, so for a
   single-zone country this is (by the tz maintainers' rule) the largest city. For a country with
   several zones the first row is taken, except where ``ZONE_OVERRIDES`` names the zone of the
   country's largest city. zone.tab gives degrees and minutes (some also seconds), so points are
   good to about 2 km.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

GEODATA_DIR = Path(__file__).resolve().parent
DEFAULT_ZONE_TAB = Path("/usr/share/zoneinfo/zone.tab")
SAMPLE_LOCATIONS = GEODATA_DIR / "country-locations.csv"
OUT = GEODATA_DIR / "world-country-locations.csv"
HEADER = ["country", "latitude", "longitude", "place"]

#: Multi-zone countries whose first zone.tab row is not their largest city.
ZONE_OVERRIDES: dict[str, str] = {
    "AU": "Australia/Sydney",  # first row: Lord Howe Island
    "BR": "America/Sao_Paulo",  # first row: Fernando de Noronha
    "CA": "America/Toronto",  # first row: St John's
    "RU": "Europe/Moscow",  # first row: Kaliningrad
    "UA": "Europe/Kyiv",  # first row: Simferopol
    "UZ": "Asia/Tashkent",  # first row: Samarkand
}

#: Codes in the IP data with no zone.tab row (no time zone of their own), entered by hand.
HAND_ENTERED: dict[str, tuple[float, float, str]] = {
    "AN": (12.1091, -68.9316, "Willemstad"),  # Netherlands Antilles (code withdrawn in 2010)
    "BV": (-54.4208, 3.3464, "Bouvet Island"),  # uninhabited; island centre
    "HM": (-53.0818, 73.5042, "Heard Island"),  # uninhabited; island centre
    "XK": (42.6629, 21.1655, "Pristina"),  # Kosovo (user-assigned code)
}


def parse_coordinate(text: str, degree_digits: int) -> float:
    """``+DDMM``/``+DDMMSS`` (latitude) or ``+DDDMM``/``+DDDMMSS`` (longitude) -> degrees."""
    sign = -1.0 if text[0] == "-" else 1.0
    digits = text[1:]
    degrees = int(digits[:degree_digits])
    minutes = int(digits[degree_digits : degree_digits + 2])
    seconds = int(digits[degree_digits + 2 :] or 0)
    return sign * (degrees + minutes / 60 + seconds / 3600)


def read_zone_tab(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    """Country code -> its zones in file order, as (latitude, longitude, tz name)."""
    zones: dict[str, list[tuple[float, float, str]]] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if not line or line.startswith("#"):
            continue
        code, coordinates, tz_name = line.split("\t")[:3]
        split = max(coordinates.rfind("+"), coordinates.rfind("-"))
        latitude = parse_coordinate(coordinates[:split], 2)
        longitude = parse_coordinate(coordinates[split:], 3)
        zones.setdefault(code, []).append((latitude, longitude, tz_name))
    return zones


def derive(zone_tab: Path, sample_locations: Path) -> list[list[str]]:
    points: dict[str, tuple[float, float, str]] = {}
    for code, rows in read_zone_tab(zone_tab).items():
        wanted = ZONE_OVERRIDES.get(code)
        chosen = next((row for row in rows if wanted is None or row[2] == wanted), None)
        if chosen is None:
            raise ValueError(f"{code}: zone {wanted} is not in {zone_tab}")
        latitude, longitude, tz_name = chosen
        points[code] = (latitude, longitude, tz_name.rsplit("/", 1)[-1].replace("_", " "))
    for code, point in HAND_ENTERED.items():
        if code in points:
            raise ValueError(f"{code} is in {zone_tab} now; drop it from HAND_ENTERED")
        points[code] = point
    with sample_locations.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            points[row["country"]] = (float(row["latitude"]), float(row["longitude"]), row["place"])
    return [
        [code, f"{latitude:.4f}", f"{longitude:.4f}", place]
        for code, (latitude, longitude, place) in sorted(points.items())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zone-tab", type=Path, default=DEFAULT_ZONE_TAB)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rows = derive(args.zone_tab, SAMPLE_LOCATIONS)
    with args.out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)
    print(f"wrote {args.out} ({len(rows)} countries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
