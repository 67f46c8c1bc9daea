"""The fast paths of the full build (issue 19, item 5) held to the slow ways they replace:
node addresses read ahead of pydantic, the inventory validated in one call, the collector
paused during a load, the flow-line reader on lines it must read exactly, and the steered
records of the answer book. Bad input still gets the problem the one-by-one path gives."""

from __future__ import annotations

import gc
import ipaddress
import random
from pathlib import Path

import dns.name
import pytest

from router._gc import collector_paused
from router.config import _yaml
from router.config._validate import validate_all, validate_item
from router.config.nodes import Node, Site, _with_addresses, parse_inventory
from router.dns.answers import AnswerBook

SITE = '  - {id: es-mad, metro: "Madrid", country: "ES", kind: isp, lat: 40.4, lon: -3.7}\n'


def inventory_text(v4: str, v6: str) -> str:
    """Two nodes in the generated one-line shape; the second has the addresses given."""

    def node(i: int, a: str, b: str) -> str:
        return (
            f"  - {{id: n-{i}, asn: 3352, site: es-mad, lat: 40.4, lon: -3.7, ipv4: {a}, "
            f'ipv6: "{b}", capacity_gbps: 100}}\n'
        )

    return "sites:\n" + SITE + "nodes:\n" + node(1, "198.18.0.1", "2001:db8::1") + node(2, v4, v6)


# Each problem as the one-by-one path (validate_item on the item as written) reported it
# before the fast path existed.
BAD_ADDRESSES = {
    "octet over 255": (
        "198.18.0.256",
        "2001:db8::2",
        "nodes.yaml:5: node \"n-2\": ipv4: Input is not a valid IPv4 address, got '198.18.0.256'",
    ),
    "leading zero": (
        "198.18.0.01",
        "2001:db8::2",
        "nodes.yaml:5: node \"n-2\": ipv4: Input is not a valid IPv4 address, got '198.18.0.01'",
    ),
    "bad hex": (
        "198.18.0.2",
        "2001:db8::g",
        "nodes.yaml:5: node \"n-2\": ipv6: Input is not a valid IPv6 address, got '2001:db8::g'",
    ),
    "two gaps": (
        "198.18.0.2",
        "2001::db8::2",
        "nodes.yaml:5: node \"n-2\": ipv6: Input is not a valid IPv6 address, got '2001::db8::2'",
    ),
    "v6 as ipv4": (
        '"2001:db8::2"',
        "2001:db8::3",
        "nodes.yaml:5: node \"n-2\": ipv4: Input is not a valid IPv4 address, got '2001:db8::2'",
    ),
    "v4 as ipv6": (
        "198.18.0.2",
        "198.18.0.3",
        "nodes.yaml:5: node \"n-2\": ipv6: Input is not a valid IPv6 address, got '198.18.0.3'",
    ),
    "same address in another spelling": (
        "198.18.0.2",
        "2001:DB8::1",
        'nodes.yaml:5: node "n-2": ipv6 2001:db8::1 is already used by node "n-1"',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ADDRESSES))
def test_a_bad_address_gets_the_same_problem_as_before(case: str) -> None:
    v4, v6, expected = BAD_ADDRESSES[case]
    doc = _yaml._load_flow_lines(inventory_text(v4, v6), "nodes.yaml")
    assert doc is not None  # the generated shape: read by the fast reader
    inventory, problems = parse_inventory(doc)
    assert inventory is None
    assert [str(p) for p in problems] == [expected]
    # And what the one-by-one path says of that node, where the problem is about its fields.
    _, reference = validate_item(Node, doc.data["nodes"][1], doc, ("nodes", 1), 'node "n-2"')
    assert [str(p) for p in reference] == ([expected] if "already used" not in expected else [])


def test_a_model_level_problem_shows_the_item_as_written(tmp_path: Path) -> None:
    """A problem of the whole node repeats its value: the texts of the file, not addresses."""
    path = tmp_path / "nodes.yaml"
    path.write_text(
        "sites:\n" + SITE + "nodes:\n"
        "  - {id: n-1, asn: 3352, site: es-mad, lat: 40.4, lon: -3.7, ipv4: 198.18.0.2, "
        'ipv6: "2001:db8::2", capacity_gbps: 100, serves: any, serves_asns: [6739]}\n'
    )
    doc, errors = _yaml.load_yaml(path, "nodes.yaml")
    assert doc is not None and errors == []
    _, problems = parse_inventory(doc)
    assert [str(p) for p in problems] == [
        'nodes.yaml:4: node "n-1": : serves_asns is for on-net-only nodes: it needs serves: '
        "on-net, not any, got {'id': 'n-1', 'asn': 3352, 'site': 'es-mad', 'lat': 40.4, "
        "'lon': -3.7, 'ipv4': '198.18.0.2', 'ipv6': '2001:db8::2', 'capacity_gbps': 100, "
        "'serves': 'any', 'serves_asns': [6739]}"
    ]


ADDRESS_TEXTS = [
    "0.0.0.0", "255.255.255.255", "198.18.0.1", "1.2.3.04", "1.2.3", "1.2.3.4.5", " 1.2.3.4",
    "1.2.3.4/32", "::", "::1", "1::", "2001:db8::1", "2001:DB8::1", "2001:0db8::1",
    "2001:db8:0:0:1::1", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
    "1::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8:9", "::ffff:1.2.3.4", "::ffff:102:304", "::1.2.3.4",
    "::ffff:1.2.3.04", "fe80::1%eth0", "2001:db8::12345", ":::", "2001:db8::1\x00", "\u0661.2.3.4",
]  # fmt: skip


def test_addresses_read_ahead_are_those_ipaddress_reads() -> None:
    """Whatever ``_with_addresses`` turns into an address, ipaddress reads to the same one;
    the rest is left as written (for pydantic to read or refuse)."""
    rng = random.Random(19)
    v4 = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2000)]
    # Top 32 bits set: no IPv4 tail in anyone's canonical form, as in generated inventories.
    v6 = [str(ipaddress.IPv6Address(rng.getrandbits(96) | 1 << 127)) for _ in range(2000)]
    others = []
    for _ in range(2000):
        address = ipaddress.IPv6Address(rng.getrandbits(128) >> rng.choice((0, 16, 64, 100)))
        others += [str(address), address.exploded]
    read_ahead = {"ipv4": [], "ipv6": []}
    for text in ADDRESS_TEXTS + v4 + v6 + others:
        for field, kind in (("ipv4", ipaddress.IPv4Address), ("ipv6", ipaddress.IPv6Address)):
            out = _with_addresses({field: text})
            assert isinstance(out, dict)
            value = out[field]
            if value is text:
                continue
            read_ahead[field].append(text)
            assert type(value) is kind
            assert value == kind(text), text  # raises if ipaddress would refuse the text
    # The canonical texts (what generated files hold) take the fast way.
    assert set(v4) <= set(read_ahead["ipv4"]) and set(v6) <= set(read_ahead["ipv6"])
    assert _with_addresses({"ipv4": 3323068418})["ipv4"] == 3323068418  # not text: left


def test_validating_all_at_once_is_validating_each() -> None:
    doc = _yaml._load_flow_lines(inventory_text("198.18.0.2", "2001:db8::2"), "nodes.yaml")
    assert doc is not None
    for model, items in ((Site, doc.data["sites"]), (Node, doc.data["nodes"])):
        together = validate_all(model, items)
        one_by_one = [validate_item(model, item, doc, (), "x")[0] for item in items]
        assert together == one_by_one and all(type(m) is model for m in together)
    bad = [dict(item) for item in doc.data["nodes"]]
    bad[1]["capacity_gbps"] = 0
    assert validate_all(Node, bad) is None
    assert validate_all(Node, [bad[0], "not a mapping"]) is None


def test_the_collector_is_paused_during_a_load_and_back_after() -> None:
    was = gc.isenabled()
    try:
        gc.enable()
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled()
        with pytest.raises(RuntimeError), collector_paused():
            raise RuntimeError("a load that fails")
        assert gc.isenabled()
        gc.disable()  # whoever turned it off keeps it off
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()


FLOW_LINES = {
    "quotes holding separators": 'a:\n  - {k: "x, y: z}", j: 1}\n',
    "comment that looks like entries": "a:\n  - {k: 1}  # j: 2, l: 3}\n",
    "empty string": 'a:\n  - {k: "", j: ""}\n',
    "escaped quote last": 'a:\n  - {k: "say \\"hi\\""}\n',
    "spaces around separators": "a:\n  - {  k:   1 ,  j:  x  }\n",
    "signed numbers": "a:\n  - {k: -0, j: +7, l: -0.25, m: 0.0}\n",
    "dotted quad with leading zero": "a:\n  - {k: 010.1.1.1}\n",
}


@pytest.mark.parametrize("name", sorted(FLOW_LINES))
def test_flow_lines_read_as_pyyaml_reads_them(tmp_path: Path, name: str) -> None:
    from tests.test_world_build_speed import slow_load, types_of

    path = tmp_path / "doc.yaml"
    path.write_text(FLOW_LINES[name], encoding="utf-8")
    fast = _yaml._load_flow_lines(FLOW_LINES[name], str(path))
    assert fast is not None
    slow, problems = slow_load(path)
    assert slow is not None and problems == []
    assert fast.data == slow.data and types_of(fast.data) == types_of(slow.data)
    assert fast.lines == slow.lines and fast.key_order == slow.key_order


@pytest.mark.parametrize(
    "text",
    ['a:\n  - {k: "x\x01y"}\n', 'a:\n  - {k: "x"y}\n', "a:\n  - {k: 1,}\n", "a:\n  - {}\n"],
    ids=["control character", "text after quotes", "trailing comma", "empty mapping"],
)
def test_other_flow_lines_go_to_pyyaml(text: str) -> None:
    assert _yaml._load_flow_lines(text, "doc.yaml") is None


def test_steered_records_are_the_wire_records_of_each_node() -> None:
    nodes = [(bytes([192, 0, 2, i]), bytes(15) + bytes([i])) for i in (1, 2, 3)]
    steered = [
        (dns.name.from_text("a.example."), 0, 20),
        (dns.name.from_text("b.example."), 1, 20),
        (dns.name.from_text("c.example."), 2, 300),
    ]
    book = AnswerBook({}, steered, nodes)  # no zones: steered records do not need them
    for entry in book.steered:
        ttl = steered[entry.policy][2]
        size = 4 if entry.rdtype == 1 else 16
        expected = tuple(
            b"\xc0\x0c"
            + entry.rdtype.to_bytes(2, "big")
            + b"\x00\x01"
            + ttl.to_bytes(4, "big")
            + size.to_bytes(2, "big")
            + address[0 if size == 4 else 1]
            for address in nodes
        )
        assert entry.records == expected
        assert entry.encode([2, -1, 0]) == expected[2] + expected[0]
    assert [(e.policy, e.rdtype, e.ttl) for e in book.steered] == [
        (0, 1, 20), (0, 28, 20), (1, 1, 20), (1, 28, 20), (2, 1, 300), (2, 28, 300),
    ]  # fmt: skip
