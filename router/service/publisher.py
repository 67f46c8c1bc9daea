"""The publisher thread: a change of node health, load, RTT samples, demand or policy-probe
verdicts -> a routing table planned -> every worker answering from it.

Building a table can take a while on a large footprint. It runs in its own thread (the
numba kernels release the GIL), so heartbeat intake never waits for it, and changes that
arrive during a build are coalesced into the next one.

A failure never waits for a full plan (about a second at 20,000 nodes). A node gone down is
repaired on the plans in service (``Planner.repair_node_down``) and published at once.
Everything else (new demand, a probe's verdict, load moved, a node draining or back) is
planned afresh in a thread of its own (``Planner.plan_full``, which touches nothing of the
plans in service) while the publisher goes on repairing; when it ends, the publisher puts
it in service with every node that went down since it began repaired on top, so no table
brings a down node back. Generations are given at publish, in this thread only. A change
the running full plan does not carry makes another follow it; a reload throws away one
begun on the old config. A failure no repair can take (a pool emptied, a fence's last up
node) gets the table in service with the down nodes left out of its answers at once, and a
full plan. A step reads only the node states before the repair and publishes it before
anything else (the other inputs, adopting a full plan that ended, re-placing groups).

The thread also runs the jobs that must not overlap a publish (a reload putting its config
in service: ``run``), and saves the node-state file a heartbeat or a silence changed once the
tables pause, from a thread of its own: at world scale the file takes longer to write than
the repair to plan, and neither a failure's table nor the heartbeats may wait for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from router._gc import freeze_collector, return_free_memory
from router.health.state import NodeState
from router.service.intake import LOAD_REFRESH_DELTA
from router.steering.build import FullPlan, PlanBasis, RoutingTable, without_down_nodes
from router.steering.refine import RefineReport

if TYPE_CHECKING:
    from router.service.loaded import LoadedConfig
    from router.service.supervisor import Supervisor

log = logging.getLogger("router.service")

# The full plan in the background runs at this nice value (Linux: per thread), so that a
# failure's repair, the heartbeats and the workers get the CPU first: on two busy cores a
# repair beside an unniced full plan took 1.5-4 times as long. Not the state saver: it holds
# the GIL nearly all the time, and a niced holder kept the heartbeats waiting (1.4 s once).
BACKGROUND_NICE = 10
SWITCH_INTERVAL_S = 0.0005  # the GIL's switch interval in the router's control process
NAMES_LOGGED = 5  # a table's planning line names this many of the nodes it takes down
SAVE_QUIET_S = 1.0  # the node-state file is written once no table was published for this long
SAVE_WITHIN_S = 10.0  # and at most this long after the change that asked for it
# The refine pass after a full plan (router/steering/refine.py) stops after this long with
# the best plan it has; at world scale it needs 2-4 s after a demand change, 10 s cold.
REFINE_BUDGET_S = 15.0


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


@dataclass
class FullPlanJob:
    """A full plan running in the background: what it was begun from. ``kind`` "refine":
    the refine pass on the full plan ``source`` (same inputs), after it went in service."""

    config: LoadedConfig  # a reload puts another in service: then the plan is thrown away
    basis: PlanBasis
    node_state: np.ndarray
    util: np.ndarray
    requested_at: float  # monotonic: the first change it carries was asked for
    taken: float  # monotonic: the publisher took that change (the log's "waited" ends here)
    inputs_ms: float  # reading the inputs it was begun from
    reason: str
    result: FullPlan | None = None
    error: BaseException | None = None
    planned_s: float = 0.0
    done: bool = False
    kind: str = "full"
    source: FullPlan | None = None
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    report: RefineReport | None = None


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
        self._trim_wanted = False  # the C heap's free pages to hand back (the saver does)
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
        # The full plan in the background (publisher thread only, but ``done`` and its
        # result are set by the plan's thread under ``_cond``).
        self._full: FullPlanJob | None = None
        self._full_thread: threading.Thread | None = None
        # A change arrived that the running full plan does not carry: another follows it.
        self._full_again: list[str] = []
        # The earliest ticket a full plan owes (not in service yet): wait_published waits.
        self._owed: int | None = None
        self._owed_next: int | None = None  # the same for the plan that follows
        # What the next full plan is made from: the planner's own, plus what came since.
        self._basis_config: LoadedConfig | None = None
        self._basis: PlanBasis | None = None
        self._sampled_since: list[np.ndarray] = []  # groups re-sampled during the full plan
        self.refine_budget_s = REFINE_BUDGET_S  # 0: full plans are not refined
        self.refine_outcomes: dict[str, int] = {}  # refines ended, by outcome (/metrics)

    def start(self) -> None:
        # A repair hands the GIL back and forth with every kernel it calls (they release
        # it); each time another thread holds it (heartbeats, the state saver), taking it
        # back waits for the switch interval. 5 ms by default: tens of handovers made a
        # 10 ms repair take 30-40 ms beside one busy thread. This process's own threads
        # only (the DNS workers are processes of their own).
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
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
        if self._full_thread is not None:
            self._full_thread.join(timeout=30)

    @property
    def dirty(self) -> bool:
        """A table is asked for and not yet being planned."""
        return self._dirty

    @property
    def full_plan_running(self) -> bool:
        return self._full is not None and self._full.kind == "full"

    @property
    def refine_running(self) -> bool:
        return self._full is not None and self._full.kind == "refine"

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
        self._refine_first_plan()
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._dirty
                        or self._closing
                        or self._job is not None
                        or (self._full is not None and self._full.done)
                    )
                )
                if self._closing:
                    return
                job, self._job = self._job, None
                if job is None:
                    self._dirty = False
                    ticket = self._requested
                    requested_at = self._requested_at
                    # Taken here, so that a step that fails does not find it again.
                    finished = self._full if self._full is not None and self._full.done else None
                    if finished is not None:
                        self._full, self._full_thread = None, None
            if job is not None:
                self._run_job(job)
                continue
            try:
                self._rebuild(requested_at, ticket, finished)
            except Exception:
                log.exception("building or publishing a routing table failed; keeping the last one")
            if finished is not None:
                # Not kept until the next step: a finished job holds the plans it was made
                # from (tens of MB at world scale), and an idle router may have no next step
                # for long. What it and the plans it replaced freed goes back to the system
                # once the tables pause (the saver thread: the first trim after a refine
                # took 7 ms, which a failure's repair must not wait for).
                finished = None
                self._trim_wanted = True
            with self._cond:
                owed = self._owed if self._full is not None else None
                self._done = max(self._done, ticket if owed is None else min(ticket, owed - 1))
                self._cond.notify_all()
            self._save_wanted.set()

    def _save_loop(self) -> None:
        # Its own thread: at 20,000 nodes the file takes half a second to write, and neither
        # the next plan nor the heartbeats may wait for it (nor hold a lock while it is written).
        # Writing it holds the GIL most of that time, and a repair shares the GIL with it (a
        # repair beside a busy thread took 3-4 times as long), as does the heartbeat intake (a
        # failure's report waited 90-280 ms behind the heartbeats that piled up meanwhile): so
        # the file waits for a pause in the tables (SAVE_QUIET_S), at most SAVE_WITHIN_S; the
        # supervisor saves it at stop.
        while not self._closing:
            self._save_wanted.wait()
            wanted = time.monotonic()
            while not self._closing:
                now = time.monotonic()
                quiet = now - max(self.published_at, wanted)
                if quiet >= SAVE_QUIET_S or now - wanted >= SAVE_WITHIN_S:
                    break
                time.sleep(min(SAVE_QUIET_S - quiet, SAVE_WITHIN_S - (now - wanted)) + 0.001)
            self._save_wanted.clear()
            if self._trim_wanted:
                self._trim_wanted = False
                return_free_memory()
            with self.service.health_lock:
                unsaved, self.state_unsaved = self.state_unsaved, False
            if unsaved:
                started = time.perf_counter()
                self.service.save_state()
                log.info("node-state file saved in %.0f ms", (time.perf_counter() - started) * 1000)

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
            result = "ok"
            freeze_collector()  # a reload: the new config's objects, the old one's collected
        except Exception as exc:  # the caller reports why
            log.exception("a job of the publisher failed")
            result = f"failed: {exc}"
        # A reload planned its config's first table afresh from everything: what the old
        # config's full plan would carry is in it (its result is thrown away when it ends).
        self._full_again, self._owed_next, self._sampled_since = [], None, []
        self._basis, self._basis_config = None, None
        if self._full is not None:
            self._owed = None
            self._full.stop.set()  # a refine of the old config's plan: of no use now
        with self._cond:
            self._job_result = result
            self._cond.notify_all()
        if result == "ok":
            self._refine_first_plan()

    def _rebuild(self, requested_at: float, ticket: int, finished: FullPlanJob | None) -> None:
        """One step: repair the nodes that went down and publish at once, then adopt a full
        plan that ended, re-place re-sampled groups, and start a full plan for anything else."""
        service = self.service
        taken = time.monotonic()
        # A failure first: only the node states are read before its repair is published (the
        # rest of the inputs, the adoption of a full plan that ended and the re-placing of
        # re-sampled groups come after it).
        with service.health_lock:
            config = service.config
            states = config.health.states()
        inputs_ms = (time.monotonic() - taken) * 1000  # the states read under the health lock
        self._repair_downs(states, requested_at, taken, inputs_ms)
        reread = time.monotonic()
        with service.health_lock:
            util = config.health.utilization().copy()
            sampled_groups = samples = None
            if self.samples_changed:
                samples = config.rtt.csr(time.monotonic())
                sampled_groups = np.array(sorted(config.rtt.changed_groups), dtype=np.int32)
                config.rtt.changed_groups.clear()
                self.samples_changed = False
            policy_down = config.policy_probes.down.copy()
            demand, self.pending_demand = self.pending_demand, None
        inputs_ms += (time.monotonic() - reread) * 1000
        planner = config.planner
        if self._basis_config is not config or self._basis is None:
            self._basis, self._basis_config = planner.basis(), config
        # What the next full plan takes: the latest of everything (the planner keeps what its
        # plans were made from until a full plan is adopted).
        wants: list[str] = []
        basis = self._basis
        if demand is not None:
            basis = dataclasses.replace(basis, demand=demand)
            wants.append("demand")
        if not np.array_equal(policy_down, basis.policy_down):
            basis = dataclasses.replace(basis, policy_down=policy_down)
            wants.append("probes")
        if samples is not None:
            basis = dataclasses.replace(basis, samples=samples)
        self._basis = basis

        if finished is not None:
            self._adopt(finished, config, states, taken)
        if sampled_groups is not None:
            self._resample(sampled_groups, samples, requested_at, taken, inputs_ms)
        # Anything else is planned afresh, in the background.
        current = service.table
        plan_state = current.node_state if self._full is None else self._full.node_state
        plan_util = self.service.planner.plan_util() if self._full is None else self._full.util
        others = np.flatnonzero((states != plan_state) & (states != NodeState.DOWN))
        if len(others):
            wants.append(f"{len(others)} node state(s) changed")
        # Load moving as much as the intake asks a table for (a plan afresh).
        if (
            plan_util is not None
            and np.abs(util - plan_util).max(initial=0.0) >= LOAD_REFRESH_DELTA
        ):
            wants.append("load moved")
        if any(plan is None for plan in planner.plans) and (
            self._full is None or self.refine_running
        ):
            # Even over a refine: the masked table is no plan (an answer of down nodes only
            # keeps them), and the change is owed until a full plan is in service.
            wants.append("a failure no repair could take")
        elif self._full is None and planner.grown:
            wants.append("patches grew the table")
        if self._full_again and self._full is None:
            wants += self._full_again
            self._full_again = []
        if wants:
            self._want_full(config, states, util, requested_at, taken, inputs_ms, ticket, wants)

    def _names(self, nodes: np.ndarray) -> str:
        ids = self.service.model.node_ids
        names = [ids[i] for i in nodes[:NAMES_LOGGED].tolist()]
        return ", ".join(names) + (
            f" and {len(nodes) - NAMES_LOGGED} more" if len(nodes) > NAMES_LOGGED else ""
        )

    def _want_full(self, config: LoadedConfig, states: np.ndarray, util: np.ndarray,
                   requested_at: float, taken: float, inputs_ms: float, ticket: int,
                   reasons: list[str]) -> None:  # fmt: skip
        if self._full is not None:
            # It carries what it was begun from; another full plan carries the rest.
            self._full_again += [r for r in dict.fromkeys(reasons) if r not in self._full_again]
            if self._owed_next is None:
                self._owed_next = ticket
            if self._full.kind == "refine":
                # Refining a plan about to be replaced is wasted: it stops at its next round,
                # and the change is owed from now (the refine itself owed nothing).
                self._full.stop.set()
                if self._owed is None:
                    self._owed = self._owed_next
            return
        assert self._basis is not None
        job = FullPlanJob(config, self._basis, states.copy(), util.copy(), requested_at, taken,
                          inputs_ms, ", ".join(dict.fromkeys(reasons)))  # fmt: skip
        self._sampled_since = []
        self._owed = ticket if self._owed_next is None else self._owed_next
        self._owed_next = None
        self._full = job
        log.info("full plan begun in the background (%s)", job.reason)
        self._full_thread = threading.Thread(
            target=self._plan_in_background, args=(job,), name="full-plan", daemon=True
        )
        self._full_thread.start()

    def _plan_in_background(self, job: FullPlanJob) -> None:
        lower_priority()
        started = time.perf_counter()
        planner = job.config.planner
        try:
            if job.kind == "refine":
                assert job.source is not None
                result, job.report = planner.refine(
                    job.source, self.refine_budget_s, job.stop.is_set
                )
            else:
                result = planner.plan_full(job.node_state, job.util, job.basis,
                                           for_refine=self.refine_budget_s > 0)  # fmt: skip
        except BaseException as exc:  # reported by the publisher thread
            result, job.error = None, exc
        with self._cond:
            job.result, job.planned_s, job.done = result, time.perf_counter() - started, True
            self._cond.notify_all()

    def _adopt(self, job: FullPlanJob, config: LoadedConfig, states: np.ndarray,
               taken: float) -> None:  # fmt: skip
        """The full plan that ended in service, with every node that went down since it
        began repaired on top: a published table never brings a down node back."""
        self._owed = None
        if job.config is not config:
            log.info("full plan begun on the config before the reload thrown away")
            return
        if job.kind == "refine" and job.error is None:
            report = job.report.summary() if job.report is not None else "no report"
            if job.stop.is_set():
                self._count_refine("dropped")
                log.info("refine of the last full plan dropped for a newer plan (%s)", report)
                return
            if job.result is None:
                no_better = job.report is not None and job.report.no_better
                self._count_refine("no better" if no_better else "not refined")
                log.info("refine of the last full plan: %s", report)
                return
            self._count_refine("in service")
            log.info("refined the last full plan: %s", report)
        elif job.kind == "refine":
            self._count_refine("failed")
        if job.error is not None or job.result is None:
            log.error("the %s in the background failed; keeping the last table",
                      "refine" if job.kind == "refine" else "full plan", exc_info=job.error)  # fmt: skip
            return
        service, planner = self.service, config.planner
        generation = service.table.generation + 1
        began = job.node_state
        down_since = np.flatnonzero((states == NodeState.DOWN) & (began != NodeState.DOWN))
        log.info(
            "planning routing table %d (the full plan begun %.0f ms ago, planned in %.0f ms, for "
            "%s; %d node(s) down since%s)", generation, (taken - job.taken) * 1000,
            job.planned_s * 1000, job.reason, len(down_since),
            f": {self._names(down_since)} down" if len(down_since) else "",
        )  # fmt: skip
        latest_samples = self._basis.samples if self._basis is not None else None
        table = planner.adopt(job.result, generation)
        carried = None
        if self._sampled_since:
            # Samples fused while it planned: placed again on top, as they were on the old plans.
            planner.samples = latest_samples
            groups = np.unique(np.concatenate(self._sampled_since)).astype(np.int32)
            table = planner.groups_changed(groups, began, job.util, generation)
            self._sampled_since = []
            carried = groups
        table, repaired = self._repair_each(table, down_since, states, generation)
        kind = ("refined" if job.kind == "refine" else "full") + " (background)"
        kind = kind if repaired else "masked"
        # Its "planned" runs from its inputs read: planning, waiting for this thread, repairs.
        self._publish(table, job.util, job.requested_at, job.taken, job.inputs_ms, kind)
        if job.kind == "full" and job.result.refine_from is not None and not self._full_again:
            self._start_refine(job, carried)

    def _count_refine(self, outcome: str) -> None:
        self.refine_outcomes[outcome] = self.refine_outcomes.get(outcome, 0) + 1

    def _refine_first_plan(self) -> None:
        """The config's first table (planned at start or by a reload, not in the background)
        refined as a full plan's is. Called before any step has repaired its plans (at the
        thread's start, right after a reload); while a job of the old config still runs, the
        first plan is left as it is (the next full plan is refined)."""
        config = self.service.config
        full = config.planner.take_unrefined() if self._full is None else None
        if full is None or self.refine_budget_s <= 0:
            return
        now = time.monotonic()
        job = FullPlanJob(config, full.basis, full.node_state, full.node_util, now, now, 0.0,
                          "the first plan", result=full, done=True)  # fmt: skip
        self._start_refine(job, None)

    def _start_refine(self, job: FullPlanJob, carried: np.ndarray | None) -> None:
        """The refine pass on the full plan ``job`` just put in service, in the background;
        groups re-sampled since the full plan began are placed again on its result too."""
        refine = dataclasses.replace(
            job, kind="refine", source=job.result, result=None, error=None, done=False,
            planned_s=0.0, stop=threading.Event(), report=None,
        )  # fmt: skip
        self._sampled_since = [] if carried is None else [carried]
        self._owed = None  # the full plan delivered what was asked; the refine owes nothing
        self._full = refine
        log.info("refine begun in the background (of %s)", job.reason)
        self._full_thread = threading.Thread(
            target=self._plan_in_background, args=(refine,), name="refine", daemon=True
        )
        self._full_thread.start()

    def _repair_downs(self, states: np.ndarray, requested_at: float, taken: float,
                      inputs_ms: float) -> None:  # fmt: skip
        """Nodes gone down since the table in service: repaired on the planner's plans and
        published at once, whatever else is under way. When a repair cannot do, the table in
        service just leaves the down nodes out of its answers, until a full plan."""
        service = self.service
        current = service.table
        downs = np.flatnonzero((states == NodeState.DOWN) & (current.node_state != NodeState.DOWN))
        if not len(downs):
            return
        generation = current.generation + 1
        log.info("planning routing table %d (%d node state(s) changed: %s down)", generation,
                 len(downs), self._names(downs))  # fmt: skip
        table, repaired = self._repair_each(current, downs, states, generation)
        kind = "incremental" if repaired else "masked"
        self._publish(table, self.service.planner.plan_util(), requested_at, taken, inputs_ms, kind)

    def _repair_each(self, table: RoutingTable, downs: np.ndarray, states: np.ndarray,
                     generation: int) -> tuple[RoutingTable, bool]:  # fmt: skip
        """``table`` (the planner's last) with each of ``downs`` repaired in turn; when one
        cannot be, the table with every node down in ``states`` left out of the answers."""
        planner = self.service.planner
        state = table.node_state.copy()
        for node in downs.tolist():
            state[node] = NodeState.DOWN
            try:
                repaired = planner.repair_node_down(node, state, generation, compact=False)
            except Exception:
                # A planning bug must not keep a dead node in the answers: leave the down
                # nodes out of the table in service, and plan afresh (the plans are dropped).
                log.exception("repairing the plans for a node down failed; leaving it out")
                repaired = planner.drop_plans()
            if repaired is None:
                every_down = np.where(
                    states == NodeState.DOWN, np.int8(NodeState.DOWN), table.node_state
                )
                return without_down_nodes(table, every_down, generation), False
            table = repaired
        return table, True

    def _resample(self, groups: np.ndarray, samples: tuple | None, requested_at: float,
                  taken: float, inputs_ms: float) -> None:  # fmt: skip
        """Groups with new RTT samples placed again on the current plans; during a full plan,
        on the full plan once adopted (it was begun from the samples before); during a
        refine, on both."""
        planner = self.service.planner
        if self.full_plan_running or any(plan is None for plan in planner.plans):
            self._sampled_since.append(groups)
            if self._full is None:
                self._full_again.append("RTT samples")
            return
        if self.refine_running:
            self._sampled_since.append(groups)  # placed on the refined plan too, when it is in
        current = self.service.table
        generation = current.generation + 1
        log.info("planning routing table %d (RTT samples of %d group(s))", generation, len(groups))
        planner.samples = samples
        util = planner.plan_util()
        table = planner.groups_changed(groups, current.node_state, util, generation)
        self._publish(table, util, requested_at, taken, inputs_ms, planner.last_kind)

    def _publish(self, table: RoutingTable, util: np.ndarray | None, requested_at: float,
                 taken: float, inputs_ms: float, kind: str) -> None:  # fmt: skip
        """``table`` to every worker. Its log line's parts add up to the whole: "planned" is
        everything from the inputs read (``taken`` + ``inputs_ms``) to the workers' lock
        taken (an adopted full plan before it in the same step, too)."""
        service = self.service
        signing = time.monotonic()
        signatures = service.config.sign(table)  # outside the lock: the workers answer meanwhile
        signed_ms = (time.monotonic() - signing) * 1000
        with service.workers.lock:
            planned_ms = (time.monotonic() - taken) * 1000 - inputs_ms - signed_ms
            file_s, workers_s = service.workers.publish(table, signatures)
            # Every worker answers from it now: the end of the log's "after the change",
            # taken before the lock is let go (handing the GIL over there can take another
            # thread's switch interval, which no client waits for).
            self.published_at = time.monotonic()
            service.table = table
        if util is not None:
            self.published_util = util
        self.last_build_ms = planned_ms
        self.build_seconds.observe(planned_ms / 1000, kind)
        # From the change to every worker answering from it, and where that time went.
        log.info(
            "routing table %d in service on %d workers: %.1f ms after the change (waited %.1f, "
            "inputs %.1f, planned %s %.1f, signed %.1f, file %.1f, workers %.1f ms)",
            table.generation, len(service.workers.workers),
            (self.published_at - requested_at) * 1000, (taken - requested_at) * 1000,
            inputs_ms, kind, planned_ms, signed_ms, file_s * 1000, workers_s * 1000,
        )  # fmt: skip


def lower_priority() -> None:
    """The calling thread yields the CPU to the rest of the process (BACKGROUND_NICE)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed: run as is
        log.debug(
            "cannot lower the priority of thread %s: %s", threading.current_thread().name, exc
        )
