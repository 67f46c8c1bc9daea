"""Per-query metrics and the sampled query log.

In process: what a query is counted as (name label, type, rcode, transport, how the client
was located, the nodes answered), on both responders. Against the real router: the
counts in /metrics, over UDP (compiled path and punted queries) and TCP, across a
reload; and the JSON-lines query log, every query and 1 in N.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.edns
import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from router.config import load_deployment
from router.dns import query_log
from router.dns.fast_answer import PUNT, FastResponder, compile_book
from router.dns.query_stats import MAX_NAME_LABELS, QueryLabels
from router.service.query_counters import QueryAccounts, QueryCounters
from tests.conftest import REPO, make_deployment, start_router
from tests.test_router_dns_engine import Engine
from tests.test_router_dns_fast_path import make_query
from tests.test_router_metrics import _scrape


@pytest.fixture(scope="module")
def engine(deployment_dir: Path) -> Engine:
    return Engine(deployment_dir)


# (name, type, ECS, EDNS, transport) -> (name label, type label, rcode label)
CASES = [
    (
        ("video.cdn.example.", "A", "83.44.10.0/24", True, "udp"),
        ("video.cdn.example.", "A", "NOERROR"),
    ),
    (("VIDEO.cdn.example.", "AAAA", None, False, "tcp"), ("video.cdn.example.", "AAAA", "NOERROR")),
    (
        ("nope.cdn.example.", "AAAA", None, True, "udp"),
        ("(other in cdn.example.)", "AAAA", "NXDOMAIN"),
    ),
    (("cdn.example.", "HINFO", None, True, "udp"), ("cdn.example.", "other", "NOERROR")),
    (("example.org.", "A", None, True, "udp"), ("(no zone)", "A", "REFUSED")),
    (("video.cdn.example.", "SOA", None, False, "udp"), ("video.cdn.example.", "SOA", "NOERROR")),
]


def _totals(responder_kind: str, engine: Engine, queries: list[tuple[bytes, str, bool]]):  # noqa: ANN202
    fast_book = compile_book(engine.book, engine.model.client_map)
    counters = QueryCounters(1, fast_book.labels, engine.model.node_ids)
    stats = counters.for_worker(0)
    general = type(engine.responder)(engine.book, engine.model.client_map, lambda: engine.view, stats=stats,
                                     labels=fast_book.labels)  # fmt: skip
    fast = FastResponder(fast_book, lambda: engine.view, stats=stats)
    for packet, source, udp in queries:
        if responder_kind == "fast":
            assert fast.respond(packet, source, udp) != PUNT
        else:
            general.respond(packet, source, udp)
    return counters.totals()


@pytest.mark.parametrize("responder_kind", ["general", "fast"])
def test_each_query_is_counted_by_its_name_label_type_rcode_and_transport(
    engine: Engine, responder_kind: str
) -> None:
    queries = [(make_query(name, rdtype, ecs, edns), "127.0.0.1", transport == "udp")
               for (name, rdtype, ecs, edns, transport), _ in CASES]  # fmt: skip
    bad_version = bytearray(make_query("video.cdn.example.", "A", None, True))
    bad_version[-5] = 1  # EDNS version 1 (OPT: ... ext-rcode, version, flags(2), rdlength(2))
    queries += [
        (bytes(bad_version), "127.0.0.1", True),
        (b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00", "127.0.0.1", True),
    ]
    totals = _totals(responder_kind, engine, queries)
    expected = {(*label, transport): 1 for (*_, transport), label in CASES}
    expected[("video.cdn.example.", "A", "BADVERS", "udp")] = 1
    expected[("(unparsed)", "none", "FORMERR", "udp")] = 1
    assert dict(totals.queries) == expected


@pytest.mark.parametrize("responder_kind", ["general", "fast"])
def test_steered_answers_count_their_nodes_and_how_the_client_was_located(
    engine: Engine, responder_kind: str
) -> None:
    ecs_cases = {
        "83.44.10.0/24": "ecs",
        None: "source",
        "10.1.0.0/16": "source_ecs_not_routable",
        "0.0.0.0/0": "source_ecs_prefix_0",
    }
    queries = [
        (make_query("video.cdn.example.", "A", ecs, True), "89.7.1.1", True) for ecs in ecs_cases
    ]
    totals = _totals(responder_kind, engine, queries)
    assert dict(totals.located) == {
        way: 1 for way in ("ecs", "source", "source_ecs_not_routable", "source_ecs_prefix_0")
    }
    answered = 0
    for packet, source, udp in queries:
        reply = dns.message.from_wire(engine.raw(packet, source, udp))
        answered += sum(len(rrset) for rrset in reply.answer)
    assert sum(totals.node_answers.values()) == answered > len(queries)
    assert set(totals.node_answers) <= set(engine.model.node_ids)


def test_name_labels_stay_bounded_by_the_zones(engine: Engine) -> None:
    labels = QueryLabels.from_book(engine.book)
    assert len(labels.names) < MAX_NAME_LABELS
    fast_book = compile_book(engine.book, engine.model.client_map)
    counters = QueryCounters(1, fast_book.labels, engine.model.node_ids)
    fast = FastResponder(fast_book, lambda: engine.view, stats=counters.for_worker(0))
    for i in range(2000):  # a random-subdomain flood: one label, not 2,000
        fast.respond(make_query(f"r{i}.cdn.example.", "A", None, False), "127.0.0.1", True)
    assert dict(counters.totals().queries) == {
        ("(other in cdn.example.)", "A", "NXDOMAIN", "udp"): 2000
    }


def test_retired_counts_are_folded_and_keep_counting_up(engine: Engine) -> None:
    labels = QueryLabels.from_book(engine.book)
    accounts = QueryAccounts()
    old = QueryCounters(2, labels, engine.model.node_ids)
    accounts.add(old)
    old.for_worker(1).count(labels.name_ids[b"\x05video\x03cdn\x07example\x00"], 0, 0, 1)
    new = QueryCounters(2, labels, engine.model.node_ids)
    accounts.add(new)
    new.for_worker(0).count(labels.name_ids[b"\x05video\x03cdn\x07example\x00"], 0, 0, 1)
    key = ("video.cdn.example.", "A", "NOERROR", "udp")
    assert accounts.totals().queries[key] == 2
    accounts.fold(old)
    old.arrays[0][:] = 0  # gone with its workers: must not matter any more
    accounts.fold(old)  # twice is once
    assert accounts.totals().queries[key] == 2


# --- the real router ----------------------------------------------------------------------


def _queries(m: dict, name: str, qtype: str, rcode: str, transport: str) -> float:
    labels = (("name", name), ("rcode", rcode), ("transport", transport), ("type", qtype))
    return m.get(("router_dns_queries_total", labels), 0.0)


def _ask(
    router, name: str, qtype: str, ecs: str | None = None, tcp: bool = False
) -> dns.message.Message:  # noqa: ANN001
    options = []
    if ecs:
        address, bits = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(bits)))
    query = dns.message.make_query(name, qtype, use_edns=0, options=options)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(query, router.host, port=router.port, timeout=5)


def _reload(router) -> dict:  # noqa: ANN001
    request = urllib.request.Request(f"{router.api}/v1/config/reload", method="POST",
                                     headers={"Authorization": f"Bearer {router.token}"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.mark.integration
def test_the_router_counts_every_query_and_logs_each_one(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("query-log")
    zones = make_deployment(root)
    log_path = root / "queries.jsonl"
    router = start_router(
        zones, root / "router.log", "--query-log", str(log_path), "--query-log-sample", "1"
    )
    deployment = load_deployment(zones)
    address_of = {str(node.ipv4): node.id for node in deployment.inventory.nodes}
    try:
        steered = [_ask(router, "video.cdn.example.", "A", "83.44.10.0/24") for _ in range(30)]
        for _ in range(10):
            assert _ask(router, "nope.cdn.example.", "AAAA").rcode() == dns.rcode.NXDOMAIN
        for _ in range(5):
            _ask(router, "www.cdn.example.", "A", tcp=True)
        for _ in range(3):
            assert _ask(router, "example.org.", "A").rcode() == dns.rcode.REFUSED
        _ask(router, "x.wild.edge.example.", "A")  # a wildcard: answered by the general path
        m = _scrape(router.api)
        assert _queries(m, "video.cdn.example.", "A", "NOERROR", "udp") == 30
        assert _queries(m, "(other in cdn.example.)", "AAAA", "NXDOMAIN", "udp") == 10
        assert _queries(m, "www.cdn.example.", "A", "NOERROR", "tcp") == 5
        assert _queries(m, "(no zone)", "A", "REFUSED", "udp") == 3
        assert _queries(m, "(other in edge.example.)", "A", "NOERROR", "udp") == 1
        assert m[("router_dns_steered_queries_total", (("located_by", "ecs"),))] == 30
        assert m[("router_dns_steered_queries_total", (("located_by", "source"),))] == 5
        answered: dict[str, int] = {}
        for reply in steered:
            for rrset in reply.answer:
                for rdata in rrset:
                    answered[address_of[rdata.address]] = (
                        answered.get(address_of[rdata.address], 0) + 1
                    )
        for node, count in answered.items():
            assert m[("router_dns_node_answers_total", (("node", node),))] >= count

        # Every query is in the log (sample 1), each line a JSON object.
        deadline = time.monotonic() + 10
        while len(log_path.read_text().splitlines()) < 49 and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert len(lines) == 49
        video = [r for r in lines if r["qname"] == "video.cdn.example."]
        assert len(video) == 30
        first = video[0]
        reply = steered[0]
        assert first["client_subnet"] == "83.44.10.0/24" and first["resolver"] == "127.0.0.1"
        assert first["transport"] == "udp" and first["rcode"] == "NOERROR" and first["qtype"] == "A"
        assert first["nodes"] == [
            address_of[rdata.address] for rrset in reply.answer for rdata in rrset
        ]
        ecs = next(o for o in reply.options if isinstance(o, dns.edns.ECSOption))
        assert first["scope"] == ecs.scopelen > 0
        assert (
            first["located_by"] == "ecs"
            and first["group"]["asn"]
            and first["policy"].endswith("/video")
        )
        assert "ECS subnet" in first["reason"]
        nope = next(r for r in lines if r["qname"] == "nope.cdn.example.")
        assert (
            nope["rcode"] == "NXDOMAIN" and nope["nodes"] is None and "NXDOMAIN" in nope["reason"]
        )
        tcp = [r for r in lines if r["transport"] == "tcp"]
        assert len(tcp) == 5 and all(
            r["located_by"] == "source" and r["client_subnet"] is None for r in tcp
        )

        # A reload starts new workers with new counters: the series keep counting up.
        with open(zones / "cdn.example.zone", "a") as zone:
            zone.write('reloaded 60 IN TXT "v2"\n')
        assert _reload(router)["result"] == "ok"
        for _ in range(10):
            _ask(router, "video.cdn.example.", "A", "83.44.10.0/24")
        assert _queries(_scrape(router.api), "video.cdn.example.", "A", "NOERROR", "udp") == 40
        time.sleep(3)  # the old workers exit and their counts are folded
        assert _queries(_scrape(router.api), "video.cdn.example.", "A", "NOERROR", "udp") == 40
    finally:
        router.stop()
        router.process.stdout.close()


@pytest.mark.integration
def test_the_query_log_samples_one_in_n(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("query-log-sample")
    zones = make_deployment(root)
    log_path = root / "queries.jsonl"
    router = start_router(
        zones,
        root / "router.log",
        "--query-log",
        str(log_path),
        "--query-log-sample",
        "4",
        workers=1,
    )
    try:
        for _ in range(40):
            _ask(router, "video.cdn.example.", "A", "83.44.10.0/24")
        for _ in range(8):
            _ask(router, "www.cdn.example.", "AAAA", tcp=True)
        deadline = time.monotonic() + 10
        while len(log_path.read_text().splitlines()) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # nothing more arrives
        lines = [json.loads(line) for line in log_path.read_text().splitlines()]
        assert [r["transport"] for r in lines].count("udp") == 10
        assert [r["transport"] for r in lines].count("tcp") == 2
        # Sampled queries were answered like the others, and counted once.
        m = _scrape(router.api)
        assert _queries(m, "video.cdn.example.", "A", "NOERROR", "udp") == 40
    finally:
        router.stop()
        router.process.stdout.close()


def test_an_unwritable_query_log_is_refused_before_serving(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "queries.jsonl"
    run = subprocess.run([sys.executable, "-m", "router.cli", "serve", "--zones", str(REPO / "zones"), "--listen",
                          "127.0.0.1:0", "--query-log", str(missing)], capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert run.returncode == 2
    assert f"cannot write the query log {missing}" in run.stderr
    run = subprocess.run([sys.executable, "-m", "router.cli", "serve", "--zones", str(REPO / "zones"), "--listen",
                          "127.0.0.1:0", "--query-log", str(tmp_path / "q.jsonl"), "--query-log-sample", "0"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)  # fmt: skip
    assert run.returncode == 2 and "N >= 1" in run.stderr


def test_the_query_log_file_is_reopened_after_logrotate_moves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query_log, "REOPEN_CHECK_S", 0.0)
    path = tmp_path / "queries.jsonl"
    out = query_log.AppendFile(path)
    out.write_line(b"one\n")
    path.rename(tmp_path / "queries.jsonl.1")
    out.write_line(b"two\n")
    path.unlink()
    out.write_line(b"three\n")
    out.close()
    assert (tmp_path / "queries.jsonl.1").read_bytes() == b"one\n"
    assert path.read_bytes() == b"three\n"
    assert out.errors == 0


@pytest.mark.parametrize("name", ["video.cdn.example.", ".", "*.Wild.example.", "a\\.b.cdn.example.", "x\\032y.example.",
                                  "caf\\195\\169.example.", "_sip._udp.example."])  # fmt: skip
def test_logged_names_read_like_dnspython_writes_them(name: str) -> None:
    wire_name = dns.name.from_text(name).to_wire()
    assert query_log._name_text(wire_name) == dns.name.from_text(name).to_text()
