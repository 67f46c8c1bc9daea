"""A node down patches the routing table (router/steering/patch.py): only the groups the
repair moved are answered afresh, and every group's answers are what a table built whole
from the same plans gives, through chains of patches and the compaction that ends them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from router.config import load_deployment
from router.steering import compile_model
from router.steering.build import Planner, RoutingTable
from router.steering.patch import SetIndex, patch


@pytest.fixture(scope="module")
def model(deployment_dir: Path):
    return compile_model(load_deployment(deployment_dir))


def answers(table: RoutingTable, policies: int, groups: int) -> list:
    """Every group's (node list, share) entries, shares rounded to the weights' resolution."""
    return [
        [(nodes, round(share, 4)) for nodes, share in table.entries(p, g)]
        for p in range(policies)
        for g in range(groups)
    ]


@pytest.mark.parametrize("demand_gbps", [0.0, 600.0, 20000.0])  # idle, fits, split over nodes
def test_patched_tables_answer_as_tables_built_whole(model, demand_gbps: float) -> None:
    planner = Planner(model)
    for p in range(len(model.policies)):
        planner.set_demand(p, model.group_weight * demand_gbps)
    n_nodes, n_groups = len(model.node_ids), len(model.client_map.groups)
    states = np.zeros(n_nodes, dtype=np.int8)
    first = planner.build(states, None, generation=1)
    order = [int(n) for n in np.argsort(-first.node_planned, kind="stable")]
    patched = 0
    for generation, node in enumerate(order[:10], start=2):
        states = states.copy()
        states[node] = 2
        table = planner.node_down(node, states, None, generation)
        if planner.last_kind != "incremental":
            continue  # a pool or fence emptied: planned afresh, nothing patched
        patched += 1
        kept = planner._last
        whole = planner._table(states, generation)  # the same plans, every row built
        planner._last = kept  # the next repair patches the patched table, as in service
        assert answers(table, len(model.policies), n_groups) == answers(
            whole, len(model.policies), n_groups
        )
        for p in range(len(model.policies)):
            for g in range(n_groups):
                assert all(node not in nodes for nodes, _ in table.entries(p, g))
        assert not table.group_set.flags.writeable and not table.set_nodes.flags.writeable
    assert patched >= 3


def test_a_patch_reuses_known_node_lists_and_appends_new_ones() -> None:
    set_nodes = np.array([[0, 1], [2, -1]], dtype=np.int32)
    keys = np.zeros((2, 2), dtype=np.int32)
    keys[:] = set_nodes
    key = keys.view(np.int64).ravel()
    order = np.argsort(key)
    index = SetIndex(key[order], order.astype(np.int32), 2, 0)
    group_set = np.array([[0, 1, 0]], dtype=np.int32)
    # Group 1 now answers [0, 1] (known), group 2 is split over [2] and [3, 0] (new).
    owner = np.array([1, 2, 2], dtype=np.int64)
    rows = np.array([[0, 1], [2, -1], [3, 0]], dtype=np.int32)
    out = patch(group_set, set_nodes, np.zeros(1, dtype=np.int32), np.zeros(0, dtype=np.int32),
                np.zeros(0, dtype=np.uint32), index, owner, rows,
                np.array([30000, 65536], dtype=np.uint32))  # fmt: skip
    assert out.group_set.tolist() == [[0, 0, -1]]
    assert out.set_nodes.tolist() == [[0, 1], [2, -1], [3, 0]]
    assert out.split_start.tolist() == [0, 2]
    assert out.split_set.tolist() == [1, 2]
    assert out.split_cum.tolist() == [30000, 65536]
    assert group_set.tolist() == [[0, 1, 0]]  # the table in service is never written
    assert sorted(out.index.keys.tolist()) == out.index.keys.tolist() and len(out.index.ids) == 3
