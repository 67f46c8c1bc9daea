"""The refine pass in the publisher: after a full plan is in service, its plans are refined in
the background (router/steering/refine.py) and the result put in service like a full plan,
with every node that went down since repaired on top; a change that wants a new full plan
drops the refine. The planner's refine is held on an event here (so "during a refine" is
certain) and hands back the full plan's own plans as its result (the refine's optimality
is tests/test_router_steering_refine.py's; this file checks the publisher's handling)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from router.health.state import NodeState
from router.steering.build import FullPlan, Planner
from router.steering.refine import RefineReport
from tests.test_publisher_background_plan import (  # noqa: F401 (fixtures)
    WAIT_S,
    Router,
    listed,
    router,
    until,
    zones,
)


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
        assert held.entered.wait(WAIT_S), "no refine began after the full plan"
        until(lambda: sup.publisher.refine_running, "the refine to be the running job")
        assert not sup.publisher.full_plan_running
        source = held.sources[0]
        assert source.node_state[router.index("tef-mad-2")] == NodeState.DRAINING

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
    assert any(
        f"routing table {refined.generation} in service" in r.getMessage()
        and "planned refined (background)" in r.getMessage()
        for r in caplog.records
    )
    # Begun before the failure: in service with the failure repaired on top.
    assert refined.node_state[gone] == NodeState.DOWN and gone not in listed(refined)
    assert router.state_in_service("tef-mad-2") == NodeState.DRAINING
    generations = [t.generation for t in router.published]
    assert generations == sorted(set(generations))
    assert len(held.sources) == 1  # a refine's result is not refined again


def test_a_change_during_a_refine_drops_it_for_a_new_full_plan(
    router: Router, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sup = router.supervisor
    held = HeldRefine()
    held.hold(sup.planner, monkeypatch)
    with caplog.at_level(logging.INFO, logger="router.service"):
        router.set_state("tef-mad-2", "drain")
        assert held.entered.wait(WAIT_S), "no refine began after the full plan"
        before = len(router.published)
        second = router.set_state("tef-bcn-1", "drain")
        assert held.stopped.wait(WAIT_S), "the refine was not asked to stop"
        # The second drain is owed by the full plan that follows, not by the dropped refine.
        assert sup.publisher.wait_published(second, timeout=WAIT_S)
        assert router.state_in_service("tef-bcn-1") == NodeState.DRAINING
        until(lambda: any("dropped for a newer plan" in r.getMessage() for r in caplog.records),
              "the publisher to drop the refine")  # fmt: skip
    assert not held.results
    after = router.published[before:]
    assert after and all(t.node_state[router.index("tef-bcn-1")] == NodeState.DRAINING for t in after)
    # The new full plan is refined in its turn.
    until(lambda: len(held.sources) == 2, "a refine of the new full plan")
    held.release.set()
