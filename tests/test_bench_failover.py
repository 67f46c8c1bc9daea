"""loadtest/bench_failover.py: the parts that need no router, in process.

The 2,196-node footprint of the heartbeat-cost figure is the sample deployment with its nodes
copied; it keeps the sample's policies, so it must keep every node they name (it once
renamed them all, and the bench failed on the web policy's ``ix-mad-1``). The whole bench
runs in tests/test_bench_smoke.py.
"""

from __future__ import annotations

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
