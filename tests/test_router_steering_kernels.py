"""The numba steering kernels (router/steering/_kernels.py), through router/steering/rank.py.

``rank_groups`` is held equal to the plain reference in ``tests/reference.py`` on random
inputs, ``group_components`` to the reference score matrix and to the scoring formula, and
the ranking is checked against metamorphic properties: health tiers and fail-open, pool
membership, row shape, node-order invariance, monotonicity in load and the on-net bonus.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from router.steering import _kernels
from router.steering.rank import (
    EST_BASE_MS,
    EST_MS_PER_KM,
    NODE_FIELDS,
    RankInputs,
    group_components,
    rank_groups,
)
from tests import reference

UP, DRAINING, DOWN = _kernels.UP, _kernels.DRAINING, _kernels.DOWN

# The first call of a kernel may compile it: no deadline. Example counts keep the file fast.
PROPERTY = settings(max_examples=150, deadline=None)
METAMORPHIC = settings(max_examples=80, deadline=None)

# Group ASNs include 0 (unknown); node ASNs are >= 1 as the node inventory requires.
NODE_ASNS = (3352, 3243, 12479)
GROUP_ASNS = (0, *NODE_ASNS)

lats = st.floats(-90.0, 90.0, allow_nan=False)
lons = st.floats(-180.0, 180.0, allow_nan=False)
utils = st.one_of(st.sampled_from((0.0, 0.5, 1.0, 2.0)), st.floats(0.0, 2.0))
weights = st.one_of(st.sampled_from((0.0, 10.0, 100.0)), st.floats(0.0, 100.0))
# A few repeated RTT values make measured latencies tie exactly, so distance decides.
rtts = st.one_of(st.just(math.nan), st.sampled_from((1.0, 10.0, 35.5)), st.floats(0.0, 300.0))


@st.composite
def rank_cases(draw: st.DrawFn, distinct_nodes: bool = False) -> tuple[dict[str, object], int]:
    """(keyword arguments of RankInputs.create, answer count k).

    With ``distinct_nodes`` every node has its own coordinates. Otherwise nodes may copy an
    earlier node (location, country, ASN, load), which forces exact ties on score and
    distance, so only the node index can break them.
    """
    g_count = draw(st.integers(1, 30))
    n_count = draw(st.integers(1, 20))
    c_count = draw(st.integers(1, 6))
    k = draw(st.integers(1, 5))
    countries = st.integers(-1, c_count - 1)

    group_lat = draw(st.lists(lats, min_size=g_count, max_size=g_count))
    group_lon = draw(st.lists(lons, min_size=g_count, max_size=g_count))
    group_country = draw(st.lists(countries, min_size=g_count, max_size=g_count))
    group_asn = draw(st.lists(st.sampled_from(GROUP_ASNS), min_size=g_count, max_size=g_count))

    if distinct_nodes:
        coords = draw(
            st.lists(st.tuples(lats, lons), min_size=n_count, max_size=n_count, unique=True)
        )
    else:
        coords = draw(st.lists(st.tuples(lats, lons), min_size=n_count, max_size=n_count))
    node_lat = [c[0] for c in coords]
    node_lon = [c[1] for c in coords]
    node_country = draw(st.lists(countries, min_size=n_count, max_size=n_count))
    node_asn = draw(st.lists(st.sampled_from(NODE_ASNS), min_size=n_count, max_size=n_count))
    node_util = draw(st.lists(utils, min_size=n_count, max_size=n_count))
    if not distinct_nodes:
        for n in range(1, n_count):
            source = draw(st.integers(-1, n - 1))
            if source >= 0 and draw(st.booleans()):
                node_lat[n], node_lon[n] = node_lat[source], node_lon[source]
                node_country[n] = node_country[source]
                node_asn[n] = node_asn[source]
                node_util[n] = node_util[source]

    # Bias some cases towards pools without up nodes, so draining and fail-open are reached.
    health = draw(st.sampled_from(("any", "any", "no_up", "all_down")))
    states = {"any": st.integers(0, 2), "no_up": st.integers(1, 2), "all_down": st.just(DOWN)}[
        health
    ]
    node_state = draw(st.lists(states, min_size=n_count, max_size=n_count))
    node_in_pool = draw(st.lists(st.booleans(), min_size=n_count, max_size=n_count))
    if not any(node_in_pool):
        node_in_pool[draw(st.integers(0, n_count - 1))] = True

    rtt = draw(st.lists(rtts, min_size=c_count * c_count, max_size=c_count * c_count))
    arrays = dict(
        group_lat=group_lat, group_lon=group_lon, group_country=group_country, group_asn=group_asn,
        node_lat=node_lat, node_lon=node_lon, node_country=node_country, node_asn=node_asn,
        node_state=node_state, node_util=node_util, node_in_pool=node_in_pool,
        country_rtt=np.array(rtt, dtype=np.float64).reshape(c_count, c_count),
        onnet_bonus_ms=draw(weights), load_penalty_ms=draw(weights),
    )  # fmt: skip
    return arrays, k


def candidates(inputs: RankInputs) -> np.ndarray:
    """Pool nodes of the best health tier present in the pool (what the docstring promises)."""
    pool = np.flatnonzero(inputs.node_in_pool)
    return pool[inputs.node_state[pool] == inputs.node_state[pool].min()]


def chosen(row: np.ndarray) -> list[int]:
    return [int(n) for n in row if n >= 0]


def positions(out: np.ndarray, node: int) -> list[float]:
    """Rank of ``node`` in every group's row; inf where it is not listed."""
    return [
        float(np.flatnonzero(row == node)[0]) if (row == node).any() else math.inf for row in out
    ]


def replace(arrays: dict[str, object], **changes: object) -> RankInputs:
    return RankInputs.create(**{**arrays, **changes})


# --- equality with the reference -------------------------------------------------------------


@PROPERTY
@given(rank_cases())
def test_rank_groups_equals_reference(case: tuple[dict[str, object], int]) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    out = rank_groups(inputs, k)
    assert out.dtype == np.int32
    assert out.shape == (inputs.group_lat.shape[0], k)
    np.testing.assert_array_equal(out, reference.rank_groups(inputs, k))


@PROPERTY
@given(rank_cases(), st.data())
def test_group_components_equals_reference_and_formula(
    case: tuple[dict[str, object], int], data: st.DataObject
) -> None:
    arrays, _k = case
    inputs = RankInputs.create(**arrays)
    g = data.draw(st.integers(0, inputs.group_lat.shape[0] - 1), label="group")
    parts = group_components(inputs, g)
    score, dist = reference.score_matrix(inputs)
    np.testing.assert_array_equal(parts.score, score[g])
    np.testing.assert_array_equal(parts.distance_km, dist[g])

    cg = inputs.group_country[g]
    cn = inputs.node_country
    rtt = np.where((cg >= 0) & (cn >= 0), inputs.country_rtt[max(cg, 0), np.maximum(cn, 0)], np.nan)
    measured = ~np.isnan(rtt)
    np.testing.assert_array_equal(parts.latency_source == _kernels.COUNTRY_TABLE, measured)
    estimate = inputs.est_base_ms + inputs.est_ms_per_km * parts.distance_km
    np.testing.assert_array_equal(parts.latency_ms, np.where(measured, rtt, estimate))
    np.testing.assert_array_equal(parts.onnet, inputs.node_asn == inputs.group_asn[g])
    util = inputs.node_util
    np.testing.assert_array_equal(parts.load_penalty_ms, inputs.load_penalty_ms * util * util)
    total = parts.latency_ms + parts.load_penalty_ms
    np.testing.assert_array_equal(
        parts.score, np.where(parts.onnet, total - inputs.onnet_bonus_ms, total)
    )


# Hand-made rankings so that a reader sees the rule. Two nodes unless stated; the group is
# at (40, -3); node fields default to: up, in pool, country -1, ASN 3352, load 0.
HAND_CASES = [
    # id, node overrides, group ASN, k, expected row
    ("nearer_wins", dict(node_lat=[41.0, 40.5]), 0, 2, [1, 0]),
    ("full_tie_lower_index", dict(node_lat=[41.0, 41.0]), 0, 2, [0, 1]),
    ("onnet_beats_distance", dict(node_lat=[40.5, 41.0], node_asn=[3243, 3352]), 3352, 2, [1, 0]),
    ("load_beats_distance", dict(node_lat=[40.5, 41.0], node_util=[1.0, 0.0]), 0, 2, [1, 0]),
    ("down_skipped", dict(node_lat=[40.5, 41.0], node_state=[DOWN, UP]), 0, 2, [1, -1]),
    ("draining_if_no_up", dict(node_lat=[40.5, 41.0], node_state=[DOWN, DRAINING]), 0, 2, [1, -1]),
    ("fail_open_all_down", dict(node_lat=[41.0, 40.5], node_state=[DOWN, DOWN]), 0, 2, [1, 0]),
    ("not_in_pool", dict(node_lat=[40.5, 41.0], node_in_pool=[False, True]), 0, 2, [1, -1]),
    ("k_truncates", dict(node_lat=[41.0, 40.5]), 0, 1, [1]),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "group_asn", "k", "expected"), [c[1:] for c in HAND_CASES],
                         ids=[c[0] for c in HAND_CASES])  # fmt: skip
def test_rank_groups_hand_cases(
    overrides: dict[str, object], group_asn: int, k: int, expected: list[int]
) -> None:
    arrays: dict[str, object] = dict(
        group_lat=[40.0], group_lon=[-3.0], group_country=[-1], group_asn=[group_asn],
        node_lat=[40.0, 40.0], node_lon=[-3.0, -3.0], node_country=[-1, -1], node_asn=[3352, 3352],
        node_state=[UP, UP], node_util=[0.0, 0.0], node_in_pool=[True, True],
        country_rtt=[[np.nan]], onnet_bonus_ms=50.0, load_penalty_ms=100.0,
    )  # fmt: skip
    inputs = replace(arrays, **overrides)
    assert rank_groups(inputs, k).tolist() == [expected]
    np.testing.assert_array_equal(rank_groups(inputs, k), reference.rank_groups(inputs, k))


def test_group_components_measured_latency_by_hand() -> None:
    inputs = RankInputs.create(
        group_lat=[40.0], group_lon=[-3.0], group_country=[0], group_asn=[3352],
        node_lat=[40.0, 40.0, 40.0], node_lon=[-3.0, -3.0, -3.0], node_country=[1, 0, -1],
        node_asn=[3352, 3243, 3243], node_state=[UP, UP, UP], node_util=[0.5, 0.0, 1.0],
        node_in_pool=[True, True, True], country_rtt=[[np.nan, 12.0], [12.0, np.nan]],
        onnet_bonus_ms=20.0, load_penalty_ms=8.0,
    )  # fmt: skip
    parts = group_components(inputs, 0)
    assert (parts.latency_source == _kernels.COUNTRY_TABLE).tolist() == [True, False, False]
    assert parts.latency_ms.tolist() == [12.0, EST_BASE_MS, EST_BASE_MS]
    assert parts.distance_km.tolist() == [0.0, 0.0, 0.0]
    assert parts.onnet.tolist() == [True, False, False]
    assert parts.load_penalty_ms.tolist() == [2.0, 0.0, 8.0]
    assert parts.score.tolist() == [12.0 + 2.0 - 20.0, EST_BASE_MS, EST_BASE_MS + 8.0]
    assert inputs.est_ms_per_km == EST_MS_PER_KM


# --- metamorphic properties ------------------------------------------------------------------


@METAMORPHIC
@given(rank_cases())
def test_rank_groups_down_nodes_only_when_pool_all_down(
    case: tuple[dict[str, object], int],
) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    out = rank_groups(inputs, k)
    pool = inputs.node_in_pool
    listed = {n for row in out for n in chosen(row)}
    if (inputs.node_state[pool] == DOWN).all():
        # Fail open: every group still gets an answer, made of pool nodes only.
        assert (out[:, 0] >= 0).all()
        assert all(pool[n] for n in listed)
    else:
        assert not any(inputs.node_state[n] == DOWN for n in listed)


@METAMORPHIC
@given(rank_cases())
def test_rank_groups_draining_nodes_only_when_pool_has_no_up(
    case: tuple[dict[str, object], int],
) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    out = rank_groups(inputs, k)
    listed = {n for row in out for n in chosen(row)}
    pool_has_up = bool((inputs.node_state[inputs.node_in_pool] == UP).any())
    draining_listed = any(inputs.node_state[n] == DRAINING for n in listed)
    if pool_has_up:
        assert not draining_listed
    elif (inputs.node_state[inputs.node_in_pool] == DRAINING).any():
        assert (out[:, 0] >= 0).all()
        assert all(inputs.node_state[n] == DRAINING for n in listed)


@METAMORPHIC
@given(rank_cases())
def test_rank_groups_never_lists_nodes_outside_pool(case: tuple[dict[str, object], int]) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    out = rank_groups(inputs, k)
    assert all(inputs.node_in_pool[n] for row in out for n in chosen(row))


@METAMORPHIC
@given(rank_cases())
def test_rank_groups_rows_are_unique_and_padded_at_the_end(
    case: tuple[dict[str, object], int],
) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    out = rank_groups(inputs, k)
    expected_width = min(k, candidates(inputs).size)
    for row in out:
        listed = chosen(row)
        assert len(set(listed)) == len(listed), row
        assert row.tolist() == listed + [-1] * (k - len(listed)), row
        # Exactly min(k, candidates) answers: no -1 when the best tier has >= k nodes.
        assert len(listed) == expected_width, row
        assert set(listed) <= set(candidates(inputs).tolist())


@METAMORPHIC
@given(rank_cases())
def test_rank_groups_shorter_answer_is_a_prefix(case: tuple[dict[str, object], int]) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    wide = rank_groups(inputs, 5)
    np.testing.assert_array_equal(rank_groups(inputs, k), wide[:, :k])


@METAMORPHIC
@given(rank_cases(distinct_nodes=True), st.randoms(use_true_random=False))
def test_rank_groups_node_order_does_not_matter_without_ties(
    case: tuple[dict[str, object], int], rnd
) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    score, dist = reference.score_matrix(inputs)
    cand = candidates(inputs)
    for g in range(score.shape[0]):
        keys = set(zip(score[g, cand].tolist(), dist[g, cand].tolist()))
        assume(len(keys) == cand.size)  # no exact tie: then the index must not matter
    perm = list(range(inputs.node_lat.shape[0]))
    rnd.shuffle(perm)
    perm_arr = np.array(perm)
    shuffled = replace(arrays, **{f: np.asarray(getattr(inputs, f))[perm_arr] for f in NODE_FIELDS})
    out = rank_groups(inputs, k)
    out_shuffled = rank_groups(shuffled, k)
    # Map the shuffled indexes back to the original node ids: ordered lists must agree.
    back = np.where(out_shuffled >= 0, perm_arr[np.maximum(out_shuffled, 0)], -1)
    np.testing.assert_array_equal(back, out)


@METAMORPHIC
@given(rank_cases(), st.data())
def test_rank_groups_more_load_never_moves_a_node_earlier(
    case: tuple[dict[str, object], int], data: st.DataObject
) -> None:
    arrays, k = case
    inputs = RankInputs.create(**arrays)
    node = data.draw(st.integers(0, inputs.node_lat.shape[0] - 1), label="node")
    extra = data.draw(st.one_of(st.floats(1e-9, 2.0), st.just(2.0)), label="extra load")
    util = inputs.node_util.copy()
    util[node] += extra
    before = positions(rank_groups(inputs, k), node)
    after = positions(rank_groups(replace(arrays, node_util=util), k), node)
    for g, (b, a) in enumerate(zip(before, after)):
        assert a >= b, f"group {g}: node {node} moved from {b} to {a}"


@METAMORPHIC
@given(rank_cases())
def test_rank_groups_huge_onnet_bonus_puts_onnet_first(case: tuple[dict[str, object], int]) -> None:
    arrays, k = case
    inputs = replace(arrays, onnet_bonus_ms=1e6)  # far above any latency + load penalty
    out = rank_groups(inputs, k)
    cand = candidates(inputs)
    up_pool = inputs.node_in_pool & (inputs.node_state == UP)
    for g, row in enumerate(out):
        onnet = inputs.node_asn == inputs.group_asn[g]
        flags = [bool(onnet[n]) for n in chosen(row)]
        # On-net candidates come before every off-net one.
        assert flags == sorted(flags, reverse=True), (g, row)
        if onnet[cand].any():
            assert onnet[row[0]]
        if (up_pool & onnet).any():
            assert inputs.node_state[row[0]] == UP and onnet[row[0]]


# --- input checks ----------------------------------------------------------------------------


def valid_arrays() -> dict[str, object]:
    return dict(
        group_lat=[40.0, 38.7], group_lon=[-3.7, -9.1], group_country=[0, 1], group_asn=[3352, 0],
        node_lat=[40.4, 41.1, 38.7], node_lon=[-3.7, -8.6, -9.1], node_country=[0, 1, -1],
        node_asn=[3352, 3243, 12479], node_state=[UP, DRAINING, DOWN], node_util=[0.1, 0.5, 0.0],
        node_in_pool=[True, True, False], country_rtt=[[5.0, 20.0], [20.0, np.nan]],
        onnet_bonus_ms=30.0, load_penalty_ms=40.0,
    )  # fmt: skip


STATE = "node_state must be 0 (up), 1 (draining) or 2 (down)"
COUNTRY = "{} must index country_rtt or be -1"
INVALID = [
    # id, overrides, expected message
    ("group_lon_shape", dict(group_lon=[-3.7]), "group_lon must have shape (2,)"),
    ("group_country_shape", dict(group_country=[0, 1, 1]), "group_country must have shape (2,)"),
    ("group_asn_shape", dict(group_asn=[3352]), "group_asn must have shape (2,)"),
    ("node_lon_shape", dict(node_lon=[-3.7, -8.6]), "node_lon must have shape (3,)"),
    ("node_state_shape", dict(node_state=[0, 0]), "node_state must have shape (3,)"),
    ("node_util_shape", dict(node_util=[0.0, 0.0, 0.0, 0.0]), "node_util must have shape (3,)"),
    ("node_in_pool_shape", dict(node_in_pool=[True]), "node_in_pool must have shape (3,)"),
    ("node_asn_2d", dict(node_asn=[[1, 2, 3]]), "node_asn must have shape (3,)"),
    ("rtt_not_square", dict(country_rtt=[[5.0, 20.0]]), "country_rtt must be square"),
    ("empty_pool", dict(node_in_pool=[False, False, False]), "the pool has no node"),
    ("state_too_high", dict(node_state=[0, 3, 0]), STATE),
    ("state_negative", dict(node_state=[0, -1, 0]), STATE),
    ("group_country_too_high", dict(group_country=[0, 2]), COUNTRY.format("group_country")),
    ("group_country_too_low", dict(group_country=[-2, 0]), COUNTRY.format("group_country")),
    ("node_country_too_high", dict(node_country=[0, 5, 1]), COUNTRY.format("node_country")),
    ("group_lat_nan", dict(group_lat=[np.nan, 38.7]), "every group needs a finite location"),
    ("group_lon_inf", dict(group_lon=[-3.7, np.inf]), "every group needs a finite location"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_rank_inputs_create_rejects(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        RankInputs.create(**{**valid_arrays(), **overrides})


def test_rank_inputs_create_accepts_and_sets_dtypes() -> None:
    inputs = RankInputs.create(**valid_arrays())
    dtypes = {
        "group_lat": np.float64, "group_lon": np.float64, "group_country": np.int32,
        "group_asn": np.int64, "node_lat": np.float64, "node_lon": np.float64,
        "node_country": np.int32, "node_asn": np.int64, "node_state": np.int8,
        "node_util": np.float64, "node_in_pool": np.bool_, "country_rtt": np.float64,
    }  # fmt: skip
    for name, dtype in dtypes.items():
        value = getattr(inputs, name)
        assert value.dtype == dtype, name
        assert value.flags.c_contiguous, name
    assert rank_groups(inputs, 3).tolist() == reference.rank_groups(inputs, 3).tolist()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: rank_groups(i, 0), "answer_count must be at least 1"),
        (lambda i: group_components(i, 2), "group 2 out of range"),
        (lambda i: group_components(i, -1), "group -1 out of range"),
    ],
    ids=["answer_count_zero", "group_too_high", "group_negative"],
)
def test_rank_wrappers_reject(call, message: str) -> None:
    inputs = RankInputs.create(**valid_arrays())
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call(inputs)
