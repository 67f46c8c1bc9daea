"""Throughput: the router against gdnsd and PowerDNS, all three steering the same sample zone.

    python loadtest/bench_throughput.py --json FILE [--quick | --smoke] [--repetitions N] [--seconds S]
        [--subnets N] [--queries N] [--seed N] [--quiet-wait S] [--quiet-budget S] [--no-pdns-shared]

Everything runs on loopback (127.0.0.1), dnsperf pinned to core 0 and the server under test to
core 1 (``taskset -c``):

- the router (``router serve --workers 1``) on the sample deployment (zones/, geodata/), as it
  faces the internet: bound to ``0.0.0.0`` (replies sent from the query's destination address),
  response rate limiting with the loopback allow-list emptied (every reply classed and counted,
  at a rate none reaches), cookies on (``servers.HARDENED_SETTINGS``); ``router_loopback_*`` is
  the embedded default beside it (127.0.0.1, loopback allow-listed);
- gdnsd 3 with its geoip plugin: a ``nets`` map made from the router's whole client map, each
  prefix sent to the node pair the router's own routing table gives its client group;
- PowerDNS 4 (bind backend, ``enable-lua-records``, ``edns-subnet-processing``) with LUA
  A/AAAA records choosing the same node pair with ``netmask()`` for every block the query mix
  touches.

Query files (dnsperf ``-B``: length-prefixed wire messages built here, so each query carries
its own ECS option): mostly steered names (A and AAAA), static names, NXDOMAIN and NODATA, a
little 0x20 case mixing; an ECS variant (every query with an ECS option from one of many
client subnets of the sample client map) and a plain variant (EDNS(0), no ECS).

Each server in turn with the same dnsperf arguments, several repetitions, the order rotating
between repetitions; qps, average latency, lost queries and server CPU per query (utime +
stime of the server's whole process tree from /proc, before and after the run, over the
queries answered). Then p99 latency at half of each server's measured maximum (dnsperf
``-Q`` and ``-v``: one latency line per query), an overload run against the router (two
dnsperf threads on both cores), the router with two workers (on both cores) and the router
with its query log on. A sample of replies is decoded during the router's runs and compared
with what the router's own lookup (``router explain``'s code path) answers for that query;
the peers' replies are checked the same way (rcode and answer records).

Sizes: the defaults (3 repetitions of 10 s, 1,000 subnets, 20,000 queries per file) take about
6 minutes; ``--quick`` (1 repetition of 3 s, 5,000 queries) about a minute; ``--smoke`` (1
repetition of 1 s, 100 subnets, 1,000 queries, 0.5 s warm-ups, short waits for quiet, no
second PowerDNS) under a minute: every step above with the real router, dnsperf, gdnsd and
PowerDNS, for the test suite to see that the bench still runs and writes its contract keys
(``loadtest.throughput.figures.CONTRACT_KEYS``); its figures mean little. Needs root only to
install what is missing (dnsperf, gdnsd, pdns-server, pdns-backend-bind, with apt-get); a peer
that cannot be had gets null figures and a ``gdnsd_note`` / ``pdns_note``. The JSON goes to
``FILE``, the printed table to ``FILE`` with ``.txt``.

The code: ``loadtest/throughput/`` -- ``queries`` (the mix and the query files), ``dnsperf``
(runs, their parsing, the latency probe), ``proc`` (CPU, RSS and kernel drops from /proc),
``servers`` (starting and stopping the servers under test), ``answers`` (the router's own
lookup and the reply checks), ``peers`` (packages, gdnsd's and PowerDNS's configuration),
``figures`` (medians, ratios, targets, the table, the JSON); this file runs the steps.

Bounded: every dnsperf run has ``-l`` seconds and a subprocess timeout; every wait has a
deadline; every process started here is stopped by its PID in ``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import dns.rcode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from loadtest.throughput.answers import CHECK_SAMPLE, Checker, Oracle, expected_sample  # noqa: E402
from loadtest.throughput.dnsperf import (  # noqa: E402
    LOAD_CORE,
    OVERLOAD_ARGS,
    OVERLOAD_CORES,
    PROBE_QUERIES,
    SERVER_CORE,
    Run,
    disturbed,
    run_dnsperf,
)
from loadtest.throughput.figures import finish, fmt, format_table, summarize_runs  # noqa: E402
from loadtest.throughput.peers import (  # noqa: E402
    PACKAGES,
    Peers,
    ensure_packages,
    pdns_stats,
    start_gdnsd,
    start_pdns,
    tool_version,
)
from loadtest.throughput.proc import tree_rss_mb, wait_quiet  # noqa: E402
from loadtest.throughput.queries import (  # noqa: E402
    MIX,
    V4_ECS_BITS,
    V6_ECS_BITS,
    build_mix,
    draw_subnets,
    frame,
    mix_composition,
    unframe,
    zone_inventory,
)
from loadtest.throughput.servers import (  # noqa: E402
    HARDENED_LISTEN,
    HARDENED_SETTINGS,
    Server,
    soa_answers,
    start_router,
    with_settings,
)
from tests.conftest import make_deployment  # noqa: E402

__all__ = ["build_mix", "draw_subnets", "main", "measure", "parse_args", "zone_inventory"]

QUERY_LOG_SAMPLE = 100  # the query log run: 1 query in this many is logged
PDNS_STATS = ("packetcache-hit", "packetcache-miss", "query-cache-hit", "query-cache-miss", "udp-queries",
              "overload-drops", "servfail-packets", "latency")  # fmt: skip
ROUTER_LOGS = ("router", "router2", "router_qlog", "router_loopback")


class Bench:
    """One run of the benchmark: its inputs, the servers it started, and the figures so far."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.started = time.time()
        self.notes: list[str] = []
        self.figures: dict = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        }
        cpus = args.cpus_at_start
        self.pin = int(LOAD_CORE) in cpus and int(SERVER_CORE) in cpus
        if not self.pin:
            self.notes.append(
                f"cores {LOAD_CORE} and {SERVER_CORE} not both usable ({cpus}): nothing pinned"
            )
        self.server_core = SERVER_CORE if self.pin else None
        self.load_core = LOAD_CORE if self.pin else None
        self.figures["pinning"] = {"dnsperf": self.load_core, "server": self.server_core,
                                   "router2": "0-1" if self.pin else None}  # fmt: skip
        self.quiet_cores = None if self.load_core is None else [LOAD_CORE, SERVER_CORE]
        self.servers: dict[str, Server] = {}
        self.runs: list[Run] = []
        self.discarded: list[Run] = []
        self.checks: dict[tuple[str, str], dict] = {}
        self.quiet_spent = 0.0  # seconds waited for quiet so far, against --quiet-budget
        self.missing: dict[str, str] = {}

    def start_hardened(
        self, workers: int, cpus: str | None, key: str, extra: tuple[str, ...] = ()
    ) -> Server:
        """The router as it faces the internet (loadtest/throughput/servers.py, HARDENED_SETTINGS):
        every router figure but ``router_loopback_*`` is measured on it."""
        server = start_router(
            self.hardened_zones, self.root, workers, cpus, key, extra, listen=HARDENED_LISTEN
        )
        server.label = server.label[:-1] + ", 0.0.0.0 pktinfo, RRL, cookies)"
        return server

    # --- the steps, in order ---------------------------------------------------------------

    def run(self) -> dict:
        self.missing = ensure_packages()
        if "dnsperf" in self.missing:
            raise SystemExit(f"dnsperf is needed: {self.missing['dnsperf']}")
        self.prepare_deployment()
        self.write_query_files()
        self.expect_answers()
        self.peers = Peers(self.oracle, self.subnets, self.zone_file)
        self.figures["labels"] = {}
        try:
            self.start_servers()
            self.warm_up()
            self.maximum_rate()
            self.half_load()
            self.read_pdns_stats()
            self.overload()
            self.two_workers()
            self.query_log()
            self.loopback_defaults()
        finally:
            for server in self.servers.values():
                server.stop()
        self.collect_router_logs()
        self.collect_runs_and_checks()
        return finish(self.figures, self.args, self.notes, self.started)

    def prepare_deployment(self) -> None:
        """The sample deployment, the router's own lookup on it, and the zone the mix asks."""
        self.zones = make_deployment(self.root / "sample")
        self.hardened_zones = with_settings(
            make_deployment(self.root / "hardened"), HARDENED_SETTINGS
        )
        self.oracle = Oracle(self.zones)
        if self.oracle.split_groups():
            self.notes.append(f"{self.oracle.split_groups()} groups split by the capacity plan: "
                              "peers answer their main share")  # fmt: skip
        model = self.oracle.model
        zone_origin = model.policies[model.steered[0][1]].zone
        self.zone_file = self.zones / f"{zone_origin.to_text().rstrip('.')}.zone"
        self.steered = [(n.to_text(), p) for n, p in model.steered if n.is_subdomain(zone_origin)]

    def write_query_files(self) -> None:
        """Both variants of the mix, as dnsperf's query files and as the probe's queries."""
        args, rng, model = self.args, self.rng, self.oracle.model
        inventory = zone_inventory(self.zone_file, self.steered, rng)
        self.subnets = draw_subnets(model.client_map, rng, args.subnets)
        self.variants = {
            "ecs": build_mix(inventory, self.subnets, args.queries, rng),
            "plain": build_mix(inventory, None, args.queries, rng),
        }
        self.files = {}
        for variant, queries in self.variants.items():
            self.files[variant] = self.root / f"queries-{variant}.bin"
            self.files[variant].write_bytes(frame([q.wire for q in queries]))
        self.probes = {
            variant: unframe(path.read_bytes())[:PROBE_QUERIES]
            for variant, path in self.files.items()
        }
        mix = self.figures["mix"] = {v: mix_composition(q) for v, q in self.variants.items()}
        mix["target_shares"] = MIX
        mix["subnets"] = {"drawn": len(self.subnets), "v4_bits": V4_ECS_BITS, "v6_bits": V6_ECS_BITS,
                          "v6": sum(":" in s for s in self.subnets)}  # fmt: skip

    def expect_answers(self) -> None:
        """What the router should answer: per kind, the oracle against ``explain``, the samples."""
        expected_kinds = Counter()
        for q in self.variants["ecs"][:2000]:
            rcode = self.oracle.reply(q.wire).rcode()
            expected_kinds[(q.kind, dns.rcode.to_text(rcode))] += 1
        self.figures["mix"]["kind_rcodes_first_2000"] = {
            f"{k}:{r}": n for (k, r), n in sorted(expected_kinds.items())
        }
        steered = [q for q in self.variants["ecs"] if q.kind == "steered"]
        limit = 2 if self.args.quick or self.args.smoke else 5
        self.figures.update(self.oracle.crosscheck(steered + self.variants["plain"][:50], limit))
        self.samples = {
            v: expected_sample(self.oracle, q, self.rng, CHECK_SAMPLE)
            for v, q in self.variants.items()
        }

    def start_servers(self) -> None:
        """The router (1 worker), gdnsd and PowerDNS (a note for a peer that cannot start)."""
        figures, servers = self.figures, self.servers
        servers["router"] = self.start_hardened(1, self.server_core, "router")
        figures["router_version"] = tool_version([sys.executable, "-c", "import router; print(router.__version__)"],
                                                 r"(\S+)")  # fmt: skip
        self.start_gdnsd()
        self.start_pdns()
        for key, server in servers.items():
            figures["labels"][key] = f"{server.label} {server.version}".strip()
        figures["versions"] = {"dnsperf": tool_version(["dnsperf", "-h"], r"Version (\S+)"),
                               **{k: s.version for k, s in servers.items() if k != "router"}}  # fmt: skip

    def start_gdnsd(self) -> None:
        gdnsd_bin = PACKAGES["gdnsd"]()
        if not gdnsd_bin:
            self.figures["gdnsd_note"] = self.missing.get("gdnsd", "gdnsd not found")
            return
        try:
            server = self.servers["gdnsd"] = start_gdnsd(
                self.peers, self.root, gdnsd_bin, self.server_core
            )
            server.version = tool_version([gdnsd_bin], r"gdnsd version (\S+)") or ""
            self.figures.update(server.extra)
        except (RuntimeError, OSError) as exc:
            self.figures["gdnsd_note"] = f"gdnsd did not start: {str(exc)[:500]}"

    def start_pdns(self) -> None:
        pdns_bin = PACKAGES["pdns-server"]()
        if not (pdns_bin and PACKAGES["pdns-backend-bind"]()):
            self.figures["pdns_note"] = (self.missing.get("pdns-server") or self.missing.get("pdns-backend-bind")
                                         or "pdns_server not found")  # fmt: skip
            return
        try:
            version = tool_version([pdns_bin, "--version"], r"Authoritative Server (\S+)") or ""
            server = self.servers["pdns"] = start_pdns(
                self.peers, self.root, pdns_bin, self.server_core
            )
            server.version = version
            self.figures["pdns_netmasks_per_record"] = server.extra["pdns_netmasks_per_record"]
            if self.args.pdns_shared:
                shared = self.servers["pdns_shared"] = start_pdns(self.peers, self.root, pdns_bin, self.server_core,
                                                                  "shared")  # fmt: skip
                shared.version = version
        except (RuntimeError, OSError) as exc:
            self.figures["pdns_note"] = f"pdns_server did not start: {str(exc)[:500]}"

    def warm_up(self) -> None:
        print(f"warm-up ({self.args.warmup:g} s per server and variant, not counted)", flush=True)
        for server in self.servers.values():
            for variant in self.files:
                run_dnsperf(
                    server, self.files[variant], self.args.warmup, variant, -1, self.load_core
                )

    def maximum_rate(self) -> None:
        """Every server and variant, ``--repetitions`` times, the server order rotating."""
        args = self.args
        order = list(self.servers)
        print(
            f"maximum rate: {args.repetitions} repetition(s) of {args.seconds:g} s, servers alternating",
            flush=True,
        )
        for rep in range(args.repetitions):
            for variant in ("ecs", "plain"):
                rotated = order[rep % len(order) :] + order[: rep % len(order)]
                for key in rotated:
                    if key in self.servers:
                        self.one(key, variant, rep)
        self.figures["servers"] = {key: {v: summarize_runs(self.runs, key, v) for v in ("ecs", "plain")}
                                   for key in order}  # fmt: skip

    def half_load(self) -> None:
        """p99 at half of each server's median maximum, from dnsperf's per-query latencies."""
        figures, files, args = self.figures, self.files, self.args
        print("p99 at half of each server's maximum (ECS variant, dnsperf -Q and -v)", flush=True)
        for key, server in self.servers.items():
            top = figures["servers"][key]["ecs"]["qps"]
            if not top:
                continue
            run = self.attempt(
                key,
                lambda retry, server=server, top=top: run_dnsperf(
                    server,
                    files["ecs"],
                    args.seconds,
                    "ecs",
                    0,
                    self.load_core,
                    qps_limit=top / 2,
                    verbose=True,
                ),
            )
            self.runs.append(run)
            figures["servers"][key]["p99_half_load_ms"] = run.p99_ms
            figures["servers"][key]["half_load"] = {"rate": round(top / 2), "qps": run.qps, "lost": run.lost,
                                                     "kernel_drops": run.kernel_drops, "avg_latency_ms": run.avg_latency_ms,
                                                     "cpu_us_per_query": run.cpu_us_per_query, "disturbed": disturbed(run),
                                                     "server_core_other_s": run.server_core_other_s}  # fmt: skip
            figures[f"{key}_lost_half_load"] = run.lost
            print(
                f"  {figures['labels'][key]:<28} at {top / 2:,.0f} qps: p99 {fmt(run.p99_ms, '.3f')} ms, "
                f"avg {fmt(run.avg_latency_ms, '.3f')} ms, lost {run.lost}",
                flush=True,
            )

    def read_pdns_stats(self) -> None:
        for key in ("pdns", "pdns_shared"):
            if key in self.servers:
                self.figures[f"{key}_stats"] = {
                    k: v for k, v in pdns_stats(self.servers[key]).items() if k in PDNS_STATS
                }

    def overload(self) -> None:
        """The router (1 worker) against far more outstanding queries than its socket holds."""
        print(
            "overload: the router (1 worker) against far more outstanding queries than its socket holds",
            flush=True,
        )
        router = self.servers["router"]
        rss_before = tree_rss_mb(router.pid)
        overload_s = max(2.0, min(self.args.seconds, 5.0))
        run = run_dnsperf(router, self.files["ecs"], overload_s, "ecs", 0, OVERLOAD_CORES if self.pin else None,
                          extra=OVERLOAD_ARGS)  # fmt: skip
        time.sleep(0.5)
        alive = router.alive() and soa_answers(router.port, self.peers.zone, timeout=2.0)
        self.figures.update({"overload_qps": None if run.qps is None else round(run.qps, 1), "overload_sent": run.sent,
                             "overload_lost": run.lost, "overload_kernel_drops": run.kernel_drops,
                             "overload_router_alive": alive, "overload_rss_mb_before": rss_before,
                             "overload_rss_mb_after": tree_rss_mb(router.pid), "overload_seconds": overload_s})  # fmt: skip
        print(
            f"  {fmt(run.qps, ',.0f')} qps answered, {run.lost} lost, {run.kernel_drops} kernel drops, "
            f"alive {alive}",
            flush=True,
        )

    def two_workers(self) -> None:
        """The router with 2 workers on both cores (shared with dnsperf on core 0)."""
        figures = self.figures
        self.servers.pop("router").stop()
        print("router with 2 workers (cores 0-1)", flush=True)
        try:
            server = self.servers["router2"] = self.start_hardened(
                2, "0-1" if self.pin else None, "router2"
            )
            figures["labels"]["router2"] = server.label
            run_dnsperf(server, self.files["ecs"], self.args.warmup, "ecs", -1, self.load_core)
            for rep in range(self.args.repetitions):
                self.one("router2", "ecs", rep)
            two = summarize_runs(self.runs, "router2", "ecs")
            figures["router2_qps"] = two["qps"]
            figures["router2_cpu_us_per_query"] = two["cpu_us_per_query"]
            figures["router2_lost"] = two["lost"]
        except (RuntimeError, OSError) as exc:
            figures["router2_note"] = str(exc)[:500]
        if "router2" in self.servers:
            self.servers.pop("router2").stop()

    def query_log(self) -> None:
        """The query log on (1 in QUERY_LOG_SAMPLE queries through the general responder and
        into the file): same core and query file as the 1-worker runs."""
        figures = self.figures
        print(f"router with the query log (1 in {QUERY_LOG_SAMPLE})", flush=True)
        query_log = self.root / "queries.jsonl"
        try:
            server = self.servers["router_qlog"] = self.start_hardened(
                1,
                self.server_core,
                "router_qlog",
                ("--query-log", str(query_log), "--query-log-sample", str(QUERY_LOG_SAMPLE)),
            )
            figures["labels"]["router_qlog"] = (
                f"{server.label[:-1]}, query log 1 in {QUERY_LOG_SAMPLE})"
            )
            run_dnsperf(server, self.files["ecs"], self.args.warmup, "ecs", -1, self.load_core)
            for rep in range(self.args.repetitions):
                self.one("router_qlog", "ecs", rep)
            logged = summarize_runs(self.runs, "router_qlog", "ecs")
            without = summarize_runs(self.runs, "router", "ecs")
            figures["query_log_sample"] = QUERY_LOG_SAMPLE
            figures["router_query_log_qps"] = logged["qps"]
            figures["router_query_log_cpu_us_per_query"] = logged["cpu_us_per_query"]
            figures["router_query_log_lost"] = logged["lost"]
            figures["router_query_log_lines"] = (
                len(query_log.read_text().splitlines()) if query_log.exists() else 0
            )
            if logged["qps"] and without["qps"]:
                figures["query_log_vs_router_qps"] = round(logged["qps"] / without["qps"], 3)
        except (RuntimeError, OSError) as exc:
            figures["router_query_log_note"] = str(exc)[:500]

    def loopback_defaults(self) -> None:
        """The router as the embedded default runs it: bound to 127.0.0.1 (no pktinfo), the
        sample's rrl section (loopback allow-listed, so no reply is classed). Same core, query
        file and target as the 1-worker runs of the hardened router, so the difference is the
        cost of facing the internet: source addressing and the limiter's accounting."""
        figures = self.figures
        print(
            "router on 127.0.0.1 with the sample's defaults (no pktinfo, loopback not rate limited)",
            flush=True,
        )
        try:
            server = self.servers["router_loopback"] = start_router(
                self.zones, self.root, 1, self.server_core, "router_loopback"
            )
            figures["labels"]["router_loopback"] = (
                "router (1 worker, 127.0.0.1, loopback allow-listed)"
            )
            run_dnsperf(server, self.files["ecs"], self.args.warmup, "ecs", -1, self.load_core)
            for rep in range(self.args.repetitions):
                self.one("router_loopback", "ecs", rep)
            loopback = summarize_runs(self.runs, "router_loopback", "ecs")
            hardened = summarize_runs(self.runs, "router", "ecs")
            figures["router_loopback_qps"] = loopback["qps"]
            figures["router_loopback_cpu_us_per_query"] = loopback["cpu_us_per_query"]
            figures["router_loopback_lost"] = loopback["lost"]
            if hardened["qps"] and loopback["qps"]:
                figures["hardened_vs_loopback_qps"] = round(hardened["qps"] / loopback["qps"], 3)
            if hardened["cpu_us_per_query"] and loopback["cpu_us_per_query"]:
                figures["hardened_vs_loopback_cpu"] = round(
                    hardened["cpu_us_per_query"] / loopback["cpu_us_per_query"], 3
                )
        except (RuntimeError, OSError) as exc:
            figures["router_loopback_note"] = str(exc)[:500]
        if "router_loopback" in self.servers:
            self.servers.pop("router_loopback").stop()

    def collect_router_logs(self) -> None:
        problems = {}
        for name in ROUTER_LOGS:
            path = self.root / f"{name}.log"
            if path.exists():
                problems[name] = [line for line in path.read_text(errors="replace").splitlines()
                                  if "ERROR" in line or "Traceback" in line or "CRITICAL" in line]  # fmt: skip
        self.figures["router_log_problems"] = {name: len(lines) for name, lines in problems.items()}
        self.figures["router_log_problem_lines"] = {
            name: lines[:5] for name, lines in problems.items() if lines
        }

    def collect_runs_and_checks(self) -> None:
        figures, checks = self.figures, self.checks
        figures["runs"] = [r.__dict__ for r in self.runs]
        figures["quiet_wait_s"] = round(self.quiet_spent, 1)
        figures["discarded_runs"] = [r.__dict__ for r in self.discarded]
        router_checks = [c for (k, _), c in checks.items() if k.startswith("router")]
        figures["answers_checked"] = sum(c["checked"] for c in router_checks)
        figures["wrong_answers"] = sum(len(c["wrong"]) for c in router_checks)
        figures["check_timeouts"] = sum(c["timeouts"] for c in router_checks)
        figures["wrong_answer_examples"] = [w for c in router_checks for w in c["wrong"]][:10]
        figures["peer_answers_checked"] = sum(
            c["checked"] for (k, _), c in checks.items() if not k.startswith("router")
        )
        for peer in ("gdnsd", "pdns", "pdns_shared"):
            peer_checks = [c for (k, _), c in checks.items() if k == peer]
            if peer_checks:
                figures[f"{peer}_wrong_answers"] = sum(len(c["wrong"]) for c in peer_checks)
                figures[f"{peer}_wrong_answer_examples"] = [
                    w for c in peer_checks for w in c["wrong"]
                ][:5]

    # --- one measured run ------------------------------------------------------------------

    def attempt(self, key: str, make_run) -> Run:  # noqa: ANN001
        """A run after the machine is quiet; run once more if something else used the server's core."""
        args = self.args
        for retry in (False, True):
            waited, busy = wait_quiet(
                min(args.quiet_wait, max(0.0, args.quiet_budget - self.quiet_spent)),
                self.quiet_cores,
            )
            self.quiet_spent += waited
            run = make_run(retry)
            run.waited_s, run.busy_before, run.retry_of_disturbed = waited, busy, retry
            if not retry and disturbed(run):
                print(f"    ({self.figures['labels'][key]}: {run.server_core_other_s:.2f} s of other load on its core; "
                      "run again)", flush=True)  # fmt: skip
                self.discarded.append(run)
                continue
            return run
        raise AssertionError("unreachable")

    def one(self, key: str, variant: str, rep: int) -> Run:
        """One maximum-rate run of ``key``; the first of each server and variant checks answers."""
        args, server = self.args, self.servers[key]
        checker = None
        if (key, variant) not in self.checks:
            checker = Checker(server.port, self.samples[variant], peer=not key.startswith("router"))

        def during() -> None:
            if (
                checker is not None
                and not checker.thread.is_alive()
                and not checker.checked + checker.timeouts
            ):
                checker.start()

        run = self.attempt(key, lambda retry: run_dnsperf(server, self.files[variant], args.seconds, variant, rep,
                                                          self.load_core, during=during, probe=self.probes[variant]))  # fmt: skip
        if checker is not None:
            checker.join()
            self.checks[(key, variant)] = {
                "checked": checker.checked,
                "wrong": checker.wrong,
                "timeouts": checker.timeouts,
            }
            run.checked, run.wrong, run.check_timeouts = (
                checker.checked,
                len(checker.wrong),
                checker.timeouts,
            )
        if not server.alive():
            if key.startswith("router"):
                raise RuntimeError(
                    f"{server.label} exited during a run; log:\n{server.log.read_text()[-3000:]}"
                )
            self.notes.append(f"{server.label} exited during a run; its later runs are missing")
            server.stop()
            del self.servers[key]
        print(f"  {variant:5} rep {rep + 1}  {self.figures['labels'][key]:<28} {fmt(run.qps, ',.0f'):>9} qps  "
              f"avg {fmt(run.avg_latency_ms, '.3f')} ms  lost {run.lost}  cpu {fmt(run.cpu_us_per_query, '.1f')} us/q"
              + (f"  checked {run.checked}, wrong {run.wrong}" if checker is not None else "")
              + (f"  [other load on the server's core: {run.server_core_other_s:.2f} s]"
                 if (run.server_core_other_s or 0) > 0.05 * args.seconds else ""),
              flush=True)  # fmt: skip
        self.runs.append(run)
        return run


def measure(args: argparse.Namespace, root: Path) -> dict:
    return Bench(args, root).run()


# What --quick and --smoke change; an option given on the command line wins.
SIZES = {
    "default": {"repetitions": 3, "seconds": 10.0, "queries": 20000, "subnets": 1000, "warmup": 2.0,
                "quiet_wait": 20.0, "quiet_budget": 120.0},
    "quick": {"repetitions": 1, "seconds": 3.0, "queries": 5000, "subnets": 1000, "warmup": 1.0,
              "quiet_wait": 5.0, "quiet_budget": 30.0},
    "smoke": {"repetitions": 1, "seconds": 1.0, "queries": 1000, "subnets": 100, "warmup": 0.5,
              "quiet_wait": 1.0, "quiet_budget": 5.0},
}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json", type=Path, help="write the figures here (and the table next to it, .txt)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="short runs, one repetition (a smoke test, about a minute)",
    )
    size.add_argument("--smoke", action="store_true",
                      help="every step at the smallest size, for the test suite (well under a minute); "
                           "the figures mean little")  # fmt: skip
    parser.add_argument(
        "--repetitions",
        type=int,
        help="runs per server and variant (default 3; --quick, --smoke 1)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="length of each dnsperf run (default 10; --quick 3; --smoke 1)",
    )
    parser.add_argument(
        "--subnets",
        type=int,
        help="distinct ECS client subnets in the mix (default 1000; --smoke 100)",
    )
    parser.add_argument(
        "--queries",
        type=int,
        help="queries per query file (default 20000; --quick 5000; --smoke 1000)",
    )
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="before each run, wait at most this long for other processes to leave the cores idle "
        "(default 20; --quick 5; --smoke 1)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        help="at most this long waiting for quiet in the whole bench (default 120; --quick 30; --smoke 5)",
    )
    parser.add_argument(
        "--no-pdns-shared",
        dest="pdns_shared",
        action="store_false",
        help="skip the second PowerDNS (enable-lua-records=shared, one Lua state per thread; "
        "--smoke skips it too: the same set-up as the first, another config value)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.pdns_shared = False
    for name, value in SIZES[
        "smoke" if args.smoke else "quick" if args.quick else "default"
    ].items():
        if getattr(args, name, None) is None:  # warmup is not an option: always the size's
            setattr(args, name, value)
    if (
        args.repetitions < 1
        or not 1 <= args.seconds <= 120
        or args.queries < 100
        or args.subnets < 1
    ):
        parser.error("--repetitions >= 1, 1 <= --seconds <= 120, --queries >= 100, --subnets >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        previous = os.sched_getaffinity(0)
        args.cpus_at_start = sorted(previous)
        if int(LOAD_CORE) in previous and int(SERVER_CORE) in previous:
            os.sched_setaffinity(0, {int(LOAD_CORE)})  # this script stays off the server's core
        try:
            figures = measure(args, root)
        finally:
            os.sched_setaffinity(0, previous)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = format_table(figures)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n")
        args.json.with_suffix(".txt").write_text(table + "\n")
        print(f"\nwrote {args.json} and {args.json.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
