"""Tests for the world deployment builder (geodata/build_world.py) and its committed tables.

The full build takes about 20 s, too slow for the suite, so the pieces are tested here: CIDR
conversion, node allocation, country and ISP selection, the committed location tables, and a
complete build from a cut-down copy of the shared data (run twice: byte-identical). Tests that
read the shared data are skipped when ../shared/data is not present.
"""

from __future__ import annotations

import csv
import gzip
import ipaddress
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, iprange_to_cidrs

REPO_ROOT = Path(__file__).resolve().parents[1]
GEODATA = REPO_ROOT / "geodata"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
sys.path.insert(0, str(GEODATA))

import build_sample as sample  # noqa: E402
import build_world as world  # noqa: E402
import make_world_locations  # noqa: E402

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"shared data not present at {SHARED_DATA}"
)


def piece(start: int, end: int, asn: int, country: str) -> sample.Piece:
    return sample.Piece(start, end, asn, f"AS{asn}", country)


# --------------------------------------------------------------------------------------------
# CIDR conversion
# --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.data(), st.sampled_from([4, 6]))
def test_range_to_prefixes_matches_netaddr(data: st.DataObject, version: int) -> None:
    bits = 32 if version == 4 else 128
    start = data.draw(st.integers(0, (1 << bits) - 1))
    end = data.draw(
        st.integers(
            start,
            min(
                (1 << bits) - 1, start + data.draw(st.sampled_from([0, 1, 300, 1 << 20, 1 << 100]))
            ),
        )
    )
    expected = [
        (int(n.network), n.prefixlen)
        for n in iprange_to_cidrs(IPAddress(start, version), IPAddress(end, version))
    ]
    assert world.range_to_prefixes(start, end, bits) == expected


def test_range_to_prefixes_whole_space() -> None:
    assert world.range_to_prefixes(0, (1 << 32) - 1, 32) == [(0, 0)]
    assert world.range_to_prefixes(1, 6, 32) == [(1, 32), (2, 31), (4, 31), (6, 32)]


# --------------------------------------------------------------------------------------------
# Node allocation
# --------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=200), st.integers(0, 3000))
def test_allocate_exact_total_minimum_and_proportional(weights: list[int], extra: int) -> None:
    total = len(weights) + extra
    seats = world.allocate(weights, total)
    assert sum(seats) == total
    assert min(seats) >= 1
    whole = sum(weights)
    quotas = [total * weight / whole for weight in weights]
    # Never more than rounding above the exact quota, except a share the minimum lifted.
    assert all(seat < quota + 1 or seat == 1 for seat, quota in zip(seats, quotas))
    # A larger ISP never gets fewer nodes than a smaller one.
    ranked = sorted(zip(weights, seats), key=lambda item: (-item[0], -item[1]))
    assert [seat for _, seat in ranked] == sorted(seats, reverse=True)
    if min(quotas) >= 1:  # the minimum lifts nobody: plain largest remainder, within one seat
        assert all(abs(seat - quota) < 1 for seat, quota in zip(seats, quotas))


def test_allocate_is_deterministic_and_breaks_ties_by_order() -> None:
    assert world.allocate([1, 1, 1], 4) == [2, 1, 1]
    assert world.allocate([5, 3, 2], 10) == [5, 3, 2]
    # Tiny weights still get one seat; the big one gives up what that costs.
    assert world.allocate([1000, 1, 1], 10) == [8, 1, 1]
    with pytest.raises(ValueError):
        world.allocate([1, 1, 1], 2)


@pytest.mark.parametrize("total", [world.FOOTPRINT_2196[0], world.NODE_COUNT])
def test_allocate_nodes_over_185_isps(total: int) -> None:
    # A skewed distribution like the real one (a few huge ISPs, many small ones).
    weights = [int(200e6 / (i + 1) ** 1.3) for i in range(185)]
    seats = world.allocate(weights, total)
    assert sum(seats) == total and min(seats) >= 1
    assert seats == sorted(seats, reverse=True)


def test_default_footprint_is_20000_nodes_at_100_gbps_each() -> None:
    args = world.parse_args([])
    assert (args.nodes, args.capacity_gbps) == (20_000, 2_000_000)
    args = world.parse_args(["--nodes", "40"])
    assert (args.nodes, args.capacity_gbps) == (40, 4000)


def test_footprint_2196_is_the_earlier_one() -> None:
    args = world.parse_args(["--footprint-2196", "--nodes", "40"])
    assert (args.nodes, args.capacity_gbps) == (2196, 400_000)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--nodes", "0"], "--nodes must be at least 1, got 0"),
        (["--capacity-gbps", "-5"], "--capacity-gbps must be positive, got -5.0"),
    ],
)
def test_bad_sizes_are_refused(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        world.parse_args(argv)
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Country and ISP selection
# --------------------------------------------------------------------------------------------


def test_select_countries_needs_in_country_rtt() -> None:
    space = {"US": 100, "EG": 90, "DE": 80, "FR": 80, "NL": 10}
    assert world.select_countries(space, {"US", "DE", "FR", "NL"}, 3) == ["US", "DE", "FR"]
    with pytest.raises(ValueError):
        world.select_countries(space, {"US"}, 2)


def test_measured_in_country_uses_sample_threshold() -> None:
    rows = [
        {"cty1": "DE", "cty2": "DE", "rtt_cnt": "100"},
        {"cty1": "MY", "cty2": "MY", "rtt_cnt": "10"},
        {"cty1": "DE", "cty2": "FR", "rtt_cnt": "5000"},
    ]
    assert world.measured_in_country(rows) == {"DE"}


def test_select_isps_skips_excluded_foreign_and_small() -> None:
    space = Counter({16509: 500, 3215: 400, 12479: 300, 15557: 200, 12322: 100, 5410: 9, 1: 8})
    home = {16509: "US", 3215: "FR", 12479: "ES", 15557: "FR", 12322: "FR", 5410: "FR", 1: "FR"}
    orgs = {3215: "Orange"}
    isps = world.select_isps(
        space, "FR", home, orgs, excluded={16509: "Amazon"}, per_country=5, min_share=0.01
    )
    # Amazon is excluded, Orange Espagne is an ES network, 5410 and 1 hold < 1% of FR's space.
    assert [isp.asn for isp in isps] == [3215, 15557, 12322]
    assert isps[0].org == "Orange" and isps[0].ipv4_addresses == 400
    assert len(world.select_isps(space, "FR", home, orgs, {}, per_country=2, min_share=0)) == 2


def test_place_nodes_spreads_over_metros_and_sizes_by_space() -> None:
    isps = [world.Isp("ES", 3352, "Telefonica", 300), world.Isp("ES", 12430, "Vodafone", 100)]
    metros = {
        "ES": [world.Metro("Madrid", 40.4168, -3.7038), world.Metro("Barcelona", 41.3874, 2.1686)]
    }
    sites, nodes = world.place_nodes(isps, [3, 1], metros, 1000)
    assert [s.id for s in sites] == ["es-as3352-madrid", "es-as3352-barcelona", "es-as12430-madrid"]
    assert [n.id for n in nodes] == [
        "es-as3352-madrid-1",
        "es-as3352-barcelona-1",
        "es-as3352-madrid-2",
        "es-as12430-madrid-1",
    ]
    assert [n.capacity_gbps for n in nodes] == [250.0, 250.0, 250.0, 250.0]
    assert len({n.ipv4 for n in nodes}) == len({n.ipv6 for n in nodes}) == 4
    assert all(ipaddress.ip_address(n.ipv4) in ipaddress.ip_network("198.18.0.0/15") for n in nodes)
    assert all(ipaddress.ip_address(n.ipv6) in ipaddress.ip_network("2001:db8::/32") for n in nodes)
    assert all(abs(n.latitude - 40.4168) <= 0.05 for n in nodes if "madrid" in n.site)


def test_uncovered_pieces_get_the_asn_country_else_the_neighbour() -> None:
    countries = [sample.Span(0, 99, "ES"), sample.Span(200, 299, "PT")]
    family = world.Family(4, 0, 0, [piece(0, 99, 1, "ES"), piece(200, 299, 2, "PT")], Counter())
    uncovered = [piece(100, 149, 1, ""), piece(150, 199, 3, ""), piece(300, 310, 4, "")]
    world.fill_uncovered(family, uncovered, countries, {1: "ES", 2: "PT"}, {4: "FR"})
    assert [(p.start, p.end, p.asn, p.country) for p in family.pieces] == [
        (0, 149, 1, "ES"),  # merged with its covered neighbour
        (150, 199, 3, "ES"),  # AS3 is seen nowhere else: the preceding country range
        (200, 299, 2, "PT"),
        (300, 310, 4, "FR"),  # from the other address family
    ]
    assert family.filled == Counter(
        {"asn_country": 1, "neighbour_range": 1, "asn_country_other_family": 1}
    )


# --------------------------------------------------------------------------------------------
# Committed tables
# --------------------------------------------------------------------------------------------


def test_world_country_locations_table() -> None:
    table = sample.read_country_locations(GEODATA / world.COUNTRY_LOCATIONS_NAME)
    assert len(table) >= 250
    # The sample's hand-entered points are used as they are.
    for code, location in sample.read_country_locations(
        GEODATA / sample.COUNTRY_LOCATIONS_NAME
    ).items():
        assert table[code] == location


def test_world_metros_table() -> None:
    table = sample.read_country_locations(GEODATA / world.COUNTRY_LOCATIONS_NAME)
    metros = world.read_metros(GEODATA / world.METROS_NAME)
    for country, entries in metros.items():
        assert country in table
        names = [m.name for m in entries]
        assert len(set(names)) == len(names) and table[country].place not in names
        for metro in entries:
            # A metro is in its country: within ~3,000 km of the country's point (Perth-Sydney).
            assert abs(metro.latitude - table[country].latitude) < 30


@pytest.mark.skipif(
    not make_world_locations.DEFAULT_ZONE_TAB.is_file(), reason="no tz zone.tab here"
)
def test_world_country_locations_is_what_the_script_derives() -> None:
    rows = make_world_locations.derive(
        make_world_locations.DEFAULT_ZONE_TAB, make_world_locations.SAMPLE_LOCATIONS
    )
    with (GEODATA / world.COUNTRY_LOCATIONS_NAME).open(encoding="utf-8", newline="") as handle:
        committed = list(csv.reader(handle))
    assert committed == [make_world_locations.HEADER, *rows]


@needs_shared
def test_every_country_in_the_data_has_a_location() -> None:
    table = sample.read_country_locations(GEODATA / world.COUNTRY_LOCATIONS_NAME)
    codes: set[str] = set()
    for version in (4, 6):
        with gzip.open(SHARED_DATA / sample.COUNTRY_CSV[version], "rt", encoding="utf-8") as handle:
            codes |= {line.rstrip("\n").rsplit(",", 1)[1] for line in handle}
    assert codes <= table.keys(), sorted(codes - table.keys())


# --------------------------------------------------------------------------------------------
# A complete build from cut-down inputs
# --------------------------------------------------------------------------------------------

# Rows starting in these blocks (a few thousand): Telefonica, Orange France, Maroc Telecom and
# many small networks of other countries.
V4_BLOCKS = ("83.", "90.", "105.")
V6_BLOCKS = ("2a02:9", "2001:15")


def cut(source: Path, target: Path, blocks: tuple[str, ...]) -> None:
    with (
        gzip.open(source, "rt", encoding="utf-8") as src,
        gzip.open(target, "wt", encoding="utf-8", compresslevel=1) as dst,
    ):
        dst.writelines(line for line in src if line.startswith(blocks))


@pytest.fixture(scope="module")
def small_shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not present at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("shared")
    for version, blocks in ((4, V4_BLOCKS), (6, V6_BLOCKS)):
        for name in (sample.ASN_CSV[version], sample.COUNTRY_CSV[version]):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            cut(SHARED_DATA / name, root / name, blocks)
    for name in (sample.RTT_CSV, world.INTRA_RTT_CSV, sample.COUNTRY_NRO_LICENSE,
                 *(f"{sample.LICENSE_SOURCE_DIR}/{n}" for n in sample.LICENSE_FILES)):  # fmt: skip
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_DATA / name, root / name)
    return root


@pytest.fixture(scope="module")
def small_world(small_shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    outs = tmp_path_factory.mktemp("world-a"), tmp_path_factory.mktemp("world-b")
    for out in outs:
        args = [
            "--shared",
            str(small_shared),
            "--out",
            str(out),
            "--nodes",
            "40",
            "--countries",
            "3",
        ]
        assert world.main(args) == 0
    return outs


def test_small_build_is_byte_identical(small_world: tuple[Path, Path]) -> None:
    a, b = small_world
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        if name.name == world.SUMMARY_NAME:
            first, second = json.loads((a / name).read_text()), json.loads((b / name).read_text())
            first.pop("build_seconds"), second.pop("build_seconds")
            assert first == second
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_small_build_clients_csv(small_world: tuple[Path, Path], small_shared: Path) -> None:
    out = small_world[0]
    with (out / world.CLIENTS_NAME).open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["prefix", "asn", "country", "latitude", "longitude", "org"]
        rows = list(reader)
    locations = sample.read_country_locations(GEODATA / world.COUNTRY_LOCATIONS_NAME)
    addresses = Counter()
    for prefix, asn, country, latitude, longitude, _org in rows:
        network = ipaddress.ip_network(prefix)  # strict: a real CIDR prefix
        addresses[network.version] += network.num_addresses
        assert int(asn) > 0 and country in locations
        assert -90 <= float(latitude) <= 90 and -180 <= float(longitude) <= 180
    # Every address of every ASN range is in the map (none dropped for want of a country).
    for version in (4, 6):
        spans = sample.flatten(
            sample.read_asn_table(small_shared / sample.ASN_CSV[version], version)
        )
        assert addresses[version] == sum(s.end - s.start + 1 for s in spans)
    # A known row: Telefonica's 83.32.0.0/11 in Madrid.
    assert [
        "83.32.0.0/11",
        "3352",
        "ES",
        "40.4168",
        "-3.7038",
        "TELEFONICA DE ESPANA S.A.U.",
    ] in rows


def test_small_build_nodes_summary_and_deployment(small_world: tuple[Path, Path]) -> None:
    out = small_world[0]
    summary = json.loads((out / world.SUMMARY_NAME).read_text())
    assert summary["nodes"] == 40 and len(summary["node_countries"]) == 3
    assert sum(c["nodes"] for c in summary["node_countries"]) == 40
    # NODE_CAPACITY_GBPS per node on average, up to each node's rounding to 0.1 Gbps.
    assert abs(summary["capacity_gbps"] - 40 * world.NODE_CAPACITY_GBPS) <= 40 * 0.05
    assert all(isp["nodes"] >= 1 for c in summary["node_countries"] for isp in c["isps"])
    assert summary["prefixes"]["total"] == summary["prefixes"]["ipv4"] + summary["prefixes"]["ipv6"]
    assert {i["path"] for i in summary["inputs"]} >= {sample.ASN_CSV[4], sample.RTT_CSV}

    from router.config._yaml import load_yaml
    from router.config.nodes import parse_inventory

    doc, problems = load_yaml(out / world.NODES_NAME, world.NODES_NAME)
    assert doc is not None and not problems
    inventory, problems = parse_inventory(doc)
    assert inventory is not None and not problems, problems
    assert len(inventory.nodes) == 40
    assert {node.asn for node in inventory.nodes} == {
        isp["asn"] for c in summary["node_countries"] for isp in c["isps"]
    }

    with (out / world.RTT_NAME).open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["country_a", "country_b", "rtt_ms", "samples"]
        pairs = {(a, b) for a, b, _rtt, samples in reader if int(samples) >= 100}
    chosen = [c["country"] for c in summary["node_countries"]]
    assert all((c, c) in pairs for c in chosen)  # countries with nodes have in-country RTT

    # The whole directory loads as a deployment. Until the router reads CSV client maps, the
    # client map is the only thing it may reject.
    from router.config import ConfigError, load_deployment

    try:
        deployment = load_deployment(out)
    except ConfigError as exc:
        assert all("client_map" in p.message for p in exc.problems), exc.problems
    else:
        assert len(deployment.inventory.nodes) == 40 and len(deployment.steered) == 2
