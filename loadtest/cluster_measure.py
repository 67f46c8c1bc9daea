"""What ``bench_cluster.py`` measures a router cluster with: nodes played in process (a failure
reported to one router only), DNS answers polled on every router, a paced query load with
ECS client subnets at known rates per router, the decisions and demand read over the API, and
the figures made of them (agreement across routers, the planned load on each node, bus
message rates, CPU per heartbeat).

Everything talks to 127.0.0.1 only, and every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.rcode

from loadtest.percentiles import MIN_SAMPLES, percentile, percentile_figure  # noqa: F401 - the bench's
from loadtest.throughput.proc import process_cpu_s, tree_pids

HOST = "127.0.0.1"
HTTP_TIMEOUT_S = 10.0
PAGE = 1000  # groups per /v1/decisions and /v1/demand page (the API's maximum)
MAX_PAGES = 100  # a walk longer than this is a bug, not a big map


# -- HTTP ----------------------------------------------------------------------------------------


def http_json(url: str, method: str = "GET", body: object = None, token: str | None = None,
              timeout: float = HTTP_TIMEOUT_S) -> tuple[int, dict]:  # fmt: skip
    """(status, JSON object) of one request; (0, {"error": ...}) when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError) as exc:
        return 0, {"error": f"{type(exc).__name__}: {exc}"}


# -- nodes, played in process ----------------------------------------------------------------------


class Nodes:
    """Every node of a deployment heartbeating to every router (router/simulator.py's
    ``Simulator`` on an event loop of its own thread), with one extra: a failure reported to
    one router only (``fail_to_one``), the node silent to the others meanwhile."""

    def __init__(
        self, zones: Path, keys: Path, targets: Sequence[tuple[str, int]], duration_s: float,
        routers: Sequence[str] = (),
    ) -> None:  # fmt: skip
        """``routers``: sign format 3 for these router ids (a lab with derived keys)."""
        from router.config import load_deployment
        from router.config.deployment import load_node_keys
        from router.simulator import Simulator

        deployment = load_deployment(zones, keys_file=keys)
        key_map, problems = load_node_keys(keys, str(keys), deployment.inventory)
        if problems:
            raise RuntimeError(f"node keys: {problems[:3]}")
        interval = deployment.health.heartbeat_interval_s if deployment.health else 1.0
        self.simulator = Simulator(
            deployment.inventory,
            key_map,
            targets[0],
            interval,
            also=tuple(targets[1:]),
            routers=tuple(routers),
        )
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.thread = threading.Thread(
            target=self._run, args=(duration_s,), name="nodes", daemon=True
        )
        self.thread.start()

    def _run(self, duration_s: float) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.simulator.run(duration_s, self.queue))

    def _on_loop(self, fn):  # noqa: ANN001, ANN202 - run fn() in the simulator's thread, its result
        done: asyncio.Future = asyncio.run_coroutine_threadsafe(self._call(fn), self.loop)
        return done.result(10)

    @staticmethod
    async def _call(fn):  # noqa: ANN001, ANN205
        return fn()

    def fail_to_one(self, node: str, router: int, power: str = "off") -> float:
        """The node stops heartbeating, and one signed heartbeat with ``power`` goes to
        router ``router`` only; the monotonic time it was sent."""

        def fail() -> float:
            sim = self.simulator.nodes[node]
            sim.silent = True  # no more heartbeats to anyone
            sim.power = power
            packet = sim.heartbeat()
            sock, address = self.simulator.socks[router]
            sent = time.monotonic()
            sock.sendto(packet, address)
            return sent

        return self._on_loop(fail)

    def restore(self, node: str) -> float:
        """Mains, uplinks up, heartbeating to every router again (at once)."""
        return self._on_loop(
            lambda: (self.simulator.command(f"restore {node}"), time.monotonic())[1]
        )

    def set_loads(self, share: float) -> float:
        """Every node reports ``share`` of its capacity as its load from now on (its next
        heartbeat at once); the sum, Gbps."""

        def set_all() -> float:
            for sim in self.simulator.nodes.values():
                sim.load_gbps = sim.node.capacity_gbps * share
                self.simulator.send(sim)
            return sum(sim.load_gbps for sim in self.simulator.nodes.values())

        return self._on_loop(set_all)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
            self.thread.join(timeout=10)
        self.simulator.close()


# -- DNS -----------------------------------------------------------------------------------------------


def query_wire(name: str, subnet: str | None, qid: int) -> bytes:
    options = []
    if subnet is not None:
        network = ipaddress.ip_network(subnet)
        options.append(dns.edns.ECSOption(str(network.network_address), network.prefixlen))
    q = dns.message.make_query(name, "A", use_edns=0, options=options, payload=1232)
    q.flags = 0  # RD clear: a resolver asking an authoritative server
    q.id = qid
    return q.to_wire()


class Asker:
    """One UDP socket asking one question at a time (with a timeout), for polling answers."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(timeout_s)
        self.timeout_s = timeout_s
        self.next_id = random.Random().randrange(65536)
        self.timeouts = 0

    def addresses(self, server: tuple[str, int], name: str, subnet: str) -> list[str] | None:
        """The A records of the answer; None when no reply came in time."""
        self.next_id = (self.next_id + 1) % 65536
        qid = self.next_id
        self.sock.sendto(query_wire(name, subnet, qid), server)
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.timeouts += 1
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                self.timeouts += 1
                return None
            try:
                reply = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            if reply.id == qid:
                return [r.address for rrset in reply.answer if rrset.rdtype == 1 for r in rrset]

    def close(self) -> None:
        self.sock.close()


@dataclass
class Stream:
    """Queries to one router at a known rate: ``wires`` in turn, ``rate`` per second."""

    server: tuple[str, int]
    wires: list[bytes]  # one per (subnet, name), repeated in proportion to its rate
    rate: float
    sent: int = 0
    answered: int = 0


class QueryLoad:
    """Paced queries to several routers from one thread (each ``Stream`` at its rate, spread
    evenly), replies counted as they come; ``stop`` ends it. Bounded by ``duration_s``."""

    def __init__(self, streams: list[Stream], duration_s: float) -> None:
        self.streams = streams
        self.duration_s = duration_s
        self.stopping = threading.Event()
        self.socks = []
        for _ in streams:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            s.setblocking(False)
            self.socks.append(s)
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="query-load", daemon=True)

    def start(self) -> QueryLoad:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def _drain(self) -> None:
        for stream, sock in zip(self.streams, self.socks):
            while True:
                try:
                    sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                stream.answered += 1

    def _run(self) -> None:
        due = [self.started] * len(self.streams)
        turn = [0] * len(self.streams)
        deadline = self.started + self.duration_s
        while not self.stopping.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            for i, stream in enumerate(self.streams):
                gap = 1.0 / stream.rate
                while due[i] <= now:
                    wire = stream.wires[turn[i] % len(stream.wires)]
                    turn[i] += 1
                    try:
                        self.socks[i].sendto(wire, stream.server)
                        stream.sent += 1
                    except (BlockingIOError, OSError):
                        pass  # a full socket buffer: not sent, not counted
                    due[i] += gap
            self._drain()
            time.sleep(0.002)
        time.sleep(0.2)
        self._drain()

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


def served_run(server: tuple[str, int], name: str, subnets: Sequence[str], count: int, rate: float,
               reply_wait_s: float = 1.0) -> dict:  # fmt: skip
    """``count`` queries at ``rate`` per second (subnets in turn), every reply read as it
    comes; answered = replies NOERROR with at least one A record, within ``reply_wait_s`` after
    the last query. Bounded: count / rate + reply_wait_s seconds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    asked: dict[int, float] = {}
    answered: set[int] = set()
    other: set[int] = set()
    started = time.monotonic()
    try:
        for k in range(count):
            qid = k % 65536
            sock.sendto(query_wire(name, subnets[k % len(subnets)], qid), server)
            asked[qid] = time.monotonic()
            while True:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, InterruptedError):
                    break
                _count_reply(data, answered, other)
            time.sleep(max(0.0, started + (k + 1) / rate - time.monotonic()))
        end = time.monotonic() + reply_wait_s
        while time.monotonic() < end and len(answered) + len(other) < len(asked):
            try:
                data = sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                time.sleep(0.005)
                continue
            _count_reply(data, answered, other)
    finally:
        sock.close()
    return {"asked": count, "answered": len(answered), "other_replies": len(other),
            "seconds": round(time.monotonic() - started, 2)}  # fmt: skip


def _count_reply(data: bytes, answered: set[int], other: set[int]) -> None:
    try:
        reply = dns.message.from_wire(data)
    except dns.exception.DNSException:
        return
    ok = reply.rcode() == dns.rcode.NOERROR and any(r.rdtype == 1 for r in reply.answer)
    (answered if ok else other).add(reply.id)


# -- decisions and demand over the API -------------------------------------------------------------


Answer = tuple  # ((node ids...), share) per answer set: one entry for a whole group


def fetch_decisions(api_url: str) -> dict:
    """Every group's answers in the table in service, walked a page at a time:
    ``{"answers": {(policy, group key): Answer}, "nodes": {...}, "generation": int}``."""
    answers: dict[tuple[str, str], Answer] = {}
    nodes: dict = {}
    generation = None
    cursor = None
    for _ in range(MAX_PAGES):
        url = f"{api_url}/v1/decisions?limit={PAGE}" + (f"&cursor={cursor}" if cursor else "")
        status, page = http_json(url)
        if status != 200:
            raise RuntimeError(f"GET {url}: {status} {str(page)[:300]}")
        if generation is None:
            generation, nodes = page["generation"], page["nodes"]
        node_ids = page["node_ids"]
        sets = [tuple(node_ids[n] for n in s) for s in page["answer_sets"]]
        keys = [g["key"] for g in page["groups"]]
        for policy, doc in page["policies"].items():
            for key, value in zip(keys, doc["answers"]):
                if isinstance(value, int):
                    answers[(policy, key)] = ((sets[value], 1.0),)
                else:
                    answers[(policy, key)] = tuple((sets[s], float(share)) for s, share in value)
        cursor = page.get("next")
        if not cursor:
            return {"answers": answers, "nodes": nodes, "generation": generation}
    raise RuntimeError(f"{api_url}/v1/decisions: more than {MAX_PAGES} pages")


def fetch_demand(api_url: str) -> dict:
    """``{"source": str, "policies": {policy: {"total_gbps", "groups": {key: Gbps}}}}``."""
    policies: dict[str, dict] = {}
    source = None
    cursor = None
    for _ in range(MAX_PAGES):
        url = f"{api_url}/v1/demand?limit={PAGE}" + (f"&cursor={cursor}" if cursor else "")
        status, page = http_json(url)
        if status != 200:
            raise RuntimeError(f"GET {url}: {status} {str(page)[:300]}")
        source = page["source"]
        for policy, doc in page["policies"].items():
            entry = policies.setdefault(policy, {"total_gbps": doc["total_gbps"], "groups": {}})
            entry["groups"].update(doc["groups"])
        cursor = page.get("next")
        if not cursor:
            return {"source": source, "policies": policies}
    raise RuntimeError(f"{api_url}/v1/demand: more than {MAX_PAGES} pages")


def agreement(sample: Sequence[dict], examples: int = 3) -> tuple[int, int, list]:
    """(group decisions identical on every router, decisions compared, a few that differ:
    [policy, group key, each router's answer]) of one sample: the answers of each router
    (``fetch_decisions(...)["answers"]``) at about the same time. A decision one router has and
    another lacks counts as not identical."""
    keys = set().union(*(s.keys() for s in sample))
    differ = sorted(k for k in keys if not all(k in s and s[k] == sample[0].get(k) for s in sample))
    shown = [[k[0], k[1], [s.get(k) for s in sample]] for k in differ[:examples]]
    return len(keys) - len(differ), len(keys), shown


def planned_load(answers: dict, demand: dict[tuple[str, str], float]) -> dict[str, float]:
    """Gbps on each node: every (policy, group) of ``demand`` (the Gbps the router actually
    receives for it) on the lead node of each of its answer sets, by the set's share (the
    capacity plan places a group's demand on the first node of each answer)."""
    load: dict[str, float] = {}
    for key, gbps in demand.items():
        for nodes, share in answers.get(key, ()):
            if nodes:
                load[nodes[0]] = load.get(nodes[0], 0.0) + gbps * share
    return load


def overruns(loads: Sequence[dict[str, float]], capacity: dict[str, float]) -> dict:
    """Sum the loads of every router's plan per node, against each node's capacity."""
    total: dict[str, float] = {}
    for load in loads:
        for node, gbps in load.items():
            total[node] = total.get(node, 0.0) + gbps
    over = {n: round(g / capacity[n], 3) for n, g in total.items() if g > capacity[n] * (1 + 1e-9)}
    util = {n: g / capacity[n] for n, g in total.items()}
    busiest = max(util, key=util.get) if util else None
    return {"overruns": len(over), "overrun_nodes": over,
            "max_utilization": round(util[busiest], 3) if busiest else 0.0, "busiest_node": busiest,
            "node_load_gbps": {n: round(g, 1) for n, g in sorted(total.items())}}  # fmt: skip


# -- the bus and the CPU --------------------------------------------------------------------------------


def varz_msgs(monitor_urls: Sequence[str]) -> dict[str, float]:
    """in_msgs and out_msgs summed over the NATS servers (/varz), and when they were read."""
    ins = outs = 0
    for url in monitor_urls:
        status, varz = http_json(f"{url}/varz")
        if status != 200:
            raise RuntimeError(f"{url}/varz: {status}")
        ins += int(varz["in_msgs"])
        outs += int(varz["out_msgs"])
    return {"in": ins, "out": outs, "at": time.monotonic()}


def msgs_per_s(before: dict, after: dict) -> dict[str, float]:
    seconds = after["at"] - before["at"]
    return {"in_msgs_per_s": round((after["in"] - before["in"]) / seconds, 1),
            "out_msgs_per_s": round((after["out"] - before["out"]) / seconds, 1),
            "msgs_per_s": round((after["in"] + after["out"] - before["in"] - before["out"]) / seconds, 1),
            "seconds": round(seconds, 2)}  # fmt: skip


def cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds so far (utime + stime, every thread) of ``pid`` and of each descendant."""
    return {p: process_cpu_s(p) for p in tree_pids(pid)}


@dataclass
class Window:
    """A measuring window over processes: CPU of each tree, from /proc, before and after."""

    pids: dict[str, int]
    before: dict[str, dict[int, float]] = field(default_factory=dict)
    after: dict[str, dict[int, float]] = field(default_factory=dict)
    started: float = 0.0
    seconds: float = 0.0

    def open(self) -> None:
        self.started = time.monotonic()
        self.before = {k: cpu_s(p) for k, p in self.pids.items()}

    def close(self) -> None:
        self.after = {k: cpu_s(p) for k, p in self.pids.items()}
        self.seconds = time.monotonic() - self.started

    def used_s(self, key: str) -> float:
        """CPU of the tree over the window (a process present at both ends)."""
        b, a = self.before[key], self.after[key]
        return sum(a[p] - b[p] for p in a if p in b)

    def changed(self, key: str) -> list[int]:
        return sorted(set(self.before[key]) ^ set(self.after[key]))
