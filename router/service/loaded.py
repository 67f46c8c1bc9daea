"""One load of the deployment directory, compiled and ready to serve.

Everything here is derived from the files; a reload builds a new ``LoadedConfig`` beside
the one in service and the supervisor swaps the reference once the new one is complete,
so nothing ever serves from a half-built config. Node health is carried across by node id
(``NodeHealth.carry_from``) at the moment of the swap.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from router.config.deployment import Deployment, uses_sample_keys
from router.config.nodes import Node, Site
from router.dns.answers import AnswerBook
from router.dns.dnssec import SteeredSigner, TableSignatures
from router.dns.fast_answer import FastBook, compile_book
from router.dns.query_stats import QueryLabels
from router.geo.clientmap import Groups
from router.health.monitor import NodeMonitor
from router.health.policy_probes import PolicyProbeState
from router.health.state import NodeHealth
from router.health.telemetry import Verifier
from router.service.compiled import compile_deployment, resign_time, sign_table
from router.service.config_files import ConfigFiles
from router.service.demand import DemandCounters, DemandModel
from router.service.query_counters import QueryCounters
from router.steering.build import Planner, RoutingTable
from router.steering.model import SteeringModel
from router.steering.samples import RttSamples

log = logging.getLogger("router.service")


SAMPLE_KEYS_OFF_LOOPBACK = (
    "the node keys include the published sample keys (zones/node-keys.sample.yaml), which "
    "anyone can read, and the API or telemetry is off loopback: generate real keys "
    "(router keys generate --zones DIR --out FILE) and point health.keys or --keys at them"
)


class ConfigUnusable(Exception):
    """The files are valid but cannot be served by this running process."""


@dataclass
class LoadedConfig:
    deployment: Deployment
    model: SteeringModel
    files: ConfigFiles
    loaded_at: float  # unix time
    book: AnswerBook
    fast_book: FastBook | None
    planner: Planner
    policy_probes: PolicyProbeState
    rtt: RttSamples
    node_index: dict[str, int]
    demand_counters: DemandCounters
    query_counters: QueryCounters
    demand: DemandModel
    expected_peak: np.ndarray
    health: NodeHealth
    verifier: Verifier | None
    nsid: bytes = b""  # this instance's NSID (RFC 5001; b"": none)
    cookie_secrets: tuple[bytes, ...] = ()  # DNS cookie secrets, current first (none: off)
    table_signer: SteeredSigner | None = None  # signs each table's steered answers (DNSSEC)
    resign_at: float | None = None  # unix time the zones must be signed again (None: unsigned)

    def sign(self, table: RoutingTable) -> TableSignatures | None:
        return sign_table(self.table_signer, table)

    @property
    def version(self) -> str:
        return self.files.version

    @cached_property
    def nodes_by_id(self) -> dict[str, Node]:
        return {node.id: node for node in self.deployment.inventory.nodes}

    @cached_property
    def sites_by_id(self) -> dict[str, Site]:
        return {site.id: site for site in self.deployment.inventory.sites}


def prepare(
    deployment: Deployment,
    model: SteeringModel | None,
    files: ConfigFiles,
    workers: int,
    batched: bool,
    telemetry: bool,
    telemetry_public: bool = False,
    nsid: bytes = b"",
    cookie_secret: bytes = b"",
) -> LoadedConfig:
    """Compile everything a config needs, before it serves (the slow part of a reload);
    ``model``: the deployment's, if already compiled; ``telemetry_public``: the API or
    telemetry is off loopback, where the published sample keys would let anyone in;
    ``cookie_secret``: the DNS cookie secret of this instance, used when the deployment names
    no secret file (router/dns/cookies.py)."""
    if telemetry and (deployment.health is None or deployment.node_keys is None):
        raise ConfigUnusable("--telemetry needs a health: section with keys in deployment.yaml")
    if telemetry_public and deployment.node_keys and uses_sample_keys(deployment.node_keys):
        raise ConfigUnusable(SAMPLE_KEYS_OFF_LOOPBACK)
    compiled = compile_deployment(deployment, model)
    model, book = compiled.model, compiled.book
    monitor = None
    verifier = None
    if telemetry:
        assert deployment.health is not None and deployment.node_keys is not None
        monitor = NodeMonitor(
            model.node_ids, model.node_capacity_gbps, deployment.health.settings(), time.monotonic()
        )
        if deployment.node_keys_router is None:
            verifier = Verifier(deployment.node_keys, deployment.health.replay_window_s)
        else:  # the nodes' keys for one router only (router keys derive): format 3 alone
            verifier = Verifier({}, deployment.health.replay_window_s,
                                router_keys=deployment.node_keys,
                                keys_router=deployment.node_keys_router)  # fmt: skip
    # Every lookup compiled now, so the first query never waits for numba.
    model.client_map.lookup(ipaddress.IPv4Address("192.0.2.1"))
    model.client_map.lookup(ipaddress.IPv6Address("2001:db8::1"))
    fast_book = compile_book(book, model.client_map, nsid) if batched else None
    labels = fast_book.labels if fast_book is not None else QueryLabels.from_book(book)
    return LoadedConfig(
        deployment=deployment,
        model=model,
        files=files,
        loaded_at=time.time(),
        book=book,
        fast_book=fast_book,
        planner=compiled.planner,
        policy_probes=PolicyProbeState([c.policy.probe for c in model.policies], model.node_ids),
        rtt=compiled.rtt,
        node_index={node_id: i for i, node_id in enumerate(model.node_ids)},
        demand_counters=DemandCounters(workers, len(model.policies), len(model.client_map.groups)),
        query_counters=QueryCounters(workers, labels, model.node_ids),
        demand=DemandModel(len(model.policies), len(model.client_map.groups)),
        expected_peak=np.array([p.policy.expected_peak_gbps for p in model.policies]),
        health=NodeHealth(model.node_ids, monitor),
        verifier=verifier,
        nsid=nsid,
        cookie_secrets=cookie_secrets(deployment, cookie_secret),
        table_signer=compiled.table_signer,
        resign_at=resign_time(deployment, book),
    )


def cookie_secrets(deployment: Deployment, own: bytes) -> tuple[bytes, ...]:
    """The secrets DNS cookies are made and checked with: the deployment's secret file, shared
    by every instance of the service, else this instance's own; none when cookies are off."""
    if not deployment.cookies.enabled:
        return ()
    return deployment.cookie_secrets or ((own,) if own else ())


def carry_over(new: LoadedConfig, old: LoadedConfig) -> list[str]:
    """What the running config learnt that the files do not say: node health (with the new
    files' admin_state file applied on top), the heartbeat sequence numbers (replay
    protection), the RTT averages fused from heartbeats when the client groups are the same,
    and the observed demand when the policies are the same too. Returns notes for the log."""
    notes = []
    dropped = new.health.carry_from(old.health)
    if dropped:
        notes.append(f"nodes no longer in the config: {', '.join(dropped)}")
    new.health.apply_admin_file(new.deployment.admin_state)
    if new.verifier is not None and old.verifier is not None:
        # One replay memory for the life of the process: a new key does not reopen old packets.
        new.verifier.guard = old.verifier.guard
        new.verifier.rejected = old.verifier.rejected
        new.verifier.accepted = old.verifier.accepted
        new.verifier.reboots = old.verifier.reboots
        new.verifier.copies_expected = old.verifier.copies_expected
        new.verifier.copies = old.verifier.copies
        if old.verifier.router_id:  # ValueError (the reload refused) for another router's keys
            new.verifier.for_router(old.verifier.router_id)
    same_policies = [(c.zone, c.name) for c in new.model.policies] == [
        (c.zone, c.name) for c in old.model.policies
    ]
    same_groups = _same_groups(new.model.client_map.groups, old.model.client_map.groups)
    if same_policies and same_groups:
        new.demand.qps = old.demand.qps.copy()
        new.planner.demand = old.planner.demand.copy()
    else:
        notes.append(
            "policies or client groups changed: demand starts again from the configured prior"
        )
    if same_groups:
        node_map = {
            i: new.node_index[node_id]
            for i, node_id in enumerate(old.model.node_ids)
            if node_id in new.node_index
        }
        if new.rtt.carry_from(old.rtt, node_map):
            new.planner.samples = new.rtt.csr(time.monotonic())
    elif len(old.rtt):
        notes.append(
            f"client groups changed: {len(old.rtt)} fused RTT averages dropped (the samples file is re-read)"
        )
    return notes


def _same_groups(a: Groups, b: Groups) -> bool:
    return (
        a.country == b.country
        and np.array_equal(a.asn, b.asn)
        and np.array_equal(a.lat, b.lat, equal_nan=True)
    )
