"""The client map (router/geo/clientmap.py) and its longest-prefix-match kernels (_lpm.py).

Lookups are held equal to a brute-force longest-prefix match over the original prefix list,
for IPv4 and IPv6, single and batched. The ECS scope returned with each answer is checked
against its contract: every address in the /scope block around the client gets the same
answer; an unmapped client's block touches no mapped address and is the shortest such block.
Finally ``load_mmdb`` reads the shipped sample and rejects broken files.
"""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import maxminddb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.geo import UNKNOWN_GROUP, ClientMap, ClientMapError, Groups, load_mmdb

REPO = Path(__file__).resolve().parents[1]
SAMPLE_MMDB = REPO / "geodata" / "iberia-clients.mmdb"
MAXMIND_TEST_DATA = REPO.parent / "shared" / "data" / "maxmind-test-data" / "test-data"

LOOKUPS = settings(max_examples=120, deadline=None)
MAX_GROUP = 5
LOW64 = (1 << 64) - 1

Prefix = tuple[int, int, int]  # (network address, prefix length, group)


def make_groups(count: int = MAX_GROUP) -> Groups:
    return Groups(
        asn=np.arange(count + 1, dtype=np.int64),
        country=("",) + ("ES",) * count,
        lat=np.array([np.nan] + [40.0] * count),
        lon=np.array([np.nan] + [-3.7] * count),
        org=("",) * (count + 1),
    )


def compile_map(prefixes: list[Prefix], bits: int) -> ClientMap:
    cls = ipaddress.IPv4Network if bits == 32 else ipaddress.IPv6Network
    return ClientMap.from_prefixes(
        make_groups(), [(cls((addr, plen)), group) for addr, plen, group in prefixes]
    )


def block(x: int, plen: int, bits: int) -> tuple[int, int]:
    """First and last address of the /plen block around x."""
    size = 1 << (bits - plen)
    first = x & ~(size - 1)
    return first, first + size - 1


def prefix_range(prefix: Prefix, bits: int) -> tuple[int, int]:
    return block(prefix[0], prefix[1], bits)


def brute_lpm(prefixes: list[Prefix], x: int, bits: int) -> Prefix | None:
    """The longest prefix containing x, or None."""
    best = None
    for p in prefixes:
        first, last = prefix_range(p, bits)
        if first <= x <= last and (best is None or p[1] > best[1]):
            best = p
    return best


def brute_group(prefixes: list[Prefix], x: int, bits: int) -> int:
    best = brute_lpm(prefixes, x, bits)
    return UNKNOWN_GROUP if best is None else best[2]


def lookup(cmap: ClientMap, x: int, bits: int) -> tuple[int, int]:
    """Through every single-address entry point; they must agree."""
    if bits == 32:
        result = cmap.lookup(ipaddress.IPv4Address(x))
        assert cmap.lookup_v4_int(x) == result
    else:
        result = cmap.lookup(ipaddress.IPv6Address(x))
        assert cmap.lookup_v6_int(x >> 64, x & LOW64) == result
    assert all(type(v) is int for v in result)
    return result


@st.composite
def prefix_sets(draw: st.DrawFn, bits: int) -> list[Prefix]:
    """Distinct prefixes with groups 1..5, often nested: many grow from a few shared seeds."""
    top = (1 << bits) - 1
    if bits == 32:
        specials = [0, top, 0x0A000000, 0x0A010000, 0xC0A80000, 0x7FFFFFFF]
    else:
        # Low 64 bits all zeros or all ones, so carries cross the hi/lo halves.
        doc, six = 0x20010DB8 << 96, 0x2A02 << 112
        specials = [
            0,
            top,
            doc,
            doc | LOW64,
            (doc | (1 << 64)) - 1,
            six | (5 << 64),
            (six | (6 << 64)) - 1,
        ]
    seeds = draw(
        st.lists(st.one_of(st.sampled_from(specials), st.integers(0, top)), min_size=1, max_size=3)
    )
    if bits == 32:
        plens = st.one_of(st.integers(0, 32), st.integers(8, 30))
    else:
        plens = st.one_of(
            st.integers(0, 128), st.integers(16, 64), st.integers(56, 72), st.integers(65, 128)
        )
    count = draw(st.integers(0, 12))
    chosen: dict[tuple[int, int], int] = {}
    for _ in range(count):
        base = draw(st.one_of(st.sampled_from(seeds), st.integers(0, top)))
        plen = draw(plens)
        network = block(base, plen, bits)[0]
        chosen.setdefault((network, plen), draw(st.integers(1, MAX_GROUP)))
    return [(addr, plen, group) for (addr, plen), group in chosen.items()]


def probe_addresses(prefixes: list[Prefix], bits: int, extra: list[int]) -> list[int]:
    """Prefix boundaries and the addresses either side of them, the ends of the space, extras."""
    top = (1 << bits) - 1
    points = {0, top, *extra}
    for p in prefixes:
        first, last = prefix_range(p, bits)
        points.update((first - 1, first, first + 1, last - 1, last, last + 1))
    return sorted(x for x in points if 0 <= x <= top)


def check_lookup_equals_brute_force(prefixes: list[Prefix], extra: list[int], bits: int) -> None:
    cmap = compile_map(prefixes, bits)
    for x in probe_addresses(prefixes, bits, extra):
        group, scope = lookup(cmap, x, bits)
        assert group == brute_group(prefixes, x, bits), hex(x)
        assert 0 <= scope <= bits


def check_scope(prefixes: list[Prefix], extra: list[int], rnd: random.Random, bits: int) -> None:
    cmap = compile_map(prefixes, bits)
    for x in probe_addresses(prefixes, bits, extra):
        group, scope = lookup(cmap, x, bits)
        first, last = block(x, scope, bits)
        inside = [first, last] + [rnd.randint(first, last) for _ in range(3)]
        deciding = brute_lpm(prefixes, x, bits)
        if deciding is not None:
            # A resolver caches the answer for the whole block: every address in it must get
            # the same group (and, the block being one compiled CIDR block, the same scope).
            assert scope >= deciding[1], (hex(x), scope, deciding)
            for y in inside:
                assert lookup(cmap, y, bits) == (group, scope), (hex(x), hex(y))
            # Exactly, by brute force: the best match can only change at the edge of a prefix
            # lying strictly inside the block, so check every such edge.
            edges = {first}
            for p in prefixes:
                p_first, p_last = prefix_range(p, bits)
                if first <= p_first and p_last <= last and p[1] > scope:
                    edges.update(e for e in (p_first, p_last + 1) if e <= last)
            assert {brute_group(prefixes, e, bits) for e in edges} == {group}, (hex(x), scope)
        else:
            assert group == UNKNOWN_GROUP
            for y in inside:
                assert lookup(cmap, y, bits)[0] == UNKNOWN_GROUP, (hex(x), hex(y))
            # No mapped address in the block ...
            assert not touches_map(prefixes, (first, last), bits), (hex(x), scope)
            # ... and it is the shortest such block: one bit shorter would reach a prefix.
            if scope > 0:
                assert touches_map(prefixes, block(x, scope - 1, bits), bits), (hex(x), scope)


def touches_map(prefixes: list[Prefix], span: tuple[int, int], bits: int) -> bool:
    """Whether any prefix shares an address with the inclusive range ``span``."""
    return any(
        first <= span[1] and span[0] <= last
        for first, last in (prefix_range(p, bits) for p in prefixes)
    )


# --- IPv4 ------------------------------------------------------------------------------------


@LOOKUPS
@given(prefix_sets(32), st.lists(st.integers(0, (1 << 32) - 1), max_size=8))
def test_lookup_v4_equals_brute_force_lpm(prefixes: list[Prefix], extra: list[int]) -> None:
    check_lookup_equals_brute_force(prefixes, extra, 32)


@LOOKUPS
@given(
    prefix_sets(32),
    st.lists(st.integers(0, (1 << 32) - 1), max_size=8),
    st.randoms(use_true_random=False),
)
def test_lookup_v4_scope(prefixes: list[Prefix], extra: list[int], rnd: random.Random) -> None:
    check_scope(prefixes, extra, rnd, 32)


@LOOKUPS
@given(prefix_sets(32), st.lists(st.integers(0, (1 << 32) - 1), max_size=8))
def test_lookup_v4_batch_equals_single(prefixes: list[Prefix], extra: list[int]) -> None:
    cmap = compile_map(prefixes, 32)
    addrs = probe_addresses(prefixes, 32, extra)
    groups, scopes = cmap.lookup_v4(np.array(addrs, dtype=np.int64))
    assert groups.dtype == np.int32 and scopes.dtype == np.uint8
    assert list(zip(groups.tolist(), scopes.tolist())) == [cmap.lookup_v4_int(x) for x in addrs]


# --- IPv6 ------------------------------------------------------------------------------------


@LOOKUPS
@given(prefix_sets(128), st.lists(st.integers(0, (1 << 128) - 1), max_size=8))
def test_lookup_v6_equals_brute_force_lpm(prefixes: list[Prefix], extra: list[int]) -> None:
    check_lookup_equals_brute_force(prefixes, extra, 128)


@LOOKUPS
@given(
    prefix_sets(128),
    st.lists(st.integers(0, (1 << 128) - 1), max_size=8),
    st.randoms(use_true_random=False),
)
def test_lookup_v6_scope(prefixes: list[Prefix], extra: list[int], rnd: random.Random) -> None:
    check_scope(prefixes, extra, rnd, 128)


@LOOKUPS
@given(prefix_sets(128), st.lists(st.integers(0, (1 << 128) - 1), max_size=8))
def test_lookup_v6_batch_equals_single(prefixes: list[Prefix], extra: list[int]) -> None:
    cmap = compile_map(prefixes, 128)
    addrs = probe_addresses(prefixes, 128, extra)
    hi = np.array([x >> 64 for x in addrs], dtype=np.uint64)
    lo = np.array([x & LOW64 for x in addrs], dtype=np.uint64)
    groups, scopes = cmap.lookup_v6(hi, lo)
    assert groups.dtype == np.int32 and scopes.dtype == np.uint8
    assert list(zip(groups.tolist(), scopes.tolist())) == [
        cmap.lookup_v6_int(x >> 64, x & LOW64) for x in addrs
    ]


# --- exact cases, written out ----------------------------------------------------------------

HAND_PREFIXES = [
    ("10.0.0.0/8", 1),
    ("10.1.0.0/16", 2),
    ("2001:db8::/32", 1),
    ("2001:db8:1::/48", 2),
    ("2001:db8:1:2:3::/80", 3),
]

HAND_CASES = [
    # address, (group, scope)
    ("10.1.2.3", (2, 16)),  # inside the /16
    ("10.0.0.1", (1, 16)),  # the /8, but 10.0.0.0/16 is the largest block that skips 10.1/16
    ("10.2.0.0", (1, 15)),  # 10.2.0.0/15 is the next block of what is left of the /8
    ("10.255.255.255", (1, 9)),  # 10.128.0.0/9
    ("11.0.0.0", (0, 8)),  # unmapped: 11.0.0.0/8 is free, 10.0.0.0/7 is not
    ("9.255.255.255", (0, 7)),  # 8.0.0.0/7 is free, 8.0.0.0/6 holds 10/8
    ("0.0.0.0", (0, 5)),
    ("255.255.255.255", (0, 1)),
    ("2001:db8:1:2:3::1", (3, 80)),
    ("2001:db8:1:2:3:ffff:ffff:ffff", (3, 80)),
    ("2001:db8:1:2:2:ffff:ffff:ffff", (2, 80)),  # next to the /80: the /79 would hold it
    ("2001:db8:1:2:4::", (2, 78)),
    ("2001:db8:1:3::", (2, 64)),
    ("2001:db8:1::5", (2, 63)),  # the /48 is cut by the /80 inside it
    ("2001:db8::1", (1, 48)),
    ("2001:db8:2::", (1, 47)),
    ("2001:db9::", (0, 32)),
    ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", (0, 29)),  # 2001:db0::/29 is free
    ("::", (0, 3)),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", (0, 1)),
]


@pytest.fixture(scope="module")
def hand_map() -> ClientMap:
    return ClientMap.from_prefixes(
        make_groups(), [(ipaddress.ip_network(n), g) for n, g in HAND_PREFIXES]
    )


@pytest.mark.parametrize(("address", "expected"), HAND_CASES, ids=[c[0] for c in HAND_CASES])
def test_lookup_hand_cases(hand_map: ClientMap, address: str, expected: tuple[int, int]) -> None:
    assert hand_map.lookup(ipaddress.ip_address(address)) == expected


def test_empty_map_is_all_unknown() -> None:
    cmap = ClientMap.from_prefixes(make_groups(), [])
    assert cmap.lookup(ipaddress.IPv4Address("192.0.2.1")) == (UNKNOWN_GROUP, 0)
    assert cmap.lookup(ipaddress.IPv6Address("2001:db8::1")) == (UNKNOWN_GROUP, 0)
    groups, scopes = cmap.lookup_v4(np.array([0, 0xFFFFFFFF], dtype=np.int64))
    assert groups.tolist() == [0, 0] and scopes.tolist() == [0, 0]


def test_groups_describe() -> None:
    groups = Groups(asn=np.array([0, 3352]), country=("", "ES"), lat=np.array([np.nan, 40.4]),
                    lon=np.array([np.nan, -3.7]), org=("", "Telefonica"))  # fmt: skip
    assert len(groups) == 2
    assert groups.describe(0) == "unknown (not in the client map)"
    assert groups.describe(1) == "AS3352 Telefonica, ES"


# --- the shipped sample and broken files -----------------------------------------------------


@pytest.fixture(scope="module")
def sample_map() -> ClientMap:
    return load_mmdb(SAMPLE_MMDB)


def test_load_mmdb_sample_matches_records(sample_map: ClientMap) -> None:
    with maxminddb.open_database(str(SAMPLE_MMDB)) as reader:
        networks = list(reader)
    assert len(networks) > 2000
    checked = {4: 0, 6: 0}
    for network, record in random.Random(20240601).sample(networks, 2000):
        for address in (network.network_address, network.broadcast_address):
            group, scope = sample_map.lookup(address)
            assert group != UNKNOWN_GROUP, address
            assert int(sample_map.groups.asn[group]) == record["autonomous_system_number"], address
            assert sample_map.groups.country[group] == record["country"]["iso_code"], address
            assert sample_map.groups.lat[group] == record["location"]["latitude"], address
            assert sample_map.groups.lon[group] == record["location"]["longitude"], address
            # The file's networks are disjoint, so each is its own ECS scope.
            assert scope == network.prefixlen, (address, network)
        checked[network.version] += 1
    assert checked[4] > 0 and checked[6] > 0


@pytest.mark.parametrize(
    ("name", "content"),
    [("missing.mmdb", None), ("empty.mmdb", b""), ("text.mmdb", b"not a MaxMind database\n")],
    ids=["missing", "empty", "text"],
)
def test_load_mmdb_rejects_unreadable_file(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ClientMapError, match=f"^{path}: cannot open MaxMind database: "):
        load_mmdb(path)


BROKEN_FILES = [
    # file, expected start of the message
    ("MaxMind-DB-test-broken-search-tree-24.mmdb", "broken MaxMind database"),
    ("MaxMind-DB-test-broken-pointers-24.mmdb", "broken MaxMind database"),
    ("GeoIP2-City-Test-Broken-Double-Format.mmdb", "broken MaxMind database"),
    ("GeoIP2-City-Test-Invalid-Node-Count.mmdb", "cannot open MaxMind database"),
]


@pytest.mark.skipif(
    not MAXMIND_TEST_DATA.is_dir(), reason=f"MaxMind test data not present at {MAXMIND_TEST_DATA}"
)
@pytest.mark.parametrize(("name", "message"), BROKEN_FILES, ids=[c[0] for c in BROKEN_FILES])
def test_load_mmdb_rejects_broken_file(name: str, message: str) -> None:
    with pytest.raises(ClientMapError, match=f"^{MAXMIND_TEST_DATA / name}: {message}: "):
        load_mmdb(MAXMIND_TEST_DATA / name)
