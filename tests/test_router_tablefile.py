"""Routing tables as mapped files (router/service/tablefile.py): what is written is what is read."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from router.config import load_deployment
from router.service.tablefile import _ARRAYS, map_table, write_table
from router.steering.build import Planner
from router.steering.model import compile_model
from tests.conftest import REPO, make_deployment


@pytest.mark.parametrize("policy", ["pools", "nodes-all"])
def test_every_array_round_trips(tmp_path: Path, policy: str) -> None:
    zones = make_deployment(tmp_path)  # the sample: its web policy has pools, in the table
    if policy == "nodes-all":  # no policy with pools: an empty array, at the end of the file
        shutil.copy(
            REPO / "tests" / "fixtures" / "nodes-all.policy.yaml", zones / "cdn.example.policy.yaml"
        )
    model = compile_model(load_deployment(zones))
    table = Planner(model).build(np.zeros(len(model.node_ids), dtype=np.int8), None, generation=7)
    assert (table.policy_pool.size > 0) == (policy == "pools")
    read = map_table(write_table(tmp_path, table))
    assert read.generation == 7
    assert {f.name for f in dataclasses.fields(read)} == {"generation", *_ARRAYS}
    for name in _ARRAYS:
        ours, theirs = getattr(table, name), getattr(read, name)
        assert (
            theirs.dtype == ours.dtype
            and theirs.shape == ours.shape
            and np.array_equal(theirs, ours)
        ), name
    if policy == "pools":
        web = next(p for p, c in enumerate(model.policies) if c.name == "web")
        names = model.policies[web].routing.pool_names
        assert {names[q] for q in read.policy_pool[web] if q >= 0} == {"everywhere", "fr", "pt"}


@pytest.mark.parametrize("split", [False, True])
def test_a_mapped_table_has_the_types_the_udp_loop_was_compiled_for(
    tmp_path: Path, split: bool
) -> None:
    """The supervisor compiles the UDP loop on the table it planned (router/dns/udp_batch.py
    warm_up); a worker runs it on the table it mapped. Any difference in the arrays' numba
    types (dtype, layout, read-only) makes every worker compile again at its first query,
    answering nothing for seconds. Empty split arrays (no group split) included."""
    import numba

    from router.dns.engine import TableView
    from router.dns.fast_answer import table_arrays

    model = compile_model(load_deployment(make_deployment(tmp_path)))
    planner = Planner(model)
    if split:  # demand beyond the nearest nodes splits groups
        groups = len(model.client_map.groups)
        for p in range(len(model.policies)):
            planner.set_demand(
                p,
                np.full(
                    groups,
                    0.9 * float(model.node_capacity_gbps.sum()) / groups / len(model.policies),
                ),
            )
    table = planner.build(np.zeros(len(model.node_ids), dtype=np.int8), None, generation=1)
    assert (len(table.split_set) > 0) == split
    planned = [numba.typeof(a) for a in table_arrays(TableView(table))]
    mapped = [
        numba.typeof(a) for a in table_arrays(TableView(map_table(write_table(tmp_path, table))))
    ]
    assert mapped == planned
