"""The table side of a node-down repair, made faster without changing a bit of its result.

``_kernels._answer_rows`` (through ``build._answer_rows``) and ``_kernels._primary_shares``
(through ``capacity.primary_shares``) are held equal to the numpy forms they replaced, and
``build._changed_groups`` (a mask) to its ``np.union1d`` form, on random inputs; and on the
sample deployment, chains of repairs give tables identical, array for array, to the ones the
numpy forms give, with ``patch.py``'s old lookup too (every entry searched in the index, where
``_known_sets`` tries the entry's previous set first).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import load_deployment
from router.steering import build, compile_model
from router.steering import patch as patch_module
from router.steering.build import Planner, RoutingTable
from router.steering.capacity import primary_shares, rows_listing_any

# The first call of a kernel may compile it: no deadline.
PROPERTY = settings(max_examples=200, deadline=None)
TABLE_FIELDS = ("group_set", "set_nodes", "node_state", "split_start", "split_set", "split_cum",
                "node_planned", "policy_pool")  # fmt: skip


def reference_answer_rows(
    cand_node: np.ndarray, groups: np.ndarray, primary: np.ndarray, count: int, width: int
) -> np.ndarray:
    """The numpy form ``build._answer_rows`` had before its kernel."""
    out = np.full((len(groups), width), -1, dtype=np.int32)
    out[:, 0] = primary
    cands = cand_node[groups]
    others = (cands != primary[:, None]) & (cands >= 0)
    position = np.cumsum(others, axis=1)  # 1-based slot among the others
    keep = others & (position <= count - 1)
    r, c = np.nonzero(keep)
    out[r, position[r, c]] = cands[r, c]
    return out


def reference_changed_groups(plan, inputs, used_before: np.ndarray, used_after: np.ndarray):
    """The ``np.union1d`` form ``build._changed_groups`` had before its mask."""
    limit = inputs.node_capacity * inputs.headroom
    flipped = (used_before < limit) != (used_after < limit)
    if not flipped.any():
        return plan.replaced
    planned = np.zeros(len(plan.cand_node), dtype=np.bool_)
    planned[plan.alloc_group] = True
    planned[plan.overflow > 0] = True
    return np.union1d(plan.replaced, rows_listing_any(plan.cand_node, planned, flipped)).astype(
        np.int32
    )


def reference_primary_shares(plan, inputs, used_elsewhere=None, only=None) -> tuple:
    """The numpy form ``capacity.primary_shares`` had before its kernel."""
    groups_n = plan.cand_node.shape[0]
    n_alloc = len(plan.alloc_group)
    if only is None:
        keep = np.ones(groups_n, dtype=np.bool_)
        position = np.arange(n_alloc, dtype=np.int64)
    else:
        keep = np.zeros(groups_n, dtype=np.bool_)
        keep[only] = True
        position = np.flatnonzero(keep[plan.alloc_group]).astype(np.int64)
    alloc_group = plan.alloc_group[position]
    order_key = [alloc_group.astype(np.int64) * (n_alloc + 1) + position + 1]
    groups = [alloc_group]
    nodes = [plan.alloc_node[position]]
    weights = [plan.alloc_amount[position]]
    over = np.flatnonzero((plan.overflow > 0) & keep)
    groups.append(over.astype(np.int32))
    nodes.append(plan.cand_node[over, 0])
    weights.append(plan.overflow[over])
    order_key.append(over.astype(np.int64) * (n_alloc + 1))
    planned = ~keep
    planned[alloc_group] = True
    planned[over] = True
    idle = np.flatnonzero(~planned)
    used = plan.load if used_elsewhere is None else plan.load + used_elsewhere
    room = np.append(used < inputs.node_capacity * inputs.headroom, False)  # index -1 -> no room
    cands = plan.cand_node[idle]
    ok = room[cands] & (cands >= 0)
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), 0)
    groups.append(idle.astype(np.int32))
    nodes.append(cands[np.arange(len(idle)), first])
    weights.append(np.ones(len(idle)))
    order_key.append(idle.astype(np.int64) * (n_alloc + 1))
    order = np.argsort(np.concatenate(order_key), kind="stable")
    return (
        np.concatenate(groups)[order].astype(np.int32),
        np.concatenate(nodes)[order].astype(np.int32),
        np.concatenate(weights)[order],
    )


def reference_known_sets(group_set, set_nodes, index, owner, keys) -> np.ndarray:
    """The lookup ``patch.patch`` had before ``_known_sets``: every entry in the index."""
    pos = np.searchsorted(index.keys, keys)
    pos_in = np.minimum(pos, max(len(index.keys) - 1, 0))
    found = np.zeros(len(keys), dtype=np.bool_)
    if len(index.keys):
        found = (pos < len(index.keys)) & (index.keys[pos_in] == keys)
    return np.where(found, index.ids[pos_in], -1).astype(np.int32)


@st.composite
def candidate_tables(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    """(cand_node int32[G, C], node count): rows best first, distinct nodes, -1 padded at the
    end as the planner writes them; a few rows hold -1 in the middle, which the numpy form
    skipped too."""
    n_nodes = draw(st.integers(1, 10))
    groups = draw(st.integers(1, 12))
    width = draw(st.integers(1, 6))
    table = np.full((groups, width), -1, dtype=np.int32)
    for g in range(groups):
        nodes = draw(st.lists(st.integers(0, n_nodes - 1), unique=True, max_size=width))
        table[g, : len(nodes)] = nodes
        if draw(st.booleans()) and width > 1:
            table[g, draw(st.integers(0, width - 1))] = -1
    return table, n_nodes


@PROPERTY
@given(st.data())
def test_answer_rows_kernel_equals_the_numpy_form(data: st.DataObject) -> None:
    cand_node, n_nodes = data.draw(candidate_tables())
    rows = data.draw(st.integers(0, 20))
    groups = np.array(
        data.draw(st.lists(st.integers(0, len(cand_node) - 1), min_size=rows, max_size=rows)),
        dtype=np.int32,
    )
    # The primary is mostly one of the group's candidates, sometimes none (-1) or another node.
    primary = np.array(
        [
            data.draw(st.sampled_from([*cand_node[g].tolist(), -1, n_nodes - 1]))
            for g in groups.tolist()
        ],
        dtype=np.int32,
    )
    width = data.draw(st.integers(1, 4))
    count = data.draw(st.integers(1, width))
    got = build._answer_rows(cand_node, groups, primary, count, width)
    expected = reference_answer_rows(cand_node, groups, primary, count, width)
    assert got.dtype == np.int32 and got.shape == (rows, width)
    assert np.array_equal(got, expected)


def test_answer_rows_lead_with_the_primary_then_skip_it_and_padding() -> None:
    cand_node = np.array([[3, 1, -1, -1], [2, 0, 1, 4]], dtype=np.int32)
    groups = np.array([0, 1, 1], dtype=np.int32)
    primary = np.array([1, 0, -1], dtype=np.int32)
    got = build._answer_rows(cand_node, groups, primary, 3, 4)
    assert got.tolist() == [[1, 3, -1, -1], [0, 2, 1, -1], [-1, 2, 0, -1]]


@pytest.mark.parametrize(
    ("count", "width", "groups", "primary", "message"),
    [
        (3, 2, [0], [1], "answer count 3 must be in \\[1, row width 2\\]"),
        (0, 2, [0], [1], "answer count 0 must be in \\[1, row width 2\\]"),
        (1, 2, [0, 0], [1], "2 groups but 1 primary nodes"),
    ],
)
def test_answer_rows_refuse_what_would_write_past_a_row(
    count: int, width: int, groups: list, primary: list, message: str
) -> None:
    cand_node = np.array([[0, 1]], dtype=np.int32)
    with pytest.raises(ValueError, match=message):
        build._answer_rows(
            cand_node, np.array(groups, dtype=np.int32), np.array(primary, dtype=np.int32),
            count, width,
        )  # fmt: skip


@PROPERTY
@given(st.data())
def test_changed_groups_mask_equals_the_union1d_form(data: st.DataObject) -> None:
    cand_node, n_nodes = data.draw(candidate_tables())
    n_groups = len(cand_node)
    group_ids = st.integers(0, n_groups - 1)
    replaced = np.array(sorted(data.draw(st.sets(group_ids, max_size=n_groups))), dtype=np.int32)
    plan = SimpleNamespace(
        cand_node=cand_node,
        replaced=replaced,
        alloc_group=np.array(data.draw(st.lists(group_ids, max_size=15)), dtype=np.int32),
        overflow=np.array(
            data.draw(st.lists(st.sampled_from([0.0, 0.5]), min_size=n_groups, max_size=n_groups)),
        ),  # fmt: skip
    )
    loads = st.lists(st.sampled_from([0.0, 5.0, 9.0, 12.0]), min_size=n_nodes, max_size=n_nodes)
    inputs = SimpleNamespace(node_capacity=np.full(n_nodes, 10.0), headroom=0.9)
    before, after = np.array(data.draw(loads)), np.array(data.draw(loads))
    got = build._changed_groups(plan, inputs, before, after)  # type: ignore[arg-type]
    expected = reference_changed_groups(plan, inputs, before, after)
    assert got.dtype == np.int32 and got.tolist() == expected.tolist()


@PROPERTY
@given(st.data())
def test_primary_shares_kernel_equals_the_numpy_form(data: st.DataObject) -> None:
    cand_node, n_nodes = data.draw(candidate_tables())
    n_groups = len(cand_node)
    group_ids = st.integers(0, n_groups - 1)
    entries = data.draw(st.integers(0, 20))
    amounts = st.sampled_from([0.0, 0.25, 3.0])
    plan = SimpleNamespace(
        cand_node=cand_node,
        alloc_group=np.array(
            data.draw(st.lists(group_ids, min_size=entries, max_size=entries)), dtype=np.int32
        ),
        alloc_node=np.array(
            data.draw(st.lists(st.integers(0, n_nodes - 1), min_size=entries, max_size=entries)),
            dtype=np.int32,
        ),
        alloc_amount=np.array(data.draw(st.lists(amounts, min_size=entries, max_size=entries))),
        overflow=np.array(data.draw(st.lists(amounts, min_size=n_groups, max_size=n_groups))),
        load=np.array(
            data.draw(
                st.lists(st.sampled_from([0.0, 5.0, 9.5]), min_size=n_nodes, max_size=n_nodes)
            ),
        ),  # fmt: skip
    )
    inputs = SimpleNamespace(node_capacity=np.full(n_nodes, 10.0), headroom=0.9)
    elsewhere = data.draw(st.one_of(st.none(), st.just(np.full(n_nodes, 2.0))))
    # ``only`` as build passes it (sorted, distinct) or in any order with repeats.
    only = data.draw(st.one_of(st.none(), st.lists(group_ids, max_size=2 * n_groups)))
    only = None if only is None else np.array(only, dtype=np.int32)
    got = primary_shares(plan, inputs, elsewhere, only=only)  # type: ignore[arg-type]
    expected = reference_primary_shares(plan, inputs, elsewhere, only=only)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and a.tolist() == b.tolist()


@pytest.fixture(scope="module")
def model(deployment_dir: Path):
    return compile_model(load_deployment(deployment_dir))


def repaired_tables(model, demand_gbps: float, victims: int) -> list[tuple[str, RoutingTable]]:
    """The tables of a chain of repairs, the busiest nodes first, each patched on the last
    (compact off, as the publisher runs them)."""
    planner = Planner(model)
    for p in range(len(model.policies)):
        planner.set_demand(p, model.group_weight * demand_gbps)
    states = np.zeros(len(model.node_ids), dtype=np.int8)
    first = planner.build(states, None, generation=1)
    out = [("full", first)]
    for generation, node in enumerate(np.argsort(-first.node_planned, kind="stable")[:victims], 2):
        states = states.copy()
        states[node] = 2
        table = planner.repair_node_down(int(node), states, generation, compact=False)
        if table is None:
            table = planner.build(states, None, generation)  # a pool emptied: planned afresh
        out.append((planner.last_kind, table))
    return out


@pytest.mark.parametrize("demand_gbps", [0.0, 600.0, 20000.0])  # idle, fits, split over nodes
def test_repairs_patch_the_tables_the_numpy_forms_patched(
    model, demand_gbps: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = repaired_tables(model, demand_gbps, victims=12)
    with monkeypatch.context() as patched:
        patched.setattr(build, "_answer_rows", reference_answer_rows)
        patched.setattr(build, "_changed_groups", reference_changed_groups)
        patched.setattr(build, "primary_shares", reference_primary_shares)
        patched.setattr(patch_module, "_known_sets", reference_known_sets)
        slow = repaired_tables(model, demand_gbps, victims=12)
    assert [kind for kind, _ in fast] == [kind for kind, _ in slow]
    assert sum(kind == "incremental" for kind, _ in fast) >= 3
    for (_, a), (_, b) in zip(fast, slow):
        assert a.generation == b.generation
        for name in TABLE_FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
