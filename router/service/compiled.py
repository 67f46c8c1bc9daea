"""A deployment compiled to what answers: the one set-up that serve, explain, plan and the
benchmarks share.

``compile_deployment`` turns a loaded ``Deployment`` into its steering model, its answers
(zone records and steered names) and a planner seeded with the deployment's RTT samples.
``router serve`` builds its ``LoadedConfig`` on top of it (``router/service/loaded.py``);
``router explain``, ``router plan`` and the benchmarks plan a table from it offline, with
``last_known_health`` standing in for the heartbeats a running router would have.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import dns.rdataclass
import dns.rdatatype
import numpy as np

from router.config.deployment import Deployment
from router.dns.answers import AnswerBook
from router.dns.dnssec import SigningTimes, SteeredSigner, TableSignatures, ZoneSigner
from router.dns.engine import Responder, TableView
from router.health.monitor import NodeMonitor
from router.health.state import NodeHealth, NodeState
from router.steering.build import Planner, RoutingTable
from router.steering.model import SteeringModel, compile_model
from router.steering.samples import RttSamples, seeded_samples

log = logging.getLogger("router.service")


def zone_signers(deployment: Deployment, now: float | None = None) -> dict:
    """A signer for each zone that has DNSSEC keys, signing as of ``now`` (default: now)."""
    settings = deployment.dnssec
    if settings is None:
        return {}
    times = SigningTimes(
        time.time() if now is None else now,
        settings.signature_validity_days * 86400,
        settings.inception_backdate_s,
        settings.expiry_jitter,
    )
    signers = {}
    for origin, zone in deployment.zones.items():
        keys = [key for key in deployment.dnssec_keys if key.zone == origin]
        if not keys:
            continue
        soa = zone.get_node(origin).get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA)
        signer = ZoneSigner(origin, keys, times, dnskey_ttl=soa.ttl)
        if not signer.data_keys() or not signer.key_signers():
            # The keys' schedule leaves no key to sign with now (router check warns of it).
            log.warning("DNSSEC: %s has no key that signs its %s now: served unsigned", origin,
                        "data" if not signer.data_keys() else "DNSKEY set")  # fmt: skip
            continue
        signers[origin] = signer
    return signers


def build_book(
    deployment: Deployment, model: SteeringModel, now: float | None = None
) -> AnswerBook:
    """The zones' records and the steered names, with every node's addresses; the zones
    with DNSSEC keys signed as of ``now``."""
    steered = [(name, policy, model.policies[policy].policy.ttl) for name, policy in model.steered]
    addresses = list(zip(model.node_ipv4, model.node_ipv6))
    return AnswerBook(deployment.zones, steered, addresses, zone_signers(deployment, now))


def zone_ttls(deployment: Deployment) -> tuple[dict, dict]:
    """Per zone: the largest TTL a signed answer can have (records, steered names, negative
    answers) and the DNSKEY set's TTL (the SOA's), for rollover timings and router check."""
    largest, dnskey = {}, {}
    for origin, zone in deployment.zones.items():
        ttls = [r.ttl for node in zone.nodes.values() for r in node.rdatasets]
        soa = zone.get_node(origin).get_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA)
        ttls.append(soa[0].minimum)
        ttls += [
            deployment.policies[(origin, s.policy)].ttl
            for s in deployment.steered
            if s.zone == origin
        ]
        largest[origin] = max(ttls)
        dnskey[origin] = soa.ttl
    return largest, dnskey


def resign_time(deployment: Deployment, book: AnswerBook, now: float | None = None) -> float | None:
    """When the book must be signed again (unix time): ``resign_before_days`` ahead of the
    earliest expiry any of its signatures can have, or at the next key event (a key to
    publish, to sign with, to stop signing with or to remove: a zone served unsigned because
    none of its keys could sign yet is signed then), whichever is first."""
    settings = deployment.dnssec
    if settings is None or not deployment.dnssec_keys:
        return None
    signers = [index.signer for index in book.zones.values() if index.signer is not None]
    due = float("inf")
    signed_at = time.time() if now is None else now
    if signers:
        times = signers[0].times
        signed_at = times.now
        due = times.earliest_expiry - settings.resign_before_days * 86400
    events = [t for key in deployment.dnssec_keys for t in (key.publish, key.activate, key.inactive, key.delete)
              if signed_at < t < due]  # fmt: skip
    due = min(events, default=due)
    return None if due == float("inf") else due


def steered_signer(deployment: Deployment, book: AnswerBook) -> SteeredSigner | None:
    """What signs each routing table's steered answers (None: no steered name is signed)."""
    if not any(s is not None for s in book.steered_signers):
        return None
    assert deployment.dnssec is not None
    return SteeredSigner(
        book.steered, book.steered_signers, deployment.dnssec.resign_before_days * 86400
    )


def sign_table(signer: SteeredSigner | None, table: RoutingTable) -> TableSignatures | None:
    """The RRSIGs of ``table``'s steered answers, made before it is written (None: the
    zones are not signed). Only sets not signed for an earlier table cost a signature."""
    if signer is None:
        return None
    return signer.sign_table(table.group_set, table.set_nodes, table.split_start, table.split_set,
                             time.time())  # fmt: skip


@dataclass
class CompiledDeployment:
    deployment: Deployment
    model: SteeringModel
    book: AnswerBook
    planner: Planner  # samples seeded from the deployment's RTT file
    rtt: RttSamples  # the fused RTT averages the planner's samples come from
    table_signer: SteeredSigner | None = None  # signs each table's steered answers (DNSSEC)

    def sign(self, table: RoutingTable) -> TableSignatures | None:
        return sign_table(self.table_signer, table)

    def plan(
        self, node_state: np.ndarray, node_util: np.ndarray | None = None, generation: int = 1
    ) -> RoutingTable:
        return self.planner.build(node_state, node_util, generation)

    def responder(self, table: RoutingTable, record_decisions: bool = False) -> Responder:
        """The general responder (the one TCP and ``router explain`` use) over ``table``."""
        view = TableView(table, self.sign(table))
        return Responder(
            self.book, self.model.client_map, lambda: view, record_decisions=record_decisions
        )


def compile_deployment(
    deployment: Deployment, model: SteeringModel | None = None
) -> CompiledDeployment:
    model = compile_model(deployment) if model is None else model
    planner = Planner(model)
    rtt, seeded = seeded_samples(deployment.rtt_samples, model.client_map, model.node_ids)
    if deployment.rtt_samples:
        log.info("RTT sample file: %d of %d samples fused", seeded, len(deployment.rtt_samples))
        planner.samples = rtt.csr(time.monotonic())
    book = build_book(deployment, model)
    return CompiledDeployment(
        deployment, model, book, planner, rtt, steered_signer(deployment, book)
    )


def last_known_health(deployment: Deployment, model: SteeringModel) -> NodeHealth:
    """Node states as the running router last saved them (the state file), else all up,
    with the admin_state file applied as ``router serve`` applies it."""
    monitor = None
    if deployment.health is not None:
        monitor = NodeMonitor(
            model.node_ids, model.node_capacity_gbps, deployment.health.settings(), time.monotonic()
        )
    health = NodeHealth(model.node_ids, monitor)
    if deployment.state_file is not None:
        health.load(deployment.state_file, time.monotonic())
    for node_id, admin in deployment.admin_state.items():
        health.set_admin_state(node_id, admin)
    if monitor is not None:
        # Offline, no heartbeat will come: what is not known to be down is shown as up.
        for i, reason in enumerate(monitor.reason):
            if monitor.state[i] == NodeState.UP and reason.startswith("no heartbeat yet"):
                monitor.reason[i] = "no recorded problem (state file)"
    return health
