"""Client-map importers (router/geo/importers/): every format, every rule for combining them.

- MaxMind-format databases: small ones written on the fly with ``mmdb_writer`` (always run),
  then MaxMind's own test databases held to their JSON sources (run when ../shared/data is
  checked out) and the deliberately broken ones.
- Traffic Control coverage zone files (CZF, DCZF) and CSV prefix lists: the fixtures in
  ``tests/fixtures/clientmap/`` and one table row per failure, with the exact message.
- Combining sources: hand-worked cases of the precedence rules, and a property test holding
  ``build_client_map`` equal to a brute-force reading of the rules, address by address.
"""

from __future__ import annotations

import ipaddress
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from router.geo import UNKNOWN_GROUP, ClientMap, ClientMapError
from router.geo.importers import (
    CSV_COLUMNS,
    ClientRecord,
    Entry,
    Source,
    build_client_map,
    format_prefix_list,
    load_mmdb,
    mmdb_kind,
    read_source,
)
from router.geo.importers.merge import fill, merge
from router.geo.importers.records import parse_prefix

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "clientmap"
MAXMIND = Path(__file__).resolve().parents[2] / "shared" / "data" / "maxmind-test-data"
needs_maxmind = pytest.mark.skipif(
    not (MAXMIND / "test-data").is_dir(), reason=f"MaxMind test data not present at {MAXMIND}"
)
NAN = math.nan


def rec(
    asn: int = 0, country: str = "", lat: float = NAN, lon: float = NAN, org: str = ""
) -> ClientRecord:
    return ClientRecord(asn, country, lat, lon, org)


def as_dict(entries: list[Entry]) -> dict[str, ClientRecord]:
    return {str(e.network): e.record for e in entries}


def same(a: ClientRecord, b: ClientRecord) -> bool:
    """Equal, NaN included."""
    return all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in zip(a, b)
    )


def fields_at(cmap: ClientMap, address: str) -> tuple[ClientRecord, int] | None:
    """The group's fields and the ECS scope at ``address``; None when unknown."""
    group, scope = cmap.lookup(ipaddress.ip_address(address))
    if group == UNKNOWN_GROUP:
        return None
    g = cmap.groups
    lat, lon = (NAN if math.isnan(v) else float(v) for v in (g.lat[group], g.lon[group]))
    return rec(int(g.asn[group]), g.country[group], lat, lon, g.org[group]), scope


def write_mmdb(path: Path, database_type: str, networks: dict[str, Any]) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=database_type,
                        int_type="u32", float_type="f64")  # fmt: skip
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def city(country: str, lat: float, lon: float) -> dict[str, Any]:
    return {"country": {"iso_code": country, "names": {"en": country}},
            "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20}}  # fmt: skip


def asn(number: int, org: str) -> dict[str, Any]:
    return {"autonomous_system_number": number, "autonomous_system_organization": org}


def write_csv(path: Path, text: str) -> Source:
    path.write_text(text, encoding="utf-8")
    return Source("csv", path)


def problems_of(source: Source) -> list[str]:
    with pytest.raises(ClientMapError) as caught:
        read_source(source)
    assert str(caught.value) == "\n".join(str(p) for p in caught.value.problems)
    return [str(p) for p in caught.value.problems]


# --- prefixes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.0/24", (4, 0xC0000200, 24)),
        ("192.0.2.7", (4, 0xC0000207, 32)),
        ("0.0.0.0/0", (4, 0, 0)),
        ("2001:db8::/32", (6, 0x20010DB8 << 96, 32)),
        ("::1", (6, 1, 128)),
        ("192.0.2.0/24x", "'192.0.2.0/24x': prefix length must be 0 to 32"),
        ("192.0.2.0/33", "'192.0.2.0/33': prefix length must be 0 to 32"),
        ("2001:db8::/129", "'2001:db8::/129': prefix length must be 0 to 128"),
        ("192.0.2.1/24", "'192.0.2.1/24' has host bits set (the network is 192.0.2.0/24)"),
        ("192.0.2/24", "'192.0.2/24' is not an IP prefix"),
        ("example.net/24", "'example.net/24' is not an IP prefix"),
        ("", "'' is not an IP prefix"),
    ],
)
def test_parse_prefix(text: str, expected: tuple[int, int, int] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(ValueError) as caught:
            parse_prefix(text)
        assert str(caught.value) == expected
    else:
        assert parse_prefix(text) == expected


def test_parse_prefix_checks_the_family() -> None:
    assert parse_prefix("192.0.2.0/24", 4)[0] == 4
    with pytest.raises(ValueError, match=r"^'192.0.2.0/24' is not an IPv6 prefix$"):
        parse_prefix("192.0.2.0/24", 6)


# --- CSV prefix lists --------------------------------------------------------------------------


def test_csv_fixture() -> None:
    entries = read_source(Source("csv", FIXTURES / "overrides.csv"))
    assert [(str(e.network), e.record) for e in entries] == [
        ("198.51.100.64/26", rec(64500, "ES", 40.4168, -3.7038, "Example ISP business")),
        ("2001:db8:300::/48", rec(64501, "PT", NAN, NAN, "Example ISP Portugal")),
        ("192.0.2.128/25", rec()),
    ]  # unknown coordinates are always the math.nan object, so records compare equal


def test_csv_columns_may_be_reordered_left_out_and_padded(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "x.csv", "org , prefix,country\n Telefonica ,83.32.0.0/11, es \n")
    (entry,) = read_source(source)
    assert str(entry.network) == "83.32.0.0/11"
    assert same(entry.record, rec(0, "ES", NAN, NAN, "Telefonica"))


def test_csv_round_trip(tmp_path: Path) -> None:
    entries = [
        Entry.of(
            ipaddress.ip_network("83.32.0.0/11"),
            rec(3352, "ES", 40.4168, -3.7038, 'Telefonica, "TdE"'),
        ),
        Entry.of(ipaddress.ip_network("2a02:9000::/23"), rec(3352, "ES", NAN, NAN, "")),
        Entry.of(ipaddress.ip_network("192.0.2.0/24"), rec()),
    ]
    text = format_prefix_list(entries)
    assert (
        text.splitlines()[0] == ",".join(CSV_COLUMNS) == "prefix,asn,country,latitude,longitude,org"
    )
    assert text.splitlines()[1] == '83.32.0.0/11,3352,ES,40.4168,-3.7038,"Telefonica, ""TdE"""'
    back = read_source(write_csv(tmp_path / "x.csv", text))
    assert [e[:3] for e in back] == [e[:3] for e in entries]
    assert all(same(a.record, b.record) for a, b in zip(back, entries))


HEADER = "prefix,asn,country,latitude,longitude,org\n"
CSV_PROBLEMS = [
    # (file content, problems; the file is x.csv)
    ("", ["x.csv: empty file: the first line must be the header prefix,asn,country,latitude,longitude,org"]),
    ("# only a comment\n", ["x.csv: empty file: the first line must be the header prefix,asn,country,latitude,longitude,org"]),
    ("# c\nprefix,asn,lat\n",
     ["x.csv:2: header must name the columns prefix,asn,country,latitude,longitude,org (prefix required, each once), got prefix,asn,lat"]),
    ("asn,org\n",
     ["x.csv:1: header must name the columns prefix,asn,country,latitude,longitude,org (prefix required, each once), got asn,org"]),
    ("prefix,asn,asn\n",
     ["x.csv:1: header must name the columns prefix,asn,country,latitude,longitude,org (prefix required, each once), got prefix,asn,asn"]),
    (HEADER + "192.0.2.0/24,1,ES,1,2\n", ["x.csv:2: expected 6 fields (prefix,asn,country,latitude,longitude,org), got 5"]),
    (HEADER + "192.0.2.1/24,,,,,\n", ["x.csv:2: prefix: '192.0.2.1/24' has host bits set (the network is 192.0.2.0/24)"]),
    (HEADER + "# comment\n192.0.2.0/24,AS1,,,,\n", ["x.csv:3: 192.0.2.0/24: asn must be a whole number, got 'AS1'"]),
    (HEADER + "192.0.2.0/24,4294967296,,,,\n", ["x.csv:2: 192.0.2.0/24: asn must be at most 4294967295, got '4294967296'"]),
    (HEADER + "192.0.2.0/24,,ESP,,,\n", ["x.csv:2: 192.0.2.0/24: country must be a two-letter ISO code, got 'ESP'"]),
    (HEADER + "192.0.2.0/24,,,40.4,,\n", ["x.csv:2: 192.0.2.0/24: latitude and longitude go together: give both or neither"]),
    (HEADER + "192.0.2.0/24,,,91,0,\n", ["x.csv:2: 192.0.2.0/24: latitude must be between -90 and 90, got '91'"]),
    (HEADER + "192.0.2.0/24,,,0,east,\n", ["x.csv:2: 192.0.2.0/24: longitude must be a number, got 'east'"]),
    (HEADER + "192.0.2.0/24,,,nan,0,\n", ["x.csv:2: 192.0.2.0/24: latitude must be between -90 and 90, got 'nan'"]),
    (HEADER + "192.0.2.0/24,1,,,,\n\n192.0.2.0/24,2,,,,\n", ["x.csv:4: prefix 192.0.2.0/24 is already listed at line 2"]),
    # every problem of the file, not just the first
    (HEADER + "192.0.2.0/33,,,,,\n198.51.100.0/24,,XX1,,,\n203.0.113.0/24,,,,,\n2001:db8::/32,x,,,,\n",
     ["x.csv:2: prefix: '192.0.2.0/33': prefix length must be 0 to 32",
      "x.csv:3: 198.51.100.0/24: country must be a two-letter ISO code, got 'XX1'",
      "x.csv:5: 2001:db8::/32: asn must be a whole number, got 'x'"]),
]  # fmt: skip


@pytest.mark.parametrize(("content", "expected"), CSV_PROBLEMS)
def test_csv_problems(tmp_path: Path, content: str, expected: list[str]) -> None:
    source = Source("csv", tmp_path / "x.csv", label="x.csv")
    (tmp_path / "x.csv").write_text(content, encoding="utf-8")
    assert problems_of(source) == expected


def test_csv_problems_are_capped_per_file(tmp_path: Path) -> None:
    rows = "".join(f"10.0.{i}.1/24,,,,,\n" for i in range(250))
    problems = problems_of(write_csv(tmp_path / "x.csv", HEADER + rows))
    assert len(problems) == 101
    assert problems[0].endswith(
        "x.csv:2: prefix: '10.0.0.1/24' has host bits set (the network is 10.0.0.0/24)"
    )
    assert problems[-1].endswith("x.csv: 150 more problems not shown")


def test_csv_unreadable(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_bytes(b"prefix\n\xff\xfe\n")
    (problem,) = problems_of(Source("csv", tmp_path / "x.csv", label="x.csv"))
    assert problem.startswith(
        "x.csv: cannot read prefix list: 'utf-8' codec can't decode byte 0xff"
    )


# --- coverage zone files -----------------------------------------------------------------------

MADRID, NORTE, BCN = (40.4168, -3.7038), (40.4818, -3.6895), (41.3874, 2.1686)


def test_czf_fixture() -> None:
    source = Source.from_path(FIXTURES / "coverage.json")
    assert source.kind == "czf"
    got = as_dict(read_source(source))
    assert list(got) == [
        "198.51.100.0/25", "203.0.113.0/24", "2001:db8:100::/48", "198.51.100.128/25",
        "203.0.113.64/26", "2001:db8:100:8000::/49", "2001:db8:200::/48", "192.0.2.0/28",
    ]  # fmt: skip
    assert got["203.0.113.0/24"] == rec(0, "", *MADRID, "mad-centro")
    assert got["2001:db8:100::/48"] == rec(0, "", *MADRID, "mad-centro")
    assert got["198.51.100.128/25"] == rec(0, "", *NORTE, "mad-norte")
    assert got["2001:db8:200::/48"] == rec(0, "", *BCN, "bcn")
    assert same(got["192.0.2.0/28"], rec(org="lab-no-coordinates"))


def test_czf_with_operator_asn_and_country() -> None:
    entries = read_source(Source("czf", FIXTURES / "coverage.json", asn=64500, country="ES"))
    assert {e.record[:2] for e in entries} == {(64500, "ES")}


def test_dczf_fixture() -> None:
    source = Source.from_path(FIXTURES / "deep-coverage.json")
    assert source.kind == "dczf"
    assert as_dict(read_source(source)) == {
        "198.51.100.0/27": rec(0, "", 40.4153, -3.6845, "olt-retiro"),
        "2001:db8:100:10::/60": rec(0, "", 40.4153, -3.6845, "olt-retiro"),
    }


def test_coverage_zones_place_clients_and_explain_names_the_zone() -> None:
    cmap = build_client_map([Source.from_path(FIXTURES / "coverage.json")])
    assert fields_at(cmap, "198.51.100.200") == (rec(0, "", *NORTE, "mad-norte"), 25)
    # bcn's /26 sits inside mad-centro's /24: longest match, and the /24 is cut around it
    assert fields_at(cmap, "203.0.113.70") == (rec(0, "", *BCN, "bcn"), 26)
    assert fields_at(cmap, "203.0.113.1") == (rec(0, "", *MADRID, "mad-centro"), 26)
    assert fields_at(cmap, "203.0.113.129") == (rec(0, "", *MADRID, "mad-centro"), 25)
    assert fields_at(cmap, "2001:db8:100:8000::1") == (rec(0, "", *BCN, "bcn"), 49)
    group, _ = cmap.lookup(ipaddress.ip_address("203.0.113.70"))
    assert cmap.groups.describe(group) == "bcn, 41.39,2.17"
    # a zone without coordinates places nobody (group 0) but still owns its prefix's scope
    assert cmap.lookup(ipaddress.ip_address("192.0.2.1")) == (UNKNOWN_GROUP, 28)


def czf(zones: Any, key: str = "coverageZones") -> str:
    return json.dumps({"revision": "r", "customerName": "c", key: zones}, indent=2)


CZF_PROBLEMS = [
    # (kind, file content, problems; the file is z.json)
    ("czf", "{\n  \"coverageZones\": {\n    \"a\": {\"network\": [\"10.0.0.0/8\",]}\n  }\n}\n",
     ["z.json:3: not valid JSON: Expecting value (column 36)"]),
    ("czf", "[]", ['z.json:1: no "coverageZones" object at the top level']),
    ("czf", czf({}, "deepCoverageZones"),
     ['z.json:1: no "coverageZones" object at the top level (this file has "deepCoverageZones": name it with dczf:)']),
    ("dczf", czf({}), ['z.json:1: no "deepCoverageZones" object at the top level (this file has "coverageZones": name it with czf:)']),
    ("czf", czf({"a": ["10.0.0.0/8"]}), ['z.json:5: zone "a": must be an object with network, network6, coordinates']),
    ("czf", czf({"a": {"network": ["10.0.0.0/8", "10.1.0.0/33", 7, "2001:db8::/32"]}}),
     ["z.json:8: zone \"a\" network[1]: '10.1.0.0/33': prefix length must be 0 to 32",
      'z.json:9: zone "a" network[2]: must be a prefix in quotes, got 7',
      "z.json:10: zone \"a\" network[3]: '2001:db8::/32' is not an IPv4 prefix"]),
    ("czf", czf({"a": {"network6": ["2001:db8::1/32"]}}),
     ["z.json:7: zone \"a\" network6[0]: '2001:db8::1/32' has host bits set (the network is 2001:db8::/32)"]),
    ("czf", czf({"a": {"network": "10.0.0.0/8"}}), ['z.json:6: zone "a": network must be a list of IPv4 prefixes']),
    ("czf", czf({"a": {"network": ["10.0.0.0/8"]}, "b": {"network": ["10.0.0.0/8"]}}),
     ['z.json:12: zone "b" network[0]: 10.0.0.0/8 is also in zone "a"']),
    ("czf", czf({"a": {"netwrok": []}}), ['z.json:6: zone "a": unknown field "netwrok" (valid: network, network6, coordinates)']),
    ("czf", czf({"a": {"caches": ["edge-1"]}}), ['z.json:6: zone "a": unknown field "caches" (valid: network, network6, coordinates)']),
    ("dczf", czf({"a": {"caches": "edge-1"}}, "deepCoverageZones"), ['z.json:6: zone "a": caches must be a list of cache host names']),
    ("czf", czf({"a": {"coordinates": {"latitude": 40}}}),
     ['z.json:6: zone "a": coordinates: latitude and longitude go together: give both or neither']),
    ("czf", czf({"a": {"coordinates": {"latitude": 40, "longitude": 200}}}),
     ['z.json:6: zone "a": coordinates: longitude must be between -180 and 180, got 200']),
    ("czf", czf({"a": {"coordinates": {"lat": 40, "lon": 3}}}),
     ['z.json:6: zone "a": coordinates must be an object with latitude and longitude']),
    ("czf", '{"coverageZones": {\n"a": {},\n"a": {"network": ["10.0.0.0/8"]}}}',
     ['z.json:3: "a" is defined twice (a JSON object keeps only the last)']),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "content", "expected"), CZF_PROBLEMS)
def test_coverage_zone_problems(
    tmp_path: Path, kind: str, content: str, expected: list[str]
) -> None:
    (tmp_path / "z.json").write_text(content, encoding="utf-8")
    assert problems_of(Source(kind, tmp_path / "z.json", label="z.json")) == expected


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (czf({}) + czf({}), "z.json:5: not valid JSON: Extra data (column 2)"),
        ('{"coverageZones": {}, "deepCoverageZones": {}}',
         'z.json: has both "coverageZones" and "deepCoverageZones" at the top level: name it with czf: or dczf: in deployment.yaml'),
        ('{"zones": {}}',
         'z.json: has neither "coverageZones" and "deepCoverageZones" at the top level: name it with czf: or dczf: in deployment.yaml'),
    ],
)  # fmt: skip
def test_json_kind_needs_exactly_one_zones_key(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "z.json").write_text(content, encoding="utf-8")
    with pytest.raises(ClientMapError) as caught:
        Source.from_path(tmp_path / "z.json", label="z.json")
    assert str(caught.value) == expected


# --- sources -----------------------------------------------------------------------------------


def test_source_kind_from_the_file_name(tmp_path: Path) -> None:
    assert Source.from_path(Path("a/b.MMDB")).kind == "mmdb"
    assert Source.from_path(Path("a/b.csv")).kind == "csv"
    with pytest.raises(
        ClientMapError, match=r"^a/b.txt: cannot tell the format from the file name: use \.mmdb"
    ):
        Source.from_path(Path("a/b.txt"))


def test_source_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="unknown client map source kind 'geoip'"):
        Source("geoip", Path("x"))
    with pytest.raises(ValueError, match="asn and country apply to coverage zone files"):
        Source("csv", Path("x"), asn=1)
    with pytest.raises(ValueError, match="country must be a two-letter ISO code"):
        Source("czf", Path("x"), country="Spain")


def test_all_problems_of_all_sources_before_any_map(tmp_path: Path) -> None:
    bad_csv = write_csv(tmp_path / "a.csv", HEADER + "10.0.0.1/8,,,,,\n")
    (tmp_path / "b.json").write_text(czf({"z": {"network": ["10.0.0.0/33"]}}), encoding="utf-8")
    with pytest.raises(ClientMapError) as caught:
        build_client_map(
            [bad_csv, Source("mmdb", tmp_path / "none.mmdb"), Source("czf", tmp_path / "b.json")]
        )
    assert [(p.path, p.line) for p in caught.value.problems] == [
        (str(tmp_path / "a.csv"), 2), (str(tmp_path / "none.mmdb"), 0), (str(tmp_path / "b.json"), 7),
    ]  # fmt: skip


# --- MaxMind-format databases, written here ----------------------------------------------------


def test_mmdb_kinds() -> None:
    assert [mmdb_kind(t) for t in ("GeoLite2-ASN", "GeoIP2-ISP", "GeoIP2-City", "GeoLite2-Country",
                                   "GeoIP2-Enterprise", "Router-Client-Map", "GeoIP2-Connection-Type")] == [
        "asn", "isp", "city", "country", "city", "router", "other"]  # fmt: skip


def test_mmdb_layouts(tmp_path: Path) -> None:
    isp = write_mmdb(tmp_path / "isp.mmdb", "GeoIP2-ISP", {
        "10.0.0.0/16": {**asn(64500, "AS Org"), "isp": "Example Broadband", "organization": "Example"},
        "10.1.0.0/16": {"isp": "No ASN Known", "organization": "Example"},
        "10.2.0.0/16": {"organization": "Only Organization"},
        "10.3.0.0/16": {"mobile_country_code": "214"},  # nothing the map uses: skipped
    })  # fmt: skip
    assert as_dict(read_source(Source("mmdb", isp))) == {
        "10.0.0.0/16": rec(64500, org="Example Broadband"),
        "10.1.0.0/16": rec(org="No ASN Known"),
        "10.2.0.0/16": rec(org="Only Organization"),
    }
    router = write_mmdb(tmp_path / "router.mmdb", "Router-Client-Map",
                        {"2001:db8::/32": {**asn(3352, "Telefonica"), **city("ES", 40.4, -3.7)}})  # fmt: skip
    assert as_dict(read_source(Source("mmdb", router))) == {
        "2001:db8::/32": rec(3352, "ES", 40.4, -3.7, "Telefonica")
    }
    flat = write_mmdb(tmp_path / "flat.mmdb", "dbip-city",
                      {"10.0.0.0/8": {"country_code": "PT", "latitude": 38.7, "longitude": -9.1, "city": "Lisboa"}})  # fmt: skip
    assert as_dict(read_source(Source("mmdb", flat))) == {"10.0.0.0/8": rec(0, "PT", 38.7, -9.1)}
    enterprise = write_mmdb(tmp_path / "ent.mmdb", "GeoIP2-Enterprise", {
        "10.0.0.0/8": {**city("ES", 40.4, -3.7), "traits": {"autonomous_system_number": 3352, "isp": "Telefonica"}},
    })  # fmt: skip
    assert as_dict(read_source(Source("mmdb", enterprise))) == {
        "10.0.0.0/8": rec(3352, "ES", 40.4, -3.7, "Telefonica")
    }


def test_mmdb_without_client_fields_is_an_error(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "ct.mmdb",
        "GeoIP2-Connection-Type",
        {"10.0.0.0/8": {"connection_type": "Cable/DSL"}},
    )
    with pytest.raises(ClientMapError) as caught:
        read_source(Source("mmdb", path, label="ct.mmdb"))
    assert str(caught.value) == (
        'ct.mmdb: no network in this "GeoIP2-Connection-Type" database has autonomous_system_number, '
        "country.iso_code or location.latitude/longitude: use a City, Country, ASN or ISP database"
    )


# --- MaxMind's own test databases --------------------------------------------------------------


def expected_record(data: dict[str, Any]) -> ClientRecord:
    """What the GeoIP2 documentation says each field means, written out independently."""
    location = data.get("location", {})
    placed = "latitude" in location and "longitude" in location
    return rec(
        data.get("autonomous_system_number", 0),
        data.get("country", {}).get("iso_code", ""),
        location["latitude"] if placed else NAN,
        location["longitude"] if placed else NAN,
        data.get("isp")
        or data.get("autonomous_system_organization")
        or data.get("organization")
        or "",
    )


def json_networks(name: str) -> dict[ipaddress.IPv4Network | ipaddress.IPv6Network, ClientRecord]:
    """The JSON source of a test database; IPv4 written as ::a.b.c.d/n becomes a.b.c.d/n-96."""
    items = json.loads((MAXMIND / "source-data" / f"{name}.json").read_text(encoding="utf-8"))
    out = {}
    for item in items:
        for text, data in item.items():
            net = ipaddress.ip_network(text, strict=False)  # a few have host bits set
            if (
                net.version == 6
                and net.prefixlen >= 96
                and net.subnet_of(ipaddress.ip_network("::/96"))
            ):  # type: ignore[arg-type]
                net = ipaddress.IPv4Network((int(net.network_address), net.prefixlen - 96))
            out[net] = expected_record(data)
    return out


Index = dict[tuple[int, int, int], Any]


def index(networks: dict[Any, ClientRecord]) -> Index:
    return {(n.version, int(n.network_address), n.prefixlen): n for n in networks}


def longest(keys: Index, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    """The longest indexed network holding ``address``, or None."""
    value, bits = int(address), address.max_prefixlen
    for plen in range(bits, -1, -1):
        found = keys.get((address.version, value >> (bits - plen) << (bits - plen), plen))
        if found is not None:
            return found
    return None


@needs_maxmind
@pytest.mark.parametrize(
    ("name", "has"),
    [
        ("GeoIP2-City-Test", {"country", "location"}),
        ("GeoLite2-City-Test", {"country", "location"}),
        ("GeoIP2-Country-Test", {"country"}),
        ("GeoLite2-Country-Test", {"country"}),
        ("GeoLite2-ASN-Test", {"asn", "org"}),
        ("GeoIP2-ISP-Test", {"asn", "org"}),
    ],
)
def test_maxmind_test_databases_match_their_sources(name: str, has: set[str]) -> None:
    """Address by address: the JSON networks nest and MaxMind's writer splits and joins them."""
    path = MAXMIND / "test-data" / f"{name}.mmdb"
    expected = json_networks(name)
    entries = {e.network: e.record for e in read_source(Source("mmdb", path))}
    found = {f for r in entries.values() for f, ok in (("asn", r.asn), ("country", r.country), ("org", r.org),
                                                       ("location", r.has_location)) if ok}  # fmt: skip
    assert found == has
    cmap = load_mmdb(path)
    expected_index, entries_index = index(expected), index(entries)
    checked = 0
    for network in expected:
        for address in (network.network_address, network.broadcast_address):
            want = expected[longest(expected_index, address)]
            got = longest(entries_index, address)
            if want.is_empty:
                assert got is None and fields_at(cmap, str(address)) is None, address
                continue
            assert got is not None and same(entries[got], want), (address, got, want)
            fields = fields_at(cmap, str(address))
            if want[:4] == rec()[:4]:  # an org alone (ISP records without an ASN) is no group
                assert fields is None, (address, fields)
                continue
            assert fields is not None and fields[1] == got.prefixlen, (address, fields, got)
            assert same(fields[0][:4], want[:4]), (address, fields, want)
            checked += 1
    assert checked > 200


@needs_maxmind
def test_maxmind_known_values() -> None:
    data = MAXMIND / "test-data"
    cmap = build_client_map(
        [
            Source("mmdb", data / "GeoLite2-ASN-Test.mmdb"),
            Source("mmdb", data / "GeoIP2-City-Test.mmdb"),
        ]
    )
    assert fields_at(cmap, "1.128.0.1") == (rec(1221, org="Telstra Pty Ltd"), 11)
    place, scope = fields_at(cmap, "89.160.20.112") or (None, 0)
    assert (place.asn, place.country, place.org, scope) == (29518, "SE", "Bredband2 AB", 28)
    assert (place.lat, place.lon) == (58.4167, 15.6167)  # Linköping


BROKEN = [
    ("MaxMind-DB-test-broken-search-tree-24.mmdb", "broken MaxMind database: "),
    ("MaxMind-DB-test-broken-pointers-24.mmdb", "broken MaxMind database: "),
    ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "broken MaxMind database: "),
    ("GeoIP2-City-Test-Invalid-Node-Count.mmdb", "cannot open MaxMind database: "),
    (
        "GeoIP2-Connection-Type-Test.mmdb",
        'no network in this "GeoIP2-Connection-Type" database has ',
    ),
    (
        "MaxMind-DB-string-value-entries.mmdb",
        'no network in this "MaxMind DB String Value Entries" database ',
    ),
]


@needs_maxmind
@pytest.mark.parametrize(("name", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_unusable_maxmind_databases(name: str, message: str) -> None:
    path = MAXMIND / "test-data" / name
    with pytest.raises(ClientMapError) as caught:
        build_client_map([Source("mmdb", path)])
    (problem,) = caught.value.problems
    assert (problem.path, problem.line) == (str(path), 0)
    assert problem.message.startswith(message), problem.message


# --- combining sources -------------------------------------------------------------------------

ES_MAD = ("ES", 40.4168, -3.7038)
PT_LIS = ("PT", 38.7223, -9.1393)


@pytest.fixture
def asn_and_city(tmp_path: Path) -> tuple[Source, Source]:
    asn_db = write_mmdb(tmp_path / "asn.mmdb", "GeoLite2-ASN", {
        "10.0.0.0/16": asn(64500, "Example Net"),
        "10.9.9.0/24": asn(64502, "Inside Lisbon"),
        "2001:db8::/32": asn(64501, "Example Six"),
    })  # fmt: skip
    city_db = write_mmdb(tmp_path / "city.mmdb", "GeoLite2-City", {
        "10.0.5.0/24": city(*ES_MAD),
        "10.9.0.0/16": city(*PT_LIS),
        "2001:db8:1::/48": city(*ES_MAD),
    })  # fmt: skip
    return Source("mmdb", asn_db), Source("mmdb", city_db)


def test_databases_merge_field_wise_across_nesting(asn_and_city: tuple[Source, Source]) -> None:
    cmap = build_client_map(list(asn_and_city))
    # the City /24 inside the ASN /16 carries both; the rest of the /16 has the ASN alone
    assert fields_at(cmap, "10.0.5.1") == (rec(64500, *ES_MAD, "Example Net"), 24)
    assert fields_at(cmap, "10.0.6.1") == (rec(64500, org="Example Net"), 23)
    assert fields_at(cmap, "10.0.128.1") == (rec(64500, org="Example Net"), 17)
    # the ASN /24 inside the City /16 the other way round
    assert fields_at(cmap, "10.9.9.9") == (rec(64502, *PT_LIS, "Inside Lisbon"), 24)
    assert fields_at(cmap, "10.9.10.1") == (rec(0, *PT_LIS), 23)
    assert fields_at(cmap, "2001:db8:1::1") == (rec(64501, *ES_MAD, "Example Six"), 48)
    assert fields_at(cmap, "2001:db8:2::1") == (rec(64501, org="Example Six"), 47)
    # the order of the databases does not matter when they do not both have a field
    swapped = build_client_map(list(reversed(asn_and_city)))
    for address in ("10.0.5.1", "10.0.6.1", "10.9.9.9", "2001:db8:1::1", "192.0.2.1"):
        assert fields_at(swapped, address) == fields_at(cmap, address)


def test_operator_lists_override_databases(
    tmp_path: Path, asn_and_city: tuple[Source, Source]
) -> None:
    ops = write_csv(tmp_path / "ops.csv", HEADER + "\n".join([
        "10.0.0.0/16,64999,ES,,,Operator says",   # exactly the ASN database's /16: replaces it
        "10.0.5.128/25,64998,,,,Carved out",       # longer than the City /24: wins there
        "10.8.0.0/13,64997,,,,Shorter",            # shorter than the City /16: the /16 still wins
    ]) + "\n")  # fmt: skip
    cmap = build_client_map([*asn_and_city, ops])
    assert fields_at(cmap, "10.0.6.1") == (rec(64999, "ES", org="Operator says"), 23)
    # the City /24 still wins by length, and no longer gets an ASN from the replaced /16
    assert fields_at(cmap, "10.0.5.1") == (rec(0, *ES_MAD), 25)
    assert fields_at(cmap, "10.0.5.129") == (rec(64998, org="Carved out"), 25)
    assert fields_at(cmap, "10.9.10.1") == (rec(0, *PT_LIS), 23)
    assert fields_at(cmap, "10.10.0.1") == (rec(64997, org="Shorter"), 15)
    # an operator list is never filled in from databases, wherever it sits in the list
    assert fields_at(build_client_map([ops, *asn_and_city]), "10.0.6.1") == fields_at(
        cmap, "10.0.6.1"
    )


def test_later_operator_list_wins_for_the_same_prefix(tmp_path: Path) -> None:
    a = write_csv(tmp_path / "a.csv", HEADER + "10.0.0.0/8,1,,,,A\n10.1.0.0/16,1,,,,A\n")
    b = write_csv(tmp_path / "b.csv", HEADER + "10.0.0.0/8,2,,,,B\n")
    cmap = build_client_map([a, b])
    assert fields_at(cmap, "10.2.0.1") == (rec(2, org="B"), 15)
    assert fields_at(cmap, "10.1.0.1") == (rec(1, org="A"), 16)
    assert fields_at(build_client_map([b, a]), "10.2.0.1") == (rec(1, org="A"), 15)


def test_same_network_in_two_databases(tmp_path: Path) -> None:
    country = write_mmdb(
        tmp_path / "c.mmdb",
        "GeoLite2-Country",
        {
            "10.0.0.0/24": {"country": {"iso_code": "ES"}},
            "10.0.1.0/24": {"country": {"iso_code": "FR"}},
        },
    )
    city_db = write_mmdb(tmp_path / "city.mmdb", "GeoLite2-City", {"10.0.0.0/23": city(*ES_MAD)})
    cmap = build_client_map([Source("mmdb", city_db), Source("mmdb", country)])
    assert fields_at(cmap, "10.0.0.1") == (rec(0, *ES_MAD), 24)
    # a location is never borrowed from another country
    assert fields_at(cmap, "10.0.1.1") == (rec(0, "FR"), 24)


def test_fill_rules() -> None:
    assert fill(rec(1, org="one"), rec(2, "ES", 1.0, 2.0, "two")) == rec(1, "ES", 1.0, 2.0, "one")
    assert fill(rec(0, "ES"), rec(2, "ES", 1.0, 2.0, "two")) == rec(2, "ES", 1.0, 2.0, "two")
    assert same(fill(rec(0, "PT"), rec(2, "ES", 1.0, 2.0, "two")), rec(2, "PT", NAN, NAN, "two"))
    assert fill(rec(org="isp only"), rec(2, org="two")) == rec(2, org="two")
    assert fill(rec(org="isp only"), rec(org="outer")) == rec(org="isp only")
    assert fill(rec(0, "", 5.0, 6.0), rec(0, "ES", 1.0, 2.0)) == rec(0, "ES", 5.0, 6.0)


def test_groups_are_distinct_places_and_networks(tmp_path: Path) -> None:
    ops = write_csv(tmp_path / "ops.csv", HEADER + "10.0.0.0/24,1,ES,1,2,a\n10.0.1.0/24,1,ES,1,2,b\n"
                    "10.0.2.0/24,1,ES,1,3,a\n10.0.3.0/24,,,,,\n")  # fmt: skip
    cmap = build_client_map([ops])
    assert len(cmap.groups) == 3  # unknown, (1, ES, 1, 2) named after its first row, (1, ES, 1, 3)
    assert cmap.groups.org == ("", "a", "a")
    assert cmap.lookup(ipaddress.ip_address("10.0.3.1")) == (UNKNOWN_GROUP, 24)
    assert np.isnan(cmap.groups.lat[0])


# --- the rules, address by address -------------------------------------------------------------

RECORDS = [rec(1, org="one"), rec(2, "ES", 40.0, -3.0, "two"), rec(0, "PT", 38.7, -9.1), rec(0, "ES"),
           rec(3, "FR", 48.8, 2.3, "three"), rec(org="org only"), rec()]  # fmt: skip
BASE = 0x0A000000  # prefixes inside 10.0.0.0/8, lengths 8-11: 15 of them, so they nest and repeat


@st.composite
def source_sets(draw: st.DrawFn) -> list[tuple[bool, list[tuple[int, int, int]]]]:
    """Sources: (is_database, [(start, prefix length, record index)]); databases disjoint."""
    sources = []
    for _ in range(draw(st.integers(1, 4))):
        is_database = draw(st.booleans())
        chosen: dict[tuple[int, int], int] = {}
        for _ in range(draw(st.integers(0, 6))):
            plen = draw(st.integers(8, 11))
            start = BASE + (draw(st.integers(0, (1 << (plen - 8)) - 1)) << (32 - plen))
            block = (start, start + (1 << (32 - plen)) - 1)
            if is_database and any(
                s <= block[1] and block[0] <= s + (1 << (32 - p)) - 1 for s, p in chosen
            ):
                continue  # a MaxMind database never nests
            chosen[(start, plen)] = draw(
                st.integers(0, len(RECORDS) - 2 if is_database else len(RECORDS) - 1)
            )
        sources.append((is_database, [(s, p, r) for (s, p), r in chosen.items()]))
    return sources


def brute_force(sources: list[tuple[bool, list[tuple[int, int, int]]]], x: int) -> ClientRecord:
    """The documented rules for one address, without any of merge.py's machinery."""

    def covers(s: int, p: int) -> bool:
        return s <= x < s + (1 << (32 - p))

    operator: dict[tuple[int, int], ClientRecord] = {}
    for is_database, entries in sources:
        if not is_database:
            operator.update({(s, p): RECORDS[r] for s, p, r in entries if covers(s, p)})
    database = [(p, i, s, RECORDS[r]) for i, (is_database, entries) in enumerate(sources) if is_database
                for s, p, r in entries if covers(s, p) and (s, p) not in operator]  # fmt: skip
    best_op = max(operator, key=lambda k: k[1], default=None)
    best_db = max((p for p, _, _, _ in database), default=-1)
    if best_op is not None and best_op[1] >= best_db:
        return operator[best_op]
    merged = rec()
    for _, _, _, record in sorted(
        database, key=lambda d: (d[0], d[1])
    ):  # outer first, then source order
        merged = fill(record, merged)
    return merged


@settings(max_examples=150, deadline=None)
@given(
    sources=source_sets(), probes=st.lists(st.integers(0, (1 << 24) - 1), min_size=1, max_size=40)
)
def test_build_matches_the_rules_address_by_address(
    sources: list[tuple[bool, list[tuple[int, int, int]]]], probes: list[int]
) -> None:
    read = [
        (is_database, [Entry(4, s, p, RECORDS[r]) for s, p, r in entries])
        for is_database, entries in sources
    ]
    cmap = merge(read)
    edges = [
        s + d
        for _, entries in sources
        for s, p, _ in entries
        for d in (0, (1 << (32 - p)) - 1, 1 << (32 - p))
    ]
    for x in [BASE + probe for probe in probes] + edges:
        expected = brute_force(sources, x)
        got = fields_at(cmap, str(ipaddress.IPv4Address(x)))
        if expected[:4] == rec()[:4]:  # nothing known: the unknown group
            assert got is None, (hex(x), got)
        else:  # a group's org is that of its first network; the rest must match
            assert got is not None and got[0][:4] == expected[:4], (hex(x), got, expected)
