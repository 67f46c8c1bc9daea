#!/usr/bin/env python3
"""numba against numpy running the same ranking algorithm, on the same inputs.

    taskset -c 1 .venv/bin/python loadtest/same_algorithm.py --zones var/world
    .venv/bin/python loadtest/same_algorithm.py --zones zones --smoke   # seconds, no world

Two comparisons, each numba kernel against the vectorised numpy version of its own
algorithm in ``tests/reference_numpy.py``, both producing the same node lists (checked):

* ``numba_vs_numpy_same_algorithm``: the ranking ``plan_policy`` runs (each location's
  best nodes once, then each group's exact candidates, full scans where needed). numba
  is timed through ``plan_policy`` with no demand (ranking only, as the router calls it);
  numpy through ``reference_numpy.rank_candidates``. Target: >= 3x.
* ``numba_fullscan_vs_numpy``: the full scan (every group scores every node), numba's
  ``rank_groups`` against ``reference_numpy.rank_full_scan``, on at most
  ``FULLSCAN_GROUPS`` groups of the sample (it costs groups x nodes).

numpy runs twice per figure, with the kernels' chord pruning (distances skipped for pairs
that provably miss the cut) and without it; the faster is the figure's numpy time, so
numba is held to the better numpy on this data. Best of ``runs`` for each, every side
run once before timing (numba compiled). Run it on one core
(``taskset -c 1``): the figures are single-core times. ``loadtest/bench_core.py`` calls
``bench_same_algorithm`` with the world's policy-0 inputs and its sample of groups.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from router.steering.capacity import (  # noqa: E402
    CANDIDATES,
    LOCATION_DEPTH,
    PlanInputs,
    Topology,
    plan_policy,
)
from router.steering.rank import RankInputs, rank_groups  # noqa: E402
from tests import reference_numpy  # noqa: E402

TARGET = 3.0  # numba >= 3x the same-algorithm numpy (issue 19)
# Node lists must be equal; scores and distances may differ by numpy's arcsin ulps.
FLOAT_RTOL = 1e-12
FULLSCAN_GROUPS = 500


def best_of(fn, runs: int) -> float:
    best = math.inf
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def subset_rank(r: RankInputs, groups: np.ndarray) -> RankInputs:
    """The rank inputs of ``groups`` only (their samples kept), every node kept."""
    groups = np.asarray(groups, dtype=np.int64)
    counts = np.diff(r.meas_start)[groups]
    take = (
        np.concatenate([np.arange(r.meas_start[g], r.meas_start[g + 1]) for g in groups])
        if counts.sum()
        else np.zeros(0, dtype=np.int64)
    )
    return RankInputs.create(
        group_lat=r.group_lat[groups], group_lon=r.group_lon[groups], group_country=r.group_country[groups],
        group_asn=r.group_asn[groups], group_fence=r.group_fence[groups], fence_allowed=r.fence_allowed,
        node_lat=r.node_lat, node_lon=r.node_lon, node_country=r.node_country, node_asn=r.node_asn,
        node_state=r.node_state, node_util=r.node_util, node_in_pool=r.node_in_pool, country_rtt=r.country_rtt,
        onnet_bonus_ms=r.onnet_bonus_ms, load_penalty_ms=r.load_penalty_ms,
        meas_start=np.concatenate([[0], np.cumsum(counts)]), meas_node=r.meas_node[take], meas_rtt=r.meas_rtt[take],
        est_base_ms=r.est_base_ms, est_ms_per_km=r.est_ms_per_km,
    )  # fmt: skip


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    both_inf = np.isinf(a) & np.isinf(b)
    return bool(
        np.array_equal(np.isinf(a), np.isinf(b))
        and np.allclose(a[~both_inf], b[~both_inf], rtol=FLOAT_RTOL, atol=0.0)
    )


def bench_same_algorithm(
    rank_inputs: RankInputs,
    capacity: np.ndarray,
    headroom: float,
    groups_sample: np.ndarray,
    runs: int,
    fullscan_groups: int = FULLSCAN_GROUPS,
) -> dict:
    """Time numba and numpy on the same algorithm and the same sample; see the module doc.

    The full scan is timed on every ``len(groups_sample) // fullscan_groups``-th group of
    the sample (at most ``fullscan_groups``): it costs groups x nodes on both sides.
    """
    sub = subset_rank(rank_inputs, groups_sample)
    topology = Topology.create(sub)
    idle = PlanInputs.create(sub, topology, np.zeros(len(sub.group_lat)), capacity, headroom)
    c, depth = CANDIDATES, LOCATION_DEPTH

    def numba_core():
        return plan_policy(idle, candidates=c, location_depth=depth)

    plan = numba_core()  # numba compiles here
    core_numba_s = best_of(numba_core, runs)
    # numpy twice: with the kernels' chord pruning and without it (every distance an
    # estimated score needs); the faster one is the figure's numpy, both are checked.
    core_numpy: dict[bool, float] = {}
    core_equal, core_floats, locations_equal, numpy_scans = 1.0, True, True, []
    for prune in (True, False):
        ref = reference_numpy.rank_candidates(sub, topology, c, depth, prune)
        core_numpy[prune] = best_of(
            lambda p=prune: reference_numpy.rank_candidates(sub, topology, c, depth, p), runs
        )
        core_equal = min(core_equal, float((plan.cand_node == ref["cand_node"]).all(axis=1).mean()))
        core_floats = (
            core_floats
            and _close(plan.cand_score, ref["cand_score"])
            and _close(plan.cand_dist, ref["cand_dist"])
        )
        locations_equal = locations_equal and bool(np.array_equal(plan.loc_node, ref["loc_node"]))
        numpy_scans.append(ref["full_scans"])
    core_numpy_s = min(core_numpy.values())

    step = max(1, -(-len(groups_sample) // max(1, fullscan_groups)))
    scan = subset_rank(rank_inputs, np.asarray(groups_sample)[::step])
    full = rank_groups(scan, c)
    full_numba_s = best_of(lambda: rank_groups(scan, c), runs)
    full_numpy: dict[bool, float] = {}
    full_equal = 1.0
    for prune in (True, False):
        full_ref = reference_numpy.rank_full_scan(scan, c, prune)
        full_numpy[prune] = best_of(
            lambda p=prune: reference_numpy.rank_full_scan(scan, c, p), runs
        )
        full_equal = min(full_equal, float((full == full_ref).all(axis=1).mean()))
    full_numpy_s = min(full_numpy.values())
    ratio = core_numpy_s / core_numba_s
    return {
        "numba_vs_numpy_same_algorithm": ratio,
        "numba_vs_numpy_same_algorithm_target": TARGET,
        "numba_vs_numpy_same_algorithm_met": bool(ratio >= TARGET),
        "numba_vs_numpy_same_algorithm_rows_equal": core_equal,
        "numba_vs_numpy_same_algorithm_floats_close": core_floats,
        "numba_vs_numpy_same_algorithm_locations_equal": locations_equal,
        "numba_vs_numpy_same_algorithm_full_scans": [plan.full_scans, *numpy_scans],
        "numba_vs_numpy_same_algorithm_numba_s": core_numba_s,
        "numba_vs_numpy_same_algorithm_numpy_s": core_numpy_s,
        "numba_vs_numpy_same_algorithm_numpy_pruned_s": core_numpy[True],
        "numba_vs_numpy_same_algorithm_numpy_unpruned_s": core_numpy[False],
        "numba_fullscan_vs_numpy": full_numpy_s / full_numba_s,
        "numba_fullscan_vs_numpy_rows_equal": full_equal,
        "numba_fullscan_numba_s": full_numba_s,
        "numba_fullscan_numpy_s": full_numpy_s,
        "numba_fullscan_numpy_pruned_s": full_numpy[True],
        "numba_fullscan_numpy_unpruned_s": full_numpy[False],
        "numba_vs_numpy_same_algorithm_sample": (
            f"{len(sub.group_lat)} groups ({len(topology.loc_lat)} locations) x "
            f"{len(sub.node_lat)} nodes, top-{c} candidates, location depth {depth}, best of {runs}"
        ),
        "numba_fullscan_sample": f"{len(scan.group_lat)} groups x {len(scan.node_lat)} nodes, top-{c}",
        "numba_vs_numpy_same_algorithm_kind": (
            "plan_policy's ranking (eligibility, each location's best nodes, each group's exact "
            "candidates with full-scan fallback) in numba against the same algorithm in "
            "vectorised numpy (tests/reference_numpy.rank_candidates, the faster of its runs "
            "with and without the kernels' chord pruning), same inputs, same node lists; "
            "numba_fullscan_vs_numpy: rank_groups against reference_numpy.rank_full_scan, alike"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    from router.config import load_deployment
    from router.steering.model import compile_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zones", type=Path, default=REPO / "var" / "world")
    parser.add_argument("--groups", type=int, default=2000, help="sampled client groups")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="200 groups, one run")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.groups, args.runs = 200, 1
    if not args.zones.is_dir():
        parser.error(f"--zones {args.zones}: not a directory")
    model = compile_model(load_deployment(args.zones))
    n_nodes = len(model.node_ids)
    r = model.rank_inputs(0, np.zeros(n_nodes, dtype=np.int8), np.zeros(n_nodes))
    n_groups = len(r.group_lat)
    rng = np.random.default_rng(3)
    # Group 0 holds clients of unknown networks; the sample is of located groups.
    pool = np.arange(1, n_groups) if n_groups > 1 else np.arange(n_groups)
    groups = np.sort(rng.choice(pool, size=min(args.groups, len(pool)), replace=False))
    capacity = np.asarray(model.node_capacity_gbps, dtype=np.float64)
    headroom = float(getattr(model.policies[0].policy, "headroom", 0.8))
    out = bench_same_algorithm(r, capacity, headroom, groups, args.runs)
    for key, value in out.items():
        print(f"{key}: {value}")
    verdict = "PASS" if out["numba_vs_numpy_same_algorithm_met"] else "MISS"
    print(
        f"numba_vs_numpy_same_algorithm {out['numba_vs_numpy_same_algorithm']:.2f}x "
        f"(target >= {TARGET:g}x): {verdict}"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
