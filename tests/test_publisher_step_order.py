"""A failure comes first in a publisher step: the repair is published before a full plan
that ended is adopted; and the objects alive at start are kept out of the cyclic collector."""

from __future__ import annotations

import gc
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config import load_deployment
from router.health.state import NodeState
from router.service.config_files import ConfigFiles
from router.service.publisher import FullPlanJob
from router.service.supervisor import Supervisor
from router.steering import compile_model
from router.steering.build import RoutingTable
from tests.test_publisher_background_plan import listed


@pytest.fixture
def supervisor(tmp_path: Path, deployment_dir: Path) -> Iterator[Supervisor]:
    shutil.copytree(deployment_dir.parent, tmp_path, dirs_exist_ok=True)
    zones = tmp_path / "zones"
    deployment = load_deployment(zones)
    made = Supervisor(deployment, compile_model(deployment), [("127.0.0.1", 0)], workers=1,
                      files=ConfigFiles.read(zones))  # fmt: skip
    try:
        yield made
    finally:
        made.publisher.stop()
        made.workers.stop()


def test_a_step_publishes_the_repair_before_it_adopts_a_full_plan(
    supervisor: Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full plan that ended and a node gone down in the same step: the failure's table
    goes out first (it does not wait for the adoption), then the full plan with the node
    repaired on top; neither brings it back."""
    sup = supervisor
    published: list[RoutingTable] = []

    def publish(table: RoutingTable, signatures=None) -> tuple[float, float]:  # noqa: ANN001
        published.append(table)
        return 0.0, 0.0

    monkeypatch.setattr(sup.workers, "publish", publish)
    config, planner = sup.config, sup.planner
    states, util = sup.health.states(), sup.health.utilization().copy()
    now = time.monotonic()
    job = FullPlanJob(config, planner.basis(), states.copy(), util, now, now, 0.0, "test",
                      result=planner.plan_full(states, util), done=True)  # fmt: skip
    gone = config.node_index["tef-mad-1"]
    assert gone in listed(sup.table)
    with sup.health_lock:
        assert sup.health.set_admin_state("tef-mad-1", "down")
    sup.publisher._rebuild(time.monotonic(), 1, job)
    assert len(published) >= 2
    repaired, adopted = published[0], published[1]
    assert repaired.generation < adopted.generation
    assert planner.last_kind != "none"
    for table in published:
        assert table.node_state[gone] == NodeState.DOWN and gone not in listed(table)
    assert sup.table is published[-1]


def test_the_objects_alive_at_start_are_left_out_of_collections(supervisor: Supervisor) -> None:
    gc.unfreeze()
    try:
        supervisor.start()
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
