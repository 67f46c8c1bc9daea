"""MaxMind-format databases (``.mmdb``): GeoIP2/GeoLite2 City, Country, ASN, ISP, and the
router's own layout (all of those fields in one record, ``database_type`` "Router-Client-Map").

Fields read, wherever a record has them (GeoIP2 names):

- ``autonomous_system_number`` (ASN, ISP and router databases; ``traits.`` in Enterprise);
- org: ``isp`` (ISP), else ``autonomous_system_organization`` (ASN), else ``organization``;
- ``country.iso_code`` (City, Country);
- ``location.latitude`` / ``location.longitude`` (City).

The flat layout of the ip-location-db project's MaxMind-format files (``country_code``,
``latitude``, ``longitude`` at the top of the record) is read too.

A network whose record has none of them says nothing and is skipped, so it never hides
what another database knows. A database in which no network has any of them (say, a
Connection-Type or Anonymous-IP database named by mistake) is an error.
"""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path
from typing import Any

import maxminddb

from router.geo.clientmap import ClientMapError, SourceProblem
from router.geo.importers.records import MAX_ASN, ClientRecord, Entry, check_country

_V4_IN_V6 = ipaddress.IPv6Network("::/96")
# Aliases of the IPv4 tree that MaxMind-format writers may add; the IPv4 view covers them.
_V4_ALIASES = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("2002::/16"))

# database_type fragment -> what the database gives, for messages and `mmdb_kind`.
_KINDS = (
    ("Router-Client-Map", "router"),
    ("ASN", "asn"),
    ("ISP", "isp"),
    ("Enterprise", "city"),
    ("City", "city"),
    ("Country", "country"),
)


def mmdb_kind(database_type: str) -> str:
    """``"asn"``, ``"isp"``, ``"city"``, ``"country"``, ``"router"``, else ``"other"``."""
    for fragment, kind in _KINDS:
        if fragment.lower() in database_type.lower():
            return kind
    return "other"


def read_mmdb(path: Path, label: str) -> list[Entry]:
    """Every network of the database that carries a client field; raises ClientMapError."""
    try:
        reader = maxminddb.open_database(str(path))
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise ClientMapError(
            [SourceProblem(label, 0, f"cannot open MaxMind database: {exc}")]
        ) from exc
    entries: list[Entry] = []
    records: dict[ClientRecord, ClientRecord] = {}  # one object per distinct record
    try:
        with reader:
            database_type = str(reader.metadata().database_type)
            for network, data in reader:
                network = _ipv4_view(network)
                if network is None or not isinstance(data, dict):
                    continue
                record = _record(data)
                if not record.is_empty:
                    entries.append(Entry.of(network, records.setdefault(record, record)))
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise ClientMapError([SourceProblem(label, 0, f"broken MaxMind database: {exc}")]) from exc
    if not entries:
        kind = mmdb_kind(database_type)
        what = (
            f'"{database_type}" database'
            if kind == "other"
            else f"{kind} database ({database_type})"
        )
        raise ClientMapError([SourceProblem(
            label, 0,
            f"no network in this {what} has autonomous_system_number, country.iso_code or "
            "location.latitude/longitude: use a City, Country, ASN or ISP database",
        )])  # fmt: skip
    return entries


def _ipv4_view(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    if network.version == 4:
        return network
    if network.subnet_of(_V4_IN_V6) and network.prefixlen >= 96:  # type: ignore[arg-type]
        return ipaddress.IPv4Network((int(network.network_address), network.prefixlen - 96))
    if any(network.subnet_of(alias) for alias in _V4_ALIASES):  # type: ignore[arg-type]
        return None
    return network


def _record(data: dict[str, Any]) -> ClientRecord:
    traits = _mapping(data.get("traits"))
    asn = data.get("autonomous_system_number", traits.get("autonomous_system_number"))
    org = ""
    for key in ("isp", "autonomous_system_organization", "organization"):
        org = data.get(key) or traits.get(key) or ""
        if org:
            break
    try:
        country = check_country(
            str(_mapping(data.get("country")).get("iso_code") or data.get("country_code") or "")
        )
    except ValueError:
        country = ""  # not a country code (e.g. a test database's odd value): unknown
    location = _mapping(data.get("location")) or data  # ip-location-db keeps them at the top
    lat, lon = location.get("latitude"), location.get("longitude")
    placed = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lat, lon))
    return ClientRecord(
        asn=asn
        if isinstance(asn, int) and not isinstance(asn, bool) and 0 <= asn <= MAX_ASN
        else 0,
        country=country,
        lat=float(lat) if placed else math.nan,  # type: ignore[arg-type]
        lon=float(lon) if placed else math.nan,  # type: ignore[arg-type]
        org=str(org),
    )


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
