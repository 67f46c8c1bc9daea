"""loadtest/bench_throughput.py: the pure parts, in process (no dnsperf, gdnsd or PowerDNS).

The query files dnsperf reads, the parsers of its output, the answer checks, the query mix
on the sample deployment, and the peers' configurations: that gdnsd's nets and PowerDNS's
LUA records give every client subnet of the mix the node pair the router gives it. They
live in loadtest/throughput/; the whole bench runs in tests/test_bench_smoke.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from loadtest.throughput.answers import (
    Checker,
    Oracle,
    check_pool,
    peer_mismatch,
    router_mismatch,
    summarize,
)
from loadtest.throughput.dnsperf import (
    LatencyProbe,
    Run,
    parse_dnsperf,
    parse_latencies,
    percentile,
)
from loadtest.throughput.expected import (
    ClientLocator,
    ExpectedAnswers,
    peer_problem,
    router_problem,
)
from loadtest.throughput.figures import (
    check_figures,
    finish,
    format_table,
    ratio,
    summarize_runs,
    target_table,
)
from loadtest.throughput.peers import (
    Peers,
    deciding_block,
    interval_cidrs,
    map_blocks,
    pdns_lua,
    pdns_settings,
)
from loadtest.throughput.proc import other_busy_s, udp_drops
from loadtest.throughput.queries import (
    CASE_SHARE,
    EDNS_PAYLOAD,
    MIX,
    V4_ECS_BITS,
    V6_ECS_BITS,
    V6_SUBNET_SHARE,
    build_mix,
    draw_subnets,
    encode_query,
    frame,
    mix_composition,
    unframe,
    zone_inventory,
)
from tests.conftest import load_script, make_deployment

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "loadtest" / "bench_throughput.py"

DNSPERF_OUTPUT = """DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d q.bin -B -l 2 -c 2 -q 10
[Status] Sending queries (to 127.0.0.1:15353)
[Status] Started at: Sun Nov 22 07:51:54 2026
[Status] Stopping after 2.000000 seconds
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         3940
  Queries completed:    3930 (99.75%)
  Queries lost:         10 (0.25%)

  Response codes:       NOERROR 3284 (83.56%), NXDOMAIN 646 (16.44%)
  Average packet size:  request 52, response 74
  Run time (s):         2.005384
  Queries per second:   1964.710998

  Average Latency (s):  0.005061 (min 0.000032, max 0.016681)
  Latency StdDev (s):   0.004044
"""

PROC_NET_UDP = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1001 2 0000000000000000 17
  101: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1002 2 0000000000000000 3
  102: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1003 2 0000000000000000 99
"""


@pytest.fixture(scope="module")
def bench():
    return load_script(BENCH)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory):
    zones = make_deployment(tmp_path_factory.mktemp("throughput"))
    return Oracle(zones)


@pytest.fixture(scope="module")
def sample(oracle):
    """The mix as the bench builds it: inventory, 300 subnets, 3,000 queries of each variant."""
    rng = random.Random(1)
    model = oracle.model
    origin = model.policies[model.steered[0][1]].zone
    zone_file = oracle.zones / f"{origin.to_text().rstrip('.')}.zone"
    inventory = zone_inventory(zone_file, [(n.to_text(), p) for n, p in model.steered], rng)
    subnets = draw_subnets(model.client_map, rng, 300)
    ecs = build_mix(inventory, subnets, 3000, rng)
    plain = build_mix(inventory, None, 3000, rng)
    return {
        "zone_file": zone_file,
        "inventory": inventory,
        "subnets": subnets,
        "ecs": ecs,
        "plain": plain,
    }


# --- query files and dnsperf output ----------------------------------------------------------


def test_frame_round_trip():
    wires = [encode_query("video.cdn.example.", "A", "83.44.10.0/24", 7),
             encode_query("Origin.CDN.example.", "AAAA", None, 8)]  # fmt: skip
    data = frame(wires)
    assert data[:2] == struct.pack("!H", len(wires[0]))
    assert unframe(data) == wires
    first = dns.message.from_wire(wires[0])
    assert not first.flags & dns.flags.RD and first.edns == 0 and first.payload == EDNS_PAYLOAD
    (option,) = first.options
    assert isinstance(option, dns.edns.ECSOption) and (option.address, option.srclen) == (
        "83.44.10.0",
        24,
    )
    second = dns.message.from_wire(wires[1])
    assert (
        second.options == () and second.question[0].name.to_text() == "Origin.CDN.example."
    )  # case kept


def test_unframe_refuses_truncated_files():
    data = frame([encode_query("video.cdn.example.", "A", None)])
    with pytest.raises(ValueError):
        unframe(data[:-1])
    with pytest.raises(ValueError):
        unframe(data + b"\x00")


def test_parse_dnsperf():
    stats = parse_dnsperf(DNSPERF_OUTPUT)
    assert stats["sent"] == 3940 and stats["completed"] == 3930 and stats["lost"] == 10
    assert stats["qps"] == pytest.approx(1964.710998)
    assert stats["avg_latency_ms"] == pytest.approx(5.061) and stats[
        "max_latency_ms"
    ] == pytest.approx(16.681)
    assert stats["rcodes"] == {"NOERROR": 3284, "NXDOMAIN": 646}
    with pytest.raises(ValueError):
        parse_dnsperf("dnsperf: error: could not open file")


def test_latency_lines_and_percentile():
    text = "[Status] Sending\n> NOERROR binary input 0.000100\n> NXDOMAIN binary input 0.000300\n> T binary input\n"
    assert parse_latencies(text) == pytest.approx([0.1, 0.3])
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def test_udp_drops():
    assert udp_drops(PROC_NET_UDP, 0x14E9) == 20  # both SO_REUSEPORT sockets of one port
    assert udp_drops(PROC_NET_UDP, 53) == 99
    assert udp_drops(PROC_NET_UDP, 1) == 0


def test_other_busy_time():
    before, after = {"0": 10.0, "1": 20.0}, {"0": 13.0, "1": 22.5}
    assert other_busy_s(before, after, "1", 2.0) == 0.5
    assert other_busy_s(before, after, "0-1", 5.0) == 0.5
    assert other_busy_s(before, after, None, 0.0) is None
    assert other_busy_s(before, after, "1", 9.0) == 0.0


# --- answer checks ---------------------------------------------------------------------------


def reply(
    query: str,
    qtype: str,
    answer: list[str],
    rcode: int = dns.rcode.NOERROR,
    scope: int | None = None,
):
    q = dns.message.make_query(query, qtype, use_edns=0,
                               options=[] if scope is None else [dns.edns.ECSOption("83.44.10.0", 24)])  # fmt: skip
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.flags |= dns.flags.AA
    for text in answer:
        name, ttl, _, rdtype, rdata = text.split(None, 4)
        r.answer.append(dns.rrset.from_text(name, int(ttl), "IN", rdtype, rdata))
    if scope is not None:
        r.use_edns(0, options=[dns.edns.ECSOption("83.44.10.0", 24, scope)])
    return r


def test_router_check():
    a = ["video.cdn.example. 20 IN A 192.0.2.11", "video.cdn.example. 20 IN A 192.0.2.12"]
    expected = summarize(reply("video.cdn.example.", "A", a, scope=16))
    assert (
        router_mismatch(expected, summarize(reply("video.cdn.example.", "A", a, scope=16)), True)
        is None
    )
    swapped = summarize(reply("video.cdn.example.", "A", a[::-1], scope=16))
    assert "answer" in router_mismatch(expected, swapped, ordered=True)  # steered: best node first
    assert router_mismatch(expected, swapped, ordered=False) is None  # any other RRset: a set
    assert "ecs_scope" in router_mismatch(
        expected, summarize(reply("video.cdn.example.", "A", a, scope=24))
    )
    other = summarize(
        reply(
            "video.cdn.example.", "A", a[:1] + ["video.cdn.example. 20 IN A 192.0.2.13"], scope=16
        )
    )
    assert "answer" in router_mismatch(expected, other)
    nx = summarize(reply("video.cdn.example.", "A", [], rcode=dns.rcode.NXDOMAIN, scope=16))
    assert router_mismatch(expected, nx).startswith("rcode")
    cased = summarize(reply("ViDeO.cdn.example.", "A", a, scope=16))
    assert "question" in router_mismatch(expected, cased)  # the question is echoed as cased


def test_peer_check():
    a = ["video.cdn.example. 20 IN A 192.0.2.11", "video.cdn.example. 20 IN A 192.0.2.12"]
    expected = summarize(reply("video.cdn.example.", "A", a, scope=16))
    rotated = summarize(
        reply("video.cdn.example.", "A", [x.replace(" 20 ", " 10 ") for x in a[::-1]], scope=13)
    )
    assert peer_mismatch(expected, rotated, "VIDEO.cdn.example.") is None  # order, TTL, scope, case
    wrong = summarize(reply("video.cdn.example.", "A", a[:1], scope=16))
    assert "answer" in peer_mismatch(expected, wrong, "video.cdn.example.")
    cname = ["live.cdn.example. 3600 IN CNAME video.cdn.example."]
    chased = summarize(reply("live.cdn.example.", "A", cname + a))
    assert (
        peer_mismatch(
            summarize(reply("live.cdn.example.", "A", cname)), chased, "live.cdn.example."
        )
        is None
    )


# --- the mix on the sample deployment --------------------------------------------------------


def test_mix_composition(sample):
    for variant in ("ecs", "plain"):
        figures = mix_composition(sample[variant])
        for kind, share in MIX.items():
            assert figures["kinds"][kind] == pytest.approx(share, abs=0.03), (variant, kind)
        assert figures["case_mixed"] == pytest.approx(CASE_SHARE, abs=0.03)
        assert set(figures["types"]) >= {"A", "AAAA", "MX", "TXT"}
    assert mix_composition(sample["ecs"])["with_ecs"] == 1.0
    assert mix_composition(sample["plain"])["with_ecs"] == 0.0
    assert mix_composition(sample["ecs"])["distinct_subnets"] > 250  # many client subnets


def test_subnets_lie_in_the_client_map(oracle, sample):
    subnets = sample["subnets"]
    assert len(subnets) == len(set(subnets)) == 300
    v6 = [s for s in subnets if ":" in s]
    assert len(v6) == round(300 * V6_SUBNET_SHARE)
    for subnet in subnets:
        network = ipaddress.ip_network(subnet)
        assert network.prefixlen == (V6_ECS_BITS if network.version == 6 else V4_ECS_BITS)
    groups = [
        oracle.model.client_map.lookup(ipaddress.ip_network(s).network_address)[0] for s in subnets
    ]
    assert 0 not in groups  # every one placed by the map
    assert len(set(groups)) > 50  # many client groups, not one ISP


def test_every_kind_gets_its_answer(oracle, sample):
    """What the router answers each kind of query with (its own lookup): the mix is what it says."""
    model = oracle.model
    answer_count = {name: model.policies[p].policy.answer_count for name, p in model.steered}
    for q in sample["ecs"][:1500] + sample["plain"][:500]:
        r = oracle.reply(q.wire)
        if q.kind == "nxdomain":
            assert r.rcode() == dns.rcode.NXDOMAIN, q
        elif q.kind == "nodata":
            assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority, q
        elif q.kind == "steered":
            assert r.rcode() == dns.rcode.NOERROR and len(r.answer) == 1, q
            rrset = r.answer[0]
            assert (
                rrset.rdtype == dns.rdatatype.from_text(q.qtype)
                and len(rrset) == answer_count[rrset.name]
            )
        else:
            assert r.rcode() == dns.rcode.NOERROR and r.answer, q
        scopes = [o.scopelen for o in r.options if isinstance(o, dns.edns.ECSOption)]
        assert len(scopes) == (1 if q.ecs else 0), q


def test_oracle_agrees_with_router_explain(oracle, sample):
    steered = [q for q in sample["ecs"] if q.kind == "steered"]
    result = oracle.crosscheck(steered[:1] + sample["plain"][:1], 2)
    assert result["explain_crosschecked"] == 2 and result["explain_differences"] == []


# --- the peers -------------------------------------------------------------------------------


def test_interval_cidrs():
    assert interval_cidrs(0x0A000000, 0x0A0001FF, 24, 32) == [(0x0A000000, 24), (0x0A000100, 24)]
    assert interval_cidrs(0, 2**32 - 1, 0, 32) == [(0, 0)]
    with pytest.raises(ValueError):
        interval_cidrs(0x0A000080, 0x0A0001FF, 24, 32)


def test_map_blocks_cover_the_map(oracle):
    client_map = oracle.model.client_map
    blocks = map_blocks(client_map)
    assert len(blocks) >= len(client_map.v4_start) + len(client_map.v6_start_hi)
    for network, group in random.Random(2).sample(blocks, 300):
        assert client_map.lookup(network.network_address) == (group, network.prefixlen)
        assert client_map.lookup(network.broadcast_address) == (group, network.prefixlen)


def expected_addresses(oracle, label: str, qtype: str, subnet: str | None) -> set[str]:
    r = oracle.reply(encode_query(f"{label}.cdn.example.", qtype, subnet))
    return {rdata.address for rrset in r.answer for rdata in rrset}


def test_gdnsd_nets_send_each_subnet_where_the_router_does(oracle, sample, tmp_path):
    peers = Peers(oracle, sample["subnets"], sample["zone_file"])
    figures = peers.write_gdnsd(tmp_path / "gdnsd", 15353)
    config = (tmp_path / "gdnsd" / "config").read_text()
    assert "listen => [ 0.0.0.0 ]" in config and "dns_port => 15353" in config
    assert "service_types => up" in config  # no health checks: they would leave loopback
    zone = (tmp_path / "gdnsd" / "zones" / "cdn.example").read_text()
    for s in peers.steered:
        assert f"{s.label} {s.ttl} DYNA geoip!{s.label}" in zone
        nets = dict(
            line.split(" => ")
            for line in (tmp_path / "gdnsd" / f"{s.label}.nets").read_text().splitlines()
        )
        assert len(nets) == figures["gdnsd_nets_per_map"] - figures["gdnsd_nets_skipped"]
        dcmap = {}
        for line in config.split(f"{s.label}_map\n", 1)[1].splitlines():
            if "addrs_v4" in line:
                dc, rest = line.split(" => ", 1)
                dcmap[dc.strip()] = set(rest.split("[ ")[1].split(" ]")[0].split(", "))
        default_dc = config.split(f"{s.label}_map => {{ datacenters => [ ", 1)[1].split(",")[0]
        for subnet in sample["subnets"][::5]:
            block, group = deciding_block(oracle.model.client_map, subnet)
            # An address no prefix of the map covers (group 0) is in no net: gdnsd's default.
            assert str(block) in nets or group == 0
            dc = nets.get(str(block), default_dc)
            assert dcmap[dc] == expected_addresses(oracle, s.label, "A", subnet), subnet


def test_gdnsd_datacenters_stay_within_its_limit(oracle, sample, monkeypatch, tmp_path):
    """gdnsd takes at most 254 datacenters per map: past that the mix's pairs come first, every
    block keeps its nets entry (the map keeps the router's size), the others are counted."""
    import loadtest.throughput.peers as peers_module

    peers = Peers(oracle, sample["subnets"], sample["zone_file"])
    blocks = map_blocks(oracle.model.client_map)
    policy = peers.steered[0].policy
    every = peers.gdnsd_datacenters(policy, blocks)
    assert every[0] == peers.default_set[policy] and len(every) == len(set(every)) <= 254
    monkeypatch.setattr(peers_module, "GDNSD_MAX_DATACENTERS", 4)
    few = peers.gdnsd_datacenters(policy, blocks)
    assert len(few) == 4 and few[0] == peers.default_set[policy]
    first_mix_set = next(
        a for a in (oracle.answer_set(policy, deciding_block(oracle.model.client_map, n)[1])
                    for n in sample["subnets"]) if a != few[0]
    )  # fmt: skip
    assert few[1] == first_mix_set
    figures = peers.write_gdnsd(tmp_path / "gdnsd", 15353)
    assert figures["gdnsd_datacenters"] == 4 and figures["gdnsd_nets_substituted"] > 0
    nets = (tmp_path / "gdnsd" / f"{peers.steered[0].label}.nets").read_text().splitlines()
    assert len(nets) == figures["gdnsd_nets_per_map"] - figures["gdnsd_nets_skipped"] // len(
        peers.steered
    )
    assert {line.split(" => ")[1] for line in nets} <= {f"s{a}" for a in few}


def lua_answer(code: str, client: str) -> set[str]:
    """Evaluate a LUA record body of ``pdns_lua`` as PowerDNS would for ``bestwho`` = ``client``."""

    def strings(text: str) -> list[str]:
        return re.findall(r"'([^']*)'", text)

    address = ipaddress.ip_address(client)
    for nets, result in re.findall(
        r"(?:if|elseif) netmask\(\{([^}]*)\}\) then return \{([^}]*)\}", code
    ):
        if any(address in ipaddress.ip_network(n) for n in strings(nets)):
            return set(strings(result))
    return set(strings(re.search(r"return \{([^}]*)\}$", code).group(1)))


def test_pdns_lua_records_send_each_subnet_where_the_router_does(oracle, sample, tmp_path):
    peers = Peers(oracle, sample["subnets"], sample["zone_file"])
    figures = peers.write_pdns(tmp_path / "pdns", 15353)
    assert figures["pdns_netmasks_per_record"] > 0
    conf = (tmp_path / "pdns" / "pdns.conf").read_text().splitlines()
    # Production (the default profile), bound like the router it is measured beside.
    for setting in ("local-address=0.0.0.0", "local-port=15353", "enable-lua-records=shared",
                    "edns-subnet-processing=yes", "security-poll-suffix=", "daemon=no", "guardian=no",
                    "receiver-threads=1", "reuseport=yes", "distributor-threads=1", "cache-ttl=60"):  # fmt: skip
        assert setting in conf
    assert figures["pdns_config"]["enable-lua-records"] == "shared"
    assert all("doc.powerdns.com" in why for why in figures["pdns_config_reasons"].values())
    zone = (tmp_path / "pdns" / "cdn.example.zone").read_text()
    for s in peers.steered:
        for qtype in ("A", "AAAA"):
            line = next(
                x for x in zone.splitlines() if x.startswith(f"{s.label} {s.ttl} IN LUA {qtype} ")
            )
            code = line.split(' "', 1)[1].rstrip('"')
            for subnet in sample["subnets"][::3]:
                client = str(ipaddress.ip_network(subnet).network_address)
                assert lua_answer(code, client) == expected_addresses(
                    oracle, s.label, qtype, subnet
                )
            # Without ECS the resolver's address decides: loopback, the unknown group's answer.
            assert lua_answer(code, "127.0.0.1") == expected_addresses(oracle, s.label, qtype, None)


def test_pdns_settings_follow_the_docs_and_fit_the_records(oracle, sample, tmp_path):
    production = pdns_settings("production", 100)
    defaults = pdns_settings("defaults", 100)
    assert (
        production["enable-lua-records"][0] == "shared"
        and defaults["enable-lua-records"][0] == "yes"
    )
    # The defaults profile leaves PowerDNS's own thread and cache settings alone.
    assert not {"receiver-threads", "reuseport", "distributor-threads", "cache-ttl"} & set(defaults)
    # The exec limit never drops below PowerDNS's default and grows with the longest record.
    assert int(production["lua-records-exec-limit"][0]) == 1000
    assert int(pdns_settings("production", 5000)["lua-records-exec-limit"][0]) > 4 * 5000
    with pytest.raises(ValueError, match="unknown PowerDNS profile"):
        pdns_settings("fast", 1)
    peers = Peers(oracle, sample["subnets"], sample["zone_file"])
    peers.write_pdns(tmp_path / "pdns", 15353, "defaults", "127.0.0.1")
    conf = (tmp_path / "pdns" / "pdns.conf").read_text().splitlines()
    assert "local-address=127.0.0.1" in conf and "enable-lua-records=yes" in conf
    assert not any(line.startswith("reuseport=") for line in conf)


def test_pdns_lua_text():
    code = pdns_lua([(["10.0.0.0/8"], ["192.0.2.1", "192.0.2.2"]), (["2001:db8::/32"], ["192.0.2.3"])],
                          ["192.0.2.9"])  # fmt: skip
    assert code == (
        ";if netmask({'10.0.0.0/8'}) then return {'192.0.2.1','192.0.2.2'} elseif "
        "netmask({'2001:db8::/32'}) then return {'192.0.2.3'} end return {'192.0.2.9'}"
    )
    assert lua_answer(code, "10.1.2.3") == {"192.0.2.1", "192.0.2.2"}
    assert lua_answer(code, "2001:db8::1") == {"192.0.2.3"}
    assert lua_answer(code, "127.0.0.1") == {"192.0.2.9"}
    assert pdns_lua([], ["192.0.2.9"]) == ";return {'192.0.2.9'}"


# --- figures ---------------------------------------------------------------------------------


def test_targets_and_ratios():
    assert ratio(80.0, 100.0) == 0.8 and ratio(1.0, None) is None and ratio(None, 1.0) is None
    table = target_table(
        {"qps_vs_gdnsd": 0.8, "cpu_vs_gdnsd": 1.6, "qps_vs_pdns": None, "p99_half_load_ms": 0.4}
    )
    assert table["qps_vs_gdnsd"]["pass"] is True and table["cpu_vs_gdnsd"]["pass"] is False
    assert table["qps_vs_pdns"]["pass"] is None and table["p99_half_load_ms"]["pass"] is True


def test_table_with_a_missing_peer(bench):
    smoke = bench.parse_args(["--smoke", "--seconds", "2"])
    assert (smoke.repetitions, smoke.seconds, smoke.queries, smoke.subnets, smoke.warmup) == (
        1,
        2.0,
        1000,
        100,
        0.5,
    )
    args = bench.parse_args(["--quick"])
    assert (args.repetitions, args.seconds, args.queries) == (1, 3.0, 5000)
    args.cpus_at_start = [0, 1]
    run = Run(server="router", variant="ecs", repetition=0, qps=15000.0, completed=45000, sent=45000, lost=0,
                    avg_latency_ms=6.0, cpu_s=2.7, cpu_us_per_query=60.0, kernel_drops=0, dnsperf_cpu_s=1.0,
                    server_core_other_s=0.01, load_core_other_s=0.0, rcodes={"NOERROR": 45000}, seconds=3.0)  # fmt: skip
    figures = {"runs": [run.__dict__], "answers_checked": 200, "wrong_answers": 0, "labels": {"router": "router (1 worker)"},
               "servers": {"router": {v: summarize_runs([run], "router", v) for v in ("ecs", "plain")}},
               "pdns_note": "pdns-server not installed"}  # fmt: skip
    figures = finish(figures, args, [], 0.0)
    assert (
        figures["router_qps"] == 15000.0
        and figures["gdnsd_qps"] is None
        and figures["qps_vs_gdnsd"] is None
    )
    assert (
        figures["router_cpu_us_per_query"] == 60.0
        and figures["pdns_note"] == "pdns-server not installed"
    )
    for key in ("router_qps", "gdnsd_qps", "pdns_qps", "router_cpu_us_per_query", "gdnsd_cpu_us_per_query",
                "qps_vs_gdnsd", "cpu_vs_gdnsd", "qps_vs_pdns", "p99_half_load_ms", "wrong_answers"):  # fmt: skip
        assert key in figures
    text = format_table(figures)
    assert "router (1 worker)" in text and "not measured" in text
    assert "query log on" not in text  # not measured: no line
    figures.update(query_log_sample=100, router_query_log_qps=14000.0, router_query_log_cpu_us_per_query=64.0,
                   router_query_log_lines=420, query_log_vs_router_qps=0.933)  # fmt: skip
    assert (
        "query log on (1 in 100), ECS: 14,000 qps, 64.0 us CPU/query, 420 lines written; "
        "vs without the log: 0.933x qps"
    ) in format_table(figures)


def test_latency_probe_times_replies_and_counts_silence_as_a_second():
    import socket
    import threading

    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    echo.settimeout(0.2)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, address = echo.recvfrom(65535)
            except TimeoutError:
                continue
            echo.sendto(data, address)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    wire = encode_query("video.cdn.example.", "A", "83.44.10.0/24", 1)
    try:
        probe = LatencyProbe(echo.getsockname()[1], [wire], 1.5)
        probe.start()
        probe.join()
    finally:
        done.set()
        thread.join(timeout=2)
        echo.close()
    assert len(probe.rtts_ms) > 20 and max(probe.rtts_ms) < 1000
    assert 0 < probe.p99_ms() < 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        probe = LatencyProbe(silent.getsockname()[1], [wire], 1.5)
        probe.start()
        probe.join()
    assert probe.rtts_ms == [1000.0]


# --- the independent expected answers ------------------------------------------------------


@pytest.fixture(scope="module")
def expected(oracle, sample):
    return ExpectedAnswers(oracle.zones, sample["zone_file"])


def test_expected_answers_agree_with_the_router_on_the_whole_mix(oracle, sample, expected):
    """Two computations apart (dnspython + tests/reference.py, and the router's own lookup)
    agree on every query of both variants of the sample's mix, in exact mode."""
    assert expected.exact and expected.mode.startswith("exact")
    for q in sample["ecs"] + sample["plain"]:
        want, own = expected.expect(q), summarize(oracle.reply(q.wire))
        assert router_problem(want, own, ordered=q.kind == "steered") is None, q
        assert peer_problem(want, own, q.name) is None, q


def with_ttl(line: str, ttl: int) -> str:
    parts = line.split()
    return " ".join([parts[0], str(ttl), *parts[2:]])


def test_expected_answers_catch_wrong_replies(oracle, sample, expected):
    q = next(q for q in sample["ecs"] if q.kind == "steered" and q.qtype == "A")
    want, own = expected.expect(q), summarize(oracle.reply(q.wire))
    assert len(own["answer"]) == 2
    swapped = {**own, "answer": own["answer"][::-1]}
    assert "answer" in router_problem(want, swapped, ordered=True)  # best node first
    assert peer_problem(want, swapped, q.name) is None  # a peer may rotate
    other = next(a for a in expected.address["A"] if all(a not in line for line in own["answer"]))
    replaced = {
        **own,
        "answer": [own["answer"][0], own["answer"][1].rsplit(" ", 1)[0] + " " + other],
    }
    assert "answer" in router_problem(want, replaced, ordered=True)
    assert "answer" in peer_problem(want, replaced, q.name)
    assert "answer" in router_problem(want, {**own, "answer": own["answer"][:1]}, ordered=True)
    ttl = int(own["answer"][0].split()[1])
    longer = {**own, "answer": [with_ttl(line, ttl + 1) for line in own["answer"]]}
    assert "TTL" in router_problem(want, longer, ordered=True)
    assert "ecs_scope" in router_problem(want, {**own, "ecs_scope": own["ecs_scope"] + 1}, True)
    nx = {**own, "rcode": "NXDOMAIN", "answer": []}
    assert router_problem(want, nx, True).startswith("rcode") and peer_problem(want, nx, q.name)
    assert "flags" in router_problem(want, {**own, "aa": False}, True)
    mx = next(q for q in sample["ecs"] if q.kind == "static" and q.qtype == "MX")
    want, own = expected.expect(mx), summarize(oracle.reply(mx.wire))
    assert own["additional"] and router_problem(want, own, False) is None
    assert "additional" in router_problem(want, {**own, "additional": []}, False)
    nodata = next(q for q in sample["ecs"] if q.kind == "nodata")
    want, own = expected.expect(nodata), summarize(oracle.reply(nodata.wire))
    assert "authority" in router_problem(want, {**own, "authority": []}, False)
    cased = next(q for q in sample["ecs"] if q.name != q.name.lower())
    want, own = expected.expect(cased), summarize(oracle.reply(cased.wire))
    lowered = {**own, "question": [own["question"][0].replace(cased.name, cased.name.lower())]}
    assert "question" in router_problem(want, lowered, cased.kind == "steered")


def test_planned_mode_allows_a_usable_lead_and_a_split_scope(oracle, sample, expected):
    """With demand planned (var/world), the lead may be any node the group may use; the rest
    must still follow the reference's order, and a split group's scope is its /24."""
    q = next(q for q in sample["ecs"] if q.kind == "steered" and q.qtype == "A" and ":" not in q.ecs
             and len(expected.expect(q).steered[3]) >= 3)  # fmt: skip
    exact = expected.expect(q)
    ttl, rdtype, address, ranked, usable, k, _ = exact.steered
    planned = dataclasses.replace(exact, steered=(ttl, rdtype, address, ranked, usable, k, False),
                                  split_scope=max(exact.ecs_scope, 24))  # fmt: skip
    own = summarize(oracle.reply(q.wire))
    third = ranked[2]
    led = [f"{q.name} {ttl} IN A {address[n]}" for n in [third, ranked[0]]]
    assert router_problem(exact, {**own, "answer": led}, True) is not None
    assert router_problem(planned, {**own, "answer": led}, True) is None
    unordered = [f"{q.name} {ttl} IN A {address[n]}" for n in [third, ranked[1]]]
    assert "answer" in router_problem(planned, {**own, "answer": unordered}, True)
    outside = set(range(len(address))) - set(usable)
    if outside:  # a node the group may not use never passes
        bad = [f"{q.name} {ttl} IN A {address[min(outside)]}", led[1]]
        assert "may not use" in router_problem(planned, {**own, "answer": bad}, True)
    assert router_problem(planned, {**own, "ecs_scope": 24}, True) is None
    assert (
        "ecs_scope" in router_problem(exact, {**own, "ecs_scope": 24}, True)
        or exact.ecs_scope == 24
    )


def test_client_locator_equals_the_client_map_lookup(oracle):
    """The bisect lookup (no numba) against router.geo's LPM, at random and at every kind of
    edge: interval starts and ends, the addresses either side, the gaps between."""
    cm = oracle.model.client_map
    locator = ClientLocator(cm)
    rng = random.Random(3)
    v4 = [rng.randrange(1 << 32) for _ in range(2000)]
    for i in rng.sample(range(len(cm.v4_start)), min(300, len(cm.v4_start))):
        v4 += [int(cm.v4_start[i]), int(cm.v4_end[i]), max(int(cm.v4_start[i]) - 1, 0),
               min(int(cm.v4_end[i]) + 1, (1 << 32) - 1)]  # fmt: skip
    for x in v4:
        address = ipaddress.IPv4Address(x)
        assert locator.locate(address) == cm.lookup(address), address
    v6 = [rng.randrange(1 << 128) for _ in range(500)]
    for i in rng.sample(range(len(cm.v6_start_hi)), min(300, len(cm.v6_start_hi))):
        start = (int(cm.v6_start_hi[i]) << 64) | int(cm.v6_start_lo[i])
        end = (int(cm.v6_end_hi[i]) << 64) | int(cm.v6_end_lo[i])
        v6 += [start, end, start - 1, end + 1, start + rng.randrange(end - start + 1)]
    for x in v6:
        address = ipaddress.IPv6Address(x % (1 << 128))
        assert locator.locate(address) == cm.lookup(address), address


def test_zone_truth_from_the_zone_file(sample, expected):
    zone = expected.zone
    origin = zone.origin
    rcode, answer, authority, _ = zone.static(dns.name.from_text("nope", origin), dns.rdatatype.A)
    assert rcode == "NXDOMAIN" and answer == [] and authority == [zone.soa_line]
    assert " 300 in soa " in zone.soa_line  # min(SOA TTL 3600, minimum 300): RFC 2308
    rcode, answer, _, _ = zone.static(dns.name.from_text("live", origin), dns.rdatatype.A)
    assert rcode == "NOERROR" and answer == ["live.cdn.example. 3600 in cname video.cdn.example."]
    with pytest.raises(ValueError, match="outside"):
        zone.static(dns.name.from_text("example.org."), dns.rdatatype.A)


class Replier:
    """A UDP server on loopback: the router's own reply to most queries, a wrong rcode to
    ``wrong``, nothing to ``silent`` (by query name)."""

    def __init__(self, oracle, wrong: str, silent: str) -> None:  # noqa: ANN001
        import socket
        import threading

        self.oracle, self.wrong, self.silent = oracle, wrong, silent
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.done.is_set():
            try:
                data, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            name = dns.message.from_wire(data).question[0].name.to_text()
            if name == self.silent:
                continue
            reply = bytearray(self.oracle.responder.respond(data, "127.0.0.1", udp=True))
            if name == self.wrong:  # the router's bytes, but SERVFAIL
                reply[3] = (reply[3] & 0xF0) | dns.rcode.SERVFAIL
            self.sock.sendto(bytes(reply), address)

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        self.sock.close()


def test_checker_counts_wrong_answers_and_timeouts_apart(oracle, sample, expected, monkeypatch):
    import loadtest.throughput.answers as answers

    monkeypatch.setattr(answers, "CHECK_TIMEOUT_S", 0.1)
    queries, seen = [], set()
    for q in sample["ecs"]:
        if q.name not in seen and len(queries) < 6:
            seen.add(q.name)
            queries.append(q)
    pool, disagreements = check_pool(expected, oracle, queries, random.Random(1), len(queries))
    assert disagreements == [] and len(pool) == len(queries)
    replier = Replier(oracle, wrong=queries[1].name, silent=queries[2].name)
    try:
        checker = Checker(replier.sock.getsockname()[1], pool, peer=False)
        checker.start()
        checker.join()
    finally:
        replier.close()
    assert checker.checked == len(queries) - 1 and checker.timeouts == 1  # a timeout is no pass
    assert (
        len(checker.wrong) == 1
        and queries[1].name in checker.wrong[0]
        and "rcode" in checker.wrong[0]
    )
    assert len(checker.oracle_wrong) == 1  # the router's own lookup sees the same fault
    checks = {("router", "ecs"): {"runs": 1, "checked": checker.checked, "wrong": checker.wrong,
                                  "oracle_wrong": checker.oracle_wrong, "timeouts": checker.timeouts,
                                  "lead_not_best": 0},
              ("gdnsd", "ecs"): {"runs": 2, "checked": 10, "wrong": [], "oracle_wrong": [], "timeouts": 5,
                                 "lead_not_best": 0}}  # fmt: skip
    figures = check_figures(checks)
    assert figures["answers_checked"] == len(queries) - 1 and figures["wrong_answers"] == 1
    assert figures["check_timeouts"] == 1 and figures["answers_not_passed"] == 2
    assert figures["check_timeout_share"] == round(1 / len(queries), 4)
    assert figures["gdnsd_check_timeouts"] == 5 and figures["gdnsd_check_timeout_share"] == round(
        5 / 15, 4
    )
    assert (
        figures["peer_answers_checked"] == 10
        and figures["checks_by_server"]["gdnsd"]["ecs"]["runs"] == 2
    )
    assert check_figures(checks, prefix="world_")["world_check_timeouts"] == 1


def test_world_options_and_copy(bench, tmp_path):
    args = bench.parse_args(["--quick", "--world", "--no-pdns-shared"])
    assert (
        args.world == REPO / "var" / "world" and args.pdns_default is False
    )  # the old name still works
    assert (
        bench.parse_args(["--quick"]).world is None and bench.parse_args(["--quick"]).pdns_default
    )
    source = tmp_path / "source"
    source.mkdir()
    (source / "deployment.yaml").write_text(
        "client_map: clients.csv\nlatency: rtt.csv\ncache_dir: cache\nstate_file: states.json\n"
    )
    (source / "clients.csv").write_text("prefix\n")
    (source / "states.json").write_text("{}\n")  # an earlier run's node states: not copied
    (source / "clients.csv.tmp").write_text("half written\n")
    copy = bench.copy_world(source, tmp_path / "copy", tmp_path / "cache")
    import yaml

    settings = yaml.safe_load((copy / "deployment.yaml").read_text())
    assert (
        settings["cache_dir"] == str(tmp_path / "cache")
        and settings["state_file"] == "node-state.json"
    )
    assert (copy / "clients.csv").exists() and not (copy / "clients.csv.tmp").exists()
    assert not (copy / "states.json").exists() and not (copy / "node-state.json").exists()
    args = bench.parse_args(["--quick", "--world", str(tmp_path / "absent")])
    args.cpus_at_start = [0, 1]
    run = bench.Bench(args, tmp_path)
    run.world()  # no deployment there: a note, nothing measured
    assert (
        "no deployment.yaml" in run.figures["world_note"] and "world_router_qps" not in run.figures
    )


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_world_mode_smoke(tmp_path):
    """``--smoke --world``: the world mode's code path on the sample deployment (the suite has
    no var/world), its figures under world_ keys, every run's answers checked."""
    import json
    import shutil
    import subprocess
    import sys

    if not shutil.which("dnsperf"):
        pytest.skip("dnsperf is not installed (tests/test_bench_smoke.py installs it as root)")
    out = tmp_path / "world.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--world", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=840, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert "sample deployment" in figures["world_note"]
    assert figures["world_router_qps"] > 0 and figures["world_nodes"] == 18
    assert figures["world_prefixes"] > 1000 and figures["world_answers_checked"] > 0
    assert figures["world_wrong_answers"] == 0, figures["world_wrong_answer_examples"]
    assert isinstance(figures["world_check_timeouts"], int)
    if figures["world_gdnsd_qps"] is not None:
        assert (
            figures["world_gdnsd_nets_entries"]
            == figures["world_prefixes"] - figures["world_gdnsd_nets_skipped"] // 2
        )
        assert figures["world_qps_vs_gdnsd"] > 0 and figures["world_gdnsd_wrong_answers"] == 0
    # Every measured run of every server was checked, the sample runs' too.
    measured = [r for r in figures["runs"] if r["repetition"] >= 0 and r["rate_limit"] is None]
    assert measured and all(r["checked"] + r["check_timeouts"] > 0 for r in measured)
    assert figures["pdns_shared_qps"] == figures["pdns_qps"] and "pdns_config" in figures


def test_a_peer_whose_port_was_taken_meanwhile_starts_on_another(tmp_path):
    """Another server may take the port between the check and the peer's bind (the suite
    starts several at once): the start is tried again on another port, with its config
    written afresh; any other failure is not retried."""
    from loadtest.throughput import peers

    ports: list[int] = []

    def start(port: int):
        ports.append(port)
        (tmp_path / "cfg").mkdir()  # written by each try, as write_pdns does
        if len(ports) == 1:
            raise RuntimeError(
                f"pdns_server exited (1); Unable to bind UDP socket to '0.0.0.0:{port}': Address already in use"
            )
        return f"server on {port}"

    assert peers.on_a_free_port("0.0.0.0", tmp_path / "cfg", start) == f"server on {ports[1]}"
    assert len(ports) == 2

    def broken(port: int):
        raise RuntimeError("pdns_server exited (1); Fatal error: bad config")

    with pytest.raises(RuntimeError, match="bad config"):
        peers.on_a_free_port("0.0.0.0", tmp_path / "other", broken)
