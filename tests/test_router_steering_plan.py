"""Capacity-aware planning (router/steering/capacity.py) against its plain reference.

Random worlds with geofences, sampled RTTs, demand and capacity: the numba plan equals
``reference.plan``; candidates equal the full-scan ranking even with a short location
list (the exactness fallback); demand is conserved; no node is planned past its
capacity while an allowed node has room; a fence is never crossed; and the incremental
repair after a node fails keeps all of that while touching only the groups that used it.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from router.steering.capacity import (
    LOCATION_DEPTH,
    PlanInputs,
    Topology,
    plan_policy,
    primary_shares,
    replan_groups,
    replan_node_down,
    rows_listing_any,
)
from router.steering.rank import RankInputs, rank_groups
from tests import reference

PROPERTY = settings(max_examples=120, deadline=None)
EPS = 1e-9


@st.composite
def worlds(
    draw: st.DrawFn, min_nodes: int = 1, max_nodes: int = 12
) -> tuple[dict[str, object], np.ndarray, np.ndarray, float]:
    g_count = draw(st.integers(1, 25))
    n_count = draw(st.integers(min_nodes, max_nodes))
    c_count = draw(st.integers(1, 4))
    f_count = draw(st.integers(1, 3))
    locs = draw(st.integers(1, 6))
    loc_lat = draw(
        st.lists(st.sampled_from((36.0, 40.4, 41.4, 48.9, 52.5)), min_size=locs, max_size=locs)
    )
    loc_lon = draw(
        st.lists(st.sampled_from((-9.1, -3.7, 2.2, 2.4, 13.4)), min_size=locs, max_size=locs)
    )
    group_loc = draw(st.lists(st.integers(0, locs - 1), min_size=g_count, max_size=g_count))
    node_state = draw(
        st.lists(st.sampled_from((0, 0, 0, 1, 2)), min_size=n_count, max_size=n_count)
    )
    node_in_pool = draw(st.lists(st.booleans(), min_size=n_count, max_size=n_count))
    node_in_pool[draw(st.integers(0, n_count - 1))] = True
    allowed = np.array(
        draw(st.lists(st.booleans(), min_size=f_count * n_count, max_size=f_count * n_count))
    )
    allowed = allowed.reshape(f_count, n_count)
    allowed[0] = True
    pool = np.array(node_in_pool)
    for f in range(f_count):
        if not (allowed[f] & pool).any():
            allowed[f, np.flatnonzero(pool)[0]] = True
    samples: list[list[tuple[int, float]]] = []
    for _ in range(g_count):
        nodes = draw(st.lists(st.integers(0, n_count - 1), max_size=3, unique=True))
        samples.append(sorted((n, draw(st.sampled_from((1.0, 5.0, 80.0, 300.0)))) for n in nodes))
    meas_start = np.cumsum([0] + [len(s) for s in samples])
    arrays = dict(
        group_lat=[loc_lat[i] for i in group_loc], group_lon=[loc_lon[i] for i in group_loc],
        group_country=[i % c_count for i in group_loc],
        group_asn=draw(st.lists(st.sampled_from((0, 3352, 3243)), min_size=g_count, max_size=g_count)),
        group_fence=draw(st.lists(st.integers(0, f_count - 1), min_size=g_count, max_size=g_count)),
        node_lat=draw(st.lists(st.sampled_from((40.4, 41.4, 38.7, 48.9)), min_size=n_count, max_size=n_count)),
        node_lon=draw(st.lists(st.sampled_from((-3.7, 2.2, -9.1, 2.4)), min_size=n_count, max_size=n_count)),
        node_country=draw(st.lists(st.integers(-1, c_count - 1), min_size=n_count, max_size=n_count)),
        node_asn=draw(st.lists(st.sampled_from((3352, 3243, 12479)), min_size=n_count, max_size=n_count)),
        node_state=node_state, node_util=draw(st.lists(st.sampled_from((0.0, 0.5, 1.0)), min_size=n_count,
                                                       max_size=n_count)),
        node_in_pool=node_in_pool, fence_allowed=allowed,
        country_rtt=np.array(draw(st.lists(st.sampled_from((np.nan, 5.0, 20.0, 35.5)), min_size=c_count**2,
                                           max_size=c_count**2))).reshape(c_count, c_count),
        onnet_bonus_ms=draw(st.sampled_from((0.0, 10.0, 100.0))), load_penalty_ms=draw(st.sampled_from((0.0, 40.0))),
        meas_start=meas_start, meas_node=[n for s in samples for n, _ in s], meas_rtt=[ms for s in samples for _, ms in s],
    )  # fmt: skip
    demand = np.array(
        draw(st.lists(st.sampled_from((0.0, 1.0, 2.5, 10.0)), min_size=g_count, max_size=g_count))
    )
    capacity = np.array(
        draw(st.lists(st.sampled_from((1.0, 4.0, 10.0)), min_size=n_count, max_size=n_count))
    )
    headroom = draw(st.sampled_from((0.5, 0.8, 1.0)))
    return arrays, demand, capacity, headroom


def make(world: tuple) -> PlanInputs:
    arrays, demand, capacity, headroom = world
    rank = RankInputs.create(**arrays)
    return PlanInputs.create(rank, Topology.create(rank), demand, capacity, headroom)


def placed(plan, groups: int) -> np.ndarray:
    out = plan.overflow.copy()
    np.add.at(out, plan.alloc_group, plan.alloc_amount)
    return out


def check_valid(inputs: PlanInputs, plan) -> None:
    r = inputs.rank
    # Demand conserved, group by group.
    np.testing.assert_allclose(
        placed(plan, len(r.group_lat)), inputs.group_demand, rtol=1e-9, atol=EPS
    )
    # Load is what the shares add up to.
    load = np.zeros(len(r.node_lat))
    for g in range(len(r.group_lat)):
        for node, amount in plan.shares(g):
            load[node] += amount
    np.testing.assert_allclose(plan.load, load, rtol=1e-9, atol=1e-7)
    eligible = reference.eligibility(r)
    for g in range(len(r.group_lat)):
        allowed = eligible[r.group_fence[g]]
        # Never outside the fence (or pool, or health tier).
        assert all(allowed[n] for n in plan.cand_node[g] if n >= 0)
        assert all(allowed[n] for n, _ in plan.shares(g))
        # Overflow only when every node the group may use is full.
        if plan.overflow[g] > EPS:
            assert (plan.load[allowed] >= inputs.node_capacity[allowed] - 1e-7).all()
    # No node past capacity unless some group overflowed (then everything it could use was full).
    if not (plan.overflow > EPS).any():
        assert (plan.load <= inputs.node_capacity + 1e-7).all()


def check_equals_reference(world: tuple, candidates: int, location_depth: int) -> None:
    inputs = make(world)
    plan = plan_policy(inputs, candidates=candidates, location_depth=location_depth)
    ref = reference.plan(inputs, candidates)
    np.testing.assert_array_equal(plan.cand_node, ref["cand_node"])
    allocs = list(
        zip(plan.alloc_group.tolist(), plan.alloc_node.tolist(), plan.alloc_amount.tolist())
    )
    assert [(g, n) for g, n, _ in allocs] == [(g, n) for g, n, _ in ref["allocs"]]
    np.testing.assert_allclose([a for *_, a in allocs], [a for *_, a in ref["allocs"]], rtol=1e-12)
    np.testing.assert_allclose(plan.overflow, ref["overflow"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(plan.load, ref["load"], rtol=1e-9, atol=1e-9)
    check_valid(inputs, plan)


@PROPERTY
@given(worlds(), st.integers(1, 6))
def test_plan_equals_reference(world: tuple, candidates: int) -> None:
    check_equals_reference(world, candidates, LOCATION_DEPTH)


@settings(max_examples=60, deadline=None)
@given(worlds(min_nodes=20, max_nodes=70), st.integers(1, 4), st.integers(1, 6))
def test_plan_equals_reference_when_the_fill_walks_past_the_location_lists(
    world: tuple, candidates: int, location_depth: int
) -> None:
    # Short location lists and many nodes: the fill's location orders start from the lists
    # and score the rest when a walk passes them (a heap popped on demand, then one sort of
    # the rest once a walk is deep), every branch of _kernels._fill's lazy order.
    check_equals_reference(world, candidates, max(location_depth, candidates))


@PROPERTY
@given(worlds(), st.integers(1, 4), st.integers(1, 4))
def test_candidates_equal_full_scan_even_with_a_short_location_list(
    world: tuple, candidates: int, depth: int
) -> None:
    inputs = make(world)
    plan = plan_policy(inputs, candidates=candidates, location_depth=depth)
    np.testing.assert_array_equal(plan.cand_node, rank_groups(inputs.rank, candidates))


@PROPERTY
@given(worlds(), st.data())
def test_node_down_repair_is_valid_and_local(world: tuple, data: st.DataObject) -> None:
    arrays, demand, capacity, headroom = world
    inputs = make(world)
    plan = plan_policy(inputs, candidates=3, location_depth=4)
    up = np.flatnonzero(np.asarray(inputs.rank.node_state) == 0)
    if len(up) == 0:
        return
    node = int(data.draw(st.sampled_from(up.tolist())))
    before_cand = plan.cand_node.copy()
    before_shares = {g: plan.shares(g) for g in range(len(demand))}
    used = {
        g
        for g in range(len(demand))
        if node in before_cand[g] or node in [n for n, _ in plan.shares(g)]
    }
    used |= set(np.flatnonzero(plan.overflow > 0).tolist())  # groups that did not fit get a retry
    states = np.array(arrays["node_state"])
    states[node] = 2
    after_inputs = make(({**arrays, "node_state": states}, demand, capacity, headroom))
    repaired = replan_node_down(after_inputs, plan, node)
    full = plan_policy(after_inputs, candidates=3, location_depth=4)
    if repaired is None:
        # Only when a health tier changed: the full plan's eligibility differs elsewhere too.
        expected = reference.eligibility(inputs.rank)
        expected[:, node] = False
        assert not np.array_equal(expected, reference.eligibility(after_inputs.rank))
        return
    np.testing.assert_array_equal(repaired.cand_node, full.cand_node)
    check_valid(after_inputs, repaired)
    assert all(n != node for g in range(len(demand)) for n, _ in repaired.shares(g))
    for g in set(range(len(demand))) - used:
        np.testing.assert_array_equal(repaired.cand_node[g], before_cand[g])
        assert repaired.shares(g) == before_shares[g]


def test_spill_fills_the_next_best_before_any_node_runs_over() -> None:
    # Two groups in Madrid, one node there (capacity 10), one in Lisbon, one in Paris.
    rank = RankInputs.create(
        group_lat=[40.4, 40.4], group_lon=[-3.7, -3.7], group_country=[0, 0], group_asn=[0, 0],
        node_lat=[40.4, 38.7, 48.9], node_lon=[-3.7, -9.1, 2.4], node_country=[0, 1, 2],
        node_asn=[1, 2, 3], node_state=[0, 0, 0], node_util=[0.0, 0.0, 0.0], node_in_pool=[True] * 3,
        country_rtt=[[5.0, 15.0, 30.0], [15.0, 5.0, 35.0], [30.0, 35.0, 5.0]],
        onnet_bonus_ms=0.0, load_penalty_ms=0.0,
    )  # fmt: skip
    inputs = PlanInputs.create(rank, Topology.create(rank), [8.0, 8.0], [10.0, 10.0, 100.0], 1.0)
    plan = plan_policy(inputs, candidates=1)  # one candidate each: the rest must spill
    assert plan.shares(0) == [(0, 8.0)]
    assert plan.shares(1) == [(0, 2.0), (1, 6.0)]
    np.testing.assert_allclose(plan.load, [10.0, 6.0, 0.0])
    groups, nodes, weights = primary_shares(plan, inputs)
    assert list(zip(groups.tolist(), nodes.tolist(), weights.tolist())) == [
        (0, 0, 8.0),
        (1, 0, 2.0),
        (1, 1, 6.0),
    ]


def test_headroom_is_used_last_and_overflow_only_when_all_is_full() -> None:
    rank = RankInputs.create(
        group_lat=[40.4], group_lon=[-3.7], group_country=[0], group_asn=[0],
        node_lat=[40.4, 38.7], node_lon=[-3.7, -9.1], node_country=[0, 1], node_asn=[1, 2],
        node_state=[0, 0], node_util=[0.0, 0.0], node_in_pool=[True, True],
        country_rtt=[[5.0, 15.0], [15.0, 5.0]], onnet_bonus_ms=0.0, load_penalty_ms=0.0,
    )  # fmt: skip
    topology = Topology.create(rank)
    plan = plan_policy(PlanInputs.create(rank, topology, [17.0], [10.0, 10.0], 0.8))
    assert plan.shares(0) == [(0, 9.0), (1, 8.0)]  # 8 + 8 under headroom, then 1 from the reserve
    plan = plan_policy(PlanInputs.create(rank, topology, [25.0], [10.0, 10.0], 0.8))
    assert plan.shares(0) == [(0, 15.0), (1, 10.0)] and plan.overflow[0] == 5.0


def test_geofence_fails_inside_the_fence_never_across_it() -> None:
    # Group 0 (DE) fenced to node 0 (DE), which is down; node 1 (FR) is up and nearer in score.
    rank = RankInputs.create(
        group_lat=[52.5, 48.9], group_lon=[13.4, 2.4], group_country=[0, 1], group_asn=[0, 0], group_fence=[1, 0],
        node_lat=[52.5, 48.9], node_lon=[13.4, 2.4], node_country=[0, 1], node_asn=[1, 2],
        node_state=[2, 0], node_util=[0.0, 0.0], node_in_pool=[True, True],
        fence_allowed=[[True, True], [True, False]],
        country_rtt=[[50.0, 10.0], [10.0, 5.0]], onnet_bonus_ms=0.0, load_penalty_ms=0.0,
    )  # fmt: skip
    plan = plan_policy(
        PlanInputs.create(rank, Topology.create(rank), [1.0, 1.0], [10.0, 10.0], 0.8)
    )
    assert plan.cand_node[0].tolist()[:1] == [0]  # the fence's own (down) node: fail open inside
    assert plan.shares(0) == [(0, 1.0)]
    assert plan.shares(1) == [(1, 1.0)]
    assert rank_groups(rank, 2).tolist() == [[0, -1], [1, -1]]


@PROPERTY
@given(worlds(), st.data())
def test_group_repair_after_new_samples_is_valid_and_local(
    world: tuple, data: st.DataObject
) -> None:
    arrays, demand, capacity, headroom = world
    inputs = make(world)
    plan = plan_policy(inputs, candidates=3, location_depth=4)
    g_count, n_count = len(demand), len(arrays["node_lat"])
    group = data.draw(st.integers(0, g_count - 1))
    node = data.draw(st.integers(0, n_count - 1))
    # New samples for one group: its rows of the CSR change, nothing else.
    starts = np.asarray(arrays["meas_start"])
    nodes, rtts = list(arrays["meas_node"]), list(arrays["meas_rtt"])
    lo, hi = int(starts[group]), int(starts[group + 1])
    row = {n: ms for n, ms in zip(nodes[lo:hi], rtts[lo:hi])}
    row[node] = data.draw(st.sampled_from((0.5, 400.0)))
    new_nodes = nodes[:lo] + sorted(row) + nodes[hi:]
    new_rtts = rtts[:lo] + [row[n] for n in sorted(row)] + rtts[hi:]
    new_starts = starts.copy()
    new_starts[group + 1 :] += len(row) - (hi - lo)
    changed = {**arrays, "meas_start": new_starts, "meas_node": new_nodes, "meas_rtt": new_rtts}
    after = make((changed, demand, capacity, headroom))
    before_shares = {g: plan.shares(g) for g in range(len(demand))}
    retried = set(np.flatnonzero(plan.overflow > 0).tolist())  # groups that did not fit get a retry
    repaired = replan_groups(after, plan, np.array([group]))
    np.testing.assert_array_equal(repaired.cand_node, rank_groups(after.rank, 3))
    check_valid(after, repaired)
    for g in range(g_count):
        if g != group and g not in retried:
            assert repaired.shares(g) == before_shares[g]


@PROPERTY
@given(st.data())
def test_rows_listing_any_is_the_rows_not_skipped_that_hold_a_flagged_node(
    data: st.DataObject,
) -> None:
    n_nodes = data.draw(st.integers(1, 12))
    rows = data.draw(st.integers(0, 30))
    width = data.draw(st.integers(1, 5))
    table = np.array(
        data.draw(st.lists(st.lists(st.integers(-1, n_nodes - 1), min_size=width, max_size=width),
                           min_size=rows, max_size=rows)),
        dtype=np.int32,
    ).reshape(rows, width)  # fmt: skip
    skip = np.array(data.draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), dtype=bool)
    flagged = np.array(
        data.draw(st.lists(st.booleans(), min_size=n_nodes, max_size=n_nodes)), dtype=bool
    )
    expected = [
        r for r in range(rows)
        if not skip[r] and any(n >= 0 and flagged[n] for n in table[r])
    ]  # fmt: skip
    got = rows_listing_any(table, skip, flagged)
    assert got.dtype == np.int32 and got.tolist() == expected
