"""Throughput: the router against gdnsd and PowerDNS, all three steering the same sample zone.

    python loadtest/bench_throughput.py --json FILE [--quick | --smoke] [--repetitions N] [--seconds S]
        [--subnets N] [--queries N] [--seed N] [--quiet-wait S] [--quiet-budget S] [--no-pdns-default]
        [--world [DIR]]

Everything runs on loopback (127.0.0.1), dnsperf pinned to core 0 and the server under test to
core 1 (``taskset -c``):

- the router (``router serve --workers 1``) on the sample deployment (zones/, geodata/), as it
  faces the internet: bound to ``0.0.0.0`` (replies sent from the query's destination address),
  response rate limiting with the loopback allow-list emptied (every reply classed and counted,
  at a rate none reaches), cookies on (``servers.HARDENED_SETTINGS``); ``router_loopback_*`` is
  the embedded default beside it (127.0.0.1, loopback allow-listed);
- gdnsd 3 with its geoip plugin: a ``nets`` map made from the router's whole client map, each
  prefix sent to the node pair the router's own routing table gives its client group;
- PowerDNS 4 (bind backend, LUA records, ``edns-subnet-processing``) configured as its
  documentation recommends for production (``peers.pdns_settings``: shared Lua states, one
  receiver thread with reuseport, one distributor, ``cache-ttl=60``), with LUA A/AAAA records
  choosing the same node pair with ``netmask()`` for every block the query mix touches; and
  ``pdns_default``, the same with PowerDNS's defaults (skip it with ``--no-pdns-default``).
  Both peers listen where the router does (``0.0.0.0``).

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
with its query log on. During every maximum-rate run of every server and variant a sample of
replies is decoded and compared with an answer computed apart from the router's serving code
(``throughput.expected``: the zone by dnspython, the ranking by tests/reference.py); the
router's own lookup (``router explain``'s code path) is a second, labelled check
(``oracle_wrong_answers``); an unanswered query is a timeout (``check_timeouts``), not a pass.

``--world [DIR]`` (default var/world) then runs the maximum-rate runs again on a world-scale
deployment, the router against gdnsd with a nets map of every prefix of its client map (and
PowerDNS), figures under ``world_`` keys (``WorldBench``); with ``--smoke`` on the sample.

Sizes: the defaults (3 repetitions of 10 s, 1,000 subnets, 20,000 queries per file) take about
7 minutes; ``--quick`` (1 repetition of 3 s, 5,000 queries) about two; ``--smoke`` (1
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
import contextlib
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

from loadtest.throughput.answers import CHECK_POOL, CHECK_SAMPLE, Checker, Oracle, check_pool  # noqa: E402
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
from loadtest.throughput.expected import ExpectedAnswers  # noqa: E402
from loadtest.throughput.figures import (  # noqa: E402
    check_figures,
    finish,
    fmt,
    format_table,
    ratio,
    summarize_runs,
)
from loadtest.throughput.peers import (  # noqa: E402
    PACKAGES,
    Peers,
    ensure_packages,
    map_blocks,
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
    steered_zone,
    unframe,
    zone_inventory,
)
from loadtest.throughput.servers import (  # noqa: E402
    HARDENED_LISTEN,
    HARDENED_SETTINGS,
    START_TIMEOUT_S,
    WORLD_START_TIMEOUT_S,
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
# The peers listen where the router does in the same run (the wildcard: replies sent from
# the query's destination address, pktinfo), so all three pay for source addressing alike.
PEER_ADDRESS = HARDENED_LISTEN.rsplit(":", 1)[0]


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
        self.start_timeout = START_TIMEOUT_S  # how long a server under test may take to answer
        self.pool_size = CHECK_POOL  # queries per variant with their expected answers computed

    def start_hardened(
        self, workers: int, cpus: str | None, key: str, extra: tuple[str, ...] = ()
    ) -> Server:
        """The router as it faces the internet (loadtest/throughput/servers.py, HARDENED_SETTINGS):
        every router figure but ``router_loopback_*`` is measured on it."""
        server = start_router(self.hardened_zones, self.root, workers, cpus, key, extra, listen=HARDENED_LISTEN,
                              timeout=self.start_timeout)  # fmt: skip
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
        if self.args.world is not None:
            self.world()
        return finish(self.figures, self.args, self.notes, self.started)

    def world(self) -> None:
        """The same maximum-rate runs on a world-scale deployment (``WorldBench``)."""
        source = None if self.args.smoke else self.args.world
        if source is not None and not (source / "deployment.yaml").is_file():
            self.figures["world_note"] = (f"{source}: no deployment.yaml (build it with geodata/build_world.py); "
                                          "world figures not measured")  # fmt: skip
            print(self.figures["world_note"], flush=True)
            return
        print(f"world scale: {source or 'the sample deployment (--smoke)'}", flush=True)
        world = WorldBench(self.args, self.root / "world", source, self)
        try:
            self.figures.update(world.run())
        except (RuntimeError, OSError, ValueError) as exc:
            self.figures["world_note"] = f"world run failed: {str(exc)[:800]}"
        if source is None:
            self.figures["world_note"] = ("--smoke: the world mode ran on the sample deployment "
                                          "(the suite cannot rely on var/world)")  # fmt: skip

    def prepare_deployment(self) -> None:
        """The sample deployment, the router's own lookup on it, and the zone the mix asks."""
        self.use_deployment(
            make_deployment(self.root / "sample"),
            with_settings(make_deployment(self.root / "hardened"), HARDENED_SETTINGS),
        )

    def use_deployment(self, zones: Path, hardened_zones: Path) -> None:
        self.zones, self.hardened_zones = zones, hardened_zones
        self.oracle = Oracle(self.zones)
        if self.oracle.split_groups():
            self.notes.append(f"{self.oracle.split_groups()} groups split by the capacity plan: "
                              "peers answer their main share")  # fmt: skip
        self.zone_file, self.steered = steered_zone(self.zones, self.oracle.model)

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
        """What each checked query must get: the independent answer (``expected``), the
        router's own lookup beside it (held equal to ``explain``), and where they disagree."""
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
        started = time.monotonic()
        self.expected = ExpectedAnswers(
            self.zones, self.zone_file, (self.oracle.deployment, self.oracle.model)
        )
        self.pools, disagreements = {}, []
        for variant, queries in self.variants.items():
            self.pools[variant], differ = check_pool(
                self.expected, self.oracle, queries, self.rng, self.pool_size
            )
            disagreements += differ
        self.figures["expected_answers"] = {
            "mode": self.expected.mode,
            "computed_apart": "zone by dnspython, group by bisect over the client map, ranking by "
            "tests/reference.py (loadtest/throughput/expected.py)",
            "shared_input": "router.config.load_deployment, SteeringModel.rank_inputs, node states",
            "pool_per_variant": {v: len(p) for v, p in self.pools.items()},
            "seconds": round(time.monotonic() - started, 1),
        }
        self.figures["oracle_disagreements"] = len(disagreements)
        self.figures["oracle_disagreement_examples"] = disagreements[:10]
        if disagreements:
            self.notes.append(f"{len(disagreements)} of the checked queries: the router's own lookup "
                              "differs from the independent answer before any run (oracle_disagreement_examples)")  # fmt: skip
        print(f"expected answers ({self.expected.mode}): {sum(map(len, self.pools.values()))} queries, "
              f"the router's own lookup disagrees on {len(disagreements)}", flush=True)  # fmt: skip

    def start_servers(self) -> None:
        """The router (1 worker), gdnsd and PowerDNS (a note for a peer that cannot start)."""
        figures, servers = self.figures, self.servers
        started = time.monotonic()
        servers["router"] = self.start_hardened(1, self.server_core, "router")
        figures["start_s"] = {"router": round(time.monotonic() - started, 1)}
        figures["router_version"] = tool_version([sys.executable, "-c", "import router; print(router.__version__)"],
                                                 r"(\S+)")  # fmt: skip
        for key, start in (("gdnsd", self.start_gdnsd), ("pdns", self.start_pdns)):
            started = time.monotonic()
            start()
            figures["start_s"][key] = round(time.monotonic() - started, 1)
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
                self.peers, self.root, gdnsd_bin, self.server_core, PEER_ADDRESS, self.start_timeout
            )
            server.version = tool_version([gdnsd_bin], r"gdnsd version (\S+)") or ""
            self.figures.update(server.extra)
        except (RuntimeError, OSError) as exc:
            self.figures["gdnsd_note"] = f"gdnsd did not start: {str(exc)[:500]}"

    def start_pdns(self) -> None:
        """PowerDNS as its documentation recommends for production (``peers.pdns_settings``),
        and, unless ``--no-pdns-default``, a second one with PowerDNS's defaults beside it."""
        pdns_bin = PACKAGES["pdns-server"]()
        if not (pdns_bin and PACKAGES["pdns-backend-bind"]()):
            self.figures["pdns_note"] = (self.missing.get("pdns-server") or self.missing.get("pdns-backend-bind")
                                         or "pdns_server not found")  # fmt: skip
            return
        self.figures["peer_listen"] = PEER_ADDRESS
        try:
            version = tool_version([pdns_bin, "--version"], r"Authoritative Server (\S+)") or ""
            server = self.servers["pdns"] = start_pdns(self.peers, self.root, pdns_bin, self.server_core, "production",
                                                       PEER_ADDRESS, timeout=self.start_timeout)  # fmt: skip
            server.version = version
            self.figures["pdns_netmasks_per_record"] = server.extra["pdns_netmasks_per_record"]
            self.figures["pdns_config"] = server.extra["pdns_config"]
            self.figures["pdns_config_reasons"] = server.extra["pdns_config_reasons"]
            if self.args.pdns_default:
                default = self.servers["pdns_default"] = start_pdns(
                    self.peers, self.root, pdns_bin, self.server_core, "defaults", PEER_ADDRESS,
                    key="pdns_default",
                )  # fmt: skip
                default.version = version
                self.figures["pdns_default_config"] = default.extra["pdns_config"]
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
        for key in ("pdns", "pdns_default"):
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
        figures = self.figures
        figures["runs"] = [r.__dict__ for r in self.runs]
        figures["quiet_wait_s"] = round(self.quiet_spent, 1)
        figures["discarded_runs"] = [r.__dict__ for r in self.discarded]
        figures.update(check_figures(self.checks))

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
        """One maximum-rate run of ``key``, with a sample of its replies checked (on a run that
        is discarded and run again too: each attempt checks its own sample)."""
        args, server = self.args, self.servers[key]
        check = self.checks.setdefault((key, variant), {"runs": 0, "checked": 0, "wrong": [], "oracle_wrong": [],
                                                        "timeouts": 0, "lead_not_best": 0})  # fmt: skip

        def checked_run(retry: bool) -> Run:
            pool = self.pools[variant]
            checker = Checker(server.port, self.rng.sample(pool, min(CHECK_SAMPLE, len(pool))),
                              peer=not key.startswith("router"))  # fmt: skip
            run = run_dnsperf(server, self.files[variant], args.seconds, variant, rep, self.load_core,
                              during=checker.start, probe=self.probes[variant])  # fmt: skip
            checker.start()  # a run too short for dnsperf to call back: check right after it
            checker.join()
            check["runs"] += 1
            check["checked"] += checker.checked
            check["timeouts"] += checker.timeouts
            check["wrong"] += checker.wrong
            check["oracle_wrong"] += checker.oracle_wrong
            check["lead_not_best"] += checker.lead_not_best
            run.checked, run.wrong, run.check_timeouts = (checker.checked, len(checker.wrong),
                                                          checker.timeouts)  # fmt: skip
            run.oracle_wrong = len(checker.oracle_wrong)
            return run

        run = self.attempt(key, checked_run)
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
              f"  checked {run.checked}, wrong {run.wrong}, timed out {run.check_timeouts}"
              + (f"  [other load on the server's core: {run.server_core_other_s:.2f} s]"
                 if (run.server_core_other_s or 0) > 0.05 * args.seconds else ""),
              flush=True)  # fmt: skip
        self.runs.append(run)
        return run


WORLD_CACHE = Path(tempfile.gettempdir()) / "bench-throughput-world-cache"
WORLD_SERVERS = ("router", "gdnsd", "pdns")
WORLD_CHECK_POOL = 300
WORLD_SUBNETS = 200


def copy_world(source: Path, dest: Path, cache: Path) -> Path:
    """A snapshot of a world deployment: its files copied (another process may be rebuilding
    it meanwhile), its compiled client map cached in ``cache`` (kept between runs: compiling
    1.36 M prefixes takes about a minute, loading them a few seconds)."""
    import yaml

    settings = yaml.safe_load((source / "deployment.yaml").read_text())
    # Not the node states some earlier run left (a router serving var/world writes them): the
    # copy starts with every node up, as the sample runs do.
    state = (source / settings["state_file"]).resolve() if settings.get("state_file") else None
    dest.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith(".tmp") and item.resolve() != state:
            shutil.copy2(item, dest / item.name)
    settings["cache_dir"] = str(cache)
    settings["state_file"] = "node-state.json"
    (dest / "deployment.yaml").write_text(yaml.safe_dump(settings))
    return dest


@contextlib.contextmanager
def all_cores(cpus: list[int]):  # noqa: ANN201 - a context manager
    """This process on ``cpus`` for the block, then back where it was."""
    kept = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, kept)


class WorldBench(Bench):
    """The router, gdnsd and PowerDNS on a world-scale deployment: the maximum-rate runs only
    (both variants, every repetition, answers checked on each), figures under ``world_``.

    gdnsd's nets map holds every prefix of the router's client map, as in the sample runs.
    PowerDNS's LUA records hold what they hold in the sample runs, the blocks of the mix's
    subnets (a record with the whole map would be compiled on every query). ``source`` None:
    the sample deployment (``--smoke``)."""

    def __init__(
        self, args: argparse.Namespace, root: Path, source: Path | None, parent: Bench
    ) -> None:
        # At most WORLD_SUBNETS client subnets: each brings its own node pair at world scale, and
        # gdnsd takes at most 254 datacenters (pairs) per map; every pair the mix needs fits.
        args = argparse.Namespace(**{**vars(args), "pdns_default": False,
                                     "subnets": min(args.subnets, WORLD_SUBNETS)})  # fmt: skip
        super().__init__(args, root)
        root.mkdir(parents=True)
        self.source = source
        self.missing = parent.missing
        self.quiet_spent = parent.quiet_spent
        self.rng = random.Random(args.seed + 1)
        self.start_timeout = WORLD_START_TIMEOUT_S if source is not None else START_TIMEOUT_S
        # The reference ranks a group in pure Python over every node (0.4 s at 20,000 nodes):
        # fewer queries to rank, still more than one run's sample.
        self.pool_size = WORLD_CHECK_POOL

    def prepare_deployment(self) -> None:
        if self.source is None:
            zones = make_deployment(self.root / "sample")
            hardened = with_settings(make_deployment(self.root / "hardened"), HARDENED_SETTINGS)
        else:
            zones = copy_world(self.source, self.root / "deployment", WORLD_CACHE)
            hardened = with_settings(
                copy_world(self.source, self.root / "hardened", WORLD_CACHE), HARDENED_SETTINGS
            )
        self.use_deployment(zones, hardened)

    def run(self) -> dict:
        started = time.monotonic()
        self.figures["labels"] = {}
        try:
            # Loading and planning a world deployment is minutes of CPU, and no run is measured
            # meanwhile: the set-up may use every core (the bench keeps to core 0 for the runs).
            with all_cores(self.args.cpus_at_start):
                self.prepare_deployment()
                print(f"  deployment loaded and planned in {time.monotonic() - started:.0f} s "
                      f"({len(self.oracle.model.node_ids)} nodes)", flush=True)  # fmt: skip
                self.write_query_files()
                self.expect_answers()
                self.peers = Peers(self.oracle, self.subnets, self.zone_file)
                self.start_servers()  # writes gdnsd's nets maps in this process
            setup_s = time.monotonic() - started
            self.warm_up()
            self.maximum_rate()
        finally:
            for server in self.servers.values():
                server.stop()
        self.collect_runs_and_checks()
        return world_figures(self, setup_s, time.monotonic() - started)


def world_figures(world: WorldBench, setup_s: float, total_s: float) -> dict:
    """The world run's figures, ``world_`` before each name."""
    f, model = world.figures, world.oracle.model
    servers = f.get("servers", {})
    out = {"world_deployment": str(world.source or "sample deployment (--smoke)"),
           "world_nodes": len(model.node_ids), "world_groups": len(model.client_map.groups.asn),
           "world_prefixes": f.get("gdnsd_nets_per_map") or len(map_blocks(model.client_map)), "world_gdnsd_nets_entries": f.get("gdnsd_nets_entries"),
           "world_gdnsd_nets_skipped": f.get("gdnsd_nets_skipped"),
           "world_gdnsd_datacenters": f.get("gdnsd_datacenters"),
           "world_gdnsd_nets_substituted": f.get("gdnsd_nets_substituted"), "world_subnets": world.args.subnets,
           "world_pdns_netmasks_per_record": f.get("pdns_netmasks_per_record"),
           "world_split_groups": world.oracle.split_groups(), "world_setup_s": round(setup_s, 1),
           "world_duration_s": round(total_s, 1), "world_start_s": f.get("start_s"),
           "world_expected_answers": f.get("expected_answers"), "world_servers": servers,
           "world_labels": f.get("labels"), "world_mix": f.get("mix"), "world_runs": f.get("runs"),
           "world_discarded_runs": f.get("discarded_runs"), "world_notes": "; ".join(world.notes)}  # fmt: skip
    for variant, suffix in (("ecs", ""), ("plain", "_plain")):
        for key in WORLD_SERVERS:
            for what in ("qps", "cpu_us_per_query", "avg_latency_ms", "p99_max_rate_ms", "lost"):
                out[f"world_{key}_{what}{suffix}"] = servers.get(key, {}).get(variant, {}).get(what)
        for peer in ("gdnsd", "pdns"):
            out[f"world_qps_vs_{peer}{suffix}"] = ratio(
                out[f"world_router_qps{suffix}"], out[f"world_{peer}_qps{suffix}"]
            )
            out[f"world_cpu_vs_{peer}{suffix}"] = ratio(out[f"world_router_cpu_us_per_query{suffix}"],
                                                        out[f"world_{peer}_cpu_us_per_query{suffix}"])  # fmt: skip
    for key in ("gdnsd_note", "pdns_note", "oracle_disagreements", "oracle_disagreement_examples",
                "explain_crosschecked", "explain_differences"):  # fmt: skip
        if key in f:
            out[f"world_{key}"] = f[key]
    out.update(check_figures(world.checks, prefix="world_"))
    return out


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
        "--no-pdns-default",
        "--no-pdns-shared",  # the old name: the second PowerDNS was the shared-Lua one
        dest="pdns_default",
        action="store_false",
        help="skip the second PowerDNS (PowerDNS's defaults: a fresh Lua state per query, 3 distributor "
        "threads, no reuseport, cache-ttl 20; --smoke skips it too). The first is configured for "
        "production and uses the shared Lua state, so --no-pdns-shared now means this one",
    )
    parser.add_argument(
        "--world",
        nargs="?",
        const=REPO / "var" / "world",
        type=Path,
        metavar="DIR",
        help="also measure the router against gdnsd and PowerDNS on a world-scale deployment "
        "(default var/world), figures under world_ keys; about 10 minutes more with the default "
        "sizes. With --smoke it runs on the sample deployment (the suite has no var/world)",
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.pdns_default = False
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
