"""The publisher plans afresh in the background and never makes a failure wait for it.

A full plan (new demand, a node draining or back, load moved) runs in a thread of its own
while the publisher goes on repairing the plans in service for every node that goes down
and publishing at once; when the full plan ends it is put in service with the nodes that
went down meanwhile repaired on top. These tests make the full plan wait on an event (the
real planner's ``plan_full``, held back), so that "during a full plan" is certain, not a
matter of timing, and check what the workers were handed, in order. The refine pass that
follows a full plan (and the first plan) takes the same background slot; its tests are at
the end.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from router.api.metrics import registry_for
from router.config import load_deployment
from router.health.state import NodeState
from router.service.config_files import ConfigFiles
from router.service.supervisor import Supervisor
from router.steering import compile_model
from router.steering.build import FullPlan, Planner, RoutingTable, without_down_nodes
from router.steering.refine import RefineReport
from tests.test_router_policy_pools import MEO, POOLED, VIDEO, states, web

WAIT_S = 20.0  # every wait below is bounded by this


def listed(table: RoutingTable) -> set[int]:
    """Every node some answer of ``table`` lists (single answers and split entries)."""
    used = np.concatenate([table.group_set[table.group_set >= 0], table.split_set])
    rows = table.set_nodes[np.unique(used)]
    return {int(n) for n in rows[rows >= 0]}


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.01)


@dataclass
class HeldPlans:
    """The planner's full plans, each held until ``release`` is set."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    results: list[FullPlan] = field(default_factory=list)

    def hold(self, planner: Planner, monkeypatch: pytest.MonkeyPatch) -> None:
        real = planner.plan_full

        def held(*args, **kwargs) -> FullPlan:  # noqa: ANN002, ANN003
            self.entered.set()
            assert self.release.wait(WAIT_S), "the test never released the full plan"
            result = real(*args, **kwargs)
            self.results.append(result)
            return result

        monkeypatch.setattr(planner, "plan_full", held)


class Router:
    """A supervisor on the sample deployment (one worker) that records every table it hands
    the workers."""

    def __init__(self, zones: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        deployment = load_deployment(zones)
        self.supervisor = Supervisor(
            deployment, compile_model(deployment), [("127.0.0.1", 0)], workers=1,
            files=ConfigFiles.read(zones),
        )  # fmt: skip
        self.published: list[RoutingTable] = []
        workers = self.supervisor.workers
        real_publish = workers.publish

        def publish(table: RoutingTable, signatures=None):  # noqa: ANN001, ANN202
            self.published.append(table)
            return real_publish(table, signatures)

        monkeypatch.setattr(workers, "publish", publish)

    def index(self, node_id: str) -> int:
        return self.supervisor.config.node_index[node_id]

    def set_state(self, node_id: str, admin: str) -> int:
        """As an operator's override would, without waiting for the table: the ticket."""
        sup = self.supervisor
        with sup.health_lock:
            assert sup.health.set_admin_state(node_id, admin)
        return sup.publisher.request_rebuild()

    def state_in_service(self, node_id: str) -> int:
        return int(self.supervisor.table.node_state[self.index(node_id)])


@pytest.fixture
def zones(tmp_path: Path, deployment_dir: Path) -> Path:
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    return tmp_path / "zones"


@pytest.fixture
def router(zones: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Router]:
    made = Router(zones, monkeypatch)
    made.supervisor.start()
    try:
        yield made
    finally:
        made.supervisor.stop()


def test_a_failure_during_a_full_plan_is_published_before_the_plan_ends(
    router: Router, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sup = router.supervisor
    held = HeldPlans()
    held.hold(sup.planner, monkeypatch)
    first = sup.table.generation
    drained = router.set_state("tef-mad-2", "drain")  # a state change a repair cannot take
    assert held.entered.wait(WAIT_S), "no full plan began for a drained node"
    assert sup.publisher.full_plan_running

    gone = router.index("tef-mad-1")
    assert gone in listed(sup.table)
    down = router.set_state("tef-mad-1", "down")
    until(lambda: router.state_in_service("tef-mad-1") == NodeState.DOWN, "the repair in service")
    # Published while the full plan is still held: the failure did not wait for it.
    assert not held.release.is_set() and sup.publisher.full_plan_running
    repaired = sup.table
    assert gone not in listed(repaired)
    assert repaired.generation > first
    assert router.state_in_service("tef-mad-2") == NodeState.UP  # the drain is the plan's
    # The drain is owed by the full plan, so neither ticket counts as published yet.
    assert not sup.publisher.wait_published(drained, timeout=0.2)

    before_release = len(router.published)
    with caplog.at_level(logging.INFO, logger="router.service"):
        held.release.set()
        assert sup.publisher.wait_published(down, timeout=WAIT_S)
    adopted = sup.table
    assert len(held.results) == 1 and router.published[before_release:] == [adopted]
    assert any(f"routing table {adopted.generation} in service" in r.getMessage()
               and "planned full (background)" in r.getMessage() for r in caplog.records)  # fmt: skip
    # The plan began before the failure: it is in service with the failure repaired on top.
    assert adopted.node_state[gone] == NodeState.DOWN and gone not in listed(adopted)
    assert router.state_in_service("tef-mad-2") == NodeState.DRAINING
    assert not sup.publisher.full_plan_running
    generations = [t.generation for t in router.published]
    assert generations == sorted(set(generations)) and generations[-1] == adopted.generation
    assert all(gone not in listed(t) for t in router.published if t.generation > first)


def test_a_full_plan_begun_before_a_reload_is_thrown_away(
    router: Router, zones: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sup = router.supervisor
    held = HeldPlans()
    held.hold(sup.planner, monkeypatch)
    router.set_state("tef-mad-2", "drain")
    assert held.entered.wait(WAIT_S), "no full plan began for a drained node"
    old = sup.config
    with open(zones / "cdn.example.zone", "a", encoding="utf-8") as zone:
        zone.write('reloaded 60 IN TXT "v2"\n')
    # The reload plans its own first table; the publisher is free for it meanwhile.
    assert sup.reload("test")["result"] == "ok"
    assert sup.config is not old
    after_reload = sup.table.generation
    with caplog.at_level(logging.INFO, logger="router.service"):
        held.release.set()
        until(lambda: not sup.publisher.full_plan_running, "the stale full plan ended")
        until(lambda: any("thrown away" in r.getMessage() for r in caplog.records),
              "the publisher to see the stale plan")  # fmt: skip
    assert len(held.results) == 1
    stale = held.results[0].table
    assert all(t.group_set is not stale.group_set for t in router.published)
    assert sup.table.generation >= after_reload
    generations = [t.generation for t in router.published]
    assert generations == sorted(set(generations))
    # The reloaded config carried the drain over: its own table has it.
    assert router.state_in_service("tef-mad-2") == NodeState.DRAINING


@pytest.fixture
def pooled(zones: Path) -> Path:
    (zones / "cdn.example.policy.yaml").write_text(POOLED.format(video=VIDEO, geofence=""))
    return zones


def test_a_failure_no_repair_can_take_leaves_the_node_out_at_once(
    pooled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = Router(pooled, monkeypatch)
    sup = made.supervisor
    sup.start()
    try:
        held = HeldPlans()
        held.hold(sup.planner, monkeypatch)
        lis, opo = made.index("meo-lis-1"), made.index("meo-opo-1")
        made.set_state("meo-lis-1", "down")
        until(lambda: made.state_in_service("meo-lis-1") == NodeState.DOWN, "the repair")
        assert not held.entered.is_set()  # one MEO node left: a repair, no full plan
        made.set_state("meo-opo-1", "down")  # the MEO pool empties: its clients move pools
        until(lambda: made.state_in_service("meo-opo-1") == NodeState.DOWN, "the masked table")
        assert held.entered.wait(WAIT_S) and not held.release.is_set()
        masked, before = sup.table, made.published[-2]
        assert masked.set_nodes.shape == before.set_nodes.shape  # the same table, masked
        meo = np.isin(before.set_nodes, [lis, opo])
        mixed = meo.any(axis=1) & ((before.set_nodes >= 0) & ~meo).any(axis=1)
        assert mixed.any()  # answers of a MEO node and another: the other leads them now
        assert not np.isin(masked.set_nodes[mixed], [lis, opo]).any()
        assert (masked.set_nodes[mixed, 0] >= 0).all()
        # An answer of MEO nodes only stays (failing open) for the moment the plan takes.
        assert np.array_equal(masked.set_nodes[~mixed], before.set_nodes[~mixed])
        held.release.set()
        until(lambda: sup.table.group_set is (held.results[0].table.group_set
                                              if held.results else None), "the full plan")  # fmt: skip
        assert not {lis, opo} & listed(sup.table)
        fresh = Planner(sup.model)
        fresh.set_demand(web(sup.model), sup.planner.demand[web(sup.model)])
        expected = fresh.build(sup.table.node_state, sup.planner.plan_util(), 1)
        assert np.array_equal(expected.node_state, states(sup.model, MEO))
        for p in range(len(sup.model.policies)):
            for g in range(len(sup.model.group_weight)):
                assert sup.table.entries(p, g) == expected.entries(p, g)
    finally:
        sup.stop()


def test_without_down_nodes_moves_the_rest_up_and_fails_open() -> None:
    table = RoutingTable(
        generation=4,
        group_set=np.array([[0, 1, -1]], dtype=np.int32),
        set_nodes=np.array([[2, 0], [1, -1]], dtype=np.int32),
        node_state=np.zeros(3, dtype=np.int8),
        split_start=np.array([0, 2], dtype=np.int32),
        split_set=np.array([0, 1], dtype=np.int32),
        split_cum=np.array([30000, 65536], dtype=np.uint32),
        node_planned=np.zeros(3),
        policy_pool=np.zeros((1, 0), dtype=np.int32),
    )
    out = without_down_nodes(table, np.array([0, 2, 2], dtype=np.int8), 5)
    assert out.generation == 5 and out.node_state.tolist() == [0, 2, 2]
    assert out.set_nodes.tolist() == [[0, -1], [1, -1]]  # node 1 alone: fails open
    assert out.group_set is table.group_set and out.split_cum is table.split_cum


# --- the refine pass after a full plan -------------------------------------------------------
# The planner's refine is held on an event (so "during a refine" is certain) and hands back the
# full plan's own plans as its result: the refine's optimality is
# tests/test_router_steering_refine.py's; these check the publisher's handling.


@dataclass
class HeldRefine:
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    sources: list[FullPlan] = field(default_factory=list)
    results: list[FullPlan] = field(default_factory=list)

    def hold(self, planner: Planner, monkeypatch: pytest.MonkeyPatch) -> None:
        def held(full: FullPlan, budget_s: float, stop: Callable[[], bool]):  # noqa: ANN202
            self.sources.append(full)
            self.entered.set()
            deadline = time.monotonic() + WAIT_S
            while not self.release.is_set() and time.monotonic() < deadline:
                if stop():
                    self.stopped.set()
                    return None, RefineReport("stopped: asked to")
                time.sleep(0.005)
            assert self.release.is_set(), "the test never released the refine"
            assert full.refine_from is not None
            # The full plan's own plans, as a refine's result (a copy: they are the refine's).
            table, index = planner._whole_table(
                full.refine_from, full.inputs, full.resolved, full.node_state, 0
            )
            result = dataclasses.replace(
                full, plans=full.refine_from, table=table, index=index, refine_from=None
            )
            self.results.append(result)
            return result, RefineReport("optimal")

        monkeypatch.setattr(planner, "refine", held)


def test_a_full_plan_is_refined_after_it_is_in_service_and_a_failure_meanwhile_is_kept(
    router: Router, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sup = router.supervisor
    held = HeldRefine()
    held.hold(sup.planner, monkeypatch)
    with caplog.at_level(logging.INFO, logger="router.service"):
        drained = router.set_state("tef-mad-2", "drain")
        # The drain is delivered by the full plan, not held back by the refine after it.
        assert sup.publisher.wait_published(drained, timeout=WAIT_S)
        assert router.state_in_service("tef-mad-2") == NodeState.DRAINING
        until(lambda: refining_with(held, router, "tef-mad-2"), "a refine of the full plan")
        until(lambda: sup.publisher.refine_running, "the refine to be the running job")
        assert not sup.publisher.full_plan_running

        gone = router.index("tef-mad-1")
        assert gone in listed(sup.table)
        down = router.set_state("tef-mad-1", "down")
        assert sup.publisher.wait_published(down, timeout=WAIT_S)
        assert gone not in listed(sup.table) and sup.publisher.refine_running
        before = len(router.published)
        held.release.set()
        until(lambda: not sup.publisher.refine_running, "the refine to end")
        until(lambda: len(router.published) > before, "the refined table in service")
        refined = router.published[before]
        # The table is handed to the workers before its "in service" line is written.
        until(
            lambda: any(
                f"routing table {refined.generation} in service" in r.getMessage()
                and "planned refined (background)" in r.getMessage()
                for r in caplog.records
            ),
            "the refined table's in-service line, saying it was planned refined",
        )
    # Begun before the failure: in service with the failure repaired on top.
    assert refined.node_state[gone] == NodeState.DOWN and gone not in listed(refined)
    assert router.state_in_service("tef-mad-2") == NodeState.DRAINING
    generations = [t.generation for t in router.published]
    assert generations == sorted(set(generations))
    assert (
        len(refining_with(held, router, "tef-mad-2")) == 1
    )  # a refine's result is not refined again
    assert sup.publisher.refine_outcomes.get("in service", 0) >= 1


def test_a_change_during_a_refine_drops_it_for_a_new_full_plan(
    router: Router, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sup = router.supervisor
    held = HeldRefine()
    held.hold(sup.planner, monkeypatch)
    with caplog.at_level(logging.INFO, logger="router.service"):
        router.set_state("tef-mad-2", "drain")
        until(lambda: refining_with(held, router, "tef-mad-2"), "a refine of the full plan")
        before = len(router.published)
        second = router.set_state("tef-bcn-1", "drain")
        assert held.stopped.wait(WAIT_S), "the refine was not asked to stop"
        # The second drain is owed by the full plan that follows, not by the dropped refine.
        assert sup.publisher.wait_published(second, timeout=WAIT_S)
        assert router.state_in_service("tef-bcn-1") == NodeState.DRAINING
        until(lambda: any("dropped for a newer plan" in r.getMessage() for r in caplog.records),
              "the publisher to drop the refine")  # fmt: skip
    assert not held.results
    assert sup.publisher.refine_outcomes.get("dropped", 0) >= 1
    metrics = generate_latest(registry_for(sup)).decode()
    assert 'router_refines_total{outcome="dropped"}' in metrics
    after = router.published[before:]
    assert after and all(
        t.node_state[router.index("tef-bcn-1")] == NodeState.DRAINING for t in after
    )
    # The new full plan is refined in its turn.
    until(lambda: refining_with(held, router, "tef-bcn-1"), "a refine of the new full plan")
    held.release.set()


def refining_with(held: HeldRefine, router: Router, drained: str) -> list[FullPlan]:
    """The refines begun on a plan with ``drained`` draining."""
    index = router.index(drained)
    return [full for full in held.sources if full.node_state[index] == NodeState.DRAINING]


def test_the_first_plan_is_refined_after_start(
    zones: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    made = Router(zones, monkeypatch)
    sup = made.supervisor
    held = HeldRefine()
    held.hold(sup.planner, monkeypatch)
    with caplog.at_level(logging.INFO, logger="router.service"):
        sup.start()
        try:
            assert held.entered.wait(WAIT_S), "the first plan was not refined"
            first = sup.table
            source = held.sources[0]
            assert first.generation == 1 and (source.node_state == first.node_state).all()
            assert source.refine_from is not None
            held.release.set()
            until(lambda: len(made.published) >= 1 and made.published[-1].generation == 2,
                  "the refined first plan in service")  # fmt: skip
            assert not sup.publisher.refine_running
        finally:
            sup.stop()
    assert any("routing table 2 in service" in r.getMessage()
               and "planned refined (background)" in r.getMessage() for r in caplog.records)  # fmt: skip


def test_a_repair_that_fails_still_takes_the_node_out_of_the_answers(
    router: Router, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a repair (an exception) must not keep a dead node in service: the table in
    service leaves it out at once, and a full plan follows."""
    sup = router.supervisor
    planner = sup.planner

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("a repair bug")

    monkeypatch.setattr(planner, "repair_node_down", broken)
    gone = router.index("tef-mad-1")
    assert gone in listed(sup.table)
    with caplog.at_level(logging.INFO, logger="router.service"):
        down = router.set_state("tef-mad-1", "down")
        assert sup.publisher.wait_published(down, timeout=WAIT_S)
        until(lambda: gone not in listed(sup.table), "the node out of the answers")
        assert any("repairing the plans for a node down failed" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        # The plans were dropped, so a full plan follows and keeps the node out.
        until(lambda: all(p is not None for p in planner.plans), "a full plan after the failure")
    assert gone not in listed(sup.table)
    assert router.state_in_service("tef-mad-1") == NodeState.DOWN


def test_a_failure_no_repair_can_take_during_a_refine_is_owed_by_the_full_plan(
    pooled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The masked table is not the answer: an operator's PUT (its ticket) returns once the
    full plan that moves the emptied pool's clients is in service, even when a refine held
    the background slot (the refine owes nothing, so it must give way and pass the debt on)."""
    made = Router(pooled, monkeypatch)
    sup = made.supervisor
    held = HeldRefine()
    held.hold(sup.planner, monkeypatch)
    sup.start()
    try:
        assert held.entered.wait(WAIT_S), "the first plan was not refined"
        assert sup.publisher.refine_running
        lis, opo = made.index("meo-lis-1"), made.index("meo-opo-1")
        assert sup.publisher.wait_published(made.set_state("meo-lis-1", "down"), WAIT_S)
        emptied = made.set_state("meo-opo-1", "down")  # no repair can take it: masked first
        assert held.stopped.wait(WAIT_S), "the refine was not asked to stop"
        assert sup.publisher.wait_published(emptied, WAIT_S)
        # Not the masked table (which keeps answers of MEO nodes only, failing open): the plan.
        assert not {lis, opo} & listed(sup.table)
        assert made.state_in_service("meo-opo-1") == NodeState.DOWN
    finally:
        held.release.set()
        sup.stop()
