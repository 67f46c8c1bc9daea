"""Several routers on one bus (``router serve --bus ... --router-id``): what the cluster does
that one router cannot, measured on real processes against the same routers without a bus.

    python loadtest/bench_cluster.py --json FILE [--smoke]

Three labs (loadtest/cluster_lab.py: NATS servers with JetStream, routers on 127.0.0.1):

1. **The scenario lab**: 3 routers on a 3-server NATS cluster, the sample deployment, every node
   played in this process (``cluster_measure.Nodes``: router/simulator.py's simulator, sending
   every heartbeat to every router), beside **the baseline lab**: the same 3 routers without
   ``--bus`` (independent; one NATS server that no router uses), fed the same way.
   - ``global_capacity_overruns`` / ``capacity_overruns_without_bus``: skewed catchments. Each
     router receives real DNS queries (``video`` and ``www``, ECS client subnets) from its own
     subset of client groups (by region: Portugal; Spain east of Madrid; the rest), at known
     rates, skewed per group. A group's true demand is the nodes' reported load (the sum the
     routers scale demand to) times its share of all the queries sent to all routers. Once the
     demand each router plans with has converged, each router's ``/v1/decisions`` answers for the
     groups it receives, times the demand it actually receives for them, are placed on the lead
     node of each answer set (by split share) and summed over routers: a node whose sum exceeds
     its capacity (nodes.yaml) is an overrun. First, before any other query reaches the labs
     (the polls of the trials below would be demand too).
   - ``withdraw_all_routers_ms_p50`` / ``_p99``: an explicit failure (one signed heartbeat with
     power ``off``) sent to ONE router's telemetry port only, the node silent to the others;
     the node's address polled every 2 ms in the DNS answer of a client it was in, on every
     router, until gone from all: the time from the send to the last router. One at a time,
     the receiving router in turn; each victim is read down on every router afterwards (a node
     that left for another reason is ``withdraw_displaced``, no sample). A node fails again
     only ``REST_S`` after it was restored (its hold-down, and twice it: flap damping). The
     baseline: the same trial without the bus (the others see the node only go silent).
   - ``override_all_routers_ms_p50``: ``PUT /v1/nodes/{id}/admin-state {"state": "down"}`` on
     one router -> the node absent from every router's answers; then ``up`` through another.
   - ``decision_agreement``: ``/v1/decisions`` of every router sampled once a second (the three
     walks at once) through a failure scenario (failures to one router, overrides, restores),
     with the skewed load still on; each sample's share of (policy, group) decisions identical
     on all routers. The convergence second after each change (each event sent, and each node
     state change any router lists in ``/v1/changes``: the earliest router's time) is the
     sample whose walk overlaps the second after it: those are listed, and ``decision_agreement``
     is over the other samples; ``decision_agreement_raw`` includes them.
   - ``partition_served_ratio``: a router cut off the bus (``lab.partition``) answers a bounded
     run of queries: answered (NOERROR with an address) / asked; then healed.
2. **The heartbeat lab**: a synthetic deployment of 20,000 nodes (``--smoke``: 2,000;
   ``loadtest/cluster_heartbeats.py``: the sample's nodes copied, keys by ``router keys
   generate``), 3 routers on a 3-server NATS cluster, each connected to the servers directly
   (``DirectLab``: the lab's relays are Python in this process), and no simulator: a generator
   process signs a heartbeat for every node once a second and publishes it into the stream
   (core publish on ``router.heartbeat.loadgen-N`` with ``Nats-Msg-Id``, what a router
   republishes), and the routers consume and verify them. Each heartbeat is format 3 signed
   for 10 routers (the design size: the lab's and absent ones), each router holding only its
   own keys of the nodes. Over a window after they settle:
   ``telemetry_cpu_ms_per_1000_heartbeats`` is each router's CPU (utime + stime of its process
   tree, /proc) per 1,000 heartbeats it consumed (its ``/v1/cluster`` ``heartbeats_received``),
   the busiest router's, and ``telemetry_kept_up`` says whether every router consumed what was
   offered and accepted it (not stale); ``bus_msgs_per_s`` is ``in_msgs + out_msgs`` of every
   NATS server (``/varz``) over the same window. The generator's own rate and CPU are reported
   beside. A full run then does the same with one router on one NATS server (a stream of one
   replica: ``single_router_*``): 3 routers, 3 servers and the generator at 20,000/s do not fit
   in 2 cores.

Targets: withdraw p50 < 200 ms, p99 < 1 s (of at least 100 samples; the smoke's p99 is not
meaningful and says so), agreement >= 0.999 outside the convergence seconds, 0 global overruns,
partition served 1.0, 20 x telemetry_cpu_ms_per_1000_heartbeats < 500 ms per s (20,000 nodes in
under half a core per router). Every sample is reported; none is clamped or dropped (a
withdrawal not seen in time counts at the bound, marked). Every loop is bounded in count and
time; only loopback addresses.

``--smoke`` (the test suite): the same steps at the smallest size: a few trials, a 15 s
agreement scenario, 2,000 heartbeating nodes for a few seconds; its figures mean little.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loadtest.cluster_heartbeats import HeartbeatLoad, synthetic_deployment  # noqa: E402
from loadtest.cluster_lab import ClusterLab, router_supports_bus  # noqa: E402
from loadtest.cluster_measure import (  # noqa: E402
    Asker,
    Nodes,
    QueryLoad,
    Stream,
    Window,
    agreement,
    cpu_s,
    fetch_decisions,
    fetch_demand,
    msgs_per_s,
    overruns,
    percentile_figure,
    planned_load,
    query_wire,
    served_run,
    varz_msgs,
)
from loadtest.throughput.proc import process_cpu_s  # noqa: E402
from router import simulator  # noqa: E402

CONTRACT_KEYS = ("routers", "nodes", "withdraw_all_routers_ms_p50", "withdraw_all_routers_ms_p99",
                 "override_all_routers_ms_p50", "decision_agreement", "global_capacity_overruns",
                 "capacity_overruns_without_bus", "bus_msgs_per_s", "telemetry_cpu_ms_per_1000_heartbeats",
                 "partition_served_ratio")  # fmt: skip
TARGETS = {  # key: (comparison, limit, what it says)
    "withdraw_all_routers_ms_p50": ("<", 200.0, "ms"),
    "withdraw_all_routers_ms_p99": ("<", 1000.0, "ms"),
    "decision_agreement": (">=", 0.999, "outside the convergence seconds"),
    "global_capacity_overruns": ("==", 0, "nodes"),
    "partition_served_ratio": ("==", 1.0, ""),
    "telemetry_ms_per_s_at_20000_nodes": ("<", 500.0, "ms of CPU per s: half a core"),
    "single_router_telemetry_ms_per_s_at_20000_nodes": (
        "<",
        500.0,
        "ms of CPU per s: half a core (one router)",
    ),
}
ROUTERS = 3
NAME = "video.cdn.example."
NAMES = ("video.cdn.example.", "www.cdn.example.")  # the skewed load asks for both policies
# One client subnet per ISP of the sample (loadtest/bench_failover.py): the trials' clients.
CLIENTS = ["83.44.10.0/24", "47.60.1.0/24", "85.48.1.0/24", "85.241.20.0/24", "89.153.10.0/24", "94.60.1.0/24",
           "90.10.20.0/24", "105.145.1.0/24", "83.213.10.0/24"]  # fmt: skip
POLL_S = 0.002
# The demand a router plans with has converged when its shares are this close to the true ones
# (total variation distance): the router re-plans when 5 % of the demand moved.
DEMAND_TOLERANCE = 0.05
OVERRUN_LOAD_SHARE = 0.5  # of capacity, what each node reports carrying in the overrun scenario
BASE_LOAD_SHARE = simulator.BASE_LOAD_SHARE  # the rest of the time
WITHDRAW_TIMEOUT_S = 10.0
OVERRIDE_TIMEOUT_S = 10.0
# A node fails again only this long after it was restored: ~11 s to come back (3 good reports
# and the 10 s hold-down), then 2 hold-downs and 2 s (failing sooner doubles the hold-down).
REST_S = 36.0
TRIAL_GAP_S = (0.3, 0.8)  # between trials: random phases of the heartbeats
CHOOSE_TIMEOUT_S = 60.0  # no victim free for this long: stop the trials, say so
START_TIMEOUT_S = 300.0  # a lab's start (the first start of a checkout compiles)
HEARTBEAT_START_TIMEOUT_S = 900.0  # 20,000 nodes: each router loads and plans them
FULL = {"withdraw_trials": 100, "baseline_trials": 10, "override_trials": 20, "agreement_s": 60,
        "groups": 90, "load_qps": 600.0, "demand_wait_s": 180.0, "partition_queries": 2000,
        "heartbeat_nodes": 20000, "settle_s": 20.0, "window_s": 20.0, "sample_bus_s": 10.0,
        "single_router": True}  # fmt: skip
SMOKE = {"withdraw_trials": 3, "baseline_trials": 1, "override_trials": 2, "agreement_s": 10,
         "groups": 45, "load_qps": 300.0, "demand_wait_s": 40.0, "partition_queries": 400,
         "heartbeat_nodes": 2000, "settle_s": 4.0, "window_s": 4.0, "sample_bus_s": 2.0,
         "single_router": False}  # fmt: skip


class DirectLab(ClusterLab):
    """The lab with each router's ``--bus`` the NATS servers' own client ports, not the lab's
    relays: the relays are Python in this process, and at 20,000 heartbeats a second to each
    of 3 routers they would be the bottleneck (and their CPU nobody's). No partition here."""

    def router_command(self, router) -> list[str]:  # noqa: ANN001
        command = super().router_command(router)
        at = command.index("--bus")
        command[at + 1] = ",".join(
            s.client_url for s in self.nats[router.index :] + self.nats[: router.index]
        )
        return command


class IndependentLab(ClusterLab):
    """The same lab's routers without ``--bus`` (each on its own): the baseline."""

    def router_command(self, router) -> list[str]:  # noqa: ANN001
        command = super().router_command(router)
        for flag in ("--bus", "--router-id"):
            at = command.index(flag)
            del command[at : at + 2]
        return command


def log(text: str) -> None:
    print(text, flush=True)


def mark(figures: dict, phase: str) -> None:
    """The machine's 1-minute load average as a phase starts: on this shared 2-core machine
    other work (a test suite, say) can disturb a run, and this says when it did."""
    try:
        load = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    figures.setdefault("loadavg_1min_by_phase", {})[phase] = load


# -- waiting for the labs --------------------------------------------------------------------------


def wait_nodes_up(lab: ClusterLab, timeout_s: float = 60.0) -> float:
    """Seconds until every node is up (on its heartbeats) on every router."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        ok = True
        for i in range(len(lab.routers)):
            status, body = lab.api(i, "GET", "/v1/nodes")
            if status != 200 or not all(n["state"] == "up" for n in body["nodes"]):
                ok = False
                break
        if ok:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"nodes not all up on every router within {timeout_s:g} s")


def node_states(lab: ClusterLab, node: str) -> list[tuple[str, str]]:
    """(state, reason) of ``node`` on each router."""
    out = []
    for i in range(len(lab.routers)):
        status, body = lab.api(i, "GET", "/v1/nodes")
        entry = (
            next((n for n in body.get("nodes", []) if n["id"] == node), None)
            if status == 200
            else None
        )
        out.append(
            (entry["state"], entry.get("reason", "")) if entry else ("?", f"status {status}")
        )
    return out


# -- the skewed catchments -------------------------------------------------------------------------


def catchments(zones: Path, groups: int, seed: int = 5) -> dict:
    """``groups`` client groups (a subnet each), each sent to one router by region, each with a
    skewed query rate: {"subnets": [[subnet, group key, router], ...], "weights": [...]}."""
    from loadtest.throughput.queries import draw_subnets
    from router.api.decisions import group_keys
    from router.config import load_deployment
    from router.steering import compile_model

    model = compile_model(load_deployment(zones))
    client_map = model.client_map
    keys = group_keys(client_map)
    rng = random.Random(seed)
    chosen: dict[int, str] = {}
    for subnet in draw_subnets(client_map, rng, groups * 20):
        import ipaddress

        group = client_map.lookup(ipaddress.ip_network(subnet).network_address)[0]
        if group not in chosen:
            chosen[group] = subnet
        if len(chosen) == groups:
            break
    g = client_map.groups
    out = []
    for group, subnet in sorted(chosen.items()):
        country, lon = g.country[group], float(g.lon[group])
        router = 1 if country == "PT" else 2 if country == "ES" and lon > -3.7 else 0
        out.append([subnet, keys[group], router])
    counts = [sum(1 for s in out if s[2] == r) for r in range(ROUTERS)]
    if min(counts) < 3:  # a region too small in this draw: deal them out in turn instead
        for k, entry in enumerate(out):
            entry[2] = k % ROUTERS
    weights = [round(rng.lognormvariate(0.0, 1.0), 4) for _ in out]
    return {"subnets": out, "weights": weights}


def load_streams(lab: ClusterLab, plan: dict, total_qps: float) -> tuple[list[Stream], dict]:
    """One stream per router, at its catchment's rate; and the rate of each (name, group key)
    at each router: {router: {(name, group key): qps}}.

    A stream cycles through its wires, each (subnet, name) ``round(10 x weight)`` times (at
    least once), spread evenly over the cycle (each copy at its own fraction of it), so that
    any few seconds of the load carry every group in its share, not only a whole cycle."""
    weights = plan["weights"]
    rates: dict[int, dict[tuple[str, str], float]] = {r: {} for r in range(ROUTERS)}
    copies = [max(1, round(w * 10)) for w in weights]
    all_copies = sum(copies) * len(NAMES)
    streams = []
    for r in range(ROUTERS):
        slots: list[tuple[float, int, bytes]] = []
        members = [(s, c) for s, c in zip(plan["subnets"], copies) if s[2] == r]
        for k, ((subnet, key, _), count) in enumerate(members):
            for n, name in enumerate(NAMES):
                rates[r][(name, key)] = total_qps * count / all_copies
                wire = query_wire(name, subnet, 0)
                slots += [((j + 0.5 + 0.01 * n) / count, k, wire) for j in range(count)]
        slots.sort(key=lambda slot: slot[:2])
        streams.append(Stream(lab.routers[r].dns, [w for _, _, w in slots], sum(rates[r].values())))
    return streams, rates


def policy_of(lab_zones: Path) -> dict[str, str]:
    """Steered name -> policy key ("cdn.example./video")."""
    policies = yaml.safe_load((lab_zones / "cdn.example.policy.yaml").read_text())["names"]
    return {f"{label}.cdn.example.": f"cdn.example./{policy}" for label, policy in policies.items()}


def true_demand(
    rates: dict, policy: dict[str, str], total_gbps: float
) -> dict[int, dict[tuple[str, str], float]]:
    """Gbps of each (policy, group key) at each router: the traffic total split by query share."""
    all_qps = sum(q for per in rates.values() for q in per.values())
    return {r: {(policy[name], key): total_gbps * q / all_qps for (name, key), q in per.items()}
            for r, per in rates.items()}  # fmt: skip


def demand_share_error(api_url: str, expected: dict[tuple[str, str], float]) -> float | None:
    """How far the demand a router plans with is from ``expected``, as shares of their totals:
    the total variation distance (half the sum of the share differences; 0 the same, 1 nothing
    in common); None while it plans with no observed demand."""
    demand = fetch_demand(api_url)
    planned = {(p, g): v for p, doc in demand["policies"].items() for g, v in doc["groups"].items()}
    planned_total, total = sum(planned.values()), sum(expected.values())
    if demand["source"] != "observed" or planned_total <= 0:
        return None
    keys = set(planned) | set(expected)
    return (
        sum(abs(planned.get(k, 0.0) / planned_total - expected.get(k, 0.0) / total) for k in keys)
        / 2
    )


def measure_overruns(
    labs: dict[str, ClusterLab], nodes: dict[str, Nodes], sizes: dict, zones: Path
) -> dict:
    """The skewed catchments on both labs at once (same queries, same rates); the overruns."""
    plan = catchments(zones, sizes["groups"])
    policy = policy_of(zones)
    capacity = {
        n.node.id: float(n.node.capacity_gbps) for n in nodes["bus"].simulator.nodes.values()
    }
    # The nodes report carrying OVERRUN_LOAD_SHARE of their capacity: the traffic the routers
    # scale demand to (the sum), enough that the busiest nodes fill past their headroom.
    total_gbps = [n.set_loads(OVERRUN_LOAD_SHARE) for n in nodes.values()][0]
    streams, truth, loads = {}, {}, {}
    for label, lab in labs.items():
        s, rates = load_streams(lab, plan, sizes["load_qps"])
        streams[label] = s
        truth[label] = true_demand(rates, policy, total_gbps)
    load = QueryLoad(streams["bus"] + streams["baseline"], duration_s=3600).start()
    figures: dict = {"overrun_groups": len(plan["subnets"]),
                     "overrun_groups_per_router": [sum(1 for s in plan["subnets"] if s[2] == r) for r in range(ROUTERS)],
                     "overrun_qps_per_router": [round(s.rate, 1) for s in streams["bus"]],
                     "overrun_traffic_gbps": round(total_gbps, 1)}  # fmt: skip
    log(f"  {len(plan['subnets'])} groups, routers' shares of the queries "
        f"{[round(s.rate / sizes['load_qps'], 3) for s in streams['bus']]}, {total_gbps:,.0f} Gbps in all")  # fmt: skip
    started = time.monotonic()
    # With the bus a router plans with every router's demand; alone, with its own catchment's.
    expected = {(label, r): ({k: v for per in truth[label].values() for k, v in per.items()} if label == "bus"
                             else truth[label][r])
                for label in labs for r in range(ROUTERS)}  # fmt: skip
    error: dict[tuple[str, int], float | None] = {}
    try:
        while time.monotonic() - started < sizes["demand_wait_s"]:
            error = {(label, r): demand_share_error(labs[label].routers[r].api_url, want)
                     for (label, r), want in expected.items()}  # fmt: skip
            if all(e is not None and e <= DEMAND_TOLERANCE for e in error.values()):
                break
            time.sleep(1.0)
        converged = {
            f"{label}_r{r + 1}": e is not None and e <= DEMAND_TOLERANCE
            for (label, r), e in error.items()
        }
        deviation = {
            f"{label}_r{r + 1}": None if e is None else round(e, 4)
            for (label, r), e in error.items()
        }
        time.sleep(3.0)  # the plan of the demand last seen
        for label, lab in labs.items():
            per_router = []
            planned_belief = []
            for r in range(ROUTERS):
                decisions = fetch_decisions(lab.routers[r].api_url)
                per_router.append(planned_load(decisions["answers"], truth[label][r]))
                planned_belief.append(
                    round(sum(n["planned_gbps"] for n in decisions["nodes"].values()), 1)
                )
            loads[label] = overruns(per_router, capacity)
            received = [round(sum(truth[label][r].values()), 1) for r in range(ROUTERS)]
            figures[f"{label}_planned_gbps_by_router"] = planned_belief
            figures[f"{label}_received_gbps_by_router"] = received
    finally:
        load.stop()
        for n in nodes.values():
            n.set_loads(BASE_LOAD_SHARE)
    figures["overrun_node_load_share"] = OVERRUN_LOAD_SHARE
    figures["demand_converged"] = converged
    figures["demand_share_error"] = deviation
    figures["demand_tolerance"] = DEMAND_TOLERANCE
    figures["demand_wait_s"] = round(time.monotonic() - started, 1)
    figures["overrun_queries_sent"] = sum(s.sent for s in load.streams)
    figures["overrun_queries_answered"] = sum(s.answered for s in load.streams)
    figures["global_capacity_overruns"] = loads["bus"]["overruns"]
    figures["capacity_overruns_without_bus"] = loads["baseline"]["overruns"]
    for label, key in (("bus", "global"), ("baseline", "without_bus")):
        figures[f"{key}_max_node_utilization"] = loads[label]["max_utilization"]
        figures[f"{key}_busiest_node"] = loads[label]["busiest_node"]
        figures[f"{key}_overrun_nodes"] = loads[label]["overrun_nodes"]
        figures[f"{key}_node_load_gbps"] = loads[label]["node_load_gbps"]
    if not all(converged.values()):
        figures["global_capacity_overruns_note"] = (
            f"the demand had not converged on every router within {sizes['demand_wait_s']:g} s "
            f"(demand_converged): measured on the plans in service then"
        )
    return figures


# -- trials -------------------------------------------------------------------------------------------


class Victims:
    """Nodes in some client's answer on every router, free to fail."""

    def __init__(self, lab: ClusterLab, zones: Path, rng: random.Random) -> None:
        from router.config import load_deployment

        self.lab = lab
        self.rng = rng
        self.node_of = {str(n.ipv4): n.id for n in load_deployment(zones).inventory.nodes}
        self.rested: dict[str, float] = {}  # node -> when it may fail again (monotonic)
        self.asker = Asker()

    def answers(self, client: str, name: str = NAME) -> list[list[str] | None]:
        return [self.asker.addresses(r.dns, name, client) for r in self.lab.routers]

    def choose(self) -> tuple[str, str, str] | None:
        """(client, node, its address), or None when every candidate is resting."""
        now = time.monotonic()
        for client in self.rng.sample(CLIENTS, len(CLIENTS)):
            answers = self.answers(client)
            if any(a is None for a in answers) or any(set(a) != set(answers[0]) for a in answers):
                continue
            for ip in answers[0]:
                node = self.node_of.get(ip)
                others = [
                    x
                    for x in answers[0]
                    if x != ip and self.rested.get(self.node_of.get(x, ""), 0) <= now
                ]
                if node and self.rested.get(node, 0.0) <= now and others:
                    return client, node, ip
        return None

    def wait_gone(
        self, client: str, ip: str, started: float, timeout_s: float, gone: bool = True
    ) -> list[float | None]:
        """Milliseconds from ``started`` until ``ip`` is absent (``gone``) or present again on
        each router's answer for ``client``, polled every POLL_S; None where not in time."""
        seen: list[float | None] = [None] * len(self.lab.routers)
        while time.monotonic() - started < timeout_s and any(s is None for s in seen):
            for i, router in enumerate(self.lab.routers):
                if seen[i] is not None:
                    continue
                addresses = self.asker.addresses(router.dns, NAME, client)
                if addresses is not None and (ip not in addresses) == gone:
                    seen[i] = (time.monotonic() - started) * 1000.0
            time.sleep(POLL_S)
        return seen


def explicit_trials(
    lab: ClusterLab, nodes: Nodes, zones: Path, count: int, label: str, seed: int
) -> dict:
    """``count`` failures, each reported to one router only (in turn); the time to the last."""
    victims = Victims(lab, zones, random.Random(seed))
    trials = []
    gave_up = None
    started_all = time.monotonic()
    limit = count + max(2, count // 10)  # displaced trials are replaced, up to this many in all
    attempts = 0
    while sum(1 for t in trials if not t["displaced"]) < count and attempts < limit:
        choice = choose_victim(victims)
        if choice is None:
            gave_up = f"no node free to fail for {CHOOSE_TIMEOUT_S:g} s"
            break
        attempts += 1
        client, node, ip = choice
        to = len(trials) % len(lab.routers)
        sent = nodes.fail_to_one(node, to)
        seen = victims.wait_gone(client, ip, sent, WITHDRAW_TIMEOUT_S)
        states = node_states(lab, node)
        restored = nodes.restore(node)
        victims.rested[node] = restored + REST_S
        timed_out = any(s is None for s in seen)
        last = WITHDRAW_TIMEOUT_S * 1000.0 if timed_out else max(seen)
        trial = {"node": node, "client": client, "to": lab.routers[to].router_id, "ms_by_router": seen,
                 "ms": round(last, 1), "timed_out": timed_out, "states": [s for s, _ in states],
                 "reasons": [r for _, r in states], "displaced": any(s != "down" for s, _ in states)}  # fmt: skip
        trials.append(trial)
        shown = " ".join("-" if s is None else f"{s:.1f}" for s in seen)
        log(f"  {label} trial {len(trials)}: {node:13} to {trial['to']}: gone in {shown} ms"
            f"{' (TIMEOUT: counted at the bound)' if timed_out else ''}"
            f"{' (displaced: ' + ','.join(s for s, _ in states) + ')' if trial['displaced'] else ''}")  # fmt: skip
        time.sleep(victims.rng.uniform(*TRIAL_GAP_S))
    victims.asker.close()
    clean = [t for t in trials if not t["displaced"]]
    return {"trials": clean, "displaced": [t for t in trials if t["displaced"]], "gave_up": gave_up,
            "seconds": round(time.monotonic() - started_all, 1)}  # fmt: skip


def withdraw_figures(result: dict, prefix: str) -> dict:
    trials = result["trials"]
    samples = [t["ms"] for t in trials]
    figures: dict = {}
    percentile_figure(figures, f"{prefix}_ms_p50", samples, 50)
    percentile_figure(figures, f"{prefix}_ms_p99", samples, 99)
    figures[f"{prefix}_ms_max"] = round(max(samples), 1) if samples else None
    figures[f"{prefix}_samples"] = len(samples)
    figures[f"{prefix}_timeouts"] = sum(t["timed_out"] for t in trials)
    figures[f"{prefix}_displaced"] = len(result["displaced"])
    # The receiving router's own withdrawal, and the others' (through the bus, or silence).
    local = [t["ms_by_router"][int(t["to"][1:]) - 1] for t in trials]
    others = [
        s for t in trials for i, s in enumerate(t["ms_by_router"]) if i != int(t["to"][1:]) - 1
    ]
    percentile_figure(
        figures, f"{prefix}_receiving_router_ms_p50", [s for s in local if s is not None], 50
    )
    percentile_figure(
        figures, f"{prefix}_other_routers_ms_p50", [s for s in others if s is not None], 50
    )
    by_silence = sum(1 for t in trials for r in t["reasons"] if "missed" in r)
    figures[f"{prefix}_other_routers_down_by_silence"] = by_silence
    if figures[f"{prefix}_timeouts"]:
        figures[f"{prefix}_ms_note"] = (
            f"{figures[f'{prefix}_timeouts']} trial(s) not gone from every router within "
            f"{WITHDRAW_TIMEOUT_S:g} s: counted at {WITHDRAW_TIMEOUT_S * 1000:,.0f} ms, a lower bound"
        )
    if result["gave_up"]:
        figures[f"{prefix}_stopped"] = result["gave_up"]
    figures[f"{prefix}_trials"] = trials + result["displaced"]
    figures[f"{prefix}_seconds"] = result["seconds"]
    return figures


def choose_victim(victims: Victims):  # noqa: ANN201 - Victims.choose's (client, node, ip) or None
    """A node free to fail (rested since its last trial), waiting up to CHOOSE_TIMEOUT_S."""
    waited = time.monotonic()
    while time.monotonic() - waited < CHOOSE_TIMEOUT_S:
        choice = victims.choose()
        if choice is not None:
            return choice
        time.sleep(0.5)
    return None


def override_trials(lab: ClusterLab, zones: Path, count: int, seed: int) -> dict:
    """PUT down on one router (in turn) -> absent on all; PUT up on the next -> back on all."""
    victims = Victims(lab, zones, random.Random(seed))
    down_ms, up_ms, trials = [], [], []
    for k in range(count):
        choice = choose_victim(victims)
        if choice is None:
            break
        client, node, ip = choice
        via, back_via = k % len(lab.routers), (k + 1) % len(lab.routers)
        started = time.monotonic()
        status, _ = lab.api(via, "PUT", f"/v1/nodes/{node}/admin-state", {"state": "down"})
        seen = victims.wait_gone(client, ip, started, OVERRIDE_TIMEOUT_S)
        started_up = time.monotonic()
        status_up, _ = lab.api(back_via, "PUT", f"/v1/nodes/{node}/admin-state", {"state": "up"})
        back = victims.wait_gone(client, ip, started_up, OVERRIDE_TIMEOUT_S, gone=False)
        victims.rested[node] = time.monotonic() + 2.0
        timed_out = any(s is None for s in seen)
        down = OVERRIDE_TIMEOUT_S * 1000.0 if timed_out else max(seen)
        down_ms.append(down)
        if all(s is not None for s in back):
            up_ms.append(max(back))
        trials.append({"node": node, "via": lab.routers[via].router_id, "put_status": [status, status_up],
                       "ms_by_router": seen, "back_ms_by_router": back, "timed_out": timed_out})  # fmt: skip
        log(f"  override {k + 1}: {node:13} down via {lab.routers[via].router_id}: gone in "
            f"{' '.join('-' if s is None else f'{s:.1f}' for s in seen)} ms; up via "
            f"{lab.routers[back_via].router_id}: back in {' '.join('-' if s is None else f'{s:.1f}' for s in back)} ms")  # fmt: skip
        time.sleep(victims.rng.uniform(*TRIAL_GAP_S))
    victims.asker.close()
    figures: dict = {}
    percentile_figure(figures, "override_all_routers_ms_p50", down_ms, 50)
    percentile_figure(figures, "override_up_all_routers_ms_p50", up_ms, 50)
    figures["override_samples"] = len(down_ms)
    figures["override_timeouts"] = sum(t["timed_out"] for t in trials)
    figures["override_trials"] = trials
    return figures


# -- agreement ------------------------------------------------------------------------------------------


def walk(lab: ClusterLab, i: int, results: list) -> None:
    """Router ``i``'s decisions into ``results[i]`` (a thread of its own)."""
    results[i] = fetch_decisions(lab.routers[i].api_url)


def agreement_scenario(lab: ClusterLab, nodes: Nodes, zones: Path, seconds: int) -> dict:
    """/v1/decisions of every router once a second through failures, overrides and restores."""
    victims = Victims(lab, zones, random.Random(17))
    picked: list[tuple[str, str, str]] = []
    for _ in range(3):
        choice = victims.choose()
        if choice is None:
            break
        picked.append(choice)
        victims.rested[choice[1]] = time.monotonic() + 3600
    if len(picked) < 2:
        raise RuntimeError("agreement scenario: fewer than 2 nodes free to fail")
    a, b = picked[0][1], picked[1][1]
    c = picked[2][1] if len(picked) > 2 else None
    f = seconds / 60.0  # the full scenario's times, scaled
    events = [(5 * f, f"fail {a} to r1", lambda: nodes.fail_to_one(a, 0)),
              (15 * f, f"override {b} down via r2", lambda: lab.api(1, "PUT", f"/v1/nodes/{b}/admin-state", {"state": "down"})),
              (25 * f, f"restore {a}", lambda: nodes.restore(a)),
              (35 * f, f"override {b} up via r3", lambda: lab.api(2, "PUT", f"/v1/nodes/{b}/admin-state", {"state": "up"}))]  # fmt: skip
    if c is not None:
        events += [(45 * f, f"fail {c} to r3", lambda: nodes.fail_to_one(c, 2)),
                   (50 * f, f"restore {c}", lambda: nodes.restore(c))]  # fmt: skip
    victims.asker.close()
    wall0, mono0 = time.time(), time.monotonic()
    samples: list[dict] = []
    fired: list[dict] = []
    pending = list(events)
    for second in range(seconds):
        at = mono0 + second
        while pending and pending[0][0] <= second:
            _, what, action = pending.pop(0)
            fired.append({"what": what, "at_s": round(time.monotonic() - mono0, 3)})
            action()
        time.sleep(max(0.0, at - time.monotonic()))
        results: list = [None] * len(lab.routers)

        threads = [
            threading.Thread(target=walk, args=(lab, i, results)) for i in range(len(lab.routers))
        ]
        begin = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        end = time.monotonic()
        if any(r is None for r in results):
            raise RuntimeError(
                f"agreement scenario: a /v1/decisions walk failed at second {second}"
            )
        same, total, differ = agreement([r["answers"] for r in results])
        samples.append({"second": second, "from_s": round(begin - mono0, 3), "to_s": round(end - mono0, 3),
                        "identical": same, "decisions": total, "generations": [r["generation"] for r in results],
                        **({"differing_examples": differ} if differ else {})})  # fmt: skip
    for _, what, action in pending:  # a scenario cut short still restores what it failed
        fired.append(
            {"what": what, "at_s": round(time.monotonic() - mono0, 3), "after_the_window": True}
        )
        action()
    # Each node state change any router lists (its earliest time over the routers) is a change too.
    changes: dict[tuple[str, str, str], float] = {}
    for i in range(len(lab.routers)):
        _, body = lab.api(i, "GET", "/v1/changes")
        for ch in body.get("changes", []):
            at_s = ch["time"] - wall0
            if 0 <= at_s <= seconds + 1:
                key = (ch["node"], ch["from"], ch["to"])
                # The same change on several routers: the earliest (changes of a node are
                # seconds apart: the hold-down).
                changes[key] = min(changes.get(key, math.inf), at_s)
    change_times = sorted(
        [e["at_s"] for e in fired if not e.get("after_the_window")] + list(changes.values())
    )
    convergence = []
    for s in samples:
        if any(s["to_s"] >= t and s["from_s"] < t + 1.0 for t in change_times):
            convergence.append(s["second"])
    inside = [s for s in samples if s["second"] not in convergence]
    raw_same = sum(s["identical"] for s in samples)
    raw_total = sum(s["decisions"] for s in samples)
    out_same = sum(s["identical"] for s in inside)
    out_total = sum(s["decisions"] for s in inside)
    figures = {
        "decision_agreement": round(out_same / out_total, 6) if out_total else None,
        "decision_agreement_raw": round(raw_same / raw_total, 6) if raw_total else None,
        "agreement_seconds": len(samples),
        "agreement_convergence_seconds": convergence,
        "agreement_events": fired,
        "agreement_state_changes": [
            {"node": k[0], "from": k[1], "to": k[2], "at_s": round(v, 3)}
            for k, v in sorted(changes.items(), key=lambda kv: kv[1])
        ],  # fmt: skip
        "agreement_disagreeing_seconds": [
            s["second"] for s in samples if s["identical"] < s["decisions"]
        ],
        "agreement_by_second": samples,
    }
    return figures


# -- partition --------------------------------------------------------------------------------------------


def partition_run(lab: ClusterLab, queries: int) -> dict:
    """Router 3 cut off the bus answers ``queries`` queries at 200/s (from the moment of the
    cut); its /v1/cluster read every 0.1 s meanwhile; then healed, and the time until it says
    it is on the bus again."""
    i = len(lab.routers) - 1
    seen: list[tuple[float, object]] = []  # (seconds since the cut, isolated)
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            _, body = lab.api(i, "GET", "/v1/cluster")
            seen.append((time.monotonic() - cut_at, body.get("isolated")))
            watching.wait(0.1)

    lab.partition(i)
    cut_at = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = served_run(lab.routers[i].dns, NAME, CLIENTS, queries, 200.0)
    finally:
        watching.set()
        watcher.join(10)
        lab.heal(i)
    healed_at = time.monotonic()
    rejoined = None
    while time.monotonic() - healed_at < 30.0:
        _, status = lab.api(i, "GET", "/v1/cluster")
        if status.get("isolated") is False:
            rejoined = round(time.monotonic() - healed_at, 2)
            break
        time.sleep(0.1)
    isolated_at = next((round(t, 2) for t, v in seen if v is True), None)
    return {"partition_served_ratio": round(result["answered"] / result["asked"], 6),
            "partition_asked": result["asked"], "partition_answered": result["answered"],
            "partition_other_replies": result["other_replies"], "partition_seconds": round(healed_at - cut_at, 2),
            "partition_isolated_after_s": isolated_at,
            "partition_isolated_share_of_reads": round(sum(v is True for _, v in seen) / len(seen), 3) if seen else None,
            "partition_rejoined_s": rejoined, "partitioned_router": lab.routers[i].router_id}  # fmt: skip


# -- the heartbeat lab ------------------------------------------------------------------------------------


def cluster_bus_status(lab: ClusterLab, i: int) -> dict:
    status, body = lab.api(i, "GET", "/v1/cluster")
    if status != 200:
        raise RuntimeError(f"{lab.routers[i].router_id} /v1/cluster: {status} {str(body)[:200]}")
    return body


def router_counters(lab: ClusterLab, i: int) -> dict:
    """Router ``i``'s heartbeat counters and its CPU (its process tree), read together."""
    router = lab.routers[i]
    cpu = cpu_s(router.pid)
    bus = cluster_bus_status(lab, i)
    _, telemetry = lab.api(i, "GET", "/v1/telemetry")
    return {"at": time.monotonic(), "cpu": sum(cpu.values()), "pids": list(cpu),
            "consumed": bus["bus"]["heartbeats_received"], "generation": bus["table_generation"],
            "accepted": telemetry["accepted"], "rejected": telemetry["rejected"]}  # fmt: skip


DESIGN_ROUTERS = 10  # the design size: every heartbeat carries a MAC for each of 10


def signed_for(routers: list[str]) -> tuple[str, ...]:
    """The routers a synthetic heartbeat is signed for: the lab's, then absent ones up to the
    design size, so that each packet is as long, and as costly to read, as at 10 routers."""
    absent = [f"absent-{i}" for i in range(len(routers) + 1, DESIGN_ROUTERS + 1)]
    return tuple(routers + absent)


class HeartbeatLab:
    """``count`` synthetic nodes heartbeating once a second through the stream into 3 routers:
    ``prepare`` makes the deployment and starts the lab (minutes at 20,000 nodes), ``measure``
    runs the generator and reads the window, ``stop`` ends the lab."""

    def __init__(
        self, root: Path, count: int, routers: int = ROUTERS, nats_servers: int = 3
    ) -> None:
        self.root = root
        self.count = count
        self.routers = routers
        self.nats_servers = nats_servers
        self.lab: ClusterLab | None = None
        self.error: BaseException | None = None
        self.prepared: dict = {}

    def prepare(self) -> None:
        try:
            t = time.monotonic()
            if not (self.root / "synthetic" / "zones").is_dir():
                synthetic_deployment(self.root / "synthetic", self.count)
                self.prepared["heartbeat_deployment_s"] = round(time.monotonic() - t, 1)
            self.zones = self.root / "synthetic" / "zones"
            self.keys = self.zones / "node-keys.yaml"
            # One NATS server holds one replica of the stream and the bucket.
            extra = [] if self.nats_servers >= 3 else ["--bus-replicas", str(self.nats_servers)]
            self.lab = DirectLab(self.zones, self.root / f"heartbeat-lab-{self.routers}", routers=self.routers,
                                 nats_servers=self.nats_servers, simulator=False, keys=self.keys,
                                 router_args=extra)  # fmt: skip
            t = time.monotonic()
            self.lab.start(timeout=HEARTBEAT_START_TIMEOUT_S)
            self.prepared["heartbeat_routers_start_s"] = round(time.monotonic() - t, 1)
            deadline = time.monotonic() + 60
            while not all(
                cluster_bus_status(self.lab, i)["bus"]["connected"] for i in range(self.routers)
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError("the routers did not all connect to the bus")
                time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - re-raised by measure(), in the main thread
            self.error = exc

    def stop(self) -> None:
        if self.lab is not None:
            self.lab.stop()

    def measure(self, settle_s: float, window_s: float, generators: int) -> dict:
        if self.error is not None:
            raise RuntimeError(f"the heartbeat lab did not start: {self.error}") from self.error
        lab = self.lab
        assert lab is not None
        load = HeartbeatLoad(self.keys, self.zones / "nodes.yaml", [s.client_url for s in lab.nats],
                             duration_s=settle_s + window_s + 60, processes=generators,
                             router_ids=signed_for(lab.router_ids()))  # fmt: skip
        load.start()
        try:
            time.sleep(settle_s)
            pids = {s.name: s.pid for s in lab.nats}
            pids.update({f"loadgen-{k}": p for k, p in enumerate(load.pids())})
            window = Window(pids)
            window.open()
            bench_before = process_cpu_s(
                os.getpid()
            )  # this process alone (its children are the lab)
            before = [router_counters(lab, i) for i in range(self.routers)]
            varz_before = varz_msgs([s.monitor_url for s in lab.nats])
            time.sleep(window_s)
            varz_after = varz_msgs([s.monitor_url for s in lab.nats])
            after = [router_counters(lab, i) for i in range(self.routers)]
            window.close()
            self.prepared["bench_process_cores"] = round(
                (process_cpu_s(os.getpid()) - bench_before) / window.seconds, 3
            )
        finally:
            generated = load.stop()
        return heartbeat_figures(self.count, lab, window, before, after, varz_before, varz_after, generators,
                                 generated, self.prepared)  # fmt: skip


def heartbeat_figures(count: int, lab: ClusterLab, window: Window, before: list, after: list, varz_before: dict,
                      varz_after: dict, generators: int, generated: list, prepared: dict) -> dict:  # fmt: skip
    seconds = window.seconds
    per_router = []
    for i, router in enumerate(lab.routers):
        b, a = before[i], after[i]
        consumed = a["consumed"] - b["consumed"]
        seconds_i = a["at"] - b["at"]
        used = a["cpu"] - b["cpu"]
        per_router.append({
            "router": router.router_id, "consumed": consumed, "consumed_per_s": round(consumed / seconds_i, 1),
            "accepted": a["accepted"] - b["accepted"],
            "rejected": {k: v - b["rejected"].get(k, 0) for k, v in a["rejected"].items() if v - b["rejected"].get(k, 0)},
            "cpu_s": round(used, 3), "cores": round(used / seconds_i, 3), "seconds": round(seconds_i, 2),
            "cpu_ms_per_1000_heartbeats": round(used * 1000.0 / (consumed / 1000.0), 2) if consumed else None,
            "tables_built": a["generation"] - b["generation"],
            "processes_changed": sorted(set(a["pids"]) ^ set(b["pids"])),
        })  # fmt: skip
    costs = [r["cpu_ms_per_1000_heartbeats"] for r in per_router]
    worst = None if any(c is None for c in costs) else max(costs)
    offered = sum(g["rate_per_s"] for g in generated) if generated else 0.0
    # A router keeps up when it consumes what is offered (within 5 %) and accepts it (not stale).
    kept_up = all(
        r["consumed_per_s"] >= 0.95 * count and r["accepted"] >= 0.99 * r["consumed"]
        for r in per_router
    )
    rates = msgs_per_s(varz_before, varz_after)
    nats_cores = [round(window.used_s(s.name) / seconds, 3) for s in lab.nats]
    gen_cores = [round(window.used_s(f"loadgen-{k}") / seconds, 3) for k in range(generators)]
    figures = {
        "nodes": count,
        "heartbeat_deployment": f"synthetic: the sample's 18 nodes copied to {count:,} (jittered positions, own "
        "addresses, keys by `router keys generate`), the sample's client map and policies",
        **prepared,
        "heartbeat_window_s": round(seconds, 2),
        "telemetry_cpu_ms_per_1000_heartbeats": worst,
        "telemetry_ms_per_s_at_20000_nodes": None if worst is None else round(20 * worst, 1),
        "telemetry_by_router": per_router,
        "telemetry_routers": len(lab.routers),
        "telemetry_heartbeats_signed_for_routers": len(signed_for(lab.router_ids())),
        "telemetry_nats_servers": len(lab.nats),
        "telemetry_kept_up": kept_up,
        "bus_msgs_per_s": rates["msgs_per_s"],
        "bus_in_msgs_per_s": rates["in_msgs_per_s"],
        "bus_out_msgs_per_s": rates["out_msgs_per_s"],
        "nats_cores": nats_cores,
        "generator_processes": generators,
        "generator_cores_in_window": gen_cores,
        "generator": generated,
        "generator_rate_per_s": round(offered, 1) if generated else None,
    }
    if not kept_up:
        figures["telemetry_cpu_ms_per_1000_heartbeats_note"] = (
            f"the routers did not keep up with {count:,} heartbeats/s (consumed per s: "
            f"{[r['consumed_per_s'] for r in per_router]}; accepted {[r['accepted'] for r in per_router]} of "
            f"{[r['consumed'] for r in per_router]}, the rest {sorted({k for r in per_router for k in r['rejected']})}):"
            " CPU per heartbeat consumed, of an overloaded machine"
        )
    if worst is None:
        figures["telemetry_cpu_ms_per_1000_heartbeats_note"] = (
            "a router consumed no heartbeat in the window"
        )
    return figures


# -- the run ----------------------------------------------------------------------------------------------


def ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else round(value / baseline, 3)


def targets(figures: dict) -> dict:
    out = {}
    for key, (op, limit, unit) in TARGETS.items():
        value = figures.get(key)
        met = None
        if value is not None:
            met = {"<": value < limit, ">=": value >= limit, "==": value == limit}[op]
        out[key] = {"value": value, "target": f"{op} {limit:g}", "unit": unit, "met": met}
    return out


def print_table(figures: dict) -> None:
    rows = [
        ("withdraw, all routers, p50 (ms)", "withdraw_all_routers_ms_p50", "< 200", "withdraw_without_bus_ms_p50"),
        ("withdraw, all routers, p99 (ms)", "withdraw_all_routers_ms_p99", "< 1000", "withdraw_without_bus_ms_p99"),
        ("  the receiving router alone, p50 (ms)", "withdraw_all_routers_receiving_router_ms_p50", "", None),
        ("  the other routers, p50 (ms)", "withdraw_all_routers_other_routers_ms_p50", "", None),
        ("override, all routers, p50 (ms)", "override_all_routers_ms_p50", "", None),
        ("decision agreement (outside convergence)", "decision_agreement", ">= 0.999", None),
        ("decision agreement (raw)", "decision_agreement_raw", "", None),
        ("capacity overruns (nodes)", "global_capacity_overruns", "0", "capacity_overruns_without_bus"),
        ("busiest node's utilization", "global_max_node_utilization", "", "without_bus_max_node_utilization"),
        ("partition served ratio", "partition_served_ratio", "1.0", None),
        ("bus msgs/s (all NATS servers, in + out)", "bus_msgs_per_s", "", None),
        ("telemetry CPU ms / 1000 heartbeats", "telemetry_cpu_ms_per_1000_heartbeats", "", None),
        ("  x 20 (20,000 nodes): ms of CPU per s", "telemetry_ms_per_s_at_20000_nodes", "< 500", None),
        ("  the routers kept up", "telemetry_kept_up", "", None),
        ("one router alone: CPU ms / 1000 heartbeats", "single_router_telemetry_cpu_ms_per_1000_heartbeats", "", None),
        ("  x 20 (20,000 nodes): ms of CPU per s", "single_router_telemetry_ms_per_s_at_20000_nodes", "< 500", None),
        ("  it kept up", "single_router_telemetry_kept_up", "", None),
    ]  # fmt: skip

    def text(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)

    head = ("figure", "with the bus", "target", "without the bus", "ratio")
    table = [head]
    for label, key, target, base in rows:
        value, baseline = figures.get(key), figures.get(base) if base else None
        r = (
            ratio(value, baseline)
            if isinstance(value, (int, float)) and isinstance(baseline, (int, float))
            else None
        )
        table.append(
            (label, text(value), target, text(baseline) if base else "", text(r) if base else "")
        )
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        log(
            "  "
            + "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )


def measure(root: Path, sizes: dict, smoke: bool) -> dict:
    from tests.conftest import make_deployment

    zones = make_deployment(root / "sample")
    keys = zones / "node-keys.sample.yaml"
    figures: dict = {"routers": ROUTERS, "smoke": smoke}
    labs = {"bus": ClusterLab(zones, root / "bus-lab", routers=ROUTERS, nats_servers=3, simulator=False),
            "baseline": IndependentLab(zones, root / "baseline-lab", routers=ROUTERS, nats_servers=1,
                                       simulator=False, derived_keys=False)}  # fmt: skip
    nodes: dict[str, Nodes] = {}
    heartbeats = HeartbeatLab(root, sizes["heartbeat_nodes"])
    # --smoke starts the heartbeat lab beside the others (its figures mean little anyway); a
    # full run starts it after them: starting 20,000-node routers takes both cores for minutes.
    preparing = threading.Thread(target=heartbeats.prepare, daemon=True)
    if smoke:
        preparing.start()
    try:
        t = time.monotonic()
        starters = [
            threading.Thread(target=lab.start, kwargs={"timeout": START_TIMEOUT_S})
            for lab in labs.values()
        ]
        for s in starters:
            s.start()
        for s in starters:
            s.join(START_TIMEOUT_S + 30)
        for label, lab in labs.items():
            if not all(r.running for r in lab.routers):
                raise RuntimeError(f"the {label} lab did not start: see {lab.workdir}")
        for label, lab in labs.items():
            nodes[label] = Nodes(zones, keys, [r.telemetry for r in lab.routers], duration_s=7200,
                                 routers=lab.router_ids() if lab.derived_keys else ())  # fmt: skip
        for lab in labs.values():
            wait_nodes_up(lab)
        log(
            f"labs up in {time.monotonic() - t:.1f} s (3 routers on 3 NATS servers; 3 routers alone)"
        )
        figures["scenario_nodes"] = len(nodes["bus"].simulator.nodes)

        log("skewed catchments, both labs at once (before any other query):")
        mark(figures, "overruns")
        figures.update(measure_overruns(labs, nodes, sizes, zones))

        log(f"explicit failure reported to one router ({sizes['withdraw_trials']} trials):")
        mark(figures, "withdrawals")
        result = explicit_trials(
            labs["bus"], nodes["bus"], zones, sizes["withdraw_trials"], "bus", seed=3
        )
        figures.update(withdraw_figures(result, "withdraw_all_routers"))
        log(f"the same without the bus ({sizes['baseline_trials']} trials):")
        result = explicit_trials(
            labs["baseline"], nodes["baseline"], zones, sizes["baseline_trials"], "alone", seed=4
        )
        figures.update(withdraw_figures(result, "withdraw_without_bus"))
        nodes.pop("baseline").stop()
        labs.pop("baseline").stop()

        lab = labs["bus"]
        log(f"overrides ({sizes['override_trials']} trials):")
        mark(figures, "overrides")
        figures.update(override_trials(lab, zones, sizes["override_trials"], seed=8))

        before = varz_msgs([s.monitor_url for s in lab.nats])
        time.sleep(sizes["sample_bus_s"])
        rates = msgs_per_s(before, varz_msgs([s.monitor_url for s in lab.nats]))
        figures["sample_bus_msgs_per_s"] = rates["msgs_per_s"]

        log(f"agreement: /v1/decisions of every router once a second for {sizes['agreement_s']} s:")
        mark(figures, "agreement")
        plan = catchments(zones, sizes["groups"])
        streams, _ = load_streams(lab, plan, sizes["load_qps"])
        load = QueryLoad(streams, duration_s=sizes["agreement_s"] + 120).start()
        try:
            figures.update(agreement_scenario(lab, nodes["bus"], zones, sizes["agreement_s"]))
            log(f"  convergence seconds {figures['agreement_convergence_seconds']}; disagreeing seconds "
                f"{figures['agreement_disagreeing_seconds']}")  # fmt: skip
            log("partition: router r3 cut off the bus answers:")
            figures.update(partition_run(lab, sizes["partition_queries"]))
        finally:
            load.stop()
        for n in nodes.values():
            n.stop()
        nodes.clear()
        for lab in labs.values():
            lab.stop()
        log(f"heartbeats of {sizes['heartbeat_nodes']:,} nodes through the stream into 3 routers:")
        mark(figures, "heartbeats")
        if not smoke:
            preparing.start()
        preparing.join(HEARTBEAT_START_TIMEOUT_S + 120)
        figures.update(
            heartbeats.measure(sizes["settle_s"], sizes["window_s"], sizes.get("generators", 1))
        )
        heartbeats.stop()
        if sizes.get("single_router"):
            # What one router alone consumes, with the second core for NATS and the generator:
            # 3 routers, 3 NATS servers and the generator at 20,000/s do not fit in 2 cores.
            log("the same, one router on one NATS server (a stream of 1 replica):")
            mark(figures, "heartbeats_one_router")
            single = HeartbeatLab(root, sizes["heartbeat_nodes"], routers=1, nats_servers=1)
            try:
                single.prepare()
                part = single.measure(
                    sizes["settle_s"], sizes["window_s"], sizes.get("generators", 1)
                )
            finally:
                single.stop()
            skip = ("nodes", "heartbeat_deployment", "heartbeat_deployment_s")
            figures.update({f"single_router_{k}": v for k, v in part.items() if k not in skip})
    finally:
        for n in nodes.values():
            n.stop()
        for lab in labs.values():
            lab.stop()
        if preparing.is_alive():
            preparing.join(HEARTBEAT_START_TIMEOUT_S + 120)
        heartbeats.stop()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, type=Path, help="write the figures here")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest sizes (the test suite); figures mean little",
    )
    parser.add_argument(
        "--generators", type=int, default=1, help="heartbeat generator processes (default 1)"
    )
    parser.add_argument("--keep", type=Path, help="keep the labs' files (logs) in this directory")
    args = parser.parse_args(argv)
    if not router_supports_bus():
        print(
            "bench_cluster: `router serve --help` has no --bus: nothing to measure", file=sys.stderr
        )
        return 2
    sizes = dict(SMOKE if args.smoke else FULL, generators=args.generators)
    started = time.monotonic()
    when = datetime.datetime.now(datetime.UTC)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        figures = measure(root, sizes, args.smoke)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    mark(figures, "end")
    figures["targets"] = targets(figures)
    figures["withdraw_ratio_without_bus_p50"] = ratio(figures.get("withdraw_without_bus_ms_p50"),
                                                      figures.get("withdraw_all_routers_ms_p50"))  # fmt: skip
    figures["command"] = "python loadtest/bench_cluster.py --json FILE" + (
        " --smoke" if args.smoke else ""
    )
    figures["sizes"] = sizes
    figures["started"] = when.isoformat(timespec="seconds")
    figures["duration_s"] = round(time.monotonic() - started, 1)
    figures["machine"] = f"{os.cpu_count()} cores"
    try:
        figures["source"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True, timeout=10, check=False).stdout.strip()  # fmt: skip
    except OSError:
        figures["source"] = None
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    log("")
    log(f"figures ({'--smoke: small sizes, figures mean little' if args.smoke else 'full run'}):")
    print_table(figures)
    for key, target in figures["targets"].items():
        verdict = "n/a" if target["met"] is None else ("met" if target["met"] else "NOT met")
        log(f"  target {key} {target['target']} {target['unit']}: {target['value']} {verdict}")
    for key, value in figures.items():
        if key.endswith("_note"):
            log(f"  note: {key.removesuffix('_note')}: {value}")
    log(
        f"  decision agreement: convergence seconds (left out) {figures.get('agreement_convergence_seconds')}"
    )
    log(f"  heartbeat lab: {figures['nodes']:,} nodes, {figures['heartbeat_deployment']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
