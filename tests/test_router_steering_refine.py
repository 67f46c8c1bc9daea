"""The refine pass (router/steering/refine.py): the greedy plan made optimal.

Optimality is checked against an independent linear program over every (group, node) pair
(scipy's HiGHS), built from the plain reference scores of tests/reference_numpy.py, not from
the router's classes or kernels. The refined plan must be a valid plan (the same checks as
the greedy's), no worse than the greedy, and within the integer rounding of the flow solver
(costs in 0.01 ms, flows in 10 Mbps units) of the LP's optimum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from router.steering.capacity import plan_policy, replan_node_down
from router.steering.flow_solver import FlowSolver, solve_here
from router.steering.refine import RESERVE_PENALTY_MS, refine
from tests import reference
from tests.reference_numpy import pair_arrays
from tests.test_router_steering_plan import check_valid, make, worlds

COST_ROUNDING_MS = 0.005  # the flow solver's costs are whole 0.01 ms


@st.composite
def loaded_worlds(draw: st.DrawFn) -> tuple:
    """``worlds`` with the demand scaled to a share of the capacity, so that most fit
    (the drawn demand alone overflows most small worlds, which the refine leaves alone)."""
    arrays, demand, capacity, headroom = draw(worlds(max_nodes=8))
    share = draw(st.sampled_from((0.3, 0.6, 0.8, 0.95)))
    if demand.sum() > 0:
        demand = demand * share * capacity.sum() / demand.sum()
    return arrays, demand, capacity, headroom


def objective(inputs, plan) -> float:
    """Demand-weighted score plus the reserve's penalty: what both the refine and the LP minimise."""
    r = inputs.rank
    groups = np.concatenate([plan.alloc_group, np.flatnonzero(plan.overflow > 0)])
    nodes = np.concatenate([plan.alloc_node, plan.cand_node[plan.overflow > 0, 0]])
    amount = np.concatenate([plan.alloc_amount, plan.overflow[plan.overflow > 0]])
    score = pair_arrays(r, groups, nodes)[0]
    over = np.maximum(plan.load - inputs.node_capacity * inputs.headroom, 0.0)
    return float(score @ amount + RESERVE_PENALTY_MS * over.sum())


def lp_optimum(inputs) -> float | None:
    """The min-cost assignment of each group's demand over every pair it may use."""
    r = inputs.rank
    eligible = reference.eligibility(r)
    groups = np.flatnonzero(inputs.group_demand > 0)
    pg, pn = np.nonzero(eligible[r.group_fence[groups]])
    pg = groups[pg]
    n_nodes = len(r.node_lat)
    cost = np.concatenate([pair_arrays(r, pg, pn)[0], np.full(n_nodes, RESERVE_PENALTY_MS)])
    row_of_group = {g: i for i, g in enumerate(groups.tolist())}
    pairs = len(pg)
    # Rows: each group's demand (equality), then each node's load - reserve <= cap * headroom.
    eq = coo_matrix(
        (np.ones(pairs), ([row_of_group[g] for g in pg.tolist()], np.arange(pairs))),
        shape=(len(groups), pairs + n_nodes),
    )
    ub = coo_matrix(
        (np.r_[np.ones(pairs), -np.ones(n_nodes)],
         (np.r_[pn, np.arange(n_nodes)], np.r_[np.arange(pairs), pairs + np.arange(n_nodes)])),
        shape=(n_nodes, pairs + n_nodes),
    )  # fmt: skip
    bounds = [(0, None)] * pairs + [
        (0, c * (1 - inputs.headroom)) for c in inputs.node_capacity.tolist()
    ]
    result = linprog(cost, A_ub=ub, b_ub=inputs.node_capacity * inputs.headroom, A_eq=eq,
                     b_eq=inputs.group_demand[groups], bounds=bounds, method="highs")  # fmt: skip
    return float(result.fun) if result.status == 0 else None


@settings(max_examples=150, deadline=None)
@given(loaded_worlds())
def test_refined_plan_is_valid_no_worse_than_greedy_and_optimal(world: tuple) -> None:
    inputs = make(world)
    greedy = plan_policy(inputs)
    before = objective(inputs, greedy)
    refined, report, memory = refine([greedy], [inputs], budget_s=60.0)
    if (greedy.overflow > 0).any():
        assert refined is None and report.status.startswith("not refined: some demand fits")
        event("overflow: not refined")
        return
    if not (inputs.group_demand > 0).any():
        assert refined is None and report.status == "not refined: no demand"
        event("no demand: not refined")
        return
    if "INFEASIBLE" in report.status:
        # Demand rounded up to the flow's units no longer fits: only where the greedy filled
        # the nodes to within those units of their capacity.
        assert refined is None
        slack = report.classes * report.unit_gbps * (1 + 1e-6)
        assert (inputs.node_capacity - greedy.load <= slack)[greedy.load > 0].any()
        event("tight: not refined")
        return
    assert refined is not None, report.summary()
    event(
        "refined, better than greedy"
        if objective(inputs, refined[0]) < before - 1e-6
        else "refined"
    )
    assert report.status == "optimal", report.summary()
    plan = refined[0]
    check_valid(inputs, plan)
    after = objective(inputs, plan)
    # Costs are whole 0.01 ms, and the demand rounded up to whole units may take that much
    # more of the reserve.
    rounding = COST_ROUNDING_MS * float(inputs.group_demand.sum()) + (
        RESERVE_PENALTY_MS * report.classes * report.unit_gbps
    )
    assert after <= before + rounding + 1e-6
    optimum = lp_optimum(inputs)
    assert optimum is not None  # the greedy plan is feasible for it
    assert optimum - 1e-6 <= after <= optimum + 2 * rounding + 1e-6
    # The greedy's plan is not touched (it stays in service until the refined one is in).
    assert objective(inputs, greedy) == before
    # Started from what it kept, the next refine finds the same optimum.
    again, report2, _ = refine([plan_policy(inputs)], [inputs], 60.0, memory=memory)
    assert again is not None and report2.status == "optimal"
    assert objective(inputs, again[0]) == pytest.approx(after, abs=2 * rounding + 1e-6)


@settings(max_examples=40, deadline=None)
@given(loaded_worlds())
def test_a_refine_asked_to_stop_still_gives_a_valid_plan_no_worse_than_greedy(world: tuple) -> None:
    inputs = make(world)
    greedy = plan_policy(inputs)
    refined, report, _ = refine([greedy], [inputs], 60.0, stop=lambda: True)
    if refined is None:
        assert report.status.startswith("not refined")
        return
    assert report.status == "stopped: asked to" and report.rounds == 1
    check_valid(inputs, refined[0])
    rounding = COST_ROUNDING_MS * float(inputs.group_demand.sum()) + (
        RESERVE_PENALTY_MS * report.classes * report.unit_gbps
    )
    assert objective(inputs, refined[0]) <= objective(inputs, greedy) + rounding + 1e-6


def test_the_refine_undoes_a_greedy_choice_that_costs_another_group_dearly() -> None:
    # Both groups reach node 0 at 5 ms; group 0 reaches node 1 at 6, group 1 at 100. Each
    # node has room for one group. The greedy takes the cheapest edge first (a tie: group 0)
    # and leaves group 1 the 100 ms node: 105 in all, where 6 + 5 = 11 was possible.
    arrays = dict(
        group_lat=[40.4, 38.7], group_lon=[-3.7, -9.1], group_country=[0, 1], group_asn=[0, 0],
        group_fence=[0, 0], node_lat=[40.4, 38.7], node_lon=[-3.7, -9.1], node_country=[0, 1],
        node_asn=[1, 2], node_state=[0, 0], node_util=[0.0, 0.0], node_in_pool=[True, True],
        fence_allowed=np.ones((1, 2), dtype=bool),
        country_rtt=np.array([[5.0, 6.0], [5.0, 100.0]]), onnet_bonus_ms=0.0, load_penalty_ms=0.0,
        meas_start=[0, 0, 0], meas_node=[], meas_rtt=[],
    )  # fmt: skip
    inputs = make((arrays, np.array([1.0, 1.0]), np.array([1.0, 1.0]), 1.0))
    greedy = plan_policy(inputs)
    assert objective(inputs, greedy) == pytest.approx(105.0)
    refined, report, _ = refine([greedy], [inputs], 60.0)
    assert refined is not None and report.status == "optimal"
    assert dict(refined[0].shares(0)) == pytest.approx({1: 1.0})
    assert dict(refined[0].shares(1)) == pytest.approx({0: 1.0})
    assert objective(inputs, refined[0]) == pytest.approx(11.0)
    assert report.mean_score_before_ms == pytest.approx(52.5)
    assert report.mean_score_after_ms == pytest.approx(5.5)


@settings(max_examples=60, deadline=None)
@given(loaded_worlds(), st.data())
def test_refined_plans_of_two_policies_one_idle_are_repaired_like_greedy_ones(
    world: tuple, data: st.DataObject
) -> None:
    """Two policies on the same nodes, the second without demand (a policy nobody queries
    yet): the refined plans must be plans a node failure can be repaired on, as the router
    does once they are in service (an idle policy's load came out as integers once, and its
    first repair failed)."""
    arrays, demand, capacity, headroom = world
    busy = make(world)
    idle = make((arrays, np.zeros_like(demand), capacity, headroom))
    plans = [plan_policy(busy), plan_policy(idle)]
    refined, report, _ = refine(plans, [busy, idle], 60.0)
    if refined is None:
        assert report.status.startswith("not refined"), report.summary()
        return
    for plan in refined:
        assert plan.load.dtype == np.float64 and plan.alloc_amount.dtype == np.float64
    assert not refined[1].alloc_group.size and not refined[1].load.any()
    up = np.flatnonzero(np.asarray(busy.rank.node_state) == 0)
    if len(up) == 0:
        return
    node = int(data.draw(st.sampled_from(up.tolist())))
    states = np.array(arrays["node_state"])
    states[node] = 2
    after = [make(({**arrays, "node_state": states}, d, capacity, headroom))
             for d in (demand, np.zeros_like(demand))]  # fmt: skip
    for p, plan in enumerate(refined):
        repaired = replan_node_down(after[p], plan, node, refined[1 - p].load)
        if repaired is None:  # a health tier changed: a full plan follows, as for the greedy
            return
        check_valid(after[p], repaired)
        assert all(n != node for g in range(len(demand)) for n, _ in repaired.shares(g))


def test_the_flow_solver_child_solves_as_in_process_and_survives_its_child_ending() -> None:
    # Two sources, two sinks through a middle vertex; the cheap arc has room for 3 of 5.
    tail = np.array([0, 0, 1, 2, 2], dtype=np.int32)
    head = np.array([2, 3, 2, 3, 3], dtype=np.int32)
    capacity = np.array([3, 5, 5, 2, 10], dtype=np.int64)
    cost = np.array([1, 10, 2, 1, 4], dtype=np.int64)
    supply = np.array([4, 1, 0, -5], dtype=np.int64)
    solver = FlowSolver()
    try:
        status, flow = solver.solve(tail, head, capacity, cost, supply)
        expected_status, expected = solve_here(tail, head, capacity, cost, supply)
        assert status == expected_status == "OPTIMAL"
        assert np.array_equal(flow, expected) and int(flow @ cost) == int(expected @ cost)
        # More supply than the arcs carry: said so, no flow.
        status, flow = solver.solve(tail, head, capacity, cost, np.array([40, 1, 0, -41]))
        assert status == "INFEASIBLE" and flow is None
        child = solver._child
        child.kill()
        child.wait(timeout=10)
        status, flow = solver.solve(tail, head, capacity, cost, supply)
        if status.startswith("failed"):  # the dead child is found on this solve: the next restarts
            status, flow = solver.solve(tail, head, capacity, cost, supply)
        assert status == "OPTIMAL" and np.array_equal(flow, expected)
        assert solver._child is not child
        path = solver._path
    finally:
        solver.close()
    assert solver._child is None and path is not None and not Path(path).exists()
