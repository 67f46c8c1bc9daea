"""loadtest/bench_failover.py: the parts that need no router, in process.

The 2,196-node footprint of the heartbeat-cost figure is the sample deployment with its nodes
copied; it keeps the sample's policies, so it must keep every node they name (it once
renamed them all, and the bench failed on the web policy's ``ix-mad-1``). The whole bench
runs in tests/test_bench_smoke.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from router.config import load_deployment
from tests.conftest import REPO, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script(REPO / "loadtest" / "bench_failover.py")


def test_the_footprint_loads_with_the_sample_policies(bench, tmp_path: Path) -> None:
    sample = yaml.safe_load((REPO / "zones" / "nodes.yaml").read_text())["nodes"]
    zones = bench.footprint_deployment(tmp_path, 3 * len(sample) + 1)
    deployment = load_deployment(zones)  # raised "unknown node ix-mad-1" before
    nodes = deployment.inventory.nodes
    assert len(nodes) == 3 * len(sample) + 1
    ids = [n.id for n in nodes]
    assert len(set(ids)) == len(ids) and set(ids) >= {n["id"] for n in sample}
    assert len({str(n.ipv4) for n in nodes}) == len(nodes) and len(
        {str(n.ipv6) for n in nodes}
    ) == len(nodes)
    keys = yaml.safe_load((zones / "node-keys.sample.yaml").read_text())["keys"]
    assert set(keys) == set(ids)


def test_the_footprint_needs_the_sample_nodes(bench, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        bench.footprint_deployment(tmp_path, 5)


def test_ratio_and_percentile(bench) -> None:
    assert (
        bench.ratio(2000.0, 20.0) == 100.0
        and bench.ratio(None, 20.0) is None
        and bench.ratio(5.0, None) is None
    )
    assert bench.percentile([float(v) for v in range(1, 101)], 99) == 99.0
    assert bench.percentile([7.0], 99) == 7.0


def test_contract_keys_are_what_the_readme_lists(bench) -> None:
    readme = (REPO / "loadtest" / "README.md").read_text()
    for key in bench.CONTRACT_KEYS + bench.PEER_KEYS:
        assert f"`{key}`" in readme, key


def test_smoke_is_small(bench) -> None:
    assert bench.SMOKE["trials"] >= 2 and bench.SMOKE["nodes"] < bench.FOOTPRINT_NODES
    assert not bench.SMOKE["gdnsd_default"]


def test_a_full_run_has_the_samples_its_percentiles_need(bench) -> None:
    # Trials alternate explicit and silent: each kind gets half, and a p99 needs 100.
    assert bench.DEFAULT_TRIALS // 2 >= bench.MIN_SAMPLES[99] == 100
    assert bench.GDNSD_FAST_TRIALS >= bench.MIN_SAMPLES[50] == 20
    resources = bench.gdnsd_resources([f"n{i}" for i in range(100)], default_settings=True)
    defaults = [r for r in resources if r.service == "default"]
    assert len(defaults) * bench.GDNSD_DOWN_AT_ONCE >= bench.MIN_SAMPLES[50]
    # multifo's up_thresh 0.5: at most half of a resource down, or it answers every address.
    assert bench.GDNSD_DOWN_AT_ONCE <= bench.GDNSD_NODES / 2


def test_a_percentile_of_too_few_samples_says_so(bench) -> None:
    figures: dict = {}
    bench.percentile_figure(figures, "x_p99", [float(v) for v in range(10)], 99)
    assert figures["x_p99"] == 9.0 and "10 samples" in figures["x_p99_note"]
    bench.percentile_figure(figures, "y_p99", [float(v) for v in range(1, 101)], 99)
    assert figures["y_p99"] == 99.0 and "y_p99_note" not in figures
    bench.percentile_figure(figures, "z_p50", [3.0, 1.0, 2.0], 50)
    assert figures["z_p50"] == 2.0 and "3 samples" in figures["z_p50_note"]
    bench.percentile_figure(figures, "none_p50", [], 50)
    assert figures["none_p50"] is None and "0 samples" in figures["none_p50_note"]


def test_gdnsd_resources_each_have_their_own_addresses(bench, tmp_path: Path) -> None:
    nodes = [f"n{i}" for i in range(44)]
    resources = bench.gdnsd_resources(nodes, default_settings=True)
    assert [r.service for r in resources] == ["fast"] + ["default"] * bench.GDNSD_DEFAULT_RESOURCES
    addresses = [ip for r in resources for ip in r.nodes.values()]
    assert len(set(addresses)) == len(addresses) == 44
    assert {n for r in resources for n in r.nodes} == set(nodes)
    with pytest.raises(ValueError):
        bench.gdnsd_resources(nodes[:8], default_settings=True)
    assert len(bench.gdnsd_resources(nodes[:4], default_settings=False)) == 1
    bench.gdnsd_config(tmp_path / "cfg", 5300, 8080, resources)
    config = (tmp_path / "cfg" / "config").read_text()
    zone = (tmp_path / "cfg" / "zones" / "peer.example").read_text()
    for r in resources:
        assert f"{r.name} => {{ service_types => hs_{r.service}," in config
        assert f"{r.qname} 30 DYNA multifo!{r.name}" in zone


def test_router_cpu_counts_every_process_of_the_tree(bench) -> None:
    """The heartbeat cost is the router's control process and its workers: a child's CPU
    counts (it once read the control process alone)."""
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cpu = bench.cpu_by_process(os.getpid())
            if cpu.get(child.pid, 0.0) >= 0.25:
                break
            time.sleep(0.1)
        assert child.pid in cpu and cpu[child.pid] >= 0.25, cpu
        assert os.getpid() in cpu
    finally:
        child.kill()
        child.wait()
