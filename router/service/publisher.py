"""The publisher thread: a change of node health, load, RTT samples, demand or policy-probe
verdicts -> a routing table planned -> every worker answering from it.

Building a table can take a while on a large footprint. It runs in its own thread (the
numba kernels release the GIL), so heartbeat intake never waits for it, and changes that
arrive during a build are coalesced into the next one. The thread also runs the jobs that
must not overlap a publish (a reload putting its config in service: ``run``), and saves the
node-state file a heartbeat or a silence changed once the table is out, from a thread of its
own: at world scale the file takes longer to write than the repair to plan, and neither a
failure's table nor the heartbeats may wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from router.health.state import NodeState
from router.steering.build import RoutingTable

if TYPE_CHECKING:
    from router.service.supervisor import Supervisor

log = logging.getLogger("router.service")


class DurationHistogram:
    """Counts of durations by bucket and kind, read by the /metrics collector (the service
    itself does not depend on the metrics library)."""

    BOUNDS_S = (
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        float("inf"),
    )

    def __init__(self) -> None:
        self.counts: dict[str, np.ndarray] = {}
        self.sums: dict[str, float] = {}

    def observe(self, seconds: float, kind: str) -> None:
        counts = self.counts.setdefault(kind, np.zeros(len(self.BOUNDS_S), dtype=np.int64))
        counts[int(np.searchsorted(self.BOUNDS_S, seconds))] += 1
        self.sums[kind] = self.sums.get(kind, 0.0) + seconds


class Publisher:
    def __init__(self, service: Supervisor) -> None:
        self.service = service
        self._cond = threading.Condition()
        self._requested = 0
        self._done = 0
        self._dirty = False
        self._requested_at = 0.0  # monotonic, the first ask since the publisher last took one
        self._closing = False
        self._job: Callable[[], None] | None = None
        self._job_result: str | None = None
        self._thread: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._save_wanted = threading.Event()
        # What the table in service was planned from (a change past these re-plans).
        self.published_util = service.health.utilization()
        self.published_at = time.monotonic()
        # Inputs waiting for the next plan; set under the service's health lock.
        self.pending_demand: np.ndarray | None = None
        self.samples_changed = False
        # Node states changed and the state file is behind: saved once the table is out
        # (writing every node's state is slow at scale, and a failure's table must not wait).
        self.state_unsaved = False
        self.last_build_ms = 0.0
        self.build_seconds = DurationHistogram()  # every routing table planned since start

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)
        self._thread.start()
        self._saver = threading.Thread(target=self._save_loop, name="state-saver", daemon=True)
        self._saver.start()

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._save_wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._saver is not None:
            self._saver.join(timeout=30)

    @property
    def dirty(self) -> bool:
        """A table is asked for and not yet being planned."""
        return self._dirty

    def request_rebuild(self) -> int:
        """Ask for a table reflecting the current state; returns a ticket to wait on."""
        with self._cond:
            self._requested += 1
            if not self._dirty:
                self._requested_at = time.monotonic()
            self._dirty = True
            self._cond.notify_all()
            return self._requested

    def wait_published(self, ticket: int, timeout: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= ticket or self._closing, timeout)

    def run(self, job: Callable[[], None], timeout: float) -> str | None:
        """Run ``job`` in the publisher thread, between two publishes: "ok", "failed: why",
        or None if it did not finish within ``timeout`` (or the service is stopping)."""
        with self._cond:
            self._job_result = None
            self._job = job
            self._cond.notify_all()
            done = self._cond.wait_for(
                lambda: self._job_result is not None or self._closing, timeout
            )
            return self._job_result if done else None

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._closing or self._job is not None)
                if self._closing:
                    return
                job, self._job = self._job, None
                if job is None:
                    self._dirty = False
                    ticket = self._requested
                    requested_at = self._requested_at
            if job is not None:
                self._run_job(job)
                continue
            try:
                self._rebuild(requested_at)
            except Exception:
                log.exception("building or publishing a routing table failed; keeping the last one")
            with self._cond:
                self._done = ticket
                self._cond.notify_all()
            self._save_wanted.set()

    def _save_loop(self) -> None:
        # Its own thread: at 20,000 nodes the file takes half a second to write, and neither
        # the next plan nor the heartbeats may wait for it (nor hold a lock while it is written).
        while not self._closing:
            self._save_wanted.wait()
            self._save_wanted.clear()
            with self.service.health_lock:
                unsaved, self.state_unsaved = self.state_unsaved, False
            if unsaved:
                self.service.save_state()

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
            result = "ok"
        except Exception as exc:  # the caller reports why
            log.exception("a job of the publisher failed")
            result = f"failed: {exc}"
        with self._cond:
            self._job_result = result
            self._cond.notify_all()

    def _rebuild(self, requested_at: float) -> None:
        service = self.service
        taken = time.monotonic()
        with service.health_lock:
            config = service.config
            states = config.health.states()
            util = config.health.utilization().copy()
            sampled_groups = None
            if self.samples_changed:
                config.planner.samples = config.rtt.csr(time.monotonic())
                sampled_groups = np.array(sorted(config.rtt.changed_groups), dtype=np.int32)
                config.rtt.changed_groups.clear()
                self.samples_changed = False
            # New demand or a policy probe verdict: plan afresh, not a repair.
            policy_down = config.policy_probes.down.copy()
            full = not np.array_equal(policy_down, config.planner.policy_down)
            config.planner.policy_down = policy_down
            if self.pending_demand is not None:
                config.planner.demand = self.pending_demand
                self.pending_demand = None
                full = True
        snapshot = time.monotonic()  # the inputs read under the health lock
        table = self._plan(states, util, sampled_groups, full=full)
        with service.workers.lock:
            file_s, workers_s = service.workers.publish(table)
            service.table = table
        self.published_util = util
        self.published_at = time.monotonic()
        # From the change to every worker answering from it, and where that time went.
        log.info(
            "routing table %d in service on %d workers: %.1f ms after the change (waited %.1f, "
            "inputs %.1f, planned %s %.1f, file %.1f, workers %.1f ms)",
            table.generation, len(service.workers.workers),
            (self.published_at - requested_at) * 1000, (taken - requested_at) * 1000,
            (snapshot - taken) * 1000, self.service.planner.last_kind, self.last_build_ms,
            file_s * 1000, workers_s * 1000,
        )  # fmt: skip

    def _plan(
        self,
        states: np.ndarray,
        util: np.ndarray,
        sampled_groups: np.ndarray | None = None,
        full: bool = False,
    ) -> RoutingTable:
        # The common changes are repaired, not planned again: one node gone down, or new
        # RTT samples for some groups. Anything else (or both at once) plans afresh.
        planner, current = self.service.planner, self.service.table
        generation = current.generation + 1
        started = time.perf_counter()
        changed = np.flatnonzero(states != current.node_state)
        same_load = np.array_equal(util, self.published_util)
        # A plan at world scale can take seconds: this line says one is under way, and why.
        log.info(
            "planning routing table %d (%d node state(s) changed%s%s%s)",
            generation, len(changed), "" if same_load else ", load moved",
            "" if sampled_groups is None else ", RTT samples", ", demand or probes" if full else "",
        )  # fmt: skip
        if full or not same_load:
            table = planner.build(states, util, generation)
        elif sampled_groups is not None and len(changed) == 0:
            table = planner.groups_changed(sampled_groups, states, util, generation)
        elif sampled_groups is None and len(changed) == 1 and states[changed[0]] == NodeState.DOWN:
            table = planner.node_down(int(changed[0]), states, util, generation)
        else:
            table = planner.build(states, util, generation)
        self.last_build_ms = (time.perf_counter() - started) * 1000
        self.build_seconds.observe(self.last_build_ms / 1000, planner.last_kind)
        return table
