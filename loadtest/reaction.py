"""Node down -> the first DNS answer without it, end to end, measured at the DNS socket.

    python loadtest/reaction.py --zones var/world --events 120 --json FILE
    python loadtest/reaction.py --smoke --json FILE        # zones/, a few events (the suite)

Starts the real router (``router serve``, 2 workers, telemetry and API on loopback) on a bench
copy of the deployment (below), plays every node with the node simulator in this process
(``router.simulator``, as ``bench_failover.py`` does), and for each event:

1. a node that is the first answer of some client: found by asking the router over DNS with
   ECS for a sample of client subnets (one address of each client group of the map);
2. the node's signed heartbeat saying "power off" (or every uplink down, alternately) is sent;
   the clock starts the moment the simulator hands it to the socket;
3. the client's ECS query is sent over UDP, one in flight, again as soon as each reply is read,
   until the answer no longer holds the node: that reply's arrival stops the clock;
4. the next event waits until the router has published nothing for ``QUIET_S``, so events
   never overlap. A full plan the router runs in the background (demand or load moved: it
   plans afresh beside the repairs, ``router/service/publisher.py``) is not waited for: a
   failure may come at any moment of one, as in service. Every event takes a different node down. By default they stay down (each
   event is then the one change since the last table, as a lone failure is); with
   ``restore`` each is brought back first and the bench waits until the client's answer
   holds it again (the router planned afresh: seconds at world scale).

Events are spread over how many of the sampled clients a node leads (its size in the plan),
the busiest ones always included: they are the slow repairs. An event whose answer never
changes within ``EVENT_TIMEOUT_S`` is counted (``timeouts``), not dropped from the count.

The bench copy (``bench_deployment``) links every file of the deployment and rewrites only
``deployment.yaml``: fresh node keys (the world deployment has none), a fresh state file,
health settings with no hold-down and one good report to return (``hold_down_s: 0``,
``recover_after: 1``: a restored node is back at once), and a heartbeat interval that keeps
the simulator's background heartbeats at ``heartbeats_per_s`` for the whole footprint (every
one is signed in this process, and at 20,000 nodes a second each they fell seconds behind
on two shared cores). Nothing on the node-down path depends on them: the failure is reported
at once. The figures say so (``deployment_note``).

Where the time goes: the router logs, for each table it puts in service, how long it waited
for the publisher, planned, wrote the file and waited for the workers
(``router/service/publisher.py``); ``breakdown`` holds those for a few events beside their
end-to-end figure.

Bounded: ``events`` events, each at most ``EVENT_TIMEOUT_S`` down and ``RESTORE_TIMEOUT_S``
back, the whole run ``RUN_TIMEOUT_S``; traffic only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.edns
import dns.message
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest.bench_failover import SimulatorThread, api_json  # noqa: E402
from router.config import load_deployment  # noqa: E402
from router.config.deployment import Deployment  # noqa: E402
from router.config.secrets import write_secret_file  # noqa: E402
from router.service.socket_stats import udp_socket_stats  # noqa: E402
from tests.conftest import RunningRouter, start_router  # noqa: E402

CONTRACT_KEYS = ("node_down_to_answer_ms_p50", "node_down_to_answer_ms_p99")
TARGETS_MS = {"node_down_to_answer_ms_p50": 20.0, "node_down_to_answer_ms_p99": 50.0}
EVENT_TIMEOUT_S = 5.0  # a node still answered this long after its report: a timeout
RESTORE_TIMEOUT_S = 60.0  # a full plan at world scale takes seconds on 2 busy cores
QUERY_TIMEOUT_S = 0.5  # one UDP query; a lost one is sent again
RUN_TIMEOUT_S = 3600.0
READY_TIMEOUT_S = 900.0  # a world-scale start compiles for minutes on busy cores
CLIENT_SAMPLE = 4000  # client groups asked for their first answer when choosing events
BUSIEST = 10  # the nodes leading the most sampled clients are always events
BREAKDOWN_EVENTS = 5  # the breakdown shows the first events and as many of the slowest
SAMPLE_ROUNDS = 6  # client samples at most, when the nodes of the last led no client any more
BENCH_HEALTH = {"hold_down_s": 0, "max_hold_down_s": 0, "recover_after": 1}
HEARTBEATS_PER_S = 1000.0  # the bench copy's background heartbeats, all nodes together
QUIET_S = 0.3  # no table planned for this long before an event starts
QUIET_TIMEOUT_S = 900.0  # a full plan of a 20,000-node world on two busy cores: minutes
# The publisher's "planning routing table N (...: NODE, NODE down...)" names the nodes it takes down.
PLANNED_DOWN = re.compile(r"planning routing table (\d+) \(.*?: ([^()]*?) down")
LOG_LINE = re.compile(
    r"routing table (\d+) in service on \d+ workers: ([\d.]+) ms after the change "
    r"\(waited ([\d.]+), inputs ([\d.]+), planned (\w+(?: \(\w+\))?) ([\d.]+), signed ([\d.]+), "
    r"file ([\d.]+), workers ([\d.]+) ms\)"
)


def bench_deployment(zones: Path, root: Path, heartbeats_per_s: float = HEARTBEATS_PER_S) -> Path:
    """A copy of ``zones`` for this bench (the module docstring): every file linked, and
    beside it every sibling of ``zones`` (so paths relative to deployment.yaml, ``../geodata``
    or ``cache``, name what they name for the original); a new ``deployment.yaml`` with fresh
    node keys, a fresh state file and the bench's health settings."""
    zones = zones.resolve()
    if not (zones / "deployment.yaml").is_file():
        raise ValueError(f"{zones}: no deployment.yaml (not a deployment directory)")
    settings = yaml.safe_load((zones / "deployment.yaml").read_text())
    parent = root / "bench"
    out = parent / zones.name
    out.mkdir(parents=True)
    for entry in zones.parent.iterdir():
        if entry != zones and not entry.name.startswith("."):
            (parent / entry.name).symlink_to(entry)
    for entry in zones.iterdir():
        if entry.name != "deployment.yaml" and not entry.name.startswith("."):
            (out / entry.name).symlink_to(entry)
    settings["state_file"] = str(root / "node-state.json")
    inventory = yaml.safe_load((zones / "nodes.yaml").read_text())
    keys = {n["id"]: os.urandom(32).hex() for n in inventory["nodes"]}
    (out / "bench-node-keys.yaml").unlink(missing_ok=True)  # a deployment's own, if named so
    write_secret_file(out / "bench-node-keys.yaml", yaml.safe_dump({"keys": keys}))
    health = dict(settings.get("health") or {})
    health.update(BENCH_HEALTH, keys="bench-node-keys.yaml")
    interval = max(float(health.get("heartbeat_interval_s", 1.0)), len(keys) / heartbeats_per_s)
    if interval > 60:
        raise ValueError(f"{len(keys)} nodes at {heartbeats_per_s}/s need an interval over 60 s")
    health["heartbeat_interval_s"] = round(interval, 3)
    health["startup_grace_s"] = max(float(health.get("startup_grace_s", 10.0)), 3 * interval)
    settings["health"] = health
    (out / "deployment.yaml").write_text(yaml.safe_dump(settings, sort_keys=True))
    return out


def client_sample(deployment: Deployment, count: int, rng: random.Random) -> list[str]:
    """One IPv4 /24 inside each of ``count`` client groups of the map (all, if fewer)."""
    cmap = deployment.client_map
    groups, first = np.unique(cmap.v4_group, return_index=True)
    known = [int(i) for g, i in zip(groups, first) if g != 0]
    chosen = rng.sample(known, min(count, len(known)))
    subnets = []
    for i in chosen:
        start = int(cmap.v4_start[i])
        subnets.append(f"{socket.inet_ntoa(struct.pack('!I', start & 0xFFFFFF00))}/24")
    return subnets


class Prober:
    """The client's ECS query over UDP, one in flight; a reply is matched by its id."""

    def __init__(self, router: RunningRouter, qname: str) -> None:
        self.address = (router.host, router.port)
        self.qname = qname
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(QUERY_TIMEOUT_S)
        self.queries: dict[str, bytearray] = {}
        self.next_id = random.Random(5).randrange(1 << 16)
        self.lost = 0

    def close(self) -> None:
        self.sock.close()

    def ask(self, subnet: str) -> tuple[list[str], float]:
        """The answer's addresses and the monotonic time its reply arrived."""
        wire = self.queries.get(subnet)
        if wire is None:
            address, prefix = subnet.split("/")
            query = dns.message.make_query(self.qname, "A", use_edns=0,
                                           options=[dns.edns.ECSOption(address, int(prefix))])  # fmt: skip
            wire = self.queries[subnet] = bytearray(query.to_wire())
        for _ in range(20):  # bounded: 20 lost queries in a row is a dead router
            self.next_id = (self.next_id + 1) & 0xFFFF
            wire[0:2] = self.next_id.to_bytes(2, "big")
            self.sock.sendto(wire, self.address)
            try:
                while True:
                    data = self.sock.recv(65535)
                    if data[:2] == wire[:2]:
                        break  # a late reply to an earlier query is skipped
            except TimeoutError:
                self.lost += 1
                continue
            arrived = time.monotonic()
            reply = dns.message.from_wire(data)
            return [rdata.address for rrset in reply.answer for rdata in rrset], arrived
        raise RuntimeError(f"the router at {self.address} answered none of 20 queries")


class Sender:
    """Runs a simulator command in the simulator's own loop (its sequence numbers stay its
    own) and returns the monotonic time the heartbeat was handed to the socket."""

    def __init__(self, sim: SimulatorThread) -> None:
        self.sim = sim

    def run(self, command: str) -> float:
        done = threading.Event()
        self.sent_at = 0.0
        holder: dict[str, object] = {}

        def apply() -> None:
            try:
                holder["at"] = time.monotonic()
                holder["wall"] = time.time()
                self.sim.simulator.command(command)
            except Exception as exc:  # reported in the caller's thread
                holder["error"] = exc
            done.set()

        self.sim.loop.call_soon_threadsafe(apply)
        if not done.wait(10):
            raise RuntimeError(f"the simulator did not run {command!r} within 10 s")
        if "error" in holder:
            raise RuntimeError(f"simulator command {command!r}: {holder['error']}")
        self.sent_at = float(holder["wall"])  # type: ignore[arg-type]
        return float(holder["at"])  # type: ignore[arg-type]


@dataclass
class Event:
    node: str
    ip: str
    client: str
    command: str
    leads: int  # sampled clients the node was the first answer of
    clients: list[str] = field(default_factory=list)  # every sampled client it led
    ms: float | None = None  # report sent -> first answer without the node
    polls: int = 0
    final_answer: list[str] = field(default_factory=list)
    generation: int | None = None  # the router's table after the answer changed
    before: int = 0  # the last table the router had begun planning when the report was sent
    sent_at: float = 0.0  # wall clock (the router log's clock) when the report was sent
    restored: bool = False


def choose_events(prober: Prober, clients: list[str], node_of: dict[str, str], count: int,
                  rng: random.Random) -> list[Event]:  # fmt: skip
    """``count`` events on distinct nodes that lead some client's answer: the busiest
    ``BUSIEST`` and the rest spread evenly over the ranks by clients led; then as many
    spares (an earlier event may move a node's clients away: ``still_leads``)."""
    led: dict[str, list[str]] = {}
    for client in clients:
        answer, _ = prober.ask(client)
        if answer and answer[0] in node_of:
            led.setdefault(answer[0], []).append(client)
    ranked = sorted(led, key=lambda ip: (-len(led[ip]), ip))
    if not ranked:
        raise RuntimeError("no sampled client got an answer with a node in it")
    picks = ranked[:BUSIEST]
    rest = ranked[BUSIEST:]
    want = min(count, len(ranked)) - len(picks)
    if want > 0:
        step = len(rest) / want
        picks += [rest[int(i * step)] for i in range(want)]
    chosen = set(picks)
    picks += [ip for ip in ranked if ip not in chosen][:count]  # spares, busiest first
    events = []
    for i, ip in enumerate(picks):
        node = node_of[ip]
        command = f"power {node} off" if i % 2 == 0 else f"uplink {node} down"
        clients = rng.sample(led[ip], len(led[ip]))
        events.append(Event(node, ip, clients[0], command, len(led[ip]), clients))
    return events


def still_leads(event: Event, prober: Prober) -> bool:
    """Whether the node is still in the answer of one of its clients (then that client is
    the event's): earlier events may have moved them all to other nodes."""
    for client in event.clients:
        if event.ip in prober.ask(client)[0]:
            event.client = client
            return True
    return False


def wait_all_reporting(router: RunningRouter, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        nodes = api_json(router, "/v1/nodes")["nodes"]
        if all(n["state"] == "up" for n in nodes):
            return
        if time.monotonic() > deadline:
            down = [n["id"] for n in nodes if n["state"] != "up"]
            raise RuntimeError(f"{len(down)} node(s) never came up, e.g. {down[:5]}")
        time.sleep(0.2)


class RouterLog:
    """What the router's log says of its tables: the last one it started planning and the
    last one in service (or failed), read on from where the last read stopped."""

    PLANNING = re.compile(r"planning routing table (\d+)")
    FAILED = re.compile(r"building or publishing a routing table failed")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.planning = 0
        self.done = 0
        self.lines = 0  # table lines read so far (a change says the router is still at it)

    def read(self) -> None:
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        for line in data[:end].decode(errors="replace").splitlines():
            planning, done = self.PLANNING.search(line), LOG_LINE.search(line)
            if planning:
                self.planning = max(self.planning, int(planning.group(1)))
                self.lines += 1
            elif done:
                self.done = max(self.done, int(done.group(1)))
                self.lines += 1
            elif self.FAILED.search(line):
                self.done = self.planning
                self.lines += 1

    def wait_quiet(self) -> None:
        """Until no table is being planned and none was started for QUIET_S: an event must
        be the one change of its table, not wait behind another plan."""
        deadline = time.monotonic() + QUIET_TIMEOUT_S
        quiet_since, seen = time.monotonic(), -1
        while time.monotonic() < deadline:
            self.read()
            now = time.monotonic()
            if self.planning > self.done or self.lines != seen:
                quiet_since, seen = now, self.lines
            elif now - quiet_since >= QUIET_S:
                return
            time.sleep(0.02)
        raise RuntimeError(f"the router was still planning after {QUIET_TIMEOUT_S} s")


def run_event(event: Event, prober: Prober, sender: Sender, restore: bool,
              router_log: RouterLog) -> None:  # fmt: skip
    before = event.before = router_log.planning
    sent = sender.run(event.command)
    event.sent_at = sender.sent_at
    while True:
        answer, arrived = prober.ask(event.client)
        event.polls += 1
        if event.ip not in answer:
            event.ms = (arrived - sent) * 1000.0
            event.final_answer = answer
            break
        if arrived - sent > EVENT_TIMEOUT_S:
            event.final_answer = answer
            break
    # The first table planned after the report carried it (the router was quiet before).
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while router_log.done <= before and time.monotonic() < deadline:
        time.sleep(0.01)
        router_log.read()
    event.generation = before + 1 if router_log.done > before else None
    if not restore:
        return
    sender.run(f"restore {event.node}")
    deadline = time.monotonic() + RESTORE_TIMEOUT_S
    while time.monotonic() < deadline:
        if event.ip in prober.ask(event.client)[0]:
            event.restored = True
            break
        time.sleep(0.01)


def receive_drops(port: int) -> int | None:
    """Datagrams the kernel dropped at the UDP socket(s) bound to ``port`` (None: not found)."""
    rows = [row for row in udp_socket_stats() if row.port == port]
    return sum(row.drops for row in rows) if rows else None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def read_breakdown(log: Path, events: list[Event]) -> list[dict]:
    """The router's own timing of the table each event was answered from, one row per event
    (the first table after the report that names the node among those it took down, else
    simply the first table after the report)."""
    tables = {}
    named: dict[str, list[int]] = {}  # node -> the tables whose planning line names it down
    for line in log.read_text(errors="replace").splitlines():
        planning = PLANNED_DOWN.search(line)
        if planning:
            for node in planning.group(2).split(", "):
                named.setdefault(node, []).append(int(planning.group(1)))
        match = LOG_LINE.search(line)
        if match:
            g, total, waited, inputs, kind, planned, signed_ms, file_ms, workers = match.groups()
            tables[int(g)] = {"router_ms": float(total), "waited_ms": float(waited),
                              "inputs_ms": float(inputs), "kind": kind,
                              "planned_ms": float(planned), "signed_ms": float(signed_ms),
                              "file_ms": float(file_ms),
                              "workers_ms": float(workers)}  # fmt: skip
    out = []
    for event in events:
        mine = [g for g in named.get(event.node, []) if g > event.before]
        generation = min(mine) if mine else event.generation
        if event.ms is None or generation not in tables:
            continue
        row = {"node": event.node, "end_to_end_ms": round(event.ms, 2), "generation": generation,
               "sent_at": time.strftime("%H:%M:%S", time.localtime(event.sent_at))
               + f".{int(event.sent_at * 1000) % 1000:03d}", **tables[generation]}  # fmt: skip
        # Before the change reaches the publisher (heartbeat sent, received, verified, applied)
        # and after the workers confirmed (the next query's round trip): the rest of the figure.
        # Negative when the worker that answered took the table before the last one confirmed.
        row["intake_and_query_ms"] = round(event.ms - row["router_ms"], 2)
        out.append(row)
    return out


def measure_node_down_to_answer(zones: Path, events: int, workers: int = 2,
                                root: Path | None = None, seed: int = 7, progress: bool = True,
                                restore: bool = False,
                                heartbeats_per_s: float = HEARTBEATS_PER_S) -> dict:  # fmt: skip
    """``events`` node-down events on ``zones`` (the module docstring); the figures.
    ``root``: where the bench copy and the router's log go (default: a temporary directory)."""
    if events < 1:
        raise ValueError(f"events must be at least 1, got {events}")
    started_run = time.monotonic()
    own_root = root is None
    tmp = tempfile.TemporaryDirectory(prefix="reaction-") if own_root else None
    base = Path(tmp.name) if tmp is not None else Path(root)  # type: ignore[arg-type]
    rng = random.Random(seed)
    try:
        bench = bench_deployment(zones, base, heartbeats_per_s)
        deployment = load_deployment(bench)
        qname = str(deployment.steered[0].name)
        node_of = {str(n.ipv4): n.id for n in deployment.inventory.nodes}
        log = base / "router.log"
        router = start_router(
            bench, log, "--telemetry", "127.0.0.1:0", workers=workers, ready_timeout=READY_TIMEOUT_S
        )
        assert router.telemetry is not None
        sim = SimulatorThread(
            bench, bench / "bench-node-keys.yaml", router.telemetry, RUN_TIMEOUT_S
        )
        prober = Prober(router, qname)
        telemetry_drops = None
        try:
            interval = deployment.health.heartbeat_interval_s if deployment.health else 1.0
            wait_all_reporting(router, 60 + 3 * interval)
            router_log = RouterLog(log)
            router_log.wait_quiet()  # the table planned with every node up is in service
            sender = Sender(sim)
            ran: list[Event] = []
            skipped = sampled = 0
            # Each event moves load, and the demand the probe queries make moves the plan
            # (router/service/demand.py), so nodes chosen early may lead no client by their
            # turn: then clients are sampled and nodes chosen again, a bounded number of times.
            for _ in range(SAMPLE_ROUNDS):
                if len(ran) == events or time.monotonic() - started_run > RUN_TIMEOUT_S:
                    break
                router_log.wait_quiet()
                clients = client_sample(deployment, CLIENT_SAMPLE, rng)
                sampled += len(clients)
                down = {e.node for e in ran}
                chosen = [e for e in choose_events(prober, clients, node_of, events, rng)
                          if e.node not in down]  # fmt: skip
                for event in chosen:
                    if len(ran) == events or time.monotonic() - started_run > RUN_TIMEOUT_S:
                        break
                    router_log.wait_quiet()
                    if not still_leads(event, prober):
                        skipped += 1
                        continue
                    ran.append(event)
                    run_event(event, prober, sender, restore, router_log)
                    if progress:
                        took = "timeout" if event.ms is None else f"{event.ms:.1f} ms"
                        back = "" if event.restored or not restore else ", NOT restored"
                        print(f"  event {len(ran)}/{events}: {event.node} ({event.leads} clients led) "
                              f"{took}, {event.polls} queries{back}", flush=True)  # fmt: skip
            telemetry_drops = receive_drops(router.telemetry[1])
        finally:
            prober.close()
            sim.stop()
            if not sim.thread.is_alive():
                sim.loop.close()  # SimulatorThread leaves its loop open (a script's exit closes it)
            router.stop()
            if router.process.stdout is not None:
                router.process.stdout.close()
        done = [e for e in ran if e.ms is not None or e.final_answer]
        figures = summarize(done, sampled, deployment, prober.lost)
        # Nodes passed over: an earlier event had moved every client they led elsewhere.
        figures["nodes_skipped"] = skipped
        figures["restored_between_events"] = restore
        figures["heartbeats_per_s"] = heartbeats_per_s
        # Heartbeats the kernel dropped at the router's telemetry socket (its receive buffer
        # full), over the run.
        figures["telemetry_receive_drops"] = telemetry_drops
        rows = read_breakdown(log, done)
        figures["per_event_router"] = rows
        slowest = sorted(rows[BREAKDOWN_EVENTS:], key=lambda r: -r["end_to_end_ms"])
        figures["breakdown"] = rows[:BREAKDOWN_EVENTS] + slowest[:BREAKDOWN_EVENTS]
        figures["zones"] = str(zones)
        return figures
    finally:
        if tmp is not None:
            tmp.cleanup()


def summarize(events: list[Event], sampled: int, deployment: Deployment, lost: int) -> dict:
    times = [e.ms for e in events if e.ms is not None]
    figures: dict = {
        "count": len(times),
        "events": len(events),
        "timeouts": sum(e.ms is None for e in events),
        "restored": sum(e.restored for e in events),
        "queries_lost": lost,
        "nodes": len(deployment.inventory.nodes),
        "clients_sampled": sampled,
        "event_timeout_ms": EVENT_TIMEOUT_S * 1000.0,
        "heartbeat_interval_s": deployment.health.heartbeat_interval_s
        if deployment.health
        else None,
        "deployment_note": "bench copy of the deployment: fresh keys and state file, health "
        f"{BENCH_HEALTH} so a node returns at once (nothing on the node-down path reads them), "
        f"heartbeats every max(1 s, nodes / {HEARTBEATS_PER_S:.0f}) s from the in-process simulator",
    }
    for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
        value = None
        if times:
            value = statistics.median(times) if q == 50 else percentile(times, q)
        figures[f"node_down_to_answer_ms_{name}"] = None if value is None else round(value, 2)
    figures["node_down_to_answer_ms_max"] = round(max(times), 2) if times else None
    if len(times) < 100:
        figures["node_down_to_answer_ms_p99_note"] = (
            f"p99 of {len(times)} samples; it needs at least 100 to mean p99"
        )
    # Every event that ended, with the answer it ended on (the node gone from it, or not).
    figures["per_event"] = [
        {"node": e.node, "client": e.client, "leads": e.leads, "command": e.command,
         "ms": None if e.ms is None else round(e.ms, 2), "queries": e.polls,
         "node_ip": e.ip, "final_answer": e.final_answer, "restored": e.restored}
        for e in events
    ]  # fmt: skip
    figures["targets"] = {}
    for key, limit in TARGETS_MS.items():
        value = figures[key]
        met = value is not None and value < limit
        figures["targets"][key] = {"limit_ms": limit, "value": value, "met": met}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zones", type=Path, default=REPO / "var" / "world")
    parser.add_argument("--events", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--out", type=Path, help="keep the bench copy and the router's log here")
    parser.add_argument(
        "--restore",
        action="store_true",
        help="bring each node back before the next event (a full plan each)",
    )
    parser.add_argument(
        "--heartbeats-per-s",
        type=float,
        default=HEARTBEATS_PER_S,
        help="background heartbeats of the whole footprint (sets the interval)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="zones/ (the sample), 4 events, restored"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        figures = measure_node_down_to_answer(
            REPO / "zones",
            min(args.events, 4),
            args.workers,
            root=args.out,
            restore=True,
            heartbeats_per_s=args.heartbeats_per_s,
        )
    else:
        figures = measure_node_down_to_answer(
            args.zones,
            args.events,
            args.workers,
            root=args.out,
            restore=args.restore,
            heartbeats_per_s=args.heartbeats_per_s,
        )
    for key in ("count", "timeouts", "restored", "node_down_to_answer_ms_p50",
                "node_down_to_answer_ms_p90", "node_down_to_answer_ms_p99", "node_down_to_answer_ms_max",
                "telemetry_receive_drops"):  # fmt: skip
        print(f"{key:32} {figures[key]}")
    for key, target in figures["targets"].items():
        verdict = "met" if target["met"] else "MISS"
        print(f"{key:32} target < {target['limit_ms']} ms: {verdict} ({target['value']})")
    for row in figures["breakdown"]:
        print(f"  breakdown {row}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
