"""loadtest/same_algorithm.py on the sample deployment: it runs, writes its keys, and both
sides of each comparison produce the same node lists."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from loadtest.same_algorithm import bench_same_algorithm
from router.config import load_deployment
from router.steering.model import compile_model

REPO = Path(__file__).resolve().parents[1]
KEYS = (
    "numba_vs_numpy_same_algorithm",
    "numba_vs_numpy_same_algorithm_rows_equal",
    "numba_vs_numpy_same_algorithm_numba_s",
    "numba_vs_numpy_same_algorithm_numpy_s",
    "numba_vs_numpy_same_algorithm_sample",
    "numba_vs_numpy_same_algorithm_kind",
    "numba_fullscan_vs_numpy",
    "numba_fullscan_vs_numpy_rows_equal",
    "numba_fullscan_numba_s",
    "numba_fullscan_numpy_s",
)


def test_bench_same_algorithm_on_the_sample() -> None:
    model = compile_model(load_deployment(REPO / "zones"))
    n = len(model.node_ids)
    rank = model.rank_inputs(0, np.zeros(n, dtype=np.int8), np.zeros(n))
    groups = np.arange(1, len(rank.group_lat), 7)
    out = bench_same_algorithm(rank, np.full(n, 10.0), 0.8, groups, runs=1, fullscan_groups=50)
    for key in KEYS:
        assert key in out, key
    assert out["numba_vs_numpy_same_algorithm_rows_equal"] == 1.0
    assert out["numba_fullscan_vs_numpy_rows_equal"] == 1.0
    assert out["numba_vs_numpy_same_algorithm_floats_close"] is True
    assert out["numba_vs_numpy_same_algorithm_locations_equal"] is True
    numba_scans, *numpy_scans = out["numba_vs_numpy_same_algorithm_full_scans"]
    assert numpy_scans == [numba_scans, numba_scans]  # numpy pruned and unpruned
    numpy_s = min(out["numba_vs_numpy_same_algorithm_numpy_pruned_s"],
                  out["numba_vs_numpy_same_algorithm_numpy_unpruned_s"])  # fmt: skip
    assert out["numba_vs_numpy_same_algorithm_numpy_s"] == numpy_s
    for key in ("numba_vs_numpy_same_algorithm", "numba_fullscan_vs_numpy"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    ratio = (
        out["numba_vs_numpy_same_algorithm_numpy_s"] / out["numba_vs_numpy_same_algorithm_numba_s"]
    )
    assert math.isclose(out["numba_vs_numpy_same_algorithm"], ratio)
    assert out["numba_vs_numpy_same_algorithm_met"] == (
        ratio >= out["numba_vs_numpy_same_algorithm_target"]
    )
    assert out["numba_vs_numpy_same_algorithm_sample"].startswith(f"{len(groups)} groups")
    scanned = int(out["numba_fullscan_sample"].split()[0])
    assert 25 <= scanned <= 50  # every k-th group of the sample, at most fullscan_groups


def test_main_smoke_writes_json(tmp_path: Path) -> None:
    target = tmp_path / "same.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "same_algorithm.py"), "--zones", str(REPO / "zones"),
         "--smoke", "--json", str(target)],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(target.read_text())
    assert set(KEYS) <= set(figures)
    assert figures["numba_vs_numpy_same_algorithm_rows_equal"] == 1.0
    verdict = "PASS" if figures["numba_vs_numpy_same_algorithm_met"] else "MISS"
    assert f"(target >= 3x): {verdict}" in done.stdout


def test_main_rejects_a_missing_directory(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "loadtest" / "same_algorithm.py"), "--zones", str(tmp_path / "nope")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2
    assert "not a directory" in done.stderr
