#!/usr/bin/env python3
"""Steering-core benchmark: client-map lookups, planning, numba vs numpy, quality.

    taskset -c 1 .venv/bin/python loadtest/bench_core.py --json var/bench-core.json
    .venv/bin/python loadtest/bench_core.py --smoke --json FILE   # the repo's sample, seconds

Loads a deployment directory as the router would (default ``var/world``, built by
``geodata/build_world.py`` when missing and ``../shared/data`` exists), then measures, on
the cores it is allowed (run it under ``taskset -c 1`` for one core):

* LPM: batch lookups of IPv4 and IPv6 addresses drawn inside the map's own intervals
  (an interval uniformly, then an address uniformly inside it), and single IPv4 lookups
  from a Python loop (what the DNS hot path calls per query).
* Planning: ``plan_policy`` for every policy (sharing capacity, as the router's planner
  does) at three load factors (total demand 70 %, 90 % and 50 % of all node capacity), the
  incremental repair after one busy node goes down, and the full-scan ranking.
* numba vs numpy: the full-scan top-16 ranking, numba kernel against a vectorised numpy
  version written here, on the same sample; and the plan against the plain reference.
* Quality: the plan against two linear programs (HiGHS), each solved over every (client
  class, node) pair by column generation, with the capacities the planner works under and
  its eligibility (pool, geofence, on-net limits), at every load factor. The latency LP
  minimises demand-weighted client latency: ``latency_vs_lp_optimum_F`` and
  ``p95_latency_vs_lp_optimum_F`` (F = 50, 70, 90) are what users feel. The score LP
  minimises the plan's own cost (latency - on-net bonus): ``mean_latency_vs_optimum`` and
  ``p95_latency_vs_optimum`` are the plan's latency against the score optimum's latency,
  ``mean_score_excess_ms`` its score above it.
* Capacity: ``capacity_overruns`` (nodes planned past their capacity, all of them) and
  ``capacity_overruns_gbps`` (by how much, summed), beside ``demand_over_capacity`` (demand
  no eligible node had room for: the plans' overflow, which the planner places on each
  group's best node). The overrun target is 0 whenever demand fits.

Demand: until the router has a demand model, each group's demand is its IPv4 address
count (``np.bincount(v4_group, v4_end - v4_start + 1)``), group 0 (unknown) none, scaled
so that all policies together ask for the load factor times the total node capacity,
split evenly between the policies. Node loads reported by nodes are zero (no penalty).

The JSON keys listed in ``CONTRACT_KEYS`` are a contract. Figures are printed next to their
targets with PASS or MISS; nothing is tuned to pass.

``--quick`` uses small counts; ``--smoke`` is ``--quick`` on the repo's own sample deployment
(``zones/``, unless ``--zones`` says otherwise) with one timed run per figure: every part
above in a few seconds and without ``../shared/data``, for the test suite to see that the
bench still runs and writes its contract keys. Its figures say nothing about the world.

Only the public entry points of ``router.steering`` are called (``rank``, ``capacity``,
``build``), except in ``time_stages``: the time spent in each numba kernel of a plan
(``full_recompute_stages_s``) can only be had by wrapping the kernels themselves.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from loadtest.same_algorithm import bench_same_algorithm, subset_rank  # noqa: E402
from router.service.publisher import REFINE_BUDGET_S  # noqa: E402
from router.steering.build import planning_order  # noqa: E402
from router.steering.capacity import (  # noqa: E402
    CANDIDATES,
    PlanInputs,
    Topology,
    plan_policy,
    replan_node_down,
)
from router.steering.rank import RankInputs, group_components, rank_groups  # noqa: E402
from router.steering.refine import RESERVE_PENALTY_MS, refine  # noqa: E402  (the LP prices the reserve as the refine does)
from tests import reference  # noqa: E402
from tests.reference_numpy import pair_arrays  # noqa: E402

CONTRACT_KEYS = (
    "lpm_v4_batch_per_s", "lpm_v6_batch_per_s", "lpm_single_us", "full_recompute_s",
    "incremental_recompute_ms", "numba_vs_numpy", "peak_rss_mb", "nodes", "client_groups",
    "prefixes", "mean_latency_vs_optimum", "p95_latency_vs_optimum", "capacity_overruns",
    "latency_vs_lp_optimum_50", "latency_vs_lp_optimum_70", "latency_vs_lp_optimum_90",
    "p95_latency_vs_lp_optimum_90", "demand_over_capacity", "capacity_overruns_gbps",
    "numba_vs_numpy_same_algorithm", "node_down_to_answer_ms_p50", "node_down_to_answer_ms_p99",
    "nodes_world", "full_build_s_world", "worker_pss_mb_world", "total_pss_mb_world_4_workers",
)  # fmt: skip
CAPACITY_TARGET = "0 whenever demand fits"
# key -> (target text, predicate)
TARGETS = {
    "lpm_v4_batch_per_s": (">= 5,000,000 /s per core", lambda v: v >= 5e6),
    "lpm_v6_batch_per_s": (">= 5,000,000 /s per core", lambda v: v >= 5e6),
    "full_recompute_s": ("< 1 s on one core", lambda v: v < 1.0),
    "incremental_recompute_ms": ("< 20 ms on one core", lambda v: v < 20.0),
    "numba_vs_numpy_same_algorithm": (">= 3x", lambda v: v >= 3.0),
    "node_down_to_answer_ms_p50": ("< 20 ms", lambda v: v < 20.0),
    "node_down_to_answer_ms_p99": ("< 50 ms", lambda v: v < 50.0),
    "full_build_s_world": ("< 2 s", lambda v: v < 2.0),
    "mean_latency_vs_optimum": ("<= 1.05", lambda v: v <= 1.05),
    "latency_vs_lp_optimum_50": ("<= 1.03", lambda v: v <= 1.03),
    "latency_vs_lp_optimum_70": ("<= 1.03", lambda v: v <= 1.03),
    "latency_vs_lp_optimum_90": ("<= 1.05", lambda v: v <= 1.05),
    "p95_latency_vs_lp_optimum_90": ("<= 1.10", lambda v: v <= 1.10),
    # The text gains what did not fit when demand does not (capacity_target_text).
    "capacity_overruns": (CAPACITY_TARGET, lambda v: v == 0),
    "router_start_s": ("< 5 s", lambda v: v < 5.0),
}
DEFAULT_ZONES = REPO / "var" / "world"
SAMPLE_ZONES = REPO / "zones"
SHARED_DATA = REPO.parent / "shared" / "data"
# The first load factor's figures carry no suffix (the contract's), the others _90, _50;
# the latency-LP figures carry their suffix at every load factor (_50, _70, _90).
LOAD_FACTORS = (0.7, 0.9, 0.5)

LP_START_TOP = 32  # LP starts from each class's best 32 nodes, then adds priced-out pairs
PRICE_PER_ROUND = 16  # at most this many of a class's pairs with negative reduced cost per round
# Rounds are cheap once warm (a few seconds at 20,000 nodes), and the score LP there took over
# 40; a bound all the same, and an LP that reaches it says so in its status (not "optimal").
LP_MAX_ROUNDS = 300
EXIT_NO_WORLD = 2


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def best_of(fn, runs: int) -> float:
    best = math.inf
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# --- the world ----------------------------------------------------------------------------------


def ensure_world(zones: Path) -> str | None:
    """Build var/world when it is missing and the shared data is there; else say why not."""
    if (zones / "deployment.yaml").is_file():
        return None
    if zones.resolve() != DEFAULT_ZONES.resolve():
        return f"{zones}: no deployment.yaml (not a deployment directory)"
    if not SHARED_DATA.is_dir():
        return (f"{zones} is missing and so is {SHARED_DATA}, from which geodata/build_world.py "
                "builds it; nothing to measure")  # fmt: skip
    log(f"{zones} missing: building it with geodata/build_world.py (several minutes)")
    done = subprocess.run(
        [sys.executable, str(REPO / "geodata" / "build_world.py"), "--shared", str(SHARED_DATA),
         "--out", str(zones)], cwd=REPO, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not (zones / "deployment.yaml").is_file():
        return f"geodata/build_world.py failed (exit {done.returncode}); {zones} not built"
    return None


def router_start(zones: Path) -> dict:
    """Seconds from ``router serve`` to READY (a loopback port, one worker), then stop it."""
    from tests.conftest import start_router

    with tempfile.TemporaryDirectory() as scratch:
        t0 = time.perf_counter()
        running = start_router(zones, Path(scratch) / "router.log", api=False, workers=1)
        ready = time.perf_counter() - t0
        running.stop()
        assert running.process.stdout is not None
        running.process.stdout.close()
    return {"router_start_s": ready,
            "router_start_command": f"router serve --zones {zones} --listen 127.0.0.1:0 --workers 1"}  # fmt: skip


def load_model(zones: Path):
    from router.config.deployment import load_deployment
    from router.steering.model import compile_model

    return compile_model(load_deployment(zones))


# --- LPM ------------------------------------------------------------------------------------------


def draw_v4(cm, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, len(cm.v4_start), n)
    span = cm.v4_end[idx] - cm.v4_start[idx] + 1
    return cm.v4_start[idx] + rng.integers(0, span), idx


def draw_v6(cm, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = rng.integers(0, len(cm.v6_start_hi), n)
    sh, sl = cm.v6_start_hi[idx], cm.v6_start_lo[idx]
    eh, el = cm.v6_end_hi[idx], cm.v6_end_lo[idx]
    # High half uniform in [sh, eh]; low half uniform, clamped into the interval at its ends.
    hi = sh + rng.integers(0, eh - sh, dtype=np.uint64, endpoint=True)
    lo = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    lo = np.where(hi == sh, np.maximum(lo, sl), lo)
    lo = np.where(hi == eh, np.minimum(lo, el), lo)
    return hi, lo, idx


def bench_lpm(cm, n_batch: int, n_single: int, runs: int, rng: np.random.Generator) -> dict:
    out: dict = {"lpm_batch_addresses": n_batch, "lpm_single_addresses": n_single,
                 "lpm_address_draw": "an interval of the map uniformly, then an address uniformly inside it"}  # fmt: skip
    v4, idx4 = draw_v4(cm, n_batch, rng)
    cm.lookup_v4(v4[:1000])  # compile (or load the cache) before timing
    out["lpm_v4_batch_s"] = best_of(lambda: cm.lookup_v4(v4), runs)
    out["lpm_v4_batch_per_s"] = n_batch / out["lpm_v4_batch_s"]
    groups, _ = cm.lookup_v4(v4)
    out["lpm_v4_correct"] = bool(np.array_equal(groups, cm.v4_group[idx4]))

    # The same binary search written with numpy (searchsorted is C): a second comparison.
    def numpy_v4() -> None:
        j = np.searchsorted(cm.v4_start, v4, side="right") - 1
        hit = (j >= 0) & (v4 <= cm.v4_end[np.maximum(j, 0)])
        np.where(hit, cm.v4_group[np.maximum(j, 0)], 0)

    out["lpm_v4_numpy_searchsorted_per_s"] = n_batch / best_of(numpy_v4, runs)
    hi, lo, idx6 = draw_v6(cm, n_batch, rng)
    cm.lookup_v6(hi[:1000], lo[:1000])
    out["lpm_v6_batch_s"] = best_of(lambda: cm.lookup_v6(hi, lo), runs)
    out["lpm_v6_batch_per_s"] = n_batch / out["lpm_v6_batch_s"]
    groups6, _ = cm.lookup_v6(hi, lo)
    out["lpm_v6_correct"] = bool(np.array_equal(groups6, cm.v6_group[idx6]))
    singles = v4[:n_single].tolist()
    lookup = cm.lookup_v4_int
    lookup(singles[0])

    def single() -> None:
        for x in singles:
            lookup(x)

    out["lpm_single_us"] = best_of(single, min(runs, 3)) / len(singles) * 1e6
    his, los = hi[: n_single // 2].tolist(), lo[: n_single // 2].tolist()
    lookup6 = cm.lookup_v6_int
    lookup6(his[0], los[0])

    def single6() -> None:
        for h, low in zip(his, los):
            lookup6(h, low)

    out["lpm_single_v6_us"] = best_of(single6, min(runs, 3)) / len(his) * 1e6
    return out


# --- demand and planning --------------------------------------------------------------------------


def address_weight(model) -> np.ndarray:
    cm = model.client_map
    weight = np.bincount(
        cm.v4_group,
        weights=(cm.v4_end - cm.v4_start + 1).astype(np.float64),
        minlength=len(cm.groups),
    )
    weight[0] = 0.0
    return weight / weight.sum()


class World:
    """Per policy: rank inputs, topology, headroom; node capacity; the demand shape."""

    def __init__(self, model) -> None:
        self.model = model
        self.n_nodes = len(model.node_ids)
        self.policies = len(model.policies)
        self.capacity = np.asarray(model.node_capacity_gbps, dtype=np.float64)
        self.headroom = [float(getattr(p.policy, "headroom", 0.8)) for p in model.policies]
        self.util = np.zeros(self.n_nodes)
        self.weight = address_weight(model)
        self.ranks = [
            self.rank(p, np.zeros(self.n_nodes, dtype=np.int8)) for p in range(self.policies)
        ]
        t0 = time.perf_counter()
        self.topologies = [Topology.create(r) for r in self.ranks]
        self.topology_s = time.perf_counter() - t0

    def rank(self, p: int, state: np.ndarray) -> RankInputs:
        return self.model.rank_inputs(p, state, self.util)

    def demand(self, factor: float) -> list[np.ndarray]:
        total = factor * self.capacity.sum()
        return [self.weight * total / self.policies for _ in range(self.policies)]

    def inputs(self, demand: list[np.ndarray], state: np.ndarray | None = None) -> list[PlanInputs]:
        ranks = self.ranks if state is None else [self.rank(p, state) for p in range(self.policies)]
        return [
            PlanInputs.create(
                ranks[p], self.topologies[p], demand[p], self.capacity, self.headroom[p]
            )
            for p in range(self.policies)
        ]


def plan_all(inputs: list[PlanInputs]) -> list:
    """Every policy, each with what the ones planned before it left, in the router's
    planner's order (``planning_order``: the most constrained first); in policy order."""
    used = np.zeros(len(inputs[0].node_capacity))
    plans: list = [None] * len(inputs)
    for p in planning_order(inputs):
        plans[p] = plan_policy(inputs[p], used)
        used = used + plans[p].load
    return plans


def time_stages(inputs: list[PlanInputs]) -> dict:
    """One instrumented plan_all: seconds in each numba kernel that plan_policy calls.

    The one use of ``router.steering._kernels`` here: no public entry point runs one stage of
    a plan alone, so the kernels are wrapped (and put back) for this one plan.
    """
    from router.steering import _kernels

    names = ("_eligibility", "_location_topk", "_group_candidates", "_fill")
    spent = dict.fromkeys(names, 0.0)
    originals = {name: getattr(_kernels, name) for name in names if hasattr(_kernels, name)}

    def timed(name, fn):
        def call(*args):
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent[name] += time.perf_counter() - t0

        return call

    try:
        for name, fn in originals.items():
            setattr(_kernels, name, timed(name, fn))
        t0 = time.perf_counter()
        plans = plan_all(inputs)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(_kernels, name, fn)
    out = {name.lstrip("_"): round(s, 4) for name, s in spent.items()}
    out["numpy_and_python"] = round(total - sum(spent.values()), 4)
    out["total"] = round(total, 4)
    out["alloc_entries"] = int(sum(len(p.alloc_group) for p in plans))
    out["split_groups"] = int(sum(int((np.bincount(p.alloc_group) > 1).sum()) for p in plans))
    out["full_scans"] = int(sum(p.full_scans for p in plans))
    return out


def overruns(world: World, plans: list) -> dict:
    """What the plans put past capacity, and the demand that fits on no eligible node.

    The planner places overflow (demand whose eligible nodes are all full) on the group's best
    node, so overflow shows as overruns too: both are reported as they are, side by side.
    """
    load = sum(p.load for p in plans)
    overflow = float(sum(p.overflow.sum() for p in plans))
    over = load > world.capacity + 1e-6
    headroom = min(world.headroom)
    return {
        "capacity_overruns": int(over.sum()),
        "capacity_overruns_gbps": float((load - world.capacity)[over].sum()),
        "demand_over_capacity": overflow,
        "nodes_over_capacity": int(over.sum()),  # = capacity_overruns (kept: an older key)
        "overflow_gbps": overflow,  # = demand_over_capacity (kept: an older key)
        "nodes_over_headroom": int((load > world.capacity * headroom + 1e-6).sum()),
        "max_utilisation": float((load / world.capacity).max()),
        "planned_gbps": float(load.sum()),
    }


def warm_up(world: World) -> None:
    """Compile (or load from numba's cache) every kernel on a few groups before timing."""
    groups = np.arange(1, min(40, len(world.weight)))
    ranks = [subset_rank(world.ranks[0], groups)]
    item = PlanInputs.create(
        ranks[0], Topology.create(ranks[0]), np.ones(len(groups)), world.capacity, world.headroom[0]
    )
    plan = plan_policy(item)
    state = np.zeros(world.n_nodes, dtype=np.int8)
    node = int(np.argmax(plan.load))
    state[node] = 2
    down = subset_rank(world.rank(0, state), groups)
    replan_node_down(
        PlanInputs.create(
            down, item.topology, item.group_demand, world.capacity, world.headroom[0]
        ),
        plan,
        node,
    )
    rank_groups(ranks[0], CANDIDATES)


def bench_full(world: World, factor: float, runs: int) -> tuple[dict, list, list]:
    demand = world.demand(factor)
    inputs = world.inputs(demand)
    totals, per_policy = [], [[] for _ in range(world.policies)]
    plans: list = []
    for _ in range(runs):
        used = np.zeros(world.n_nodes)
        plans = [None] * len(inputs)
        t_all = time.perf_counter()
        for p in planning_order(inputs):  # as plan_all, timed per policy
            t0 = time.perf_counter()
            plans[p] = plan_policy(inputs[p], used)
            per_policy[p].append(time.perf_counter() - t0)
            used = used + plans[p].load
        totals.append(time.perf_counter() - t_all)
    out = {
        "load_factor": factor,
        "demand_gbps": float(sum(d.sum() for d in demand)),
        "full_recompute_s": statistics.median(totals),
        "full_recompute_runs_s": [round(t, 4) for t in totals],
        "full_recompute_per_policy_s": [round(statistics.median(t), 4) for t in per_policy],
        **overruns(world, plans),
    }
    return out, plans, inputs


def check_repaired(plan, item: PlanInputs, node: int) -> list[str]:
    problems = []
    if np.any(plan.alloc_amount[plan.alloc_node == node] > 0):
        problems.append("demand placed on the failed node")
    if np.any(plan.overflow[plan.cand_node[:, 0] == node] > 0):
        problems.append("overflow on the failed node")
    if plan.load[node] > 1e-6:
        problems.append(f"load {plan.load[node]:.3g} left on the failed node")
    placed = plan.overflow.copy()
    np.add.at(placed, plan.alloc_group, plan.alloc_amount)
    if not np.allclose(placed, item.group_demand, rtol=1e-9, atol=1e-6):
        problems.append("demand not conserved")
    return problems


def bench_incremental(world: World, plans: list, inputs: list, count: int,
                      rng: np.random.Generator) -> dict:  # fmt: skip
    load = sum(p.load for p in plans)
    busy = np.flatnonzero(load > 0)
    nodes = np.sort(rng.choice(busy, size=min(count, len(busy)), replace=False))
    demand = [item.group_demand for item in inputs]
    times, with_inputs, touched, fallbacks, problems, detail = [], [], [], 0, [], []
    over, over_gbps, unplaced_gbps = 0, 0.0, 0.0  # summed over the repairs
    for node in nodes.tolist():
        state = np.zeros(world.n_nodes, dtype=np.int8)
        state[node] = 2
        t0 = time.perf_counter()
        new_inputs = world.inputs(demand, state)
        build_s = time.perf_counter() - t0
        fresh = [copy.deepcopy(p) for p in plans]  # outside the timing
        # What replan_node_down releases: groups listing the node, or placed on it.
        touched.append(sum(
            len(np.union1d(np.flatnonzero((p.cand_node == node).any(axis=1)), p.alloc_group[p.alloc_node == node]))
            for p in fresh
        ))  # fmt: skip
        t0 = time.perf_counter()
        total = sum(p.load for p in fresh)
        repaired = []
        for p, plan in enumerate(fresh):
            result = replan_node_down(new_inputs[p], plan, node, total - plan.load)
            if result is None:
                break
            repaired.append(result)
            total = sum(q.load for q in fresh)
        if len(repaired) < len(fresh):
            fallbacks += 1
            repaired = plan_all(new_inputs)
        elapsed = time.perf_counter() - t0
        times.append(elapsed * 1e3)
        with_inputs.append((elapsed + build_s) * 1e3)
        detail.append({"node": world.model.node_ids[node], "ms": round(elapsed * 1e3, 3),
                       "groups_released": touched[-1], "load_gbps": round(float(load[node]), 3),
                       "alloc_entries_after": int(sum(len(q.alloc_group) for q in repaired))})  # fmt: skip
        for p, plan in enumerate(repaired):
            problems += [
                f"node {node} policy {p}: {m}" for m in check_repaired(plan, new_inputs[p], node)
            ]
        after = overruns(world, repaired)
        over += after["capacity_overruns"]
        over_gbps += after["capacity_overruns_gbps"]
        unplaced_gbps += after["demand_over_capacity"]
    return {
        "incremental_recompute_ms": statistics.median(times),
        "incremental_recompute_p90_ms": float(np.percentile(times, 90)),
        "incremental_recompute_max_ms": max(times),
        "incremental_under_20ms_share": float(np.mean(np.array(times) < 20.0)),
        "incremental_with_inputs_ms": statistics.median(with_inputs),
        "incremental_nodes": len(nodes),
        "incremental_per_node": detail,
        "incremental_groups_released_median": statistics.median(touched),
        "incremental_full_plan_fallbacks": fallbacks,
        "incremental_problems": problems[:20],
        "incremental_capacity_overruns": over,
        "incremental_capacity_overruns_gbps": over_gbps,
        "incremental_demand_over_capacity": unplaced_gbps,
    }


# --- numba against numpy of the same algorithm ----------------------------------------------------
# The vectorised numpy implementations (the reference the kernels are tested against) are in
# tests/reference_numpy.py; loadtest/same_algorithm.py times them against the kernels.


def sample_groups(world: World, size: int, rng: np.random.Generator) -> np.ndarray:
    demanded = np.flatnonzero(world.weight > 0)
    return np.sort(rng.choice(demanded, size=min(size, len(demanded)), replace=False))


def python_reference_groups(n_nodes: int, quick: bool) -> int:
    """Groups for the plain Python reference: its loops cost groups x nodes, so the sample
    keeps that product about what 150 (quick: 40) groups cost on the 2,196-node world."""
    budget = (40 if quick else 150) * 2196
    return max(8, budget // max(n_nodes, 1))


def bench_serving(zones: Path, quick: bool, smoke: bool) -> dict:
    """The figures of a running router (each starts its own ``router serve``): node down ->
    first DNS answer without it (``loadtest/reaction.py``), and memory per worker with the
    full build from files (``loadtest/memory.py``, ``loadtest/full_build.py``)."""
    from loadtest.memory import measure_memory
    from loadtest.reaction import measure_node_down_to_answer

    # A router is a control process and its workers: under ``taskset -c 1`` (the steering
    # figures' one core) they would all share that core, so these parts get every core.
    pinned = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    log("node down -> answer, at the DNS socket")
    reaction = measure_node_down_to_answer(
        zones, 4 if smoke else 20 if quick else 120, restore=smoke, progress=False
    )
    out: dict = {"node_down_to_answer": reaction, "serving_cpus": sorted(os.sched_getaffinity(0))}
    for key, value in reaction.items():
        if key.startswith("node_down_to_answer_ms_"):
            out[key] = value
    log("memory per worker, full build")
    # The keys say "world": bench_core's deployment is the world (in --smoke, the sample).
    out.update(measure_memory(zones, [1, 2, 4], "world",
                              build_repeat=1 if quick else 3))  # fmt: skip
    os.sched_setaffinity(0, pinned)
    return out


def bench_numba_vs_numpy(world: World, numpy_size: int, python_size: int, runs: int,
                         rng: np.random.Generator) -> dict:  # fmt: skip
    """numba against numpy running the same algorithm (``loadtest/same_algorithm.py``), and
    against the plain Python reference on a smaller sample."""
    r = world.ranks[0]
    k = CANDIDATES
    out = bench_same_algorithm(r, world.capacity, world.headroom[0],
                               sample_groups(world, numpy_size, rng), runs)  # fmt: skip
    # The contract's numba_vs_numpy is now the like-for-like figure (it compared the two-stage
    # core with numpy's full scan, two algorithms: that ratio is not reported any more).
    out["numba_vs_numpy"] = out["numba_vs_numpy_same_algorithm"]
    out["numba_vs_numpy_rows_equal"] = float(
        min(
            out["numba_vs_numpy_same_algorithm_rows_equal"],
            out["numba_fullscan_vs_numpy_rows_equal"],
        )
    )
    # The plain reference (Python loops): ranking, and the whole plan on a smaller sample
    # whose demand is scaled to the same 70 % of all node capacity.
    groups = sample_groups(world, python_size, rng)
    small = subset_rank(r, groups)
    t0 = time.perf_counter()
    ref_ranked = reference.rank_groups(small, k)
    ref_s = time.perf_counter() - t0
    numba_small_s = best_of(lambda: rank_groups(small, k), runs)
    out["numba_vs_python_reference_rank"] = ref_s / numba_small_s
    out["rank_rows_equal_python_reference"] = float(
        (ref_ranked == rank_groups(small, k)).all(axis=1).mean()
    )
    demand = (
        world.weight[groups] / world.weight[groups].sum() * LOAD_FACTORS[0] * world.capacity.sum()
    )
    item = PlanInputs.create(
        small, Topology.create(small), demand, world.capacity, world.headroom[0]
    )
    plan_s = best_of(lambda: plan_policy(item), runs)
    t0 = time.perf_counter()
    ref = reference.plan(item, CANDIDATES)
    ref_plan_s = time.perf_counter() - t0
    plan = plan_policy(item)
    out.update({
        "numba_vs_python_reference_plan": ref_plan_s / plan_s,
        "python_reference_sample": f"{len(groups)} groups x {len(small.node_lat)} nodes, policy 0, "
                                   f"demand {LOAD_FACTORS[0]:.0%} of capacity",
        "python_reference_plan_s": ref_plan_s,
        "numba_plan_sample_s": plan_s,
        "plan_equals_python_reference": bool(
            np.array_equal(plan.cand_node, ref["cand_node"])
            and np.allclose(plan.load, ref["load"], rtol=1e-9, atol=1e-6)
        ),
    })  # fmt: skip
    return out


# --- quality: the plan against the min-cost optimum -----------------------------------------------


def weighted_stats(values: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    keep = weights > 0
    values, weights = values[keep], weights[keep]
    mean = float((values * weights).sum() / weights.sum())
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    p95 = float(values[order][np.searchsorted(cum, 0.95 * cum[-1])])
    return mean, p95


class Classes:
    """Groups of one policy that no cost can tell apart: same location, fence, on-net ASN.

    ``cost="latency"``: groups whose latency to every node and eligible nodes are the same,
    whatever their ASN (the ASN moves only the on-net bonus, which latency leaves out; the
    on-net limits are in the fence, part of the location): an exact merge, fewer classes,
    and no ``score`` (it would differ inside a class).
    """

    def __init__(self, world: World, p: int, demand: np.ndarray, cost: str = "score") -> None:
        r, topo = world.ranks[p], world.topologies[p]
        groups = np.flatnonzero(demand > 0)
        asn = np.where(np.isin(r.group_asn, r.node_asn), r.group_asn, -1)[groups]
        if cost == "latency":
            asn = np.full(len(groups), -1, dtype=np.int64)
        own = np.where(np.diff(r.meas_start) > 0, np.arange(len(r.group_lat)), -1)[groups]
        fence = r.group_fence[groups].astype(np.int64)  # a rule x geofence class: its own node set
        keys = np.stack([topo.group_loc[groups].astype(np.int64), asn, own, fence])
        _, first, inverse = np.unique(keys, axis=1, return_index=True, return_inverse=True)
        self.rep = groups[first]
        self.of_group = np.full(len(r.group_lat), -1, dtype=np.int64)
        self.of_group[groups] = inverse.reshape(-1)
        self.demand = np.bincount(inverse.reshape(-1), weights=demand[groups], minlength=len(first))
        nodes = np.arange(world.n_nodes)[None, :]
        score, self.latency, _ = pair_arrays(r, self.rep[:, None], nodes)
        self.score = score if cost == "score" else None
        self.allowed = reference.eligibility(r)[r.group_fence[self.rep]]


def plan_flows(plan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    over = np.flatnonzero(plan.overflow > 0)
    return (
        np.concatenate([plan.alloc_group, over]),
        np.concatenate([plan.alloc_node, plan.cand_node[over, 0]]),
        np.concatenate([plan.alloc_amount, plan.overflow[over]]),
    )


def solve_optimum(world: World, classes: list[Classes], ours: list[tuple], max_rounds: int,
                  cost: str = "score") -> dict:  # fmt: skip
    """Min-cost assignment of every class's demand to nodes, by column generation.

    Capacity: each node takes capacity * headroom at no extra cost, then up to its full
    capacity at RESERVE_PENALTY_MS per Gbps (the plan uses the reserve only when every
    node is at headroom). Cost: ``cost``, a per-pair array of the classes: ``"score"``
    (the plan's own cost) or ``"latency"`` (what clients feel). Pairs are those the classes'
    ``allowed`` leaves (pool, geofence, on-net limits). Starts from each class's best
    LP_START_TOP nodes by that cost plus every pair the plan used (so the plan is feasible
    for it), and adds pairs with negative reduced cost, priced with the same cost, until
    there is none: the optimum over all (class, node) pairs.
    """
    n_nodes, n_classes = world.n_nodes, sum(len(c.rep) for c in classes)
    headroom = max(world.headroom)  # policies with different headroom: the loosest, still a bound
    in_lp = []
    for c, (groups, nodes, _amount) in zip(classes, ours):
        top = min(LP_START_TOP, n_nodes)
        masked = np.where(c.allowed, getattr(c, cost), np.inf)
        chosen = np.zeros(c.allowed.shape, dtype=bool)
        np.put_along_axis(chosen, np.argpartition(masked, top - 1, axis=1)[:, :top], True, axis=1)
        chosen &= c.allowed
        chosen[c.of_group[groups], nodes] = True
        in_lp.append(chosen)
    offsets = np.cumsum([0] + [len(c.rep) for c in classes])
    lp = RestrictedLP(
        np.concatenate([c.demand for c in classes]), world.capacity * headroom,
        world.capacity * (1.0 - headroom),
    )  # fmt: skip
    pairs = [(offsets[p] + ci, ni, getattr(c, cost)[ci, ni])
             for p, (c, chosen) in enumerate(zip(classes, in_lp)) for ci, ni in [np.nonzero(chosen)]]  # fmt: skip
    rounds, added = 0, 0
    while True:
        rounds += 1
        t_round = time.perf_counter()
        lp.add_pairs(*(np.concatenate(part) for part in zip(*pairs)))
        status = lp.solve()
        if status != "optimal":
            return {"lp_status": status}
        y, z = lp.class_dual, lp.node_dual
        pairs, new = [], 0
        for p, (c, chosen) in enumerate(zip(classes, in_lp)):
            reduced = getattr(c, cost) - y[offsets[p] : offsets[p + 1], None] - z[None, :]
            price = np.where(c.allowed & ~chosen, reduced, np.inf)
            cand = price < -1e-7
            if cand.any():
                # At most PRICE_PER_ROUND of each class's most negative pairs per round.
                k = min(PRICE_PER_ROUND, n_nodes)
                worst = np.argpartition(price, k - 1, axis=1)[:, :k]
                pick = np.zeros_like(cand)
                np.put_along_axis(pick, worst, True, axis=1)
                pick &= cand
                chosen |= pick
                ci, ni = np.nonzero(pick)
                pairs.append((offsets[p] + ci, ni, getattr(c, cost)[ci, ni]))
                new += len(ci)
        added += new
        log(f"  {cost} LP round {rounds}: {lp.n_pairs:,} pairs, {new:,} priced in, "
            f"{time.perf_counter() - t_round:.1f} s")  # fmt: skip
        if new == 0 or rounds >= max_rounds:
            break
    e_class, e_node, x = lp.flows()
    return {
        "lp_status": "optimal" if new == 0 else f"stopped after {rounds} rounds with pairs left to price",
        "lp_rounds": rounds, "lp_pairs": lp.n_pairs, "lp_pairs_added_by_pricing": added,
        "lp_classes": n_classes, "edges": (e_class, e_node, x), "offsets": offsets,
        "reserve_gbps": lp.reserve_gbps(), "objective": lp.objective,
    }  # fmt: skip


class RestrictedLP:
    """The LP of ``solve_optimum`` over the pairs priced in so far, kept in one HiGHS instance
    so that each round starts from the last optimal basis (``linprog`` starts from scratch:
    at 20,000 nodes a round took 25 s, most of it re-solving what the last round had solved).

    Rows: one per class (its demand, equality), one per node (load - reserve <= capacity *
    headroom). Columns: one reserve per node (0 to capacity * (1 - headroom), at
    RESERVE_PENALTY_MS per Gbps), then one per (class, node) pair at its cost. HiGHS is the
    ``highspy`` package (HiGHS's own Python interface; linprog uses the same solver).
    """

    def __init__(self, demand: np.ndarray, headroom_gbps: np.ndarray, reserve_gbps: np.ndarray):
        import highspy

        self._highspy = highspy
        self.h = h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        self.n_classes, self.n_nodes = len(demand), len(headroom_gbps)
        none_i, none_f = np.zeros(0, dtype=np.int32), np.zeros(0)
        inf = h.getInfinity()
        h.addRows(self.n_classes, demand, demand, 0, np.zeros(self.n_classes, dtype=np.int32),
                  none_i, none_f)  # fmt: skip
        h.addRows(self.n_nodes, np.full(self.n_nodes, -inf), headroom_gbps, 0,
                  np.zeros(self.n_nodes, dtype=np.int32), none_i, none_f)  # fmt: skip
        h.addCols(self.n_nodes, np.full(self.n_nodes, RESERVE_PENALTY_MS), np.zeros(self.n_nodes),
                  reserve_gbps, self.n_nodes, np.arange(self.n_nodes, dtype=np.int32),
                  (self.n_classes + np.arange(self.n_nodes)).astype(np.int32), -np.ones(self.n_nodes))  # fmt: skip
        self.e_class, self.e_node = [], []

    @property
    def n_pairs(self) -> int:
        return sum(len(e) for e in self.e_class)

    def add_pairs(self, e_class: np.ndarray, e_node: np.ndarray, cost: np.ndarray) -> None:
        m = len(e_class)
        index = np.empty(2 * m, dtype=np.int32)
        index[0::2], index[1::2] = e_class, self.n_classes + e_node
        self.h.addCols(m, np.ascontiguousarray(cost, dtype=np.float64), np.zeros(m),
                       np.full(m, self.h.getInfinity()), 2 * m,
                       (2 * np.arange(m)).astype(np.int32), index, np.ones(2 * m))  # fmt: skip
        self.e_class.append(np.asarray(e_class, dtype=np.int64))
        self.e_node.append(np.asarray(e_node, dtype=np.int64))

    def solve(self) -> str:
        """The LP's status: "optimal", or HiGHS's model status when it is not."""
        self.h.run()
        status = self.h.getModelStatus()
        if status != self._highspy.HighsModelStatus.kOptimal:
            return f"HiGHS: {self.h.modelStatusToString(status)}"
        solution = self.h.getSolution()
        self.col_value = np.asarray(solution.col_value)
        row_dual = np.asarray(solution.row_dual)
        # d(objective)/d(rhs): a pair's reduced cost is cost - class_dual - node_dual.
        self.class_dual, self.node_dual = row_dual[: self.n_classes], row_dual[self.n_classes :]
        self.objective = float(self.h.getInfo().objective_function_value)
        return "optimal"

    def flows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.concatenate(self.e_class),
            np.concatenate(self.e_node),
            self.col_value[self.n_nodes :],
        )

    def reserve_gbps(self) -> float:
        return float(self.col_value[: self.n_nodes].sum())


def bench_quality(world: World, plans: list, inputs: list, max_rounds: int) -> dict:
    classes = [Classes(world, p, inputs[p].group_demand) for p in range(world.policies)]
    # The vectorised scores must be the router's own: check against group_components.
    worst = 0.0
    for p, c in enumerate(classes):
        for i in np.linspace(0, len(c.rep) - 1, num=min(8, len(c.rep)), dtype=int):
            comp = group_components(world.ranks[p], int(c.rep[i]))
            worst = max(worst, float(np.abs(comp.score - c.score[i]).max()),
                        float(np.abs(comp.latency_ms - c.latency[i]).max()))  # fmt: skip
    ours = [plan_flows(plan) for plan in plans]
    t0 = time.perf_counter()
    opt = solve_optimum(world, classes, ours, max_rounds)
    out: dict = {
        "lp_seconds": round(time.perf_counter() - t0, 3),
        "vectorised_score_max_abs_diff": worst,
    }
    if "edges" not in opt:
        out.update(opt)
        return out
    e_class, e_node, x = opt.pop("edges")
    offsets = opt.pop("offsets")
    out.update(opt)
    del out["objective"]
    out["lp_onnet_only_violations"] = onnet_only_violations(
        world.model, np.concatenate([c.rep for c in classes])[e_class], e_node, x
    )
    lat_opt, score_opt = np.empty(len(x)), np.empty(len(x))
    for p, c in enumerate(classes):
        sel = (e_class >= offsets[p]) & (e_class < offsets[p + 1])
        lat_opt[sel] = c.latency[e_class[sel] - offsets[p], e_node[sel]]
        score_opt[sel] = c.score[e_class[sel] - offsets[p], e_node[sel]]
    lat_ours, score_ours, w_ours = [], [], []
    for c, (groups, nodes, amount) in zip(classes, ours):
        lat_ours.append(c.latency[c.of_group[groups], nodes])
        score_ours.append(c.score[c.of_group[groups], nodes])
        w_ours.append(amount)
    lat_ours, score_ours, w_ours = map(np.concatenate, (lat_ours, score_ours, w_ours))
    mean_ours, p95_ours = weighted_stats(lat_ours, w_ours)
    mean_opt, p95_opt = weighted_stats(lat_opt, x)
    load = sum(p.load for p in plans)
    total = w_ours.sum()
    out.update({
        "mean_latency_ms": mean_ours, "p95_latency_ms": p95_ours,
        "optimum_mean_latency_ms": mean_opt, "optimum_p95_latency_ms": p95_opt,
        "mean_latency_vs_optimum": mean_ours / mean_opt, "p95_latency_vs_optimum": p95_ours / p95_opt,
        # The LP minimises the score (latency - on-net bonus), so this gap is >= 0.
        "mean_score_ms": float((score_ours * w_ours).sum() / total),
        "optimum_mean_score_ms": float((score_opt * x).sum() / x.sum()),
        "reserve_gbps_ours": float(np.maximum(load - world.capacity * max(world.headroom), 0).sum()),
        "reserve_gbps_optimum": out["reserve_gbps"],
    })  # fmt: skip
    out["mean_score_excess_ms"] = out["mean_score_ms"] - out["optimum_mean_score_ms"]
    # A ratio of scores means something only while scores are positive (the on-net bonus can
    # take them below 0); mean_score_excess_ms always does.
    out["mean_score_vs_score_optimum"] = (
        out["mean_score_ms"] / out["optimum_mean_score_ms"]
        if out["optimum_mean_score_ms"] > 0
        else None
    )
    del out["reserve_gbps"]
    return out


def onnet_only_violations(model, groups: np.ndarray, nodes: np.ndarray, amount: np.ndarray) -> int:
    """Flows (client group, node, Gbps > 0) from a ``serves: on-net`` node to a group whose
    ASN it does not serve, checked against nodes.yaml's served ASNs directly (not through the
    fences the classes' eligibility is built from)."""
    served = model.node_onnet_asns
    asn = model.client_map.groups.asn
    bad = 0
    for g, n in zip(groups[amount > 1e-9].tolist(), nodes[amount > 1e-9].tolist()):
        if served[n] is not None and int(asn[g]) not in served[n]:
            bad += 1
    return bad


def bench_refine(world: World, plans: list, inputs: list, factor: float,
                 rng: np.random.Generator) -> tuple[list, dict]:  # fmt: skip
    """The refine pass the router runs after each full plan (router/steering/refine.py), with
    the router's budget: cold (the first refine of a deployment), then warm (the demand of
    every group moved by a lognormal factor, sigma 0.1, the greedy planned again, and the
    refine started from what the cold one kept, as the router does after new demand).
    Returns the plans the router serves once the refine is in, and the figures."""
    refined, report, memory = refine(plans, inputs, REFINE_BUDGET_S)
    out = {
        "refine_s": report.seconds, "refine_status": report.status, "refine_rounds": report.rounds,
        "refine_classes": report.classes, "refine_pairs": report.pairs,
        "refine_unit_gbps": report.unit_gbps,
        "refine_mean_score_before_ms": report.mean_score_before_ms,
        "refine_mean_score_after_ms": report.mean_score_after_ms,
    }  # fmt: skip
    served = plans if refined is None else refined
    out.update({f"refined_{key}": value for key, value in overruns(world, served).items()})
    moved = []
    for item in inputs:
        demand = item.group_demand * rng.lognormal(0.0, 0.1, size=len(item.group_demand))
        moved.append(demand * item.group_demand.sum() / max(demand.sum(), 1e-12))
    moved_inputs = world.inputs(moved)
    _warm, warm, _ = refine(plan_all(moved_inputs), moved_inputs, REFINE_BUDGET_S, memory)
    out.update({
        "refine_warm_s": warm.seconds, "refine_warm_status": warm.status,
        "refine_warm_rounds": warm.rounds,
    })  # fmt: skip
    return served, out


def bench_latency_optimum(world: World, plans: list, inputs: list, max_rounds: int,
                          greedy: list | None = None) -> dict:  # fmt: skip
    """The plan's client latency against the LP that minimises demand-weighted client latency.

    Same classes, pairs and capacity as the score LP (``solve_optimum``); only the cost is
    the pair's latency (no on-net bonus, no load penalty). The plan is feasible for this LP,
    so its objective (latency x Gbps + the reserve's penalty) is never below the LP's.
    ``greedy``: other plans of the same demand (the greedy's before its refine), measured
    against the same LP as ``*_greedy``.
    """
    classes = [
        Classes(world, p, inputs[p].group_demand, cost="latency") for p in range(world.policies)
    ]
    ours = [plan_flows(plan) for plan in plans]
    t0 = time.perf_counter()
    opt = solve_optimum(world, classes, ours, max_rounds, cost="latency")
    out: dict = {
        "lp_latency_seconds": round(time.perf_counter() - t0, 3),
        "lp_latency_status": opt["lp_status"],
    }
    if "edges" not in opt:  # no figure, and the targets say MISS
        out.update({"latency_vs_lp_optimum": None, "p95_latency_vs_lp_optimum": None})
        if greedy is not None:
            out.update(
                {"latency_vs_lp_optimum_greedy": None, "p95_latency_vs_lp_optimum_greedy": None}
            )
        return out
    e_class, e_node, x = opt["edges"]
    offsets = opt["offsets"]
    lat_opt = np.empty(len(x))
    for p, c in enumerate(classes):
        sel = (e_class >= offsets[p]) & (e_class < offsets[p + 1])
        lat_opt[sel] = c.latency[e_class[sel] - offsets[p], e_node[sel]]

    def latencies(flows: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.concatenate([c.latency[c.of_group[g], n] for c, (g, n, _a) in zip(classes, flows)]),
            np.concatenate([amount for _g, _n, amount in flows]),
        )

    lat_ours, w_ours = latencies(ours)
    mean_ours, p95_ours = weighted_stats(lat_ours, w_ours)
    mean_opt, p95_opt = weighted_stats(lat_opt, x)
    if greedy is not None:
        mean_greedy, p95_greedy = weighted_stats(*latencies([plan_flows(p) for p in greedy]))
        out["latency_vs_lp_optimum_greedy"] = mean_greedy / mean_opt
        out["p95_latency_vs_lp_optimum_greedy"] = p95_greedy / p95_opt
    load = sum(p.load for p in plans)
    reserve_ours = float(np.maximum(load - world.capacity * max(world.headroom), 0).sum())
    out.update({
        "latency_vs_lp_optimum": mean_ours / mean_opt,
        "p95_latency_vs_lp_optimum": p95_ours / p95_opt,
        "lp_latency_mean_ms": mean_opt, "lp_latency_p95_ms": p95_opt,
        "lp_latency_rounds": opt["lp_rounds"], "lp_latency_pairs": opt["lp_pairs"],
        "lp_latency_pairs_added_by_pricing": opt["lp_pairs_added_by_pricing"],
        "lp_latency_classes": opt["lp_classes"],
        "lp_latency_reserve_gbps": opt["reserve_gbps"],
        "lp_latency_objective": opt["objective"],
        "plan_latency_objective": float((lat_ours * w_ours).sum()) + RESERVE_PENALTY_MS * reserve_ours,
        "lp_latency_onnet_only_violations": onnet_only_violations(
            world.model, np.concatenate([c.rep for c in classes])[e_class], e_node, x
        ),
        "plan_onnet_only_violations": onnet_only_violations(
            world.model, np.concatenate([g for g, _n, _a in ours]),
            np.concatenate([n for _g, n, _a in ours]), w_ours,
        ),
    })  # fmt: skip
    return out


# --- report ---------------------------------------------------------------------------------------


def capacity_target_text(demand_over_capacity: float | None) -> str:
    """The overrun target, saying so when demand does not fit: the planner then places what
    fits nowhere on each group's best node, so overruns are expected, and still counted."""
    if not demand_over_capacity or demand_over_capacity <= 0:
        return CAPACITY_TARGET
    return (
        f"{CAPACITY_TARGET}; here it does not: {demand_over_capacity:,.1f} Gbps beyond what the "
        "eligible nodes carry"
    )


def judge_targets(result: dict, suffixes: tuple[str, ...]) -> dict:
    """key -> {target, value, pass} for every figure with a target, at each load factor's
    suffix (the first load factor's keys have none)."""
    out = {}
    for suffix in suffixes:
        for key, (text, test) in TARGETS.items():
            if key + suffix not in result:
                continue
            value = result[key + suffix]
            if key == "capacity_overruns":
                text = capacity_target_text(result.get("demand_over_capacity" + suffix))
            out[key + suffix] = {
                "target": text,
                "value": value,
                "pass": bool(value is not None and test(value)),
            }
    return out


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value >= 1e5:
            return f"{value:,.0f}"
        return f"{value:.4g}" if value < 100 else f"{value:,.1f}"
    return str(value)


def print_table(rows: list[tuple[str, object, str, str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--zones", type=Path,
                        help="deployment directory (default var/world, --smoke zones/: the small sample)")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="small counts (for tests and the sample)"
    )
    parser.add_argument("--smoke", action="store_true",
                        help="--quick on the repo's sample (zones/) with one run per figure: seconds, for the "
                             "test suite; the figures say nothing about the world")  # fmt: skip
    parser.add_argument(
        "--runs", type=int, help="timed runs per figure (default 3, quick 2, smoke 1)"
    )
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
    quick = args.quick or args.smoke
    runs = args.runs or (1 if args.smoke else 2 if quick else 3)
    if args.zones is None:
        args.zones = SAMPLE_ZONES if args.smoke else DEFAULT_ZONES
    started = dt.datetime.now(dt.UTC)

    def rng(part: int) -> np.random.Generator:  # each part draws the same whatever runs before it
        return np.random.default_rng([args.seed, part])

    result: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(["bench_core.py", *argv]),
        "started": started.isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "cpus_allowed": sorted(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__, "numba": __import__("numba").__version__},
        "zones": str(args.zones), "quick": quick, "smoke": args.smoke, "runs": runs, "seed": args.seed,
    }  # fmt: skip
    problem = ensure_world(args.zones)
    if problem:
        print(f"bench_core: {problem}", file=sys.stderr)
        return EXIT_NO_WORLD
    summary = args.zones / "world.json"
    if summary.is_file():
        result["world"] = json.loads(summary.read_text())

    log(f"starting the router on {args.zones}")
    result.update(router_start(args.zones))
    log(f"loading {args.zones}")
    t0 = time.perf_counter()
    model = load_model(args.zones)
    result["load_s"] = time.perf_counter() - t0
    cm = model.client_map
    result.update({
        "nodes": len(model.node_ids), "client_groups": len(cm.groups),
        "prefixes": len(cm.v4_start) + len(cm.v6_start_hi),
        "prefixes_kind": "compiled map intervals, IPv4 + IPv6 (disjoint, after longest-prefix flattening)",
        "prefixes_v4_intervals": len(cm.v4_start), "prefixes_v6_intervals": len(cm.v6_start_hi),
        "input_prefixes": result.get("world", {}).get("prefixes", {}).get("total"),
        "policies": [p.name for p in model.policies],
        "capacity_gbps": float(np.sum(model.node_capacity_gbps)),
    })  # fmt: skip

    result["rss_after_load_mb"] = rss_mb()

    log("planning")
    world = World(model)
    result["topology_create_s"] = world.topology_s
    result["headroom"] = world.headroom
    result["demand_model"] = (
        "IPv4 addresses per group (group 0 none), scaled so all policies together ask for the load "
        f"factor times the total node capacity, split evenly between the {world.policies} policies; "
        "node_util 0 (no load penalty)"
    )
    warm_up(world)
    by_factor = {}
    for factor in LOAD_FACTORS:
        log(f"full plan at {factor:.0%}")
        by_factor[factor] = bench_full(world, factor, runs if factor == LOAD_FACTORS[0] else 1)
    _figures, plans, inputs = by_factor[LOAD_FACTORS[0]]
    result["full_recompute_stages_s"] = time_stages(inputs)
    log("incremental repairs")
    result.update(bench_incremental(world, plans, inputs, 5 if quick else 20, rng(1)))
    result["peak_rss_mb"] = rss_mb()
    result["peak_rss_when"] = (
        "after loading the world and planning every load factor (before the other parts)"
    )

    log("LPM")
    result.update(
        bench_lpm(
            cm, 200_000 if quick else 4_000_000, 20_000 if quick else 200_000, max(runs, 3), rng(2)
        )
    )

    log("full-scan ranking")
    t0 = time.perf_counter()
    rank_groups(world.ranks[0], CANDIDATES)
    result["rank_groups_full_scan_s"] = time.perf_counter() - t0

    log("numba vs numpy")
    result.update(
        bench_numba_vs_numpy(
            world,
            500 if quick else 2000,
            python_reference_groups(world.n_nodes, quick),
            runs,
            rng(3),
        )
    )

    tag = {f: f"_{round(f * 100)}" for f in LOAD_FACTORS}
    for factor in LOAD_FACTORS:
        figures, plans, inputs = by_factor[factor]
        log(f"refine at {factor:.0%}")
        served, refine_figures = bench_refine(world, plans, inputs, factor, rng(4))
        result.update({f"{key}{tag[factor]}": value for key, value in refine_figures.items()})
        log(f"score optimum at {factor:.0%}")
        figures.update(bench_quality(world, served, inputs, LP_MAX_ROUNDS))
        log(f"latency optimum at {factor:.0%}")
        # The greedy plan alone too: in service from a change until its refine is in.
        latency = bench_latency_optimum(world, served, inputs, LP_MAX_ROUNDS, greedy=plans)
        for key, value in latency.items():
            result[f"{key}{tag[factor]}"] = value
    for factor, (figures, _plans, _inputs) in by_factor.items():
        for key, value in figures.items():
            # The first load factor's figures are the contract's; the others carry a suffix.
            result[key if factor == LOAD_FACTORS[0] else f"{key}{tag[factor]}"] = value
    result["lp_capacity"] = (
        f"both LPs (score and latency): each node's capacity * headroom ({max(world.headroom)}, "
        "the loosest policy's) at the pair's cost, then up to its full capacity at "
        f"{RESERVE_PENALTY_MS:,.0f} ms per Gbps: the two tiers the planner fills, in that order "
        "(PlanInputs headroom, then the reserve up to capacity), shared by every policy as the "
        "planner shares them; the plan's own flows are feasible for both LPs"
    )
    result["lp_eligibility"] = (
        "both LPs: a class may use the nodes its group's rank inputs leave it (pool, geofence and "
        "the on-net limits of nodes.yaml, folded into the fence by combine_fences, up nodes "
        "only): the planner's own eligibility; *_onnet_only_violations count flows from a "
        "serves: on-net node to an ASN it does not serve, checked against nodes.yaml directly"
    )
    result["lp_cost"] = (
        "score LP (lp_*, optimum_*, mean_latency_vs_optimum, p95_latency_vs_optimum, "
        "mean_score_vs_score_optimum): the plan's score, latency - on-net bonus + load penalty "
        "(0: no load reported), so its latency is the score optimum's, not the least possible"
    )
    result["lp_latency_cost"] = (
        "latency LP (lp_latency_*, latency_vs_lp_optimum_*, p95_latency_vs_lp_optimum_*): the "
        "pair's client latency alone, demand-weighted; latency_vs_lp_optimum_F = the mean "
        "latency (mean_latency_ms at F) of the plan the router serves once its refine pass is in "
        "(router/steering/refine.py, run here with the router's budget, refine_*_F) / "
        "lp_latency_mean_ms_F; latency_vs_lp_optimum_greedy_F = the greedy plan's alone (served "
        "from a change until the refine is in). The LP minimises the mean; "
        "lp_latency_p95_ms is the p95 of the solution HiGHS returns (a p95 is not minimised, and "
        "an optimum need not be unique), so p95_latency_vs_lp_optimum can be below 1"
    )
    result["latency_definition"] = (
        "the (client group, node) pair's latency (as group_components reports it), demand-weighted"
    )
    result["peak_rss_mb_end"] = rss_mb()
    del world, model, cm, by_factor, plans, inputs  # the routers started below need the memory
    result.update(bench_serving(args.zones, quick, args.smoke))
    result["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    result["targets"] = judge_targets(result, ("", *(tag[f] for f in LOAD_FACTORS[1:])))

    def row(label: str, key: str, unit: str = "", more: str = "") -> tuple[str, str, str, str]:
        target = result["targets"].get(key)
        verdict = ("PASS" if target["pass"] else "MISS") if target else ""
        return (
            label,
            f"{fmt(result.get(key))}{unit}{more}",
            target["target"] if target else "",
            verdict,
        )

    f90 = tag[LOAD_FACTORS[1]]
    lo, hi = (f"{f:.0%}" for f in LOAD_FACTORS[:2])

    def at(key: str, factor: float) -> str:  # a figure of the plan or the score LP at a factor
        return key if factor == LOAD_FACTORS[0] else key + tag[factor]

    latency_rows = []
    for f in sorted(LOAD_FACTORS):
        t, pct = tag[f], f"{f:.0%}"
        latency_rows += [
            (
                f"latency LP ({pct}): status, rounds, s",
                f"{result.get('lp_latency_status' + t)}, {fmt(result.get('lp_latency_rounds' + t))}, "
                f"{fmt(result.get('lp_latency_seconds' + t))}",
                "",
                "",
            ),
            (
                f"mean / p95 latency ours, latency LP ({pct}), ms",
                f"{fmt(result.get(at('mean_latency_ms', f)))} / {fmt(result.get(at('p95_latency_ms', f)))}, "
                f"{fmt(result.get('lp_latency_mean_ms' + t))} / {fmt(result.get('lp_latency_p95_ms' + t))}",
                "",
                "",
            ),
            (
                f"refine ({pct}): status, rounds, s; warm after new demand",
                f"{result.get('refine_status' + t)}, {fmt(result.get('refine_rounds' + t))}, "
                f"{fmt(result.get('refine_s' + t))}; {result.get('refine_warm_status' + t)}, "
                f"{fmt(result.get('refine_warm_rounds' + t))}, {fmt(result.get('refine_warm_s' + t))}",
                "",
                "",
            ),
            row(f"mean latency vs latency LP ({pct})", f"latency_vs_lp_optimum{t}"),
            row(f"p95 latency vs latency LP ({pct})", f"p95_latency_vs_lp_optimum{t}"),
            row(f"the greedy plan alone, mean vs LP ({pct})", f"latency_vs_lp_optimum_greedy{t}"),
            row(
                f"the greedy plan alone, p95 vs LP ({pct})", f"p95_latency_vs_lp_optimum_greedy{t}"
            ),
        ]
    rows = [
        ("figure", "value", "target", ""),
        (
            "world",
            f"{result['nodes']:,} nodes, {result['client_groups']:,} groups, "
            f"{result['prefixes']:,} intervals",
            "",
            "",
        ),
        row("LPM IPv4 batch, lookups/s", "lpm_v4_batch_per_s"),
        row("LPM IPv6 batch, lookups/s", "lpm_v6_batch_per_s"),
        row("LPM IPv4 single (Python loop), us", "lpm_single_us"),
        row("LPM IPv6 single (Python loop), us", "lpm_single_v6_us"),
        row("Topology.create, all policies (once per config), s", "topology_create_s"),
        row(f"full recompute, all policies, {lo} load, median s", "full_recompute_s"),
        row(f"full recompute, all policies, {hi} load (1 run), s", f"full_recompute_s{f90}"),
        row("full-scan rank_groups(16), one policy, s", "rank_groups_full_scan_s"),
        row("incremental (node down), median ms", "incremental_recompute_ms"),
        row(
            "incremental, p90 / max ms",
            "incremental_recompute_p90_ms",
            more=f" / {fmt(result.get('incremental_recompute_max_ms'))}",
        ),
        row("incremental incl. building inputs, median ms", "incremental_with_inputs_ms"),
        row("router serve to READY (one worker), s", "router_start_s"),
        row(
            "numba vs numpy, same algorithm (the core's ranking)",
            "numba_vs_numpy_same_algorithm",
            "x",
        ),
        row("numba vs numpy, same algorithm (full scan)", "numba_fullscan_vs_numpy", "x"),
        row("numba vs Python reference (plan)", "numba_vs_python_reference_plan", "x"),
        *latency_rows,
        (
            f"mean latency ours / score optimum ({lo}), ms",
            f"{fmt(result.get('mean_latency_ms'))} / {fmt(result.get('optimum_mean_latency_ms'))}",
            "",
            "",
        ),
        row(f"mean latency vs score optimum ({lo})", "mean_latency_vs_optimum"),
        row(f"p95 latency vs score optimum ({lo})", "p95_latency_vs_optimum"),
        row(f"mean score above score optimum ({lo}), ms", "mean_score_excess_ms"),
        row(f"mean latency vs score optimum ({hi})", f"mean_latency_vs_optimum{f90}"),
        row(f"p95 latency vs score optimum ({hi})", f"p95_latency_vs_optimum{f90}"),
        row(
            f"capacity overruns ({lo}), nodes / Gbps past capacity",
            "capacity_overruns",
            more=f" / {fmt(result.get('capacity_overruns_gbps'))}",
        ),
        row(f"demand over capacity ({lo}), Gbps", "demand_over_capacity"),
        row(
            f"capacity overruns ({hi}), nodes / Gbps past capacity",
            f"capacity_overruns{f90}",
            more=f" / {fmt(result.get('capacity_overruns_gbps' + f90))}",
        ),
        row(f"demand over capacity ({hi}), Gbps", f"demand_over_capacity{f90}"),
        row("peak RSS, MB", "peak_rss_mb"),
        row("node down -> first answer without it, p50 ms", "node_down_to_answer_ms_p50"),
        row("node down -> first answer without it, p99 ms", "node_down_to_answer_ms_p99"),
        row("full build, files to a first routing table, s", "full_build_s_world"),
        row("PSS per worker (4 workers), MB", "worker_pss_mb_world"),
        row(
            "PSS in total, 1 / 2 / 4 workers, MB",
            "total_pss_mb_world_1_workers",
            more=f" / {fmt(result.get('total_pss_mb_world_2_workers'))} / {fmt(result.get('total_pss_mb_world_4_workers'))}",
        ),
    ]
    print_table(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
        log(f"wrote {args.json}")
    return 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    sys.exit(main())
