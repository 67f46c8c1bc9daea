"""``router check --coverage``: announced prefixes of the deployment's ASNs against the client map.

A small deployment (documentation ASNs and prefixes, a CSV client map and an announced-prefix
file) has one gap of each kind; the sample has none; a malformed announced-prefix file is
refused with its file and line. ``map_coverage`` is also held to a per-address reference on
random maps, IPv6 ones straddling the 64-bit boundary of the (hi, lo) halves.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from router.cli import main as router_main
from router.config import load_deployment
from router.config.mapcoverage import check_coverage, deployment_asns
from router.geo.clientmap import UNKNOWN_GROUP, ClientMap, ClientMapError, Groups
from router.geo.mapcoverage import (
    MISMATCH,
    MISSING,
    OK,
    PARTIAL,
    AnnouncedPrefixes,
    map_coverage,
    read_announced,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

NODES = """\
sites:
  - {id: ix, metro: Madrid, country: ES, kind: ixp, lat: 40.4, lon: -3.7}
  - {id: isp, metro: Madrid, country: ES, kind: isp, lat: 40.4, lon: -3.7, serves: on-net, serves_asns: [64497]}
nodes:
  - {id: ix-1, asn: 64500, site: ix, lat: 40.4, lon: -3.7, ipv4: 192.0.2.201, ipv6: "2001:db8:ff::1", capacity_gbps: 100}
  - {id: isp-1, asn: 64496, site: isp, lat: 40.4, lon: -3.7, ipv4: 192.0.2.202, ipv6: "2001:db8:ff::2", capacity_gbps: 100}
"""
POLICY = """\
names:
  www: web
policies:
  web:
    answer_count: 1
    default_site: ix
    pools:
      all:
        nodes: [all]
      partner:
        fallback: all
        nodes: [ix-1]
    rules:
      - {asns: [64498], pool: partner}
      - pool: all
    ttl: 30
    when_all_down: fail_open
"""
ZONE = """\
$TTL 3600
@    IN SOA ns1.cdn.example. hostmaster.cdn.example. 1 7200 900 1209600 300
     IN NS  ns1
ns1  IN A   192.0.2.53
"""
# 198.51.100.0/24 of AS64496 is only half in the map; 203.0.113.0/25 of AS64497 is in
# AS64499's group; 2001:db8:9::/48 of AS64498 is not in the map at all.
CLIENTS = """\
prefix,asn,country,latitude,longitude,org
192.0.2.0/24,64496,ES,40.4,-3.7,ISP One
198.51.100.0/25,64496,ES,40.4,-3.7,ISP One
203.0.113.0/24,64499,ES,40.4,-3.7,Other Net
2001:db8:1::/48,64496,ES,40.4,-3.7,ISP One
"""
ANNOUNCED = """\
# what the networks announce
prefix,asn,org
192.0.2.0/24,64496,ISP One
198.51.100.0/24,64496,ISP One
203.0.113.0/25,64497,Customer Cone

2001:db8:1::/48,64496,
2001:db8:9::/48,64498,Partner
10.0.0.0/8,64511,Not one of ours
"""
DEPLOYMENT = """\
client_map: clients.csv
latency: rtt.csv
cache_dir: cache
coverage:
  announced: announced.csv
"""

# (prefix, asn, kind, [(CIDR blocks, group's ASN)]) of every gap of the small deployment
EXPECTED_GAPS = [
    ("198.51.100.0/24", 64496, PARTIAL, [(["198.51.100.128/25"], 0)]),
    ("203.0.113.0/25", 64497, MISMATCH, [(["203.0.113.0/25"], 64499)]),
    ("2001:db8:9::/48", 64498, MISSING, [(["2001:db8:9::/48"], 0)]),
]


def write_small(root: Path, announced: str = ANNOUNCED, deployment: str = DEPLOYMENT) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "nodes.yaml": NODES,
        "cdn.example.policy.yaml": POLICY,
        "cdn.example.zone": ZONE,
        "clients.csv": CLIENTS,
        "announced.csv": announced,
        "deployment.yaml": deployment,
        "rtt.csv": "country_a,country_b,rtt_ms,samples\nES,ES,8.5,100\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = router_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_known_gaps_are_reported_by_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_small(tmp_path / "small")
    code, out, err = run(["check", "--coverage", "--json", str(small)], capsys)
    assert (code, err) == (3, "")
    report = json.loads(out)
    gaps = [
        (g["prefix"], g["asn"], g["kind"], [(p["prefixes"], p["group"]) for p in g["parts"]])
        for g in report["gaps"]
    ]
    groups = load_deployment(small).client_map.groups
    assert [
        (prefix, asn, kind, [(blocks, int(groups.asn[group])) for blocks, group in parts])
        for prefix, asn, kind, parts in gaps
    ] == EXPECTED_GAPS
    assert [g["line"] for g in report["gaps"]] == [4, 5, 8]  # lines of announced.csv
    counts = {a["asn"]: (a["prefixes"], a["ok"], a["partial"], a["mismatch"], a["missing"])
              for a in report["asns"]}  # fmt: skip
    # AS64511 is in the file but none of the deployment's: not judged.
    assert counts == {
        64496: (3, 2, 1, 0, 0),
        64497: (1, 0, 0, 1, 0),
        64498: (1, 0, 0, 0, 1),
        64500: (0, 0, 0, 0, 0),
    }
    assert report["why"] == {
        "64496": "node isp-1",
        "64497": "serves_asns of site isp",
        "64498": 'policy "web" rule 1',
        "64500": "node ix-1",
    }


def test_text_report_names_each_gap_and_where_it_falls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_small(tmp_path / "small")
    code, out, _ = run(["check", "--coverage", str(small)], capsys)
    assert code == 3
    lines = out.splitlines()
    assert lines[0].startswith(f"{small}: OK: ")
    assert lines[1] == (
        f"{small}: client-map coverage of 4 ASN(s) against {small}/announced.csv: 5 announced "
        "prefix(es), 2 placed, 1 partly placed, 1 in another network's group, 1 not placed"
    )
    assert any(line.split()[:6] == ["AS64496", "3", "2", "1", "0", "0"] for line in lines)
    text = "\n".join(lines)
    assert (
        f"{small}/announced.csv:4: 198.51.100.0/24 AS64496 ISP One: partial\n"
        "      198.51.100.128/25 -> unknown (not in the client map): steered as from each "
        "policy's default_site"
    ) in text
    groups = load_deployment(small).client_map.groups
    other = next(g for g in range(len(groups)) if groups.asn[g] == 64499)
    assert (
        f"{small}/announced.csv:5: 203.0.113.0/25 AS64497 Customer Cone: mismatch\n"
        f"      203.0.113.0/25 -> group {other}: AS64499 Other Net, ES"
    ) in text
    assert f"{small}/announced.csv:8: 2001:db8:9::/48 AS64498 Partner: missing" in text


def test_no_gap_once_the_map_places_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_small(tmp_path / "small")
    with (small / "clients.csv").open("a", encoding="utf-8") as handle:
        handle.write("198.51.100.128/25,64496,ES,40.4,-3.7,ISP One\n"
                     "203.0.113.0/25,64497,ES,40.4,-3.7,Customer Cone\n"
                     "2001:db8:9::/48,64498,ES,40.4,-3.7,Partner\n")  # fmt: skip
    code, out, err = run(["check", "--coverage", str(small)], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == (
        "no gaps: every announced prefix of these ASNs is placed in a group of its ASN"
    )


def test_more_specific_prefixes_are_judged_for_their_own_asn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 203.0.113.0/24 of AS64496 holds a /25 that AS64511 (not judged) announces: as in BGP,
    # those addresses are AS64511's, so only the other half is the /24's to place.
    announced = "prefix,asn\n203.0.113.0/24,64496\n203.0.113.0/25,64511\n"
    small = write_small(tmp_path / "small", announced=announced)
    code, out, _ = run(["check", "--coverage", "--json", str(small)], capsys)
    gaps = json.loads(out)["gaps"]
    assert code == 3
    assert [(g["prefix"], g["kind"], [p["prefixes"] for p in g["parts"]]) for g in gaps] == [
        ("203.0.113.0/24", MISMATCH, [["203.0.113.128/25"]])
    ]


def test_map_asns_widens_the_scope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = write_small(
        tmp_path / "small", deployment=DEPLOYMENT + "  map_asns: true\n  asns: [64511]\n"
    )
    why = deployment_asns(load_deployment(small))
    assert why[64499] == "client map"
    assert why[64511] == "coverage.asns"
    report = check_coverage(load_deployment(small))
    assert [(g.prefix, g.kind) for g in report.coverage.gaps][-1] == ("10.0.0.0/8", MISSING)


def test_sample_has_no_gaps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO_ROOT)
    code, out, err = run(["check", "--coverage", "--json", "zones"], capsys)
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["gaps"] == []
    announced = {a["asn"]: a for a in report["asns"] if a["prefixes"]}
    # Every ISP of the sample has announced prefixes in the file, and all are placed.
    assert set(announced) == {2860, 3215, 3243, 3352, 6713, 12322, 12353, 12430, 12479,
                              15557, 36903, 36925}  # fmt: skip
    assert all(a["ok"] == a["prefixes"] for a in announced.values())


def test_sample_places_orange_france_ipv6() -> None:
    # The example: Orange France announces 2a01:cb00::/32 (the registry data gives it
    # to AS5511, Orange's holding ASN, outside the sample); it must be Orange France's clients.
    deployment = load_deployment(REPO_ROOT / "zones")
    cmap = deployment.client_map
    for address in ("2a01:cb00::1", "2a01:cb00:ffff:ffff::1"):
        group, _ = cmap.lookup(ipaddress.ip_address(address))
        assert int(cmap.groups.asn[group]) == 3215, address
        assert cmap.groups.country[group] == "FR"
    table = read_announced(REPO_ROOT / "geodata" / "iberia-announced.csv")
    orange_v6 = [
        ipaddress.ip_network(table.prefix_text(r))
        for r in range(len(table))
        if table.asn[r] == 3215 and table.version[r] == 6
    ]
    assert any(ipaddress.ip_network("2a01:cb00::/32").subnet_of(n) for n in orange_v6)


def test_sample_announced_asns_are_the_deployments() -> None:
    # The announced file holds exactly the networks the sample deployment checks, and the
    # builder's list of node ISPs is nodes.yaml's.
    sys.path.insert(0, str(REPO_ROOT / "geodata"))
    try:
        import build_sample
    finally:
        sys.path.remove(str(REPO_ROOT / "geodata"))
    nodes = yaml.safe_load((REPO_ROOT / "zones" / "nodes.yaml").read_text())["nodes"]
    isp_asns = {n["asn"] for n in nodes} - {64500}
    assert set(build_sample.NODE_ASNS) == isp_asns
    settings = yaml.safe_load((REPO_ROOT / "zones" / "deployment.yaml").read_text())
    with (REPO_ROOT / "geodata" / "iberia-announced.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    assert {int(r["asn"]) for r in rows} == isp_asns | set(settings["coverage"]["asns"])


# --- malformed announced-prefix files: (rows after the header, the exact problems) -------

BAD_FILES = [
    pytest.param("192.0.2.0/33,64496\n", ["announced.csv:2: prefix: '192.0.2.0/33': prefix length must be 0 to 32"], id="length"),
    pytest.param("192.0.2.1/24,64496\n", ["announced.csv:2: prefix: '192.0.2.1/24' has host bits set (the network is 192.0.2.0/24)"], id="host-bits"),
    pytest.param("bogus,64496\n", ["announced.csv:2: prefix: 'bogus' is not an IP prefix"], id="not-a-prefix"),
    pytest.param("192.0.2.0/24,AS64496\n", ["announced.csv:2: 192.0.2.0/24: asn must be a whole number, got 'AS64496'"], id="asn-text"),
    pytest.param("192.0.2.0/24,0\n", ["announced.csv:2: 192.0.2.0/24: asn 0 is not a network (AS0 marks unannounced space)"], id="asn-0"),
    pytest.param("192.0.2.0/24\n", ["announced.csv:2: expected 2 fields (prefix,asn), got 1"], id="fields"),
    pytest.param(
        "192.0.2.0/24,64496\n# a comment\n192.0.2.0/24,64496\n192.0.2.0/24,64497\n",
        ["announced.csv:4: 192.0.2.0/24 AS64496 is already listed at line 2"],
        id="duplicate",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "problems"), BAD_FILES)
def test_malformed_announced_file_names_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rows: str, problems: list[str]
) -> None:
    small = write_small(tmp_path / "small", announced="prefix,asn\n" + rows)
    code, out, err = run(["check", "--coverage", str(small)], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"{small}/{p}" for p in problems] + [
        f"{len(problems)} problem(s) in {small}"
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("prefix,origin\n", "announced.csv:1: header must be prefix,asn or prefix,asn,org, got prefix,origin"),
        ("# nothing but a comment\n", "announced.csv: empty file: the first line must be the header prefix,asn,org (org optional)"),
    ],
)  # fmt: skip
def test_malformed_announced_header(tmp_path: Path, text: str, problem: str) -> None:
    (tmp_path / "announced.csv").write_text(text, encoding="utf-8")
    with pytest.raises(ClientMapError) as caught:
        read_announced(tmp_path / "announced.csv", str(tmp_path / "announced.csv"))
    assert [str(p) for p in caught.value.problems] == [f"{tmp_path}/{problem}"]


def test_missing_announced_file_is_a_config_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_small(tmp_path / "small")
    (small / "announced.csv").unlink()
    code, out, err = run(["check", str(small)], capsys)  # plain check sees it too
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == (
        f"{small}/deployment.yaml:5: coverage.announced: no such file {small}/announced.csv "
        "(paths are relative to deployment.yaml)"
    )


def test_without_coverage_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = write_small(tmp_path / "small", deployment=DEPLOYMENT.split("coverage:")[0])
    code, out, err = run(["check", "--coverage", str(small)], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == (
        f"{small}/deployment.yaml: no coverage: section: name the announced-prefix file "
        "(coverage: {announced: FILE}, CSV prefix,asn[,org]) or give router check --announced FILE"
    )
    code, out, _ = run(["check", "--coverage", "--announced", str(small / "announced.csv"),
                        str(small)], capsys)  # fmt: skip
    assert code == 3 and "3 gap(s)" in out
    assert run(["check", "--json", str(small)], capsys)[0] == 2


# --- map_coverage against a per-address reference ------------------------------------------


def _random_case(rng: random.Random, bits: int, base: int, span_bits: int):
    """A random map (nested prefixes, some touching, some with an ASN-less group) and random
    announced prefixes, all inside [base, base + 2**span_bits)."""
    asns = [0, 64496, 64497, 64498, 0]  # group 4: located, but no ASN
    groups = Groups(
        asn=np.array(asns, dtype=np.int64),
        country=("", "ES", "ES", "PT", "ES"),
        lat=np.array([np.nan, 40.0, 40.0, 38.0, 40.0]),
        lon=np.array([np.nan, -3.0, -3.0, -9.0, -3.0]),
        org=("", "a", "b", "c", ""),
    )
    entries = []
    for _ in range(rng.randint(0, 14)):
        plen = bits - rng.randint(0, span_bits)
        entries.append(
            (_aligned(rng, base, span_bits, bits - plen), plen, rng.randrange(len(asns)))
        )
    seen: set[tuple[int, int]] = set()
    entries = [e for e in entries if (e[0], e[1]) not in seen and not seen.add((e[0], e[1]))]
    v4 = entries if bits == 32 else []
    v6 = entries if bits == 128 else []
    cmap = ClientMap.from_int_prefixes(groups, v4, v6)
    rows = []
    for _ in range(rng.randint(1, 10)):
        plen = bits - rng.randint(0, span_bits)
        rows.append((_aligned(rng, base, span_bits, bits - plen), plen, rng.choice(asns[1:4])))
    rows = list(dict.fromkeys(rows))
    version = 4 if bits == 32 else 6
    table = AnnouncedPrefixes(
        "t.csv", tuple(version for _ in rows), tuple(r[0] for r in rows),
        tuple(r[1] for r in rows), tuple(r[2] for r in rows), tuple("" for _ in rows),
        tuple(range(2, len(rows) + 2)),
    )  # fmt: skip
    return cmap, table


def _aligned(rng: random.Random, base: int, span_bits: int, host_bits: int) -> int:
    """A network address with ``host_bits`` host bits, near a random address of the universe."""
    return (base + rng.randrange(1 << span_bits)) >> host_bits << host_bits


def _reference(cmap: ClientMap, table: AnnouncedPrefixes, row: int) -> tuple[str, set[int]]:
    """The kind of one prefix and its addresses outside its ASN, address by address; the
    addresses of more specific rows are theirs (longest match), not this row's."""
    bits = 32 if table.version[row] == 4 else 128

    def addresses(r: int) -> range:
        return range(table.start[r], table.start[r] + (1 << (bits - table.prefixlen[r])))

    mine = set(addresses(row))
    for other in range(len(table)):
        if table.prefixlen[other] > table.prefixlen[row]:
            mine -= set(addresses(other))
    own = unplaced = other = False
    outside: set[int] = set()
    for address in sorted(mine):
        if bits == 32:
            group, _ = cmap.lookup_v4_int(address)
        else:
            group, _ = cmap.lookup_v6_int(address >> 64, address & ((1 << 64) - 1))
        if group != UNKNOWN_GROUP and int(cmap.groups.asn[group]) == table.asn[row]:
            own = True
            continue
        outside.add(address)
        if group == UNKNOWN_GROUP:
            unplaced = True
        else:
            other = True
    kind = OK if not outside else MISMATCH if other else PARTIAL if own and unplaced else MISSING
    return kind, outside


@pytest.mark.parametrize(
    ("bits", "base"),
    [(32, 0xC0000000), (32, 0), (128, (1 << 64) - 256), (128, (1 << 128) - 512)],  # fmt: skip
    ids=["v4", "v4-zero", "v6-across-64-bits", "v6-top"],
)
def test_map_coverage_matches_per_address_reference(bits: int, base: int) -> None:
    rng = random.Random(bits * 7 + base % 1000)
    for _ in range(60):
        cmap, table = _random_case(rng, bits, base, span_bits=9)
        coverage = map_coverage(cmap, table, {64496, 64497, 64498})
        found = {gap.line: gap for gap in coverage.gaps}
        for row in range(len(table)):
            kind, outside = _reference(cmap, table, row)
            gap = found.get(table.line[row])
            assert (gap.kind if gap else OK) == kind, (table.prefix_text(row), table.asn[row])
            if gap is None:
                continue
            addresses = {
                int(a) for part in gap.parts for block in part.prefixes
                for a in ipaddress.ip_network(block)
            }  # fmt: skip
            assert addresses == outside


def test_sample_map_against_another_announced_file(tmp_path: Path) -> None:
    # The sample pointed at the operator's own file: Orange France's 2a01:cb00::/32 is placed,
    # a prefix the map has never heard of is missing.
    root = tmp_path / "z"
    shutil.copytree(REPO_ROOT / "zones", root)
    text = (root / "deployment.yaml").read_text()
    text = text.replace("../geodata/iberia-announced.csv", str(tmp_path / "orange.csv"))
    text = text.replace("../geodata/", str(REPO_ROOT / "geodata") + "/").replace(
        "../var/", str(tmp_path) + "/"
    )
    (root / "deployment.yaml").write_text(text)
    (tmp_path / "orange.csv").write_text(
        "prefix,asn\n2a01:cb00::/32,3215\n2001:db8:abcd::/48,3215\n"
    )
    report = check_coverage(load_deployment(root))
    assert [(g.prefix, g.asn, g.kind) for g in report.coverage.gaps] == [
        ("2001:db8:abcd::/48", 3215, MISSING)
    ]


def test_ipv6_runs_join_across_the_64_bit_halves() -> None:
    # ::/64 and 0:0:0:1::/64 are two groups of one ASN: they touch where the low half wraps
    # and the high one carries, so ::/63 of that ASN is placed whole; 0:0:0:2::/63 is not.
    groups = Groups(
        asn=np.array([0, 64496, 64496], dtype=np.int64),
        country=("", "ES", "PT"),
        lat=np.array([np.nan, 40.0, 38.0]),
        lon=np.array([np.nan, -3.0, -9.0]),
        org=("", "a", "a"),
    )
    cmap = ClientMap.from_int_prefixes(groups, [], [(0, 64, 1), (1 << 64, 64, 2), (2 << 64, 64, 1)])
    table = AnnouncedPrefixes(
        "t.csv", (6, 6), (0, 2 << 64), (63, 63), (64496, 64496), ("", ""), (2, 3)
    )
    coverage = map_coverage(cmap, table, {64496})
    assert [(g.prefix, g.kind, [p.prefixes for p in g.parts]) for g in coverage.gaps] == [
        ("0:0:0:2::/63", PARTIAL, [("0:0:0:3::/64",)])
    ]
