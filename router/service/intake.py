"""Telemetry intake: the heartbeat socket -> verify -> node health -> a table when it matters.

Every datagram is verified (``router/health/telemetry.py``) and applied to the node health
of the config in service; a state change asks the publisher for a new table at once, a
moved load or new RTT samples at most every so often. Silence is checked by ``tick``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from router.geo.clientmap import UNKNOWN_GROUP
from router.health.telemetry import AlreadyHeard, Heartbeat, Rejected

if TYPE_CHECKING:
    from router.service.supervisor import Supervisor

log = logging.getLogger("router.service")

LOAD_REFRESH_S = 1.0  # republish for load changes at most this often
LOAD_REFRESH_DELTA = 0.05  # and only when some node's utilisation moved this much
LOAD_CHECK_S = 0.05  # how often the load is compared with the table's
SAMPLES_REFRESH_S = 5.0  # fused RTT samples change steering at most this often
MAX_HELD_RTT_PER_NODE = 10  # held heartbeats with RTT samples, per node of the config
REJECTION_LOG_S = 10.0  # one log line per rejection reason this often at most


class TelemetryIntake:
    def __init__(self, service: Supervisor) -> None:
        self.service = service
        self.rtt_rejected = 0  # RTT samples in heartbeats that could not be used
        self._rejections_logged: dict[str, float] = {}
        # With a bus (router/service/cluster_link.py): each heartbeat verified here is handed
        # on to the other routers, and the reasons say which router heard it.
        self.republish: Callable[[bytes, Heartbeat], None] | None = None
        self.router_id = ""
        self._load_checked_at = -1e9
        self.bus_stale = 0  # copies from the bus too old to take: this router is behind
        # With a bus, RTT samples wait for the epoch after their heartbeat's stamp and are
        # fused then (``fuse_held_rtt``), in the same order on every router: the tables
        # steer by the same averages from the same second on (docs/cluster.md, "One answer").
        self.held_rtt: list[tuple[float, str, int, tuple[tuple[str, float], ...]]] = []
        self.held_rtt_dropped = 0

    def on_heartbeat(self, packet: bytes, now: float | None = None, via: str = "") -> None:
        """One telemetry datagram (``via``: the router it reached, when it came from the bus)."""
        self.on_heartbeats([(packet, via)], now)

    def on_heartbeats(self, packets: list[tuple[bytes, str]], now: float | None = None) -> None:
        """Telemetry packets, each with the router it reached ("" for a datagram to this
        one): verify each, apply what passed, ask for a new table if a state changed. The
        bus hands on what one read held at once: one lock and one look at the table for
        them all (at 20,000 nodes a second, the per-heartbeat overhead counted)."""
        service, publisher = self.service, self.service.publisher
        now = time.monotonic() if now is None else now
        # Size, signature, schema and replay checks need no lock: only this thread verifies,
        # and a forged flood must never hold up the DNS table's work.
        verifier = service.config.verifier
        assert verifier is not None
        accepted: list[tuple[Heartbeat, str]] = []
        for packet, via in packets:
            try:
                heartbeat = verifier.verify(packet)
            except AlreadyHeard:
                continue  # the node sent it here and to another router: heard once already
            except Rejected as exc:
                if via and exc.reason == "stale":
                    self.bus_stale += 1
                self._log_rejection(exc, verifier.rejected[exc.reason], via)
                continue
            if not via and self.republish is not None:
                self.republish(packet, heartbeat)
            accepted.append((heartbeat, via or self.router_id))
        if not accepted:
            return
        with service.health_lock:  # also keeps the config from being swapped under these
            index = service.config.node_index
            # A node may have left the config between the check and now.
            present = [(hb, heard_by) for hb, heard_by in accepted if hb.node in index]
            changed = service.health.heartbeats(present, now)
            if changed:
                publisher.state_unsaved = True  # the publisher saves it after the table is out
            for heartbeat, _ in present:
                if not heartbeat.rtt:
                    continue
                if service.cluster is None:
                    self.fuse_rtt(heartbeat.node, heartbeat.rtt, now)
                elif len(self.held_rtt) < MAX_HELD_RTT_PER_NODE * len(index):
                    self.held_rtt.append(
                        (heartbeat.ts, heartbeat.node, heartbeat.seq, heartbeat.rtt)
                    )
                else:
                    self.held_rtt_dropped += 1  # a node flooding valid heartbeats: bounded
        waited = now - publisher.published_at
        if changed:
            publisher.request_rebuild()
        elif (
            publisher.samples_changed
            and waited >= SAMPLES_REFRESH_S
            and not publisher.dirty
            and service.cluster is None  # with a bus, samples are fused per epoch
        ):
            publisher.request_rebuild()
        elif (
            waited >= LOAD_REFRESH_S
            and not publisher.dirty
            and service.cluster is None  # with a bus, the load is weighed per epoch
            and now - self._load_checked_at >= LOAD_CHECK_S
        ):
            # Load moves every second; republish only when it moved enough to matter (looked
            # at every so often: over every node, per heartbeat, it was most of their cost).
            self._load_checked_at = now
            moved = np.abs(service.health.utilization() - publisher.published_util).max(initial=0.0)
            if moved >= LOAD_REFRESH_DELTA:
                publisher.request_rebuild()

    def fuse_rtt(self, node_id: str, samples: tuple[tuple[str, float], ...], now: float) -> int:
        """RTT samples a node measured to client prefixes (the caller holds the health lock);
        how many were fused."""
        config = self.service.config
        node = config.node_index[node_id]
        fused = 0
        for prefix, rtt_ms in samples:
            try:
                network = ipaddress.ip_network(prefix, strict=False)
            except ValueError:
                self.rtt_rejected += 1
                continue
            group, _scope = config.model.client_map.lookup(network.network_address)
            if group == UNKNOWN_GROUP or not config.rtt.add(group, node, rtt_ms, now):
                self.rtt_rejected += 1  # nothing to steer by, or not a plausible RTT
                continue
            fused += 1
            self.service.publisher.samples_changed = True
        return fused

    def fuse_held_rtt(self, epoch: float, now: float | None = None) -> bool:
        """Fuse the held RTT samples of heartbeats stamped before ``epoch`` (wall seconds), by
        node, stamp and sequence: what every router of the bus holds alike by then. True when
        any sample was fused (the caller asks for a table)."""
        service = self.service
        now = time.monotonic() if now is None else now
        with service.health_lock:
            due = [held for held in self.held_rtt if held[0] < epoch]
            if not due:
                return False
            self.held_rtt = [held for held in self.held_rtt if held[0] >= epoch]
            index = service.config.node_index
            fused = 0
            for _ts, node, _seq, samples in sorted(due, key=lambda h: (h[1], h[0], h[2])):
                if node in index:  # the node may have left the config meanwhile
                    fused += self.fuse_rtt(node, samples, now)
            return fused > 0

    def tick(self, now: float | None = None) -> None:
        """Withdraw nodes that went silent."""
        service = self.service
        with service.health_lock:
            changed = service.health.tick(time.monotonic() if now is None else now)
            if changed:
                service.publisher.state_unsaved = True  # saved after the table is out
        if changed:
            service.publisher.request_rebuild()

    def _log_rejection(self, exc: Rejected, count: int, via: str = "") -> None:
        # At most one line per reason every 10 s: a flood of forged packets cannot flood the log.
        now = time.monotonic()
        if now - self._rejections_logged.get(exc.reason, -1e9) >= REJECTION_LOG_S:
            self._rejections_logged[exc.reason] = now
            log.warning(
                "rejected heartbeat%s (%s; %d rejected for this reason so far): %s",
                f" from the bus (reached router {via})" if via else "",
                exc.reason,
                count,
                exc.detail,
            )


class HeartbeatProtocol(asyncio.DatagramProtocol):
    def __init__(self, intake: TelemetryIntake) -> None:
        self.intake = intake

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.intake.on_heartbeat(data)
        except Exception:  # one bad packet or a failed publish must not stop telemetry
            log.exception("heartbeat from %s could not be applied", addr[0])


async def tick_forever(intake: TelemetryIntake, heartbeat_interval_s: float) -> None:
    # Silence is checked often, so a dead node leaves within the bound plus one tick.
    period = min(0.02, heartbeat_interval_s / 10)
    while True:
        await asyncio.sleep(period)
        try:
            intake.tick()
        except Exception:
            log.exception("health tick failed")
