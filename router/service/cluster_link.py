"""The router as one of several (``router serve --bus``): its bus link wired to the node
health, the probes, the demand and the overrides of the config in service.

- Heartbeats: each one verified here goes to the stream (``router/cluster/bus.py``); each one
  from the stream is verified again here with the node's key, as if it had come straight
  from the node (``TelemetryIntake.on_heartbeats``), so an explicit failure reported
  to any router acts on all, and no router has to be believed about a node.
- Probes: this router's probes give its own verdict (a node failing ``probe_failures`` probes
  in a row); the node is withdrawn when a quorum of the live routers that probe it (default a
  majority) fail it, so one router's broken path does not withdraw it for all.
- Demand: the planner's per-group rates are the sum of every live router's (each publishes
  its own every second), so skewed catchments add up instead of each router planning alone.
- Overrides: a PUT goes to the bucket; the bucket's entries apply here as they arrive.
- Agreement: every second this router publishes its config version and table digest; the
  peers' are compared in ``status()`` (``GET /v1/cluster``, metrics, the status page).
- Cut off the bus: it keeps serving; nodes it only heard of through the bus are left as they
  were (no silence withdrawal) until the bus is back, then get one silence bound to be heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from router.cluster.bus import BusHandlers, BusSettings, ClusterBus
from router.cluster.messages import (
    MessageError,
    admin_key,
    decode_admin,
    decode_demand,
    decode_state,
    encode_admin,
    encode_demand,
    encode_state,
    node_of_key,
)
from router.cluster.peers import DemandReport, PeerTable, RouterState, probe_quorum
from router.health.telemetry import Heartbeat
from router.service.demand import moved_share
from router.service.intake import LOAD_REFRESH_DELTA, SAMPLES_REFRESH_S
from router.steering.build import RoutingTable

if TYPE_CHECKING:
    from router.service.supervisor import Supervisor

log = logging.getLogger("router.service")

STATE_PERIOD_S = 1.0
# The load of an epoch is taken this long after it began: by then every router has the
# heartbeats stamped before it (the bus carries them in milliseconds).
UTIL_SETTLE_S = 0.25
# The demand is taken on these epochs only (the wall-clock seconds divisible by it), the same
# on every router; between them the counts go on adding up.
DEMAND_EPOCH_S = 10
DEMAND_DRIFT_S = 60  # ...and taken whenever it differs on these (a drift)
DEMAND_SHIFT = 0.2  # or at once when this share moved from the demand epoch before
BEHIND_HOLD_S = 5.0  # behind the bus: hold the bus-only nodes this long after the last late copy
MESSAGE_LOG_S = 10.0  # one log line per kind of bad peer message this often at most


def table_digest(table: RoutingTable) -> str:
    """What the answers are, not when they were made: the generation is left out."""
    h = hashlib.blake2b(digest_size=8)
    for part in (table.group_set, table.set_nodes, table.split_start, table.split_set,
                 table.split_cum, table.node_state):  # fmt: skip
        h.update(np.ascontiguousarray(part).data)
    return h.hexdigest()


class ClusterLink:
    def __init__(
        self, service: Supervisor, settings: BusSettings, quorum: float | None = None
    ) -> None:
        self.service = service
        self.settings = settings
        self.router_id = settings.router_id
        self.quorum = quorum  # a share of the probing routers; None: a majority
        self.peers = PeerTable(self.router_id)
        self.bus = ClusterBus(
            settings,
            BusHandlers(
                heartbeats=self._on_heartbeats, state=self._on_state, demand=self._on_demand,
                admin=self._on_admin, connection=self._on_connection,
                admin_synced=self._on_admin_synced,
            ),
        )  # fmt: skip
        self.isolated = True  # until the first connection
        self.isolated_since: float | None = time.monotonic()
        self.bad_messages = 0
        self.admin_applied = 0
        self._logged: dict[str, float] = {}
        self._heard_direct: dict[str, float] = {}  # node -> monotonic time heard here
        self._own_streak: dict[str, int] = {}
        self._own_failing: dict[str, str] = {}
        self._quorum_failing: dict[str, str] = {}  # node -> the reason applied
        self._pending_admin: dict[str, str] = {}  # set while cut off: written when back
        self._admin_warned = set()
        self._digest_of: tuple[int, int] | None = None  # (id of the table, generation)
        self._digest = ""
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state_dirty = asyncio.Event()
        self._last_state: RouterState | None = None
        self._weighed: int | None = None  # the last epoch weighed
        self._last_sum: tuple[int, np.ndarray] | None = None
        self._holding = False  # the nodes heard only through the bus held as they are
        self.behind = False  # copies from the bus came too late to take within BEHIND_HOLD_S
        self._stale_seen = 0
        self._behind_until = 0.0
        intake = service.intake
        intake.router_id = self.router_id
        intake.republish = self._republish

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        self.bus.start()
        self._task = asyncio.create_task(self._every_second(), name="cluster-state")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.bus.close()

    def expect_copies(self) -> None:
        """The verifier of the config in service takes a peer's copy of a heartbeat as such,
        and format 3 for this router (called at start; reloads carry both). ValueError when
        the keys were derived for another router."""
        verifier = self.service.config.verifier
        if verifier is not None:
            verifier.copies_expected = True
            verifier.for_router(self.router_id)
            if verifier.keys_router is None:
                log.warning(
                    "cluster: health.keys holds the nodes' own keys: this router could forge "
                    "any node's heartbeat for every router. Give each router only its own: "
                    '`router keys derive --router-id %s` (docs/cluster.md, "Node keys")',
                    self.router_id,
                )

    # -- heartbeats ---------------------------------------------------------------------------

    def _republish(self, packet: bytes, heartbeat: Heartbeat) -> None:
        self._heard_direct[heartbeat.node] = time.monotonic()
        self.bus.republish_heartbeat(packet, f"{heartbeat.node}:{heartbeat.boot}:{heartbeat.seq}")

    def _on_heartbeats(self, heartbeats: list[tuple[bytes, str]]) -> None:
        try:
            self.service.intake.on_heartbeats(heartbeats)
        except Exception:
            log.exception("heartbeats from the bus could not be applied")

    # -- peers' state and demand ----------------------------------------------------------------

    def _on_state(self, data: bytes, origin: str) -> None:
        try:
            state = decode_state(data, origin)
        except MessageError as exc:
            self._bad("state", origin, exc)
            return
        if self.peers.observe(state, time.monotonic()):
            self._recount()

    def _on_demand(self, data: bytes, origin: str) -> None:
        config = self.service.config
        try:
            version, epoch, qps, reported = decode_demand(data, origin, config.demand.qps.shape)
        except MessageError as exc:
            self._bad("demand", origin, exc)
            return
        if qps.size:
            self.peers.observe_demand(
                DemandReport(origin, version, epoch, qps, time.monotonic(), reported)
            )
            self._weigh_epochs()

    def _weigh_epochs(self) -> None:
        """The demand epochs every live router has reported, each weighed once: every router
        takes the same sums at the same epochs, so their plans start from one demand."""
        config = self.service.config
        now = time.monotonic()
        for epoch in self.peers.complete_epochs(config.version, now, self._weighed):
            self._weighed = epoch
            if epoch % DEMAND_EPOCH_S:
                continue
            summed = self.peers.epoch_demand(epoch, config.version, now)
            if summed is None:
                continue
            qps, reported = summed
            before = (
                self._last_sum
                if self._last_sum and self._last_sum[0] == epoch - DEMAND_EPOCH_S
                else None
            )
            self._last_sum = (epoch, qps)
            # Whether to take it depends on shared sums only (this epoch's and the one before),
            # never on what this router took before: a router that missed an epoch is back in
            # step at the next one taken. A big shift is taken at once, a drift every minute.
            shifted = before is not None and moved_share(before[1], qps) >= DEMAND_SHIFT
            planned = config.planner.demand
            prior = np.array([p.demand_prior for p in config.model.policies]).reshape(planned.shape)
            prior = bool(np.array_equal(planned, prior))  # still the configured prior: take it
            if epoch % DEMAND_DRIFT_S == 0 or shifted or prior:
                self.service.demand_observer.weigh(config, qps, reported, threshold=0.0)

    def _bad(self, kind: str, origin: str, exc: Exception) -> None:
        self.bad_messages += 1
        now = time.monotonic()
        if now - self._logged.get(kind, -1e9) >= MESSAGE_LOG_S:
            self._logged[kind] = now
            log.warning("bus: a bad %s message from router %s (%d so far): %s", kind, origin,
                        self.bad_messages, exc)  # fmt: skip

    # -- probes ---------------------------------------------------------------------------------

    def probe_result(self, node_id: str, ok: bool, detail: str) -> None:
        """One result of this router's probe of a node: its own verdict changes after
        ``probe_failures`` failures in a row (or the first success); the quorum decides."""
        health = self.service.deployment.health
        need = health.probe_failures if health is not None else 3
        was = node_id in self._own_failing
        if ok:
            self._own_streak[node_id] = 0
            self._own_failing.pop(node_id, None)
        else:
            streak = self._own_streak.get(node_id, 0) + 1
            self._own_streak[node_id] = streak
            if streak >= need:
                self._own_failing[node_id] = f"{streak} failed probes ({detail})"
        if was != (node_id in self._own_failing):
            self._state_dirty.set()  # the peers hear of it now, not at the next second
            self._recount()

    @property
    def probing(self) -> bool:
        return bool(self.service.probes.telemetry and self.service.probes.node_targets())

    def _recount(self) -> None:
        """Apply the probe quorum over this router's verdicts and the live peers'."""
        service = self.service
        now = time.monotonic()
        peers = [] if self.isolated else self.peers.live(now)
        verdicts = probe_quorum(self.router_id, self.probing, self._own_failing, peers, self.quorum)
        changed = False
        with service.health_lock:
            health = service.health
            for node, (routers, probers, need, why) in verdicts.items():
                if node not in health:
                    continue
                reason = (
                    f"probes fail at router(s) {', '.join(routers)}: {len(routers)} of {probers} "
                    f"probing (quorum {need}); {why}"
                )
                if self._quorum_failing.get(node) != reason:
                    self._quorum_failing[node] = reason
                    changed |= health.probe_verdict(node, True, reason, now)
            for node in [n for n in self._quorum_failing if n not in verdicts]:
                del self._quorum_failing[node]
                if node in health:
                    changed |= health.probe_verdict(node, False, "", now)
            if changed:
                service.publisher.state_unsaved = True
        if changed:
            service.publisher.request_rebuild()

    # -- overrides --------------------------------------------------------------------------------

    def admin_set(self, node_id: str, state: str) -> None:
        """An operator's PUT here (applied locally already): to the bucket, for every router.
        Called from the API's thread."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._put_admin, node_id, state)

    def _put_admin(self, node_id: str, state: str) -> None:
        self._pending_admin[node_id] = state
        asyncio.get_running_loop().create_task(self._flush_admin())

    async def _flush_admin(self) -> None:
        for node_id, state in list(self._pending_admin.items()):
            if await self.bus.put_admin(admin_key(node_id), encode_admin(state, self.router_id)):
                if self._pending_admin.get(node_id) == state:
                    del self._pending_admin[node_id]
                self._admin_warned.discard((node_id, state))
            else:
                if (node_id, state) not in self._admin_warned:  # once, not every second
                    self._admin_warned.add((node_id, state))
                    log.warning("bus: the override of %s (%s) applies here and goes to the bucket as soon "
                                "as it takes it (%s)", node_id, state, self.bus.last_error)  # fmt: skip
                return

    _admin_warned: set[tuple[str, str]]

    def _on_admin(self, key: str, value: bytes | None) -> None:
        service = self.service
        node_id = node_of_key(key)
        if value is None:
            state, via = "up", "the bucket (entry deleted)"
        else:
            try:
                state, via = decode_admin(value)
            except MessageError as exc:
                self._bad("override", key, exc)
                return
        if node_id in self._pending_admin:
            return  # a newer PUT here is on its way to the bucket
        with service.health_lock:
            if node_id not in service.health:
                return  # a node this config does not have (another config, or gone)
            current = service.health.overrides().get(node_id, ("up", ""))[0]
            if current == state:
                return
            changed = service.health.set_admin_state(node_id, state, via)
            service.save_state()
        self.admin_applied += 1
        log.info("override of %s from the bucket: %s (set via router %s)", node_id, state, via)
        if changed:
            service.publisher.request_rebuild()

    def _on_admin_synced(self) -> None:
        log.info("bus: the overrides bucket is applied")

    # -- connection -------------------------------------------------------------------------

    def _on_connection(self, connected: bool) -> None:
        now = time.monotonic()
        self.isolated = not connected
        self.isolated_since = None if connected else now
        self._hold_bus_only_nodes(self.isolated or self.behind)
        if connected:
            log.info("cluster: on the bus again; catching up from the stream and the bucket")
            if self._pending_admin:
                asyncio.get_running_loop().create_task(self._flush_admin())
        else:
            log.warning("cluster: isolated (no bus): serving on from this router's own heartbeats "
                        "and probes; nodes heard only through the bus are kept as they were")  # fmt: skip
        self._state_dirty.set()
        self._recount()

    def _hold_bus_only_nodes(self, hold: bool) -> None:
        """Cut off the bus, or too far behind it to take its copies: the nodes this router
        heard only through the bus are kept as they were (no withdrawal for a silence that is
        this router's, not theirs). Released: each gets one silence bound to be heard again."""
        if hold == self._holding:
            return
        self._holding = hold
        now = time.monotonic()
        service = self.service
        with service.health_lock:
            monitor = service.health.monitor
            if monitor is None:
                return
            exempt = monitor.silence_exempt
            if hold:
                bound = monitor.settings.silence_bound_s
                heard = np.array(
                    [now - self._heard_direct.get(n, -1e18) <= bound for n in monitor.node_ids]
                )
                exempt[:] = ~heard
            else:
                monitor.last_seen[exempt] = np.where(
                    np.isnan(monitor.last_seen[exempt]), np.nan, now
                )
                exempt[:] = False

    def _check_behind(self) -> None:
        stale = self.service.intake.bus_stale
        now = time.monotonic()
        if stale > self._stale_seen:
            if not self.behind:
                log.warning("cluster: behind the bus (%d copies too old to take): nodes heard only "
                            "through the bus are kept as they were until it keeps up", stale - self._stale_seen)  # fmt: skip
            self.behind, self._behind_until = True, now + BEHIND_HOLD_S
        elif self.behind and now >= self._behind_until:
            self.behind = False
            log.info("cluster: keeping up with the bus again")
        self._stale_seen = stale
        self._hold_bus_only_nodes(self.isolated or self.behind)

    # -- every second ---------------------------------------------------------------------------

    async def _every_second(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            # On the second (an epoch): every router publishes at about the same moment.
            delay = STATE_PERIOD_S - (time.time() % STATE_PERIOD_S)
            on_the_second = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_dirty.wait(), delay)
                on_the_second = False  # a change to tell now: the state only
            self._state_dirty.clear()
            try:
                if on_the_second:
                    self._loop.call_later(UTIL_SETTLE_S, self._take_epoch_util, time.time())
                await self._publish_state(on_the_second)
                if on_the_second:
                    self._check_behind()
                if on_the_second and self._pending_admin and not self.isolated:
                    # A write the bucket refused (no stream leader for a moment, say): again.
                    await self._flush_admin()
                if self.peers.expire(time.monotonic()):
                    self._recount()
            except Exception:
                log.exception("cluster: the state step failed")

    def _take_epoch_util(self, woke_at: float) -> None:
        """The planner's load from now on: each node's as of the start of this second, the
        same on every router; a table is asked for when it moved enough (as a lone router
        does per heartbeat), at the same epoch on every router."""
        service = self.service
        publisher = service.publisher
        epoch = float(round(woke_at))
        with service.health_lock:
            monitor = service.health.monitor
            if monitor is None:
                return
            monitor.epoch_util = monitor.load_at(epoch)
            util = monitor.epoch_util
        # RTT samples every few epochs (a table per second for them alone would be too many),
        # the same epochs on every router.
        sampled = epoch % SAMPLES_REFRESH_S == 0 and service.intake.fuse_held_rtt(epoch)
        if publisher.published_util is None or publisher.dirty:
            return
        if (
            sampled
            or np.abs(util - publisher.published_util).max(initial=0.0) >= LOAD_REFRESH_DELTA
        ):
            publisher.request_rebuild()

    async def _own_state(self) -> RouterState:
        config, table = self.service.in_service()
        key = (id(table), table.generation)
        if key != self._digest_of:
            self._digest = await asyncio.to_thread(table_digest, table)
            self._digest_of = key
        return RouterState(
            self.router_id, config.version, table.generation, self._digest, self.isolated,
            self.probing, dict(self._own_failing), time.time(),
        )  # fmt: skip

    async def _publish_state(self, on_the_second: bool = True) -> None:
        state = await self._own_state()
        self._last_state = state
        if not on_the_second:
            if not self.isolated:
                await self.bus.publish_state(encode_state(state))
            return
        service = self.service
        epoch = round(time.time())  # woken on the second: the second it is
        config = service.demand_observer.fold(time.monotonic())
        reported = service.demand_observer.reported_gbps(config)
        # Kept as sent (float32 on the wire): this router's part of the epoch's sum is the
        # very number its peers add, or the sums would differ in the last digits.
        qps = config.demand.qps.astype("<f4").astype(np.float64)
        self.peers.observe_demand(
            DemandReport(self.router_id, config.version, epoch, qps, time.monotonic(), reported)
        )
        if not self.isolated:
            await self.bus.publish_state(encode_state(state))
            await self.bus.publish_demand(
                encode_demand(self.router_id, config.version, epoch, qps, reported)
            )
        self._weigh_epochs()  # alone (or the last to report): the epoch is complete now

    # -- what the API shows ---------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        own = self._last_state
        if own is None:
            config, table = self.service.in_service()
            own = RouterState(self.router_id, config.version, table.generation, "", self.isolated,
                              self.probing, {}, time.time())  # fmt: skip
        agree, peers = self.peers.agreement(own, now)
        live = [p for p in peers if p["live"]]
        counters = self.bus.counters
        verifier = self.service.config.verifier
        return {
            "router_id": self.router_id,
            # Derived: this router can check the heartbeats signed for it and forge none for
            # the others; the nodes' own keys would let it forge for every router.
            "node_keys": None
            if verifier is None
            else ("derived" if verifier.keys_router is not None else "nodes_own"),
            "isolated": self.isolated,
            "behind": self.behind,
            "isolated_for_s": None
            if self.isolated_since is None
            else round(now - self.isolated_since, 3),
            "bus": {
                "servers": list(self.settings.servers),
                "connected": self.bus.connected,
                "stream_answers": self.bus.stream_ok,
                "connected_server": self.bus.connected_url,
                "last_error": self.bus.last_error,
                "heartbeats_republished": counters.heartbeats_out,
                "heartbeats_received": counters.heartbeats_in,
                "heartbeats_not_republished_while_cut": counters.dropped_while_cut,
                "heartbeat_copies_already_heard": self._copies(),
                "bad_peer_messages": self.bad_messages,
                "overrides_applied_from_bucket": self.admin_applied,
                "overrides_waiting_for_bus": dict(self._pending_admin),
                "reconnects": counters.reconnects,
            },
            "config_version": own.config_version,
            "table_generation": own.table_generation,
            "table_digest": own.table_digest,
            "agree": agree and not self.isolated,
            "live_peers": len(live),
            "disagreeing_peers": sum(1 for p in live if not p["agrees"]),
            "probe_quorum": "majority" if self.quorum is None else self.quorum,
            "nodes_failing_own_probes": sorted(self._own_failing),
            "nodes_withdrawn_by_probe_quorum": sorted(self._quorum_failing),
            "peers": peers,
        }

    def _copies(self) -> int:
        verifier = self.service.config.verifier
        return verifier.copies if verifier is not None else 0
