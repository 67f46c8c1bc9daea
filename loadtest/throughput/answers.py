"""Whether a server's reply has the right answer.

The right answer is computed apart from the router's serving code (``expected``: dnspython
on the zone file, tests/reference.py for the ranking); ``wrong_answers`` counts replies that
differ from it. The router's own lookup, built in process the way ``router explain`` does it
(``Oracle``, from ``router.service.compiled``, held equal to ``explain`` on a few queries),
stays as a labelled second check (``oracle_wrong_answers``): it is the same code as the
server, so it finds what the fast path does differently from the general one, not what both
get wrong. It also configures the peers (their maps are the router's routing table).

During every measured run of every server and variant a ``Checker`` sends a sample of the
mix and compares each reply: the router's in full (rcode, AA, TC, the question as cased,
every section, the ECS scope), a peer's by rcode and the query name's records. A query left
unanswered after 3 tries of 1 s is a timeout: counted apart, never a pass.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode

from loadtest.throughput.expected import (
    Expected,
    ExpectedAnswers,
    owner_lines,
    peer_problem,
    router_problem,
)
from loadtest.throughput.queries import Query, encode_query
from router.config import load_deployment

CHECK_SAMPLE = 200  # replies checked per measured run
CHECK_POOL = 600  # queries per variant with precomputed answers; each run checks a sample of them
CHECK_TIMEOUT_S = 1.0


def summarize(message: dns.message.Message) -> dict:
    """What a reply says: rcode, AA/TC, the question as cased, the sections, the ECS scope."""
    scope = None
    for option in message.options:
        if isinstance(option, dns.edns.ECSOption):
            scope = option.scopelen
    return {
        "rcode": dns.rcode.to_text(message.rcode()),
        "aa": bool(message.flags & dns.flags.AA),
        "tc": bool(message.flags & dns.flags.TC),
        "question": [q.to_text() for q in message.question],
        "answer": [line for rrset in message.answer for line in rrset.to_text().split("\n")],
        "authority": [line for rrset in message.authority for line in rrset.to_text().split("\n")],
        "additional": [
            line for rrset in message.additional for line in rrset.to_text().split("\n")
        ],
        "ecs_scope": scope,
    }


def router_mismatch(expected: dict, got: dict, ordered: bool = False) -> str | None:
    """The first field where the router's reply differs from its own lookup, else None.

    Records are compared as sets (an RRset has no order), except the answer of a steered
    name when ``ordered``: its order is the plan's preference (best node first).
    """
    for key in ("rcode", "aa", "tc", "question", "answer", "authority", "additional", "ecs_scope"):
        want, have = expected.get(key), got.get(key)
        if key in ("answer", "authority", "additional") and not (ordered and key == "answer"):
            want, have = sorted(want or []), sorted(have or [])
        if want != have:
            return f"{key}: expected {expected.get(key)!r}, got {got.get(key)!r}"
    return None


def owner_records(summary: dict, qname: str) -> set[tuple[str, str]]:
    """(type, rdata) of the answer records owned by the query name (case-insensitive, TTL dropped)."""
    out = set()
    owner = qname.lower()
    for line in summary["answer"]:
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].lower() == owner:
            out.add((parts[3], parts[4].lower()))
    return out


def peer_mismatch(expected: dict, got: dict, qname: str) -> str | None:
    """A peer is right when its rcode and its records for the query name match the router's.

    Answer order (gdnsd rotates), TTLs, scopes and what follows a CNAME (PowerDNS chases it
    inside the zone, the router leaves that to the resolver) are not compared.
    """
    if expected["rcode"] != got["rcode"]:
        return f"rcode: expected {expected['rcode']}, got {got['rcode']}"
    want, have = owner_records(expected, qname), owner_records(got, qname)
    if want != have:
        return f"answer: expected {sorted(want)}, got {sorted(have)}"
    return None


def explanation_summary(explanation) -> dict:  # noqa: ANN001 - router.explain.Explanation
    return {
        "rcode": explanation.rcode,
        "answer": [
            line.lower() for line in explanation.answer if not line.startswith("(authority)")
        ],
        "authority": [
            line.removeprefix("(authority) ").lower()
            for line in explanation.answer
            if line.startswith("(authority)")
        ],  # fmt: skip
        "ecs_scope": explanation.ecs_scope,
    }


class Oracle:
    """The router's own answer to a query, computed in process the way ``router explain`` does.

    ``router.explain.explain`` recompiles the deployment for every call (about half a second);
    this builds the same objects once (model, answer book, last known node states, routing
    table, responder) and answers many queries. ``crosscheck`` holds it equal to ``explain``.
    """

    def __init__(self, zones: Path) -> None:
        from router.service.compiled import compile_deployment, last_known_health

        self.zones = zones
        self.deployment = load_deployment(zones)
        compiled = compile_deployment(self.deployment)
        self.model, self.planner = compiled.model, compiled.planner
        self.table = compiled.plan(last_known_health(self.deployment, self.model).states())
        self.responder = compiled.responder(self.table)

    def reply(self, wire: bytes, source: str = "127.0.0.1") -> dns.message.Message:
        answer = self.responder.respond(wire, source, udp=True)
        assert answer is not None
        return dns.message.from_wire(answer)

    def node_addresses(self, nodes: list[int]) -> tuple[list[str], list[str]]:
        v4 = [str(ipaddress.ip_address(self.model.node_ipv4[n])) for n in nodes]
        v6 = [str(ipaddress.ip_address(self.model.node_ipv6[n])) for n in nodes]
        return v4, v6

    def answer_set(self, policy: int, group: int) -> int:
        value = int(self.table.group_set[policy, group])
        if value >= 0:
            return value
        # A group the capacity plan split: not with zero demand (the sample); its main answer.
        row = -value - 1
        lo, hi = int(self.table.split_start[row]), int(self.table.split_start[row + 1])
        shares = [
            int(self.table.split_cum[i]) - (int(self.table.split_cum[i - 1]) if i > lo else 0)
            for i in range(lo, hi)
        ]
        return int(self.table.split_set[lo + shares.index(max(shares))])

    def set_nodes(self, answer_set: int) -> list[int]:
        return [int(n) for n in self.table.set_nodes[answer_set] if n >= 0]

    def split_groups(self) -> int:
        return int((self.table.group_set < 0).sum())

    def crosscheck(self, queries: list[Query], limit: int) -> dict:
        """Compare this oracle with ``router.explain.explain`` itself on a few distinct queries."""
        from router.explain import explain

        seen, checked, differences = set(), 0, []
        for q in queries:
            key = (q.name.lower(), q.qtype, q.ecs)
            if key in seen or checked >= limit:
                continue
            seen.add(key)
            ours = summarize(self.reply(encode_query(q.name.lower(), q.qtype, q.ecs)))
            ours = {"rcode": ours["rcode"], "answer": [x.lower() for x in ours["answer"]],
                    "authority": [x.lower() for x in ours["authority"]], "ecs_scope": ours["ecs_scope"]}  # fmt: skip
            theirs = explanation_summary(
                explain(self.deployment, q.name.lower(), q.ecs or "127.0.0.1", q.qtype)
            )
            checked += 1
            if ours != theirs:
                differences.append(
                    {"query": f"{q.name} {q.qtype} {q.ecs}", "oracle": ours, "explain": theirs}
                )
        return {"explain_crosschecked": checked, "explain_differences": differences}


@dataclass(frozen=True)
class Check:
    """One query to check: its independent expected answer, and the router's own (``Oracle``)."""

    query: Query
    expected: Expected
    oracle: dict


class Checker:
    """Sends a sample of the mix during a run and compares each reply with the expected one."""

    def __init__(self, port: int, sample: list[Check], peer: bool) -> None:
        self.port = port
        self.sample = sample
        self.peer = peer
        self.checked = 0
        self.wrong: list[str] = []  # against the independent expected answer
        self.oracle_wrong: list[str] = []  # against the router's own lookup (router only)
        self.lead_not_best = 0  # steered answers not led by the reference's best node
        self.timeouts = 0
        self.started = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        """Start checking (once: later calls do nothing)."""
        if not self.started:
            self.started = True
            self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=CHECK_TIMEOUT_S * 3 * len(self.sample) + 10)

    def _run(self) -> None:
        time.sleep(0.3)  # let dnsperf get going: these replies are checked under load
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            for i, check in enumerate(self.sample):
                query = check.query
                qid = (i * 7919 + 1) & 0xFFFF
                wire = struct.pack("!H", qid) + query.wire[2:]
                got = None
                for _attempt in range(3):
                    sock.sendto(wire, ("127.0.0.1", self.port))
                    deadline = time.monotonic() + CHECK_TIMEOUT_S
                    while got is None and time.monotonic() < deadline:
                        sock.settimeout(max(0.01, deadline - time.monotonic()))
                        try:
                            data = sock.recv(65535)
                        except TimeoutError:
                            break
                        if len(data) >= 2 and struct.unpack_from("!H", data)[0] == qid:
                            got = data
                    if got is not None:
                        break
                if got is None:
                    self.timeouts += 1
                    continue
                self.checked += 1
                try:
                    summary = summarize(dns.message.from_wire(got))
                except dns.exception.DNSException as exc:
                    self.wrong.append(
                        f"{query.name} {query.qtype} ecs={query.ecs}: undecodable reply: {exc}"
                    )
                    continue
                what = f"{query.name} {query.qtype} ecs={query.ecs}"
                problem = (peer_problem(check.expected, summary, query.name) if self.peer
                           else router_problem(check.expected, summary, ordered=query.kind == "steered"))  # fmt: skip
                if problem:
                    self.wrong.append(f"{what}: {problem}")
                # A peer's order means nothing (gdnsd rotates): only the router's lead is counted.
                if (
                    not self.peer
                    and check.expected.steered is not None
                    and not check.expected.lead_is_best(owner_lines(summary["answer"], query.name))
                ):
                    self.lead_not_best += 1
                if not self.peer:
                    mismatch = router_mismatch(
                        check.oracle, summary, ordered=query.kind == "steered"
                    )
                    if mismatch:
                        self.oracle_wrong.append(f"{what}: {mismatch}")


def expected_sample(
    oracle: Oracle, queries: list[Query], rng: random.Random, size: int
) -> list[tuple[Query, dict]]:
    """(query, the router's own reply) for ``size`` queries drawn from ``queries``."""
    chosen = rng.sample(queries, min(size, len(queries)))
    return [(q, summarize(oracle.reply(q.wire))) for q in chosen]


def check_pool(
    expected: ExpectedAnswers, oracle: Oracle, queries: list[Query], rng: random.Random, size: int
) -> tuple[list[Check], list[str]]:
    """``size`` queries of the mix to check, with both answers; and every query whose
    router-own answer the independent one rejects (the two computations disagree: printed,
    a bench that cannot tell right from wrong measures nothing)."""
    pool, disagreements = [], []
    for query, own in expected_sample(oracle, queries, rng, size):
        check = Check(query, expected.expect(query), own)
        problem = router_problem(check.expected, own, ordered=query.kind == "steered")
        if problem:
            disagreements.append(f"{query.name} {query.qtype} ecs={query.ecs}: {problem}")
        pool.append(check)
    return pool, disagreements
