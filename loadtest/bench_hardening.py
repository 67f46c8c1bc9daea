"""Hardening: a live flood of mutated packets, slow TCP clients, and the cost of pktinfo.

    python loadtest/bench_hardening.py --json FILE [--smoke] [--packets N] [--slow N] [--probes N]
        [--seconds S] [--repetitions N] [--seed N]

Everything on loopback (127.0.0.0/8), ports picked free; every process started here is
stopped by its PID. Three parts (issue 17, "Figures"):

1. **Flood.** The router (``router serve --workers 2``, API on) gets ``--packets`` mutated
   packets (default 1,000,000; ``loadtest/hardening/mutate.py``: truncated headers, truncated
   anywhere, bit flips and byte edits of valid queries of the throughput mix, huge counts,
   compression loops and forward pointers, bad EDNS options, random bodies), 90 % over UDP in
   bursts and 10 % over TCP (connections of 1 to 40 messages, 40 at a time, 15 % with one
   oversized or undersized length prefix). Every reply is checked (``flood.py``): a header,
   QR set, the ID of a packet sent, parses with dnspython. Worker PIDs
   (``/proc/PID/task/PID/children``) are read before, during and after; the router must be
   alive and answer a valid query over UDP and TCP at the end; its log is searched for
   tracebacks and internal errors. Figures: ``fuzz_packets``, ``fuzz_crashes`` (the router
   or a worker died), ``fuzz_malformed_replies``, ``fuzz_worker_restarts``.
2. **Slow TCP clients.** On the same router, ``--slow`` connections (5,000) from 200 source
   addresses 127.0.1.1 and up, each trickling a query one octet every 0.5 s and reopened when
   the router closes it, while a separate process (``hardening/probe.py``, from 127.0.0.2)
   makes ``--probes`` (200) fresh TCP queries one at a time, each on a new connection. The
   router is given ``--tcp-max-connections`` enough for all of them (3,064 per worker for 5,000),
   as an operator expecting that many would set it.
   ``tcp_slowloris_connections``: the most of them the router held open at once (its
   ``/v1/dns`` ``tcp.open``, summed over workers, sampled every 0.5 s; the clients' own count
   is ``tcp_slowloris_client_open_max``); ``tcp_fresh_query_ms_p99`` (nearest rank; a query
   that failed or took over 2 s counts as 2,000 ms, and is counted in
   ``tcp_fresh_query_failures``).
3. **pktinfo.** The router (1 worker, pinned to core 1) bound to ``0.0.0.0`` and to
   ``127.0.0.1``, both running, dnsperf (core 0) with the same arguments and query file as
   bench_throughput (closed loop ``-c 4 -T 1 -q 100``, the ECS mix) against each in turn,
   ``--repetitions`` times, the order alternating. ``pktinfo_overhead_ratio``: median qps bound
   to 0.0.0.0 / median qps bound to 127.0.0.1 (target >= 0.9).

4. **RRL.** A router with the default rate (200/s, slip 2) and the loopback allow-list emptied:
   one source (127.0.0.1, the "victim") floods ``www.cdn.example A`` (300,000 queries, at most
   10 s) while 20 clients, each in its own /24 (127.0.10.1 ...), ask one query at a time.
   ``rrl_attack_full_answers_ratio``: full answers the flooding source got / its queries
   (target: at most rate x (1 + seconds) / queries, a second's burst plus the refill; slips are
   counted apart); ``rrl_legit_answered_ratio``: the other clients' queries answered in full
   (>= 0.999). ``rrl_overhead_ratio``: dnsperf qps with RRL on (a rate no reply reaches, so
   every reply is classed and counted) / off (rate 0), same core and query file (>= 0.9).

5. **DNS cookies.** The ECS mix with a COOKIE option on every query (every other one a client
   cookie only, the rest a valid server cookie for 127.0.0.1 made with the deployment's
   secret), dnsperf against a router with cookies on and one with ``cookies: {enabled: false}``
   (the option ignored), as in 3. ``cookie_overhead_ratio``: qps on / off (>= 0.9);
   ``cookie_echo_checked``: the router echoed a valid cookie before the runs.

``--smoke``: 20,000 packets, 500 slow
connections, 20 probes, 1 s runs: every part for real, for the test suite; its figures mean
little. The JSON goes to FILE, the table to FILE with ``.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median

import dns.edns
import dns.message
import dns.query
import dns.rcode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from loadtest import packages  # noqa: E402
from loadtest.hardening.flood import tcp_flood, udp_flood  # noqa: E402
from loadtest.hardening.mutate import KINDS, Mutator  # noqa: E402
from loadtest.hardening.rrl_attack import attack  # noqa: E402
from loadtest.hardening.slowloris import hold, source_addresses  # noqa: E402
from loadtest.throughput.dnsperf import (  # noqa: E402
    DNSPERF_ARGS,
    LOAD_CORE,
    SERVER_CORE,
    percentile,
    run_dnsperf,
)
from loadtest.throughput.figures import source_state  # noqa: E402
from loadtest.throughput.peers import PACKAGES  # noqa: E402
from loadtest.throughput.queries import build_mix, draw_subnets, frame, steered_zone, zone_inventory  # noqa: E402
from loadtest.throughput.servers import Server, free_port, start_router, with_settings  # noqa: E402
from router.dns import cookies  # noqa: E402
from tests.conftest import make_deployment  # noqa: E402

CONTRACT_KEYS = ("fuzz_packets", "fuzz_crashes", "fuzz_malformed_replies", "fuzz_worker_restarts",
                 "rrl_attack_full_answers_ratio", "rrl_legit_answered_ratio", "rrl_overhead_ratio",
                 "cookie_overhead_ratio", "pktinfo_overhead_ratio", "tcp_slowloris_connections",
                 "tcp_fresh_query_ms_p99")  # fmt: skip
RRL_RATE = 200  # the default of rrl.rate
RRL_NO_LIMIT = 1_000_000  # for the overhead runs: every reply accounted, none limited
RRL_CLIENTS = 20
TCP_SHARE = 0.10
WATCH_EVERY = 50_000  # packets between two reads of the worker PIDs
SLOW_ADDRESSES = 200
TRICKLE_S = 0.5
PROBE_SOURCE = "127.0.0.2"
PROBE_INTERVAL_S = 0.03
PROBE_TIMEOUT_MS = 2000.0
TARGETS = {
    "rrl_legit_answered_ratio": (">= 0.999", lambda v: v >= 0.999),
    "rrl_overhead_ratio": (">= 0.9", lambda v: v >= 0.9),
    "fuzz_crashes": ("== 0", lambda v: v == 0),
    "fuzz_malformed_replies": ("== 0", lambda v: v == 0),
    "fuzz_worker_restarts": ("== 0", lambda v: v == 0),
    "pktinfo_overhead_ratio": (">= 0.9", lambda v: v >= 0.9),
    "cookie_overhead_ratio": (">= 0.9", lambda v: v >= 0.9),
    "tcp_fresh_query_ms_p99": ("< 50 (5,000 slow connections)", lambda v: v < 50),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the figures here")
    parser.add_argument(
        "--smoke", action="store_true", help="smallest sizes, seconds (the test suite)"
    )
    parser.add_argument("--packets", type=int, help="mutated packets in the flood (1,000,000)")
    parser.add_argument("--slow", type=int, help="slow TCP connections to hold (5,000)")
    parser.add_argument("--probes", type=int, help="fresh TCP queries while they are held (200)")
    parser.add_argument("--seconds", type=float, help="each dnsperf run of the pktinfo part (5)")
    parser.add_argument("--repetitions", type=int, help="dnsperf runs per bind (3)")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args(argv)
    defaults = (20_000, 500, 20, 1.0, 1) if args.smoke else (1_000_000, 5_000, 200, 5.0, 3)
    for name, value in zip(("packets", "slow", "probes", "seconds", "repetitions"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.argv = argv
    return args


def raise_nofile(want: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def args_slow_per_worker(slow: int) -> int:
    """``--tcp-max-connections`` for the 2 workers of the flood router: the slow clients plus
    a fifth (the kernel spreads connections over the workers unevenly), per worker."""
    return (slow * 6 // 5 + 1) // 2 + 64


def worker_pids(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def answers_valid(port: int) -> dict:
    query = dns.message.make_query("video.cdn.example.", "A")
    out = {}
    for transport, ask in (("udp", dns.query.udp), ("tcp", dns.query.tcp)):
        try:
            reply = ask(query, "127.0.0.1", port=port, timeout=3)
            out[transport] = reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)
        except Exception as exc:  # noqa: BLE001 - any failure is the figure
            out[transport] = f"{type(exc).__name__}: {exc}"
    return out


class Api:
    def __init__(self, port: int, token: str) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/dns"
        self.token = token

    def dns(self) -> dict | None:
        request = urllib.request.Request(
            self.url, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310 - loopback
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def tcp_open(self) -> int | None:
        body = self.dns()
        return None if body is None else int(body["tcp"]["open"])


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.figures: dict = {"smoke": args.smoke}
        self.notes: list[str] = []
        self.started = time.time()
        self.zones = make_deployment(root / "sample")
        from router.config import load_deployment
        from router.steering import compile_model

        model = compile_model(load_deployment(self.zones))
        zone_file, steered = steered_zone(self.zones, model)
        inventory = zone_inventory(zone_file, steered, self.rng)
        subnets = draw_subnets(model.client_map, self.rng, 1000)
        self.mix = build_mix(inventory, subnets, 5000 if args.smoke else 20_000, self.rng)

    # -- 1 and 2: the flood and the slow clients, on one router -----------------------------------

    def flood_and_slow(self) -> None:
        figures = self.figures
        token = secrets.token_hex(16)
        os.environ["ROUTER_API_TOKEN"] = token
        api_port = free_port()
        # A table that can hold every slow client at once (an operator expecting this many sets
        # it so; the default 1,024 per worker would evict the longest idle instead).
        per_worker = max(1024, args_slow_per_worker(self.args.slow))
        router = start_router(self.zones, self.root, 2, None, "router_flood",
                              ("--api", f"127.0.0.1:{api_port}", "--tcp-max-connections", str(per_worker)))  # fmt: skip
        figures["tcp_max_connections_per_worker"] = per_worker
        api = Api(api_port, token)
        try:
            self._flood(router, api)
            self._slow(router, api)
            after = worker_pids(router.pid)
            figures["workers_at_end"] = sorted(after)
            gone = set(figures["workers_before"]) - after
            new = after - set(figures["workers_before"]) | set(figures.get("workers_seen_new", []))
            alive = router.alive()
            figures["router_alive_at_end"] = alive
            figures["fuzz_crashes"] = (0 if alive else 1) + len(gone)
            figures["fuzz_worker_restarts"] = len(new)
            figures["valid_query_after"] = answers_valid(router.port) if alive else None
            body = api.dns() if alive else None
            if body is not None:
                figures["router_tcp_counters"] = body.get("tcp")
                figures["router_udp_receive_drops"] = body.get("udp_receive_drops")
        finally:
            router.stop()
        log = router.log.read_text(errors="replace")
        figures["router_log_tracebacks"] = log.count("Traceback")
        figures["router_log_internal_errors"] = len(re.findall(r"internal error answering", log))
        figures["router_log_problem_lines"] = [line for line in log.splitlines()
                                               if "Traceback" in line or "ERROR" in line][:10]  # fmt: skip

    def _flood(self, router: Server, api: Api) -> None:
        args, figures = self.args, self.figures
        bases = [q.wire for q in self.mix]
        mutator = Mutator(bases, args.seed)
        before = worker_pids(router.pid)
        figures["workers_before"] = sorted(before)
        seen_new: set[int] = set()

        def watch(sent: int) -> None:
            if sent % WATCH_EVERY < 256:
                seen_new.update(worker_pids(router.pid) - before)

        tcp_count = round(args.packets * TCP_SHARE)
        udp_count = args.packets - tcp_count
        budget = 600 if not args.smoke else 60
        t0 = time.monotonic()
        udp = udp_flood(router.port, mutator, udp_count, t0 + budget, watch)
        t1 = time.monotonic()
        tcp, tcp_stats = tcp_flood(router.port, mutator, tcp_count, t1 + budget / 2, self.rng)
        t2 = time.monotonic()
        seen_new.update(worker_pids(router.pid) - before)
        figures["workers_seen_new"] = sorted(seen_new)
        figures["fuzz_packets"] = udp.sent + tcp.sent
        figures["fuzz_udp_packets"] = udp.sent
        figures["fuzz_tcp_messages"] = tcp.sent
        figures["fuzz_udp_replies"] = udp.replies
        figures["fuzz_tcp_replies"] = tcp.replies
        figures["fuzz_malformed_replies"] = udp.malformed + tcp.malformed
        figures["fuzz_malformed_examples"] = udp.examples + tcp.examples
        figures["fuzz_udp_seconds"] = round(t1 - t0, 1)
        figures["fuzz_tcp_seconds"] = round(t2 - t1, 1)
        figures["fuzz_udp_pps"] = round(udp.sent / (t1 - t0)) if t1 > t0 else None
        figures["fuzz_tcp"] = tcp_stats
        figures["fuzz_mutations"] = mutator.counts
        if udp.sent + tcp.sent < args.packets:
            self.notes.append(
                f"the flood ran out of time after {udp.sent + tcp.sent:,} of {args.packets:,} packets"
            )
        figures["valid_query_after_flood"] = answers_valid(router.port)

    def _slow(self, router: Server, api: Api) -> None:
        args, figures = self.args, self.figures
        ramp_s = 5.0 if args.smoke else 20.0  # at most: the probe starts once all are connected
        argv = [sys.executable, "-m", "loadtest.hardening.probe", str(router.port), str(args.probes),
                str(PROBE_INTERVAL_S), PROBE_SOURCE]  # fmt: skip
        probes: list[subprocess.Popen] = []

        def start_probe() -> None:
            probes.append(
                subprocess.Popen(
                    argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
            )

        hold_started = time.monotonic()
        out, err = "", ""
        try:
            result = hold(router.port, args.slow, source_addresses(SLOW_ADDRESSES),
                          seconds=ramp_s + args.probes * (PROBE_INTERVAL_S + 0.1) + 60, trickle_s=TRICKLE_S,
                          ramp_s=ramp_s, ready=start_probe, stop=lambda: bool(probes) and probes[0].poll() is not None,
                          router_open=api.tcp_open, max_opens=args.slow * 40)  # fmt: skip
            if probes:
                out, err = probes[0].communicate(timeout=30)
        finally:
            for probe in probes:
                if probe.poll() is None:
                    probe.kill()
                    probe.wait(timeout=5)
        figures["tcp_slowloris_ready_after_s"] = result.ready_after_s
        figures["tcp_slowloris_seconds"] = round(time.monotonic() - hold_started, 1)
        try:
            probed = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            probed = {"ms": [], "errors": [f"probe printed nothing: {err[-500:]}"]}
        times = [PROBE_TIMEOUT_MS if ms is None else ms for ms in probed["ms"]]
        figures["tcp_slowloris_target"] = args.slow
        figures["tcp_slowloris_connections"] = result.router_open_max
        figures["tcp_slowloris_client_open_max"] = result.client_open_max
        figures["tcp_slowloris_opened"] = result.opened
        figures["tcp_slowloris_closed_by_router"] = result.closed_by_server
        figures["tcp_slowloris_connect_failures"] = result.connect_failures
        figures["tcp_slowloris_bytes_trickled"] = result.bytes_trickled
        figures["tcp_slowloris_samples"] = result.samples
        figures["tcp_fresh_queries"] = len(times)
        figures["tcp_fresh_query_failures"] = sum(1 for ms in probed["ms"] if ms is None)
        figures["tcp_fresh_query_errors"] = probed["errors"]
        figures["tcp_fresh_query_ms_p50"] = percentile(times, 50)
        figures["tcp_fresh_query_ms_p99"] = percentile(times, 99)
        figures["tcp_fresh_query_ms_max"] = max(times) if times else None
        if result.router_open_max is None:
            self.notes.append(
                "the router's /v1/dns could not be read while the slow clients were held"
            )

    # -- 3: pktinfo ---------------------------------------------------------------------------------

    def pktinfo(self) -> None:
        if self._without_dnsperf("pktinfo", "pktinfo_note"):
            return
        self._compare({
            "wildcard": lambda: start_router(self.zones, self.root, 1, SERVER_CORE, "router_wildcard",
                                             listen="0.0.0.0:0"),
            "loopback": lambda: start_router(self.zones, self.root, 1, SERVER_CORE, "router_loopback"),
        }, [q.wire for q in self.mix], "pktinfo")  # fmt: skip

    # -- 4: response rate limiting ---------------------------------------------------------------

    def _zones_with(self, name: str, sections: dict) -> Path:
        """The sample deployment with ``sections`` of deployment.yaml replaced (rrl's
        "allow": [] -- loopback is limited like any client here)."""
        return with_settings(make_deployment(self.root / name), sections)

    def _without_dnsperf(self, name: str, note: str) -> bool:
        """True (the figure null, ``note`` saying why) when dnsperf cannot be had."""
        missing = packages.ensure({"dnsperf": PACKAGES["dnsperf"]})
        if missing:
            self.figures[f"{name}_overhead_ratio"] = None
            self.figures[note] = f"dnsperf cannot be had: {missing}"
        return bool(missing)

    def _compare(self, starters: dict, wires: list[bytes], name: str, check=None) -> None:  # noqa: ANN001
        """dnsperf (the ECS mix's arguments, closed loop) against each server ``starters`` makes,
        all running at once, ``--repetitions`` times, the order alternating, after an unmeasured
        warm-up; figures ``router_{key}_qps`` / ``_cpu_us_per_query`` (medians), ``_lost``, ``_runs``,
        and ``{name}_overhead_ratio`` (qps) and ``{name}_cpu_ratio``: the first server's / the second's."""
        args, figures = self.args, self.figures
        datafile = self.root / "queries-compare.bin"
        datafile.write_bytes(frame(wires))
        servers = {}
        runs: dict[str, list] = {key: [] for key in starters}
        try:
            for key, start in starters.items():
                servers[key] = start()
            if check is not None:
                check(servers)
            for server in servers.values():
                run_dnsperf(server, datafile, min(1.0, args.seconds), "ecs", -1, LOAD_CORE)
            keys = list(starters)
            for rep in range(args.repetitions):
                for key in keys if rep % 2 == 0 else keys[::-1]:
                    runs[key].append(
                        run_dnsperf(servers[key], datafile, args.seconds, "ecs", rep, LOAD_CORE)
                    )
        finally:
            for server in servers.values():
                server.stop()
        for key, done in runs.items():
            qps = [r.qps for r in done if r.qps]
            cpu = [r.cpu_us_per_query for r in done if r.cpu_us_per_query]
            figures[f"router_{key}_qps"] = round(median(qps)) if qps else None
            figures[f"router_{key}_cpu_us_per_query"] = round(median(cpu), 2) if cpu else None
            figures[f"router_{key}_lost"] = sum(r.lost for r in done)
            figures[f"router_{key}_runs"] = [{"qps": r.qps, "cpu_us_per_query": r.cpu_us_per_query, "lost": r.lost,
                                             "server_core_other_s": r.server_core_other_s} for r in done]  # fmt: skip
        first, second = list(starters)
        for figure, measure in (("overhead_ratio", "qps"), ("cpu_ratio", "cpu_us_per_query")):
            a, b = figures[f"router_{first}_{measure}"], figures[f"router_{second}_{measure}"]
            figures[f"{name}_{figure}"] = round(a / b, 3) if a and b else None

    def rrl(self) -> None:
        """A reflection attack from one source and real clients beside it, on a router with
        the default rate and the loopback allow-list emptied; then the cost of the limiter at
        the same offered load (dnsperf, a rate no reply reaches, against rate 0)."""
        args, figures = self.args, self.figures
        queries, seconds = (20_000, 2.0) if args.smoke else (300_000, 10.0)
        zones = self._zones_with("rrl-attack", {"rrl": {"rate": RRL_RATE, "slip": 2, "allow": []}})
        router = start_router(zones, self.root, 1, None, "router_rrl")
        try:
            result = attack(router.port, queries, seconds, RRL_CLIENTS)
        finally:
            router.stop()
        figures["rrl_rate"] = RRL_RATE
        figures["rrl_attack_queries"] = result.queries
        figures["rrl_attack_seconds"] = round(result.seconds, 2)
        figures["rrl_attack_full_answers"] = result.full
        figures["rrl_attack_truncated"] = result.truncated
        if result.queries:
            figures["rrl_attack_full_answers_ratio"] = round(result.full / result.queries, 5)
            # One second's burst plus the refill while the attack lasted.
            figures["rrl_attack_full_answers_bound"] = round(
                RRL_RATE * (1 + result.seconds) / result.queries, 5
            )
        figures["rrl_legit_clients"] = RRL_CLIENTS
        figures["rrl_legit_queries"] = result.legit_asked
        figures["rrl_legit_timeouts"] = result.legit_timeouts
        figures["rrl_legit_truncated"] = result.legit_truncated
        figures["rrl_legit_errors"] = result.errors[:5]
        figures["rrl_legit_answered_ratio"] = (
            round(result.legit_answered / result.legit_asked, 5) if result.legit_asked else None
        )
        if self._without_dnsperf("rrl", "rrl_overhead_note"):
            return
        self._compare({
            "rrl_on": lambda: start_router(self._zones_with("rrl-on", {"rrl": {"rate": RRL_NO_LIMIT, "allow": []}}),
                                           self.root, 1, SERVER_CORE, "router_rrl_on"),
            "rrl_off": lambda: start_router(self._zones_with("rrl-off", {"rrl": {"rate": 0}}), self.root, 1,
                                            SERVER_CORE, "router_rrl_off"),
        }, [q.wire for q in self.mix], "rrl")  # fmt: skip

    # -- 5: DNS cookies ---------------------------------------------------------------------------

    def cookie_cost(self) -> None:
        """The cost of DNS cookies at the same offered load: the ECS mix with a COOKIE option on
        every query (every other one a client cookie only, the rest a valid server cookie made
        for 127.0.0.1 with the deployment's secret, so both a fresh cookie and an echo are
        measured), against a router with cookies on and one with them off (the option ignored)."""
        figures = self.figures
        if self._without_dnsperf("cookie", "cookie_note"):
            return
        secret = secrets.token_bytes(cookies.SECRET_LEN)
        zones_on = self._zones_with("cookies-on", {"cookies": {"secret_file": "cookie-secret"}})
        (zones_on / "cookie-secret").write_text(secret.hex() + "\n")
        (zones_on / "cookie-secret").chmod(0o600)
        zones_off = self._zones_with("cookies-off", {"cookies": {"enabled": False}})
        now = int(time.time())
        wires = []
        for i, q in enumerate(self.mix):
            client = (i + 1).to_bytes(cookies.CLIENT_LEN, "big")
            option = client + (
                cookies.make_server_cookie(secret, client, "127.0.0.1", now) if i % 2 else b""
            )
            wires.append(with_cookie(q.wire, option))

        def echoed(servers: dict) -> None:
            query = dns.message.from_wire(wires[1])
            reply = dns.query.udp(query, "127.0.0.1", port=servers["cookies_on"].port, timeout=3)
            sent = [o.client + o.server for o in reply.options if o.otype == dns.edns.COOKIE]
            asked = [o.client + o.server for o in query.options if o.otype == dns.edns.COOKIE]
            figures["cookie_echo_checked"] = sent == asked
            if sent != asked:
                self.notes.append(
                    f"the cookies-on router did not echo a valid cookie: {sent} for {asked}"
                )

        self._compare({
            "cookies_on": lambda: start_router(zones_on, self.root, 1, SERVER_CORE, "router_cookies_on"),
            "cookies_off": lambda: start_router(zones_off, self.root, 1, SERVER_CORE, "router_cookies_off"),
        }, wires, "cookie", echoed)  # fmt: skip

    # -- the rest -------------------------------------------------------------------------------

    def finish(self) -> dict:
        args, figures = self.args, self.figures
        figures["targets"] = {}
        bound = figures.get("rrl_attack_full_answers_bound")
        if bound is not None and figures.get("rrl_attack_full_answers_ratio") is not None:
            ratio = figures["rrl_attack_full_answers_ratio"]
            figures["targets"]["rrl_attack_full_answers_ratio"] = {
                "value": ratio, "target": f"<= {bound:.4f} (rate x time / queries)",
                "pass": ratio <= bound,
            }  # fmt: skip
        for key, (text, test) in TARGETS.items():
            value = figures.get(key)
            figures["targets"][key] = {"value": value, "target": text,
                                       "pass": None if value is None else bool(test(value))}  # fmt: skip
        figures["mutation_kinds"] = dict(KINDS)
        figures["notes"] = "; ".join(self.notes)
        figures["dnsperf_args"] = DNSPERF_ARGS
        figures["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                              "python": platform.python_version(), "loadavg_at_end": os.getloadavg(),
                              "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE))}  # fmt: skip
        figures["source"] = source_state()
        figures["command"] = "python loadtest/bench_hardening.py " + " ".join(args.argv)
        figures["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started))
        figures["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        figures["duration_s"] = round(time.time() - self.started, 1)
        return figures


def with_cookie(wire: bytes, option: bytes) -> bytes:
    """``wire`` (a query with EDNS) with a COOKIE option of data ``option`` added last."""
    message = dns.message.from_wire(wire)
    options = [*message.options, dns.edns.GenericOption(dns.edns.COOKIE, option)]
    message.use_edns(0, message.ednsflags, message.payload, options=options)
    return message.to_wire()


def fmt(value: object, spec: str = ",") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def format_table(f: dict) -> str:
    def target(key: str) -> str:
        entry = f.get("targets", {}).get(key)
        if not entry:
            return ""
        verdict = {True: "pass", False: "MISS", None: "-"}[entry["pass"]]
        return f"{entry['target']} {verdict}"

    rows = [
        ("figure", "router 0.0.0.0", "router 127.0.0.1 (peer)", "ratio", "target"),
        ("qps (dnsperf, ECS mix)", fmt(f.get("router_wildcard_qps")), fmt(f.get("router_loopback_qps")),
         fmt(f.get("pktinfo_overhead_ratio"), ".3f"), target("pktinfo_overhead_ratio")),
        ("CPU us/query", fmt(f.get("router_wildcard_cpu_us_per_query"), ".2f"),
         fmt(f.get("router_loopback_cpu_us_per_query"), ".2f"), fmt(f.get("pktinfo_cpu_ratio"), ".3f"), ""),
        ("figure", "router RRL on", "router RRL off (peer)", "ratio", "target"),
        ("qps (dnsperf, ECS mix)", fmt(f.get("router_rrl_on_qps")), fmt(f.get("router_rrl_off_qps")),
         fmt(f.get("rrl_overhead_ratio"), ".3f"), target("rrl_overhead_ratio")),
        ("CPU us/query", fmt(f.get("router_rrl_on_cpu_us_per_query"), ".2f"),
         fmt(f.get("router_rrl_off_cpu_us_per_query"), ".2f"), fmt(f.get("rrl_cpu_ratio"), ".3f"), ""),
        ("figure", "router cookies on", "router cookies off (peer)", "ratio", "target"),
        ("qps (dnsperf, ECS mix + COOKIE)", fmt(f.get("router_cookies_on_qps")), fmt(f.get("router_cookies_off_qps")),
         fmt(f.get("cookie_overhead_ratio"), ".3f"), target("cookie_overhead_ratio")),
        ("CPU us/query", fmt(f.get("router_cookies_on_cpu_us_per_query"), ".2f"),
         fmt(f.get("router_cookies_off_cpu_us_per_query"), ".2f"), fmt(f.get("cookie_cpu_ratio"), ".3f"), ""),
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("")
    single = [
        ("fuzz_packets", fmt(f.get("fuzz_packets")),
         f"UDP {fmt(f.get('fuzz_udp_packets'))} ({fmt(f.get('fuzz_udp_replies'))} replies), "
         f"TCP {fmt(f.get('fuzz_tcp_messages'))} ({fmt(f.get('fuzz_tcp_replies'))} replies)"),
        ("fuzz_crashes", fmt(f.get("fuzz_crashes")), target("fuzz_crashes")),
        ("rrl_attack_full_answers_ratio", fmt(f.get("rrl_attack_full_answers_ratio"), ".5f"),
         f"{target('rrl_attack_full_answers_ratio')}: {fmt(f.get('rrl_attack_full_answers'))} full and "
         f"{fmt(f.get('rrl_attack_truncated'))} truncated of {fmt(f.get('rrl_attack_queries'))} queries in "
         f"{fmt(f.get('rrl_attack_seconds'))} s (rate {fmt(f.get('rrl_rate'))}/s)"),
        ("rrl_legit_answered_ratio", fmt(f.get("rrl_legit_answered_ratio"), ".5f"),
         f"{target('rrl_legit_answered_ratio')}: {fmt(f.get('rrl_legit_queries'))} queries from "
         f"{fmt(f.get('rrl_legit_clients'))} other /24s during the attack"),
        ("fuzz_malformed_replies", fmt(f.get("fuzz_malformed_replies")), target("fuzz_malformed_replies")),
        ("fuzz_worker_restarts", fmt(f.get("fuzz_worker_restarts")), target("fuzz_worker_restarts")),
        ("valid query after (udp, tcp)", str(f.get("valid_query_after")), ""),
        ("router log: tracebacks / internal errors",
         f"{fmt(f.get('router_log_tracebacks'))} / {fmt(f.get('router_log_internal_errors'))}", ""),
        ("tcp_slowloris_connections", fmt(f.get("tcp_slowloris_connections")),
         f"router's tcp.open max, of {fmt(f.get('tcp_slowloris_target'))} slow clients "
         f"(clients' own count {fmt(f.get('tcp_slowloris_client_open_max'))})"),
        ("tcp_fresh_query_ms_p99", fmt(f.get("tcp_fresh_query_ms_p99"), ".2f"),
         f"{target('tcp_fresh_query_ms_p99')}; p50 {fmt(f.get('tcp_fresh_query_ms_p50'), '.2f')}, "
         f"{fmt(f.get('tcp_fresh_queries'))} queries, {fmt(f.get('tcp_fresh_query_failures'))} failed"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in single)
    vwidth = max(len(r[1]) for r in single)
    lines += [f"{a.ljust(width)}  {b.rjust(vwidth)}  {c}".rstrip() for a, b, c in single]
    for key in ("rrl_overhead_note", "cookie_note", "pktinfo_note", "notes"):
        if f.get(key):
            lines.append(f"note ({key}): {f[key]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    raise_nofile(max(4096, 3 * args.slow + 1024))
    with tempfile.TemporaryDirectory(prefix="bench-hardening-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.flood_and_slow()
        bench.pktinfo()
        bench.rrl()
        bench.cookie_cost()
        figures = bench.finish()
    table = format_table(figures)
    print(table)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    args.json.with_suffix(".txt").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
