"""loadtest/memory.py --smoke: the real router on the sample with 1 and 2 workers.

Checks the contract keys and that the client map is shared: the workers' pages of the
mapped cache file are resident but not private, and a second worker costs the total PSS far
less than a whole process (each worker holding its own copy of what it maps would fail both).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

KEYS = [
    "nodes_sample", "full_build_s_sample", "worker_pss_mb_sample", "worker_uss_mb_sample",
    "worker_rss_mb_sample", "control_pss_mb_sample", "control_rss_mb_sample",
    "total_pss_mb_sample_1_workers", "total_pss_mb_sample_2_workers",
    "total_rss_mb_sample_1_workers", "total_rss_mb_sample_2_workers",
    "total_uss_mb_sample_1_workers", "total_uss_mb_sample_2_workers",
    "client_map_mapped_mb_sample", "client_map_private_mb_sample",
]  # fmt: skip


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("memory") / "memory.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.memory", "--smoke", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_keys_are_written(figures: dict) -> None:
    missing = [key for key in KEYS if key not in figures]
    assert not missing
    assert figures["nodes_sample"] == 18
    assert figures["memory_workers_measured_sample"] == [1, 2]
    assert 0 < figures["full_build_s_sample"] < 60
    for n in (1, 2):
        answered, sent = map(int, figures[f"answered_sample_{n}_workers"].split("/"))
        assert sent == 2000 * n and answered >= 0.99 * sent


def test_pss_is_consistent_with_rss_and_uss(figures: dict) -> None:
    for n in (1, 2):
        rss, pss, uss = (figures[f"total_{k}_mb_sample_{n}_workers"] for k in ("rss", "pss", "uss"))
        assert uss <= pss <= rss
    runs = {run["workers"]: run for run in figures["memory_runs_sample"]}
    assert len(runs[2]["per_worker"]) == 2
    assert all(w["uss"] <= w["pss"] <= w["rss"] for w in runs[2]["per_worker"])


def test_the_workers_share_the_client_map(figures: dict) -> None:
    two = {run["workers"]: run for run in figures["memory_runs_sample"]}[2]
    for mapped in two["client_map_mapped"]:
        assert mapped["rss"] > 0  # the worker looked addresses up in the mapped file ...
        assert mapped["private"] == 0  # ... and holds none of its pages privately
    assert figures["client_map_private_mb_sample"] == 0


def test_a_second_worker_costs_less_than_a_copy(figures: dict) -> None:
    one, two = figures["total_pss_mb_sample_1_workers"], figures["total_pss_mb_sample_2_workers"]
    assert two < 2 * one
    # Sharper: what the second worker adds is a fraction of what a worker maps; a worker with
    # its own copy of its memory would add about its whole RSS.
    assert two - one < 0.5 * figures["worker_rss_mb_sample"]
