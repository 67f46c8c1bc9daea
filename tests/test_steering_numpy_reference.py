"""The numba ranking kernels against the vectorised numpy reference (tests/reference_numpy.py).

Both algorithms the router has, each against numpy running the same algorithm: the full
scan (``rank_groups``) and ``plan_policy``'s ranking (location lists, then each group's
exact candidates, with the full-scan fallback). On the sample deployment (``zones/``) and
on random inputs with exact ties, geofences, on-net-only nodes, pools, health tiers and
measured RTTs. Node lists, location lists and full-scan counts must be equal; scores and
distances equal to a few ulp (numpy's arcsin is not libm's asin in the last bit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import load_deployment
from router.steering.capacity import PlanInputs, Topology, plan_policy
from router.steering.model import compile_model
from router.steering.rank import RankInputs, rank_groups
from tests import reference, reference_numpy

REPO = Path(__file__).resolve().parents[1]
PROPERTY = settings(max_examples=120, deadline=None)
NODE_ASNS = (3352, 3243, 12479)


def numba_ranking(rank: RankInputs, candidates: int, depth: int):
    """plan_policy's ranking alone (no demand), as the router runs it."""
    topology = Topology.create(rank)
    n_nodes = len(rank.node_lat)
    idle = PlanInputs.create(rank, topology, np.zeros(len(rank.group_lat)), np.ones(n_nodes), 0.8)
    return topology, plan_policy(idle, candidates=candidates, location_depth=depth)


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isinf(a), np.isinf(b))
    finite = ~np.isinf(a)
    np.testing.assert_allclose(a[finite], b[finite], rtol=1e-12, atol=0.0)


def assert_same_ranking(rank: RankInputs, candidates: int, depth: int) -> None:
    for prune in (True, False):
        assert_same_ranking_numpy(rank, candidates, depth, prune)


def assert_same_ranking_numpy(rank: RankInputs, candidates: int, depth: int, prune: bool) -> None:
    topology, plan = numba_ranking(rank, candidates, depth)
    ref = reference_numpy.rank_candidates(rank, topology, candidates, depth, prune)
    np.testing.assert_array_equal(plan.eligible, ref["eligible"])
    np.testing.assert_array_equal(plan.loc_node, ref["loc_node"])
    assert_close(plan.loc_score, ref["loc_score"])
    assert_close(plan.loc_dist, ref["loc_dist"])
    np.testing.assert_array_equal(plan.cand_node, ref["cand_node"])
    assert_close(plan.cand_score, ref["cand_score"])
    assert_close(plan.cand_dist, ref["cand_dist"])
    assert plan.full_scans == ref["full_scans"]
    full = rank_groups(rank, candidates)
    np.testing.assert_array_equal(full, reference_numpy.rank_full_scan(rank, candidates, prune))
    # Two algorithms, one answer: the candidates are the full scan's best nodes.
    np.testing.assert_array_equal(plan.cand_node, full)


@pytest.mark.parametrize("policy", [0, 1])
def test_sample_deployment_equals_numpy(policy: int) -> None:
    model = compile_model(load_deployment(REPO / "zones"))
    n = len(model.node_ids)
    state = np.zeros(n, dtype=np.int8)
    state[0] = 2  # one node down moves its groups to others
    rank = model.rank_inputs(policy, state, np.linspace(0.0, 1.5, n))
    assert len(rank.group_lat) > 1000  # the whole sample, not a slice of it
    assert_same_ranking(rank, 16, 24)
    assert_same_ranking(rank, 3, 4)  # short location lists: the exactness checks decide


@st.composite
def worlds(draw: st.DrawFn) -> RankInputs:
    """Groups sharing a few places (so locations are shared), nodes on a few sites (so
    scores and distances tie exactly), geofences, on-net-only nodes, samples."""
    g_count = draw(st.integers(1, 30))
    n_count = draw(st.integers(1, 14))
    c_count = draw(st.integers(1, 4))
    places = [(40.4, -3.7), (41.4, 2.2), (38.7, -9.1), (48.9, 2.4), (52.5, 13.4)]
    group_place = draw(st.lists(st.integers(0, 4), min_size=g_count, max_size=g_count))
    node_place = draw(st.lists(st.integers(0, 4), min_size=n_count, max_size=n_count))
    group_asn = draw(st.lists(st.sampled_from((0, *NODE_ASNS)), min_size=g_count, max_size=g_count))
    node_asn = draw(st.lists(st.sampled_from(NODE_ASNS), min_size=n_count, max_size=n_count))
    node_in_pool = draw(st.lists(st.booleans(), min_size=n_count, max_size=n_count))
    node_in_pool[draw(st.integers(0, n_count - 1))] = True
    pool = np.array(node_in_pool)
    geofences = np.array(draw(st.lists(st.booleans(), min_size=2 * n_count, max_size=2 * n_count)))
    geofences = np.vstack([np.ones(n_count, dtype=bool), geofences.reshape(2, n_count)])
    onnet_only = np.array(draw(st.lists(st.booleans(), min_size=n_count, max_size=n_count)))
    # A group's fence: its geofence, and on-net-only nodes only for their own ASN's clients.
    group_geofence = draw(st.lists(st.integers(0, 2), min_size=g_count, max_size=g_count))
    rows: dict[tuple[int, int], int] = {}
    fence_rows: list[np.ndarray] = [np.ones(n_count, dtype=bool)]
    group_fence = []
    for geofence, asn in zip(group_geofence, group_asn):
        row = geofences[geofence] & (~onnet_only | (np.array(node_asn) == asn))
        if not (row & pool).any():
            row = row.copy()
            row[np.flatnonzero(pool)[0]] = True
        key = (geofence, asn)
        if key not in rows:
            rows[key] = len(fence_rows)
            fence_rows.append(row)
        group_fence.append(rows[key])
    samples = []
    for _ in range(g_count):
        nodes = draw(st.lists(st.integers(0, n_count - 1), max_size=4, unique=True))
        samples.append([(n, draw(st.sampled_from((1.0, 5.0, 20.0, 80.0)))) for n in nodes])
    return RankInputs.create(
        group_lat=[places[p][0] for p in group_place], group_lon=[places[p][1] for p in group_place],
        group_country=[p % c_count - (p == 4) for p in group_place], group_asn=group_asn,
        group_fence=group_fence, fence_allowed=np.array(fence_rows),
        node_lat=[places[p][0] for p in node_place], node_lon=[places[p][1] for p in node_place],
        node_country=draw(st.lists(st.integers(-1, c_count - 1), min_size=n_count, max_size=n_count)),
        node_asn=node_asn,
        node_state=draw(st.lists(st.sampled_from((0, 0, 0, 1, 2)), min_size=n_count, max_size=n_count)),
        node_util=draw(st.lists(st.sampled_from((0.0, 0.5, 1.0)), min_size=n_count, max_size=n_count)),
        node_in_pool=node_in_pool,
        country_rtt=np.array(draw(st.lists(st.sampled_from((np.nan, 5.0, 20.0)), min_size=c_count**2,
                                           max_size=c_count**2))).reshape(c_count, c_count),
        onnet_bonus_ms=draw(st.sampled_from((0.0, 15.0, 100.0))),
        load_penalty_ms=draw(st.sampled_from((0.0, 30.0))),
        meas_start=np.cumsum([0] + [len(s) for s in samples]),
        meas_node=[n for s in samples for n, _ in s], meas_rtt=[ms for s in samples for _, ms in s],
    )  # fmt: skip


@PROPERTY
@given(worlds(), st.integers(1, 6), st.integers(1, 6))
def test_random_worlds_equal_numpy(rank: RankInputs, candidates: int, depth: int) -> None:
    assert_same_ranking(rank, candidates, depth)


@PROPERTY
@given(worlds())
def test_numpy_full_scan_equals_the_plain_reference(rank: RankInputs) -> None:
    # The numpy reference is itself held to the loop reference that defines the score.
    np.testing.assert_array_equal(
        reference_numpy.rank_full_scan(rank, 5), reference.rank_groups(rank, 5)
    )
    np.testing.assert_array_equal(reference_numpy.eligibility(rank), reference.eligibility(rank))


def test_exact_ties_go_to_the_nearer_node_then_the_lower_index() -> None:
    # Nodes 0 and 2 share a site, node 1 is farther with the same country RTT: one score.
    rank = RankInputs.create(
        group_lat=[40.4, 40.4], group_lon=[-3.7, -3.7], group_country=[0, 0], group_asn=[0, 3352],
        node_lat=[41.4, 48.9, 41.4], node_lon=[2.2, 2.4, 2.2], node_country=[0, 0, 0],
        node_asn=[3243, 3243, 3352], node_state=[0, 0, 0], node_util=[0.0, 0.0, 0.0],
        node_in_pool=[True, True, True], country_rtt=[[10.0]], onnet_bonus_ms=25.0, load_penalty_ms=0.0,
    )  # fmt: skip
    expected = [[0, 2, 1], [2, 0, 1]]  # group 1 is on-net with node 2
    assert rank_groups(rank, 3).tolist() == expected
    assert reference_numpy.rank_full_scan(rank, 3).tolist() == expected
    assert_same_ranking(rank, 3, 3)
    assert_same_ranking(rank, 2, 2)


def test_chord_bounds_hold_at_the_antipode_and_next_door() -> None:
    # Estimated latencies only (no country): the bounds decide which distances are computed.
    # Nodes on the group, a hair away, at and near its antipode, each twice (exact ties).
    lat, lon = 40.4, -3.7
    spots = [(lat, lon), (lat + 1e-9, lon), (-lat, lon + 180.0), (-lat + 1e-7, lon + 180.0),
             (lat, lon + 1e-9), (-lat, lon - 180.0 + 1e-9)]  # fmt: skip
    node_lat = [p[0] for p in spots for _ in range(2)]
    node_lon = [p[1] for p in spots for _ in range(2)]
    n = len(node_lat)
    rank = RankInputs.create(
        group_lat=[lat, -lat, 0.0], group_lon=[lon, lon + 180.0, 0.0], group_country=[-1, -1, -1],
        group_asn=[0, 0, 0], node_lat=node_lat, node_lon=node_lon, node_country=[-1] * n,
        node_asn=[3352] * n, node_state=[0] * n, node_util=[0.0] * n, node_in_pool=[True] * n,
        country_rtt=[[np.nan]], onnet_bonus_ms=0.0, load_penalty_ms=0.0,
    )  # fmt: skip
    for k in (1, 2, 3, 5, n):
        expected = reference.rank_groups(rank, k)
        np.testing.assert_array_equal(rank_groups(rank, k), expected)
        for prune in (True, False):
            np.testing.assert_array_equal(reference_numpy.rank_full_scan(rank, k, prune), expected)
    assert_same_ranking(rank, 3, 4)
