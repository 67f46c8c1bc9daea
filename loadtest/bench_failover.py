"""Failover figures: how fast a failed node leaves the answers, and what heartbeats cost.

    python loadtest/bench_failover.py --json FILE [--trials N] [--smoke]

Runs on the sample deployment (zones/, its health settings as shipped: 1 s heartbeats,
3 missed = 3 s bound, 3 good reports and a 10 s hold-down to return) with the real router
(2 workers, telemetry on) and the node simulator in process, everything on loopback:

- explicit failure (power off / every uplink down) -> node absent from the answer of a
  client it served: measured by querying over UDP every 2 ms;
- silent death (heartbeats stop) -> absent, against the configured bound;
- recovery -> present again;
- anycast: the router drained, the service route withdrawn in BIRD (ExaBGP + BIRD 2 lab);
- cost: CPU of the router, every process (the control process, which takes the heartbeats
  in, and its DNS worker), per 1,000 heartbeats with 2,196 simulated nodes (a large real
  footprint), measured from /proc over a fixed window; the simulator's own CPU (the
  senders') beside it, not in it;
- peer, same run: gdnsd 3 (multifo resources of 4 node addresses, each watched by its
  http_status monitor on the simulator's health answer), node's health failed -> its address
  absent from gdnsd's answer, with gdnsd's default monitor settings and a tuned fast set.

Sample sizes: a percentile needs ``MIN_SAMPLES`` (20 for a p50, 100 for a p99) to mean its
name; one of fewer still gets its figure, and a ``*_note`` that says so. The default 200
trials (100 explicit, 100 silent) run up to 6 at once, each on its own client, failures at
least 0.3 s apart: each lasts about 11 s (the hold-down) and a node rests 22 s after it is back
(failing sooner would double its hold-down), so they take about 8 minutes where one after the
other would take 45. gdnsd's defaults take about 100 s per withdrawal, so 20 nodes fail at
once, 2 in each of 10 resources (multifo's up_thresh 0.5: a resource with half its addresses
up still drops the failed ones, so each leaves on its own monitor); the fast settings take 20
samples, 2 at a time. About 12 minutes in all.

``--smoke`` runs every part at the smallest size, in about a minute, for the test suite: 2
trials (one explicit, one silent, each recovered), a 200-node footprint heartbeating for 3 s,
one gdnsd trial with the fast settings and none with the defaults (they take about 100 s;
``gdnsd_note`` says so). Its figures mean little; what it shows is that the bench still runs
and writes its contract keys (``CONTRACT_KEYS``, ``PEER_KEYS``). gdnsd is installed with
apt-get when missing and running as root; when it cannot be had the peer's figures are null
and ``gdnsd_note`` says why.

Bounded: a fixed number of trials, each with a timeout; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.query
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest import packages  # noqa: E402
from loadtest.percentiles import MIN_SAMPLES, percentile, percentile_figure  # noqa: E402,F401
from loadtest.throughput.proc import process_cpu_s, tree_pids  # noqa: E402
from router.config import load_deployment  # noqa: E402
from router.config.deployment import load_node_keys  # noqa: E402
from router.config.secrets import write_secret_file  # noqa: E402
from router.simulator import Simulator  # noqa: E402
from tests.conftest import RunningRouter, make_deployment, start_router  # noqa: E402

# One client subnet per ISP of the sample (see tests/test_router_server.py).
CLIENTS = ["83.44.10.0/24", "47.60.1.0/24", "85.48.1.0/24", "85.241.20.0/24", "89.153.10.0/24", "94.60.1.0/24",
           "90.10.20.0/24", "105.145.1.0/24", "83.213.10.0/24"]  # fmt: skip
FOOTPRINT_NODES = 2196
# The JSON keys other work relies on: the router's (numbers; bird_withdraw_seen a boolean) ...
CONTRACT_KEYS = ("explicit_withdraw_ms_p50", "explicit_withdraw_ms_p99", "silent_withdraw_ms_p50", "silent_bound_ms",
                 "recovery_ms_p50", "bird_withdraw_seen", "cpu_ms_per_1000_heartbeats")  # fmt: skip
# ... and the peer's (numbers, or null when not measured; gdnsd_note says why, or how it was measured).
PEER_KEYS = ("gdnsd_default_withdraw_ms_p50", "gdnsd_fast_withdraw_ms_p50", "ratio_gdnsd_fast_vs_router_explicit",
             "ratio_gdnsd_fast_vs_router_silent", "gdnsd_note")  # fmt: skip
# Trials run side by side (each lasts about the 10 s hold-down), each on its own client: the
# default count then takes about 8 minutes instead of 45 one after the other.
DEFAULT_TRIALS = 200  # 100 explicit, 100 silent: enough for a p99 of each
MAX_IN_FLIGHT = 6  # trials at once (of the 9 clients; more would leave few nodes to fail)
# Trials past --trials, at most trials / this (and 2), replace displaced ones (a node moved
# out of the answer by something else is no sample), so each kind has trials / 2 samples.
EXTRA_TRIALS_DIVISOR = 10
START_GAP_S = (0.3, 0.8)  # between two failures: separate events, random heartbeat phases
WITHDRAW_TIMEOUT_S = 10.0
RECOVERY_TIMEOUT_S = 30.0
RECOVERY_POLL_S = 0.02  # recovery takes ~11 s: polling it every 2 ms would only add load
REST_MARGIN_S = 2.0  # beyond the 2 hold-downs a node rests after it is back (flap damping)


class SimulatorThread:
    """The node simulator on its own event loop; commands are queued like stdin lines."""

    def __init__(self, zones: Path, keys: Path, target: tuple[str, int], duration: float) -> None:
        deployment = load_deployment(zones)
        key_map, problems = load_node_keys(keys, str(keys), deployment.inventory)
        assert not problems, problems
        interval = deployment.health.heartbeat_interval_s if deployment.health else 1.0
        self.simulator = Simulator(deployment.inventory, key_map, target, interval)
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.thread = threading.Thread(target=self._run, args=(duration,), daemon=True)
        self.thread.start()

    def _run(self, duration: float) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.simulator.run(duration, self.queue))

    def send(self, command: str) -> float:
        """Queue a command; returns the monotonic time it was handed over."""
        started = time.monotonic()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, command)
        return started

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
        self.thread.join(timeout=10)
        self.simulator.close()


def answer(router: RunningRouter, subnet: str, sock: socket.socket) -> list[str]:
    address, prefix = subnet.split("/")
    q = dns.message.make_query(
        "video.cdn.example.", "A", use_edns=0, options=[dns.edns.ECSOption(address, int(prefix))]
    )
    sock.sendto(q.to_wire(), (router.host, router.port))
    reply = dns.message.from_wire(sock.recv(65535))
    return [rdata.address for rrset in reply.answer for rdata in rrset]


def wait_until(predicate, timeout: float, started: float, every: float = 0.002) -> float | None:  # noqa: ANN001
    """Milliseconds from ``started`` until ``predicate`` holds, polled every ``every`` s; None on timeout."""
    while time.monotonic() - started < timeout:
        if predicate():
            return (time.monotonic() - started) * 1000.0
        time.sleep(every)
    return None


def api_json(router: RunningRouter, path: str, method: str = "GET", body: object = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{router.api}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {router.token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@dataclass
class Trial:
    """One failure of one node, timed on the answer of one client that node served."""

    kind: str  # "explicit" (power off / uplinks down) or "silent" (heartbeats stop)
    victim: str
    ip: str
    client: str
    failed_at: float  # monotonic, when the command was handed to the simulator
    withdrawn_ms: float | None = None
    withdraw_timed_out: bool = False
    restored_at: float | None = None
    back_ms: float | None = None
    router_state: str | None = None  # the victim's state in the router soon after it left
    next_poll: float = 0.0


def pick_victim(router: RunningRouter, sock: socket.socket, rng: random.Random, active: list[Trial],
                last_back: dict[str, float], rest_s: float) -> tuple[str, str] | None:  # fmt: skip
    """(client, node address) for a new trial, or None when no node may fail now.

    A client with a trial running is not used again until that trial is over, so each
    trial's answer changes only by its own node (the router's state is checked besides:
    ``Trial.router_state``). A node fails again only ``rest_s`` after it was back.
    """
    busy_clients = {t.client for t in active}
    busy_ips = {t.ip for t in active}
    now = time.monotonic()
    for client in rng.sample(CLIENTS, len(CLIENTS)):
        if client in busy_clients:
            continue
        ips = answer(router, client, sock)
        for ip in ips:
            # Another node of the answer must stay up: with every node a client may use
            # down at once the router fails open and keeps answering them (by design), which
            # is not a withdrawal (off-net clients have only the few IX and PoP nodes).
            still_up = any(other != ip and other not in busy_ips for other in ips)
            if ip not in busy_ips and still_up and now - last_back.get(ip, -1e9) > rest_s:
                return client, ip
    return None


def measure_failover(root: Path, trials: int) -> dict:
    """``trials`` failures, alternately explicit and silent, up to MAX_IN_FLIGHT at once.

    Each trial: fail a node that is in some client's answer, poll that client's answer over
    UDP every 2 ms until the node is gone, restore it, poll (every RECOVERY_POLL_S) until it
    is back. Trials overlap (the 10 s hold-down makes each last about 11 s), but two failures
    are never sent within START_GAP_S of each other, and nothing else that asks the router
    (choosing a victim, reading its state) runs while an explicit failure is being timed.
    """
    zones = make_deployment(root / "sample")
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())["health"]
    router = start_router(zones, root / "router.log", "--telemetry", "127.0.0.1:0")
    assert router.telemetry is not None
    node_of = {str(n.ipv4): n.id for n in load_deployment(zones).inventory.nodes}
    sim = SimulatorThread(zones, zones / settings["keys"], router.telemetry, duration=3600)
    # Failing within 2 hold-downs of coming back doubles the hold-down (flap damping, by
    # design), which is not what a trial measures: a node rests that long, and a little more.
    rest_s = 2 * settings["hold_down_s"] + REST_MARGIN_S
    rng = random.Random(3)
    at_once = 0
    active: list[Trial] = []
    finished: list[Trial] = []
    unverified: list[Trial] = []  # withdrawn, the router's state not read yet
    last_back: dict[str, float] = {}
    started = 0
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            deadline = time.monotonic() + 30
            while not all(
                "heartbeats good" in n["reason"] for n in api_json(router, "/v1/nodes")["nodes"]
            ):
                assert time.monotonic() < deadline, "nodes never all reported"
                time.sleep(0.1)
            time.sleep(1.5)  # let the even-load table settle
            next_start = time.monotonic()
            wanted = trials // 2  # clean samples of each kind, for its percentiles
            limit = trials + max(2, trials // EXTRA_TRIALS_DIVISOR)

            def short_kind() -> str | None:
                # A kind whose clean samples and trials under way fall short of ``wanted``
                # (a displaced trial is no sample): another trial of it, up to ``limit``.
                for kind in ("explicit", "silent"):
                    clean = sum(t.kind == kind and t.withdrawn_ms is not None and t.router_state == "down"
                                for t in finished)  # fmt: skip
                    if clean + sum(t.kind == kind for t in active) < wanted:
                        return kind
                return None

            while started < trials or active or (started < limit and short_kind()):
                now = time.monotonic()
                timing_explicit = any(
                    t.kind == "explicit" and t.restored_at is None for t in active
                )
                if not timing_explicit:
                    if unverified:
                        # Down for at least the hold-down after it left: read well within it.
                        state = {
                            n["id"]: n["state"] for n in api_json(router, "/v1/nodes")["nodes"]
                        }
                        for t in unverified:
                            t.router_state = state[t.victim]
                        unverified.clear()
                    more = started < trials or (started < limit and short_kind() is not None)
                    if more and len(active) < MAX_IN_FLIGHT and now >= next_start:
                        choice = pick_victim(router, sock, rng, active, last_back, rest_s)
                        if choice is None:
                            next_start = now + 0.5  # every free node is resting: look again soon
                        else:
                            client, ip = choice
                            kind = (
                                ("explicit", "silent")[started % 2]
                                if started < trials
                                else short_kind()
                            )
                            victim = node_of[ip]
                            command = {"explicit": rng.choice([f"power {victim} off", f"uplink {victim} down"]),
                                       "silent": f"silence {victim}"}[kind]  # fmt: skip
                            active.append(Trial(kind, victim, ip, client, sim.send(command)))
                            started += 1
                            at_once = max(at_once, len(active))
                            # A random gap: separate events, at random phases of the heartbeats.
                            next_start = time.monotonic() + rng.uniform(*START_GAP_S)
                for t in list(active):
                    now = time.monotonic()
                    if now < t.next_poll:
                        continue
                    if t.restored_at is None:
                        gone = t.ip not in answer(router, t.client, sock)
                        now = time.monotonic()
                        if gone or now - t.failed_at > WITHDRAW_TIMEOUT_S:
                            if gone:
                                t.withdrawn_ms = (now - t.failed_at) * 1000.0
                                unverified.append(t)
                            else:
                                t.withdraw_timed_out = True
                            t.restored_at = sim.send(f"restore {t.victim}")
                        continue
                    t.next_poll = now + RECOVERY_POLL_S
                    back = t.ip in answer(router, t.client, sock)
                    now = time.monotonic()
                    if back or now - t.restored_at > RECOVERY_TIMEOUT_S:
                        if back:
                            t.back_ms = (now - t.restored_at) * 1000.0
                        last_back[t.ip] = now
                        active.remove(t)
                        finished.append(t)
                        took = "timeout" if t.withdrawn_ms is None else f"{t.withdrawn_ms:.1f} ms"
                        print(f"  trial {len(finished)}/{trials}: {t.kind:8} {t.victim:14} withdrawn in {took}, "
                              f"back in {'timeout' if t.back_ms is None else f'{t.back_ms:,.0f} ms'}"
                              f"{'' if t.router_state in (None, 'down') else f' (router: {t.router_state})'}",
                              flush=True)  # fmt: skip
                time.sleep(0.002)
            bird = measure_bird_withdrawal(router, root)
    finally:
        sim.stop()
        router.stop()
        router.process.stdout.close()
    # A node that left the answer while the router still had it up was moved by something
    # else (another trial's node, a new plan): that is not its withdrawal, and is counted apart.
    displaced = [t for t in finished if t.withdrawn_ms is not None and t.router_state != "down"]
    samples = {
        kind: [t.withdrawn_ms for t in finished if t.kind == kind and t.withdrawn_ms is not None
               and t.router_state == "down"]
        for kind in ("explicit", "silent")
    }  # fmt: skip
    # Recovery of the nodes that really went down and left the answer for it.
    recovery = [t.back_ms for t in finished if t.back_ms is not None and t.router_state == "down"]
    bound_ms = settings["missed_heartbeats"] * settings["heartbeat_interval_s"] * 1000.0
    figures: dict = {}
    percentile_figure(figures, "explicit_withdraw_ms_p50", samples["explicit"], 50)
    percentile_figure(figures, "explicit_withdraw_ms_p99", samples["explicit"], 99)
    figures["explicit_trials"] = len(samples["explicit"])
    percentile_figure(figures, "silent_withdraw_ms_p50", samples["silent"], 50)
    percentile_figure(figures, "silent_withdraw_ms_p99", samples["silent"], 99)
    figures["silent_withdraw_ms_max"] = (
        round(max(samples["silent"]), 1) if samples["silent"] else None
    )
    figures["silent_trials"] = len(samples["silent"])
    figures["silent_bound_ms"] = bound_ms
    percentile_figure(figures, "recovery_ms_p50", recovery, 50)
    figures["recovery_trials"] = len(recovery)
    figures["hold_down_ms"] = settings["hold_down_s"] * 1000.0
    figures["withdraw_timeouts"] = sum(t.withdraw_timed_out for t in finished)
    figures["recovery_timeouts"] = sum(t.back_ms is None for t in finished)
    figures["trial_timeouts"] = figures["withdraw_timeouts"] + figures["recovery_timeouts"]
    figures["trials_displaced"] = len(displaced)
    figures["trials_displaced_nodes"] = sorted({t.victim for t in displaced})
    figures["trials_started"] = started
    figures["trials_at_once_limit"] = MAX_IN_FLIGHT
    figures["trials_at_once_max"] = at_once
    figures["node_rest_s"] = rest_s
    return {**figures, **bird}


def measure_bird_withdrawal(router: RunningRouter, root: Path) -> dict:
    try:
        from tests.anycast_lab import AnycastLab, LabUnavailable
    except ImportError as exc:  # pragma: no cover - the lab ships with the repo
        return {"bird_withdraw_seen": False, "bird_note": f"lab unavailable: {exc}"}
    service = "192.0.2.53/32"
    argv = [sys.executable, "-m", "router.cli", "anycast-announce", "--api", router.api, "--service-prefix", service,
            "--interval", "0.2"]  # fmt: skip
    try:
        with AnycastLab(root / "anycast", argv) as lab:
            lab.wait_for(lambda: service in lab.routes(), 15, "the service route")
            started = time.monotonic()
            api_json(router, "/v1/status", "PUT", {"state": "draining"})
            took = wait_until(lambda: service not in lab.routes(), 15, started)
            api_json(router, "/v1/status", "PUT", {"state": "serving"})
            returned = wait_until(lambda: service in lab.routes(), 15, time.monotonic())
    except (LabUnavailable, TimeoutError, RuntimeError) as exc:
        return {"bird_withdraw_seen": False, "bird_note": str(exc)[:300]}
    return {
        "bird_withdraw_seen": took is not None,
        "bird_withdraw_ms": None if took is None else round(took, 1),
        "bird_route_returned": returned is not None,
    }


def footprint_deployment(root: Path, count: int) -> Path:
    """The sample with ``count`` nodes: copies of the sample's nodes at jittered positions.

    The first copy of each sample node keeps its id, so whatever the sample's policies name
    (a pool's ``ix-mad-1``, ``site:`` and ``country:`` entries) still names a node; the
    other copies are ``n0018``, ``n0019`` ... Every node gets its own address and key.
    """
    zones = make_deployment(root / "footprint")
    inventory = yaml.safe_load((zones / "nodes.yaml").read_text())
    base = inventory["nodes"]
    if count < len(base):
        raise ValueError(f"a footprint needs at least the sample's {len(base)} nodes, not {count}")
    rng = random.Random(11)
    nodes, keys = [], {}
    for i in range(count):
        template = dict(base[i % len(base)])
        template["id"] = template["id"] if i < len(base) else f"n{i:04d}"
        template["lat"] = round(template["lat"] + rng.uniform(-0.5, 0.5), 4)
        template["lon"] = round(template["lon"] + rng.uniform(-0.5, 0.5), 4)
        template["ipv4"] = f"10.{i // 250}.{i % 250}.1"
        template["ipv6"] = f"2001:db8:ff:{i:x}::1"
        nodes.append(template)
        keys[template["id"]] = os.urandom(32).hex()
    inventory["nodes"] = nodes
    (zones / "nodes.yaml").write_text(yaml.safe_dump(inventory))
    # Real random keys are a secret: the router refuses them in a file others can read.
    write_secret_file(zones / "node-keys.sample.yaml", yaml.safe_dump({"keys": keys}))
    return zones


def cpu_by_process(pid: int) -> dict[int, float]:
    """CPU seconds so far (utime + stime, every thread) of ``pid`` and of each descendant."""
    return {p: process_cpu_s(p) for p in tree_pids(pid)}


def per_1000(cpu_s: float, accepted: int) -> float | None:
    """Milliseconds of CPU per 1,000 heartbeats accepted."""
    return round(cpu_s * 1000.0 / (accepted / 1000.0), 2) if accepted else None


def measure_heartbeat_cost(root: Path, nodes: int = FOOTPRINT_NODES, window_s: float = 10.0,
                           settle_s: float = 5.0) -> dict:  # fmt: skip
    """What ``nodes`` heartbeating once a second cost: the router's control process (which
    verifies the heartbeats and plans a new table when states or loads move) and its DNS
    worker (which takes each new table in), and apart from them the simulator that signs and
    sends the heartbeats (in this process: the nodes' side, not the router's)."""
    zones = footprint_deployment(root, nodes)
    router = start_router(
        zones, root / "footprint.log", "--telemetry", "127.0.0.1:0", api=True, workers=1
    )
    sim = SimulatorThread(
        zones, zones / "node-keys.sample.yaml", router.telemetry, duration=window_s + 30
    )
    control = router.process.pid
    try:
        time.sleep(settle_s)  # every node reporting, tables settled
        before = api_json(router, "/v1/telemetry")["accepted"]
        router_before = cpu_by_process(control)
        # The bench's main thread only sleeps in the window: this process's CPU is the simulator's.
        simulator_before = process_cpu_s(os.getpid())
        time.sleep(window_s)
        router_after = cpu_by_process(control)
        simulator_s = process_cpu_s(os.getpid()) - simulator_before
        accepted = api_json(router, "/v1/telemetry")["accepted"] - before
    finally:
        sim.stop()
        router.stop()
        router.process.stdout.close()
    control_s = router_after[control] - router_before[control]
    workers = [p for p in router_before if p != control and p in router_after]
    workers_s = sum(router_after[p] - router_before[p] for p in workers)
    figures = {
        "footprint_nodes": nodes,
        "heartbeats_per_s": round(accepted / window_s, 1),
        # The router's cost: every process it runs (control and workers), all threads.
        "cpu_ms_per_1000_heartbeats": per_1000(control_s + workers_s, accepted),
        "control_cpu_ms_per_1000_heartbeats": per_1000(control_s, accepted),
        "workers_cpu_ms_per_1000_heartbeats": per_1000(workers_s, accepted),
        "router_processes_measured": 1 + len(workers),
        # The senders' cost, apart: 2,196 real nodes would each spend 1/2,196 of it.
        "simulator_cpu_ms_per_1000_heartbeats": per_1000(simulator_s, accepted),
        "router_and_simulator_cpu_ms_per_1000_heartbeats": per_1000(
            control_s + workers_s + simulator_s, accepted
        ),
    }
    changed = set(router_before) ^ set(router_after)
    if changed:
        figures["cpu_ms_per_1000_heartbeats_note"] = (
            f"the router's processes changed during the window ({sorted(changed)}): "
            "the CPU of a process that was not there at both ends is missing"
        )
    return figures


# --- Peer: gdnsd 3, multifo + http_status --------------------------------------------------
#
# gdnsd monitors the very addresses it answers, one service_type (so one url_path and port)
# for every address of a resource. So each peer node gets its own loopback address
# (127.0.2.N for the fast resource, 127.0.10.N, 127.0.11.N ... for the default-settings ones)
# with a health endpoint on the same port that answers what the simulator's GET /health/NODE
# answers for that node (SimulatedNode.healthy(): 200 while serving, 503 after
# `health NODE fail`).

GDNSD_NODES = 4  # addresses per multifo resource
# multifo's up_thresh (0.5, its default): with fewer than half of a resource's addresses up it
# answers all of them. So at most half of a resource fails at once, and then each failed
# address leaves the answer on its own monitor's verdict, whatever the others do.
GDNSD_DOWN_AT_ONCE = GDNSD_NODES // 2
# gdnsd 3.8's own defaults (gdnsd.config(5)): interval 10, timeout interval/2 = 5,
# down_thresh 10, ok_thresh 10, up_thresh 20. Written out so the config says what it runs.
GDNSD_DEFAULT = {"interval": 10, "timeout": 5, "down_thresh": 10, "ok_thresh": 10, "up_thresh": 20}
# The fastest gdnsd 3.8.1 accepts: interval >= 2 (checkconf: "Value out of range (2, 3600)"),
# timeout >= 1 and < interval, thresholds >= 1.
GDNSD_FAST = {"interval": 2, "timeout": 1, "down_thresh": 1, "ok_thresh": 1, "up_thresh": 1}
GDNSD_DEFAULT_TIMEOUT_S = 130.0  # expected ~90-100 s (10 failed polls 10 s apart)
# A withdrawal with the defaults takes about 100 s, so all of them run at once: this many
# resources, GDNSD_DOWN_AT_ONCE failed in each, 20 samples in one ~100 s wait.
GDNSD_DEFAULT_RESOURCES = 10
GDNSD_FAST_TRIALS = 20  # GDNSD_DOWN_AT_ONCE at a time, each restored as soon as it is gone
GDNSD_FAST_TIMEOUT_S = 15.0
GDNSD_POLL_S = 0.010


def gdnsd_binary() -> tuple[str | None, str]:
    """The gdnsd binary, installing the Debian package when missing and running as root."""
    missing = packages.ensure({"gdnsd": lambda: packages.binary("gdnsd")})
    if missing:
        return None, f"{missing['gdnsd']}: peer not measured"
    return packages.binary("gdnsd"), ""


def free_port(kind: int, host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class GdnsdResource:
    """One multifo resource: its name (also the DNS name ``video-NAME``), the service type's
    settings it is watched with, and its addresses, one simulated node each."""

    name: str
    service: str  # "default" (GDNSD_DEFAULT) or "fast" (GDNSD_FAST)
    nodes: dict[str, str]  # node id -> its loopback address

    @property
    def qname(self) -> str:
        return f"video-{self.name}"


def gdnsd_resources(node_ids: list[str], default_settings: bool) -> list[GdnsdResource]:
    """The fast resource and, when ``default_settings``, GDNSD_DEFAULT_RESOURCES with the
    defaults; GDNSD_NODES of ``node_ids`` each, in order."""
    layout = [("fast", "fast", 2)]
    if default_settings:
        layout += [(f"default{r}", "default", 10 + r) for r in range(GDNSD_DEFAULT_RESOURCES)]
    if len(node_ids) < GDNSD_NODES * len(layout):
        raise ValueError(
            f"{len(layout)} resources need {GDNSD_NODES * len(layout)} nodes, not {len(node_ids)}"
        )
    resources = []
    for k, (name, service, net) in enumerate(layout):
        chunk = node_ids[k * GDNSD_NODES : (k + 1) * GDNSD_NODES]
        nodes = {node: f"127.0.{net}.{i + 1}" for i, node in enumerate(chunk)}
        resources.append(GdnsdResource(name, service, nodes))
    return resources


def gdnsd_config(
    cfg: Path, dns_port: int, health_port: int, resources: list[GdnsdResource]
) -> None:
    def service(settings: dict) -> str:
        extra = ", ".join(f"{k} => {v}" for k, v in settings.items())
        return f"{{ plugin => http_status, port => {health_port}, url_path => /health, {extra} }}"

    def resource(r: GdnsdResource) -> str:
        addrs = ", ".join(f"n{i} => {ip}" for i, ip in enumerate(r.nodes.values(), 1))
        return f"    {r.name} => {{ service_types => hs_{r.service}, {addrs} }}"

    (cfg / "zones").mkdir(parents=True)
    (cfg / "config").write_text(f"""options => {{
  listen => [ 127.0.0.1 ]
  dns_port => {dns_port}
  run_dir => {cfg / "run"}
  state_dir => {cfg / "state"}
}}
service_types => {{
  hs_default => {service(GDNSD_DEFAULT)}
  hs_fast => {service(GDNSD_FAST)}
}}
plugins => {{
  multifo => {{
{chr(10).join(resource(r) for r in resources)}
  }}
}}
""")
    names = "".join(f"{r.qname} 30 DYNA multifo!{r.name}\n" for r in resources)
    (cfg / "zones" / "peer.example").write_text(f"""$TTL 60
@ SOA ns1 hostmaster 1 7200 1800 259200 60
@ NS ns1
ns1 A 127.0.0.1
{names}""")


def gdnsd_answer(name: str, port: int) -> set[str] | None:
    query = dns.message.make_query(f"{name}.peer.example.", "A")
    try:
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=1.0)
    except (dns.exception.DNSException, OSError):
        return None
    return {rdata.address for rrset in reply.answer for rdata in rrset}


def measure_gdnsd_peer(
    root: Path, fast_trials: int = GDNSD_FAST_TRIALS, default_settings: bool = True
) -> dict:
    """gdnsd's withdrawal with its fast settings (``fast_trials`` samples) and, when
    ``default_settings``, with its defaults (GDNSD_DEFAULT_RESOURCES x GDNSD_DOWN_AT_ONCE
    nodes at once, about 100 s, never restored)."""
    figures: dict = {
        "gdnsd_version": None, "gdnsd_default_settings": GDNSD_DEFAULT, "gdnsd_fast_settings": GDNSD_FAST,
        "gdnsd_default_withdraw_ms_p50": None, "gdnsd_default_withdraw_ms_max": None,
        "gdnsd_default_withdraw_ms_at_least": None, "gdnsd_default_trials": 0, "gdnsd_default_timeouts": 0,
        "gdnsd_fast_withdraw_ms_p50": None, "gdnsd_fast_withdraw_ms_max": None, "gdnsd_fast_recovery_ms_p50": None,
        "gdnsd_fast_trials": 0, "gdnsd_fast_timeouts": 0, "gdnsd_note": "",
    }  # fmt: skip
    binary, note = gdnsd_binary()
    if binary is None:
        figures["gdnsd_note"] = note
        return figures
    version = subprocess.run([binary], capture_output=True, text=True, check=False).stderr.split(
        "\n"
    )[0]
    figures["gdnsd_version"] = version.replace("gdnsd version", "").strip() or None
    needed = GDNSD_NODES * (1 + (GDNSD_DEFAULT_RESOURCES if default_settings else 0))
    sample_nodes = len(yaml.safe_load((REPO / "zones" / "nodes.yaml").read_text())["nodes"])
    zones = footprint_deployment(root / "gdnsd-peer", max(needed, sample_nodes))
    node_ids = [n.id for n in load_deployment(zones).inventory.nodes]
    resources = gdnsd_resources(node_ids, default_settings)
    fast = resources[0]
    sink = socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    )  # heartbeats go nowhere: only health matters here
    sink.bind(("127.0.0.1", 0))
    sim = SimulatorThread(zones, zones / "node-keys.sample.yaml", sink.getsockname(), duration=900)
    health_port = free_port(socket.SOCK_STREAM)
    dns_port = free_port(socket.SOCK_DGRAM)
    cfg = root / "gdnsd"
    gdnsd_config(cfg, dns_port, health_port, resources)

    async def start_health():  # noqa: ANN202
        from aiohttp import web

        runners = []
        for node, ip in ((n, ip) for r in resources for n, ip in r.nodes.items()):

            async def health(_request: web.Request, node: str = node) -> web.Response:
                status, body = sim.simulator.nodes[node].health_response()
                return web.Response(status=status, text=body)

            app = web.Application()
            app.router.add_get("/health", health)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, ip, health_port).start()
            runners.append(runner)
        return runners

    async def stop_health(runners) -> None:  # noqa: ANN001
        for runner in runners:
            await runner.cleanup()

    runners: list = []
    process = None
    log = (root / "gdnsd.log").open("w")
    try:
        runners = asyncio.run_coroutine_threadsafe(start_health(), sim.loop).result(30)
        process = subprocess.Popen(
            [binary, "-c", str(cfg), "start"], stdout=log, stderr=subprocess.STDOUT
        )
        ready = wait_until(lambda: all(gdnsd_answer(r.qname, dns_port) == set(r.nodes.values()) for r in resources),
                           30, time.monotonic(), every=GDNSD_POLL_S)  # fmt: skip
        if ready is None:
            raise RuntimeError(
                f"gdnsd never answered all nodes (exit {process.poll()}); see its log"
            )
        time.sleep(1.0)

        # Fast settings: GDNSD_DOWN_AT_ONCE nodes of the fast resource at a time, each
        # restored once gone (up_thresh 1: back in a poll), then the next ones.
        fast_gone: list[float] = []
        fast_back: list[float] = []
        fast_nodes = list(fast.nodes)
        rng = random.Random(5)
        for first in range(0, fast_trials, GDNSD_DOWN_AT_ONCE):
            batch = [fast_nodes[(first + j) % GDNSD_NODES]
                     for j in range(min(GDNSD_DOWN_AT_ONCE, fast_trials - first))]  # fmt: skip
            victims = {node: (fast.qname, fast.nodes[node]) for node in batch}
            gone, back = gdnsd_withdrawals(
                sim, victims, dns_port, GDNSD_FAST_TIMEOUT_S, True, "fast"
            )
            fast_gone += gone.values()
            fast_back += back.values()
            figures["gdnsd_fast_timeouts"] += len(batch) - len(gone)
            # A random pause, so the failures land at random phases of gdnsd's poll interval.
            time.sleep(rng.uniform(0.2, 0.2 + GDNSD_FAST["interval"]))

        if default_settings:
            victims = {node: (r.qname, ip) for r in resources if r.service == "default"
                       for node, ip in list(r.nodes.items())[:GDNSD_DOWN_AT_ONCE]}  # fmt: skip
            gone, _ = gdnsd_withdrawals(
                sim, victims, dns_port, GDNSD_DEFAULT_TIMEOUT_S, False, "default"
            )
            figures["gdnsd_default_trials"] = len(gone)
            figures["gdnsd_default_timeouts"] = len(victims) - len(gone)
            if len(gone) == len(victims):
                percentile_figure(figures, "gdnsd_default_withdraw_ms_p50", list(gone.values()), 50)
                figures["gdnsd_default_withdraw_ms_max"] = round(max(gone.values()), 1)
            else:
                # The ones not gone are slower than every sample: no median without them.
                figures["gdnsd_default_withdraw_ms_at_least"] = GDNSD_DEFAULT_TIMEOUT_S * 1000.0
        if fast_gone:
            percentile_figure(figures, "gdnsd_fast_withdraw_ms_p50", fast_gone, 50)
            figures["gdnsd_fast_withdraw_ms_max"] = round(max(fast_gone), 1)
        if fast_back:
            percentile_figure(figures, "gdnsd_fast_recovery_ms_p50", fast_back, 50)
        figures["gdnsd_fast_trials"] = len(fast_gone)
        notes = [f"gdnsd {figures['gdnsd_version']} multifo, {GDNSD_NODES} addresses per resource, http_status "
                 f"monitor; time from `health NODE fail` to the address absent, polled over UDP every "
                 f"{GDNSD_POLL_S * 1000:g} ms"]  # fmt: skip
        if figures["gdnsd_default_withdraw_ms_at_least"] is not None:
            notes.append(f"default settings: {figures['gdnsd_default_timeouts']} not withdrawn within "
                         f"{GDNSD_DEFAULT_TIMEOUT_S:g} s; gdnsd_default_withdraw_ms_at_least is a lower bound")  # fmt: skip
        if not default_settings:
            notes.append("default settings not measured (--smoke; they take about 100 s)")
        figures["gdnsd_note"] = "; ".join(notes)
    except Exception as exc:  # noqa: BLE001 - the peer never breaks our own figures
        figures["gdnsd_note"] = f"peer measurement failed: {type(exc).__name__}: {str(exc)[:300]}"
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        log.close()
        if runners:
            asyncio.run_coroutine_threadsafe(stop_health(runners), sim.loop).result(10)
        sim.stop()
        sink.close()
    return figures


def gdnsd_withdrawals(sim: SimulatorThread, victims: dict[str, tuple[str, str]], dns_port: int,
                      timeout_s: float, restore: bool, label: str) -> tuple[dict[str, float], dict[str, float]]:  # fmt: skip
    """Fail every node of ``victims`` (node -> (DNS name, address)) at once; milliseconds
    until each address is gone from its name's answer, and, when ``restore``, each node is
    restored as soon as it is gone and the milliseconds until it is back. Each wait is bounded
    at ``timeout_s``: a node not gone (or not back) by then is left out, and restored at the
    end when ``restore``. Each address is polled on its own monitor's schedule, so with at most
    GDNSD_DOWN_AT_ONCE of a resource failed the samples are independent.
    """
    failed_at = {node: sim.send(f"health {node} fail") for node in victims}
    gone: dict[str, float] = {}
    restored_at: dict[str, float] = {}
    back: dict[str, float] = {}

    def waiting() -> list[str]:
        now = time.monotonic()
        out = [n for n in victims if n not in gone and now - failed_at[n] < timeout_s]
        return out + [n for n in restored_at if n not in back and now - restored_at[n] < timeout_s]

    while pending := waiting():
        replies = {}  # DNS name -> (its answer, when it came): a sample's time is its own name's
        for name in {victims[n][0] for n in pending}:
            replies[name] = (gdnsd_answer(name, dns_port), time.monotonic())
        for node in pending:
            name, ip = victims[node]
            current, at = replies[name]
            if current is None:  # no reply within 1 s: ask again
                continue
            if node not in gone:
                if ip not in current:
                    gone[node] = (at - failed_at[node]) * 1000.0
                    if restore:
                        restored_at[node] = sim.send(f"restore {node}")
            elif ip in current:
                back[node] = (at - restored_at[node]) * 1000.0
        time.sleep(GDNSD_POLL_S)
    if restore:
        for node in victims:
            if node not in gone:
                sim.send(f"restore {node}")
    for node in victims:
        took, returned = gone.get(node), back.get(node)
        line = f"> {timeout_s:g} s (timeout)" if took is None else f"{took:,.1f} ms"
        if restore and took is not None:
            line += f", back in {'timeout' if returned is None else f'{returned:,.0f} ms'}"
        print(f"  gdnsd {label:8} {node:14} withdrawn in {line}", flush=True)
    return gone, back


def ratio(peer: float | None, ours: float | None) -> float | None:
    return None if peer is None or not ours else round(peer / ours, 1)


def print_peer_table(figures: dict) -> None:
    def ms(value: float | None, lower_bound: float | None = None) -> str:
        if value is None:
            return f">= {lower_bound:,.0f} ms" if lower_bound is not None else "not measured"
        return f"{value:,.1f} ms"

    def r(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}x"

    gd_default = figures.get("gdnsd_default_withdraw_ms_p50")
    gd_default_lb = figures.get("gdnsd_default_withdraw_ms_at_least")
    gd_fast = figures.get("gdnsd_fast_withdraw_ms_p50")
    explicit, silent = (
        figures.get("explicit_withdraw_ms_p50"),
        figures.get("silent_withdraw_ms_p50"),
    )

    def of(key: str) -> str:  # how many samples each median is of
        return f"p50 of {figures.get(key, 0)}"

    rows = [
        (f"router: explicit report (power/uplinks), {of('explicit_trials')}", ms(explicit), "1.0x", "-"),
        (f"router: silent death (3 missed heartbeats), {of('silent_trials')}", ms(silent), "-", "1.0x"),
        (f"gdnsd 3 http_status, defaults (10 s x 10), {of('gdnsd_default_trials')}", ms(gd_default, gd_default_lb),
         r(ratio(gd_default, explicit)), r(ratio(gd_default, silent))),
        (f"gdnsd 3 http_status, fast (2 s x 1), {of('gdnsd_fast_trials')}", ms(gd_fast), r(ratio(gd_fast, explicit)),
         r(ratio(gd_fast, silent))),
    ]  # fmt: skip
    head = ("failed node -> absent from the answer", "time", "/ router explicit", "/ router silent")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]
    print(
        "peer, same run (ratio = peer / ours; the probe-based peer compares most fairly with our silent path):"
    )
    for row in [head, *rows]:
        print(
            "  "
            + "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            )
        )
    if figures.get("gdnsd_note"):
        print(f"  note: {figures['gdnsd_note']}")


# What --smoke changes: 2 trials, a 200-node footprint for 3 s, 1 fast gdnsd trial, no gdnsd
# defaults. Its percentiles are of 1 sample each, and their ``*_note`` says so.
SMOKE = {
    "trials": 2,
    "nodes": 200,
    "window_s": 3.0,
    "settle_s": 3.0,
    "gdnsd_fast_trials": 1,
    "gdnsd_default": False,
}


def measure(root: Path, trials: int, smoke: bool) -> dict:
    """Every part in turn: the router's failover, the heartbeat cost, the gdnsd peer, ratios."""
    nodes = SMOKE["nodes"] if smoke else FOOTPRINT_NODES
    print(f"failover on the sample deployment ({trials} trials):", flush=True)
    figures = measure_failover(root, trials)
    print(f"heartbeat cost with {nodes} simulated nodes:", flush=True)
    if smoke:
        figures.update(measure_heartbeat_cost(root, nodes, SMOKE["window_s"], SMOKE["settle_s"]))
        print("peer: gdnsd 3 with http_status monitors (fast settings only):", flush=True)
        figures.update(measure_gdnsd_peer(root, SMOKE["gdnsd_fast_trials"], SMOKE["gdnsd_default"]))
    else:
        figures.update(measure_heartbeat_cost(root))
        print("peer: gdnsd 3 with http_status monitors (about 3 minutes):", flush=True)
        figures.update(measure_gdnsd_peer(root))
    figures["ratio_gdnsd_fast_vs_router_explicit"] = ratio(
        figures["gdnsd_fast_withdraw_ms_p50"], figures["explicit_withdraw_ms_p50"]
    )
    figures["ratio_gdnsd_fast_vs_router_silent"] = ratio(
        figures["gdnsd_fast_withdraw_ms_p50"], figures["silent_withdraw_ms_p50"]
    )
    figures["ratio_gdnsd_default_vs_router_silent"] = ratio(
        figures["gdnsd_default_withdraw_ms_p50"], figures["silent_withdraw_ms_p50"]
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--trials", type=int, help="failover trials, alternately explicit and silent (default "
                                                   f"{DEFAULT_TRIALS}: 100 of each, for their p99; --smoke "
                                                   f"{SMOKE['trials']})")  # fmt: skip
    parser.add_argument("--smoke", action="store_true",
                        help="every part at the smallest size, for the test suite (about a minute); "
                             "the figures mean little")  # fmt: skip
    args = parser.parse_args(argv)
    if args.trials is None:
        args.trials = SMOKE["trials"] if args.smoke else DEFAULT_TRIALS
    if args.trials < 2:
        parser.error("--trials >= 2 (at least one explicit and one silent failure)")
    root = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    try:
        figures = measure(root, args.trials, args.smoke)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["command"] = ("python loadtest/bench_failover.py --json FILE --trials " + str(args.trials)
                          + (" --smoke" if args.smoke else ""))  # fmt: skip
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    explicit, silent_max = figures["explicit_withdraw_ms_p50"], figures["silent_withdraw_ms_max"]
    target_ok = (  # a figure not measured (no sample) does not meet its target
        explicit is not None
        and explicit < 100
        and silent_max is not None
        and silent_max <= figures["silent_bound_ms"] + 100
    )
    print(
        f"targets (explicit p50 < 100 ms; silent within bound + 100 ms): {'met' if target_ok else 'NOT met'}"
    )
    for key, value in figures.items():
        if key.endswith("_note") and key != "gdnsd_note":
            print(f"  note: {key.removesuffix('_note')}: {value}")
    print_peer_table(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
