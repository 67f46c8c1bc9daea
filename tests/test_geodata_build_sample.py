"""Tests for the sample client network map (geodata/iberia-clients.mmdb) and its builder.

Part (a) checks the committed files only and always runs. Part (b) rebuilds everything from the
shared source data into a temporary directory and checks the result matches what is committed;
it is skipped when the shared data folder is not present (e.g. a plain checkout in CI).
"""

from __future__ import annotations

import csv
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import maxminddb
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GEODATA = REPO_ROOT / "geodata"
MMDB = GEODATA / "iberia-clients.mmdb"
BUILDER = GEODATA / "build_sample.py"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CSV_FILES = (
    "country-locations.csv",
    "asn-locations.csv",
    "country-rtt.csv",
    "iberia-announced.csv",
)
LICENSE_FILES = (
    "ROUTEVIEWS-LICENSE",
    "DBIP-LICENSE",
    "NRO_LICENSE",
    "MODIFICATIONS",
    "MODIFICATIONS-router.txt",
    "IPTOASN-NOTICE",
)
CORE_COUNTRIES = {"ES", "PT", "AD", "GI"}
NEIGHBOUR_COUNTRIES = {"FR", "MA"}
# The ISPs of zones/nodes.yaml: their every announced prefix is in the map, wherever it is used.
NODE_ASNS = {3352, 12430, 12479, 3243, 2860, 12353}

# Known addresses, taken from the shared source data (ip-location-db npm 2.3.2026061719).
# Each is inside one row of ip-location-db-asn/asn-ipv{4,6}.csv.gz and one row of
# geo-whois-asn-country-ipv{4,6}.csv.gz, quoted below as "asn row / country row"; the prefix
# length is that of the CIDR block the builder derived from their intersection.
KNOWN: list[tuple[str, int, str, int]] = [
    # 83.32.0.0-83.63.255.255 AS3352 TELEFONICA DE ESPANA / 83.32.0.0-83.63.255.255 ES -> /11
    ("83.44.10.1", 3352, "ES", 11),
    # 85.240.0.0-85.247.255.255 AS3243 MEO / 85.240.0.0-85.247.255.255 PT -> /13
    ("85.241.20.30", 3243, "PT", 13),
    # 89.152.0.0-89.155.255.255 AS2860 NOS / 89.152.0.0-89.155.255.255 PT -> /14
    ("89.153.10.20", 2860, "PT", 14),
    # 2a02:9010:46::-2a02:91ff:... AS3352 / 2a02:9000::-2a02:91ff:... ES -> 2a02:9100::/24
    ("2a02:9100:1234::1", 3352, "ES", 24),
    # 2001:1588::-2001:158f:... AS2860 NOS / same range PT -> 2001:1588::/29
    ("2001:1588:10::1", 2860, "PT", 29),
    # 90.0.0.0-90.36.127.255 AS3215 Orange S.A. / 90.0.0.0-90.63.255.255 FR -> 90.0.0.0/11
    # (Orange is one of FR's top-3 IPv4 ASNs, so it is kept)
    ("90.10.20.30", 3215, "FR", 11),
    # 105.139.0.0-105.153.255.255 AS6713 Itissalat Al-MAGHRIB / 105.128.0.0-105.159.255.255 MA
    # -> 105.144.0.0/13
    ("105.145.1.1", 6713, "MA", 13),
    # 83.213.0.0-83.213.255.255 AS12338 Euskaltel / same range ES -> /16
    ("83.213.10.1", 12338, "ES", 16),
    # Announced prefixes (iptoasn ip2asn-v6): 2a01:cb00::-2a01:cb20:fff:... AS3215, which the
    # asn table gives to AS5511 (not kept) / 2a01:caa1::-2a01:cb22:7fff:... FR -> /27
    ("2a01:cb00::1", 3215, "FR", 27),
    # 2a02:2e02::-2a02:2e02:ffff:... AS12479 (the asn table: AS12715) / 2a02:2e00::/27 ES -> /32
    ("2a02:2e02::1", 12479, "ES", 32),
    # 90.68.0.0-90.69.255.255 AS12479 Orange Espagne / 90.65.0.0-90.84.95.255 FR (Orange S.A.'s
    # allocation) -> /15: announced by a sample ISP, so kept although FR's top 3 excludes it
    ("90.68.0.1", 12479, "FR", 15),
]

# Addresses that must not be in the map.
OUTSIDE: list[str] = [
    "8.8.8.8",  # Google, US
    # 176.128.0.0-176.140.107.255 AS5410 Bouygues Telecom, country FR: a French ISP that is not
    # among FR's top-3 by IPv4 space, so it is filtered out
    "176.128.1.1",
    "2001:4860:4860::8888",  # Google public DNS over IPv6
]


@pytest.fixture(scope="module")
def shipped() -> Iterator[maxminddb.Reader]:
    with maxminddb.open_database(str(MMDB)) as reader:
        yield reader


def read_locations(name: str, key: str) -> dict[str, tuple[float, float]]:
    with (GEODATA / name).open(encoding="utf-8", newline="") as handle:
        return {
            row[key]: (float(row["latitude"]), float(row["longitude"]))
            for row in csv.DictReader(handle)
        }


# ------------------------------------------------------------------------------------------
# (a) the committed database
# ------------------------------------------------------------------------------------------


def test_metadata(shipped: maxminddb.Reader) -> None:
    meta = shipped.metadata()
    assert meta.database_type == "Router-Client-Map"
    assert meta.ip_version == 6
    description = meta.description["en"]
    for credit in ("RouteViews", "https://db-ip.com", "nro.net", "CC BY 4.0"):
        assert credit in description


@pytest.mark.parametrize(("address", "asn", "country", "prefix_len"), KNOWN)
def test_known_addresses(
    shipped: maxminddb.Reader, address: str, asn: int, country: str, prefix_len: int
) -> None:
    record, found_len = shipped.get_with_prefix_len(address)
    assert record is not None
    assert record["autonomous_system_number"] == asn
    assert record["country"]["iso_code"] == country
    # For IPv4 the reader reports the IPv4 prefix length (not the ::/96-based one).
    assert found_len == prefix_len
    assert shipped.get(address) == record


def test_regional_isp_gets_home_location(shipped: maxminddb.Reader) -> None:
    record = shipped.get("83.213.10.1")  # Euskaltel, listed in asn-locations.csv (Bilbao)
    assert record is not None
    latitude, longitude = read_locations("asn-locations.csv", "asn")["12338"]
    assert record["location"] == {"latitude": latitude, "longitude": longitude}


@pytest.mark.parametrize("address", OUTSIDE)
def test_outside_selection(shipped: maxminddb.Reader, address: str) -> None:
    assert shipped.get(address) is None


def test_ipv4_mapped_ipv6_is_not_aliased(shipped: maxminddb.Reader) -> None:
    # The writer stores IPv4 under ::/96 only; ::ffff:a.b.c.d (what a dual-stack socket reports)
    # is not aliased to it, so callers must unwrap IPv4-mapped addresses before the lookup.
    assert shipped.get("::ffff:83.44.10.1") is None
    assert shipped.get("::83.44.10.1") == shipped.get("83.44.10.1")


def test_every_record(shipped: maxminddb.Reader) -> None:
    # Announced prefixes used outside the selected countries get the world table's point.
    countries = {
        **read_locations("world-country-locations.csv", "country"),
        **read_locations("country-locations.csv", "country"),
    }
    asn_homes = read_locations("asn-locations.csv", "asn")
    seen_versions: set[int] = set()
    neighbour_asns: dict[str, set[int]] = {c: set() for c in NEIGHBOUR_COUNTRIES}
    outside: dict[int, str] = {}  # ASN -> a country outside the selection it has a range in
    for network, record in shipped:
        # Iteration yields IPv4 networks as IPv4Network with IPv4 prefix lengths.
        assert isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network))
        seen_versions.add(network.version)
        assert set(record) == {
            "autonomous_system_number",
            "autonomous_system_organization",
            "country",
            "location",
        }
        asn = record["autonomous_system_number"]
        assert isinstance(asn, int) and asn > 0
        assert isinstance(record["autonomous_system_organization"], str)
        country = record["country"]["iso_code"]
        if country in NEIGHBOUR_COUNTRIES and asn not in NODE_ASNS:
            neighbour_asns[country].add(asn)
        elif country not in CORE_COUNTRIES | NEIGHBOUR_COUNTRIES:
            outside[asn] = country
        location = record["location"]
        expected = asn_homes.get(str(asn), countries[country])
        assert (location["latitude"], location["longitude"]) == expected
    assert seen_versions == {4, 6}
    assert all(len(asns) == 3 for asns in neighbour_asns.values()), neighbour_asns
    # Outside the selection only the sample's ASNs' announced prefixes, e.g. NOS in the US.
    assert outside and set(outside) <= NODE_ASNS | set().union(*neighbour_asns.values()), outside


# ------------------------------------------------------------------------------------------
# (b) rebuild from the shared data and compare
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared source data not found at {SHARED_DATA}; cannot rebuild geodata")
    out = tmp_path_factory.mktemp("geodata")
    # A subprocess runs the documented command line; -W error keeps the builder warning-free.
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            str(BUILDER),
            "--shared",
            str(SHARED_DATA),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    return out


def read_all(path: Path) -> tuple[dict[str, Any], dict[Any, Any]]:
    """Metadata (as a plain dict) and the network -> record map of a database."""
    with maxminddb.open_database(str(path)) as reader:
        meta = reader.metadata()
        fields = (
            "database_type",
            "description",
            "ip_version",
            "languages",
            "build_epoch",
            "node_count",
            "record_size",
        )
        return {name: getattr(meta, name) for name in fields}, dict(iter(reader))


def test_rebuild_gives_same_database(rebuilt: Path) -> None:
    shipped_meta, shipped_networks = read_all(MMDB)
    rebuilt_meta, rebuilt_networks = read_all(rebuilt / "iberia-clients.mmdb")
    assert rebuilt_meta == shipped_meta
    assert rebuilt_networks.keys() == shipped_networks.keys()
    assert rebuilt_networks == shipped_networks


@pytest.mark.parametrize("name", CSV_FILES)
def test_rebuild_gives_same_csv(rebuilt: Path, name: str) -> None:
    assert (rebuilt / name).read_bytes() == (GEODATA / name).read_bytes()


@pytest.mark.parametrize("name", LICENSE_FILES)
def test_rebuild_gives_same_licenses(rebuilt: Path, name: str) -> None:
    assert (rebuilt / "LICENSES" / name).read_bytes() == (GEODATA / "LICENSES" / name).read_bytes()
