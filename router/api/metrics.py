"""Prometheus ``GET /metrics``: what the supervisor knows, read at scrape time.

A collector reads the supervisor's own counters when Prometheus scrapes, so nothing on the
query path or the heartbeat path calls the metrics library. Names follow Prometheus
conventions (``_total`` counters, base units: seconds, bytes, Gbps as the capacity unit the
deployment uses).

The per-query series (``router_dns_queries_total`` and the two after it) are counted by the
workers themselves, in the compiled UDP path too, into memory shared with the supervisor
(router/dns/query_stats.py, router/service/query_counters.py). Their ``name`` label is
bounded by the zones: a name the zones do not hold counts as ``(other in <zone>)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.health.state import NodeState
from router.service.loaded import LoadedConfig
from router.service.publisher import DurationHistogram
from router.service.supervisor import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# A node's reason is free text with numbers in it ("held down 3.2 s more"); as a label it is
# reduced to its kind, so the series stay few and stable.
REASON_KINDS = (
    ("admin", re.compile(r"^admin:")),
    ("power", re.compile(r"power|battery")),
    ("uplink", re.compile(r"uplink")),
    ("silence", re.compile(r"missed \d+ heartbeats|no heartbeat")),
    ("load", re.compile(r"^load ")),
    ("probe", re.compile(r"probe")),
    ("ok", re.compile(r"heartbeats good|in service|no recorded problem|recovered")),
)


def reason_kind(reason: str) -> str:
    for kind, pattern in REASON_KINDS:
        if pattern.search(reason):
            return kind
    return "other"


class SupervisorCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        sup = self.supervisor
        config, table = sup.in_service()  # one config and its table for the whole scrape
        yield from _reload_metrics(sup, config)
        serving = GaugeMetricFamily(
            "router_service_serving", "1 while serving, 0 while draining (anycast withdrawn)"
        )
        serving.add_metric([], 1.0 if sup.service_state == "serving" else 0.0)
        yield serving
        generation = GaugeMetricFamily(
            "router_routing_table_generation", "generation of the routing table in service"
        )
        generation.add_metric([], float(table.generation))
        yield generation
        yield _histogram(sup.publisher.build_seconds)
        refines = CounterMetricFamily(
            "router_refines",
            "refine passes ended, by outcome: in service, no better (the plan was optimal "
            "already), dropped (a newer plan was wanted), not refined (e.g. overflow), failed",
            labels=["outcome"],
        )
        for outcome, count in sorted(sup.publisher.refine_outcomes.items()):
            refines.add_metric([outcome], float(count))
        yield refines
        yield from _cluster_metrics(sup)

        states = GaugeMetricFamily(
            "router_node_state", "1 for the state each node is in", labels=["node", "state"]
        )
        reasons = GaugeMetricFamily(
            "router_node_state_reason",
            "1 for the kind of reason of each node's state",
            labels=["node", "reason"],
        )
        load = GaugeMetricFamily(
            "router_node_load_gbps", "load the node last reported", labels=["node"]
        )
        capacity = GaugeMetricFamily(
            "router_node_capacity_gbps", "the node's capacity", labels=["node"]
        )
        monitor = config.health.monitor
        for i, status in enumerate(config.health.status()):
            for state in NodeState:
                states.add_metric(
                    [status.node_id, state.label], 1.0 if status.state == state else 0.0
                )
            reasons.add_metric([status.node_id, reason_kind(status.reason)], 1.0)
            if monitor is not None and not math.isnan(monitor.load_gbps[i]):  # NaN: never reported
                load.add_metric([status.node_id], float(monitor.load_gbps[i]))
            capacity.add_metric([status.node_id], float(config.model.node_capacity_gbps[i]))
        yield from (states, reasons, load, capacity)

        verifier = config.verifier
        if verifier is not None:
            accepted = CounterMetricFamily(
                "router_telemetry_heartbeats_accepted", "node heartbeats accepted"
            )
            accepted.add_metric([], float(verifier.accepted))
            yield accepted
            rejected = CounterMetricFamily(
                "router_telemetry_heartbeats_rejected",
                "node heartbeats rejected, by reason",
                labels=["reason"],
            )
            for reason, count in sorted(verifier.rejected.items()):
                rejected.add_metric([reason], float(count))
            yield rejected
            reboots = CounterMetricFamily(
                "router_telemetry_node_reboots",
                "new boot ids accepted from nodes already heard from (agent restarts)",
            )
            reboots.add_metric([], float(verifier.reboots))
            yield reboots
        samples = CounterMetricFamily(
            "router_rtt_samples_rejected", "RTT samples in heartbeats that could not be used"
        )
        samples.add_metric([], float(sup.intake.rtt_rejected))
        yield samples

        dns = sup.dns_counters()
        packets = CounterMetricFamily(
            "router_udp_packets", "UDP packets per worker (batched path)", labels=["worker", "kind"]
        )
        batches = CounterMetricFamily(
            "router_udp_batches", "recvmmsg batches per worker", labels=["worker"]
        )
        for w, row in enumerate(dns["workers"]):  # type: ignore[arg-type]
            for kind in ("received", "answered", "punted", "send_errors", "sampled"):
                packets.add_metric([str(w), kind], float(row[kind]))
            batches.add_metric([str(w)], float(row["batches"]))
        yield from (packets, batches)
        drops = CounterMetricFamily(
            "router_udp_receive_drops",
            "queries the kernel dropped: a worker's receive buffer was full",
        )
        drops.add_metric([], float(dns["udp_receive_drops"]))  # type: ignore[arg-type]
        yield drops
        queued = GaugeMetricFamily(
            "router_udp_receive_queue_bytes", "bytes waiting in the DNS sockets' receive queues"
        )
        queued.add_metric([], float(dns["udp_receive_queue_bytes"]))  # type: ignore[arg-type]
        yield queued
        buffer = GaugeMetricFamily(
            "router_udp_receive_buffer_bytes",
            "each DNS socket's receive buffer as the kernel reports it (twice the data it holds)",
        )
        buffer.add_metric([], float(dns["udp_receive_buffer_bytes"]))  # type: ignore[arg-type]
        yield buffer
        tcp = dns["tcp"]
        open_now = GaugeMetricFamily("router_tcp_connections", "TCP connections open")
        open_now.add_metric([], float(tcp["open"]))  # type: ignore[index]
        accepted = CounterMetricFamily("router_tcp_accepted", "TCP connections accepted")
        accepted.add_metric([], float(tcp["accepted"]))  # type: ignore[index]
        closed = CounterMetricFamily(
            "router_tcp_closed",
            "TCP connections closed by the router or the client, by reason",
            labels=["reason"],
        )
        for reason in ("idle", "partial", "unread_output", "by_peer"):
            closed.add_metric([reason], float(tcp[f"closed_{reason}"]))  # type: ignore[index]
        closed.add_metric(["evicted"], float(tcp["evicted"]))  # type: ignore[index]
        refused = CounterMetricFamily(
            "router_tcp_refused", "TCP connections refused, by the limit hit", labels=["limit"]
        )
        refused.add_metric(["per_client"], float(tcp["refused_per_client"]))  # type: ignore[index]
        yield from (open_now, accepted, closed, refused)
        limited = CounterMetricFamily(
            "router_rrl_limited",
            "UDP responses held back by response rate limiting, by class and what was done "
            "(dropped, or sent truncated so the client retries over TCP)",
            labels=["class", "action"],
        )
        for name, counts in dns["rrl"]["limited"].items():  # type: ignore[index]
            for action in ("dropped", "slipped"):
                limited.add_metric([name, action], float(counts[action]))
        rate = GaugeMetricFamily(
            "router_rrl_rate", "response rate limit per client prefix and class (0: off)"
        )
        rate.add_metric([], float(dns["rrl"]["rate"]))  # type: ignore[index]
        yield from (limited, rate)

        yield from _query_metrics(sup)

        demand = GaugeMetricFamily(
            "router_demand_qps",
            "steered queries per second, smoothed, by policy",
            labels=["zone", "policy"],
        )
        for p, compiled in enumerate(config.model.policies):
            demand.add_metric(
                [compiled.zone.to_text(), compiled.name], float(config.demand.qps[p].sum())
            )
        yield demand


def _query_metrics(sup: Supervisor) -> Iterator[Metric]:
    totals = sup.workers.query_accounts.totals()
    queries = CounterMetricFamily(
        "router_dns_queries",
        "DNS queries answered, by name label, query type, rcode and transport",
        labels=["name", "type", "rcode", "transport"],
    )
    for key, count in sorted(totals.queries.items()):
        queries.add_metric(list(key), float(count))
    yield queries
    nodes = CounterMetricFamily(
        "router_dns_node_answers", "steered answers that listed the node", labels=["node"]
    )
    for node, count in sorted(totals.node_answers.items()):
        nodes.add_metric([node], float(count))
    yield nodes
    located = CounterMetricFamily(
        "router_dns_steered_queries",
        "steered queries by how the client was located: ecs (ECS used), source (no ECS), "
        "source_ecs_not_routable (ECS address private or reserved), source_ecs_prefix_0",
        labels=["located_by"],
    )
    for way, count in sorted(totals.located.items()):
        located.add_metric([way], float(count))
    yield located


def _reload_metrics(sup: Supervisor, config: LoadedConfig) -> Iterator[Metric]:
    reloads = sup.reloader.log
    total = CounterMetricFamily(
        "router_config_reloads",
        "config reloads by result (ok, failed, unchanged)",
        labels=["result"],
    )
    for result in ("ok", "failed", "unchanged"):
        total.add_metric([result], float(getattr(reloads, result)))
    yield total
    last = reloads.last_attempt
    success = GaugeMetricFamily(
        "router_config_last_reload_successful", "1 unless the last reload attempt failed"
    )
    success.add_metric([], 0.0 if last is not None and last["result"] == "failed" else 1.0)
    yield success
    loaded = GaugeMetricFamily(
        "router_config_loaded_timestamp_seconds", "when the config in service was loaded"
    )
    loaded.add_metric([], config.loaded_at)
    yield loaded
    info = GaugeMetricFamily(
        "router_config_info",
        "the version (hash of the files) of the config in service",
        labels=["version"],
    )
    info.add_metric([config.version], 1.0)
    yield info


def _histogram(durations: DurationHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        "router_routing_table_build_seconds",
        "time to plan a routing table, by kind (full or incremental)",
        labels=["kind"],
    )
    for kind in sorted(durations.counts):
        cumulative = durations.counts[kind].cumsum()
        buckets = [
            ("+Inf" if b == float("inf") else repr(b), float(c))
            for b, c in zip(DurationHistogram.BOUNDS_S, cumulative)
        ]
        family.add_metric([kind], buckets, sum_value=durations.sums[kind])
    return family


def registry_for(supervisor: Supervisor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def _cluster_metrics(sup: Supervisor) -> Iterator[Metric]:
    """With --bus: isolated or not, the live peers and how many disagree (another config or
    table), and the bus traffic."""
    link = sup.cluster
    if link is None:
        return
    status = link.status()
    isolated = GaugeMetricFamily(
        "router_cluster_isolated", "1 while this router is cut off the bus (serving on its own)"
    )
    isolated.add_metric([], 1.0 if status["isolated"] else 0.0)
    yield isolated
    behind = GaugeMetricFamily(
        "router_cluster_behind",
        "1 while copies from the bus arrive too late to take (this router cannot keep up)",
    )
    behind.add_metric([], 1.0 if status["behind"] else 0.0)
    yield behind
    peers = GaugeMetricFamily("router_cluster_live_peers", "other routers heard within 3 s")
    peers.add_metric([], float(status["live_peers"]))
    yield peers
    disagree = GaugeMetricFamily(
        "router_cluster_disagreeing_peers",
        "live peers serving another config version or another routing table than this router",
    )
    disagree.add_metric([], float(status["disagreeing_peers"]))
    yield disagree
    counters = link.bus.counters
    bus = CounterMetricFamily(
        "router_cluster_bus_messages", "messages over the bus, by kind and direction",
        labels=["kind", "direction"],
    )  # fmt: skip
    for kind, direction, value in (
        ("heartbeat", "out", counters.heartbeats_out), ("heartbeat", "in", counters.heartbeats_in),
        ("state", "in", counters.states_in), ("demand", "in", counters.demand_in),
        ("override", "in", counters.admin_in),
    ):  # fmt: skip
        bus.add_metric([kind, direction], float(value))
    yield bus
