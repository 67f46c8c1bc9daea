"""The synthetic resolvers at work: client queries in, cached or sent to the router, answers out.

One thread, one loop, bounded by the run's duration and query cap. Each resolver has its own
UDP socket on its own loopback address (127.64.0.1 and up), so the router sees thousands of
distinct sources, as it would on the Internet. Each client query (Zipf-popular name, the
client's subnet) is answered from the resolver's cache when an answer for that name is still
within its TTL and its ECS scope covers the client (RFC 7871 section 7.3.1), otherwise sent
with EDNS (and Client Subnet, /24 or /56, where the resolver sends it). Every client query is
one row of ``Records``; the analysis (``loadtest.analyze``) works on those rows afterwards,
so the loop only records.

The node simulator runs in the same loop: its heartbeats, the scenario's commands at their
times, and each node's reported load, which is what the answers sent it (``gbps_per_qps``
per client query per second) on top of the load outside this test.
"""

from __future__ import annotations

import bisect
import collections
import random
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from loadtest.population import ECS_V4_BITS, ECS_V6_BITS, Catalogue, Resolver
from loadtest.scenario import Scenario
from loadtest.traffic import carry_step, rate
from router._gc import collector_paused
from router.simulator import Simulator

RCODE_TIMEOUT = -1  # no reply within the resolvers' timeout
RCODE_UNANSWERED = -2  # still waiting when the run ended
BATCH = 256  # client queries generated between two looks at the sockets
HOUSEKEEPING_S = 0.02
EDNS_UDP_SIZE = 1232
MIN_CACHE_TTL_S = 0  # a TTL of 0 is not cached (RFC 1035 section 3.2.1)
# The kernel stamps each reply as it arrives on the socket (Linux <asm-generic/socket.h>;
# Python's socket module does not export the name). A reply is timed by that stamp, not by
# when this single-threaded generator got round to reading it: its own pauses (a garbage
# collection, a busy CPU) are not the router's latency.
SO_TIMESTAMPNS = 35
STAMP_SPACE = socket.CMSG_SPACE(16)  # struct timespec


@dataclass
class Records:
    """One row per client query, in the order they were asked."""

    t: np.ndarray  # float64: seconds since the start, when the client asked
    question: np.ndarray  # int32: index into the catalogue
    family: np.ndarray  # int8: 4 or 6, the client's subnet
    client_hi: np.ndarray  # uint64: the subnet (IPv4: in client_lo; IPv6: high and low 64 bits)
    client_lo: np.ndarray
    ecs: np.ndarray  # bool: the query carried the subnet (else the router saw only the resolver)
    cached: np.ndarray  # bool: answered from the resolver's cache
    t_done: np.ndarray  # float64: when the answer came (cached: at once)
    rcode: np.ndarray  # int16: DNS rcode, RCODE_TIMEOUT or RCODE_UNANSWERED
    node1: np.ndarray  # int16: first and second address of the answer as node indexes, -1 if none
    node2: np.ndarray
    served: (
        np.ndarray
    )  # int16: the node the client ends up on (the first address that works), -1 if none
    truncated: np.ndarray  # bool
    n: int = 0

    @classmethod
    def allocate(cls, size: int) -> Records:
        def z(dtype):  # noqa: ANN001, ANN202
            return np.zeros(size, dtype=dtype)

        records = cls(z(np.float64), z(np.int32), z(np.int8), z(np.uint64), z(np.uint64), z(np.bool_),
                      z(np.bool_), z(np.float64), z(np.int16), z(np.int16), z(np.int16), z(np.int16),
                      z(np.bool_))  # fmt: skip
        records.rcode[:] = RCODE_UNANSWERED
        records.node1[:] = -1
        records.node2[:] = -1
        records.served[:] = -1
        records.t_done[:] = np.nan
        return records

    def trimmed(self) -> Records:
        kept = {
            name: getattr(self, name)[: self.n] for name in self.__dataclass_fields__ if name != "n"
        }
        return Records(**kept, n=self.n)


@dataclass
class Event:
    """One simulator command, as played."""

    t: float  # seconds since the start
    command: str
    failure: int  # index in the scenario's failures
    repeat: int
    ack: str = ""
    available: np.ndarray | None = None  # bool[N]: the ground truth after it
    external_gbps: np.ndarray | None = None  # float64[N]: load from outside this test after it


@dataclass
class Play:
    records: Records
    events: list[Event]
    node_available_at_start: np.ndarray
    external_gbps_at_start: np.ndarray
    started_wall: float
    elapsed_s: float
    sent: int = 0
    received: int = 0
    unmatched: int = 0  # replies that matched no question in flight (late, or garbled)
    send_errors: int = 0
    backlog_dropped: int = 0  # client queries the generator could not send in time
    stopped_by: str = "duration"


def parse_reply(
    data: bytes, qlen: int, node_of: dict[bytes, int]
) -> tuple[int, int, int, int, int, bool]:
    """(rcode, node1, node2, ttl, scope, truncated) of a reply whose question is ``qlen`` bytes.

    Addresses are those of A/AAAA records in the answer section (after any CNAME); the TTL is
    the smallest in the answer, or for a negative answer the SOA's (RFC 2308 section 5).
    """
    flags = data[2] << 8 | data[3]
    ancount, nscount, arcount = struct.unpack_from("!HHH", data, 6)
    pos = 12 + qlen
    n1 = n2 = -1
    ttl = -1
    scope = -1
    end = len(data)
    for section, count in ((0, ancount), (1, nscount), (2, arcount)):
        for _ in range(count):
            while pos < end:  # the owner name: labels up to a root label or a pointer
                length = data[pos]
                if length >= 0xC0:
                    pos += 2
                    break
                pos += length + 1
                if length == 0:
                    break
            rtype, _, rttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            pos += 10
            if section == 0:
                if rtype in (1, 28):
                    node = node_of.get(data[pos : pos + rdlen], -1)
                    if n1 < 0:
                        n1 = node
                    elif n2 < 0:
                        n2 = node
                ttl = rttl if ttl < 0 else min(ttl, rttl)
            elif section == 1 and rtype == 6 and ancount == 0:
                minimum = struct.unpack_from("!I", data, pos + rdlen - 4)[0]
                ttl = min(rttl, minimum)
            elif section == 2 and rtype == 41:
                opt = pos
                while opt + 4 <= pos + rdlen:
                    code, olen = struct.unpack_from("!HH", data, opt)
                    if code == 8 and olen >= 4:
                        scope = data[opt + 7]
                    opt += 4 + olen
            pos += rdlen
    return flags & 0xF, n1, n2, max(ttl, 0), scope, bool(flags & 0x0200)


def ecs_option(family: int, network: int) -> bytes:
    """The OPT record of a query: EDNS(0), and Client Subnet when ``family`` is 4 or 6."""
    if family == 4:
        body = struct.pack("!HBB", 1, ECS_V4_BITS, 0) + (network >> 8).to_bytes(3, "big")
    elif family == 6:
        body = struct.pack("!HBB", 2, ECS_V6_BITS, 0) + (network >> 72).to_bytes(7, "big")
    else:
        body = b""
    options = struct.pack("!HH", 8, len(body)) + body if body else b""
    return b"\x00" + struct.pack("!HHIH", 41, EDNS_UDP_SIZE, 0, len(options)) + options


class Player:
    def __init__(
        self,
        scenario: Scenario,
        catalogue: Catalogue,
        resolvers: tuple[Resolver, ...],
        target: tuple[str, int],
        node_ids: tuple[str, ...],
        node_of: dict[bytes, int],
        high_water: float,
        simulator: Simulator | None,
        seed: int,
        capacity: int,
    ) -> None:
        self.scenario = scenario
        self.catalogue = catalogue
        self.resolvers = resolvers
        self.target = target
        self.node_of = node_of
        self.high_water = high_water
        self.simulator = simulator
        self.rng = random.Random(seed)
        self.records = Records.allocate(capacity)
        self.node_ids = list(node_ids)  # the model's order: node indexes mean the same everywhere

    # -- the simulator's ground truth ---------------------------------------------------------

    def _truth(self) -> tuple[np.ndarray, np.ndarray]:
        """(available, external load) of every node as the simulator plays it now."""
        if self.simulator is None:
            return np.ones(len(self.node_ids), dtype=np.bool_), np.zeros(len(self.node_ids))
        nodes = [self.simulator.nodes[i] for i in self.node_ids]
        external = np.array([n.load_gbps for n in nodes])
        available = np.array(
            [
                n.healthy()
                and n.power == "mains"
                and n.load_gbps <= self.high_water * n.node.capacity_gbps
                for n in nodes
            ]
        )
        return available, external

    # A full collection over the caches' many small tuples paused the generator for 40-90 ms:
    # sending stalled, and the figures showed the generator's pause. The run makes no
    # reference cycles, so nothing is lost by waiting.
    @collector_paused()
    def run(self, on_second: Callable[[dict], None] | None = None) -> Play:
        scenario = self.scenario
        duration = scenario.duration_s
        max_queries = min(scenario.max_queries, len(self.records.t))
        rec = self.records
        questions = self.catalogue.questions
        picks = self.catalogue.picks
        pick_cum = self.catalogue.pick_cum
        twin = self.catalogue.aaaa_twin
        kind_cum = self.catalogue.kind_cum
        aaaa_share = scenario.names.aaaa_share
        resolvers = self.resolvers
        n_resolvers = len(resolvers)
        timeout = scenario.resolvers.timeout_ms / 1000.0
        gbps_per_qps = scenario.traffic.gbps_per_qps
        session_s = scenario.traffic.session_s
        rng = self.rng.random
        rand_index = self.rng.randrange
        node_of = self.node_of
        n_nodes = len(self.node_ids)

        # Sockets: one per resolver, bound to its own loopback address.
        ep = select.epoll()
        socks: list[socket.socket] = []
        sock_of_fd: dict[int, int] = {}
        try:
            for r in resolvers:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.bind((r.address, 0))
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                socks.append(s)
                sock_of_fd[s.fileno()] = r.index
                ep.register(s.fileno(), select.EPOLLIN)
            # Per resolver and subnet: the OPT record to send and the subnet as record columns.
            opts = []
            for r in resolvers:
                opts.append([ecs_option(fam if r.ecs else 0, net) for fam, net in r.subnets])
            caches: list[dict] = [dict() for _ in resolvers]
            plens: list[set] = [set() for _ in resolvers]  # (family, prefix length) cached
            pending: dict[int, int] = {}  # resolver << 16 | id -> record row
            in_flight: collections.deque[tuple[float, int, int]] = collections.deque()
            self._available, self._external = self._truth()
            play = Play(rec, [], self._available, self._external, time.time(), 0.0)
            timeline = self._timeline()
            node_count = [0] * (n_nodes + 1)  # client answers per node this second (last: none)
            offered_gbps = np.zeros(n_nodes)
            seconds_done = 0
            target = self.target
            sendto_ok = 0
            t0 = time.monotonic()
            # Kernel stamps are wall-clock time: this converts them to the run's clock. It is
            # taken again at every housekeeping, so a step of the wall clock mistimes only the
            # replies stamped on one side of it and converted on the other.
            wall_at_t0 = time.time() - (time.monotonic() - t0)
            last = 0.0
            due = 0.0
            n = 0
            next_house = 0.0
            next_second = 1.0
            second_stats = {"sent": 0, "answered": 0, "timeouts": 0, "cached": 0, "latency": []}
            if self.simulator is not None:
                self.simulator.beat_due(t0)

            def serving(n1: int, n2: int) -> int:
                """The node a client ends up on: the first address that works (-1: none)."""
                if n1 >= 0 and self._available[n1]:
                    return n1
                if n2 >= 0 and self._available[n2]:
                    return n2
                return -1

            def answer_cached(row: int, entry: tuple, now: float) -> None:
                rec.cached[row] = True
                rec.t_done[row] = now
                rec.rcode[row] = entry[1]
                rec.node1[row] = entry[2]
                rec.node2[row] = entry[3]
                served = rec.served[row] = serving(entry[2], entry[3])
                node_count[served] += 1

            def receive(fd: int) -> None:
                """One reply: match it to its question, record it, cache it."""
                r = sock_of_fd[fd]
                try:
                    data, ancillary, _, _ = socks[r].recvmsg(4096, STAMP_SPACE)
                except OSError:
                    return  # nothing after all, or e.g. ICMP port unreachable while the router restarts
                got = None
                for level, kind, stamp in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= 16:
                        sec, nsec = struct.unpack_from("=qq", stamp)
                        got = sec + nsec * 1e-9 - wall_at_t0
                if got is None:  # no stamp came with it: when it was read is the best we know
                    got = time.monotonic() - t0
                if len(data) < 12:
                    play.unmatched += 1
                    return
                key = r << 16 | (data[0] << 8 | data[1])
                row = pending.pop(key, None)
                if row is None:
                    play.unmatched += 1
                    return
                qi = int(rec.question[row])
                wire = questions[qi].wire
                if data[12 : 12 + len(wire)] != wire:
                    play.unmatched += 1
                    pending[key] = row
                    return
                try:
                    rcode, n1, n2, ttl, scope, tc = parse_reply(data, len(wire), node_of)
                except (struct.error, IndexError):
                    play.unmatched += 1
                    pending[key] = row
                    return
                play.received += 1
                rec.t_done[row] = got
                rec.rcode[row] = rcode
                rec.node1[row] = n1
                rec.node2[row] = n2
                served = rec.served[row] = serving(n1, n2)
                rec.truncated[row] = tc
                node_count[served] += 1
                second_stats["answered"] += 1
                second_stats["latency"].append(got - rec.t[row])
                if ttl > MIN_CACHE_TTL_S and not tc:
                    fam = int(rec.family[row])
                    if scope <= 0 or not rec.ecs[row]:
                        key = (qi, 0, 0, 0)
                        fam = plen = 0
                    else:
                        plen = min(scope, ECS_V4_BITS if fam == 4 else ECS_V6_BITS)
                        net = (
                            int(rec.client_lo[row])
                            if fam == 4
                            else int(rec.client_hi[row]) << 64 | int(rec.client_lo[row])
                        )
                        key = (qi, fam, plen, net >> ((32 if fam == 4 else 128) - plen))
                    caches[r][key] = (got + ttl, rcode, n1, n2)
                    if rec.ecs[row]:
                        plens[r].add((fam, plen))

            while True:
                now = time.monotonic() - t0
                if now >= duration:
                    break
                if n >= max_queries:
                    play.stopped_by = "max_queries"
                    break
                offered = rate(scenario.traffic, duration, now)
                due += offered * (now - last)
                last = now
                limit = offered * 0.1 + BATCH
                if due > limit:  # the generator fell behind: do not burst to catch up
                    play.backlog_dropped += int(due - limit)
                    due = limit
                burst = min(int(due), BATCH, max_queries - n)
                due -= burst
                for _ in range(burst):
                    r = rand_index(n_resolvers)
                    res = resolvers[r]
                    u = rng()
                    kind = 0 if u < kind_cum[0] else (1 if u < kind_cum[1] else 2)
                    names = picks[kind]
                    qi = names[min(bisect.bisect_right(pick_cum[kind], rng()), len(names) - 1)]
                    if qi in twin and rng() < aaaa_share:
                        qi = twin[qi]
                    si = rand_index(len(res.subnets))
                    fam, net = res.subnets[si]
                    row = n
                    n += 1
                    rec.t[row] = now
                    rec.question[row] = qi
                    rec.family[row] = fam
                    if fam == 4:
                        rec.client_lo[row] = net
                    else:
                        rec.client_hi[row] = net >> 64
                        rec.client_lo[row] = net & 0xFFFFFFFFFFFFFFFF
                    rec.ecs[row] = res.ecs
                    # The resolver's cache: any answer for this question whose scope covers us.
                    cache = caches[r]
                    hit = None
                    if res.ecs:
                        bits = 32 if fam == 4 else 128
                        for f, plen in plens[r]:
                            if f != fam and plen:
                                continue
                            key = (qi, f, plen, net >> (bits - plen) if plen else 0)
                            entry = cache.get(key)
                            if entry is not None and entry[0] > now:
                                hit = entry
                                break
                    else:
                        entry = cache.get((qi, 0, 0, 0))
                        if entry is not None and entry[0] > now:
                            hit = entry
                    if hit is not None:
                        answer_cached(row, hit, now)
                        second_stats["cached"] += 1
                        continue
                    qid = rand_index(65536)
                    key = r << 16 | qid
                    if key in pending:  # that id is in flight from this resolver: pick another
                        qid = (qid + 1) & 0xFFFF
                        key = r << 16 | qid
                    packet = (
                        struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1)
                        + questions[qi].wire
                        + opts[r][si]
                    )
                    rec.t[row] = time.monotonic() - t0  # the burst before it took time to send
                    try:
                        socks[r].sendto(packet, target)
                        sendto_ok += 1
                    except OSError:
                        play.send_errors += 1
                        rec.rcode[row] = RCODE_TIMEOUT
                        continue
                    pending[key] = row
                    in_flight.append((now, key, row))
                    second_stats["sent"] += 1

                wait = 0.0 if due >= 1 else min(0.002, max(0.0, (1 - due) / max(offered, 1.0)))
                for fd, _ in ep.poll(wait, 1024):
                    receive(fd)

                now = time.monotonic() - t0
                if now >= next_house:
                    next_house = now + HOUSEKEEPING_S
                    wall_at_t0 = time.time() - (time.monotonic() - t0)
                    while in_flight and in_flight[0][0] < now - timeout:
                        _, key, row = in_flight.popleft()
                        if pending.get(key) == row:
                            del pending[key]
                            rec.rcode[row] = RCODE_TIMEOUT
                            second_stats["timeouts"] += 1
                    while timeline and timeline[0].t <= now:
                        event = timeline.pop(0)
                        event.t = now
                        self._apply(event, offered_gbps)
                        play.events.append(event)
                    if self.simulator is not None:
                        self.simulator.beat_due(time.monotonic())
                if now >= next_second:
                    next_second += 1.0
                    counts = np.array(node_count[:n_nodes], dtype=np.float64)
                    offered_gbps = carry_step(
                        offered_gbps if seconds_done else None, counts, gbps_per_qps, session_s
                    )
                    seconds_done += 1
                    node_count = [0] * (n_nodes + 1)
                    self._report_load(offered_gbps)
                    lat = second_stats["latency"]
                    stats = {
                        "t": round(now, 3), "queries": n, "sent": second_stats["sent"], "answered": second_stats["answered"],
                        "cached": second_stats["cached"], "timeouts": second_stats["timeouts"],
                        "p99_ms": float(np.percentile(lat, 99) * 1000) if lat else None,
                        "offered_qps": offered,
                    }  # fmt: skip
                    second_stats = {
                        "sent": 0,
                        "answered": 0,
                        "timeouts": 0,
                        "cached": 0,
                        "latency": [],
                    }
                    if on_second is not None:
                        on_second(stats)

            # Give the last replies their timeout, then stop.
            end = time.monotonic() - t0
            while pending and time.monotonic() - t0 < end + timeout:
                for fd, _ in ep.poll(0.01, 1024):
                    receive(fd)
            for row in pending.values():
                if time.monotonic() - t0 - rec.t[row] >= timeout:
                    rec.rcode[row] = RCODE_TIMEOUT
            rec.n = n
            play.sent = sendto_ok
            play.elapsed_s = min(time.monotonic() - t0, max(end, 1e-9))
            play.records = rec.trimmed()
            return play
        finally:
            for s in socks:
                s.close()
            ep.close()

    # -- the failure timeline -----------------------------------------------------------------

    def _timeline(self) -> list[Event]:
        events = []
        for i, failure in enumerate(self.scenario.failures):
            for k in range(failure.repeat_times):
                at = failure.at_s + k * (failure.repeat_every_s or 0.0)
                events.append(Event(at, failure.do, i, k))
        events.sort(key=lambda e: (e.t, e.failure, e.repeat))
        return events

    def _apply(self, event: Event, offered_gbps: np.ndarray) -> None:
        """Play one command; the nodes' reported load stays external + what this test sends them."""
        if self.simulator is None:
            raise RuntimeError(
                "a failure timeline needs the node simulator (the router's telemetry address)"
            )
        self._report_load(
            np.zeros(len(self.node_ids))
        )  # the command sees (and may set) outside load only
        event.ack = self.simulator.command(event.command)
        event.available, event.external_gbps = self._truth()
        self._available, self._external = event.available, event.external_gbps
        self._report_load(offered_gbps)

    def _report_load(self, offered_gbps: np.ndarray) -> None:
        """What each simulated node reports carrying: outside load plus what this test sends it."""
        if self.simulator is None:
            return
        for i, node_id in enumerate(self.node_ids):
            self.simulator.nodes[node_id].load_gbps = self._external[i] + offered_gbps[i]
